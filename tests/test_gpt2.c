// The GPT-2 judge (method §9.3-§9.4): a tiny random GPT-2 written as safetensors by tests/reference/gpt2_ref.py (an
// independent float64 torch implementation) must give the same hidden states, NLL, gen-PPL and MAUVE features in C;
// bad judges and bad samples are refused by name.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hdlm/common.h"
#include "hdlm/features.h"
#include "hdlm/gpt2.h"
#include "hdlm/shard.h"

#define PYTHON "/usr/bin/python3"
#define REFERENCE PYTHON " " HDLM_SOURCE_DIR "/tests/reference/gpt2_ref.py"
// One OpenMP thread: the tiny judge's kernels are too small to share, and spinning threads on a busy machine cost
// seconds per run.
#define EVAL                                                                                                           \
    "OMPI_MCA_ess_singleton_isolated=1 ASAN_OPTIONS=detect_leaks=0 OMP_NUM_THREADS=1 " HDLM_BIN_DIR "/hdlm-eval"
// fp32 forward against the float64 reference (measured: 2.6e-6 hidden, 3.7e-6 NLL); hidden states are O(1) after
// ln_f, NLL O(10).
#define HIDDEN_TOL 5e-5
#define NLL_TOL 5e-5

static const char *judge_dir;   // GPT2LMHeadModel-style keys ("transformer." prefix), vocabulary 50257
static cJSON *reference;

static char *join(const char *dir, const char *name) {
    static char paths[8][4200];
    static int next;
    char *p = paths[next++ % 8];
    snprintf(p, sizeof paths[0], "%s/%s", dir, name);
    return p;
}

static int setup(void **state) {
    (void)state;
    judge_dir = test_tmp_dir("gpt2_judge");
    if (test_run(REFERENCE " %s --prefix transformer. --max-tokens 10", judge_dir) != 0) return -1;
    char *text;
    size_t len;
    if (hdlm_read_file(join(judge_dir, "reference.json"), &text, &len) != 0) return -1;
    reference = cJSON_Parse(text);
    free(text);
    return reference ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    cJSON_Delete(reference);
    return 0;
}

static double number(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    assert_true(cJSON_IsNumber(v));
    return v->valuedouble;
}

static const cJSON *sample(int i) {
    return cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(reference, "samples"), i);
}

static int sample_ids(int i, uint32_t *ids) {
    char *text;
    size_t len;
    assert_int_equal(hdlm_read_file(join(judge_dir, "samples.jsonl"), &text, &len), 0);
    char *line = text;
    for (int k = 0; k < i; k++) line = strchr(line, '\n') + 1;
    cJSON *json = cJSON_ParseWithOpts(line, NULL, 0);
    assert_non_null(json);
    int n = 0;
    for (const cJSON *it = cJSON_GetObjectItem(json, "token_ids")->child; it; it = it->next)
        ids[n++] = (uint32_t)it->valueint;
    cJSON_Delete(json);
    free(text);
    return n;
}

static void test_forward_matches_torch_reference(void **state) {
    (void)state;
    hdlm_gpt2 g;
    assert_int_equal(hdlm_gpt2_load(&g, judge_dir, 0), 0);   // heads from config.json (d / 64 would not divide 32)
    assert_int_equal(g.n_layer, 2);
    assert_int_equal(g.n_head, 4);
    assert_int_equal(g.d, 32);
    assert_int_equal(g.vocab, 50257);
    assert_int_equal(g.n_ctx, 64);
    double worst_h = 0, worst_nll = 0;
    for (int i = 0; i < 4; i++) {
        uint32_t ids[64];
        int len = sample_ids(i, ids);
        float *hidden = malloc((size_t)len * 32 * sizeof(float));
        double nll[64];
        assert_int_equal(hdlm_gpt2_forward(&g, ids, len, hidden, nll), 0);
        const cJSON *ref_h = cJSON_GetObjectItem(sample(i), "hidden"), *ref_n = cJSON_GetObjectItem(sample(i), "nll");
        assert_int_equal(cJSON_GetArraySize(ref_h), len * 32);
        for (int k = 0; k < len * 32; k++) {
            double diff = fabs(hidden[k] - cJSON_GetArrayItem(ref_h, k)->valuedouble);
            worst_h = diff > worst_h ? diff : worst_h;
        }
        for (int t = 0; t < len; t++) {
            double diff = fabs(nll[t] - cJSON_GetArrayItem(ref_n, t)->valuedouble);
            worst_nll = diff > worst_nll ? diff : worst_nll;
        }
        free(hidden);
    }
    printf("max |hidden - ref| = %.3g, max |nll - ref| = %.3g\n", worst_h, worst_nll);
    assert_true(worst_h < HIDDEN_TOL);
    assert_true(worst_nll < NLL_TOL);
    // The same weights as a bare file with an explicit head count; ids outside the vocabulary are refused.
    hdlm_gpt2 g2;
    assert_int_equal(hdlm_gpt2_load(&g2, join(judge_dir, "model.safetensors"), 4), 0);
    uint32_t bad[2] = {1, 50257};
    assert_int_equal(hdlm_gpt2_forward(&g2, bad, 2, NULL, NULL), -1);
    assert_error_contains("token id 50257 at position 1");
    hdlm_gpt2_free(&g2);
    hdlm_gpt2_free(&g);
}

static void test_genppl_matches_reference_formula(void **state) {
    (void)state;
    const char *out = join(judge_dir, "genppl.txt");
    assert_int_equal(test_run(EVAL " genppl --judge %s --samples %s > %s", judge_dir,
                              join(judge_dir, "samples.jsonl"), out), 0);
    char *text;
    size_t len;
    assert_int_equal(hdlm_read_file(out, &text, &len), 0);
    double mean, std;
    int n;
    assert_int_equal(sscanf(text, "gen_ppl %lf std %lf n %d", &mean, &std, &n), 3);
    free(text);
    assert_int_equal(n, 4);
    // PPL = exp(mean NLL): a relative error of the mean NLL's absolute error (~1e-5) at most.
    assert_true(fabs(mean / number(reference, "ppl_mean") - 1) < 1e-4);
    assert_true(fabs(std / number(reference, "ppl_std") - 1) < 1e-4);
}

static void genppl_line(const char *samples, const char *flags, double *mean, double *std, int *n, int *dropped) {
    const char *out = join(judge_dir, "genppl_remainder.txt");
    assert_int_equal(test_run(EVAL " genppl --judge %s --samples %s %s > %s", judge_dir, samples, flags, out), 0);
    char *text;
    size_t len;
    assert_int_equal(hdlm_read_file(out, &text, &len), 0);
    assert_int_equal(sscanf(text, "gen_ppl %lf std %lf n %d dropped %d", mean, std, n, dropped), 4);
    free(text);
}

// Method §9.3 / §11 item 31: the reference scores batches of 4 and drops the last n mod 4 samples. Six samples (the
// four reference samples, then the first two again): by default the mean and std are the four's; with
// --keep-remainder they are those of all six per-sample perplexities of the torch reference.
static void test_genppl_drops_the_remainder_of_four(void **state) {
    (void)state;
    char *text;
    size_t len;
    assert_int_equal(hdlm_read_file(join(judge_dir, "samples.jsonl"), &text, &len), 0);
    const char *third = strchr(strchr(text, '\n') + 1, '\n') + 1;   // after the first two lines
    const char *six = join(judge_dir, "six.jsonl");
    FILE *f = fopen(six, "w");
    assert_non_null(f);
    fwrite(text, 1, len, f);
    fwrite(text, 1, (size_t)(third - text), f);
    fclose(f);
    free(text);
    double mean, std;
    int n, dropped;
    genppl_line(six, "", &mean, &std, &n, &dropped);
    assert_int_equal(n, 4);
    assert_int_equal(dropped, 2);
    assert_true(fabs(mean / number(reference, "ppl_mean") - 1) < 1e-4);
    assert_true(fabs(std / number(reference, "ppl_std") - 1) < 1e-4);
    genppl_line(six, "--keep-remainder", &mean, &std, &n, &dropped);
    assert_int_equal(n, 6);
    assert_int_equal(dropped, 0);
    double ppl[6], want_mean = 0, want_var = 0;
    for (int i = 0; i < 6; i++) ppl[i] = number(sample(i % 4), "ppl");
    for (int i = 0; i < 6; i++) want_mean += ppl[i] / 6;
    for (int i = 0; i < 6; i++) want_var += (ppl[i] - want_mean) * (ppl[i] - want_mean) / 6;
    assert_true(fabs(mean / want_mean - 1) < 1e-4);
    assert_true(fabs(std / sqrt(want_var) - 1) < 1e-4);
    // Fewer than four samples make no batch: refused, pointing at the flag.
    const char *three = join(judge_dir, "three.jsonl"), *err = join(judge_dir, "three.err");
    assert_int_equal(test_run("head -n 3 %s > %s", join(judge_dir, "samples.jsonl"), three), 0);
    assert_int_equal(test_run(EVAL " genppl --judge %s --samples %s 2> %s", judge_dir, three, err), 1);
    assert_int_equal(test_run("grep -q \"3 sample(s) make no batch of 4\" %s", err), 0);
}

static void test_features_files_hold_last_token_states(void **state) {
    (void)state;
    const char *h5 = join(judge_dir, "f.h5"), *npy = join(judge_dir, "f.npy");
    const char *samples = join(judge_dir, "samples.jsonl");
    assert_int_equal(test_run(EVAL " features --judge %s --samples %s --out %s --max-tokens 10 --role p_human "
                              "> /dev/null", judge_dir, samples, h5), 0);
    assert_int_equal(test_run(EVAL " features --judge %s --samples %s --out %s --max-tokens 10 > /dev/null",
                              judge_dir, samples, npy), 0);
    const char *files[2] = {h5, npy};
    for (int f = 0; f < 2; f++) {
        hdlm_feature_matrix m;
        assert_int_equal(hdlm_features_read(files[f], &m), 0);
        assert_int_equal(m.n, 4);
        assert_int_equal(m.d, 32);
        for (int i = 0; i < 4; i++)
            for (int k = 0; k < 32; k++)
                assert_true(fabs(m.data[i * 32 + k] -
                                 cJSON_GetArrayItem(cJSON_GetObjectItem(sample(i), "feature"), k)->valuedouble) <
                            HIDDEN_TOL);
        hdlm_feature_matrix_free(&m);
    }
    // numpy and h5py read them as the MAUVE package would; lengths = min(L, 10), attributes as documented.
    assert_int_equal(test_run(PYTHON " -c \"import json, numpy as np, h5py; r = json.load(open('%s'));"
                              " ref = np.array([s['feature'] for s in r['samples']]);"
                              " a = np.load('%s'); f = h5py.File('%s', 'r'); b = f['features'][:];"
                              " assert a.dtype == np.float32 and a.shape == (4, 32) and b.shape == (4, 32);"
                              " assert np.abs(a - ref).max() < %g and np.array_equal(a, b);"
                              " assert list(f['lengths'][:]) == [5, 10, 10, 2], f['lengths'][:];"
                              " assert list(f['sample_index'][:]) == [0, 1, 2, 3];"
                              " assert f.attrs['role'] in ('p_human', b'p_human');"
                              " assert f.attrs['max_text_length'] == 10\"",
                              join(judge_dir, "reference.json"), npy, h5, HIDDEN_TOL), 0);
}

static void test_features_of_token_shard_chunks(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("gpt2_judge_shards");
    // 37 tokens: chunks of 12 -> 3 chunks (the last token dropped); --count 2 keeps the first two.
    uint16_t tokens[37];
    for (int i = 0; i < 37; i++) tokens[i] = (uint16_t)((i * 7919 + 11) % 50257);
    hdlm_shard_writer *w;
    assert_int_equal(hdlm_shard_writer_open(&w, join(dir, "validation_000.bin"), 50257), 0);
    assert_int_equal(hdlm_shard_writer_append(w, tokens, 37), 0);
    assert_int_equal(hdlm_shard_writer_close(w, 1, NULL), 0);
    const char *out = join(dir, "f.npy");
    assert_int_equal(test_run(EVAL " features --judge %s --text-shards %s --chunk-len 12 --max-tokens 10 --count 2"
                              " --out %s > /dev/null", judge_dir, dir, out), 0);
    hdlm_feature_matrix m;
    assert_int_equal(hdlm_features_read(out, &m), 0);
    assert_int_equal(m.n, 2);
    // Row i = the (torch-verified) forward of chunk i's first 10 ids, at its last position.
    hdlm_gpt2 g;
    assert_int_equal(hdlm_gpt2_load(&g, judge_dir, 0), 0);
    for (int i = 0; i < 2; i++) {
        uint32_t ids[10];
        float hidden[10 * 32];
        for (int t = 0; t < 10; t++) ids[t] = tokens[12 * i + t];
        assert_int_equal(hdlm_gpt2_forward(&g, ids, 10, hidden, NULL), 0);
        for (int k = 0; k < 32; k++) assert_true(fabs(m.data[i * 32 + k] - hidden[9 * 32 + k]) < 1e-6);
    }
    hdlm_gpt2_free(&g);
    hdlm_feature_matrix_free(&m);
}

static void test_bad_judges_are_refused(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("gpt2_judge_small_vocab");
    assert_int_equal(test_run(REFERENCE " %s --vocab 1000", dir), 0);
    const char *err = join(dir, "err.txt");
    assert_int_equal(test_run(EVAL " genppl --judge %s --samples %s 2> %s", dir, join(dir, "samples.jsonl"), err),
                     1);
    assert_int_equal(test_run("grep -q \"vocabulary has 1000 tokens, but samples are GPT-2 BPE ids (50257\" %s", err),
                     0);
    // A head count that does not divide d is refused naming both.
    hdlm_gpt2 g;
    assert_int_equal(hdlm_gpt2_load(&g, dir, 5), -1);
    assert_error_contains("5 heads do not divide the width d = 32");
    // A misshapen tensor and a missing one are refused by name (the file's header rewritten by Python).
    const char *bad = join(dir, "bad.safetensors");
    const char *rewrite = PYTHON " -c \"import json, struct, sys; b = open('%s', 'rb').read();"
                          " n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n]); %s;"
                          " t = json.dumps(h).encode(); t += b' ' * (-len(t) %% 8);"
                          " open('%s', 'wb').write(struct.pack('<Q', len(t)) + t + b[8 + n:])\"";
    char cmd[8192];
    snprintf(cmd, sizeof cmd, rewrite, join(dir, "model.safetensors"), "h['h.1.ln_2.bias']['shape'] = [4, 8]", bad);
    assert_int_equal(test_run("%s", cmd), 0);
    assert_int_equal(hdlm_gpt2_load(&g, bad, 4), -1);
    assert_error_contains("tensor 'h.1.ln_2.bias' has shape [4, 8], expected [32]");
    snprintf(cmd, sizeof cmd, rewrite, join(dir, "model.safetensors"), "h.pop('h.0.mlp.c_fc.bias')", bad);
    assert_int_equal(test_run("%s", cmd), 0);
    assert_int_equal(hdlm_gpt2_load(&g, bad, 4), -1);
    assert_error_contains("tensor 'h.0.mlp.c_fc.bias' is missing");
}

static void test_out_of_range_sample_is_refused_naming_line(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("gpt2_judge_bad_samples");
    const char *samples = join(dir, "s.jsonl"), *err = join(dir, "err.txt");
    const char body[] = "{\"token_ids\": [1, 2, 3]}\n{\"token_ids\": [4, 50257]}\n";
    test_write_file(samples, body, sizeof body - 1);
    assert_int_equal(test_run(EVAL " features --judge %s --samples %s --out %s 2> %s", judge_dir, samples,
                              join(dir, "f.npy"), err), 1);
    assert_int_equal(test_run("grep -q \"s.jsonl:2: token_ids\\[1\\] = a number outside it is not a token id of the "
                              "judge's vocabulary \\[0, 50257)\" %s", err), 0);
    const char missing[] = "{\"text\": \"hello\"}\n";
    test_write_file(samples, missing, sizeof missing - 1);
    assert_int_equal(test_run(EVAL " genppl --judge %s --samples %s 2> %s", judge_dir, samples, err), 1);
    assert_int_equal(test_run("grep -q \"s.jsonl:1: expected an object with a non-empty array 'token_ids'\" %s", err),
                     0);
}

int main(void) {
    setenv("OMP_NUM_THREADS", "1", 1);   // see EVAL
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forward_matches_torch_reference),
        cmocka_unit_test(test_genppl_matches_reference_formula),
        cmocka_unit_test(test_genppl_drops_the_remainder_of_four),
        cmocka_unit_test(test_features_files_hold_last_token_states),
        cmocka_unit_test(test_features_of_token_shard_chunks),
        cmocka_unit_test(test_bad_judges_are_refused),
        cmocka_unit_test(test_out_of_range_sample_is_refused_naming_line),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

// hdlm-eval perplexity and sample end to end on small checkpoints of both families: output fields, rank independence
// of the bound (1 vs 2 ranks), JSONL samples with prompts and ARDM budgets, and refusal of missing checkpoints and
// token files the model cannot score.
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
#include "hdlm/model_io.h"
#include "hdlm/rng.h"
#include "hdlm/shard.h"
#include "hdlm/tokenizer.h"

// Tools under the sanitizer build: Open MPI's own allocations are not ours to free.
#define EVAL "OMPI_MCA_ess_singleton_isolated=1 ASAN_OPTIONS=detect_leaks=0 " HDLM_BIN_DIR "/hdlm-eval"
#define MPIRUN_EVAL                                                                                                    \
    "ASAN_OPTIONS=detect_leaks=0 OMP_NUM_THREADS=1 mpirun -np 2 --oversubscribe --allow-run-as-root --bind-to none " \
    HDLM_BIN_DIR "/hdlm-eval"

enum { LENGTH = 16 };
static char run_eps[4200], run_gamma[4200], run_ar[4200], run_eos[4200], data_dir[4200], bad_dir[4200], tmp[2048];

// objective: "hdlm", or "ar" for the AR baseline (ε network, causal). eos_bias: added to the output bias of
// <|endoftext|>, which the network then draws often (the end-of-text tests).
static void make_checkpoint(hdlm_family f, const char *root, const char *objective, float eos_bias) {
    char obj[64];
    snprintf(obj, sizeof obj, "training.objective=%s", objective);
    const char *ov[] = {"model.hidden_size=16", "model.n_blocks=1", "model.n_heads=2", "model.cond_dim=8",
                        "model.length=16",      "model.dropout=0",   "annealing.width=8", obj};
    test_write_checkpoint(root, f == HDLM_FAMILY_GAMMA ? "gamma_hdlm" : "epsilon_hdlm", ov, sizeof ov / sizeof ov[0],
                          9, eos_bias);
}

static void make_shard(const char *dir, uint32_t vocab, uint16_t top_id) {
    char path[4200];
    snprintf(path, sizeof path, "%s/validation_000.bin", dir);
    uint16_t tokens[3 * LENGTH + 5];
    for (int i = 0; i < 3 * LENGTH + 5; i++) tokens[i] = (uint16_t)((i * 2011) % 20000);
    tokens[7] = top_id;
    hdlm_shard_writer *w;
    if (hdlm_shard_writer_open(&w, path, vocab) || hdlm_shard_writer_append(w, tokens, 3 * LENGTH + 5) ||
        hdlm_shard_writer_close(w, 1, NULL))
        fail_msg("%s", hdlm_last_error());
}

static int setup(void **state) {
    (void)state;
    snprintf(tmp, sizeof tmp, "%s", test_tmp_dir("eval_tools"));
    snprintf(run_eps, sizeof run_eps, "%s/eps/checkpoints", tmp);
    snprintf(run_gamma, sizeof run_gamma, "%s/gamma/checkpoints", tmp);
    snprintf(run_ar, sizeof run_ar, "%s/ar/checkpoints", tmp);
    snprintf(run_eos, sizeof run_eos, "%s/eos/checkpoints", tmp);
    snprintf(data_dir, sizeof data_dir, "%s/data", tmp);
    snprintf(bad_dir, sizeof bad_dir, "%s/bad", tmp);
    test_run("mkdir -p %s %s", data_dir, bad_dir);
    make_checkpoint(HDLM_FAMILY_EPSILON, run_eps, "hdlm", 0);
    make_checkpoint(HDLM_FAMILY_GAMMA, run_gamma, "hdlm", 0);
    make_checkpoint(HDLM_FAMILY_EPSILON, run_ar, "ar", 0);
    make_checkpoint(HDLM_FAMILY_EPSILON, run_eos, "ar", 9);
    make_shard(data_dir, HDLM_GPT2_VOCAB, 50256);
    make_shard(bad_dir, 60000, 55000);   // ids beyond the model's 50257 real tokens
    return 0;
}

static char *slurp(const char *path) {
    char *text;
    size_t len;
    if (hdlm_read_file(path, &text, &len) != 0) fail_msg("%s", hdlm_last_error());
    return text;
}

// The last line of a file (the --json line), parsed.
static cJSON *last_json(const char *path) {
    char *text = slurp(path);
    char *start = text;
    for (char *p = text; *p; p++)
        if (*p == '\n' && p[1] == '{') start = p + 1;
    cJSON *j = cJSON_Parse(start);
    free(text);
    assert_non_null(j);
    return j;
}

static void test_perplexity_one_and_two_ranks(void **state) {
    (void)state;
    char out1[4200], out2[4200];
    snprintf(out1, sizeof out1, "%s/ppl1.txt", tmp);
    snprintf(out2, sizeof out2, "%s/ppl2.txt", tmp);
    const char *args = "--copies 3 --rounds 2 --seed 4 --json";
    assert_int_equal(test_run(EVAL " perplexity --ckpt %s --data %s %s > %s", run_eps, data_dir,
                              args, out1), 0);
    assert_int_equal(test_run(MPIRUN_EVAL " perplexity "
                              "--ckpt %s --data %s %s > %s 2>/dev/null", run_eps, data_dir, args, out2), 0);
    // The ε run trains the block schedule at ω = 8 < L = 16: block diffusion, scored by the block estimator.
    cJSON *a = last_json(out1), *b = last_json(out2);
    double bound = cJSON_GetObjectItem(a, "bound")->valuedouble;
    assert_true(bound > 0 && bound < 30);
    assert_true(bound == cJSON_GetObjectItem(b, "bound")->valuedouble);
    assert_true(cJSON_GetObjectItem(a, "std_error")->valuedouble == cJSON_GetObjectItem(b, "std_error")->valuedouble);
    assert_int_equal(cJSON_GetObjectItem(a, "tokens")->valueint, 3 * LENGTH);
    assert_string_equal(cJSON_GetObjectItem(a, "estimator")->valuestring, "block");
    cJSON_Delete(a);
    cJSON_Delete(b);
    char *text = slurp(out1);
    assert_non_null(strstr(text, "validity    upper bound on -log p of the ε model's block-wise masking-only"));
    free(text);
    // The reference's masking estimator on request: L - 1 tokens per chunk (parity), the same on 2 ranks.
    assert_int_equal(test_run(EVAL " perplexity --ckpt %s --data %s --estimator masking %s > %s", run_eps, data_dir,
                              args, out1), 0);
    assert_int_equal(test_run(MPIRUN_EVAL " perplexity --ckpt %s --data %s --estimator masking %s > %s 2>/dev/null",
                              run_eps, data_dir, args, out2), 0);
    a = last_json(out1), b = last_json(out2);
    assert_true(cJSON_GetObjectItem(a, "bound")->valuedouble == cJSON_GetObjectItem(b, "bound")->valuedouble);
    assert_int_equal(cJSON_GetObjectItem(a, "tokens")->valueint, 3 * (LENGTH - 1));
    assert_string_equal(cJSON_GetObjectItem(a, "estimator")->valuestring, "masking");
    cJSON_Delete(a);
    cJSON_Delete(b);
    text = slurp(out1);
    assert_non_null(strstr(text, "validity    upper bound on -log p of the ε model's masking-only"));
    free(text);
    // One round per chunk gives no variance estimate: said so, and null in the JSON (not ± 0).
    assert_int_equal(test_run(EVAL " perplexity --ckpt %s --data %s --estimator masking --copies 3 --rounds 1 --json "
                              "> %s", run_eps, data_dir, out1), 0);
    text = slurp(out1);
    assert_non_null(strstr(text, "± not estimable"));
    free(text);
    a = last_json(out1);
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(a, "std_error")));
    cJSON_Delete(a);
    // γ: the same estimator, labelled as not a bound; ARDM estimator on request counts L tokens per chunk.
    assert_int_equal(test_run(EVAL " perplexity --ckpt %s --data %s %s > %s", run_gamma, data_dir,
                              args, out1), 0);
    text = slurp(out1);
    assert_non_null(strstr(text, "NOT a bound for the γ model"));
    free(text);
    assert_int_equal(test_run(EVAL " perplexity --ckpt %s --data %s --raw --estimator ardm %s > %s",
                              run_eps, data_dir, args, out1), 0);
    a = last_json(out1);
    assert_int_equal(cJSON_GetObjectItem(a, "tokens")->valueint, 3 * LENGTH);
    assert_string_equal(cJSON_GetObjectItem(a, "weights")->valuestring, "raw");
    cJSON_Delete(a);
    // The policy estimators (A.6 modes 3-4): L tokens per chunk, the same bound on 1 and 2 ranks, and their mean over
    // orders is the same quantity, so they agree within their standard errors here; a γ model is refused.
    const char *pargs = "--budget 4 --copies 4 --rounds 3 --seed 2 --json";
    assert_int_equal(test_run(EVAL " perplexity --ckpt %s --data %s --estimator ardm-policy %s > %s", run_eps,
                              data_dir, pargs, out1), 0);
    assert_int_equal(test_run(MPIRUN_EVAL " perplexity --ckpt %s --data %s --estimator ardm-policy %s > %s "
                              "2>/dev/null", run_eps, data_dir, pargs, out2), 0);
    a = last_json(out1), b = last_json(out2);
    assert_string_equal(cJSON_GetObjectItem(a, "estimator")->valuestring, "ardm-policy");
    assert_int_equal(cJSON_GetObjectItem(a, "tokens")->valueint, 3 * LENGTH);
    double policy_bound = cJSON_GetObjectItem(a, "bound")->valuedouble;
    double policy_se = cJSON_GetObjectItem(a, "std_error")->valuedouble;
    assert_true(policy_bound == cJSON_GetObjectItem(b, "bound")->valuedouble);
    cJSON_Delete(a);
    cJSON_Delete(b);
    assert_int_equal(test_run(EVAL " perplexity --ckpt %s --data %s --estimator ardm-order %s > %s", run_eps,
                              data_dir, pargs, out1), 0);
    a = last_json(out1);
    double order_bound = cJSON_GetObjectItem(a, "bound")->valuedouble;
    double order_se = cJSON_GetObjectItem(a, "std_error")->valuedouble;
    cJSON_Delete(a);
    if (fabs(order_bound - policy_bound) > 5 * sqrt(order_se * order_se + policy_se * policy_se))
        fail_msg("ardm-order %g vs ardm-policy %g (standard errors %g, %g)", order_bound, policy_bound, order_se,
                 policy_se);
    text = slurp(out1);
    assert_non_null(strstr(text, "estimator   ardm-order (budget 4, naive policy"));
    free(text);
    char err[4200];
    snprintf(err, sizeof err, "%s/policy_err.txt", tmp);
    assert_int_equal(test_run(EVAL " perplexity --ckpt %s --data %s --estimator ardm-policy %s 2> %s", run_gamma,
                              data_dir, pargs, err), 1);
    text = slurp(err);
    assert_non_null(strstr(text, "needs a model without σ input"));
    free(text);
    assert_int_equal(test_run(EVAL " perplexity --ckpt %s --data %s --budget 4 2> %s", run_eps, data_dir, err), 2);
}

// Every line of a JSONL file, parsed.
static int read_samples(const char *path, cJSON **lines, int max) {
    char *text = slurp(path);
    int n = 0;
    for (char *line = strtok(text, "\n"); line && n < max; line = strtok(NULL, "\n")) {
        lines[n] = cJSON_Parse(line);
        assert_non_null(lines[n]);
        n++;
    }
    free(text);
    return n;
}

static void test_sample_jsonl(void **state) {
    (void)state;
    char out[4200], losses[4200];
    snprintf(out, sizeof out, "%s/samples.jsonl", tmp);
    snprintf(losses, sizeof losses, "%s/losses.txt", tmp);
    const char *tok = test_cache_path("gpt2");
    struct {
        const char *run, *args;
    } cases[] = {
        {run_eps, "--sampler acs --steps 4 --prompt-ids 464,3290 --infill 10:13"},
        {run_eps, "--sampler walk --tau 3 --no-mask --prompt-ids 464,3290 --infill 10:13"},
        {run_gamma, "--sampler gamma-sar --tau 3 --prompt-ids 464,3290 --infill 10:13"},
        {run_eps, "--sampler ardm --budget 5 --prompt-ids 464,3290 --infill 10:13"},
        {run_eps, NULL},   // ardm with the DP policy of the losses file
    };
    FILE *f = fopen(losses, "w");
    for (int i = 0; i < LENGTH; i++) fprintf(f, "%g\n", 10.0 / (i + 1));
    fclose(f);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        char args[4600];
        if (cases[c].args) snprintf(args, sizeof args, "%s", cases[c].args);
        else snprintf(args, sizeof args, "--sampler ardm --budget 5 --losses %s --prompt-ids 464,3290 --infill 10:13",
                      losses);
        assert_int_equal(test_run(EVAL " sample --ckpt %s --n 3 --batch 2 --seed 5 --tokenizer %s --out %s %s "
                                  "> /dev/null 2>&1", cases[c].run, tok, out, args), 0);
        cJSON *lines[4];
        assert_int_equal(read_samples(out, lines, 4), 3);
        for (int i = 0; i < 3; i++) {
            cJSON *ids = cJSON_GetObjectItem(lines[i], "ids");
            assert_int_equal(cJSON_GetArraySize(ids), LENGTH);
            assert_int_equal(cJSON_GetArrayItem(ids, 0)->valueint, 464);
            assert_int_equal(cJSON_GetArrayItem(ids, 1)->valueint, 3290);
            assert_int_equal(cJSON_GetArrayItem(ids, 10)->valueint, 13);
            assert_int_equal(cJSON_GetObjectItem(lines[i], "index")->valueint, i);
            assert_true(cJSON_IsString(cJSON_GetObjectItem(lines[i], "text")));
            assert_true(cJSON_GetObjectItem(lines[i], "entropy")->valuedouble > 0);
            cJSON_Delete(lines[i]);
        }
    }
    // The same samples on 2 ranks.
    char out2[4200];
    snprintf(out2, sizeof out2, "%s/samples2.jsonl", tmp);
    assert_int_equal(test_run(EVAL " sample --ckpt %s --n 3 --batch 2 --seed 5 --tokenizer %s --out %s "
                              "--sampler acs --steps 4 > /dev/null 2>&1", run_eps, tok, out), 0);
    assert_int_equal(test_run(MPIRUN_EVAL " sample "
                              "--ckpt %s --n 3 --batch 2 --seed 5 --tokenizer %s --out %s --sampler acs --steps 4 "
                              "> /dev/null 2>&1", run_eps, tok, out2), 0);
    char *a = slurp(out), *b = slurp(out2);
    assert_string_equal(a, b);
    free(a);
    free(b);
    // The KV cache, on by default where it applies, gives the samples of --no-kv-cache (γ SAR on the 2-block schedule
    // of the checkpoint, ω = 8 = L/2); the log says which way ran.
    char log[4300];
    snprintf(log, sizeof log, "%s/sample_log.txt", tmp);
    for (int cached = 0; cached < 2; cached++) {
        assert_int_equal(test_run(EVAL " sample --ckpt %s --n 2 --seed 3 --tokenizer %s --out %s --sampler "
                                  "gamma-sar --tau 3 %s > %s 2>&1", run_gamma, tok,
                                  cached ? out2 : out, cached ? "" : "--no-kv-cache", log), 0);
        char *text = slurp(log);
        assert_true((strstr(text, "gamma-sar with the KV cache") != NULL) == cached);
        free(text);
    }
    a = slurp(out), b = slurp(out2);
    assert_string_equal(a, b);
    free(a);
    free(b);
}

// An AR run through the tools: the exact likelihood by default (the denoisers' estimators refused), next-token
// samples with the prompt kept and the same with the KV cache, and those samples scored by the AR model as the
// gen-PPL judge straight from hdlm-eval sample's output.
static void test_ar_run(void **state) {
    (void)state;
    char out[4200], out2[4200], err[4200];
    snprintf(out, sizeof out, "%s/ar.jsonl", tmp);
    snprintf(out2, sizeof out2, "%s/ar_cached.jsonl", tmp);
    snprintf(err, sizeof err, "%s/err.txt", tmp);
    assert_int_equal(test_run(EVAL " perplexity --ckpt %s --data %s --json > %s/ar_ppl.txt 2>/dev/null", run_ar,
                              data_dir, tmp), 0);
    char path[4300];
    snprintf(path, sizeof path, "%s/ar_ppl.txt", tmp);
    char *text = slurp(path);
    assert_non_null(strstr(text, "nats/token (exact; "));
    free(text);
    cJSON *j = last_json(path);
    assert_string_equal(cJSON_GetObjectItem(j, "estimator")->valuestring, "ar");
    assert_int_equal(cJSON_GetObjectItem(j, "tokens")->valueint, 3 * LENGTH);   // every token of each chunk
    assert_true(cJSON_GetObjectItem(j, "bound")->valuedouble > 0);
    cJSON_Delete(j);
    assert_int_equal(test_run(EVAL " perplexity --ckpt %s --data %s --estimator masking 2> %s", run_ar, data_dir, err),
                     1);
    text = slurp(err);
    assert_non_null(strstr(text, "the ar estimator goes with AR runs"));
    free(text);
    assert_int_equal(test_run(EVAL " perplexity --ckpt %s --data %s --estimator ar 2> %s", run_eps, data_dir, err), 1);
    const char *tok = test_cache_path("gpt2");
    for (int cached = 0; cached < 2; cached++)   // the cache by default, and without it
        assert_int_equal(test_run(EVAL " sample --ckpt %s --n 4 --batch 3 --seed 2 --tokenizer %s --out %s "
                                  "--prompt-ids 464,3290 %s > /dev/null 2>&1", run_ar, tok, cached ? out2 : out,
                                  cached ? "" : "--no-kv-cache"), 0);
    char *a = slurp(out), *b = slurp(out2);
    assert_string_equal(a, b);
    assert_non_null(strstr(a, "\"sampler\":\"ar\""));
    assert_non_null(strstr(a, "\"ids\":[464,3290,"));
    free(a);
    free(b);
    assert_int_equal(test_run(EVAL " sample --ckpt %s --n 2 --out %s --sampler ancestral 2> %s", run_ar, out2, err), 1);
    assert_int_equal(test_run(EVAL " genppl --ar-judge %s --samples %s > %s/genppl.txt 2>&1", run_ar, out, tmp), 0);
    snprintf(path, sizeof path, "%s/genppl.txt", tmp);
    text = slurp(path);
    double ppl = 0;
    assert_non_null(strstr(text, "judge hdlm AR model"));
    assert_int_equal(sscanf(text, "gen_ppl %lf", &ppl), 1);
    assert_true(ppl > 1 && isfinite(ppl));
    free(text);
    assert_int_equal(test_run(EVAL " genppl --ar-judge %s --samples %s 2> %s", run_eps, out, err), 1);
    text = slurp(err);
    assert_non_null(strstr(text, "not an AR run"));
    free(text);
}

// The generation-metrics chain straight from hdlm-eval sample's records, no conversion between the steps: samples →
// judge features → MAUVE against the features of held-out text, and samples → gen-PPL (a tiny random GPT-2 judge,
// tests/reference/gpt2_ref.py).
static void test_samples_chain_into_the_judge(void **state) {
    (void)state;
    char judge[4200], samples[4200], q[4200], p[4200], out[4200];
    snprintf(judge, sizeof judge, "%s/judge", tmp);
    snprintf(samples, sizeof samples, "%s/chain.jsonl", tmp);
    snprintf(q, sizeof q, "%s/q.npy", tmp);
    snprintf(p, sizeof p, "%s/p.npy", tmp);
    snprintf(out, sizeof out, "%s/chain.txt", tmp);
    assert_int_equal(test_run("/usr/bin/python3 %s/tests/reference/gpt2_ref.py %s --vocab %d > /dev/null",
                              HDLM_SOURCE_DIR, judge, HDLM_GPT2_VOCAB), 0);
    // a text prompt, tokenized with the tokenizer the tool finds by itself (build/share/hdlm/gpt2)
    assert_int_equal(test_run("env -u HDLM_VOCAB " EVAL " sample --ckpt %s --n 8 --batch 4 --seed 1 --sampler "
                              "ancestral --steps 4 --no-mask --prompt ' The President said' --out %s > /dev/null 2>&1",
                              run_eps, samples), 0);
    cJSON *lines[8];
    assert_int_equal(read_samples(samples, lines, 8), 8);
    const int prompt_ids[4] = {383, 1992, 531, 0};   // GPT-2's " The President said" (3 tokens)
    for (int i = 0; i < 8; i++) {
        const cJSON *ids = cJSON_GetObjectItem(lines[i], "ids");
        assert_int_equal(cJSON_GetArraySize(ids), LENGTH);
        for (int k = 0; k < 3; k++) assert_int_equal(cJSON_GetArrayItem(ids, k)->valueint, prompt_ids[k]);
        assert_string_equal(cJSON_GetObjectItem(lines[i], "prompt")->valuestring, " The President said");
        assert_memory_equal(cJSON_GetObjectItem(lines[i], "text")->valuestring, " The President said", 19);
        cJSON_Delete(lines[i]);
    }
    assert_int_equal(test_run(EVAL " features --judge %s --samples %s --out %s --max-tokens %d > /dev/null", judge,
                              samples, q, LENGTH), 0);
    assert_int_equal(test_run(EVAL " features --judge %s --text-shards %s --chunk-len %d --count 3 --out %s "
                              "--max-tokens %d --role p_human > /dev/null", judge, data_dir, LENGTH, p, LENGTH), 0);
    assert_int_equal(test_run(EVAL " mauve --p %s --q %s --buckets 2 --json > %s", p, q, out), 0);
    cJSON *j = last_json(out);
    double mauve = cJSON_GetObjectItem(j, "mauve")->valuedouble;
    assert_true(mauve > 0 && mauve <= 1);
    cJSON_Delete(j);
    assert_int_equal(test_run(EVAL " genppl --judge %s --samples %s > %s", judge, samples, out), 0);
    char *text = slurp(out);
    double ppl = 0;
    assert_int_equal(sscanf(text, "gen_ppl %lf", &ppl), 1);
    assert_true(ppl > 1 && isfinite(ppl));
    assert_non_null(strstr(text, "n 8 dropped 0"));
    free(text);
}

// Infilling templates, end of text (keep / drop / pad on the same draws; the ar sampler stops early), top-k / top-p,
// and the generate one-liner. run_eos draws <|endoftext|> (50256) with probability ~0.14 per position.
static void test_templates_eos_and_generate(void **state) {
    (void)state;
    char out[4200], err[4200], keep[4200], drop[4200], pad[4200];
    snprintf(out, sizeof out, "%s/template.jsonl", tmp);
    snprintf(err, sizeof err, "%s/err.txt", tmp);
    // "A<mask:3> B<mask>C": A at 0, three holes, " B" at 4, one hole, C at 6; the rest generated
    assert_int_equal(test_run(EVAL " sample --ckpt %s --n 3 --steps 4 --no-mask --template 'A<mask:3> B<mask>C' "
                              "--top-k 50 --top-p 0.9 --out %s > /dev/null 2>&1", run_eps, out), 0);
    cJSON *lines[8];
    assert_int_equal(read_samples(out, lines, 8), 3);
    for (int i = 0; i < 3; i++) {
        const cJSON *ids = cJSON_GetObjectItem(lines[i], "ids");
        assert_int_equal(cJSON_GetArrayItem(ids, 0)->valueint, 32);    // "A"
        assert_int_equal(cJSON_GetArrayItem(ids, 4)->valueint, 347);   // " B"
        assert_int_equal(cJSON_GetArrayItem(ids, 6)->valueint, 34);    // "C"
        assert_string_equal(cJSON_GetObjectItem(lines[i], "prompt")->valuestring, "A<mask:3> B<mask>C");
        cJSON_Delete(lines[i]);
    }
    // end of text: one draw, three ways of ending it
    const char *modes[3] = {"keep", "drop", "pad"};
    char *paths[3] = {keep, drop, pad};
    for (int m = 0; m < 3; m++) {
        snprintf(paths[m], 4200, "%s/eos_%s.jsonl", tmp, modes[m]);
        assert_int_equal(test_run(EVAL " sample --ckpt %s --n 12 --batch 4 --seed 3 --prompt 'Hello' --eos %s "
                                  "--kv-cache --out %s > /dev/null 2>&1", run_eos, modes[m], paths[m]), 0);
    }
    cJSON *k[12], *d[12], *p[12];
    assert_int_equal(read_samples(keep, k, 12), 12);
    assert_int_equal(read_samples(drop, d, 12), 12);
    assert_int_equal(read_samples(pad, p, 12), 12);
    int stopped = 0;
    for (int i = 0; i < 12; i++) {
        const cJSON *ki = cJSON_GetObjectItem(k[i], "ids"), *di = cJSON_GetObjectItem(d[i], "ids"),
                    *pi = cJSON_GetObjectItem(p[i], "ids");
        int end = LENGTH;   // the first 50256 after the prompt ("Hello" is one token), inclusive
        for (int t = 1; t < LENGTH && end == LENGTH; t++)
            if (cJSON_GetArrayItem(ki, t)->valueint == 50256) end = t + 1;
        stopped += end < LENGTH;
        assert_int_equal(cJSON_GetArraySize(di), end);
        assert_int_equal(cJSON_GetArraySize(pi), LENGTH);
        for (int t = 0; t < LENGTH; t++) {
            int kt = cJSON_GetArrayItem(ki, t)->valueint;
            if (t < end) assert_int_equal(cJSON_GetArrayItem(di, t)->valueint, kt);
            assert_int_equal(cJSON_GetArrayItem(pi, t)->valueint, t < end ? kt : 50256);
        }
        cJSON_Delete(k[i]), cJSON_Delete(d[i]), cJSON_Delete(p[i]);
    }
    assert_true(stopped >= 6);   // P(no EOS in 15 draws) ~ 0.1: most samples end early
    // generate: the text, and --json the record
    assert_int_equal(test_run(EVAL " generate --ckpt %s --prompt 'Hello' --seed 3 > %s 2> %s", run_eos, out, err), 0);
    char *text = slurp(out);
    assert_memory_equal(text, "Hello", 5);
    assert_null(strchr(text, '{'));
    free(text);
    text = slurp(err);
    assert_non_null(strstr(text, "wrote 1 samples to standard output"));
    free(text);
    assert_int_equal(test_run(EVAL " generate --ckpt %s --prompt 'Hello' --n 2 --json > %s 2> /dev/null", run_ar, out),
                     0);
    assert_int_equal(read_samples(out, lines, 8), 2);
    cJSON_Delete(lines[0]), cJSON_Delete(lines[1]);
    // refusals, each naming the flag
    struct {
        const char *args, *message;
    } bad[] = {
        {"--template 'A B<mask:15>'", "--template: the hole at '<mask:15>' ends at position 17, past the model's length"},
        {"--template 'A<mask:x>'", "--template: expected <mask:N> with N in [1, 16]"},
        {"--template 'A<masked>'", "--template: expected <mask> or <mask:N>"},
        {"--prompt 'one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen'",
         "the prompt fixes all 16 positions of the model's length: nothing is left to generate"},
        {"--prompt 'one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
         "seventeen'", "--prompt: 17 more tokens from position 0 do not fit the model's length 16"},
        {"--prompt 'A' --prompt-ids 5", "--prompt, --template and --prompt-ids each set the prompt"},
        {"--eos stop", "--eos expects keep, drop or pad, got 'stop'"},
        {"--top-p 1.5", "--top-p expects a number in"},
        {"--sampler gamma-nar --top-k 5 --ckpt-gamma", "--top-k / --top-p do not apply to gamma-nar"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *ckpt = strstr(bad[i].args, "--ckpt-gamma") ? run_gamma : run_eps;
        char args[512];
        snprintf(args, sizeof args, "%s", bad[i].args);
        char *cut = strstr(args, " --ckpt-gamma");
        if (cut) *cut = '\0';
        int rc = test_run(EVAL " sample --ckpt %s --n 1 --out %s/bad.jsonl %s 2> %s", ckpt, tmp, args, err);
        assert_true(rc == 1 || rc == 2);
        text = slurp(err);
        if (!strstr(text, bad[i].message)) fail_msg("%s: expected '%s' in:\n%s", bad[i].args, bad[i].message, text);
        free(text);
    }
}

static void test_bad_inputs_refused(void **state) {
    (void)state;
    char err[4200];
    snprintf(err, sizeof err, "%s/err.txt", tmp);
    assert_int_equal(test_run(EVAL " perplexity --ckpt %s/nowhere --data %s 2> %s", tmp, data_dir,
                              err), 1);
    char *text = slurp(err);
    assert_non_null(strstr(text, "no such directory (expected a run directory, a checkpoint root or a checkpoint)"));
    free(text);
    assert_int_equal(test_run(EVAL " perplexity --ckpt %s --data %s 2> %s", run_eps, bad_dir, err),
                     1);
    text = slurp(err);
    assert_non_null(strstr(text, "has vocabulary size 60000, expected 50257"));   // as the trainer requires
    free(text);
    assert_int_equal(test_run(EVAL " sample --ckpt %s --n 2 --out %s/x.jsonl --sampler gamma-nar 2> %s",
                              run_eps, tmp, err), 1);
    text = slurp(err);
    assert_non_null(strstr(text, "does not fit the epsilon model"));
    free(text);
    assert_int_equal(test_run(EVAL " sample --ckpt %s --n 2 --out %s/x.jsonl --prompt-ids 50257 2> %s",
                              run_eps, tmp, err), 1);
    text = slurp(err);
    assert_non_null(strstr(text, "id 50257 is not a real token"));
    free(text);
    // Every tool names a checkpoint the same way: a run directory, a checkpoint root or a checkpoint; an empty one is
    // refused listing what was found.
    char where[3][4300];
    snprintf(where[0], sizeof where[0], "%s/eps", tmp);
    snprintf(where[1], sizeof where[1], "%s", run_eps);
    snprintf(where[2], sizeof where[2], "%s/step_000000001", run_eps);
    for (int w = 0; w < 3; w++) {
        assert_int_equal(test_run(EVAL " perplexity --ckpt %s --data %s --max-chunks 1 --copies 2 --rounds 2 > %s",
                                  where[w], data_dir, err), 0);
        text = slurp(err);
        assert_non_null(strstr(text, "step_000000001"));
        free(text);
    }
    assert_int_equal(test_run("mkdir -p %s/norun/checkpoints/step_000000003", tmp), 0);
    assert_int_equal(test_run(EVAL " sample --ckpt %s/norun --n 1 --out %s/x.jsonl 2> %s", tmp, tmp, err), 1);
    text = slurp(err);
    assert_non_null(strstr(text, "no complete checkpoint in"));
    assert_non_null(strstr(text, "step_000000003 (no COMPLETE marker: the writer stopped early)"));
    free(text);
    assert_int_equal(test_run("'%s/hdlm-convert' export %s/norun %s/x.safetensors 2> %s", HDLM_BIN_DIR, tmp, tmp,
                              err), 1);
    text = slurp(err);
    assert_non_null(strstr(text, "no complete checkpoint in"));
    free(text);
    // An incomplete checkpoint (no COMPLETE marker) is refused (other damage: tests/test_convert.c, test_mpi_checkpoint.c).
    assert_int_equal(test_run("rm -rf %s/partial && cp -r %s/step_000000001 %s/partial && rm %s/partial/COMPLETE",
                              tmp, run_eps, tmp, tmp), 0);
    assert_int_equal(test_run(EVAL " perplexity --ckpt %s/partial --data %s 2> %s", tmp,
                              data_dir, err), 1);
    text = slurp(err);
    assert_non_null(strstr(text, "partial"));
    free(text);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_perplexity_one_and_two_ranks),
        cmocka_unit_test(test_sample_jsonl),
        cmocka_unit_test(test_ar_run),
        cmocka_unit_test(test_samples_chain_into_the_judge),
        cmocka_unit_test(test_templates_eos_and_generate),
        cmocka_unit_test(test_bad_inputs_refused),
    };
    return cmocka_run_group_tests_name("eval_tools", tests, setup, NULL);
}

// hdlm-convert and include/hdlm/model_io.h: export -> import round trips are bit-exact (EMA and raw, with a key
// prefix); weights of a model built and initialised by the PyTorch reference (tests/reference/ddit.py, float64) import
// from F32, BF16 and F16 safetensors and give the reference's outputs, and our exports load into it with
// strict=True; malformed files and other model shapes are refused naming the problem; the documented h5py lines
// read a converted checkpoint; a writer killed by SIGKILL mid-save leaves the previous checkpoint usable.
#define _GNU_SOURCE   // open_memstream
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "hdlm/checkpoint.h"
#include "hdlm/common.h"
#include "hdlm/config.h"
#include "hdlm/model_io.h"
#include "hdlm/rng.h"

enum { WIDTH = 32, LAYERS = 2, HEADS = 4, COND = 16, LENGTH = 8, BATCH = 2 };

// snprintf that fails the test instead of truncating a path.
static void fmt_into(char *out, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fmt_into(char *out, size_t size, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, size, fmt, ap);
    va_end(ap);
    assert_true(n >= 0 && (size_t)n < size);
}

// The configuration of the small test models, as overrides of the presets (for the tool and for the library).
static const char *preset(hdlm_family f) { return f == HDLM_FAMILY_GAMMA ? "gamma_hdlm" : "epsilon_hdlm"; }

static void overrides_text(char *buf, size_t n, int width) {
    snprintf(buf, n, "model.hidden_size=%d model.n_blocks=%d model.n_heads=%d model.cond_dim=%d model.length=%d "
             "model.dropout=0", width, LAYERS, HEADS, COND, LENGTH);
}

static void config_for(hdlm_train_config *c, hdlm_family f, int width) {
    char path[4200], ov[512];
    fmt_into(path, sizeof path, "%s/jobs/configs/%s.yaml", HDLM_SOURCE_DIR, preset(f));
    overrides_text(ov, sizeof ov, width);
    memset(c, 0, sizeof *c);
    assert_int_equal(hdlm_config_defaults(&hdlm_train_config_schema, c), 0);
    assert_int_equal(hdlm_config_load_yaml(&hdlm_train_config_schema, c, path), 0);
    for (char *tok = strtok(ov, " "); tok; tok = strtok(NULL, " "))
        assert_int_equal(hdlm_config_override(&hdlm_train_config_schema, c, tok), 0);
}

static hdlm_model *model_for(hdlm_family f, int width) {
    hdlm_train_config c;
    config_for(&c, f, width);
    hdlm_model_config mc;
    assert_int_equal(hdlm_train_config_model(&c, &mc), 0);
    hdlm_model *m;
    assert_int_equal(hdlm_model_create(&m, &mc), 0);
    hdlm_model_init(m, 1);
    return m;
}

static void fill_random(float *x, size_t n, uint64_t seed) {
    hdlm_rng rng;
    hdlm_rng_init(&rng, hdlm_rng_key(seed, 0, 0, HDLM_RNG_DATA));
    for (size_t i = 0; i < n; i++) x[i] = (float)hdlm_rng_uniform(&rng) * 2.0f - 1.0f;
}

static int convert(const char *args) { return test_run("%s/hdlm-convert %s", HDLM_BIN_DIR, args); }

static int import_file(const char *file, hdlm_family f, int width, const char *run, const char *extra) {
    char ov[512], cmd[10000];
    overrides_text(ov, sizeof ov, width);
    fmt_into(cmd, sizeof cmd, "import %s --config %s/jobs/configs/%s.yaml %s --out %s %s", file, HDLM_SOURCE_DIR,
             preset(f), ov, run, extra);
    return convert(cmd);
}

static hdlm_model *load_run(const char *run, const char *group) {
    char dir[4200];
    fmt_into(dir, sizeof dir, "%s/checkpoints/step_000000000", run);
    hdlm_model *m;
    if (hdlm_model_load_checkpoint(&m, NULL, dir, group) != 0) fail_msg("%s", hdlm_last_error());
    return m;
}

// Different raw and EMA weights survive checkpoint -> safetensors -> checkpoint bit for bit, with and without a key
// prefix, for both families.
static void test_export_import_round_trip_is_bit_exact(void **state) {
    (void)state;
    for (int fam = 0; fam < 2; fam++) {
        hdlm_family f = (hdlm_family)fam;
        const char *dir = test_tmp_dir(fam ? "convert_round_gamma" : "convert_round_eps");
        hdlm_model *m = model_for(f, WIDTH);
        float *ema = hdlm_malloc(m->n_params * sizeof(float));
        fill_random(m->params, m->n_params, 10 + fam);
        fill_random(ema, m->n_params, 20 + fam);
        hdlm_train_config c;
        config_for(&c, f, WIDTH);
        char *yaml;
        size_t yaml_len;
        FILE *y = open_memstream(&yaml, &yaml_len);
        hdlm_config_write_yaml(&hdlm_train_config_schema, &c, y);
        fclose(y);
        hdlm_tensor *descs;
        int n;
        hdlm_model_trainable_tensors(m, &descs, &n);
        hdlm_ckpt_group groups[] = {{"params", m->params, 0}, {"ema", ema, 0}};
        hdlm_ckpt_contents cc = {descs, n, groups, 2, NULL, 0, yaml, NULL, 0};
        hdlm_ckpt_retention keep = {1, 0};
        char root[4200], ckpt[4200], out[4200], run[4200], args[20000];
        fmt_into(root, sizeof root, "%s/ckpt", dir);
        assert_int_equal(hdlm_checkpoint_save(root, 7, &cc, &keep, NULL), 0);
        fmt_into(ckpt, sizeof ckpt, "%s/step_000000007", root);
        const struct {
            const char *export_flags, *import_flags, *name;
            const float *want;
        } runs[] = {{"", "--weights-only", "ema", ema},
                    {"--raw", "--weights-only", "raw", m->params},
                    {"--prefix model.", "--prefix model. --weights-only", "prefixed", ema}};
        for (int r = 0; r < (f == HDLM_FAMILY_EPSILON ? 3 : 1); r++) {   // the options once (tool start-ups cost)
            fmt_into(out, sizeof out, "%s/%s.safetensors", dir, runs[r].name);
            fmt_into(args, sizeof args, "export %s %s %s", ckpt, out, runs[r].export_flags);
            assert_int_equal(convert(args), 0);
            fmt_into(run, sizeof run, "%s/run_%s", dir, runs[r].name);
            assert_int_equal(import_file(out, f, WIDTH, run, runs[r].import_flags), 0);
            for (int g = 0; g < 2; g++) {   // the import holds the weights as both params and ema
                hdlm_model *back = load_run(run, g ? "ema" : "params");
                assert_int_equal(back->n_params, m->n_params);
                assert_memory_equal(back->params, runs[r].want, m->n_params * sizeof(float));
                hdlm_model_free(back);
            }
        }
        if (f == HDLM_FAMILY_EPSILON) {   // a prefixed file without --prefix: every key is unexpected
            fmt_into(out, sizeof out, "%s/prefixed.safetensors", dir);
            hdlm_safetensors *st;
            assert_int_equal(hdlm_safetensors_open(&st, out), 0);
            assert_int_not_equal(hdlm_safetensors_load_model(st, m, NULL), 0);
            assert_error_contains("unexpected tensor 'model.vocab_embed.embedding'");
            hdlm_safetensors_close(st);
        }
        free(descs);
        free(yaml);
        free(ema);
        hdlm_model_free(m);
    }
}

// ---- weights made by the PyTorch reference ----

static char case_dirs[2][4200];

static void write_case_config(const char *dir, hdlm_family f) {
    char path[4300], text[1024];
    fmt_into(path, sizeof path, "%s/config.json", dir);
    int n = snprintf(text, sizeof text,
                     "{\"family\": \"%s\", \"width\": %d, \"n_layers\": %d, \"n_heads\": %d, \"mlp_ratio\": 4, "
                     "\"cond_dim\": %d, \"vocab\": 50258, \"rotary\": \"exact\", \"dropout\": 0.0, \"gamma\": 0.01, "
                     "\"batch\": %d, \"length\": %d, \"seed\": %d}\n",
                     f == HDLM_FAMILY_GAMMA ? "gamma" : "epsilon", WIDTH, LAYERS, HEADS, COND, BATCH, LENGTH, 3 + f);
    test_write_file(path, text, (size_t)n);
}

static int setup_reference_cases(void **state) {
    (void)state;
    for (int fam = 0; fam < 2; fam++) {
        fmt_into(case_dirs[fam], sizeof case_dirs[fam], "%s", test_tmp_dir(fam ? "convert_ref_gamma"
                                                                                : "convert_ref_eps"));
        write_case_config(case_dirs[fam], (hdlm_family)fam);
    }
    return test_run("/usr/bin/python3 %s/tests/reference/safetensors_ref.py make %s %s", HDLM_SOURCE_DIR,
                    case_dirs[0], case_dirs[1]) == 0 ? 0 : -1;
}

static void *read_bin(const char *dir, const char *name, size_t bytes) {
    char path[4300];
    fmt_into(path, sizeof path, "%s/%s", dir, name);
    char *data;
    size_t len;
    if (hdlm_read_file(path, &data, &len) != 0) fail_msg("%s", hdlm_last_error());
    assert_int_equal(len, bytes);
    return data;
}

// Largest |ours − ref| relative to the largest |ref|.
static double scaled_error(const float *ours, const double *ref, size_t n) {
    double err = 0.0, scale = 0.0;
    for (size_t i = 0; i < n; i++) {
        err = fmax(err, fabs((double)ours[i] - ref[i]));
        scale = fmax(scale, fabs(ref[i]));
    }
    return err / scale;
}

// Our fp32 forward against the reference's float64 forward with the same (fp32) weights: as in test_model.c, errors
// relative to the largest output are of order 1e-6 (fp32 roundoff through 2 layers); 1e-5 leaves a 10x margin while
// a misplaced tensor (e.g. transposed or swapped) gives errors of order 1.
#define OUT_TOL 1e-5

static void test_pytorch_weights_import_with_same_outputs(void **state) {
    (void)state;
    char run[4300], out[4300], args[10000] = "";
    for (int fam = 0; fam < 2; fam++) {
        hdlm_family f = (hdlm_family)fam;
        const char *dir = case_dirs[fam];
        fmt_into(out, sizeof out, "%s/model.safetensors", dir);
        fmt_into(run, sizeof run, "%s/run", dir);
        assert_int_equal(import_file(out, f, WIDTH, run, "--weights-only"), 0);
        if (f == HDLM_FAMILY_EPSILON) {   // not twice into the same run (step 0 would become latest again)
            char log[4400], redirected[9000];
            fmt_into(log, sizeof log, "%s/import_again.log", dir);
            fmt_into(redirected, sizeof redirected, "%s 2> %s", out, log);
            assert_int_not_equal(import_file(redirected, f, WIDTH, run, ""), 0);
            assert_int_equal(test_run("grep -q 'already holds checkpoints' %s", log), 0);
        }
        hdlm_model *m = load_run(run, "ema");
        size_t n = (size_t)BATCH * LENGTH;
        int32_t *tokens = read_bin(dir, "tokens.i32", n * sizeof(int32_t));
        float *sigma = f == HDLM_FAMILY_GAMMA ? read_bin(dir, "sigma.f32", n * sizeof(float)) : NULL;
        double *ref = read_bin(dir, "out.f64", n * m->config.vocab * sizeof(double));
        uint32_t ids[BATCH * LENGTH];
        for (size_t i = 0; i < n; i++) ids[i] = (uint32_t)tokens[i];
        hdlm_model_input in = {.tokens = ids, .sigma = sigma, .batch = BATCH, .length = LENGTH};
        assert_int_equal(hdlm_model_forward(m, &in), 0);
        double e = scaled_error(m->out, ref, n * m->config.vocab);
        printf("  %s: outputs of the imported weights vs PyTorch float64: max error %.2e of the largest (tol %.0e)\n",
               hdlm_family_name(f), e, OUT_TOL);
        assert_true(e <= OUT_TOL);
        // Our export of it loads into the reference with strict=True and gives the same outputs exactly.
        char ckpt[4400], exp[4400];
        fmt_into(ckpt, sizeof ckpt, "%s/checkpoints/step_000000000", run);
        fmt_into(exp, sizeof exp, "%s/export.safetensors", dir);
        char cmd[9000];
        fmt_into(cmd, sizeof cmd, "export %s %s", ckpt, exp);
        assert_int_equal(convert(cmd), 0);
        size_t at = strlen(args);
        fmt_into(args + at, sizeof args - at, " %s %s", exp, dir);
        free(tokens);
        free(sigma);
        free(ref);
        hdlm_model_free(m);
    }
    assert_int_equal(test_run("/usr/bin/python3 %s/tests/reference/safetensors_ref.py check%s", HDLM_SOURCE_DIR, args),
                     0);
}

// BF16 and F16 files import to exactly the fp32 values they hold.
static void test_half_precision_import(void **state) {
    (void)state;
    const char *kinds[] = {"bf16", "f16"};
    for (int k = 0; k < 2; k++) {
        char file[4300], ref[4300];
        fmt_into(file, sizeof file, "%s/model_%s.safetensors", case_dirs[1], kinds[k]);
        fmt_into(ref, sizeof ref, "%s/model_%s_as_f32.safetensors", case_dirs[1], kinds[k]);
        hdlm_model *a = model_for(HDLM_FAMILY_GAMMA, WIDTH), *b = model_for(HDLM_FAMILY_GAMMA, WIDTH);
        hdlm_safetensors *st;
        assert_int_equal(hdlm_safetensors_open(&st, file), 0);
        assert_int_equal(st->tensors[0].dtype, k == 0 ? HDLM_ST_BF16 : HDLM_ST_F16);
        if (hdlm_safetensors_load_model(st, a, NULL) != 0) fail_msg("%s", hdlm_last_error());
        hdlm_safetensors_close(st);
        assert_int_equal(hdlm_safetensors_open(&st, ref), 0);
        assert_int_equal(hdlm_safetensors_load_model(st, b, NULL), 0);
        hdlm_safetensors_close(st);
        assert_memory_equal(a->params, b->params, a->n_params * sizeof(float));
        hdlm_model_free(a);
        hdlm_model_free(b);
    }
}

// ---- malformed files ----

static char *file_bytes;
static size_t file_len;
static char bad_dir[4200];

// The ε reference file with its JSON header edited (`from` -> `to`, first occurrence) and the length fixed up.
static const char *edited(const char *name, const char *from, const char *to) {
    uint64_t hlen = 0;
    for (int k = 7; k >= 0; k--) hlen = hlen << 8 | (unsigned char)file_bytes[k];
    char *header = hdlm_malloc(hlen + 1);
    memcpy(header, file_bytes + 8, hlen);
    header[hlen] = 0;
    char *at = strstr(header, from);
    if (!at) fail_msg("'%s' is not in the header", from);
    size_t new_len = hlen - strlen(from) + strlen(to);
    char *buf = hdlm_malloc(file_len - hlen + new_len);
    for (int k = 0; k < 8; k++) buf[k] = (char)(new_len >> (8 * k));
    size_t pre = (size_t)(at - header);
    memcpy(buf + 8, header, pre);
    memcpy(buf + 8 + pre, to, strlen(to));
    memcpy(buf + 8 + pre + strlen(to), at + strlen(from), hlen - pre - strlen(from));
    memcpy(buf + 8 + new_len, file_bytes + 8 + hlen, file_len - 8 - hlen);
    static char path[4300];
    fmt_into(path, sizeof path, "%s/%s.safetensors", bad_dir, name);
    test_write_file(path, buf, file_len - hlen + new_len);
    free(buf);
    free(header);
    return path;
}

static void expect_refused(const char *path, hdlm_family f, int width, const char *needle) {
    hdlm_safetensors *st = NULL;
    int rc = hdlm_safetensors_open(&st, path);
    if (rc == 0) {
        hdlm_model *m = model_for(f, width);
        rc = hdlm_safetensors_load_model(st, m, NULL);
        hdlm_model_free(m);
        hdlm_safetensors_close(st);
    }
    assert_int_not_equal(rc, 0);
    assert_error_contains(path);
    assert_error_contains(needle);
}

static void test_malformed_safetensors_refused(void **state) {
    (void)state;
    char path[4300], from[128], to[128];
    fmt_into(path, sizeof path, "%s/model.safetensors", case_dirs[0]);
    assert_int_equal(hdlm_read_file(path, &file_bytes, &file_len), 0);
    fmt_into(bad_dir, sizeof bad_dir, "%s", test_tmp_dir("convert_bad"));
    const char *dir = bad_dir;
    const size_t embed_bytes = (size_t)50258 * WIDTH * 4;

    // Header length: past the end of the file; and a file shorter than the length field.
    fmt_into(path, sizeof path, "%s/long_header.safetensors", dir);
    char saved[8];
    memcpy(saved, file_bytes, 8);
    memset(file_bytes, 0x7f, 8);
    test_write_file(path, file_bytes, file_len);
    memcpy(file_bytes, saved, 8);
    expect_refused(path, HDLM_FAMILY_EPSILON, WIDTH, "header length");
    fmt_into(path, sizeof path, "%s/tiny.safetensors", dir);
    test_write_file(path, "abc", 3);
    expect_refused(path, HDLM_FAMILY_EPSILON, WIDTH, "too short");
    // Truncated data: the last tensor's offsets run past the end.
    fmt_into(path, sizeof path, "%s/truncated.safetensors", dir);
    test_write_file(path, file_bytes, file_len - 4);
    expect_refused(path, HDLM_FAMILY_EPSILON, WIDTH, "out of range");
    expect_refused(edited("not_json", "{", "["), HDLM_FAMILY_EPSILON, WIDTH, "not valid JSON");
    fmt_into(from, sizeof from, "[0, %zu]", embed_bytes);
    fmt_into(to, sizeof to, "[0, %zu]", embed_bytes * 1000);
    expect_refused(edited("offsets", from, to), HDLM_FAMILY_EPSILON, WIDTH, "out of range");
    fmt_into(from, sizeof from, "[%zu, %zu]", embed_bytes, embed_bytes + WIDTH * 4);
    fmt_into(to, sizeof to, "[%zu, %zu]", embed_bytes - 4, embed_bytes + WIDTH * 4 - 4);
    expect_refused(edited("overlap", from, to), HDLM_FAMILY_EPSILON, WIDTH, "overlap");
    expect_refused(edited("span", "\"shape\": [50258", "\"shape\": [50257"), HDLM_FAMILY_EPSILON, WIDTH,
                   "data_offsets span");
    expect_refused(edited("dtype", "\"F32\"", "\"F64\""), HDLM_FAMILY_EPSILON, WIDTH, "dtype 'F64'");
    expect_refused(edited("twice", "blocks.0.norm2.weight", "blocks.0.norm1.weight"), HDLM_FAMILY_EPSILON, WIDTH,
                   "'blocks.0.norm1.weight' appears twice");
    expect_refused(edited("extra", "output_layer.linear.bias", "output_layer.linear.bias2"), HDLM_FAMILY_EPSILON,
                   WIDTH, "unexpected tensor 'output_layer.linear.bias2'");
    // A zero-size extra tensor holds no bytes: it is an unexpected tensor, not an "overlap", wherever it points.
    fmt_into(from, sizeof from, "\"output_layer.linear.bias\"");
    fmt_into(to, sizeof to, "\"zero\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [8, 8]}, %s", from);
    expect_refused(edited("zero_size", from, to), HDLM_FAMILY_EPSILON, WIDTH, "unexpected tensor 'zero'");
    // A name holding \u0000 would be cut there by the JSON parser; invalid UTF-8 anywhere in the header.
    expect_refused(edited("nul_name", "output_layer.linear.bias", "output_layer.linear.bias\\u0000x"),
                   HDLM_FAMILY_EPSILON, WIDTH, "\\u0000");
    expect_refused(edited("utf8", "output_layer.linear.bias", "output_layer.linear.bi\xc3" "as"), HDLM_FAMILY_EPSILON,
                   WIDTH, "not valid UTF-8");
    // Another model: wrong shape (wider), missing tensors (ε weights for a γ model), extra ones (γ for ε).
    fmt_into(path, sizeof path, "%s/model.safetensors", case_dirs[0]);
    expect_refused(path, HDLM_FAMILY_EPSILON, 2 * WIDTH,
                   "tensor 'vocab_embed.embedding' has shape [50258, 32], the model expects [50258, 64]");
    expect_refused(path, HDLM_FAMILY_GAMMA, WIDTH, "missing tensor 'sigma_map.mlp.0.weight'");
    fmt_into(path, sizeof path, "%s/model.safetensors", case_dirs[1]);
    expect_refused(path, HDLM_FAMILY_EPSILON, WIDTH, "unexpected tensor 'sigma_map.mlp.0.weight'");
    // A rotary buffer of another base.
    hdlm_safetensors *st;
    fmt_into(path, sizeof path, "%s/model.safetensors", case_dirs[0]);
    assert_int_equal(hdlm_safetensors_open(&st, path), 0);
    size_t data_start = file_len - st->size;
    for (int i = 0; i < st->n_tensors; i++)
        if (strcmp(st->tensors[i].name, "rotary_emb.inv_freq") == 0) {
            float v = 0.5f;
            memcpy(file_bytes + data_start + st->tensors[i].begin + 4, &v, 4);
        }
    hdlm_safetensors_close(st);
    fmt_into(path, sizeof path, "%s/inv_freq.safetensors", dir);
    test_write_file(path, file_bytes, file_len);
    expect_refused(path, HDLM_FAMILY_EPSILON, WIDTH, "rotary_emb.inv_freq'[1] = 0.5");
    // The tool says the same and fails.
    char run[4400], log[4400];
    fmt_into(run, sizeof run, "%s/run", dir);
    fmt_into(log, sizeof log, "%s/import.log", dir);
    char redirected[9000];
    fmt_into(redirected, sizeof redirected, "%s 2> %s", path, log);
    assert_int_not_equal(import_file(redirected, HDLM_FAMILY_EPSILON, WIDTH, run, ""), 0);
    assert_int_equal(test_run("grep -q \"inv_freq'\\[1\\] = 0.5\" %s", log), 0);
    free(file_bytes);
}

// A checkpoint of another model shape is refused by the model loader with the store's message; a missing group too.
static void test_checkpoint_of_other_shape_refused(void **state) {
    (void)state;
    char run[4300], ckpt[4400];
    fmt_into(run, sizeof run, "%s/run", case_dirs[0]);
    fmt_into(ckpt, sizeof ckpt, "%s/checkpoints/step_000000000", run);
    hdlm_model *wide = model_for(HDLM_FAMILY_EPSILON, 2 * WIDTH);
    assert_int_not_equal(hdlm_model_read_checkpoint(wide, ckpt, "ema"), 0);
    assert_error_contains(ckpt);
    assert_error_contains("vocab_embed.embedding");
    hdlm_model_free(wide);
    hdlm_model *gamma = model_for(HDLM_FAMILY_GAMMA, WIDTH);
    assert_int_not_equal(hdlm_model_read_checkpoint(gamma, ckpt, "ema"), 0);
    assert_error_contains(ckpt);
    hdlm_model_free(gamma);
    hdlm_model *m = model_for(HDLM_FAMILY_EPSILON, WIDTH);
    assert_int_equal(hdlm_model_read_checkpoint(m, ckpt, "params"), 0);
    assert_int_not_equal(hdlm_model_read_checkpoint(m, ckpt, "adam_m"), 0);   // imported with --weights-only
    assert_error_contains("adam_m");
    hdlm_model_free(m);
}

// The h5py lines of docs/checkpoint-format.md, run on the imported γ checkpoint, give the export's tensors.
static void test_documented_h5py_lines(void **state) {
    (void)state;
    char ckpt[4400], exp[4400];
    fmt_into(ckpt, sizeof ckpt, "%s/run/checkpoints/step_000000000", case_dirs[1]);
    fmt_into(exp, sizeof exp, "%s/export.safetensors", case_dirs[1]);
    assert_int_equal(test_run("/usr/bin/python3 %s/tests/reference/h5py_doc_check.py %s/docs/checkpoint-format.md "
                              "%s %s", HDLM_SOURCE_DIR, HDLM_SOURCE_DIR, ckpt, exp), 0);
}

// ---- kill -9 during a save ----

static bool exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static void test_kill_during_save_keeps_previous_checkpoint(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("convert_kill");
    char root[4200], tmp[4300], step2[4300], latest[4300];
    fmt_into(root, sizeof root, "%s/checkpoints", dir);
    fmt_into(tmp, sizeof tmp, "%s/step_000000002.tmp", root);
    fmt_into(step2, sizeof step2, "%s/step_000000002", root);
    hdlm_train_config c;
    config_for(&c, HDLM_FAMILY_EPSILON, WIDTH);
    hdlm_model *m = model_for(HDLM_FAMILY_EPSILON, WIDTH);
    fill_random(m->params, m->n_params, 30);
    assert_int_equal(hdlm_model_save_checkpoint(root, 1, m, &c, true, NULL), 0);

    // A child writes a 4 x 256 MB step 2 and is killed as soon as its temporary directory appears.
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        static const hdlm_tensor big[] = {{.name = "big.weight", .ndim = 2, .shape = {16384, 4096}, .offset = 0}};
        size_t n = (size_t)16384 * 4096;
        float *data = hdlm_calloc(n, sizeof(float));
        hdlm_ckpt_group groups[] = {{"params", data, 0}, {"ema", data, 0}, {"adam_m", data, 0},
                                    {"adam_v", data, 0}};
        hdlm_ckpt_contents cc = {big, 1, groups, 4, NULL, 0, "model: {}\n", NULL, 0};
        hdlm_ckpt_retention keep = {3, 0};
        _exit(hdlm_checkpoint_save(root, 2, &cc, &keep, NULL) == 0 ? 0 : 3);
    }
    struct timespec pause = {0, 200000};   // 0.2 ms
    for (int i = 0; i < 100000 && !exists(tmp); i++) nanosleep(&pause, NULL);
    assert_true(exists(tmp));
    kill(pid, SIGKILL);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);   // killed mid-write, not finished

    assert_false(exists(step2));
    fmt_into(latest, sizeof latest, "%s/latest", root);
    char *text;
    size_t len;
    assert_int_equal(hdlm_read_file(latest, &text, &len), 0);
    assert_non_null(strstr(text, "step_000000001"));
    free(text);
    char found[4300];
    assert_int_equal(hdlm_checkpoint_find_latest(root, found, sizeof found), 0);
    assert_non_null(strstr(found, "step_000000001"));
    hdlm_model *back;
    assert_int_equal(hdlm_model_load_checkpoint(&back, NULL, found, "params"), 0);
    assert_memory_equal(back->params, m->params, m->n_params * sizeof(float));
    hdlm_model_free(back);

    // The run resumes and saves (at another step): the stale temporary directory goes, latest moves on.
    assert_int_equal(hdlm_model_save_checkpoint(root, 3, m, &c, true, NULL), 0);
    assert_false(exists(tmp));
    assert_int_equal(hdlm_checkpoint_find_latest(root, found, sizeof found), 0);
    assert_non_null(strstr(found, "step_000000003"));
    assert_int_equal(hdlm_model_load_checkpoint(&back, NULL, found, "ema"), 0);
    assert_memory_equal(back->params, m->params, m->n_params * sizeof(float));
    hdlm_model_free(back);
    hdlm_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_export_import_round_trip_is_bit_exact),
        cmocka_unit_test(test_pytorch_weights_import_with_same_outputs),
        cmocka_unit_test(test_half_precision_import),
        cmocka_unit_test(test_malformed_safetensors_refused),
        cmocka_unit_test(test_checkpoint_of_other_shape_refused),
        cmocka_unit_test(test_documented_h5py_lines),
        cmocka_unit_test(test_kill_during_save_keeps_previous_checkpoint),
    };
    return cmocka_run_group_tests(tests, setup_reference_cases, NULL);
}

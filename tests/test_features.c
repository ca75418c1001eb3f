// MAUVE feature files (docs/mauve.md): .npy and HDF5 writers read back by numpy / h5py, the MAUVE reference
// run on those very files, the validating reader on bad files, and `hdlm-eval mauve` end to end.
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

#define PYTHON "/usr/bin/python3"
#define REFERENCE PYTHON " " HDLM_SOURCE_DIR "/tests/reference/mauve_reference.py"
// A singleton MPI process need not start Open MPI's runtime daemon (halves the start-up of every tool run); Open MPI's
// own allocations would otherwise fail the tool under LeakSanitizer in the sanitizer build.
#define EVAL "OMPI_MCA_ess_singleton_isolated=1 ASAN_OPTIONS=detect_leaks=0 " HDLM_BIN_DIR "/hdlm-eval"

static char *join(const char *dir, const char *name) {
    static char paths[16][4200];
    static int next;
    char *p = paths[next++ % 16];
    snprintf(p, sizeof paths[0], "%s/%s", dir, name);
    return p;
}

static void test_npy_round_trip_and_numpy_reads_it(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("features_npy");
    float f32[12];
    double f64[12];
    for (int i = 0; i < 12; i++) f32[i] = (float)i / 7, f64[i] = (double)i / 7;
    assert_int_equal(hdlm_npy_write_f32(join(dir, "a.npy"), f32, 3, 4), 0);
    assert_int_equal(hdlm_npy_write_f64(join(dir, "b.npy"), f64, 3, 4), 0);
    // numpy sees the dtype, C order, shape and the exact values; the v1.0 header is 64-byte aligned
    assert_int_equal(test_run(PYTHON " -c \"import numpy as np, os; a = np.load('%s'); b = np.load('%s');"
                              " assert a.dtype == np.float32 and b.dtype == np.float64;"
                              " assert a.shape == (3, 4) and b.shape == (3, 4) and a.flags.c_contiguous;"
                              " assert (a.ravel() == np.arange(12, dtype=np.float32) / np.float32(7)).all();"
                              " assert (b.ravel() == np.arange(12) / 7).all();"
                              " assert os.path.getsize('%s') == 128 + 48\"",
                              join(dir, "a.npy"), join(dir, "b.npy"), join(dir, "a.npy")),
                     0);
    hdlm_feature_matrix m;
    assert_int_equal(hdlm_features_read(join(dir, "a.npy"), &m), 0);
    assert_int_equal(m.n, 3);
    assert_int_equal(m.d, 4);
    for (int i = 0; i < 12; i++) assert_true(m.data[i] == (double)f32[i]);
    hdlm_feature_matrix_free(&m);
    assert_int_equal(hdlm_features_read(join(dir, "b.npy"), &m), 0);
    for (int i = 0; i < 12; i++) assert_true(m.data[i] == f64[i]);
    hdlm_feature_matrix_free(&m);
    // and a file numpy itself wrote (its own header layout)
    assert_int_equal(test_run(PYTHON " -c \"import numpy as np; np.save('%s', np.ones((2, 5)) * 0.5)\"",
                              join(dir, "np.npy")),
                     0);
    assert_int_equal(hdlm_features_read(join(dir, "np.npy"), &m), 0);
    assert_int_equal(m.n, 2);
    assert_int_equal(m.d, 5);
    assert_true(m.data[9] == 0.5);
    hdlm_feature_matrix_free(&m);
}

static void test_h5_export_read_by_h5py(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("features_h5");
    const char *path = join(dir, "feats.h5");
    float feats[3 * 2] = {0.5f, -1.0f, 2.0f, 0.25f, 3.0f, -0.125f};
    int32_t lengths[3] = {2, 0, 3};
    int32_t tokens[3 * 3] = {15496, 995, 77, 0, 0, 0, 464, 2068, 7586};
    int64_t index[3] = {10, 11, 12};
    const char *texts[3] = {"Hello world", "", "caf\xc3\xa9 \xe2\x80\x94 ok"};
    hdlm_feature_export e = {
        .n = 3, .d = 2, .features = feats, .lengths = lengths, .sample_index = index, .token_ids = tokens,
        .max_tokens = 3, .texts = texts,
        .attrs = {.featurizer = "gpt2-large", .layer = "final, after ln_f", .position = "last token",
                  .tokenizer_sha256 = "abc123", .role = "q_model", .dataset = "sotu", .max_text_length = 128,
                  .checkpoint_step = 5000, .seed = 25}};
    assert_int_equal(hdlm_features_write_h5(path, &e), 0);
    const char *out = join(dir, "h5.json");
    assert_int_equal(test_run(REFERENCE " check_h5 %s %s", path, out), 0);
    cJSON *j = test_load_json(out);
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(j, "features");
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(f, "dtype")->valuestring, "float32");
    assert_int_equal(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(f, "shape"), 0)->valueint, 3);
    assert_int_equal(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(f, "shape"), 1)->valueint, 2);
    assert_true(test_json_number(j, "features_sum") == 4.625);
    assert_string_equal(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "lengths"), "dtype")->valuestring,
        "int32");
    assert_string_equal(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "sample_index"), "dtype")->valuestring,
        "int64");
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(j, "token_ids");
    assert_int_equal(cJSON_GetArrayItem(cJSON_GetArrayItem(ids, 0), 1)->valueint, 995);
    assert_int_equal(cJSON_GetArrayItem(cJSON_GetArrayItem(ids, 0), 2)->valueint, -1);   // padding past lengths
    assert_int_equal(cJSON_GetArrayItem(cJSON_GetArrayItem(ids, 1), 0)->valueint, -1);
    assert_int_equal(cJSON_GetArrayItem(cJSON_GetArrayItem(ids, 2), 2)->valueint, 7586);
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "texts");
    assert_string_equal(cJSON_GetArrayItem(t, 0)->valuestring, "Hello world");
    assert_string_equal(cJSON_GetArrayItem(t, 2)->valuestring, texts[2]);
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, "attrs");
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(a, "role")->valuestring, "q_model");
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(a, "layer")->valuestring, "final, after ln_f");
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(a, "dtype")->valuestring, "float32");
    assert_int_equal((int)test_json_number(a, "max_text_length"), 128);
    assert_int_equal((int)test_json_number(a, "checkpoint_step"), 5000);
    cJSON_Delete(j);

    hdlm_feature_matrix m;
    assert_int_equal(hdlm_features_read(path, &m), 0);
    assert_int_equal(m.n, 3);
    assert_int_equal(m.d, 2);
    for (int i = 0; i < 6; i++) assert_true(m.data[i] == (double)feats[i]);
    hdlm_feature_matrix_free(&m);
    int32_t *got;
    int64_t n;
    assert_int_equal(hdlm_features_read_lengths(path, &got, &n), 0);
    assert_int_equal(n, 3);
    assert_int_equal(got[2], 3);
    free(got);
}

// Closed-form float32 features (a third family: more points on P than on Q).
static void fixture_f32(float *x, int n, int d, double phase) {
    for (int i = 0; i < n; i++)
        for (int j = 0; j < d; j++)
            x[i * d + j] = (float)(sin(0.21 * i + 0.9 * j + phase) + 0.2 * cos(0.017 * i * j) + 0.1 * phase * j);
}

// The writers' output goes to the MAUVE algorithm in Python (P as HDF5, Q as .npy) and to `hdlm-eval mauve`:
// same histograms, scores to 1e-9.
static void test_eval_mauve_end_to_end_matches_python_on_files(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("features_e2e");
    enum { NP = 330, NQ = 260, D = 24 };
    float *p = hdlm_malloc(NP * D * sizeof(float)), *q = hdlm_malloc(NQ * D * sizeof(float));
    fixture_f32(p, NP, D, 0.0);
    fixture_f32(q, NQ, D, 0.3);
    int32_t lengths[NP];
    for (int i = 0; i < NP; i++) lengths[i] = 128;
    hdlm_feature_export e = {.n = NP, .d = D, .features = p, .lengths = lengths,
                             .attrs = {.featurizer = "test", .role = "p_human"}};
    const char *p_path = join(dir, "p.h5"), *q_path = join(dir, "q.npy");
    assert_int_equal(hdlm_features_write_h5(p_path, &e), 0);
    assert_int_equal(hdlm_npy_write_f32(q_path, q, NQ, D), 0);

    const char *ref_path = join(dir, "ref.json"), *out_path = join(dir, "out.txt");
    assert_int_equal(test_run("OMP_NUM_THREADS=1 " REFERENCE " score %s %s %s 2>/dev/null", p_path, q_path, ref_path),
                     0);
    assert_int_equal(test_run(EVAL " mauve --p %s --q %s --json > %s", p_path, q_path, out_path), 0);
    // the JSON line is the last one of the output; the human-readable lines come first
    assert_int_equal(test_run("grep -q '^MAUVE    0\\.' %s && grep -q '^buckets  26$' %s", out_path, out_path), 0);
    assert_int_equal(test_run("tail -n 1 %s > %s.json", out_path, out_path), 0);
    char json_path[4300];
    snprintf(json_path, sizeof json_path, "%s.json", out_path);
    cJSON *ref = test_load_json(ref_path), *got = test_load_json(json_path);
    assert_int_equal((int)test_json_number(got, "num_buckets"), (int)test_json_number(ref, "num_buckets"));
    assert_int_equal((int)test_json_number(got, "pca_dim"), (int)test_json_number(ref, "pca_dim"));
    const char *keys[4] = {"mauve", "mauve_star", "frontier_integral", "frontier_integral_star"};
    for (int i = 0; i < 4; i++) {
        double a = test_json_number(got, keys[i]), b = test_json_number(ref, keys[i]);
        if (!(fabs(a - b) <= 1e-9)) print_error("%s: hdlm-eval %.17g, reference %.17g\n", keys[i], a, b);
        assert_true(fabs(a - b) <= 1e-9);
    }
    const char *counts[2] = {"p_counts", "q_counts"};
    for (int c = 0; c < 2; c++) {
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(got, counts[c]);
        const cJSON *y = cJSON_GetObjectItemCaseSensitive(ref, counts[c]);
        assert_int_equal(cJSON_GetArraySize(x), cJSON_GetArraySize(y));
        for (int i = 0; i < cJSON_GetArraySize(x); i++)
            assert_int_equal(cJSON_GetArrayItem(x, i)->valueint, cJSON_GetArrayItem(y, i)->valueint);
    }
    cJSON_Delete(ref);
    cJSON_Delete(got);
    free(p);
    free(q);
}

// A file made of a valid .npy header (descr, order and shape as given) followed by `data_bytes` zero bytes.
static void write_npy_by_hand(const char *path, const char *dict, size_t data_bytes) {
    char buf[256] = "\x93NUMPY\x01\x00";
    size_t len = strlen(dict), total = (10 + len + 1 + 63) / 64 * 64;
    buf[8] = (char)(total - 10), buf[9] = 0;
    memcpy(buf + 10, dict, len);
    memset(buf + 10 + len, ' ', total - 10 - len - 1);
    buf[total - 1] = '\n';
    char *all = hdlm_calloc(total + data_bytes + 1, 1);
    memcpy(all, buf, total);
    test_write_file(path, all, total + data_bytes);
    free(all);
}

static void assert_read_fails(const char *path, const char *problem) {
    hdlm_feature_matrix m;
    hdlm_clear_error();
    assert_int_equal(hdlm_features_read(path, &m), -1);
    assert_error_contains(path);
    assert_error_contains(problem);
}

static void test_bad_feature_files_refused_with_file_and_problem(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("features_bad");
    assert_read_fails(join(dir, "missing.npy"), "No such file or directory");
    test_write_file(join(dir, "text.npy"), "hello, not numpy\n", 17);
    assert_read_fails(join(dir, "text.npy"), "bad magic");
    write_npy_by_hand(join(dir, "short.npy"), "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 3), }", 40);
    assert_read_fails(join(dir, "short.npy"), "truncated data: shape (4, 3) needs 48 bytes, the file has 40");
    write_npy_by_hand(join(dir, "long.npy"), "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 3), }", 52);
    assert_read_fails(join(dir, "long.npy"), "4 bytes of trailing data");
    write_npy_by_hand(join(dir, "int.npy"), "{'descr': '<i4', 'fortran_order': False, 'shape': (4, 3), }", 48);
    assert_read_fails(join(dir, "int.npy"), "unsupported dtype '<i4'");
    write_npy_by_hand(join(dir, "big.npy"), "{'descr': '>f4', 'fortran_order': False, 'shape': (4, 3), }", 48);
    assert_read_fails(join(dir, "big.npy"), "unsupported dtype '>f4'");
    write_npy_by_hand(join(dir, "fortran.npy"), "{'descr': '<f8', 'fortran_order': True, 'shape': (4, 3), }", 96);
    assert_read_fails(join(dir, "fortran.npy"), "Fortran-order");
    write_npy_by_hand(join(dir, "cube.npy"), "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2, 2), }", 64);
    assert_read_fails(join(dir, "cube.npy"), "expected a 2-D array (n, d)");
    write_npy_by_hand(join(dir, "vector.npy"), "{'descr': '<f8', 'fortran_order': False, 'shape': (8,), }", 64);
    assert_read_fails(join(dir, "vector.npy"), "expected a 2-D array (n, d)");
    write_npy_by_hand(join(dir, "empty.npy"), "{'descr': '<f8', 'fortran_order': False, 'shape': (0, 3), }", 0);
    assert_read_fails(join(dir, "empty.npy"), "empty feature matrix");
    double bad[4] = {1, 2, NAN, 4};
    assert_int_equal(hdlm_npy_write_f64(join(dir, "nan.npy"), bad, 2, 2), 0);
    assert_read_fails(join(dir, "nan.npy"), "non-finite value at row 1, column 0");
    // HDF5 without a 'features' dataset, and a truncated HDF5 file
    assert_int_equal(test_run(PYTHON " -c \"import h5py, numpy as np; f = h5py.File('%s', 'w');"
                              " f['other'] = np.zeros((2, 2)); f.close()\"",
                              join(dir, "nofeat.h5")),
                     0);
    assert_read_fails(join(dir, "nofeat.h5"), "no dataset 'features'");
    float feats[64 * 16] = {0};
    int32_t lengths[64] = {0};
    hdlm_feature_export e = {.n = 64, .d = 16, .features = feats, .lengths = lengths};
    assert_int_equal(hdlm_features_write_h5(join(dir, "cut.h5"), &e), 0);
    assert_int_equal(test_run("truncate -s 3000 %s", join(dir, "cut.h5")), 0);
    hdlm_feature_matrix m;
    assert_int_equal(hdlm_features_read(join(dir, "cut.h5"), &m), -1);
    assert_error_contains(join(dir, "cut.h5"));
    // writers refuse impossible exports and unwritable places
    assert_int_equal(hdlm_features_write_h5(join(dir, "no/such/dir.h5"), &e), -1);
    assert_error_contains("cannot create HDF5 file");
    assert_int_equal(hdlm_npy_write_f32(join(dir, "no/such/dir.npy"), feats, 2, 2), -1);
    assert_error_contains("cannot create");
}

static void test_eval_mauve_command_line(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("features_cli");
    float a[40 * 4], b[30 * 3];
    for (int i = 0; i < 40 * 4; i++) a[i] = (float)sin(0.3 * i) + 1.5f;
    for (int i = 0; i < 30 * 3; i++) b[i] = (float)cos(0.7 * i) + 1.5f;
    assert_int_equal(hdlm_npy_write_f32(join(dir, "a.npy"), a, 40, 4), 0);
    assert_int_equal(hdlm_npy_write_f32(join(dir, "b.npy"), b, 30, 3), 0);
    const char *err = join(dir, "err.txt");
    // different widths: refused, both files and widths named
    assert_int_equal(test_run(EVAL " mauve --p %s --q %s > /dev/null 2> %s", join(dir, "a.npy"), join(dir, "b.npy"),
                              err),
                     1);
    assert_int_equal(test_run("grep -q 'feature files of different widths: P .*a.npy has d = 4, Q .*b.npy has d = 3' %s",
                              err),
                     0);
    // unknown flags by name, bad values by flag, missing inputs, --help
    assert_int_equal(test_run(EVAL " mauve --p x --q y --bukets 3 2> %s", err), 2);
    assert_int_equal(test_run("grep -q \"unknown option '--bukets'\" %s", err), 0);
    assert_int_equal(test_run(EVAL " mauve --p x --q y --buckets many 2> %s", err), 2);
    assert_int_equal(test_run("grep -q \"buckets expects an integer\" %s", err), 0);
    assert_int_equal(test_run(EVAL " mauve --p x --q y --explained-var 1.5 2> %s", err), 2);
    assert_int_equal(test_run("grep -q \"explained-var expects a number in\" %s", err), 0);
    assert_int_equal(test_run(EVAL " mauve --p %s 2> %s", join(dir, "a.npy"), err), 2);
    assert_int_equal(test_run("grep -q 'both --p and --q are required' %s", err), 0);
    assert_int_equal(test_run(EVAL " mauve --p %s --q %s 2> %s", join(dir, "a.npy"), join(dir, "none.npy"), err), 1);
    assert_int_equal(test_run("grep -q 'cannot open feature file .*none.npy' %s", err), 0);
    assert_int_equal(test_run(EVAL " mauve --help | grep -q 'usage: hdlm-eval mauve'"), 0);
    assert_int_equal(test_run(EVAL " nosuch 2> %s", err), 2);
    assert_int_equal(test_run("grep -q \"unknown command 'nosuch'\" %s", err), 0);
    // explicit options reach the computation: 3 buckets, 1 redo
    assert_int_equal(test_run(EVAL " mauve --p %s --q %s --buckets 3 --redo 1 --iters 20 --json | grep -q "
                              "'\"num_buckets\":3,'",
                              join(dir, "a.npy"), join(dir, "a.npy")),
                     0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_npy_round_trip_and_numpy_reads_it),
        cmocka_unit_test(test_h5_export_read_by_h5py),
        cmocka_unit_test(test_eval_mauve_end_to_end_matches_python_on_files),
        cmocka_unit_test(test_bad_feature_files_refused_with_file_and_problem),
        cmocka_unit_test(test_eval_mauve_command_line),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

// MAUVE (method §9.4) against the test ladder of docs/mauve.md: histogram goldens, mt19937 and faiss-1.7.3
// rand_perm values, PCA vs sklearn, the closed-form fixture's golden counts and score, and agreement with an
// independent Python implementation (Debian's python3-faiss 1.7.3 + python3-sklearn, tests/reference/mauve_reference.py)
// on other fixtures (more points and dimensions, n_p != n_q, the faiss subsampling path).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hdlm/common.h"
#include "hdlm/features.h"
#include "hdlm/mauve.h"

#define REFERENCE "/usr/bin/python3 " HDLM_SOURCE_DIR "/tests/reference/mauve_reference.py"

static void assert_close(double got, double want, double tol, const char *what) {
    if (!(fabs(got - want) <= tol)) {
        print_error("%s: got %.17g, want %.17g (tolerance %g)\n", what, got, want, tol);
        fail();
    }
}

static void assert_counts_equal(const cJSON *json, const char *key, const int64_t *counts, int k) {
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(json, key);
    assert_true(cJSON_IsArray(arr));
    assert_int_equal(cJSON_GetArraySize(arr), k);
    for (int i = 0; i < k; i++) assert_int_equal(cJSON_GetArrayItem(arr, i)->valueint, counts[i]);
}

// The first closed-form fixture of docs/mauve.md (n = 200 per side, d = 16).
static void closed_form_fixture(double *p, double *q) {
    for (int i = 0; i < 200; i++)
        for (int j = 0; j < 16; j++) {
            p[i * 16 + j] = sin(0.37 * i + 1.3 * j) + 0.1 * cos(0.05 * i * j);
            q[i * 16 + j] = sin(0.37 * i + 1.3 * j + 0.4) + 0.1 * cos(0.05 * i * j) + 0.05 * j;
        }
}

// (a) KL / curve / AUC / FI from fixed histograms: golden values of the reference (docs/mauve.md).
static void test_histogram_goldens(void **state) {
    (void)state;
    const double p1[4] = {0.1, 0.2, 0.3, 0.4}, q1[4] = {0.25, 0.25, 0.25, 0.25};
    assert_close(hdlm_mauve_from_histograms(p1, q1, 4, 5), 0.9579019525489152, 1e-15, "MAUVE(linear, uniform)");
    const double p2[3] = {0.5, 0.5, 0}, q2[3] = {0, 0.5, 0.5};
    assert_close(hdlm_mauve_from_histograms(p2, q2, 3, 5), 0.09257236294829274, 1e-15, "MAUVE(disjoint tails)");
    // identical histograms: every mixture point is (1, 1) up to the rounding of w p + (1 - w) p inside the logs, so
    // the score is 1 to a few ulps (the reference measured 1 + 2^-52; the last bits follow the libm's log)
    assert_close(hdlm_mauve_from_histograms(p1, p1, 4, 5), 1.0, 1e-15, "MAUVE(p, p)");
    // frontier integral: 0 for identical histograms, 1 for disjoint supports (each bucket adds mass / 4, times 2)
    assert_close(hdlm_mauve_frontier_integral(p1, p1, 4), 0, 0, "FI(p, p)");
    const double a[2] = {1, 0}, b[2] = {0, 1};
    assert_close(hdlm_mauve_frontier_integral(a, b, 2), 1.0, 1e-16, "FI(disjoint)");
    // p = (1/2, 1/2), q = (1/4, 3/4) by the closed form per bucket
    const double c[2] = {0.5, 0.5}, e[2] = {0.25, 0.75};
    double fi = 0;
    for (int i = 0; i < 2; i++)
        fi += 0.25 * (c[i] + e[i]) - 0.5 * c[i] * e[i] * (log(c[i]) - log(e[i])) / (c[i] - e[i]);
    assert_close(hdlm_mauve_frontier_integral(c, e, 2), 2 * fi, 1e-16, "FI(closed form)");

    // smoothed histograms: (counts + 0.5) / sum(counts + 0.5)
    const int64_t counts[3] = {3, 0, 1};
    double hist[3], smooth[3];
    hdlm_mauve_histograms(counts, 3, hist, smooth);
    assert_close(hist[0], 0.75, 0, "hist[0]");
    assert_close(hist[1], 0, 0, "hist[1]");
    assert_close(smooth[0], 3.5 / 5.5, 1e-17, "smoothed[0]");
    assert_close(smooth[1], 0.5 / 5.5, 1e-17, "smoothed[1]");
}

// (c) std::mt19937 values required by the C++ standard, and faiss 1.7.3's rand_perm (modulo draws).
static void test_mt19937_and_faiss_rand_perm(void **state) {
    (void)state;
    hdlm_mt19937 mt;
    hdlm_mt19937_seed(&mt, 5489);
    assert_int_equal(hdlm_mt19937_next(&mt), 3499211612u);
    assert_int_equal(hdlm_mt19937_next(&mt), 581869302u);
    assert_int_equal(hdlm_mt19937_next(&mt), 3890346734u);
    uint32_t v = 0;
    for (int i = 3; i < 10000; i++) v = hdlm_mt19937_next(&mt);
    assert_int_equal(v, 4123659995u);

    int64_t perm[400];
    const int64_t want10[10] = {7, 6, 0, 5, 1, 9, 3, 8, 2, 4};
    hdlm_faiss_rand_perm(perm, 10, 28);
    for (int i = 0; i < 10; i++) assert_int_equal(perm[i], want10[i]);
    const int64_t want400[10] = {177, 6, 29, 394, 300, 284, 179, 245, 332, 34};
    hdlm_faiss_rand_perm(perm, 400, 28);
    for (int i = 0; i < 10; i++) assert_int_equal(perm[i], want400[i]);
    // still a permutation
    int seen[400] = {0};
    for (int i = 0; i < 400; i++) seen[perm[i]]++;
    for (int i = 0; i < 400; i++) assert_int_equal(seen[i], 1);
}

static void test_auto_buckets_round_half_even(void **state) {
    (void)state;
    assert_int_equal(hdlm_mauve_auto_buckets(100, 100), 10);
    assert_int_equal(hdlm_mauve_auto_buckets(128, 500), 13);
    assert_int_equal(hdlm_mauve_auto_buckets(250, 25), 2);   // round(2.5) = 2
    assert_int_equal(hdlm_mauve_auto_buckets(35, 35), 4);    // round(3.5) = 4
    assert_int_equal(hdlm_mauve_auto_buckets(45, 900), 4);   // round(4.5) = 4
    assert_int_equal(hdlm_mauve_auto_buckets(5, 5), 2);      // at least 2
}

// (b) L2 normalisation + PCA: explained-variance ratios and the kept dimension against sklearn on the fixture.
static void test_pca_matches_sklearn(void **state) {
    (void)state;
    double *x = hdlm_malloc(400 * 16 * sizeof(double));
    closed_form_fixture(x + 200 * 16, x);   // [q; p]
    const char *dir = test_tmp_dir("mauve_pca");
    char npy[4200], out[4200];
    snprintf(npy, sizeof npy, "%s/x.npy", dir);
    snprintf(out, sizeof out, "%s/pca.json", dir);
    assert_int_equal(hdlm_npy_write_f64(npy, x, 400, 16), 0);
    assert_int_equal(test_run(REFERENCE " pca %s %s", npy, out), 0);

    assert_int_equal(hdlm_mauve_l2_normalize(x, 400, 16), 0);
    double ratios[16];
    int kept = 0;
    float *z = NULL;
    assert_int_equal(hdlm_mauve_pca(x, 400, 16, 0.9, ratios, &kept, &z), 0);
    cJSON *ref = test_load_json(out);
    assert_int_equal(kept, (int)test_json_number(ref, "kept"));
    assert_int_equal(kept, 2);
    const cJSON *want = cJSON_GetObjectItemCaseSensitive(ref, "ratios");
    assert_int_equal(cJSON_GetArraySize(want), 16);
    for (int m = 0; m < 16; m++) assert_close(ratios[m], cJSON_GetArrayItem(want, m)->valuedouble, 1e-12, "ratio");
    // projected points have the variance of the kept components: sum of squares = (ratio_0 + ratio_1) * total
    double total = 0, kept_ss = 0;
    for (int i = 0; i < 400; i++)
        for (int m = 0; m < kept; m++) kept_ss += (double)z[i * kept + m] * z[i * kept + m];
    double mean[16] = {0};
    for (int i = 0; i < 400; i++)
        for (int j = 0; j < 16; j++) mean[j] += x[i * 16 + j] / 400;
    for (int i = 0; i < 400; i++)
        for (int j = 0; j < 16; j++) total += (x[i * 16 + j] - mean[j]) * (x[i * 16 + j] - mean[j]);
    assert_close(kept_ss / total, ratios[0] + ratios[1], 1e-6, "variance kept by the projection");
    cJSON_Delete(ref);
    free(z);
    free(x);
}

// (d) + (e): the closed-form fixture's histograms and scores (golden values of the reference, docs/mauve.md).
static void test_closed_form_fixture_golden(void **state) {
    (void)state;
    double *p = hdlm_malloc(200 * 16 * sizeof(double)), *q = hdlm_malloc(200 * 16 * sizeof(double));
    closed_form_fixture(p, q);
    hdlm_mauve_options opt;
    hdlm_mauve_options_default(&opt);
    hdlm_mauve_result res;
    assert_int_equal(hdlm_mauve_compute(p, 200, q, 200, 16, &opt, &res), 0);
    assert_int_equal(res.num_buckets, 20);
    assert_int_equal(res.pca_dim, 2);
    const int64_t want_p[20] = {0, 0, 12, 11, 11, 0, 12, 12, 13, 12, 12, 23, 12, 11, 12, 11, 12, 12, 0, 12};
    const int64_t want_q[20] = {12, 11, 12, 0, 0, 11, 12, 11, 21, 12, 12, 15, 0, 12, 12, 0, 12, 12, 11, 12};
    for (int i = 0; i < 20; i++) {
        assert_int_equal(res.p_counts[i], want_p[i]);
        assert_int_equal(res.q_counts[i], want_q[i]);
    }
    assert_close(res.mauve, 0.42660924740902045, 1e-12, "MAUVE");
    assert_close(res.mauve_star, 0.561741346909709, 1e-12, "MAUVE*");
    assert_close(res.frontier_integral, 0.23115020985694554, 1e-12, "FI");
    assert_close(res.frontier_integral_star, 0.17623084880626422, 1e-12, "FI*");
    hdlm_mauve_result_free(&res);

    // another seed moves the k-means, hence the score: the seed really reaches faiss's initialisation
    opt.seed = 26;
    assert_int_equal(hdlm_mauve_compute(p, 200, q, 200, 16, &opt, &res), 0);
    assert_true(fabs(res.mauve - 0.42660924740902045) > 1e-6);
    hdlm_mauve_result_free(&res);
    free(p);
    free(q);
}

// Agreement with the independent Python implementation on a fixture the Python side generates (read through the
// .npy reader): scores to 1e-9, identical histograms, and the winning k-means objective bit for bit.
// Returns the reference's JSON (caller deletes).
static cJSON *compare_with_reference(const char *name, int n_p, int n_q, int d, const char *repeats) {
    const char *dir = test_tmp_dir(name);
    // one Python process writes the fixture and scores it (imports of sklearn + faiss dominate its time)
    assert_int_equal(
        test_run("OMP_NUM_THREADS=1 " REFERENCE " fixture %s %d %d %d %s 2>/dev/null", dir, n_p, n_q, d, repeats), 0);
    char p_path[4200], q_path[4200], out[4200];
    snprintf(p_path, sizeof p_path, "%s/p.npy", dir);
    snprintf(q_path, sizeof q_path, "%s/q.npy", dir);
    snprintf(out, sizeof out, "%s/ref.json", dir);

    hdlm_feature_matrix p, q;
    assert_int_equal(hdlm_features_read(p_path, &p), 0);
    assert_int_equal(hdlm_features_read(q_path, &q), 0);
    assert_int_equal(p.n, n_p);
    assert_int_equal(q.n, n_q);
    hdlm_mauve_options opt;
    hdlm_mauve_options_default(&opt);
    hdlm_mauve_result res;
    assert_int_equal(hdlm_mauve_compute(p.data, p.n, q.data, q.n, d, &opt, &res), 0);

    cJSON *ref = test_load_json(out);
    assert_int_equal(res.num_buckets, (int)test_json_number(ref, "num_buckets"));
    assert_int_equal(res.pca_dim, (int)test_json_number(ref, "pca_dim"));
    assert_counts_equal(ref, "p_counts", res.p_counts, res.num_buckets);
    assert_counts_equal(ref, "q_counts", res.q_counts, res.num_buckets);
    assert_close(res.mauve, test_json_number(ref, "mauve"), 1e-9, "MAUVE vs reference");
    assert_close(res.mauve_star, test_json_number(ref, "mauve_star"), 1e-9, "MAUVE* vs reference");
    assert_close(res.frontier_integral, test_json_number(ref, "frontier_integral"), 1e-9, "FI vs reference");
    assert_close(res.frontier_integral_star, test_json_number(ref, "frontier_integral_star"), 1e-9, "FI* vs reference");

    // the k-means alone, on the same reduced points: faiss's final objective exactly (float32)
    int64_t n = p.n + q.n;
    double *x = hdlm_malloc((size_t)(n * d) * sizeof(double));
    memcpy(x, q.data, (size_t)(q.n * d) * sizeof(double));
    memcpy(x + q.n * d, p.data, (size_t)(p.n * d) * sizeof(double));
    double *ratios = hdlm_malloc((size_t)d * sizeof(double));
    float *z;
    int kept;
    assert_int_equal(hdlm_mauve_l2_normalize(x, n, d), 0);
    assert_int_equal(hdlm_mauve_pca(x, n, d, 0.9, ratios, &kept, &z), 0);
    hdlm_kmeans_options km = {.k = res.num_buckets, .niter = 500, .nredo = 5, .seed = 27};
    float *centroids = hdlm_malloc((size_t)km.k * (size_t)kept * sizeof(float));
    int64_t *labels = hdlm_malloc((size_t)n * sizeof(int64_t));
    float objective;
    assert_int_equal(hdlm_kmeans_faiss(z, n, kept, &km, centroids, labels, &objective), 0);
    assert_close(objective, test_json_number(ref, "objective"), 0, "k-means objective vs faiss");

    free(labels), free(centroids), free(z), free(ratios), free(x);
    hdlm_mauve_result_free(&res);
    hdlm_feature_matrix_free(&p);
    hdlm_feature_matrix_free(&q);
    return ref;
}

static void test_second_fixture_matches_python_reference(void **state) {
    (void)state;
    cJSON_Delete(compare_with_reference("mauve_ref_second", 500, 380, 32, ""));
}

// n_p = 700, n_q = 12: k = 2 and 712 > 2 * 256 points, so faiss trains on a rand_perm subsample.
static void test_subsampled_kmeans_matches_python_reference(void **state) {
    (void)state;
    cJSON_Delete(compare_with_reference("mauve_ref_subsample", 700, 12, 8, ""));
}

// Only 30 + 31 distinct rows, repeated: faiss meets empty clusters and splits them (hundreds of times here).
static void test_empty_cluster_splits_match_python_reference(void **state) {
    (void)state;
    cJSON *ref = compare_with_reference("mauve_ref_splits", 300, 250, 12, "30 31");
    assert_true(test_json_number(ref, "splits") > 100);
    cJSON_Delete(ref);
}

static void test_bad_inputs_refused(void **state) {
    (void)state;
    hdlm_mauve_options opt;
    hdlm_mauve_options_default(&opt);
    hdlm_mauve_result res;
    double p[2 * 3] = {1, 0, 0, 0, 1, 0}, q[2 * 3] = {0, 0, 1, 1, 1, 1};
    opt.num_buckets = 5;
    assert_int_equal(hdlm_mauve_compute(p, 2, q, 2, 3, &opt, &res), -1);
    assert_error_contains("5 buckets need at least 5 feature rows");
    hdlm_mauve_options_default(&opt);
    opt.explained_var = 1.0;
    assert_int_equal(hdlm_mauve_compute(p, 2, q, 2, 3, &opt, &res), -1);
    assert_error_contains("--explained-var must lie strictly between 0 and 1");
    hdlm_mauve_options_default(&opt);
    double zero_row[2 * 3] = {1, 2, 3, 0, 0, 0};
    assert_int_equal(hdlm_mauve_compute(zero_row, 2, q, 2, 3, &opt, &res), -1);
    assert_error_contains("is all zeros");
    double nan_row[2 * 3] = {1, 2, 3, 4, NAN, 6};
    assert_int_equal(hdlm_mauve_compute(nan_row, 2, q, 2, 3, &opt, &res), -1);
    assert_error_contains("P feature row 1 column 1 is not finite");
    assert_int_equal(hdlm_mauve_compute(p, 0, q, 2, 3, &opt, &res), -1);
    assert_error_contains("P has 0");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_histogram_goldens),
        cmocka_unit_test(test_mt19937_and_faiss_rand_perm),
        cmocka_unit_test(test_auto_buckets_round_half_even),
        cmocka_unit_test(test_pca_matches_sklearn),
        cmocka_unit_test(test_closed_form_fixture_golden),
        cmocka_unit_test(test_second_fixture_matches_python_reference),
        cmocka_unit_test(test_subsampled_kmeans_matches_python_reference),
        cmocka_unit_test(test_empty_cluster_splits_match_python_reference),
        cmocka_unit_test(test_bad_inputs_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

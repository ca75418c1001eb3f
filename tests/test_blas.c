// hdlm_sgemm and hdlm_sgemm_serial (src/core/blas.c; on AVX-512 builds hdlm's own kernel, src/core/blas_kernel.c)
// against a float64 product: every transpose combination; sizes at, below and above the 8 × 48 register tile, the depth
// blocks and the packed row blocks of a transposed A; leading dimensions larger than the matrix; alpha ≠ 1 and
// beta 0, 1 and 0.5 (beta 0 must not read C: it starts as NaN); k = 0. Also: the same bits for 1 and 2 threads
// and from inside a parallel region, which the model's results rely on; hdlm_sgemm_bias against a separate bias
// pass; Aᵀ·B against the same product with A given untransposed, bit for bit (the kernel may run it transposed).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "hdlm/blas.h"
#include "hdlm/common.h"
#include "hdlm/rng.h"

typedef struct {
    bool trans_a, trans_b;
    int m, n, k, lda, ldb, ldc;
    float alpha, beta;
    float *a, *b, *c0;   // c0: C before the product
} gemm_case;

static gemm_case case_make(hdlm_rng *rng, bool ta, bool tb, int m, int n, int k, float alpha, float beta) {
    gemm_case g = {ta, tb, m, n, k, (ta ? m : k) + 3, (tb ? k : n) + 5, n + 2, alpha, beta, NULL, NULL, NULL};
    size_t a_size = (size_t)(ta ? k : m) * g.lda + 1, b_size = (size_t)(tb ? n : k) * g.ldb + 1;
    g.a = hdlm_malloc(a_size * sizeof(float));
    g.b = hdlm_malloc(b_size * sizeof(float));
    g.c0 = hdlm_malloc((size_t)m * g.ldc * sizeof(float) + 1);
    for (size_t i = 0; i < a_size; i++) g.a[i] = (float)hdlm_rng_normal(rng);
    for (size_t i = 0; i < b_size; i++) g.b[i] = (float)hdlm_rng_normal(rng);
    for (size_t i = 0; i < (size_t)m * g.ldc; i++) g.c0[i] = beta == 0.0f ? NAN : (float)hdlm_rng_normal(rng);
    return g;
}

static void case_free(gemm_case *g) {
    free(g->a);
    free(g->b);
    free(g->c0);
}

static float *case_run(const gemm_case *g, int threads, bool serial) {
    float *c = hdlm_malloc((size_t)g->m * g->ldc * sizeof(float) + 1);
    memcpy(c, g->c0, (size_t)g->m * g->ldc * sizeof(float));
    hdlm_blas_init(threads);
    if (serial) {
#pragma omp parallel num_threads(2)
#pragma omp single
        hdlm_sgemm_serial(g->trans_a, g->trans_b, g->m, g->n, g->k, g->alpha, g->a, g->lda, g->b, g->ldb, g->beta, c,
                          g->ldc);
    } else {
        hdlm_sgemm(g->trans_a, g->trans_b, g->m, g->n, g->k, g->alpha, g->a, g->lda, g->b, g->ldb, g->beta, c, g->ldc);
    }
    return c;
}

// Every element within the fp32 rounding bound of the float64 product, (k + 2)·u·(|alpha|·Σ|a·b| + |beta·c|) with
// u = 2^-24 (a missing or repeated term is off by about Σ|a·b| / k, many times more than the typical error); the
// padding between rows of C untouched.
static void case_check(const gemm_case *g, const float *c) {
    for (int r = 0; r < g->m; r++) {
        for (int j = 0; j < g->n; j++) {
            double sum = 0, mag = 0;
            for (int q = 0; q < g->k; q++) {
                double x = g->trans_a ? g->a[(size_t)q * g->lda + r] : g->a[(size_t)r * g->lda + q];
                double y = g->trans_b ? g->b[(size_t)j * g->ldb + q] : g->b[(size_t)q * g->ldb + j];
                sum += x * y;
                mag += fabs(x * y);
            }
            double c0 = g->c0[(size_t)r * g->ldc + j];
            double want = g->alpha * sum + (g->beta == 0.0f ? 0.0 : g->beta * c0);
            double scale = fabs(g->alpha) * mag + (g->beta == 0.0f ? 0.0 : fabs(g->beta * c0));
            double tol = (g->k + 2) * 0x1p-24 * scale + 1e-30;
            double got = c[(size_t)r * g->ldc + j];
            if (!(fabs(got - want) <= tol))
                fail_msg("ta %d tb %d m %d n %d k %d alpha %g beta %g: C[%d][%d] = %.9g, want %.9g (tolerance %.2g)",
                         g->trans_a, g->trans_b, g->m, g->n, g->k, (double)g->alpha, (double)g->beta, r, j, got, want,
                         tol);
        }
        for (int j = g->n; j < g->ldc && r + 1 < g->m; j++)
            if (memcmp(&c[(size_t)r * g->ldc + j], &g->c0[(size_t)r * g->ldc + j], sizeof(float)) != 0)
                fail_msg("m %d n %d k %d: padding C[%d][%d] was written", g->m, g->n, g->k, r, j);
    }
}

static void test_sgemm_matches_float64(void **state) {
    (void)state;
    hdlm_rng rng;
    hdlm_rng_init(&rng, 5);
    // m: below / at / above the 8-row tile and several tiles; n: the same around the 48-column panel; k: short, odd.
    const int ms[] = {1, 7, 8, 9, 61}, ns[] = {1, 47, 48, 49, 130}, ks[] = {1, 5, 64, 129};
    const float betas[] = {0.0f, 1.0f, 0.5f};
    for (int t = 0; t < 4; t++)
        for (int mi = 0; mi < 5; mi++)
            for (int ni = 0; ni < 5; ni++)
                for (int ki = 0; ki < 4; ki++) {
                    float beta = betas[(mi + ni + ki) % 3];
                    gemm_case g = case_make(&rng, t & 1, t & 2, ms[mi], ns[ni], ks[ki], -1.25f, beta);
                    float *c = case_run(&g, 2, false);
                    case_check(&g, c);
                    free(c);
                    case_free(&g);
                }
}

// Several depth blocks (k > 1024) and, for a transposed A, several packed row blocks (m > 1024), with edges; enough
// panels for groups of them (21 and 42 panels: groups of 2 and 4, a last group shorter, a last panel narrower).
static void test_sgemm_large_blocks(void **state) {
    (void)state;
    hdlm_rng rng;
    hdlm_rng_init(&rng, 6);
    const int shapes[][3] = {{20, 100, 2500}, {1100, 50, 70}, {1030, 97, 1100}, {70, 1000, 300}, {40, 2000, 1100}};
    for (int s = 0; s < 5; s++)
        for (int t = 0; t < 4; t++) {
            float beta = t == 3 ? 1.0f : 0.0f;
            gemm_case g = case_make(&rng, t & 1, t & 2, shapes[s][0], shapes[s][1], shapes[s][2], 1.0f, beta);
            float *c = case_run(&g, 2, false);
            case_check(&g, c);
            free(c);
            case_free(&g);
        }
}

// k = 0: C = beta·C (beta 0: zeros, even over NaN).
static void test_sgemm_empty_depth(void **state) {
    (void)state;
    hdlm_rng rng;
    hdlm_rng_init(&rng, 7);
    for (int b = 0; b < 2; b++) {
        gemm_case g = case_make(&rng, false, true, 9, 50, 0, 1.0f, b ? 0.5f : 0.0f);
        float *c = case_run(&g, 2, false);
        for (int r = 0; r < g.m; r++)
            for (int j = 0; j < g.n; j++)
                assert_true(c[(size_t)r * g.ldc + j] == (b ? 0.5f * g.c0[(size_t)r * g.ldc + j] : 0.0f));
        free(c);
        case_free(&g);
    }
}

// hdlm_sgemm_bias: the bits of hdlm_sgemm followed by a separate bias pass (the kernel adds it as tiles are stored),
// at tile and panel edges and across depth blocks.
static void test_sgemm_bias_equals_separate_pass(void **state) {
    (void)state;
    hdlm_rng rng;
    hdlm_rng_init(&rng, 9);
    const int shapes[][3] = {{13, 50, 70}, {100, 97, 1500}, {8, 48, 1}};
    for (int s = 0; s < 3; s++) {
        gemm_case g = case_make(&rng, false, true, shapes[s][0], shapes[s][1], shapes[s][2], 1.0f, 0.0f);
        float *bias = hdlm_malloc((size_t)g.n * sizeof(float));
        for (int j = 0; j < g.n; j++) bias[j] = (float)hdlm_rng_normal(&rng);
        float *want = case_run(&g, 2, false), *got = hdlm_malloc((size_t)g.m * g.ldc * sizeof(float));
        memcpy(got, g.c0, (size_t)g.m * g.ldc * sizeof(float));
        hdlm_sgemm_bias(false, true, g.m, g.n, g.k, 1.0f, g.a, g.lda, g.b, g.ldb, 0.0f, got, g.ldc, bias);
        for (int r = 0; r < g.m; r++)
            for (int j = 0; j < g.n; j++) {
                float sum = want[(size_t)r * g.ldc + j] + bias[j];
                assert_memory_equal(&sum, &got[(size_t)r * g.ldc + j], sizeof sum);
            }
        free(bias), free(want), free(got);
        case_free(&g);
    }
}

// 1 thread, 2 threads and hdlm_sgemm_serial inside a parallel region: the same bits (with 1000 columns, panel groups
// of 4 on one thread and of 2 on two).
static void test_sgemm_thread_count_invariant(void **state) {
    (void)state;
    hdlm_rng rng;
    hdlm_rng_init(&rng, 8);
    const int shapes[][3] = {{300, 200, 1500}, {100, 30, 40}, {1090, 100, 300}, {70, 1000, 300}};
    for (int s = 0; s < 4; s++)
        for (int t = 0; t < 4; t++) {
            gemm_case g = case_make(&rng, t & 1, t & 2, shapes[s][0], shapes[s][1], shapes[s][2], 0.75f, 0.0f);
            float *one = case_run(&g, 1, false), *two = case_run(&g, 2, false), *nested = case_run(&g, 2, true);
            size_t bytes = (size_t)g.m * g.ldc * sizeof(float);
            for (size_t i = 0; i < (size_t)g.m * g.ldc; i++)
                if (i % g.ldc >= (size_t)g.n) one[i] = two[i] = nested[i] = 0;   // padding (NaN)
            assert_memory_equal(one, two, bytes);
            assert_memory_equal(one, nested, bytes);
            free(one), free(two), free(nested);
            case_free(&g);
        }
    hdlm_blas_init(0);
}

// Aᵀ·B with more rows than columns (a weight's gradient) runs as its transpose, tiles stored transposed, with several
// threads or few columns (src/core/blas_kernel.c): the bits of the same product with A given untransposed, on 1 and
// 2 threads, with edge tiles both ways, two depth blocks, and beta 0, 0.5, 1 and 1.5.
static void test_sgemm_transposed_order_same_bits(void **state) {
    (void)state;
    hdlm_rng rng;
    hdlm_rng_init(&rng, 10);
    const int shapes[][3] = {{2100, 100, 300}, {1500, 250, 1100}, {61, 9, 64}};
    for (int s = 0; s < 3; s++)
        for (int threads = 1; threads <= 2; threads++) {
            float beta = (float)(s + threads - 1) * 0.5f;   // 0, 0.5, 1, 1.5
            gemm_case g = case_make(&rng, true, false, shapes[s][0], shapes[s][1], shapes[s][2], -0.75f, beta);
            gemm_case plain = g;   // A written out untransposed: [m, k]
            plain.trans_a = false;
            plain.lda = g.k + 1;
            plain.a = hdlm_malloc((size_t)g.m * plain.lda * sizeof(float));
            for (int r = 0; r < g.m; r++)
                for (int q = 0; q < g.k; q++) plain.a[(size_t)r * plain.lda + q] = g.a[(size_t)q * g.lda + r];
            float *got = case_run(&g, threads, false), *want = case_run(&plain, threads, false);
            for (int r = 0; r < g.m; r++)
                assert_memory_equal(&got[(size_t)r * g.ldc], &want[(size_t)r * g.ldc], (size_t)g.n * sizeof(float));
            case_check(&g, got);
            free(got), free(want), free(plain.a);
            case_free(&g);
        }
    hdlm_blas_init(0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sgemm_matches_float64),
        cmocka_unit_test(test_sgemm_large_blocks),
        cmocka_unit_test(test_sgemm_empty_depth),
        cmocka_unit_test(test_sgemm_thread_count_invariant),
        cmocka_unit_test(test_sgemm_bias_equals_separate_pass),
        cmocka_unit_test(test_sgemm_transposed_order_same_bits),
    };
    printf("GEMM kernels: %s\n", hdlm_blas_arch());
    return cmocka_run_group_tests(tests, NULL, NULL);
}

// Order-agnostic ARDM objective (method §13, A.3): count-based masks, the D/m weight, values at initialisation, the
// exact-enumeration toy of A.13 and finite-difference gradients.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hdlm/diffusion.h"
#include "hdlm/tokenizer.h"
#include "loss_check.h"

// Zero logits: every example gives B̂ = log2 K bits whatever s and the order (A.3.3): log2 50257 = 15.617037 with
// MASK excluded, log2 50258 = 15.617066 with it; the λ_CE term adds λ·(m/L)·log2 K.
static void test_loss_at_initialisation(void **state) {
    (void)state;
    const int V = HDLM_MODEL_VOCAB, B = 3, L = 16;
    float *zero = hdlm_calloc((size_t)B * L * V, sizeof *zero);
    uint32_t x0[48];
    for (int r = 0; r < 48; r++) x0[r] = (uint32_t)(r * 1009 % HDLM_GPT2_VOCAB);
    hdlm_corruption c;
    hdlm_corruption_alloc(&c, B, L);
    int steps[3];
    hdlm_ardm_config cfg = {0.0, 1, 0};
    hdlm_ardm_corrupt(&cfg, x0, V, 11, &c, steps);
    assert_int_equal(hdlm_ardm_softmax_width(&cfg, V), V - 1);
    assert_float_equal(hdlm_corruption_loss(&c, x0, zero, V, V - 1, NULL), 15.617037, 1e-6);
    cfg.exclude_mask = 0;
    assert_float_equal(hdlm_corruption_loss(&c, x0, zero, V, hdlm_ardm_softmax_width(&cfg, V), NULL), 15.617066,
                       1e-6);
    cfg = (hdlm_ardm_config){1e-4, 1, 0};
    hdlm_ardm_corrupt(&cfg, x0, V, 11, &c, steps);
    double expect = 0;
    for (int b = 0; b < B; b++) expect += log2(50257.0) * (1 + 1e-4 * (L - steps[b]) / L) / B;
    assert_true(fabs(hdlm_corruption_loss(&c, x0, zero, V, V - 1, NULL) - expect) < 1e-9);
    hdlm_corruption_free(&c);
    free(zero);
}

// The masked count m = L - s is uniform on {1..L} (chi-square); given m every subset is equally likely (chi-square
// over all C(5, m) subsets); masked positions hold MASK and weight (1/m + λ/L)/ln 2, the others are clean, weight 0.
static void test_count_based_masks(void **state) {
    (void)state;
    const int L = 5, B = 4000, V = 7;
    uint32_t *x0 = hdlm_malloc((size_t)B * L * sizeof *x0);
    for (int r = 0; r < B * L; r++) x0[r] = (uint32_t)(r % (V - 1));
    hdlm_corruption c;
    hdlm_corruption_alloc(&c, B, L);
    int *steps = hdlm_malloc(B * sizeof *steps);
    long by_m[6] = {0}, subsets[6][32] = {{0}};
    hdlm_ardm_config cfg = {0.25, 1, 0};
    for (int draw = 0; draw < 10; draw++) {
        hdlm_ardm_corrupt(&cfg, x0, V, hdlm_rng_key(1, 0, (uint64_t)draw, HDLM_RNG_NOISE), &c, steps);
        assert_true(c.norm == B);
        for (int b = 0; b < B; b++) {
            int m = L - steps[b], bits = 0, count = 0;
            for (int i = 0; i < L; i++) {
                size_t r = (size_t)b * L + i;
                if (c.kind[r] == HDLM_CORRUPT_MASKED) {
                    assert_int_equal(c.xt[r], V - 1);
                    assert_float_equal(c.weight[r], (1.0 / m + 0.25 / L) / M_LN2, 1e-6);
                    bits |= 1 << i;
                    count++;
                } else {
                    assert_int_equal(c.kind[r], HDLM_CORRUPT_KEPT);
                    assert_int_equal(c.xt[r], x0[r]);
                    assert_true(c.weight[r] == 0.0f);
                }
            }
            assert_int_equal(count, m);
            by_m[m]++;
            subsets[m][bits]++;
        }
    }
    double n = 10.0 * B, chi2 = 0;
    for (int m = 1; m <= L; m++) chi2 += pow(by_m[m] - n / L, 2) / (n / L);
    assert_true(chi2 < chi2_999(L - 1));
    static const int choose[] = {1, 5, 10, 10, 5, 1};
    for (int m = 1; m < L; m++) {
        double per = (double)by_m[m] / choose[m], chi2_sub = 0;
        for (int bits = 0; bits < 32; bits++)
            if (__builtin_popcount(bits) == m) chi2_sub += pow(subsets[m][bits] - per, 2) / per;
        assert_true(chi2_sub < chi2_999(choose[m] - 1));
    }
    free(steps);
    free(x0);
    hdlm_corruption_free(&c);
}

// Logits of the exchangeable toy model of A.13 (K = 2 classes + MASK): at a masked position,
// p(c | known) = (1 + #known equal to c)/(2 + #known).
static void toy_logits(const uint32_t *xt, int L, float *logits) {
    int known = 0, ones = 0;
    for (int i = 0; i < L; i++)
        if (xt[i] != 2) {
            known++;
            ones += xt[i] == 1;
        }
    for (int i = 0; i < L; i++) {
        logits[i * 3 + 0] = (float)log((1.0 + known - ones) / (2.0 + known));
        logits[i * 3 + 1] = (float)log((1.0 + ones) / (2.0 + known));
        logits[i * 3 + 2] = 0.0f;   // MASK: outside the softmax
    }
}

// Exact-enumeration vector of A.13: D = 3, K = 2, x = (1, 0, 1). Per-step components L_0 = 1, L_1 = 1.2516292,
// L_2 = 4/3 bits per token, whose mean 1.1949875 = -log2(1/12)/3 is the bound. Estimated from random draws of the
// corruption (batches of examples; per example B̂_b = Σ_i weight·CE_i): each per-step mean within 5 standard errors,
// the overall mean too, and the batch loss is the mean of the per-example values.
static void test_toy_model_bound(void **state) {
    (void)state;
    const int L = 3, V = 3, B = 3000, batches = 10;
    static const double component[] = {1.0, 1.2516292, 4.0 / 3.0};
    uint32_t *x0 = hdlm_malloc((size_t)B * L * sizeof *x0);
    for (int b = 0; b < B; b++) {
        x0[b * L + 0] = 1;
        x0[b * L + 1] = 0;
        x0[b * L + 2] = 1;
    }
    double sum[3] = {0}, sum2[3] = {0}, total = 0;
    long count[3] = {0};
    hdlm_corruption c;
    hdlm_corruption_alloc(&c, B, L);
    float *logits = hdlm_malloc((size_t)B * L * V * sizeof *logits);
    int *steps = hdlm_malloc(B * sizeof *steps);
    hdlm_ardm_config cfg = {0.0, 1, 0};
    for (int n = 0; n < batches; n++) {
        hdlm_ardm_corrupt(&cfg, x0, V, hdlm_rng_key(2, 0, (uint64_t)n, HDLM_RNG_NOISE), &c, steps);
        for (int b = 0; b < B; b++) toy_logits(c.xt + b * L, L, logits + (size_t)b * L * V);
        double batch_sum = 0;
        for (int b = 0; b < B; b++) {
            double bits = 0;
            for (int i = 0; i < L; i++) {
                size_t r = (size_t)b * L + i;
                if (c.weight[r] != 0.0f) bits += c.weight[r] * hdlm_ce_row(logits + r * V, V, V - 1, x0[r], 0, NULL);
            }
            sum[steps[b]] += bits;
            sum2[steps[b]] += bits * bits;
            count[steps[b]]++;
            batch_sum += bits;
        }
        assert_true(fabs(hdlm_corruption_loss(&c, x0, logits, V, V - 1, NULL) - batch_sum / B) < 1e-9);
        total += batch_sum;
    }
    double var_total = 0;
    for (int s = 0; s < 3; s++) {
        double mean = sum[s] / count[s], var = sum2[s] / count[s] - mean * mean;
        assert_true(fabs(mean - component[s]) < 5 * sqrt(var / count[s]) + 1e-6);
        var_total += var / 3;
    }
    double n_total = (double)B * batches;
    assert_true(fabs(total / n_total - 1.1949875) < 5 * sqrt((var_total + 0.02) / n_total));
    assert_true(fabs(1.1949875 - (-log2(1.0 / 12) / 3)) < 1e-7);
    hdlm_corruption_free(&c);
    free(logits);
    free(steps);
    free(x0);
}

// Antithetic steps (A.3.2): with g = gcd(B, L) strata of Δ = L/g steps, each stratum receives exactly B/g sequences
// in every batch; over many batches the steps are uniform on {0..L-1} (chi-square); masks still have m = L - s.
static void test_antithetic_steps(void **state) {
    (void)state;
    static const int shapes[][2] = {{12, 8}, {5, 8}, {8, 8}};
    for (int sh = 0; sh < 3; sh++) {
        static const int gcds[] = {4, 1, 8};
        int B = shapes[sh][0], L = shapes[sh][1], g = gcds[sh], spacing = L / g;
        uint32_t *x0 = hdlm_calloc((size_t)B * L, sizeof *x0);
        hdlm_corruption c;
        hdlm_corruption_alloc(&c, B, L);
        int steps[12];
        long counts[8] = {0};
        hdlm_ardm_config cfg = {0.0, 1, 1};
        const int batches = 3000;
        for (int n = 0; n < batches; n++) {
            hdlm_ardm_corrupt(&cfg, x0, 5, hdlm_rng_key(8, 0, (uint64_t)n, HDLM_RNG_NOISE), &c, steps);
            int per_stratum[8] = {0};
            for (int b = 0; b < B; b++) {
                per_stratum[steps[b] / spacing]++;
                counts[steps[b]]++;
                int masked = 0;
                for (int i = 0; i < L; i++) masked += c.kind[b * L + i] == HDLM_CORRUPT_MASKED;
                assert_int_equal(masked, L - steps[b]);
            }
            for (int k = 0; k < g; k++) assert_int_equal(per_stratum[k], B / g);
        }
        double expect = (double)batches * B / L, chi2 = 0;
        for (int s = 0; s < L; s++) chi2 += pow(counts[s] - expect, 2) / expect;
        assert_true(chi2 < chi2_999(L - 1));
        hdlm_corruption_free(&c);
        free(x0);
    }
}

typedef struct {
    const hdlm_corruption *c;
    const uint32_t *x0;
    int vocab, width;
} ce_ctx;

static double corruption_loss_fn(void *ctx, const float *out, float *grad) {
    ce_ctx *k = ctx;
    return hdlm_corruption_loss(k->c, k->x0, out, k->vocab, k->width, grad);
}

// d(loss)/d(logits) = (1/B)·(1/(m ln 2) + λ/(L ln 2))·(softmax - onehot) at masked positions, 0 elsewhere, against
// central finite differences; with MASK excluded its logit gets no gradient.
static void test_gradients_finite_differences(void **state) {
    (void)state;
    const int V = 6, B = 3, L = 5;
    uint32_t x0[15];
    for (int r = 0; r < 15; r++) x0[r] = (uint32_t)(r * 2 % 5);
    float *logits = hdlm_malloc((size_t)B * L * V * sizeof *logits);
    float *grad = hdlm_malloc((size_t)B * L * V * sizeof *grad);
    random_outputs(logits, (size_t)B * L * V, 1.5, 4);
    hdlm_corruption c;
    hdlm_corruption_alloc(&c, B, L);
    for (int exclude = 0; exclude < 2; exclude++) {
        hdlm_ardm_config cfg = {1e-2, exclude, 0};
        hdlm_ardm_corrupt(&cfg, x0, V, 21, &c, NULL);
        ce_ctx ctx = {&c, x0, V, hdlm_ardm_softmax_width(&cfg, V)};
        check_gradient(corruption_loss_fn, &ctx, logits, (size_t)B * L * V, 1e-7, 1e-5);
        hdlm_corruption_loss(&c, x0, logits, V, ctx.width, grad);
        for (int r = 0; r < B * L; r++) {
            if (exclude) assert_true(grad[r * V + V - 1] == 0.0f);
            if (c.kind[r] != HDLM_CORRUPT_MASKED)
                for (int y = 0; y < V; y++) assert_true(grad[r * V + y] == 0.0f);
        }
    }
    hdlm_corruption_free(&c);
    free(logits);
    free(grad);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loss_at_initialisation),
        cmocka_unit_test(test_count_based_masks),
        cmocka_unit_test(test_toy_model_bound),
        cmocka_unit_test(test_antithetic_steps),
        cmocka_unit_test(test_gradients_finite_differences),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

// ε-hybrid forward process and losses (method §4): values at initialisation, corruption marginals, weights,
// finite-difference gradients, thread-count independence and the autoregressive special case (method §2.8).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hdlm/diffusion.h"
#include "hdlm/tokenizer.h"
#include "core/vecmath.h"
#include "loss_check.h"

static void init_schedule(hdlm_schedule *s, hdlm_schedule_type type, int L, int w, int tau) {
    assert_int_equal(hdlm_schedule_init(s, type, L, w, tau, HDLM_SAMPLING_EPS, HDLM_CONTEXT_BLOCK_CAUSAL,
                                        HDLM_BLOCK_FULL), 0);
}

static uint32_t *random_tokens(size_t n, int n_real, uint64_t seed) {
    uint32_t *x = hdlm_malloc(n * sizeof *x);
    hdlm_rng rng;
    hdlm_rng_init(&rng, hdlm_rng_key(seed, 0, 0, HDLM_RNG_DATA));
    for (size_t k = 0; k < n; k++) x[k] = (uint32_t)hdlm_rng_below(&rng, (uint64_t)n_real);
    return x;
}

// The gradient may overwrite the logits (the model lets a loss write d/d(out) into its outputs): same loss and
// gradient as with a separate buffer.
static void test_ce_row_in_place(void **state) {
    (void)state;
    enum { V = 37 };
    float z[V], copy[V], grad[V];
    for (int y = 0; y < V; y++) z[y] = copy[y] = (float)sin(0.7 * y) * 3.0f;
    double separate = hdlm_ce_row(z, V, V - 1, 5, 0.25, grad);
    double in_place = hdlm_ce_row(copy, V, V - 1, 5, 0.25, copy);
    assert_true(separate == in_place);
    assert_memory_equal(grad, copy, sizeof grad);
}

// The vectorised double exp behind hdlm_ce_row against glibc's exp: a few ulp over the whole range it serves
// (below -708 it returns 0, never a denormal); and a full-vocabulary row with a wide logit spread gives the loss and
// gradient of a plain double-precision evaluation with glibc's exp (1e-13 relative: summation order only).
static void test_ce_row_matches_glibc_exp(void **state) {
    (void)state;
    double worst = 0;
    for (double x = -708.0; x < 709.0; x += 0.000987654321) {
        double e = fabs(hdlm_exp(x) - exp(x)) / exp(x);
        worst = e > worst ? e : worst;
    }
    assert_true(worst < 1e-15);
    assert_true(hdlm_exp(-800.0) == 0.0 && hdlm_exp(0.0) == 1.0 && isnan(hdlm_exp(NAN)));

    const int V = HDLM_MODEL_VOCAB;
    float *z = hdlm_malloc((size_t)V * sizeof *z), *grad = hdlm_malloc((size_t)V * sizeof *grad);
    for (int y = 0; y < V; y++) z[y] = (float)(12.0 * sin(0.37 * y) + 0.001 * y);
    double zmax = -INFINITY, sum = 0;
    for (int y = 0; y < V - 1; y++) zmax = z[y] > zmax ? z[y] : zmax;
    for (int y = 0; y < V - 1; y++) sum += exp(z[y] - zmax);
    double lse = zmax + log(sum);
    double loss = hdlm_ce_row(z, V, V - 1, 1234, 0.5, grad);
    assert_true(fabs(loss - (lse - z[1234])) < 1e-13 * loss);
    for (int y = 0; y < V; y++) {
        double ref = y == V - 1 ? 0.0 : 0.5 * (exp(z[y] - lse) - (y == 1234));
        assert_true(fabs(grad[y] - ref) <= 1e-6 * fabs(ref) + 1e-12);
    }
    free(z);
    free(grad);
}

// Zero logits at V = 50258: CE = ln 50258 = 10.824925 at every position (method §12.3), so the ε loss equals
// ln V · Σw / (B·|A|), and the gradient of a row is coef·(1/V - onehot).
static void test_loss_at_initialisation(void **state) {
    (void)state;
    const int V = HDLM_MODEL_VOCAB, B = 2, L = 8;
    float *zero = hdlm_calloc((size_t)B * L * V, sizeof *zero), *grad = hdlm_malloc((size_t)B * L * V * sizeof *grad);
    assert_float_equal(hdlm_ce_row(zero, V, V, 17, 1.0, NULL), 10.824925, 1e-6);
    assert_true(fabs(hdlm_ce_row(zero, V, V, 17, 1.0, NULL) - log(50258.0)) < 1e-12);

    hdlm_schedule s;
    init_schedule(&s, HDLM_SCHEDULE_BLOCK, L, L, 1024);
    hdlm_step st;
    hdlm_step_alloc(&st, L);
    assert_int_equal(hdlm_schedule_step(&s, 400, &st), 0);
    const hdlm_step *steps[] = {&st, &st};
    uint32_t *x0 = random_tokens((size_t)B * L, HDLM_GPT2_VOCAB, 1);
    hdlm_eps_config cfg = {HDLM_EPS_LOSS_HYBRID, 0.01, 1.0};
    hdlm_corruption c;
    hdlm_corruption_alloc(&c, B, L);
    hdlm_epsilon_corrupt(&cfg, steps, x0, V, hdlm_rng_key(5, 0, 0, HDLM_RNG_NOISE), &c);
    double wsum = 0;
    for (int r = 0; r < B * L; r++) wsum += c.weight[r];
    assert_true(c.norm == B * L);
    double loss = hdlm_corruption_loss(&c, x0, zero, V, V, grad);
    assert_true(fabs(loss - log(50258.0) * wsum / (B * L)) < 1e-9 * loss);
    for (int r = 0; r < B * L; r++) {
        double coef = c.weight[r] / c.norm;
        assert_float_equal(grad[(size_t)r * V + (x0[r] + 1) % V], coef / V, 1e-12);
        assert_float_equal(grad[(size_t)r * V + x0[r]], coef * (1.0 / V - 1.0), 1e-9);
    }
    hdlm_corruption_free(&c);
    free(x0);
    free(zero);
    free(grad);
    hdlm_step_free(&st);
    hdlm_schedule_free(&s);
}

// Corruption marginals on the hyperschedule path (method §4.2): for an active position with time t, P(MASK) = t,
// P(replaced) = (1-t)ε, P(untouched) = (1-t)(1-ε) (chi-square, 2 dof); replacement tokens are uniform over the N real
// tokens (chi-square); settled and worthless positions are never touched and carry no loss.
static void test_corruption_marginals(void **state) {
    (void)state;
    const int V = 11, N = 10, B = 64, L = 96;
    hdlm_schedule s;
    init_schedule(&s, HDLM_SCHEDULE_BLOCK, L, 32, 4);   // step 6: block 1 at level 2, t = 0.666333
    hdlm_step st;
    hdlm_step_alloc(&st, L);
    assert_int_equal(hdlm_schedule_step(&s, 6, &st), 0);
    assert_int_equal(st.n_set, 32);
    assert_int_equal(st.a_end, 63);
    const hdlm_step *steps[64];
    for (int b = 0; b < B; b++) steps[b] = &st;
    uint32_t *x0 = random_tokens((size_t)B * L, N, 2);
    const double eps = 0.2, t = st.t[40];
    hdlm_eps_config cfg = {HDLM_EPS_LOSS_HYBRID, eps, 1.0};
    hdlm_corruption c;
    hdlm_corruption_alloc(&c, B, L);
    long kinds[4] = {0}, tokens[10] = {0};
    for (int draw = 0; draw < 150; draw++) {
        hdlm_epsilon_corrupt(&cfg, steps, x0, V, hdlm_rng_key(9, 0, (uint64_t)draw, HDLM_RNG_NOISE), &c);
        for (int b = 0; b < B; b++)
            for (int i = 0; i < L; i++) {
                size_t r = (size_t)b * L + i;
                if (st.cls[i] != HDLM_POS_ACTIVE) {
                    assert_int_equal(c.kind[r], HDLM_CORRUPT_KEPT);
                    assert_int_equal(c.xt[r], x0[r]);
                    assert_true(c.weight[r] == 0.0f);
                    continue;
                }
                kinds[c.kind[r]]++;
                if (c.kind[r] == HDLM_CORRUPT_MASKED) assert_int_equal(c.xt[r], V - 1);
                if (c.kind[r] == HDLM_CORRUPT_UNTOUCHED) assert_int_equal(c.xt[r], x0[r]);
                if (c.kind[r] == HDLM_CORRUPT_REPLACED) {
                    assert_true(c.xt[r] < (uint32_t)N);
                    tokens[c.xt[r]]++;
                }
            }
    }
    double n = kinds[1] + kinds[2] + kinds[3];
    double p[4] = {0, t, (1 - t) * eps, (1 - t) * (1 - eps)}, chi2 = 0;
    for (int k = 1; k < 4; k++) chi2 += pow(kinds[k] - n * p[k], 2) / (n * p[k]);
    assert_true(chi2 < chi2_999(2));
    double chi2_tokens = 0;
    for (int y = 0; y < N; y++) chi2_tokens += pow(tokens[y] - kinds[2] / 10.0, 2) / (kinds[2] / 10.0);
    assert_true(chi2_tokens < chi2_999(9));
    hdlm_corruption_free(&c);
    free(x0);
    hdlm_step_free(&st);
    hdlm_schedule_free(&s);
}

// Loss weights of method §4.3: hybrid 1/t, λ(1-ε), λε, 0 outside A; standard: masked only, no replacement.
static void test_weights(void **state) {
    (void)state;
    const int V = 9, B = 4, L = 24;
    hdlm_schedule s;
    init_schedule(&s, HDLM_SCHEDULE_SIMPLE, L, 6, 4);
    hdlm_step st;
    hdlm_step_alloc(&st, L);
    assert_int_equal(hdlm_schedule_step(&s, 10, &st), 0);
    const hdlm_step *steps[] = {&st, &st, &st, &st};
    uint32_t *x0 = random_tokens((size_t)B * L, V - 1, 3);
    hdlm_corruption c;
    hdlm_corruption_alloc(&c, B, L);
    for (int type = 0; type < 2; type++) {
        hdlm_eps_config cfg = {(hdlm_eps_loss_type)type, 0.3, 0.5};
        hdlm_epsilon_corrupt(&cfg, steps, x0, V, hdlm_rng_key(1, 0, 0, HDLM_RNG_NOISE), &c);
        assert_true(c.norm == (double)B * st.n_active);
        for (int b = 0; b < B; b++)
            for (int i = 0; i < L; i++) {
                size_t r = (size_t)b * L + i;
                float expect = 0;
                if (c.kind[r] == HDLM_CORRUPT_MASKED) expect = 1.0f / st.t[i];
                if (c.kind[r] == HDLM_CORRUPT_REPLACED) expect = (float)(0.5 * 0.7);
                if (c.kind[r] == HDLM_CORRUPT_UNTOUCHED) expect = type == 0 ? (float)(0.5 * 0.3) : 0.0f;
                if (type == 1) assert_int_not_equal(c.kind[r], HDLM_CORRUPT_REPLACED);
                assert_float_equal(c.weight[r], expect, 1e-6 * expect);
            }
    }
    hdlm_corruption_free(&c);
    free(x0);
    hdlm_step_free(&st);
    hdlm_schedule_free(&s);
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

// d(loss)/d(logits) against central finite differences, hybrid and standard, schedule and no-schedule paths.
static void test_gradients_finite_differences(void **state) {
    (void)state;
    const int V = 7, B = 3, L = 6;
    hdlm_schedule s;
    init_schedule(&s, HDLM_SCHEDULE_BLOCK, L, 4, 3);
    hdlm_step st1, st2;
    hdlm_step_alloc(&st1, L);
    hdlm_step_alloc(&st2, L);
    assert_int_equal(hdlm_schedule_step(&s, 1, &st1), 0);
    assert_int_equal(hdlm_schedule_step(&s, 5, &st2), 0);
    const hdlm_step *steps[] = {&st1, &st2, &st1};   // per-sequence steps
    uint32_t *x0 = random_tokens((size_t)B * L, V - 1, 4);
    float *logits = hdlm_malloc((size_t)B * L * V * sizeof *logits);
    random_outputs(logits, (size_t)B * L * V, 2.0, 11);
    hdlm_corruption c;
    hdlm_corruption_alloc(&c, B, L);
    ce_ctx ctx = {&c, x0, V, V};
    for (int type = 0; type < 2; type++) {
        hdlm_eps_config cfg = {(hdlm_eps_loss_type)type, 0.25, 1.0};
        hdlm_epsilon_corrupt(&cfg, steps, x0, V, hdlm_rng_key(2, 0, (uint64_t)type, HDLM_RNG_NOISE), &c);
        check_gradient(corruption_loss_fn, &ctx, logits, (size_t)B * L * V, 1e-7, 1e-5);
        hdlm_epsilon_corrupt_unscheduled(&cfg, HDLM_SAMPLING_EPS, x0, V, hdlm_rng_key(3, 0, 0, HDLM_RNG_NOISE), &c,
                                         NULL);
        check_gradient(corruption_loss_fn, &ctx, logits, (size_t)B * L * V, 1e-7, 1e-5);
    }
    hdlm_corruption_free(&c);
    free(logits);
    free(x0);
    hdlm_step_free(&st1);
    hdlm_step_free(&st2);
    hdlm_schedule_free(&s);
}

// No-schedule MDLM path (method §4.4): p_b = (1-ε_s)t_b + ε_s per sequence; the masked fraction of each sequence is
// within 5 binomial standard deviations of p_b, replacements among unmasked positions have rate ε; weights carry
// 1/(1-p_b) on unmasked positions and norm = B·L.
static void test_unscheduled_path(void **state) {
    (void)state;
    const int V = 5, B = 16, L = 4096;
    uint32_t *x0 = random_tokens((size_t)B * L, V - 1, 5);
    hdlm_corruption c;
    hdlm_corruption_alloc(&c, B, L);
    float p[16];
    hdlm_eps_config cfg = {HDLM_EPS_LOSS_HYBRID, 0.1, 1.0};
    hdlm_epsilon_corrupt_unscheduled(&cfg, HDLM_SAMPLING_EPS, x0, V, hdlm_rng_key(6, 0, 0, HDLM_RNG_NOISE), &c, p);
    assert_true(c.norm == (double)B * L);
    long replaced = 0, unmasked = 0;
    float lo = 1, hi = 0;
    for (int b = 0; b < B; b++) {
        assert_true(p[b] >= HDLM_SAMPLING_EPS && p[b] <= 1.0f);
        lo = p[b] < lo ? p[b] : lo;
        hi = p[b] > hi ? p[b] : hi;
        long masked = 0;
        for (int i = 0; i < L; i++) {
            size_t r = (size_t)b * L + i;
            masked += c.kind[r] == HDLM_CORRUPT_MASKED;
            replaced += c.kind[r] == HDLM_CORRUPT_REPLACED;
            if (c.kind[r] == HDLM_CORRUPT_MASKED) assert_float_equal(c.weight[r], 1.0 / p[b], 1e-6 / p[b]);
            if (c.kind[r] == HDLM_CORRUPT_REPLACED) assert_float_equal(c.weight[r], 0.9 / (1 - p[b]), 1e-5);
            if (c.kind[r] == HDLM_CORRUPT_UNTOUCHED) assert_float_equal(c.weight[r], 0.1 / (1 - p[b]), 1e-5);
        }
        unmasked += L - masked;
        assert_true(fabs(masked - L * p[b]) < 5 * sqrt(L * p[b] * (1 - p[b])) + 1);
    }
    assert_true(hi - lo > 0.3);   // t really varies per sequence
    assert_true(fabs(replaced - 0.1 * unmasked) < 5 * sqrt(unmasked * 0.09));
    hdlm_corruption_free(&c);
    free(x0);
}

// Corruption and loss are identical (bit for bit) with 1 and 2 threads.
static void test_thread_count_independence(void **state) {
    (void)state;
    const int V = 33, B = 6, L = 40;
    hdlm_schedule s;
    init_schedule(&s, HDLM_SCHEDULE_BLOCK, L, L, 16);
    hdlm_step st;
    hdlm_step_alloc(&st, L);
    assert_int_equal(hdlm_schedule_step(&s, 7, &st), 0);
    const hdlm_step *steps[] = {&st, &st, &st, &st, &st, &st};
    uint32_t *x0 = random_tokens((size_t)B * L, V - 1, 7);
    float *logits = hdlm_malloc((size_t)B * L * V * sizeof *logits);
    float *g1 = hdlm_malloc((size_t)B * L * V * sizeof *g1), *g2 = hdlm_malloc((size_t)B * L * V * sizeof *g2);
    random_outputs(logits, (size_t)B * L * V, 1.0, 3);
    hdlm_eps_config cfg = {HDLM_EPS_LOSS_HYBRID, 0.05, 1.0};
    hdlm_corruption c1, c2;
    hdlm_corruption_alloc(&c1, B, L);
    hdlm_corruption_alloc(&c2, B, L);
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    hdlm_epsilon_corrupt(&cfg, steps, x0, V, 99, &c1);
    double l1 = hdlm_corruption_loss(&c1, x0, logits, V, V, g1);
    omp_set_num_threads(2);
    hdlm_epsilon_corrupt(&cfg, steps, x0, V, 99, &c2);
    double l2 = hdlm_corruption_loss(&c2, x0, logits, V, V, g2);
    omp_set_num_threads(saved);
    assert_memory_equal(c1.xt, c2.xt, (size_t)B * L * sizeof *c1.xt);
    assert_true(l1 == l2);
    assert_memory_equal(g1, g2, (size_t)B * L * V * sizeof *g1);
    hdlm_corruption_free(&c1);
    hdlm_corruption_free(&c2);
    free(logits);
    free(g1);
    free(g2);
    free(x0);
    hdlm_step_free(&st);
    hdlm_schedule_free(&s);
}

// The autoregressive limit (method §2.8): `simple` with ω = τ = 2. Step k puts position p = k-1 at level 1 (t = 0.999)
// with the clean prefix 0..p-1 settled or at level 0, and everything after p worthless. Shown here: (1) the mask rows
// of the predicted positions, stacked over the steps, are exactly the causal (next-token) mask; (2) with the
// `standard` loss the only target of step k is x0[p], read at position p whose input is MASK, while every key that
// row p may attend holds the clean prefix x0[0..p-1] — the input/target pair of next-token training (aligned form);
// (3) every token is the target of exactly one step.
static void test_autoregressive_special_case(void **state) {
    (void)state;
    const int V = 13, L = 6;
    hdlm_schedule s;
    init_schedule(&s, HDLM_SCHEDULE_SIMPLE, L, 2, 2);
    assert_int_equal(s.k_max, L + 2);
    hdlm_step st;
    hdlm_step_alloc(&st, L);
    uint32_t *x0 = random_tokens(L, V - 1, 8);
    uint8_t allowed[36], stacked[36];
    int targeted[6] = {0};
    hdlm_eps_config cfg = {HDLM_EPS_LOSS_STANDARD, 0.0, 1.0};
    hdlm_corruption c;
    hdlm_corruption_alloc(&c, 1, L);
    const hdlm_step *steps[] = {&st};
    for (int k = 1; k < s.k_max; k++) {
        assert_int_equal(hdlm_schedule_step(&s, k, &st), 0);
        hdlm_mask_expand(&st.mask, allowed);
        hdlm_epsilon_corrupt(&cfg, steps, x0, V, hdlm_rng_key(4, 0, (uint64_t)k, HDLM_RNG_NOISE), &c);
        int p = k - 1;
        for (int i = 0; i < L; i++) {
            if (i > p) assert_int_equal(st.cls[i], HDLM_POS_WORTHLESS);   // the future is invisible
            if (i < p) assert_int_equal(c.xt[i], x0[i]);                   // the clean prefix
            if (c.weight[i] != 0.0f) {                                    // loss targets
                assert_int_equal(i, p);
                assert_int_equal(c.kind[i], HDLM_CORRUPT_MASKED);
                targeted[i]++;
            }
        }
        if (p < L) {
            assert_int_equal(st.level[p], 1);
            assert_float_equal(st.t[p], 0.999, 1e-6);
            assert_int_equal(c.xt[p], V - 1);
            memcpy(stacked + p * L, allowed + p * L, (size_t)L);
        } else {
            assert_int_equal(st.n_active, 1);   // last step: the final token only finishes (level 0, t = 0.001)
        }
    }
    for (int i = 0; i < L; i++) {
        assert_int_equal(targeted[i], 1);
        for (int j = 0; j < L; j++) assert_int_equal(stacked[i * L + j], j <= i);   // causal mask
    }
    // Over many draws the steps differ from next-token training only when the level-1 token stays visible
    // (probability 0.001) or the level-0 token is masked (0.001): method §14.3. Expected deviating steps per walk:
    // 0.001 (k = 1) + (L-1)·(1 - 0.999²) (k = 2..L) + 0.001 (k = L+1).
    const int walks = 4000;
    long deviations = 0;
    for (int w = 0; w < walks; w++)
        for (int k = 1; k < s.k_max; k++) {
            assert_int_equal(hdlm_schedule_step(&s, k, &st), 0);
            hdlm_epsilon_corrupt(&cfg, steps, x0, V, hdlm_rng_key(5, (uint64_t)w, (uint64_t)k, HDLM_RNG_NOISE), &c);
            int p = k - 1, same = 1;
            for (int i = 0; i < L; i++) same &= i == p ? c.kind[i] == HDLM_CORRUPT_MASKED : c.xt[i] == x0[i];
            deviations += !same;
        }
    double expect = walks * (0.002 + (L - 1) * (1 - 0.999 * 0.999));
    assert_true(fabs(deviations - expect) < 5 * sqrt(expect));
    hdlm_corruption_free(&c);
    free(x0);
    hdlm_step_free(&st);
    hdlm_schedule_free(&s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ce_row_in_place),
        cmocka_unit_test(test_ce_row_matches_glibc_exp),
        cmocka_unit_test(test_loss_at_initialisation),
        cmocka_unit_test(test_corruption_marginals),
        cmocka_unit_test(test_weights),
        cmocka_unit_test(test_gradients_finite_differences),
        cmocka_unit_test(test_unscheduled_path),
        cmocka_unit_test(test_thread_count_independence),
        cmocka_unit_test(test_autoregressive_special_case),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

// γ-hybrid noise, forward sampling, score entropy and loss (method §5) against the vectors of method §12.3, plus
// marginal statistics and finite-difference gradients.
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
#include "loss_check.h"

static void assert_rel(double got, double expect, double tol) {
    if (fabs(got - expect) > tol * fabs(expect)) {
        print_error("got %.10g expected %.10g (relative tolerance %g)\n", got, expect, tol);
        fail();
    }
}

static void init_schedule(hdlm_schedule *s, hdlm_schedule_type type, int L, int w, int tau) {
    assert_int_equal(hdlm_schedule_init(s, type, L, w, tau, HDLM_SAMPLING_EPS, HDLM_CONTEXT_BLOCK_CAUSAL,
                                        HDLM_BLOCK_FULL), 0);
}

// Log-linear σ(t), σ'(t) at the reference values of method §5.2 / §12.3.
static void test_loglinear_noise(void **state) {
    (void)state;
    static const double v[][3] = {{1e-4, 9.95050e-5, 0.995099}, {1e-3, 9.95495e-4, 0.995991},
                                  {0.5, 0.688160, 1.980100},    {0.999, 5.116829, 165.9716},
                                  {0.9999, 5.278613, 195.1172}};
    for (int k = 0; k < 5; k++) {
        assert_rel(hdlm_loglinear_sigma(v[k][0]), v[k][1], 1e-5);
        assert_rel(hdlm_loglinear_dsigma(v[k][0]), v[k][2], 1e-6);
    }
    // σ' is the derivative of σ.
    for (double t = 0.01; t < 1; t += 0.1)
        assert_rel((hdlm_loglinear_sigma(t + 1e-6) - hdlm_loglinear_sigma(t - 1e-6)) / 2e-6,
                   hdlm_loglinear_dsigma(t), 1e-7);
}

// Forward marginal at t = 0.9999, γ = 0.01 (method §12.3) and the sampler prior ρ_abs (method §6.7, §12.3).
static void test_forward_probabilities_and_prior(void **state) {
    (void)state;
    double p_mask, p_uniform;
    hdlm_gamma_forward_probs(hdlm_loglinear_sigma(0.9999), 0.01, &p_mask, &p_uniform);
    assert_rel(p_mask, 0.9946241, 1e-6);
    assert_rel(p_uniform, 2.764e-4, 1e-3);
    hdlm_gamma_forward_probs(hdlm_loglinear_sigma(0.999), 0.01, &p_mask, &p_uniform);
    assert_rel(1 - p_mask, exp(-0.99 * 5.116829), 1e-5);   // ≈ 0.63% unmasked at the top level (§5.3)
    assert_rel(hdlm_gamma_prior_mask_prob(0.01), 0.9992386, 1e-7);
    assert_rel(hdlm_gamma_prior_mask_prob(0.05), 0.9958692, 1e-7);
    assert_rel(hdlm_gamma_prior_mask_prob(0.1), 0.9908238, 1e-7);
    assert_true(hdlm_gamma_prior_mask_prob(1.0) == 0.0);   // γ = 1: all uniform
    // Prior samples: MASK fraction within 5 binomial sd of ρ_abs(0.1); real tokens uniform (chi-square, 9 dof).
    const int n = 200000, V = 11;
    uint32_t *x = hdlm_malloc(n * sizeof *x);
    hdlm_gamma_prior_sample(0.1, n, V, 42, x);
    long counts[11] = {0};
    for (int i = 0; i < n; i++) counts[x[i]]++;
    double rho = hdlm_gamma_prior_mask_prob(0.1), real = n - counts[10], chi2 = 0;
    assert_true(fabs(counts[10] - n * rho) < 5 * sqrt(n * rho * (1 - rho)));
    for (int y = 0; y < 10; y++) chi2 += pow(counts[y] - real / 10, 2) / (real / 10);
    assert_true(chi2 < chi2_999(9));
    free(x);
}

// Forward sampling marginals (method §5.3), chi-square over {MASK, x0, each other real token}: P(MASK) = 1-a,
// P(x0) = ag + a(1-g)/N, P(y ≠ x0) = a(1-g)/N. Uses every class of position of a block step (settled t = ε_s,
// active, worthless t = 1-ε_s); MASK inputs stay MASK.
static void test_forward_sampling_marginals(void **state) {
    (void)state;
    const int V = 11, N = 10, B = 32, L = 96;
    const double gamma = 0.3;
    hdlm_schedule s;
    init_schedule(&s, HDLM_SCHEDULE_BLOCK, L, 32, 4);
    hdlm_step st;
    hdlm_step_alloc(&st, L);
    assert_int_equal(hdlm_schedule_step(&s, 7, &st), 0);   // settled 0..31, active 32..63 at level 1, worthless
    const hdlm_step *steps[32];
    for (int b = 0; b < B; b++) steps[b] = &st;
    uint32_t *x0 = hdlm_malloc((size_t)B * L * sizeof *x0), *xt = hdlm_malloc((size_t)B * L * sizeof *xt);
    for (int r = 0; r < B * L; r++) x0[r] = (uint32_t)((r * 7) % N);
    x0[5] = (uint32_t)N;   // a MASK input
    const int classes = 3, draws = 60;
    long counts[3][12] = {{0}};   // per class: [0] MASK, [1 + (y - x0) mod N] real tokens
    for (int draw = 0; draw < draws; draw++) {
        hdlm_gamma_corrupt(gamma, steps, x0, B, V, hdlm_rng_key(3, 0, (uint64_t)draw, HDLM_RNG_NOISE), xt);
        assert_int_equal(xt[5], N);
        for (int r = 0; r < B * L; r++) {
            if (r == 5) continue;
            int c = st.cls[r % L];
            counts[c][xt[r] == (uint32_t)N ? 0 : 1 + (int)((xt[r] + N - x0[r]) % N)]++;
        }
    }
    for (int c = 0; c < classes; c++) {
        double t = st.t[c == 0 ? 0 : (c == 1 ? 40 : 80)], p_mask, p_uniform, n = 0, chi2 = 0;
        hdlm_gamma_forward_probs(hdlm_loglinear_sigma(t), gamma, &p_mask, &p_uniform);
        double p[11];
        p[0] = p_mask;
        p[1] = 1 - p_mask - p_uniform + p_uniform / N;
        for (int y = 2; y <= N; y++) p[y] = p_uniform / N;
        for (int k = 0; k <= N; k++) n += counts[c][k];
        int dof = -1;
        for (int k = 0; k <= N; k++) {
            if (n * p[k] < 5) continue;   // cells too rare for the chi-square approximation: checked below
            chi2 += pow(counts[c][k] - n * p[k], 2) / (n * p[k]);
            dof++;
        }
        if (dof > 0) assert_true(chi2 < chi2_999(dof));
        // Binomial check of the MASK fraction (also covers the near-clean settled positions).
        assert_true(fabs(counts[c][0] - n * p_mask) < 5 * sqrt(n * p_mask * (1 - p_mask)) + 2);
    }
    free(x0);
    free(xt);
    hdlm_step_free(&st);
    hdlm_schedule_free(&s);
}

// Zero test of method §12.3: with the exact pure-process scores the score entropy vanishes (up to the 1e-12 guards),
// in every branch, at the full vocabulary and a small one, at several noise levels.
static void test_score_entropy_zero(void **state) {
    (void)state;
    static const int vocabs[] = {HDLM_MODEL_VOCAB, 9};
    static const double times[] = {1e-3, 0.5, 0.999};
    for (int vi = 0; vi < 2; vi++) {
        int V = vocabs[vi], N = V - 1;
        float *o = hdlm_malloc((size_t)V * sizeof *o);
        float *grad = hdlm_malloc((size_t)V * sizeof *grad);
        for (int ti = 0; ti < 3; ti++) {
            double sigma = hdlm_loglinear_sigma(times[ti]), E = expm1(sigma);
            for (int gi = 0; gi < 2; gi++) {
                double gamma = gi ? 0.2 : 0.01;
                uint32_t x0 = 3, x = 5;
                // absorbing: o_{x0} = log r, s_y -> 0 elsewhere
                for (int y = 0; y < V; y++) o[y] = -1e4f;
                o[x0] = (float)log(1 / E);
                double se = hdlm_gamma_score_entropy(o, V, (uint32_t)N, x0, sigma, gamma, 1.0, grad);
                assert_true(fabs(se) < 1e-6 * (1 / E));
                // at the optimum the gradient vanishes too
                for (int y = 0; y < N; y++) assert_true(fabs(grad[y]) < 1e-5 * (1 / E));
                // uniform, x = x0: s_y = ρ for y ≠ x, s_x arbitrary
                double rho = E / (E + N);
                for (int y = 0; y < V; y++) o[y] = (float)log(rho);
                o[x0] = 2.5f;
                se = hdlm_gamma_score_entropy(o, V, x0, x0, sigma, gamma, 1.0, grad);
                assert_true(fabs(se) < 1e-6);
                // uniform, x ≠ x0: s_{x0} = 1/ρ, s_y = 1 for y ∉ {x, x0}, s_x arbitrary
                for (int y = 0; y < V; y++) o[y] = 0.0f;
                o[x0] = (float)-log(rho);
                o[x] = -1.5f;
                se = hdlm_gamma_score_entropy(o, V, x, x0, sigma, gamma, 1.0, grad);
                // Here the ε0 = 1e-12 guards of (-log(ρ+ε0)-1)/(ρ+ε0) are not negligible when ρ is tiny (small σ,
                // large N): they shift SE by about γ·ε0·|log ρ|/(ρ²N); the zero holds up to that.
                double guard = gamma * 1e-12 * (1 + fabs(log(rho))) / (rho * rho * N);
                if (fabs(se) >= 1e-6 * (1 + 1 / E) + 2 * guard)
                    print_error("V %d t %g gamma %g: SE %g guard %g\n", V, times[ti], gamma, se, guard);
                assert_true(fabs(se) < 1e-6 * (1 + 1 / E) + 2 * guard);
                // a wrong score gives a strictly positive entropy
                o[x0] += 0.5f;
                assert_true(hdlm_gamma_score_entropy(o, V, x, x0, sigma, gamma, 1.0, NULL) > 1e-4 * gamma);
            }
        }
        free(o);
        free(grad);
    }
}

// At initialisation (zero output layer, method §12.3): raw outputs 0 become o_y = -log(e^σ-1) - log(V-1) after
// scale_by_sigma. SE is finite and the same for every token of the same (σ, case); the absorbing case equals
// (1-γ)·log(N)/(e^σ-1) (up to the 1e-12 guard); the settled-prefix CE is ln 50258 = 10.824925.
static void test_values_at_initialisation(void **state) {
    (void)state;
    const int V = HDLM_MODEL_VOCAB, N = V - 1;
    float *o = hdlm_malloc((size_t)V * sizeof *o);
    static const double times[] = {1e-4, 1e-3, 0.5, 0.999, 0.9999};
    for (int ti = 0; ti < 5; ti++) {
        double sigma = hdlm_loglinear_sigma((float)times[ti]);
        float shift = (float)hdlm_gamma_log_score_shift(sigma, V);
        for (int y = 0; y < V; y++) o[y] = shift;
        double ref[3];
        for (int token = 0; token < 3; token++) {
            uint32_t x0 = (uint32_t)(token * 20011 % N), other = (x0 + 17) % N;
            double se[3] = {hdlm_gamma_score_entropy(o, V, (uint32_t)N, x0, sigma, 0.01, 1.0, NULL),
                            hdlm_gamma_score_entropy(o, V, x0, x0, sigma, 0.01, 1.0, NULL),
                            hdlm_gamma_score_entropy(o, V, other, x0, sigma, 0.01, 1.0, NULL)};
            for (int c = 0; c < 3; c++) {
                assert_true(isfinite(se[c]));
                if (token == 0) ref[c] = se[c];
                else assert_true(se[c] == ref[c]);
            }
        }
        double E = sigma < 0.5 ? expm1(sigma) : exp(sigma) - 1;
        assert_rel(ref[0], 0.99 * log((double)N) / E, 1e-5);
        assert_rel(hdlm_ce_row(o, V, V, 123, 1.0, NULL), 10.824925, 1e-7);
    }
    free(o);
}

// Score parametrisation (method §5.4): scale_by_sigma adds -log(e^σ-1) - log(V-1) per row (log 50257 = 10.824905;
// e^σ-1 by expm1 below σ = 0.5); post-processing pins o_i[MASK] = -1000 exactly for i with i+1 settled, and its
// backward zeroes those gradient entries.
static void test_score_parametrisation(void **state) {
    (void)state;
    const int V = HDLM_MODEL_VOCAB, L = 6;
    float sigma[6] = {1e-4f, 0.3f, 0.49f, 0.5f, 2.0f, 5.2f};
    float *out = hdlm_calloc((size_t)L * V, sizeof *out);
    hdlm_gamma_scale_by_sigma(sigma, L, V, out);
    for (int i = 0; i < L; i++) {
        double E = sigma[i] < 0.5 ? expm1(sigma[i]) : exp(sigma[i]) - 1;
        assert_rel(hdlm_gamma_log_score_shift(sigma[i], V) + log(E), -10.824905, 1e-7);
        assert_true(out[(size_t)i * V] == (float)hdlm_gamma_log_score_shift(sigma[i], V));
        assert_true(out[(size_t)i * V + V - 1] == out[(size_t)i * V]);
    }
    hdlm_schedule s;
    init_schedule(&s, HDLM_SCHEDULE_BLOCK, L, 2, 2);
    hdlm_step st;
    hdlm_step_alloc(&st, L);
    assert_int_equal(hdlm_schedule_step(&s, 5, &st), 0);   // settled 0..3
    assert_int_equal(st.n_set, 4);
    float *dout = hdlm_malloc((size_t)L * V * sizeof *dout);
    for (size_t k = 0; k < (size_t)L * V; k++) dout[k] = 1.0f;
    hdlm_gamma_post_process(&st, V, out);
    hdlm_gamma_post_process_backward(&st, V, dout);
    for (int i = 0; i < L; i++) {
        int pinned = i <= 2;   // i + 1 settled
        assert_true((out[(size_t)i * V + V - 1] == -1000.0f) == pinned);
        assert_true((dout[(size_t)i * V + V - 1] == 0.0f) == pinned);
        assert_true(dout[(size_t)i * V] == 1.0f);
    }
    free(out);
    free(dout);
    hdlm_step_free(&st);
    hdlm_schedule_free(&s);
}

typedef struct {
    hdlm_gamma_config cfg;
    const hdlm_step *const *steps;
    const uint32_t *xt, *x0;
    int batch, vocab;
} gamma_ctx;

static double gamma_loss_fn(void *ctx, const float *out, float *grad) {
    gamma_ctx *k = ctx;
    return hdlm_gamma_loss(&k->cfg, k->steps, out, k->xt, k->x0, k->batch, k->vocab, grad, NULL);
}

// The loss of method §5.6 assembled by hand from its parts on a step with settled (3 blocks: block weights 0, ½, 1),
// active and worthless positions: D_b = Σ_{not settled} σ'·w·SE, C_b = Σ_settled CE·bw / n_set, means over b.
static void test_loss_composition(void **state) {
    (void)state;
    const int V = 8, B = 2, L = 10;
    hdlm_schedule s;
    init_schedule(&s, HDLM_SCHEDULE_BLOCK, L, 2, 3);
    hdlm_step st;
    hdlm_step_alloc(&st, L);
    assert_int_equal(hdlm_schedule_step(&s, 11, &st), 0);   // blk 3: settled 0..5, active 6..7, worthless 8..9
    assert_int_equal(st.n_set, 6);
    const hdlm_step *steps[] = {&st, &st};
    uint32_t x0[20], xt[20];
    for (int r = 0; r < 20; r++) x0[r] = (uint32_t)(r * 3 % 7);
    hdlm_gamma_corrupt(0.3, steps, x0, B, V, 77, xt);
    float *out = hdlm_malloc(20 * V * sizeof *out);
    random_outputs(out, 20 * V, 1.0, 5);
    hdlm_gamma_config cfg = {0.3, 0.7, 1.3};
    hdlm_gamma_terms terms;
    double loss = hdlm_gamma_loss(&cfg, steps, out, xt, x0, B, V, NULL, &terms);
    static const double bw[] = {0, 0, 0.5, 0.5, 1, 1};
    double d = 0, c = 0;
    for (int b = 0; b < B; b++)
        for (int i = 0; i < L; i++) {
            int r = b * L + i;
            if (i < 6) {
                c += hdlm_ce_row(out + r * V, V, V, x0[r], 1.0, NULL) * bw[i] / 6 / B;
            } else {
                double t = st.t[i], w = i < 8 ? 1.0 : (double)0.001f;   // weights are stored as float
                d += hdlm_loglinear_dsigma(t) * w *
                     hdlm_gamma_score_entropy(out + r * V, V, xt[r], x0[r], hdlm_loglinear_sigma(t), 0.3, 1.0, NULL) /
                     B;
            }
        }
    assert_rel(terms.diffusion, d, 1e-12);
    assert_rel(terms.ce, c, 1e-12);
    assert_rel(loss, 0.7 * d + 1.3 * c, 1e-12);
    // A plain-diffusion step has no CE term.
    hdlm_schedule_free(&s);
    init_schedule(&s, HDLM_SCHEDULE_BLOCK, L, L, 3);
    assert_int_equal(hdlm_schedule_step(&s, 2, &st), 0);
    hdlm_gamma_loss(&cfg, steps, out, xt, x0, B, V, NULL, &terms);
    assert_true(terms.ce == 0.0);
    free(out);
    hdlm_step_free(&st);
    hdlm_schedule_free(&s);
}

// d(loss)/d(outputs) against central finite differences, covering settled (CE), active and worthless positions and
// the three SE cases (MASK, x = x0, x ≠ x0); per-sequence steps.
static void test_gradients_finite_differences(void **state) {
    (void)state;
    const int V = 6, B = 2, L = 6;
    hdlm_schedule s;
    init_schedule(&s, HDLM_SCHEDULE_BLOCK, L, 2, 3);
    hdlm_step st1, st2;
    hdlm_step_alloc(&st1, L);
    hdlm_step_alloc(&st2, L);
    assert_int_equal(hdlm_schedule_step(&s, 5, &st1), 0);   // settled 0..1, active 2..3, worthless 4..5
    assert_int_equal(hdlm_schedule_step(&s, 8, &st2), 0);   // settled 0..3 (2 blocks), active 4..5
    const hdlm_step *steps[] = {&st1, &st2};
    uint32_t x0[] = {0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1};
    uint32_t xt[] = {0, 1, 5, 3, 1, 5, 1, 2, 3, 4, 5, 2};   // MASK, x = x0 and x ≠ x0 in every class
    float *out = hdlm_malloc((size_t)B * L * V * sizeof *out);
    random_outputs(out, (size_t)B * L * V, 1.0, 9);
    gamma_ctx ctx = {{0.2, 0.7, 1.3}, steps, xt, x0, B, V};
    check_gradient(gamma_loss_fn, &ctx, out, (size_t)B * L * V, 1e-7, 1e-5);
    ctx.cfg.gamma = 0.01;
    check_gradient(gamma_loss_fn, &ctx, out, (size_t)B * L * V, 1e-7, 1e-5);
    // The MASK channel never gets a gradient from the diffusion term.
    float grad[72];
    hdlm_gamma_loss(&ctx.cfg, steps, out, xt, x0, B, V, grad, NULL);
    for (int i = 2; i < L; i++) assert_true(grad[i * V + V - 1] == 0.0f);
    free(out);
    hdlm_step_free(&st1);
    hdlm_step_free(&st2);
    hdlm_schedule_free(&s);
}

// Corruption and loss are identical (bit for bit) with 1 and 2 threads.
static void test_thread_count_independence(void **state) {
    (void)state;
    const int V = 21, B = 5, L = 30;
    hdlm_schedule s;
    init_schedule(&s, HDLM_SCHEDULE_SIMPLE, L, 6, 4);
    hdlm_step st;
    hdlm_step_alloc(&st, L);
    assert_int_equal(hdlm_schedule_step(&s, 14, &st), 0);
    const hdlm_step *steps[] = {&st, &st, &st, &st, &st};
    uint32_t x0[150], xt1[150], xt2[150];
    for (int r = 0; r < 150; r++) x0[r] = (uint32_t)(r % (V - 1));
    float *out = hdlm_malloc((size_t)B * L * V * sizeof *out);
    float *g1 = hdlm_malloc((size_t)B * L * V * sizeof *g1), *g2 = hdlm_malloc((size_t)B * L * V * sizeof *g2);
    random_outputs(out, (size_t)B * L * V, 1.0, 1);
    hdlm_gamma_config cfg = {0.05, 1.0, 1.0};
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    hdlm_gamma_corrupt(0.05, steps, x0, B, V, 5, xt1);
    double l1 = hdlm_gamma_loss(&cfg, steps, out, xt1, x0, B, V, g1, NULL);
    omp_set_num_threads(2);
    hdlm_gamma_corrupt(0.05, steps, x0, B, V, 5, xt2);
    double l2 = hdlm_gamma_loss(&cfg, steps, out, xt2, x0, B, V, g2, NULL);
    omp_set_num_threads(saved);
    assert_memory_equal(xt1, xt2, sizeof xt1);
    assert_true(l1 == l2);
    assert_memory_equal(g1, g2, (size_t)B * L * V * sizeof *g1);
    // Per-token σ for the model follows t.
    float sigma[30];
    hdlm_gamma_sigmas(&st, sigma);
    for (int i = 0; i < L; i++) assert_rel(sigma[i], hdlm_loglinear_sigma(st.t[i]), 1e-6);
    free(out);
    free(g1);
    free(g2);
    hdlm_step_free(&st);
    hdlm_schedule_free(&s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loglinear_noise),
        cmocka_unit_test(test_forward_probabilities_and_prior),
        cmocka_unit_test(test_forward_sampling_marginals),
        cmocka_unit_test(test_score_entropy_zero),
        cmocka_unit_test(test_values_at_initialisation),
        cmocka_unit_test(test_score_parametrisation),
        cmocka_unit_test(test_loss_composition),
        cmocka_unit_test(test_gradients_finite_differences),
        cmocka_unit_test(test_thread_count_independence),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

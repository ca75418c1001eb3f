// ARDM budgeted generation (method §13 A.5): the policy DP against the A.13 vectors and a brute-force search over all
// policies, the naive policy, policy costs and sampling with a policy; the policy likelihood estimators of A.6
// (modes 3 and 4) against the A.13 toy values and a brute-force enumeration of every order.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hdlm/common.h"
#include "hdlm/likelihood.h"
#include "hdlm/rng.h"
#include "hdlm/sampler.h"

static void assert_policy(const int *got, const int *want, int K) {
    for (int j = 0; j < K; j++)
        if (got[j] != want[j]) fail_msg("policy entry %d: got %d, expected %d", j, got[j], want[j]);
}

// Spec A.13: L = (5, 4, 3, 2.85, 2.80), budgets 1..5 → costs (25, 19, 18, 17.7, 17.65) and policies [0], [0,2],
// [0,1,2], [0,1,2,3], [0,1,2,3,4], in both modes.
static void test_reference_vectors(void **state) {
    (void)state;
    const double L[5] = {5, 4, 3, 2.85, 2.80}, cost[5] = {25, 19, 18, 17.7, 17.65};
    const int want[5][5] = {{0}, {0, 2}, {0, 1, 2}, {0, 1, 2, 3}, {0, 1, 2, 3, 4}};
    int policy[5];
    for (int strict = 0; strict < 2; strict++)
        for (int K = 1; K <= 5; K++) {
            assert_float_equal(hdlm_ardm_policy_dp(L, 5, K, strict, policy), cost[K - 1], 1e-12);
            assert_policy(policy, want[K - 1], K);
            assert_float_equal(hdlm_ardm_policy_cost(L, 5, policy, K), cost[K - 1], 1e-12);
        }
    int naive[3];
    hdlm_ardm_policy_naive(5, 3, naive);
    assert_policy(naive, (const int[]){0, 2, 3}, 3);
    assert_float_equal(hdlm_ardm_policy_cost(L, 5, naive, 3), 18.7, 1e-12);
    // L = (5, 4, 3): budget 2 ties [0,1] and [0,2] at 13; the smallest back-pointer wins.
    const double L3[3] = {5, 4, 3};
    assert_float_equal(hdlm_ardm_policy_dp(L3, 3, 2, false, policy), 13, 1e-12);
    assert_policy(policy, (const int[]){0, 1}, 2);
    // Constant L: the reference returns repeated zeros, strict mode distinct steps, same cost 4.
    const double ones[4] = {1, 1, 1, 1};
    for (int K = 2; K <= 4; K++) {
        int ref_want[4] = {0}, strict_want[4] = {0, 1, 2, 3};
        assert_float_equal(hdlm_ardm_policy_dp(ones, 4, K, false, policy), 4, 1e-12);
        assert_policy(policy, ref_want, K);
        assert_float_equal(hdlm_ardm_policy_dp(ones, 4, K, true, policy), 4, 1e-12);
        assert_policy(policy, strict_want, K);
    }
    // L = (3, 2, 2, 2, 1): budget 4 → reference [0,0,1,4], strict [0,1,2,4]; budget 5 → [0,0,0,1,4] / [0,1,2,3,4].
    const double L5[5] = {3, 2, 2, 2, 1};
    assert_float_equal(hdlm_ardm_policy_dp(L5, 5, 3, false, policy), 10, 1e-12);
    assert_policy(policy, (const int[]){0, 1, 4}, 3);
    assert_float_equal(hdlm_ardm_policy_dp(L5, 5, 4, false, policy), 10, 1e-12);
    assert_policy(policy, (const int[]){0, 0, 1, 4}, 4);
    assert_float_equal(hdlm_ardm_policy_dp(L5, 5, 4, true, policy), 10, 1e-12);
    assert_policy(policy, (const int[]){0, 1, 2, 4}, 4);
    assert_float_equal(hdlm_ardm_policy_dp(L5, 5, 5, false, policy), 10, 1e-12);
    assert_policy(policy, (const int[]){0, 0, 0, 1, 4}, 5);
    assert_float_equal(hdlm_ardm_policy_dp(L5, 5, 5, true, policy), 10, 1e-12);
    assert_policy(policy, (const int[]){0, 1, 2, 3, 4}, 5);
}

// Naive policy D = 250, K = 20 (A.13): half-to-even at 12.5, 37.5, ...
static void test_naive_policy(void **state) {
    (void)state;
    const int want[20] = {0,   12,  25,  38,  50,  62,  75,  88,  100, 112,
                          125, 138, 150, 162, 175, 188, 200, 212, 225, 238};
    int policy[20];
    hdlm_ardm_policy_naive(250, 20, policy);
    assert_policy(policy, want, 20);
}

// Brute force: the cheapest of all strictly increasing policies 0 = p_0 < ... < p_{K-1} < D, by enumeration of subsets.
static double brute_force(const double *L, int D, int K) {
    double best = INFINITY;
    for (unsigned set = 0; set < (1u << (D - 1)); set++) {   // bit i: step i+1 is in the policy
        if (__builtin_popcount(set) != K - 1) continue;
        int policy[16] = {0}, n = 1;
        for (int i = 0; i < D - 1; i++)
            if (set >> i & 1) policy[n++] = i + 1;
        double c = hdlm_ardm_policy_cost(L, D, policy, K);
        if (c < best) best = c;
    }
    return best;
}

static int compare_desc(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x < y) - (x > y);
}

// Random descending loss vectors (the reference sorts first), D ≤ 10: the DP cost equals the brute-force optimum in
// both modes, the returned policy has that cost, strict policies are strictly increasing.
static void test_dp_matches_brute_force(void **state) {
    (void)state;
    hdlm_rng rng;
    hdlm_rng_init(&rng, 12);
    for (int trial = 0; trial < 60; trial++) {
        int D = 2 + (int)hdlm_rng_below(&rng, 9);
        double L[10];
        for (int i = 0; i < D; i++) L[i] = 5 * hdlm_rng_uniform_double(&rng);
        qsort(L, (size_t)D, sizeof L[0], compare_desc);
        for (int K = 1; K <= D; K++) {
            double best = brute_force(L, D, K);
            int policy[10];
            for (int strict = 0; strict < 2; strict++) {
                double c = hdlm_ardm_policy_dp(L, D, K, strict, policy);
                assert_float_equal(c, best, 1e-9);
                assert_float_equal(hdlm_ardm_policy_cost(L, D, policy, K), best, 1e-9);
                assert_int_equal(policy[0], 0);
                for (int j = 1; j < K; j++) assert_true(strict ? policy[j] > policy[j - 1] : policy[j] >= policy[j - 1]);
            }
        }
    }
}

// Sampling with a policy: a denoiser that puts all mass on token j at call j shows how many positions each call
// revealed — exactly p_{j+1} - p_j per sequence, and prompt positions are never redrawn.
typedef struct {
    int calls;
    float *buf;
} counter;

static int counter_forward(hdlm_denoiser *d, const uint32_t *tokens, const float *sigma, const hdlm_attn_mask *mask,
                           int batch, int length, const float **out) {
    (void)tokens, (void)sigma, (void)mask;
    counter *c = d->ctx;
    c->buf = hdlm_realloc(c->buf, (size_t)batch * length * d->vocab * sizeof *c->buf);
    for (int r = 0; r < batch * length; r++)
        for (int y = 0; y < d->vocab; y++) c->buf[(size_t)r * d->vocab + y] = y == c->calls ? 40.0f : -40.0f;
    c->calls++;
    *out = c->buf;
    return 0;
}

static void test_sampling_with_a_policy(void **state) {
    (void)state;
    const int L = 10, K = 4, B = 5, V = 8;
    const int policy[4] = {0, 2, 3, 7};
    counter c = {0, NULL};
    hdlm_denoiser d = {V, counter_forward, &c, NULL, NULL, NULL};
    hdlm_sampler_config cfg = {.temperature = 1, .seed = 3};
    uint32_t x[50];
    assert_int_equal(hdlm_ardm_sample(&cfg, policy, K, &d, B, L, 0, x), 0);
    assert_int_equal(c.calls, K);
    for (int b = 0; b < B; b++) {
        int per_call[8] = {0};
        for (int i = 0; i < L; i++) per_call[x[b * L + i]]++;
        assert_int_equal(per_call[0], 2);
        assert_int_equal(per_call[1], 1);
        assert_int_equal(per_call[2], 4);
        assert_int_equal(per_call[3], 3);
    }
    // A prompt of 3 positions fills steps 0..2: call 0 ([0, 2)) is skipped, call 1 reveals nothing new either
    // ([2, 3) is prompt), so the calls left are 2 and 3 (tokens 0 and 1 of this run).
    uint32_t prompt[10] = {6, 6, 0, 0, 0, 0, 0, 0, 0, 6};
    uint8_t pmask[10] = {1, 1, 0, 0, 0, 0, 0, 0, 0, 1};
    cfg.prompt = prompt, cfg.prompt_mask = pmask;
    c.calls = 0;
    assert_int_equal(hdlm_ardm_sample(&cfg, policy, K, &d, B, L, 0, x), 0);
    assert_int_equal(c.calls, 2);
    for (int b = 0; b < B; b++) {
        int per_call[8] = {0};
        for (int i = 0; i < L; i++) per_call[x[b * L + i]]++;
        assert_int_equal(per_call[6], 3);
        assert_int_equal(per_call[0], 4);
        assert_int_equal(per_call[1], 3);
    }
    const int bad[2] = {1, 3};
    assert_int_equal(hdlm_ardm_sample(&cfg, bad, 2, &d, B, L, 0, x), -1);
    assert_error_contains("starts at step 0");
    free(c.buf);
}

// Toy conditionals over 2 real tokens (ids 0, 1; MASK = 2) given the known tokens of a row. laplace: the A.13
// exchangeable model p(c | known) = (1 + #known equal to c)/(2 + #known). Otherwise a position-dependent one:
// p(1 | known) = sigmoid(0.7·i - 1.1 + 0.9·#known ones - 0.4·#known zeros), so orders matter.
static double toy_prob(bool laplace, int i, int c, int ones, int zeros) {
    if (laplace) return (1.0 + (c ? ones : zeros)) / (2.0 + ones + zeros);
    double p1 = 1.0 / (1.0 + exp(-(0.7 * i - 1.1 + 0.9 * ones - 0.4 * zeros)));
    return c ? p1 : 1 - p1;
}

typedef struct {
    bool laplace;
    float *buf;
} toy_model;

static int toy_forward(hdlm_denoiser *d, const uint32_t *tokens, const float *sigma, const hdlm_attn_mask *mask,
                       int batch, int length, const float **out) {
    (void)sigma, (void)mask;
    toy_model *t = d->ctx;
    t->buf = hdlm_realloc(t->buf, (size_t)batch * length * 3 * sizeof *t->buf);
    for (int b = 0; b < batch; b++) {
        int ones = 0, zeros = 0;
        for (int i = 0; i < length; i++) ones += tokens[b * length + i] == 1, zeros += tokens[b * length + i] == 0;
        for (int i = 0; i < length; i++)
            for (int c = 0; c < 3; c++)   // the MASK logit is outside the softmax (A.3.3): any value
                t->buf[((size_t)b * length + i) * 3 + c] =
                    c == 2 ? 5.0f : (float)log(toy_prob(t->laplace, i, c, ones, zeros));
    }
    *out = t->buf;
    return 0;
}

// Every permutation of 0..D-1 as ranks, one per copy (D! copies).
static int all_orders(int D, int *rank) {
    int perm[8], count = 0;
    for (int i = 0; i < D; i++) perm[i] = i;
    for (;;) {
        memcpy(rank + (size_t)count++ * D, perm, (size_t)D * sizeof *perm);
        int k = D - 2;   // next permutation in lexicographic order
        while (k >= 0 && perm[k] >= perm[k + 1]) k--;
        if (k < 0) return count;
        int l = D - 1;
        while (perm[l] <= perm[k]) l--;
        int tmp = perm[k];
        perm[k] = perm[l], perm[l] = tmp;
        for (int a = k + 1, b = D - 1; a < b; a++, b--) tmp = perm[a], perm[a] = perm[b], perm[b] = tmp;
    }
}

// A.13: x = (1, 0, 1) under the Laplace model. The full chain (K = D) gives -log p(x | order) = ln 12 for every order
// (exchangeable); policy [0, 2] averages (2·L_0 + L_2)/3 = 10/9 bits per token over the 6 orders, for both
// estimators. CE comes from fp32 logits: 1e-6.
static void test_policy_estimators_on_the_laplace_toy(void **state) {
    (void)state;
    const uint32_t x[3] = {1, 0, 1};
    int rank[6 * 3];
    assert_int_equal(all_orders(3, rank), 6);
    toy_model t = {true, NULL};
    hdlm_denoiser d = {3, toy_forward, &t, NULL, NULL, NULL};
    double pol[6], ord[6];
    const int chain[3] = {0, 1, 2}, two[2] = {0, 2};
    assert_int_equal(hdlm_ardm_policy_nll(&d, x, 3, 6, rank, chain, 3, pol, ord), 0);
    for (int b = 0; b < 6; b++) assert_float_equal(ord[b], log(12.0), 1e-6);
    assert_int_equal(hdlm_ardm_policy_nll(&d, x, 3, 6, rank, two, 2, pol, ord), 0);
    double mean_pol = 0, mean_ord = 0;
    for (int b = 0; b < 6; b++) mean_pol += pol[b] / 6, mean_ord += ord[b] / 6;
    assert_float_equal(mean_pol / (3 * M_LN2), 10.0 / 9.0, 1e-6);
    assert_float_equal(mean_ord / (3 * M_LN2), 10.0 / 9.0, 1e-6);
    free(t.buf);
}

// Brute force on the position-dependent toy, D = 5, all 120 orders, three policies (one with an empty segment, as
// reference-mode DP policies have): each copy's two values equal a direct computation from toy_prob in float64
// (fp32 logits: 1e-5), and their means over all orders agree (eq. 3 holds exactly under full enumeration: given the
// known set, the revealed segment is a uniform subset of the masked positions).
static void test_policy_estimators_match_brute_force(void **state) {
    (void)state;
    enum { D = 5, ORDERS = 120 };
    const uint32_t x[D] = {0, 1, 1, 0, 1};
    int *rank = hdlm_malloc((size_t)ORDERS * D * sizeof *rank);
    assert_int_equal(all_orders(D, rank), ORDERS);
    toy_model t = {false, NULL};
    hdlm_denoiser d = {3, toy_forward, &t, NULL, NULL, NULL};
    const int policies[3][4] = {{0, 1, 3, 4}, {0, 2, 0, 0}, {0, 0, 3, 0}}, budgets[3] = {4, 2, 3};
    double pol[ORDERS], ord[ORDERS];
    for (int q = 0; q < 3; q++) {
        const int *p = policies[q], K = budgets[q];
        assert_int_equal(hdlm_ardm_policy_nll(&d, x, D, ORDERS, rank, p, K, pol, ord), 0);
        double mean_pol = 0, mean_ord = 0;
        for (int b = 0; b < ORDERS; b++) {
            const int *r = rank + (size_t)b * D;
            double want_pol = 0, want_ord = 0;
            for (int j = 0; j < K; j++) {
                int lo = p[j], hi = j + 1 < K ? p[j + 1] : D, ones = 0, zeros = 0;
                if (hi <= lo) continue;
                for (int i = 0; i < D; i++)
                    if (r[i] < lo) ones += x[i] == 1, zeros += x[i] == 0;
                double masked = 0;
                for (int i = 0; i < D; i++) {
                    if (r[i] < lo) continue;
                    double ce = -log(toy_prob(false, i, (int)x[i], ones, zeros));
                    masked += ce;
                    if (r[i] < hi) want_ord += ce;
                }
                want_pol += (double)(hi - lo) / (D - lo) * masked;
            }
            assert_float_equal(pol[b], want_pol, 1e-5);
            assert_float_equal(ord[b], want_ord, 1e-5);
            mean_pol += pol[b] / ORDERS, mean_ord += ord[b] / ORDERS;
        }
        assert_float_equal(mean_pol, mean_ord, 1e-9);
    }
    free(rank);
    free(t.buf);
}

// Through hdlm_nelbo_chunk (random orders): each estimator lands within 5 Monte-Carlo standard errors of the exact
// mean over all orders; a missing or decreasing policy is refused.
static void test_policy_estimators_through_the_chunk_estimator(void **state) {
    (void)state;
    enum { D = 5, ORDERS = 120 };
    const uint32_t x[D] = {0, 1, 1, 0, 1};
    int *rank = hdlm_malloc((size_t)ORDERS * D * sizeof *rank);
    all_orders(D, rank);
    toy_model t = {false, NULL};
    hdlm_denoiser d = {3, toy_forward, &t, NULL, NULL, NULL};
    const int policy[3] = {0, 1, 3};
    double pol[ORDERS], ord[ORDERS], exact = 0;
    assert_int_equal(hdlm_ardm_policy_nll(&d, x, D, ORDERS, rank, policy, 3, pol, ord), 0);
    for (int b = 0; b < ORDERS; b++) exact += pol[b] / ORDERS;
    hdlm_nelbo_config cfg = hdlm_nelbo_config_default(false);
    cfg.copies = 8, cfg.rounds = 40, cfg.policy = policy, cfg.budget = 3;
    for (int kind = HDLM_NELBO_ARDM_POLICY; kind <= HDLM_NELBO_ARDM_ORDER; kind++) {
        cfg.kind = (hdlm_nelbo_kind)kind;
        double nll, var;
        int counted;
        assert_int_equal(hdlm_nelbo_chunk(&d, &cfg, x, D, 7, &nll, &var, &counted), 0);
        assert_int_equal(counted, 40);
        assert_true(var > 0);
        if (fabs(nll - exact) > 5 * sqrt(var))
            fail_msg("%s: %g, exact %g, standard error %g", hdlm_nelbo_kind_name(cfg.kind), nll, exact, sqrt(var));
    }
    cfg.policy = NULL;
    assert_int_equal(hdlm_nelbo_config_check(&cfg), -1);
    assert_error_contains("needs a policy");
    const int bad[3] = {0, 3, 1};
    cfg.policy = bad;
    assert_int_equal(hdlm_nelbo_config_check(&cfg), -1);
    assert_error_contains("policy entry 2 (1) is below entry 1 (3)");
    free(rank);
    free(t.buf);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_vectors),
        cmocka_unit_test(test_naive_policy),
        cmocka_unit_test(test_dp_matches_brute_force),
        cmocka_unit_test(test_sampling_with_a_policy),
        cmocka_unit_test(test_policy_estimators_on_the_laplace_toy),
        cmocka_unit_test(test_policy_estimators_match_brute_force),
        cmocka_unit_test(test_policy_estimators_through_the_chunk_estimator),
    };
    return cmocka_run_group_tests_name("ardm_policy", tests, NULL, NULL);
}

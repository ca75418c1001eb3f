// ARDM budgeted generation (spec A.5): the policy DP against the A.13 vectors and a brute-force search over all
// policies, the naive policy, policy costs and sampling with a policy.
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
    hdlm_denoiser d = {V, counter_forward, &c, NULL};
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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_vectors),
        cmocka_unit_test(test_naive_policy),
        cmocka_unit_test(test_dp_matches_brute_force),
        cmocka_unit_test(test_sampling_with_a_policy),
    };
    return cmocka_run_group_tests_name("ardm_policy", tests, NULL, NULL);
}

// Likelihood estimators (method §9.1, A.6) and the unigram entropy (method §9.3): one masking round against an
// independent numpy computation on the same masks, unbiasedness of the chunk estimator on a model with known CE, the
// ARDM bound at zero logits, determinism, and refusal of bad inputs.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hdlm/common.h"
#include "hdlm/diffusion.h"
#include "hdlm/likelihood.h"
#include "hdlm/model.h"
#include "hdlm/rng.h"

// z[b, i, y] = W[input (b, i), y] + P[i, y] (W = NULL: all zero).
typedef struct {
    const float *W, *P;
    int length;
    float *buf;
} table_model;

static int table_forward(hdlm_denoiser *d, const uint32_t *tokens, const float *sigma, const hdlm_attn_mask *mask,
                         int batch, int length, const float **out) {
    (void)sigma, (void)mask;
    table_model *t = d->ctx;
    int V = d->vocab;
    t->buf = hdlm_realloc(t->buf, (size_t)batch * length * V * sizeof *t->buf);
    for (int r = 0; r < batch * length; r++)
        for (int y = 0; y < V; y++)
            t->buf[(size_t)r * V + y] = t->W ? t->W[tokens[r] * V + y] + t->P[(r % length) * V + y] : 0.0f;
    *out = t->buf;
    return 0;
}

static void print_array_f(FILE *f, const char *name, const float *a, int n) {
    fprintf(f, "\"%s\": [", name);
    for (int i = 0; i < n; i++) fprintf(f, "%s%.9g", i ? ", " : "", a[i]);
    fprintf(f, "], ");
}

// One round on random masks and probabilities against tests/reference/nelbo.py.
static void test_masking_round_matches_numpy(void **state) {
    (void)state;
    enum { V = 7, L = 9, C = 4 };
    hdlm_rng rng;
    hdlm_rng_init(&rng, 31);
    float W[V * V], P[L * V];
    for (int i = 0; i < V * V; i++) W[i] = (float)hdlm_rng_normal(&rng);
    for (int i = 0; i < L * V; i++) P[i] = (float)hdlm_rng_normal(&rng);
    uint32_t x[L];
    for (int i = 0; i < L; i++) x[i] = (uint32_t)hdlm_rng_below(&rng, V - 1);
    uint8_t masked[C * L];
    double p[C];
    for (int b = 0; b < C; b++) {
        p[b] = 0.1 + 0.2 * b;
        for (int i = 0; i < L; i++) masked[b * L + i] = hdlm_rng_uniform_double(&rng) < p[b];
    }
    table_model t = {W, P, L, NULL};
    hdlm_denoiser d = {V, table_forward, &t, NULL, NULL, NULL};
    hdlm_nelbo_config cfg = hdlm_nelbo_config_default(false);
    cfg.copies = C;
    double value;
    assert_int_equal(hdlm_nelbo_masking_round(&d, &cfg, x, L, masked, p, &value), 0);

    const char *dir = test_tmp_dir("likelihood_numpy");
    char in[4096], out[4096];
    snprintf(in, sizeof in, "%s/round.json", dir);
    snprintf(out, sizeof out, "%s/value.txt", dir);
    FILE *f = fopen(in, "w");
    assert_non_null(f);
    fprintf(f, "{\"V\": %d, \"L\": %d, \"C\": %d, \"x\": [", V, L, C);
    for (int i = 0; i < L; i++) fprintf(f, "%s%u", i ? ", " : "", x[i]);
    fprintf(f, "], \"masked\": [");
    for (int i = 0; i < C * L; i++) fprintf(f, "%s%d", i ? ", " : "", masked[i]);
    fprintf(f, "], \"p\": [");
    for (int b = 0; b < C; b++) fprintf(f, "%s%.17g", b ? ", " : "", p[b]);
    fprintf(f, "], ");
    print_array_f(f, "W", W, V * V);
    print_array_f(f, "P", P, L * V);
    fprintf(f, "\"end\": 0}\n");
    fclose(f);
    assert_int_equal(test_run("/usr/bin/python3 %s/tests/reference/nelbo.py %s %s", HDLM_SOURCE_DIR, in, out), 0);
    f = fopen(out, "r");
    assert_non_null(f);
    double expect;
    assert_int_equal(fscanf(f, "%lf", &expect), 1);
    fclose(f);
    assert_true(value > 1.0);
    if (fabs(value - expect) > 1e-9 * fabs(expect)) fail_msg("C %.12g, numpy %.12g", value, expect);
    free(t.buf);
}

// Zero logits: every masked CE is ln V, so a round is (1/C)·Σ_b m_b·ln V/p_b whose expectation is L·ln V (the
// estimator is unbiased). Over 400 chunks the mean must be within 4 standard errors of L·ln V, and the standard
// error the estimator reports must agree with the spread across chunks.
static void test_chunk_estimator_is_unbiased(void **state) {
    (void)state;
    const int V = 11, L = 8, n = 400;
    table_model t = {NULL, NULL, L, NULL};
    hdlm_denoiser d = {V, table_forward, &t, NULL, NULL, NULL};
    hdlm_nelbo_config cfg = hdlm_nelbo_config_default(false);
    cfg.copies = 4, cfg.rounds = 3, cfg.seed = 5;
    uint32_t x[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    double sum = 0, sum_sq = 0, var_sum = 0;
    for (int c = 0; c < n; c++) {
        double nll, var;
        int counted;
        assert_int_equal(hdlm_nelbo_chunk(&d, &cfg, x, L, (uint64_t)c, &nll, &var, &counted), 0);
        assert_true(counted >= 1 && counted <= 3);
        sum += nll, sum_sq += nll * nll, var_sum += var;
    }
    double mean = sum / n, sd = sqrt((sum_sq - sum * sum / n) / (n - 1));
    double expect = L * log((double)V);
    if (fabs(mean - expect) > 4 * sd / sqrt(n)) fail_msg("mean %.4f, expected %.4f ± %.4f", mean, expect, sd / sqrt(n));
    // The mean reported variance of a chunk's estimate estimates sd² (same chunk distribution).
    double ratio = var_sum / n / (sd * sd);
    if (ratio < 0.6 || ratio > 1.6) fail_msg("reported variance / observed variance = %.3f", ratio);
    // Same (seed, chunk) → same estimate; another seed → another one.
    double a, b, v;
    int k;
    assert_int_equal(hdlm_nelbo_chunk(&d, &cfg, x, L, 7, &a, &v, &k), 0);
    assert_int_equal(hdlm_nelbo_chunk(&d, &cfg, x, L, 7, &b, &v, &k), 0);
    assert_true(a == b);
    cfg.seed = 6;
    assert_int_equal(hdlm_nelbo_chunk(&d, &cfg, x, L, 7, &b, &v, &k), 0);
    assert_true(a != b);
    free(t.buf);
}

// ARDM bound at zero logits: every masked CE over the N real tokens is ln N and (L/m)·m·ln N = L ln N exactly, for
// every order and step.
static void test_ardm_bound_at_zero_logits(void **state) {
    (void)state;
    const int V = 11, L = 8;
    table_model t = {NULL, NULL, L, NULL};
    hdlm_denoiser d = {V, table_forward, &t, NULL, NULL, NULL};
    hdlm_nelbo_config cfg = hdlm_nelbo_config_default(false);
    cfg.kind = HDLM_NELBO_ARDM, cfg.copies = 5, cfg.rounds = 2;
    uint32_t x[8] = {0, 9, 3, 4, 5, 6, 7, 8};
    double nll, var;
    int counted;
    assert_int_equal(hdlm_nelbo_chunk(&d, &cfg, x, L, 3, &nll, &var, &counted), 0);
    assert_float_equal(nll, L * log(10.0), 1e-9);
    assert_true(var < 1e-20);
    assert_int_equal(counted, 2);
    free(t.buf);
}

static void test_bad_inputs_are_refused(void **state) {
    (void)state;
    const int V = 11, L = 4;
    table_model t = {NULL, NULL, L, NULL};
    hdlm_denoiser d = {V, table_forward, &t, NULL, NULL, NULL};
    hdlm_nelbo_config cfg = hdlm_nelbo_config_default(false);
    uint32_t x[4] = {1, 2, 10, 3};   // 10 = MASK of this model
    double nll, var;
    int counted;
    assert_int_equal(hdlm_nelbo_chunk(&d, &cfg, x, L, 0, &nll, &var, &counted), -1);
    assert_error_contains("position 2 holds id 10");
    x[2] = 4;
    cfg.copies = 0;
    assert_int_equal(hdlm_nelbo_chunk(&d, &cfg, x, L, 0, &nll, &var, &counted), -1);
    assert_error_contains("--copies");
    cfg = hdlm_nelbo_config_default(false);
    cfg.floor = 1.5;
    assert_int_equal(hdlm_nelbo_chunk(&d, &cfg, x, L, 0, &nll, &var, &counted), -1);
    assert_error_contains("--floor");
    free(t.buf);
}

// Hand computation: ids (5, 5, 9, 2) → p = (1/2, 1/4, 1/4), H = -(1/2 ln(1/2 + 1e-8) + 2·1/4 ln(1/4 + 1e-8))
// = 1.0397207; one distinct id → ≈ 0; empty → 0.

// A small ε network with random weights (vocabulary 37, 24 positions).
static hdlm_model *small_model_of(hdlm_family family, uint64_t seed) {
    hdlm_model_config c = hdlm_model_config_ddit_small(family);
    c.width = 32, c.n_layers = 2, c.n_heads = 4, c.cond_dim = 16, c.vocab = 37, c.max_length = 24, c.dropout = 0;
    hdlm_model *m;
    assert_int_equal(hdlm_model_create(&m, &c), 0);
    test_model_randomize(m, seed);
    return m;
}

static hdlm_model *small_epsilon_model(uint64_t seed) { return small_model_of(HDLM_FAMILY_EPSILON, seed); }

// The AR estimator is the exact chain rule: with the prefixes run one at a time (a causal forward over
// [start, x_0 … x_{i-1}] only, its last output for x_i, softmax over the real tokens, in double), Σ_i −log p(x_i | x_<i)
// equals the estimator's one causal forward over the whole chunk — so nothing of the future leaks through the mask.
static void test_ar_nll_is_the_chain_rule(void **state) {
    (void)state;
    hdlm_model *m = small_epsilon_model(9);
    hdlm_model_config c = m->config;
    enum { L = 24 };
    uint32_t x[L], prefix[L];
    hdlm_rng rng;
    hdlm_rng_init(&rng, hdlm_rng_key(2, 0, 0, HDLM_RNG_DATA));
    for (int i = 0; i < L; i++) x[i] = (uint32_t)hdlm_rng_below(&rng, (uint64_t)c.vocab - 1);
    double chain = 0;
    prefix[0] = (uint32_t)c.vocab - 2;
    for (int i = 0; i < L; i++) {
        if (i > 0) prefix[i] = x[i - 1];
        hdlm_attn_mask causal = hdlm_mask_causal(i + 1);   // the prefix alone: no later token exists here
        hdlm_model_input in = {.tokens = prefix, .mask = &causal, .batch = 1, .length = i + 1};
        assert_int_equal(hdlm_model_forward(m, &in), 0);
        const float *z = m->out + (size_t)i * c.vocab;
        double mx = -INFINITY, sum = 0;
        for (int v = 0; v < c.vocab - 1; v++) mx = fmax(mx, z[v]);
        for (int v = 0; v < c.vocab - 1; v++) sum += exp((double)z[v] - mx);
        chain += mx + log(sum) - z[x[i]];
    }
    hdlm_denoiser d = hdlm_denoiser_model(m);
    hdlm_nelbo_config cfg = hdlm_nelbo_config_default(false);
    cfg.kind = HDLM_NLL_AR;
    double nll, var;
    int counted;
    assert_int_equal(hdlm_nelbo_chunk(&d, &cfg, x, L, 0, &nll, &var, &counted), 0);
    print_message("AR: chain rule %.9f, one causal forward %.9f\n", chain, nll);
    assert_true(fabs(nll - chain) <= 1e-5 * fabs(chain));
    assert_true(var == 0 && counted == 1);
    assert_string_equal(hdlm_nelbo_kind_name(HDLM_NLL_AR), "ar");
    hdlm_denoiser_free(&d);
    hdlm_model_free(m);
}


// The block estimator is the block-wise masking NELBO: with its own draws replayed (per block a stratification
// offset, then a uniform per copy and position), each block scored by a separate length-L forward whose settled
// prefix is the clean blocks before it and whose tail is worthless gives the same value as the estimator's one
// forward of the two-copy layout per round.
static void test_block_nelbo_is_blockwise(void **state) {
    (void)state;
    hdlm_model *m = small_epsilon_model(4);
    hdlm_model_config c = m->config;
    enum { L = 24, W = 6, NB = L / W, C = 3 };
    hdlm_schedule s;
    assert_int_equal(hdlm_schedule_init(&s, HDLM_SCHEDULE_BLOCK, L, W, 4, HDLM_SAMPLING_EPS, HDLM_CONTEXT_BLOCK_CAUSAL,
                                        HDLM_BLOCK_FULL), 0);
    uint32_t x[L];
    hdlm_rng rng;
    hdlm_rng_init(&rng, hdlm_rng_key(8, 0, 0, HDLM_RNG_DATA));
    for (int i = 0; i < L; i++) x[i] = (uint32_t)hdlm_rng_below(&rng, (uint64_t)c.vocab - 1);
    hdlm_nelbo_config cfg = hdlm_nelbo_config_default(false);
    cfg.kind = HDLM_NELBO_BLOCK, cfg.copies = C, cfg.rounds = 1, cfg.seed = 3, cfg.schedule = &s;
    hdlm_denoiser d = hdlm_denoiser_model(m);
    double nll, var;
    int counted;
    assert_int_equal(hdlm_nelbo_chunk(&d, &cfg, x, L, 7, &nll, &var, &counted), 0);
    // the replay
    hdlm_rng_init(&rng, hdlm_rng_key(cfg.seed, 7, 0, HDLM_RNG_EVAL));
    double p[C][NB];
    uint8_t masked[C][L];
    for (int k = 0; k < NB; k++) {
        double u0 = hdlm_rng_uniform_double(&rng);
        for (int b = 0; b < C; b++) p[b][k] = (1 - cfg.floor) * fmod(u0 + (double)b / C, 1.0) + cfg.floor;
    }
    for (int b = 0; b < C; b++)
        for (int i = 0; i < L; i++) masked[b][i] = hdlm_rng_uniform_double(&rng) < p[b][i / W];
    double total = 0;
    int n_masked = 0;
    for (int b = 0; b < C; b++)
        for (int k = 0; k < NB; k++) {
            uint32_t in[L];
            for (int i = 0; i < L; i++) in[i] = i >= k * W && i < (k + 1) * W && masked[b][i] ? (uint32_t)c.vocab - 1 : x[i];
            hdlm_attn_mask step = {L, k * W, (k + 1) * W - 1, HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL, W, 0};
            hdlm_model_input mi = {.tokens = in, .mask = &step, .batch = 1, .length = L};
            assert_int_equal(hdlm_model_forward(m, &mi), 0);
            for (int i = k * W; i < (k + 1) * W; i++)
                if (masked[b][i]) {
                    total += hdlm_ce_row(m->out + (size_t)i * c.vocab, c.vocab, c.vocab, x[i], 0, NULL) / p[b][k];
                    n_masked++;
                }
        }
    total /= C;
    print_message("block NELBO: two-copy %.9f, block by block %.9f (%d masked)\n", nll, total, n_masked);
    assert_true(n_masked > 0 && n_masked < C * L);
    assert_true(fabs(nll - total) <= 1e-5 * fabs(total));
    // refused without the block schedule
    cfg.schedule = NULL;
    assert_int_equal(hdlm_nelbo_chunk(&d, &cfg, x, L, 7, &nll, &var, &counted), -1);
    hdlm_schedule_free(&s);
    hdlm_denoiser_free(&d);
    hdlm_model_free(m);
}

// The model's forward without the rows-read hint: every row's output.
static int every_row_forward(hdlm_denoiser *d, const uint32_t *tokens, const float *sigma, const hdlm_attn_mask *mask,
                             int batch, int length, const float **out) {
    hdlm_model *m = d->ctx;
    hdlm_model_input in = {.tokens = tokens, .sigma = sigma, .mask = mask, .batch = batch, .length = length};
    HDLM_TRY(hdlm_model_forward(m, &in));
    *out = m->out;
    return 0;
}

// The estimators tell the denoiser which output rows they read (the masked ones): hdlm_denoiser_model then leaves the
// others alone, and every estimator gives the same value, bit for bit, as with every row computed.
static void test_estimators_read_only_scored_rows(void **state) {
    (void)state;
    hdlm_model *m = small_epsilon_model(12);
    int V = m->config.vocab;
    enum { L = 24, W = 6, C = 3 };
    hdlm_denoiser d = hdlm_denoiser_model(m), every = {V, every_row_forward, m, NULL, NULL, NULL};
    uint32_t x[L], xt[C * L];
    uint8_t read[C * L];
    hdlm_rng rng;
    hdlm_rng_init(&rng, 5);
    for (int i = 0; i < L; i++) x[i] = (uint32_t)hdlm_rng_below(&rng, (uint64_t)V - 1);
    for (int r = 0; r < C * L; r++) {
        read[r] = hdlm_rng_uniform(&rng) < 0.4f;
        xt[r] = read[r] ? (uint32_t)V - 1 : x[r % L];
    }
    // the hint: read rows get the full forward's bits, and the output layer skipped the others (the compacted
    // product fills the first rows of m->out, so unread rows past as many rows as were read still hold NaN)
    const float *z;
    assert_int_equal(every.forward(&every, xt, NULL, NULL, C, L, &z), 0);
    float *full = hdlm_malloc((size_t)C * L * V * sizeof *full);
    memcpy(full, z, (size_t)C * L * V * sizeof *full);
    for (size_t i = 0; i < (size_t)C * L * V; i++) m->out[i] = NAN;
    assert_int_equal(hdlm_denoiser_forward_rows(&d, read, xt, NULL, NULL, C, L, &z), 0);
    int n_read = 0, untouched = 0;
    for (int r = 0; r < C * L; r++) n_read += read[r];
    for (int r = 0; r < C * L; r++) {
        if (read[r]) assert_memory_equal(z + (size_t)r * V, full + (size_t)r * V, (size_t)V * sizeof *z);
        else if (r >= n_read) assert_true(isnan(z[(size_t)r * V]) && isnan(z[(size_t)r * V + V - 1])), untouched++;
    }
    assert_true(untouched > 5);
    // the estimators
    hdlm_schedule s;
    assert_int_equal(hdlm_schedule_init(&s, HDLM_SCHEDULE_BLOCK, L, W, 4, HDLM_SAMPLING_EPS, HDLM_CONTEXT_BLOCK_CAUSAL,
                                        HDLM_BLOCK_FULL), 0);
    static const int policy[] = {0, 5, 11, 18};
    hdlm_nelbo_kind kinds[] = {HDLM_NELBO_MASKING, HDLM_NELBO_BLOCK, HDLM_NELBO_ARDM, HDLM_NELBO_ARDM_POLICY,
                               HDLM_NELBO_ARDM_ORDER};
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        hdlm_nelbo_config cfg = hdlm_nelbo_config_default(false);
        cfg.kind = kinds[k], cfg.copies = C, cfg.rounds = 2, cfg.seed = 4, cfg.schedule = &s;
        cfg.policy = policy, cfg.budget = 4;
        double nll[2], var[2];
        int counted[2];
        assert_int_equal(hdlm_nelbo_chunk(&d, &cfg, x, L, 3, &nll[0], &var[0], &counted[0]), 0);
        assert_int_equal(hdlm_nelbo_chunk(&every, &cfg, x, L, 3, &nll[1], &var[1], &counted[1]), 0);
        print_message("%s: %.17g (rows read) %.17g (every row)\n", hdlm_nelbo_kind_name(kinds[k]), nll[0], nll[1]);
        assert_true(nll[0] == nll[1] && var[0] == var[1] && counted[0] == counted[1] && nll[0] > 0);
    }
    hdlm_schedule_free(&s);
    free(full);
    hdlm_denoiser_free(&d);
    hdlm_model_free(m);
    // the γ family (its outputs shifted by σ after the rows are in place), masking estimator with σ input
    m = small_model_of(HDLM_FAMILY_GAMMA, 13);
    d = hdlm_denoiser_model(m), every.ctx = m;
    hdlm_nelbo_config cfg = hdlm_nelbo_config_default(true);
    cfg.copies = C, cfg.rounds = 2, cfg.seed = 4;
    double nll[2], var[2];
    int counted[2];
    assert_int_equal(hdlm_nelbo_chunk(&d, &cfg, x, L, 3, &nll[0], &var[0], &counted[0]), 0);
    assert_int_equal(hdlm_nelbo_chunk(&every, &cfg, x, L, 3, &nll[1], &var[1], &counted[1]), 0);
    print_message("gamma masking: %.17g (rows read) %.17g (every row)\n", nll[0], nll[1]);
    assert_true(cfg.sigma_input && nll[0] == nll[1] && var[0] == var[1] && nll[0] > 0);
    hdlm_denoiser_free(&d);
    hdlm_model_free(m);
}

static void test_unigram_entropy(void **state) {
    (void)state;
    const uint32_t ids[4] = {5, 5, 9, 2};
    assert_float_equal(hdlm_unigram_entropy(ids, 4), 1.0397207, 1e-6);
    double expect = -(0.5 * log(0.5 + 1e-8) + 0.5 * log(0.25 + 1e-8));
    assert_float_equal(hdlm_unigram_entropy(ids, 4), expect, 1e-15);
    assert_float_equal(hdlm_unigram_entropy(ids, 2), -log(1 + 1e-8), 1e-15);
    assert_float_equal(hdlm_unigram_entropy(ids, 0), 0.0, 0.0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_masking_round_matches_numpy),
        cmocka_unit_test(test_chunk_estimator_is_unbiased),
        cmocka_unit_test(test_ardm_bound_at_zero_logits),
        cmocka_unit_test(test_bad_inputs_are_refused),
        cmocka_unit_test(test_ar_nll_is_the_chain_rule),
        cmocka_unit_test(test_block_nelbo_is_blockwise),
        cmocka_unit_test(test_estimators_read_only_scored_rows),
        cmocka_unit_test(test_unigram_entropy),
    };
    return cmocka_run_group_tests_name("likelihood", tests, NULL, NULL);
}

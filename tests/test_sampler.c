// Samplers on hand-set denoisers whose output distribution is known exactly (chi-square), the hyperschedule walker's
// masks, the γ analytic sampler with ideal scores, determinism and batch independence on a small model, prompts and
// bad configurations.
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
#include "hdlm/diffusion.h"
#include "hdlm/sampler.h"
#include "eval/sampler_internal.h"

// ---- hand-set denoisers ----
typedef struct {
    int mode;                  // 0: logits log q; 1: point mass at token (call mod N); 2: γ ideal scores for q;
                               // 3: γ ideal scores for a point mass at token (call mod N)
    const double *q;           // target distribution over the N real tokens
    int calls;
    const hdlm_schedule *schedule;   // mode 1 with a schedule: check every call's mask against the training mask
    bool mask_high;            // mode 0: MASK logit +3 instead of -1e4
    float *buf;
} toy;

static int toy_forward(hdlm_denoiser *d, const uint32_t *tokens, const float *sigma, const hdlm_attn_mask *mask,
                       int batch, int length, const float **out) {
    (void)tokens;
    toy *t = d->ctx;
    int V = d->vocab, N = V - 1;
    t->calls++;
    if (t->schedule) {   // the walker and γ samplers must pass step k's training mask on the window [0, a_end]
        hdlm_step st;
        hdlm_step_alloc(&st, t->schedule->length);
        assert_int_equal(hdlm_schedule_step(t->schedule, t->calls, &st), 0);
        assert_non_null(mask);
        assert_int_equal(mask->n_set, st.mask.n_set);
        assert_int_equal(mask->a_end, st.mask.a_end);
        assert_int_equal(mask->context, st.mask.context);
        assert_int_equal(mask->block_size, st.mask.block_size);
        assert_int_equal(length, mask->length);
        hdlm_step_free(&st);
    }
    t->buf = hdlm_realloc(t->buf, (size_t)batch * length * V * sizeof *t->buf);
    for (int r = 0; r < batch * length; r++) {
        float *z = t->buf + (size_t)r * V;
        for (int y = 0; y < V; y++) {
            if (t->mode == 0) z[y] = y < N ? (float)log(t->q[y]) : t->mask_high ? 3.0f : -1e4f;
            else if (t->mode == 1) z[y] = y == (t->calls - 1) % N ? 50.0f : -50.0f;
            else if (t->mode == 2) z[y] = y < N ? (float)(log(t->q[y]) - log(expm1(sigma[r]))) : 0.0f;
            else z[y] = y < N ? (float)((y == (t->calls - 1) % N ? 0.0 : -30.0) - log(expm1(sigma[r]))) : 0.0f;
        }
    }
    *out = t->buf;
    return 0;
}

static hdlm_denoiser toy_denoiser(toy *t, int vocab) {
    hdlm_denoiser d = {vocab, toy_forward, t, NULL, NULL, NULL};
    return d;
}

// Pearson chi-square of counts against probabilities; fails above the 0.999 quantile bound for `df` degrees of
// freedom (Wilson-Hilferty approximation).
static void assert_chi_square(const long *counts, const double *prob, int k, long total) {
    double chi = 0;
    int df = -1;
    for (int y = 0; y < k; y++) {
        if (prob[y] <= 0) {
            assert_int_equal(counts[y], 0);
            continue;
        }
        double e = prob[y] * (double)total;
        chi += (counts[y] - e) * (counts[y] - e) / e;
        df++;
    }
    double z = 3.09, a = 2.0 / (9.0 * df), bound = df * pow(1 - a + z * sqrt(a), 3);
    if (chi > bound) fail_msg("chi-square %.2f above the 0.999 bound %.2f (df %d)", chi, bound, df);
}

// Ancestral and ACS with input-independent logits log q (MASK excluded): every position ends as an independent draw
// from q, whatever η does (corrections redraw from the same q).
static void test_full_diff_draws_from_the_model(void **state) {
    (void)state;
    const int V = 6, N = 5, L = 32, B = 64;
    const double q[5] = {0.4, 0.25, 0.2, 0.1, 0.05};
    toy t = {0, q, 0, NULL, false, NULL};
    hdlm_denoiser d = toy_denoiser(&t, V);
    uint32_t *x = hdlm_malloc((size_t)B * L * sizeof *x);
    for (int kind = HDLM_SAMPLER_ANCESTRAL; kind <= HDLM_SAMPLER_ACS; kind++) {
        hdlm_sampler_config cfg = {.kind = kind, .steps = 7, .eta = 0.3, .temperature = 1, .exclude_mask = true,
                                   .seed = 5};
        long counts[6] = {0};
        for (int rep = 0; rep < 4; rep++) {
            assert_int_equal(hdlm_sample(&cfg, &d, B, L, (uint64_t)rep * B, x, NULL, NULL), 0);
            for (int r = 0; r < B * L; r++) counts[x[r]]++;
        }
        double prob[6] = {0.4, 0.25, 0.2, 0.1, 0.05, 0};
        assert_chi_square(counts, prob, V, 4L * B * L);
    }
    // Temperature 2 samples softmax(z/2) ∝ sqrt(q).
    hdlm_sampler_config cfg = {.kind = HDLM_SAMPLER_ANCESTRAL, .steps = 3, .temperature = 2, .exclude_mask = true,
                               .seed = 9};
    long counts[6] = {0};
    assert_int_equal(hdlm_sample(&cfg, &d, B, L, 0, x, NULL, NULL), 0);
    for (int r = 0; r < B * L; r++) counts[x[r]]++;
    double prob[6] = {0}, z = 0;
    for (int y = 0; y < N; y++) z += sqrt(q[y]);
    for (int y = 0; y < N; y++) prob[y] = sqrt(q[y]) / z;
    assert_chi_square(counts, prob, V, (long)B * L);
    free(t.buf);
    free(x);
}

// A point mass on token j at call j tags every position with the call that drew it last, so the distribution of the
// final token is the law of the last draw: for call j with unmasking probability p_j it is
// P(drawn at j) = P(masked before j)·p_j + P(revealed before j)·η(1-p_j), times Π_{j'>j} (1 - η(1-p_j')) for not
// being redrawn later. Checked for ancestral (η = 0, the MDLM unmasking schedule 1 - s/t) and ACS.
static void last_draw_law(const double *p, int n, double eta, double *law) {
    double masked = 1;
    for (int j = 0; j < n; j++) {
        law[j] = masked * p[j] + (1 - masked) * eta * (1 - p[j]);
        masked *= 1 - p[j];
        for (int i = 0; i < j; i++) law[i] *= 1 - eta * (1 - p[j]);
    }
}

static void test_full_diff_unmasking_schedule(void **state) {
    (void)state;
    const int n = 6, V = n + 1, L = 50, B = 80;
    toy t = {1, NULL, 0, NULL, false, NULL};
    hdlm_denoiser d = toy_denoiser(&t, V);
    uint32_t *x = hdlm_malloc((size_t)B * L * sizeof *x);
    double p[6];
    for (int j = 0; j < n; j++) {
        float tj = (float)(1.0 + (1e-5 - 1.0) * j / n), sj = j + 1 == n ? 1e-5f : (float)(1.0 + (1e-5 - 1.0) * (j + 1) / n);
        p[j] = j < n - 1 ? 1.0 - (double)sj / tj : 1.0;
    }
    const double etas[2] = {0.0, 0.5};
    for (int e = 0; e < 2; e++) {
        hdlm_sampler_config cfg = {.kind = e ? HDLM_SAMPLER_ACS : HDLM_SAMPLER_ANCESTRAL, .steps = n, .eta = etas[e],
                                   .temperature = 1, .seed = 3};
        t.calls = 0;
        assert_int_equal(hdlm_sample(&cfg, &d, B, L, 0, x, NULL, NULL), 0);
        assert_int_equal(t.calls, n);
        long counts[7] = {0};
        for (int r = 0; r < B * L; r++) counts[x[r]]++;
        double law[7] = {0};
        last_draw_law(p, n, etas[e], law);
        assert_chi_square(counts, law, V, (long)B * L);
    }
    free(t.buf);
    free(x);
}

// The walker on a block schedule (ω = L/2, τ = 4): every call gets the training mask of its step on the window
// [0, a_end] (checked inside the toy), and position i's final token follows the last-draw law of its own block's
// unmasking probabilities p = 1 - t_next/t (1 at level 0).
static void test_walker_uses_training_masks(void **state) {
    (void)state;
    const int L = 8, tau = 4, B = 400;
    hdlm_schedule s;
    assert_int_equal(hdlm_schedule_init(&s, HDLM_SCHEDULE_BLOCK, L, L / 2, tau, HDLM_SAMPLING_EPS,
                                        HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL), 0);
    int calls = s.k_max - 1, V = calls + 1;
    toy t = {1, NULL, 0, &s, false, NULL};
    hdlm_denoiser d = toy_denoiser(&t, V);
    uint32_t *x = hdlm_malloc((size_t)B * L * sizeof *x);
    hdlm_sampler_config cfg = {.kind = HDLM_SAMPLER_WALK, .eta = 0.2, .temperature = 1, .schedule = &s, .seed = 4};
    assert_int_equal(hdlm_sampler_calls(&cfg), 2 * tau);
    assert_int_equal(hdlm_sample(&cfg, &d, B, L, 0, x, NULL, NULL), 0);
    assert_int_equal(t.calls, calls);
    // Block b runs calls b·τ .. b·τ+τ-1 through levels τ-1..0: p = 1 - t(ℓ-1)/t(ℓ), then 1.
    double p[4], law[9] = {0};
    for (int j = 0; j < tau; j++) {
        int level = tau - 1 - j;
        p[j] = level == 0 ? 1.0 : 1.0 - (double)hdlm_schedule_level_time(&s, level - 1) / hdlm_schedule_level_time(&s, level);
    }
    for (int blk = 0; blk < 2; blk++) {
        double block_law[4];
        last_draw_law(p, tau, cfg.eta, block_law);
        memset(law, 0, sizeof law);
        for (int j = 0; j < tau; j++) law[blk * tau + j] = block_law[j];
        long counts[9] = {0};
        for (int b = 0; b < B; b++)
            for (int i = blk * L / 2; i < (blk + 1) * L / 2; i++) counts[x[b * L + i]]++;
        assert_chi_square(counts, law, V, (long)B * L / 2);
    }
    free(t.buf);
    free(x);
    hdlm_schedule_free(&s);
}

// γ = 0 (pure absorbing) with the ideal scores s_y = q_y/(e^σ - 1) and the sedd convention: the analytic sampler is
// exact, so every position ends as a draw from q (NAR and SAR, one block and two blocks).
static void test_gamma_ideal_scores_give_the_target(void **state) {
    (void)state;
    const int V = 5, L = 8, B = 300;
    const double q[4] = {0.5, 0.3, 0.15, 0.05};
    double prob[5] = {0.5, 0.3, 0.15, 0.05, 0};
    uint32_t *x = hdlm_malloc((size_t)B * L * sizeof *x);
    for (int width = L; width >= L / 2; width /= 2)
        for (int kind = HDLM_SAMPLER_GAMMA_NAR; kind <= HDLM_SAMPLER_GAMMA_SAR; kind++) {
            hdlm_schedule s;
            assert_int_equal(hdlm_schedule_init(&s, HDLM_SCHEDULE_BLOCK, L, width, 6, HDLM_SAMPLING_EPS,
                                                HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL), 0);
            toy t = {2, q, 0, kind == HDLM_SAMPLER_GAMMA_SAR ? &s : NULL, false, NULL};
            hdlm_denoiser d = toy_denoiser(&t, V);
            hdlm_sampler_config cfg = {.kind = kind, .temperature = 1, .gamma = 0.0, .schedule = &s, .seed = 8};
            assert_int_equal(hdlm_sample(&cfg, &d, B, L, 0, x, NULL, NULL), 0);
            long counts[5] = {0};
            for (int r = 0; r < B * L; r++) counts[x[r]]++;
            assert_chi_square(counts, prob, V, (long)B * L);
            // γ = 0.01: the level-0 step forbids MASK, so none survives.
            cfg.gamma = 0.01;
            t.calls = 0;
            assert_int_equal(hdlm_sample(&cfg, &d, B, L, 0, x, NULL, NULL), 0);
            for (int r = 0; r < B * L; r++) assert_true(x[r] < (uint32_t)(V - 1));
            free(t.buf);
            hdlm_schedule_free(&s);
        }
    // The timing: with a point mass on token j at call j the final token is the call that unmasked the position, whose
    // law follows the true absorbing posterior P(stay masked from t to t-Δ) = (1 - e^{-σ(t-Δ)})/(1 - e^{-σ(t)}).
    const int tau = 6, Vp = tau + 1;
    hdlm_schedule s;
    assert_int_equal(hdlm_schedule_init(&s, HDLM_SCHEDULE_BLOCK, L, L, tau, HDLM_SAMPLING_EPS,
                                        HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL), 0);
    toy t = {3, NULL, 0, NULL, false, NULL};
    hdlm_denoiser d = toy_denoiser(&t, Vp);
    hdlm_sampler_config cfg = {.kind = HDLM_SAMPLER_GAMMA_NAR, .temperature = 1, .gamma = 0.0, .schedule = &s, .seed = 2};
    assert_int_equal(hdlm_sample(&cfg, &d, B, L, 0, x, NULL, NULL), 0);
    double law[7] = {0}, masked = 1, delta = hdlm_schedule_delta(&s);
    for (int j = 0; j < tau; j++) {
        double tj = hdlm_schedule_level_time(&s, tau - 1 - j);
        double stay = j + 1 == tau ? 0.0 : -expm1(-hdlm_loglinear_sigma(tj - delta)) / -expm1(-hdlm_loglinear_sigma(tj));
        law[j] = masked * (1 - stay);
        masked *= stay;
    }
    long counts[7] = {0};
    for (int r = 0; r < B * L; r++) counts[x[r]]++;
    assert_chi_square(counts, law, Vp, (long)B * L);
    free(t.buf);
    hdlm_schedule_free(&s);
    free(x);
}

// A small random model: same seed → same tokens; sample b of a batch equals the same sample drawn alone; another seed
// changes them; prompts (prefix and infill) are kept.
static hdlm_model *small_model(hdlm_family family) {
    hdlm_model_config c = {family, 16, 1, 2, 2, 8, 13, 16, 0.0f, 0.01f, HDLM_ROTARY_EXACT};
    hdlm_model *m;
    assert_int_equal(hdlm_model_create(&m, &c), 0);
    hdlm_model_init(m, 1);
    hdlm_rng rng;
    hdlm_rng_init(&rng, 77);
    for (size_t i = 0; i < m->n_params; i++) m->params[i] += 0.3f * (float)hdlm_rng_normal(&rng);
    return m;
}

static void test_determinism_batches_and_prompts(void **state) {
    (void)state;
    const int L = 12, B = 3;
    for (int fam = 0; fam < 2; fam++) {
        hdlm_model *m = small_model(fam ? HDLM_FAMILY_GAMMA : HDLM_FAMILY_EPSILON);
        hdlm_denoiser d = hdlm_denoiser_model(m);
        hdlm_schedule s;
        assert_int_equal(hdlm_schedule_init(&s, HDLM_SCHEDULE_BLOCK, L, 4, 3, HDLM_SAMPLING_EPS,
                                            HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL), 0);
        uint32_t prompt[12] = {0};
        uint8_t pmask[12] = {0};
        prompt[0] = 3, prompt[1] = 7, prompt[9] = 11;   // a prefix and one infilled position
        pmask[0] = pmask[1] = pmask[9] = 1;
        int kinds[3] = {HDLM_SAMPLER_ACS, HDLM_SAMPLER_WALK, HDLM_SAMPLER_ANCESTRAL};
        if (fam) kinds[0] = HDLM_SAMPLER_GAMMA_NAR, kinds[1] = HDLM_SAMPLER_GAMMA_SAR, kinds[2] = HDLM_SAMPLER_GAMMA_NAR;
        for (int k = 0; k < 3; k++) {
            hdlm_sampler_config cfg = {.kind = kinds[k], .steps = 5, .eta = 0.1, .temperature = 1, .gamma = 0.01,
                                       .schedule = &s, .seed = 21, .exclude_mask = k == 2};
            uint32_t a[36], b[36], one[12];
            assert_int_equal(hdlm_sample(&cfg, &d, B, L, 10, a, NULL, NULL), 0);
            assert_int_equal(hdlm_sample(&cfg, &d, B, L, 10, b, NULL, NULL), 0);
            assert_memory_equal(a, b, sizeof a);
            assert_int_equal(hdlm_sample(&cfg, &d, 1, L, 11, one, NULL, NULL), 0);
            assert_memory_equal(a + L, one, sizeof one);
            for (int r = 0; r < B * L; r++) assert_true(a[r] < (uint32_t)(k == 2 ? 12 : 13));
            cfg.seed = 22;
            assert_int_equal(hdlm_sample(&cfg, &d, B, L, 10, b, NULL, NULL), 0);
            assert_memory_not_equal(a, b, sizeof a);
            cfg.prompt = prompt, cfg.prompt_mask = pmask;
            assert_int_equal(hdlm_sample(&cfg, &d, B, L, 10, b, NULL, NULL), 0);
            for (int r = 0; r < B; r++)
                for (int i = 0; i < L; i++)
                    if (pmask[i]) assert_int_equal(b[r * L + i], prompt[i]);
        }
        hdlm_schedule_free(&s);
        hdlm_denoiser_free(&d);
        hdlm_model_free(m);
    }
}

// The model's forward without the rows-read hint (every row's output).
static int every_row_forward(hdlm_denoiser *d, const uint32_t *tokens, const float *sigma, const hdlm_attn_mask *mask,
                             int batch, int length, const float **out) {
    hdlm_model_input in = {.tokens = tokens, .sigma = sigma, .mask = mask, .batch = batch, .length = length};
    HDLM_TRY(hdlm_model_forward(d->ctx, &in));
    *out = ((hdlm_model *)d->ctx)->out;
    return 0;
}

// The ancestral sampler tells the denoiser it reads the masked rows alone, the ARDM sampler the rows of the segment it
// reveals (the model's denoiser then skips the others' output layer): the same tokens as with every row computed,
// also with a prompt; ACS reads every row.
static void test_samplers_read_only_their_rows(void **state) {
    (void)state;
    const int L = 16, B = 3;
    hdlm_model *m = small_model(HDLM_FAMILY_EPSILON);
    hdlm_denoiser d = hdlm_denoiser_model(m), every = {m->config.vocab, every_row_forward, m, NULL, NULL, NULL};
    uint32_t prompt[16] = {0};
    uint8_t pmask[16] = {0};
    prompt[2] = 5, pmask[2] = 1;
    for (int k = 0; k < 3; k++) {
        hdlm_sampler_config cfg = {.kind = k == 2 ? HDLM_SAMPLER_ACS : HDLM_SAMPLER_ANCESTRAL, .steps = 6, .eta = 0.2,
                                   .temperature = 1, .seed = 4, .exclude_mask = true};
        if (k == 1) cfg.prompt = prompt, cfg.prompt_mask = pmask;
        uint32_t a[48], b[48];
        assert_int_equal(hdlm_sample(&cfg, &d, B, L, 0, a, NULL, NULL), 0);
        assert_int_equal(hdlm_sample(&cfg, &every, B, L, 0, b, NULL, NULL), 0);
        assert_memory_equal(a, b, sizeof a);
    }
    static const int policy[4] = {0, 3, 8, 12};
    hdlm_sampler_config cfg = {.temperature = 1, .seed = 6, .prompt = prompt, .prompt_mask = pmask};
    uint32_t a[48], b[48];
    assert_int_equal(hdlm_ardm_sample(&cfg, policy, 4, &d, B, L, 0, a), 0);
    assert_int_equal(hdlm_ardm_sample(&cfg, policy, 4, &every, B, L, 0, b), 0);
    assert_memory_equal(a, b, sizeof a);
    hdlm_denoiser_free(&d);
    hdlm_model_free(m);
}

// Without exclude_mask the ε samplers may draw MASK, as the reference does (§11 item 20): with a MASK logit far
// above the rest, MASK ids remain at the end; with the flag, none.
static void test_mask_draws_follow_the_flag(void **state) {
    (void)state;
    const int V = 4, L = 64;
    const double q[3] = {0.2, 0.3, 0.5};
    toy t = {0, q, 0, NULL, true, NULL};
    hdlm_denoiser d = toy_denoiser(&t, V);
    uint32_t x[64];
    hdlm_sampler_config cfg = {.kind = HDLM_SAMPLER_ANCESTRAL, .steps = 4, .temperature = 1, .seed = 1};
    assert_int_equal(hdlm_sample(&cfg, &d, 1, L, 0, x, NULL, NULL), 0);
    int masks = 0;
    for (int i = 0; i < L; i++) masks += x[i] == 3;
    assert_true(masks > L / 2);   // P(MASK) per draw = e^3/(e^3 + 1) ≈ 0.95
    cfg.exclude_mask = true;
    assert_int_equal(hdlm_sample(&cfg, &d, 1, L, 0, x, NULL, NULL), 0);
    for (int i = 0; i < L; i++) assert_true(x[i] < 3);
    free(t.buf);
}

static void test_bad_configurations_are_refused(void **state) {
    (void)state;
    toy t = {0, NULL, 0, NULL, false, NULL};
    hdlm_denoiser d = toy_denoiser(&t, 6);
    uint32_t x[8];
    hdlm_sampler_config cfg = {.kind = HDLM_SAMPLER_ANCESTRAL, .steps = 0, .temperature = 1};
    assert_int_equal(hdlm_sample(&cfg, &d, 1, 8, 0, x, NULL, NULL), -1);
    assert_error_contains("--steps");
    cfg.steps = 4, cfg.eta = 2;
    assert_int_equal(hdlm_sample(&cfg, &d, 1, 8, 0, x, NULL, NULL), -1);
    assert_error_contains("--eta");
    cfg.eta = 0.01, cfg.kind = HDLM_SAMPLER_WALK;
    assert_int_equal(hdlm_sample(&cfg, &d, 1, 8, 0, x, NULL, NULL), -1);
    assert_error_contains("needs a hyperschedule");
    uint32_t prompt[8] = {5};
    uint8_t pmask[8] = {1};
    cfg.kind = HDLM_SAMPLER_ACS, cfg.prompt = prompt, cfg.prompt_mask = pmask;
    assert_int_equal(hdlm_sample(&cfg, &d, 1, 8, 0, x, NULL, NULL), -1);
    assert_error_contains("prompt id 5 at position 0");
    cfg.prompt = NULL, cfg.prompt_mask = NULL, cfg.top_k = -1;
    assert_int_equal(hdlm_sample(&cfg, &d, 1, 8, 0, x, NULL, NULL), -1);
    assert_error_contains("--top-k");
    cfg.top_k = 0, cfg.top_p = 1.5;
    assert_int_equal(hdlm_sample(&cfg, &d, 1, 8, 0, x, NULL, NULL), -1);
    assert_error_contains("--top-p");
    cfg.top_p = 0.9, cfg.kind = HDLM_SAMPLER_GAMMA_NAR, cfg.steps = 4;
    hdlm_schedule s;
    assert_int_equal(hdlm_schedule_init(&s, HDLM_SCHEDULE_BLOCK, 8, 2, 4, HDLM_SAMPLING_EPS,
                                        HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL), 0);
    cfg.schedule = &s;
    assert_int_equal(hdlm_sample(&cfg, &d, 1, 8, 0, x, NULL, NULL), -1);
    assert_error_contains("do not apply to gamma-nar");
    hdlm_schedule_free(&s);
    cfg.kind = HDLM_SAMPLER_ANCESTRAL, cfg.top_p = 0, cfg.stop = true, cfg.stop_token = 5;
    assert_int_equal(hdlm_sample(&cfg, &d, 1, 8, 0, x, NULL, NULL), -1);
    assert_error_contains("stop token 5");
    hdlm_sampler_kind kind;
    assert_int_equal(hdlm_sampler_kind_parse("gamma-sar", "--sampler", &kind), 0);
    assert_int_equal(kind, HDLM_SAMPLER_GAMMA_SAR);
    assert_int_equal(hdlm_sampler_kind_parse("euler", "--sampler", &kind), -1);
    assert_error_contains("--sampler: unknown sampler 'euler'");
}

// ---- top-k / nucleus and end of text ----

static int by_value_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

// The truncation by sorting (the definition): the k-th largest value, then the first sorted entry at which the
// running sum reaches top_p of the total; entries below a cut value are dropped. Dyadic weights: sums are exact.
static void truncate_by_sorting(float *w, int n, int top_k, double top_p) {
    float *s = hdlm_malloc((size_t)n * sizeof *s);
    memcpy(s, w, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, by_value_desc);
    if (top_k > 0 && top_k < n)
        for (int y = 0; y < n; y++)
            if (w[y] < s[top_k - 1]) w[y] = 0;
    if (top_p > 0 && top_p < 1) {
        memcpy(s, w, (size_t)n * sizeof *s);
        qsort(s, (size_t)n, sizeof *s, by_value_desc);
        double total = 0, run = 0;
        for (int y = 0; y < n; y++) total += s[y] > 0 ? s[y] : 0;
        float cut = 0;
        for (int y = 0; y < n && s[y] > 0; y++) {
            run += s[y];
            cut = s[y];
            if (run >= top_p * total) break;
        }
        for (int y = 0; y < n; y++)
            if (w[y] < cut) w[y] = 0;
    }
    free(s);
}

static void test_truncation_equals_sorting(void **state) {
    (void)state;
    hdlm_rng rng;
    hdlm_rng_init(&rng, 42);
    const double ps[] = {0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999, 1};
    float w[300], ref[300], work[300];
    for (int trial = 0; trial < 400; trial++) {
        int n = 1 + (int)(hdlm_rng_uniform_double(&rng) * 300), levels = 2 + trial % 40;
        for (int y = 0; y < n; y++)   // many ties, some zeros
            w[y] = (float)(int)(hdlm_rng_uniform_double(&rng) * levels) / 64.0f;
        int top_k = trial % 3 == 0 ? 0 : 1 + (int)(hdlm_rng_uniform_double(&rng) * (n + 2));
        double top_p = ps[trial % 8];
        memcpy(ref, w, (size_t)n * sizeof *w);
        truncate_by_sorting(ref, n, top_k, top_p);
        hdlm_truncate_weights(w, n, top_k, top_p, work);
        for (int y = 0; y < n; y++)
            if (w[y] != ref[y]) fail_msg("trial %d (n %d, k %d, p %g): entry %d is %g, sorting says %g", trial, n,
                                         top_k, top_p, y, w[y], ref[y]);
    }
}

// Top-k and top-p draws of the ancestral and ar samplers from input-independent logits log q follow q restricted to
// the kept tokens, renormalised (chi-square).
static void test_truncated_draws_follow_the_renormalised_law(void **state) {
    (void)state;
    const int V = 6, L = 16, B = 128;
    const double q[5] = {0.4, 0.25, 0.2, 0.1, 0.05};
    toy t = {0, q, 0, NULL, false, NULL};
    hdlm_denoiser d = toy_denoiser(&t, V);
    uint32_t *x = hdlm_malloc((size_t)B * L * sizeof *x);
    struct {
        int top_k;
        double top_p, law[6];
    } cases[] = {
        {2, 0, {0.4 / 0.65, 0.25 / 0.65, 0, 0, 0, 0}},
        {0, 0.7, {0.4 / 0.85, 0.25 / 0.85, 0.2 / 0.85, 0, 0, 0}},   // 0.65 < 0.7 <= 0.85
        {4, 0.6, {0.4 / 0.65, 0.25 / 0.65, 0, 0, 0, 0}},
        {1, 0, {1, 0, 0, 0, 0, 0}},
    };
    for (int c = 0; c < 4; c++)
        for (int kind = HDLM_SAMPLER_ANCESTRAL; kind <= HDLM_SAMPLER_AR; kind += HDLM_SAMPLER_AR) {
            hdlm_sampler_config cfg = {.kind = kind, .steps = kind == HDLM_SAMPLER_AR ? L : 5, .temperature = 1,
                                       .exclude_mask = true, .seed = 3, .top_k = cases[c].top_k,
                                       .top_p = cases[c].top_p};
            long counts[6] = {0};
            assert_int_equal(hdlm_sample(&cfg, &d, B, L, 0, x, NULL, NULL), 0);
            for (int r = 0; r < B * L; r++) counts[x[r]]++;
            if (c == 3) assert_int_equal(counts[0], (long)B * L);
            else assert_chi_square(counts, cases[c].law, V, (long)B * L);
        }
    free(t.buf);
    free(x);
}

// End of text: the ar sampler with a point mass on token (call - 1) mod N writes 0, 1, 2, 3, ... and, with stop
// token 3, stops after the call that drew it (later positions padded); a 3 in the prompt does not count. Every
// sampler pads after its first stop token past the prompt and leaves the tokens before it as without the stop.
static void test_stop_token_ends_the_text(void **state) {
    (void)state;
    const int V = 6, L = 12, B = 3;
    toy t = {1, NULL, 0, NULL, false, NULL};
    hdlm_denoiser d = toy_denoiser(&t, V);
    uint32_t x[3 * 12], prompt[12] = {3};
    uint8_t pmask[12] = {1};
    hdlm_sampler_config cfg = {.kind = HDLM_SAMPLER_AR, .steps = L, .temperature = 1, .stop = true, .stop_token = 3,
                               .prompt = prompt, .prompt_mask = pmask};
    assert_int_equal(hdlm_sample(&cfg, &d, B, L, 0, x, NULL, NULL), 0);
    assert_int_equal(t.calls, 4);   // positions 0..3: the prompt's 3, then 1, 2, 3
    const uint32_t want[12] = {3, 1, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3};
    for (int b = 0; b < B; b++) {
        assert_memory_equal(x + b * L, want, sizeof want);
        assert_int_equal(hdlm_sampler_stop_length(&cfg, x + b * L, L), 4);
    }
    cfg.prompt = NULL, cfg.prompt_mask = NULL, cfg.stop = false;
    assert_int_equal(hdlm_sampler_stop_length(&cfg, want, L), L);   // off: the whole length
    // ancestral draws from q: with the stop, the same tokens up to the first 1 after the prompt, then 1s
    const double q[5] = {0.4, 0.25, 0.2, 0.1, 0.05};
    toy tq = {0, q, 0, NULL, false, NULL};
    d = toy_denoiser(&tq, V);
    enum { BQ = 32, LQ = 24 };
    uint32_t plain[BQ * LQ], stopped[BQ * LQ], pq[LQ] = {0, 1};
    uint8_t mq[LQ] = {1, 1};
    hdlm_sampler_config eps = {.kind = HDLM_SAMPLER_ANCESTRAL, .steps = 6, .temperature = 1, .exclude_mask = true,
                               .seed = 11, .prompt = pq, .prompt_mask = mq};
    assert_int_equal(hdlm_sample(&eps, &d, BQ, LQ, 0, plain, NULL, NULL), 0);
    eps.stop = true, eps.stop_token = 1;
    assert_int_equal(hdlm_sample(&eps, &d, BQ, LQ, 0, stopped, NULL, NULL), 0);
    int shorter = 0;
    for (int b = 0; b < BQ; b++) {
        int n = hdlm_sampler_stop_length(&eps, stopped + b * LQ, LQ), first = LQ;
        for (int i = 2; i < LQ && first == LQ; i++)
            if (plain[b * LQ + i] == 1) first = i + 1;
        assert_int_equal(n, first);
        assert_memory_equal(stopped + b * LQ, plain + b * LQ, (size_t)n * sizeof *plain);
        for (int i = n; i < LQ; i++) assert_int_equal(stopped[b * LQ + i], 1);
        shorter += n < LQ;
    }
    assert_true(shorter > BQ / 2);   // P(no 1 in 22 draws) = 0.75^22: nearly every sequence stops
    free(t.buf);
    free(tq.buf);
}

// hdlm_draw_chunk_sum (vectorised per instruction set) against its definition: 16 float64 lanes, entry lo + i in lane
// i mod 16, NaN and negative entries as 0, the lanes added in order; the same bits at every offset and length.
static void test_chunk_sum_lane_order(void **state) {
    (void)state;
    hdlm_rng rng;
    hdlm_rng_init(&rng, 17);
    float w[1100];
    for (int y = 0; y < 1100; y++) {
        double u = hdlm_rng_uniform_double(&rng);
        w[y] = u < 0.05 ? NAN : u < 0.1 ? -0.0f : u < 0.3 ? -(float)u : (float)(u * exp(40 * u - 20));
    }
    const int ranges[][2] = {{0, 1024}, {3, 1100}, {17, 33}, {5, 20}, {0, 15}, {1000, 1000}};
    for (int c = 0; c < 6; c++) {
        int lo = ranges[c][0], hi = ranges[c][1];
        double lane[16] = {0}, want = 0;
        for (int y = lo; y < hi; y++) lane[(y - lo) % 16] += w[y] > 0 ? (double)w[y] : 0.0;
        for (int i = 0; i < 16; i++) want += lane[i];
        double got = hdlm_draw_chunk_sum(w, lo, hi);
        assert_memory_equal(&got, &want, sizeof got);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_diff_draws_from_the_model),
        cmocka_unit_test(test_full_diff_unmasking_schedule),
        cmocka_unit_test(test_walker_uses_training_masks),
        cmocka_unit_test(test_gamma_ideal_scores_give_the_target),
        cmocka_unit_test(test_determinism_batches_and_prompts),
        cmocka_unit_test(test_samplers_read_only_their_rows),
        cmocka_unit_test(test_mask_draws_follow_the_flag),
        cmocka_unit_test(test_bad_configurations_are_refused),
        cmocka_unit_test(test_truncation_equals_sorting),
        cmocka_unit_test(test_truncated_draws_follow_the_renormalised_law),
        cmocka_unit_test(test_stop_token_ends_the_text),
        cmocka_unit_test(test_chunk_sum_lane_order),
    };
    return cmocka_run_group_tests_name("sampler", tests, NULL, NULL);
}

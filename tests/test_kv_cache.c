// KV cache of settled blocks (method §3.5): the cached forward reproduces the uncached forward's active outputs bit
// for bit, at the head widths of the presets (DDiT-small: 768 wide, 12 heads), and the walker / γ samplers give the
// same tokens with and without the cache for the same seed.
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
#include "hdlm/blas.h"
#include "hdlm/common.h"
#include "hdlm/diffusion.h"
#include "model/kv_cache.h"
#include "hdlm/sampler.h"

enum { L = 16, W = 4, V = 13 };

// Widths and heads of the models below: a tiny one, then DDiT-small's and a 384/6 shape (head_dim 64, where an
// earlier cached attention differed from the forward's in the last bits).
static const int shapes[][2] = {{16, 2}, {768, 12}, {384, 6}};
static int shape = 0;

static hdlm_model *small_model(hdlm_family family, hdlm_rotary_mode rotary) {
    hdlm_model_config c = {family, shapes[shape][0], 2, shapes[shape][1], 2, 8, V, L, 0.0f, 0.01f, rotary};
    hdlm_model *m;
    assert_int_equal(hdlm_model_create(&m, &c), 0);
    hdlm_model_init(m, 3);
    hdlm_rng rng;
    hdlm_rng_init(&rng, 11);
    for (size_t i = 0; i < m->n_params; i++) m->params[i] += 0.3f * (float)hdlm_rng_normal(&rng);
    return m;
}

// Step k of a block schedule (ω = 4, τ = 3) with two settled blocks: the uncached forward over [0, a_end] with the
// step's mask against cache(block 0) + cache(block 1) + active queries, both families, both block rules.
static void test_cached_forward_matches_uncached(void **state) {
    (void)state;
    for (shape = 0; shape < 3; shape++)
    for (int fam = 0; fam < 2; fam++)
        for (int rule = HDLM_BLOCK_FULL; rule <= HDLM_BLOCK_CAUSAL; rule++) {
            hdlm_model *m = small_model(fam ? HDLM_FAMILY_GAMMA : HDLM_FAMILY_EPSILON,
                                        rule ? HDLM_ROTARY_REFERENCE : HDLM_ROTARY_EXACT);
            hdlm_schedule s;
            assert_int_equal(hdlm_schedule_init(&s, HDLM_SCHEDULE_BLOCK, L, W, 3, HDLM_SAMPLING_EPS,
                                                HDLM_CONTEXT_BLOCK_CAUSAL, (hdlm_block_type)rule), 0);
            hdlm_step st;
            hdlm_step_alloc(&st, L);
            assert_int_equal(hdlm_schedule_step(&s, 2 * 3 + 2, &st), 0);   // block 2, second level
            assert_int_equal(st.n_set, 8);
            assert_int_equal(st.a_end, 11);
            const int B = 2, n = st.a_end + 1;
            uint32_t tokens[2 * L];
            float sigma_row[L], sigma[2 * L];
            hdlm_gamma_sigmas(&st, sigma_row);
            for (int b = 0; b < B; b++)
                for (int i = 0; i < n; i++) {
                    tokens[b * n + i] = (uint32_t)((b * 7 + i * 5) % V);
                    sigma[b * n + i] = sigma_row[i];
                }
            hdlm_attn_mask mask = st.mask;
            mask.length = n;
            hdlm_model_input in = {tokens, fam ? sigma : NULL, &mask, B, n, false, 0, 0, NULL, NULL};
            assert_int_equal(hdlm_model_forward(m, &in), 0);
            float *want = hdlm_malloc((size_t)B * n * V * sizeof *want);
            memcpy(want, m->out, (size_t)B * n * V * sizeof *want);

            hdlm_kv_cache cache;
            hdlm_kv_cache_init(&cache, m, B);
            uint32_t part[2 * W];
            float psig[2 * W];
            for (int lo = 0; lo <= 8; lo += W) {   // blocks 0 and 1 (append), then the active block 2 (query)
                for (int b = 0; b < B; b++)
                    for (int i = 0; i < W; i++) part[b * W + i] = tokens[b * n + lo + i], psig[b * W + i] = sigma[b * n + lo + i];
                bool active = lo == 8;
                assert_int_equal(hdlm_model_forward_cached(m, &cache, part, fam ? psig : NULL, B, active ? 0 : W,
                                                           active ? W : 0, (hdlm_block_type)rule), 0);
            }
            assert_int_equal(cache.length, 8);
            for (int b = 0; b < B; b++)   // the same bits
                if (memcmp(cache.out + (size_t)b * W * V, want + ((size_t)b * n + 8) * V, (size_t)W * V * sizeof *want))
                    fail_msg("width %d, family %d, rule %d: the cached outputs of sequence %d differ", shapes[shape][0],
                             fam, rule, b);
            // Block 1 settling in the same call as the active block 2 gives the same bits as the two calls.
            float *separate = hdlm_malloc((size_t)B * W * V * sizeof *separate);
            memcpy(separate, cache.out, (size_t)B * W * V * sizeof *separate);
            hdlm_kv_cache_free(&cache);
            hdlm_kv_cache_init(&cache, m, B);
            for (int b = 0; b < B; b++)
                for (int i = 0; i < W; i++) part[b * W + i] = tokens[b * n + i], psig[b * W + i] = sigma[b * n + i];
            assert_int_equal(hdlm_model_forward_cached(m, &cache, part, fam ? psig : NULL, B, W, 0, HDLM_BLOCK_FULL), 0);
            uint32_t both[2 * 2 * W];
            float both_sig[2 * 2 * W];
            for (int b = 0; b < B; b++)
                for (int i = 0; i < 2 * W; i++)
                    both[b * 2 * W + i] = tokens[b * n + W + i], both_sig[b * 2 * W + i] = sigma[b * n + W + i];
            assert_int_equal(hdlm_model_forward_cached(m, &cache, both, fam ? both_sig : NULL, B, W, W,
                                                       (hdlm_block_type)rule), 0);
            assert_int_equal(cache.length, 8);
            assert_memory_equal(cache.out, separate, (size_t)B * W * V * sizeof *separate);
            free(separate);
            hdlm_kv_cache_free(&cache);
            free(want);
            hdlm_step_free(&st);
            hdlm_schedule_free(&s);
            hdlm_model_free(m);
        }
    shape = 0;
}

// One row per call, as next-token generation runs (the previous row settling, the new one as the query): every row's
// outputs are the causal forward's bits, at each shape (single-row products take their own register tiles).
static void test_single_row_steps_match_uncached(void **state) {
    (void)state;
    enum { B = 2 };
    for (shape = 0; shape < 3; shape++) {
        hdlm_model *m = small_model(HDLM_FAMILY_EPSILON, HDLM_ROTARY_EXACT);
        uint32_t tokens[B * L];
        for (int i = 0; i < B * L; i++) tokens[i] = (uint32_t)((i * 5 + 3) % V);
        hdlm_attn_mask causal = hdlm_mask_causal(L);
        hdlm_model_input in = {.tokens = tokens, .mask = &causal, .batch = B, .length = L};
        assert_int_equal(hdlm_model_forward(m, &in), 0);
        hdlm_kv_cache cache;
        hdlm_kv_cache_init(&cache, m, B);
        for (int i = 0; i < L; i++) {
            int settle = i > 0, T = settle + 1;
            uint32_t step[2 * B];
            for (int b = 0; b < B; b++) {
                if (settle) step[b * T] = tokens[b * L + i - 1];
                step[b * T + settle] = tokens[b * L + i];
            }
            assert_int_equal(hdlm_model_forward_cached(m, &cache, step, NULL, B, settle, 1, HDLM_BLOCK_FULL), 0);
            for (int b = 0; b < B; b++)
                if (memcmp(cache.out + (size_t)b * V, m->out + ((size_t)b * L + i) * V, V * sizeof(float)))
                    fail_msg("width %d: row %d of sequence %d differs from the causal forward", shapes[shape][0], i, b);
        }
        hdlm_kv_cache_free(&cache);
        hdlm_model_free(m);
    }
    shape = 0;
}

// Same seed → the same tokens with and without the cache (walk, γ NAR, γ SAR; with a prompt).
static void test_cached_sampling_gives_the_same_tokens(void **state) {
    (void)state;
    const int B = 3;
    uint32_t prompt[L] = {4, 9};
    uint8_t pmask[L] = {1, 1};
    for (shape = 0; shape < 2; shape++)
    for (int fam = 0; fam < 2; fam++) {
        hdlm_model *m = small_model(fam ? HDLM_FAMILY_GAMMA : HDLM_FAMILY_EPSILON, HDLM_ROTARY_EXACT);
        hdlm_denoiser d = hdlm_denoiser_model(m);
        hdlm_schedule s;
        assert_int_equal(hdlm_schedule_init(&s, HDLM_SCHEDULE_BLOCK, L, W, 3, HDLM_SAMPLING_EPS,
                                            HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL), 0);
        int kinds[2] = {HDLM_SAMPLER_WALK, HDLM_SAMPLER_WALK};
        if (fam) kinds[0] = HDLM_SAMPLER_GAMMA_NAR, kinds[1] = HDLM_SAMPLER_GAMMA_SAR;
        for (int k = 0; k < 2; k++) {
            hdlm_sampler_config cfg = {.kind = kinds[k], .eta = 0.2, .temperature = 1, .gamma = 0.01, .schedule = &s,
                                       .seed = 40 + (uint64_t)k};
            if (k) cfg.prompt = prompt, cfg.prompt_mask = pmask;
            uint32_t plain[3 * L], cached[3 * L], alone[L];
            assert_int_equal(hdlm_sample(&cfg, &d, B, L, 0, plain, NULL, NULL), 0);
            cfg.kv_cache = true;
            // The denoiser's cache serves one sequence, then grows to B; the next sampler reuses it.
            assert_int_equal(hdlm_sample(&cfg, &d, 1, L, 0, alone, NULL, NULL), 0);
            assert_int_equal(hdlm_sample(&cfg, &d, B, L, 0, cached, NULL, NULL), 0);
            assert_memory_equal(plain, cached, sizeof plain);
            assert_memory_equal(alone, cached, sizeof alone);
            // Positions draw in parallel from their own streams: another thread count, the same tokens.
            int threads = omp_get_max_threads();
            omp_set_num_threads(threads > 1 ? 1 : 3);
            assert_int_equal(hdlm_sample(&cfg, &d, B, L, 0, cached, NULL, NULL), 0);
            omp_set_num_threads(threads);
            assert_memory_equal(plain, cached, sizeof plain);
        }
        hdlm_schedule_free(&s);
        hdlm_denoiser_free(&d);
        hdlm_model_free(m);
    }
    shape = 0;
}

// The AR sampler is the exact chain: every token is the draw of its own stream (seed, sample, position) from the
// softmax over the real tokens of the causal forward's row at that position, given the tokens drawn before it. One
// teacher-forced causal forward over the finished samples reproduces every draw; the KV-cached sampler gives the
// same tokens; a prompt prefix is kept and conditions what follows.
static void test_ar_sampler_is_the_exact_chain(void **state) {
    (void)state;
    hdlm_model *m = small_model(HDLM_FAMILY_EPSILON, HDLM_ROTARY_EXACT);
    hdlm_denoiser d = hdlm_denoiser_model(m);
    enum { B = 3 };
    uint32_t x[B * L], cached[B * L], prompt[L] = {4, 7, 1};
    uint8_t pmask[L] = {1, 1, 1};
    for (int with_prompt = 0; with_prompt < 2; with_prompt++) {
        hdlm_sampler_config cfg = {.kind = HDLM_SAMPLER_AR, .steps = L, .temperature = 0.8, .seed = 5};
        if (with_prompt) cfg.prompt = prompt, cfg.prompt_mask = pmask;
        assert_int_equal(hdlm_sample(&cfg, &d, B, L, 10, x, NULL, NULL), 0);
        cfg.kv_cache = true;
        assert_int_equal(hdlm_sample(&cfg, &d, B, L, 10, cached, NULL, NULL), 0);
        assert_memory_equal(x, cached, sizeof x);
        hdlm_corruption c;
        hdlm_corruption_alloc(&c, B, L);
        hdlm_ar_inputs(x, V - 2, &c);
        hdlm_attn_mask causal = hdlm_mask_causal(L);
        hdlm_model_input in = {.tokens = c.xt, .mask = &causal, .batch = B, .length = L};
        assert_int_equal(hdlm_model_forward(m, &in), 0);
        float scratch[V];
        int distinct = 0;
        for (int b = 0; b < B; b++)
            for (int i = 0; i < L; i++) {
                uint32_t got = x[b * L + i];
                assert_true(got < V - 1);   // never MASK
                if (with_prompt && i < 3) {
                    assert_int_equal(got, prompt[i]);
                    continue;
                }
                hdlm_rng rng;
                hdlm_rng_init(&rng, hdlm_rng_key(cfg.seed, 10 + (uint64_t)b, (uint64_t)i, HDLM_RNG_SAMPLE));
                uint32_t want = hdlm_sample_softmax(m->out + ((size_t)b * L + i) * V, V - 1, cfg.temperature, scratch,
                                                    &rng);
                if (got != want) fail_msg("sample %d position %d: %u, the chain draws %u", b, i, got, want);
                distinct += i > 0 && got != x[b * L + i - 1];
            }
        assert_true(distinct > L);   // not a constant sequence
        hdlm_corruption_free(&c);
    }
    // Only a next-token sampler runs one step per token.
    hdlm_sampler_config bad = {.kind = HDLM_SAMPLER_AR, .steps = 4, .temperature = 1.0};
    assert_int_equal(hdlm_sampler_check(&bad, V, L), -1);
    hdlm_denoiser_free(&d);
    hdlm_model_free(m);
}

// The packed-weight product reproduces hdlm_sgemm's bits (the cached path uses it, the uncached forward hdlm_sgemm):
// every row count from 1 to 70 (row tiles and their edges) and a large one, depths below, at and across the depth
// blocking (one block, two blocks, a remainder, many blocks), output counts that are not multiples of the panels; with
// a bias, and with a shift per row added after it (as the γ head's scale by σ).
static void test_packed_product_matches_sgemm_bits(void **state) {
    (void)state;
    const int ks[] = {16, 256, 400, 768, 900, 1500, 3072}, ns[] = {13, 77, 2304};
    hdlm_rng rng;
    hdlm_rng_init(&rng, 21);
    for (int ki = 0; ki < 7; ki++)
        for (int ni = 0; ni < 3; ni++) {
            int k = ks[ki], n = ns[ni], rows_max = 300;
            float *w = hdlm_malloc((size_t)n * k * sizeof *w), *a = hdlm_malloc((size_t)rows_max * k * sizeof *a);
            float *want = hdlm_malloc((size_t)rows_max * n * sizeof *want);
            float *got = hdlm_malloc((size_t)rows_max * n * sizeof *got);
            for (size_t i = 0; i < (size_t)n * k; i++) w[i] = (float)hdlm_rng_normal(&rng);
            for (size_t i = 0; i < (size_t)rows_max * k; i++) a[i] = (float)hdlm_rng_normal(&rng);
            hdlm_packed_weights p;
            hdlm_packed_weights_init(&p, w, n, k);
            for (int m = 1; m <= rows_max; m = m < 70 ? m + 1 : rows_max) {
                const float *bias = ni == 1 ? a : NULL;   // with a bias for one of the widths
                const float *row_add = ni == 2 ? a + k : NULL;   // with a shift per row for another
                hdlm_sgemm_bias(false, true, m, n, k, 1.0f, a, k, w, k, 0.0f, want, n, bias);
                for (int r = 0; row_add && r < m; r++)
                    for (int j = 0; j < n; j++) want[(size_t)r * n + j] += row_add[r];
                hdlm_sgemm_packed(m, a, k, &p, bias, row_add, got, n);
                if (memcmp(want, got, (size_t)m * n * sizeof *got) != 0)
                    fail_msg("packed product differs from hdlm_sgemm at m %d, n %d, k %d", m, n, k);
                if (m == rows_max) break;
            }
            hdlm_packed_weights_free(&p);
            free(w), free(a), free(want), free(got);
        }
}

static void test_cache_needs_block_schedule(void **state) {
    (void)state;
    hdlm_model *m = small_model(HDLM_FAMILY_EPSILON, HDLM_ROTARY_EXACT);
    hdlm_denoiser d = hdlm_denoiser_model(m);
    hdlm_schedule s;
    assert_int_equal(hdlm_schedule_init(&s, HDLM_SCHEDULE_SIMPLE, L, W, 3, HDLM_SAMPLING_EPS,
                                        HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL), 0);
    hdlm_sampler_config cfg = {.kind = HDLM_SAMPLER_WALK, .temperature = 1, .schedule = &s, .kv_cache = true};
    uint32_t x[L];
    assert_int_equal(hdlm_sample(&cfg, &d, 1, L, 0, x, NULL, NULL), -1);
    assert_error_contains("--kv-cache needs the block schedule");
    cfg.kind = HDLM_SAMPLER_ACS, cfg.steps = 3;
    assert_int_equal(hdlm_sample(&cfg, &d, 1, L, 0, x, NULL, NULL), -1);
    assert_error_contains("applies to the walk, gamma and ar samplers");
    hdlm_schedule_free(&s);
    hdlm_denoiser_free(&d);
    hdlm_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cached_forward_matches_uncached),
        cmocka_unit_test(test_cached_sampling_gives_the_same_tokens),
        cmocka_unit_test(test_single_row_steps_match_uncached),
        cmocka_unit_test(test_ar_sampler_is_the_exact_chain),
        cmocka_unit_test(test_packed_product_matches_sgemm_bits),
        cmocka_unit_test(test_cache_needs_block_schedule),
    };
    return cmocka_run_group_tests_name("kv_cache", tests, NULL, NULL);
}

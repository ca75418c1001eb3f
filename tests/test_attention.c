// The tiled attention layer (src/model/layer_attention.c) at L = 300: four full 64-query blocks and a partial one, keys
// padded from 300 to 320, head_dim 24 padded to a whole micro-tile (K and V transposed partly in register blocks,
// partly element by element). Checked against a direct float64 evaluation written from the rules of method §3.2
// (hdlm_mask_allowed, the uniform rule for fully masked rows, inverted dropout drawn with the uniform
// hdlm_rng_u16_at·2⁻¹⁶ at element ((b·H + h)·L + i)·L + j): outputs, log-sum-exp and the gradients of q, k, v.
// This is what covers the block boundaries, the padding and the per-row dropout offsets at length.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hdlm/common.h"
#include "model/layers.h"
#include "hdlm/mask.h"
#include "hdlm/rng.h"

enum { B = 2, H = 2, D = 24, L = 300 };

// Reference forward and backward of one (batch, head) in double: out [L, D], lse [L], dqkv [L, 3, D] (+=).
static void reference(const float *qkv, const float *dout, const hdlm_attn_mask *mask, int b, int h, float p,
                      uint64_t key, double *out, double *lse, double *dqkv) {
    int d = H * D, ld = 3 * d;
    double *prob = hdlm_calloc((size_t)L * L, sizeof(double)), *scale = hdlm_calloc((size_t)L * L, sizeof(double));
    const float *q = qkv + (size_t)b * L * ld + h * D, *k = q + d, *v = q + 2 * d;
    for (int i = 0; i < L; i++) {
        bool any = false;
        for (int j = 0; j < L; j++) any = any || hdlm_mask_allowed(mask, i, j);
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j < L; j++) {
            double s = 0;
            for (int e = 0; e < D; e++) s += (double)q[(size_t)i * ld + e] * k[(size_t)j * ld + e];
            s /= sqrt((double)D);
            prob[(size_t)i * L + j] = any ? (hdlm_mask_allowed(mask, i, j) ? s : -INFINITY) : 0.0;
            mx = fmax(mx, prob[(size_t)i * L + j]);
        }
        for (int j = 0; j < L; j++) sum += exp(prob[(size_t)i * L + j] - mx);
        lse[i] = any ? mx + log(sum) : 0.0;
        for (int j = 0; j < L; j++) {
            prob[(size_t)i * L + j] = exp(prob[(size_t)i * L + j] - mx) / sum;
            uint64_t index = (((uint64_t)b * H + h) * L + i) * L + j;
            bool kept = p <= 0 || hdlm_rng_u16_at(key, index) * 0x1p-16 >= p;
            scale[(size_t)i * L + j] = kept ? (p > 0 ? 1.0 / (1.0 - p) : 1.0) : 0.0;
        }
        for (int e = 0; e < D; e++) {
            double o = 0;
            for (int j = 0; j < L; j++)
                o += prob[(size_t)i * L + j] * scale[(size_t)i * L + j] * v[(size_t)j * ld + e];
            out[(size_t)i * D + e] = o;
        }
    }
    // dP̃ = dO·Vᵀ, dP = dP̃ ⊙ s, dS = P ⊙ (dP − Σ P ⊙ dP) (zero on fully masked rows), dQ = dS·K/√D, dK = dSᵀ·Q/√D,
    // dV = P̃ᵀ·dO. dqkv is [L, 3, D] for this (b, h).
    const float *go = dout + (size_t)b * L * d + h * D;
    for (int i = 0; i < L; i++) {
        bool any = false;
        for (int j = 0; j < L; j++) any = any || hdlm_mask_allowed(mask, i, j);
        double *dp = hdlm_calloc(L, sizeof(double)), dot = 0;
        for (int j = 0; j < L; j++) {
            double g = 0;
            for (int e = 0; e < D; e++) g += (double)go[(size_t)i * d + e] * v[(size_t)j * ld + e];
            dp[j] = g * scale[(size_t)i * L + j];
            dot += prob[(size_t)i * L + j] * dp[j];
            double pd = prob[(size_t)i * L + j] * scale[(size_t)i * L + j];
            for (int e = 0; e < D; e++) dqkv[((size_t)j * 3 + 2) * D + e] += pd * go[(size_t)i * d + e];
        }
        for (int j = 0; any && j < L; j++) {
            double ds = prob[(size_t)i * L + j] * (dp[j] - dot) / sqrt((double)D);
            for (int e = 0; e < D; e++) {
                dqkv[((size_t)i * 3 + 0) * D + e] += ds * k[(size_t)j * ld + e];
                dqkv[((size_t)j * 3 + 1) * D + e] += ds * q[(size_t)i * ld + e];
            }
        }
        free(dp);
    }
    free(prob);
    free(scale);
}

// max |got − ref| / max |ref| over the entries visited.
typedef struct {
    double err, scale;
} rel_error;

static void rel_add(rel_error *r, double got, double ref) {
    r->err = fmax(r->err, fabs(got - ref));
    r->scale = fmax(r->scale, fabs(ref));
}

static void check_case(const hdlm_attn_mask *mask, float p, const char *label) {
    int d = H * D, N = B * L;
    uint64_t key = hdlm_rng_key(7, 1, 2, HDLM_RNG_DROPOUT);
    float *qkv = hdlm_malloc((size_t)N * 3 * d * sizeof(float)), *dout = hdlm_malloc((size_t)N * d * sizeof(float));
    hdlm_rng rng;
    hdlm_rng_init(&rng, hdlm_rng_key(3, 0, 0, HDLM_RNG_DATA));
    for (int i = 0; i < N * 3 * d; i++) qkv[i] = 3.0f * (hdlm_rng_uniform(&rng) - 0.5f);   // peaked softmaxes too
    for (int i = 0; i < N * d; i++) dout[i] = hdlm_rng_uniform(&rng) - 0.5f;
    float *out = hdlm_malloc((size_t)N * d * sizeof(float)), *lse = hdlm_malloc((size_t)N * H * sizeof(float));
    float *dqkv = hdlm_malloc((size_t)N * 3 * d * sizeof(float));
    uint32_t *keep = p > 0 ? hdlm_calloc(hdlm_attention_keep_words(B, H, L), sizeof(uint32_t)) : NULL;
    hdlm_attention_forward(out, lse, keep, qkv, mask, B, L, H, D, p, key);
    hdlm_attention_backward(dqkv, dout, out, lse, keep, qkv, mask, B, L, H, D, p);

    rel_error e_out = {0}, e_lse = {0}, e_grad[3] = {{0}};
    double *r_out = hdlm_malloc((size_t)L * D * sizeof(double)), *r_lse = hdlm_malloc(L * sizeof(double));
    double *r_dqkv = hdlm_malloc((size_t)L * 3 * D * sizeof(double));
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < H; h++) {
            for (int i = 0; i < L * 3 * D; i++) r_dqkv[i] = 0;
            reference(qkv, dout, mask, b, h, p, key, r_out, r_lse, r_dqkv);
            for (int i = 0; i < L; i++) {
                rel_add(&e_lse, lse[((size_t)b * H + h) * L + i], r_lse[i]);
                for (int e = 0; e < D; e++) {
                    rel_add(&e_out, out[((size_t)b * L + i) * d + h * D + e], r_out[(size_t)i * D + e]);
                    for (int part = 0; part < 3; part++)
                        rel_add(&e_grad[part], dqkv[((size_t)b * L + i) * 3 * d + part * d + h * D + e],
                                r_dqkv[((size_t)i * 3 + part) * D + e]);
                }
            }
        }
    }
    printf("  %-34s out %.1e  lse %.1e  dq %.1e  dk %.1e  dv %.1e\n", label, e_out.err / e_out.scale,
           e_lse.err / e_lse.scale, e_grad[0].err / e_grad[0].scale, e_grad[1].err / e_grad[1].scale,
           e_grad[2].err / e_grad[2].scale);
    // fp32 products and sums over ≤ 300 keys of O(1) terms: ~1e-6 relative; a wrong tile offset, dropout index or
    // masked range gives 1e-2 or more.
    assert_true(e_out.err <= 1e-5 * e_out.scale);
    assert_true(e_lse.err <= 1e-5 * e_lse.scale);
    for (int part = 0; part < 3; part++) {
        assert_true(e_grad[part].scale > 0);
        assert_true(e_grad[part].err <= 1e-5 * e_grad[part].scale);
    }
    free(qkv);
    free(dout);
    free(out);
    free(lse);
    free(dqkv);
    free(keep);
    free(r_out);
    free(r_lse);
    free(r_dqkv);
}

static void test_attention_full_two_tiles(void **state) {
    (void)state;
    hdlm_attn_mask full = hdlm_mask_full(L);
    check_case(&full, 0.0f, "full, no dropout");
    check_case(&full, 0.2f, "full, dropout 0.2");
}

// Settled [0, 100) block-causal (ω = 16), active [100, 280] block-causal, worthless [281, 300) in the second tile.
static void test_attention_hyperschedule_two_tiles(void **state) {
    (void)state;
    hdlm_attn_mask m = {L, 100, 280, HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_CAUSAL, 16, 0};
    check_case(&m, 0.2f, "hyperschedule, dropout 0.2");
    m.context = HDLM_CONTEXT_CAUSAL;
    m.block = HDLM_BLOCK_FULL;
    check_case(&m, 0.0f, "hyperschedule causal/full");
}

// The two-copy layout (method §3.3) at 2·150 positions: noisy blocks see the clean prefix and their own block, so a
// query block's keys are two windows with the tiles between them skipped; a query block that holds clean and noisy
// rows (rows 128..191) takes the union. ω = 30 (five blocks, several per query block) and ω = 75.
static void test_attention_two_copy_two_tiles(void **state) {
    (void)state;
    hdlm_attn_mask m = hdlm_mask_two_copy(L / 2, 30, HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL);
    check_case(&m, 0.0f, "two-copy w30 block-causal/full");
    check_case(&m, 0.2f, "two-copy w30 block-causal/full, dropout 0.2");
    m = hdlm_mask_two_copy(L / 2, 75, HDLM_CONTEXT_CAUSAL, HDLM_BLOCK_CAUSAL);
    check_case(&m, 0.2f, "two-copy w75 causal/causal, dropout 0.2");
}

// The KV-cached path: rows appended to a key/value store in chunks of 3 to 90 rows at positions that are not multiples
// of a vector (both transpose paths), each chunk's rows causal, give the causal forward's outputs bit for bit, with
// the store full of NaN from an earlier generation beyond each chunk (the rows past the keys must be cleared).
static void test_attention_rows_appended_match_forward(void **state) {
    (void)state;
    int d = H * D;
    float *qkv = hdlm_malloc((size_t)L * 3 * d * sizeof(float));
    float *stale = hdlm_malloc((size_t)L * 3 * d * sizeof(float));
    hdlm_rng rng;
    hdlm_rng_init(&rng, hdlm_rng_key(5, 0, 0, HDLM_RNG_DATA));
    for (int i = 0; i < L * 3 * d; i++) {
        qkv[i] = 3.0f * (hdlm_rng_uniform(&rng) - 0.5f);
        stale[i] = NAN;
    }
    float *out = hdlm_malloc((size_t)L * d * sizeof(float)), *lse = hdlm_malloc((size_t)L * H * sizeof(float));
    float *rows_out = hdlm_malloc((size_t)L * d * sizeof(float));
    hdlm_attn_mask causal = hdlm_mask_causal(L);
    hdlm_attention_forward(out, lse, NULL, qkv, &causal, 1, L, H, D, 0.0f, 0);
    size_t kv_floats = hdlm_attention_kv_floats(L, D);
    float *kv = hdlm_aligned_malloc(kv_floats * sizeof(float));
    const int chunks[] = {21, 40, 3, 70, 17, 90, 59};   // 300 rows
    for (int h = 0; h < H; h++) {
        memset(kv, 0, kv_floats * sizeof(float));
        hdlm_attention_rows(rows_out + h * D, d, stale + h * D, 3 * d, kv, L, 0, 0, L, D, true);
        for (int c = 0, q0 = 0; c < (int)(sizeof chunks / sizeof chunks[0]); q0 += chunks[c++])
            hdlm_attention_rows(rows_out + (size_t)q0 * d + h * D, d, qkv + (size_t)q0 * 3 * d + h * D, 3 * d, kv, L,
                                q0, 0, chunks[c], D, true);
    }
    assert_memory_equal(rows_out, out, (size_t)L * d * sizeof(float));
    free(qkv);
    free(stale);
    free(out);
    free(lse);
    free(rows_out);
    free(kv);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attention_full_two_tiles),
        cmocka_unit_test(test_attention_hyperschedule_two_tiles),
        cmocka_unit_test(test_attention_two_copy_two_tiles),
        cmocka_unit_test(test_attention_rows_appended_match_forward),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

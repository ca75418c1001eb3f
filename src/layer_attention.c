// Multi-head attention under a hyperschedule mask (spec §3.2, §7.2), tiled over blocks of queries.
//
// For each (batch, head) and each block of QUERY_BLOCK queries, the scores against the keys the block may see are
// formed with a BLIS GEMM, soft-maxed row by row and multiplied into V; only one [QUERY_BLOCK, L] tile per thread
// exists at a time (never B×H×L×L). Keys beyond the block's last allowed key are skipped, so causal and block-causal
// masks cost about half. Backward recomputes the probabilities from the saved log-sum-exp (as flash attention does).
// Fully-masked rows (worthless queries) attend uniformly to all L keys with zero score gradient (spec §3.2).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hdlm/blas.h"
#include "hdlm/common.h"
#include "hdlm/layers.h"
#include "hdlm/vecmath.h"

#define QUERY_BLOCK 256

// Per-thread scratch: one tile each of scores/probabilities, dropout multipliers, dropped probabilities, dP.
typedef struct {
    float *p, *scale, *pd, *dp;
} attention_tile;

static attention_tile tile_alloc(int len, bool dropout, bool backward) {
    attention_tile t = {0};
    size_t n = (size_t)QUERY_BLOCK * len;
    t.p = hdlm_malloc(n * sizeof(float));
    if (dropout) {
        t.scale = hdlm_malloc(n * sizeof(float));
        t.pd = hdlm_malloc(n * sizeof(float));
    }
    if (backward) t.dp = hdlm_malloc(n * sizeof(float));
    return t;
}

static void tile_free(attention_tile *t) {
    free(t->p);
    free(t->scale);
    free(t->pd);
    free(t->dp);
}

// The largest key bound of queries [i0, i0 + nq): the width of the block's score tile.
static int block_key_end(const hdlm_attn_mask *mask, int i0, int nq) {
    int kv = 0;
    for (int i = i0; i < i0 + nq; i++) {
        int lo, hi;
        hdlm_mask_key_range(mask, i, &lo, &hi);
        if (hi > kv) kv = hi;
    }
    return kv;
}

// Scores of queries [i0, i0+nq) against keys [0, kv) turned into probabilities in t->p (row stride kv).
// With lse given (backward) the saved log-sum-exp is reused; otherwise it is computed and stored into lse_out.
static void tile_probabilities(attention_tile *t, const float *q, const float *k, int ld, const hdlm_attn_mask *mask,
                               int i0, int nq, int kv, int head_dim, const float *lse_in, float *lse_out) {
    float scale = 1.0f / sqrtf((float)head_dim);
    hdlm_sgemm_serial(false, true, nq, kv, head_dim, scale, q + (size_t)i0 * ld, ld, k, ld, 0.0f, t->p, kv);
    for (int r = 0; r < nq; r++) {
        int i = i0 + r, lo, hi;
        float *p = t->p + (size_t)r * kv;
        hdlm_mask_key_range(mask, i, &lo, &hi);
        if (hdlm_mask_row_fully_masked(mask, i)) {
            // all −inf scores are replaced by zeros: uniform over all L keys (kv == L here)
            for (int j = 0; j < kv; j++) p[j] = 1.0f / (float)kv;
            if (lse_out) lse_out[i] = 0.0f;
            continue;
        }
        float lse;
        if (lse_in) {
            lse = lse_in[i];
        } else {
            float m = -INFINITY;
#pragma omp simd reduction(max : m)
            for (int j = lo; j < hi; j++) m = p[j] > m ? p[j] : m;
            float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
            for (int j = lo; j < hi; j++) sum += hdlm_expf(p[j] - m);
            lse = m + logf(sum);
            lse_out[i] = lse;
        }
        for (int j = 0; j < lo; j++) p[j] = 0.0f;
#pragma omp simd
        for (int j = lo; j < hi; j++) p[j] = hdlm_expf(p[j] - lse);
        for (int j = hi; j < kv; j++) p[j] = 0.0f;
    }
}

// Dropout multipliers for the tile and the dropped probabilities t->pd = t->p ⊙ t->scale.
static void tile_dropout(attention_tile *t, uint64_t row_base, int len, int i0, int nq, int kv, float dropout,
                         uint64_t key) {
    for (int r = 0; r < nq; r++) {
        float *s = t->scale + (size_t)r * kv;
        hdlm_dropout_scales(s, key, row_base + (uint64_t)(i0 + r) * len, kv, dropout);
        const float *p = t->p + (size_t)r * kv;
        float *pd = t->pd + (size_t)r * kv;
        for (int j = 0; j < kv; j++) pd[j] = p[j] * s[j];
    }
}

void hdlm_attention_forward(float *out, float *lse, const float *qkv, const hdlm_attn_mask *mask, int batch, int len,
                            int heads, int head_dim, float dropout, uint64_t key) {
    int d = heads * head_dim, ld = 3 * d;
    bool drop = dropout > 0.0f;
#pragma omp parallel
    {
        attention_tile t = tile_alloc(len, drop, false);
#pragma omp for schedule(dynamic, 1)
        for (int bh = 0; bh < batch * heads; bh++) {
            int b = bh / heads, h = bh % heads;
            const float *q = qkv + (size_t)b * len * ld + (size_t)h * head_dim;
            const float *k = q + d, *v = q + 2 * d;
            float *o = out + (size_t)b * len * d + (size_t)h * head_dim;
            float *lse_bh = lse + (size_t)bh * len;
            for (int i0 = 0; i0 < len; i0 += QUERY_BLOCK) {
                int nq = len - i0 < QUERY_BLOCK ? len - i0 : QUERY_BLOCK;
                int kv = block_key_end(mask, i0, nq);
                tile_probabilities(&t, q, k, ld, mask, i0, nq, kv, head_dim, NULL, lse_bh);
                const float *pv = t.p;
                if (drop) {
                    tile_dropout(&t, (uint64_t)bh * len * len, len, i0, nq, kv, dropout, key);
                    pv = t.pd;
                }
                // O[i0:i0+nq] = P̃ · V[0:kv]
                hdlm_sgemm_serial(false, false, nq, head_dim, kv, 1.0f, pv, kv, v, ld, 0.0f, o + (size_t)i0 * d, d);
            }
        }
        tile_free(&t);
    }
}

void hdlm_attention_backward(float *dqkv, const float *dout, const float *out, const float *lse, const float *qkv,
                             const hdlm_attn_mask *mask, int batch, int len, int heads, int head_dim, float dropout,
                             uint64_t key) {
    int d = heads * head_dim, ld = 3 * d;
    bool drop = dropout > 0.0f;
    float scale = 1.0f / sqrtf((float)head_dim);
#pragma omp parallel
    {
        attention_tile t = tile_alloc(len, drop, true);
#pragma omp for schedule(dynamic, 1)
        for (int bh = 0; bh < batch * heads; bh++) {
            int b = bh / heads, h = bh % heads;
            size_t base = (size_t)b * len * ld + (size_t)h * head_dim;
            const float *q = qkv + base, *k = q + d, *v = q + 2 * d;
            float *dq = dqkv + base, *dk = dq + d, *dv = dq + 2 * d;
            const float *o = out + (size_t)b * len * d + (size_t)h * head_dim;
            const float *go = dout + (size_t)b * len * d + (size_t)h * head_dim;
            const float *lse_bh = lse + (size_t)bh * len;
            for (int i = 0; i < len; i++) {
                memset(dk + (size_t)i * ld, 0, (size_t)head_dim * sizeof(float));
                memset(dv + (size_t)i * ld, 0, (size_t)head_dim * sizeof(float));
            }
            for (int i0 = 0; i0 < len; i0 += QUERY_BLOCK) {
                int nq = len - i0 < QUERY_BLOCK ? len - i0 : QUERY_BLOCK;
                int kv = block_key_end(mask, i0, nq);
                tile_probabilities(&t, q, k, ld, mask, i0, nq, kv, head_dim, lse_bh, NULL);
                const float *pv = t.p;
                if (drop) {
                    tile_dropout(&t, (uint64_t)bh * len * len, len, i0, nq, kv, dropout, key);
                    pv = t.pd;
                }
                // dV[0:kv] += P̃ᵀ · dO ;  dP̃ = dO · V[0:kv]ᵀ
                hdlm_sgemm_serial(true, false, kv, head_dim, nq, 1.0f, pv, kv, go + (size_t)i0 * d, d, 1.0f, dv, ld);
                hdlm_sgemm_serial(false, true, nq, kv, head_dim, 1.0f, go + (size_t)i0 * d, d, v, ld, 0.0f, t.dp, kv);
                // dS = P ⊙ (dP − Σ_j P̃_j dP̃_j), with Σ_j P̃_j dP̃_j = dO_i · O_i; zero on fully masked rows
                for (int r = 0; r < nq; r++) {
                    int i = i0 + r;
                    float *ds = t.dp + (size_t)r * kv;
                    if (hdlm_mask_row_fully_masked(mask, i)) {
                        memset(ds, 0, (size_t)kv * sizeof(float));
                        continue;
                    }
                    const float *p = t.p + (size_t)r * kv;
                    const float *oi = o + (size_t)i * d, *gi = go + (size_t)i * d;
                    float di = 0.0f;
#pragma omp simd reduction(+ : di)
                    for (int e = 0; e < head_dim; e++) di += oi[e] * gi[e];
                    const float *s = drop ? t.scale + (size_t)r * kv : NULL;
                    for (int j = 0; j < kv; j++) ds[j] = p[j] * ((s ? ds[j] * s[j] : ds[j]) - di);
                }
                // dQ = scale · dS · K ;  dK += scale · dSᵀ · Q
                hdlm_sgemm_serial(false, false, nq, head_dim, kv, scale, t.dp, kv, k, ld, 0.0f, dq + (size_t)i0 * ld,
                                  ld);
                hdlm_sgemm_serial(true, false, kv, head_dim, nq, scale, t.dp, kv, q + (size_t)i0 * ld, ld, 1.0f, dk,
                                  ld);
            }
        }
        tile_free(&t);
    }
}

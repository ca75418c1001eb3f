// Multi-head attention under a hyperschedule mask (method §3.2, §7.2), tiled over blocks of queries.
//
// Each (batch, head) is one thread's task. Its Q, K, V (and dO) are first copied into per-thread buffers, zero-padded
// to whole micro-tiles and with K and V also transposed, so that every product below is one register-tiled kernel
// (tile_product) reading aligned rows. Then, block by block of QUERY_BLOCK queries: scores against the keys the block
// may see, softmax row by row, product with V. Only [QUERY_BLOCK, L] tiles exist (never B×H×L×L) and they stay in
// L2; keys beyond the block's last allowed key are skipped, so causal and block-causal masks cost about half.
// Backward recomputes the probabilities from the saved log-sum-exp, as flash attention does. Fully-masked rows
// (worthless queries) attend uniformly to all L keys with zero score gradient (method §3.2).
//
// BLIS is not used here: with head_dim 64 its per-call packing of both operands cost more than the products (the
// layer ran at a third of the FMA peak through it).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hdlm/common.h"
#include "model/layers.h"
#include "core/vecmath.h"

#if defined(__AVX512F__)
enum { LANES = 16, TILE_VECS = 4 };
#else
enum { LANES = 8, TILE_VECS = 2 };
#endif
// A micro-tile is TILE_ROWS × TILE_COLS accumulators in registers (24 of the 32 zmm with AVX-512).
enum { TILE_ROWS = 6, TILE_COLS = LANES * TILE_VECS };
// 64 queries per block: the three [64, L] tiles of the backward stay in L2 at L = 1024.
enum { QUERY_BLOCK = 64 };
// Products are cut into chunks of this many terms, so the B rows a chunk reads (≤ 32 KB) stay in L1 while every row
// tile of A passes over them.
enum { DEPTH_CHUNK = 128 };

typedef float vecf __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t veci __attribute__((vector_size(LANES * sizeof(int32_t))));

static int round_up(int n, int m) { return (n + m - 1) / m * m; }

static inline vecf vec_broadcast(float x) { return x - (vecf){0}; }
static inline vecf vec_select(veci mask, vecf yes, vecf no) { return (vecf)(((veci)yes & mask) | ((veci)no & ~mask)); }

// hdlm_expf (src/core/vecmath.h) on LANES values at once, for arguments <= 0 (scores minus their maximum or
// their log-sum-exp): the same range reduction and polynomial; −inf gives 0, NaN stays NaN.
static inline vecf vec_exp_nonpositive(vecf x) {
    veci underflow = x < -87.3f;
    x = vec_select(underflow, vec_broadcast(-87.3f), x);
    vecf n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    vecf r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    vecf p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    veci scale = (__builtin_convertvector(n, veci) + 127) << 23;   // 2^n through the exponent field
    return (vecf)((veci)(p * (vecf)scale) & ~underflow);
}

// Row scores beyond the last allowed key hi, up to the next multiple of LANES, set to −inf (so whole vectors can
// be read); returns that multiple.
static int mask_row_tail(float *p, int hi) {
    int hv = round_up(hi, LANES);
    for (int j = hi; j < hv; j++) p[j] = -INFINITY;
    return hv;
}

static float vec_sum(vecf x) {
    float total = 0.0f;
    for (int l = 0; l < LANES; l++) total += x[l];
    return total;
}

// The largest of x[0, n), n a multiple of LANES.
static float vec_max(const float *x, int n) {
    vecf m = vec_broadcast(-INFINITY);
    for (int j = 0; j < n; j += LANES) {
        vecf v = *(const vecf *)(x + j);
        m = vec_select(v > m, v, m);
    }
    float best = m[0];
    for (int l = 1; l < LANES; l++) best = m[l] > best ? m[l] : best;
    return best;
}

// C[rows, TILE_COLS] = alpha · Σ_{k < depth} A(r, k) · B[k, 0:TILE_COLS] (+ C when accumulate), with
// A(r, k) = a[r·a_row + k·a_k] (so A may be read transposed) and rows ≤ TILE_ROWS. B and C rows are vector-aligned.
// The GEMM's kernel (src/core/blas_kernel.c) has the same inner loop but 48-column tiles over packed B panels; here the
// tile is 64 columns wide, one head, and B is read where the per-head copies put it.
static inline void tile_product(int rows, int depth, const float *a, size_t a_row, size_t a_k, const float *b,
                                size_t ldb, float *c, size_t ldc, float alpha, bool accumulate) {
    const float *ar[TILE_ROWS];
    for (int r = 0; r < TILE_ROWS; r++) ar[r] = a + (size_t)(r < rows ? r : rows - 1) * a_row;   // fixed tile shape
    vecf acc[TILE_ROWS][TILE_VECS];
    for (int r = 0; r < TILE_ROWS; r++)
        for (int v = 0; v < TILE_VECS; v++) acc[r][v] = (vecf){0};   // in registers (a memset() here is a call)
    for (int k = 0; k < depth; k++) {
        const vecf *bk = (const vecf *)(b + (size_t)k * ldb);
        vecf bv[TILE_VECS];
        for (int v = 0; v < TILE_VECS; v++) bv[v] = bk[v];
        for (int r = 0; r < TILE_ROWS; r++) {
            vecf x = vec_broadcast(ar[r][(size_t)k * a_k]);
            for (int v = 0; v < TILE_VECS; v++) acc[r][v] += x * bv[v];
        }
    }
    for (int r = 0; r < rows; r++) {
        vecf *cr = (vecf *)(c + (size_t)r * ldc);
        for (int v = 0; v < TILE_VECS; v++) cr[v] = accumulate ? cr[v] + alpha * acc[r][v] : alpha * acc[r][v];
    }
}

// C[m, n] = alpha · A[m, depth] · B[depth, n] (+ C when accumulate); n a multiple of TILE_COLS, A as in tile_product.
static void block_product(int m, int n, int depth, const float *a, size_t a_row, size_t a_k, const float *b,
                          size_t ldb, float *c, size_t ldc, float alpha, bool accumulate) {
    for (int k0 = 0; k0 < depth; k0 += DEPTH_CHUNK) {
        int dk = depth - k0 < DEPTH_CHUNK ? depth - k0 : DEPTH_CHUNK;
        for (int j0 = 0; j0 < n; j0 += TILE_COLS)
            for (int r0 = 0; r0 < m; r0 += TILE_ROWS)
                tile_product(m - r0 < TILE_ROWS ? m - r0 : TILE_ROWS, dk, a + r0 * a_row + k0 * a_k, a_row, a_k,
                             b + (size_t)k0 * ldb + j0, ldb, c + (size_t)r0 * ldc + j0, ldc, alpha,
                             accumulate || k0 > 0);
    }
}

// One thread's buffers for one (batch, head). Padded sizes: dp = head_dim and lp = L rounded up to TILE_COLS;
// transposed rows and tile rows have stride lt = lp + LANES, so that consecutive rows do not fall in the same L1 set.
typedef struct {
    int dp, lp, lt;
    float *q, *k, *v;     // [L, dp], [lp, dp], [lp, dp] (k: backward)
    float *kt, *vt;       // [dp, lt] (vt: backward)
    float *p, *pd, *dp_;  // [QUERY_BLOCK, lt]: probabilities, with dropout applied (pd), dP̃ then dS (dp_)
    float *go, *dk, *dv;  // backward: dO [L, dp], dK and dV [lp, dp]
    float *block;         // [QUERY_BLOCK, dp]: O or dQ of one block
    float *row_scale;     // [lp]: one row of dropout multipliers
    float *di;            // [L]: dO_i · O_i
} attention_work;

static float *alloc_zeroed(size_t floats) {
    float *x = hdlm_aligned_malloc(floats * sizeof(float));
    memset(x, 0, floats * sizeof(float));
    return x;
}

static attention_work work_alloc(int len, int head_dim) {
    attention_work w = {0};
    w.dp = round_up(head_dim, TILE_COLS);
    w.lp = round_up(len, TILE_COLS);
    w.lt = w.lp + LANES;
    size_t rows = (size_t)w.lp * w.dp, tile = (size_t)QUERY_BLOCK * w.lt;
    w.q = alloc_zeroed(rows);
    w.v = alloc_zeroed(rows);
    w.kt = alloc_zeroed((size_t)w.dp * w.lt);
    w.p = alloc_zeroed(tile);
    w.block = alloc_zeroed((size_t)QUERY_BLOCK * w.dp);
    w.row_scale = alloc_zeroed((size_t)w.lp);
    w.k = alloc_zeroed(rows);
    w.vt = alloc_zeroed((size_t)w.dp * w.lt);
    w.pd = alloc_zeroed(tile);
    w.dp_ = alloc_zeroed(tile);
    w.go = alloc_zeroed(rows);
    w.dk = alloc_zeroed(rows);
    w.dv = alloc_zeroed(rows);
    w.di = alloc_zeroed((size_t)len);
    return w;
}

static void work_free(attention_work *w) {
    float *all[] = {w->q, w->k, w->v, w->kt, w->vt, w->p, w->pd, w->dp_, w->go, w->dk, w->dv, w->block,
                    w->row_scale, w->di};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(all[i]);
}

// The calling thread's buffers for (len, head_dim), kept for its later calls: allocating and zeroing them on every
// call cost ≈ 5 % of the layer (page faults). The padding stays zero, since the copies below write only the valid
// part and every tile entry that is read is written first.
static attention_work work_get(int len, int head_dim) {
    static _Thread_local attention_work cached;
    static _Thread_local int cached_len, cached_head_dim;
    if (cached.q == NULL || cached_len != len || cached_head_dim != head_dim) {
        work_free(&cached);
        cached = work_alloc(len, head_dim);
        cached_len = len;
        cached_head_dim = head_dim;
    }
    return cached;
}

// rows of src (row stride ld, head_dim columns) into dst [len, dp] (padding stays zero)
static void copy_rows(float *dst, int dp, const float *src, size_t ld, int len, int head_dim) {
    for (int i = 0; i < len; i++) memcpy(dst + (size_t)i * dp, src + (size_t)i * ld, (size_t)head_dim * sizeof(float));
}

// the transpose of rows of src into dst [head_dim, lt] (padding stays zero)
static void copy_transposed(float *dst, int lt, const float *src, size_t ld, int len, int head_dim) {
    for (int i = 0; i < len; i++)
        for (int e = 0; e < head_dim; e++) dst[(size_t)e * lt + i] = src[(size_t)i * ld + e];
}

// dst rows (row stride ld, head_dim columns) from src [rows, dp]
static void store_rows(float *dst, size_t ld, const float *src, int dp, int rows, int head_dim) {
    for (int i = 0; i < rows; i++) memcpy(dst + (size_t)i * ld, src + (size_t)i * dp, (size_t)head_dim * sizeof(float));
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

// Scaled scores S = Q[i0:i0+nq] · K[0:kvp]ᵀ / √head_dim into w->p.
static void block_scores(attention_work *w, int i0, int nq, int kvp, int head_dim) {
    block_product(nq, kvp, w->dp, w->q + (size_t)i0 * w->dp, w->dp, 1, w->kt, w->lt, w->p, w->lt,
                  1.0f / sqrtf((float)head_dim), false);
}

// Dropout multipliers of row i over keys [0, hi) into w->row_scale (element index row_base + i·len + j).
static const float *row_dropout(attention_work *w, uint64_t row_base, int len, int i, int hi, float dropout,
                                uint64_t key) {
    hdlm_dropout_scales(w->row_scale, key, row_base + (uint64_t)i * len, hi, dropout);
    return w->row_scale;
}

void hdlm_attention_forward(float *out, float *lse, const float *qkv, const hdlm_attn_mask *mask, int batch, int len,
                            int heads, int head_dim, float dropout, uint64_t key) {
    int d = heads * head_dim, ld = 3 * d;
    bool drop = dropout > 0.0f;
#pragma omp parallel
    {
        attention_work w = work_get(len, head_dim);
#pragma omp for schedule(dynamic, 1)
        for (int bh = 0; bh < batch * heads; bh++) {
            int b = bh / heads, h = bh % heads;
            const float *q = qkv + (size_t)b * len * ld + (size_t)h * head_dim;
            copy_rows(w.q, w.dp, q, ld, len, head_dim);
            copy_transposed(w.kt, w.lt, q + d, ld, len, head_dim);
            copy_rows(w.v, w.dp, q + 2 * d, ld, len, head_dim);
            float *o = out + (size_t)b * len * d + (size_t)h * head_dim;
            float *lse_bh = lse + (size_t)bh * len;
            uint64_t row_base = (uint64_t)bh * len * len;
            for (int i0 = 0; i0 < len; i0 += QUERY_BLOCK) {
                int nq = len - i0 < QUERY_BLOCK ? len - i0 : QUERY_BLOCK;
                int kv = block_key_end(mask, i0, nq), kvp = round_up(kv, TILE_COLS);
                block_scores(&w, i0, nq, kvp, head_dim);
                // Softmax over the allowed keys [0, hi) with the dropout multipliers applied in the same pass. w.p gets
                // the unnormalised exp(S − max) ⊙ s; the 1/sum goes on the block's output rows instead.
                float inv_sum[QUERY_BLOCK];
                for (int r = 0; r < nq; r++) {
                    int i = i0 + r, lo, hi;
                    float *p = w.p + (size_t)r * w.lt;
                    hdlm_mask_key_range(mask, i, &lo, &hi);
                    const float *s = drop ? row_dropout(&w, row_base, len, i, hi, dropout, key) : NULL;
                    if (hdlm_mask_row_fully_masked(mask, i)) {
                        // all −inf scores are replaced by zeros: uniform over all L keys (kv == L here)
                        for (int j = 0; j < kv; j++) p[j] = s ? s[j] : 1.0f;
                        for (int j = kv; j < kvp; j++) p[j] = 0.0f;
                        inv_sum[r] = 1.0f / (float)kv;
                        lse_bh[i] = 0.0f;
                        continue;
                    }
                    int hv = mask_row_tail(p, hi);
                    vecf m = vec_broadcast(vec_max(p, hv)), sum = {0};
                    for (int j = 0; j < hv; j += LANES) {
                        vecf *pj = (vecf *)(p + j), e = vec_exp_nonpositive(*pj - m);
                        sum += e;
                        *pj = s ? e * *(const vecf *)(s + j) : e;
                    }
                    float total = vec_sum(sum);
                    lse_bh[i] = m[0] + logf(total);
                    inv_sum[r] = 1.0f / total;
                    for (int j = hv; j < kvp; j++) p[j] = 0.0f;
                }
                // O[i0:i0+nq] = P̃ · V[0:kvp]
                block_product(nq, w.dp, kvp, w.p, w.lt, 1, w.v, w.dp, w.block, w.dp, 1.0f, false);
                for (int r = 0; r < nq; r++)
                    for (int e = 0; e < head_dim; e++) w.block[(size_t)r * w.dp + e] *= inv_sum[r];
                store_rows(o + (size_t)i0 * d, d, w.block, w.dp, nq, head_dim);
            }
        }
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
        attention_work w = work_get(len, head_dim);
#pragma omp for schedule(dynamic, 1)
        for (int bh = 0; bh < batch * heads; bh++) {
            int b = bh / heads, h = bh % heads;
            size_t base = (size_t)b * len * ld + (size_t)h * head_dim;
            const float *q = qkv + base, *k = q + d, *v = q + 2 * d;
            float *dq = dqkv + base;
            const float *o = out + (size_t)b * len * d + (size_t)h * head_dim;
            const float *go = dout + (size_t)b * len * d + (size_t)h * head_dim;
            const float *lse_bh = lse + (size_t)bh * len;
            uint64_t row_base = (uint64_t)bh * len * len;
            copy_rows(w.q, w.dp, q, ld, len, head_dim);
            copy_rows(w.k, w.dp, k, ld, len, head_dim);
            copy_transposed(w.kt, w.lt, k, ld, len, head_dim);
            copy_transposed(w.vt, w.lt, v, ld, len, head_dim);
            copy_rows(w.go, w.dp, go, d, len, head_dim);
            memset(w.dk, 0, (size_t)w.lp * w.dp * sizeof(float));
            memset(w.dv, 0, (size_t)w.lp * w.dp * sizeof(float));
            // D_i = Σ_j P̃_ij dP̃_ij = dO_i · O_i
            for (int i = 0; i < len; i++) {
                const float *oi = o + (size_t)i * d, *gi = go + (size_t)i * d;
                float di = 0.0f;
#pragma omp simd reduction(+ : di)
                for (int e = 0; e < head_dim; e++) di += oi[e] * gi[e];
                w.di[i] = di;
            }
            for (int i0 = 0; i0 < len; i0 += QUERY_BLOCK) {
                int nq = len - i0 < QUERY_BLOCK ? len - i0 : QUERY_BLOCK;
                int kv = block_key_end(mask, i0, nq), kvp = round_up(kv, TILE_COLS);
                block_scores(&w, i0, nq, kvp, head_dim);
                // P from the saved log-sum-exp, and P̃ = P ⊙ dropout multipliers in w.pd.
                float *pv = drop ? w.pd : w.p;
                for (int r = 0; r < nq; r++) {
                    int i = i0 + r, lo, hi;
                    float *p = w.p + (size_t)r * w.lt, *pd = pv + (size_t)r * w.lt;
                    hdlm_mask_key_range(mask, i, &lo, &hi);
                    int hv = kv;
                    if (hdlm_mask_row_fully_masked(mask, i)) {
                        for (int j = 0; j < kv; j++) p[j] = 1.0f / (float)kv;
                    } else {
                        hv = mask_row_tail(p, hi);
                        vecf l = vec_broadcast(lse_bh[i]);
                        for (int j = 0; j < hv; j += LANES)
                            *(vecf *)(p + j) = vec_exp_nonpositive(*(vecf *)(p + j) - l);
                    }
                    for (int j = hv; j < kvp; j++) p[j] = 0.0f;
                    if (drop) {
                        // fully masked rows: kv == L == hi
                        const float *s = row_dropout(&w, row_base, len, i, hi, dropout, key);
                        for (int j = 0; j < kvp; j += LANES)
                            *(vecf *)(pd + j) = *(const vecf *)(p + j) * *(const vecf *)(s + j);
                    }
                }
                const float *go_block = w.go + (size_t)i0 * w.dp;
                // dV[0:kvp] += P̃ᵀ · dO ;  dP̃ = dO · V[0:kvp]ᵀ
                block_product(kvp, w.dp, nq, pv, 1, w.lt, go_block, w.dp, w.dv, w.dp, 1.0f, true);
                block_product(nq, kvp, w.dp, go_block, w.dp, 1, w.vt, w.lt, w.dp_, w.lt, 1.0f, false);
                // dS = P ⊙ (s ⊙ dP̃ − Σ_j P̃_j dP̃_j) = P̃ ⊙ dP̃ − P · D_i; zero on fully masked rows
                for (int r = 0; r < nq; r++) {
                    int i = i0 + r;
                    float *ds = w.dp_ + (size_t)r * w.lt;
                    if (hdlm_mask_row_fully_masked(mask, i)) {
                        memset(ds, 0, (size_t)kvp * sizeof(float));
                        continue;
                    }
                    const float *p = w.p + (size_t)r * w.lt, *pd = pv + (size_t)r * w.lt;
                    float di = w.di[i];
#pragma omp simd
                    for (int j = 0; j < kvp; j++) ds[j] = pd[j] * ds[j] - p[j] * di;
                }
                // dQ = scale · dS · K ;  dK += scale · dSᵀ · Q
                block_product(nq, w.dp, kvp, w.dp_, w.lt, 1, w.k, w.dp, w.block, w.dp, scale, false);
                store_rows(dq + (size_t)i0 * ld, ld, w.block, w.dp, nq, head_dim);
                block_product(kvp, w.dp, nq, w.dp_, 1, w.lt, w.q + (size_t)i0 * w.dp, w.dp, w.dk, w.dp, scale, true);
            }
            store_rows(dq + d, ld, w.dk, w.dp, len, head_dim);
            store_rows(dq + 2 * d, ld, w.dv, w.dp, len, head_dim);
        }
    }
}

// Multi-head attention under a hyperschedule mask (method §3.2, §7.2), tiled over blocks of queries.
//
// Each (batch, head) is one thread's task. Its Q, K, V (and dO) are first copied into per-thread buffers, zero-padded
// to whole micro-tiles and with K and V also transposed, so that every product below is one register-tiled kernel
// (tile_product) reading aligned rows. Then, block by block of QUERY_BLOCK queries: scores against the keys the block
// may see, softmax row by row, product with V. Only [QUERY_BLOCK, L] tiles exist (never B×H×L×L) and they stay in
// L2; key tiles no row of the block may see are skipped (block_windows), so causal and block-causal masks cost about
// half, and a noisy block of the two-copy layout (method §3.3) reads only the clean prefix and its own block.
// Backward recomputes the probabilities from the saved log-sum-exp, as flash attention does, and reads the dropout
// keep bits the forward drew. Fully-masked rows (worthless queries) attend uniformly to all L keys with zero score
// gradient (method §3.2). The KV-cached forward keeps each head's K and V in the copies' layout
// (hdlm_attention_rows), so its steps copy only their new rows.
//
// BLIS is not used here: with head_dim 64 its per-call packing of both operands cost more than the products (the
// layer ran at a third of the FMA peak through it).
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hdlm/common.h"
#include "model/layers.h"
#include "core/simd.h"
#include "core/vecmath.h"

// A micro-tile is TILE_ROWS × TILE_COLS accumulators in three quarters of the vector registers (the rest hold the B
// row and the broadcast): 6 × 64 in 24 zmm with AVX-512, 6 × 16 in 12 ymm with AVX2 (more would spill every FMA).
enum { TILE_ROWS = 6, TILE_VECS = VEC_REGISTERS * 3 / 4 / TILE_ROWS, TILE_COLS = LANES * TILE_VECS };
// 64 queries per block: the three [64, L] tiles of the backward stay in L2 at L = 1024.
enum { QUERY_BLOCK = 64 };
// Products are cut into chunks of this many terms, so the B rows a chunk reads (≤ 32 KB) stay in L1 while every row
// tile of A passes over them.
enum { DEPTH_CHUNK = 128 };

static int round_up(int n, int m) { return (n + m - 1) / m * m; }

static inline vecf vec_broadcast(float x) { return x - (vecf){0}; }
static inline vecf vec_select(veci mask, vecf yes, vecf no) { return (vecf)(((veci)yes & mask) | ((veci)no & ~mask)); }

static float vec_sum(vecf x) {
    float total = 0.0f;
    for (int l = 0; l < LANES; l++) total += x[l];
    return total;
}

// The largest of x[0, n), n a multiple of LANES. Four running maxima: one is a chain of dependent compare-selects
// that ran at a quarter of the rate (the max is exact, so the order does not change the result).
static float vec_max(const float *x, int n) {
    vecf m[4] = {vec_broadcast(-INFINITY), vec_broadcast(-INFINITY), vec_broadcast(-INFINITY),
                 vec_broadcast(-INFINITY)};
    int j = 0;
    for (; j + 4 * LANES <= n; j += 4 * LANES)
        for (int c = 0; c < 4; c++) {
            vecf v = *(const vecf *)(x + j + c * LANES);
            m[c] = vec_select(v > m[c], v, m[c]);
        }
    for (; j < n; j += LANES) {
        vecf v = *(const vecf *)(x + j);
        m[0] = vec_select(v > m[0], v, m[0]);
    }
    for (int c = 1; c < 4; c++) m[0] = vec_select(m[c] > m[0], m[c], m[0]);
    float best = m[0][0];
    for (int l = 1; l < LANES; l++) best = m[0][l] > best ? m[0][l] : best;
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

// tile_product's arithmetic for one row of A (a single query: a token of next-token generation), which as a
// TILE_ROWS tile would cost TILE_ROWS times its FMAs. Kept out of block_product, whose code the training path runs.
__attribute__((noinline)) static void row_product(int n, int depth, const float *a, size_t a_k, const float *b,
                                                  size_t ldb, float *c, float alpha, bool accumulate) {
    for (int k0 = 0; k0 < depth; k0 += DEPTH_CHUNK) {
        int dk = depth - k0 < DEPTH_CHUNK ? depth - k0 : DEPTH_CHUNK;
        for (int j0 = 0; j0 < n; j0 += TILE_COLS) {
            vecf acc[TILE_VECS];
            for (int v = 0; v < TILE_VECS; v++) acc[v] = (vecf){0};
            for (int k = k0; k < k0 + dk; k++) {
                const vecf *bk = (const vecf *)(b + (size_t)k * ldb + j0);
                vecf x = vec_broadcast(a[(size_t)k * a_k]);
                for (int v = 0; v < TILE_VECS; v++) acc[v] += x * bk[v];
            }
            vecf *cr = (vecf *)(c + j0);
            bool add = accumulate || k0 > 0;
            for (int v = 0; v < TILE_VECS; v++) cr[v] = add ? cr[v] + alpha * acc[v] : alpha * acc[v];
        }
    }
}

// C[m, n] = alpha · A[m, depth] · B[depth, n] (+ C when accumulate); n a multiple of TILE_COLS, A as in tile_product.
static void block_product(int m, int n, int depth, const float *a, size_t a_row, size_t a_k, const float *b,
                          size_t ldb, float *c, size_t ldc, float alpha, bool accumulate) {
    if (m == 1) {
        row_product(n, depth, a, a_k, b, ldb, c, alpha, accumulate);
        return;
    }
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
    float *all[] = {w->q, w->k, w->v, w->kt, w->vt, w->p, w->pd, w->dp_, w->go, w->dk, w->dv, w->block, w->di};
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

// the transpose of rows of src into dst [head_dim, lt] (padding stays zero), in LANES × LANES register blocks
static void copy_transposed(float *dst, int lt, const float *src, size_t ld, int len, int head_dim) {
    int len_blocks = len / LANES * LANES, dim_blocks = head_dim / LANES * LANES;
    for (int i0 = 0; i0 < len_blocks; i0 += LANES)
        for (int e0 = 0; e0 < dim_blocks; e0 += LANES) {
            vecf r[LANES];
            for (int i = 0; i < LANES; i++) r[i] = *(const vecf_unaligned *)(src + (size_t)(i0 + i) * ld + e0);
            hdlm_vec_transpose(r);
            for (int e = 0; e < LANES; e++) *(vecf_unaligned *)(dst + (size_t)(e0 + e) * lt + i0) = r[e];
        }
    for (int i = 0; i < len; i++)
        for (int e = i < len_blocks ? dim_blocks : 0; e < head_dim; e++)
            dst[(size_t)e * lt + i] = src[(size_t)i * ld + e];
}

// dst rows (row stride ld, head_dim columns) from src [rows, dp]
static void store_rows(float *dst, size_t ld, const float *src, int dp, int rows, int head_dim) {
    for (int i = 0; i < rows; i++) memcpy(dst + (size_t)i * ld, src + (size_t)i * dp, (size_t)head_dim * sizeof(float));
}

// The keys a block of queries may see, as at most two windows [start, end) of whole TILE_COLS tiles, laid side by side
// in the score tile from column col: the length-L layout has one (keys [0, end)); a noisy block of the two-copy
// layout has two, the clean prefix and its own block, and the tiles between them are skipped (method §3.3).
typedef struct {
    int n, cols;               // windows, and score columns in all
    int start[2], end[2], col[2];
} key_windows;

static key_windows block_windows(const hdlm_attn_mask *mask, int i0, int nq) {
    hdlm_key_range u = hdlm_mask_rows_key_range(mask, i0, nq, false);
    key_windows w = {0};
    int prefix_end = round_up(u.prefix, TILE_COLS), lo = u.lo / TILE_COLS * TILE_COLS, hi = round_up(u.hi, TILE_COLS);
    if (u.lo < u.hi && lo <= prefix_end) {   // the windows touch: one
        prefix_end = hi > prefix_end ? hi : prefix_end;
        u.lo = u.hi;
    }
    if (prefix_end > 0) w.end[w.n++] = prefix_end;
    if (u.lo < u.hi) {
        w.start[w.n] = lo;
        w.end[w.n++] = hi;
    }
    for (int k = 0; k < w.n; k++) {
        w.col[k] = w.cols;
        w.cols += w.end[k] - w.start[k];
    }
    return w;
}

// Sets the score columns of a row that its range r masks to −inf; returns the end of its last allowed column
// rounded up to LANES (the width its softmax reads).
static int clamp_int(int x, int lo, int hi) { return x < lo ? lo : x > hi ? hi : x; }

static int mask_row(float *p, const key_windows *w, hdlm_key_range r) {
    int last = 0;
    for (int k = 0; k < w->n; k++) {
        int s = w->start[k], e = w->end[k];
        float *pk = p + w->col[k] - s;   // pk[j] is key j's column
        // allowed here: [s, a) and [b0, b1); prefix <= lo, so a <= b0
        int a = clamp_int(r.prefix, s, e), b0 = clamp_int(r.lo, a, e), b1 = clamp_int(r.hi, b0, e);
        for (int j = a; j < b0; j++) pk[j] = -INFINITY;
        for (int j = b1; j < e; j++) pk[j] = -INFINITY;
        int end = b1 > b0 ? b1 : a;
        if (end > s) last = w->col[k] + end - s;
    }
    return round_up(last, LANES);
}

// Scaled scores S = Q[i0:i0+nq] · K[windows]ᵀ / √head_dim into w->p.
static void block_scores(attention_work *w, const key_windows *win, int i0, int nq, int head_dim) {
    for (int k = 0; k < win->n; k++)
        block_product(nq, win->end[k] - win->start[k], w->dp, w->q + (size_t)i0 * w->dp, w->dp, 1,
                      w->kt + win->start[k], w->lt, w->p + win->col[k], w->lt, 1.0f / sqrtf((float)head_dim), false);
}

// C[nq, dp] = alpha · A[nq, windows] · Y[keys of the windows, dp], A a score tile (row stride lt), Y rows of dp.
static void block_times_keys(const attention_work *w, const key_windows *win, int nq, const float *a, const float *y,
                             float *c, float alpha) {
    for (int k = 0; k < win->n; k++)
        block_product(nq, w->dp, win->end[k] - win->start[k], a + win->col[k], w->lt, 1,
                      y + (size_t)win->start[k] * w->dp, w->dp, c, w->dp, alpha, k > 0);
}

// Y[keys of the windows, dp] += alpha · A[nq, windows]ᵀ · X[nq, dp]: dK and dV.
static void keys_accumulate(const attention_work *w, const key_windows *win, int nq, const float *a, const float *x,
                            float *y, float alpha) {
    for (int k = 0; k < win->n; k++)
        block_product(win->end[k] - win->start[k], w->dp, nq, a + win->col[k], 1, w->lt, x, w->dp,
                      y + (size_t)win->start[k] * w->dp, w->dp, alpha, true);
}

// Keep bits of one row (method §7.2): key j of a row whose first element has index row_start is at bit
// (row_start & 31) + j of its bits, row_words words (slack for that offset, padded keys and 8-byte reads).
static size_t keep_row_words(int len) { return (size_t)(round_up(len, TILE_COLS) + 191) / 32; }
// where row i of (batch, head) bh starts in the keep bits
static size_t keep_row(int bh, int len, int i) { return ((size_t)bh * len + (size_t)i) * keep_row_words(len); }

size_t hdlm_attention_keep_words(int batch, int heads, int len) {
    return (size_t)batch * heads * len * keep_row_words(len);
}

// The forward draws the keep bits of a row's keys below `end` in the windows; the backward reads them back.
static void row_keep_draw(uint32_t *bits, const key_windows *win, uint64_t row_start, int end, float dropout,
                          uint64_t key) {
    for (int k = 0; k < win->n; k++) {
        int stop = win->end[k] < end ? win->end[k] : end;
        uint64_t first = row_start + (uint64_t)win->start[k];
        if (stop > win->start[k])
            hdlm_dropout_keep_bits(bits + (first >> 5) - (row_start >> 5), key, first, stop - win->start[k], dropout);
    }
}

// A row's keep bits read by score column: column c of window k is key start[k] + c − col[k], whose bit is
// (row_start & 31) plus that key (row_keep_draw). Windows begin at multiples of TILE_COLS, so a vector of LANES
// columns lies in one. Columns of masked keys read whatever bits are there: their probabilities are 0.
typedef struct {
    const uint8_t *bits;
    int split, at[2];   // columns from split on are in the second window; column c's bit is at[window] + c
    vecf keep;          // 1/(1 − p)
} keep_columns;

static keep_columns row_keep_columns(const key_windows *win, const uint32_t *bits, uint64_t row_start, float dropout) {
    keep_columns kc = {(const uint8_t *)bits, win->n > 1 ? win->col[1] : INT_MAX, {0, 0},
                       vec_broadcast(1.0f / (1.0f - dropout))};
    for (int k = 0; k < win->n; k++) kc.at[k] = (int)(row_start & 31) + win->start[k] - win->col[k];
    return kc;
}

// The dropout multipliers (0 or 1/(1 − p)) of columns [j, j + LANES), j a multiple of LANES.
static inline vecf keep_scale(const keep_columns *kc, int j) {
    return (vecf)(hdlm_vec_bit_lanes(kc->bits, kc->at[j >= kc->split] + j) & (veci)kc->keep);
}

// Softmax of a score row over its allowed columns [0, hv) (the others there −inf), unnormalised: p gets
// exp(S − max), times the dropout multipliers when kc is given, and columns [hv, cols) zero. Returns the sum of the
// exponentials (without dropout); *max the row's maximum.
static float row_softmax(float *p, int hv, int cols, const keep_columns *kc, float *max) {
    vecf m = vec_broadcast(vec_max(p, hv)), sum = {0};
    for (int j = 0; j < hv; j += LANES) {
        vecf *pj = (vecf *)(p + j), e = hdlm_vec_exp_nonpositive(*pj - m);
        sum += e;
        *pj = kc ? e * keep_scale(kc, j) : e;
    }
    for (int j = hv; j < cols; j++) p[j] = 0.0f;
    *max = m[0];
    return vec_sum(sum);
}

size_t hdlm_attention_kv_floats(int capacity, int head_dim) {
    size_t dp = (size_t)round_up(head_dim, TILE_COLS), lp = (size_t)round_up(capacity, TILE_COLS);
    return dp * (lp + LANES) + lp * dp;   // Kᵀ [dp, lt] and V [lp, dp], as work_alloc lays them out
}

void hdlm_attention_rows(float *out, int ldo, const float *qkv, int ld, float *kv, int capacity, int q0, int n_settle,
                         int n, int head_dim, bool causal) {
    attention_work w = work_get(capacity, head_dim);
    int rows = n_settle + n, end = q0 + rows;
    // The products read the keys and values in place, from the store (this call's rows appended to it first).
    w.kt = kv;
    w.v = kv + (size_t)w.dp * w.lt;
    copy_transposed(w.kt + q0, w.lt, qkv + ld / 3, ld, rows, head_dim);
    copy_rows(w.v + (size_t)q0 * w.dp, w.dp, qkv + 2 * (ld / 3), ld, rows, head_dim);
    // Value rows past the keys (read with probability 0) zero, as the forward's padding is: never 0 · NaN. Key
    // columns past them need nothing: their scores are set to −inf.
    memset(w.v + (size_t)end * w.dp, 0, (size_t)(round_up(end, TILE_COLS) - end) * w.dp * sizeof(float));
    copy_rows(w.q, w.dp, qkv, ld, rows, head_dim);
    // Query blocks never mix the two groups: the settling rows' blocks, then the others'.
    for (int r0 = 0; r0 < rows;) {
        bool settle = r0 < n_settle;
        int group_end = settle ? n_settle : rows, nq = group_end - r0 < QUERY_BLOCK ? group_end - r0 : QUERY_BLOCK;
        bool row_causal = causal && !settle;
        int group_kv = settle ? q0 + n_settle : end, last_end = row_causal ? q0 + r0 + nq : group_kv;
        key_windows win = {1, round_up(last_end, TILE_COLS), {0}, {round_up(last_end, TILE_COLS)}, {0}};
        block_scores(&w, &win, r0, nq, head_dim);
        float inv_sum[QUERY_BLOCK], max;
        for (int r = 0; r < nq; r++) {
            int end = row_causal ? q0 + r0 + r + 1 : group_kv;
            float *p = w.p + (size_t)r * w.lt;
            int hv = mask_row(p, &win, (hdlm_key_range){end, end, end});
            inv_sum[r] = 1.0f / row_softmax(p, hv, win.cols, NULL, &max);
        }
        block_times_keys(&w, &win, nq, w.p, w.v, w.block, 1.0f);
        for (int r = 0; r < nq; r++)
            for (int e = 0; e < head_dim; e++) w.block[(size_t)r * w.dp + e] *= inv_sum[r];
        store_rows(out + (size_t)r0 * ldo, ldo, w.block, w.dp, nq, head_dim);
        r0 += nq;
    }
}

void hdlm_attention_forward(float *out, float *lse, uint32_t *keep, const float *qkv, const hdlm_attn_mask *mask,
                            int batch, int len, int heads, int head_dim, float dropout, uint64_t key) {
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
                key_windows win = block_windows(mask, i0, nq);
                block_scores(&w, &win, i0, nq, head_dim);
                // Softmax over the allowed keys with the dropout multipliers applied in the same pass. w.p gets the
                // unnormalised exp(S − max) ⊙ s; the 1/sum goes on the block's output rows instead.
                float inv_sum[QUERY_BLOCK];
                for (int r = 0; r < nq; r++) {
                    int i = i0 + r;
                    float *p = w.p + (size_t)r * w.lt;
                    hdlm_key_range kr = hdlm_mask_key_range(mask, i);
                    keep_columns kc = {0};
                    if (drop) {
                        uint32_t *bits = keep + keep_row(bh, len, i);
                        uint64_t row_start = row_base + (uint64_t)i * len;
                        row_keep_draw(bits, &win, row_start, hdlm_key_range_end(kr), dropout, key);
                        kc = row_keep_columns(&win, bits, row_start, dropout);
                    }
                    if (hdlm_mask_row_fully_masked(mask, i)) {
                        // all −inf scores are replaced by zeros: uniform over all L keys (one window [0, L) here)
                        for (int j = 0; j < len; j += LANES)
                            *(vecf *)(p + j) = drop ? keep_scale(&kc, j) : vec_broadcast(1.0f);
                        for (int j = len; j < win.cols; j++) p[j] = 0.0f;
                        inv_sum[r] = 1.0f / (float)len;
                        lse_bh[i] = 0.0f;
                        continue;
                    }
                    float max, total = row_softmax(p, mask_row(p, &win, kr), win.cols, drop ? &kc : NULL, &max);
                    lse_bh[i] = max + logf(total);
                    inv_sum[r] = 1.0f / total;
                }
                // O[i0:i0+nq] = P̃ · V[windows]
                block_times_keys(&w, &win, nq, w.p, w.v, w.block, 1.0f);
                for (int r = 0; r < nq; r++)
                    for (int e = 0; e < head_dim; e++) w.block[(size_t)r * w.dp + e] *= inv_sum[r];
                store_rows(o + (size_t)i0 * d, d, w.block, w.dp, nq, head_dim);
            }
        }
    }
}

void hdlm_attention_backward(float *dqkv, const float *dout, const float *out, const float *lse, const uint32_t *keep,
                             const float *qkv, const hdlm_attn_mask *mask, int batch, int len, int heads, int head_dim,
                             float dropout) {
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
                key_windows win = block_windows(mask, i0, nq);
                int cols = win.cols;
                block_scores(&w, &win, i0, nq, head_dim);
                // P from the saved log-sum-exp, and P̃ = P ⊙ dropout multipliers in w.pd (the same pass).
                float *pv = drop ? w.pd : w.p;
                for (int r = 0; r < nq; r++) {
                    int i = i0 + r;
                    float *p = w.p + (size_t)r * w.lt, *pd = pv + (size_t)r * w.lt;
                    keep_columns kc = {0};
                    if (drop) kc = row_keep_columns(&win, keep + keep_row(bh, len, i), row_base + (uint64_t)i * len,
                                                    dropout);
                    int hv;
                    if (hdlm_mask_row_fully_masked(mask, i)) {   // one window [0, L); past len zeroed below
                        hv = len;
                        vecf u = vec_broadcast(1.0f / (float)len);
                        for (int j = 0; j < hv; j += LANES) {
                            *(vecf *)(p + j) = u;
                            if (drop) *(vecf *)(pd + j) = u * keep_scale(&kc, j);
                        }
                    } else {
                        hv = mask_row(p, &win, hdlm_mask_key_range(mask, i));
                        vecf l = vec_broadcast(lse_bh[i]);
                        for (int j = 0; j < hv; j += LANES) {
                            vecf e = hdlm_vec_exp_nonpositive(*(vecf *)(p + j) - l);
                            *(vecf *)(p + j) = e;
                            if (drop) *(vecf *)(pd + j) = e * keep_scale(&kc, j);
                        }
                    }
                    for (int j = hv; j < cols; j++) p[j] = pd[j] = 0.0f;
                }
                const float *go_block = w.go + (size_t)i0 * w.dp;
                // dV[windows] += P̃ᵀ · dO ;  dP̃ = dO · V[windows]ᵀ
                keys_accumulate(&w, &win, nq, pv, go_block, w.dv, 1.0f);
                for (int k = 0; k < win.n; k++)
                    block_product(nq, win.end[k] - win.start[k], w.dp, go_block, w.dp, 1, w.vt + win.start[k], w.lt,
                                  w.dp_ + win.col[k], w.lt, 1.0f, false);
                // dS = P ⊙ (s ⊙ dP̃ − Σ_j P̃_j dP̃_j) = P̃ ⊙ dP̃ − P · D_i; zero on fully masked rows
                for (int r = 0; r < nq; r++) {
                    int i = i0 + r;
                    float *ds = w.dp_ + (size_t)r * w.lt;
                    if (hdlm_mask_row_fully_masked(mask, i)) {
                        memset(ds, 0, (size_t)cols * sizeof(float));
                        continue;
                    }
                    const float *p = w.p + (size_t)r * w.lt, *pd = pv + (size_t)r * w.lt;
                    float di = w.di[i];
#pragma omp simd
                    for (int j = 0; j < cols; j++) ds[j] = pd[j] * ds[j] - p[j] * di;
                }
                // dQ = scale · dS · K[windows] ;  dK[windows] += scale · dSᵀ · Q
                block_times_keys(&w, &win, nq, w.dp_, w.k, w.block, scale);
                store_rows(dq + (size_t)i0 * ld, ld, w.block, w.dp, nq, head_dim);
                keys_accumulate(&w, &win, nq, w.dp_, w.q + (size_t)i0 * w.dp, w.dk, scale);
            }
            store_rows(dq + d, ld, w.dk, w.dp, len, head_dim);
            store_rows(dq + 2 * d, ld, w.dv, w.dp, len, head_dim);
        }
    }
}

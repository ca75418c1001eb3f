// Weights packed once for repeated products with few rows (the KV-cached inference forward, method §3.5): C = A·Wᵀ
// with W[n, k] row-major (nn.Linear layout). BLIS packs W on every call, which dominates a call with a few dozen rows
// (the 50258-row head: 34 GFLOP/s at 64 rows); here W is packed once into panels of PANEL outputs. Evaluation's
// forwards use it too (hundreds of rows of the output layer, each written to its place: hdlm_sgemm_packed_rows).
//
// The sum for every output reproduces BLIS's own arithmetic (see include/hdlm/blas.h), so a cached step gives the
// same bits as the uncached forward: k is cut into BLIS's KC blocks (blocks of kc_def, the rest taken whole once it
// is <= kc_max); inside a block one FMA chain in k order starting from 0; the blocks' partial sums are added in order
// (first block: C = sum; later blocks: C = C + sum).
#include <blis.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "blas_internal.h"
#include "hdlm/blas.h"
#include "hdlm/common.h"

enum { PANEL = 32, ROWS = 8 };

void hdlm_packed_weights_init(hdlm_packed_weights *p, const float *w, int n, int k) {
    hdlm_blas_init(0);
    p->n = n;
    p->k = k;
    if (hdlm_blas_own_kernel()) {
        p->kc_def = p->kc_max = DEPTH_BLOCK;   // hdlm_sgemm_kernel's blocks
    } else {
        cntx_t *cntx = (cntx_t *)bli_gks_query_cntx();
        p->kc_def = (int)bli_cntx_get_blksz_def_dt(BLIS_FLOAT, BLIS_KC, cntx);
        p->kc_max = (int)bli_cntx_get_blksz_max_dt(BLIS_FLOAT, BLIS_KC, cntx);
    }
    int panels = (n + PANEL - 1) / PANEL;
    p->data = hdlm_aligned_malloc((size_t)panels * k * PANEL * sizeof(float));   // a panel row: two whole lines
    // A transpose of each 32-row slab of W, in blocks of 64 columns (reads along rows, writes within an 8 KB block).
#pragma omp parallel for schedule(static)
    for (int q = 0; q < panels; q++) {
        float *dst = p->data + (size_t)q * k * PANEL;
        for (int i0 = 0; i0 < k; i0 += 64) {
            int i1 = i0 + 64 < k ? i0 + 64 : k;
            for (int j = 0; j < PANEL; j++) {
                int o = q * PANEL + j;
                for (int i = i0; i < i1; i++) dst[(size_t)i * PANEL + j] = o < n ? w[(size_t)o * k + i] : 0.0f;
            }
        }
    }
}

void hdlm_packed_weights_free(hdlm_packed_weights *p) {
    free(p->data);
    memset(p, 0, sizeof *p);
}

// One row of a tile's sums into C: cr[j] = (first ? 0 : cr[j]) + sum[j], then + bias[j], then + *row_add (each NULL:
// none), rounded as separate passes would; j < cols.
static inline void store_row(float *cr, const float *sum, int cols, bool first, const float *bias,
                             const float *row_add) {
    for (int j = 0; j < cols; j++) {
        float v = first ? sum[j] : cr[j] + sum[j];
        if (bias) v += bias[j];
        if (row_add) v += *row_add;
        cr[j] = v;
    }
}

// Where row r of a tile's C block starts: c + r·ldc, or c_rows[r] + col when the rows are scattered (c_rows given).
static inline float *c_row(float *c, int ldc, float *const *c_rows, int col, int r) {
    return c_rows ? c_rows[r] + col : c + (size_t)r * ldc;
}

// Rows r0..r0+rows-1 (rows <= ROWS) of A times one panel over k in [k0, k1): C (cols valid columns) = or += the sum,
// then (the last block) + bias[j], then + row_add[r] (each NULL: none), as separate passes would round them.
// Rows beyond `rows` repeat the last row (computed, not stored), so the compiler keeps a fixed register tile.
// Meanwhile `ahead` floats from `next` on (the next panel's share of this tile, or NULL) are fetched into L2: a large
// matrix (the 50258-row head) streams from memory, and the next panel then waits for no load (+25 % at 64 rows).
// `tile` (a constant where inlined: 1, 2, 4 or ROWS) is the rows the registers hold: one row (a token of
// autoregressive generation) computed as eight repeated ones took eight times the FMAs its weight stream needs.
static inline __attribute__((always_inline)) void panel_tile_fixed(int tile, const float *a, int lda, int rows,
                                                                   const float *panel, int k0, int k1, float *c,
                                                                   int ldc, float *const *c_rows, int col, int cols,
                                                                   bool first, const float *bias,
                                                                   const float *row_add, const float *next,
                                                                   int ahead) {
    const float *ar[ROWS];
    for (int r = 0; r < tile; r++) ar[r] = a + (size_t)(r < rows ? r : rows - 1) * lda;
    int step = next ? (ahead + k1 - k0 - 1) / (k1 - k0) : 0;   // floats to fetch per k, rounded up
#if defined(__AVX512F__)
    __m512 acc[ROWS][2];
    for (int r = 0; r < tile; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int i = k0; i < k1; i++) {
        if (next && (i - k0) * step < ahead) {
            _mm_prefetch((const char *)(next + (size_t)(i - k0) * step), _MM_HINT_T1);
            // a tile of fewer rows has the panel alone (step: 32 floats, two lines); a loop here cost the 8-row
            // tile registers
            if (tile < ROWS) _mm_prefetch((const char *)(next + (size_t)(i - k0) * step + 16), _MM_HINT_T1);
        }
        __m512 w0 = _mm512_loadu_ps(panel + (size_t)i * PANEL), w1 = _mm512_loadu_ps(panel + (size_t)i * PANEL + 16);
        for (int r = 0; r < tile; r++) {
            __m512 x = _mm512_set1_ps(ar[r][i]);
            acc[r][0] = _mm512_fmadd_ps(x, w0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(x, w1, acc[r][1]);
        }
    }
    __mmask16 m0 = cols >= 16 ? 0xFFFF : (__mmask16)((1u << cols) - 1);
    __mmask16 m1 = cols >= 32 ? 0xFFFF : cols <= 16 ? 0 : (__mmask16)((1u << (cols - 16)) - 1);
    __m512 b0 = bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps();
    __m512 b1 = bias ? _mm512_maskz_loadu_ps(m1, bias + 16) : _mm512_setzero_ps();
    for (int r = 0; r < rows; r++) {
        float *cr = c_row(c, ldc, c_rows, col, r);
        if (!first) {
            acc[r][0] = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, cr), acc[r][0]);
            acc[r][1] = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, cr + 16), acc[r][1]);
        }
        if (bias) acc[r][0] = _mm512_add_ps(acc[r][0], b0), acc[r][1] = _mm512_add_ps(acc[r][1], b1);
        if (row_add) {
            __m512 s = _mm512_set1_ps(row_add[r]);
            acc[r][0] = _mm512_add_ps(acc[r][0], s), acc[r][1] = _mm512_add_ps(acc[r][1], s);
        }
        _mm512_mask_storeu_ps(cr, m0, acc[r][0]);
        _mm512_mask_storeu_ps(cr + 16, m1, acc[r][1]);
    }
#elif defined(__AVX2__) && defined(__FMA__)
    // 16 ymm registers: the tile in blocks of 2 rows × 32 columns (8 accumulators, 13 registers in all; the whole
    // 8 × 32 tile as one spilled every update and ran the cached path at 60–65 % of the uncached one's rate).
    const int block = tile < 2 ? tile : 2, vecs = 4, width = 8 * vecs;
    for (int r0 = 0; r0 < rows; r0 += block)
        for (int h = 0; h < PANEL / width && width * h < cols; h++) {
            __m256 acc[2][4];
            for (int r = 0; r < block; r++)
                for (int v = 0; v < vecs; v++) acc[r][v] = _mm256_setzero_ps();
            const float *w = panel + width * h;
            for (int i = k0; i < k1; i++) {
                if (r0 == 0 && h == 0 && next && (i - k0) * step < ahead) {
                    _mm_prefetch((const char *)(next + (size_t)(i - k0) * step), _MM_HINT_T1);
                    if (tile < ROWS) _mm_prefetch((const char *)(next + (size_t)(i - k0) * step + 16), _MM_HINT_T1);
                }
                __m256 wv[4];
                for (int v = 0; v < vecs; v++) wv[v] = _mm256_loadu_ps(w + (size_t)i * PANEL + 8 * v);
                for (int r = 0; r < block; r++) {
                    __m256 x = _mm256_broadcast_ss(ar[r0 + r] + i);
                    for (int v = 0; v < vecs; v++) acc[r][v] = _mm256_fmadd_ps(x, wv[v], acc[r][v]);
                }
            }
            float sum[2][32];   // stored with fixed indices, so that acc stays in registers
            for (int r = 0; r < block; r++)
                for (int v = 0; v < vecs; v++) _mm256_storeu_ps(sum[r] + 8 * v, acc[r][v]);
            int part = cols - width * h < width ? cols - width * h : width;
            for (int r = 0; r < block && r0 + r < rows; r++)
                store_row(c_row(c, ldc, c_rows, col, r0 + r) + width * h, sum[r], part, first,
                          bias ? bias + width * h : NULL, row_add ? row_add + r0 + r : NULL);
        }
#else
    (void)step;   // no prefetch here
    float acc[ROWS][PANEL];
    memset(acc, 0, sizeof acc);
    for (int i = k0; i < k1; i++)
        for (int r = 0; r < tile; r++) {
            float x = ar[r][i];
#pragma omp simd
            for (int j = 0; j < PANEL; j++) acc[r][j] = fmaf(x, panel[(size_t)i * PANEL + j], acc[r][j]);
        }
    for (int r = 0; r < rows; r++)
        store_row(c_row(c, ldc, c_rows, col, r), acc[r], cols, first, bias, row_add ? row_add + r : NULL);
#endif
}

static void panel_tile(const float *a, int lda, int rows, const float *panel, int k0, int k1, float *c, int ldc,
                       float *const *c_rows, int col, int cols, bool first, const float *bias, const float *row_add,
                       const float *next, int ahead) {
#define PANEL_TILE(tile) \
    panel_tile_fixed(tile, a, lda, rows, panel, k0, k1, c, ldc, c_rows, col, cols, first, bias, row_add, next, ahead)
    if (rows == 1) PANEL_TILE(1);
    else if (rows == 2) PANEL_TILE(2);
    else if (rows <= 4) PANEL_TILE(4);
    else PANEL_TILE(ROWS);
#undef PANEL_TILE
}

// C's rows at c + r·ldc, or at c_rows[r] (c NULL).
static void packed_product(int m, const float *a, int lda, const hdlm_packed_weights *w, const float *bias,
                           const float *row_add, float *c, int ldc, float *const *c_rows) {
    int panels = (w->n + PANEL - 1) / PANEL, k = w->k, tiles = (m + ROWS - 1) / ROWS;
    // One task per group of panels: every row tile passes over the group's panels in turn and writes its C rows in
    // runs of group · PANEL columns. Panel by panel (the KV cache's few rows: the panel stays in L1 for every tile),
    // the head at width 128 and 512 rows ran at 50 % of the FMA peak; in groups at 75–85 % (docs/evaluation.md). From
    // 16 tiles on, a group's block of weights fills up to an eighth of L2; each tile also fetches its share of the next
    // group's block into L2 (>= 2 tiles per panel of the group: a fetch per k of <= 16 floats, one line).
    size_t block_bytes = (size_t)(k <= w->kc_max ? k : w->kc_def) * PANEL * sizeof(float);
    int group = tiles < 16 ? 1 : (int)(hdlm_l2_bytes() / 8 / block_bytes);
    group = group < tiles / 2 ? group : tiles / 2;
    group = group < 1 ? 1 : group;
    int groups = (panels + group - 1) / group, per_panel = tiles / group;   // tiles fetching each next panel
    // On threads above about a million multiply-adds, a row count below a tile counted as a whole tile: a product of
    // one row (a token of autoregressive generation) is as long as one of eight, streaming the weights.
#pragma omp parallel for schedule(static) if ((size_t)tiles * ROWS * w->n * k > (1u << 20))
    for (int g = 0; g < groups; g++) {
        int q0 = g * group, q1 = q0 + group < panels ? q0 + group : panels;
        for (int k0 = 0; k0 < k;) {
            int k1 = k - k0 <= w->kc_max ? k : k0 + w->kc_def, span = (k1 - k0) * PANEL;   // floats of a panel's block
            int share = (span + per_panel - 1) / per_panel;
            for (int r0 = 0, t = 0; r0 < m; r0 += ROWS, t++) {
                // this tile's share of the next group's blocks: part t % per_panel of panel q1 + t / per_panel
                int next_q = q1 + t / per_panel, part = t % per_panel * share;
                bool fetch = next_q < panels && next_q < q1 + group && part < span;
                const float *next = fetch ? w->data + (size_t)next_q * k * PANEL + (size_t)k0 * PANEL + part : NULL;
                int ahead = span - part < share ? span - part : share;
                for (int q = q0; q < q1; q++) {
                    int cols = w->n - q * PANEL < PANEL ? w->n - q * PANEL : PANEL;
                    panel_tile(a + (size_t)r0 * lda, lda, m - r0 < ROWS ? m - r0 : ROWS,
                               w->data + (size_t)q * k * PANEL, k0, k1,
                               c ? c + (size_t)r0 * ldc + (size_t)q * PANEL : NULL, ldc,
                               c_rows ? c_rows + r0 : NULL, q * PANEL, cols, k0 == 0,
                               k1 == k && bias ? bias + (size_t)q * PANEL : NULL,
                               k1 == k && row_add ? row_add + r0 : NULL, q == q0 ? next : NULL, ahead);
                }
            }
            k0 = k1;
        }
    }
}

void hdlm_sgemm_packed(int m, const float *a, int lda, const hdlm_packed_weights *w, const float *bias,
                       const float *row_add, float *c, int ldc) {
    packed_product(m, a, lda, w, bias, row_add, c, ldc, NULL);
}

void hdlm_sgemm_packed_rows(int m, const float *a, int lda, const hdlm_packed_weights *w, const float *bias,
                            const float *row_add, float *const *c_rows) {
    packed_product(m, a, lda, w, bias, row_add, NULL, 0, c_rows);
}

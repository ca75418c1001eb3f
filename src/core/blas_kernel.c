// hdlm's own fp32 GEMM for AVX-512 CPUs (dispatched from src/core/blas.c). BLIS 0.9 has no Zen 4/5 kernels: its `skx`
// sgemm reaches 74–85 % of a core's FMA peak on the DDiT's shapes there, this one 85–93 % (docs/model.md).
//
// C[m, n] = alpha · op(A) · op(B) + beta · C, row-major. C is computed in tiles of KERNEL_ROWS × KERNEL_COLS
// accumulators held in registers (8 × 48: 24 of the 32 zmm registers). The depth k runs in blocks of DEPTH_BLOCK
// (the last one shorter): per element one FMA chain per block, from zero in k order, and the blocks' sums added to
// C in order. hdlm_sgemm_packed (src/core/blas_packed.c) does the same arithmetic, so the two give the same bits.
//   - B is packed per 48-column panel and depth block into [depth][48] (zero-padded): the kernel reads it from L2.
//   - A is read in place, one broadcast per row and k, when its rows run along k. A transposed A is packed first,
//     per depth block and block of rows, into [tile][depth][8]: read in place, every k would be a new cache line.
//   - A weight's gradient Aᵀ·B with more rows than columns may run as its transpose, tiles stored transposed.
// Threads claim groups of up to 4 column panels one at a time, each row tile passing over the group's panels while
// its A rows sit in L1 (or split the row tiles when there are fewer panels than threads); every element is computed
// in the same order whichever thread runs it, so results do not depend on the threads.
#include <omp.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "blas_internal.h"
#include "core/simd.h"
#include "hdlm/common.h"

#if defined(__AVX512F__)

// x rounded as written: never fused with the operation it feeds (GCC 12, clang 15 on; the fuzz targets' older clang
// may fuse, which changes no result they check).
#if defined(__has_builtin)
#if __has_builtin(__builtin_assoc_barrier)
#define ROUNDED(x) __builtin_assoc_barrier(x)
#endif
#endif
#ifndef ROUNDED
#define ROUNDED(x) (x)
#endif

enum { KERNEL_VECS = 3, KERNEL_ROWS = 8, KERNEL_COLS = LANES * KERNEL_VECS };
_Static_assert(LANES == 2 * KERNEL_ROWS, "the transposed store (kernel) puts two tile columns in one vector");
// Rows of a transposed A packed at a time (with DEPTH_BLOCK: 4 MB, shared by the threads).
enum { PACKED_A_ROWS = 128 * KERNEL_ROWS };
// The most panels of B a thread packs and multiplies together (at most half of L2, below).
enum { MAX_PANEL_GROUP = 4 };
// Tiles at most this deep fetch their next C tile ahead (hdlm_sgemm_kernel says why).
enum { SHALLOW_DEPTH = 256 };

static int min_int(int a, int b) { return a < b ? a : b; }

// Where thread t of nt starts in a range of `count` items.
static int share_start(int count, int t, int nt) { return (int)((long)count * t / nt); }

// A buffer of at least `floats` floats, 64-byte aligned, kept for the thread's later calls.
static float *thread_buffer(float **buf, size_t *cap, size_t floats) {
    if (floats > *cap) {
        free(*buf);
        *buf = hdlm_aligned_malloc(floats * sizeof(float));
        *cap = floats;
    }
    return *buf;
}
static _Thread_local float *packed_b, *packed_a;
static _Thread_local size_t packed_b_cap, packed_a_cap;

// C[rows, cols] = alpha · Σ_{k < depth} A(r, k) · bp[k][0:48] + (beta == 0 ? 0 : beta · C), then + bias[j] when
// bias is given (a second rounding, as a separate bias pass would do), with A(r, k) = a[r·a_row + k·a_k]; rows ≤ 8,
// cols ≤ 48. Edge tiles compute the full tile and store the valid part.
static inline void kernel(int depth, const float *a, size_t a_row, size_t a_k, const float *bp, float *c, size_t ldc,
                          int rows, int cols, float alpha, float beta, const float *bias, bool c_transposed,
                          const float *c_next) {
    const float *ar[KERNEL_ROWS];
    for (int r = 0; r < KERNEL_ROWS; r++) ar[r] = a + (size_t)(r < rows ? r : rows - 1) * a_row;
    vecf acc[KERNEL_ROWS][KERNEL_VECS];
    for (int r = 0; r < KERNEL_ROWS; r++)
        for (int v = 0; v < KERNEL_VECS; v++) acc[r][v] = (vecf){0};
    if (c_next)   // the lines of the thread's next C tile, for writing (the caller says why)
        for (int r = 0; r < KERNEL_ROWS; r++)
            for (int v = 0; v < KERNEL_VECS; v++) __builtin_prefetch(c_next + (size_t)r * ldc + v * LANES, 1, 3);
    for (int k = 0; k < depth; k++) {
        const vecf *bk = (const vecf *)(bp + (size_t)k * KERNEL_COLS);
        vecf bv[KERNEL_VECS];
        for (int v = 0; v < KERNEL_VECS; v++) bv[v] = bk[v];
        for (int r = 0; r < KERNEL_ROWS; r++) {
            vecf x = ar[r][(size_t)k * a_k] - (vecf){0};   // broadcast
            for (int v = 0; v < KERNEL_VECS; v++) acc[r][v] += x * bv[v];
        }
    }
    // C's update, the same in every store below (vector, transposed, scalar edges): each product rounded, then
    // added. The barriers keep the compiler from fusing one into an FMA, which it did in some stores and not in
    // others: an element then got other bits at a tile's edge, or in a product run transposed.
#define UPDATE(cv, sum)                                                                                                \
    (beta == 0.0f   ? alpha * (sum)                                                                                    \
     : beta == 1.0f ? (cv) + ROUNDED(alpha * (sum))                                                                   \
                    : ROUNDED(alpha * (sum)) + ROUNDED(beta * (cv)))
    if (c_transposed && rows == KERNEL_ROWS && cols == KERNEL_COLS) {
        // Tile element (r, j) to c[j·ldc + r]: the 8 × 8 blocks of each accumulator column transposed in registers,
        // after which lanes 0–7 of t[j] hold tile column 16v + j and lanes 8–15 column 16v + 8 + j.
        typedef float vec_rows __attribute__((vector_size(KERNEL_ROWS * sizeof(float)), aligned(sizeof(float))));
        for (int v = 0; v < KERNEL_VECS; v++) {
            vecf t[KERNEL_ROWS];
            for (int r = 0; r < KERNEL_ROWS; r++) t[r] = acc[r][v];
            hdlm_vec_transpose_blocks(t, KERNEL_ROWS);
            for (int j = 0; j < LANES; j++) {
                vecf col = t[j % KERNEL_ROWS];
                vec_rows x = j < KERNEL_ROWS ? __builtin_shufflevector(col, col, 0, 1, 2, 3, 4, 5, 6, 7)
                                             : __builtin_shufflevector(col, col, 8, 9, 10, 11, 12, 13, 14, 15);
                vec_rows *cj = (vec_rows *)(c + (size_t)(v * LANES + j) * ldc);
                *cj = UPDATE(*cj, x);
            }
        }
        return;
    }
    if (!c_transposed && rows == KERNEL_ROWS && cols == KERNEL_COLS) {
        for (int r = 0; r < KERNEL_ROWS; r++) {
            vecf_unaligned *cr = (vecf_unaligned *)(c + (size_t)r * ldc);
            for (int v = 0; v < KERNEL_VECS; v++) {
                cr[v] = UPDATE(cr[v], acc[r][v]);
                if (bias) cr[v] += ((const vecf_unaligned *)bias)[v];
            }
        }
        return;
    }
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < cols; j++) {
            float sum = acc[r][j / LANES][j % LANES];
            float *cj = c_transposed ? c + (size_t)j * ldc + r : c + (size_t)r * ldc + j;
            *cj = UPDATE(*cj, sum);
            if (bias) *cj += bias[j];
        }
#undef UPDATE
}

// B(k, j) = b[k·b_k + j·b_j] for k in [k0, k0 + depth) and j in [j0, j0 + 48) into bp[depth][48], zero beyond n.
static void pack_b(float *bp, const float *b, size_t b_k, size_t b_j, int n, int k0, int depth, int j0) {
    int cols = min_int(n - j0, KERNEL_COLS);
    if (b_j == 1) {
        for (int k = 0; k < depth; k++) {
            float *dst = bp + (size_t)k * KERNEL_COLS;
            memcpy(dst, b + (size_t)(k0 + k) * b_k + j0, (size_t)cols * sizeof(float));
            memset(dst + cols, 0, (size_t)(KERNEL_COLS - cols) * sizeof(float));
        }
        return;
    }
    // The rows of the source are columns of B: LANES × LANES blocks, one source row after the other (each read as
    // one stream), transposed in registers.
    int whole = cols == KERNEL_COLS ? depth / LANES * LANES : 0;
    for (int j1 = 0; j1 < KERNEL_COLS && whole > 0; j1 += LANES)
        for (int k = 0; k < whole; k += LANES) {
            vecf x[LANES];
            for (int r = 0; r < LANES; r++) memcpy(&x[r], b + (size_t)(j0 + j1 + r) * b_j + k0 + k, sizeof x[r]);
            hdlm_vec_transpose(x);
            for (int r = 0; r < LANES; r++) *(vecf *)(bp + (size_t)(k + r) * KERNEL_COLS + j1) = x[r];
        }
    for (int j = 0; j < KERNEL_COLS; j++)
        for (int k = whole; k < depth; k++)
            bp[(size_t)k * KERNEL_COLS + j] = j < cols ? b[(size_t)(j0 + j) * b_j + k0 + k] : 0.0f;
}

// Tiles [t0, t1) of a transposed A (A(r, k) = a[r + k·a_k]), rows from r_base, depths [k0, k0 + depth), into
// ap[tile - t_base][depth][8], rows beyond m zero. A few depths at a time across all the tiles: each source row is
// then read as one stream of whole cache lines (tile by tile, every k read half a line: the packing took ≈ 8 % of a
// dW product, now ≈ 6 %).
static void pack_a_transposed(float *ap, const float *a, size_t a_k, int m, int k0, int depth, int t_base, int t0,
                              int t1) {
    enum { DEPTH_STEP = 16 };
    for (int kb = 0; kb < depth; kb += DEPTH_STEP)
        for (int t = t0; t < t1; t++) {
            float *dst = ap + (size_t)(t - t_base) * depth * KERNEL_ROWS;
            int r0 = t * KERNEL_ROWS, rows = min_int(m - r0, KERNEL_ROWS);
            for (int k = kb; k < min_int(depth, kb + DEPTH_STEP); k++) {
                const float *src = a + (size_t)(k0 + k) * a_k + r0;
                if (rows == KERNEL_ROWS) memcpy(dst + (size_t)k * KERNEL_ROWS, src, KERNEL_ROWS * sizeof(float));
                else
                    for (int r = 0; r < KERNEL_ROWS; r++) dst[(size_t)k * KERNEL_ROWS + r] = r < rows ? src[r] : 0.0f;
            }
        }
}

static void scale_c(int m, int n, float beta, float *c, int ldc, const float *bias) {
    for (int r = 0; r < m; r++)
        for (int j = 0; j < n; j++) {
            float *cj = c + (size_t)r * ldc + j;
            *cj = beta == 0.0f ? 0.0f : beta * *cj;
            if (bias) *cj += bias[j];
        }
}

void hdlm_sgemm_kernel(int threads, bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a,
                       int lda, const float *b, int ldb, float beta, float *c, int ldc, const float *bias) {
    if (m == 0 || n == 0) return;
    if (k == 0) {
        scale_c(m, n, beta, c, ldc, bias);
        return;
    }
    // Aᵀ·B with more rows than columns (a weight's gradient dYᵀ·X with more outputs than inputs: the head's, 50,257 ×
    // 768) may run as its transpose Xᵀ·dY, each tile stored transposed: the operand packed transposed is then the
    // smaller one, in one block of rows instead of dozens, each a stage that packs B again behind two barriers. With
    // two threads that paid on every such shape (head +2–3 points of the peak, width 128's head +10–18); on one
    // thread only when n is under one panel group (the small preset's width-128 head), since on wider ones the
    // stores, 48 rows of C per tile, cost 3–5 %. Every element is the same FMA chain either way: the same bits.
    bool c_transposed = trans_a && !trans_b && bias == NULL && m > n &&
                        (threads > 1 || n < MAX_PANEL_GROUP * KERNEL_COLS);
    if (c_transposed) {
        const float *t = a;
        a = b, b = t;
        int l = lda;
        lda = ldb, ldb = l;
        int r = m;
        m = n, n = r;
    }
    size_t a_row = trans_a ? 1 : (size_t)lda, a_k = trans_a ? (size_t)lda : 1;
    size_t b_k = trans_b ? 1 : (size_t)ldb, b_j = trans_b ? (size_t)ldb : 1;
    int tiles = (m + KERNEL_ROWS - 1) / KERNEL_ROWS, panels = (n + KERNEL_COLS - 1) / KERNEL_COLS;
    // Panels go in groups: a tile of A then stays in L1 across the group's panels instead of coming from L3 once per
    // panel (the A of a 1024-row product is 3 MB; an Intel Xeon's L3 fed it too slowly, docs/model.md). The group's
    // packed panels fill at most half of L2, and at least 4 groups per thread are left for the claiming below.
    size_t panel_bytes = (size_t)min_int(k, DEPTH_BLOCK) * KERNEL_COLS * sizeof(float);
    int group = min_int(min_int(MAX_PANEL_GROUP, (int)(hdlm_l2_bytes() / 2 / panel_bytes)), panels / (4 * threads));
    group = group < 1 ? 1 : group;
    // The last threads × group panels go in half groups: a call ends when its slower thread's last unit does, and on
    // a shared host one thread is often slowed for a while (a thread at half speed: 768-wide products +3–8 points of
    // the peak; the same when both run alike).
    int half = threads > 1 && group > 1 ? group / 2 : group;
    int grouped = half == group ? panels / group : panels > threads * group ? (panels - threads * group) / group : 0;
    int units = grouped + (panels - grouped * group + half - 1) / half;
    bool split_panels = units >= threads;
    // A transposed A is packed in blocks of rows; otherwise one "block" holds every row.
    int block_tiles = trans_a ? PACKED_A_ROWS / KERNEL_ROWS : tiles;
    float *ap = trans_a ? thread_buffer(&packed_a, &packed_a_cap,
                                        (size_t)min_int(tiles, block_tiles) * KERNEL_ROWS * min_int(k, DEPTH_BLOCK))
                        : NULL;
    // Groups of panels are claimed one at a time from a counter per stage (depth block × row block): on a shared
    // machine one thread often runs slower (interrupts, a neighbour), and a fixed half each left the other waiting
    // 2–4 % of a product. Every element must still sum its depth blocks in order, on whichever thread: with a shared
    // packed A, a stage starts when the last one is done (a barrier); with A read in place, a group waits only for
    // its own previous block (done[group]: its blocks finished), as the 50 barriers of the head's d-input product
    // (k = 50,257) left a thread idle at each.
    int depth_blocks = (k + DEPTH_BLOCK - 1) / DEPTH_BLOCK, row_blocks = (tiles + block_tiles - 1) / block_tiles;
    int stages = depth_blocks * row_blocks, claimed[split_panels ? stages : 1];
    memset(claimed, 0, sizeof claimed);
    bool ordered = split_panels && !trans_a && stages > 1;
    _Atomic int done[ordered ? units : 1];
    for (int u = 0; u < (ordered ? units : 1); u++) atomic_init(&done[u], 0);
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads(), stage = 0;
        float *bp = thread_buffer(&packed_b, &packed_b_cap, (size_t)group * DEPTH_BLOCK * KERNEL_COLS);
        for (int k0 = 0; k0 < k; k0 += DEPTH_BLOCK) {
            int depth = min_int(k - k0, DEPTH_BLOCK);
            float beta_now = k0 == 0 ? beta : 1.0f;
            const float *bias_now = k0 + depth == k ? bias : NULL;   // on after the last depth block
            for (int tb0 = 0; tb0 < tiles; tb0 += block_tiles, stage++) {
                int tb1 = min_int(tiles, tb0 + block_tiles), count = tb1 - tb0;
                // this thread's share of the block's tiles: what it packs, and what it computes when splitting tiles
                int s0 = tb0 + share_start(count, t, nt), s1 = tb0 + share_start(count, t + 1, nt);
                int q0 = split_panels ? tb0 : s0, q1 = split_panels ? tb1 : s1;
                if (trans_a) {
                    // Shared packed block: every thread packs its share, after all have finished with the last one.
#pragma omp barrier
                    pack_a_transposed(ap, a, a_k, m, k0, depth, tb0, s0, s1);
                }
                if (trans_a || (split_panels && stage > 0 && !ordered)) {
#pragma omp barrier
                }
                for (int next = 0;;) {
                    int u = next++;   // splitting tiles: every group; else the next unclaimed one of this stage
                    if (split_panels) {
#pragma omp atomic capture
                        u = claimed[stage]++;
                    }
                    if (u >= units) break;
                    // (a short wait: the group's last block is running on another thread; yield if the machine
                    // has more threads than cores)
                    for (int spin = 0; ordered && atomic_load_explicit(&done[u], memory_order_acquire) < stage; spin++)
                        spin < 4096 ? __builtin_ia32_pause() : (void)sched_yield();
                    int p0 = u < grouped ? u * group : grouped * group + (u - grouped) * half;
                    int p1 = min_int(panels, p0 + (u < grouped ? group : half));
                    for (int p = p0; p < p1; p++)
                        pack_b(bp + (size_t)(p - p0) * depth * KERNEL_COLS, b, b_k, b_j, n, k0, depth, p * KERNEL_COLS);
                    for (int q = q0; q < q1; q++) {
                        int r0 = q * KERNEL_ROWS, rows = min_int(m - r0, KERNEL_ROWS);
                        const float *at = trans_a ? ap + (size_t)(q - tb0) * depth * KERNEL_ROWS
                                                  : a + (size_t)r0 * a_row + k0;
                        for (int p = p0; p < p1; p++) {
                            int j0 = p * KERNEL_COLS, cols = min_int(n - j0, KERNEL_COLS);
                            const float *bg = bp + (size_t)(p - p0) * depth * KERNEL_COLS;
                            const float *bias_j = bias_now ? bias_now + j0 : NULL;
                            // A shallow tile stores its C faster than the FMAs hide the reads for ownership of
                            // those lines: the kernel fetches its next tile's (the group's next panel, else the next
                            // row tile's first) for writing. Width 128's output layer (512 × 128 → 50,258): one
                            // thread 57–58 → 74–77 % of the peak, two 53–60 → 65–73 %; from depth 768 on no change.
                            // Only this thread's next tile: the next group's lines, fetched for writing, went back
                            // and forth with the thread that claimed it (two threads, 512 × 128 → 384: 95 → 82 %).
                            float *ct = c_transposed ? c + (size_t)j0 * ldc + r0 : c + (size_t)r0 * ldc + j0;
                            const float *next = depth > SHALLOW_DEPTH || c_transposed ? NULL
                                                : p + 1 < p1              ? ct + KERNEL_COLS
                                                : q + 1 < q1 ? c + (size_t)(r0 + KERNEL_ROWS) * ldc + p0 * KERNEL_COLS
                                                             : NULL;
                            // three calls: each kernel compiled for its constant stride and store
                            if (c_transposed)
                                kernel(depth, at, 1, KERNEL_ROWS, bg, ct, ldc, rows, cols, alpha, beta_now, NULL, true,
                                       NULL);
                            else if (trans_a)
                                kernel(depth, at, 1, KERNEL_ROWS, bg, ct, ldc, rows, cols, alpha, beta_now, bias_j,
                                       false, next);
                            else
                                kernel(depth, at, a_row, 1, bg, ct, ldc, rows, cols, alpha, beta_now, bias_j, false,
                                       next);
                        }
                    }
                    if (ordered) atomic_store_explicit(&done[u], stage + 1, memory_order_release);
                }
            }
        }
    }
}

#endif

// src/cuda/attention.cu — flash attention under a hyperschedule mask (method §3.2), the GPU twin of
// src/model/layer_attention.c. Shapes: qkv bf16 [N, 3d] with q | k | v of [H heads × D], out bf16 [N, d],
// lse fp32 [B, H, L].
//
// Head dim 64 (the models' head size) runs on tensor cores (mma.sync bf16, see "tensor-core path" below); every other
// even D <= 128 runs the SIMT kernels. Both share the mask, dropout and uniform-row rules and the tile shape.
// SIMT design (fp32 in shared memory and registers):
// - Tiles of TILE = 64 rows, TILE_SPLIT = 4 threads per row (256 threads). Q/K/V/dO tiles are converted to fp32 in
//   shared memory with rows padded to DP + 1 floats (DP = D rounded up to 32, 64 or 128, zero-filled), so every
//   even D <= 128 runs through three instantiations. A thread owns the score columns c ≡ sub (mod 4) of its row (the
//   four threads of a row read four consecutive padded rows of K: no bank conflicts) and the output dims ≡ sub.
// - Masks: row i may see the keys of hdlm_mask_key_range, [0, prefix) ∪ [lo, hi) (one range from key 0 for the
//   length-L layout; the clean prefix and the row's own block for a noisy row of the two-copy layout, method §3.3),
//   so a query tile visits only the key tiles that meet the union of its rows' ranges (tile_visits) and the
//   per-element rule is hdlm_key_range_has.
//   A fully masked row (worthless, i > a_end) attends uniformly to all L keys with lse 0 and no score gradient,
//   exactly as the CPU does; dropout applies to it too.
// - Dropout: element (b, h, i, j) kept when hdlm_rng_u16_at(key, ((b·H + h)·L + i)·L + j) >= ⌈p·2¹⁶⌉, the kept
//   probabilities scaled by 1/(1 − p); lse is that of the undropped probabilities (as on the CPU).
// - Backward (flash-attention-2 recurrences, deterministic, no atomics): delta_i = dO_i · O_i into the workspace, a
//   dQ kernel over query tiles and a dK/dV kernel over key tiles, both recomputing P from lse.
#include <math.h>

#include "cuda_internal.cuh"

namespace {

constexpr int TILE = 64;                       // rows of a query tile and of a key tile
constexpr int TILE_SPLIT = 4;                  // threads per tile row
constexpr int THREADS = TILE * TILE_SPLIT;     // 256
constexpr int COLS = TILE / TILE_SPLIT;        // score columns per thread
constexpr int PSTRIDE = TILE + 1;              // padded row of a score tile in shared memory

struct attn_shape {
    int len, heads, head_dim, width;   // L, H, D, d = H·D (qkv rows have 3d elements)
    float scale;                       // 1/sqrt(D)
    float dropout, keep;               // p and 1/(1 − p)
    uint32_t keep_min;                 // hdlm_dropout_keep_min(p): an element is kept when its 16-bit draw is >= this
    uint64_t key;                      // dropout stream
};

// The keys of row i (all L for a fully masked row); none for the padding rows i >= L of the last tile.
__device__ inline hdlm_key_range row_keys(const hdlm_attn_mask &mask, int i) {
    if (i >= mask.length) return hdlm_key_range{0, 0, 0};
    return hdlm_mask_key_range(&mask, i);
}

__device__ inline bool row_uniform(const hdlm_attn_mask &mask, int i) {
    return i < mask.length && hdlm_mask_row_fully_masked(&mask, i);
}

// The keys the rows [i0, i0 + TILE) may see, as one range covering their union: key tiles outside it are masked for
// the whole tile. Without_uniform leaves fully masked rows out (their score gradient is zero).
__device__ inline hdlm_key_range tile_keys(const hdlm_attn_mask &mask, int i0, bool without_uniform) {
    return hdlm_mask_rows_key_range(&mask, i0, TILE, without_uniform);
}

// Whether the key tile [j0, j0 + TILE) meets the range u (the same answer in every thread of a block).
__device__ inline bool tile_visits(const hdlm_key_range &u, int j0) {
    return j0 < u.prefix || (j0 + TILE > u.lo && j0 < u.hi);
}

// Whether probability `index` survives dropout: the CPU's hdlm_dropout_scales rule.
__device__ inline bool kept_at(const attn_shape &sh, uint64_t index) {
    uint32_t w[4];
    hdlm_philox4x32_dev(sh.key, 1, index >> 3, w);
    return hdlm_u16_of_block(w, (unsigned)(index & 7)) >= sh.keep_min;
}

// Dropout multiplier of probability (row_index + j): 0 or 1/(1 − p).
__device__ inline float dropout_factor(const attn_shape &sh, uint64_t index) {
    if (sh.dropout <= 0.0f) return 1.0f;
    return kept_at(sh, index) ? sh.keep : 0.0f;
}

// Sum over the TILE_SPLIT threads of a row (adjacent lanes; the whole warp is converged here).
__device__ inline float row_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    x += __shfl_xor_sync(0xffffffffu, x, 2);
    return x;
}
__device__ inline float row_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
    return x;
}

// Rows [r0, r0 + TILE) of a bf16 matrix (row stride ld, this head's first column at src) into dst[TILE][DP + 1]
// as fp32, zero beyond `rows` and beyond head_dim. head_dim is even and every offset even: bf16 pairs are aligned.
template <int DP>
__device__ inline void tile_load(float *dst, const bf16 *src, size_t ld, int r0, int rows, int head_dim) {
    constexpr int S = DP + 1, PAIRS = DP / 2;
    for (int idx = threadIdx.x; idx < TILE * PAIRS; idx += THREADS) {
        int r = idx / PAIRS, e = 2 * (idx % PAIRS);
        float2 x = make_float2(0.0f, 0.0f);
        if (r0 + r < rows && e < head_dim)
            x = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(src + (size_t)(r0 + r) * ld + e));
        dst[r * S + e] = x.x;
        dst[r * S + e + 1] = x.y;
    }
}

// Shared memory of each kernel (floats, then ints).
template <int DP> constexpr size_t forward_smem() { return sizeof(float) * (3 * TILE * (DP + 1) + TILE * PSTRIDE); }
template <int DP> constexpr size_t dq_smem() { return sizeof(float) * (4 * TILE * (DP + 1) + TILE * PSTRIDE); }
template <int DP> size_t dkdv_smem(int len) {
    return sizeof(float) * (4 * TILE * (DP + 1) + 2 * TILE * PSTRIDE + 2 * TILE) + sizeof(int) * TILE +
           sizeof(hdlm_key_range) * (TILE + hdlm_ceil_div(len, TILE));
}

// One block per (query tile, b·H + h): online softmax over the key tiles the tile's rows may see.
template <int DP>
__global__ void __launch_bounds__(THREADS)
    attention_forward_kernel(bf16 *out, float *lse, const bf16 *qkv, hdlm_attn_mask mask, attn_shape sh) {
    constexpr int S = DP + 1, NT = DP / TILE_SPLIT;
    extern __shared__ float smem[];
    float *qs = smem, *ks = qs + TILE * S, *vs = ks + TILE * S, *ps = vs + TILE * S;
    const int L = sh.len, D = sh.head_dim, bh = blockIdx.y, b = bh / sh.heads, h = bh % sh.heads;
    const size_t ld = 3 * (size_t)sh.width;
    const bf16 *q = qkv + (size_t)b * L * ld + (size_t)h * D, *k = q + sh.width, *v = q + 2 * sh.width;
    const int i0 = blockIdx.x * TILE, r = threadIdx.x / TILE_SPLIT, sub = threadIdx.x % TILE_SPLIT, i = i0 + r;
    const hdlm_key_range tile = tile_keys(mask, i0, false), keys = row_keys(mask, i);
    const int kv_end = hdlm_key_range_end(tile);
    const bool uniform = row_uniform(mask, i);
    const uint64_t row_index = ((uint64_t)bh * L + (uint64_t)i) * (uint64_t)L;

    tile_load<DP>(qs, q, ld, i0, L, D);
    float o[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) o[t] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    for (int j0 = 0; j0 < kv_end; j0 += TILE) {
        if (!tile_visits(tile, j0)) continue;
        __syncthreads();   // the previous tile's K, V and P are read by all
        tile_load<DP>(ks, k, ld, j0, L, D);
        tile_load<DP>(vs, v, ld, j0, L, D);
        __syncthreads();
        float sc[COLS];
#pragma unroll
        for (int c = 0; c < COLS; c++) sc[c] = 0.0f;
#pragma unroll 4
        for (int e = 0; e < DP; e++) {
            float qe = qs[r * S + e];
#pragma unroll
            for (int c = 0; c < COLS; c++) sc[c] += qe * ks[(sub + TILE_SPLIT * c) * S + e];
        }
        float tile_max = -INFINITY;
#pragma unroll
        for (int c = 0; c < COLS; c++) {
            int j = j0 + sub + TILE_SPLIT * c;
            // a fully masked row's scores are all replaced by 0 (its keys are all L): uniform weights
            sc[c] = hdlm_key_range_has(keys, j) ? (uniform ? 0.0f : sc[c] * sh.scale) : -INFINITY;
            tile_max = fmaxf(tile_max, sc[c]);
        }
        float m_new = fmaxf(m, row_max(tile_max));
        float m_base = m_new == -INFINITY ? 0.0f : m_new;   // no allowed key yet: all weights are 0
        float corr = expf(m - m_base), sum = 0.0f;
#pragma unroll
        for (int c = 0; c < COLS; c++) {
            int col = sub + TILE_SPLIT * c;
            float p = expf(sc[c] - m_base);
            sum += p;
            if (p > 0.0f) p *= dropout_factor(sh, row_index + (uint64_t)(j0 + col));
            ps[r * PSTRIDE + col] = p;
        }
        l = l * corr + row_sum(sum);
        m = m_new;
#pragma unroll
        for (int t = 0; t < NT; t++) o[t] *= corr;
        __syncthreads();
        for (int c = 0; c < TILE; c++) {
            float p = ps[r * PSTRIDE + c];
#pragma unroll
            for (int t = 0; t < NT; t++) o[t] += p * vs[c * S + sub + TILE_SPLIT * t];
        }
    }
    if (i >= L) return;
    float inv = 1.0f / l;   // l > 0: every row sees itself (a fully masked row sees all keys)
    bf16 *orow = out + ((size_t)b * L + i) * sh.width + (size_t)h * D;
#pragma unroll
    for (int t = 0; t < NT; t++) {
        int e = sub + TILE_SPLIT * t;
        if (e < D) orow[e] = __float2bfloat16(o[t] * inv);
    }
    if (sub == 0) lse[(size_t)bh * L + i] = uniform ? 0.0f : m + logf(l);
}

// delta[b, h, i] = dO_i · O_i (= Σ_j P̃_ij dP̃_ij of the backward): one warp per (token, head).
__global__ void attention_delta_kernel(float *delta, const bf16 *dout, const bf16 *out, int batch, attn_shape sh) {
    size_t warp = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    size_t rows = (size_t)batch * sh.len * sh.heads;
    if (warp >= rows) return;
    size_t n = warp / sh.heads;   // token b·L + i
    int h = (int)(warp % sh.heads), b = (int)(n / sh.len), i = (int)(n % sh.len);
    const bf16 *g = dout + n * sh.width + (size_t)h * sh.head_dim, *o = out + n * sh.width + (size_t)h * sh.head_dim;
    float sum = 0.0f;
    for (int e = lane; e < sh.head_dim; e += 32) sum += __bfloat162float(g[e]) * __bfloat162float(o[e]);
    for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if (lane == 0) delta[((size_t)b * sh.heads + h) * sh.len + i] = sum;
}

// The backward's two products of one row against the COLS rows ≡ sub (mod TILE_SPLIT) of two tiles:
// a[c] = x · xs[row c], b[c] = y · ys[row c]. The dQ kernel passes a query row and its dO against K and V (scores
// and dP̃ of its row), the dK/dV kernel a key row and its V row against Q and dO (the same values, by column).
template <int DP>
__device__ inline void row_dots(float a[COLS], float b[COLS], const float *x, const float *y, const float *xs,
                                const float *ys, int sub) {
    constexpr int S = DP + 1;
#pragma unroll
    for (int c = 0; c < COLS; c++) a[c] = b[c] = 0.0f;
#pragma unroll 2
    for (int e = 0; e < DP; e++) {
        float xe = x[e], ye = y[e];
#pragma unroll
        for (int c = 0; c < COLS; c++) {
            int idx = (sub + TILE_SPLIT * c) * S + e;
            a[c] += xe * xs[idx];
            b[c] += ye * ys[idx];
        }
    }
}

// dQ_i = scale · Σ_j dS_ij K_j with dS_ij = P_ij (dP̃_ij·m_ij − delta_i): one block per (query tile, b·H + h).
template <int DP>
__global__ void __launch_bounds__(THREADS)
    attention_dq_kernel(bf16 *dqkv, const bf16 *dout, const float *lse, const float *delta, const bf16 *qkv,
                        hdlm_attn_mask mask, attn_shape sh) {
    constexpr int S = DP + 1, NT = DP / TILE_SPLIT;
    extern __shared__ float smem[];
    float *qs = smem, *gs = qs + TILE * S, *ks = gs + TILE * S, *vs = ks + TILE * S, *dss = vs + TILE * S;
    const int L = sh.len, D = sh.head_dim, bh = blockIdx.y, b = bh / sh.heads, h = bh % sh.heads;
    const size_t ld = 3 * (size_t)sh.width;
    const size_t head = (size_t)b * L * ld + (size_t)h * D;
    const bf16 *q = qkv + head, *k = q + sh.width, *v = q + 2 * sh.width;
    const bf16 *g = dout + (size_t)b * L * sh.width + (size_t)h * D;
    const int i0 = blockIdx.x * TILE, r = threadIdx.x / TILE_SPLIT, sub = threadIdx.x % TILE_SPLIT, i = i0 + r;
    // fully masked rows have no score gradient: they neither widen the key range nor get a dq
    const hdlm_key_range tile = tile_keys(mask, i0, true);
    const hdlm_key_range keys = row_uniform(mask, i) ? hdlm_key_range{0, 0, 0} : row_keys(mask, i);
    const int kv_end = hdlm_key_range_end(tile);
    const float row_lse = i < L ? lse[(size_t)bh * L + i] : 0.0f;
    const float row_delta = i < L ? delta[(size_t)bh * L + i] : 0.0f;
    const uint64_t row_index = ((uint64_t)bh * L + (uint64_t)i) * (uint64_t)L;

    tile_load<DP>(qs, q, ld, i0, L, D);
    tile_load<DP>(gs, g, sh.width, i0, L, D);
    float dq[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) dq[t] = 0.0f;
    for (int j0 = 0; j0 < kv_end; j0 += TILE) {
        if (!tile_visits(tile, j0)) continue;
        __syncthreads();   // the previous tile's K and dS are read by all
        tile_load<DP>(ks, k, ld, j0, L, D);
        tile_load<DP>(vs, v, ld, j0, L, D);
        __syncthreads();
        float sc[COLS], dp[COLS];
        row_dots<DP>(sc, dp, qs + r * S, gs + r * S, ks, vs, sub);
#pragma unroll
        for (int c = 0; c < COLS; c++) {
            int col = sub + TILE_SPLIT * c, j = j0 + col;
            float ds = 0.0f;
            if (hdlm_key_range_has(keys, j)) {
                float p = expf(sc[c] * sh.scale - row_lse);
                ds = p * (dp[c] * dropout_factor(sh, row_index + (uint64_t)j) - row_delta);
            }
            dss[r * PSTRIDE + col] = ds;
        }
        __syncthreads();
        for (int c = 0; c < TILE; c++) {
            float ds = dss[r * PSTRIDE + c];
#pragma unroll
            for (int t = 0; t < NT; t++) dq[t] += ds * ks[c * S + sub + TILE_SPLIT * t];
        }
    }
    if (i >= L) return;
    bf16 *dqrow = dqkv + head + (size_t)i * ld;
#pragma unroll
    for (int t = 0; t < NT; t++) {
        int e = sub + TILE_SPLIT * t;
        if (e < D) dqrow[e] = __float2bfloat16(dq[t] * sh.scale);
    }
}

// dV_j = Σ_i P̃_ij dO_i and dK_j = scale · Σ_i dS_ij Q_i: one block per (key tile, b·H + h), looping over the query
// tiles whose rows may see a key of the tile. Thread (c, sub) owns key j0 + c, query rows ≡ sub (mod 4) of the
// score tile and dims ≡ sub (mod 4) of dK and dV.
template <int DP>
__global__ void __launch_bounds__(THREADS)
    attention_dkdv_kernel(bf16 *dqkv, const bf16 *dout, const float *lse, const float *delta, const bf16 *qkv,
                          hdlm_attn_mask mask, attn_shape sh) {
    constexpr int S = DP + 1, NT = DP / TILE_SPLIT;
    extern __shared__ float smem[];
    float *ks = smem, *vs = ks + TILE * S, *qs = vs + TILE * S, *gs = qs + TILE * S;
    float *pts = gs + TILE * S, *dss = pts + TILE * PSTRIDE;   // [key][query] of P̃ and dS
    float *rlse = dss + TILE * PSTRIDE, *rdelta = rlse + TILE;
    int *runiform = reinterpret_cast<int *>(rdelta + TILE);
    hdlm_key_range *rkeys = reinterpret_cast<hdlm_key_range *>(runiform + TILE), *qkeys = rkeys + TILE;
    const int L = sh.len, D = sh.head_dim, bh = blockIdx.y, b = bh / sh.heads, h = bh % sh.heads;
    const int n_qtiles = (L + TILE - 1) / TILE;
    const size_t ld = 3 * (size_t)sh.width;
    const size_t head = (size_t)b * L * ld + (size_t)h * D;
    const bf16 *q = qkv + head, *k = q + sh.width, *v = q + 2 * sh.width;
    const bf16 *g = dout + (size_t)b * L * sh.width + (size_t)h * D;
    const int j0 = blockIdx.x * TILE, c = threadIdx.x / TILE_SPLIT, sub = threadIdx.x % TILE_SPLIT, j = j0 + c;

    for (int t = threadIdx.x; t < n_qtiles; t += THREADS) qkeys[t] = tile_keys(mask, t * TILE, false);
    tile_load<DP>(ks, k, ld, j0, L, D);
    tile_load<DP>(vs, v, ld, j0, L, D);
    float dk[NT], dv[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) dk[t] = dv[t] = 0.0f;
    __syncthreads();
    for (int qt = 0; qt < n_qtiles; qt++) {
        if (!tile_visits(qkeys[qt], j0)) continue;   // no row of this query tile sees the key tile (block-uniform)
        const int i0 = qt * TILE;
        __syncthreads();   // the previous query tile's Q, dO, P̃, dS and row data are read by all
        tile_load<DP>(qs, q, ld, i0, L, D);
        tile_load<DP>(gs, g, sh.width, i0, L, D);
        if (threadIdx.x < TILE) {
            int i = i0 + threadIdx.x;
            rkeys[threadIdx.x] = row_keys(mask, i);
            runiform[threadIdx.x] = row_uniform(mask, i);
            rlse[threadIdx.x] = i < L ? lse[(size_t)bh * L + i] : 0.0f;
            rdelta[threadIdx.x] = i < L ? delta[(size_t)bh * L + i] : 0.0f;
        }
        __syncthreads();
        float sc[COLS], dp[COLS];
        row_dots<DP>(sc, dp, ks + c * S, vs + c * S, qs, gs, sub);
#pragma unroll
        for (int x = 0; x < COLS; x++) {
            int row = sub + TILE_SPLIT * x, i = i0 + row;
            float p = 0.0f, ds = 0.0f;
            if (runiform[row]) {
                p = j < L ? 1.0f / (float)L : 0.0f;   // uniform row: weight 1/L on every key, no score gradient
            } else if (hdlm_key_range_has(rkeys[row], j)) {
                p = expf(sc[x] * sh.scale - rlse[row]);
            }
            float drop = p > 0.0f ? dropout_factor(sh, ((uint64_t)bh * L + (uint64_t)i) * (uint64_t)L + j) : 0.0f;
            if (!runiform[row]) ds = p * (dp[x] * drop - rdelta[row]);
            pts[c * PSTRIDE + row] = p * drop;
            dss[c * PSTRIDE + row] = ds;
        }
        __syncthreads();
        for (int row = 0; row < TILE; row++) {
            float pd = pts[c * PSTRIDE + row], ds = dss[c * PSTRIDE + row];
#pragma unroll
            for (int t = 0; t < NT; t++) {
                int e = sub + TILE_SPLIT * t;
                dv[t] += pd * gs[row * S + e];
                dk[t] += ds * qs[row * S + e];
            }
        }
    }
    if (j >= L) return;
    bf16 *dkrow = dqkv + head + (size_t)j * ld + sh.width, *dvrow = dkrow + sh.width;
#pragma unroll
    for (int t = 0; t < NT; t++) {
        int e = sub + TILE_SPLIT * t;
        if (e < D) {
            dkrow[e] = __float2bfloat16(dk[t] * sh.scale);
            dvrow[e] = __float2bfloat16(dv[t]);
        }
    }
}

// ---- tensor-core path for head dim 64 (mma.sync m16n8k16, bf16 operands, fp32 accumulation) ----------------------
// Four warps per block, each owning 16 rows of the 64-row tile; every product is a warp GEMM 16×64 = A(16×64)·Y
// with Y a 64×64 bf16 tile of Q, K, V or dO in shared memory, row-major as in memory: stored [n][k] for the score
// products (Q·Kᵀ, dO·Vᵀ, K·Qᵀ, V·dOᵀ; fragments by ldmatrix) and [k][n] for the others (P·V, dS·K, P̃ᵀ·dO, dSᵀ·Q;
// ldmatrix.trans). The score accumulators are reused as the A operand of the second GEMM after rounding to bf16,
// as flash attention does. Fragment layouts (PTX ISA, mma.m16n8k16): lane = 4·g + t; A holds (g, 2t..2t+1),
// (g+8, ·), (g, 2t+8..), (g+8, 2t+8..); B holds (k = 2t.., n = g), (k = 2t+8.., n = g); C holds (g, 2t..2t+1) and
// (g+8, 2t..2t+1) of each 8-column n-tile.
constexpr int TC_D = 64;                   // the head dim of this path
constexpr int TC_THREADS = 128;            // 4 warps × 16 rows
constexpr int TC_LDS = TC_D + 8;           // bf16 row stride in shared memory: 144 bytes, conflict-free fragments
constexpr int TC_TILE_ELEMS = TILE * TC_LDS;
constexpr int TC_NT = TC_D / 8;            // 8-column n-tiles of a 64-wide output
constexpr int TC_KS = TC_D / 16;           // 16-deep k-steps of a 64-deep product

__device__ inline void mma_m16n8k16(float c[4], const uint32_t a[4], const uint32_t b[2]) {
#ifdef HDLM_CUDA_EMULATE   // host build of tests/cuda_emu: the same warp-wide product from the fragment layouts
    emu::mma_m16n8k16_bf16(c, a, b);
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

__device__ inline uint32_t bf16_pair(float lo, float hi) {
    return (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(lo)) |
           (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(hi)) << 16;
}

__device__ inline uint32_t smem_pair(const bf16 *p) { return *reinterpret_cast<const uint32_t *>(p); }

// ldmatrix.x4: four 8×8 bf16 matrices of shared memory, lane 8i + q giving the address of row q of matrix i; lane
// 4g + t receives in r[i] the elements 2t, 2t + 1 of row g of matrix i, or with trans of its column g.
template <bool trans> __device__ inline void ldmatrix_x4(uint32_t r[4], const bf16 *row) {
#ifdef HDLM_CUDA_EMULATE
    emu::ldmatrix_x4_b16(r, row, trans);
#else
    const uint32_t address = (uint32_t)__cvta_generic_to_shared(row);
    if (trans)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(address));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(address));
#endif
}

// A fragments of rows [m0, m0 + 16) × 64 of a row-major shared tile: matrix i of k-step ks is rows m0 + 8·(i % 2),
// columns 16·ks + 8·(i / 2).
__device__ inline void tc_load_a(uint32_t a[TC_KS][4], const bf16 *x, int m0) {
    const int lane = threadIdx.x % 32, i = lane / 8, q = lane % 8;
#pragma unroll
    for (int ks = 0; ks < TC_KS; ks++)
        ldmatrix_x4<false>(a[ks], x + (m0 + 8 * (i % 2) + q) * TC_LDS + ks * 16 + 8 * (i / 2));
}

// A fragments from score-shaped accumulators (16 × 64): n-tiles 2ks and 2ks + 1 are k-step ks.
__device__ inline void tc_acc_to_a(uint32_t a[TC_KS][4], const float c[TC_NT][4]) {
#pragma unroll
    for (int ks = 0; ks < TC_KS; ks++) {
        a[ks][0] = bf16_pair(c[2 * ks][0], c[2 * ks][1]);
        a[ks][1] = bf16_pair(c[2 * ks][2], c[2 * ks][3]);
        a[ks][2] = bf16_pair(c[2 * ks + 1][0], c[2 * ks + 1][1]);
        a[ks][3] = bf16_pair(c[2 * ks + 1][2], c[2 * ks + 1][3]);
    }
}

// acc (16 × 64) += A (16 × 64) · Yᵀ, Y shared [64 n][64 k].
__device__ inline void tc_gemm(float acc[TC_NT][4], const uint32_t a[TC_KS][4], const bf16 *y) {
    const int g = (threadIdx.x % 32) / 4, t = threadIdx.x % 4;
#pragma unroll
    for (int nt = 0; nt < TC_NT; nt++) {
#pragma unroll
        for (int ks = 0; ks < TC_KS; ks++) {
            const bf16 *p = y + (nt * 8 + g) * TC_LDS + ks * 16 + 2 * t;
            uint32_t b[2] = {smem_pair(p), smem_pair(p + 8)};
            mma_m16n8k16(acc[nt], a[ks], b);
        }
    }
}

// acc (16 × 64) += A (16 × 64) · Y, Y shared [64 k][64 n]: one ldmatrix.trans gives the B fragments of n-tiles nt and
// nt + 1 at k-step ks (matrix i: rows 16·ks + 8·(i % 2).., columns 8·(nt + i / 2)).
__device__ inline void tc_gemm_kn(float acc[TC_NT][4], const uint32_t a[TC_KS][4], const bf16 *y) {
    const int lane = threadIdx.x % 32, i = lane / 8, q = lane % 8;
#pragma unroll
    for (int ks = 0; ks < TC_KS; ks++) {
#pragma unroll
        for (int nt = 0; nt < TC_NT; nt += 2) {
            uint32_t b[4];
            ldmatrix_x4<true>(b, y + (ks * 16 + 8 * (i % 2) + q) * TC_LDS + 8 * (nt + i / 2));
            mma_m16n8k16(acc[nt], a[ks], b);
            mma_m16n8k16(acc[nt + 1], a[ks], b + 2);
        }
    }
}

__device__ inline void tc_zero(float acc[TC_NT][4]) {
#pragma unroll
    for (int nt = 0; nt < TC_NT; nt++) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
}

// Dropout keep bits. The forward draws, per 64×64 tile, which probabilities survive and stores the decisions, one bit
// each, for both backward kernels, which would otherwise draw all B·H·L² Philox words twice more. Word 32·w + 4g + t
// of a tile (warp w, lane 4g + t of the forward) holds bit 4·nt + 2·x + c for query row 16w + g + 8x and key column
// 8·nt + 2t + c: bit 4·nt + r belongs to that lane's accumulator s[nt][r].
constexpr int TC_KEEP_WORDS = TC_THREADS;   // words per tile

__device__ inline size_t keep_tile(const attn_shape &sh, int bh, int qtile, int ktile) {
    const size_t tiles = (size_t)((sh.len + TILE - 1) / TILE);
    return (((size_t)bh * tiles + qtile) * tiles + ktile) * TC_KEEP_WORDS;
}

// This lane's 32 keep bits of key tile j0 (row_index[x] = ((b·H + h)·L + row x)·L). With L % 8 = 0 the 8 columns
// of an n-tile row are one whole Philox block, so the 4 lanes of a row group draw the 4 blocks of two n-tiles once
// (lane s: row s % 2, n-tile 2q + s / 2) and exchange their decisions; otherwise every element draws its own block.
__device__ inline uint32_t tc_keep_bits(const attn_shape &sh, const uint64_t row_index[2], int j0) {
    const int lane = threadIdx.x % 32, t = lane % 4;
    uint32_t bits = 0;
    if (sh.len % 8 == 0) {
        // (row_index[t % 2] selected, not indexed at run time: the array would go to local memory)
        const uint64_t first = (t % 2 ? row_index[1] : row_index[0]) + (uint64_t)(j0 + 8 * (t / 2));
        uint32_t drawn = 0;   // bit 8q + 2k + c: column 2k + c (word k, half c) of this lane's block of pair q
#pragma unroll
        for (int q = 0; q < TC_NT / 2; q++) {
            uint32_t w[4];
            hdlm_philox4x32_dev(sh.key, 1, (first + 16 * q) >> 3, w);
#pragma unroll
            for (int k = 0; k < 4; k++) {
                uint32_t low = (w[k] & 0xffffu) >= sh.keep_min, high = w[k] >> 16 >= sh.keep_min;
                drawn |= (low | high << 1) << (8 * q + 2 * k);
            }
        }
        // columns 2t, 2t + 1 (word t) of lane s's blocks: this lane's bits 4·nt + 2x + c = 8q + 2s + c
#pragma unroll
        for (int s = 0; s < 4; s++)
            bits |= (__shfl_sync(0xffffffffu, drawn, (lane & ~3) + s) >> (2 * t) & 0x03030303u) << (2 * s);
    } else {
        for (int nt = 0; nt < TC_NT; nt++)
            for (int r = 0; r < 4; r++) {
                uint64_t index = row_index[r / 2] + (uint64_t)(j0 + nt * 8 + 2 * t + r % 2);
                bits |= (uint32_t)kept_at(sh, index) << (4 * nt + r);
            }
    }
    return bits;
}

// Dropout multiplier of keep bit `bit`: 0 or 1/(1 − p) (1 without dropout, when the bits are not read).
__device__ inline float keep_factor(const attn_shape &sh, uint32_t bits, int bit) {
    if (sh.dropout <= 0.0f) return 1.0f;
    return (bits >> bit) & 1u ? sh.keep : 0.0f;
}

// Rows [r0, r0 + TILE) × 64 of a bf16 matrix (row stride ld, 16-byte aligned rows) into the shared row-major tile
// `dst` or, when `transposed`, into dst[column][row]; zero beyond `rows`.
__device__ inline void tc_tile_load(bf16 *dst, const bf16 *src, size_t ld, int r0, int rows, bool transposed = false) {
    for (int idx = threadIdx.x; idx < TILE * TC_D / 8; idx += TC_THREADS) {
        // transposed, a warp takes 32 consecutive rows of one 8-column chunk (conflict-free transposed stores);
        // otherwise 4 whole 128-byte rows (coalesced reads)
        int r = transposed ? idx % TILE : idx / (TC_D / 8), e = transposed ? 8 * (idx / TILE) : 8 * (idx % (TC_D / 8));
        uint4 x = make_uint4(0u, 0u, 0u, 0u);
        if (r0 + r < rows) x = *reinterpret_cast<const uint4 *>(src + (size_t)(r0 + r) * ld + e);
        if (!transposed) {
            *reinterpret_cast<uint4 *>(dst + r * TC_LDS + e) = x;
            continue;
        }
        const bf16 *v = reinterpret_cast<const bf16 *>(&x);
#pragma unroll
        for (int q = 0; q < 8; q++) dst[(e + q) * TC_LDS + r] = v[q];
    }
}

// Forward, as attention_forward_kernel: thread rows ra = i0 + 16·warp + g and rb = ra + 8, columns 2t, 2t + 1 of
// every n-tile. With dropout, the keep bits of every visited tile go to keep_bits when it is not NULL.
__global__ void __launch_bounds__(TC_THREADS)
    attention_forward_tc_kernel(bf16 *out, float *lse, uint32_t *keep_bits, const bf16 *qkv, hdlm_attn_mask mask,
                                attn_shape sh) {
    extern __shared__ float smem[];
    bf16 *qs = reinterpret_cast<bf16 *>(smem), *ks = qs + TC_TILE_ELEMS, *vt = ks + TC_TILE_ELEMS;
    const int L = sh.len, bh = blockIdx.y, b = bh / sh.heads, h = bh % sh.heads;
    const size_t ld = 3 * (size_t)sh.width;
    const bf16 *q = qkv + (size_t)b * L * ld + (size_t)h * TC_D, *k = q + sh.width, *v = q + 2 * sh.width;
    const int warp = threadIdx.x / 32, g = (threadIdx.x % 32) / 4, t = threadIdx.x % 4;
    const int i0 = blockIdx.x * TILE, m0 = 16 * warp;
    const hdlm_key_range tile = tile_keys(mask, i0, false);
    const int kv_end = hdlm_key_range_end(tile);
    int row[2];
    hdlm_key_range keys[2];
    bool uniform[2];
    uint64_t row_index[2];
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    for (int x = 0; x < 2; x++) {
        row[x] = i0 + m0 + g + 8 * x;
        keys[x] = row_keys(mask, row[x]);
        uniform[x] = row_uniform(mask, row[x]);
        row_index[x] = ((uint64_t)bh * L + (uint64_t)row[x]) * (uint64_t)L;
    }
    tc_tile_load(qs, q, ld, i0, L);
    __syncthreads();
    uint32_t qa[TC_KS][4];
    tc_load_a(qa, qs, m0);
    float o[TC_NT][4];
    tc_zero(o);
    for (int j0 = 0; j0 < kv_end; j0 += TILE) {
        if (!tile_visits(tile, j0)) continue;
        __syncthreads();   // the previous K and V tiles are read by all
        tc_tile_load(ks, k, ld, j0, L);
        tc_tile_load(vt, v, ld, j0, L, true);
        __syncthreads();
        float s[TC_NT][4];
        tc_zero(s);
        tc_gemm(s, qa, ks);
        uint32_t keep = 0;
        if (sh.dropout > 0.0f) {
            keep = tc_keep_bits(sh, row_index, j0);
            if (keep_bits) keep_bits[keep_tile(sh, bh, blockIdx.x, j0 / TILE) + threadIdx.x] = keep;
        }
        float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < TC_NT; nt++)
#pragma unroll
            for (int r = 0; r < 4; r++) {
                int x = r / 2, j = j0 + nt * 8 + 2 * t + r % 2;
                // a fully masked row's scores are all replaced by 0 (its keys are all L): uniform weights
                s[nt][r] = hdlm_key_range_has(keys[x], j) ? (uniform[x] ? 0.0f : s[nt][r] * sh.scale) : -INFINITY;
                tile_max[x] = fmaxf(tile_max[x], s[nt][r]);
            }
        float m_base[2], corr[2], sum[2] = {0.0f, 0.0f};
        for (int x = 0; x < 2; x++) {
            float m_new = fmaxf(m[x], row_max(tile_max[x]));
            m_base[x] = m_new == -INFINITY ? 0.0f : m_new;   // no allowed key yet: all weights are 0
            corr[x] = expf(m[x] - m_base[x]);
            m[x] = m_new;
        }
#pragma unroll
        for (int nt = 0; nt < TC_NT; nt++)
#pragma unroll
            for (int r = 0; r < 4; r++) {
                int x = r / 2;
                float p = expf(s[nt][r] - m_base[x]);
                sum[x] += p;
                s[nt][r] = p * keep_factor(sh, keep, 4 * nt + r);
                o[nt][r] *= corr[x];
            }
        for (int x = 0; x < 2; x++) l[x] = l[x] * corr[x] + row_sum(sum[x]);
        uint32_t pa[TC_KS][4];
        tc_acc_to_a(pa, s);
        tc_gemm(o, pa, vt);   // P·V with Vᵀ stored: through ldmatrix.trans, 40–50 more registers
    }
    for (int x = 0; x < 2; x++) {
        if (row[x] >= L) continue;
        float inv = 1.0f / l[x];   // l > 0: every row sees itself (a fully masked row sees all keys)
        bf16 *orow = out + ((size_t)b * L + row[x]) * sh.width + (size_t)h * TC_D;
#pragma unroll
        for (int nt = 0; nt < TC_NT; nt++)
            *reinterpret_cast<__nv_bfloat162 *>(orow + nt * 8 + 2 * t) =
                __floats2bfloat162_rn(o[nt][2 * x] * inv, o[nt][2 * x + 1] * inv);
        if (t == 0) lse[(size_t)bh * L + row[x]] = uniform[x] ? 0.0f : m[x] + logf(l[x]);
    }
}

// dQ, as attention_dq_kernel, with the forward's keep bits (the same tiles and lanes).
__global__ void __launch_bounds__(TC_THREADS, 3)
    attention_dq_tc_kernel(bf16 *dqkv, const bf16 *dout, const float *lse, const float *delta,
                           const uint32_t *keep_bits, const bf16 *qkv, hdlm_attn_mask mask, attn_shape sh) {
    extern __shared__ float smem[];
    bf16 *qs = reinterpret_cast<bf16 *>(smem), *gs = qs + TC_TILE_ELEMS, *ks = gs + TC_TILE_ELEMS;
    bf16 *vs = ks + TC_TILE_ELEMS;
    const int L = sh.len, bh = blockIdx.y, b = bh / sh.heads, h = bh % sh.heads;
    const size_t ld = 3 * (size_t)sh.width, head = (size_t)b * L * ld + (size_t)h * TC_D;
    const bf16 *q = qkv + head, *k = q + sh.width, *v = q + 2 * sh.width;
    const bf16 *go = dout + (size_t)b * L * sh.width + (size_t)h * TC_D;
    const int warp = threadIdx.x / 32, g = (threadIdx.x % 32) / 4, t = threadIdx.x % 4;
    const int i0 = blockIdx.x * TILE, m0 = 16 * warp;
    // fully masked rows have no score gradient: they neither widen the key range nor get a dq
    const hdlm_key_range tile = tile_keys(mask, i0, true);
    const int kv_end = hdlm_key_range_end(tile);
    int row[2];
    hdlm_key_range keys[2];
    float row_lse[2], row_delta[2];
    for (int x = 0; x < 2; x++) {
        row[x] = i0 + m0 + g + 8 * x;
        keys[x] = row_uniform(mask, row[x]) ? hdlm_key_range{0, 0, 0} : row_keys(mask, row[x]);
        row_lse[x] = row[x] < L ? lse[(size_t)bh * L + row[x]] : 0.0f;
        row_delta[x] = row[x] < L ? delta[(size_t)bh * L + row[x]] : 0.0f;
    }
    tc_tile_load(qs, q, ld, i0, L);
    tc_tile_load(gs, go, sh.width, i0, L);
    __syncthreads();
    uint32_t qa[TC_KS][4], ga[TC_KS][4];
    tc_load_a(qa, qs, m0);
    tc_load_a(ga, gs, m0);
    float dq[TC_NT][4];
    tc_zero(dq);
    for (int j0 = 0; j0 < kv_end; j0 += TILE) {
        if (!tile_visits(tile, j0)) continue;
        __syncthreads();   // the previous K, V tiles are read by all
        tc_tile_load(ks, k, ld, j0, L);
        tc_tile_load(vs, v, ld, j0, L);
        __syncthreads();
        float s[TC_NT][4], dp[TC_NT][4];
        tc_zero(s);
        tc_zero(dp);
        tc_gemm(s, qa, ks);
        tc_gemm(dp, ga, vs);
        const uint32_t keep =
            sh.dropout > 0.0f ? keep_bits[keep_tile(sh, bh, blockIdx.x, j0 / TILE) + threadIdx.x] : 0u;
#pragma unroll
        for (int nt = 0; nt < TC_NT; nt++)
#pragma unroll
            for (int r = 0; r < 4; r++) {
                int x = r / 2, j = j0 + nt * 8 + 2 * t + r % 2;
                float ds = 0.0f;
                if (hdlm_key_range_has(keys[x], j)) {
                    float p = expf(s[nt][r] * sh.scale - row_lse[x]);
                    ds = p * (dp[nt][r] * keep_factor(sh, keep, 4 * nt + r) - row_delta[x]);
                }
                s[nt][r] = ds;
            }
        uint32_t dsa[TC_KS][4];
        tc_acc_to_a(dsa, s);
        tc_gemm_kn(dq, dsa, ks);
    }
    for (int x = 0; x < 2; x++) {
        if (row[x] >= L) continue;
        bf16 *dqrow = dqkv + head + (size_t)row[x] * ld;
#pragma unroll
        for (int nt = 0; nt < TC_NT; nt++)
            *reinterpret_cast<__nv_bfloat162 *>(dqrow + nt * 8 + 2 * t) =
                __floats2bfloat162_rn(dq[nt][2 * x] * sh.scale, dq[nt][2 * x + 1] * sh.scale);
    }
}

// dK and dV, as attention_dkdv_kernel, on the transposed scores Sᵀ = K·Qᵀ: thread rows are keys
// ja = j0 + 16·warp + g and jb = ja + 8, its columns queries; the forward's keep bits of each query tile are
// staged in shared memory and read transposed.
__global__ void __launch_bounds__(TC_THREADS)
    attention_dkdv_tc_kernel(bf16 *dqkv, const bf16 *dout, const float *lse, const float *delta,
                             const uint32_t *keep_bits, const bf16 *qkv, hdlm_attn_mask mask, attn_shape sh) {
    extern __shared__ float smem[];
    bf16 *ks = reinterpret_cast<bf16 *>(smem), *vs = ks + TC_TILE_ELEMS, *qs = vs + TC_TILE_ELEMS;
    bf16 *gs = qs + TC_TILE_ELEMS;
    float *rlse = reinterpret_cast<float *>(gs + TC_TILE_ELEMS), *rdelta = rlse + TILE;
    int *runiform = reinterpret_cast<int *>(rdelta + TILE);
    uint32_t *skeep = reinterpret_cast<uint32_t *>(runiform + TILE);
    hdlm_key_range *rkeys = reinterpret_cast<hdlm_key_range *>(skeep + TC_KEEP_WORDS), *qkeys = rkeys + TILE;
    const int L = sh.len, bh = blockIdx.y, b = bh / sh.heads, h = bh % sh.heads;
    const int n_qtiles = (L + TILE - 1) / TILE;
    const size_t ld = 3 * (size_t)sh.width, head = (size_t)b * L * ld + (size_t)h * TC_D;
    const bf16 *q = qkv + head, *k = q + sh.width, *v = q + 2 * sh.width;
    const bf16 *go = dout + (size_t)b * L * sh.width + (size_t)h * TC_D;
    const int warp = threadIdx.x / 32, g = (threadIdx.x % 32) / 4, t = threadIdx.x % 4;
    const int j0 = blockIdx.x * TILE, m0 = 16 * warp;
    const int key[2] = {j0 + m0 + g, j0 + m0 + g + 8};

    for (int x = threadIdx.x; x < n_qtiles; x += TC_THREADS) qkeys[x] = tile_keys(mask, x * TILE, false);
    tc_tile_load(ks, k, ld, j0, L);
    tc_tile_load(vs, v, ld, j0, L);
    __syncthreads();
    uint32_t ka[TC_KS][4], va[TC_KS][4];
    tc_load_a(ka, ks, m0);
    tc_load_a(va, vs, m0);
    float dk[TC_NT][4], dv[TC_NT][4];
    tc_zero(dk);
    tc_zero(dv);
    for (int qtile = 0; qtile < n_qtiles; qtile++) {
        if (!tile_visits(qkeys[qtile], j0)) continue;   // no row of this query tile sees the key tile (block-uniform)
        const int i0 = qtile * TILE;
        __syncthreads();   // the previous query tile's Q, dO and row data are read by all
        tc_tile_load(qs, q, ld, i0, L);
        tc_tile_load(gs, go, sh.width, i0, L);
        if (threadIdx.x < TILE) {
            int i = i0 + threadIdx.x;
            rkeys[threadIdx.x] = row_keys(mask, i);
            runiform[threadIdx.x] = row_uniform(mask, i);
            rlse[threadIdx.x] = i < L ? lse[(size_t)bh * L + i] : 0.0f;
            rdelta[threadIdx.x] = i < L ? delta[(size_t)bh * L + i] : 0.0f;
        }
        if (sh.dropout > 0.0f) skeep[threadIdx.x] = keep_bits[keep_tile(sh, bh, qtile, blockIdx.x) + threadIdx.x];
        __syncthreads();
        float s[TC_NT][4], dp[TC_NT][4];
        tc_zero(s);
        tc_zero(dp);
        tc_gemm(s, ka, qs);   // Sᵀ: [key][query]
        tc_gemm(dp, va, gs);  // dP̃ᵀ
#pragma unroll
        for (int nt = 0; nt < TC_NT; nt++)
#pragma unroll
            for (int r = 0; r < 4; r++) {
                int x = r / 2, col = nt * 8 + 2 * t + r % 2, j = key[x];
                float p = 0.0f;
                if (runiform[col]) p = j < L ? 1.0f / (float)L : 0.0f;   // weight 1/L on every key, no dS
                else if (hdlm_key_range_has(rkeys[col], j)) p = expf(s[nt][r] * sh.scale - rlse[col]);
                // the forward's bit of (query col, key 16·warp + g + 8x): its word 32·(nt / 2) + 4·(2t + r % 2) + g / 2
                float drop = 1.0f;
                if (sh.dropout > 0.0f)
                    drop = keep_factor(sh, skeep[32 * (nt / 2) + 4 * (2 * t + r % 2) + g / 2],
                                       4 * (2 * warp + x) + 2 * (nt % 2) + g % 2);
                dp[nt][r] = runiform[col] ? 0.0f : p * (dp[nt][r] * drop - rdelta[col]);   // dSᵀ
                s[nt][r] = p * drop;                                                       // P̃ᵀ
            }
        uint32_t a[TC_KS][4];
        tc_acc_to_a(a, s);
        tc_gemm_kn(dv, a, gs);   // dV += P̃ᵀ·dO
        tc_acc_to_a(a, dp);
        tc_gemm_kn(dk, a, qs);   // dK += dSᵀ·Q
    }
    for (int x = 0; x < 2; x++) {
        if (key[x] >= L) continue;
        bf16 *dkrow = dqkv + head + (size_t)key[x] * ld + sh.width, *dvrow = dkrow + sh.width;
#pragma unroll
        for (int nt = 0; nt < TC_NT; nt++) {
            *reinterpret_cast<__nv_bfloat162 *>(dkrow + nt * 8 + 2 * t) =
                __floats2bfloat162_rn(dk[nt][2 * x] * sh.scale, dk[nt][2 * x + 1] * sh.scale);
            *reinterpret_cast<__nv_bfloat162 *>(dvrow + nt * 8 + 2 * t) =
                __floats2bfloat162_rn(dv[nt][2 * x], dv[nt][2 * x + 1]);
        }
    }
}

constexpr size_t forward_tc_smem() { return sizeof(bf16) * 3 * TC_TILE_ELEMS; }
constexpr size_t dq_tc_smem() { return sizeof(bf16) * 4 * TC_TILE_ELEMS; }
size_t dkdv_tc_smem(int len) {
    return sizeof(bf16) * 4 * TC_TILE_ELEMS + sizeof(float) * 2 * TILE + sizeof(uint32_t) * TC_KEEP_WORDS +
           sizeof(int) * TILE + sizeof(hdlm_key_range) * (TILE + hdlm_ceil_div(len, TILE));
}

attn_shape shape_of(int len, int heads, int head_dim, float dropout, uint64_t key) {
    HDLM_ASSERT(head_dim >= 2 && head_dim <= 128 && head_dim % 2 == 0,
                "attention head_dim %d: the CUDA kernels take an even head dim <= 128", head_dim);
    HDLM_ASSERT(dropout >= 0.0f && dropout < 1.0f, "attention dropout %g outside [0, 1)", (double)dropout);
    attn_shape sh;
    sh.len = len;
    sh.heads = heads;
    sh.head_dim = head_dim;
    sh.width = heads * head_dim;
    sh.scale = 1.0f / sqrtf((float)head_dim);
    sh.dropout = dropout;
    sh.keep = 1.0f / (1.0f - dropout);   // the CPU's float 1/(1 − p)
    sh.keep_min = hdlm_dropout_keep_min(dropout);
    sh.key = key;
    return sh;
}

dim3 grid_of(int batch, int len, int heads) {
    HDLM_ASSERT((long)batch * heads <= 65535, "attention batch·heads %ld exceeds the grid's y limit",
                (long)batch * heads);
    return dim3((unsigned)hdlm_ceil_div((size_t)len, TILE), (unsigned)(batch * heads));
}

// Opts the kernel into `bytes` of dynamic shared memory (above the default 48 KiB), dying when the device has less.
template <typename Kernel> void set_smem(Kernel kernel, size_t bytes) {
    int device, optin;
    HDLM_CUDA_CHECK(cudaGetDevice(&device));
    HDLM_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    if (bytes > (size_t)optin)
        HDLM_DIE("attention kernel needs %zu bytes of shared memory, the device allows %d per block", bytes, optin);
    HDLM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

template <int DP>
void forward_launch(bf16 *out, float *lse, const bf16 *qkv, const hdlm_attn_mask &mask, int batch,
                    const attn_shape &sh, cudaStream_t stream) {
    size_t smem = forward_smem<DP>();
    set_smem(attention_forward_kernel<DP>, smem);
    attention_forward_kernel<DP><<<grid_of(batch, sh.len, sh.heads), THREADS, smem, stream>>>(out, lse, qkv, mask, sh);
    HDLM_CUDA_LAUNCHED();
}

template <int DP>
void backward_launch(bf16 *dqkv, const float *delta, const bf16 *dout, const float *lse, const bf16 *qkv,
                     const hdlm_attn_mask &mask, int batch, const attn_shape &sh, cudaStream_t stream) {
    dim3 grid = grid_of(batch, sh.len, sh.heads);
    size_t smem = dq_smem<DP>();
    set_smem(attention_dq_kernel<DP>, smem);
    attention_dq_kernel<DP><<<grid, THREADS, smem, stream>>>(dqkv, dout, lse, delta, qkv, mask, sh);
    HDLM_CUDA_LAUNCHED();
    smem = dkdv_smem<DP>(sh.len);
    set_smem(attention_dkdv_kernel<DP>, smem);
    attention_dkdv_kernel<DP><<<grid, THREADS, smem, stream>>>(dqkv, dout, lse, delta, qkv, mask, sh);
    HDLM_CUDA_LAUNCHED();
}

void forward_tc_launch(bf16 *out, float *lse, uint32_t *keep_bits, const bf16 *qkv, const hdlm_attn_mask &mask,
                       int batch, const attn_shape &sh, cudaStream_t stream) {
    size_t smem = forward_tc_smem();
    set_smem(attention_forward_tc_kernel, smem);
    attention_forward_tc_kernel<<<grid_of(batch, sh.len, sh.heads), TC_THREADS, smem, stream>>>(out, lse, keep_bits,
                                                                                                 qkv, mask, sh);
    HDLM_CUDA_LAUNCHED();
}

void backward_tc_launch(bf16 *dqkv, const float *delta, const bf16 *dout, const float *lse, const uint32_t *keep_bits,
                        const bf16 *qkv, const hdlm_attn_mask &mask, int batch, const attn_shape &sh,
                        cudaStream_t stream) {
    dim3 grid = grid_of(batch, sh.len, sh.heads);
    size_t smem = dq_tc_smem();
    set_smem(attention_dq_tc_kernel, smem);
    attention_dq_tc_kernel<<<grid, TC_THREADS, smem, stream>>>(dqkv, dout, lse, delta, keep_bits, qkv, mask, sh);
    HDLM_CUDA_LAUNCHED();
    smem = dkdv_tc_smem(sh.len);
    set_smem(attention_dkdv_tc_kernel, smem);
    attention_dkdv_tc_kernel<<<grid, TC_THREADS, smem, stream>>>(dqkv, dout, lse, delta, keep_bits, qkv, mask, sh);
    HDLM_CUDA_LAUNCHED();
}

bool aligned16(const void *p) { return (uintptr_t)p % 16 == 0; }

// The tensor-core path reads and writes rows of 64 bf16 with 16-byte accesses. Its backward is taken only where the
// forward of the same qkv and out took it too: it reads the keep bits that forward wrote.
bool forward_on_tensor_cores(int head_dim, const void *qkv, const void *out) {
    return head_dim == TC_D && aligned16(qkv) && aligned16(out);
}

}   // namespace

void hdlm_cuda_attention_forward(hdlm_bf16 *out, float *lse, uint32_t *keep_bits, const hdlm_bf16 *qkv,
                                 const hdlm_attn_mask *mask, int batch, int len, int heads, int head_dim,
                                 float dropout, uint64_t key, hdlm_stream stream) {
    HDLM_ASSERT(mask->length == len, "attention mask length %d for sequences of %d", mask->length, len);
    if (batch == 0 || len == 0 || heads == 0) return;
    attn_shape sh = shape_of(len, heads, head_dim, dropout, key);
    bf16 *o = as_bf16(out);
    const bf16 *x = as_bf16(qkv);
    if (forward_on_tensor_cores(head_dim, qkv, out)) forward_tc_launch(o, lse, keep_bits, x, *mask, batch, sh, stream);
    else if (head_dim <= 32) forward_launch<32>(o, lse, x, *mask, batch, sh, stream);
    else if (head_dim <= 64) forward_launch<64>(o, lse, x, *mask, batch, sh, stream);
    else forward_launch<128>(o, lse, x, *mask, batch, sh, stream);
}

size_t hdlm_cuda_attention_keep_bytes(int batch, int len, int heads) {
    size_t tiles = hdlm_ceil_div((size_t)len, TILE);
    return (size_t)batch * heads * tiles * tiles * TC_KEEP_WORDS * sizeof(uint32_t);
}

size_t hdlm_cuda_attention_workspace_bytes(int batch, int len, int heads, int head_dim) {
    (void)head_dim;   // dq is accumulated in registers by its own kernel: only the row sums need space
    return (size_t)batch * len * heads * sizeof(float);
}

void hdlm_cuda_attention_backward(hdlm_bf16 *dqkv, void *workspace, const hdlm_bf16 *dout, const hdlm_bf16 *out,
                                  const float *lse, const uint32_t *keep_bits, const hdlm_bf16 *qkv,
                                  const hdlm_attn_mask *mask, int batch, int len, int heads, int head_dim,
                                  float dropout, uint64_t key, hdlm_stream stream) {
    HDLM_ASSERT(mask->length == len, "attention mask length %d for sequences of %d", mask->length, len);
    if (batch == 0 || len == 0 || heads == 0) return;
    attn_shape sh = shape_of(len, heads, head_dim, dropout, key);
    float *delta = static_cast<float *>(workspace);
    size_t warps = (size_t)batch * len * heads;
    attention_delta_kernel<<<hdlm_ceil_div(warps * 32, 256), 256, 0, stream>>>(delta, as_bf16(dout), as_bf16(out),
                                                                               batch, sh);
    HDLM_CUDA_LAUNCHED();
    bf16 *dx = as_bf16(dqkv);
    const bf16 *g = as_bf16(dout), *x = as_bf16(qkv);
    if (forward_on_tensor_cores(head_dim, qkv, out) && aligned16(dqkv) && aligned16(dout)) {
        HDLM_ASSERT(dropout == 0.0f || keep_bits != NULL,
                    "attention backward with dropout %g: keep_bits must be the buffer its forward filled",
                    (double)dropout);
        backward_tc_launch(dx, delta, g, lse, keep_bits, x, *mask, batch, sh, stream);
    }
    else if (head_dim <= 32) backward_launch<32>(dx, delta, g, lse, x, *mask, batch, sh, stream);
    else if (head_dim <= 64) backward_launch<64>(dx, delta, g, lse, x, *mask, batch, sh, stream);
    else backward_launch<128>(dx, delta, g, lse, x, *mask, batch, sh, stream);
}

// GPU twins of the elementwise DDiT layers (src/cuda/cuda_ops.h; CPU twins src/model/layer_layernorm.c,
// layer_rotary.c, layer_dropout.c, layer_embedding.c, layer_adaln.c, method §7): the same fp32 math on bf16/fp32
// storage, LayerNorm statistics in fp32, reductions over tokens in a fixed order (no float atomics).
#include <initializer_list>

#include "column_reduce.cuh"
#include "cuda_internal.cuh"

#define LAYERNORM_EPS 1e-5f
enum { WARP = 32, ROWS_PER_BLOCK = 8, EMBED_BUCKETS = 64, EMBED_BUCKETS_PER_BLOCK = 4 };

__device__ inline float warp_sum(float x) {
    for (int o = WARP / 2; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

// ---- LayerNorm (+ adaLN modulation) ------------------------------------------------------------------------------

// One warp per row; two passes for the statistics (mean, then the biased variance around it) as on the CPU.
__global__ void __launch_bounds__(WARP *ROWS_PER_BLOCK)
    layernorm_forward_kernel(bf16 *out, float *mean, float *rstd, const float *in, const float *w, const bf16 *shift,
                             const bf16 *scale, int mod_stride, int n, int d) {
    int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / WARP, lane = threadIdx.x % WARP;
    if (row >= n) return;   // the whole warp leaves together, so the shuffles below see all 32 lanes
    const float *x = in + (size_t)row * d;
    float sum = 0.0f;
    for (int i = lane; i < d; i += WARP) sum += x[i];
    float m = warp_sum(sum) / (float)d;
    float var = 0.0f;
    for (int i = lane; i < d; i += WARP) var += (x[i] - m) * (x[i] - m);
    float s = 1.0f / sqrtf(warp_sum(var) / (float)d + LAYERNORM_EPS);
    bf16 *o = out + (size_t)row * d;
    for (int i = lane; i < d; i += WARP) {
        float y = (x[i] - m) * s * w[i];
        if (scale) {
            size_t k = (size_t)row * mod_stride + i;
            y = y * (1.0f + __bfloat162float(scale[k])) + __bfloat162float(shift[k]);
        }
        o[i] = __float2bfloat16_rn(y);
    }
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = s;
    }
}

void hdlm_cuda_layernorm_forward(hdlm_bf16 *out, float *mean, float *rstd, const float *in, const float *w,
                                 const hdlm_bf16 *shift, const hdlm_bf16 *scale, int mod_stride, int n, int d,
                                 hdlm_stream stream) {
    HDLM_ASSERT((shift == NULL) == (scale == NULL), "layernorm: shift and scale go together");
    if (n <= 0) return;
    layernorm_forward_kernel<<<hdlm_ceil_div(n, ROWS_PER_BLOCK), WARP * ROWS_PER_BLOCK, 0, (cudaStream_t)stream>>>(
        as_bf16(out), mean, rstd, in, w, as_bf16(shift), as_bf16(scale), mod_stride, n, d);
    HDLM_CUDA_LAUNCHED();
}

// din += s·(g − mean(g) − x̂·mean(g·x̂)) with g = dout ⊙ (1 + scale) ⊙ w; dshift = dout, dscale = dout ⊙ x̂·w.
// x̂·w is recomputed in fp32 from the row statistics, so the forward pass keeps no x̂·w activation.
__global__ void __launch_bounds__(WARP *ROWS_PER_BLOCK)
    layernorm_backward_kernel(float *din, bf16 *dshift, bf16 *dscale, const bf16 *dout, const float *in,
                              const float *w, const float *mean, const float *rstd, const bf16 *scale, int mod_stride,
                              int n, int d) {
    int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / WARP, lane = threadIdx.x % WARP;
    if (row >= n) return;
    const float *x = in + (size_t)row * d;
    const bf16 *dy = dout + (size_t)row * d;
    const bf16 *sc = scale ? scale + (size_t)row * mod_stride : NULL;
    float m = mean[row], s = rstd[row];
    float sum_g = 0.0f, sum_gx = 0.0f;
    for (int i = lane; i < d; i += WARP) {
        float g = __bfloat162float(dy[i]) * (sc ? 1.0f + __bfloat162float(sc[i]) : 1.0f) * w[i];
        sum_g += g;
        sum_gx += g * (x[i] - m) * s;
    }
    sum_g = warp_sum(sum_g) / (float)d;
    sum_gx = warp_sum(sum_gx) / (float)d;
    float *dx = din + (size_t)row * d;
    for (int i = lane; i < d; i += WARP) {
        float dyi = __bfloat162float(dy[i]);
        float xh = (x[i] - m) * s;
        float g = dyi * (sc ? 1.0f + __bfloat162float(sc[i]) : 1.0f) * w[i];
        dx[i] += s * (g - sum_g - xh * sum_gx);
        if (sc) {
            size_t k = (size_t)row * mod_stride + i;
            dshift[k] = dy[i];
            dscale[k] = __float2bfloat16_rn(dyi * xh * w[i]);
        }
    }
}

// One term of dw[c]: dout ⊙ (1 + scale) · x̂ at (r, c).
struct layernorm_dw_value {
    const bf16 *dout, *scale;
    const float *in, *mean, *rstd;
    int mod_stride, d;
    __device__ float operator()(int r, int c) const {
        size_t i = (size_t)r * d + c;
        float g = __bfloat162float(dout[i]);
        if (scale) g *= 1.0f + __bfloat162float(scale[(size_t)r * mod_stride + c]);
        return g * (in[i] - mean[r]) * rstd[r];
    }
};

void hdlm_cuda_layernorm_backward(float *din, float *dw, hdlm_bf16 *dshift, hdlm_bf16 *dscale, const hdlm_bf16 *dout,
                                  const float *in, const float *w, const float *mean, const float *rstd,
                                  const hdlm_bf16 *scale, int mod_stride, int n, int d, hdlm_stream stream) {
    HDLM_ASSERT(!scale || (dshift && dscale), "layernorm backward: modulated rows need dshift and dscale");
    if (n <= 0) return;
    cudaStream_t s = (cudaStream_t)stream;
    layernorm_backward_kernel<<<hdlm_ceil_div(n, ROWS_PER_BLOCK), WARP * ROWS_PER_BLOCK, 0, s>>>(
        din, as_bf16(dshift), as_bf16(dscale), as_bf16(dout), in, w, mean, rstd, as_bf16(scale), mod_stride, n, d);
    HDLM_CUDA_LAUNCHED();
    hdlm_column_reduce(dw, layernorm_dw_value{as_bf16(dout), as_bf16(scale), in, mean, rstd, mod_stride, d}, n, d, s);
}

// ---- rotary (rotate-half over the whole head, method §7.4) --------------------------------------------------------

// One block per token row (position p = row % L); sign −1 applies the transpose (backward). q | k of a row are 2H
// consecutive heads of D; a thread rotates the pairs (x[j], x[j + D/2]) of one head for J adjacent j: J = 2 moves
// bf16 pairs (D/2 even), J = 1 single values. Row-level indices keep 64-bit division out of the per-pair work.
template <int J>
__global__ void rotary_kernel(bf16 *qkv, const float *cos_t, const float *sin_t, int len, int heads, int head_dim,
                              float sign) {
    const int half = head_dim / 2, units_per_head = half / J, units = 2 * heads * units_per_head;
    const int p = blockIdx.x % len;
    bf16 *row = qkv + (size_t)blockIdx.x * 3 * heads * head_dim;
    const float *cos_p = cos_t + (size_t)p * half, *sin_p = sin_t + (size_t)p * half;
    for (int u = threadIdx.x; u < units; u += blockDim.x) {
        const int j = J * (u % units_per_head);
        bf16 *x = row + (size_t)(u / units_per_head) * head_dim + j;
        float a[J], b[J], c[J], sn[J];
        if constexpr (J == 2) {
            float2 a2 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(x));
            float2 b2 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(x + half));
            float2 c2 = *reinterpret_cast<const float2 *>(cos_p + j), s2 = *reinterpret_cast<const float2 *>(sin_p + j);
            a[0] = a2.x, a[1] = a2.y, b[0] = b2.x, b[1] = b2.y, c[0] = c2.x, c[1] = c2.y, sn[0] = s2.x, sn[1] = s2.y;
        } else {
            a[0] = __bfloat162float(x[0]), b[0] = __bfloat162float(x[half]), c[0] = cos_p[j], sn[0] = sin_p[j];
        }
        float ra[J], rb[J];
        for (int k = 0; k < J; k++) {
            sn[k] *= sign;
            ra[k] = a[k] * c[k] - b[k] * sn[k];
            rb[k] = b[k] * c[k] + a[k] * sn[k];
        }
        if constexpr (J == 2) {
            *reinterpret_cast<__nv_bfloat162 *>(x) = __floats2bfloat162_rn(ra[0], ra[1]);
            *reinterpret_cast<__nv_bfloat162 *>(x + half) = __floats2bfloat162_rn(rb[0], rb[1]);
        } else {
            x[0] = __float2bfloat16_rn(ra[0]);
            x[half] = __float2bfloat16_rn(rb[0]);
        }
    }
}

static void rotary_launch(hdlm_bf16 *qkv, const float *cos_t, const float *sin_t, int batch, int len, int heads,
                          int head_dim, float sign, hdlm_stream stream) {
    const int rows = batch * len;
    if (rows <= 0 || head_dim < 2) return;
    cudaStream_t s = (cudaStream_t)stream;
    // pairs need 4-byte aligned bf16 pairs and 8-byte aligned float pairs (views may sit anywhere)
    if (head_dim % 4 == 0 && hdlm_pointer_alignment(qkv) >= 4 && hdlm_pointer_alignment(cos_t) >= 8 &&
        hdlm_pointer_alignment(sin_t) >= 8)
        rotary_kernel<2><<<rows, 128, 0, s>>>(as_bf16(qkv), cos_t, sin_t, len, heads, head_dim, sign);
    else
        rotary_kernel<1><<<rows, 128, 0, s>>>(as_bf16(qkv), cos_t, sin_t, len, heads, head_dim, sign);
    HDLM_CUDA_LAUNCHED();
}

void hdlm_cuda_rotary_forward(hdlm_bf16 *qkv, const float *cos_t, const float *sin_t, int batch, int len, int heads,
                              int head_dim, hdlm_stream stream) {
    rotary_launch(qkv, cos_t, sin_t, batch, len, heads, head_dim, 1.0f, stream);
}

void hdlm_cuda_rotary_backward(hdlm_bf16 *dqkv, const float *cos_t, const float *sin_t, int batch, int len, int heads,
                               int head_dim, hdlm_stream stream) {
    rotary_launch(dqkv, cos_t, sin_t, batch, len, heads, head_dim, -1.0f, stream);
}

// ---- gated residual with inverted dropout -----------------------------------------------------------------------

// Element i = r·d + c is kept when hdlm_rng_u16_at(key, i) >= ⌈p·2¹⁶⌉, as on the CPU (src/model/layer_dropout.c): half
// i % 2 of word (i / 2) % 4 of Philox block i / 8, so each thread takes the eight elements of one block.
constexpr int DROP_GROUP = 8;

struct dropout_rule {
    uint64_t key;
    uint32_t keep_min;   // hdlm_dropout_keep_min(p); 0: no dropout
    float keep;          // 1/(1 − p)
};

static dropout_rule dropout_rule_of(float p, uint64_t key) {
    return {key, hdlm_dropout_keep_min(p), 1.0f / (1.0f - p)};
}

__device__ inline void dropout_scales8(float scale[DROP_GROUP], const dropout_rule &rule, size_t block) {
    if (rule.keep_min) {
        uint32_t w[4];
        hdlm_philox4x32_dev(rule.key, 1, block, w);
        for (int k = 0; k < DROP_GROUP; k++) scale[k] = hdlm_u16_of_block(w, k) >= rule.keep_min ? rule.keep : 0.0f;
    } else {
        for (int k = 0; k < DROP_GROUP; k++) scale[k] = 1.0f;
    }
}

// Eight consecutive elements as 16-byte vectors (bf16: one, fp32: two).
__device__ inline void load8(float x[8], const bf16 *p) {
    const uint4 u = *reinterpret_cast<const uint4 *>(p);
    const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&u);
    for (int k = 0; k < 4; k++) {
        float2 f = __bfloat1622float2(h[k]);
        x[2 * k] = f.x, x[2 * k + 1] = f.y;
    }
}
__device__ inline void load8(float x[8], const float *p) {
    const float4 a = reinterpret_cast<const float4 *>(p)[0], b = reinterpret_cast<const float4 *>(p)[1];
    x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w, x[4] = b.x, x[5] = b.y, x[6] = b.z, x[7] = b.w;
}
__device__ inline void store8(bf16 *p, const float x[8]) {
    uint4 u;
    __nv_bfloat162 *h = reinterpret_cast<__nv_bfloat162 *>(&u);
    for (int k = 0; k < 4; k++) h[k] = __floats2bfloat162_rn(x[2 * k], x[2 * k + 1]);
    *reinterpret_cast<uint4 *>(p) = u;
}
__device__ inline void store8(float *p, const float x[8]) {
    reinterpret_cast<float4 *>(p)[0] = make_float4(x[0], x[1], x[2], x[3]);
    reinterpret_cast<float4 *>(p)[1] = make_float4(x[4], x[5], x[6], x[7]);
}

// Whether a residual kernel may move its 8 elements as vectors: they lie in one row (d % 8 = 0, so the gate's too)
// and every row start is 16-byte aligned. Otherwise element by element (the same arithmetic).
static bool residual_vectorised(int d, int gate_stride, std::initializer_list<const void *> pointers) {
    if (d % DROP_GROUP || gate_stride % DROP_GROUP) return false;
    for (const void *p : pointers)
        if (p && hdlm_pointer_alignment(p) < 16) return false;
    return true;
}

__global__ void residual_forward_kernel(float *h_out, const float *h_in, const bf16 *y, const bf16 *gate,
                                        int gate_stride, int n, int d, dropout_rule rule, bool vectorised) {
    size_t total = (size_t)n * d, blocks = (total + DROP_GROUP - 1) / DROP_GROUP;
    for (size_t b = blockIdx.x * (size_t)blockDim.x + threadIdx.x; b < blocks; b += (size_t)gridDim.x * blockDim.x) {
        float scale[DROP_GROUP];
        dropout_scales8(scale, rule, b);
        const size_t i0 = DROP_GROUP * b, r = i0 / d, c0 = i0 % d;
        if (vectorised) {
            float yv[8], hv[8], gv[8];
            load8(yv, y + i0);
            load8(hv, h_in + i0);
            if (gate) load8(gv, gate + r * gate_stride + c0);
            for (int k = 0; k < 8; k++) hv[k] += gate ? yv[k] * scale[k] * gv[k] : yv[k] * scale[k];
            store8(h_out + i0, hv);
            continue;
        }
        for (int k = 0; k < DROP_GROUP && i0 + k < total; k++) {
            size_t i = i0 + k, ri = i / d, c = i % d;
            float v = __bfloat162float(y[i]) * scale[k];
            if (gate) v *= __bfloat162float(gate[ri * gate_stride + c]);
            h_out[i] = h_in[i] + v;
        }
    }
}

void hdlm_cuda_residual_forward(float *h_out, const float *h_in, const hdlm_bf16 *y, const hdlm_bf16 *gate,
                                int gate_stride, int n, int d, float p, uint64_t key, hdlm_stream stream) {
    size_t blocks = ((size_t)n * d + DROP_GROUP - 1) / DROP_GROUP;
    if (!blocks) return;
    bool vectorised = residual_vectorised(d, gate ? gate_stride : 0, {h_out, h_in, y, gate});
    residual_forward_kernel<<<hdlm_elementwise_blocks(blocks, 256), 256, 0, (cudaStream_t)stream>>>(
        h_out, h_in, as_bf16(y), as_bf16(gate), gate_stride, n, d, dropout_rule_of(p, key), vectorised);
    HDLM_CUDA_LAUNCHED();
}

__global__ void residual_backward_kernel(bf16 *dy, bf16 *dgate, const float *dh, const bf16 *y, const bf16 *gate,
                                         int gate_stride, int n, int d, dropout_rule rule, bool vectorised) {
    size_t total = (size_t)n * d, blocks = (total + DROP_GROUP - 1) / DROP_GROUP;
    for (size_t b = blockIdx.x * (size_t)blockDim.x + threadIdx.x; b < blocks; b += (size_t)gridDim.x * blockDim.x) {
        float scale[DROP_GROUP];
        dropout_scales8(scale, rule, b);
        const size_t i0 = DROP_GROUP * b, r = i0 / d, c0 = i0 % d;
        if (vectorised) {
            float g[8], yv[8], gv[8], dg[8];
            load8(g, dh + i0);
            for (int k = 0; k < 8; k++) g[k] *= scale[k];
            if (gate) {
                load8(yv, y + i0);
                load8(gv, gate + r * gate_stride + c0);
                for (int k = 0; k < 8; k++) {
                    dg[k] = g[k] * yv[k];
                    g[k] *= gv[k];
                }
                store8(dgate + r * gate_stride + c0, dg);
            }
            store8(dy + i0, g);
            continue;
        }
        for (int k = 0; k < DROP_GROUP && i0 + k < total; k++) {
            size_t i = i0 + k, ri = i / d, c = i % d;
            float g = dh[i] * scale[k];
            if (gate) {
                size_t gi = ri * gate_stride + c;
                dgate[gi] = __float2bfloat16_rn(g * __bfloat162float(y[i]));
                g *= __bfloat162float(gate[gi]);
            }
            dy[i] = __float2bfloat16_rn(g);
        }
    }
}

void hdlm_cuda_residual_backward(hdlm_bf16 *dy, hdlm_bf16 *dgate, const float *dh, const hdlm_bf16 *y,
                                 const hdlm_bf16 *gate, int gate_stride, int n, int d, float p, uint64_t key,
                                 hdlm_stream stream) {
    size_t blocks = ((size_t)n * d + DROP_GROUP - 1) / DROP_GROUP;
    if (!blocks) return;
    bool vectorised = residual_vectorised(d, gate ? gate_stride : 0, {dy, dgate, dh, y, gate});
    residual_backward_kernel<<<hdlm_elementwise_blocks(blocks, 256), 256, 0, (cudaStream_t)stream>>>(
        as_bf16(dy), as_bf16(dgate), dh, as_bf16(y), as_bf16(gate), gate_stride, n, d, dropout_rule_of(p, key),
        vectorised);
    HDLM_CUDA_LAUNCHED();
}

// ---- token embedding (γ: mixed with the MASK row, method §5.4) ----------------------------------------------------

__global__ void embedding_forward_kernel(float *out, const float *table, const uint32_t *ids, const float *mix,
                                         uint32_t mask_id, int n, int d) {
    size_t total = (size_t)n * d;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / d, c = i % d;
        float e = table[(size_t)ids[r] * d + c];
        if (mix) e = mix[r] * e + (1.0f - mix[r]) * table[(size_t)mask_id * d + c];
        out[i] = e;
    }
}

void hdlm_cuda_embedding_forward(float *out, const float *table, const uint32_t *ids, const float *mix,
                                 uint32_t mask_id, int n, int d, hdlm_stream stream) {
    size_t total = (size_t)n * d;
    if (!total) return;
    embedding_forward_kernel<<<hdlm_elementwise_blocks(total, 256), 256, 0, (cudaStream_t)stream>>>(
        out, table, ids, mix, mask_id, n, d);
    HDLM_CUDA_LAUNCHED();
}

// Tokens repeat, so no two threads may own the same table row: thread (column c, bucket b) adds, in row order, the
// rows whose id ≡ b (mod EMBED_BUCKETS). Every thread scans all ids (a warp-uniform load and branch); the sums are
// in the CPU's order, hence deterministic.
__global__ void __launch_bounds__(WARP *EMBED_BUCKETS_PER_BLOCK)
    embedding_backward_kernel(float *dtable, const float *dout, const uint32_t *ids, const float *mix, int n, int d) {
    int c = blockIdx.x * WARP + threadIdx.x;
    uint32_t bucket = blockIdx.y * EMBED_BUCKETS_PER_BLOCK + threadIdx.y;
    if (c >= d) return;
    for (int r = 0; r < n; r++) {
        uint32_t id = ids[r];
        if (id % EMBED_BUCKETS != bucket) continue;
        float w = mix ? mix[r] : 1.0f;
        dtable[(size_t)id * d + c] += w * dout[(size_t)r * d + c];
    }
}

// The MASK row's share under mixing: (1 − mix_r)·dout[r, c].
struct embedding_mask_value {
    const float *dout, *mix;
    int d;
    __device__ float operator()(int r, int c) const { return (1.0f - mix[r]) * dout[(size_t)r * d + c]; }
};

void hdlm_cuda_embedding_backward(float *dtable, const float *dout, const uint32_t *ids, const float *mix,
                                  uint32_t mask_id, int n, int d, hdlm_stream stream) {
    if (n <= 0 || d <= 0) return;
    cudaStream_t s = (cudaStream_t)stream;
    dim3 grid(hdlm_ceil_div(d, WARP), EMBED_BUCKETS / EMBED_BUCKETS_PER_BLOCK), block(WARP, EMBED_BUCKETS_PER_BLOCK);
    embedding_backward_kernel<<<grid, block, 0, s>>>(dtable, dout, ids, mix, n, d);
    HDLM_CUDA_LAUNCHED();
    // Stream order puts this after the scatter, so the MASK row's two kinds of terms never race.
    if (mix) hdlm_column_reduce(dtable + (size_t)mask_id * d, embedding_mask_value{dout, mix, d}, n, d, s);
}

// ---- γ conditioning (method §7.2-7.3) -----------------------------------------------------------------------------

__global__ void sigma_sinusoid_kernel(bf16 *freq, const float *sigma, int n, int dim) {
    int half = dim / 2;
    size_t total = (size_t)n * half;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / half;
        int k = (int)(i % half);
        // fp32 like the CPU and the reference: f_k = exp(−ln(10000)·k/half), argument σ·f_k
        float fk = expf(-logf(10000.0f) * (float)k / (float)half);
        float arg = sigma[r] * fk;
        freq[r * dim + k] = __float2bfloat16_rn(cosf(arg));
        freq[r * dim + half + k] = __float2bfloat16_rn(sinf(arg));
    }
}

void hdlm_cuda_sigma_sinusoid(hdlm_bf16 *freq, const float *sigma, int n, int dim, hdlm_stream stream) {
    size_t total = (size_t)n * (dim / 2);
    if (!total) return;
    sigma_sinusoid_kernel<<<hdlm_elementwise_blocks(total, 256), 256, 0, (cudaStream_t)stream>>>(as_bf16(freq), sigma,
                                                                                                  n, dim);
    HDLM_CUDA_LAUNCHED();
}

__global__ void silu_forward_kernel(bf16 *out, const bf16 *in, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float x = __bfloat162float(in[i]);
        out[i] = __float2bfloat16_rn(x / (1.0f + expf(-x)));
    }
}

__global__ void silu_backward_kernel(bf16 *din, const bf16 *dout, const bf16 *in, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float x = __bfloat162float(in[i]);
        float s = 1.0f / (1.0f + expf(-x));
        din[i] = __float2bfloat16_rn(__bfloat162float(dout[i]) * s * (1.0f + x * (1.0f - s)));
    }
}

void hdlm_cuda_silu_forward(hdlm_bf16 *out, const hdlm_bf16 *in, size_t n, hdlm_stream stream) {
    if (!n) return;
    silu_forward_kernel<<<hdlm_elementwise_blocks(n, 256), 256, 0, (cudaStream_t)stream>>>(as_bf16(out), as_bf16(in),
                                                                                            n);
    HDLM_CUDA_LAUNCHED();
}

void hdlm_cuda_silu_backward(hdlm_bf16 *din, const hdlm_bf16 *dout, const hdlm_bf16 *in, size_t n,
                             hdlm_stream stream) {
    if (!n) return;
    silu_backward_kernel<<<hdlm_elementwise_blocks(n, 256), 256, 0, (cudaStream_t)stream>>>(
        as_bf16(din), as_bf16(dout), as_bf16(in), n);
    HDLM_CUDA_LAUNCHED();
}

// mix = exp(−γσ) per token, the weight of the token's own row in the γ embedding (src/model/model.c).
__global__ void gamma_mix_kernel(float *mix, const float *sigma, float gamma, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        mix[i] = expf(-gamma * sigma[i]);
}

void hdlm_cuda_gamma_mix(float *mix, const float *sigma, float gamma, int n, hdlm_stream stream) {
    if (n <= 0) return;
    gamma_mix_kernel<<<hdlm_elementwise_blocks((size_t)n, 256), 256, 0, (cudaStream_t)stream>>>(mix, sigma, gamma, n);
    HDLM_CUDA_LAUNCHED();
}

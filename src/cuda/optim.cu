// The optimizer on the GPU (src/cuda/cuda_ops.h; CPU twin src/train/optim.c, method §8.2, §8.5): the squared gradient
// norm in fp64, AdamW with torch semantics and the bf16 weight shadow, and the EMA update.
#include <math.h>

#include "cuda_internal.cuh"

enum { SUMSQ_THREADS = 256, SUMSQ_MAX_BLOCKS = 1024 };

// Tree sum of one value per thread in shared memory (fixed pairing, so the same inputs give the same bits).
__device__ inline double block_sum(double x, double *shared) {
    shared[threadIdx.x] = x;
    __syncthreads();
    for (int stride = SUMSQ_THREADS / 2; stride > 0; stride /= 2) {
        if ((int)threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
        __syncthreads();
    }
    return shared[0];
}

// Stage 1: thread t of the grid sums x[i]² for i ≡ t (mod grid size) in fp64; each block writes its tree sum.
__global__ void __launch_bounds__(SUMSQ_THREADS) sum_squares_partial_kernel(double *partial, const float *x, size_t n) {
    __shared__ double shared[SUMSQ_THREADS];
    double s = 0.0;
    for (size_t i = blockIdx.x * (size_t)SUMSQ_THREADS + threadIdx.x; i < n; i += (size_t)gridDim.x * SUMSQ_THREADS)
        s += (double)x[i] * (double)x[i];
    double total = block_sum(s, shared);
    if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

// Stage 2: one block adds the partials (strided per thread, then the same tree).
__global__ void __launch_bounds__(SUMSQ_THREADS) sum_squares_finish_kernel(double *out, const double *partial,
                                                                           int blocks) {
    __shared__ double shared[SUMSQ_THREADS];
    double s = 0.0;
    for (int i = threadIdx.x; i < blocks; i += SUMSQ_THREADS) s += partial[i];
    double total = block_sum(s, shared);
    if (threadIdx.x == 0) *out = total;
}

void hdlm_cuda_sum_squares(double *out, const float *x, size_t n, hdlm_stream stream) {
    cudaStream_t s = (cudaStream_t)stream;
    // The grid depends on n only (not on the GPU), so the summation order — and the result — is reproducible.
    int blocks = hdlm_ceil_div(n ? n : 1, SUMSQ_THREADS * 4);
    if (blocks > SUMSQ_MAX_BLOCKS) blocks = SUMSQ_MAX_BLOCKS;
    double *partial;
    HDLM_CUDA_CHECK(cudaMallocAsync((void **)&partial, (size_t)blocks * sizeof(double), s));
    sum_squares_partial_kernel<<<blocks, SUMSQ_THREADS, 0, s>>>(partial, x, n);
    HDLM_CUDA_LAUNCHED();
    sum_squares_finish_kernel<<<1, SUMSQ_THREADS, 0, s>>>(out, partial, blocks);
    HDLM_CUDA_LAUNCHED();
    HDLM_CUDA_CHECK(cudaFreeAsync(partial, s));
}

// The per-step constants of hdlm_adamw_update, computed on the host in the same precision as there.
typedef struct {
    float decay, b1, b2, eps, step_size, bc2_sqrt, grad_scale;
} adamw_step;

// Same fp32 operations in the same order as src/train/optim.c (torch.optim.AdamW's single-tensor path). The _rn
// intrinsics keep nvcc from fusing multiply-adds, so each operation rounds as the C code says.
__global__ void adamw_kernel(float *params, bf16 *params_bf16, const float *grads, float *m, float *v, size_t n,
                             adamw_step k) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float g = __fmul_rn(grads[i], k.grad_scale);
        float p = __fmul_rn(params[i], k.decay);
        float mi = __fadd_rn(__fmul_rn(m[i], k.b1), __fmul_rn(1.0f - k.b1, g));
        float vi = __fadd_rn(__fmul_rn(v[i], k.b2), __fmul_rn(__fmul_rn(1.0f - k.b2, g), g));
        m[i] = mi;
        v[i] = vi;
        float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), k.bc2_sqrt), k.eps);
        p = __fsub_rn(p, __fmul_rn(k.step_size, __fdiv_rn(mi, denom)));
        params[i] = p;
        if (params_bf16) params_bf16[i] = __float2bfloat16_rn(p);
    }
}

void hdlm_cuda_adamw_update(float *params, hdlm_bf16 *params_bf16, const float *grads, float *m, float *v, size_t n,
                            const hdlm_adamw_config *config, float lr, int64_t step, float grad_scale,
                            hdlm_stream stream) {
    HDLM_ASSERT(step >= 1, "AdamW update count starts at 1");
    if (!n) return;
    double bc1 = 1.0 - pow(config->beta1, (double)step), bc2 = 1.0 - pow(config->beta2, (double)step);
    adamw_step k = {(float)(1.0 - (double)lr * config->weight_decay),
                    (float)config->beta1,
                    (float)config->beta2,
                    (float)config->eps,
                    (float)((double)lr / bc1),
                    (float)sqrt(bc2),
                    grad_scale};
    adamw_kernel<<<hdlm_elementwise_blocks(n, 256), 256, 0, (cudaStream_t)stream>>>(params, as_bf16(params_bf16), grads,
                                                                                     m, v, n, k);
    HDLM_CUDA_LAUNCHED();
}

// shadow −= (1 − decay)(shadow − params), the form of hdlm_ema_update.
__global__ void ema_kernel(float *shadow, const float *params, size_t n, float one_minus_decay) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        shadow[i] = __fsub_rn(shadow[i], __fmul_rn(one_minus_decay, __fsub_rn(shadow[i], params[i])));
}

void hdlm_cuda_ema_update(float *shadow, const float *params, size_t n, float decay, hdlm_stream stream) {
    if (!n) return;
    ema_kernel<<<hdlm_elementwise_blocks(n, 256), 256, 0, (cudaStream_t)stream>>>(shadow, params, n,
                                                                                   (float)(1.0 - (double)decay));
    HDLM_CUDA_LAUNCHED();
}

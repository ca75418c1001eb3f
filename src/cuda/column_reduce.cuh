// src/cuda/column_reduce.cuh — deterministic column sums out[c] += Σ_r value(r, c) without float atomics, for
// parameter gradients reduced over tokens (LayerNorm weight, bias, the embedding's MASK row).
//
// Stage 1: blocks of COLUMN_REDUCE_X columns × one chunk of rows; thread row y sums rows ≡ y (mod COLUMN_REDUCE_Y) of
// the chunk, the block adds its thread rows in y order and writes one partial per (chunk, column). Stage 2 adds the
// chunks' partials in chunk order. The order depends only on n, so results are bitwise reproducible.
#ifndef HDLM_COLUMN_REDUCE_CUH
#define HDLM_COLUMN_REDUCE_CUH

#include "cuda_internal.cuh"

enum { COLUMN_REDUCE_X = 32, COLUMN_REDUCE_Y = 8, COLUMN_REDUCE_MAX_CHUNKS = 128, COLUMN_REDUCE_MIN_ROWS = 64 };

template <typename Value>
__global__ void __launch_bounds__(COLUMN_REDUCE_X *COLUMN_REDUCE_Y)
    column_partial_kernel(float *partial, Value value, int n, int cols, int rows_per_chunk) {
    __shared__ float sums[COLUMN_REDUCE_Y][COLUMN_REDUCE_X];
    int c = blockIdx.x * COLUMN_REDUCE_X + threadIdx.x;
    int r0 = blockIdx.y * rows_per_chunk, r1 = min(n, r0 + rows_per_chunk);
    float s = 0.0f;
    if (c < cols)
        for (int r = r0 + threadIdx.y; r < r1; r += COLUMN_REDUCE_Y) s += value(r, c);
    sums[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
        float total = 0.0f;
        for (int y = 0; y < COLUMN_REDUCE_Y; y++) total += sums[y][threadIdx.x];
        partial[(size_t)blockIdx.y * cols + c] = total;
    }
}

static __global__ void column_finish_kernel(float *out, const float *partial, int chunks, int cols) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float total = 0.0f;
    for (int k = 0; k < chunks; k++) total += partial[(size_t)k * cols + c];
    out[c] += total;
}

// out[c] += Σ_{r < n} value(r, c) for c < cols; value is a __device__ functor (r, c) → float. The partials live in
// stream-ordered memory (cudaMallocAsync), so concurrent calls on different streams do not share scratch.
template <typename Value>
static void hdlm_column_reduce(float *out, Value value, int n, int cols, cudaStream_t stream) {
    if (n <= 0 || cols <= 0) return;
    int rows_per_chunk = hdlm_ceil_div(n, COLUMN_REDUCE_MAX_CHUNKS);
    if (rows_per_chunk < COLUMN_REDUCE_MIN_ROWS) rows_per_chunk = COLUMN_REDUCE_MIN_ROWS;
    int chunks = hdlm_ceil_div(n, rows_per_chunk);
    float *partial;
    HDLM_CUDA_CHECK(cudaMallocAsync((void **)&partial, (size_t)chunks * cols * sizeof(float), stream));
    dim3 grid(hdlm_ceil_div(cols, COLUMN_REDUCE_X), chunks), block(COLUMN_REDUCE_X, COLUMN_REDUCE_Y);
    column_partial_kernel<<<grid, block, 0, stream>>>(partial, value, n, cols, rows_per_chunk);
    HDLM_CUDA_LAUNCHED();
    column_finish_kernel<<<hdlm_ceil_div(cols, 256), 256, 0, stream>>>(out, partial, chunks, cols);
    HDLM_CUDA_LAUNCHED();
    HDLM_CUDA_CHECK(cudaFreeAsync(partial, stream));
}

#endif

// src/cuda/cuda_internal.cuh — what every CUDA source of the backend shares: the C headers (with C linkage),
// checking macros that name the call, file and line, bf16 helpers and the device twin of the dropout rule.
#ifndef HDLM_CUDA_INTERNAL_CUH
#define HDLM_CUDA_INTERNAL_CUH

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "hdlm/common.h"
#include "hdlm/cuda.h"
#include "cuda/cuda_ops.h"
#include "model/layers.h"   // hdlm_dropout_keep_min
}

typedef __nv_bfloat16 bf16;

// A failing CUDA or cuBLASLt call is a bug or a broken device: die (MPI_Abort under MPI) with the call's text.
#define HDLM_CUDA_CHECK(call)                                                                                          \
    do {                                                                                                               \
        cudaError_t err_ = (call);                                                                                     \
        if (err_ != cudaSuccess) HDLM_DIE("CUDA error %s in %s: %s", cudaGetErrorName(err_), #call,                   \
                                          cudaGetErrorString(err_));                                                   \
    } while (0)
#define HDLM_CUBLAS_CHECK(call)                                                                                        \
    do {                                                                                                               \
        cublasStatus_t st_ = (call);                                                                                   \
        if (st_ != CUBLAS_STATUS_SUCCESS) HDLM_DIE("cuBLASLt error %d in %s", (int)st_, #call);                       \
    } while (0)
// After a kernel launch: configuration errors surface here, execution errors at the next synchronisation.
#define HDLM_CUDA_LAUNCHED() HDLM_CUDA_CHECK(cudaGetLastError())

static inline int hdlm_ceil_div(size_t a, size_t b) { return (int)((a + b - 1) / b); }
// Blocks for an elementwise grid-stride loop over n items: one item per thread up to 65536 blocks, then striding.
static inline int hdlm_elementwise_blocks(size_t n, int threads) {
    size_t blocks = (n + (size_t)threads - 1) / (size_t)threads;
    return blocks < 1 ? 1 : blocks > 65536 ? 65536 : (int)blocks;
}

// Largest power of two (≤ 256) dividing the address: the alignment cuBLASLt's heuristic may assume for a matrix
// (views into flat buffers are not 256-byte aligned).
static inline uint32_t hdlm_pointer_alignment(const void *p) {
    uintptr_t a = (uintptr_t)p;
    uint32_t align = 256;
    while (align > 1 && a % align) align /= 2;
    return align;
}

static inline const bf16 *as_bf16(const hdlm_bf16 *p) { return reinterpret_cast<const bf16 *>(p); }
static inline bf16 *as_bf16(hdlm_bf16 *p) { return reinterpret_cast<bf16 *>(p); }

// Philox4x32-10, bit-identical to src/core/rng.c, so dropout masks on the GPU equal the CPU's for the same key.
__host__ __device__ inline void hdlm_philox4x32_dev(uint64_t key, uint64_t counter_hi, uint64_t counter_lo,
                                                    uint32_t out[4]) {
    const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
    uint32_t c0 = (uint32_t)counter_lo, c1 = (uint32_t)(counter_lo >> 32);
    uint32_t c2 = (uint32_t)counter_hi, c3 = (uint32_t)(counter_hi >> 32);
    uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)M0 * c0, p1 = (uint64_t)M1 * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c0 = n0;
        c1 = (uint32_t)p1;
        c2 = n2;
        c3 = (uint32_t)p0;
        k0 += W0;
        k1 += W1;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

// Draw `pos` (0..7) of a Philox block on the dropout stream, the CPU's hdlm_rng_u16_at: half pos % 2 of word pos / 2,
// selected without indexing the array by a run-time value (which would put it in local memory).
__device__ inline uint32_t hdlm_u16_of_block(const uint32_t w[4], unsigned pos) {
    uint32_t word = pos & 4 ? (pos & 2 ? w[3] : w[2]) : (pos & 2 ? w[1] : w[0]);
    return pos & 1 ? word >> 16 : word & 0xffffu;
}

// The cuBLASLt handle and workspace of hdlm_cuda_init (src/cuda/runtime.cu).
cublasLtHandle_t hdlm_cublaslt_handle(void);
void *hdlm_cublaslt_workspace(size_t *bytes);

// A matrix as cuBLASLt sees it: column-major, rows × cols with leading dimension ld (a row-major X[r, c] is the
// column-major Xᵀ: rows = c, cols = r, ld = c).
typedef struct {
    const void *ptr;
    cudaDataType_t type;
    int rows, cols, ld;
} hdlm_lt_matrix;

// D = op(A)·op(B) + β·D through cuBLASLt (fp32 compute, no epilogue; src/cuda/linear.cu), with the algorithm the
// heuristic picks for the problem (remembered per problem). Dies when cuBLASLt has none.
void hdlm_lt_matmul_must(hdlm_lt_matrix a, bool trans_a, hdlm_lt_matrix b, bool trans_b, hdlm_lt_matrix d,
                         float beta, cudaStream_t stream);

// hdlm_cuda_linear_backward with dout rows dout_ld elements apart (the head pads them to 16-byte multiples, which
// cuBLASLt's fast Hopper kernels require of a leading dimension).
void hdlm_linear_backward_strided(hdlm_bf16 *din, float *dw, float *db, const hdlm_bf16 *dout, int dout_ld,
                                  const hdlm_bf16 *in, const hdlm_bf16 *w, const hdlm_bf16 *pre_gelu, int n,
                                  int in_dim, int out_dim, bool accumulate, cudaStream_t stream);

#endif

// hdlm/blas.h — fp32 GEMM with the kernels chosen for this CPU.
//
// AVX-512 builds use hdlm's own kernel (src/core/blas_kernel.c): BLIS 0.9 has no Zen 4/5 kernels, and its `skx` sgemm
// reached 74–85 % of the FMA peak on the DDiT's shapes there against 85–93 % (docs/model.md). Other builds use BLIS,
// and so do AVX-512 builds when the environment says HDLM_GEMM=blis (tests of the AVX2 machines' path).
// BLIS 0.9.0 does not recognise every CPU: on Zen 5 it silently falls back to its generic kernels (5x slow). So
// hdlm_blas_init() picks the kernel set from cpuid before the first BLIS call: AVX-512 -> skx;
// otherwise BLIS's own choice, unless that is `generic` on an AVX2+FMA CPU -> zen3.
#ifndef HDLM_BLAS_H
#define HDLM_BLAS_H

#include <stdbool.h>

// Selects the kernels and sets the number of BLIS threads (threads <= 0: omp_get_max_threads()). Idempotent for the
// kernel choice (made once per process); the thread count is updated on every call.
void hdlm_blas_init(int threads);
// The thread count GEMMs use (the last hdlm_blas_init's; calls hdlm_blas_init(0) when needed).
int hdlm_blas_threads(void);
// The name of the kernel set in use ("hdlm avx512", or BLIS's "skx", "zen3", ...); calls hdlm_blas_init(0) when
// needed.
const char *hdlm_blas_arch(void);
// fp32 lanes of the kernel set's FMAs (16: AVX-512, 8: AVX2 / AVX, 4: SSE or generic): the vector width whose FMA
// peak bounds the GEMMs (hdlm_fma_peak_flops measures at it).
int hdlm_blas_lanes(void);

// Row-major C[m,n] = alpha * op(A)[m,k] * op(B)[k,n] + beta * C. op(A) = A (lda = row stride of A[m,k]) or, with
// trans_a, the transpose of a row-major A[k,m] (lda its row stride); likewise B. Uses hdlm_blas_threads() threads,
// each computing a slice of C (called inside an OpenMP parallel region: one thread); the bits do not depend on the
// thread count.
void hdlm_sgemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                const float *b, int ldb, float beta, float *c, int ldc);
// hdlm_sgemm, then bias[j] added to every row of C (bias NULL: none) with its own rounding, as a separate pass would:
// the nn.Linear forward. hdlm's kernel adds it as each tile is stored, which saves that pass over C.
void hdlm_sgemm_bias(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                     const float *b, int ldb, float beta, float *c, int ldc, const float *bias);
// The same on the calling thread only: for GEMMs issued from inside an OpenMP parallel region.
void hdlm_sgemm_serial(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                       const float *b, int ldb, float beta, float *c, int ldc);

// W[n, k] (row-major, the nn.Linear layout) packed once for many products C[m, n] = A[m, k]·Wᵀ with few rows m
// (inference; src/core/blas_packed.c). The result reproduces, bit for bit, what hdlm_sgemm(false, true, ...) computes
// (one FMA chain per depth block of k, the blocks' sums added in order; the blocks are hdlm's or BLIS's KC), so
// callers can mix the two; tests/test_kv_cache.c checks it. Parallel over panels of W (OpenMP) when the product is
// not tiny.
typedef struct {
    int n, k;
    int kc_def, kc_max;   // the depth blocking of hdlm_sgemm's kernel for this CPU
    float *data;          // ⌈n/32⌉ panels [k][32], zero-padded
} hdlm_packed_weights;
void hdlm_packed_weights_init(hdlm_packed_weights *p, const float *w, int n, int k);
void hdlm_packed_weights_free(hdlm_packed_weights *p);
// C = A·Wᵀ, then + bias[j] on every row (bias NULL: none), as hdlm_sgemm_bias(false, true, ...) computes it, then
// + row_add[r] on every entry of row r (NULL: none; the γ head's shift, method §5.4), rounded as a separate pass.
void hdlm_sgemm_packed(int m, const float *a, int lda, const hdlm_packed_weights *w, const float *bias,
                       const float *row_add, float *c, int ldc);
// The same with row r of C at c_rows[r] (rows anywhere: an inference forward writes the few rows it computes to their
// own places directly).
void hdlm_sgemm_packed_rows(int m, const float *a, int lda, const hdlm_packed_weights *w, const float *bias,
                            const float *row_add, float *const *c_rows);
#endif

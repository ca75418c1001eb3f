// Internal to the GEMM files (src/core/blas.c, src/core/blas_kernel.c, src/core/blas_packed.c).
#ifndef HDLM_BLAS_INTERNAL_H
#define HDLM_BLAS_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

// Depth blocking of hdlm_sgemm_kernel: one FMA chain per element and block of this many k (the last one shorter).
enum { DEPTH_BLOCK = 1024 };

// hdlm's own GEMM (src/core/blas_kernel.c, AVX-512 builds only), same contract as hdlm_sgemm, on `threads` threads;
// bias (NULL: none) as in hdlm_sgemm_bias.
void hdlm_sgemm_kernel(int threads, bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a,
                       int lda, const float *b, int ldb, float beta, float *c, int ldc, const float *bias);

// Whether hdlm_sgemm runs hdlm_sgemm_kernel (else BLIS); initialises the choice when needed.
bool hdlm_blas_own_kernel(void);

// A core's L2 cache in bytes, as the C library reads it from the CPU (1 MB when it cannot tell); asked once, since
// the answer costs a cpuid, which a virtual machine traps. The products size their panel groups by it.
size_t hdlm_l2_bytes(void);

// Adds bias[j] to every row of C[m, n] (OpenMP when large and not inside a parallel region).
void hdlm_add_bias_rows(float *c, int ldc, int m, int n, const float *bias);
#endif

// fp32 GEMM: hdlm's own kernel on AVX-512 CPUs (src/core/blas_kernel.c), elsewhere BLIS with the kernel set selected
// from cpuid (see include/hdlm/blas.h).
#include "hdlm/blas.h"

#include <blis.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "blas_internal.h"
#include "hdlm/common.h"

size_t hdlm_l2_bytes(void) {
    static _Atomic size_t bytes;   // whichever thread asks first stores the same value
    if (bytes == 0) {
        long b = sysconf(_SC_LEVEL2_CACHE_SIZE);
        bytes = b > 0 ? (size_t)b : (size_t)1 << 20;
    }
    return bytes;
}

static int blas_ready;        // kernel choice made (first call, before any other BLIS use)
static bool blas_own_kernel;  // hdlm_sgemm_kernel (AVX-512 builds, unless HDLM_GEMM=blis), else BLIS

// Would BLIS pick its generic kernels here? BLIS latches its choice at initialisation, so ask a child process.
static bool blas_default_is_generic(void) {
    pid_t pid = fork();
    if (pid == 0) {
        bli_init();
        _exit(bli_arch_query_id() == BLIS_ARCH_GENERIC ? 1 : 0);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid) return false;
    return WIFEXITED(status) && WEXITSTATUS(status) == 1;
}

static void blas_select_kernels(void) {
    // HDLM_GEMM=blis runs BLIS in an AVX-512 build too: with BLIS_ARCH_TYPE=6 (zen3), the AVX2 machines' GEMMs can be
    // tested here (tests/CMakeLists.txt).
    const char *choice = getenv("HDLM_GEMM");
#if defined(__AVX512F__)
    blas_own_kernel = true;
    if (choice && strcmp(choice, "hdlm") != 0 && strcmp(choice, "blis") != 0)
        HDLM_DIE("HDLM_GEMM='%s': expected 'hdlm' (this build's AVX-512 kernel, the default) or 'blis'", choice);
    if (choice && strcmp(choice, "blis") == 0) blas_own_kernel = false;
#else
    if (choice && strcmp(choice, "blis") != 0)
        HDLM_DIE("HDLM_GEMM='%s': this build (no AVX-512) has only 'blis'", choice);
#endif
    // BLIS reads BLIS_ARCH_TYPE once, at its initialisation: set it before the first BLIS call. A user's explicit
    // choice wins.
    if (getenv("BLIS_ARCH_TYPE") == NULL) {
        if (__builtin_cpu_supports("avx512f")) setenv("BLIS_ARCH_TYPE", "0", 1);   // skx
        else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && blas_default_is_generic())
            setenv("BLIS_ARCH_TYPE", "6", 1);                                        // zen3 (AVX2 + FMA kernels)
    }
    bli_init();
    if (bli_arch_query_id() == BLIS_ARCH_GENERIC) hdlm_warn("BLIS uses its generic (slow) kernels on this CPU\n");
}

void hdlm_blas_init(int threads) {
    if (!blas_ready) {
#pragma omp critical(hdlm_blas_init)
        if (!blas_ready) {
            blas_select_kernels();
            blas_ready = 1;
        }
    }
    bli_thread_set_num_threads(threads > 0 ? threads : omp_get_max_threads());
}

int hdlm_blas_threads(void) {
    if (!blas_ready) hdlm_blas_init(0);
    int threads = (int)bli_thread_get_num_threads();
    return threads > 1 ? threads : 1;
}

bool hdlm_blas_own_kernel(void) {
    if (!blas_ready) hdlm_blas_init(0);
    return blas_own_kernel;
}

const char *hdlm_blas_arch(void) {
    return hdlm_blas_own_kernel() ? "hdlm avx512" : bli_arch_string(bli_arch_query_id());
}

int hdlm_blas_lanes(void) {
    if (hdlm_blas_own_kernel()) return 16;
    switch (bli_arch_query_id()) {
    case BLIS_ARCH_SKX:
    case BLIS_ARCH_KNL: return 16;
    case BLIS_ARCH_HASWELL:
    case BLIS_ARCH_SANDYBRIDGE:
    case BLIS_ARCH_ZEN3:
    case BLIS_ARCH_ZEN2:
    case BLIS_ARCH_ZEN:
    case BLIS_ARCH_EXCAVATOR:
    case BLIS_ARCH_STEAMROLLER:
    case BLIS_ARCH_PILEDRIVER:
    case BLIS_ARCH_BULLDOZER: return 8;
    default: return 4;
    }
}

static void blas_gemm(rntm_t *rntm, bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a,
                      int lda, const float *b, int ldb, float beta, float *c, int ldc) {
    if (m == 0 || n == 0) return;
    // Transposes are expressed as strides (row-major A[m,k]: rs = lda, cs = 1; its transpose: rs = 1, cs = lda).
    inc_t rsa = trans_a ? 1 : lda, csa = trans_a ? lda : 1;
    inc_t rsb = trans_b ? 1 : ldb, csb = trans_b ? ldb : 1;
    bli_sgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, m, n, k, &alpha, (float *)a, rsa, csa, (float *)b, rsb, csb,
                 &beta, c, ldc, 1, NULL, rntm);
}

// Each thread computes one slice of C with single-threaded BLIS: rows when C is taller than wide, else columns, so
// only the smaller operand is packed twice. BLIS's own threads share packed panels but meet at barriers several
// times per call; on a shared machine one preempted thread then stalls both (the DDiT step's GEMMs took twice as long
// that way under a load average of 4), while on an idle machine the two forms run at the same rate. The k order of
// every element is that of a single-threaded call, so results do not depend on the thread count. Slices are
// multiples of 32 rows/columns (the micro-kernel tiles) apart from the last.
static void blas_gemm_sliced(int threads, bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a,
                             int lda, const float *b, int ldb, float beta, float *c, int ldc) {
    bool rows = m >= n;
    int extent = rows ? m : n;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        int lo = (int)((long)extent * t / nt) / 32 * 32;
        int hi = t == nt - 1 ? extent : (int)((long)extent * (t + 1) / nt) / 32 * 32;
        rntm_t rntm;
        bli_rntm_init(&rntm);
        bli_rntm_set_num_threads(1, &rntm);
        // BLIS's small-matrix ("sup") kernels sum in another order (some in vector partial sums) than its packed
        // path, and which path a product takes depends on m: the KV cache's products of a few rows could not give
        // the uncached forward's bits (hdlm_sgemm_packed reproduces the packed path).
        bli_rntm_disable_l3_sup(&rntm);
        if (hi > lo && rows)
            blas_gemm(&rntm, trans_a, trans_b, hi - lo, n, k, alpha, trans_a ? a + lo : a + (size_t)lo * lda, lda, b,
                      ldb, beta, c + (size_t)lo * ldc, ldc);
        else if (hi > lo)
            blas_gemm(&rntm, trans_a, trans_b, m, hi - lo, k, alpha, a, lda, trans_b ? b + (size_t)lo * ldb : b + lo,
                      ldb, beta, c + lo, ldc);
    }
}

void hdlm_add_bias_rows(float *c, int ldc, int m, int n, const float *bias) {
#pragma omp parallel for schedule(static) if ((size_t)m * n > 65536 && !omp_in_parallel())
    for (int r = 0; r < m; r++) {
        float *row = c + (size_t)r * ldc;
        for (int j = 0; j < n; j++) row[j] += bias[j];
    }
}

static void gemm_on(int threads, bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a,
                    int lda, const float *b, int ldb, float beta, float *c, int ldc, const float *bias) {
#if defined(__AVX512F__)
    if (blas_own_kernel) {
        hdlm_sgemm_kernel(threads, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, bias);
        return;
    }
#endif
    blas_gemm_sliced(threads, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    if (bias) hdlm_add_bias_rows(c, ldc, m, n, bias);
}

void hdlm_sgemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                const float *b, int ldb, float beta, float *c, int ldc) {
    hdlm_sgemm_bias(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, NULL);
}

void hdlm_sgemm_bias(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                     const float *b, int ldb, float beta, float *c, int ldc, const float *bias) {
    int threads = hdlm_blas_threads();   // initialises BLIS outside any parallel region of the GEMM
    gemm_on(omp_in_parallel() ? 1 : threads, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, bias);
}

void hdlm_sgemm_serial(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                       const float *b, int ldb, float beta, float *c, int ldc) {
    if (!blas_ready) hdlm_blas_init(0);
    gemm_on(1, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, NULL);
}

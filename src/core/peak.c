// The machine's fp32 FMA peak: every thread runs independent chains of vector FMAs at once (the two
// vCPUs of one machine kind share execution units, so the all-cores figure is what a GEMM can reach).
#include "hdlm/peak.h"

#include <omp.h>
#include <stdlib.h>
#include <time.h>

#include "hdlm/blas.h"
#include "hdlm/common.h"

// Independent chains of `lanes`-wide vector FMAs (contracted: -ffp-contract=fast), one kernel per vector width, each
// compiled for its instruction set: measured at the width of the GEMM kernels in use (hdlm_blas_lanes), whatever
// -march built the rest (an x86-64-v3 build multiplies with BLIS's AVX-512 kernels on an AVX-512 CPU, BLIS picks
// them at run time, unless BLIS_ARCH_TYPE names AVX2 ones, as on an AVX2-only machine; then 8 lanes). `chains`
// covers FMA latency × ports and, with the two constants, fits the register file (16 ymm/xmm without AVX-512: 16
// chains there spilled, and the AVX2 peak came out at two thirds of what BLIS's kernels reach).
#define FMA_CHAINS(name, lanes, chains, target)                                                                        \
    target static float name(long iterations, float seed, int *flops) {                                                \
        typedef float vec __attribute__((vector_size(lanes * sizeof(float))));                                        \
        vec acc[chains], mul, add;                                                                                     \
        *flops = 2 * chains * lanes; /* per iteration */                                                               \
        for (int c = 0; c < chains; c++)                                                                               \
            for (int l = 0; l < lanes; l++) acc[c][l] = seed + (float)(c * lanes + l) * 1e-3f;                        \
        for (int l = 0; l < lanes; l++) {                                                                              \
            mul[l] = 0.999999f;                                                                                        \
            add[l] = 1e-7f;                                                                                            \
        }                                                                                                              \
        for (long i = 0; i < iterations; i++) {                                                                        \
            for (int c = 0; c < chains; c++) acc[c] = acc[c] * mul + add;                                             \
            __asm__ volatile("" : "+x"(mul)); /* keep the loop from being folded */                                   \
        }                                                                                                              \
        float sum = 0.0f;                                                                                              \
        for (int c = 0; c < chains; c++)                                                                               \
            for (int l = 0; l < lanes; l++) sum += acc[c][l];                                                         \
        return sum;                                                                                                    \
    }

#if defined(__x86_64__)
FMA_CHAINS(fma_chains_16, 16, 16, __attribute__((target("avx512f,fma"))))
FMA_CHAINS(fma_chains_8, 8, 12, __attribute__((target("avx2,fma"))))
#endif
FMA_CHAINS(fma_chains_4, 4, 12, )

// The kernel of the GEMMs' vector width (at most the widest this CPU runs); *flops: the FLOPs of one iteration.
static float fma_chains(long iterations, float seed, int width, int *flops) {
#if defined(__x86_64__)
    if (width >= 16 && __builtin_cpu_supports("avx512f")) return fma_chains_16(iterations, seed, flops);
    if (width >= 8 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return fma_chains_8(iterations, seed, flops);
#endif
    (void)width;
    return fma_chains_4(iterations, seed, flops);
}

double hdlm_fma_peak_flops(int threads, long iterations) {
    double best = 0.0;
    int width = hdlm_blas_lanes();   // outside the parallel region: it may initialise BLIS
    for (int rep = 0; rep < 3; rep++) {
        volatile float sink = 0.0f;
        int per_iteration = 0;
        double t0 = hdlm_time_now();
#pragma omp parallel num_threads(threads)
        {
            int my_flops;
            float s = fma_chains(iterations, (float)omp_get_thread_num(), width, &my_flops);
#pragma omp atomic
            sink += s;
#pragma omp master
            per_iteration = my_flops;
        }
        double dt = hdlm_time_now() - t0;
        double flops = (double)per_iteration * (double)iterations * threads / dt;
        if (flops > best) best = flops;
    }
    return best;
}

double hdlm_fma_peak_flops_settled(int threads) {
    double first = hdlm_fma_peak_flops(threads, 20000000);
    nanosleep(&(struct timespec){0, 500000000}, NULL);
    double second = hdlm_fma_peak_flops(threads, 20000000);
    return first > second ? first : second;
}

double hdlm_read_bandwidth(int threads, size_t bytes) {
    size_t n = bytes / sizeof(float) / 64 * 64;
    float *x = hdlm_aligned_malloc(n * sizeof(float));
#pragma omp parallel for num_threads(threads) schedule(static)
    for (size_t i = 0; i < n; i++) x[i] = (float)(i & 1023);   // touched by the threads that read it
    double best = 0.0;
    for (int rep = 0; rep < 3; rep++) {
        volatile float sink = 0.0f;
        double t0 = hdlm_time_now();
#pragma omp parallel num_threads(threads)
        {
            // four independent sums of 16 floats: one dependent add per line would bound the loop, not the memory
            float acc[4][16] = {{0}};
#pragma omp for schedule(static)
            for (size_t i = 0; i < n; i += 64)
                for (int c = 0; c < 4; c++)
#pragma omp simd
                    for (int l = 0; l < 16; l++) acc[c][l] += x[i + 16 * c + l];
            float s = 0.0f;
            for (int c = 0; c < 4; c++)
                for (int l = 0; l < 16; l++) s += acc[c][l];
#pragma omp atomic
            sink += s;
        }
        double bw = (double)(n * sizeof(float)) / (hdlm_time_now() - t0);
        if (bw > best) best = bw;
    }
    free(x);
    return best;
}

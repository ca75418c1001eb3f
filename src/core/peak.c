// The machine's fp32 FMA peak: every thread runs independent chains of vector FMAs at once (the two
// vCPUs of one machine kind share execution units, so the all-cores figure is what a GEMM can reach).
#include "hdlm/peak.h"

#include <omp.h>

#include "hdlm/common.h"

#define CHAINS 16   // enough independent accumulators to cover FMA latency × ports

// Independent chains of `lanes`-wide vector FMAs (contracted: -ffp-contract=fast), one kernel per vector width, each
// compiled for its instruction set: the widest the CPU runs is measured, whatever -march built the rest (an
// x86-64-v3 build still multiplies with BLIS's AVX-512 kernels on an AVX-512 CPU: BLIS picks them at run time).
#define FMA_CHAINS(name, lanes, target)                                                                                \
    target static float name(long iterations, float seed) {                                                            \
        typedef float vec __attribute__((vector_size(lanes * sizeof(float))));                                        \
        vec acc[CHAINS], mul, add;                                                                                     \
        for (int c = 0; c < CHAINS; c++)                                                                               \
            for (int l = 0; l < lanes; l++) acc[c][l] = seed + (float)(c * lanes + l) * 1e-3f;                        \
        for (int l = 0; l < lanes; l++) {                                                                              \
            mul[l] = 0.999999f;                                                                                        \
            add[l] = 1e-7f;                                                                                            \
        }                                                                                                              \
        for (long i = 0; i < iterations; i++) {                                                                        \
            for (int c = 0; c < CHAINS; c++) acc[c] = acc[c] * mul + add;                                             \
            __asm__ volatile("" : "+x"(mul)); /* keep the loop from being folded */                                   \
        }                                                                                                              \
        float sum = 0.0f;                                                                                              \
        for (int c = 0; c < CHAINS; c++)                                                                               \
            for (int l = 0; l < lanes; l++) sum += acc[c][l];                                                         \
        return sum;                                                                                                    \
    }

#if defined(__x86_64__)
FMA_CHAINS(fma_chains_16, 16, __attribute__((target("avx512f,fma"))))
FMA_CHAINS(fma_chains_8, 8, __attribute__((target("avx2,fma"))))
#endif
FMA_CHAINS(fma_chains_4, 4, )

// The kernel of the widest vectors this CPU runs, and their lanes.
static float fma_chains(long iterations, float seed, int *lanes) {
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx512f")) return *lanes = 16, fma_chains_16(iterations, seed);
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return *lanes = 8, fma_chains_8(iterations, seed);
#endif
    return *lanes = 4, fma_chains_4(iterations, seed);
}

double hdlm_fma_peak_flops(int threads, long iterations) {
    double best = 0.0;
    for (int rep = 0; rep < 3; rep++) {
        volatile float sink = 0.0f;
        int lanes = 4;
        double t0 = hdlm_time_now();
#pragma omp parallel num_threads(threads)
        {
            int my_lanes;
            float s = fma_chains(iterations, (float)omp_get_thread_num(), &my_lanes);
#pragma omp atomic
            sink += s;
#pragma omp master
            lanes = my_lanes;
        }
        double dt = hdlm_time_now() - t0;
        double flops = 2.0 * CHAINS * lanes * (double)iterations * threads / dt;
        if (flops > best) best = flops;
    }
    return best;
}

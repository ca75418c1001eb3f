// The machine's fp32 FMA peak: every thread runs independent chains of vector FMAs at once (the two
// vCPUs of one machine kind share execution units, so the all-cores figure is what a GEMM can reach).
#include "hdlm/peak.h"

#include <omp.h>

#include "hdlm/common.h"

#if defined(__AVX512F__)
#define LANES 16
#elif defined(__AVX__)
#define LANES 8
#else
#define LANES 4
#endif
#define CHAINS 16   // enough independent accumulators to cover FMA latency × ports

typedef float vec __attribute__((vector_size(LANES * sizeof(float))));

static float fma_chains(long iterations, float seed) {
    vec acc[CHAINS], mul, add;
    for (int c = 0; c < CHAINS; c++)
        for (int l = 0; l < LANES; l++) acc[c][l] = seed + (float)(c * LANES + l) * 1e-3f;
    for (int l = 0; l < LANES; l++) {
        mul[l] = 0.999999f;
        add[l] = 1e-7f;
    }
    for (long i = 0; i < iterations; i++) {
        for (int c = 0; c < CHAINS; c++) acc[c] = acc[c] * mul + add;   // contracted to one FMA (-ffp-contract=fast)
        __asm__ volatile("" : "+x"(mul));                              // keep the loop from being folded
    }
    float sum = 0.0f;
    for (int c = 0; c < CHAINS; c++)
        for (int l = 0; l < LANES; l++) sum += acc[c][l];
    return sum;
}

double hdlm_fma_peak_flops(int threads, long iterations) {
    double best = 0.0;
    for (int rep = 0; rep < 3; rep++) {
        volatile float sink = 0.0f;
        double t0 = hdlm_time_now();
#pragma omp parallel num_threads(threads)
        {
            float s = fma_chains(iterations, (float)omp_get_thread_num());
#pragma omp atomic
            sink += s;
        }
        double dt = hdlm_time_now() - t0;
        double flops = 2.0 * CHAINS * LANES * (double)iterations * threads / dt;
        if (flops > best) best = flops;
    }
    return best;
}

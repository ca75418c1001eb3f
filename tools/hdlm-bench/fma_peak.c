// The machine's fp32 FMA peak in GFLOP/s (the measurement lives in the library: include/hdlm/peak.h).
#include "bench.h"
#include "hdlm/peak.h"

double bench_fma_peak(int threads) { return hdlm_fma_peak_flops(threads, 20000000) * 1e-9; }

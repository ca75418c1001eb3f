// hdlm/peak.h — the machine's measured fp32 FMA peak, the denominator of achieved-FLOP/s fractions.
#ifndef HDLM_PEAK_H
#define HDLM_PEAK_H

#include <stddef.h>

// Best of three runs of independent vector-FMA chains on `threads` OpenMP threads, in FLOP/s (an FMA counts 2), at
// the vector width of the GEMM kernels in use (hdlm_blas_lanes).
// `iterations` sets the run length (20e6 ≈ 0.1 s per run on the development machine).
double hdlm_fma_peak_flops(int threads, long iterations);

// The larger of two hdlm_fma_peak_flops(threads, 20e6) measurements half a second apart, the denominator the tools
// report against: a host that takes a vCPU away for a whole measurement (seen: 262 GFLOP/s against 499–517 just
// after) rarely does for both.
double hdlm_fma_peak_flops_settled(int threads);

// Best of three reads of a `bytes` buffer (make it several times the last-level cache) on `threads` OpenMP threads,
// in bytes/s: the memory-bound denominator (a product of one row streams its weights).
double hdlm_read_bandwidth(int threads, size_t bytes);

// The GPU denominator of MFU: dense bf16 tensor-core peak of an H100 SXM (989 TFLOP/s; the H200 has the same).
#define HDLM_GPU_PEAK_BF16_FLOPS 989e12

#endif

// hdlm/peak.h — the machine's measured fp32 FMA peak, the denominator of achieved-FLOP/s fractions.
#ifndef HDLM_PEAK_H
#define HDLM_PEAK_H

// Best of three runs of independent vector-FMA chains on `threads` OpenMP threads, in FLOP/s (an FMA counts 2), at
// the vector width of the GEMM kernels in use (hdlm_blas_lanes).
// `iterations` sets the run length (20e6 ≈ 0.1 s per run on the development machine).
double hdlm_fma_peak_flops(int threads, long iterations);

// The GPU denominator of MFU: dense bf16 tensor-core peak of an H100 SXM (989 TFLOP/s; the H200 has the same).
#define HDLM_GPU_PEAK_BF16_FLOPS 989e12

#endif

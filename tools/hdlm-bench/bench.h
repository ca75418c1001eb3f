// hdlm-bench subcommands: each benchmark is one function taking the arguments after its name.
#ifndef HDLM_BENCH_H
#define HDLM_BENCH_H

typedef struct {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv);
} hdlm_bench_command;

// Forward+backward of DDiT-small against the PyTorch reference, as a fraction of the measured FMA peak.
int hdlm_bench_model(int argc, char **argv);

// This machine's fp32 FMA peak in GFLOP/s with `threads` threads running at once (independent FMA chains).
double hdlm_bench_fma_peak(int threads);

#endif

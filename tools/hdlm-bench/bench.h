// hdlm-bench subcommands. Each is called with argv[0] = the subcommand's name and returns the process exit status;
// hdlm-bench.c has called MPI_Init before and calls MPI_Finalize after.
#ifndef HDLM_BENCH_H
#define HDLM_BENCH_H

int bench_tokenizer_main(int argc, char **argv);   // tools/hdlm-bench/bench_tokenizer.c
int bench_model_main(int argc, char **argv);       // tools/hdlm-bench/bench_model.c
int bench_checkpoint_main(int argc, char **argv);  // tools/hdlm-bench/bench_checkpoint.c
int bench_kvcache_main(int argc, char **argv);     // tools/hdlm-bench/bench_kvcache.c
int bench_train_main(int argc, char **argv);       // tools/hdlm-bench/bench_train.c
int bench_prepare_main(int argc, char **argv);     // tools/hdlm-bench/bench_prepare.c
int bench_eval_main(int argc, char **argv);        // tools/hdlm-bench/bench_eval.c

// This machine's fp32 FMA peak in GFLOP/s with `threads` threads running independent FMA chains at once
// (tools/hdlm-bench/fma_peak.c).
double bench_fma_peak(int threads);

#endif

// hdlm-eval subcommands: each is one row of the table in tools/hdlm-eval.c and one file tools/hdlm-eval/<name>.c.
// A subcommand gets argv with argv[0] = its own name, parses its flags with getopt_long (refusing unknown ones by
// name), prints its own --help, and returns the process exit status (0 ok, 1 bad input or failure, 2 bad usage).
// MPI is initialised before and finalised after the call by main.
#ifndef HDLM_EVAL_H
#define HDLM_EVAL_H

// hdlm-eval mauve --p P --q Q: the MAUVE score of two feature files (docs/mauve.md).
int eval_mauve_main(int argc, char **argv);
// hdlm-eval genppl / features: generative perplexity and MAUVE features under a GPT-2 judge (docs/evaluation-judge.md).
int eval_genppl_main(int argc, char **argv);
int eval_features_main(int argc, char **argv);

// hdlm-eval perplexity --ckpt DIR --data DIR: Monte-Carlo likelihood bound of a token set (method §9.1, A.6).
int eval_perplexity_main(int argc, char **argv);
// hdlm-eval sample --ckpt DIR --n N --out FILE: generation to JSONL (method §6, A.5).
int eval_sample_main(int argc, char **argv);
// hdlm-eval generate --ckpt DIR [--prompt TEXT]: sample's quick look, text on standard output.
int eval_generate_main(int argc, char **argv);

// A model loaded for evaluation, with its training configuration and (unless annealing.type is none) its
// hyperschedule. eval_model_load reads `ckpt` (a checkpoint directory, or a checkpoint root: its newest valid
// checkpoint), EMA weights unless raw. tau > 0 replaces annealing.tau (the reference's eval_tau); `hybrid` training
// schedules are evaluated with the block schedule (method §2.5).
#include <stdbool.h>
#include "hdlm/model.h"
#include "hdlm/schedule.h"
#include "hdlm/train_config.h"
typedef struct {
    hdlm_model *model;
    hdlm_train_config config;
    bool has_schedule;
    hdlm_schedule schedule;
    char path[4096];   // the checkpoint directory read
} eval_model;
int eval_model_load(eval_model *em, const char *ckpt, bool raw, int tau);
// Block diffusion: the ε family on the block schedule at ω < L, scored and sampled block by block (docs/methods.md).
bool eval_model_block_diffusion(const eval_model *em);
void eval_model_free(eval_model *em);

// Progress on stderr with the elapsed time and an ETA, at most every `every` seconds (rank 0 only).
typedef struct {
    const char *what;
    double start, last, every;
} eval_progress;
void eval_progress_init(eval_progress *p, const char *what, double every);
void eval_progress_report(void *ctx, int done, int total);

// Strict number parsing for flags: the whole text must be a number in [lo, hi]; on failure prints
// "hdlm-eval CMD: --FLAG expects ..." to stderr and returns -1.
int eval_parse_int(const char *cmd, const char *flag, const char *text, long lo, long hi, long *out);
int eval_parse_double(const char *cmd, const char *flag, const char *text, double lo, double hi, double *out);
// Prints "hdlm-eval CMD: unknown option 'X' (see hdlm-eval CMD --help)" for the option getopt_long just rejected.
void eval_report_bad_option(const char *cmd, int argc, char **argv, int optopt_value);

#endif

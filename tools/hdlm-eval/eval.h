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

// Strict number parsing for flags: the whole text must be a number in [lo, hi]; on failure prints
// "hdlm-eval CMD: --FLAG expects ..." to stderr and returns -1.
int eval_parse_int(const char *cmd, const char *flag, const char *text, long lo, long hi, long *out);
int eval_parse_double(const char *cmd, const char *flag, const char *text, double lo, double hi, double *out);
// Prints "hdlm-eval CMD: unknown option 'X' (see hdlm-eval CMD --help)" for the option getopt_long just rejected.
void eval_report_bad_option(const char *cmd, int argc, char **argv, int optopt_value);

#endif

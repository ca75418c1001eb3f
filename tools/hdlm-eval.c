// hdlm-eval — evaluation tool: one subcommand per metric (table below; each lives in tools/hdlm-eval/<name>.c).
//   hdlm-eval mauve --p P --q Q [...]   MAUVE of two feature files
//   hdlm-eval perplexity --ckpt DIR --data DIR [...]   likelihood bound of a token set
//   hdlm-eval sample --ckpt DIR --n N --out FILE [...]  generation to JSONL
//   hdlm-eval generate --ckpt DIR [--prompt TEXT]     samples printed as text
//   hdlm-eval genppl / features          gen-PPL and MAUVE features under a GPT-2 judge
// MPI is initialised here once for every subcommand (the model-based ones run on several ranks).
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hdlm/cli.h"
#include "hdlm-eval/eval.h"

static const hdlm_subcommand commands[] = {
    {"mauve", eval_mauve_main, "MAUVE, MAUVE*, frontier integrals of two feature files (.npy or HDF5)"},
    {"perplexity", eval_perplexity_main, "Monte-Carlo likelihood bound (NELBO) of a token set under a checkpoint"},
    {"sample", eval_sample_main, "generation with the ε, γ and ARDM samplers to JSONL"},
    {"generate", eval_generate_main, "a quick look at a checkpoint: samples printed as text (--prompt TEXT)"},
    {"genppl", eval_genppl_main, "generative perplexity of sampled token ids under a GPT-2 judge"},
    {"features", eval_features_main, "MAUVE features (.npy or HDF5) of token ids from a GPT-2 judge"},
};

int eval_parse_int(const char *cmd, const char *flag, const char *text, long lo, long hi, long *out) {
    char *end = NULL;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr, "hdlm-eval %s: --%s expects an integer in [%ld, %ld], got '%s'\n", cmd, flag, lo, hi, text);
        return -1;
    }
    *out = v;
    return 0;
}

int eval_parse_double(const char *cmd, const char *flag, const char *text, double lo, double hi, double *out) {
    char *end = NULL;
    errno = 0;
    double v = strtod(text, &end);
    if (errno != 0 || end == text || *end != '\0' || !isfinite(v) || v < lo || v > hi) {
        fprintf(stderr, "hdlm-eval %s: --%s expects a number in [%g, %g], got '%s'\n", cmd, flag, lo, hi, text);
        return -1;
    }
    *out = v;
    return 0;
}

void eval_report_bad_option(const char *cmd, int argc, char **argv, int optopt_value) {
    const char *shown = optind - 1 < argc ? argv[optind - 1] : "?";
    if (optopt_value > 0)
        fprintf(stderr, "hdlm-eval %s: unknown option '-%c' (see hdlm-eval %s --help)\n", cmd, optopt_value, cmd);
    else
        fprintf(stderr, "hdlm-eval %s: unknown option '%s' (see hdlm-eval %s --help)\n", cmd, shown, cmd);
}

int main(int argc, char **argv) {
    return hdlm_cli_dispatch("hdlm-eval", commands, sizeof commands / sizeof *commands, argc, argv);
}

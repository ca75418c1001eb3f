// hdlm-eval — evaluation tool: one subcommand per metric (table below; each lives in tools/hdlm-eval/<name>.c).
//   hdlm-eval mauve --p P --q Q [...]   MAUVE of two feature files
//   hdlm-eval genppl / features          gen-PPL and MAUVE features under a GPT-2 judge
// MPI is initialised here once for every subcommand (the model-based ones run on several ranks).
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hdlm-eval/eval.h"

typedef struct {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv);
} eval_command;

static const eval_command COMMANDS[] = {
    {"mauve", "MAUVE, MAUVE*, frontier integrals of two feature files (.npy or HDF5)", eval_mauve_main},
    {"genppl", "generative perplexity of sampled token ids under a GPT-2 judge", eval_genppl_main},
    {"features", "MAUVE features (.npy or HDF5) of token ids from a GPT-2 judge", eval_features_main},
};
enum { NUM_COMMANDS = sizeof(COMMANDS) / sizeof(COMMANDS[0]) };

static void print_usage(FILE *out) {
    fprintf(out, "usage: hdlm-eval COMMAND [options]   (hdlm-eval COMMAND --help for its options)\n\ncommands:\n");
    for (int i = 0; i < NUM_COMMANDS; i++) fprintf(out, "  %-12s %s\n", COMMANDS[i].name, COMMANDS[i].summary);
}

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
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        print_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const eval_command *cmd = NULL;
    for (int i = 0; i < NUM_COMMANDS; i++)
        if (strcmp(argv[1], COMMANDS[i].name) == 0) cmd = &COMMANDS[i];
    if (!cmd) {
        fprintf(stderr, "hdlm-eval: unknown command '%s'\n", argv[1]);
        print_usage(stderr);
        return 2;
    }
    // BLIS 0.9.0 does not recognise every AVX-512 CPU (Zen 5) and then runs its generic kernels, 2-5x slower
    // (docs/mauve.md); its skx kernels run on any AVX-512F CPU. An explicit BLIS_ARCH_TYPE wins.
    if (__builtin_cpu_supports("avx512f")) setenv("BLIS_ARCH_TYPE", "0", 0);
    MPI_Init(&argc, &argv);
    int status = cmd->run(argc - 1, argv + 1);
    MPI_Finalize();
    return status;
}

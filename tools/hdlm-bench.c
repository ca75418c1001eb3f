// hdlm-bench: performance benchmarks (not tests). Usage: hdlm-bench COMMAND [options]; hdlm-bench --help lists them.
#include <stdio.h>
#include <string.h>

#include "hdlm-bench/bench.h"

static const hdlm_bench_command commands[] = {
    {"model", "DDiT-small forward+backward: tok/s, GFLOP/s, % of FMA peak, PyTorch in the same run", hdlm_bench_model},
};

static void usage(FILE *out) {
    fprintf(out, "usage: hdlm-bench COMMAND [options]   (hdlm-bench COMMAND --help for its options)\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-8s %s\n", commands[i].name, commands[i].summary);
}

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[1], commands[i].name) == 0) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "hdlm-bench: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}

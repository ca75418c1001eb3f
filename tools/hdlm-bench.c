// hdlm-bench: performance measurements, each next to a baseline run on the same machine in the same run. One
// subcommand per row of the table below; each lives in tools/hdlm-bench/.
#include <mpi.h>
#include <stdio.h>
#include <string.h>

#include "hdlm-bench/bench.h"

typedef struct {
    const char *name;
    int (*main)(int argc, char **argv);
    const char *summary;
} bench_command;

static const bench_command commands[] = {
    {"tokenizer", bench_tokenizer_main, "GPT-2 BPE encoding speed on the default corpus vs the npm encoders"},
    {"model", bench_model_main, "DDiT-small forward+backward: tok/s and % of the FMA peak vs the PyTorch reference"},
    {"checkpoint", bench_checkpoint_main, "DDiT-small checkpoint write/read time and size vs raw disk speed (1-N ranks)"},
    {"kvcache", bench_kvcache_main, "generation with and without the KV cache of settled blocks (ω = L/16, L/4)"},
};

static void print_usage(FILE *f) {
    fprintf(f, "usage: hdlm-bench COMMAND [options]   (hdlm-bench COMMAND --help for its options)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].summary);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rc = 2;
    if (argc < 2) {
        print_usage(stderr);
    } else if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        print_usage(stdout);
        rc = 0;
    } else {
        const bench_command *cmd = NULL;
        for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
            if (strcmp(argv[1], commands[i].name) == 0) cmd = &commands[i];
        if (cmd) rc = cmd->main(argc - 1, argv + 1);
        else {
            fprintf(stderr, "hdlm-bench: unknown command '%s'\n", argv[1]);
            print_usage(stderr);
        }
    }
    MPI_Finalize();
    return rc;
}

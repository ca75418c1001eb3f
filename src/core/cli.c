// Subcommand dispatch for the tools (include/hdlm/cli.h).
#include "hdlm/cli.h"

#include <mpi.h>
#include <stdio.h>
#include <string.h>

#include "hdlm/blas.h"

static void print_usage(FILE *f, const char *tool, const hdlm_subcommand *commands, size_t n) {
    fprintf(f, "usage: %s COMMAND [options]   (%s COMMAND --help for its options)\n\ncommands:\n", tool, tool);
    for (size_t i = 0; i < n; i++) fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].summary);
}

int hdlm_cli_dispatch(const char *tool, const hdlm_subcommand *commands, size_t n_commands, int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        print_usage(argc < 2 ? stderr : stdout, tool, commands, n_commands);
        return argc < 2 ? 2 : 0;
    }
    const hdlm_subcommand *cmd = NULL;
    for (size_t i = 0; i < n_commands; i++)
        if (strcmp(argv[1], commands[i].name) == 0) cmd = &commands[i];
    if (!cmd) {
        fprintf(stderr, "%s: unknown command '%s'\n", tool, argv[1]);
        print_usage(stderr, tool, commands, n_commands);
        return 2;
    }
    hdlm_blas_init(0);   // before any BLIS call: BLIS 0.9.0 picks slow generic kernels on some CPUs
    MPI_Init(&argc, &argv);
    int status = cmd->main(argc - 1, argv + 1);
    MPI_Finalize();
    return status;
}

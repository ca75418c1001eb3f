// hdlm/cli.h — the subcommand table shared by the tools (hdlm-prep, hdlm-eval, hdlm-bench).
#ifndef HDLM_CLI_H
#define HDLM_CLI_H

#include <stddef.h>

typedef struct {
    const char *name;
    int (*main)(int argc, char **argv);   // called with argv[0] = the subcommand's name; returns the exit status
    const char *summary;
} hdlm_subcommand;

// Runs the subcommand named by argv[1] between MPI_Init and MPI_Finalize, after choosing the BLIS kernels for this
// CPU. No command: usage on stderr, status 2; --help: usage on stdout, 0; an unknown command is named, status 2.
int hdlm_cli_dispatch(const char *tool, const hdlm_subcommand *commands, size_t n_commands, int argc, char **argv);

#endif

// hdlm-prep: data preparation. One subcommand per row of the table below; each lives in tools/hdlm-prep/.
//   hdlm-prep tokenize   [--vocab DIR]   text on stdin -> GPT-2 token ids on stdout (one line)
//   hdlm-prep detokenize [--vocab DIR]   token ids on stdin -> text on stdout
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hdlm-prep/prep.h"

typedef struct {
    const char *name;
    int (*main)(int argc, char **argv);
    const char *summary;
} prep_command;

static const prep_command commands[] = {
    {"tokenize", prep_tokenize_main, "text on stdin -> GPT-2 token ids on stdout"},
    {"detokenize", prep_detokenize_main, "GPT-2 token ids on stdin -> text on stdout"},
};

const char *prep_default_vocab_dir(void) {
    const char *env = getenv("HDLM_VOCAB");
    return env && *env ? env : HDLM_SOURCE_DIR "/.cache/gpt2";
}

static void print_usage(FILE *f) {
    fprintf(f, "usage: hdlm-prep COMMAND [options]   (hdlm-prep COMMAND --help for its options)\n\ncommands:\n");
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
        const prep_command *cmd = NULL;
        for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
            if (strcmp(argv[1], commands[i].name) == 0) cmd = &commands[i];
        if (cmd) rc = cmd->main(argc - 1, argv + 1);
        else {
            fprintf(stderr, "hdlm-prep: unknown command '%s'\n", argv[1]);
            print_usage(stderr);
        }
    }
    MPI_Finalize();
    return rc;
}

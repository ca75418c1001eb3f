// hdlm-prep: data preparation. One subcommand per row of the table below; each lives in tools/hdlm-prep/.
//   hdlm-prep tokenize   [--vocab DIR]   text on stdin -> GPT-2 token ids on stdout (one line)
//   hdlm-prep detokenize [--vocab DIR]   token ids on stdin -> text on stdout
//   hdlm-prep prepare --out DIR INPUT...  text files / JSONL / directories -> token shards (docs/prepare.md)
#include <stdlib.h>

#include "hdlm/cli.h"
#include "hdlm-prep/prep.h"

static const hdlm_subcommand commands[] = {
    {"tokenize", prep_tokenize_main, "text on stdin -> GPT-2 token ids on stdout"},
    {"detokenize", prep_detokenize_main, "GPT-2 token ids on stdin -> text on stdout"},
    {"prepare", prep_prepare_main, "text files, JSONL, directories -> token shards + manifest (MPI-parallel)"},
};

int main(int argc, char **argv) {
    return hdlm_cli_dispatch("hdlm-prep", commands, sizeof commands / sizeof *commands, argc, argv);
}

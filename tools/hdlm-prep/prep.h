// hdlm-prep subcommands. Each is called with argv[0] = the subcommand's name and returns the process exit status
// (0 = success); hdlm-prep.c has called MPI_Init before and calls MPI_Finalize after.
#ifndef HDLM_PREP_H
#define HDLM_PREP_H

// tools/hdlm-prep/tokenize.c
int prep_tokenize_main(int argc, char **argv);     // text on stdin -> GPT-2 ids on stdout
int prep_detokenize_main(int argc, char **argv);   // ids on stdin -> text on stdout
// tools/hdlm-prep/prepare.c
int prep_prepare_main(int argc, char **argv);

// The GPT-2 vocabulary directory (encoder.json + vocab.bpe) when --vocab is not given: $HDLM_VOCAB if set, else
// <source dir>/.cache/gpt2 (filled by tools/setup.sh).
const char *prep_default_vocab_dir(void);

#endif

// hdlm-prep subcommands. Each is called with argv[0] = the subcommand's name and returns the process exit status
// (0 = success); hdlm-prep.c has called MPI_Init before and calls MPI_Finalize after.
#ifndef HDLM_PREP_H
#define HDLM_PREP_H

// tools/hdlm-prep/tokenize.c
int prep_tokenize_main(int argc, char **argv);     // text on stdin -> GPT-2 ids on stdout
int prep_detokenize_main(int argc, char **argv);   // ids on stdin -> text on stdout
// tools/hdlm-prep/prepare.c
int prep_prepare_main(int argc, char **argv);

#endif

// hdlm/detokenize.h — the zero-shot evaluation detokenisers (method §9.2): string rewrites that undo the tokenised
// spelling of WikiText, PTB, LM1B, LAMBADA and the scientific papers (PubMed, ArXiv) before GPT-2 BPE encoding.
//
// Each is applied exactly as method §9.2 and docs/prepare.md list it: plain replacements are Python str.replace
// (left to right, non-overlapping); regexes follow Python `re` (\s = Unicode whitespace as str.isspace, \w = letters,
// numbers and '_', `$` = end of text or before a final newline). Input and output are UTF-8; invalid UTF-8 is refused.
#ifndef HDLM_DETOKENIZE_H
#define HDLM_DETOKENIZE_H

#include <stddef.h>

typedef enum {
    HDLM_DETOK_NONE = 0,
    HDLM_DETOK_WIKITEXT,   // "wt" in method §9.2
    HDLM_DETOK_PTB,
    HDLM_DETOK_LM1B,
    HDLM_DETOK_LAMBADA,
    HDLM_DETOK_SCIENTIFIC,   // PubMed and ArXiv (scientific_papers): wikitext, then lm1b
    HDLM_DETOK_OPENWEBTEXT,  // the OpenWebText loader's cleanup: 3+ newlines -> 2, strip (docs/datasets.md)
} hdlm_detokenizer;

// "none", "wikitext" (or "wt"), "ptb", "lm1b", "lambada", "scientific", "openwebtext"; anything else is refused listing the valid names.
int hdlm_detokenizer_parse(const char *name, hdlm_detokenizer *out);
const char *hdlm_detokenizer_name(hdlm_detokenizer d);

// Rewrites text[0..len) into a new NUL-terminated malloc'ed string (*out, *out_len without the NUL).
// HDLM_DETOK_NONE copies. Safe to call from several threads at once.
int hdlm_detokenize(hdlm_detokenizer d, const char *text, size_t len, char **out, size_t *out_len);

#endif

// hdlm/tokenizer.h — GPT-2 byte-level BPE (r50k_base), loading the standard encoder.json + vocab.bpe pair.
//
// Algorithm: ../docs/tokenizer.md and docs/tokenizer.md — byte-to-unicode table, the GPT-2 pre-tokenizer
// regex with Unicode classes (PCRE2, UTF + UCP), merges by rank. The tokenizer never produces special tokens:
// <|endoftext|> in the text is encoded as plain text; the data pipeline appends HDLM_TOKEN_EOT by id.
#ifndef HDLM_TOKENIZER_H
#define HDLM_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#define HDLM_TOKEN_EOT 50256      // <|endoftext|>, appended after every document
#define HDLM_TOKEN_MASK 50257     // the diffusion MASK token (never produced by the tokenizer)
#define HDLM_GPT2_VOCAB 50257     // ids 0..50256
#define HDLM_MODEL_VOCAB 50258    // GPT-2 + MASK: width of the embedding table and output head

typedef struct hdlm_tokenizer hdlm_tokenizer;

// A growable array of token ids.
typedef struct {
    uint32_t *ids;
    size_t len, cap;
} hdlm_tokens;

void hdlm_tokens_push(hdlm_tokens *t, uint32_t id);
void hdlm_tokens_free(hdlm_tokens *t);

// Loads encoder.json and vocab.bpe. A missing, truncated or inconsistent file is refused: -1 and a message naming the
// file and the problem (hdlm_last_error()).
int hdlm_tokenizer_load(hdlm_tokenizer **out, const char *encoder_json_path, const char *vocab_bpe_path);
// Loads <dir>/encoder.json and <dir>/vocab.bpe; dir NULL: hdlm_tokenizer_default_dir().
int hdlm_tokenizer_load_dir(hdlm_tokenizer **out, const char *dir);
// Where the tools look for the GPT-2 files when no flag names them: $HDLM_VOCAB, else <hdlm_share_dir()>/gpt2.
const char *hdlm_tokenizer_default_dir(void);
void hdlm_tokenizer_free(hdlm_tokenizer *tok);

// Offset of the first byte that is not well-formed UTF-8 in s[0..n), n when all of it is.
size_t hdlm_utf8_invalid_at(const char *s, size_t n);
// Appends the ids of `len` bytes of UTF-8 text to `out` (NUL is an ordinary byte). Invalid UTF-8 is refused with the
// byte offset in the message (-1, nothing appended). Safe to call from several threads at once on the same tokenizer:
// each call takes one of the tokenizer's piece caches for its duration.
int hdlm_tokenizer_encode(const hdlm_tokenizer *tok, const char *text, size_t len, hdlm_tokens *out);

// Decodes ids to UTF-8 (invalid sequences that tokens split become U+FFFD, as GPT-2 does). The result is
// NUL-terminated and malloc'ed (*text, *len without the NUL). Ids >= 50257 are refused naming the id; 50256 decodes
// to "<|endoftext|>" unless skip_special is set.
int hdlm_tokenizer_decode(const hdlm_tokenizer *tok, const uint32_t *ids, size_t n, int skip_special, char **text,
                          size_t *len);

#endif

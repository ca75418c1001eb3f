// tokenizer_internal.h — the loaded GPT-2 BPE tables shared by tokenizer.c (loading), tokenizer_encode.c and
// tokenizer_decode.c. Not a public header.
#ifndef HDLM_TOKENIZER_INTERNAL_H
#define HDLM_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "hdlm/tokenizer.h"

#define TOKENIZER_NO_RANK UINT32_MAX
#define TOKENIZER_MERGES (HDLM_GPT2_VOCAB - 257)   // 50,000 merges: ids 256..50255 (ranks fit in 16 bits)
#define TOKENIZER_CACHE_SLOTS 64                    // concurrent encode calls that get a piece cache

typedef struct piece_cache piece_cache;   // tokenizer_encode.c

// One piece cache and the BPE scratch buffers; an encode call owns a slot for its whole duration (busy flag), so
// several threads can encode with the same tokenizer without sharing mutable state.
typedef struct {
    atomic_flag busy;
    piece_cache *cache;   // allocated on first use, freed with the tokenizer
} tokenizer_cache_slot;

struct hdlm_tokenizer {
    uint32_t byte_id[256];   // id of the one-byte token of each byte value
    // Bytes of token id t: token_bytes[token_offset[t] .. token_offset[t + 1]).
    uint32_t token_offset[HDLM_GPT2_VOCAB + 1];
    uint8_t *token_bytes;
    // Merge ranks: open-addressing hash map, one 8-byte slot per merge so the table stays in cache: the pair
    // (left id << 17 | right id) in bits 16..49, its rank in bits 0..15; merge r produces id 256 + r.
    uint64_t *pair_slot;   // UINT64_MAX marks an empty slot
    uint64_t pair_mask;
    uint8_t byte_class[256];    // pre-tokenizer class of each ASCII byte (tokenizer_encode.c)
    pcre2_code *pretokenizer;   // the GPT-2 pre-tokenizer regex (UTF + UCP)
    int pretokenizer_jit;       // 1 when PCRE2's JIT compiled it
    tokenizer_cache_slot slots[TOKENIZER_CACHE_SLOTS];
};

static inline uint64_t tokenizer_pair_key(uint32_t left, uint32_t right) { return (uint64_t)left << 17 | right; }

static inline uint64_t tokenizer_pair_hash(uint64_t key) {
    key ^= key >> 29;
    key *= 0xbf58476d1ce4e5b9ull;
    key ^= key >> 32;
    return key;
}

// Rank of merging (left, right), or TOKENIZER_NO_RANK.
static inline uint32_t tokenizer_pair_rank(const hdlm_tokenizer *tok, uint32_t left, uint32_t right) {
    uint64_t key = tokenizer_pair_key(left, right);
    for (uint64_t i = tokenizer_pair_hash(key) & tok->pair_mask;; i = (i + 1) & tok->pair_mask) {
        uint64_t slot = tok->pair_slot[i];
        if (slot >> 16 == key) return (uint32_t)(slot & 0xFFFF);
        if (slot == UINT64_MAX) return TOKENIZER_NO_RANK;
    }
}

// Length (1..4) of the well-formed UTF-8 sequence at s (n >= 1 bytes available), with its code point in *cp. For
// ill-formed bytes (overlong forms, surrogates, values above U+10FFFF, truncated sequences) returns -k, where k >= 1
// is the length of the "maximal subpart" that one U+FFFD replaces (Unicode §3.9, as Python and WHATWG decoders do).
static inline int tokenizer_utf8_next(const uint8_t *s, size_t n, uint32_t *cp) {
    uint8_t b0 = s[0];
    if (b0 < 0x80) {
        *cp = b0;
        return 1;
    }
    // Valid second-byte range per lead byte (Unicode Table 3-7); other continuation bytes are 80..BF.
    uint8_t lo = 0x80, hi = 0xBF;
    int len;
    if (b0 >= 0xC2 && b0 <= 0xDF) len = 2;
    else if (b0 >= 0xE0 && b0 <= 0xEF) len = 3, lo = b0 == 0xE0 ? 0xA0 : 0x80, hi = b0 == 0xED ? 0x9F : 0xBF;
    else if (b0 >= 0xF0 && b0 <= 0xF4) len = 4, lo = b0 == 0xF0 ? 0x90 : 0x80, hi = b0 == 0xF4 ? 0x8F : 0xBF;
    else return -1;
    if (n < 2 || s[1] < lo || s[1] > hi) return -1;
    uint32_t c = (uint32_t)(b0 & (0x7F >> len)) << 6 | (s[1] & 0x3F);
    for (int i = 2; i < len; i++) {
        if ((size_t)i >= n || (s[i] & 0xC0) != 0x80) return -i;
        c = c << 6 | (s[i] & 0x3F);
    }
    *cp = c;
    return len;
}

// Compiles the pre-tokenizer regex into tok and fills tok->byte_class (0 or -1 with a message).
int tokenizer_pretokenizer_compile(hdlm_tokenizer *tok);
// Frees the piece caches of all slots.
void tokenizer_caches_free(hdlm_tokenizer *tok);

#endif

// GPT-2 BPE decoding (docs/tokenizer.md, step 6): token bytes concatenated, then read as UTF-8 with every
// ill-formed part replaced by U+FFFD, as Python's bytes.decode("utf-8", "replace") does for GPT-2.
#include <stdlib.h>
#include <string.h>

#include "hdlm/common.h"
#include "tokenizer_internal.h"

int hdlm_tokenizer_decode(const hdlm_tokenizer *tok, const uint32_t *ids, size_t n, int skip_special, char **text,
                          size_t *len) {
    *text = NULL;
    *len = 0;
    size_t raw_len = 0;
    for (size_t i = 0; i < n; i++) {
        HDLM_CHECK(ids[i] < HDLM_GPT2_VOCAB, "token id %u at position %zu is not a GPT-2 token (ids are 0..%d)", ids[i],
                   i, HDLM_GPT2_VOCAB - 1);
        if (!(skip_special && ids[i] == HDLM_TOKEN_EOT))
            raw_len += tok->token_offset[ids[i] + 1] - tok->token_offset[ids[i]];
    }
    uint8_t *raw = hdlm_malloc(raw_len + 1);
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        if (skip_special && ids[i] == HDLM_TOKEN_EOT) continue;
        size_t k = tok->token_offset[ids[i] + 1] - tok->token_offset[ids[i]];
        memcpy(raw + at, tok->token_bytes + tok->token_offset[ids[i]], k);
        at += k;
    }
    // U+FFFD is 3 bytes and replaces at least one byte, so 3x the raw length is enough.
    uint8_t *utf8 = hdlm_malloc(3 * raw_len + 1);
    size_t out = 0;
    for (size_t i = 0; i < raw_len;) {
        uint32_t cp;
        int step = tokenizer_utf8_next(raw + i, raw_len - i, &cp);
        if (step > 0) {
            memcpy(utf8 + out, raw + i, (size_t)step);
            out += (size_t)step;
            i += (size_t)step;
        } else {
            memcpy(utf8 + out, "\xEF\xBF\xBD", 3);
            out += 3;
            i += (size_t)-step;
        }
    }
    free(raw);
    utf8[out] = '\0';
    *text = (char *)utf8;
    *len = out;
    return 0;
}

// libFuzzer target: the tokenizer's files. The first byte picks which one is fuzzed (even: encoder.json, odd:
// vocab.bpe); the other is the real file from HDLM_FUZZ_VOCAB (default: the source tree's .cache/gpt2). An accepted
// pair must encode and decode a fixed text.
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "hdlm/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const char *vocab = getenv("HDLM_FUZZ_VOCAB");
    char real[1024];
    bool encoder = (data[0] & 1) == 0;
    snprintf(real, sizeof real, "%s/%s", vocab ? vocab : HDLM_SOURCE_DIR "/.cache/gpt2",
             encoder ? "vocab.bpe" : "encoder.json");
    const char *fuzzed = fuzz_file(encoder ? "encoder.json" : "vocab.bpe", data + 1, size - 1);
    hdlm_tokenizer *tok;
    if (hdlm_tokenizer_load(&tok, encoder ? fuzzed : real, encoder ? real : fuzzed) == 0) {
        static const char text[] = "Hello world! The quick brown fox.";
        hdlm_tokens ids = {0};
        if (hdlm_tokenizer_encode(tok, text, strlen(text), &ids) == 0) {
            char *back;
            size_t len;
            if (hdlm_tokenizer_decode(tok, ids.ids, ids.len, 0, &back, &len) == 0) free(back);
        }
        hdlm_tokens_free(&ids);
        hdlm_tokenizer_free(tok);
    }
    return 0;
}

// libFuzzer target: text inputs as hdlm-prep prepare reads them — a JSONL or plain-text file (first byte odd: JSONL),
// each document through a detokenizer (chosen by the second byte) and the GPT-2 tokenizer. The tokenizer files come
// from HDLM_FUZZ_VOCAB (default: the source tree's .cache/gpt2, filled by tools/setup.sh).
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include "fuzz.h"
#include "hdlm/detokenize.h"
#include "hdlm/textsource.h"
#include "hdlm/tokenizer.h"

static hdlm_tokenizer *tokenizer(void) {
    static hdlm_tokenizer *tok;
    if (!tok) {
        const char *dir = getenv("HDLM_FUZZ_VOCAB");
        if (hdlm_tokenizer_load_dir(&tok, dir ? dir : HDLM_SOURCE_DIR "/.cache/gpt2") != 0) abort();
    }
    return tok;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    bool jsonl = data[0] & 1;
    hdlm_detokenizer detok = (hdlm_detokenizer)(data[1] % 5);
    const char *path = fuzz_file(jsonl ? "input.jsonl" : "input.txt", data + 2, size - 2);
    hdlm_text_inputs in = {0};
    if (hdlm_text_inputs_add(&in, path, detok, 0) != 0) return 0;
    hdlm_text_reader *r;
    if (hdlm_text_reader_open(&r, &in, 0, in.total_bytes, "text", 1) == 0) {
        hdlm_text_doc doc;
        while (hdlm_text_reader_next(r, &doc) == 1) {
            char *clean;
            size_t len;
            if (hdlm_detokenize(detok, doc.text, doc.len, &clean, &len) == 0) {
                hdlm_tokens ids = {0};
                (void)hdlm_tokenizer_encode(tokenizer(), clean, len, &ids);
                hdlm_tokens_free(&ids);
                free(clean);
            }
            free(doc.text);
        }
        hdlm_text_reader_close(r);
    }
    hdlm_text_inputs_free(&in);
    return 0;
}

// libFuzzer target: text inputs as hdlm-prep prepare reads them — a plain-text, JSONL, tar or gzip-compressed JSONL
// file (by the first byte; the tar and gzip readers are libarchive's, the nesting and member rules hdlm's),
// each document through a detokenizer (chosen by the second byte) and the GPT-2 tokenizer. The tokenizer files come
// from HDLM_FUZZ_VOCAB (default: the source tree's .cache/gpt2, filled by tools/setup.sh).
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
    static const char *const names[4] = {"input.txt", "input.jsonl", "input.tar", "input.jsonl.gz"};
    hdlm_detokenizer detok = (hdlm_detokenizer)(data[1] % (HDLM_DETOK_OPENWEBTEXT + 1));
    const char *path = fuzz_file(names[data[0] % 4], data + 2, size - 2);
    hdlm_text_inputs in = {0};
    if (hdlm_text_inputs_add(&in, path, detok, 0) != 0) return 0;
    hdlm_text_reader *r;
    hdlm_text_read_options options = {.skip_bad = 1, .order = (hdlm_text_order)(data[0] >> 2 & 1)};
    if (hdlm_text_reader_open(&r, &in, 0, 1, &options) == 0) {
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
            hdlm_text_doc_free(&doc);
        }
        hdlm_text_reader_close(r);
    }
    hdlm_text_inputs_free(&in);
    return 0;
}

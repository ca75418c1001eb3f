// hdlm-prep tokenize / detokenize: the GPT-2 tokenizer on stdin/stdout, for inspection and scripting.
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hdlm/common.h"
#include "hdlm/tokenizer.h"
#include "prep.h"

typedef struct {
    const char *vocab_dir;
    int skip_special;
} codec_options;

// Parses [--vocab DIR] (and --skip-special when allow_skip). Returns 0 to go on, or an exit status + 1 to stop.
static int parse_options(int argc, char **argv, int allow_skip, const char *usage, codec_options *opt) {
    static const struct option longopts[] = {
        {"vocab", required_argument, NULL, 'v'},
        {"skip-special", no_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    opt->vocab_dir = hdlm_tokenizer_default_dir();
    opt->skip_special = 0;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        if (c == 'v') opt->vocab_dir = optarg;
        else if (c == 's' && allow_skip) opt->skip_special = 1;
        else if (c == 'h') {
            printf("%s", usage);
            return 1;
        } else if (c == ':') {
            fprintf(stderr, "hdlm-prep %s: flag '%s' needs a value (see --help)\n", argv[0], argv[optind - 1]);
            return 3;
        } else {
            fprintf(stderr, "hdlm-prep %s: unknown flag '%s' (see --help)\n", argv[0], argv[optind - 1]);
            return 3;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "hdlm-prep %s: unexpected argument '%s' (input is read from stdin; see --help)\n", argv[0],
                argv[optind]);
        return 3;
    }
    return 0;
}

int prep_tokenize_main(int argc, char **argv) {
    codec_options opt;
    int stop = parse_options(argc, argv, 0, "usage: hdlm-prep tokenize [--vocab DIR]\n"
                                             "Reads UTF-8 text on stdin and prints its GPT-2 token ids on one line.\n"
                                             "  --vocab DIR  encoder.json + vocab.bpe (default: $HDLM_VOCAB or "
                                             "<prefix>/share/hdlm/gpt2)\n",
                             &opt);
    if (stop) return stop - 1;
    hdlm_tokenizer *tok;
    HDLM_MUST(hdlm_tokenizer_load_dir(&tok, opt.vocab_dir));
    char *text;
    size_t len;
    HDLM_MUST(hdlm_read_file("-", &text, &len));
    hdlm_tokens ids = {0};
    HDLM_MUST(hdlm_tokenizer_encode(tok, text, len, &ids));
    for (size_t i = 0; i < ids.len; i++) printf(i ? " %u" : "%u", ids.ids[i]);
    printf("\n");
    hdlm_tokens_free(&ids);
    free(text);
    hdlm_tokenizer_free(tok);
    return 0;
}

// Parses whitespace-separated decimal ids; anything else is refused with its byte offset.
static int parse_ids(const char *text, size_t len, hdlm_tokens *ids) {
    for (size_t i = 0; i < len;) {
        if (isspace((unsigned char)text[i])) {
            i++;
            continue;
        }
        size_t start = i;
        unsigned long long v = 0;
        while (i < len && isdigit((unsigned char)text[i]) && v <= UINT32_MAX) v = v * 10 + (unsigned)(text[i++] - '0');
        if (i == start || (i < len && !isspace((unsigned char)text[i])) || v > UINT32_MAX) {
            size_t end = start;
            while (end < len && !isspace((unsigned char)text[end]) && end - start < 40) end++;
            return HDLM_FAIL("stdin: '%.*s' at byte %zu is not a token id (expected decimal ids separated by spaces)",
                             (int)(end - start), text + start, start);
        }
        hdlm_tokens_push(ids, (uint32_t)v);
    }
    return 0;
}

int prep_detokenize_main(int argc, char **argv) {
    codec_options opt;
    int stop = parse_options(argc, argv, 1, "usage: hdlm-prep detokenize [--vocab DIR] [--skip-special]\n"
                                             "Reads GPT-2 token ids (decimal, whitespace-separated) on stdin "
                                             "and prints the text.\n"
                                             "  --vocab DIR     encoder.json + vocab.bpe (default: $HDLM_VOCAB or "
                                             "<prefix>/share/hdlm/gpt2)\n"
                                             "  --skip-special  leave out <|endoftext|> (id 50256)\n",
                             &opt);
    if (stop) return stop - 1;
    hdlm_tokenizer *tok;
    HDLM_MUST(hdlm_tokenizer_load_dir(&tok, opt.vocab_dir));
    char *input;
    size_t len;
    HDLM_MUST(hdlm_read_file("-", &input, &len));
    hdlm_tokens ids = {0};
    HDLM_MUST(parse_ids(input, len, &ids));
    char *text;
    size_t text_len;
    HDLM_MUST(hdlm_tokenizer_decode(tok, ids.ids, ids.len, opt.skip_special, &text, &text_len));
    fwrite(text, 1, text_len, stdout);
    free(text);
    hdlm_tokens_free(&ids);
    free(input);
    hdlm_tokenizer_free(tok);
    return 0;
}

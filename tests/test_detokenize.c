// Detokenisers of method §9.2: hand-derived expectations on small samples of each format, then agreement with an
// independent Python implementation (tests/reference/detokenize_ref.py, Python's own str.replace and re).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hdlm/common.h"
#include "hdlm/detokenize.h"

typedef struct {
    hdlm_detokenizer d;
    const char *in, *expected;   // expected derived by hand from the rules, step by step
} sample;

static const sample samples[] = {
    // wt: "s '", @-@/@,@/@.@, " ; "/" : "/" . "/" , ", parentheses and double quotes, "= =", " \n", "\n ", " 's".
    // The single-quote regex pairs the apostrophes of "film 's" and "critics'" and leaves the span unchanged.
    {HDLM_DETOK_WIKITEXT,
     " = = Plot = = \n The film 's budget was 1 @,@ 000 @.@ 5 million ( about 2 @-@ 3 % ) ; critics ' views were "
     "mixed : \" a great film \" , wrote one . \n",
     " == Plot ==\nThe film's budget was 1,000.5 million (about 2-3 %); critics' views were mixed: \"a great film\", "
     "wrote one.\n"},
    // wt: "= = = =", single quotes, braces, brackets, degree sign, " N ".
    {HDLM_DETOK_WIKITEXT, "= = = = Notes = = = = \n He said ' hello ' at 5 \xc2\xb0 C { x } [ y ] N ",
     "==== Notes ====\nHe said 'hello' at 5\xc2\xb0" "C {x} [y] 1 "},
    // wt: \s inside brackets covers newline and tab.
    {HDLM_DETOK_WIKITEXT, "( \n x\t)", "(x)"},
    // ptb: " 's", "s ' ", " n't", "\/", " N " repeated (adjacent N need a second pass), "$ 1", "<unk>", " \n ".
    {HDLM_DETOK_PTB, "the company 's shares ' rose N N N % to $ N a share , it did n't say \\/ <unk> \n said ",
     "the company's shares' rose 1 1 1 % to $1 a share , it didn't say / ?\nsaid "},
    // lm1b: URL, " '(\w+)", " (\w+) \. ", " (\w+) \.$", " ? ", " , ", " : ", " ; ", " / ", quotes, brackets, $, £.
    {HDLM_DETOK_LM1B,
     "It 's \" great \" , he said . Visit http : / / a.com / b ( really ) [ ok ] : yes ; no ? Costs $ 5 or "
     "\xc2\xa3 3 ! 'Tis done .",
     "It's \"great\", he said. Visit http://a.com/b (really) [ok]: yes; no? Costs $5 or \xc2\xa3" "3 !'Tis done."},
    // lm1b: \w is Unicode ("café"), " \!$", single quotes.
    {HDLM_DETOK_LM1B, "Ist es sch\xc3\xb6n ? ' wunderbar ' caf\xc3\xa9 . Ja !",
     "Ist es sch\xc3\xb6n? 'wunderbar' caf\xc3\xa9. Ja!"},
    // lm1b: `$` also matches before a final newline (Python re).
    {HDLM_DETOK_LM1B, "the end ?\n", "the end?\n"},
    // lambada: curly quotes, strip (ASCII and Unicode whitespace), leading newline.
    {HDLM_DETOK_LAMBADA, "  \xe2\x80\x9cHello,\xe2\x80\x9d she said.\n\t ", "\n\"Hello,\" she said."},
    {HDLM_DETOK_LAMBADA, "\xe3\x80\x80x y\xc2\xa0", "\nx y"},
    // scientific: wikitext first (" @-@ ", " , ", brackets), then lm1b (" 'word", " word . " at the end, "$ ").
    {HDLM_DETOK_SCIENTIFIC, "the 2 @-@ d model ( see fig . 1 ) , costs $ 5 and it 'll work . ",
     "the 2-d model (see fig. 1), costs $5 and it'll work. "},
    // openwebtext: 3+ newlines become 2 (2 stay), then Python's strip (Unicode whitespace too).
    {HDLM_DETOK_OPENWEBTEXT, " \n Title\n\n\n\nBody.\n\nMore\n\n\n\xe2\x80\x83", "Title\n\nBody.\n\nMore"},
    {HDLM_DETOK_NONE, " a , b ", " a , b "},
};

// More inputs for the Python comparison only (edge cases of the regexes).
static const sample extra[] = {
    {HDLM_DETOK_WIKITEXT, "a ( ( b ) c ) \" \" ' x ' ' y \" z", NULL},
    {HDLM_DETOK_WIKITEXT, "( unclosed [ also { and ' and \" end", NULL},
    {HDLM_DETOK_WIKITEXT, "x /' 7/ y = = = = = = = z \xe2\x80\x83(\xe2\x80\x83" "a\xe2\x80\x83)", NULL},
    {HDLM_DETOK_WIKITEXT, " @-@ @-@ N N N 's 's \n \n \n", NULL},
    {HDLM_DETOK_PTB, " N N N N N N N N N N N N N N N N N N N N N N N ", NULL},
    {HDLM_DETOK_PTB, "s ' s ' \\/\\/ # N $ N <unk><unk>", NULL},
    {HDLM_DETOK_LM1B, "a ' b ' c ' d ' e \" \" ( ) ( a ( b ) c ) [ [ x ] ] x_1 . y", NULL},
    {HDLM_DETOK_LM1B, " 'n' 'x ' \xd9\xa3 . \xe4\xb8\x80 .\n", NULL},
    {HDLM_DETOK_LM1B, "https : / / http : / / x ! ! y , , z ? ?", NULL},
    {HDLM_DETOK_LAMBADA, "\n\n \xe2\x80\x9c \xe2\x80\x9d\x1c", NULL},
    {HDLM_DETOK_LAMBADA, "", NULL},
    {HDLM_DETOK_OPENWEBTEXT, "\n\n\n\n\n", NULL},
    {HDLM_DETOK_OPENWEBTEXT, "a\r\n\r\n\r\nb\n \n\n\nc\t", NULL},
    {HDLM_DETOK_SCIENTIFIC, " = = intro = = \n we find @xmath0 ' s ( eq . [ 1 ] ) : \" a \" ? http : / / x . org ?", NULL},
};

static char *run(hdlm_detokenizer d, const char *in) {
    char *out;
    size_t len;
    assert_int_equal(hdlm_detokenize(d, in, strlen(in), &out, &len), 0);
    assert_int_equal(strlen(out), len);
    return out;
}

static void test_hand_derived(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof samples / sizeof samples[0]; i++) {
        char *out = run(samples[i].d, samples[i].in);
        if (strcmp(out, samples[i].expected) != 0)
            print_error("sample %zu (%s):\n  got      [%s]\n  expected [%s]\n", i,
                        hdlm_detokenizer_name(samples[i].d), out, samples[i].expected);
        assert_string_equal(out, samples[i].expected);
        free(out);
    }
}

static void test_matches_python(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("detokenize_python");
    char in_path[4096], out_path[4096];
    snprintf(in_path, sizeof in_path, "%s/in.jsonl", dir);
    snprintf(out_path, sizeof out_path, "%s/out.jsonl", dir);
    const sample *all[64];
    size_t n = 0;
    for (size_t i = 0; i < sizeof samples / sizeof samples[0]; i++) all[n++] = &samples[i];
    for (size_t i = 0; i < sizeof extra / sizeof extra[0]; i++) all[n++] = &extra[i];
    FILE *f = fopen(in_path, "w");
    assert_non_null(f);
    for (size_t i = 0; i < n; i++) {
        cJSON *row = cJSON_CreateObject();
        cJSON_AddStringToObject(row, "detok", hdlm_detokenizer_name(all[i]->d));
        cJSON_AddStringToObject(row, "text", all[i]->in);
        char *line = cJSON_PrintUnformatted(row);
        fprintf(f, "%s\n", line);
        free(line);
        cJSON_Delete(row);
    }
    fclose(f);
    assert_int_equal(test_run("/usr/bin/python3 '%s/tests/reference/detokenize_ref.py' '%s' '%s'", HDLM_SOURCE_DIR,
                              in_path, out_path),
                     0);
    f = fopen(out_path, "r");
    assert_non_null(f);
    char *line = NULL;
    size_t cap = 0;
    for (size_t i = 0; i < n; i++) {
        assert_true(getline(&line, &cap, f) > 0);
        cJSON *row = cJSON_Parse(line);
        assert_non_null(row);
        const char *expected = cJSON_GetObjectItem(row, "text")->valuestring;
        char *out = run(all[i]->d, all[i]->in);
        if (strcmp(out, expected) != 0)
            print_error("input %zu (%s) [%s]:\n  C      [%s]\n  Python [%s]\n", i, hdlm_detokenizer_name(all[i]->d),
                        all[i]->in, out, expected);
        assert_string_equal(out, expected);
        free(out);
        cJSON_Delete(row);
    }
    free(line);
    fclose(f);
}

static void test_refusals(void **state) {
    (void)state;
    hdlm_detokenizer d;
    assert_int_equal(hdlm_detokenizer_parse("wt", &d), 0);
    assert_int_equal(d, HDLM_DETOK_WIKITEXT);
    assert_int_equal(hdlm_detokenizer_parse("lambada", &d), 0);
    assert_int_equal(d, HDLM_DETOK_LAMBADA);
    assert_int_equal(hdlm_detokenizer_parse("wiki", &d), -1);
    assert_error_contains("unknown detokenizer \"wiki\"");
    char *out;
    size_t len;
    assert_int_equal(hdlm_detokenize(HDLM_DETOK_LM1B, "ab\xff" "c", 4, &out, &len), -1);
    assert_error_contains("invalid UTF-8 at byte offset 2");
    assert_int_equal(hdlm_detokenize(HDLM_DETOK_WIKITEXT, "a\xed\xa0\x80", 4, &out, &len), -1);   // a surrogate
    assert_error_contains("byte offset 1");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hand_derived),
        cmocka_unit_test(test_matches_python),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

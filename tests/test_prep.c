// hdlm-prep prepare end to end on small inputs written here: document and token counts, EOS placement, shard
// boundaries, splits, detokenizers, empty documents, malformed JSONL (skip vs stop), missing files, the manifest, and
// the numpy lines of docs/shard-format.md reading the output.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "harness.h"
#include "hdlm/common.h"
#include "hdlm/dataset.h"
#include "hdlm/tokenizer.h"

// pml ob1: a single process needs no network transport probing (saves ~0.2 s of MPI start-up per run).
#define PREP "ASAN_OPTIONS=detect_leaks=0 OMPI_MCA_pml=ob1 '" HDLM_BIN_DIR "/hdlm-prep' prepare"
#define EOS HDLM_TOKEN_EOT

// GPT-2 ids ("Hello world! The quick brown fox." -> 15496 995 0 383 2068 7586 21831 13).
#define HELLO_WORLD 15496, 995
#define FOX_SENTENCE 15496, 995, 0, 383, 2068, 7586, 21831, 13

static void write_text(const char *dir, const char *name, const char *text) {
    char path[8192];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    char *slash = strrchr(path, '/');
    *slash = '\0';
    assert_int_equal(test_run("mkdir -p '%s'", path), 0);
    *slash = '/';
    test_write_file(path, text, strlen(text));
}

static char *slurp(const char *dir, const char *name) {
    char path[8192], *data;
    size_t len;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    assert_int_equal(hdlm_read_file(path, &data, &len), 0);
    return data;
}

static void assert_file_contains(const char *dir, const char *name, const char *needle) {
    char *text = slurp(dir, name);
    int found = strstr(text, needle) != NULL;
    if (!found) print_error("%s/%s does not contain \"%s\":\n%s\n", dir, name, needle, text);
    free(text);
    assert_true(found);
}

// All tokens of a split (shards concatenated), through the library's reader; *docs = sum of the header counts.
static size_t read_split(const char *out, const char *split, uint16_t *tokens, size_t cap, uint64_t *docs) {
    hdlm_dataset d;
    assert_int_equal(hdlm_dataset_open_dir(&d, out, split, 1, HDLM_GPT2_VOCAB), 0);
    size_t n = 0;
    for (size_t s = 0; s < d.shard_count; s++) {
        assert_true(n + d.shards[s].info.token_count <= cap);
        memcpy(tokens + n, d.shards[s].tokens, d.shards[s].info.token_count * sizeof *tokens);
        n += d.shards[s].info.token_count;
    }
    *docs = d.doc_count;
    hdlm_dataset_close(&d);
    return n;
}

static void assert_tokens(const uint16_t *got, size_t n, const uint16_t *expected, size_t m) {
    if (n != m) print_error("got %zu tokens, expected %zu\n", n, m);
    assert_int_equal(n, m);
    for (size_t i = 0; i < n; i++) {
        if (got[i] != expected[i]) print_error("token %zu: got %u, expected %u\n", i, got[i], expected[i]);
        assert_int_equal(got[i], expected[i]);
    }
}

static void test_inputs_counts_and_shards(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("prep_inputs");
    char in[4096];
    snprintf(in, sizeof in, "%s/in", dir);
    write_text(in, "a.txt", "Hello world! The quick brown fox.");
    write_text(in, "c.jsonl", "{\"text\": \"Hello world\"}\n{\"text\": \"\"}\n{\"id\": 7, \"text\": \"The quick\"}\n");
    write_text(in, "ignored.json", "{\"text\": \"not read\"}");
    write_text(in, "sub/b.txt", "Hello world");
    write_text(in, "empty.txt", "");
    write_text(dir, "out/.prepare-tmp/r9.tok", "left over by an interrupted run");
    // Directory order is sorted: a.txt, c.jsonl (3 lines, one empty), empty.txt, sub/b.txt.
    assert_int_equal(test_run(PREP " --shard-tokens 5 --out '%s/out' '%s' > '%s/log' 2>&1", dir, in, dir), 0);
    const uint16_t expected[] = {FOX_SENTENCE, EOS, HELLO_WORLD, EOS, 464, 2068, EOS, HELLO_WORLD, EOS};
    uint16_t got[64];
    uint64_t docs;
    char out[4096];
    snprintf(out, sizeof out, "%s/out", dir);
    size_t n = read_split(out, "train", got, 64, &docs);
    assert_tokens(got, n, expected, sizeof expected / sizeof *expected);
    assert_int_equal(docs, 4);
    assert_file_contains(dir, "log", "documents: 4 (train 4, validation 0); empty: 2 (skipped); malformed or unreadable: 0");
    assert_file_contains(dir, "log", "18 tokens in 4 shards");
    assert_file_contains(dir, "log", "MB/s");
    assert_file_contains(dir, "log", "tokens/s");
    // 18 tokens in shards of 5: EOS at 8, 11, 14, 17 -> documents per shard 0, 1, 2, 1; no validation shard.
    char *manifest = slurp(out, "manifest.json");
    cJSON *m = cJSON_Parse(manifest);
    assert_non_null(m);
    const cJSON *train = cJSON_GetObjectItem(cJSON_GetObjectItem(m, "splits"), "train");
    assert_int_equal(cJSON_GetObjectItem(train, "documents")->valueint, 4);
    assert_int_equal(cJSON_GetObjectItem(train, "tokens")->valueint, 18);
    const cJSON *shards = cJSON_GetObjectItem(train, "shards");
    assert_int_equal(cJSON_GetArraySize(shards), 4);
    const int shard_docs[4] = {0, 1, 2, 1}, shard_tokens[4] = {5, 5, 5, 3};
    for (int k = 0; k < 4; k++) {
        const cJSON *sh = cJSON_GetArrayItem(shards, k);
        char name[32];
        snprintf(name, sizeof name, "train_%06d.bin", k);
        assert_string_equal(cJSON_GetObjectItem(sh, "name")->valuestring, name);
        assert_int_equal(cJSON_GetObjectItem(sh, "documents")->valueint, shard_docs[k]);
        assert_int_equal(cJSON_GetObjectItem(sh, "tokens")->valueint, shard_tokens[k]);
    }
    const cJSON *val = cJSON_GetObjectItem(cJSON_GetObjectItem(m, "splits"), "validation");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(val, "shards")), 0);
    assert_non_null(cJSON_GetObjectItem(cJSON_GetObjectItem(m, "tokenizer"), "encoder_json_xxh64"));
    cJSON_Delete(m);
    free(manifest);
    struct stat st;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s/.prepare-tmp", out);
    assert_int_not_equal(stat(tmp, &st), 0);   // temporary streams (and the stale one) removed

    // The numpy lines of the format document read the same tokens and document counts.
    assert_int_equal(test_run("(echo 'import sys'; echo 'for path in sys.argv[1:]:'; "
                              "awk '/^```python/{f=1;next} /^```/{if(f)exit} f{print \"    \" $0}' "
                              "'%s/docs/shard-format.md'; "
                              "echo '    print(int(header[5]), \" \".join(str(int(t)) for t in tokens))') > '%s/read.py' "
                              "&& /usr/bin/python3 '%s/read.py' '%s'/train_00000[0-3].bin > '%s/numpy.txt'",
                              HDLM_SOURCE_DIR, dir, dir, out, dir),
                     0);
    char *numpy = slurp(dir, "numpy.txt");
    assert_string_equal(numpy, "0 15496 995 0 383 2068\n"
                               "1 7586 21831 13 50256 15496\n"
                               "2 995 50256 464 2068 50256\n"
                               "1 15496 995 50256\n");
    free(numpy);

    // A second run into the same directory is refused unless --overwrite.
    assert_int_not_equal(test_run(PREP " --out '%s' '%s' > '%s/log2' 2>&1", out, in, dir), 0);
    assert_file_contains(dir, "log2", "already holds prepared data");
    assert_int_equal(test_run(PREP " --overwrite --out '%s' '%s' > '%s/log2' 2>&1", out, in, dir), 0);
    n = read_split(out, "train", got, 64, &docs);
    assert_tokens(got, n, expected, sizeof expected / sizeof *expected);   // one shard now, same tokens
    // --keep-empty turns each empty document into a lone EOS, in place.
    assert_int_equal(test_run(PREP " --keep-empty --overwrite --out '%s' '%s' > '%s/log3' 2>&1", out, in, dir), 0);
    const uint16_t kept[] = {FOX_SENTENCE, EOS, HELLO_WORLD, EOS, EOS, 464, 2068, EOS, EOS, HELLO_WORLD, EOS};
    n = read_split(out, "train", got, 64, &docs);
    assert_tokens(got, n, kept, sizeof kept / sizeof *kept);
    assert_int_equal(docs, 6);
    assert_file_contains(dir, "log3", "empty: 2 (kept)");
}

static void test_malformed_lines(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("prep_malformed");
    write_text(dir, "bad.jsonl",
               "{\"text\": \"Hello world\"}\n{\"text\": 5}\nnot json\n{\"other\": \"x\"}\n[1]\n\n"
               "{\"text\": \"The quick\"} x\n{\"text\": \"The quick\"}");
    write_text(dir, "utf8.txt", "Hello \xff world");
    // stop (default): the first malformed line ends the run, named as file:line with the reason.
    assert_int_not_equal(test_run(PREP " --out '%s/out' '%s/bad.jsonl' > '%s/log' 2>&1", dir, dir, dir), 0);
    assert_file_contains(dir, "log", "bad.jsonl:2: field \"text\" is not a string");
    // skip: every malformed line is reported and counted; the good ones are kept.
    assert_int_equal(
        test_run(PREP " --on-error skip --out '%s/out' '%s/bad.jsonl' '%s/utf8.txt' > '%s/log' 2>&1", dir, dir, dir, dir), 0);
    assert_file_contains(dir, "log", "bad.jsonl:2: field \"text\" is not a string; line skipped");
    assert_file_contains(dir, "log", "bad.jsonl:3: invalid JSON at column 1");
    assert_file_contains(dir, "log", "bad.jsonl:4: no \"text\" field");
    assert_file_contains(dir, "log", "bad.jsonl:5: not a JSON object");
    assert_file_contains(dir, "log", "bad.jsonl:6: empty line");
    assert_file_contains(dir, "log", "bad.jsonl:7: invalid JSON at column 23");
    assert_file_contains(dir, "log", "utf8.txt: ");
    assert_file_contains(dir, "log", "document skipped");
    assert_file_contains(dir, "log", "documents: 2 (train 2, validation 0); empty: 0 (skipped); malformed or unreadable: 7 (skipped)");
    char out[4096];
    snprintf(out, sizeof out, "%s/out", dir);
    uint16_t got[64];
    uint64_t docs;
    size_t n = read_split(out, "train", got, 64, &docs);
    const uint16_t expected[] = {HELLO_WORLD, EOS, 464, 2068, EOS};
    assert_tokens(got, n, expected, sizeof expected / sizeof *expected);
    // Invalid UTF-8 with stop: the file is named.
    assert_int_not_equal(test_run(PREP " --overwrite --out '%s/out' '%s/utf8.txt' > '%s/log' 2>&1", dir, dir, dir), 0);
    assert_file_contains(dir, "log", "utf8.txt: ");
}

static void test_errors(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("prep_errors");
    assert_int_not_equal(test_run(PREP " --out '%s/out' /nonexistent/corpus.txt > '%s/log' 2>&1", dir, dir), 0);
    assert_file_contains(dir, "log", "cannot read input /nonexistent/corpus.txt: No such file or directory");
    write_text(dir, "a.txt", "Hello world");
    assert_int_not_equal(test_run(PREP " '%s/a.txt' > '%s/log' 2>&1", dir, dir), 0);
    assert_file_contains(dir, "log", "--out DIR is required");
    assert_int_not_equal(test_run(PREP " --out '%s/out' --val-fraction 1.5 '%s/a.txt' > '%s/log' 2>&1", dir, dir, dir), 0);
    assert_file_contains(dir, "log", "--val-fraction expects a number in [0, 1]");
    assert_int_not_equal(
        test_run(PREP " --out '%s/out' --val-last 2 --val-fraction 0.5 '%s/a.txt' > '%s/log' 2>&1", dir, dir, dir), 0);
    assert_file_contains(dir, "log", "exclude each other");
}

// Ten one-line documents in a JSONL file.
static void write_ten(const char *dir) {
    char text[1024] = "";
    const char *words[10] = {"Hello", "world", "The", "quick", "brown", "fox", "jumps", "over", "lazy", "dog"};
    for (int i = 0; i < 10; i++) {
        char line[64];
        snprintf(line, sizeof line, "{\"text\": \"%s\"}\n", words[i]);
        strcat(text, line);
    }
    write_text(dir, "ten.jsonl", text);
}

// Documents of a token stream: start offsets of the documents (each ends with EOS), count returned.
static size_t doc_starts(const uint16_t *t, size_t n, size_t *starts) {
    size_t d = 0;
    for (size_t i = 0; i < n; i++)
        if (i == 0 || t[i - 1] == EOS) starts[d++] = i;
    assert_true(n == 0 || t[n - 1] == EOS);
    return d;
}

// Which of the ten reference documents (ref, ref_starts) landed in `split`, as a bit mask; checks corpus order.
static unsigned split_mask(const char *out, const char *split, const uint16_t *ref, const size_t *ref_starts) {
    hdlm_dataset d;
    if (hdlm_dataset_open_dir(&d, out, split, 1, HDLM_GPT2_VOCAB) != 0) return 0;   // no shard: empty split
    hdlm_dataset_close(&d);
    uint16_t got[128];
    uint64_t docs;
    size_t n = read_split(out, split, got, 128, &docs), starts[64];
    size_t m = doc_starts(got, n, starts);
    assert_int_equal(m, docs);
    unsigned mask = 0;
    int last = -1;
    for (size_t i = 0; i < m; i++) {
        size_t len = (i + 1 < m ? starts[i + 1] : n) - starts[i];
        int k = 0;
        while (k < 10 && (ref_starts[k + 1] - ref_starts[k] != len ||
                          memcmp(ref + ref_starts[k], got + starts[i], len * sizeof *got) != 0))
            k++;
        assert_true(k < 10 && k > last);   // a known document, in corpus order within the split
        last = k;
        mask |= 1u << k;
    }
    return mask;
}

static void test_splits(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("prep_splits");
    write_ten(dir);
    write_text(dir, "extra.txt", "Hello world");
    // The ten documents' tokens, from a plain run.
    char out[4096];
    snprintf(out, sizeof out, "%s/out", dir);
    assert_int_equal(test_run(PREP " --out '%s' '%s/ten.jsonl' > /dev/null", out, dir), 0);
    uint16_t ref[128], got[128];
    size_t ref_starts[64];
    uint64_t docs;
    size_t ref_n = read_split(out, "train", ref, 128, &docs);
    assert_int_equal(doc_starts(ref, ref_n, ref_starts), 10);
    ref_starts[10] = ref_n;

    // --val-last 3: documents 7, 8, 9.
    assert_int_equal(test_run(PREP " --overwrite --val-last 3 --out '%s' '%s/ten.jsonl' > '%s/log'", out, dir, dir), 0);
    assert_int_equal(split_mask(out, "train", ref, ref_starts), 0x07f);
    assert_int_equal(split_mask(out, "validation", ref, ref_starts), 0x380);
    assert_file_contains(dir, "log", "documents: 10 (train 7, validation 3)");
    // --val-fraction: deterministic, complementary, and it follows the seed.
    unsigned masks[3];
    for (int run = 0; run < 3; run++) {
        assert_int_equal(test_run(PREP " --overwrite --val-fraction 0.5 --val-seed %d --out '%s' '%s/ten.jsonl' > /dev/null",
                                  run == 2 ? 7 : 0, out, dir),
                         0);
        masks[run] = split_mask(out, "validation", ref, ref_starts);
        unsigned train = split_mask(out, "train", ref, ref_starts);
        assert_int_equal(train | masks[run], 0x3ff);
        assert_int_equal(train & masks[run], 0);
    }
    assert_int_equal(masks[0], masks[1]);
    assert_int_not_equal(masks[0], masks[2]);
    assert_true(masks[0] != 0 && masks[0] != 0x3ff);
    assert_int_equal(test_run(PREP " --overwrite --val-fraction 1 --out '%s' '%s/ten.jsonl' > /dev/null", out, dir), 0);
    assert_int_equal(split_mask(out, "validation", ref, ref_starts), 0x3ff);
    // --val-input routes a whole input; --val-last counts only the other inputs' documents.
    assert_int_equal(test_run(PREP " --overwrite --val-last 1 --out '%s' --val-input '%s/extra.txt' '%s/ten.jsonl' > '%s/log'",
                              out, dir, dir, dir),
                     0);
    assert_file_contains(dir, "log", "documents: 11 (train 9, validation 2)");
    size_t n = read_split(out, "validation", got, 128, &docs);
    uint16_t expected_val[64] = {HELLO_WORLD, EOS};
    size_t last_len = ref_n - ref_starts[9];
    memcpy(expected_val + 3, ref + ref_starts[9], last_len * sizeof *ref);
    assert_tokens(got, n, expected_val, 3 + last_len);
    // --split validation: a validation-only set.
    assert_int_equal(test_run(PREP " --overwrite --split validation --out '%s' '%s/ten.jsonl' > '%s/log'", out, dir, dir), 0);
    assert_int_equal(split_mask(out, "validation", ref, ref_starts), 0x3ff);
    assert_file_contains(dir, "log", "train                 0 tokens in 0 shards");
}

static void test_detokenizer_per_input(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("prep_detok");
    write_text(dir, "lm1b.txt", "Hello world !");
    char out[4096];
    snprintf(out, sizeof out, "%s/out", dir);
    // The detokenizer applies to the inputs after it: the first copy stays as is, the second becomes "Hello world!".
    assert_int_equal(test_run(PREP " --out '%s' '%s/lm1b.txt' --detokenizer lm1b '%s/lm1b.txt' > /dev/null", out, dir, dir), 0);
    uint16_t got[64];
    uint64_t docs;
    size_t n = read_split(out, "train", got, 64, &docs);
    assert_int_equal(docs, 2);
    assert_int_equal(n, 4 + 4);
    assert_int_not_equal(got[2], 0);   // " !" is not "!"
    const uint16_t second[] = {HELLO_WORLD, 0, EOS};
    assert_tokens(got + 4, 4, second, 4);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_inputs_counts_and_shards), cmocka_unit_test(test_malformed_lines),
        cmocka_unit_test(test_errors), cmocka_unit_test(test_splits), cmocka_unit_test(test_detokenizer_per_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

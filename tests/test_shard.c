// Shard files (write/read round trip, atomic write, every refusal of a damaged file), the numpy reader from
// docs/shard-format.md, dataset chunking and the per-rank partition.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "harness.h"
#include "hdlm/common.h"
#include "hdlm/dataset.h"
#include "hdlm/shard.h"

// Writes tokens[0..n) as a shard in appends of `step` tokens.
static void write_shard(const char *path, uint32_t vocab, const uint16_t *tokens, size_t n, size_t step,
                        uint64_t docs) {
    hdlm_shard_writer *w;
    assert_int_equal(hdlm_shard_writer_open(&w, path, vocab), 0);
    for (size_t i = 0; i < n; i += step) assert_int_equal(hdlm_shard_writer_append(w, tokens + i, n - i < step ? n - i : step), 0);
    assert_int_equal(hdlm_shard_writer_close(w, docs, NULL), 0);
}

static char *read_all(const char *path, size_t *len) {
    char *data;
    assert_int_equal(hdlm_read_file(path, &data, len), 0);
    return data;
}

static void test_round_trip(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("shard_round_trip");
    char path[4096];
    snprintf(path, sizeof path, "%s/a.bin", dir);
    enum { N = 100003 };
    uint16_t *tokens = malloc(N * sizeof *tokens);
    for (size_t i = 0; i < N; i++) tokens[i] = (uint16_t)((i * 7919u) % 50257u);
    hdlm_shard_writer *w;
    assert_int_equal(hdlm_shard_writer_open(&w, path, 50257), 0);
    assert_int_equal(hdlm_shard_writer_append(w, tokens, 1000), 0);
    assert_int_equal(hdlm_shard_writer_append(w, tokens + 1000, N - 1000), 0);
    // Atomic: the final name appears only on close.
    assert_int_not_equal(access(path, F_OK), 0);
    hdlm_shard_info info;
    assert_int_equal(hdlm_shard_writer_close(w, 17, &info), 0);
    assert_int_equal(access(path, F_OK), 0);
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    assert_int_not_equal(access(tmp, F_OK), 0);

    hdlm_shard s;
    assert_int_equal(hdlm_shard_open(&s, path, 50257), 0);
    assert_int_equal(s.info.token_count, N);
    assert_int_equal(s.info.doc_count, 17);
    assert_int_equal(s.info.vocab_size, 50257);
    assert_int_equal(s.info.checksum, XXH64(tokens, N * sizeof *tokens, 0));
    assert_int_equal(s.info.checksum, info.checksum);
    assert_memory_equal(s.tokens, tokens, N * sizeof *tokens);
    hdlm_shard_close(&s);

    // The file layout, byte for byte: header words then the little-endian tokens.
    size_t len;
    char *bytes = read_all(path, &len);
    assert_int_equal(len, 64 + 2 * (size_t)N);
    assert_memory_equal(bytes, "HDLMTOKS", 8);
    uint64_t words[8];
    memcpy(words, bytes, sizeof words);
    assert_int_equal(words[1], 1);
    assert_int_equal(words[3], 2);
    assert_int_equal(words[4], N);
    assert_int_equal(words[7], XXH64(words, 56, 0));
    free(bytes);

    // The numpy lines of docs/shard-format.md read the same tokens.
    char script[4200];
    snprintf(script, sizeof script, "%s/read.py", dir);
    assert_int_equal(test_run("(echo 'import sys; path = sys.argv[1]'; "
                              "awk '/^```python/{f=1;next} /^```/{if(f)exit} f' '%s/docs/shard-format.md'; "
                              "echo 'print(len(tokens), int(tokens.astype(\"u8\").sum()), int(header[5]), int(tokens[-1]))') > '%s'",
                              HDLM_SOURCE_DIR, script),
                     0);
    char out[4200];
    snprintf(out, sizeof out, "%s/read.out", dir);
    assert_int_equal(test_run("/usr/bin/python3 '%s' '%s' > '%s'", script, path, out), 0);
    uint64_t sum = 0;
    for (size_t i = 0; i < N; i++) sum += tokens[i];
    char expected[256];
    snprintf(expected, sizeof expected, "%d %llu 17 %u\n", N, (unsigned long long)sum, tokens[N - 1]);
    char *got = read_all(out, &len);
    assert_string_equal(got, expected);
    free(got);
    free(tokens);
}

static void test_writer_refuses(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("shard_writer_refuses");
    char path[4096];
    snprintf(path, sizeof path, "%s/a.bin", dir);
    hdlm_shard_writer *w;
    assert_int_equal(hdlm_shard_writer_open(&w, path, 70000), -1);
    assert_error_contains("vocabulary size 70000");
    assert_int_equal(hdlm_shard_writer_open(&w, path, 100), 0);
    uint16_t ok[3] = {1, 2, 99}, bad[2] = {5, 100};
    assert_int_equal(hdlm_shard_writer_append(w, ok, 3), 0);
    assert_int_equal(hdlm_shard_writer_append(w, bad, 2), -1);
    assert_error_contains("token 4 has id 100");
    assert_error_contains(path);
    hdlm_shard_writer_abort(w);
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    assert_int_not_equal(access(tmp, F_OK), 0);
    assert_int_not_equal(access(path, F_OK), 0);
    assert_int_equal(hdlm_shard_writer_open(&w, "/nonexistent-dir/x.bin", 100), -1);
    assert_error_contains("/nonexistent-dir/x.bin");
}

// A good shard of 8 tokens (vocab 100) as bytes, to be damaged by the tests below.
static size_t good_shard(const char *dir, char *path, char **bytes) {
    snprintf(path, 4096, "%s/good.bin", dir);
    uint16_t tokens[8] = {1, 2, 3, 4, 5, 6, 7, 99};
    write_shard(path, 100, tokens, 8, 8, 2);
    size_t len;
    *bytes = read_all(path, &len);
    snprintf(path, 4096, "%s/damaged.bin", dir);
    return len;
}

static void expect_refused(const char *path, const void *bytes, size_t len, uint32_t vocab, const char *problem) {
    test_write_file(path, bytes, len);
    hdlm_shard s;
    assert_int_equal(hdlm_shard_open(&s, path, vocab), -1);
    assert_error_contains(path);
    assert_error_contains(problem);
    assert_null(s.map);
}

static void test_reader_refuses(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("shard_reader_refuses");
    char path[4096];
    char *bytes;
    size_t len = good_shard(dir, path, &bytes);
    hdlm_shard s;
    test_write_file(path, bytes, len);
    assert_int_equal(hdlm_shard_open(&s, path, 100), 0);
    hdlm_shard_close(&s);

    expect_refused(path, bytes, len - 1, 100, "truncated");
    expect_refused(path, bytes, 10, 100, "shorter than the 64-byte header");
    expect_refused(path, bytes, 0, 100, "truncated");
    char *longer = malloc(len + 2);
    memcpy(longer, bytes, len);
    longer[len] = longer[len + 1] = 0;
    expect_refused(path, longer, len + 2, 100, "trailing bytes");
    free(longer);
    expect_refused(path, bytes, len, 50257, "vocabulary size 100, expected 50257");

    char *copy = malloc(len);
    uint64_t word;
#define DAMAGE(offset, value, problem)                                                                                 \
    do {                                                                                                               \
        memcpy(copy, bytes, len);                                                                                      \
        word = (value);                                                                                                \
        memcpy(copy + (offset), &word, 8);                                                                             \
        expect_refused(path, copy, len, 100, problem);                                                                 \
    } while (0)
    DAMAGE(0, 0x4c4d54534b4f5448ull, "wrong magic");
    DAMAGE(8, 2, "format version 2");
    DAMAGE(16, 70000, "vocabulary size 70000");
    DAMAGE(24, 4, "4-byte tokens");
    DAMAGE(32, 9, "header says 9 tokens");
    DAMAGE(40, 9, "document count 9 exceeds");
    DAMAGE(40, 1, "header checksum mismatch");   // a plausible document count: only the header checksum sees it
    DAMAGE(56, 1, "header checksum mismatch");
    // A flipped token bit: the token checksum catches it.
    memcpy(copy, bytes, len);
    copy[64 + 4] ^= 1;
    expect_refused(path, copy, len, 100, "token checksum mismatch");
    // Every single-bit flip anywhere in the file is refused.
    for (size_t byte = 0; byte < len; byte++)
        for (int bit = 0; bit < 8; bit++) {
            memcpy(copy, bytes, len);
            copy[byte] ^= (char)(1 << bit);
            test_write_file(path, copy, len);
            hdlm_shard s2;
            if (hdlm_shard_open(&s2, path, 100) == 0) {
                print_error("flipping bit %d of byte %zu went unnoticed\n", bit, byte);
                fail();
            }
        }
    // An out-of-range id with a correct checksum: the id check catches it.
    memcpy(copy, bytes, len);
    uint16_t big = 100;
    memcpy(copy + 64 + 2 * 5, &big, 2);
    word = XXH64(copy + 64, len - 64, 0);
    memcpy(copy + 48, &word, 8);
    word = XXH64(copy, 56, 0);
    memcpy(copy + 56, &word, 8);
    expect_refused(path, copy, len, 100, "token 5 has id 100, outside the vocabulary of 100");
#undef DAMAGE
    free(copy);
    free(bytes);

    assert_int_equal(hdlm_shard_open(&s, "/nonexistent-dir/x.bin", 0), -1);
    assert_error_contains("cannot open shard /nonexistent-dir/x.bin");
}

static void test_dataset_chunks(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("shard_dataset");
    // Shards of 10, 3 and 25 tokens; token value = global position, so chunks are easy to check.
    size_t sizes[3] = {10, 3, 25}, base = 0;
    const char *names[3] = {"train_000000.bin", "train_000001.bin", "train_000002.bin"};
    for (int s = 0; s < 3; s++) {
        uint16_t tokens[32];
        for (size_t i = 0; i < sizes[s]; i++) tokens[i] = (uint16_t)(base + i);
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, names[s]);
        write_shard(path, 1000, tokens, sizes[s], 4, (uint64_t)s);
        base += sizes[s];
    }
    char other[4096];
    snprintf(other, sizeof other, "%s/validation_000000.bin", dir);
    uint16_t one = 5;
    write_shard(other, 1000, &one, 1, 1, 1);

    hdlm_dataset d;
    assert_int_equal(hdlm_dataset_open_dir(&d, dir, "train", 4, 1000), 0);
    assert_int_equal(d.shard_count, 3);
    assert_int_equal(d.token_count, 38);
    assert_int_equal(d.doc_count, 3);
    // 10/4 = 2, 3/4 = 0, 25/4 = 6: the remainder of each shard is dropped.
    assert_int_equal(hdlm_dataset_chunk_count(&d), 8);
    uint64_t starts[8] = {0, 4, 13, 17, 21, 25, 29, 33};
    for (uint64_t i = 0; i < 8; i++) {
        const uint16_t *c = hdlm_dataset_chunk(&d, i);
        uint32_t copy[4];
        hdlm_dataset_chunk_copy(&d, i, copy);
        for (int k = 0; k < 4; k++) {
            assert_int_equal(c[k], starts[i] + (uint64_t)k);
            assert_int_equal(copy[k], starts[i] + (uint64_t)k);
        }
    }
    hdlm_dataset_close(&d);

    // Fewer tokens than one chunk: refused (chunks are picked modulo the count, which would divide by zero).
    assert_int_equal(hdlm_dataset_open_dir(&d, dir, "validation", 2, 1000), -1);
    assert_error_contains("fewer than one chunk of 2 tokens");
    assert_int_equal(hdlm_dataset_open_dir(&d, dir, "test", 2, 1000), -1);
    assert_error_contains("no test shards");
    assert_int_equal(hdlm_dataset_open_dir(&d, dir, "train", 2, 50257), -1);
    assert_error_contains("train_000000.bin has vocabulary size 1000, expected 50257");
}

static void test_partition(void **state) {
    (void)state;
    unsigned char seen[200];
    for (uint64_t count = 0; count < 200; count += 7) {
        for (int world = 1; world <= 9; world++) {
            memset(seen, 0, sizeof seen);
            uint64_t min_size = UINT64_MAX, max_size = 0, previous_end = 0;
            for (int rank = 0; rank < world; rank++) {
                uint64_t b, e, b2, e2;
                hdlm_partition_range(count, rank, world, &b, &e);
                hdlm_partition_range(count, rank, world, &b2, &e2);
                assert_true(b == b2 && e == e2);                // deterministic
                assert_int_equal(b, previous_end);              // contiguous in rank order
                previous_end = e;
                for (uint64_t i = b; i < e; i++) assert_int_equal(seen[i]++, 0);   // disjoint
                uint64_t size = e - b;
                min_size = size < min_size ? size : min_size;
                max_size = size > max_size ? size : max_size;
            }
            assert_int_equal(previous_end, count);
            for (uint64_t i = 0; i < count; i++) assert_int_equal(seen[i], 1);   // covering
            assert_true(max_size - min_size <= 1);                                // balanced
        }
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),     cmocka_unit_test(test_writer_refuses),
        cmocka_unit_test(test_reader_refuses), cmocka_unit_test(test_dataset_chunks),
        cmocka_unit_test(test_partition),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

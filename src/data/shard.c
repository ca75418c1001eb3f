// Token shard files: streaming atomic writer and validating mmap reader (layout in include/hdlm/shard.h).
#include "hdlm/shard.h"

#include "hdlm/common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "shard files are little-endian; this code maps them directly and needs a little-endian host"
#endif

struct hdlm_shard_writer {
    char *path, *tmp_path;
    FILE *file;
    uint32_t vocab_size;
    uint64_t token_count;
    XXH64_state_t *hash;
};

static void header_encode(uint64_t words[8], const hdlm_shard_info *info) {
    words[0] = HDLM_SHARD_MAGIC;
    words[1] = HDLM_SHARD_VERSION;
    words[2] = info->vocab_size;
    words[3] = HDLM_SHARD_TOKEN_BYTES;
    words[4] = info->token_count;
    words[5] = info->doc_count;
    words[6] = info->checksum;
    words[7] = XXH64(words, 7 * sizeof *words, 0);
}

static void writer_free(hdlm_shard_writer *w) {
    if (w->file) fclose(w->file);
    XXH64_freeState(w->hash);
    free(w->path);
    free(w->tmp_path);
    free(w);
}

int hdlm_shard_writer_open(hdlm_shard_writer **out, const char *path, uint32_t vocab_size) {
    *out = NULL;
    HDLM_CHECK(vocab_size >= 1 && vocab_size <= 65536, "shard %s: vocabulary size %u does not fit uint16 ids (1..65536)",
               path, vocab_size);
    size_t n = strlen(path);
    char *tmp_path = hdlm_malloc(n + 5);
    memcpy(tmp_path, path, n);
    memcpy(tmp_path + n, ".tmp", 5);
    FILE *f = fopen(tmp_path, "wb");
    if (!f) {
        int err = errno;
        free(tmp_path);
        return HDLM_FAIL("cannot create shard %s: %s", path, strerror(err));
    }
    hdlm_shard_writer *w = hdlm_calloc(1, sizeof *w);
    w->path = hdlm_strdup(path);
    w->tmp_path = tmp_path;
    w->file = f;
    w->vocab_size = vocab_size;
    w->hash = XXH64_createState();
    HDLM_ASSERT(w->hash, "XXH64_createState failed");
    XXH64_reset(w->hash, 0);
    // Placeholder header; the real one is written on close when the counts and the checksum are known.
    uint64_t zeros[8] = {0};
    if (fwrite(zeros, sizeof zeros, 1, f) != 1) {
        int err = errno;
        hdlm_shard_writer_abort(w);
        return HDLM_FAIL("cannot write shard %s: %s", path, strerror(err));
    }
    *out = w;
    return 0;
}

int hdlm_shard_writer_append(hdlm_shard_writer *w, const uint16_t *tokens, size_t n) {
    for (size_t i = 0; i < n; i++)
        HDLM_CHECK(tokens[i] < w->vocab_size, "shard %s: token %llu has id %u, outside the vocabulary of %u", w->path,
                   (unsigned long long)(w->token_count + i), tokens[i], w->vocab_size);
    if (n == 0) return 0;
    HDLM_CHECK(fwrite(tokens, sizeof *tokens, n, w->file) == n, "cannot write shard %s: %s", w->path, strerror(errno));
    XXH64_update(w->hash, tokens, n * sizeof *tokens);
    w->token_count += n;
    return 0;
}

int hdlm_shard_writer_close(hdlm_shard_writer *w, uint64_t doc_count, hdlm_shard_info *info) {
    hdlm_shard_info h = {w->vocab_size, w->token_count, doc_count, XXH64_digest(w->hash)};
    uint64_t words[8];
    header_encode(words, &h);
    int ok = fseeko(w->file, 0, SEEK_SET) == 0 && fwrite(words, sizeof words, 1, w->file) == 1 && fflush(w->file) == 0 &&
             fsync(fileno(w->file)) == 0;
    int err = errno;
    ok = (fclose(w->file) == 0) && ok;
    w->file = NULL;
    if (!ok) {
        char *path = hdlm_strdup(w->path);
        hdlm_shard_writer_abort(w);
        int rc = HDLM_FAIL("cannot finish shard %s: %s", path, strerror(err));
        free(path);
        return rc;
    }
    if (rename(w->tmp_path, w->path) != 0) {
        err = errno;
        char *path = hdlm_strdup(w->path);
        hdlm_shard_writer_abort(w);
        int rc = HDLM_FAIL("cannot rename the finished shard to %s: %s", path, strerror(err));
        free(path);
        return rc;
    }
    if (info) *info = h;
    writer_free(w);
    return 0;
}

void hdlm_shard_writer_abort(hdlm_shard_writer *w) {
    if (!w) return;
    if (w->file) fclose(w->file);
    w->file = NULL;
    unlink(w->tmp_path);
    writer_free(w);
}

// ---- reader ----

// Validates the mapped file; returns -1 with a message naming the file and the first problem found.
static int shard_validate(hdlm_shard *s, const unsigned char *bytes, uint64_t file_bytes, uint32_t expected_vocab) {
    const char *p = s->path;
    HDLM_CHECK(file_bytes >= HDLM_SHARD_HEADER_BYTES,
               "shard %s is truncated: %llu bytes, shorter than the %d-byte header", p,
               (unsigned long long)file_bytes, HDLM_SHARD_HEADER_BYTES);
    uint64_t w[8];
    memcpy(w, bytes, sizeof w);
    HDLM_CHECK(w[0] == HDLM_SHARD_MAGIC, "%s is not an hdlm token shard (wrong magic 0x%016llx, expected \"HDLMTOKS\")",
               p, (unsigned long long)w[0]);
    HDLM_CHECK(w[1] == HDLM_SHARD_VERSION, "shard %s has format version %llu; this build reads version %d", p,
               (unsigned long long)w[1], HDLM_SHARD_VERSION);
    HDLM_CHECK(w[2] >= 1 && w[2] <= 65536, "shard %s: vocabulary size %llu does not fit uint16 ids", p,
               (unsigned long long)w[2]);
    HDLM_CHECK(expected_vocab == 0 || w[2] == expected_vocab, "shard %s has vocabulary size %llu, expected %u", p,
               (unsigned long long)w[2], expected_vocab);
    HDLM_CHECK(w[3] == HDLM_SHARD_TOKEN_BYTES, "shard %s stores %llu-byte tokens; only uint16 (2) is supported", p,
               (unsigned long long)w[3]);
    uint64_t payload = file_bytes - HDLM_SHARD_HEADER_BYTES;
    HDLM_CHECK(w[4] <= payload / HDLM_SHARD_TOKEN_BYTES && payload == w[4] * HDLM_SHARD_TOKEN_BYTES,
               "shard %s: header says %llu tokens (%llu bytes) but the file holds %llu payload bytes (%s)", p,
               (unsigned long long)w[4], (unsigned long long)w[4] * HDLM_SHARD_TOKEN_BYTES, (unsigned long long)payload,
               payload < w[4] * HDLM_SHARD_TOKEN_BYTES ? "truncated" : "trailing bytes");
    HDLM_CHECK(w[5] <= w[4], "shard %s: document count %llu exceeds the token count %llu", p, (unsigned long long)w[5],
               (unsigned long long)w[4]);
    uint64_t header_sum = XXH64(w, 7 * sizeof *w, 0);
    HDLM_CHECK(header_sum == w[7], "shard %s: header checksum mismatch (xxHash64 of header words 0-6 is %016llx, word 7 "
               "says %016llx)", p, (unsigned long long)header_sum, (unsigned long long)w[7]);
    const uint16_t *tokens = (const uint16_t *)(bytes + HDLM_SHARD_HEADER_BYTES);
    uint64_t sum = XXH64(tokens, payload, 0);
    HDLM_CHECK(sum == w[6], "shard %s: token checksum mismatch (xxHash64 of the tokens is %016llx, header says %016llx)", p,
               (unsigned long long)sum, (unsigned long long)w[6]);
    // Branch-free maximum first (vectorises); locate the offending id only when there is one.
    uint16_t max_id = 0;
    for (uint64_t i = 0; i < w[4]; i++) max_id = tokens[i] > max_id ? tokens[i] : max_id;
    if (max_id >= w[2]) {
        uint64_t i = 0;
        while (tokens[i] < w[2]) i++;
        return HDLM_FAIL("shard %s: token %llu has id %u, outside the vocabulary of %llu", p, (unsigned long long)i,
                         tokens[i], (unsigned long long)w[2]);
    }
    s->info = (hdlm_shard_info){w[2], w[4], w[5], w[6]};
    s->tokens = tokens;
    return 0;
}

int hdlm_shard_open(hdlm_shard *s, const char *path, uint32_t expected_vocab) {
    memset(s, 0, sizeof *s);
    int fd;
    uint64_t file_bytes;
    HDLM_TRY(hdlm_open_regular(path, "shard", &fd, &file_bytes));
    s->path = hdlm_strdup(path);
    if (file_bytes > 0) {
        void *map = mmap(NULL, (size_t)file_bytes, PROT_READ, MAP_SHARED, fd, 0);
        if (map == MAP_FAILED) {
            int err = errno;
            close(fd);
            hdlm_shard_close(s);
            return HDLM_FAIL("cannot map shard %s: %s", path, strerror(err));
        }
        s->map = map;
        s->map_bytes = (size_t)file_bytes;
    }
    close(fd);
    if (shard_validate(s, s->map, file_bytes, expected_vocab) != 0) {
        hdlm_shard_close(s);
        return -1;
    }
    return 0;
}

void hdlm_shard_close(hdlm_shard *s) {
    if (s->map) munmap(s->map, s->map_bytes);
    free(s->path);
    memset(s, 0, sizeof *s);
}

// hdlm/shard.h — token shard files: a 64-byte little-endian header followed by uint16 token ids.
//
// Layout (docs/shard-format.md): eight little-endian uint64 words
//   0 magic "HDLMTOKS"   1 format version (1)   2 vocabulary size   3 bytes per token (2 = uint16)
//   4 token count        5 document count      6 xxHash64 (seed 0) of the token bytes
//   7 xxHash64 (seed 0) of header bytes 0..55 (words 0-6), so a damaged header is detected too
// then token_count uint16 ids, each < vocabulary size. File size = 64 + 2 * token_count, exactly.
// The writer streams (bounded memory) into "<path>.tmp" and renames on close, so a shard either exists complete
// or not at all. The reader validates everything on open and maps the tokens read-only.
#ifndef HDLM_SHARD_H
#define HDLM_SHARD_H

#include <stddef.h>
#include <stdint.h>

#define HDLM_SHARD_MAGIC 0x534b4f544d4c4448ull   // "HDLMTOKS" read as a little-endian uint64
#define HDLM_SHARD_VERSION 1
#define HDLM_SHARD_HEADER_BYTES 64
#define HDLM_SHARD_TOKEN_BYTES 2

typedef struct {
    uint64_t vocab_size;
    uint64_t token_count;
    uint64_t doc_count;
    uint64_t checksum;   // xxHash64 (seed 0) of the token payload bytes
} hdlm_shard_info;

// ---- writer ----
typedef struct hdlm_shard_writer hdlm_shard_writer;

// Starts a shard at `path` (written as "<path>.tmp" until hdlm_shard_writer_close). vocab_size in 1..65536.
int hdlm_shard_writer_open(hdlm_shard_writer **out, const char *path, uint32_t vocab_size);
// Appends n token ids; an id >= vocab_size is refused naming the shard, the position and the id.
int hdlm_shard_writer_append(hdlm_shard_writer *w, const uint16_t *tokens, size_t n);
// Writes the header (with doc_count and the checksum), flushes, renames to the final name and frees the writer.
// The writer is freed on failure too (the temporary file is removed). info (optional) receives the header values.
int hdlm_shard_writer_close(hdlm_shard_writer *w, uint64_t doc_count, hdlm_shard_info *info);
// Drops an unfinished shard: removes the temporary file and frees the writer.
void hdlm_shard_writer_abort(hdlm_shard_writer *w);

// ---- reader ----
typedef struct {
    char *path;
    hdlm_shard_info info;
    const uint16_t *tokens;   // info.token_count ids, mapped read-only
    void *map;
    size_t map_bytes;
} hdlm_shard;

// Maps and validates a shard: size, magic, version, token width, vocabulary size (must equal expected_vocab unless it
// is 0), size against the token count, both checksums and every id < vocabulary size. Any problem is refused
// with a message naming the file and the problem.
int hdlm_shard_open(hdlm_shard *s, const char *path, uint32_t expected_vocab);
void hdlm_shard_close(hdlm_shard *s);

#endif

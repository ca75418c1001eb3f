// hdlm/dataset.h — a set of token shards seen as numbered chunks of L tokens, for the training and evaluation loaders.
//
// Chunking rule (method §8.1 "wrap", per shard): shard s contributes floor(tokens_s / L) chunks, cut from its token
// stream at offsets 0, L, 2L, ...; the last tokens_s mod L tokens of every shard are dropped (chunks never straddle
// shards). Chunk numbers run over the shards in the order given (a directory: file names sorted bytewise).
#ifndef HDLM_DATASET_H
#define HDLM_DATASET_H

#include <stddef.h>
#include <stdint.h>

#include "hdlm/shard.h"

typedef struct {
    hdlm_shard *shards;
    size_t shard_count;
    uint64_t *first_chunk;   // shard_count + 1 entries: chunks of shard s are [first_chunk[s], first_chunk[s+1])
    uint64_t chunk_len;
    uint64_t token_count, doc_count;   // over all shards (dropped remainders included)
} hdlm_dataset;

// Opens the shards `paths[0..n)` (every one validated, see hdlm_shard_open) for chunks of chunk_len tokens.
int hdlm_dataset_open_files(hdlm_dataset *d, const char *const *paths, size_t n, uint64_t chunk_len,
                            uint32_t expected_vocab);
// Opens every "<split>_*.bin" in dir (as written by hdlm-prep prepare), sorted by name. No match is an error.
int hdlm_dataset_open_dir(hdlm_dataset *d, const char *dir, const char *split, uint64_t chunk_len,
                          uint32_t expected_vocab);
void hdlm_dataset_close(hdlm_dataset *d);

uint64_t hdlm_dataset_chunk_count(const hdlm_dataset *d);
// A fingerprint of the set's content and chunking (the shards' token counts and checksums, in order, and the chunk
// length): what a checkpoint records so that a resume on other data is refused.
uint64_t hdlm_dataset_identity(const hdlm_dataset *d);
// Chunk i (i < chunk count) as chunk_len ids in the read-only mapping.
const uint16_t *hdlm_dataset_chunk(const hdlm_dataset *d, uint64_t i);
// Chunk i widened into dst[0..chunk_len).
void hdlm_dataset_chunk_copy(const hdlm_dataset *d, uint64_t i, uint32_t *dst);

// The share of `count` items (chunk indices, or positions in a shuffled order of them) that rank `rank` of `world`
// takes: the contiguous range [*begin, *end), sizes differing by at most one, earlier ranks taking the larger ones.
// Over all ranks the ranges are disjoint and cover [0, count).
void hdlm_partition_range(uint64_t count, int rank, int world, uint64_t *begin, uint64_t *end);

#endif

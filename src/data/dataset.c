// A set of token shards as numbered fixed-length chunks (rule in include/hdlm/dataset.h).
#include "hdlm/dataset.h"

#include "hdlm/common.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

int hdlm_dataset_open_files(hdlm_dataset *d, const char *const *paths, size_t n, uint64_t chunk_len,
                            uint32_t expected_vocab) {
    memset(d, 0, sizeof *d);
    HDLM_CHECK(chunk_len >= 1, "dataset: chunk length must be at least 1 token");
    HDLM_CHECK(n >= 1, "dataset: no shard files given");
    d->shards = hdlm_calloc(n, sizeof *d->shards);
    d->first_chunk = hdlm_calloc(n + 1, sizeof *d->first_chunk);
    d->chunk_len = chunk_len;
    for (size_t s = 0; s < n; s++) {
        if (hdlm_shard_open(&d->shards[s], paths[s], expected_vocab) != 0) {
            hdlm_dataset_close(d);
            return -1;
        }
        d->shard_count = s + 1;
        const hdlm_shard_info *info = &d->shards[s].info;
        d->first_chunk[s + 1] = d->first_chunk[s] + info->token_count / chunk_len;
        d->token_count += info->token_count;
        d->doc_count += info->doc_count;
    }
    return 0;
}

static int compare_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int hdlm_dataset_open_dir(hdlm_dataset *d, const char *dir, const char *split, uint64_t chunk_len,
                          uint32_t expected_vocab) {
    memset(d, 0, sizeof *d);
    DIR *dh = opendir(dir);
    HDLM_CHECK(dh, "cannot open shard directory %s: %s", dir, strerror(errno));
    size_t prefix_len = strlen(split), n = 0, cap = 16;
    char **paths = hdlm_malloc(cap * sizeof *paths);
    for (struct dirent *e; (e = readdir(dh));) {
        size_t len = strlen(e->d_name);
        if (len < prefix_len + 5 || strncmp(e->d_name, split, prefix_len) != 0 || e->d_name[prefix_len] != '_' ||
            strcmp(e->d_name + len - 4, ".bin") != 0)
            continue;
        if (n == cap) paths = hdlm_realloc(paths, (cap *= 2) * sizeof *paths);
        size_t bytes = strlen(dir) + len + 2;
        paths[n] = hdlm_malloc(bytes);
        snprintf(paths[n++], bytes, "%s/%s", dir, e->d_name);
    }
    closedir(dh);
    qsort(paths, n, sizeof *paths, compare_names);
    int rc = n == 0 ? HDLM_FAIL("no %s shards (%s_*.bin) in %s", split, split, dir)
                    : hdlm_dataset_open_files(d, (const char *const *)paths, n, chunk_len, expected_vocab);
    for (size_t i = 0; i < n; i++) free(paths[i]);
    free(paths);
    return rc;
}

void hdlm_dataset_close(hdlm_dataset *d) {
    for (size_t s = 0; s < d->shard_count; s++) hdlm_shard_close(&d->shards[s]);
    free(d->shards);
    free(d->first_chunk);
    memset(d, 0, sizeof *d);
}

uint64_t hdlm_dataset_chunk_count(const hdlm_dataset *d) { return d->first_chunk ? d->first_chunk[d->shard_count] : 0; }

const uint16_t *hdlm_dataset_chunk(const hdlm_dataset *d, uint64_t i) {
    HDLM_ASSERT(i < hdlm_dataset_chunk_count(d), "chunk %llu of %llu", (unsigned long long)i,
                (unsigned long long)hdlm_dataset_chunk_count(d));
    // The last shard whose first chunk is <= i.
    size_t lo = 0, hi = d->shard_count;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (d->first_chunk[mid] <= i) lo = mid;
        else hi = mid;
    }
    return d->shards[lo].tokens + (i - d->first_chunk[lo]) * d->chunk_len;
}

void hdlm_dataset_chunk_copy(const hdlm_dataset *d, uint64_t i, uint32_t *dst) {
    const uint16_t *src = hdlm_dataset_chunk(d, i);
    for (uint64_t k = 0; k < d->chunk_len; k++) dst[k] = src[k];
}

void hdlm_partition_range(uint64_t count, int rank, int world, uint64_t *begin, uint64_t *end) {
    HDLM_ASSERT(world >= 1 && rank >= 0 && rank < world, "rank %d of %d", rank, world);
    uint64_t q = count / (uint64_t)world, m = count % (uint64_t)world, r = (uint64_t)rank;
    *begin = r * q + (r < m ? r : m);
    *end = *begin + q + (r < m ? 1 : 0);
}

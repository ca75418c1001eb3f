// A set of token shards as numbered fixed-length chunks (rule in include/hdlm/dataset.h).
#include "hdlm/dataset.h"

#include "hdlm/common.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

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
    // An empty set would divide by zero wherever chunks are picked modulo the count.
    if (d->first_chunk[n] == 0) {
        uint64_t tokens = d->token_count;
        hdlm_dataset_close(d);
        return HDLM_FAIL("%s%s: %llu tokens in %zu shard(s), fewer than one chunk of %llu tokens (model.length)",
                         paths[0], n > 1 ? " ..." : "", (unsigned long long)tokens, n, (unsigned long long)chunk_len);
    }
    return 0;
}

static int compare_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

// When the directory has a manifest.json (hdlm-prep prepare), the split's shards must be exactly the ones it lists,
// with the checksums it records: a missing or replaced shard is refused instead of silently training on less.
static int check_manifest(const hdlm_dataset *d, const char *dir, const char *split) {
    char path[4200], *text;
    size_t len;
    snprintf(path, sizeof path, "%s/manifest.json", dir);
    if (access(path, F_OK) != 0) return 0;
    HDLM_TRY(hdlm_read_file(path, &text, &len));
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    const cJSON *shards = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "splits"), split), "shards");
    int rc = 0, listed = cJSON_GetArraySize(shards);
    if (!root || !cJSON_IsArray(shards)) rc = HDLM_FAIL("%s: no list of %s shards (not a manifest of hdlm-prep?)", path,
                                                        split);
    else if ((size_t)listed != d->shard_count)
        rc = HDLM_FAIL("%s lists %d %s shard(s), the directory holds %zu: shards are missing or extra", path, listed,
                       split, d->shard_count);
    for (int i = 0; rc == 0 && i < listed; i++) {
        const cJSON *sh = cJSON_GetArrayItem(shards, i);
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(sh, "name");
        const cJSON *sum = cJSON_GetObjectItemCaseSensitive(sh, "xxh64");
        const char *have = strrchr(d->shards[i].path, '/');
        have = have ? have + 1 : d->shards[i].path;
        char hex[32];
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)d->shards[i].info.checksum);
        if (!cJSON_IsString(name) || strcmp(name->valuestring, have) != 0)
            rc = HDLM_FAIL("%s lists shard %d as %s, the directory has %s", path, i,
                           cJSON_IsString(name) ? name->valuestring : "(no name)", have);
        else if (!cJSON_IsString(sum) || strcmp(sum->valuestring, hex) != 0)
            rc = HDLM_FAIL("%s: shard %s has checksum %s, the manifest records %s (replaced after prepare?)", path,
                           have, hex, cJSON_IsString(sum) ? sum->valuestring : "none");
    }
    cJSON_Delete(root);
    return rc;
}

int hdlm_dataset_open_dir(hdlm_dataset *d, const char *dir, const char *split, uint64_t chunk_len,
                          uint32_t expected_vocab) {
    memset(d, 0, sizeof *d);
    char mark[4200];
    snprintf(mark, sizeof mark, "%s/.prepare-tmp", dir);
    HDLM_CHECK(access(mark, F_OK) != 0,
               "%s is the output of an unfinished hdlm-prep prepare (%s exists): run it again with --overwrite", dir,
               mark);
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
    if (rc == 0 && check_manifest(d, dir, split) != 0) {
        hdlm_dataset_close(d);
        rc = -1;
    }
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

uint64_t hdlm_dataset_identity(const hdlm_dataset *d) {
    uint64_t words[2 * 4096 + 1];
    size_t n = 0;
    words[n++] = d->chunk_len;
    uint64_t h = 0;
    for (size_t s = 0; s < d->shard_count; s++) {
        words[n++] = d->shards[s].info.token_count;
        words[n++] = d->shards[s].info.checksum;
        if (n + 2 > sizeof words / sizeof words[0] || s + 1 == d->shard_count) {   // hashed in chained blocks
            h = XXH64(words, n * sizeof *words, h);
            n = 0;
        }
    }
    return h;
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

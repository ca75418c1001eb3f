// hdlm-prep prepare: text inputs -> GPT-2 token shards + manifest.json (docs/shard-format.md, docs/prepare.md).
//
// MPI plan (the shards are byte-identical for any number of ranks):
//  1. each rank reads the documents of its units of the inputs (include/hdlm/textsource.h), tokenizes them with
//     OpenMP threads and appends ids + EOS to a temporary stream, with one flag byte per document and a record per
//     run of documents with one key (the key and the document count);
//  2. the runs of all ranks, in key order (corpus order), give every document its global index, which decides its
//     split (--val-last, --val-fraction); each rank splits its stream into one temporary stream per split;
//  3. the runs' per-split token counts, in key order, place every run's tokens in the split's global token stream;
//     shard k (tokens [kS, (k+1)S)) is written by rank k mod world, reading the ranks' streams that cover it.
// Until the manifest is written, DIR/.prepare-tmp marks the output as unfinished (the dataset reader refuses it);
// a failure removes what this run wrote.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <mpi.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include <cjson/cJSON.h>
#include <dirent.h>
#include <stdbool.h>

#include "prep.h"
#include "hdlm/common.h"
#include "hdlm/dataset.h"
#include "hdlm/detokenize.h"
#include "hdlm/rng.h"
#include "hdlm/shard.h"
#include "hdlm/textsource.h"
#include "hdlm/tokenizer.h"

enum { SPLIT_TRAIN = 0, SPLIT_VALIDATION = 1, SPLITS = 2 };
static const char *const split_names[SPLITS] = {"train", "validation"};

enum { BATCH_BYTES = 32 << 20, BATCH_DOCS = 4096, IO_TOKENS = 1 << 20 };

typedef struct {
    const char *vocab_dir, *out_dir, *text_field;
    uint64_t shard_tokens, unit_bytes;
    double progress_seconds;
    hdlm_text_order order;
    uint64_t val_last;      // 0 = off
    double val_fraction;    // < 0 = off
    uint64_t val_seed;
    int all_validation;     // --split validation
    int skip_malformed, keep_empty, overwrite;
} prepare_options;

// Per-rank counters, summed over ranks for the summary.
enum { STAT_DOCS, STAT_EMPTY, STAT_SKIPPED, STAT_TOKENS, STAT_FORCED_VAL, STAT_TEXT_BYTES, STAT_COUNT };

static void usage(FILE *f) {
    fprintf(f,
            "usage: hdlm-prep prepare --out DIR [options] INPUT... [--val-input INPUT]...\n"
            "  INPUT: a file, a directory or - (stdin); by name (docs/prepare.md):\n"
            "         *.txt               one document             *.jsonl          one document per line\n"
            "         *.txt.gz|xz|zst|bz2, *.jsonl.gz|xz|zst|bz2    the same, compressed\n"
            "         *.tar, *.tar.gz|xz|zst|bz2, *.tgz, other *.gz|xz|zst|bz2: a tar archive, members by the same\n"
            "         rules, nested archives too (OpenWebText's openwebtext.tar.xz as distributed)\n"
            "         a directory: its entries by the same rules, recursive, sorted; any other explicit file: one\n"
            "         document. Every document is followed by EOS 50256.\n"
            "  --out DIR              output directory (created with its parents): SPLIT_NNNNNN.bin shards and\n"
            "                         manifest.json\n"
            "  --vocab DIR            GPT-2 encoder.json + vocab.bpe (default %s)\n"
            "  --shard-tokens N       tokens per shard (default 100000000)\n"
            "  --val-input INPUT      route every document of INPUT to the validation split\n"
            "  --val-last N           the last N documents of the other inputs go to validation (OpenWebText: 100000)\n"
            "  --val-fraction F       each document goes to validation with probability F, by a hash of its index\n"
            "  --val-seed S           seed of that hash (default 0)\n"
            "  --split validation     every input goes to validation (a validation-only set); default: train\n"
            "  --detokenizer NAME     none|wikitext|ptb|lm1b|lambada|scientific|openwebtext, for the inputs after it\n"
            "  --text-field NAME      JSONL field holding the document (default text)\n"
            "  --on-error stop|skip   malformed JSONL line, invalid UTF-8 or an unreadable archive inside an archive:\n"
            "                         stop (default) or warn, skip and count\n"
            "  --keep-empty           keep empty documents: a lone EOS, after the detokenizer if any (the reference\n"
            "                         keeps blank WikiText lines); default: skip and count them\n"
            "  --overwrite            replace shards and manifest already in DIR\n"
            "  --member-order sorted|stored  archive members sorted by name (default; as the reference's\n"
            "                         OpenWebText loader) or in archive order (one pass, nothing held in memory)\n"
            "  --unit-bytes N         work unit of the split across ranks (default %d; the output does not\n"
            "                         depend on it)\n"
            "  --progress S           progress line every S seconds on long runs (default 10; 0: none)\n",
            hdlm_tokenizer_default_dir(), HDLM_TEXT_UNIT_BYTES);
}

static int parse_u64(const char *flag, const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    HDLM_CHECK(*s && *s != '-' && !*end && errno == 0, "%s expects a non-negative integer, got \"%s\"", flag, s);
    *out = v;
    return 0;
}

// ---- phase 1: documents -> tokens ----

typedef struct {
    hdlm_text_doc doc;
    hdlm_tokens tokens;
    char *error;   // tokenization failure (invalid UTF-8), reported in order after the parallel part
} batch_item;

// A run of documents with one key (include/hdlm/textsource.h) as this rank wrote them. Keys order the corpus; a
// rank's runs need not come in key order (sorted archive members are read in archive order).
typedef struct {
    uint64_t key, docs, rule_docs;   // rule_docs: not routed by --val-input
} key_run;

typedef struct {
    FILE *tokens, *flags;
    uint16_t *buf;
    size_t buf_len;
    int64_t stats[STAT_COUNT];
    key_run *runs;
    size_t run_count, run_cap;
} stream_out;

static void write_tokens(FILE *f, const char *path, const uint16_t *t, size_t n) {
    if (n && fwrite(t, sizeof *t, n, f) != n) HDLM_DIE("cannot write %s: %s", path, strerror(errno));
}

// Tokenizes the batch in parallel, then appends it in order (ids, EOS; one flag byte per document).
static void flush_batch(batch_item *items, size_t n, const hdlm_text_inputs *inputs, const hdlm_tokenizer *tok,
                        hdlm_text_reader *reader, const prepare_options *opt, stream_out *out, const char *tok_path) {
#pragma omp parallel for schedule(dynamic, 1)
    for (size_t i = 0; i < n; i++) {
        batch_item *it = &items[i];
        const hdlm_text_file *f = &inputs->files[it->doc.file];
        const char *text = it->doc.text;
        size_t len = it->doc.len;
        char *detok = NULL;
        int rc = 0;
        if (f->detok != HDLM_DETOK_NONE) {
            rc = hdlm_detokenize(f->detok, text, len, &detok, &len);
            text = detok;
        }
        if (rc == 0) rc = hdlm_tokenizer_encode(tok, text, len, &it->tokens);
        if (rc != 0) it->error = hdlm_strdup(hdlm_last_error());
        free(detok);
    }
    for (size_t i = 0; i < n; i++) {
        batch_item *it = &items[i];
        if (it->error) {
            const char *where = hdlm_text_reader_where(reader, &it->doc);
            if (!opt->skip_malformed) HDLM_DIE("%s: %s (use --on-error skip to skip such documents)", where, it->error);
            if (out->stats[STAT_SKIPPED]++ < 20) fprintf(stderr, "hdlm: warning: %s: %s; document skipped\n", where, it->error);
        } else {
            size_t m = it->tokens.len;
            if (out->buf_len < m + 1) out->buf = hdlm_realloc(out->buf, (out->buf_len = m + 1) * sizeof *out->buf);
            for (size_t k = 0; k < m; k++) out->buf[k] = (uint16_t)it->tokens.ids[k];   // ids < 50257 < 65536
            out->buf[m] = HDLM_TOKEN_EOT;
            write_tokens(out->tokens, tok_path, out->buf, m + 1);
            unsigned char flag = (unsigned char)inputs->files[it->doc.file].to_validation;
            if (fputc(flag, out->flags) == EOF) HDLM_DIE("cannot write %s.flags: %s", tok_path, strerror(errno));
            if (out->run_count == 0 || out->runs[out->run_count - 1].key != it->doc.key) {
                if (out->run_count == out->run_cap)
                    out->runs = hdlm_realloc(out->runs, (out->run_cap = out->run_cap ? 2 * out->run_cap : 64) *
                                                            sizeof *out->runs);
                out->runs[out->run_count++] = (key_run){it->doc.key, 0, 0};
            }
            out->runs[out->run_count - 1].docs++;
            out->runs[out->run_count - 1].rule_docs += !flag;
            out->stats[STAT_DOCS]++;
            out->stats[STAT_FORCED_VAL] += flag;
            out->stats[STAT_TOKENS] += (int64_t)m + 1;
        }
        out->stats[STAT_TEXT_BYTES] += (int64_t)it->doc.len;
        free(it->error);
        hdlm_text_doc_free(&it->doc);
        hdlm_tokens_free(&it->tokens);
        memset(it, 0, sizeof *it);
    }
}

static FILE *open_or_die(const char *path, const char *mode) {
    FILE *f = fopen(path, mode);
    if (!f) HDLM_DIE("cannot open %s: %s", path, strerror(errno));
    return f;
}

static void close_or_die(FILE *f, const char *path) {
    if (fclose(f) != 0) HDLM_DIE("cannot write %s: %s", path, strerror(errno));
}

// ---- output directory ----

static int is_output_name(const char *name) {
    if (strcmp(name, "manifest.json") == 0) return 1;
    size_t n = strlen(name);
    if (n < 5 || strcmp(name + n - 4, ".bin") != 0) return 0;
    for (int s = 0; s < SPLITS; s++) {
        size_t k = strlen(split_names[s]);
        if (strncmp(name, split_names[s], k) == 0 && name[k] == '_') return 1;
    }
    return 0;
}

// Removes the files in `dir` (not hidden ones' subfolders); and the folder itself when rmdir_too.
static int remove_dir_files(const char *dir, bool rmdir_too) {
    DIR *dh = opendir(dir);
    HDLM_CHECK(dh, "cannot open %s: %s", dir, strerror(errno));
    int rc = 0;
    for (struct dirent *e; rc == 0 && (e = readdir(dh));) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (unlink(path) != 0) rc = HDLM_FAIL("cannot remove %s: %s", path, strerror(errno));
    }
    closedir(dh);
    HDLM_TRY(rc);
    HDLM_CHECK(!rmdir_too || rmdir(dir) == 0, "cannot remove %s: %s", dir, strerror(errno));
    return 0;
}

// Rank 0: creates DIR and its temporary folder (the mark of an unfinished output); refuses (or with --overwrite
// removes) earlier shards. *created: DIR did not exist.
static int prepare_out_dir(const prepare_options *opt, const char *tmp_dir, bool *created) {
    *created = access(opt->out_dir, F_OK) != 0;
    HDLM_TRY(hdlm_make_dirs(opt->out_dir, "--out"));
    bool unfinished = access(tmp_dir, F_OK) == 0;
    DIR *dh = opendir(opt->out_dir);
    HDLM_CHECK(dh, "cannot open output directory %s: %s", opt->out_dir, strerror(errno));
    int rc = 0;
    for (struct dirent *e; rc == 0 && (e = readdir(dh));) {
        if (!is_output_name(e->d_name)) continue;
        if (!opt->overwrite) {
            rc = unfinished ? HDLM_FAIL("%s holds the output of an unfinished run (%s, and %s/.prepare-tmp); pass "
                                        "--overwrite to replace it", opt->out_dir, e->d_name, opt->out_dir)
                            : HDLM_FAIL("%s already holds prepared data (%s); remove it or pass --overwrite",
                                        opt->out_dir, e->d_name);
            break;
        }
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", opt->out_dir, e->d_name);
        if (unlink(path) != 0) rc = HDLM_FAIL("cannot remove %s: %s", path, strerror(errno));
    }
    closedir(dh);
    HDLM_TRY(rc);
    if (mkdir(tmp_dir, 0777) == 0) return 0;
    HDLM_CHECK(errno == EEXIST, "cannot create %s: %s", tmp_dir, strerror(errno));
    return remove_dir_files(tmp_dir, false);   // left over by an interrupted run (possibly with more ranks)
}

// On a failure (hdlm_die): what this run wrote goes (its shards, the temporary folder, DIR if it made it), so no
// half-written output is left. Other ranks are stopped by MPI_Abort right after.
typedef struct {
    const char *out_dir, *tmp_dir;
    bool created;
} cleanup_info;

static void cleanup_on_failure(void *arg) {
    const cleanup_info *c = arg;
    (void)remove_dir_files(c->tmp_dir, true);
    DIR *dh = opendir(c->out_dir);
    for (struct dirent *e; dh && (e = readdir(dh));) {
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", c->out_dir, e->d_name);
        if (is_output_name(e->d_name) || strcmp(e->d_name, "manifest.json.tmp") == 0) (void)unlink(path);
    }
    if (dh) closedir(dh);
    if (c->created) (void)rmdir(c->out_dir);
}

// ---- the runs of all ranks ----

// Rows of `width` words (the first: a key) from every rank, sorted by key, with the rank that wrote each.
typedef struct {
    uint64_t *rows;
    int *owner;
    size_t count;
} run_table;

typedef struct {
    uint64_t key;
    size_t index;
} key_index;

static int compare_keys(const void *a, const void *b) {
    uint64_t x = ((const key_index *)a)->key, y = ((const key_index *)b)->key;
    return x < y ? -1 : x > y;
}

static void gather_runs(const uint64_t *mine, size_t n, int width, run_table *t) {
    int world = hdlm_world_size();
    HDLM_ASSERT(n * (size_t)width < (size_t)INT32_MAX, "%zu runs", n);
    int count = (int)(n * (size_t)width), *counts = hdlm_calloc((size_t)world, sizeof *counts),
        *displs = hdlm_calloc((size_t)world, sizeof *displs);
    MPI_Allgather(&count, 1, MPI_INT, counts, 1, MPI_INT, MPI_COMM_WORLD);
    size_t total = 0;
    for (int q = 0; q < world; q++) {
        HDLM_ASSERT(total + (size_t)counts[q] < (size_t)INT32_MAX, "too many runs");
        displs[q] = (int)total;
        total += (size_t)counts[q];
    }
    uint64_t *all = hdlm_malloc((total + 1) * sizeof *all);
    MPI_Allgatherv(mine, count, MPI_UINT64_T, all, counts, displs, MPI_UINT64_T, MPI_COMM_WORLD);
    t->count = total / (size_t)width;
    key_index *order = hdlm_malloc((t->count + 1) * sizeof *order);
    int *owner_of = hdlm_malloc((t->count + 1) * sizeof *owner_of);
    for (int q = 0, row = 0; q < world; q++)
        for (int k = 0; k < counts[q] / width; k++, row++) owner_of[row] = q;
    for (size_t i = 0; i < t->count; i++) order[i] = (key_index){all[i * (size_t)width], i};
    qsort(order, t->count, sizeof *order, compare_keys);
    for (size_t i = 1; i < t->count; i++)   // one rank reads a key's documents, one after the other
        HDLM_ASSERT(order[i - 1].key < order[i].key, "key %llu in two runs", (unsigned long long)order[i].key);
    t->rows = hdlm_malloc((total + 1) * sizeof *t->rows);
    t->owner = hdlm_malloc((t->count + 1) * sizeof *t->owner);
    for (size_t i = 0; i < t->count; i++) {
        memcpy(t->rows + i * (size_t)width, all + order[i].index * (size_t)width, (size_t)width * sizeof *all);
        t->owner[i] = owner_of[order[i].index];
    }
    free(order), free(owner_of), free(all), free(counts), free(displs);
}

static void run_table_free(run_table *t) {
    free(t->rows);
    free(t->owner);
    memset(t, 0, sizeof *t);
}

// ---- phase 3: shards ----

typedef struct {
    uint64_t tokens, docs, checksum;
} shard_record;

// Where a run's tokens of each split are: in the split's stream, and in its owner's temporary split stream.
typedef struct {
    int owner;
    uint64_t tokens[SPLITS], offset[SPLITS], file_offset[SPLITS];
} placement;

// Writes shard k of `split`: tokens [k*S, min((k+1)*S, total)) of the split stream, read from the ranks' streams.
static void write_shard(const prepare_options *opt, const char *tmp_dir, int split, uint64_t k, uint64_t total,
                        const placement *runs, size_t n_runs, shard_record *rec) {
    char path[8192], src[8192];
    snprintf(path, sizeof path, "%s/%s_%06llu.bin", opt->out_dir, split_names[split], (unsigned long long)k);
    uint64_t a = k * opt->shard_tokens, b = a + opt->shard_tokens < total ? a + opt->shard_tokens : total;
    hdlm_shard_writer *w;
    HDLM_MUST(hdlm_shard_writer_open(&w, path, HDLM_GPT2_VOCAB));
    uint16_t *buf = hdlm_malloc(IO_TOKENS * sizeof *buf);
    uint64_t docs = 0;
    size_t lo_run = 0, hi_run = n_runs;   // the first run that ends after a
    while (lo_run < hi_run) {
        size_t mid = lo_run + (hi_run - lo_run) / 2;
        if (runs[mid].offset[split] + runs[mid].tokens[split] > a) hi_run = mid;
        else lo_run = mid + 1;
    }
    int fd = -1, fd_owner = -1;
    for (size_t u = lo_run; u < n_runs && runs[u].offset[split] < b; u++) {
        const placement *p = &runs[u];
        uint64_t lo = p->offset[split] > a ? p->offset[split] : a;
        uint64_t hi = p->offset[split] + p->tokens[split] < b ? p->offset[split] + p->tokens[split] : b;
        if (lo >= hi) continue;
        snprintf(src, sizeof src, "%s/r%d.%s.tok", tmp_dir, p->owner, split_names[split]);
        if (fd_owner != p->owner) {
            if (fd >= 0) close(fd);
            if ((fd = open(src, O_RDONLY)) < 0) HDLM_DIE("cannot open %s: %s", src, strerror(errno));
            fd_owner = p->owner;
        }
        for (uint64_t pos = lo; pos < hi;) {
            size_t n = hi - pos < IO_TOKENS ? (size_t)(hi - pos) : IO_TOKENS;
            size_t bytes = n * sizeof *buf, got = 0;
            off_t at = (off_t)((p->file_offset[split] + pos - p->offset[split]) * sizeof *buf);
            while (got < bytes) {
                ssize_t r = pread(fd, (char *)buf + got, bytes - got, at + (off_t)got);
                if (r <= 0) HDLM_DIE("cannot read %s: %s", src, r < 0 ? strerror(errno) : "file too short");
                got += (size_t)r;
            }
            for (size_t i = 0; i < n; i++) docs += buf[i] == HDLM_TOKEN_EOT;
            HDLM_MUST(hdlm_shard_writer_append(w, buf, n));
            pos += n;
        }
    }
    if (fd >= 0) close(fd);
    free(buf);
    hdlm_shard_info info;
    HDLM_MUST(hdlm_shard_writer_close(w, docs, &info));
    *rec = (shard_record){info.token_count, info.doc_count, info.checksum};
}

static uint64_t file_xxh64(const char *path) {
    char *data;
    size_t len;
    HDLM_MUST(hdlm_read_file(path, &data, &len));
    uint64_t h = XXH64(data, len, 0);
    free(data);
    return h;
}

static void write_manifest(const prepare_options *opt, const uint64_t shard_count[SPLITS], const shard_record *recs,
                           const int64_t *stats_split) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "format", "hdlm-token-shards");
    cJSON_AddNumberToObject(root, "version", HDLM_SHARD_VERSION);
    cJSON_AddNumberToObject(root, "vocab_size", HDLM_GPT2_VOCAB);
    cJSON_AddNumberToObject(root, "eos", HDLM_TOKEN_EOT);
    cJSON_AddNumberToObject(root, "shard_tokens", (double)opt->shard_tokens);
    cJSON *tok = cJSON_AddObjectToObject(root, "tokenizer");
    char path[8192], hex[32];
    snprintf(path, sizeof path, "%s/encoder.json", opt->vocab_dir);
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)file_xxh64(path));
    cJSON_AddStringToObject(tok, "encoder_json_xxh64", hex);
    snprintf(path, sizeof path, "%s/vocab.bpe", opt->vocab_dir);
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)file_xxh64(path));
    cJSON_AddStringToObject(tok, "vocab_bpe_xxh64", hex);
    cJSON *splits = cJSON_AddObjectToObject(root, "splits");
    size_t g = 0;
    for (int s = 0; s < SPLITS; s++) {
        cJSON *split = cJSON_AddObjectToObject(splits, split_names[s]);
        cJSON_AddNumberToObject(split, "documents", (double)stats_split[2 * s]);
        cJSON_AddNumberToObject(split, "tokens", (double)stats_split[2 * s + 1]);
        cJSON *shards = cJSON_AddArrayToObject(split, "shards");
        for (uint64_t k = 0; k < shard_count[s]; k++, g++) {
            cJSON *sh = cJSON_CreateObject();
            snprintf(path, sizeof path, "%s_%06llu.bin", split_names[s], (unsigned long long)k);
            cJSON_AddStringToObject(sh, "name", path);
            cJSON_AddNumberToObject(sh, "tokens", (double)recs[g].tokens);
            cJSON_AddNumberToObject(sh, "documents", (double)recs[g].docs);
            snprintf(hex, sizeof hex, "%016llx", (unsigned long long)recs[g].checksum);
            cJSON_AddStringToObject(sh, "xxh64", hex);
            cJSON_AddItemToArray(shards, sh);
        }
    }
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    char tmp[8300];
    snprintf(path, sizeof path, "%s/manifest.json", opt->out_dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = open_or_die(tmp, "w");
    fprintf(f, "%s\n", text);
    close_or_die(f, tmp);
    if (rename(tmp, path) != 0) HDLM_DIE("cannot rename %s to %s: %s", tmp, path, strerror(errno));
    free(text);
}

// ---- phase 2: split decision by global document index ----

static int goes_to_validation(const prepare_options *opt, uint64_t index, uint64_t total) {
    if (opt->all_validation) return 1;
    if (opt->val_last > 0) return opt->val_last >= total || index >= total - opt->val_last;
    if (opt->val_fraction >= 0) {
        uint32_t r[4];
        hdlm_philox4x32(hdlm_rng_key(opt->val_seed, 0, 0, HDLM_RNG_DATA), 0, index, r);
        double u = (double)(((uint64_t)r[0] << 21) ^ (r[1] >> 11)) * 0x1.0p-53;   // 53 random bits in [0, 1)
        return u < opt->val_fraction;
    }
    return 0;
}

// Splits this rank's stream into one stream per split, run by run; first_index[u]: the global index of run u's first
// rule document. Returns per run: key, tokens[2], documents[2], and where its tokens start in this rank's split
// streams (file_offset[2]).
enum { RUN_ROW = 7 };
static uint64_t *split_stream(const prepare_options *opt, const char *tok_path, const char *tmp_dir, int rank,
                              const stream_out *st, const uint64_t *first_index, uint64_t total_rule_docs) {
    char flags_path[8300], out_path[SPLITS][8192];
    snprintf(flags_path, sizeof flags_path, "%s.flags", tok_path);
    FILE *in = open_or_die(tok_path, "rb"), *flags = open_or_die(flags_path, "rb"), *out[SPLITS];
    for (int s = 0; s < SPLITS; s++) {
        snprintf(out_path[s], sizeof out_path[s], "%s/r%d.%s.tok", tmp_dir, rank, split_names[s]);
        out[s] = open_or_die(out_path[s], "wb");
    }
    uint64_t *rows = hdlm_calloc(st->run_count * RUN_ROW + 1, sizeof *rows), written[SPLITS] = {0};
    uint16_t *buf = hdlm_malloc(IO_TOKENS * sizeof *buf);
    size_t u = 0;
    uint64_t docs_in_run = 0, rule_in_run = 0;
    int split = -1;   // split of the current document; -1 = at a document start
    size_t n;
    while ((n = fread(buf, sizeof *buf, IO_TOKENS, in)) > 0) {
        size_t i = 0;
        while (i < n) {
            if (split < 0) {
                while (u < st->run_count && docs_in_run == st->runs[u].docs) u++, docs_in_run = rule_in_run = 0;
                int flag = fgetc(flags);
                if (flag == EOF || u == st->run_count) HDLM_DIE("%s: more documents than recorded", tok_path);
                uint64_t *row = &rows[RUN_ROW * u];
                if (docs_in_run == 0) row[0] = st->runs[u].key, row[5] = written[0], row[6] = written[1];
                docs_in_run++;
                split = flag ? SPLIT_VALIDATION
                             : goes_to_validation(opt, first_index[u] + rule_in_run++, total_rule_docs) ? SPLIT_VALIDATION
                                                                                                     : SPLIT_TRAIN;
                row[3 + split]++;
            }
            size_t j = i;
            while (j < n && buf[j] != HDLM_TOKEN_EOT) j++;
            size_t end = j < n ? j + 1 : n;   // include the EOS
            write_tokens(out[split], out_path[split], buf + i, end - i);
            rows[RUN_ROW * u + 1 + split] += end - i;
            written[split] += end - i;
            if (j < n) split = -1;
            i = end;
        }
    }
    if (ferror(in)) HDLM_DIE("cannot read %s", tok_path);
    free(buf);
    fclose(in);
    fclose(flags);
    for (int s = 0; s < SPLITS; s++) close_or_die(out[s], out_path[s]);
    return rows;
}

static void remove_or_warn(const char *path) {
    if (unlink(path) != 0 && errno != ENOENT) fprintf(stderr, "hdlm: warning: cannot remove %s: %s\n", path, strerror(errno));
}

int prep_prepare_main(int argc, char **argv) {
    double t0 = hdlm_time_now();
    int rank = hdlm_rank(), world = hdlm_world_size();
    prepare_options opt = {.vocab_dir = hdlm_tokenizer_default_dir(), .text_field = "text", .shard_tokens = 100000000,
                           .unit_bytes = HDLM_TEXT_UNIT_BYTES, .progress_seconds = 10, .val_fraction = -1};
    hdlm_text_inputs inputs = {0};
    hdlm_detokenizer detok = HDLM_DETOK_NONE;
    // Inputs are added in command-line order ("-" keeps getopt from permuting), each with the detokenizer in force.
    char **input_args = hdlm_calloc((size_t)argc, sizeof *input_args);
    int *input_val = hdlm_calloc((size_t)argc, sizeof *input_val);
    hdlm_detokenizer *input_detok = hdlm_calloc((size_t)argc, sizeof *input_detok);
    int n_inputs = 0;
    enum { O_VOCAB = 256, O_SHARD, O_VAL_INPUT, O_VAL_LAST, O_VAL_FRACTION, O_VAL_SEED, O_SPLIT, O_DETOK, O_FIELD,
           O_ON_ERROR, O_KEEP_EMPTY, O_OVERWRITE, O_UNIT_BYTES, O_PROGRESS, O_ORDER };
    static const struct option longs[] = {
        {"out", required_argument, NULL, 'o'},          {"vocab", required_argument, NULL, O_VOCAB},
        {"shard-tokens", required_argument, NULL, O_SHARD}, {"val-input", required_argument, NULL, O_VAL_INPUT},
        {"val-last", required_argument, NULL, O_VAL_LAST}, {"val-fraction", required_argument, NULL, O_VAL_FRACTION},
        {"val-seed", required_argument, NULL, O_VAL_SEED}, {"split", required_argument, NULL, O_SPLIT},
        {"detokenizer", required_argument, NULL, O_DETOK}, {"text-field", required_argument, NULL, O_FIELD},
        {"on-error", required_argument, NULL, O_ON_ERROR}, {"keep-empty", no_argument, NULL, O_KEEP_EMPTY},
        {"overwrite", no_argument, NULL, O_OVERWRITE},  {"unit-bytes", required_argument, NULL, O_UNIT_BYTES},
        {"progress", required_argument, NULL, O_PROGRESS}, {"member-order", required_argument, NULL, O_ORDER},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    optind = 1;
    for (int c; (c = getopt_long(argc, argv, "-o:h", longs, NULL)) != -1;) {
        switch (c) {
        case 1:
        case O_VAL_INPUT:
            input_args[n_inputs] = optarg;
            input_val[n_inputs] = c == O_VAL_INPUT;
            input_detok[n_inputs++] = detok;
            break;
        case 'o': opt.out_dir = optarg; break;
        case O_VOCAB: opt.vocab_dir = optarg; break;
        case O_SHARD:
            HDLM_MUST(parse_u64("--shard-tokens", optarg, &opt.shard_tokens));
            if (opt.shard_tokens == 0) HDLM_DIE("--shard-tokens must be at least 1");
            break;
        case O_VAL_LAST:
            HDLM_MUST(parse_u64("--val-last", optarg, &opt.val_last));
            break;
        case O_VAL_FRACTION: {
            char *end;
            opt.val_fraction = strtod(optarg, &end);
            if (!*optarg || *end || !(opt.val_fraction >= 0 && opt.val_fraction <= 1))
                HDLM_DIE("--val-fraction expects a number in [0, 1], got \"%s\"", optarg);
            break;
        }
        case O_VAL_SEED: HDLM_MUST(parse_u64("--val-seed", optarg, &opt.val_seed)); break;
        case O_SPLIT:
            if (strcmp(optarg, "validation") == 0) opt.all_validation = 1;
            else if (strcmp(optarg, "train") == 0) opt.all_validation = 0;
            else HDLM_DIE("--split expects train or validation, got \"%s\"", optarg);
            break;
        case O_DETOK: HDLM_MUST(hdlm_detokenizer_parse(optarg, &detok)); break;
        case O_FIELD: opt.text_field = optarg; break;
        case O_ON_ERROR:
            if (strcmp(optarg, "skip") == 0) opt.skip_malformed = 1;
            else if (strcmp(optarg, "stop") == 0) opt.skip_malformed = 0;
            else HDLM_DIE("--on-error expects stop or skip, got \"%s\"", optarg);
            break;
        case O_KEEP_EMPTY: opt.keep_empty = 1; break;
        case O_OVERWRITE: opt.overwrite = 1; break;
        case O_UNIT_BYTES:
            HDLM_MUST(parse_u64("--unit-bytes", optarg, &opt.unit_bytes));
            if (opt.unit_bytes == 0) HDLM_DIE("--unit-bytes must be at least 1");
            break;
        case O_ORDER:
            if (strcmp(optarg, "sorted") == 0) opt.order = HDLM_TEXT_ORDER_SORTED;
            else if (strcmp(optarg, "stored") == 0) opt.order = HDLM_TEXT_ORDER_STORED;
            else HDLM_DIE("--member-order expects sorted or stored, got \"%s\"", optarg);
            break;
        case O_PROGRESS: {
            char *end;
            opt.progress_seconds = strtod(optarg, &end);
            if (!*optarg || *end || !(opt.progress_seconds >= 0))
                HDLM_DIE("--progress expects seconds >= 0, got \"%s\"", optarg);
            break;
        }
        case 'h':
            if (rank == 0) usage(stdout);
            free(input_args), free(input_val), free(input_detok);
            return 0;
        default:
            if (rank == 0) usage(stderr);
            free(input_args), free(input_val), free(input_detok);
            return 2;
        }
    }
    if (!opt.out_dir) HDLM_DIE("--out DIR is required (hdlm-prep prepare --help)");
    if (n_inputs == 0) HDLM_DIE("no inputs given (hdlm-prep prepare --help)");
    if (opt.val_last > 0 && opt.val_fraction >= 0) HDLM_DIE("--val-last and --val-fraction exclude each other");
    for (int i = 0; i < n_inputs; i++) HDLM_MUST(hdlm_text_inputs_add(&inputs, input_args[i], input_detok[i], input_val[i]));
    free(input_args), free(input_val), free(input_detok);

    hdlm_text_reader *reader;   // refuses what this run cannot read (stdin on several ranks) before DIR is made
    hdlm_text_read_options read = {opt.unit_bytes, opt.text_field, opt.skip_malformed, opt.order};
    HDLM_MUST(hdlm_text_reader_open(&reader, &inputs, rank, world, &read));
    if (strlen(opt.out_dir) > 4000) HDLM_DIE("--out path is too long (%zu bytes)", strlen(opt.out_dir));
    char tmp_dir[4096], tok_path[8192], flags_path[8300];
    snprintf(tmp_dir, sizeof tmp_dir, "%s/.prepare-tmp", opt.out_dir);
    cleanup_info cleanup = {opt.out_dir, tmp_dir, false};
    if (rank == 0) HDLM_MUST(prepare_out_dir(&opt, tmp_dir, &cleanup.created));
    MPI_Bcast(&cleanup.created, 1, MPI_C_BOOL, 0, MPI_COMM_WORLD);
    hdlm_set_die_cleanup(cleanup_on_failure, &cleanup);
    hdlm_tokenizer *tok;
    HDLM_MUST(hdlm_tokenizer_load_dir(&tok, opt.vocab_dir));
    double t_loaded = hdlm_time_now();

    // Phase 1: this rank's units -> tokens.
    snprintf(tok_path, sizeof tok_path, "%s/r%d.tok", tmp_dir, rank);
    snprintf(flags_path, sizeof flags_path, "%s.flags", tok_path);
    stream_out out = {.tokens = open_or_die(tok_path, "wb"), .flags = open_or_die(flags_path, "wb")};
    // Every rank's files exist before any rank reads input, so a failing rank's cleanup finds them all.
    MPI_Barrier(MPI_COMM_WORLD);
    batch_item *batch = hdlm_calloc(BATCH_DOCS, sizeof *batch);
    size_t n_batch = 0, batch_bytes = 0;
    double next_progress = t_loaded + (opt.progress_seconds > 0 ? opt.progress_seconds : INFINITY);
    for (;;) {
        hdlm_text_doc doc;
        int rc = hdlm_text_reader_next(reader, &doc);
        if (rc < 0) HDLM_DIE("%s", hdlm_last_error());
        if (rc == 1 && doc.len == 0 && !opt.keep_empty) {
            if (doc.member && out.stats[STAT_EMPTY] < 20)   // an empty file in an archive is worth a word
                fprintf(stderr, "hdlm: warning: %s: empty document; skipped (--keep-empty keeps it)\n",
                        hdlm_text_reader_where(reader, &doc));
            out.stats[STAT_EMPTY]++;
            hdlm_text_doc_free(&doc);
            continue;
        }
        if (rc == 1) {
            out.stats[STAT_EMPTY] += doc.len == 0;
            batch[n_batch++].doc = doc;
            batch_bytes += doc.len;
        }
        if (n_batch > 0 && (rc == 0 || n_batch == BATCH_DOCS || batch_bytes >= BATCH_BYTES)) {
            flush_batch(batch, n_batch, &inputs, tok, reader, &opt, &out, tok_path);
            n_batch = batch_bytes = 0;
        }
        if (rc == 0) break;
        double now = hdlm_time_now();
        if (rank == 0 && now >= next_progress) {   // rank 0's share stands for all: every rank sees all the input
            double done = (double)hdlm_text_reader_position(reader), all = (double)inputs.total_bytes;
            double frac = all > 0 ? done / all : 0, el = now - t_loaded;
            char eta[32];
            hdlm_format_duration(frac > 0 ? el * (1 - frac) / frac : INFINITY, eta, sizeof eta);
            fprintf(stderr, "hdlm-prep prepare: %.1f%% of the input (%.2f of %.2f GB), %lld documents, %.1f MB/s of "
                    "text per rank, ETA %s\n", 100 * frac, done / 1e9, all / 1e9, (long long)out.stats[STAT_DOCS],
                    (double)out.stats[STAT_TEXT_BYTES] / 1e6 / el, eta);
            next_progress = now + opt.progress_seconds;
        }
    }
    out.stats[STAT_SKIPPED] += (int64_t)hdlm_text_reader_skipped(reader);
    uint64_t ignored_members = hdlm_text_reader_ignored(reader);
    hdlm_text_reader_close(reader);
    free(batch);
    free(out.buf);
    close_or_die(out.tokens, tok_path);
    close_or_die(out.flags, flags_path);
    hdlm_tokenizer_free(tok);
    double t1 = hdlm_time_now();

    // Phase 2: global document indices (over the documents not routed by --val-input), run by run in key order,
    // decide the splits.
    uint64_t *mine = hdlm_malloc((2 * out.run_count + 1) * sizeof *mine);
    for (size_t u = 0; u < out.run_count; u++) mine[2 * u] = out.runs[u].key, mine[2 * u + 1] = out.runs[u].rule_docs;
    run_table table;
    gather_runs(mine, out.run_count, 2, &table);
    uint64_t *before = hdlm_malloc((table.count + 1) * sizeof *before), total_rule_docs = 0;
    for (size_t i = 0; i < table.count; i++) {
        before[i] = total_rule_docs;
        total_rule_docs += table.rows[2 * i + 1];
    }
    uint64_t *first_index = hdlm_malloc((out.run_count + 1) * sizeof *first_index);
    for (size_t u = 0; u < out.run_count; u++) {   // this rank's runs in the table, by key
        size_t a = 0, b = table.count;
        while (a < b) {
            size_t mid = a + (b - a) / 2;
            if (table.rows[2 * mid] < out.runs[u].key) a = mid + 1;
            else b = mid;
        }
        HDLM_ASSERT(a < table.count && table.rows[2 * a] == out.runs[u].key, "run key %llu not gathered",
                    (unsigned long long)out.runs[u].key);
        first_index[u] = before[a];
    }
    free(before);
    run_table_free(&table);
    free(mine);
    uint64_t *rows = split_stream(&opt, tok_path, tmp_dir, rank, &out, first_index, total_rule_docs);
    free(first_index);
    remove_or_warn(tok_path);
    remove_or_warn(flags_path);

    // Phase 3: place every run's tokens in the split streams (key order) and write the shards.
    gather_runs(rows, out.run_count, RUN_ROW, &table);
    free(rows);
    placement *runs = hdlm_calloc(table.count + 1, sizeof *runs);
    uint64_t shard_count[SPLITS], total_shards = 0;
    int64_t split_totals[2 * SPLITS] = {0};
    for (size_t i = 0; i < table.count; i++) {
        const uint64_t *r = &table.rows[RUN_ROW * i];
        runs[i].owner = table.owner[i];
        for (int s = 0; s < SPLITS; s++) {
            runs[i].tokens[s] = r[1 + s];
            runs[i].offset[s] = (uint64_t)split_totals[2 * s + 1];
            runs[i].file_offset[s] = r[5 + s];
            split_totals[2 * s] += (int64_t)r[3 + s];
            split_totals[2 * s + 1] += (int64_t)r[1 + s];
        }
    }
    for (int s = 0; s < SPLITS; s++) {
        shard_count[s] = ((uint64_t)split_totals[2 * s + 1] + opt.shard_tokens - 1) / opt.shard_tokens;
        total_shards += shard_count[s];
    }
    MPI_Barrier(MPI_COMM_WORLD);   // every rank's split streams are complete
    shard_record *recs = hdlm_calloc(total_shards + 1, sizeof *recs), *all_recs = hdlm_calloc(total_shards + 1, sizeof *recs);
    for (uint64_t g = (uint64_t)rank, base = 0, s = 0; g < total_shards; g += (uint64_t)world) {
        while (g >= base + shard_count[s]) base += shard_count[s++];
        write_shard(&opt, tmp_dir, (int)s, g - base, (uint64_t)split_totals[2 * s + 1], runs, table.count, &recs[g]);
    }
    run_table_free(&table);
    free(runs);
    MPI_Reduce(recs, all_recs, (int)(3 * total_shards), MPI_UINT64_T, MPI_SUM, 0, MPI_COMM_WORLD);
    MPI_Barrier(MPI_COMM_WORLD);   // every shard is written; the temporary streams can go
    for (int s = 0; s < SPLITS; s++) {
        char path[8192];
        snprintf(path, sizeof path, "%s/r%d.%s.tok", tmp_dir, rank, split_names[s]);
        remove_or_warn(path);
    }
    int64_t stats[STAT_COUNT];
    MPI_Reduce(out.stats, stats, STAT_COUNT, MPI_INT64_T, MPI_SUM, 0, MPI_COMM_WORLD);
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    double rss_mb = (double)usage.ru_maxrss / 1024, max_rss_mb = 0;   // ru_maxrss is in KiB on Linux
    MPI_Reduce(&rss_mb, &max_rss_mb, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) {
        write_manifest(&opt, shard_count, all_recs, split_totals);
        // The manifest is in place: the output is finished once the temporary folder is gone.
        if (rmdir(tmp_dir) != 0) HDLM_DIE("cannot remove %s: %s", tmp_dir, strerror(errno));
        double t2 = hdlm_time_now(), mb = (double)inputs.total_bytes / 1e6;
        hdlm_log("hdlm-prep prepare: %zu input files (%.2f MB on disk%s), %d rank%s x %d thread%s\n", inputs.count, mb,
                 inputs.ignored_files ? ", other files in directories ignored" : "", world, world > 1 ? "s" : "",
                 omp_get_max_threads(), omp_get_max_threads() > 1 ? "s" : "");
        hdlm_log("  documents: %lld (train %lld, validation %lld); empty: %lld (%s); malformed or unreadable: %lld "
                 "(skipped)\n",
                 (long long)stats[STAT_DOCS], (long long)split_totals[0], (long long)split_totals[2],
                 (long long)stats[STAT_EMPTY], opt.keep_empty ? "kept" : "skipped",
                 (long long)stats[STAT_SKIPPED]);
        if (ignored_members)
            hdlm_log("  archive members matching no input rule (ignored, rank 0's count): %llu\n",
                     (unsigned long long)ignored_members);
        for (int s = 0; s < SPLITS; s++)
            hdlm_log("  %-10s %12lld tokens in %llu shard%s\n", split_names[s], (long long)split_totals[2 * s + 1],
                     (unsigned long long)shard_count[s], shard_count[s] == 1 ? "" : "s");
        double text_mb = (double)stats[STAT_TEXT_BYTES] / 1e6;
        hdlm_log("  elapsed %.2f s (load tokenizer %.2f s, read and tokenize %.2f s, split and write %.2f s): "
                 "%.2f MB/s of text (%.2f per rank), %.0f tokens/s; peak memory %.0f MB per rank\n",
                 t2 - t0, t_loaded - t0, t1 - t_loaded, t2 - t1, text_mb / (t2 - t0), text_mb / (t2 - t0) / world,
                 (double)stats[STAT_TOKENS] / (t2 - t0), max_rss_mb);
        hdlm_log("  wrote %s/manifest.json\n", opt.out_dir);
    }
    hdlm_set_die_cleanup(NULL, NULL);
    free(out.runs);
    free(recs);
    free(all_recs);
    hdlm_text_inputs_free(&inputs);
    return 0;
}

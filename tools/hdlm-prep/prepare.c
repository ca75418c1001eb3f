// hdlm-prep prepare: text inputs -> GPT-2 token shards + manifest.json (docs/shard-format.md, docs/prepare.md).
//
// MPI plan (the shards are byte-identical for any number of ranks):
//  1. each rank reads the documents whose first byte is in its share of the inputs' bytes (include/hdlm/textsource.h),
//     tokenizes them with OpenMP threads and appends ids + EOS to a temporary stream, with one flag byte per document;
//  2. an MPI_Exscan of document counts gives every document its global index, which decides its split
//     (--val-last, --val-fraction); each rank splits its stream into one temporary stream per split;
//  3. an MPI_Allgather of the per-split token counts places every rank's tokens in the split's global token stream;
//     shard k (tokens [kS, (k+1)S)) is written by rank k mod world, reading the ranks' streams that cover it.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <mpi.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include <cjson/cJSON.h>
#include <dirent.h>

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
    uint64_t shard_tokens;
    uint64_t val_last;      // 0 = off
    double val_fraction;    // < 0 = off
    uint64_t val_seed;
    int all_validation;     // --split validation
    int skip_malformed, keep_empty, overwrite;
} prepare_options;

// Per-rank counters, summed over ranks for the summary.
enum { STAT_DOCS, STAT_EMPTY, STAT_SKIPPED, STAT_TOKENS, STAT_FORCED_VAL, STAT_COUNT };

static void usage(FILE *f) {
    fprintf(f,
            "usage: hdlm-prep prepare --out DIR [options] INPUT... [--val-input INPUT]...\n"
            "  INPUT: a text file (one document), a .jsonl file (one document per line) or a directory of *.txt and\n"
            "         *.jsonl files (recursive, sorted). Every document is followed by EOS 50256.\n"
            "  --out DIR              output directory (created): SPLIT_NNNNNN.bin shards and manifest.json\n"
            "  --vocab DIR            GPT-2 encoder.json + vocab.bpe (default %s)\n"
            "  --shard-tokens N       tokens per shard (default 100000000)\n"
            "  --val-input INPUT      route every document of INPUT to the validation split\n"
            "  --val-last N           the last N documents of the other inputs go to validation (OpenWebText: 100000)\n"
            "  --val-fraction F       each document goes to validation with probability F, by a hash of its index\n"
            "  --val-seed S           seed of that hash (default 0)\n"
            "  --split validation     every input goes to validation (a validation-only set); default: train\n"
            "  --detokenizer NAME     none|wikitext|ptb|lm1b|lambada, for the inputs that follow it (method §9.2)\n"
            "  --text-field NAME      JSONL field holding the document (default text)\n"
            "  --on-error stop|skip   malformed JSONL line or invalid UTF-8: stop (default) or warn, skip and count\n"
            "  --keep-empty           keep empty documents: a lone EOS, after the detokenizer if any (the reference\n"
            "                         keeps blank WikiText lines); default: skip and count them\n"
            "  --overwrite            replace shards and manifest already in DIR\n",
            hdlm_tokenizer_default_dir());
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

typedef struct {
    FILE *tokens, *flags;
    uint16_t *buf;
    size_t buf_len;
    int64_t stats[STAT_COUNT];
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
            const char *where = hdlm_text_reader_where(reader, it->doc.file, it->doc.offset);
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
            out->stats[STAT_DOCS]++;
            out->stats[STAT_FORCED_VAL] += flag;
            out->stats[STAT_TOKENS] += (int64_t)m + 1;
        }
        free(it->error);
        free(it->doc.text);
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

// Rank 0: creates DIR and its temporary folder; refuses (or with --overwrite removes) earlier shards.
static int prepare_out_dir(const prepare_options *opt, const char *tmp_dir) {
    HDLM_TRY(hdlm_make_dirs(opt->out_dir, "--out"));
    DIR *dh = opendir(opt->out_dir);
    HDLM_CHECK(dh, "cannot open output directory %s: %s", opt->out_dir, strerror(errno));
    int rc = 0;
    for (struct dirent *e; rc == 0 && (e = readdir(dh));) {
        if (!is_output_name(e->d_name)) continue;
        if (!opt->overwrite) {
            rc = HDLM_FAIL("%s already holds prepared data (%s); remove it or pass --overwrite", opt->out_dir, e->d_name);
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
    // Left over by an interrupted run (possibly with more ranks): empty it.
    dh = opendir(tmp_dir);
    HDLM_CHECK(dh, "cannot open %s: %s", tmp_dir, strerror(errno));
    for (struct dirent *e; rc == 0 && (e = readdir(dh));) {
        if (e->d_name[0] == '.') continue;
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", tmp_dir, e->d_name);
        if (unlink(path) != 0) rc = HDLM_FAIL("cannot remove %s: %s", path, strerror(errno));
    }
    closedir(dh);
    return rc;
}

// ---- phase 3: shards ----

typedef struct {
    uint64_t tokens, docs, checksum;
} shard_record;

// Writes shard k of `split`: tokens [k*S, min((k+1)*S, total)) of the split stream, read from the ranks' streams.
static void write_shard(const prepare_options *opt, const char *tmp_dir, int split, uint64_t k, uint64_t total,
                        const uint64_t *rank_offset, int world, shard_record *rec) {
    char path[8192], src[8192];
    snprintf(path, sizeof path, "%s/%s_%06llu.bin", opt->out_dir, split_names[split], (unsigned long long)k);
    uint64_t a = k * opt->shard_tokens, b = a + opt->shard_tokens < total ? a + opt->shard_tokens : total;
    hdlm_shard_writer *w;
    HDLM_MUST(hdlm_shard_writer_open(&w, path, HDLM_GPT2_VOCAB));
    uint16_t *buf = hdlm_malloc(IO_TOKENS * sizeof *buf);
    uint64_t docs = 0;
    for (int q = 0; q < world; q++) {
        uint64_t lo = rank_offset[q] > a ? rank_offset[q] : a, hi = rank_offset[q + 1] < b ? rank_offset[q + 1] : b;
        if (lo >= hi) continue;
        snprintf(src, sizeof src, "%s/r%d.%s.tok", tmp_dir, q, split_names[split]);
        int fd = open(src, O_RDONLY);
        if (fd < 0) HDLM_DIE("cannot open %s: %s", src, strerror(errno));
        for (uint64_t pos = lo; pos < hi;) {
            size_t n = hi - pos < IO_TOKENS ? (size_t)(hi - pos) : IO_TOKENS;
            size_t bytes = n * sizeof *buf, got = 0;
            while (got < bytes) {
                ssize_t r = pread(fd, (char *)buf + got, bytes - got, (off_t)((pos - rank_offset[q]) * sizeof *buf + got));
                if (r <= 0) HDLM_DIE("cannot read %s: %s", src, r < 0 ? strerror(errno) : "file too short");
                got += (size_t)r;
            }
            for (size_t i = 0; i < n; i++) docs += buf[i] == HDLM_TOKEN_EOT;
            HDLM_MUST(hdlm_shard_writer_append(w, buf, n));
            pos += n;
        }
        close(fd);
    }
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

// Splits this rank's stream into one stream per split; returns per-split documents and tokens in counts[4].
static void split_stream(const prepare_options *opt, const char *tok_path, const char *tmp_dir, int rank,
                         uint64_t first_index, uint64_t total_rule_docs, int64_t counts[2 * SPLITS]) {
    char flags_path[8300], out_path[SPLITS][8192];
    snprintf(flags_path, sizeof flags_path, "%s.flags", tok_path);
    FILE *in = open_or_die(tok_path, "rb"), *flags = open_or_die(flags_path, "rb"), *out[SPLITS];
    for (int s = 0; s < SPLITS; s++) {
        snprintf(out_path[s], sizeof out_path[s], "%s/r%d.%s.tok", tmp_dir, rank, split_names[s]);
        out[s] = open_or_die(out_path[s], "wb");
    }
    uint16_t *buf = hdlm_malloc(IO_TOKENS * sizeof *buf);
    uint64_t index = first_index;
    int split = -1;   // split of the current document; -1 = at a document start
    size_t n;
    while ((n = fread(buf, sizeof *buf, IO_TOKENS, in)) > 0) {
        size_t i = 0;
        while (i < n) {
            if (split < 0) {
                int flag = fgetc(flags);
                if (flag == EOF) HDLM_DIE("%s is shorter than its token stream", flags_path);
                split = flag ? SPLIT_VALIDATION : goes_to_validation(opt, index++, total_rule_docs) ? SPLIT_VALIDATION : SPLIT_TRAIN;
                counts[2 * split]++;
            }
            size_t j = i;
            while (j < n && buf[j] != HDLM_TOKEN_EOT) j++;
            size_t end = j < n ? j + 1 : n;   // include the EOS
            write_tokens(out[split], out_path[split], buf + i, end - i);
            counts[2 * split + 1] += (int64_t)(end - i);
            if (j < n) split = -1;
            i = end;
        }
    }
    if (ferror(in)) HDLM_DIE("cannot read %s", tok_path);
    free(buf);
    fclose(in);
    fclose(flags);
    for (int s = 0; s < SPLITS; s++) close_or_die(out[s], out_path[s]);
}

static void remove_or_warn(const char *path) {
    if (unlink(path) != 0 && errno != ENOENT) fprintf(stderr, "hdlm: warning: cannot remove %s: %s\n", path, strerror(errno));
}

int prep_prepare_main(int argc, char **argv) {
    double t0 = hdlm_time_now();
    int rank = hdlm_rank(), world = hdlm_world_size();
    prepare_options opt = {.vocab_dir = hdlm_tokenizer_default_dir(), .text_field = "text", .shard_tokens = 100000000,
                           .val_fraction = -1};
    hdlm_text_inputs inputs = {0};
    hdlm_detokenizer detok = HDLM_DETOK_NONE;
    // Inputs are added in command-line order ("-" keeps getopt from permuting), each with the detokenizer in force.
    char **input_args = hdlm_calloc((size_t)argc, sizeof *input_args);
    int *input_val = hdlm_calloc((size_t)argc, sizeof *input_val);
    hdlm_detokenizer *input_detok = hdlm_calloc((size_t)argc, sizeof *input_detok);
    int n_inputs = 0;
    enum { O_VOCAB = 256, O_SHARD, O_VAL_INPUT, O_VAL_LAST, O_VAL_FRACTION, O_VAL_SEED, O_SPLIT, O_DETOK, O_FIELD,
           O_ON_ERROR, O_KEEP_EMPTY, O_OVERWRITE };
    static const struct option longs[] = {
        {"out", required_argument, NULL, 'o'},          {"vocab", required_argument, NULL, O_VOCAB},
        {"shard-tokens", required_argument, NULL, O_SHARD}, {"val-input", required_argument, NULL, O_VAL_INPUT},
        {"val-last", required_argument, NULL, O_VAL_LAST}, {"val-fraction", required_argument, NULL, O_VAL_FRACTION},
        {"val-seed", required_argument, NULL, O_VAL_SEED}, {"split", required_argument, NULL, O_SPLIT},
        {"detokenizer", required_argument, NULL, O_DETOK}, {"text-field", required_argument, NULL, O_FIELD},
        {"on-error", required_argument, NULL, O_ON_ERROR}, {"keep-empty", no_argument, NULL, O_KEEP_EMPTY},
        {"overwrite", no_argument, NULL, O_OVERWRITE},  {"help", no_argument, NULL, 'h'},
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

    if (strlen(opt.out_dir) > 4000) HDLM_DIE("--out path is too long (%zu bytes)", strlen(opt.out_dir));
    char tmp_dir[4096], tok_path[8192], flags_path[8300];
    snprintf(tmp_dir, sizeof tmp_dir, "%s/.prepare-tmp", opt.out_dir);
    if (rank == 0) HDLM_MUST(prepare_out_dir(&opt, tmp_dir));
    MPI_Barrier(MPI_COMM_WORLD);
    hdlm_tokenizer *tok;
    HDLM_MUST(hdlm_tokenizer_load_dir(&tok, opt.vocab_dir));
    double t_loaded = hdlm_time_now();

    // Phase 1: this rank's documents -> tokens.
    uint64_t lo, hi;
    hdlm_partition_range(inputs.total_bytes, rank, world, &lo, &hi);
    if (rank == world - 1) hi = UINT64_MAX;   // the last rank also takes empty files at the very end
    snprintf(tok_path, sizeof tok_path, "%s/r%d.tok", tmp_dir, rank);
    snprintf(flags_path, sizeof flags_path, "%s.flags", tok_path);
    stream_out out = {open_or_die(tok_path, "wb"), open_or_die(flags_path, "wb"), NULL, 0, {0}};
    hdlm_text_reader *reader;
    HDLM_MUST(hdlm_text_reader_open(&reader, &inputs, lo, hi, opt.text_field, opt.skip_malformed));
    batch_item *batch = hdlm_calloc(BATCH_DOCS, sizeof *batch);
    size_t n_batch = 0, batch_bytes = 0;
    for (;;) {
        hdlm_text_doc doc;
        int rc = hdlm_text_reader_next(reader, &doc);
        if (rc < 0) HDLM_DIE("%s", hdlm_last_error());
        if (rc == 1 && doc.len == 0 && !opt.keep_empty) {
            out.stats[STAT_EMPTY]++;
            free(doc.text);
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
    }
    out.stats[STAT_SKIPPED] += (int64_t)hdlm_text_reader_skipped(reader);
    hdlm_text_reader_close(reader);
    free(batch);
    free(out.buf);
    close_or_die(out.tokens, tok_path);
    close_or_die(out.flags, flags_path);
    hdlm_tokenizer_free(tok);
    double t1 = hdlm_time_now();

    // Phase 2: global document indices (over the documents not routed by --val-input) decide the splits.
    int64_t rule_docs = out.stats[STAT_DOCS] - out.stats[STAT_FORCED_VAL], first_index = 0, total_rule_docs = 0;
    MPI_Exscan(&rule_docs, &first_index, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0) first_index = 0;   // MPI_Exscan leaves rank 0's result undefined
    MPI_Allreduce(&rule_docs, &total_rule_docs, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
    int64_t counts[2 * SPLITS] = {0};
    split_stream(&opt, tok_path, tmp_dir, rank, (uint64_t)first_index, (uint64_t)total_rule_docs, counts);
    remove_or_warn(tok_path);
    remove_or_warn(flags_path);

    // Phase 3: place every rank's tokens in the split streams and write the shards.
    int64_t *all_counts = hdlm_malloc((size_t)world * 2 * SPLITS * sizeof *all_counts);
    MPI_Allgather(counts, 2 * SPLITS, MPI_INT64_T, all_counts, 2 * SPLITS, MPI_INT64_T, MPI_COMM_WORLD);
    uint64_t *rank_offset[SPLITS], shard_count[SPLITS], total_shards = 0;
    int64_t split_totals[2 * SPLITS] = {0};
    for (int s = 0; s < SPLITS; s++) {
        rank_offset[s] = hdlm_calloc((size_t)world + 1, sizeof *rank_offset[s]);
        for (int q = 0; q < world; q++) {
            rank_offset[s][q + 1] = rank_offset[s][q] + (uint64_t)all_counts[q * 2 * SPLITS + 2 * s + 1];
            split_totals[2 * s] += all_counts[q * 2 * SPLITS + 2 * s];
        }
        split_totals[2 * s + 1] = (int64_t)rank_offset[s][world];
        shard_count[s] = (rank_offset[s][world] + opt.shard_tokens - 1) / opt.shard_tokens;
        total_shards += shard_count[s];
    }
    free(all_counts);
    MPI_Barrier(MPI_COMM_WORLD);   // every rank's split streams are complete
    shard_record *recs = hdlm_calloc(total_shards + 1, sizeof *recs), *all_recs = hdlm_calloc(total_shards + 1, sizeof *recs);
    for (uint64_t g = (uint64_t)rank, base = 0, s = 0; g < total_shards; g += (uint64_t)world) {
        while (g >= base + shard_count[s]) base += shard_count[s++];
        write_shard(&opt, tmp_dir, (int)s, g - base, rank_offset[s][world], rank_offset[s], world, &recs[g]);
    }
    MPI_Reduce(recs, all_recs, (int)(3 * total_shards), MPI_UINT64_T, MPI_SUM, 0, MPI_COMM_WORLD);
    MPI_Barrier(MPI_COMM_WORLD);   // every shard is written; the temporary streams can go
    for (int s = 0; s < SPLITS; s++) {
        char path[8192];
        snprintf(path, sizeof path, "%s/r%d.%s.tok", tmp_dir, rank, split_names[s]);
        remove_or_warn(path);
        free(rank_offset[s]);
    }
    int64_t stats[STAT_COUNT];
    MPI_Reduce(out.stats, stats, STAT_COUNT, MPI_INT64_T, MPI_SUM, 0, MPI_COMM_WORLD);
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) {
        if (rmdir(tmp_dir) != 0) fprintf(stderr, "hdlm: warning: cannot remove %s: %s\n", tmp_dir, strerror(errno));
        write_manifest(&opt, shard_count, all_recs, split_totals);
        double t2 = hdlm_time_now(), mb = (double)inputs.total_bytes / 1e6;
        hdlm_log("hdlm-prep prepare: %zu input files (%.2f MB%s), %d rank%s x %d thread%s\n", inputs.count, mb,
                 inputs.ignored_files ? ", other files in directories ignored" : "", world, world > 1 ? "s" : "",
                 omp_get_max_threads(), omp_get_max_threads() > 1 ? "s" : "");
        hdlm_log("  documents: %lld (train %lld, validation %lld); empty: %lld (%s); malformed: %lld (skipped)\n",
                 (long long)stats[STAT_DOCS], (long long)split_totals[0], (long long)split_totals[2],
                 (long long)stats[STAT_EMPTY], opt.keep_empty ? "kept" : "skipped",
                 (long long)stats[STAT_SKIPPED]);
        for (int s = 0; s < SPLITS; s++)
            hdlm_log("  %-10s %12lld tokens in %llu shard%s\n", split_names[s], (long long)split_totals[2 * s + 1],
                     (unsigned long long)shard_count[s], shard_count[s] == 1 ? "" : "s");
        hdlm_log("  elapsed %.2f s (load tokenizer %.2f s, tokenize %.2f s, split and write %.2f s): %.2f MB/s, "
                 "%.0f tokens/s\n",
                 t2 - t0, t_loaded - t0, t1 - t_loaded, t2 - t1, mb / (t2 - t0), (double)stats[STAT_TOKENS] / (t2 - t0));
        hdlm_log("  wrote %s/manifest.json\n", opt.out_dir);
    }
    free(recs);
    free(all_recs);
    hdlm_text_inputs_free(&inputs);
    return 0;
}

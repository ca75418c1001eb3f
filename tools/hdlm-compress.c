// hdlm-compress — lossless text compression with a trained model (docs/compression.md):
//   hdlm-compress codec  --ckpt RUN --budget K --out CODEC [--losses FILE] [--order random|left-to-right]
//   hdlm-compress encode --ckpt RUN --codec CODEC IN OUT      (IN / OUT may be -)
//   hdlm-compress decode --ckpt RUN --codec CODEC IN OUT
//   hdlm-compress info   FILE
// Text is tokenized with GPT-2's BPE, cut into L-token chunks and coded group by group of chunks; groups are split over
// MPI ranks, and each chunk is its own rANS stream, so the file is the same for any number of ranks.
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "hdlm/checkpoint.h"
#include "hdlm/cli.h"
#include "hdlm/common.h"
#include "hdlm/compress.h"
#include "hdlm/dataset.h"
#include "hdlm/model_io.h"
#include "hdlm/tokenizer.h"
#include "hdlm/train_config.h"

// ---- the file (docs/compression.md): a 96-byte header, then per group of chunks u32 word count and the words ----
#define MAGIC "HDLMZIP\0"
enum { FORMAT_VERSION = 1, HEADER_BYTES = 96, FLAG_TEXT = 1 };

typedef struct {
    uint32_t version, flags;
    uint64_t model_hash, codec_hash, fingerprint, tokens, bytes, checksum;   // checksum: XXH64 of the original
    uint32_t length, group;
} file_header;

static void put_u32(uint8_t *p, uint32_t v) { hdlm_store_le(p, v, 4); }
static void put_u64(uint8_t *p, uint64_t v) { hdlm_store_le(p, v, 8); }
static uint32_t get_u32(const uint8_t *p) { return (uint32_t)hdlm_load_le(p, 4); }
static uint64_t get_u64(const uint8_t *p) { return hdlm_load_le(p, 8); }

static void header_pack(const file_header *h, uint8_t *b) {
    memset(b, 0, HEADER_BYTES);
    memcpy(b, MAGIC, 8);
    put_u32(b + 8, h->version), put_u32(b + 12, h->flags);
    put_u64(b + 16, h->model_hash), put_u64(b + 24, h->codec_hash), put_u64(b + 32, h->fingerprint);
    put_u64(b + 40, h->tokens), put_u64(b + 48, h->bytes), put_u64(b + 56, h->checksum);
    put_u32(b + 64, h->length), put_u32(b + 68, h->group);
    put_u64(b + 88, XXH64(b, 88, 0));   // the header's own checksum
}

static int header_unpack(const uint8_t *b, size_t size, const char *path, file_header *h) {
    HDLM_CHECK(size >= 8 && memcmp(b, MAGIC, 8) == 0, "%s: not an hdlm-compress file (no HDLMZIP signature)", path);
    HDLM_CHECK(size >= HEADER_BYTES, "%s: truncated: %zu bytes, the header alone has %d", path, size, HEADER_BYTES);
    h->version = get_u32(b + 8), h->flags = get_u32(b + 12);
    HDLM_CHECK(h->version == FORMAT_VERSION, "%s: format version %u, this hdlm-compress reads version %d", path,
               h->version, FORMAT_VERSION);
    HDLM_CHECK(get_u64(b + 88) == XXH64(b, 88, 0), "%s: the header is corrupt (its checksum does not match)", path);
    h->model_hash = get_u64(b + 16), h->codec_hash = get_u64(b + 24), h->fingerprint = get_u64(b + 32);
    h->tokens = get_u64(b + 40), h->bytes = get_u64(b + 48), h->checksum = get_u64(b + 56);
    h->length = get_u32(b + 64), h->group = get_u32(b + 68);
    HDLM_CHECK(h->length >= 1 && h->group >= 1 && h->flags <= FLAG_TEXT, "%s: the header is corrupt (length %u, "
               "group %u, flags %u)", path, h->length, h->group, h->flags);
    return 0;
}

// ---- command line ----
typedef struct {
    const char *ckpt, *codec, *out, *losses, *order, *tokenizer;
    bool raw;
    long budget, order_seed, group;
    const char *in, *out_path;
} args;

static const char *const USAGE =
    "usage: hdlm-compress codec  --ckpt RUN --budget K --out CODEC [--losses FILE] [--order random|left-to-right]\n"
    "                            [--order-seed S] [--raw]\n"
    "       hdlm-compress encode --ckpt RUN --codec CODEC [--group G] [--raw] [--tokenizer DIR] IN OUT\n"
    "       hdlm-compress decode --ckpt RUN --codec CODEC [--raw] [--tokenizer DIR] IN OUT\n"
    "       hdlm-compress info   FILE\n"
    "Lossless compression of UTF-8 text with a trained model that takes no σ input (ARDM runs, AR runs; method §13\n"
    "A.7, docs/compression.md): the text's GPT-2 tokens in chunks of the model's length L, each chunk coded in K\n"
    "network calls under the codec's order and policy (AR: left to right, one token per call, KV cache) with rANS.\n"
    "IN and OUT may be - (standard input / output).\n"
    "  --ckpt RUN       a run directory, a checkpoint root or a checkpoint (EMA weights unless --raw)\n"
    "  --budget K       codec: network calls per chunk (1..L; K = L codes one token per call; AR runs: L)\n"
    "  --losses FILE    codec: per-step losses L_0..L_{L-1}; the policy is their DP optimum [naive policy]\n"
    "  --order O        codec: random (a uniform permutation of --order-seed [0]) or left-to-right [random]\n"
    "  --out CODEC      codec: the codec record (JSON) to write; encode and decode read it with --codec\n"
    "  --group G        encode: chunks per network call [8] (stored in the file: decode uses the same groups)\n"
    "  --tokenizer DIR  GPT-2 encoder.json + vocab.bpe [$HDLM_VOCAB or <prefix>/share/hdlm/gpt2]\n";

static int parse(int argc, char **argv, args *a) {
    static const struct option opts[] = {
        {"ckpt", required_argument, NULL, 'c'},   {"codec", required_argument, NULL, 'C'},
        {"out", required_argument, NULL, 'o'},    {"budget", required_argument, NULL, 'k'},
        {"losses", required_argument, NULL, 'l'}, {"order", required_argument, NULL, 'r'},
        {"order-seed", required_argument, NULL, 's'}, {"group", required_argument, NULL, 'g'},
        {"raw", no_argument, NULL, 'R'},          {"tokenizer", required_argument, NULL, 'z'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0},
    };
    *a = (args){.group = 8};
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
        char *end = NULL;
        long *target = c == 'k' ? &a->budget : c == 's' ? &a->order_seed : c == 'g' ? &a->group : NULL;
        if (target) {
            errno = 0;
            *target = strtol(optarg, &end, 10);
            if (errno || *end || *target < (c == 's' ? 0 : 1) || *target > (c == 'g' ? 4096 : INT_MAX)) {
                fprintf(stderr, "hdlm-compress %s: --%s expects a %s integer, got '%s'\n", argv[0],
                        c == 'k' ? "budget" : c == 's' ? "order-seed" : "group", c == 's' ? "non-negative" : "positive",
                        optarg);
                return 2;
            }
            continue;
        }
        switch (c) {
        case 'c': a->ckpt = optarg; break;
        case 'C': a->codec = optarg; break;
        case 'o': a->out = optarg; break;
        case 'l': a->losses = optarg; break;
        case 'r': a->order = optarg; break;
        case 'R': a->raw = true; break;
        case 'z': a->tokenizer = optarg; break;
        case 'h': fputs(USAGE, stdout); return 1;
        case ':': fprintf(stderr, "hdlm-compress %s: option '%s' needs a value\n", argv[0], argv[optind - 1]); return 2;
        default:
            fprintf(stderr, "hdlm-compress %s: unknown option '%s' (see hdlm-compress --help)\n", argv[0],
                    argv[optind - 1]);
            return 2;
        }
    }
    return 0;
}

// The model of --ckpt, with its denoiser.
typedef struct {
    hdlm_model *model;
    hdlm_train_config config;
    char path[4096];
} loaded_model;

static int load_model(const args *a, loaded_model *lm) {
    HDLM_CHECK(a->ckpt, "--ckpt RUN is required");
    HDLM_TRY(hdlm_checkpoint_resolve(a->ckpt, lm->path, sizeof lm->path));
    HDLM_TRY(hdlm_model_load_checkpoint(&lm->model, &lm->config, lm->path, a->raw ? "params" : "ema"));
    if (lm->model->config.family != HDLM_FAMILY_EPSILON) {
        hdlm_model_free(lm->model);
        return HDLM_FAIL("%s: hdlm-compress needs a network without σ input (an ARDM, AR or ε run), not a γ run",
                         lm->path);
    }
    if (lm->config.kind.objective != HDLM_OBJECTIVE_ARDM && lm->config.kind.objective != HDLM_OBJECTIVE_AR)
        hdlm_warn("%s was not trained as an ARDM: it codes losslessly, but its sizes follow its masked-token "
                  "predictions under full attention\n", lm->path);
    return 0;
}

static int codec_main(const args *a) {
    bool ltr = a->order && strcmp(a->order, "left-to-right") == 0;
    HDLM_CHECK(!a->order || ltr || strcmp(a->order, "random") == 0, "--order expects random or left-to-right, got "
               "'%s'", a->order);
    HDLM_CHECK(a->out, "codec: --out CODEC is required");
    loaded_model lm;
    HDLM_TRY(load_model(a, &lm));
    int L = lm.model->config.max_length, rc = 0;
    bool ar = lm.config.kind.objective == HDLM_OBJECTIVE_AR;
    int *policy = hdlm_malloc((size_t)L * sizeof *policy);
    hdlm_codec c;
    if (ar && ((a->budget && a->budget != L) || a->losses || (a->order && !ltr)))
        rc = HDLM_FAIL("%s is a next-token (AR) run: it codes left to right, one token per call (--budget %d, no "
                       "--losses, --order left-to-right)", lm.path, L);
    else if (!ar && a->budget == 0) rc = HDLM_FAIL("codec: --budget K is required");
    else if (a->budget > L) rc = HDLM_FAIL("--budget %ld is more than the %d positions of a chunk", a->budget, L);
    if (rc == 0 && ar) rc = hdlm_codec_make_next_token(&c, lm.model);
    if (rc == 0 && !ar) rc = hdlm_ardm_policy_load(a->losses, L, (int)a->budget, policy);
    if (rc == 0 && !ar) rc = hdlm_codec_make(&c, lm.model, (int)a->budget, policy, ltr, (uint64_t)a->order_seed);
    if (rc == 0) {
        if (hdlm_rank() == 0) rc = hdlm_codec_save(&c, a->out);
        hdlm_log("codec %s: L %d, budget %d, order %s, model %016llx (%s)\n", a->out, L, c.budget, c.order_name,
                 (unsigned long long)c.model_hash, lm.path);
        hdlm_codec_free(&c);
    }
    free(policy);
    hdlm_model_free(lm.model);
    return rc;
}

// The codec of --codec, checked against the model.
static int load_codec(const args *a, const loaded_model *lm, hdlm_codec *c) {
    HDLM_CHECK(a->codec, "--codec CODEC is required (make one with hdlm-compress codec)");
    HDLM_TRY(hdlm_codec_load(c, a->codec));
    uint64_t h = hdlm_model_hash(lm->model);
    if (c->model_hash != h || c->length != lm->model->config.max_length || c->vocab != lm->model->config.vocab) {
        hdlm_codec_free(c);
        return HDLM_FAIL("%s was made for another model (weights %016llx), %s has %016llx%s", a->codec,
                         (unsigned long long)c->model_hash, lm->path, (unsigned long long)h,
                         a->raw ? "" : " (EMA weights; --raw for the raw ones)");
    }
    return 0;
}

static int write_all(const char *path, const void *data, size_t len) {
    if (strcmp(path, "-") == 0) {
        HDLM_CHECK(fwrite(data, 1, len, stdout) == len && fflush(stdout) == 0, "standard output: %s", strerror(errno));
        return 0;
    }
    hdlm_atomic_file f;
    HDLM_TRY(hdlm_atomic_open(&f, path));
    hdlm_atomic_write(&f, data, len);
    return hdlm_atomic_commit(&f);
}

// Chunk geometry: chunk c holds tokens [c·L, min((c+1)·L, T)); groups of `group` chunks; this rank's groups.
typedef struct {
    uint64_t tokens;
    int L, group;
    int64_t chunks, groups, g_begin, g_end;
} layout;

static layout make_layout(uint64_t tokens, int L, int group) {
    layout y = {tokens, L, group, (int64_t)((tokens + (uint64_t)L - 1) / (uint64_t)L), 0, 0, 0};
    y.groups = (y.chunks + group - 1) / group;
    uint64_t b, e;
    hdlm_partition_range((uint64_t)y.groups, hdlm_rank(), hdlm_world_size(), &b, &e);
    y.g_begin = (int64_t)b, y.g_end = (int64_t)e;
    return y;
}

// Chunks [first, first + n) of group g, and their token counts.
static int group_chunks(const layout *y, int64_t g, int64_t *first, int *n_tokens) {
    *first = g * y->group;
    int n = (int)(y->chunks - *first < y->group ? y->chunks - *first : y->group);
    for (int k = 0; k < n; k++) {
        uint64_t lo = (uint64_t)(*first + k) * (uint64_t)y->L, hi = lo + (uint64_t)y->L;
        n_tokens[k] = (int)((hi < y->tokens ? hi : y->tokens) - lo);
    }
    return n;
}

static void progress(double t0, int64_t done, int64_t total, uint64_t tokens_done) {
    double s = hdlm_time_now() - t0;
    fprintf(stderr, "hdlm-compress: group %lld/%lld (rank 0), %.0f tokens/s, %.1f s elapsed, ETA %.1f s\n",
            (long long)done, (long long)total, tokens_done / (s > 0 ? s : 1), s,
            done ? s * (double)(total - done) / (double)done : 0.0);
}

// Gathers the variable-length byte blocks of every rank on rank 0, in rank order (= chunk order).
static uint8_t *gather_bytes(const uint8_t *mine, size_t n, size_t *total) {
    int world = hdlm_world_size(), rank = hdlm_rank();
    long long len = (long long)n, *lens = hdlm_malloc((size_t)world * sizeof *lens);
    MPI_Gather(&len, 1, MPI_LONG_LONG, lens, 1, MPI_LONG_LONG, 0, MPI_COMM_WORLD);
    uint8_t *all = NULL;
    *total = 0;
    if (rank == 0) {
        for (int r = 0; r < world; r++) *total += (size_t)lens[r];
        all = hdlm_malloc(*total ? *total : 1);
        if (n) memcpy(all, mine, n);
        size_t at = n;
        for (int r = 1; r < world; r++) {   // per rank: blocks of at most 1 GiB (MPI counts are int)
            for (size_t off = 0; off < (size_t)lens[r]; off += 1 << 30) {
                size_t part = (size_t)lens[r] - off < (size_t)1 << 30 ? (size_t)lens[r] - off : (size_t)1 << 30;
                MPI_Recv(all + at + off, (int)part, MPI_BYTE, r, 7, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            }
            at += (size_t)lens[r];
        }
    } else {
        for (size_t off = 0; off < n; off += 1 << 30) {
            size_t part = n - off < (size_t)1 << 30 ? n - off : (size_t)1 << 30;
            MPI_Send(mine + off, (int)part, MPI_BYTE, 0, 7, MPI_COMM_WORLD);
        }
    }
    free(lens);
    return all;
}

static void bcast_bytes(uint8_t **data, size_t *n) {
    unsigned long long len = *n;
    MPI_Bcast(&len, 1, MPI_UNSIGNED_LONG_LONG, 0, MPI_COMM_WORLD);
    if (hdlm_rank() != 0) *data = hdlm_malloc(len ? len : 1), *n = len;
    for (size_t off = 0; off < len; off += 1 << 30)
        MPI_Bcast(*data + off, (int)(len - off < 1ull << 30 ? len - off : 1ull << 30), MPI_BYTE, 0, MPI_COMM_WORLD);
}

// Every rank's status: a failure anywhere ends the command everywhere with a message.
static int agree(int rc) {
    int bad = rc != 0, any = 0;
    MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (any && !rc) return HDLM_FAIL("another rank failed");
    return rc;
}

static void close_coder(loaded_model *lm, hdlm_codec *c, hdlm_tokenizer *tok) {
    hdlm_tokenizer_free(tok);
    hdlm_codec_free(c);
    hdlm_model_free(lm->model);
}

// What encode and decode both need: the model, its codec, the tokenizer; on every rank, or on none.
static int open_coder(const args *a, loaded_model *lm, hdlm_codec *c, hdlm_tokenizer **tok) {
    int rc = load_model(a, lm);
    if (rc == 0 && (rc = load_codec(a, lm, c)) != 0) hdlm_model_free(lm->model);
    if (rc == 0 && (rc = hdlm_tokenizer_load_dir(tok, a->tokenizer)) != 0) hdlm_codec_free(c), hdlm_model_free(lm->model);
    int all = agree(rc);
    if (all && rc == 0) close_coder(lm, c, *tok);
    return all;
}

static int encode_main(const args *a) {
    loaded_model lm;
    hdlm_codec c;
    hdlm_tokenizer *tok = NULL;
    int rc = open_coder(a, &lm, &c, &tok);
    if (rc) return rc;
    // Rank 0 reads and tokenizes; the text must come back whole from its tokens (it does for any UTF-8 text).
    uint8_t *text = NULL;
    size_t text_len = 0;
    hdlm_tokens t = {0};
    if (hdlm_rank() == 0) {
        rc = hdlm_read_file(a->in, (char **)&text, &text_len);
        if (rc == 0 && hdlm_tokenizer_encode(tok, (const char *)text, text_len, &t) != 0)
            rc = HDLM_FAIL("%s: %s (hdlm-compress codes UTF-8 text)", a->in, hdlm_last_error());
        char *back = NULL;
        size_t back_len = 0;
        if (rc == 0 && (hdlm_tokenizer_decode(tok, t.ids, t.len, 0, &back, &back_len) != 0 || back_len != text_len ||
                        memcmp(back, text, text_len) != 0))
            rc = HDLM_FAIL("%s: the text does not come back whole from its GPT-2 tokens", a->in);
        free(back);
    }
    rc = agree(rc);
    uint8_t *ids_bytes = (uint8_t *)t.ids;
    size_t ids_n = t.len * sizeof(uint32_t);
    if (rc == 0) bcast_bytes(&ids_bytes, &ids_n);
    const uint32_t *ids = (const uint32_t *)ids_bytes;
    uint64_t T = ids_n / sizeof(uint32_t);
    hdlm_denoiser d = hdlm_denoiser_model(lm.model);
    file_header h = {FORMAT_VERSION, FLAG_TEXT, c.model_hash, hdlm_codec_hash(&c), 0, T, text_len,
                     XXH64(text, text_len, 0), (uint32_t)c.length, (uint32_t)a->group};
    if (rc == 0) rc = agree(hdlm_codec_fingerprint(&c, &d, &h.fingerprint));
    // This rank's groups: each group's stream as u32 count + words, in group order.
    layout y = make_layout(T, c.length, (int)a->group);
    uint8_t *mine = NULL;
    size_t mine_n = 0, mine_cap = 0;
    int *n_tokens = hdlm_malloc((size_t)y.group * sizeof *n_tokens);
    uint32_t *x = hdlm_malloc((size_t)y.group * c.length * sizeof *x);
    double ideal = 0, t0 = hdlm_time_now(), last = t0;
    for (int64_t g = y.g_begin; g < y.g_end && rc == 0; g++) {
        int64_t first;
        int n = group_chunks(&y, g, &first, n_tokens);
        for (int k = 0; k < n; k++)
            memcpy(x + (size_t)k * c.length, ids + (size_t)(first + k) * c.length, (size_t)n_tokens[k] * sizeof *x);
        uint32_t *words = NULL;
        size_t n_words = 0;
        rc = hdlm_codec_encode(&c, &d, x, n_tokens, n, &words, &n_words, &ideal);
        if (rc == 0) {
            size_t need = mine_n + 4 + 4 * n_words;
            if (need > mine_cap) mine = hdlm_realloc(mine, mine_cap = 2 * need);
            put_u32(mine + mine_n, (uint32_t)n_words);
            for (size_t w = 0; w < n_words; w++) put_u32(mine + mine_n + 4 + 4 * w, words[w]);
            mine_n = need;
        }
        free(words);
        if (hdlm_rank() == 0 && hdlm_time_now() - last > 10)
            last = hdlm_time_now(), progress(t0, g - y.g_begin + 1, y.g_end - y.g_begin,
                                             (uint64_t)(g - y.g_begin + 1) * y.group * c.length);
    }
    rc = agree(rc);
    double ideal_all = 0;
    MPI_Reduce(&ideal, &ideal_all, 1, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
    size_t body_n = 0;
    uint8_t *body = rc == 0 ? gather_bytes(mine, mine_n, &body_n) : NULL;
    if (rc == 0 && hdlm_rank() == 0) {
        uint8_t *file = hdlm_malloc(HEADER_BYTES + body_n);
        header_pack(&h, file);
        memcpy(file + HEADER_BYTES, body, body_n);
        rc = write_all(a->out_path, file, HEADER_BYTES + body_n);
        double s = hdlm_time_now() - t0, bits = 8.0 * (double)(HEADER_BYTES + body_n);
        if (rc == 0)
            fprintf(stderr, "hdlm-compress: %zu bytes, %llu tokens -> %zu bytes: %.4f bits/byte, %.4f bits/token "
                    "(ideal %.4f; %lld chunks, %d calls each), %.2f s, %.3f MB/s\n", text_len, (unsigned long long)T,
                    HEADER_BYTES + body_n, text_len ? bits / (double)text_len : 0.0, T ? bits / (double)T : 0.0,
                    T ? ideal_all / (double)T : 0.0, (long long)y.chunks, c.budget, s, text_len / 1e6 / s);
        free(file);
    }
    rc = agree(rc);
    free(body);
    free(mine);
    free(x);
    free(n_tokens);
    if (hdlm_rank() != 0) free(ids_bytes);
    hdlm_tokens_free(&t);
    free(text);
    hdlm_denoiser_free(&d);
    close_coder(&lm, &c, tok);
    return rc;
}

// The streams of a file body: per group its offset (of the words, after the count) and count; refuses a truncated
// body.
static int index_streams(const uint8_t *body, size_t n, int64_t groups, const char *path, size_t *offset,
                         size_t *count) {
    size_t at = 0;
    for (int64_t k = 0; k < groups; k++) {
        HDLM_CHECK(at + 4 <= n, "%s: truncated: chunk group %lld of %lld is missing", path, (long long)k,
                   (long long)groups);
        count[k] = get_u32(body + at);
        HDLM_CHECK(count[k] <= (n - at - 4) / 4, "%s: truncated: chunk group %lld needs %zu words, the file ends "
                   "first", path, (long long)k, count[k]);
        offset[k] = at + 4;
        at += 4 + 4 * count[k];
    }
    HDLM_CHECK(at == n, "%s: %zu bytes after the last chunk group (corrupt, or not one file)", path, n - at);
    return 0;
}

static int decode_main(const args *a) {
    loaded_model lm;
    hdlm_codec c;
    hdlm_tokenizer *tok = NULL;
    int rc = open_coder(a, &lm, &c, &tok);
    if (rc) return rc;
    uint8_t *file = NULL;
    size_t file_n = 0;
    if (hdlm_rank() == 0) rc = hdlm_read_file(a->in, (char **)&file, &file_n);
    rc = agree(rc);
    if (rc == 0) bcast_bytes(&file, &file_n);
    file_header h = {0};
    hdlm_denoiser d = hdlm_denoiser_model(lm.model);
    uint64_t fp = 0;
    if (rc == 0) rc = header_unpack(file, file_n, a->in, &h);
    if (rc == 0 && h.model_hash != c.model_hash)
        rc = HDLM_FAIL("%s was compressed with another model (weights %016llx), %s has %016llx", a->in,
                       (unsigned long long)h.model_hash, lm.path, (unsigned long long)c.model_hash);
    if (rc == 0 && (h.codec_hash != hdlm_codec_hash(&c) || h.length != (uint32_t)c.length))
        rc = HDLM_FAIL("%s was compressed with another codec (order, policy or budget) than %s", a->in, a->codec);
    if (rc == 0) rc = hdlm_codec_fingerprint(&c, &d, &fp);
    if (rc == 0 && fp != h.fingerprint)
        rc = HDLM_FAIL("%s: this machine computes the model's outputs with other bits than the one that compressed "
                       "it (other CPU kernels or math library): decode it on a machine of that kind", a->in);
    rc = agree(rc);
    if (rc) h.group = 1, h.tokens = 0;   // nothing to decode: the cleanup below runs on empty arrays
    layout y = make_layout(h.tokens, c.length, (int)h.group);
    size_t *offset = hdlm_malloc((size_t)(y.groups ? y.groups : 1) * sizeof *offset),
           *count = hdlm_malloc((size_t)(y.groups ? y.groups : 1) * sizeof *count);
    if (rc == 0) rc = index_streams(file + HEADER_BYTES, file_n - HEADER_BYTES, y.groups, a->in, offset, count);
    int *n_tokens = hdlm_malloc((size_t)y.group * sizeof *n_tokens);
    uint32_t *mine = hdlm_malloc(((size_t)(y.g_end - y.g_begin) * y.group + 1) * c.length * sizeof *mine);
    size_t mine_n = 0;
    double t0 = hdlm_time_now(), last = t0;
    for (int64_t g = y.g_begin; g < y.g_end && rc == 0; g++) {
        int64_t first;
        int n = group_chunks(&y, g, &first, n_tokens);
        uint32_t *words = hdlm_malloc((count[g] ? count[g] : 1) * sizeof *words);   // the words, aligned
        for (size_t w = 0; w < count[g]; w++) words[w] = get_u32(file + HEADER_BYTES + offset[g] + 4 * w);
        uint32_t *x = hdlm_malloc((size_t)n * c.length * sizeof *x);
        rc = hdlm_codec_decode(&c, &d, words, count[g], n_tokens, n, x);
        if (rc) rc = HDLM_FAIL("%s: chunk group %lld: %s", a->in, (long long)g, hdlm_last_error());
        for (int k = 0; k < n && rc == 0; k++) {
            memcpy(mine + mine_n, x + (size_t)k * c.length, (size_t)n_tokens[k] * sizeof *mine);
            mine_n += (size_t)n_tokens[k];
        }
        free(x);
        free(words);
        if (hdlm_rank() == 0 && hdlm_time_now() - last > 10)
            last = hdlm_time_now(), progress(t0, g - y.g_begin + 1, y.g_end - y.g_begin, mine_n);
    }
    rc = agree(rc);
    size_t all_n = 0;
    uint8_t *all = rc == 0 ? gather_bytes((uint8_t *)mine, mine_n * sizeof *mine, &all_n) : NULL;
    if (rc == 0 && hdlm_rank() == 0) {
        char *text = NULL;
        size_t len = 0;
        HDLM_ASSERT(all_n == h.tokens * sizeof(uint32_t), "decode: %zu bytes of tokens gathered", all_n);
        rc = hdlm_tokenizer_decode(tok, (const uint32_t *)all, h.tokens, 0, &text, &len);
        // The checksum of the original: a corrupt stream that still decoded is caught here, before anything is written.
        if (rc == 0 && (len != h.bytes || XXH64(text, len, 0) != h.checksum))
            rc = HDLM_FAIL("%s: the decoded text's size or checksum differs from the original's (a corrupt file)",
                           a->in);
        if (rc == 0) rc = write_all(a->out_path, text, len);
        if (rc == 0)
            fprintf(stderr, "hdlm-compress: %s -> %zu bytes (%llu tokens), %.2f s\n", a->in, len,
                    (unsigned long long)h.tokens, hdlm_time_now() - t0);
        free(text);
    }
    rc = agree(rc);
    free(all);
    free(mine);
    free(n_tokens);
    free(count);
    free(offset);
    free(file);
    hdlm_denoiser_free(&d);
    close_coder(&lm, &c, tok);
    return rc;
}

static int info_main(const char *path) {
    uint8_t *file;
    size_t n;
    HDLM_TRY(hdlm_read_file(path, (char **)&file, &n));
    file_header h;
    int rc = header_unpack(file, n, path, &h);
    if (rc == 0) {
        int64_t chunks = (int64_t)((h.tokens + h.length - 1) / h.length);
        printf("{\"file\":\"%s\",\"format_version\":%u,\"bytes\":%zu,\"original_bytes\":%llu,\"tokens\":%llu,"
               "\"chunk_length\":%u,\"chunks\":%lld,\"groups\":%lld,\"group\":%u,\"model_hash\":\"%016llx\",\"codec_hash\":"
               "\"%016llx\",\"bits_per_byte\":%.6f,\"bits_per_token\":%.6f}\n",
               path, h.version, n, (unsigned long long)h.bytes, (unsigned long long)h.tokens, h.length,
               (long long)chunks, (long long)((chunks + h.group - 1) / h.group), h.group, (unsigned long long)h.model_hash, (unsigned long long)h.codec_hash,
               h.bytes ? 8.0 * n / h.bytes : 0.0, h.tokens ? 8.0 * n / h.tokens : 0.0);
    }
    free(file);
    return rc;
}

static int run(int argc, char **argv) {
    args a;
    int p = parse(argc, argv, &a);
    if (p) return p == 1 ? 0 : 2;
    int positional = argc - optind;
    const char *cmd = argv[0];
    bool coder = strcmp(cmd, "encode") == 0 || strcmp(cmd, "decode") == 0;
    if (positional != (coder ? 2 : strcmp(cmd, "info") == 0 ? 1 : 0)) {
        fprintf(stderr, "hdlm-compress %s: expected %s (see hdlm-compress --help)\n", cmd,
                coder ? "IN and OUT" : strcmp(cmd, "info") == 0 ? "one FILE" : "no file arguments");
        return 2;
    }
    if (coder) a.in = argv[optind], a.out_path = argv[optind + 1];
    int rc = strcmp(cmd, "codec") == 0    ? codec_main(&a)
             : strcmp(cmd, "encode") == 0 ? encode_main(&a)
             : strcmp(cmd, "decode") == 0 ? decode_main(&a)
                                          : info_main(argv[optind]);
    if (rc) {
        if (hdlm_rank() == 0) fprintf(stderr, "hdlm-compress %s: %s\n", cmd, hdlm_last_error());
        return 1;
    }
    return 0;
}

static int codec_cmd(int argc, char **argv) { return run(argc, argv); }

static const hdlm_subcommand commands[] = {
    {"codec", codec_cmd, "make a codec record: budget K, order and policy for a model"},
    {"encode", codec_cmd, "compress text with a model and its codec"},
    {"decode", codec_cmd, "decompress"},
    {"info", codec_cmd, "the header of a compressed file, as JSON"},
};

int main(int argc, char **argv) {
    return hdlm_cli_dispatch("hdlm-compress", commands, sizeof commands / sizeof *commands, argc, argv);
}

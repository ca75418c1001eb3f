// Lossless compression with a trained model (docs/compression.md, method §13 A.7): the rANS coder, the float64
// quantiser, the codec record and the coding of a group of chunks under a fixed order and policy.
#include "hdlm/compress.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "hdlm/common.h"
#include "hdlm/diffusion.h"
#include "hdlm/model.h"
#include "hdlm/rng.h"
#include "core/vecmath.h"
#include "sampler_internal.h"

// ---- rANS ----
// The state x stays in [RANS_LOW, RANS_LOW << 32): before a push it is shifted down 32 bits when the push would
// leave that range; a pop shifts a word back in when it falls below it. Pops mirror pushes exactly (a stack).
#define RANS_LOW (1ull << 31)

void hdlm_rans_encoder_init(hdlm_rans_encoder *e) { *e = (hdlm_rans_encoder){.state = RANS_LOW}; }

static void rans_emit(hdlm_rans_encoder *e, uint32_t w) {
    if (e->n == e->cap) {
        e->cap = e->cap ? 2 * e->cap : 256;
        e->words = hdlm_realloc(e->words, e->cap * sizeof *e->words);
    }
    e->words[e->n++] = w;
}

void hdlm_rans_put(hdlm_rans_encoder *e, uint32_t start, uint32_t freq, int scale_bits) {
    uint64_t x = e->state, limit = ((RANS_LOW >> scale_bits) << 32) * freq;
    if (x >= limit) {
        rans_emit(e, (uint32_t)x);
        x >>= 32;
    }
    e->state = ((x / freq) << scale_bits) + (x % freq) + start;
}

void hdlm_rans_encoder_finish(hdlm_rans_encoder *e, uint32_t **words, size_t *n) {
    rans_emit(e, (uint32_t)e->state);
    rans_emit(e, (uint32_t)(e->state >> 32));
    for (size_t i = 0, j = e->n - 1; i < j; i++, j--) {   // the decoder reads the last word emitted first
        uint32_t t = e->words[i];
        e->words[i] = e->words[j];
        e->words[j] = t;
    }
    *words = e->words;
    *n = e->n;
    *e = (hdlm_rans_encoder){0};
}

int hdlm_rans_decoder_init(hdlm_rans_decoder *d, const uint32_t *words, size_t n) {
    HDLM_CHECK(n >= 2, "rANS stream of %zu words: shorter than its state", n);
    *d = (hdlm_rans_decoder){.state = (uint64_t)words[0] << 32 | words[1], .words = words, .n = n, .pos = 2};
    HDLM_CHECK(d->state >= RANS_LOW && d->state < RANS_LOW << 32, "rANS stream: state out of range (corrupt)");
    return 0;
}

int hdlm_rans_advance(hdlm_rans_decoder *d, uint32_t start, uint32_t freq, int scale_bits) {
    uint64_t x = d->state;
    x = freq * (x >> scale_bits) + (x & ((1ull << scale_bits) - 1)) - start;
    if (x < RANS_LOW) {
        HDLM_CHECK(d->pos < d->n, "rANS stream ends early after %zu words (truncated or corrupt)", d->n);
        x = x << 32 | d->words[d->pos++];
    }
    d->state = x;
    return 0;
}

bool hdlm_rans_decoder_done(const hdlm_rans_decoder *d) { return d->state == RANS_LOW && d->pos == d->n; }

// ---- quantiser ----

// Not inlined: gcc 12 vectorises its loops in the function itself, not in the inlined copies.
__attribute__((noinline)) int hdlm_quantize_softmax(const float *z, int width, int scale_bits, uint32_t *freq,
                                                    double *work) {
    const uint64_t total = 1ull << scale_bits;
    HDLM_CHECK(width >= 1 && (uint64_t)width <= total / 2, "quantiser: %d symbols do not fit %d bits", width,
               scale_bits);
    // Every loop vectorises (this is most of a coded token's time at small K); hdlm_exp is plain IEEE arithmetic,
    // no libm. A non-finite logit makes mx or the sum non-finite, and is then looked for.
    float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
    for (int c = 0; c < width; c++) mx = z[c] > mx ? z[c] : mx;
    // q_c = exp(z_c - max) / Σ; one more unit per symbol than ⌊q_c·units⌋, the rest to the argmax.
    double sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int c = 0; c < width; c++) sum += work[c] = hdlm_exp((double)z[c] - (double)mx);
    if (!isfinite(mx) || !isfinite(sum) || !(sum >= 1))
        for (int c = 0; c < width; c++)
            HDLM_CHECK(isfinite(z[c]), "quantiser: logit %d is %g (the model's output is not finite)", c, z[c]);
    double units = (double)(total - (uint64_t)width), scale = units / sum, used = width;   // sums of integers < 2^53
#pragma omp simd reduction(+ : used)
    for (int c = 0; c < width; c++) {
        int32_t f = (int32_t)(work[c] * scale);   // truncation = floor: the product is >= 0 (and < 2^31)
        freq[c] = 1 + (uint32_t)f;
        used += (double)f;
    }
    HDLM_ASSERT(used <= (double)total, "quantiser: %.0f units of %llu", used, (unsigned long long)total);
    int best = 0;
    while (z[best] != mx) best++;
    freq[best] += (uint32_t)(total - (uint64_t)used);
    return 0;
}

// ---- codec record ----
#define CODEC_FORMAT "hdlm-codec"
#define CODEC_VERSION 1
#define QUANTIZER "floor-plus-one, rest to the argmax, float64 (v1)"

uint64_t hdlm_model_hash(const hdlm_model *m) {
    XXH64_state_t *s = XXH64_createState();
    XXH64_reset(s, 0);
    int shape[4] = {m->config.vocab, m->config.max_length, m->config.width, m->config.n_layers};
    XXH64_update(s, shape, sizeof shape);
    XXH64_update(s, m->params, m->n_params * sizeof *m->params);
    uint64_t h = XXH64_digest(s);
    XXH64_freeState(s);
    return h;
}

uint64_t hdlm_codec_hash(const hdlm_codec *c) {
    XXH64_state_t *s = XXH64_createState();
    XXH64_reset(s, CODEC_VERSION);
    int head[5] = {c->length, c->vocab, c->budget, c->scale_bits, c->next_token};
    XXH64_update(s, head, sizeof head);
    XXH64_update(s, c->policy, (size_t)c->budget * sizeof *c->policy);
    XXH64_update(s, c->order, (size_t)c->length * sizeof *c->order);
    XXH64_update(s, QUANTIZER, sizeof QUANTIZER);
    uint64_t h = XXH64_digest(s);
    XXH64_freeState(s);
    return h;
}

// Every field a codec must satisfy (made or loaded): a policy p_0 = 0 <= ... < L, an order that is a permutation.
static int codec_check(const hdlm_codec *c, const char *where) {
    HDLM_CHECK(c->length >= 1 && c->vocab >= 3, "%s: length %d and vocab %d must be >= 1 and >= 3", where, c->length,
               c->vocab);
    HDLM_CHECK(c->budget >= 1 && c->budget <= c->length, "%s: budget %d must be in [1, %d]", where, c->budget,
               c->length);
    HDLM_CHECK(c->scale_bits >= 16 && c->scale_bits <= 31 && (1ull << c->scale_bits) / 2 >= (uint64_t)c->vocab,
               "%s: scale_bits %d must be in [16, 31] with 2^scale_bits >= 2·vocab", where, c->scale_bits);
    HDLM_CHECK(c->policy[0] == 0, "%s: the policy starts at step 0, not %d", where, c->policy[0]);
    for (int j = 1; j < c->budget; j++)
        HDLM_CHECK(c->policy[j] >= c->policy[j - 1] && c->policy[j] < c->length,
                   "%s: policy entry %d (%d) must be >= the one before and < %d", where, j, c->policy[j], c->length);
    uint8_t *seen = hdlm_calloc((size_t)c->length, 1);
    int bad = -1;
    for (int r = 0; r < c->length && bad < 0; r++) {
        int p = c->order[r];
        if (p < 0 || p >= c->length || seen[p]) bad = r;
        else seen[p] = 1;
    }
    free(seen);
    HDLM_CHECK(bad < 0, "%s: order entry %d (%d) repeats a position or lies outside [0, %d): not a permutation",
               where, bad, c->order[bad], c->length);
    return 0;
}

int hdlm_codec_make(hdlm_codec *c, const hdlm_model *model, int budget, const int *policy, bool left_to_right,
                    uint64_t order_seed) {
    HDLM_CHECK(model->config.family == HDLM_FAMILY_EPSILON, "codec: the model must take no σ input (ε family)");
    int L = model->config.max_length;
    *c = (hdlm_codec){.length = L, .vocab = model->config.vocab, .budget = budget, .scale_bits = 31,
                      .model_hash = hdlm_model_hash(model)};
    HDLM_CHECK(budget >= 1 && budget <= L, "codec: budget %d must be in [1, %d]", budget, L);
    c->policy = hdlm_malloc((size_t)budget * sizeof *c->policy);
    memcpy(c->policy, policy, (size_t)budget * sizeof *policy);
    c->order = hdlm_malloc((size_t)L * sizeof *c->order);
    uint32_t *perm = hdlm_malloc((size_t)L * sizeof *perm);
    for (int i = 0; i < L; i++) perm[i] = (uint32_t)i;
    if (!left_to_right) {
        hdlm_rng rng;
        hdlm_rng_init(&rng, hdlm_rng_key(order_seed, 0, 0, HDLM_RNG_EVAL));
        hdlm_rng_shuffle_u32(&rng, perm, (uint64_t)L);
    }
    for (int i = 0; i < L; i++) c->order[i] = (int)perm[i];
    free(perm);
    if (left_to_right) snprintf(c->order_name, sizeof c->order_name, "left-to-right");
    else snprintf(c->order_name, sizeof c->order_name, "random:%llu", (unsigned long long)order_seed);
    int rc = codec_check(c, "codec");
    if (rc) hdlm_codec_free(c);
    return rc;
}

int hdlm_codec_make_next_token(hdlm_codec *c, const hdlm_model *model) {
    int L = model->config.max_length;
    int *policy = hdlm_malloc((size_t)L * sizeof *policy);
    for (int j = 0; j < L; j++) policy[j] = j;
    int rc = hdlm_codec_make(c, model, L, policy, true, 0);
    free(policy);
    if (rc == 0) {
        c->next_token = true;
        snprintf(c->order_name, sizeof c->order_name, "next-token");
    }
    return rc;
}

void hdlm_codec_free(hdlm_codec *c) {
    free(c->policy);
    free(c->order);
    c->policy = c->order = NULL;
}

static cJSON *int_array(const int *v, int n) {
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(v[i]));
    return a;
}

int hdlm_codec_save(const hdlm_codec *c, const char *path) {
    cJSON *j = cJSON_CreateObject();
    char hex[32];
    cJSON_AddStringToObject(j, "format", CODEC_FORMAT);
    cJSON_AddNumberToObject(j, "version", CODEC_VERSION);
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)c->model_hash);
    cJSON_AddStringToObject(j, "model_hash", hex);
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)hdlm_codec_hash(c));
    cJSON_AddStringToObject(j, "codec_hash", hex);
    cJSON_AddNumberToObject(j, "length", c->length);
    cJSON_AddNumberToObject(j, "vocab", c->vocab);
    cJSON_AddNumberToObject(j, "budget", c->budget);
    cJSON_AddNumberToObject(j, "scale_bits", c->scale_bits);
    cJSON_AddStringToObject(j, "quantizer", QUANTIZER);
    cJSON_AddStringToObject(j, "order_name", c->order_name);
    cJSON_AddBoolToObject(j, "next_token", c->next_token);
    cJSON_AddItemToObject(j, "policy", int_array(c->policy, c->budget));
    cJSON_AddItemToObject(j, "order", int_array(c->order, c->length));
    char *text = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    hdlm_atomic_file f;
    int rc = hdlm_atomic_open(&f, path);
    if (rc == 0) {
        hdlm_atomic_write(&f, text, strlen(text));
        hdlm_atomic_write(&f, "\n", 1);
        rc = hdlm_atomic_commit(&f);
    }
    free(text);
    return rc;
}

// An integer field of the record: present, a whole number in [lo, hi].
static int json_int(const cJSON *j, const char *path, const char *name, long lo, long hi, int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, name);
    HDLM_CHECK(cJSON_IsNumber(v) && v->valuedouble == floor(v->valuedouble) && v->valuedouble >= lo &&
                   v->valuedouble <= hi,
               "%s: field '%s' must be an integer in [%ld, %ld]", path, name, lo, hi);
    *out = (int)v->valuedouble;
    return 0;
}

static int json_ints(const cJSON *j, const char *path, const char *name, int n, int *out) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, name);
    HDLM_CHECK(cJSON_IsArray(a) && cJSON_GetArraySize(a) == n, "%s: field '%s' must be an array of %d integers", path,
               name, n);
    int i = 0;
    for (const cJSON *v = a->child; v; v = v->next, i++)
        HDLM_CHECK(cJSON_IsNumber(v) && v->valuedouble == floor(v->valuedouble) && fabs(v->valuedouble) < 1e9,
                   "%s: %s[%d] is not an integer", path, name, i);
    i = 0;
    for (const cJSON *v = a->child; v; v = v->next) out[i++] = (int)v->valuedouble;
    return 0;
}

static int codec_parse(hdlm_codec *c, const cJSON *j, const char *path) {
    const cJSON *format = cJSON_GetObjectItemCaseSensitive(j, "format");
    HDLM_CHECK(cJSON_IsString(format) && strcmp(format->valuestring, CODEC_FORMAT) == 0,
               "%s: not a codec record (no \"format\": \"" CODEC_FORMAT "\")", path);
    int version = 0;
    HDLM_TRY(json_int(j, path, "version", 0, 1 << 30, &version));
    HDLM_CHECK(version == CODEC_VERSION, "%s: codec record version %d, this hdlm reads version %d", path, version,
               CODEC_VERSION);
    const cJSON *quant = cJSON_GetObjectItemCaseSensitive(j, "quantizer");
    HDLM_CHECK(cJSON_IsString(quant) && strcmp(quant->valuestring, QUANTIZER) == 0,
               "%s: quantizer '%s', this hdlm has '%s'", path, cJSON_IsString(quant) ? quant->valuestring : "?",
               QUANTIZER);
    HDLM_TRY(json_int(j, path, "length", 1, 1 << 20, &c->length));
    HDLM_TRY(json_int(j, path, "vocab", 3, 1 << 24, &c->vocab));
    HDLM_TRY(json_int(j, path, "budget", 1, c->length, &c->budget));
    HDLM_TRY(json_int(j, path, "scale_bits", 16, 31, &c->scale_bits));
    const cJSON *hash = cJSON_GetObjectItemCaseSensitive(j, "model_hash"),
                *name = cJSON_GetObjectItemCaseSensitive(j, "order_name");
    char *end = NULL;
    HDLM_CHECK(cJSON_IsString(hash) && strlen(hash->valuestring) == 16 &&
                   (c->model_hash = strtoull(hash->valuestring, &end, 16), *end == '\0'),
               "%s: field 'model_hash' must be 16 hexadecimal digits", path);
    HDLM_CHECK(cJSON_IsString(name), "%s: field 'order_name' must be a string", path);
    const cJSON *next = cJSON_GetObjectItemCaseSensitive(j, "next_token");
    HDLM_CHECK(cJSON_IsBool(next), "%s: field 'next_token' must be true or false", path);
    c->next_token = cJSON_IsTrue(next);
    snprintf(c->order_name, sizeof c->order_name, "%s", name->valuestring);
    c->policy = hdlm_malloc((size_t)c->budget * sizeof *c->policy);
    c->order = hdlm_malloc((size_t)c->length * sizeof *c->order);
    HDLM_TRY(json_ints(j, path, "policy", c->budget, c->policy));
    HDLM_TRY(json_ints(j, path, "order", c->length, c->order));
    HDLM_TRY(codec_check(c, path));
    const cJSON *stored = cJSON_GetObjectItemCaseSensitive(j, "codec_hash");
    char hex[32];
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)hdlm_codec_hash(c));
    HDLM_CHECK(cJSON_IsString(stored) && strcmp(stored->valuestring, hex) == 0,
               "%s: codec_hash does not match the record's contents (edited or corrupt)", path);
    return 0;
}

int hdlm_codec_load(hdlm_codec *c, const char *path) {
    *c = (hdlm_codec){0};
    char *text;
    size_t len;
    HDLM_TRY(hdlm_read_file(path, &text, &len));
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    int rc = j ? codec_parse(c, j, path) : HDLM_FAIL("%s: not JSON (a codec record is one JSON object)", path);
    cJSON_Delete(j);
    if (rc) hdlm_codec_free(c);
    return rc;
}

// ---- coding a group of chunks ----

// rank[g·L + i]: the place of position i of chunk g in its coding order. The padding after a chunk's tokens is known
// from the start, so it takes the first places; the codec's order follows over the token positions.
static void chunk_ranks(const hdlm_codec *c, const int *n_tokens, int chunks, int *rank) {
    int L = c->length;
    for (int g = 0; g < chunks; g++) {
        int *rg = rank + (size_t)g * L, known = L - n_tokens[g], next = known;
        for (int i = n_tokens[g]; i < L; i++) rg[i] = i - n_tokens[g];
        for (int r = 0; r < L; r++)
            if (c->order[r] < n_tokens[g]) rg[c->order[r]] = next++;
    }
}

// The coding loop shared by both directions. Call j runs the network on every chunk with the positions of rank <
// lo known (their token; padding is the end-of-text token) and the others MASK, then codes places [lo, hi) of each
// chunk in increasing order: `code` gets the chunk, the position and the frequency table of that position.
typedef int (*code_fn)(void *ctx, int chunk, int pos, const uint32_t *freq);

// The next-token model (c->next_token): call i runs position i of every chunk against the cache of positions < i
// (its input the token before it, the start token at 0; method §3.5 with the causal rule), as hdlm-eval sample's ar
// sampler does; encoder and decoder make the same calls, so the same bits.
static int coding_loop_next_token(const hdlm_codec *c, hdlm_denoiser *d, uint32_t *x, const int *n_tokens,
                                  int chunks, code_fn code, void *ctx) {
    HDLM_CHECK(d->model, "codec: a next-token codec needs the model itself (its KV cache)");
    int L = c->length, V = c->vocab, longest = 0, status = 0;
    for (int g = 0; g < chunks; g++) longest = n_tokens[g] > longest ? n_tokens[g] : longest;
    uint32_t *step = hdlm_malloc(2 * (size_t)chunks * sizeof *step), *freq = hdlm_malloc((size_t)(V - 1) * sizeof *freq);
    double *work = hdlm_malloc((size_t)(V - 1) * sizeof *work);
    hdlm_kv_cache *cache = hdlm_denoiser_kv_cache(d, chunks);
    for (int i = 0; i < longest && status == 0; i++) {
        int settle = i > 0, T = settle + 1;   // [the previous input, entering the cache,] this input
        for (int g = 0; g < chunks; g++) {
            const uint32_t *xg = x + (size_t)g * L;
            if (settle) step[(size_t)g * T] = i == 1 ? hdlm_ar_start(V) : xg[i - 2];
            step[(size_t)g * T + settle] = i == 0 ? hdlm_ar_start(V) : xg[i - 1];
        }
        status = hdlm_model_forward_cached(d->model, cache, step, NULL, chunks, settle, 1, HDLM_BLOCK_FULL);
        for (int g = 0; g < chunks && status == 0; g++) {
            if (i >= n_tokens[g]) continue;
            status = hdlm_quantize_softmax(cache->out + (size_t)g * V, V - 1, c->scale_bits, freq, work);
            if (status == 0) status = code(ctx, g, i, freq);
        }
    }
    free(work);
    free(freq);
    free(step);
    return status;
}

static int coding_loop(const hdlm_codec *c, hdlm_denoiser *d, uint32_t *x, const int *n_tokens, int chunks,
                       code_fn code, void *ctx) {
    HDLM_CHECK(d->vocab == c->vocab, "codec: made for a model with %d outputs, this one has %d", c->vocab, d->vocab);
    int L = c->length, V = c->vocab, W = V - 1, status = 0;
    for (int g = 0; g < chunks; g++)
        HDLM_CHECK(n_tokens[g] >= 1 && n_tokens[g] <= L, "codec: chunk %d has %d tokens, expected 1..%d", g,
                   n_tokens[g], L);
    if (c->next_token) return coding_loop_next_token(c, d, x, n_tokens, chunks, code, ctx);
    int *rank = hdlm_malloc((size_t)chunks * L * sizeof *rank), *pos_of = hdlm_malloc((size_t)chunks * L * sizeof *pos_of);
    uint32_t *xt = hdlm_malloc((size_t)chunks * L * sizeof *xt), *freq = hdlm_malloc((size_t)W * sizeof *freq);
    double *work = hdlm_malloc((size_t)W * sizeof *work);
    uint8_t *rows = hdlm_malloc((size_t)chunks * L);
    int *lo = hdlm_malloc((size_t)chunks * sizeof *lo);
    chunk_ranks(c, n_tokens, chunks, rank);
    for (size_t r = 0; r < (size_t)chunks * L; r++) pos_of[r / L * L + rank[r]] = (int)(r % L);
    for (int j = 0; j < c->budget && status == 0; j++) {
        int hi = j + 1 < c->budget ? c->policy[j + 1] : L, any = 0;
        for (int g = 0; g < chunks; g++) {   // chunk g codes places [lo, hi): the known padding takes the first ones
            lo[g] = c->policy[j] > L - n_tokens[g] ? c->policy[j] : L - n_tokens[g];
            any |= lo[g] < hi;
        }
        if (!any) continue;   // no chunk codes anything at this call: no forward, on both sides
        for (size_t r = 0; r < (size_t)chunks * L; r++) {   // places before the segment known, the rest MASK
            xt[r] = rank[r] < lo[r / L] ? x[r] : (uint32_t)(V - 1);
            rows[r] = rank[r] >= lo[r / L] && rank[r] < hi;
        }
        const float *z;
        status = hdlm_denoiser_forward_rows(d, rows, xt, NULL, NULL, chunks, L, &z);   // the rows this call codes
        for (int g = 0; g < chunks && status == 0; g++) {
            for (int place = lo[g]; place < hi && status == 0; place++) {
                int pos = pos_of[(size_t)g * L + place];
                status = hdlm_quantize_softmax(z + ((size_t)g * L + pos) * V, W, c->scale_bits, freq, work);
                if (status == 0) status = code(ctx, g, pos, freq);
            }
        }
    }
    free(lo);
    free(rows);
    free(work);
    free(freq);
    free(xt);
    free(pos_of);
    free(rank);
    return status;
}

typedef struct {
    const hdlm_codec *codec;
    const uint32_t *x;
    uint32_t (*sym)[2];   // (start, freq) of each coded token, in decoding order
    size_t count;
    double bits;
} encode_ctx;

static int encode_symbol(void *ctx, int chunk, int pos, const uint32_t *freq) {
    encode_ctx *e = ctx;
    uint32_t token = e->x[(size_t)chunk * e->codec->length + pos], start = 0;
    HDLM_CHECK(token < (uint32_t)(e->codec->vocab - 1), "codec: chunk %d position %d holds id %u, not a real token "
               "(< %d)", chunk, pos, token, e->codec->vocab - 1);
    for (uint32_t y = 0; y < token; y++) start += freq[y];
    e->sym[e->count][0] = start;
    e->sym[e->count++][1] = freq[token];
    e->bits += e->codec->scale_bits - log2((double)freq[token]);
    return 0;
}

int hdlm_codec_encode(const hdlm_codec *c, hdlm_denoiser *d, const uint32_t *x, const int *n_tokens, int chunks,
                      uint32_t **words, size_t *n_words, double *ideal_bits) {
    int L = c->length;
    uint32_t *padded = hdlm_malloc((size_t)chunks * L * sizeof *padded);
    size_t total = 0;
    for (int g = 0; g < chunks; g++) {
        total += (size_t)(n_tokens[g] > 0 ? n_tokens[g] : 0);
        for (int i = 0; i < L; i++)
            padded[(size_t)g * L + i] = i < n_tokens[g] ? x[(size_t)g * L + i] : (uint32_t)(c->vocab - 2);
    }
    encode_ctx e = {c, padded, hdlm_malloc((total ? total : 1) * sizeof *e.sym), 0, 0};
    int status = coding_loop(c, d, padded, n_tokens, chunks, encode_symbol, &e);
    *words = NULL, *n_words = 0;
    if (status == 0) {
        HDLM_ASSERT(e.count == total, "codec: coded %zu of %zu tokens", e.count, total);
        hdlm_rans_encoder enc;
        hdlm_rans_encoder_init(&enc);
        for (size_t s = e.count; s-- > 0;)   // a stack: the last symbol decoded is pushed first
            hdlm_rans_put(&enc, e.sym[s][0], e.sym[s][1], c->scale_bits);
        hdlm_rans_encoder_finish(&enc, words, n_words);
        if (ideal_bits) *ideal_bits += e.bits;
    }
    free(e.sym);
    free(padded);
    return status;
}

typedef struct {
    const hdlm_codec *codec;
    uint32_t *x;
    hdlm_rans_decoder dec;
} decode_ctx;

static int decode_symbol(void *ctx, int chunk, int pos, const uint32_t *freq) {
    decode_ctx *e = ctx;
    uint32_t target = hdlm_rans_peek(&e->dec, e->codec->scale_bits), start = 0, y = 0, W = e->codec->vocab - 1;
    for (; y + 256 <= W; y += 256) {   // whole blocks first (the sum vectorises), then inside the block
        uint32_t s = 0;
#pragma omp simd reduction(+ : s)
        for (uint32_t k = 0; k < 256; k++) s += freq[y + k];
        if (start + s > target) break;
        start += s;
    }
    while (start + freq[y] <= target) start += freq[y++];   // freq sums to 2^scale_bits > target: y stays in range
    HDLM_TRY(hdlm_rans_advance(&e->dec, start, freq[y], e->codec->scale_bits));
    e->x[(size_t)chunk * e->codec->length + pos] = y;
    return 0;
}

int hdlm_codec_decode(const hdlm_codec *c, hdlm_denoiser *d, const uint32_t *words, size_t n_words,
                      const int *n_tokens, int chunks, uint32_t *x) {
    int L = c->length;
    decode_ctx e = {c, x, {0}};
    HDLM_TRY(hdlm_rans_decoder_init(&e.dec, words, n_words));
    for (int g = 0; g < chunks; g++)
        for (int i = 0; i < L; i++) x[(size_t)g * L + i] = i < n_tokens[g] ? 0 : (uint32_t)(c->vocab - 2);
    HDLM_TRY(coding_loop(c, d, x, n_tokens, chunks, decode_symbol, &e));
    HDLM_CHECK(hdlm_rans_decoder_done(&e.dec), "codec: the stream does not decode to its end (corrupt, or other "
               "numerics)");
    return 0;
}

static int hash_table(void *ctx, int chunk, int pos, const uint32_t *freq) {
    (void)chunk, (void)pos;
    XXH64_state_t *s = ((void **)ctx)[0];
    const hdlm_codec *c = ((void **)ctx)[1];
    XXH64_update(s, freq, (size_t)(c->vocab - 1) * sizeof *freq);
    return 0;
}

// The coding path itself on a fixed chunk (ids 0, 1, 2, ...): every call, every quantised table.
int hdlm_codec_fingerprint(const hdlm_codec *c, hdlm_denoiser *d, uint64_t *fingerprint) {
    int L = c->length;
    uint32_t *x = hdlm_malloc((size_t)L * sizeof *x);
    for (int i = 0; i < L; i++) x[i] = (uint32_t)i % (uint32_t)(c->vocab - 1);
    XXH64_state_t *s = XXH64_createState();
    XXH64_reset(s, 0);
    void *ctx[2] = {s, (void *)c};
    int status = coding_loop(c, d, x, &L, 1, hash_table, ctx);
    *fingerprint = XXH64_digest(s);
    XXH64_freeState(s);
    free(x);
    return status;
}

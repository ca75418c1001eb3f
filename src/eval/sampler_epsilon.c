// ε samplers (method §6.2, §6.3 and the hyperschedule walker of §11 item 19), the sampler configuration, the
// categorical draws and the model denoiser shared by every sampler.
#include <math.h>
#include <omp.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif
#include <stdlib.h>
#include <string.h>

#include "hdlm/common.h"
#include "hdlm/diffusion.h"
#include "hdlm/model.h"
#include "hdlm/rng.h"
#include "hdlm/sampler.h"
#include "core/vecmath.h"
#include "sampler_internal.h"

// The output layer's weight, packed at the first forward for all later ones: with a few hundred rows per call (a
// small model's evaluation) packing it on every call took a quarter of the time.
typedef struct {
    hdlm_packed_weights head;
    bool packed;
} model_denoiser_ctx;

static int model_denoiser_forward(hdlm_denoiser *d, const uint32_t *tokens, const float *sigma,
                                  const hdlm_attn_mask *mask, int batch, int length, const float **out) {
    hdlm_model *m = d->model;
    model_denoiser_ctx *ctx = d->ctx;
    if (!ctx->packed) {
        hdlm_packed_weights_init(&ctx->head, m->p.head_w, m->config.vocab, m->config.width);
        ctx->packed = true;
    }
    hdlm_model_input in = {.tokens = tokens, .sigma = sigma, .mask = mask, .batch = batch, .length = length,
                           .head_rows = d->rows_read, .head_packed = &ctx->head};
    HDLM_TRY(hdlm_model_forward(m, &in));
    *out = m->out;
    return 0;
}

hdlm_denoiser hdlm_denoiser_model(hdlm_model *model) {
    hdlm_denoiser d = {model->config.vocab, model_denoiser_forward, hdlm_calloc(1, sizeof(model_denoiser_ctx)), model,
                       NULL, NULL};
    return d;
}

hdlm_kv_cache *hdlm_denoiser_kv_cache(hdlm_denoiser *d, int batch) {
    if (d->kv) {
        hdlm_kv_cache_reset(d->kv, batch);
    } else {
        d->kv = hdlm_malloc(sizeof *d->kv);
        hdlm_kv_cache_init(d->kv, d->model, batch);
    }
    return d->kv;
}

int hdlm_denoiser_forward_rows(hdlm_denoiser *d, const uint8_t *read, const uint32_t *tokens, const float *sigma,
                               const hdlm_attn_mask *mask, int batch, int length, const float **out) {
    d->rows_read = read;
    int status = d->forward(d, tokens, sigma, mask, batch, length, out);
    d->rows_read = NULL;
    return status;
}

void hdlm_denoiser_free(hdlm_denoiser *d) {
    if (d->kv) hdlm_kv_cache_free(d->kv);
    free(d->kv);
    d->kv = NULL;
    if (d->forward == model_denoiser_forward && d->ctx) {
        model_denoiser_ctx *ctx = d->ctx;
        if (ctx->packed) hdlm_packed_weights_free(&ctx->head);
        free(ctx);
        d->ctx = NULL;
    }
}

static const char *const KIND_NAMES[] = {"ancestral", "acs", "gamma-nar", "gamma-sar", "walk", "ar"};

const char *hdlm_sampler_kind_name(hdlm_sampler_kind kind) {
    return (unsigned)kind < sizeof KIND_NAMES / sizeof KIND_NAMES[0] ? KIND_NAMES[kind] : "?";
}

int hdlm_sampler_kind_parse(const char *name, const char *field, hdlm_sampler_kind *kind) {
    for (int i = 0; i < (int)(sizeof KIND_NAMES / sizeof KIND_NAMES[0]); i++)
        if (strcmp(name, KIND_NAMES[i]) == 0) {
            *kind = (hdlm_sampler_kind)i;
            return 0;
        }
    return HDLM_FAIL("%s: unknown sampler '%s' (expected ancestral, acs, gamma-nar, gamma-sar, walk or ar)", field,
                     name);
}

static bool uses_schedule(hdlm_sampler_kind kind) {
    return kind == HDLM_SAMPLER_GAMMA_NAR || kind == HDLM_SAMPLER_GAMMA_SAR || kind == HDLM_SAMPLER_WALK;
}

bool hdlm_sampler_kv_cache_applies(const hdlm_sampler_config *cfg) {
    if (cfg->kind == HDLM_SAMPLER_AR) return true;
    return uses_schedule(cfg->kind) && cfg->schedule && cfg->schedule->type == HDLM_SCHEDULE_BLOCK &&
           cfg->schedule->context == HDLM_CONTEXT_BLOCK_CAUSAL;
}

int hdlm_sampler_check(const hdlm_sampler_config *cfg, int vocab, int length) {
    HDLM_CHECK((unsigned)cfg->kind <= HDLM_SAMPLER_AR, "sampler: unknown kind %d", (int)cfg->kind);
    HDLM_CHECK(vocab >= 2, "sampler: vocabulary %d too small (need real tokens and MASK)", vocab);
    HDLM_CHECK(length >= 1, "sampler: length %d must be positive", length);
    if (!uses_schedule(cfg->kind)) HDLM_CHECK(cfg->steps >= 1, "sampler: --steps must be >= 1, got %d", cfg->steps);
    HDLM_CHECK(cfg->eta >= 0 && cfg->eta <= 1, "sampler: --eta must be in [0, 1], got %g", cfg->eta);
    HDLM_CHECK(cfg->temperature > 0 && isfinite(cfg->temperature), "sampler: --temperature must be > 0, got %g",
               cfg->temperature);
    HDLM_CHECK(cfg->top_k >= 0, "sampler: --top-k must be >= 0 (0: off), got %d", cfg->top_k);
    HDLM_CHECK(cfg->top_p >= 0 && cfg->top_p <= 1, "sampler: --top-p must be in (0, 1] (0: off), got %g", cfg->top_p);
    HDLM_CHECK(!cfg->stop || cfg->stop_token < (uint32_t)(vocab - 1), "sampler: stop token %u is not a real token (< %d)",
               cfg->stop_token, vocab - 1);
    if (cfg->kind == HDLM_SAMPLER_GAMMA_NAR || cfg->kind == HDLM_SAMPLER_GAMMA_SAR) {
        HDLM_CHECK(cfg->gamma >= 0 && cfg->gamma <= 1, "sampler: graph gamma must be in [0, 1], got %g", cfg->gamma);
        HDLM_CHECK(cfg->top_k == 0 && (cfg->top_p == 0 || cfg->top_p == 1),
                   "sampler: --top-k / --top-p do not apply to %s: its transition weights are not one softmax "
                   "(method §6.7)", hdlm_sampler_kind_name(cfg->kind));
    }
    if (uses_schedule(cfg->kind)) {
        HDLM_CHECK(cfg->schedule != NULL, "sampler: %s needs a hyperschedule", hdlm_sampler_kind_name(cfg->kind));
        HDLM_CHECK(cfg->schedule->length == length, "sampler: schedule length %d differs from the sample length %d",
                   cfg->schedule->length, length);
    }
    if (cfg->kind == HDLM_SAMPLER_AR)
        HDLM_CHECK(cfg->steps == length, "sampler: ar takes one step per token: steps %d, length %d", cfg->steps,
                   length);
    if (cfg->kv_cache && !hdlm_sampler_kv_cache_applies(cfg)) {
        HDLM_CHECK(uses_schedule(cfg->kind), "sampler: --kv-cache applies to the walk, gamma and ar samplers, not %s",
                   hdlm_sampler_kind_name(cfg->kind));
        return hdlm_fail(__FILE__, __LINE__,
                         "sampler: --kv-cache needs the block schedule with the block_causal context (method §3.5), "
                         "not %s/%s", hdlm_schedule_type_name(cfg->schedule->type),
                         cfg->schedule->context == HDLM_CONTEXT_FULL ? "full" : "causal");
    }
    HDLM_CHECK((cfg->prompt == NULL) == (cfg->prompt_mask == NULL), "sampler: prompt ids and prompt mask go together");
    if (cfg->prompt)
        for (int i = 0; i < length; i++)
            HDLM_CHECK(!cfg->prompt_mask[i] || cfg->prompt[i] < (uint32_t)(vocab - 1),
                       "sampler: prompt id %u at position %d is not a real token (< %d)", cfg->prompt[i], i,
                       vocab - 1);
    return 0;
}

int hdlm_sampler_calls(const hdlm_sampler_config *cfg) {
    return uses_schedule(cfg->kind) ? cfg->schedule->k_max - 1 : cfg->steps;
}

// w = exp((z - max z)/T): the softmax's weights, unnormalised, chunk by chunk with each draw chunk's sum (sums NULL:
// none) taken while the chunk is in L1.
static void softmax_weights(const float *z, int width, double temperature, float *w, double *sums) {
    float mx = -INFINITY, inv_t = (float)(1.0 / temperature);
#pragma omp simd reduction(max : mx)
    for (int y = 0; y < width; y++) mx = z[y] > mx ? z[y] : mx;
    int chunk = hdlm_draw_chunk_size(width);
    for (int c = 0, lo = 0; lo < width; c++, lo += chunk) {
        int hi = lo + chunk < width ? lo + chunk : width;
#pragma omp simd
        for (int y = lo; y < hi; y++) w[y] = hdlm_expf((z[y] - mx) * inv_t);
        if (sums) sums[c] = hdlm_draw_chunk_sum(w, lo, hi);
    }
}

uint32_t hdlm_sample_softmax(const float *z, int width, double temperature, float *w, hdlm_rng *rng) {
    double sums[HDLM_DRAW_MAX_CHUNKS];
    softmax_weights(z, width, temperature, w, sums);
    return hdlm_draw_chunked(w, width, sums, rng);
}

// Reorders a[lo, hi) around the median of three as [lo, *gt) > pivot, [*gt, *lt) == pivot, [*lt, hi) < pivot.
static float partition3(float *a, int lo, int hi, int *gt, int *lt) {
    float x = a[lo], y = a[lo + (hi - lo) / 2], z = a[hi - 1];
    float pivot = x < y ? (y < z ? y : (x < z ? z : x)) : (x < z ? x : (y < z ? z : y));
    int g = lo, i = lo, l = hi;
    while (i < l) {
        float v = a[i];
        if (v > pivot) a[i] = a[g], a[g++] = v, i++;
        else if (v < pivot) a[i] = a[--l], a[l] = v;
        else i++;
    }
    *gt = g, *lt = l;
    return pivot;
}

// Top-k threshold: the k-th largest of a[0..n) (1 <= k <= n), by quickselect (a reordered).
static float kth_largest(float *a, int n, int k) {
    int lo = 0, hi = n;   // the answer is in a[lo, hi), the (k - lo)-th largest there
    for (;;) {
        int gt, lt;
        float pivot = partition3(a, lo, hi, &gt, &lt);
        if (k <= gt) hi = gt;
        else if (k <= lt) return pivot;
        else lo = lt;
    }
}

// Nucleus threshold: the largest value t of a[0..n) (positive entries) such that the entries >= t sum to at least
// `need` (0 < need <= their sum), by quickselect walking down by mass instead of count (a reordered).
static float mass_threshold(float *a, int n, double need) {
    int lo = 0, hi = n;
    double above = 0;   // the sum of the entries larger than every one in a[lo, hi); always < need
    while (hi - lo > 1) {
        int gt, lt;
        float pivot = partition3(a, lo, hi, &gt, &lt);
        double m_gt = 0, m_eq = 0;
        for (int j = lo; j < gt; j++) m_gt += a[j];
        for (int j = gt; j < lt; j++) m_eq += a[j];
        if (above + m_gt >= need) hi = gt;                    // the larger entries already reach it
        else if (above + m_gt + m_eq >= need || lt == hi) return pivot;   // the cut falls on the pivot's value
        else above += m_gt + m_eq, lo = lt;
    }
    return a[lo];
}

void hdlm_truncate_weights(float *w, int n, int top_k, double top_p, float *work) {
    if (top_k > 0 && top_k < n) {
        memcpy(work, w, (size_t)n * sizeof *w);
        float t = kth_largest(work, n, top_k);
        for (int y = 0; y < n; y++)
            if (w[y] < t) w[y] = 0;
    }
    if (top_p > 0 && top_p < 1) {
        int m = 0;
        double total = 0;
        for (int y = 0; y < n; y++)
            if (w[y] > 0) work[m++] = w[y], total += w[y];
        if (m == 0) return;
        float t = mass_threshold(work, m, top_p * total);
        for (int y = 0; y < n; y++)
            if (w[y] < t) w[y] = 0;
    }
}

uint32_t hdlm_sampler_draw(const hdlm_sampler_config *cfg, const float *z, int width, float *scratch, hdlm_rng *rng) {
    if (cfg->top_k == 0 && (cfg->top_p == 0 || cfg->top_p == 1))
        return hdlm_sample_softmax(z, width, cfg->temperature, scratch, rng);
    softmax_weights(z, width, cfg->temperature, scratch, NULL);
    hdlm_truncate_weights(scratch, width, cfg->top_k, cfg->top_p, scratch + width);
    return hdlm_sample_weights(scratch, width, rng);
}

int hdlm_sampler_stop_length(const hdlm_sampler_config *cfg, const uint32_t *x, int length) {
    if (!cfg->stop) return length;
    for (int i = hdlm_sampler_prompt_end(cfg, length); i < length; i++)
        if (x[i] == cfg->stop_token) return i + 1;
    return length;
}

void hdlm_sampler_pad_after_stop(const hdlm_sampler_config *cfg, int batch, int length, uint32_t *x) {
    for (int b = 0; b < batch && cfg->stop; b++) {
        uint32_t *xb = x + (size_t)b * length;
        for (int i = hdlm_sampler_stop_length(cfg, xb, length); i < length; i++) xb[i] = cfg->stop_token;
    }
}

int hdlm_draw_chunk_size(int n) {
    int chunk = 1024;
    while ((n + chunk - 1) / chunk > HDLM_DRAW_MAX_CHUNKS) chunk *= 2;
    return chunk;
}

// 16 float64 lanes (entry lo + i goes to lane i mod 16), folded in lane order: the same bits with AVX-512 or AVX2
// vectors and without. (The compiler turns `sum += w > 0 ? w : 0` into a branch per entry: 20 cycles each on random
// signs.)
double hdlm_draw_chunk_sum(const float *w, int lo, int hi) {
    double lane[16] = {0};
    int y = lo;   // the vector loops take whole groups of 16, the scalar one the rest
#if defined(__AVX512F__)
    __m512d acc0 = _mm512_setzero_pd(), acc1 = _mm512_setzero_pd();
    for (; y + 16 <= hi; y += 16) {
        __m512 v = _mm512_max_ps(_mm512_loadu_ps(w + y), _mm512_setzero_ps());   // NaN -> 0
        acc0 = _mm512_add_pd(acc0, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
        acc1 = _mm512_add_pd(acc1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
    }
    _mm512_storeu_pd(lane, acc0);
    _mm512_storeu_pd(lane + 8, acc1);
#elif defined(__AVX2__)
    __m256d acc[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd()};
    for (; y + 16 <= hi; y += 16)
        for (int h = 0; h < 2; h++) {
            __m256 v = _mm256_max_ps(_mm256_loadu_ps(w + y + 8 * h), _mm256_setzero_ps());   // NaN -> 0
            acc[2 * h] = _mm256_add_pd(acc[2 * h], _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
            acc[2 * h + 1] = _mm256_add_pd(acc[2 * h + 1], _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
        }
    for (int i = 0; i < 4; i++) _mm256_storeu_pd(lane + 4 * i, acc[i]);
#endif
    for (; y < hi; y++) lane[(y - lo) % 16] += w[y] > 0 ? (double)w[y] : 0.0;
    double sum = 0;
    for (int i = 0; i < 16; i++) sum += lane[i];
    return sum;
}

uint32_t hdlm_draw_chunked(const float *w, int n, const double *sums, hdlm_rng *rng) {
    int chunk = hdlm_draw_chunk_size(n), chunks = (n + chunk - 1) / chunk;
    double total = 0;
    for (int c = 0; c < chunks; c++) total += sums[c];
    if (!(total > 0)) {
        int best = 0;
        for (int y = 1; y < n; y++)
            if (w[y] > w[best]) best = y;
        return (uint32_t)best;
    }
    // Inversion of the CDF with one uniform: find the chunk by its sum, then the entry inside it.
    double u = hdlm_rng_uniform_double(rng) * total, acc = 0;
    int c = 0;
    for (; c < chunks && !(u < acc + sums[c]); c++) acc += sums[c];
    if (c == chunks) {   // u rounded onto the total: the last entry with weight
        int y = n - 1;
        while (!(w[y] > 0)) y--;
        return (uint32_t)y;
    }
    int lo = c * chunk, hi = lo + chunk < n ? lo + chunk : n, last = -1;
    for (int y = lo; y < hi; y++) {
        if (!(w[y] > 0)) continue;
        last = y;
        acc += w[y];
        if (u < acc) return (uint32_t)y;
    }
    HDLM_ASSERT(last >= 0, "categorical draw: a chunk with positive weight has no positive entry");
    return (uint32_t)last;
}

uint32_t hdlm_sample_weights(const float *w, int n, hdlm_rng *rng) {
    double sums[HDLM_DRAW_MAX_CHUNKS];
    int chunk = hdlm_draw_chunk_size(n);
    for (int c = 0, lo = 0; lo < n; c++, lo += chunk)
        sums[c] = hdlm_draw_chunk_sum(w, lo, lo + chunk < n ? lo + chunk : n);
    return hdlm_draw_chunked(w, n, sums, rng);
}

// Unmask with probability p[i] (masked positions), correct with probability η·(1 - p[i]) (revealed, non-prompt
// positions), both from the same logits (method §6.3), at network call `call` of every sequence of the batch, each
// position from its own stream (same bits on any number of threads). Positions with p[i] < 0 are left alone (not
// active). Positions [first, n); z holds rows [b][i - first]. scratch: 2·V floats per thread.
static void eps_update(const hdlm_sampler_config *cfg, const float *z, int vocab, int batch, int length, int first,
                       int n, const double *p, double eta, uint64_t first_sample, int call, float *scratch,
                       uint32_t *x) {
    uint32_t mask_id = (uint32_t)(vocab - 1);
    int width = cfg->exclude_mask ? vocab - 1 : vocab, rows = n - first;
#pragma omp parallel for schedule(dynamic, 4)
    for (int r = 0; r < batch * rows; r++) {
        int b = r / rows, i = first + r % rows;
        if (p[i] < 0 || (cfg->prompt && cfg->prompt_mask[i])) continue;
        hdlm_rng rng;
        hdlm_sampler_position_rng(&rng, cfg, first_sample + (uint64_t)b, call, i);
        uint32_t *xi = x + (size_t)b * length + i;
        double threshold = *xi == mask_id ? p[i] : eta * (1 - p[i]);
        if (hdlm_rng_uniform_double(&rng) < threshold)
            *xi = hdlm_sampler_draw(cfg, z + (size_t)r * vocab, width,
                                    scratch + (size_t)omp_get_thread_num() * 2 * vocab, &rng);
    }
}

// MDLM ancestral / ACS (method §6.2-6.3): full attention, time grid linspace(1, 1e-5, n+1) in float32.
static int sample_full_diff(const hdlm_sampler_config *cfg, hdlm_denoiser *d, int batch, int length,
                            uint64_t first_sample, uint32_t *x, hdlm_sampler_progress progress, void *pctx) {
    int n = cfg->steps, V = d->vocab;
    double eta = cfg->kind == HDLM_SAMPLER_ACS ? cfg->eta : 0.0;
    double *p = hdlm_malloc((size_t)length * sizeof *p);
    float *scratch = hdlm_malloc((size_t)omp_get_max_threads() * 2 * V * sizeof *scratch);
    // Without corrections (ancestral) a step reads the rows of masked positions alone: the denoiser may skip the
    // others' output layer (most of a small model's forward).
    uint8_t *read = eta == 0.0 ? hdlm_malloc((size_t)batch * length) : NULL;
    int status = 0;
    for (int j = 0; j < n && status == 0; j++) {
        float t = (float)(1.0 + (1e-5 - 1.0) * j / n), s = (float)(1.0 + (1e-5 - 1.0) * (j + 1) / n);
        if (j + 1 == n) s = 1e-5f;
        double pj = j < n - 1 ? 1.0 - (double)s / (double)t : 1.0;
        for (int i = 0; i < length; i++) p[i] = pj;
        if (read)
            for (size_t r = 0; r < (size_t)batch * length; r++) read[r] = x[r] == (uint32_t)(V - 1);
        const float *z;
        status = hdlm_denoiser_forward_rows(d, read, x, NULL, NULL, batch, length, &z);
        if (status) break;
        eps_update(cfg, z, V, batch, length, 0, length, p, eta, first_sample, j + 1, scratch, x);
        if (progress) progress(pctx, j + 1, n);
    }
    free(read);
    free(scratch);
    free(p);
    return status;
}

int hdlm_sampler_step_forward(hdlm_denoiser *d, hdlm_kv_cache *cache, const hdlm_step *st, const uint32_t *x,
                              const float *sigma_row, int batch, int length, int window, int *first,
                              const float **out) {
    uint32_t *tok = hdlm_malloc((size_t)batch * length * sizeof *tok);
    float *sigma = sigma_row ? hdlm_malloc((size_t)batch * length * sizeof *sigma) : NULL;
    int status = 0;
    // Gathers positions [lo, lo + n) of every sequence into tok/sigma [batch, n].
#define GATHER(lo, n)                                                                                                  \
    for (int b = 0; b < batch; b++) {                                                                                  \
        memcpy(tok + (size_t)b * (n), x + (size_t)b * length + (lo), (size_t)(n) * sizeof *tok);                     \
        if (sigma) memcpy(sigma + (size_t)b * (n), sigma_row + (lo), (size_t)(n) * sizeof *sigma);                   \
    }
    if (!cache) {
        GATHER(0, window);
        hdlm_attn_mask mask = st->mask;
        mask.length = window;
        *first = 0;
        status = d->forward(d, tok, sigma, &mask, batch, window, out);
    } else {
        // Blocks settled since the last step enter the cache one ω-block at a time with their final tokens and
        // settled σ (method §3.5): full attention inside the block and to every earlier block = the block_causal rule.
        // The last of them runs in the same call as the active rows (the weights are read once for both).
        int n = st->a_end + 1 - st->n_set;
        while (status == 0 && st->n_set - cache->length > st->width) {
            GATHER(cache->length, st->width);
            status = hdlm_model_forward_cached(d->model, cache, tok, sigma, batch, st->width, 0, HDLM_BLOCK_FULL);
        }
        if (status == 0) {
            int lo = cache->length;
            GATHER(lo, st->a_end + 1 - lo);
            status = hdlm_model_forward_cached(d->model, cache, tok, sigma, batch, st->n_set - lo, n, st->mask.block);
        }
        *first = st->n_set;
        *out = cache->out;
    }
#undef GATHER
    free(sigma);
    free(tok);
    return status;
}

// Hyperschedule walker (extension, §11 item 19): step k uses the training mask of step k on the prefix that ends
// at the last active position (worthless rows never reach other rows, method §3.5), or the KV cache of the settled
// blocks. Active position i moves from its time t_i to its time at step k+1 (0 when it is settled then, or at the
// last step): unmasking probability p_i = 1 - t_next/t_i (clamped at 0), correction η·(1 - p_i), as the ancestral
// sampler does with one shared time.
static int sample_walk(const hdlm_sampler_config *cfg, hdlm_denoiser *d, int batch, int length, uint64_t first_sample,
                       uint32_t *x, hdlm_sampler_progress progress, void *pctx) {
    const hdlm_schedule *s = cfg->schedule;
    int V = d->vocab, calls = s->k_max - 1, status = 0;
    hdlm_step st, next;
    hdlm_step_alloc(&st, length);
    hdlm_step_alloc(&next, length);
    double *p = hdlm_malloc((size_t)length * sizeof *p);
    float *scratch = hdlm_malloc((size_t)omp_get_max_threads() * 2 * V * sizeof *scratch);
    hdlm_kv_cache *cache = cfg->kv_cache ? hdlm_denoiser_kv_cache(d, batch) : NULL;
    for (int k = 1; k <= calls && status == 0; k++) {
        HDLM_ASSERT(hdlm_schedule_step(s, k, &st) == 0, "walker step %d", k);
        bool has_next = k < calls;
        if (has_next) HDLM_ASSERT(hdlm_schedule_step(s, k + 1, &next) == 0, "walker step %d", k + 1);
        for (int i = 0; i < length; i++) {
            if (st.cls[i] != HDLM_POS_ACTIVE) {
                p[i] = -1;
                continue;
            }
            double t_next = has_next && next.cls[i] == HDLM_POS_ACTIVE ? next.t[i] : 0.0;
            p[i] = st.to_denoise[i] || t_next <= 0 ? 1.0 : fmax(0.0, 1.0 - t_next / st.t[i]);
        }
        int n = st.a_end + 1, first;
        const float *z;
        status = hdlm_sampler_step_forward(d, cache, &st, x, NULL, batch, length, n, &first, &z);
        if (status) break;
        eps_update(cfg, z, V, batch, length, first, n, p, cfg->eta, first_sample, k, scratch, x);
        if (progress) progress(pctx, k, calls);
    }
    free(scratch);
    free(p);
    hdlm_step_free(&next);
    hdlm_step_free(&st);
    return status;
}

int hdlm_sample(const hdlm_sampler_config *cfg, hdlm_denoiser *d, int batch, int length, uint64_t first_sample,
                uint32_t *x, hdlm_sampler_progress progress, void *progress_ctx) {
    HDLM_TRY(hdlm_sampler_check(cfg, d->vocab, length));
    HDLM_CHECK(batch >= 1, "sampler: batch %d must be positive", batch);
    HDLM_CHECK(!cfg->kv_cache || d->model, "sampler: the KV cache needs a model denoiser");
    if (cfg->kind == HDLM_SAMPLER_GAMMA_NAR || cfg->kind == HDLM_SAMPLER_GAMMA_SAR) {
        HDLM_TRY(hdlm_gamma_sample(cfg, d, batch, length, first_sample, x, progress, progress_ctx));
        hdlm_sampler_pad_after_stop(cfg, batch, length, x);
        return 0;
    }
    if (cfg->kind == HDLM_SAMPLER_AR)   // pads after the stop token itself
        return hdlm_ar_sample(cfg, d, batch, length, first_sample, x, progress, progress_ctx);
    for (size_t r = 0; r < (size_t)batch * length; r++) x[r] = (uint32_t)(d->vocab - 1);
    for (int b = 0; b < batch; b++) hdlm_sampler_impose_prompt(cfg, length, x + (size_t)b * length);
    int status = cfg->kind == HDLM_SAMPLER_WALK
                     ? sample_walk(cfg, d, batch, length, first_sample, x, progress, progress_ctx)
                     : sample_full_diff(cfg, d, batch, length, first_sample, x, progress, progress_ctx);
    if (status == 0) hdlm_sampler_pad_after_stop(cfg, batch, length, x);
    return status;
}

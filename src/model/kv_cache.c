// The cached inference forward (method §3.5): the DDiT layers of hdlm_model_forward (method §7.2) on the new positions
// only, attention against the settled keys/values kept in the cache.
#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

#include "hdlm/blas.h"
#include "hdlm/common.h"
#include "hdlm/diffusion.h"
#include "model/kv_cache.h"
#include "model/layers.h"

void hdlm_kv_cache_init(hdlm_kv_cache *c, const hdlm_model *m, int batch) {
    memset(c, 0, sizeof *c);
    c->capacity = m->config.max_length;
    c->layers = m->config.n_layers;
    c->width = m->config.width;
    c->heads = m->config.n_heads;
    c->kv_floats = hdlm_attention_kv_floats(c->capacity, c->width / c->heads);
    hdlm_kv_cache_reset(c, batch);   // allocates the K/V buffer
    const hdlm_model_config *mc = &m->config;
    int d = mc->width, f = mc->mlp_ratio * d, cd = mc->cond_dim;
    bool gamma = mc->family == HDLM_FAMILY_GAMMA;
    c->blocks = hdlm_calloc((size_t)c->layers, sizeof *c->blocks);
    for (int l = 0; l < c->layers; l++) {
        const hdlm_block_views *w = &m->p.blocks[l];
        hdlm_kv_block_weights *p = &c->blocks[l];
        hdlm_packed_weights_init(&p->qkv, w->qkv, 3 * d, d);
        hdlm_packed_weights_init(&p->attn_out, w->attn_out, d, d);
        hdlm_packed_weights_init(&p->fc1, w->fc1_w, f, d);
        hdlm_packed_weights_init(&p->fc2, w->fc2_w, d, f);
        if (gamma) hdlm_packed_weights_init(&p->ada, w->ada_w, 6 * d, cd);
    }
    hdlm_packed_weights_init(&c->head, m->p.head_w, mc->vocab, d);
    if (gamma) {
        hdlm_packed_weights_init(&c->sigma_w1, m->p.sigma_w1, cd, HDLM_SIGMA_FREQ_DIM);
        hdlm_packed_weights_init(&c->sigma_w2, m->p.sigma_w2, cd, cd);
    }
    int half = d / mc->n_heads / 2;
    c->cos_t = hdlm_malloc((size_t)c->capacity * half * sizeof(float));
    c->sin_t = hdlm_malloc((size_t)c->capacity * half * sizeof(float));
    hdlm_rotary_tables(c->cos_t, c->sin_t, m->p.inv_freq, c->capacity, 2 * half, mc->rotary);
}

void hdlm_kv_cache_free(hdlm_kv_cache *c) {
    free(c->kv);
    free(c->out);
    for (int l = 0; l < c->layers; l++) {
        hdlm_kv_block_weights *p = &c->blocks[l];
        hdlm_packed_weights_free(&p->qkv);
        hdlm_packed_weights_free(&p->attn_out);
        hdlm_packed_weights_free(&p->fc1);
        hdlm_packed_weights_free(&p->fc2);
        hdlm_packed_weights_free(&p->ada);
    }
    free(c->blocks);
    free(c->cos_t);
    free(c->sin_t);
    free(c->work);
    hdlm_packed_weights_free(&c->head);
    hdlm_packed_weights_free(&c->sigma_w1);
    hdlm_packed_weights_free(&c->sigma_w2);
    memset(c, 0, sizeof *c);
}

void hdlm_kv_cache_reset(hdlm_kv_cache *c, int batch) {
    if (batch > c->batch_capacity) {
        free(c->kv);
        size_t bytes = (size_t)c->layers * batch * c->heads * c->kv_floats * sizeof(float);
        c->kv = hdlm_aligned_malloc(bytes);
        memset(c->kv, 0, bytes);   // the stores' padding must be zero (hdlm_attention_kv_floats)
        c->batch_capacity = batch;
    }
    c->batch = batch;
    c->length = 0;
}

// Attention of the T = n_settle + n new rows of every sequence (positions start..start+T-1, q/k/v in qkv [B·T, 3d]):
// their K/V appended to the layer's stores (kv: [batch][heads] of kv_floats), the settling rows over keys
// [0, start + n_settle) (full), the query rows over keys [0, start + T) under `rule` — with the arithmetic of the
// uncached forward (hdlm_attention_rows), so the outputs are its bits. One (sequence, head) per task; out[B·T, d].
static void cached_attention(float *out, const float *qkv, float *kv, size_t kv_floats, int batch, int capacity,
                             int start, int n_settle, int n, int heads, int head_dim, hdlm_block_type rule) {
    int d = heads * head_dim, T = n_settle + n;
#pragma omp parallel for schedule(static) collapse(2)
    for (int b = 0; b < batch; b++)
        for (int h = 0; h < heads; h++) {
            const float *rows = qkv + (size_t)b * T * 3 * d + (size_t)h * head_dim;
            float *o = out + (size_t)b * T * d + (size_t)h * head_dim;
            hdlm_attention_rows(o, d, rows, 3 * d, kv + ((size_t)b * heads + h) * kv_floats, capacity, start,
                                n_settle, n, head_dim, rule == HDLM_BLOCK_CAUSAL);
        }
}

// Rows [n_settle, T) of each of `batch` sequences of T rows (`width` floats each) moved to the front, in order.
static void keep_query_rows(float *x, size_t width, int batch, int T, int n_settle) {
    int n = T - n_settle;
    for (int b = 0; b < batch; b++)   // each destination lies before its source and after the last one's
        memmove(x + (size_t)b * n * width, x + ((size_t)b * T + n_settle) * width, (size_t)n * width * sizeof(float));
}

int hdlm_model_forward_cached(hdlm_model *m, hdlm_kv_cache *cache, const uint32_t *tokens, const float *sigma,
                              int batch, int n_settle, int n, hdlm_block_type rule) {
    const hdlm_model_config *c = &m->config;
    bool gamma = c->family == HDLM_FAMILY_GAMMA;
    int start = cache->length, d = c->width, f = c->mlp_ratio * d, H = c->n_heads, hd = d / H, cd = c->cond_dim;
    int V = c->vocab, T = n_settle + n, N = batch * T;
    HDLM_CHECK(batch == cache->batch, "cached forward: batch %d, cache made for %d", batch, cache->batch);
    HDLM_CHECK(n_settle >= 0 && n >= 0 && T >= 1 && start + T <= cache->capacity,
               "cached forward: positions [%d, %d) (%d settling, %d queries) beyond the model's %d", start, start + T,
               n_settle, n, cache->capacity);
    HDLM_CHECK(!gamma || sigma, "cached forward: the γ model needs σ");
    for (int r = 0; r < N; r++)
        HDLM_CHECK(tokens[r] < (uint32_t)V, "cached forward: token id %u at row %d is not below %d", tokens[r], r, V);
#if defined(__SSE__)
#pragma omp parallel
    _mm_setcsr(_mm_getcsr() | 0x8040);   // flush denormals, as hdlm_model_forward does
#endif
    // Activations of this call in the cache's workspace (allocated once for the largest call, not per call).
    size_t Nd = (size_t)N * d, need = 9 * Nd + 2 * (size_t)N * f + 3 * (size_t)N;
    if (gamma) need += (size_t)N * (HDLM_SIGMA_FREQ_DIM + 3 * cd + 1) + 6 * Nd;
    if (need > cache->work_capacity) {
        free(cache->work);
        cache->work = hdlm_malloc(need * sizeof(float));
        cache->work_capacity = need;
    }
    float *next = cache->work;
#define TAKE(count) (next += (count), next - (count))
    float *h = TAKE(Nd), *ln = TAKE(Nd), *mod_in = TAKE(Nd), *qkv = TAKE(3 * Nd), *att = TAKE(Nd), *y = TAKE(Nd);
    float *fc1 = TAKE((size_t)N * f), *act = TAKE((size_t)N * f), *mean = TAKE((size_t)N), *rstd = TAKE((size_t)N);
    float *query_shift = TAKE((size_t)N);
    float *cond = NULL, *mod = NULL, *mix = NULL;
    if (gamma) {   // σ conditioning and the MASK-mixed embedding (method §5.4, §7.3)
        float *freq = TAKE((size_t)N * HDLM_SIGMA_FREQ_DIM), *t1 = TAKE((size_t)N * cd), *t2 = TAKE((size_t)N * cd);
        cond = TAKE((size_t)N * cd);
        mod = TAKE(6 * Nd);
        mix = TAKE((size_t)N);
        for (int r = 0; r < N; r++) mix[r] = expf(-c->gamma * sigma[r]);
        hdlm_sigma_sinusoid(freq, sigma, N, HDLM_SIGMA_FREQ_DIM);
        hdlm_linear_forward_packed(t1, freq, &cache->sigma_w1, m->p.sigma_b1, N);
        hdlm_silu_forward(t2, t1, (size_t)N * cd);
        hdlm_linear_forward_packed(t1, t2, &cache->sigma_w2, m->p.sigma_b2, N);
        hdlm_silu_forward(cond, t1, (size_t)N * cd);
    }
#undef TAKE
    hdlm_embedding_forward(h, m->p.embed, tokens, mix, (uint32_t)(V - 1), N, d);
    size_t layer_stride = (size_t)batch * H * cache->kv_floats;
    for (int l = 0; l < c->n_layers; l++) {
        const hdlm_block_views *w = &m->p.blocks[l];
        const hdlm_kv_block_weights *pw = &cache->blocks[l];
        float *a_in = gamma ? mod_in : ln;
        hdlm_layernorm_forward(ln, mean, rstd, h, w->norm1, N, d);
        if (gamma) {
            hdlm_linear_forward_packed(mod, cond, &pw->ada, w->ada_b, N);
            hdlm_modulate_forward(mod_in, ln, mod, mod + d, 6 * d, N, d);
        }
        hdlm_linear_forward_packed(qkv, a_in, &pw->qkv, NULL, N);
        // Rotary at the absolute positions start..start+T-1: the tables from row `start` on.
        hdlm_rotary_forward(qkv, cache->cos_t + (size_t)start * (hd / 2), cache->sin_t + (size_t)start * (hd / 2),
                            batch, T, H, hd);
        cached_attention(att, qkv, cache->kv + l * layer_stride, cache->kv_floats, batch, cache->capacity, start,
                         n_settle, n, H, hd, rule);
        int rows = N;
        if (l == c->n_layers - 1 && n_settle > 0) {
            // The settling rows' keys and values are in the cache now, and nothing reads the rest of their last
            // layer (only query rows reach the head): it runs on the query rows alone (≈ 9/12 of a layer fewer).
            keep_query_rows(att, d, batch, T, n_settle);
            keep_query_rows(h, d, batch, T, n_settle);
            if (gamma) keep_query_rows(mod, 6 * (size_t)d, batch, T, n_settle);
            rows = batch * n;
            if (rows == 0) break;
        }
        hdlm_linear_forward_packed(y, att, &pw->attn_out, NULL, rows);
        hdlm_residual_forward(h, h, y, gamma ? mod + 2 * d : NULL, 6 * d, rows, d, 0.0f, 0);
        hdlm_layernorm_forward(ln, mean, rstd, h, w->norm2, rows, d);
        if (gamma) hdlm_modulate_forward(mod_in, ln, mod + 3 * d, mod + 4 * d, 6 * d, rows, d);
        hdlm_linear_forward_packed(fc1, a_in, &pw->fc1, w->fc1_b, rows);
        hdlm_gelu_forward(act, fc1, (size_t)rows * f);
        hdlm_linear_forward_packed(y, act, &pw->fc2, w->fc2_b, rows);
        hdlm_residual_forward(h, h, y, gamma ? mod + 5 * d : NULL, 6 * d, rows, d, 0.0f, 0);
    }
    cache->length = start + n_settle;   // the settling rows' K/V stay; their outputs are never used
    if (n > 0) {
        // The query rows of every sequence (h holds only them now, sequence after sequence) through the final norm
        // and the head; γ: with each row's shift of the scores (method §5.4 step 1) added in the head's product.
        float *shift = gamma ? query_shift : NULL;
        for (int b = 0; shift && b < batch; b++)
            for (int i = 0; i < n; i++)
                shift[b * n + i] = (float)hdlm_gamma_log_score_shift(sigma[b * T + n_settle + i], V);
        int rows = batch * n;
        hdlm_layernorm_forward(ln, mean, rstd, h, m->p.norm_final, rows, d);
        if ((size_t)rows * V > cache->out_capacity) {
            cache->out_capacity = (size_t)rows * V;
            free(cache->out);   // written whole below
            cache->out = hdlm_malloc(cache->out_capacity * sizeof(float));
        }
        hdlm_sgemm_packed(rows, ln, d, &cache->head, m->p.head_b, shift, cache->out, V);
    }
    return 0;
}

// The DDiT model on the CPU (method §7): configuration, tensor table, flat buffers, initialisation and the
// forward/backward driver that strings the layers of src/model/layer_*.c together.
#include "hdlm/model.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

#include "hdlm/common.h"
#include "hdlm/diffusion.h"
#include "hdlm/rng.h"
#include "model/layers.h"

// Opt-in profile (environment HDLM_PROFILE=1, read at hdlm_model_create): wall seconds per layer kind, forward and
// backward, printed to stderr after each backward (or each inference forward). Off, it costs one branch per layer.
typedef enum {
    PROF_EMBED, PROF_NORM, PROF_LINEAR, PROF_ROTARY, PROF_ATTENTION, PROF_GELU, PROF_RESIDUAL, PROF_ADALN, PROF_HEAD,
    PROF_KINDS
} prof_kind;
static const char *const prof_names[PROF_KINDS] = {"embed", "layernorm", "linear", "rotary", "attention",
                                                   "gelu", "residual+dropout", "adaln+sigma", "head"};
enum { PROF_FWD = 0, PROF_BWD = 1 };
#define PROFILED(acts, dir, kind, call)                                                                                \
    do {                                                                                                               \
        double prof_t0_ = (acts)->profile ? omp_get_wtime() : 0.0;                                                    \
        call;                                                                                                          \
        if ((acts)->profile) (acts)->prof[dir][kind] += omp_get_wtime() - prof_t0_;                                   \
    } while (0)

hdlm_model_config hdlm_model_config_ddit_small(hdlm_family family) {
    hdlm_model_config c = {
        .family = family,
        .width = 768,
        .n_layers = 12,
        .n_heads = 12,
        .mlp_ratio = 4,
        .cond_dim = 128,
        .vocab = 50258,
        .max_length = 1024,
        .dropout = 0.1f,
        .gamma = 0.01f,
        .rotary = HDLM_ROTARY_EXACT,
    };
    return c;
}

const char *hdlm_family_name(hdlm_family family) { return family == HDLM_FAMILY_GAMMA ? "gamma" : "epsilon"; }

int hdlm_model_config_check(const hdlm_model_config *c) {
    HDLM_CHECK(c->family == HDLM_FAMILY_EPSILON || c->family == HDLM_FAMILY_GAMMA,
               "model config: field 'family' must be epsilon or gamma, got %d", (int)c->family);
    HDLM_CHECK(c->width > 0 && c->width <= 65536, "model config: field 'width' must be in [1, 65536], got %d",
               c->width);
    HDLM_CHECK(c->n_layers > 0 && c->n_layers <= 1024, "model config: field 'n_layers' must be in [1, 1024], got %d",
               c->n_layers);
    HDLM_CHECK(c->n_heads > 0, "model config: field 'n_heads' must be positive, got %d", c->n_heads);
    HDLM_CHECK(c->width % c->n_heads == 0, "model config: field 'n_heads' (%d) must divide field 'width' (%d)",
               c->n_heads, c->width);
    HDLM_CHECK((c->width / c->n_heads) % 2 == 0,
               "model config: head dimension width/n_heads = %d must be even for rotary (fields 'width', 'n_heads')",
               c->width / c->n_heads);
    HDLM_CHECK(c->mlp_ratio > 0 && c->mlp_ratio <= 64, "model config: field 'mlp_ratio' must be in [1, 64], got %d",
               c->mlp_ratio);
    HDLM_CHECK(c->vocab >= 2 && c->vocab <= (1 << 24),
               "model config: field 'vocab' must be in [2, 16777216] (the last id is MASK), got %d", c->vocab);
    HDLM_CHECK(c->max_length > 0 && c->max_length <= 65504,
               "model config: field 'max_length' must be in [1, 65504], got %d", c->max_length);
    HDLM_CHECK(c->dropout >= 0.0f && c->dropout < 1.0f, "model config: field 'dropout' must be in [0, 1), got %g",
               (double)c->dropout);
    HDLM_CHECK(c->rotary == HDLM_ROTARY_EXACT || c->rotary == HDLM_ROTARY_REFERENCE,
               "model config: field 'rotary' must be exact or reference, got %d", (int)c->rotary);
    if (c->family == HDLM_FAMILY_GAMMA) {
        HDLM_CHECK(c->cond_dim > 0 && c->cond_dim <= 65536,
                   "model config: field 'cond_dim' must be in [1, 65536] for the gamma family, got %d", c->cond_dim);
        HDLM_CHECK(c->gamma >= 0.0f && c->gamma <= 1.0f, "model config: field 'gamma' must be in [0, 1], got %g",
                   (double)c->gamma);
    }
    return 0;
}

// ---- tensor table ----------------------------------------------------------------------------------------------

typedef struct {
    hdlm_tensor *items;
    int count, cap;
    size_t n_params, n_buffer;
} table_builder;

static void table_add(table_builder *t, const char *name, int rows, int cols, hdlm_init_rule init, int fan_in,
                      bool trainable) {
    if (t->count == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 64;
        t->items = hdlm_realloc(t->items, (size_t)t->cap * sizeof(hdlm_tensor));
    }
    hdlm_tensor *x = &t->items[t->count++];
    memset(x, 0, sizeof *x);
    snprintf(x->name, sizeof x->name, "%s", name);
    x->ndim = cols > 0 ? 2 : 1;
    x->shape[0] = rows;
    x->shape[1] = cols > 0 ? cols : 0;
    x->numel = (size_t)rows * (size_t)(cols > 0 ? cols : 1);
    x->init = init;
    x->fan_in = fan_in;
    x->trainable = trainable;
    x->decay = trainable;
    if (trainable) t->n_params += x->numel;
    else t->n_buffer += x->numel;
}

int hdlm_model_tensor_table(const hdlm_model_config *c, hdlm_tensor **tensors, int *n_tensors, size_t *n_params,
                            size_t *n_buffer) {
    HDLM_TRY(hdlm_model_config_check(c));
    int d = c->width, f = c->mlp_ratio * c->width, cd = c->cond_dim, hd = c->width / c->n_heads;
    bool gamma = c->family == HDLM_FAMILY_GAMMA;
    table_builder t = {0};
    char name[64];
    // Reference state-dict order (method §7.1): embedding, σ map, rotary buffer, blocks, output layer.
    table_add(&t, "vocab_embed.embedding", c->vocab, d, HDLM_INIT_UNIFORM_FAN_IN, d, true);
    if (gamma) {
        table_add(&t, "sigma_map.mlp.0.weight", cd, HDLM_SIGMA_FREQ_DIM, HDLM_INIT_UNIFORM_FAN_IN,
                  HDLM_SIGMA_FREQ_DIM, true);
        table_add(&t, "sigma_map.mlp.0.bias", cd, 0, HDLM_INIT_UNIFORM_FAN_IN, HDLM_SIGMA_FREQ_DIM, true);
        table_add(&t, "sigma_map.mlp.2.weight", cd, cd, HDLM_INIT_UNIFORM_FAN_IN, cd, true);
        table_add(&t, "sigma_map.mlp.2.bias", cd, 0, HDLM_INIT_UNIFORM_FAN_IN, cd, true);
    }
    table_add(&t, "rotary_emb.inv_freq", hd / 2, 0, HDLM_INIT_INV_FREQ, 0, false);
    for (int l = 0; l < c->n_layers; l++) {
#define BLOCK_TENSOR(suffix, rows, cols, init, fan_in)                                                                 \
    snprintf(name, sizeof name, "blocks.%d.%s", l, suffix);                                                            \
    table_add(&t, name, rows, cols, init, fan_in, true)
        BLOCK_TENSOR("norm1.weight", d, 0, HDLM_INIT_ONE, 0);
        BLOCK_TENSOR("attn_qkv.weight", 3 * d, d, HDLM_INIT_UNIFORM_FAN_IN, d);
        BLOCK_TENSOR("attn_out.weight", d, d, HDLM_INIT_UNIFORM_FAN_IN, d);
        BLOCK_TENSOR("norm2.weight", d, 0, HDLM_INIT_ONE, 0);
        BLOCK_TENSOR("mlp.0.weight", f, d, HDLM_INIT_UNIFORM_FAN_IN, d);
        BLOCK_TENSOR("mlp.0.bias", f, 0, HDLM_INIT_UNIFORM_FAN_IN, d);
        BLOCK_TENSOR("mlp.2.weight", d, f, HDLM_INIT_UNIFORM_FAN_IN, f);
        BLOCK_TENSOR("mlp.2.bias", d, 0, HDLM_INIT_UNIFORM_FAN_IN, f);
        if (gamma) {
            BLOCK_TENSOR("adaLN_modulation.weight", 6 * d, cd, HDLM_INIT_ZERO, cd);
            BLOCK_TENSOR("adaLN_modulation.bias", 6 * d, 0, HDLM_INIT_ZERO, cd);
        }
#undef BLOCK_TENSOR
    }
    table_add(&t, "output_layer.norm_final.weight", d, 0, HDLM_INIT_ONE, 0, true);
    table_add(&t, "output_layer.linear.weight", c->vocab, d, HDLM_INIT_ZERO, d, true);
    table_add(&t, "output_layer.linear.bias", c->vocab, 0, HDLM_INIT_ZERO, d, true);
    // Offsets: parameters first (in table order), buffers after them, so gradients need only n_params floats.
    size_t param_off = 0, buffer_off = t.n_params;
    for (int i = 0; i < t.count; i++) {
        hdlm_tensor *x = &t.items[i];
        if (x->trainable) {
            x->offset = param_off;
            param_off += x->numel;
        } else {
            x->offset = buffer_off;
            buffer_off += x->numel;
        }
    }
    *tensors = t.items;
    *n_tensors = t.count;
    *n_params = t.n_params;
    *n_buffer = t.n_buffer;
    return 0;
}

const hdlm_tensor *hdlm_model_find_tensor(const hdlm_model *m, const char *name) {
    for (int i = 0; i < m->n_tensors; i++)
        if (strcmp(m->tensors[i].name, name) == 0) return &m->tensors[i];
    return NULL;
}

size_t hdlm_model_embedding_params(const hdlm_model *m) { return (size_t)m->config.vocab * m->config.width; }

// Views of `base` (params or grads) by name; buffers only when with_buffers.
static void model_bind_views(hdlm_model *m, hdlm_model_views *v, float *base, bool with_buffers) {
    char name[64];
#define VIEW(name_str)                                                                                                 \
    (hdlm_model_find_tensor(m, (name_str)) ? base + hdlm_model_find_tensor(m, (name_str))->offset : NULL)
    v->embed = VIEW("vocab_embed.embedding");
    v->sigma_w1 = VIEW("sigma_map.mlp.0.weight");
    v->sigma_b1 = VIEW("sigma_map.mlp.0.bias");
    v->sigma_w2 = VIEW("sigma_map.mlp.2.weight");
    v->sigma_b2 = VIEW("sigma_map.mlp.2.bias");
    v->inv_freq = with_buffers ? VIEW("rotary_emb.inv_freq") : NULL;
    v->blocks = hdlm_calloc((size_t)m->config.n_layers, sizeof(hdlm_block_views));
    for (int l = 0; l < m->config.n_layers; l++) {
        hdlm_block_views *b = &v->blocks[l];
#define BLOCK_VIEW(field, suffix)                                                                                      \
    snprintf(name, sizeof name, "blocks.%d.%s", l, suffix);                                                            \
    b->field = VIEW(name)
        BLOCK_VIEW(norm1, "norm1.weight");
        BLOCK_VIEW(qkv, "attn_qkv.weight");
        BLOCK_VIEW(attn_out, "attn_out.weight");
        BLOCK_VIEW(norm2, "norm2.weight");
        BLOCK_VIEW(fc1_w, "mlp.0.weight");
        BLOCK_VIEW(fc1_b, "mlp.0.bias");
        BLOCK_VIEW(fc2_w, "mlp.2.weight");
        BLOCK_VIEW(fc2_b, "mlp.2.bias");
        BLOCK_VIEW(ada_w, "adaLN_modulation.weight");
        BLOCK_VIEW(ada_b, "adaLN_modulation.bias");
#undef BLOCK_VIEW
    }
    v->norm_final = VIEW("output_layer.norm_final.weight");
    v->head_w = VIEW("output_layer.linear.weight");
    v->head_b = VIEW("output_layer.linear.bias");
#undef VIEW
}

double hdlm_model_flops_per_token(const hdlm_model *m, int length) {
    double non_embedding = (double)(m->n_params - hdlm_model_embedding_params(m));
    return 6.0 * non_embedding + 12.0 * m->config.n_layers * m->config.width * (double)length;
}

// ---- activations -----------------------------------------------------------------------------------------------

// Everything the backward pass needs from the forward pass, and the backward scratch. Per-layer arrays hold
// n_layers consecutive [N, ·] slices. Sized for `capacity` tokens, grown when a forward needs more.
struct hdlm_model_acts {
    int capacity;
    int head_from;   // rows of each sequence before it get no output (hdlm_model_input.head_from)
    // Training (hdlm_model_forward_loss): the output layer runs on the head_rows rows of head_list alone (those with a
    // loss weight, in order), its outputs and their gradients compacted; head_x holds their final-norm outputs.
    // head_rows = -1: every row.
    int head_rows, *head_list;
    float *head_x;
    uint32_t *tokens;
    float *sigma, *mix;
    hdlm_attn_mask mask;
    float dropout;
    uint64_t key;
    float *cos_t, *sin_t;
    float *freq, *sig_h1, *sig_s1, *sig_h2, *cond;                                 // γ
    float *h;                                                                      // [n_layers + 1][N, d]
    float *ln1, *ln1_mean, *ln1_rstd, *mod, *a1, *qkv, *att, *lse, *att_y, *h_mid; // per layer
    float *ln2, *ln2_mean, *ln2_rstd, *a2, *fc1, *gelu, *mlp_y;                   // per layer
    float *lnf, *lnf_mean, *lnf_rstd;
    uint32_t *keep;                               // attention dropout's keep bits, keep_words per layer
    size_t keep_words, keep_capacity;
    float *dh, *da, *dln, *dtmp, *datt, *dqkv, *dfc, *dmod, *dcond, *dc1, *dc2;   // backward scratch
    bool profile;                                 // HDLM_PROFILE=1
    double prof[2][PROF_KINDS], prof_start, prof_fwd_end, prof_loss;
};

static void acts_release(hdlm_model_acts *a) {
    float **all[] = {&a->sigma, &a->mix, &a->freq, &a->sig_h1, &a->sig_s1, &a->sig_h2, &a->cond, &a->h, &a->ln1,
                     &a->ln1_mean, &a->ln1_rstd, &a->mod, &a->a1, &a->qkv, &a->att, &a->lse, &a->att_y, &a->h_mid,
                     &a->ln2, &a->ln2_mean, &a->ln2_rstd, &a->a2, &a->fc1, &a->gelu, &a->mlp_y, &a->lnf,
                     &a->lnf_mean, &a->lnf_rstd, &a->dh, &a->da, &a->dln, &a->dtmp, &a->datt, &a->dqkv, &a->dfc,
                     &a->dmod, &a->dcond, &a->dc1, &a->dc2, &a->head_x};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        free(*all[i]);
        *all[i] = NULL;
    }
    free(a->tokens);
    free(a->head_list);
    free(a->keep);
    a->tokens = NULL;
    a->head_list = NULL;
    a->keep = NULL;
    a->keep_capacity = 0;
}

static float *alloc_floats(size_t n) { return hdlm_malloc((n ? n : 1) * sizeof(float)); }

static void acts_reserve(hdlm_model *m, int n) {
    hdlm_model_acts *a = m->acts;
    if (n <= a->capacity) return;
    acts_release(a);
    const hdlm_model_config *c = &m->config;
    size_t N = (size_t)n, d = (size_t)c->width, f = (size_t)c->mlp_ratio * d, nl = (size_t)c->n_layers;
    size_t cd = (size_t)c->cond_dim;
    bool gamma = c->family == HDLM_FAMILY_GAMMA;
    a->tokens = hdlm_malloc(N * sizeof(uint32_t));
    a->sigma = alloc_floats(N);
    a->mix = alloc_floats(N);
    if (gamma) {
        a->freq = alloc_floats(N * HDLM_SIGMA_FREQ_DIM);
        a->sig_h1 = alloc_floats(N * cd);
        a->sig_s1 = alloc_floats(N * cd);
        a->sig_h2 = alloc_floats(N * cd);
        a->cond = alloc_floats(N * cd);
        a->mod = alloc_floats(nl * N * 6 * d);
        a->a1 = alloc_floats(nl * N * d);
        a->a2 = alloc_floats(nl * N * d);
        a->dmod = alloc_floats(N * 6 * d);
        a->dcond = alloc_floats(N * cd);
        a->dc1 = alloc_floats(N * cd);
        a->dc2 = alloc_floats(N * cd);
    }
    a->h = alloc_floats((nl + 1) * N * d);
    a->ln1 = alloc_floats(nl * N * d);
    a->ln1_mean = alloc_floats(nl * N);
    a->ln1_rstd = alloc_floats(nl * N);
    a->qkv = alloc_floats(nl * N * 3 * d);
    a->att = alloc_floats(nl * N * d);
    a->lse = alloc_floats(nl * N * (size_t)c->n_heads);
    a->att_y = alloc_floats(nl * N * d);
    a->h_mid = alloc_floats(nl * N * d);
    a->ln2 = alloc_floats(nl * N * d);
    a->ln2_mean = alloc_floats(nl * N);
    a->ln2_rstd = alloc_floats(nl * N);
    a->fc1 = alloc_floats(nl * N * f);
    a->gelu = alloc_floats(nl * N * f);
    a->mlp_y = alloc_floats(nl * N * d);
    a->lnf = alloc_floats(N * d);
    a->lnf_mean = alloc_floats(N);
    a->lnf_rstd = alloc_floats(N);
    a->head_list = hdlm_malloc(N * sizeof(int));
    a->head_x = alloc_floats(N * d);
    a->dh = alloc_floats(N * d);
    a->da = alloc_floats(N * d);
    a->dln = alloc_floats(N * d);
    a->dtmp = alloc_floats(N * d);
    a->datt = alloc_floats(N * d);
    a->dqkv = alloc_floats(N * 3 * d);
    a->dfc = alloc_floats(N * f);
    free(m->out);
    m->out = alloc_floats(N * (size_t)c->vocab);
    a->capacity = n;
}

// ---- create / init / free --------------------------------------------------------------------------------------

int hdlm_model_create(hdlm_model **out, const hdlm_model_config *config) {
    hdlm_model *m = hdlm_calloc(1, sizeof *m);
    if (hdlm_model_tensor_table(config, &m->tensors, &m->n_tensors, &m->n_params, &m->n_buffer) != 0) {
        free(m);
        return -1;
    }
    m->config = *config;
    m->params = alloc_floats(m->n_params + m->n_buffer);
    m->grads = alloc_floats(m->n_params);
    model_bind_views(m, &m->p, m->params, true);
    model_bind_views(m, &m->g, m->grads, false);
    m->acts = hdlm_calloc(1, sizeof(hdlm_model_acts));
    const char *profile = getenv("HDLM_PROFILE");
    m->acts->profile = profile && *profile && strcmp(profile, "0") != 0;
    // rows of the longest forward: the two-copy layout's 2 · max_length (method §3.3)
    size_t table = 2 * (size_t)config->max_length * (config->width / config->n_heads / 2);
    m->acts->cos_t = alloc_floats(table);
    m->acts->sin_t = alloc_floats(table);
    hdlm_model_init(m, 0);
    *out = m;
    return 0;
}

void hdlm_model_free(hdlm_model *m) {
    if (!m) return;
    acts_release(m->acts);
    free(m->acts->cos_t);
    free(m->acts->sin_t);
    free(m->acts);
    free(m->p.blocks);
    free(m->g.blocks);
    free(m->params);
    free(m->grads);
    free(m->tensors);
    free(m->out);
    free(m);
}

// Fills x[0..n) with U(−bound, bound) from the counter-based stream `key` (element i uses the i-th uniform).
static void fill_uniform(float *x, size_t n, uint64_t key, float bound) {
#pragma omp parallel for schedule(static)
    for (size_t blk = 0; blk < (n + 3) / 4; blk++) {
        uint32_t words[4];
        hdlm_philox4x32(key, 1, blk, words);
        for (size_t k = 0; k < 4 && 4 * blk + k < n; k++) {
            float u = (float)(words[k] >> 8) * 0x1.0p-24f;
            x[4 * blk + k] = (2.0f * u - 1.0f) * bound;
        }
    }
}

void hdlm_model_init(hdlm_model *m, uint64_t seed) {
    for (int i = 0; i < m->n_tensors; i++) {
        const hdlm_tensor *t = &m->tensors[i];
        float *x = m->params + t->offset;
        switch (t->init) {
        case HDLM_INIT_UNIFORM_FAN_IN:
            fill_uniform(x, t->numel, hdlm_rng_key(seed, (uint64_t)i, 0, HDLM_RNG_INIT),
                         1.0f / sqrtf((float)t->fan_in));
            break;
        case HDLM_INIT_ZERO: memset(x, 0, t->numel * sizeof(float)); break;
        case HDLM_INIT_ONE:
            for (size_t k = 0; k < t->numel; k++) x[k] = 1.0f;
            break;
        case HDLM_INIT_INV_FREQ: hdlm_rotary_inv_freq(x, 2 * (int)t->numel); break;
        }
    }
    hdlm_model_zero_grad(m);
}

void hdlm_model_zero_grad(hdlm_model *m) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < m->n_params; i++) m->grads[i] = 0.0f;
}

// Tiny gradients (probabilities ~1e-30 times loss gradients ~1e-9) fall into the denormal range, where x86
// arithmetic, GEMM kernels included, runs ~100x slower. Flush them to zero (FTZ/DAZ) on every OpenMP thread (GEMMs run
// on the same threads); the values involved are below 1e-38, far under fp32 resolution of anything they are added to.
static void model_flush_denormals(void) {
#if defined(__SSE__)
#pragma omp parallel
    _mm_setcsr(_mm_getcsr() | 0x8040);
#endif
}

// ---- profile (HDLM_PROFILE=1) ----------------------------------------------------------------------------------

static void profile_begin(hdlm_model_acts *a) {
    memset(a->prof, 0, sizeof a->prof);
    a->prof_loss = 0.0;
    a->prof_start = omp_get_wtime();
}

// One table per step on stderr: seconds per layer kind, forward and backward, its share of the step and, for the GEMM
// kinds, GFLOP/s by the benchmark's count (block linears 2·N·params, head 2·N·d·V, attention 4·N·L·d per layer
// forward; twice each backward), so BLIS's own rate and the non-GEMM share can be read off the same run.
static void profile_report(const hdlm_model *m, bool backward) {
    const hdlm_model_acts *a = m->acts;
    const hdlm_model_config *c = &m->config;
    double end = omp_get_wtime(), step = end - a->prof_start;
    double fwd = a->prof_fwd_end - a->prof_start, bwd = backward ? end - a->prof_fwd_end - a->prof_loss : 0.0;
    double n = (double)m->batch * m->length, d = c->width, f = (double)c->mlp_ratio * c->width;
    double flops[PROF_KINDS] = {0};
    flops[PROF_LINEAR] = 2.0 * n * c->n_layers * (4.0 * d * d + 2.0 * d * f);
    flops[PROF_HEAD] = 2.0 * (a->head_rows >= 0 ? a->head_rows : n) * d * c->vocab;   // the rows it ran on
    flops[PROF_ATTENTION] = 4.0 * n * m->length * d * c->n_layers;
    fprintf(stderr,
            "hdlm profile %dx%d: step %.3f s = forward %.3f + between forward and backward (loss) %.3f + backward "
            "%.3f\n  %-17s %9s %9s %7s %9s\n",
            m->batch, m->length, step, fwd, a->prof_loss, bwd, "kind", "forward", "backward", "share", "GFLOP/s");
    double timed = 0.0;
    for (int k = 0; k < PROF_KINDS; k++) {
        double t = a->prof[PROF_FWD][k] + a->prof[PROF_BWD][k];
        timed += t;
        if (t == 0.0) continue;
        fprintf(stderr, "  %-17s %9.4f %9.4f %6.1f%%", prof_names[k], a->prof[PROF_FWD][k], a->prof[PROF_BWD][k],
                100.0 * t / step);
        if (flops[k] > 0.0) fprintf(stderr, " %9.1f", flops[k] * (backward ? 3.0 : 1.0) / t * 1e-9);
        fputc('\n', stderr);
    }
    fprintf(stderr, "  %-17s %19s %6.1f%%\n", "loss (caller)", "", 100.0 * a->prof_loss / step);
    fprintf(stderr, "  %-17s %19s %6.1f%%\n", "untimed rest", "", 100.0 * (step - a->prof_loss - timed) / step);
}

// ---- forward ---------------------------------------------------------------------------------------------------

int hdlm_model_check_input(const hdlm_model_config *c, const hdlm_model_input *in, hdlm_attn_mask *mask) {
    HDLM_CHECK(in->batch > 0, "model input: batch must be positive, got %d", in->batch);
    bool two_copy = in->mask && in->mask->half > 0;
    HDLM_CHECK(in->length > 0 && in->length <= (two_copy ? 2 : 1) * c->max_length,
               "model input: length must be in [1, %smax_length = %d], got %d", two_copy ? "2 × " : "",
               c->max_length, in->length);
    HDLM_CHECK((long long)in->batch * in->length <= (1 << 24),
               "model input: batch × length = %lld tokens, at most 16777216 per forward",
               (long long)in->batch * in->length);
    HDLM_CHECK(in->tokens != NULL, "model input: tokens missing");
    size_t n = (size_t)in->batch * in->length;
    for (size_t i = 0; i < n; i++)
        HDLM_CHECK(in->tokens[i] < (uint32_t)c->vocab, "model input: token %zu has id %u, vocabulary is %d", i,
                   in->tokens[i], c->vocab);
    if (c->family == HDLM_FAMILY_GAMMA) {
        HDLM_CHECK(in->sigma != NULL, "model input: the gamma family needs sigma per token");
        for (size_t i = 0; i < n; i++)
            HDLM_CHECK(in->sigma[i] > 0.0f && isfinite(in->sigma[i]),
                       "model input: sigma of token %zu must be positive and finite, got %g", i,
                       (double)in->sigma[i]);
    }
    *mask = in->mask ? *in->mask : hdlm_mask_full(in->length);
    HDLM_CHECK(mask->length == in->length, "model input: attention mask length %d differs from the length %d",
               mask->length, in->length);
    HDLM_CHECK(in->head_from >= 0 && in->head_from < in->length,
               "model input: head_from = %d outside [0, length = %d)", in->head_from, in->length);
    HDLM_CHECK(!in->head_rows || (!in->training && in->head_from == 0),
               "model input: head_rows is for inference, without head_from");
    HDLM_CHECK(!in->head_packed || (!in->training && in->head_packed->n == c->vocab && in->head_packed->k == c->width),
               "model input: head_packed is for inference, a [vocab %d, width %d] weight (got [%d, %d])", c->vocab,
               c->width, in->head_packed->n, in->head_packed->k);
    HDLM_CHECK(mask->n_set >= 0 && mask->n_set <= mask->length && mask->a_end >= mask->n_set - 1 &&
                   mask->a_end < mask->length && mask->block_size > 0,
               "model input: attention mask out of range (n_set %d, a_end %d, block_size %d, length %d)",
               mask->n_set, mask->a_end, mask->block_size, mask->length);
    HDLM_CHECK(mask->half == 0 || (2 * mask->half == mask->length && mask->n_set == mask->half &&
                                   mask->a_end == mask->length - 1 && mask->half % mask->block_size == 0),
               "model input: two-copy mask inconsistent (half %d, length %d, n_set %d, block_size %d)", mask->half,
               mask->length, mask->n_set, mask->block_size);
    return 0;
}

uint64_t hdlm_model_dropout_key(uint64_t step_key, int layer, hdlm_dropout_site site) {
    return hdlm_rng_key(step_key, (uint64_t)layer, (uint64_t)site, HDLM_RNG_DROPOUT);
}

static uint32_t *layer_keep(hdlm_model_acts *a, int layer) {
    return a->keep_words ? a->keep + (size_t)layer * a->keep_words : NULL;
}

static uint64_t site_key(const hdlm_model *m, int layer, hdlm_dropout_site site) {
    return hdlm_model_dropout_key(m->acts->key, layer, site);
}

// out[rows, V] = x·W_headᵀ + b_head, with the caller's packed weight when given (the same bits).
static void head_forward(const hdlm_model *m, const hdlm_model_input *in, float *out, const float *x, int rows) {
    if (in->head_packed) hdlm_linear_forward_packed(out, x, in->head_packed, m->p.head_b, rows);
    else hdlm_linear_forward(out, x, m->p.head_w, m->p.head_b, rows, m->config.width, m->config.vocab);
}

// row_weight (ε training, hdlm_model_forward_loss; NULL: none): the output layer runs on the rows with a nonzero weight
// alone, its outputs compacted (m->acts->head_rows, head_list) unless every row has one.
static int model_forward(hdlm_model *m, const hdlm_model_input *in, const float *row_weight) {
    hdlm_attn_mask mask;
    HDLM_TRY(hdlm_model_check_input(&m->config, in, &mask));
    const hdlm_model_config *c = &m->config;
    int B = in->batch, L = in->length, N = B * L;
    int d = c->width, f = c->mlp_ratio * d, H = c->n_heads, hd = d / H, cd = c->cond_dim, V = c->vocab;
    bool gamma = c->family == HDLM_FAMILY_GAMMA;
    acts_reserve(m, N);
    model_flush_denormals();
    hdlm_model_acts *a = m->acts;
    if (a->profile) profile_begin(a);
    m->batch = B;
    m->length = L;
    memcpy(a->tokens, in->tokens, (size_t)N * sizeof(uint32_t));
    a->mask = mask;
    a->dropout = in->training ? c->dropout : 0.0f;
    a->head_from = in->head_from;
    a->key = in->dropout_key;
    a->keep_words = a->dropout > 0.0f ? hdlm_attention_keep_words(B, H, L) : 0;
    if (a->keep_words * (size_t)c->n_layers > a->keep_capacity) {   // zeroed: bits never drawn are read as 0
        free(a->keep);
        a->keep_capacity = a->keep_words * (size_t)c->n_layers;
        a->keep = hdlm_calloc(a->keep_capacity, sizeof(uint32_t));
    }
    // The rows the output layer runs on, listed in head_list (inference's head_rows or the loss's weighted rows);
    // -1: every row. a->head_rows keeps the training case, whose outputs stay compacted for the loss and backward.
    int n_head = -1;
    if (in->head_rows || row_weight) {
        HDLM_ASSERT(!row_weight || !gamma, "compacted output rows are for the ε family's training loss");
        n_head = 0;
        for (int r = 0; r < N; r++)
            if (in->head_rows ? in->head_rows[r] != 0 : row_weight[r] != 0.0f) a->head_list[n_head++] = r;
        if (!in->head_rows && n_head == N) n_head = -1;
    }
    a->head_rows = in->head_rows ? -1 : n_head;
    hdlm_rotary_tables_of_mask(a->cos_t, a->sin_t, m->p.inv_freq, &a->mask, hd, c->rotary);

    size_t Nd = (size_t)N * d;
    if (gamma) {
        memcpy(a->sigma, in->sigma, (size_t)N * sizeof(float));
        for (int r = 0; r < N; r++) a->mix[r] = expf(-c->gamma * a->sigma[r]);
        PROFILED(a, PROF_FWD, PROF_ADALN, hdlm_sigma_sinusoid(a->freq, a->sigma, N, HDLM_SIGMA_FREQ_DIM));
        PROFILED(a, PROF_FWD, PROF_ADALN,
                 hdlm_linear_forward(a->sig_h1, a->freq, m->p.sigma_w1, m->p.sigma_b1, N, HDLM_SIGMA_FREQ_DIM, cd));
        PROFILED(a, PROF_FWD, PROF_ADALN, hdlm_silu_forward(a->sig_s1, a->sig_h1, (size_t)N * cd));
        PROFILED(a, PROF_FWD, PROF_ADALN,
                 hdlm_linear_forward(a->sig_h2, a->sig_s1, m->p.sigma_w2, m->p.sigma_b2, N, cd, cd));
        PROFILED(a, PROF_FWD, PROF_ADALN, hdlm_silu_forward(a->cond, a->sig_h2, (size_t)N * cd));
    }
    PROFILED(a, PROF_FWD, PROF_EMBED,
             hdlm_embedding_forward(a->h, m->p.embed, a->tokens, gamma ? a->mix : NULL, (uint32_t)(V - 1), N, d));

    for (int l = 0; l < c->n_layers; l++) {
        const hdlm_block_views *w = &m->p.blocks[l];
        float *h_in = a->h + l * Nd, *h_out = a->h + (l + 1) * Nd;
        float *ln1 = a->ln1 + l * Nd, *ln2 = a->ln2 + l * Nd, *h_mid = a->h_mid + l * Nd;
        float *qkv = a->qkv + l * 3 * Nd, *att = a->att + l * Nd, *att_y = a->att_y + l * Nd;
        float *fc1 = a->fc1 + l * (size_t)N * f, *gelu = a->gelu + l * (size_t)N * f, *mlp_y = a->mlp_y + l * Nd;
        float *mod = gamma ? a->mod + l * 6 * Nd : NULL;
        float *a1 = gamma ? a->a1 + l * Nd : ln1, *a2 = gamma ? a->a2 + l * Nd : ln2;

        PROFILED(a, PROF_FWD, PROF_NORM,
                 hdlm_layernorm_forward(ln1, a->ln1_mean + (size_t)l * N, a->ln1_rstd + (size_t)l * N, h_in, w->norm1,
                                        N, d));
        if (gamma) {
            // (shift_a | scale_a | gate_a | shift_m | scale_m | gate_m) per token (method §7.1)
            PROFILED(a, PROF_FWD, PROF_ADALN, hdlm_linear_forward(mod, a->cond, w->ada_w, w->ada_b, N, cd, 6 * d));
            PROFILED(a, PROF_FWD, PROF_ADALN, hdlm_modulate_forward(a1, ln1, mod, mod + d, 6 * d, N, d));
        }
        PROFILED(a, PROF_FWD, PROF_LINEAR, hdlm_linear_forward(qkv, a1, w->qkv, NULL, N, d, 3 * d));
        PROFILED(a, PROF_FWD, PROF_ROTARY, hdlm_rotary_forward(qkv, a->cos_t, a->sin_t, B, L, H, hd));
        PROFILED(a, PROF_FWD, PROF_ATTENTION,
                 hdlm_attention_forward(att, a->lse + (size_t)l * N * H, layer_keep(a, l), qkv, &mask, B,
                                        L, H, hd, a->dropout, site_key(m, l, HDLM_DROPOUT_ATTN_PROBS)));
        PROFILED(a, PROF_FWD, PROF_LINEAR, hdlm_linear_forward(att_y, att, w->attn_out, NULL, N, d, d));
        PROFILED(a, PROF_FWD, PROF_RESIDUAL,
                 hdlm_residual_forward(h_mid, h_in, att_y, gamma ? mod + 2 * d : NULL, 6 * d, N, d, a->dropout,
                                       site_key(m, l, HDLM_DROPOUT_ATTN_RESIDUAL)));

        PROFILED(a, PROF_FWD, PROF_NORM,
                 hdlm_layernorm_forward(ln2, a->ln2_mean + (size_t)l * N, a->ln2_rstd + (size_t)l * N, h_mid, w->norm2,
                                        N, d));
        if (gamma)
            PROFILED(a, PROF_FWD, PROF_ADALN, hdlm_modulate_forward(a2, ln2, mod + 3 * d, mod + 4 * d, 6 * d, N, d));
        PROFILED(a, PROF_FWD, PROF_LINEAR, hdlm_linear_forward(fc1, a2, w->fc1_w, w->fc1_b, N, d, f));
        PROFILED(a, PROF_FWD, PROF_GELU, hdlm_gelu_forward(gelu, fc1, (size_t)N * f));
        PROFILED(a, PROF_FWD, PROF_LINEAR, hdlm_linear_forward(mlp_y, gelu, w->fc2_w, w->fc2_b, N, f, d));
        PROFILED(a, PROF_FWD, PROF_RESIDUAL,
                 hdlm_residual_forward(h_out, h_mid, mlp_y, gamma ? mod + 5 * d : NULL, 6 * d, N, d, a->dropout,
                                       site_key(m, l, HDLM_DROPOUT_MLP_RESIDUAL)));
    }

    PROFILED(a, PROF_FWD, PROF_NORM,
             hdlm_layernorm_forward(a->lnf, a->lnf_mean, a->lnf_rstd, a->h + (size_t)c->n_layers * Nd, m->p.norm_final,
                                    N, d));
    if (n_head >= 0) {   // gather the rows, one product
        for (int k = 0; k < n_head; k++)
            memcpy(a->head_x + (size_t)k * d, a->lnf + (size_t)a->head_list[k] * d, (size_t)d * sizeof(float));
        if (n_head && in->head_rows && in->head_packed) {   // inference: each output written to its own row
            float **rows = hdlm_malloc((size_t)n_head * sizeof *rows);
            for (int k = 0; k < n_head; k++) rows[k] = m->out + (size_t)a->head_list[k] * V;
            PROFILED(a, PROF_FWD, PROF_HEAD,
                     hdlm_sgemm_packed_rows(n_head, a->head_x, d, in->head_packed, m->p.head_b, NULL, rows));
            free(rows);
        } else if (n_head) {   // into the first rows of m->out (training keeps them there)
            PROFILED(a, PROF_FWD, PROF_HEAD, head_forward(m, in, m->out, a->head_x, n_head));
            // Inference: each output to its own row, the last first (row head_list[k] >= k: nothing unmoved is hit).
            if (in->head_rows)
                for (int k = n_head - 1; k >= 0; k--)
                    if (a->head_list[k] != k)
                        memcpy(m->out + (size_t)a->head_list[k] * V, m->out + (size_t)k * V,
                               (size_t)V * sizeof(float));
        }
    } else if (a->head_from == 0) {
        PROFILED(a, PROF_FWD, PROF_HEAD, head_forward(m, in, m->out, a->lnf, N));
    } else {
        int skip = a->head_from, rows = L - skip;
        for (int b = 0; b < B; b++) {
            memset(m->out + (size_t)b * L * V, 0, (size_t)skip * V * sizeof(float));
            size_t r0 = (size_t)b * L + skip;
            PROFILED(a, PROF_FWD, PROF_HEAD, head_forward(m, in, m->out + r0 * V, a->lnf + r0 * d, rows));
        }
    }
    if (gamma) {
#pragma omp parallel for schedule(static)
        for (int r = 0; r < N; r++) {
            if (r % L < a->head_from || (in->head_rows && !in->head_rows[r])) continue;   // no output there
            float shift = (float)hdlm_gamma_log_score_shift(a->sigma[r], V);   // method §5.4 step 1
            float *o = m->out + (size_t)r * V;
            for (int v = 0; v < V; v++) o[v] += shift;
        }
    }
    if (a->profile) {
        a->prof_fwd_end = omp_get_wtime();
        if (!in->training) profile_report(m, false);
    }
    return 0;
}

int hdlm_model_forward(hdlm_model *m, const hdlm_model_input *in) { return model_forward(m, in, NULL); }

// ---- backward --------------------------------------------------------------------------------------------------

int hdlm_model_forward_loss(hdlm_model *m, const hdlm_model_input *in, const hdlm_loss_target *target, float *dout,
                            double *loss) {
    int B = in->batch, V = m->config.vocab;
    if (!target->gamma) {
        // The output layer only for the rows with a loss weight: under MDLM's loss, BD3-LM's and ARDM's, the
        // unmasked rows weigh 0, about half of them, and the output layer is most of a small model's step.
        const hdlm_corruption *c = target->corruption;
        HDLM_CHECK(!in->head_rows, "model input: head_rows is for inference forwards, not for a loss");
        HDLM_CHECK(c->batch == B && c->length == in->length,
                   "loss target: corruption of %d x %d tokens for a micro-batch of %d x %d", c->batch, c->length, B,
                   in->length);
        HDLM_TRY(model_forward(m, in, c->weight));
        const hdlm_model_acts *a = m->acts;
        bool compact = a->head_rows >= 0;
        *loss = hdlm_corruption_loss_rows(c, target->x0, compact ? a->head_list : NULL,
                                          compact ? a->head_rows : B * in->length, m->out, V, target->softmax_width,
                                          dout);
        return 0;
    }
    HDLM_TRY(hdlm_model_forward(m, in));
    size_t LV = (size_t)in->length * V;
    float *out = m->out;
    for (int b = 0; b < B; b++) hdlm_gamma_post_process(target->steps[b], V, out + b * LV);
    *loss = hdlm_gamma_loss(target->gamma, target->steps, out, in->tokens, target->x0, B, V, dout, NULL);
    if (dout)
        for (int b = 0; b < B; b++) hdlm_gamma_post_process_backward(target->steps[b], V, dout + b * LV);
    return 0;
}

void hdlm_model_backward(hdlm_model *m, const float *dout) {
    const hdlm_model_config *c = &m->config;
    hdlm_model_acts *a = m->acts;
    HDLM_ASSERT(m->batch > 0, "hdlm_model_backward called before a forward");
    int B = m->batch, L = m->length, N = B * L;
    int d = c->width, f = c->mlp_ratio * d, H = c->n_heads, hd = d / H, cd = c->cond_dim, V = c->vocab;
    bool gamma = c->family == HDLM_FAMILY_GAMMA;
    size_t Nd = (size_t)N * d;
    if (a->profile) a->prof_loss = omp_get_wtime() - a->prof_fwd_end;
    model_flush_denormals();

    // Output layer (scale_by_sigma subtracts a constant per token: identity for the gradient).
    if (a->head_rows >= 0) {   // compacted rows: their input gradients into dtmp (scratch until the blocks), scattered
        memset(a->da, 0, Nd * sizeof(float));
        if (a->head_rows) {
            PROFILED(a, PROF_BWD, PROF_HEAD,
                     hdlm_linear_backward(a->dtmp, m->g.head_w, m->g.head_b, dout, a->head_x, m->p.head_w, a->head_rows,
                                          d, V, false));
            for (int k = 0; k < a->head_rows; k++)
                memcpy(a->da + (size_t)a->head_list[k] * d, a->dtmp + (size_t)k * d, (size_t)d * sizeof(float));
        }
    } else if (a->head_from == 0) {
        PROFILED(a, PROF_BWD, PROF_HEAD,
                 hdlm_linear_backward(a->da, m->g.head_w, m->g.head_b, dout, a->lnf, m->p.head_w, N, d, V, false));
    } else {
        int skip = a->head_from, rows = L - skip;
        for (int b = 0; b < B; b++) {
            size_t r0 = (size_t)b * L;
            memset(a->da + r0 * d, 0, (size_t)skip * d * sizeof(float));
            PROFILED(a, PROF_BWD, PROF_HEAD,
                     hdlm_linear_backward(a->da + (r0 + skip) * d, m->g.head_w, m->g.head_b, dout + (r0 + skip) * V,
                                          a->lnf + (r0 + skip) * d, m->p.head_w, rows, d, V, false));
        }
    }
    memset(a->dh, 0, Nd * sizeof(float));
    PROFILED(a, PROF_BWD, PROF_NORM,
             hdlm_layernorm_backward(a->dh, m->g.norm_final, a->da, a->h + (size_t)c->n_layers * Nd, m->p.norm_final,
                                     a->lnf_mean, a->lnf_rstd, N, d));
    if (gamma) memset(a->dcond, 0, (size_t)N * cd * sizeof(float));
    if (m->grad_ready) m->grad_ready(m->grad_ready_ctx, (size_t)(m->g.norm_final - m->grads));

    for (int l = c->n_layers - 1; l >= 0; l--) {
        const hdlm_block_views *w = &m->p.blocks[l];
        const hdlm_block_views *g = &m->g.blocks[l];
        float *h_in = a->h + l * Nd;
        float *ln1 = a->ln1 + l * Nd, *ln2 = a->ln2 + l * Nd, *h_mid = a->h_mid + l * Nd;
        float *qkv = a->qkv + l * 3 * Nd, *att = a->att + l * Nd, *att_y = a->att_y + l * Nd;
        float *fc1 = a->fc1 + l * (size_t)N * f, *gelu = a->gelu + l * (size_t)N * f, *mlp_y = a->mlp_y + l * Nd;
        float *mod = gamma ? a->mod + l * 6 * Nd : NULL;
        float *a1 = gamma ? a->a1 + l * Nd : ln1, *a2 = gamma ? a->a2 + l * Nd : ln2;

        // MLP branch: h_out = h_mid + g_m ⊙ dropout(W2·GELU(W1·a2 + b1) + b2)
        PROFILED(a, PROF_BWD, PROF_RESIDUAL,
                 hdlm_residual_backward(a->dtmp, gamma ? a->dmod + 5 * d : NULL, a->dh, mlp_y,
                                        gamma ? mod + 5 * d : NULL, 6 * d, N, d, a->dropout,
                                        site_key(m, l, HDLM_DROPOUT_MLP_RESIDUAL)));
        PROFILED(a, PROF_BWD, PROF_LINEAR,
                 hdlm_linear_backward(a->dfc, g->fc2_w, g->fc2_b, a->dtmp, gelu, w->fc2_w, N, f, d, false));
        PROFILED(a, PROF_BWD, PROF_GELU, hdlm_gelu_backward(a->dfc, a->dfc, fc1, (size_t)N * f));
        PROFILED(a, PROF_BWD, PROF_LINEAR,
                 hdlm_linear_backward(a->da, g->fc1_w, g->fc1_b, a->dfc, a2, w->fc1_w, N, d, f, false));
        const float *dln2 = a->da;
        if (gamma) {
            PROFILED(
                a, PROF_BWD, PROF_ADALN,
                hdlm_modulate_backward(a->dln, a->dmod + 3 * d, a->dmod + 4 * d, a->da, ln2, mod + 4 * d, 6 * d, N, d));
            dln2 = a->dln;
        }
        PROFILED(a, PROF_BWD, PROF_NORM,
                 hdlm_layernorm_backward(a->dh, g->norm2, dln2, h_mid, w->norm2, a->ln2_mean + (size_t)l * N,
                                         a->ln2_rstd + (size_t)l * N, N, d));

        // Attention branch: h_mid = h_in + g_a ⊙ dropout(W_o · attention(RoPE(W_qkv · a1)))
        PROFILED(a, PROF_BWD, PROF_RESIDUAL,
                 hdlm_residual_backward(a->dtmp, gamma ? a->dmod + 2 * d : NULL, a->dh, att_y,
                                        gamma ? mod + 2 * d : NULL, 6 * d, N, d, a->dropout,
                                        site_key(m, l, HDLM_DROPOUT_ATTN_RESIDUAL)));
        PROFILED(a, PROF_BWD, PROF_LINEAR,
                 hdlm_linear_backward(a->datt, g->attn_out, NULL, a->dtmp, att, w->attn_out, N, d, d, false));
        PROFILED(a, PROF_BWD, PROF_ATTENTION,
                 hdlm_attention_backward(a->dqkv, a->datt, att, a->lse + (size_t)l * N * H,
                                         layer_keep(a, l), qkv, &a->mask, B, L, H, hd, a->dropout));
        PROFILED(a, PROF_BWD, PROF_ROTARY, hdlm_rotary_backward(a->dqkv, a->cos_t, a->sin_t, B, L, H, hd));
        PROFILED(a, PROF_BWD, PROF_LINEAR,
                 hdlm_linear_backward(a->da, g->qkv, NULL, a->dqkv, a1, w->qkv, N, d, 3 * d, false));
        const float *dln1 = a->da;
        if (gamma) {
            PROFILED(a, PROF_BWD, PROF_ADALN,
                     hdlm_modulate_backward(a->dln, a->dmod, a->dmod + d, a->da, ln1, mod + d, 6 * d, N, d));
            dln1 = a->dln;
        }
        PROFILED(a, PROF_BWD, PROF_NORM,
                 hdlm_layernorm_backward(a->dh, g->norm1, dln1, h_in, w->norm1, a->ln1_mean + (size_t)l * N,
                                         a->ln1_rstd + (size_t)l * N, N, d));
        if (gamma)
            PROFILED(
                a, PROF_BWD, PROF_ADALN,
                hdlm_linear_backward(a->dcond, g->ada_w, g->ada_b, a->dmod, a->cond, w->ada_w, N, cd, 6 * d, true));
        if (m->grad_ready && l > 0) m->grad_ready(m->grad_ready_ctx, (size_t)(g->norm1 - m->grads));
    }

    PROFILED(a, PROF_BWD, PROF_EMBED,
             hdlm_embedding_backward(m->g.embed, a->dh, a->tokens, gamma ? a->mix : NULL, (uint32_t)(V - 1), N, d));
    if (gamma) {
        // c = SiLU(W2·SiLU(W1·sinusoid(σ) + b1) + b2); σ itself is an input (no gradient)
        PROFILED(a, PROF_BWD, PROF_ADALN, hdlm_silu_backward(a->dc2, a->dcond, a->sig_h2, (size_t)N * cd));
        PROFILED(a, PROF_BWD, PROF_ADALN,
                 hdlm_linear_backward(a->dc1, m->g.sigma_w2, m->g.sigma_b2, a->dc2, a->sig_s1, m->p.sigma_w2, N, cd, cd,
                                      false));
        PROFILED(a, PROF_BWD, PROF_ADALN, hdlm_silu_backward(a->dc1, a->dc1, a->sig_h1, (size_t)N * cd));
        PROFILED(a, PROF_BWD, PROF_ADALN,
                 hdlm_linear_backward(NULL, m->g.sigma_w1, m->g.sigma_b1, a->dc1, a->freq, m->p.sigma_w1, N,
                                      HDLM_SIGMA_FREQ_DIM, cd, false));
    }
    if (m->grad_ready) m->grad_ready(m->grad_ready_ctx, 0);
    if (a->profile) profile_report(m, true);
}

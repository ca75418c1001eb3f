// The DDiT on one GPU (cuda/cuda_model.h), the twin of src/model/model.c: the same layers in the same order, the same
// dropout keys, the host's flat parameter layout; bf16 activations around an fp32 residual stream (cuda/cuda_ops.h).
#include "cuda_internal.cuh"

#include <math.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "cuda/cuda_model.h"
#include "hdlm/rng.h"
}

// Profile kinds (HDLM_PROFILE=1), in forward order. GELU is fused into fc1's forward and fc2's backward (cuBLASLt
// epilogues); the head computes its gradients inside the forward call, so its backward shows in the forward column.
typedef enum {
    PROF_SIGMA, PROF_EMBED, PROF_NORM, PROF_QKV, PROF_ROTARY, PROF_ATTENTION, PROF_ATTN_OUT, PROF_RESIDUAL,
    PROF_FC1, PROF_FC2, PROF_HEAD, PROF_OPTIMIZER, PROF_KINDS
} prof_kind;
static const char *const prof_names[PROF_KINDS] = {
    "adaln+sigma", "embed", "layernorm", "linear qkv", "rotary", "attention", "linear attn_out", "residual+dropout",
    "linear fc1+gelu", "linear fc2", "head+loss", "optimizer"};
enum { PROF_FWD, PROF_BWD, PROF_CALLER, PROF_DIRS };   // span directions; the caller's spans are the optimizer's

struct hdlm_cuda_model {
    hdlm_model_config config;
    hdlm_tensor *tensors;
    int n_tensors;
    size_t n_params, n_buffer;
    float *params, *grads;     // device, host layout
    hdlm_bf16 *params_bf16;    // device, [n_params]
    hdlm_model_views p, g;     // device views (p.inv_freq points at the device copy of the buffer)
    float *buffers;            // host copy of the buffers (rotary_emb.inv_freq): rotary tables are built on the host
    hdlm_stream stream;

    // Rotary tables of the last forward's rows (table_len; negative for the two-copy layout): host scratch and
    // device copies, [2 · max_length, D/2].
    int table_len;
    float *cos_host, *sin_host, *cos_t, *sin_t;

    // Everything sized by the token capacity: device activations, scratch, pinned input staging and the head's
    // loss rows. Every device allocation is recorded in allocs so that growing frees them all.
    int capacity;
    void *allocs[64];
    int n_allocs;
    unsigned char *staging_host, *staging_dev;   // [tokens | σ], capacity entries each
    uint32_t *tokens;                            // device inputs [N]
    float *sigma;                                // [N] (γ)
    hdlm_cuda_head_rows *head_rows;
    void *head_ws;
    size_t head_ws_bytes;
    float *mix;                                               // γ [N]
    hdlm_bf16 *freq, *sig_h1, *sig_s1, *sig_h2, *cond;        // γ [N, 256] and [N, cd]
    float *h, *h_mid;                                         // [n_layers + 1][N, d], [n_layers][N, d]
    float *ln1_mean, *ln1_rstd, *ln2_mean, *ln2_rstd, *lse;   // [n_layers][N] ([n_layers][N·H] for lse)
    hdlm_bf16 *a1, *a2, *mod;                                 // LayerNorm outputs (modulated), adaLN (γ)
    hdlm_bf16 *qkv, *att, *att_y, *fc1, *gelu, *mlp_y;        // per layer
    hdlm_bf16 *lnf;                                           // [N, d]
    float *lnf_mean, *lnf_rstd;
    float *dh, *dcond;                                        // fp32 backward: residual stream, Σ_layers dcond
    hdlm_bf16 *dlnf, *da, *dtmp, *datt, *dqkv, *dfc, *dmod, *dcond_l, *dc2, *dc1, *dc1s;
    void *attn_ws;
    size_t attn_ws_bytes;
    uint32_t *keep_bits;   // [n_layers][hdlm_cuda_attention_keep_bytes]: dropout decisions of the training forward
    size_t keep_bytes_have;

    // The last forward.
    int batch, length;
    hdlm_attn_mask mask;
    float dropout;
    uint64_t key;
    bool have_head_grad;
    double *loss_dev, *loss_host;   // fp64 [1], device and pinned
    cudaEvent_t staged, loss_ready;

    hdlm_grad_ready_fn grad_ready;
    void *grad_ready_ctx;
    cudaEvent_t *grad_events;   // one per hook point, n_layers + 1
    cudaEvent_t grad_event_now;

    // Profile: a pool of timing events recorded in order; codes[i] = dir · PROF_KINDS + kind of the work between
    // events i − 1 and i, or −1 where a span starts (the time before it is not counted).
    bool prof;
    int prof_n, prof_cap, prof_dir;
    cudaEvent_t *prof_events;
    int *prof_codes;
    double prof_ms[PROF_DIRS * PROF_KINDS], prof_flops[PROF_DIRS * PROF_KINDS];
    long prof_spans[PROF_DIRS];
};

// ---- profile (HDLM_PROFILE=1) ----------------------------------------------------------------------------------

static void prof_grow(hdlm_cuda_model *m, int cap) {
    m->prof_events = (cudaEvent_t *)hdlm_realloc(m->prof_events, (size_t)cap * sizeof(cudaEvent_t));
    m->prof_codes = (int *)hdlm_realloc(m->prof_codes, (size_t)cap * sizeof(int));
    for (int i = m->prof_cap; i < cap; i++) HDLM_CUDA_CHECK(cudaEventCreate(&m->prof_events[i]));
    m->prof_cap = cap;
}

static void prof_record(hdlm_cuda_model *m, int code, double flops) {
    if (m->prof_n == m->prof_cap) prof_grow(m, 2 * m->prof_cap);
    HDLM_CUDA_CHECK(cudaEventRecord(m->prof_events[m->prof_n], m->stream));
    m->prof_codes[m->prof_n++] = code;
    if (code >= 0) m->prof_flops[code] += flops;
}

// Adds the times between the recorded events (waiting for the last one) and empties the pool.
static void prof_collect(hdlm_cuda_model *m) {
    if (m->prof_n == 0) return;
    HDLM_CUDA_CHECK(cudaEventSynchronize(m->prof_events[m->prof_n - 1]));
    for (int i = 1; i < m->prof_n; i++) {
        if (m->prof_codes[i] < 0) continue;
        float ms;
        HDLM_CUDA_CHECK(cudaEventElapsedTime(&ms, m->prof_events[i - 1], m->prof_events[i]));
        m->prof_ms[m->prof_codes[i]] += ms;
    }
    m->prof_n = 0;
}

// Starts a span of direction dir; a forward first collects the previous step's events.
static inline void prof_begin(hdlm_cuda_model *m, int dir) {
    if (!m->prof) return;
    if (dir == PROF_FWD) {
        prof_collect(m);
    }
    m->prof_dir = dir;
    m->prof_spans[dir]++;
    prof_record(m, -1, 0.0);
}

// FLOPs of one kernel group by the CPU profile's count: 2·rows·in·out per linear, 4·N·L·d per layer's attention,
// twice each in the backward; the head (2·N·d·V) three times when its gradients are computed in the same call.
static double prof_flops(const hdlm_cuda_model *m, int kind) {
    double n = (double)m->batch * m->length, d = m->config.width, f = (double)m->config.mlp_ratio * d;
    double fwd = kind == PROF_QKV ? 6.0 * n * d * d
               : kind == PROF_ATTN_OUT ? 2.0 * n * d * d
               : kind == PROF_FC1 || kind == PROF_FC2 ? 2.0 * n * d * f
               : kind == PROF_ATTENTION ? 4.0 * n * m->length * d
               : kind == PROF_HEAD ? 2.0 * n * d * m->config.vocab * (m->have_head_grad ? 3.0 : 1.0)
               : 0.0;
    return m->prof_dir == PROF_BWD ? 2.0 * fwd : fwd;
}

// Ends a kernel group of `kind`: the work queued since the previous event.
static inline void prof_mark(hdlm_cuda_model *m, int kind) {
    if (m->prof) prof_record(m, m->prof_dir * PROF_KINDS + kind, prof_flops(m, kind));
}

bool hdlm_cuda_model_profiling(const hdlm_cuda_model *m) { return m->prof; }
void hdlm_cuda_model_profile_optimizer_begin(hdlm_cuda_model *m) { prof_begin(m, PROF_CALLER); }
void hdlm_cuda_model_profile_optimizer_end(hdlm_cuda_model *m) { prof_mark(m, PROF_OPTIMIZER); }

void hdlm_cuda_model_profile_reset(hdlm_cuda_model *m) {
    if (!m->prof) return;
    prof_collect(m);
    memset(m->prof_ms, 0, sizeof m->prof_ms);
    memset(m->prof_flops, 0, sizeof m->prof_flops);
    memset(m->prof_spans, 0, sizeof m->prof_spans);
}

static void prof_cell(FILE *out, double value, const char *format) {
    if (value > 0.0) fprintf(out, format, value);
    else fprintf(out, " %9s", "-");
}

void hdlm_cuda_model_profile_report(hdlm_cuda_model *m, FILE *out, double wall_step_s) {
    if (!m->prof) return;
    prof_collect(m);
    double steps = (double)m->prof_spans[PROF_FWD], total = 0.0, flops = 0.0;
    if (steps == 0) {
        fprintf(out, "hdlm cuda profile: no forward measured\n");
        return;
    }
    for (int i = 0; i < PROF_DIRS * PROF_KINDS; i++) total += m->prof_ms[i], flops += m->prof_flops[i];
    fprintf(out,
            "hdlm cuda profile: %ld forwards, %ld backwards, %ld optimizer spans (last %dx%d); GPU time between "
            "events, ms per forward\n  %-17s %9s %9s %9s %7s %9s %9s\n",
            m->prof_spans[PROF_FWD], m->prof_spans[PROF_BWD], m->prof_spans[PROF_CALLER], m->batch,
            m->length, "kind", "forward", "backward", "ms/step", "share", "TFLOP/s f", "TFLOP/s b");
    for (int k = 0; k < PROF_KINDS; k++) {
        const double *ms = m->prof_ms + k, *fl = m->prof_flops + k;   // stride PROF_KINDS between directions
        double t = ms[PROF_FWD * PROF_KINDS] + ms[PROF_BWD * PROF_KINDS] + ms[PROF_CALLER * PROF_KINDS];
        if (t == 0.0) continue;
        fprintf(out, "  %-17s", prof_names[k]);
        prof_cell(out, ms[PROF_FWD * PROF_KINDS] / steps, " %9.3f");
        prof_cell(out, ms[PROF_BWD * PROF_KINDS] / steps, " %9.3f");
        fprintf(out, " %9.3f %6.1f%%", t / steps, 100.0 * t / total);
        for (int dir = PROF_FWD; dir <= PROF_BWD; dir++) {
            double tf = ms[dir * PROF_KINDS];
            prof_cell(out, tf > 0.0 ? fl[dir * PROF_KINDS] / tf * 1e-9 : 0.0, " %9.1f");
        }
        fputc('\n', out);
    }
    fprintf(out, "  %-17s %19s %9.3f %6.1f%% %9.1f (all counted FLOPs over all the time)\n", "total", "",
            total / steps, 100.0, flops / total * 1e-9);
    if (wall_step_s > 0)
        fprintf(out, "  the events cover %.1f%% of the %.3f ms wall step (the rest: host waits, copies, gaps)\n",
                100.0 * total / steps / (wall_step_s * 1e3), wall_step_s * 1e3);
    fflush(out);
}

// ---- views, buffers ------------------------------------------------------------------------------------------

static float *rebase(const float *view, const float *host_base, float *base) {
    return view ? base + (view - host_base) : NULL;
}

// The device views of `base` from the host model's views of `host_base` (same offsets).
static void bind_views(hdlm_model_views *v, const hdlm_model_views *host, const float *host_base, float *base,
                       int n_layers) {
    v->embed = rebase(host->embed, host_base, base);
    v->sigma_w1 = rebase(host->sigma_w1, host_base, base);
    v->sigma_b1 = rebase(host->sigma_b1, host_base, base);
    v->sigma_w2 = rebase(host->sigma_w2, host_base, base);
    v->sigma_b2 = rebase(host->sigma_b2, host_base, base);
    v->inv_freq = rebase(host->inv_freq, host_base, base);
    v->norm_final = rebase(host->norm_final, host_base, base);
    v->head_w = rebase(host->head_w, host_base, base);
    v->head_b = rebase(host->head_b, host_base, base);
    v->blocks = (hdlm_block_views *)hdlm_calloc((size_t)n_layers, sizeof(hdlm_block_views));
    for (int l = 0; l < n_layers; l++) {
        const hdlm_block_views *hb = &host->blocks[l];
        hdlm_block_views *b = &v->blocks[l];
        b->norm1 = rebase(hb->norm1, host_base, base);
        b->qkv = rebase(hb->qkv, host_base, base);
        b->attn_out = rebase(hb->attn_out, host_base, base);
        b->norm2 = rebase(hb->norm2, host_base, base);
        b->fc1_w = rebase(hb->fc1_w, host_base, base);
        b->fc1_b = rebase(hb->fc1_b, host_base, base);
        b->fc2_w = rebase(hb->fc2_w, host_base, base);
        b->fc2_b = rebase(hb->fc2_b, host_base, base);
        b->ada_w = rebase(hb->ada_w, host_base, base);
        b->ada_b = rebase(hb->ada_b, host_base, base);
    }
}

// The bf16 shadow of a parameter view (matmul weights and biases).
static const hdlm_bf16 *shadow(const hdlm_cuda_model *m, const float *view) {
    return view ? m->params_bf16 + (view - m->params) : NULL;
}

static void *acts_alloc(hdlm_cuda_model *m, size_t bytes) {
    HDLM_ASSERT(m->n_allocs < (int)(sizeof m->allocs / sizeof m->allocs[0]), "too many activation buffers");
    void *p = hdlm_cuda_malloc(bytes ? bytes : 1);
    m->allocs[m->n_allocs++] = p;
    return p;
}

static void acts_release(hdlm_cuda_model *m) {
    for (int i = 0; i < m->n_allocs; i++) hdlm_cuda_free(m->allocs[i]);
    m->n_allocs = 0;
    if (m->staging_host) HDLM_CUDA_CHECK(cudaFreeHost(m->staging_host));
    m->staging_host = NULL;
    hdlm_cuda_head_rows_free(m->head_rows);
    m->head_rows = NULL;
    m->capacity = 0;
}

// Sizes everything for n tokens (grows only). Queued work may still use the old buffers: wait for it first.
static void acts_reserve(hdlm_cuda_model *m, int n) {
    if (n <= m->capacity) return;
    HDLM_CUDA_CHECK(cudaStreamSynchronize(m->stream));
    acts_release(m);
    const hdlm_model_config *c = &m->config;
    size_t N = (size_t)n, d = (size_t)c->width, f = (size_t)c->mlp_ratio * d, nl = (size_t)c->n_layers;
    size_t cd = (size_t)c->cond_dim, H = (size_t)c->n_heads, F4 = sizeof(float), B2 = sizeof(hdlm_bf16);
    bool gamma = c->family == HDLM_FAMILY_GAMMA;
#define ALLOC(field, count, elem) m->field = (decltype(m->field))acts_alloc(m, (count) * (elem))
    HDLM_CUDA_CHECK(cudaMallocHost((void **)&m->staging_host, N * (sizeof(uint32_t) + F4)));
    ALLOC(staging_dev, N * (sizeof(uint32_t) + F4), 1);
    m->tokens = (uint32_t *)m->staging_dev;
    m->sigma = (float *)(m->tokens + N);
    m->head_rows = hdlm_cuda_head_rows_create(n);
    // The head's workspace grows with the row count (per-row losses, then chunks of at most 2048 rows).
    m->head_ws_bytes = hdlm_cuda_head_workspace_bytes(n, c->width, c->vocab);
    ALLOC(head_ws, m->head_ws_bytes, 1);
    if (gamma) {
        ALLOC(mix, N, F4);
        ALLOC(freq, N * HDLM_SIGMA_FREQ_DIM, B2);
        ALLOC(sig_h1, N * cd, B2);
        ALLOC(sig_s1, N * cd, B2);
        ALLOC(sig_h2, N * cd, B2);
        ALLOC(cond, N * cd, B2);
        ALLOC(mod, nl * N * 6 * d, B2);
        ALLOC(dmod, N * 6 * d, B2);
        ALLOC(dcond, N * cd, F4);
        ALLOC(dcond_l, N * cd, B2);
        ALLOC(dc2, N * cd, B2);
        ALLOC(dc1, N * cd, B2);
        ALLOC(dc1s, N * cd, B2);
    }
    ALLOC(h, (nl + 1) * N * d, F4);
    ALLOC(h_mid, nl * N * d, F4);
    ALLOC(ln1_mean, nl * N, F4);
    ALLOC(ln1_rstd, nl * N, F4);
    ALLOC(ln2_mean, nl * N, F4);
    ALLOC(ln2_rstd, nl * N, F4);
    ALLOC(lse, nl * N * H, F4);
    ALLOC(a1, nl * N * d, B2);
    ALLOC(a2, nl * N * d, B2);
    ALLOC(qkv, nl * N * 3 * d, B2);
    ALLOC(att, nl * N * d, B2);
    ALLOC(att_y, nl * N * d, B2);
    ALLOC(fc1, nl * N * f, B2);
    ALLOC(gelu, nl * N * f, B2);
    ALLOC(mlp_y, nl * N * d, B2);
    ALLOC(lnf, N * d, B2);
    ALLOC(lnf_mean, N, F4);
    ALLOC(lnf_rstd, N, F4);
    ALLOC(dh, N * d, F4);
    ALLOC(dlnf, N * d, B2);
    ALLOC(da, N * d, B2);
    ALLOC(dtmp, N * d, B2);
    ALLOC(datt, N * d, B2);
    ALLOC(dqkv, N * 3 * d, B2);
    ALLOC(dfc, N * f, B2);
#undef ALLOC
    m->attn_ws = m->keep_bits = NULL;   // sized per (batch, length) by the forward
    m->attn_ws_bytes = m->keep_bytes_have = 0;
    m->capacity = n;
}

// *buf holds at least `bytes` (it had *have): a smaller one is replaced once the queued work no longer uses it.
static void *attn_reserve(hdlm_cuda_model *m, void *buf, size_t *have, size_t bytes) {
    if (bytes <= *have && buf) return buf;
    HDLM_CUDA_CHECK(cudaStreamSynchronize(m->stream));
    for (int i = 0; i < m->n_allocs; i++)
        if (m->allocs[i] == buf) {   // drop the old buffer from the list
            hdlm_cuda_free(buf);
            m->allocs[i] = m->allocs[--m->n_allocs];
            break;
        }
    *have = bytes;
    return acts_alloc(m, bytes);
}

// The flash-attention backward scratch and, for a training forward with dropout, the keep bits of every layer depend
// on (batch, length), not only on the token count.
static void attn_reserve_all(hdlm_cuda_model *m, int batch, int len, bool training) {
    const hdlm_model_config *c = &m->config;
    m->attn_ws = attn_reserve(m, m->attn_ws, &m->attn_ws_bytes,
                              hdlm_cuda_attention_workspace_bytes(batch, len, c->n_heads, c->width / c->n_heads));
    if (training && c->dropout > 0.0f)
        m->keep_bits = (uint32_t *)attn_reserve(m, m->keep_bits, &m->keep_bytes_have,
                                                c->n_layers * hdlm_cuda_attention_keep_bytes(batch, len, c->n_heads));
}

// cos/sin [L, D/2] from the host's rotary tables (the CPU's exact or reference rounding), uploaded when L changes.
// The copies are ordered on the compute stream after the work that still reads the old tables.
static void rotary_reserve(hdlm_cuda_model *m, const hdlm_attn_mask *mask) {
    int len = mask->length, tag = mask->half > 0 ? -len : len;   // the two-copy layout's tables differ
    if (tag == m->table_len) return;
    int half = m->config.width / m->config.n_heads / 2;
    const float *inv_freq = m->buffers + (m->p.inv_freq - m->params - (ptrdiff_t)m->n_params);
    hdlm_rotary_tables_of_mask(m->cos_host, m->sin_host, inv_freq, mask, 2 * half, m->config.rotary);
    size_t bytes = (size_t)len * half * sizeof(float);
    HDLM_CUDA_CHECK(cudaMemcpyAsync(m->cos_t, m->cos_host, bytes, cudaMemcpyHostToDevice, m->stream));
    HDLM_CUDA_CHECK(cudaMemcpyAsync(m->sin_t, m->sin_host, bytes, cudaMemcpyHostToDevice, m->stream));
    // Pageable sources: the host tables must not change before the copies have read them.
    HDLM_CUDA_CHECK(cudaStreamSynchronize(m->stream));
    m->table_len = tag;
}

// ---- create / free / parameters --------------------------------------------------------------------------------

int hdlm_cuda_model_create(hdlm_cuda_model **out, const hdlm_model *host) {
    HDLM_CHECK(hdlm_cuda_device_count() > 0, "CUDA model: no usable GPU (%s)", hdlm_cuda_unavailable_reason());
    const hdlm_model_config *c = &host->config;
    hdlm_cuda_model *m = (hdlm_cuda_model *)hdlm_calloc(1, sizeof *m);
    m->config = *c;
    m->n_tensors = host->n_tensors;
    m->tensors = (hdlm_tensor *)hdlm_malloc((size_t)host->n_tensors * sizeof(hdlm_tensor));
    memcpy(m->tensors, host->tensors, (size_t)host->n_tensors * sizeof(hdlm_tensor));
    m->n_params = host->n_params;
    m->n_buffer = host->n_buffer;
    m->stream = hdlm_cuda_stream();
    m->params = (float *)hdlm_cuda_malloc((m->n_params + m->n_buffer) * sizeof(float));
    m->grads = (float *)hdlm_cuda_malloc(m->n_params * sizeof(float));
    m->params_bf16 = (hdlm_bf16 *)hdlm_cuda_malloc(m->n_params * sizeof(hdlm_bf16));
    bind_views(&m->p, &host->p, host->params, m->params, c->n_layers);
    bind_views(&m->g, &host->g, host->grads, m->grads, c->n_layers);
    m->buffers = (float *)hdlm_malloc((m->n_buffer ? m->n_buffer : 1) * sizeof(float));
    size_t table = 2 * (size_t)c->max_length * (c->width / c->n_heads / 2);   // two-copy: 2 · max_length rows
    m->cos_host = (float *)hdlm_malloc(table * sizeof(float));
    m->sin_host = (float *)hdlm_malloc(table * sizeof(float));
    m->cos_t = (float *)hdlm_cuda_malloc(table * sizeof(float));
    m->sin_t = (float *)hdlm_cuda_malloc(table * sizeof(float));
    m->loss_dev = (double *)hdlm_cuda_malloc(sizeof(double));
    HDLM_CUDA_CHECK(cudaMallocHost((void **)&m->loss_host, sizeof(double)));
    HDLM_CUDA_CHECK(cudaEventCreateWithFlags(&m->staged, cudaEventDisableTiming));
    HDLM_CUDA_CHECK(cudaEventCreateWithFlags(&m->loss_ready, cudaEventDisableTiming));
    m->grad_events = (cudaEvent_t *)hdlm_calloc((size_t)c->n_layers + 1, sizeof(cudaEvent_t));
    for (int i = 0; i <= c->n_layers; i++)
        HDLM_CUDA_CHECK(cudaEventCreateWithFlags(&m->grad_events[i], cudaEventDisableTiming));
    const char *profile = getenv("HDLM_PROFILE");
    m->prof = profile && *profile && strcmp(profile, "0") != 0;
    if (m->prof) prof_grow(m, 32 * (c->n_layers + 1));   // a step takes about 25 events per layer
    hdlm_cuda_model_upload_params(m, host->params);
    hdlm_cuda_model_zero_grad(m);
    HDLM_CUDA_CHECK(cudaStreamSynchronize(m->stream));
    *out = m;
    return 0;
}

void hdlm_cuda_model_free(hdlm_cuda_model *m) {
    if (!m) return;
    HDLM_CUDA_CHECK(cudaStreamSynchronize(m->stream));
    acts_release(m);
    for (int i = 0; i <= m->config.n_layers; i++) HDLM_CUDA_CHECK(cudaEventDestroy(m->grad_events[i]));
    for (int i = 0; i < m->prof_cap; i++) HDLM_CUDA_CHECK(cudaEventDestroy(m->prof_events[i]));
    free(m->prof_events);
    free(m->prof_codes);
    HDLM_CUDA_CHECK(cudaEventDestroy(m->staged));
    HDLM_CUDA_CHECK(cudaEventDestroy(m->loss_ready));
    HDLM_CUDA_CHECK(cudaFreeHost(m->loss_host));
    hdlm_cuda_free(m->loss_dev);
    hdlm_cuda_free(m->cos_t);
    hdlm_cuda_free(m->sin_t);
    hdlm_cuda_free(m->params);
    hdlm_cuda_free(m->grads);
    hdlm_cuda_free(m->params_bf16);
    free(m->grad_events);
    free(m->cos_host);
    free(m->sin_host);
    free(m->buffers);
    free(m->p.blocks);
    free(m->g.blocks);
    free(m->tensors);
    free(m);
}

const hdlm_model_config *hdlm_cuda_model_config(const hdlm_cuda_model *m) { return &m->config; }
size_t hdlm_cuda_model_n_params(const hdlm_cuda_model *m) { return m->n_params; }
float *hdlm_cuda_model_params(hdlm_cuda_model *m) { return m->params; }
float *hdlm_cuda_model_grads(hdlm_cuda_model *m) { return m->grads; }
hdlm_bf16 *hdlm_cuda_model_params_bf16(hdlm_cuda_model *m) { return m->params_bf16; }
hdlm_stream hdlm_cuda_model_stream(const hdlm_cuda_model *m) { return m->stream; }

void hdlm_cuda_model_upload_params(hdlm_cuda_model *m, const float *host_params) {
    HDLM_CUDA_CHECK(cudaMemcpyAsync(m->params, host_params, (m->n_params + m->n_buffer) * sizeof(float),
                                    cudaMemcpyHostToDevice, m->stream));
    hdlm_cuda_model_refresh_bf16(m);
    if (m->n_buffer) memcpy(m->buffers, host_params + m->n_params, m->n_buffer * sizeof(float));
    m->table_len = 0;   // the buffer may have changed: rebuild the rotary tables at the next forward
    HDLM_CUDA_CHECK(cudaStreamSynchronize(m->stream));
}

void hdlm_cuda_model_download_params(hdlm_cuda_model *m, float *host_params) {
    HDLM_CUDA_CHECK(cudaMemcpyAsync(host_params, m->params, (m->n_params + m->n_buffer) * sizeof(float),
                                    cudaMemcpyDeviceToHost, m->stream));
    HDLM_CUDA_CHECK(cudaStreamSynchronize(m->stream));
}

void hdlm_cuda_model_refresh_bf16(hdlm_cuda_model *m) {
    hdlm_cuda_float_to_bf16(m->params_bf16, m->params, m->n_params, m->stream);
}

void hdlm_cuda_model_download_grads(hdlm_cuda_model *m, float *host_grads) {
    HDLM_CUDA_CHECK(cudaMemcpyAsync(host_grads, m->grads, m->n_params * sizeof(float), cudaMemcpyDeviceToHost,
                                    m->stream));
    HDLM_CUDA_CHECK(cudaStreamSynchronize(m->stream));
}

void hdlm_cuda_model_zero_grad(hdlm_cuda_model *m) {
    hdlm_cuda_memset0(m->grads, m->n_params * sizeof(float), m->stream);
}

// ---- inputs ----------------------------------------------------------------------------------------------------

// Checks the input (as the CPU model does) and the clean tokens (ids below x0_limit: V, or V − 1 where the loss
// needs real tokens), sizes the buffers, records the shape and uploads tokens (and σ for γ) through the pinned
// staging area, once the previous upload from it has completed.
static int begin_forward(hdlm_cuda_model *m, const hdlm_model_input *in, const uint32_t *x0, uint32_t x0_limit) {
    hdlm_attn_mask mask;
    HDLM_TRY(hdlm_model_check_input(&m->config, in, &mask));
    int N = in->batch * in->length;
    HDLM_CHECK(x0 != NULL, "CUDA model: clean tokens x0 missing");
    for (int i = 0; i < N; i++)
        HDLM_CHECK(x0[i] < x0_limit, "CUDA model: clean token %d has id %u, the loss needs ids below %u", i, x0[i],
                   x0_limit);
    acts_reserve(m, N);
    attn_reserve_all(m, in->batch, in->length, in->training);
    rotary_reserve(m, &mask);
    m->batch = in->batch;
    m->length = in->length;
    m->mask = mask;
    m->dropout = in->training ? m->config.dropout : 0.0f;
    m->key = in->dropout_key;
    m->have_head_grad = false;
    HDLM_CUDA_CHECK(cudaEventSynchronize(m->staged));
    uint32_t *tokens = (uint32_t *)m->staging_host;
    float *sigma = (float *)(tokens + m->capacity);
    memcpy(tokens, in->tokens, (size_t)N * sizeof(uint32_t));
    HDLM_CUDA_CHECK(cudaMemcpyAsync(m->tokens, tokens, (size_t)N * sizeof(uint32_t), cudaMemcpyHostToDevice,
                                    m->stream));
    if (m->config.family == HDLM_FAMILY_GAMMA) {
        memcpy(sigma, in->sigma, (size_t)N * sizeof(float));
        HDLM_CUDA_CHECK(cudaMemcpyAsync(m->sigma, sigma, (size_t)N * sizeof(float), cudaMemcpyHostToDevice,
                                        m->stream));
    }
    HDLM_CUDA_CHECK(cudaEventRecord(m->staged, m->stream));
    return 0;
}

// ---- forward ---------------------------------------------------------------------------------------------------

static uint64_t site_key(const hdlm_cuda_model *m, int layer, hdlm_dropout_site site) {
    return hdlm_model_dropout_key(m->key, layer, site);
}

// Layer l's attention keep bits (NULL without dropout).
static uint32_t *keep_bits(const hdlm_cuda_model *m, int layer) {
    if (m->dropout <= 0.0f) return NULL;
    size_t words = hdlm_cuda_attention_keep_bytes(m->batch, m->length, m->config.n_heads) / sizeof(uint32_t);
    return m->keep_bits + (size_t)layer * words;
}

// Embedding, blocks and final LayerNorm, in hdlm_model_forward's order; leaves lnf for the fused head.
static void forward_trunk(hdlm_cuda_model *m) {
    const hdlm_model_config *c = &m->config;
    int B = m->batch, L = m->length, N = B * L;
    int d = c->width, f = c->mlp_ratio * d, H = c->n_heads, hd = d / H, cd = c->cond_dim, V = c->vocab;
    bool gamma = c->family == HDLM_FAMILY_GAMMA;
    size_t Nd = (size_t)N * d;
    float p = m->dropout;
    hdlm_stream s = m->stream;

    prof_begin(m, PROF_FWD);
    if (gamma) {
        hdlm_cuda_gamma_mix(m->mix, m->sigma, c->gamma, N, s);
        hdlm_cuda_sigma_sinusoid(m->freq, m->sigma, N, HDLM_SIGMA_FREQ_DIM, s);
        hdlm_cuda_linear_forward(m->sig_h1, NULL, m->freq, shadow(m, m->p.sigma_w1), shadow(m, m->p.sigma_b1), N,
                                 HDLM_SIGMA_FREQ_DIM, cd, s);
        hdlm_cuda_silu_forward(m->sig_s1, m->sig_h1, (size_t)N * cd, s);
        hdlm_cuda_linear_forward(m->sig_h2, NULL, m->sig_s1, shadow(m, m->p.sigma_w2), shadow(m, m->p.sigma_b2), N,
                                 cd, cd, s);
        hdlm_cuda_silu_forward(m->cond, m->sig_h2, (size_t)N * cd, s);
        prof_mark(m, PROF_SIGMA);
    }
    hdlm_cuda_embedding_forward(m->h, m->p.embed, m->tokens, gamma ? m->mix : NULL, (uint32_t)(V - 1), N, d, s);
    prof_mark(m, PROF_EMBED);

    for (int l = 0; l < c->n_layers; l++) {
        const hdlm_block_views *w = &m->p.blocks[l];
        float *h_in = m->h + l * Nd, *h_out = m->h + (l + 1) * Nd, *h_mid = m->h_mid + l * Nd;
        hdlm_bf16 *a1 = m->a1 + l * Nd, *a2 = m->a2 + l * Nd;
        hdlm_bf16 *mod = gamma ? m->mod + l * 6 * Nd : NULL;
        hdlm_bf16 *qkv = m->qkv + l * 3 * Nd, *att = m->att + l * Nd, *att_y = m->att_y + l * Nd;
        hdlm_bf16 *fc1 = m->fc1 + l * (size_t)N * f, *gelu = m->gelu + l * (size_t)N * f;
        hdlm_bf16 *mlp_y = m->mlp_y + l * Nd;

        // (shift_a | scale_a | gate_a | shift_m | scale_m | gate_m) per token (method §7.1)
        if (gamma) {
            hdlm_cuda_linear_forward(mod, NULL, m->cond, shadow(m, w->ada_w), shadow(m, w->ada_b), N, cd, 6 * d, s);
            prof_mark(m, PROF_SIGMA);
        }
        hdlm_cuda_layernorm_forward(a1, m->ln1_mean + (size_t)l * N, m->ln1_rstd + (size_t)l * N, h_in, w->norm1,
                                    gamma ? mod : NULL, gamma ? mod + d : NULL, 6 * d, N, d, s);
        prof_mark(m, PROF_NORM);
        hdlm_cuda_linear_forward(qkv, NULL, a1, shadow(m, w->qkv), NULL, N, d, 3 * d, s);
        prof_mark(m, PROF_QKV);
        hdlm_cuda_rotary_forward(qkv, m->cos_t, m->sin_t, B, L, H, hd, s);
        prof_mark(m, PROF_ROTARY);
        hdlm_cuda_attention_forward(att, m->lse + (size_t)l * N * H, keep_bits(m, l), qkv, &m->mask, B, L, H, hd, p,
                                    site_key(m, l, HDLM_DROPOUT_ATTN_PROBS), s);
        prof_mark(m, PROF_ATTENTION);
        hdlm_cuda_linear_forward(att_y, NULL, att, shadow(m, w->attn_out), NULL, N, d, d, s);
        prof_mark(m, PROF_ATTN_OUT);
        hdlm_cuda_residual_forward(h_mid, h_in, att_y, gamma ? mod + 2 * d : NULL, 6 * d, N, d, p,
                                   site_key(m, l, HDLM_DROPOUT_ATTN_RESIDUAL), s);
        prof_mark(m, PROF_RESIDUAL);

        hdlm_cuda_layernorm_forward(a2, m->ln2_mean + (size_t)l * N, m->ln2_rstd + (size_t)l * N, h_mid, w->norm2,
                                    gamma ? mod + 3 * d : NULL, gamma ? mod + 4 * d : NULL, 6 * d, N, d, s);
        prof_mark(m, PROF_NORM);
        hdlm_cuda_linear_forward(fc1, gelu, a2, shadow(m, w->fc1_w), shadow(m, w->fc1_b), N, d, f, s);
        prof_mark(m, PROF_FC1);
        hdlm_cuda_linear_forward(mlp_y, NULL, gelu, shadow(m, w->fc2_w), shadow(m, w->fc2_b), N, f, d, s);
        prof_mark(m, PROF_FC2);
        hdlm_cuda_residual_forward(h_out, h_mid, mlp_y, gamma ? mod + 5 * d : NULL, 6 * d, N, d, p,
                                   site_key(m, l, HDLM_DROPOUT_MLP_RESIDUAL), s);
        prof_mark(m, PROF_RESIDUAL);
    }
    hdlm_cuda_layernorm_forward(m->lnf, m->lnf_mean, m->lnf_rstd, m->h + (size_t)c->n_layers * Nd, m->p.norm_final,
                                NULL, NULL, 0, N, d, s);
    prof_mark(m, PROF_NORM);
}

// The fused head on the rows just filled: the loss (brought to the host without blocking) and, with backward, the
// output layer's gradients and d(loss)/d(lnf).
static void head_loss(hdlm_cuda_model *m, bool backward) {
    const hdlm_model_config *c = &m->config;
    int N = m->batch * m->length;
    m->have_head_grad = backward;
    hdlm_cuda_head_loss(m->loss_dev, backward ? m->dlnf : NULL, backward ? m->g.head_w : NULL,
                        backward ? m->g.head_b : NULL, m->head_ws, m->head_ws_bytes, m->lnf, shadow(m, m->p.head_w),
                        shadow(m, m->p.head_b), m->head_rows, N, c->width, c->vocab, m->stream);
    prof_mark(m, PROF_HEAD);
    HDLM_CUDA_CHECK(cudaMemcpyAsync(m->loss_host, m->loss_dev, sizeof(double), cudaMemcpyDeviceToHost, m->stream));
    HDLM_CUDA_CHECK(cudaEventRecord(m->loss_ready, m->stream));
}

int hdlm_cuda_model_forward_epsilon(hdlm_cuda_model *m, const hdlm_model_input *in, const hdlm_corruption *corruption,
                                    const uint32_t *x0, int softmax_width, bool backward) {
    const hdlm_model_config *c = &m->config;
    HDLM_CHECK(c->family == HDLM_FAMILY_EPSILON, "CUDA model: the epsilon/ARDM loss needs an epsilon-family model");
    HDLM_CHECK(corruption->batch == in->batch && corruption->length == in->length,
               "CUDA model: corruption of shape [%d, %d] for an input of shape [%d, %d]", corruption->batch,
               corruption->length, in->batch, in->length);
    HDLM_CHECK(corruption->norm > 0, "CUDA model: corruption norm must be positive, got %g", corruption->norm);
    HDLM_CHECK(softmax_width >= 2 && softmax_width <= c->vocab, "CUDA model: softmax width %d outside [2, %d]",
               softmax_width, c->vocab);
    HDLM_TRY(begin_forward(m, in, x0, (uint32_t)softmax_width));
    hdlm_cuda_head_rows_cross_entropy(m->head_rows, corruption, x0, c->vocab, softmax_width, m->stream);
    forward_trunk(m);
    head_loss(m, backward);
    return 0;
}

int hdlm_cuda_model_forward_loss(hdlm_cuda_model *m, const hdlm_model_input *in, const hdlm_loss_target *target,
                                 bool backward) {
    if (target->gamma) return hdlm_cuda_model_forward_gamma(m, in, target->gamma, target->steps, target->x0, backward);
    return hdlm_cuda_model_forward_epsilon(m, in, target->corruption, target->x0, target->softmax_width, backward);
}

int hdlm_cuda_model_forward_gamma(hdlm_cuda_model *m, const hdlm_model_input *in, const hdlm_gamma_config *config,
                                  const hdlm_step *const *steps, const uint32_t *x0, bool backward) {
    const hdlm_model_config *c = &m->config;
    HDLM_CHECK(c->family == HDLM_FAMILY_GAMMA, "CUDA model: the gamma loss needs a gamma-family model");
    HDLM_CHECK(steps != NULL, "CUDA model: the gamma loss needs the step of each sequence");
    for (int b = 0; b < in->batch; b++)
        HDLM_CHECK(steps[b] && steps[b]->length == in->length,
                   "CUDA model: step of sequence %d has length %d, the input %d", b, steps[b] ? steps[b]->length : -1,
                   in->length);
    HDLM_TRY(begin_forward(m, in, x0, (uint32_t)(c->vocab - 1)));
    hdlm_cuda_head_rows_gamma(m->head_rows, config, steps, in->tokens, x0, in->batch, c->vocab, m->stream);
    forward_trunk(m);
    head_loss(m, backward);
    return 0;
}

double hdlm_cuda_model_loss(hdlm_cuda_model *m) {
    HDLM_ASSERT(m->batch > 0, "hdlm_cuda_model_loss called before a forward");
    HDLM_CUDA_CHECK(cudaEventSynchronize(m->loss_ready));
    return *m->loss_host;
}

// ---- backward --------------------------------------------------------------------------------------------------

void hdlm_cuda_model_set_grad_ready(hdlm_cuda_model *m, hdlm_grad_ready_fn fn, void *ctx) {
    m->grad_ready = fn;
    m->grad_ready_ctx = ctx;
}

void *hdlm_cuda_model_grad_event(hdlm_cuda_model *m) {
    HDLM_ASSERT(m->grad_event_now != NULL, "hdlm_cuda_model_grad_event called outside a grad-ready hook");
    return (void *)m->grad_event_now;
}

// Hook point `point` (0 = output layer, then one per block): grads[from ..) are queued as final.
static void grad_ready(hdlm_cuda_model *m, int point, const float *first) {
    if (!m->grad_ready) return;
    HDLM_CUDA_CHECK(cudaEventRecord(m->grad_events[point], m->stream));
    m->grad_event_now = m->grad_events[point];
    m->grad_ready(m->grad_ready_ctx, (size_t)(first - m->grads));
    m->grad_event_now = NULL;
}

// dst[i] += (float)src[i]: the per-layer cond gradients summed in fp32 (hdlm_cuda_linear_backward gives bf16).
static __global__ void accumulate_bf16_kernel(float *dst, const bf16 *src, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] += __bfloat162float(src[i]);
}

static void accumulate_bf16(float *dst, const hdlm_bf16 *src, size_t n, hdlm_stream s) {
    accumulate_bf16_kernel<<<hdlm_ceil_div(n, 256), 256, 0, s>>>(dst, as_bf16(src), n);
    HDLM_CUDA_LAUNCHED();
}

void hdlm_cuda_model_backward(hdlm_cuda_model *m) {
    HDLM_ASSERT(m->have_head_grad, "hdlm_cuda_model_backward needs a forward with backward = true");
    m->have_head_grad = false;
    const hdlm_model_config *c = &m->config;
    int B = m->batch, L = m->length, N = B * L;
    int d = c->width, f = c->mlp_ratio * d, H = c->n_heads, hd = d / H, cd = c->cond_dim, V = c->vocab;
    bool gamma = c->family == HDLM_FAMILY_GAMMA;
    size_t Nd = (size_t)N * d;
    float p = m->dropout;
    hdlm_stream s = m->stream;

    // Output layer: the fused head already accumulated its weight gradients and wrote dlnf.
    prof_begin(m, PROF_BWD);
    hdlm_cuda_memset0(m->dh, Nd * sizeof(float), s);
    hdlm_cuda_layernorm_backward(m->dh, m->g.norm_final, NULL, NULL, m->dlnf, m->h + (size_t)c->n_layers * Nd,
                                 m->p.norm_final, m->lnf_mean, m->lnf_rstd, NULL, 0, N, d, s);
    prof_mark(m, PROF_NORM);
    if (gamma) {
        hdlm_cuda_memset0(m->dcond, (size_t)N * cd * sizeof(float), s);
        prof_mark(m, PROF_SIGMA);
    }
    grad_ready(m, 0, m->g.norm_final);

    for (int l = c->n_layers - 1; l >= 0; l--) {
        const hdlm_block_views *w = &m->p.blocks[l];
        const hdlm_block_views *g = &m->g.blocks[l];
        float *h_in = m->h + l * Nd, *h_mid = m->h_mid + l * Nd;
        hdlm_bf16 *a1 = m->a1 + l * Nd, *a2 = m->a2 + l * Nd;
        hdlm_bf16 *mod = gamma ? m->mod + l * 6 * Nd : NULL, *dmod = m->dmod;
        hdlm_bf16 *qkv = m->qkv + l * 3 * Nd, *att = m->att + l * Nd, *att_y = m->att_y + l * Nd;
        hdlm_bf16 *fc1 = m->fc1 + l * (size_t)N * f, *gelu = m->gelu + l * (size_t)N * f;
        hdlm_bf16 *mlp_y = m->mlp_y + l * Nd;

        // MLP branch: h_out = h_mid + g_m ⊙ dropout(W2·GELU(W1·a2 + b1) + b2)
        hdlm_cuda_residual_backward(m->dtmp, gamma ? dmod + 5 * d : NULL, m->dh, mlp_y, gamma ? mod + 5 * d : NULL,
                                    6 * d, N, d, p, site_key(m, l, HDLM_DROPOUT_MLP_RESIDUAL), s);
        prof_mark(m, PROF_RESIDUAL);
        hdlm_cuda_linear_backward(m->dfc, g->fc2_w, g->fc2_b, m->dtmp, gelu, shadow(m, w->fc2_w), fc1, N, f, d,
                                  false, s);
        prof_mark(m, PROF_FC2);
        hdlm_cuda_linear_backward(m->da, g->fc1_w, g->fc1_b, m->dfc, a2, shadow(m, w->fc1_w), NULL, N, d, f, false,
                                  s);
        prof_mark(m, PROF_FC1);
        hdlm_cuda_layernorm_backward(m->dh, g->norm2, gamma ? dmod + 3 * d : NULL, gamma ? dmod + 4 * d : NULL, m->da,
                                     h_mid, w->norm2, m->ln2_mean + (size_t)l * N, m->ln2_rstd + (size_t)l * N,
                                     gamma ? mod + 4 * d : NULL, 6 * d, N, d, s);
        prof_mark(m, PROF_NORM);

        // Attention branch: h_mid = h_in + g_a ⊙ dropout(W_o · attention(RoPE(W_qkv · a1)))
        hdlm_cuda_residual_backward(m->dtmp, gamma ? dmod + 2 * d : NULL, m->dh, att_y, gamma ? mod + 2 * d : NULL,
                                    6 * d, N, d, p, site_key(m, l, HDLM_DROPOUT_ATTN_RESIDUAL), s);
        prof_mark(m, PROF_RESIDUAL);
        hdlm_cuda_linear_backward(m->datt, g->attn_out, NULL, m->dtmp, att, shadow(m, w->attn_out), NULL, N, d, d,
                                  false, s);
        prof_mark(m, PROF_ATTN_OUT);
        hdlm_cuda_attention_backward(m->dqkv, m->attn_ws, m->datt, att, m->lse + (size_t)l * N * H, keep_bits(m, l),
                                     qkv, &m->mask, B, L, H, hd, p, site_key(m, l, HDLM_DROPOUT_ATTN_PROBS), s);
        prof_mark(m, PROF_ATTENTION);
        hdlm_cuda_rotary_backward(m->dqkv, m->cos_t, m->sin_t, B, L, H, hd, s);
        prof_mark(m, PROF_ROTARY);
        hdlm_cuda_linear_backward(m->da, g->qkv, NULL, m->dqkv, a1, shadow(m, w->qkv), NULL, N, d, 3 * d, false, s);
        prof_mark(m, PROF_QKV);
        hdlm_cuda_layernorm_backward(m->dh, g->norm1, gamma ? dmod : NULL, gamma ? dmod + d : NULL, m->da, h_in,
                                     w->norm1, m->ln1_mean + (size_t)l * N, m->ln1_rstd + (size_t)l * N,
                                     gamma ? mod + d : NULL, 6 * d, N, d, s);
        prof_mark(m, PROF_NORM);
        if (gamma) {
            hdlm_cuda_linear_backward(m->dcond_l, g->ada_w, g->ada_b, dmod, m->cond, shadow(m, w->ada_w), NULL, N, cd,
                                      6 * d, false, s);
            accumulate_bf16(m->dcond, m->dcond_l, (size_t)N * cd, s);
            prof_mark(m, PROF_SIGMA);
        }
        if (l > 0) grad_ready(m, c->n_layers - l, g->norm1);
    }

    hdlm_cuda_embedding_backward(m->g.embed, m->dh, m->tokens, gamma ? m->mix : NULL, (uint32_t)(V - 1), N, d, s);
    prof_mark(m, PROF_EMBED);
    if (gamma) {
        // c = SiLU(W2·SiLU(W1·sinusoid(σ) + b1) + b2); σ itself is an input (no gradient)
        size_t Nc = (size_t)N * cd;
        hdlm_cuda_float_to_bf16(m->dcond_l, m->dcond, Nc, s);
        hdlm_cuda_silu_backward(m->dc2, m->dcond_l, m->sig_h2, Nc, s);
        hdlm_cuda_linear_backward(m->dc1, m->g.sigma_w2, m->g.sigma_b2, m->dc2, m->sig_s1, shadow(m, m->p.sigma_w2),
                                  NULL, N, cd, cd, false, s);
        hdlm_cuda_silu_backward(m->dc1s, m->dc1, m->sig_h1, Nc, s);
        hdlm_cuda_linear_backward(NULL, m->g.sigma_w1, m->g.sigma_b1, m->dc1s, m->freq, shadow(m, m->p.sigma_w1),
                                  NULL, N, HDLM_SIGMA_FREQ_DIM, cd, false, s);
        prof_mark(m, PROF_SIGMA);
    }
    grad_ready(m, c->n_layers, m->grads);
}

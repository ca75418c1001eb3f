// Helpers shared by the sampler sources (not part of the public API).
#ifndef HDLM_SAMPLER_INTERNAL_H
#define HDLM_SAMPLER_INTERNAL_H
#include "model/kv_cache.h"
#include "hdlm/rng.h"
#include "hdlm/sampler.h"

// The stream of sequence `sample` at network call `call` (call 0: the γ prior / the ARDM order).
static inline void hdlm_sampler_rng(hdlm_rng *rng, const hdlm_sampler_config *cfg, uint64_t sample, int call) {
    hdlm_rng_init(rng, hdlm_rng_key(cfg->seed, sample, (uint64_t)call, HDLM_RNG_SAMPLE));
}

// The stream of position `position` of that sequence at that call: blocks from position·2^32 on of the call's stream,
// so the positions of a step draw independently of each other, in any order, on any thread.
static inline void hdlm_sampler_position_rng(hdlm_rng *rng, const hdlm_sampler_config *cfg, uint64_t sample, int call,
                                             int position) {
    hdlm_sampler_rng(rng, cfg, sample, call);
    rng->counter = (uint64_t)position << 32;
}

static inline void hdlm_sampler_impose_prompt(const hdlm_sampler_config *cfg, int length, uint32_t *x) {
    if (!cfg->prompt) return;
    for (int i = 0; i < length; i++)
        if (cfg->prompt_mask[i]) x[i] = cfg->prompt[i];
}

// The position after the last prompt position (0 without a prompt): where a stop token starts to count.
static inline int hdlm_sampler_prompt_end(const hdlm_sampler_config *cfg, int length) {
    int end = 0;
    for (int i = 0; cfg->prompt && i < length; i++)
        if (cfg->prompt_mask[i]) end = i + 1;
    return end;
}

// The denoiser's KV cache (a model denoiser), emptied for a generation of `batch` sequences: made and packed at the
// first call, kept until hdlm_denoiser_free.
hdlm_kv_cache *hdlm_denoiser_kv_cache(hdlm_denoiser *d, int batch);

// Categorical draws (hdlm_sample_weights) invert the CDF over chunks of the weights: chunks of 1024 entries (more
// where n > 256 Ki, at most HDLM_DRAW_MAX_CHUNKS of them), each summed in float64 over its entries > 0.
enum { HDLM_DRAW_MAX_CHUNKS = 256 };
int hdlm_draw_chunk_size(int n);
double hdlm_draw_chunk_sum(const float *w, int lo, int hi);
// The draw ∝ max(w, 0) over w[0..n) given the chunk sums (sums[c] = hdlm_draw_chunk_sum of chunk c, or the same sum
// computed in the pass that wrote w): their total, one uniform, the chunk, the entry in it.
uint32_t hdlm_draw_chunked(const float *w, int n, const double *sums, hdlm_rng *rng);

// One draw from softmax(z[0..width)/T) with the configuration's top-k / top-p; scratch holds 2·width floats.
uint32_t hdlm_sampler_draw(const hdlm_sampler_config *cfg, const float *z, int width, float *scratch, hdlm_rng *rng);

// cfg->stop: every position after each sequence's stop length (hdlm_sampler_stop_length) becomes stop_token.
void hdlm_sampler_pad_after_stop(const hdlm_sampler_config *cfg, int batch, int length, uint32_t *x);

// The network outputs of one schedule step for positions [*first, a_end] of every sequence: rows [b][i - *first] of
// *out (cache NULL: *first = 0 and positions [0, window) run under the step's mask). With a cache, blocks settled since
// the last call are appended first (tokens x, σ sigma_row at their positions; sigma_row NULL for ε).
int hdlm_sampler_step_forward(hdlm_denoiser *d, hdlm_kv_cache *cache, const hdlm_step *st, const uint32_t *x,
                              const float *sigma_row, int batch, int length, int window, int *first,
                              const float **out);

// Next-token sampling of an AR model (sampler_ar.c), called by hdlm_sample after the checks.
int hdlm_ar_sample(const hdlm_sampler_config *cfg, hdlm_denoiser *d, int batch, int length, uint64_t first_sample,
                   uint32_t *x, hdlm_sampler_progress progress, void *pctx);

// The γ analytic sampler (sampler_gamma.c), called by hdlm_sample after the checks.
int hdlm_gamma_sample(const hdlm_sampler_config *cfg, hdlm_denoiser *d, int batch, int length, uint64_t first_sample,
                      uint32_t *x, hdlm_sampler_progress progress, void *pctx);
#endif

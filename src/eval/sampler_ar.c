// Next-token sampling of an AR model (training.objective = ar, method §2.8): the inputs are the tokens shifted right
// after the start token (hdlm_ar_inputs), position i is drawn from the output at row i over the N real tokens, one
// network call per token. Without a cache each call runs the causal forward over the prefix [0, i]; with the KV cache
// (method §3.5: with the causal rule every earlier position is settled) each call appends the previous input's K/V
// and runs the one new row against them, so the whole sequence costs one forward of L rows.
#include <stdlib.h>
#include <string.h>

#include "hdlm/common.h"
#include "hdlm/diffusion.h"
#include "hdlm/sampler.h"
#include "sampler_internal.h"

int hdlm_ar_sample(const hdlm_sampler_config *cfg, hdlm_denoiser *d, int batch, int length, uint64_t first_sample,
                   uint32_t *x, hdlm_sampler_progress progress, void *pctx) {
    const int V = d->vocab, width = V - 1;   // never MASK: the AR model never saw it
    uint32_t *in = hdlm_malloc((size_t)batch * length * sizeof *in);
    uint32_t *step = hdlm_malloc(2 * (size_t)batch * sizeof *step);
    float *scratch = hdlm_malloc(2 * (size_t)width * sizeof *scratch);
    hdlm_kv_cache *cache = cfg->kv_cache ? hdlm_denoiser_kv_cache(d, batch) : NULL;
    bool *stopped = hdlm_calloc((size_t)batch, sizeof *stopped);
    int status = 0, prompt_end = hdlm_sampler_prompt_end(cfg, length);
    for (int i = 0; i < length && status == 0; i++) {
        for (int b = 0; b < batch; b++)
            in[(size_t)b * length + i] = i == 0 ? hdlm_ar_start(V) : x[(size_t)b * length + i - 1];
        const float *out;
        size_t row_stride;   // floats between the rows of consecutive sequences
        int row;             // the row of position i within a sequence's outputs
        if (cache) {
            // per sequence: [the previous input, entering the cache,] this input as the query
            int settle = i > 0 ? 1 : 0, T = settle + 1;
            for (int b = 0; b < batch; b++) {
                uint32_t *s = step + (size_t)b * T;
                if (settle) s[0] = in[(size_t)b * length + i - 1];
                s[settle] = in[(size_t)b * length + i];
            }
            status = hdlm_model_forward_cached(d->model, cache, step, NULL, batch, settle, 1, HDLM_BLOCK_FULL);
            out = cache->out, row_stride = (size_t)V, row = 0;
        } else {
            // the prefix [0, i] of every sequence, packed, under the causal rule
            uint32_t *packed = hdlm_malloc((size_t)batch * (i + 1) * sizeof *packed);
            for (int b = 0; b < batch; b++)
                memcpy(packed + (size_t)b * (i + 1), in + (size_t)b * length, (size_t)(i + 1) * sizeof *packed);
            hdlm_attn_mask causal = hdlm_mask_causal(i + 1);
            status = d->forward(d, packed, NULL, &causal, batch, i + 1, &out);
            free(packed);
            row_stride = (size_t)(i + 1) * V, row = i;
        }
        if (status != 0) break;
        for (int b = 0; b < batch; b++) {
            uint32_t *xb = x + (size_t)b * length;
            if (cfg->prompt && cfg->prompt_mask[i]) {
                xb[i] = cfg->prompt[i];
                continue;
            }
            hdlm_rng rng;
            hdlm_sampler_rng(&rng, cfg, first_sample + (uint64_t)b, i);
            xb[i] = hdlm_sampler_draw(cfg, out + b * row_stride + (size_t)row * V, width, scratch, &rng);
        }
        if (progress) progress(pctx, i + 1, length);
        // End of text: once every sequence has its stop token, the positions after it are padding, not drawn.
        bool all_stopped = cfg->stop;
        for (int b = 0; b < batch; b++) {
            stopped[b] |= cfg->stop && i >= prompt_end && x[(size_t)b * length + i] == cfg->stop_token;
            all_stopped &= stopped[b];
        }
        if (all_stopped) {
            for (int b = 0; b < batch; b++)
                for (int j = i + 1; j < length; j++) x[(size_t)b * length + j] = cfg->stop_token;
            if (progress) progress(pctx, length, length);
            break;
        }
    }
    if (status == 0) hdlm_sampler_pad_after_stop(cfg, batch, length, x);
    free(stopped);
    free(scratch);
    free(step);
    free(in);
    return status;
}

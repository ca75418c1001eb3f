// γ analytic sampler over the hyperschedule (spec §6.7 NAR, §6.8 SAR): Tweedie τ-leaping with the convex mix of the
// absorbing and uniform staggered scores, reproduced as the reference computes it (decision §11.11).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hdlm/common.h"
#include "hdlm/diffusion.h"
#include "hdlm/sampler.h"
#include "sampler_internal.h"

// One active position: weights p[0..V) of the next token given log-scores o, current token x, dσ (spec §6.7).
static void gamma_step_weights(const float *o, int V, uint32_t x, double dsigma, double gamma, bool to_denoise,
                               hdlm_gamma_score_convention conv, double *s, double *p) {
    int N = V - 1;
    double sum_real = 0, sum_all;
    for (int y = 0; y < V; y++) {
        s[y] = exp((double)o[y]);
        // sedd convention (decision §14.2): the score of the current state relative to itself is exp(0) = 1.
        if (conv == HDLM_GAMMA_SCORE_SEDD && (uint32_t)y == x) s[y] = 1.0;
        if (y < N) sum_real += s[y];
    }
    sum_all = sum_real + s[N];
    double e_pos = exp(dsigma), e_neg = exp(-dsigma);
    double u_shift = (e_neg - 1) / (N * e_neg) * sum_real;
    double k_abs = exp(-(1 - gamma) * dsigma), k_uni = exp(-gamma * dsigma);
    bool masked = x == (uint32_t)N;
    for (int y = 0; y < V; y++) {
        double a = e_pos * s[y] + (y == N ? (1 - e_pos) * sum_all : 0.0);
        double u = y < N ? u_shift + s[y] / e_neg : s[N];
        double g = (1 - gamma) * a + gamma * u, T;
        if (masked) T = y < N ? 1 - k_abs : 1.0;
        else T = y < N ? k_abs * (1 - k_uni) / N + ((uint32_t)y == x ? k_abs * k_uni : 0.0) : 0.0;
        p[y] = g * T;
    }
    if (to_denoise) p[N] = 0;
}

int hdlm_gamma_sample(const hdlm_sampler_config *cfg, hdlm_denoiser *d, int batch, int length, uint64_t first_sample,
                      uint32_t *x, hdlm_sampler_progress progress, void *pctx) {
    const hdlm_schedule *sch = cfg->schedule;
    int V = d->vocab, calls = sch->k_max - 1, status = 0;
    bool sar = cfg->kind == HDLM_SAMPLER_GAMMA_SAR;
    double factor = sar ? 0.9 : 0.99, eps_s = sch->sampling_eps, eps_a = hdlm_schedule_active_eps(sch);
    double delta = hdlm_schedule_delta(sch);
    for (int b = 0; b < batch; b++) {   // the prior (spec §6.7), one pre-drawn tensor for NAR and SAR alike
        uint64_t key = hdlm_rng_key(cfg->seed, first_sample + (uint64_t)b, 0, HDLM_RNG_SAMPLE);
        hdlm_gamma_prior_sample(cfg->gamma, length, V, key, x + (size_t)b * length);
        hdlm_sampler_impose_prompt(cfg, length, x + (size_t)b * length);
    }
    hdlm_step st;
    hdlm_step_alloc(&st, length);
    float *sigma_row = hdlm_malloc((size_t)length * sizeof *sigma_row);
    double *dsigma = hdlm_malloc((size_t)length * sizeof *dsigma);
    hdlm_kv_cache cache;
    if (cfg->kv_cache) hdlm_kv_cache_init(&cache, d->model, batch);
    double *s = hdlm_malloc((size_t)V * sizeof *s), *p = hdlm_malloc((size_t)V * sizeof *p);
    for (int k = 1; k <= calls && status == 0; k++) {
        HDLM_ASSERT(hdlm_schedule_step(sch, k, &st) == 0, "gamma sampler step %d", k);
        hdlm_gamma_sigmas(&st, sigma_row);
        for (int i = 0; i < length; i++) {
            double h = delta;
            if (st.to_denoise[i]) h = factor * eps_a;
            else if (st.cls[i] == HDLM_POS_SETTLED) h = factor * eps_s;
            h = fmin(fmax(h, factor * eps_s), delta);
            dsigma[i] = hdlm_loglinear_sigma(st.t[i]) - hdlm_loglinear_sigma(st.t[i] - h);
        }
        // SAR drops the worthless tail (spec §6.8); that changes no other output (spec §3.5). With the KV cache
        // only the active positions run.
        int n = sar ? st.a_end + 1 : length, first;
        const float *o;
        status = hdlm_sampler_step_forward(d, cfg->kv_cache ? &cache : NULL, &st, x, sigma_row, batch, length,
                                           n, &first, &o);
        if (status) break;
        int rows = cfg->kv_cache ? st.a_end + 1 - first : n;
        for (int b = 0; b < batch; b++) {
            hdlm_rng rng;
            hdlm_sampler_rng(&rng, cfg, first_sample + (uint64_t)b, k);
            uint32_t *xb = x + (size_t)b * length;
            for (int i = st.n_set; i <= st.a_end; i++) {
                if (cfg->prompt && cfg->prompt_mask[i]) continue;
                gamma_step_weights(o + ((size_t)b * rows + (i - first)) * V, V, xb[i], dsigma[i], cfg->gamma,
                                   st.to_denoise[i], cfg->score_convention, s, p);
                xb[i] = hdlm_sample_weights(p, V, &rng);
            }
        }
        if (progress) progress(pctx, k, calls);
    }
    free(p);
    free(s);
    if (cfg->kv_cache) hdlm_kv_cache_free(&cache);
    free(dsigma);
    free(sigma_row);
    hdlm_step_free(&st);
    return status;
}

// γ analytic sampler over the hyperschedule (method §6.7 NAR, §6.8 SAR): Tweedie τ-leaping with the convex mix of the
// absorbing and uniform staggered scores, reproduced as the reference computes it (§11 item 11).
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "hdlm/common.h"
#include "hdlm/diffusion.h"
#include "hdlm/sampler.h"
#include "core/vecmath.h"
#include "sampler_internal.h"

// sums[c] for the draw chunk c holding entry y, after w[y] changed.
static void resum_chunk(const float *w, int V, int chunk, int y, double *sums) {
    int lo = y / chunk * chunk;
    sums[y / chunk] = hdlm_draw_chunk_sum(w, lo, lo + chunk < V ? lo + chunk : V);
}

// One active position: the next token given log-scores o, current token x, dσ (method §6.7), drawn from the weights
// p_y = g_y·T_y, g = (1-γ)·a + γ·u the mixed staggered score, T the transition factor. Every real y other than x has
// p_y = A·s_y + B with the same A, B, so the V-wide work is three vectorised fp32 passes (max; exp; the affine
// map), the last two chunk by chunk with their float64 sums taken while the chunk is in L1, and the draw inside one
// chunk; x and MASK are computed on their own in float64. Scores are taken relative to max(o) (s_y = e^{o_y - max}):
// every p_y is homogeneous of degree 1 in the scores (the sedd convention's 1 for the current state becomes
// e^{-max}), so the law is unchanged and no exp overflows. s, w: V floats; sums: HDLM_DRAW_MAX_CHUNKS.
static uint32_t gamma_step_draw(const float *o, int V, uint32_t x, double dsigma, double gamma, bool to_denoise,
                                hdlm_gamma_score_convention conv, float *s, float *w, double *sums, hdlm_rng *rng) {
    int N = V - 1;
    float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
    for (int y = 0; y < V; y++) mx = o[y] > mx ? o[y] : mx;
    double sum_real = 0;   // in the draw's chunks and lane order: the same bits on every build
    int chunk = hdlm_draw_chunk_size(V);
    for (int lo = 0; lo < N; lo += chunk) {
        int hi = lo + chunk < N ? lo + chunk : N;
#pragma omp simd
        for (int y = lo; y < hi; y++) s[y] = hdlm_expf(o[y] - mx);
        sum_real += hdlm_draw_chunk_sum(s, lo, hi);
    }
    s[N] = hdlm_expf(o[N] - mx);
    // sedd convention (decision §14.2): the score of the current state relative to itself is exp(0) = 1.
    double s_x = conv == HDLM_GAMMA_SCORE_SEDD ? exp(-(double)mx) : s[x];
    if (x < (uint32_t)N) sum_real += s_x - s[x];
    double s_mask = x == (uint32_t)N ? s_x : s[N], sum_all = sum_real + s_mask;
    double e_pos = exp(dsigma), e_neg = exp(-dsigma);
    double u_shift = (e_neg - 1) / (N * e_neg) * sum_real;
    double k_abs = exp(-(1 - gamma) * dsigma), k_uni = exp(-gamma * dsigma);
    bool masked = x == (uint32_t)N;
    // Real y: a_y = e^{dσ}·s_y, u_y = u_shift + s_y·e^{dσ}; T_y = 1 - k_abs (x masked) or k_abs(1 - k_uni)/N, plus
    // k_abs·k_uni at y = x. MASK: a_N = e^{dσ}·s_N + (1 - e^{dσ})·Σ_all s, u_N = s_N, T_N = 1 (x masked) or 0.
    double t_real = masked ? 1 - k_abs : k_abs * (1 - k_uni) / N;
    double c1 = (1 - gamma) * e_pos + gamma / e_neg, c0 = gamma * u_shift;
    float A = (float)(t_real * c1), B = (float)(t_real * c0);
    for (int c = 0, lo = 0; lo < V; c++, lo += chunk) {
        int hi = lo + chunk < N ? lo + chunk : N;
#pragma omp simd
        for (int y = lo; y < hi; y++) w[y] = A * s[y] + B;
        sums[c] = hdlm_draw_chunk_sum(w, lo, hi);   // while the chunk is in L1
    }
    double g_mask = (1 - gamma) * (e_pos * s_mask + (1 - e_pos) * sum_all) + gamma * s_mask;
    w[N] = to_denoise || !masked ? 0.0f : (float)g_mask;
    if (!masked) w[x] = (float)((c1 * s_x + c0) * (t_real + k_abs * k_uni));
    // The chunks holding MASK and x, summed again with their own weights.
    resum_chunk(w, V, chunk, N, sums);
    if (!masked) resum_chunk(w, V, chunk, (int)x, sums);
    return hdlm_draw_chunked(w, V, sums, rng);
}

int hdlm_gamma_sample(const hdlm_sampler_config *cfg, hdlm_denoiser *d, int batch, int length, uint64_t first_sample,
                      uint32_t *x, hdlm_sampler_progress progress, void *pctx) {
    const hdlm_schedule *sch = cfg->schedule;
    int V = d->vocab, calls = sch->k_max - 1, status = 0;
    bool sar = cfg->kind == HDLM_SAMPLER_GAMMA_SAR;
    double factor = sar ? 0.9 : 0.99, eps_s = sch->sampling_eps, eps_a = hdlm_schedule_active_eps(sch);
    double delta = hdlm_schedule_delta(sch);
    for (int b = 0; b < batch; b++) {   // the prior (method §6.7), one pre-drawn tensor for NAR and SAR alike
        uint64_t key = hdlm_rng_key(cfg->seed, first_sample + (uint64_t)b, 0, HDLM_RNG_SAMPLE);
        hdlm_gamma_prior_sample(cfg->gamma, length, V, key, x + (size_t)b * length);
        hdlm_sampler_impose_prompt(cfg, length, x + (size_t)b * length);
    }
    hdlm_step st;
    hdlm_step_alloc(&st, length);
    float *sigma_row = hdlm_malloc((size_t)length * sizeof *sigma_row);
    double *dsigma = hdlm_malloc((size_t)length * sizeof *dsigma);
    hdlm_kv_cache *cache = cfg->kv_cache ? hdlm_denoiser_kv_cache(d, batch) : NULL;
    int threads = omp_get_max_threads();
    float *scratch = hdlm_malloc((size_t)threads * 2 * V * sizeof *scratch);
    double *chunk_sums = hdlm_malloc((size_t)threads * HDLM_DRAW_MAX_CHUNKS * sizeof *chunk_sums);
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
        // SAR drops the worthless tail (method §6.8); that changes no other output (method §3.5). With the KV cache
        // only the active positions run.
        int n = sar ? st.a_end + 1 : length, first;
        const float *o;
        status = hdlm_sampler_step_forward(d, cache, &st, x, sigma_row, batch, length, n, &first, &o);
        if (status) break;
        int rows = cfg->kv_cache ? st.a_end + 1 - first : n;
        // Every active position of every sequence draws from its own stream (same bits on any number of threads).
        int lo = st.n_set, active = st.a_end + 1 - lo;
#pragma omp parallel
        {
            int t = omp_get_thread_num();
            float *s = scratch + (size_t)t * 2 * V, *w = s + V;
            double *sums = chunk_sums + (size_t)t * HDLM_DRAW_MAX_CHUNKS;
#pragma omp for schedule(dynamic, 4)
            for (int r = 0; r < batch * active; r++) {
                int b = r / active, i = lo + r % active;
                if (cfg->prompt && cfg->prompt_mask[i]) continue;
                hdlm_rng rng;
                hdlm_sampler_position_rng(&rng, cfg, first_sample + (uint64_t)b, k, i);
                uint32_t *xb = x + (size_t)b * length;
                xb[i] = gamma_step_draw(o + ((size_t)b * rows + (i - first)) * V, V, xb[i], dsigma[i], cfg->gamma,
                                        st.to_denoise[i], cfg->score_convention, s, w, sums, &rng);
            }
        }
        if (progress) progress(pctx, k, calls);
    }
    free(chunk_sums);
    free(scratch);
    free(dsigma);
    free(sigma_row);
    hdlm_step_free(&st);
    return status;
}

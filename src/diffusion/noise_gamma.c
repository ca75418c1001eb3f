// γ-hybrid noise: log-linear schedule, forward marginal and sampling, sampler prior, σ scaling (method §5.2-§5.4).
#include <math.h>

#include "hdlm/common.h"
#include "hdlm/diffusion.h"
#include "hdlm/rng.h"

// LogLinearNoise's built-in eps (the YAML sigma_min/sigma_max are ignored, §11 item 13).
#define LOGLINEAR_EPS 5e-3

double hdlm_loglinear_sigma(double t) { return -log1p(-(1.0 - LOGLINEAR_EPS) * t); }

double hdlm_loglinear_dsigma(double t) { return (1.0 - LOGLINEAR_EPS) / (1.0 - (1.0 - LOGLINEAR_EPS) * t); }

void hdlm_gamma_forward_probs(double sigma, double gamma, double *p_mask, double *p_uniform) {
    double a = exp(-(1.0 - gamma) * sigma), g = exp(-gamma * sigma);
    *p_mask = 1.0 - a;
    *p_uniform = a * (1.0 - g);
}

void hdlm_gamma_corrupt(double gamma, const hdlm_step *const *steps, const uint32_t *x0, int batch, int vocab,
                        uint64_t key, uint32_t *xt) {
    const uint32_t mask = (uint32_t)(vocab - 1);
    const int L = steps[0]->length;
    for (int b = 1; b < batch; b++)
        HDLM_ASSERT(steps[b]->length == L, "steps of lengths %d and %d in one batch", steps[b]->length, L);
#pragma omp parallel for schedule(static)
    for (int b = 0; b < batch; b++) {
        const hdlm_step *st = steps[b];
        hdlm_rng rng;
        hdlm_rng_init(&rng, hdlm_rng_key(key, (uint64_t)b, 0, HDLM_RNG_NOISE));
        for (int i = 0; i < L; i++) {
            size_t r = (size_t)b * L + i;
            double p_mask, p_uniform, u = hdlm_rng_uniform_double(&rng);
            hdlm_gamma_forward_probs(hdlm_loglinear_sigma(st->t[i]), gamma, &p_mask, &p_uniform);
            if (x0[r] == mask || u < p_mask) xt[r] = mask;   // MASK is absorbing
            else if (u < p_mask + p_uniform) xt[r] = (uint32_t)hdlm_rng_below(&rng, (uint64_t)(vocab - 1));
            else xt[r] = x0[r];
        }
    }
}

void hdlm_gamma_sigmas(const hdlm_step *st, float *sigma) {
    for (int i = 0; i < st->length; i++) sigma[i] = (float)hdlm_loglinear_sigma(st->t[i]);
}

double hdlm_gamma_prior_mask_prob(double gamma) {
    double absorbed = 1.0 - exp(-4.0 * (1.0 - gamma));
    double uniform = (1.0 - exp(-4.0 * gamma)) * exp(-4.0 * (1.0 - gamma));
    return absorbed / (absorbed + uniform);
}

void hdlm_gamma_prior_sample(double gamma, int count, int vocab, uint64_t key, uint32_t *x) {
    double rho = hdlm_gamma_prior_mask_prob(gamma);
    hdlm_rng rng;
    hdlm_rng_init(&rng, key);
    for (int i = 0; i < count; i++)
        x[i] = hdlm_rng_uniform_double(&rng) < rho ? (uint32_t)(vocab - 1)
                                                   : (uint32_t)hdlm_rng_below(&rng, (uint64_t)(vocab - 1));
}

double hdlm_gamma_sigma_expm1(double sigma) { return sigma < 0.5 ? expm1(sigma) : exp(sigma) - 1.0; }

double hdlm_gamma_log_score_shift(double sigma, int vocab) {
    return -log(hdlm_gamma_sigma_expm1(sigma)) - log(vocab - 1.0);
}

void hdlm_gamma_scale_by_sigma(const float *sigma, int length, int vocab, float *out) {
    for (int i = 0; i < length; i++) {
        float shift = (float)hdlm_gamma_log_score_shift(sigma[i], vocab);
        for (int y = 0; y < vocab; y++) out[(size_t)i * vocab + y] += shift;
    }
}

// Positions whose MASK entry post-processing pins: i <= L-2 with i+1 settled, i.e. i < n_set - 1.
void hdlm_gamma_post_process(const hdlm_step *st, int vocab, float *out) {
    for (int i = 0; i + 1 < st->n_set; i++) out[(size_t)i * vocab + vocab - 1] = -1000.0f;
}

void hdlm_gamma_post_process_backward(const hdlm_step *st, int vocab, float *dout) {
    for (int i = 0; i + 1 < st->n_set; i++) dout[(size_t)i * vocab + vocab - 1] = 0.0f;
}

double hdlm_gamma_score_entropy(const float *o, int vocab, uint32_t x, uint32_t x0, double sigma, double gamma,
                                double grad_scale, float *grad) {
    const double eps0 = 1e-12;
    const int N = vocab - 1;
    HDLM_ASSERT(x0 < (uint32_t)N && x <= (uint32_t)N, "score entropy needs a real x0 (%u) and x <= MASK (%u)", x0, x);
    double E = hdlm_gamma_sigma_expm1(sigma);
    double sum_s = 0, sum_o = 0;
    for (int y = 0; y < N; y++) {   // one exp per entry: s_y is kept in grad for the gradient pass
        double s = exp((double)o[y]);
        sum_s += s;
        sum_o += o[y];
        if (grad) grad[y] = (float)s;
    }
    if (grad) grad[N] = 0.0f;   // the MASK channel never enters the loss
    if (x == (uint32_t)N) {     // absorbing branch
        double r = 1.0 / (E + eps0);
        if (grad)
            for (int y = 0; y < N; y++)
                grad[y] = (float)(grad_scale * (1.0 - gamma) * (grad[y] - (y == (int)x0 ? r : 0.0)));
        return (1.0 - gamma) * (sum_s - r * o[x0] + r * (log(r + eps0) - 1.0));
    }
    // uniform branch
    double rho = 1.0 - N / (E + N + eps0);
    double mean_o = (sum_o - o[x]) / N, mean_s = (sum_s - exp((double)o[x])) / N;
    double neg, cst, dneg_all, dneg_x0;
    if (x == x0) {
        neg = rho * mean_o;
        cst = ((N - 1.0) / N) * rho * (log(rho + eps0) - 1.0);
        dneg_all = rho / N;
        dneg_x0 = 0.0;
    } else {
        neg = mean_o + o[x0] / (E + eps0);
        cst = ((-log(rho + eps0) - 1.0) / (rho + eps0) - (N - 2.0)) / N;
        dneg_all = 1.0 / N;
        dneg_x0 = 1.0 / (E + eps0);
    }
    if (grad) {
        for (int y = 0; y < N; y++)
            grad[y] = (float)(grad_scale * gamma * (grad[y] / N - dneg_all - (y == (int)x0 ? dneg_x0 : 0.0)));
        grad[x] = 0.0f;   // o_x cancels out of both Ā and P̄
    }
    return gamma * (mean_s - neg + cst);
}

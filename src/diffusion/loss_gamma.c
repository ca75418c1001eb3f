// γ-hybrid training loss: σ'-weighted score entropy plus the settled-prefix cross-entropy (method §5.6).
#include <stdlib.h>

#include "hdlm/common.h"
#include "hdlm/diffusion.h"

double hdlm_gamma_settled_weight(const hdlm_step *st, int i) {
    if (st->mask.half > 0) return 1.0;   // the two-copy layout's clean copy: unit weights (method §5.7)
    int nb = (st->n_set + st->width - 1) / st->width;
    return nb <= 1 ? 1.0 : (double)(i / st->width) / (nb - 1);
}

double hdlm_gamma_loss(const hdlm_gamma_config *cfg, const hdlm_step *const *steps, const float *out,
                       const uint32_t *xt, const uint32_t *x0, int batch, int vocab, float *dout,
                       hdlm_gamma_terms *terms) {
    int L = steps[0]->length;
    for (int b = 1; b < batch; b++)
        HDLM_ASSERT(steps[b]->length == L, "steps of lengths %d and %d in one batch", steps[b]->length, L);
    long rows = (long)batch * L;
    double *diffusion = hdlm_malloc((size_t)rows * sizeof *diffusion);
    double *ce = hdlm_malloc((size_t)rows * sizeof *ce);
#pragma omp parallel for schedule(static)
    for (long r = 0; r < rows; r++) {
        const hdlm_step *st = steps[r / L];
        int i = (int)(r % L);
        const float *o = out + (size_t)r * vocab;
        float *grad = dout ? dout + (size_t)r * vocab : NULL;
        diffusion[r] = ce[r] = 0.0;
        if (st->cls[i] == HDLM_POS_SETTLED) {
            // Plain CE over all V entries, averaged over the n_set settled tokens of the sequence.
            double coef = hdlm_gamma_settled_weight(st, i) / st->n_set / batch;
            ce[r] = coef * hdlm_ce_row(o, vocab, vocab, x0[r], cfg->ce_weight * coef, grad);
        } else {
            double t = st->t[i], coef = hdlm_loglinear_dsigma(t) * st->weight[i] / batch;
            double sigma = hdlm_loglinear_sigma(t);
            diffusion[r] = coef * hdlm_gamma_score_entropy(o, vocab, xt[r], x0[r], sigma, cfg->gamma,
                                                           cfg->diffusion_weight * coef, grad);
        }
    }
    double d = 0, c = 0;   // fixed order: independent of the thread count
    for (long r = 0; r < rows; r++) {
        d += diffusion[r];
        c += ce[r];
    }
    free(diffusion);
    free(ce);
    if (terms) {
        terms->diffusion = d;
        terms->ce = c;
    }
    return cfg->diffusion_weight * d + cfg->ce_weight * c;
}

// Weighted cross-entropy over a corrupted micro-batch, fused with its gradient (include/hdlm/diffusion.h).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hdlm/common.h"
#include "hdlm/diffusion.h"
#include "core/vecmath.h"

void hdlm_corruption_alloc(hdlm_corruption *c, int batch, int length) {
    size_t n = (size_t)batch * length;
    c->batch = batch;
    c->length = length;
    c->xt = hdlm_malloc(n * sizeof *c->xt);
    c->kind = hdlm_malloc(n);
    c->weight = hdlm_malloc(n * sizeof *c->weight);
    c->norm = 1.0;
}

void hdlm_corruption_free(hdlm_corruption *c) {
    free(c->xt);
    free(c->kind);
    free(c->weight);
    memset(c, 0, sizeof *c);
}

double hdlm_ce_row(const float *z, int vocab, int softmax_width, uint32_t target, double grad_scale, float *grad) {
    HDLM_ASSERT(target < (uint32_t)softmax_width, "target %u outside the softmax width %d", target, softmax_width);
    // grad may be z itself (the model lets a loss overwrite its outputs): read z[target] before writing.
    const double z_target = z[target];
    float zmax_f = -INFINITY;
#pragma omp simd reduction(max : zmax_f)
    for (int y = 0; y < softmax_width; y++) zmax_f = z[y] > zmax_f ? z[y] : zmax_f;
    // Vectorised double exp (src/core/vecmath.h): a row of 50258 logits costs ~1 ns/entry instead of glibc's
    // scalar exp at ~9; z − max is exact in double, so the loss keeps double accuracy.
    const double zmax = zmax_f;
    double sum = 0;
    if (!grad) {
#pragma omp simd reduction(+ : sum)
        for (int y = 0; y < softmax_width; y++) sum += hdlm_exp((double)z[y] - zmax);
        return zmax + log(sum) - z_target;
    }
    // One exp per entry: keep e^(z-max) in grad, then scale it into softmax·grad_scale.
#pragma omp simd reduction(+ : sum)
    for (int y = 0; y < softmax_width; y++) {
        double e = hdlm_exp((double)z[y] - zmax);
        sum += e;
        grad[y] = (float)e;
    }
    double lse = zmax + log(sum), k = grad_scale / sum;
#pragma omp simd
    for (int y = 0; y < softmax_width; y++) grad[y] = (float)(grad[y] * k);
    for (int y = softmax_width; y < vocab; y++) grad[y] = 0.0f;
    grad[target] = (float)(grad_scale * (exp(z_target - lse) - 1.0));
    return lse - z_target;
}

double hdlm_corruption_loss_rows(const hdlm_corruption *c, const uint32_t *x0, const int *rows, int n_rows,
                                 const float *logits, int vocab, int softmax_width, float *dlogits) {
    double *row_loss = hdlm_malloc(((size_t)n_rows + 1) * sizeof *row_loss);
    double scale = 1.0 / c->norm;
#pragma omp parallel for schedule(static)
    for (long j = 0; j < n_rows; j++) {
        long r = rows ? rows[j] : j;
        float *grad = dlogits ? dlogits + (size_t)j * vocab : NULL;
        if (c->weight[r] == 0.0f) {
            row_loss[j] = 0.0;
            if (grad) memset(grad, 0, (size_t)vocab * sizeof *grad);
            continue;
        }
        double coef = c->weight[r] * scale;
        row_loss[j] = coef * hdlm_ce_row(logits + (size_t)j * vocab, vocab, softmax_width, x0[r], coef, grad);
    }
    // Fixed order, independent of the thread count; rows left out would each add an exact 0.
    double loss = 0;
    for (long j = 0; j < n_rows; j++) loss += row_loss[j];
    free(row_loss);
    return loss;
}

double hdlm_corruption_loss(const hdlm_corruption *c, const uint32_t *x0, const float *logits, int vocab,
                            int softmax_width, float *dlogits) {
    return hdlm_corruption_loss_rows(c, x0, NULL, c->batch * c->length, logits, vocab, softmax_width, dlogits);
}

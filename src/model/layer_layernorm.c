// LayerNorm without bias (eps 1e-5, biased variance, fp32 statistics; method §7.2): forward and backward; and the
// forward of the biased variant the GPT-2 judge uses (method §9.3).
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "hdlm/common.h"
#include "model/layers.h"

#define LAYERNORM_EPS 1e-5f

// Mean and 1/sqrt(var + eps) of one row (biased variance, two passes in fp32).
static inline void row_stats(const float *x, int d, float *mean, float *rstd) {
    float m = 0.0f;
#pragma omp simd reduction(+ : m)
    for (int i = 0; i < d; i++) m += x[i];
    m /= (float)d;
    float v = 0.0f;
#pragma omp simd reduction(+ : v)
    for (int i = 0; i < d; i++) v += (x[i] - m) * (x[i] - m);
    v /= (float)d;
    *mean = m;
    *rstd = 1.0f / sqrtf(v + LAYERNORM_EPS);
}

void hdlm_layernorm_forward(float *out, float *mean, float *rstd, const float *in, const float *w, int n, int d) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < n; r++) {
        const float *x = in + (size_t)r * d;
        float *y = out + (size_t)r * d;
        float m, s;
        row_stats(x, d, &m, &s);
        for (int i = 0; i < d; i++) y[i] = (x[i] - m) * s * w[i];
        mean[r] = m;
        rstd[r] = s;
    }
}

void hdlm_layernorm_backward(float *din, float *dw, const float *dout, const float *in, const float *w,
                             const float *mean, const float *rstd, int n, int d) {
    // dw is reduced through per-thread partial sums added in thread order (deterministic for a fixed thread count).
    int threads = omp_get_max_threads();
    float *partial = hdlm_calloc((size_t)threads * d, sizeof(float));
#pragma omp parallel num_threads(threads)
    {
        float *pw = partial + (size_t)omp_get_thread_num() * d;
#pragma omp for schedule(static)
        for (int r = 0; r < n; r++) {
            const float *x = in + (size_t)r * d;
            const float *dy = dout + (size_t)r * d;
            float *dx = din + (size_t)r * d;
            float m = mean[r], s = rstd[r];
            // dx = s · (g − mean(g) − x̂ · mean(g·x̂)), g = dy ⊙ w
            float sum_g = 0.0f, sum_gx = 0.0f;
#pragma omp simd reduction(+ : sum_g, sum_gx)
            for (int i = 0; i < d; i++) {
                float xh = (x[i] - m) * s;
                float g = dy[i] * w[i];
                sum_g += g;
                sum_gx += g * xh;
                pw[i] += dy[i] * xh;
            }
            sum_g /= (float)d;
            sum_gx /= (float)d;
            for (int i = 0; i < d; i++) {
                float xh = (x[i] - m) * s;
                dx[i] += s * (dy[i] * w[i] - sum_g - xh * sum_gx);
            }
        }
    }
    for (int t = 0; t < threads; t++)
        for (int i = 0; i < d; i++) dw[i] += partial[(size_t)t * d + i];
    free(partial);
}

void hdlm_layernorm_bias_forward(float *out, const float *in, const float *w, const float *b, int n, int d) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < n; r++) {
        const float *x = in + (size_t)r * d;
        float *y = out + (size_t)r * d;
        float m, s;
        row_stats(x, d, &m, &s);
        for (int i = 0; i < d; i++) y[i] = (x[i] - m) * s * w[i] + b[i];
    }
}

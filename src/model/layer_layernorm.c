// LayerNorm without bias (eps 1e-5, biased variance, fp32 statistics; method §7.2): forward and backward; and the
// forward of the biased variant the GPT-2 judge uses (method §9.3).
#include <math.h>

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
    // dw[i] = Σ_r dy[r][i] · x̂[r][i] is summed over the rows in order by one thread per block of columns, in a pass of
    // its own: per-thread partial sums of row ranges made the bits depend on the thread count.
    enum { DW_COLS = 128 };
#pragma omp parallel
    {
#pragma omp for schedule(static) nowait
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
            }
            sum_g /= (float)d;
            sum_gx /= (float)d;
            for (int i = 0; i < d; i++) {
                float xh = (x[i] - m) * s;
                dx[i] += s * (dy[i] * w[i] - sum_g - xh * sum_gx);
            }
        }
#pragma omp for schedule(dynamic, 1)
        for (int c0 = 0; c0 < d; c0 += DW_COLS) {
            int cols = d - c0 < DW_COLS ? d - c0 : DW_COLS;
            float acc[DW_COLS] = {0};
            for (int r = 0; r < n; r++) {
                const float *x = in + (size_t)r * d + c0, *dy = dout + (size_t)r * d + c0;
                float m = mean[r], s = rstd[r];
#pragma omp simd
                for (int i = 0; i < cols; i++) acc[i] += dy[i] * ((x[i] - m) * s);
            }
            for (int i = 0; i < cols; i++) dw[c0 + i] += acc[i];
        }
    }
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

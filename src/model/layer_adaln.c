// γ-family conditioning: sinusoidal σ embedding, SiLU and the per-token adaLN modulation (method §7.2, §7.3).
#include <math.h>

#include "model/layers.h"

void hdlm_sigma_sinusoid(float *freq, const float *sigma, int n, int dim) {
    int half = dim / 2;
#pragma omp parallel for schedule(static)
    for (int r = 0; r < n; r++) {
        float *f = freq + (size_t)r * dim;
        for (int k = 0; k < half; k++) {
            // fp32 like the reference: f_k = exp(−ln(10000)·k/half), argument σ·f_k
            float fk = expf(-logf(10000.0f) * (float)k / (float)half);
            float arg = sigma[r] * fk;
            f[k] = cosf(arg);
            f[half + k] = sinf(arg);
        }
    }
}

void hdlm_silu_forward(float *out, const float *in, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = in[i] / (1.0f + expf(-in[i]));
}

void hdlm_silu_backward(float *din, const float *dout, const float *in, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        float s = 1.0f / (1.0f + expf(-in[i]));
        din[i] = dout[i] * s * (1.0f + in[i] * (1.0f - s));
    }
}

void hdlm_modulate_forward(float *out, const float *x, const float *shift, const float *scale, int mod_stride, int n,
                           int d) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < n; r++) {
        const float *xr = x + (size_t)r * d;
        const float *sh = shift + (size_t)r * mod_stride;
        const float *sc = scale + (size_t)r * mod_stride;
        float *o = out + (size_t)r * d;
        for (int i = 0; i < d; i++) o[i] = xr[i] * (1.0f + sc[i]) + sh[i];
    }
}

void hdlm_modulate_backward(float *dx, float *dshift, float *dscale, const float *dout, const float *x,
                            const float *scale, int mod_stride, int n, int d) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < n; r++) {
        const float *g = dout + (size_t)r * d;
        const float *xr = x + (size_t)r * d;
        const float *sc = scale + (size_t)r * mod_stride;
        float *dsh = dshift + (size_t)r * mod_stride;
        float *dsc = dscale + (size_t)r * mod_stride;
        float *dxr = dx + (size_t)r * d;
        for (int i = 0; i < d; i++) {
            dxr[i] = g[i] * (1.0f + sc[i]);
            dsh[i] = g[i];
            dsc[i] = g[i] * xr[i];
        }
    }
}

// GELU, tanh approximation (method §7.2): the MLP's nonlinearity, forward and backward.
#include "model/layers.h"
#include "core/vecmath.h"

#define GELU_K 0.7978845608028654f   // sqrt(2/pi)
#define GELU_C 0.044715f

void hdlm_gelu_forward(float *out, const float *in, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        float u = in[i];
        out[i] = 0.5f * u * (1.0f + hdlm_tanhf(GELU_K * (u + GELU_C * u * u * u)));
    }
}

void hdlm_gelu_backward(float *din, const float *dout, const float *in, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        float u = in[i];
        float t = hdlm_tanhf(GELU_K * (u + GELU_C * u * u * u));
        float dt = (1.0f - t * t) * GELU_K * (1.0f + 3.0f * GELU_C * u * u);
        din[i] = dout[i] * (0.5f * (1.0f + t) + 0.5f * u * dt);
    }
}

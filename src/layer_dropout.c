// Inverted dropout (scale 1/(1-p) on kept elements, spec §7.2) with counter-based masks, and the gated residual add
// h + g ⊙ dropout(y) that every DDiT branch ends with.
#include <stdlib.h>

#include "hdlm/common.h"
#include "hdlm/layers.h"
#include "hdlm/rng.h"

// Element i is kept when hdlm_rng_uniform_at(key, i) >= p. One Philox block serves four consecutive elements, the
// same words hdlm_rng_uniform_at uses, so masks depend neither on the thread count nor on the tiling.
void hdlm_dropout_scales(float *scale, uint64_t key, uint64_t start, int count, float p) {
    float keep = 1.0f / (1.0f - p);
    uint64_t i = start, end = start + (uint64_t)count;
    while (i < end) {
        uint32_t block[4];
        hdlm_philox4x32(key, 1, i >> 2, block);
        for (uint64_t k = i & 3; k < 4 && i < end; k++, i++) {
            float u = (float)(block[k] >> 8) * 0x1.0p-24f;
            scale[i - start] = u >= p ? keep : 0.0f;
        }
    }
}

void hdlm_residual_forward(float *h_out, const float *h_in, const float *y, const float *gate, int gate_stride, int n,
                           int d, float p, uint64_t key) {
#pragma omp parallel
    {
        float *scale = p > 0.0f ? hdlm_malloc((size_t)d * sizeof(float)) : NULL;
#pragma omp for schedule(static)
        for (int r = 0; r < n; r++) {
            const float *yr = y + (size_t)r * d;
            const float *hr = h_in + (size_t)r * d;
            float *out = h_out + (size_t)r * d;
            const float *g = gate ? gate + (size_t)r * gate_stride : NULL;
            if (scale) hdlm_dropout_scales(scale, key, (uint64_t)r * d, d, p);
            for (int i = 0; i < d; i++) {
                float v = scale ? yr[i] * scale[i] : yr[i];
                out[i] = hr[i] + (g ? g[i] * v : v);
            }
        }
        free(scale);
    }
}

void hdlm_residual_backward(float *dy, float *dgate, const float *dh, const float *y, const float *gate,
                            int gate_stride, int n, int d, float p, uint64_t key) {
#pragma omp parallel
    {
        float *scale = p > 0.0f ? hdlm_malloc((size_t)d * sizeof(float)) : NULL;
#pragma omp for schedule(static)
        for (int r = 0; r < n; r++) {
            const float *dhr = dh + (size_t)r * d;
            const float *yr = y + (size_t)r * d;
            float *dyr = dy + (size_t)r * d;
            const float *g = gate ? gate + (size_t)r * gate_stride : NULL;
            float *dg = gate ? dgate + (size_t)r * gate_stride : NULL;
            if (scale) hdlm_dropout_scales(scale, key, (uint64_t)r * d, d, p);
            for (int i = 0; i < d; i++) {
                float s = scale ? scale[i] : 1.0f;
                dyr[i] = dhr[i] * s * (g ? g[i] : 1.0f);
                if (g) dg[i] = dhr[i] * yr[i] * s;
            }
        }
        free(scale);
    }
}

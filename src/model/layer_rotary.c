// Rotary position embedding, rotate-half (GPT-NeoX) convention over the whole head (method §7.4).
#include <math.h>
#include <string.h>

#include "model/layers.h"

void hdlm_rotary_inv_freq(float *inv_freq, int head_dim) {
    for (int k = 0; k < head_dim / 2; k++) inv_freq[k] = 1.0f / powf(10000.0f, (float)(2 * k) / (float)head_dim);
}

// Round to bfloat16 (nearest even), returned as float.
static float round_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&x, &u, sizeof u);
    return x;
}

// Round to IEEE half precision (nearest even) from double, in software: what (float)(_Float16)x gives, without
// needing _Float16 (clang before 15 lacks it on x86, and the fuzz build uses clang).
float hdlm_round_fp16(double x) {
    uint64_t u;
    memcpy(&u, &x, sizeof u);
    uint64_t a = u & 0x7fffffffffffffffull;
    double r;
    if (a >= 0x7ff0000000000000ull) return (float)x;                 // infinity, NaN
    if (a >= 0x40effe0000000000ull) r = INFINITY;                     // >= 65520: past the largest half, 65504
    else if (a < 0x3f10000000000000ull) {                             // below 2^-14: subnormal halves, step 2^-24
        double f;
        memcpy(&f, &a, sizeof f);
        r = nearbyint(f * 16777216.0) / 16777216.0;                   // exact scalings; ties to even
    } else {                                                          // normal: 10 of 52 mantissa bits kept
        uint64_t k = (a + 0x1ffffffffffull + ((a >> 42) & 1u)) & ~0x3ffffffffffull;
        memcpy(&r, &k, sizeof r);
    }
    return (float)(u >> 63 ? -r : r);   // exact: every half is a float
}

void hdlm_rotary_tables(float *cos_t, float *sin_t, const float *inv_freq, int len, int head_dim,
                        hdlm_rotary_mode mode) {
    int half = head_dim / 2;
    for (int p = 0; p < len; p++) {
        for (int k = 0; k < half; k++) {
            float c, s;
            if (mode == HDLM_ROTARY_REFERENCE) {
                // The reference builds its tables under fp16 autocast: angle = fp16(fp16(p)·fp16(inv_freq)), cos and
                // sin stored as fp16, then cast to bf16 where they are used.
                float angle = hdlm_round_fp16(hdlm_round_fp16(p) * hdlm_round_fp16(inv_freq[k]));
                c = round_bf16(hdlm_round_fp16(cos((double)angle)));
                s = round_bf16(hdlm_round_fp16(sin((double)angle)));
            } else {
                float angle = (float)p * inv_freq[k];
                c = (float)cos((double)angle);
                s = (float)sin((double)angle);
            }
            cos_t[(size_t)p * half + k] = c;
            sin_t[(size_t)p * half + k] = s;
        }
    }
}

// Applies the rotation (sign = +1) or its inverse (sign = −1) to the q and k parts of each token's qkv row.
static void rotary_apply(float *qkv, const float *cos_t, const float *sin_t, int batch, int len, int heads,
                         int head_dim, float sign) {
    int d = heads * head_dim, half = head_dim / 2;
    int n = batch * len;
#pragma omp parallel for schedule(static)
    for (int r = 0; r < n; r++) {
        int p = r % len;
        const float *c = cos_t + (size_t)p * half;
        const float *s = sin_t + (size_t)p * half;
        for (int part = 0; part < 2; part++) {   // q, then k; v is not rotated
            for (int h = 0; h < heads; h++) {
                float *x = qkv + (size_t)r * 3 * d + (size_t)part * d + (size_t)h * head_dim;
                for (int j = 0; j < half; j++) {
                    float a = x[j], b = x[j + half], sn = sign * s[j];
                    x[j] = a * c[j] - b * sn;
                    x[j + half] = b * c[j] + a * sn;
                }
            }
        }
    }
}

void hdlm_rotary_tables_of_mask(float *cos_t, float *sin_t, const float *inv_freq, const hdlm_attn_mask *mask,
                                int head_dim, hdlm_rotary_mode mode) {
    int positions = mask->half > 0 ? mask->half : mask->length;
    hdlm_rotary_tables(cos_t, sin_t, inv_freq, positions, head_dim, mode);
    size_t copied = (size_t)(mask->length - positions) * (head_dim / 2);
    memcpy(cos_t + (size_t)positions * (head_dim / 2), cos_t, copied * sizeof(float));
    memcpy(sin_t + (size_t)positions * (head_dim / 2), sin_t, copied * sizeof(float));
}

void hdlm_rotary_forward(float *qkv, const float *cos_t, const float *sin_t, int batch, int len, int heads,
                         int head_dim) {
    rotary_apply(qkv, cos_t, sin_t, batch, len, heads, head_dim, 1.0f);
}

// The rotation is orthogonal only for exact tables (c² + s² = 1); the transpose is what backward needs in general:
// Rᵀ = [[c, s], [−s, c]], i.e. the same formula with −s.
void hdlm_rotary_backward(float *dqkv, const float *cos_t, const float *sin_t, int batch, int len, int heads,
                          int head_dim) {
    rotary_apply(dqkv, cos_t, sin_t, batch, len, heads, head_dim, -1.0f);
}

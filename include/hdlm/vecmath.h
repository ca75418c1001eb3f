// hdlm/vecmath.h — exp and tanh written so that loops calling them vectorise (glibc's expf/tanhf are scalar calls).
//
// exp: Cody-Waite reduction x = n·ln2 + r, |r| <= ln2/2, then the classic degree-7 minimax polynomial of the Cephes
// library for e^r (relative error ~1e-7, i.e. 1-2 ulp), scaled by 2^n through the exponent bits. Below -87.3 the
// result is 0 (never a denormal: denormal arithmetic is ~100x slow on x86), above 88.3 it is clamped.
#ifndef HDLM_VECMATH_H
#define HDLM_VECMATH_H

#include <math.h>
#include <stdint.h>

static inline float hdlm_expf(float x) {
    const float in = x;
    x = x != x ? 0.0f : x;   // NaN: no float-to-int conversion of it below; returned as NaN at the end
    float underflow = x < -87.3f ? 0.0f : 1.0f;
    x = x < -87.3f ? -87.3f : x;
    x = x > 88.3f ? 88.3f : x;
    // n = round(x / ln2) by the 1.5·2^23 trick (vectorises, unlike floorf without -ffast-math)
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f;   // ln2 split in a part exact in float and a small correction
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union {
        int32_t i;
        float f;
    } scale = {.i = ((int32_t)n + 127) << 23};   // 2^n through the exponent field
    return in != in ? in : p * scale.f * underflow;
}

// tanh(x) = sign(x)·(1 − e)/(1 + e), e = exp(−2|x|), with x − x³/3 below 0.005 (where 1 − e cancels). Absolute error
// < 1e-7 over the real line, which is what GELU's 1 + tanh(·) needs.
static inline float hdlm_tanhf(float x) {
    float ax = fabsf(x);
    float e = hdlm_expf(-2.0f * ax);
    float t = (1.0f - e) / (1.0f + e);
    t = ax < 0.005f ? ax - ax * ax * ax * (1.0f / 3.0f) : t;
    return copysignf(t, x);
}

#endif

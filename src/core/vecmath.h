// core/vecmath.h — exp and tanh written so that loops calling them vectorise (glibc's exp/expf/tanhf are scalar
// calls).
//
// exp: Cody-Waite reduction x = n·ln2 + r, |r| <= ln2/2, then the classic degree-7 minimax polynomial of the Cephes
// library for e^r (relative error ~1e-7, i.e. 1-2 ulp), scaled by 2^n through the exponent bits. Below -87.3 the
// result is 0 (never a denormal: denormal arithmetic is ~100x slow on x86), above 88.3 it is clamped.
#ifndef HDLM_VECMATH_H
#define HDLM_VECMATH_H

#include <math.h>
#include <stdint.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "core/simd.h"

static inline float hdlm_expf(float x) {
    // Clamped by selects that keep a NaN out of the float-to-int conversion below (x > lo is false for NaN); the result
    // is then 0 below -87.3 and the input itself for NaN. Written as selects of x, not by patching x and the result
    // in steps: GCC turned those into mask logic through general registers (2× slower loops, the same bits).
    float xc = x > -87.3f ? x : -87.3f;
    xc = xc < 88.3f ? xc : 88.3f;
    // n = round(x / ln2) by the 1.5·2^23 trick (vectorises, unlike floorf without -ffast-math)
    float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = xc - n * 0.693359375f;   // ln2 split in a part exact in float and a small correction
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
    float e = x < -87.3f ? 0.0f : p * scale.f;
    return x == x ? e : x;
}

// hdlm_expf on LANES values at once, for arguments <= 0 (attention's scores minus their maximum or log-sum-exp):
// its bits on every non-positive float (checked once in full; test_common checks the edges and a stride), NaN stays
// NaN. With AVX-512 the clamp is one max and p · 2^n, the zeros below -87.3 included, one vscalefps (the softmax
// loop 17 % faster than through the exponent bits).
static inline vecf hdlm_vec_exp_nonpositive(vecf x) {
#if defined(__AVX512F__)
    __mmask16 kept = _mm512_cmp_ps_mask((__m512)x, _mm512_set1_ps(-87.3f), _CMP_NLT_UQ);   // NaN: kept, stays NaN
    x = (vecf)_mm512_max_ps(_mm512_set1_ps(-87.3f), (__m512)x);                          // max(c, NaN) is NaN
#else
    veci underflow = x < -87.3f;
    x = (vecf)(((veci)x & ~underflow) | ((veci)((vecf){0} - 87.3f) & underflow));
#endif
    vecf n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    vecf r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    vecf p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
#if defined(__AVX512F__)
    return (vecf)_mm512_maskz_scalef_ps(kept, (__m512)p, (__m512)n);
#else
    veci scale = (__builtin_convertvector(n, veci) + 127) << 23;   // 2^n through the exponent field
    return (vecf)((veci)(p * (vecf)scale) & ~underflow);
#endif
}

// exp in double, for the cross-entropy's log-sum-exp (its callers compare with float64 references to ~1e-10): the
// fdlibm reduction x = n·ln2_hi + n·ln2_lo + r (n·ln2_hi exact), |r| <= ln2/2, then the Taylor series to degree 12
// (truncation r^13/13! < 2e-16), i.e. a few ulp. Below -708 the result is 0 (no denormals), above 709 it is clamped.
// 2^n comes from the low bits of the rounding constant's sum, so no double-to-integer conversion is needed.
static inline double hdlm_exp(double x) {
    double xc = x > -708.0 ? x : -708.0;   // as in hdlm_expf: NaN kept out, 0 below -708, NaN returned as given
    xc = xc < 709.0 ? xc : 709.0;
    const double shifter = 6755399441055744.0;   // 1.5·2^52: adding it rounds to an integer held in the low bits
    double t = xc * 1.4426950408889634074 + shifter, n = t - shifter;
    double r = (xc - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
    double p = 1.0 / 479001600.0;   // 1/12!
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    union {
        double d;
        uint64_t u;
    } bits = {.d = t}, scale;
    scale.u = (bits.u + 1023u) << 52;   // the low 12 bits of t's pattern are n mod 4096; n + 1023 is in [2, 2046]
    double e = x < -708.0 ? 0.0 : p * scale.d;
    return x == x ? e : x;
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

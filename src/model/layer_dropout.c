// Inverted dropout (scale 1/(1-p) on kept elements, method §7.2) with counter-based masks, and the gated residual add
// h + g ⊙ dropout(y) that every DDiT branch ends with.
#include <stdlib.h>
#include <string.h>

#include "hdlm/common.h"
#include "model/layers.h"
#include "hdlm/rng.h"

// 32 counters at once: enough independent vector chains to hide the rounds' multiply latency (16 ran at half the rate).
enum { PHILOX_LANES = 32 };

// Philox4x32-10 (as hdlm_philox4x32 with counter_hi = 1) for PHILOX_LANES consecutive counters at once, laid out so
// that the compiler vectorises the rounds: out[w][j] is word w of block first + j.
static void philox_lanes(uint64_t key, uint64_t first, uint32_t out[4][PHILOX_LANES]) {
    // 32-bit words held in 64-bit lanes: the 32×32→64 products then vectorise as plain 64-bit multiplies.
    const uint64_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, LOW = 0xffffffffu;
    uint64_t c0[PHILOX_LANES], c1[PHILOX_LANES], c2[PHILOX_LANES], c3[PHILOX_LANES];
    for (int j = 0; j < PHILOX_LANES; j++) {
        uint64_t ctr = first + (uint64_t)j;
        c0[j] = ctr & LOW;
        c1[j] = ctr >> 32;
        c2[j] = 1;
        c3[j] = 0;
    }
    uint64_t k0 = key & LOW, k1 = key >> 32;
    for (int round = 0; round < 10; round++) {
#pragma omp simd
        for (int j = 0; j < PHILOX_LANES; j++) {
            uint64_t p0 = M0 * c0[j], p1 = M1 * c2[j];
            uint64_t n0 = (p1 >> 32) ^ c1[j] ^ k0, n2 = (p0 >> 32) ^ c3[j] ^ k1;
            c1[j] = p1 & LOW;
            c3[j] = p0 & LOW;
            c0[j] = n0;
            c2[j] = n2;
        }
        k0 = (k0 + 0x9E3779B9u) & LOW;   // Weyl key increments, modulo 2^32
        k1 = (k1 + 0xBB67AE85u) & LOW;
    }
    for (int j = 0; j < PHILOX_LANES; j++) {
        out[0][j] = (uint32_t)c0[j];
        out[1][j] = (uint32_t)c1[j];
        out[2][j] = (uint32_t)c2[j];
        out[3][j] = (uint32_t)c3[j];
    }
}

// Element i is kept when hdlm_rng_u16_at(key, i) >= hdlm_dropout_keep_min(p): half i % 2 of word (i / 2) % 4 of
// Philox block i / 8 (counter_hi 1), so masks depend neither on the thread count nor on the tiling.
void hdlm_dropout_scales(float *scale, uint64_t key, uint64_t start, int count, float p) {
    const float keep = 1.0f / (1.0f - p);
    const uint32_t keep_min = hdlm_dropout_keep_min(p);
    uint64_t i = start, end = start + (uint64_t)count;
    while (i < end) {
        if ((i & 7) == 0 && end - i >= 8 * PHILOX_LANES) {
            uint32_t words[4][PHILOX_LANES];
            philox_lanes(key, i >> 3, words);
            float *s = scale + (i - start);
            for (int j = 0; j < PHILOX_LANES; j++)
                for (int w = 0; w < 4; w++) {
                    s[8 * j + 2 * w] = (words[w][j] & 0xffffu) >= keep_min ? keep : 0.0f;
                    s[8 * j + 2 * w + 1] = words[w][j] >> 16 >= keep_min ? keep : 0.0f;
                }
            i += 8 * PHILOX_LANES;
            continue;
        }
        uint32_t block[4];
        hdlm_philox4x32(key, 1, i >> 3, block);
        for (uint64_t block_end = (i | 7) + 1; i < end && i < block_end; i++) {
            uint32_t u16 = (block[(i >> 1) & 3] >> (16 * (i & 1))) & 0xffffu;   // hdlm_rng_u16_at
            scale[i - start] = u16 >= keep_min ? keep : 0.0f;
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

// Inverted dropout (scale 1/(1-p) on kept elements, method §7.2) with counter-based masks, and the gated residual add
// h + g ⊙ dropout(y) that every DDiT branch ends with.
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "hdlm/common.h"
#include "model/layers.h"
#include "hdlm/rng.h"
#include "core/simd.h"

// 32 counters at once: enough independent vector chains to hide the rounds' multiply latency (16 ran at half the rate).
// Each word sits in a 64-bit lane, in vectors of LANES / 2 lanes.
enum { PHILOX_LANES = 32, U64_LANES = LANES / 2, PHILOX_VECS = PHILOX_LANES / U64_LANES };
typedef uint64_t u64v __attribute__((vector_size(U64_LANES * sizeof(uint64_t))));
typedef uint8_t u8v __attribute__((vector_size(U64_LANES)));

// Lane-wise (low 32 bits of a) × m, m < 2³²: one vpmuludq. GCC writes a 64-bit product as vpmullq, three µops on
// Intel, and the masks took twice as long there. (A macro: passing u64v by value changes the ABI without AVX.)
#if defined(__AVX512F__)
#define MUL_LOW32(a, m) ((u64v)_mm512_mul_epu32((__m512i)(a), _mm512_set1_epi64((long long)(m))))
#elif defined(__AVX2__)
#define MUL_LOW32(a, m) ((u64v)_mm256_mul_epu32((__m256i)(a), _mm256_set1_epi64x((long long)(m))))
#else
#define MUL_LOW32(a, m) (((a) & 0xffffffffu) * (m))
#endif

// Keep bits of PHILOX_LANES consecutive Philox blocks (as hdlm_philox4x32 with counter_hi = 1) from `first`: byte j
// of out for block first + j, its bit 2w + h set when half h of word w is >= keep_min (element 2w + h of the block
// kept). Words are held in 64-bit lanes whose upper halves are left as they come: the products read only the lower
// ones, and every lower half is exact.
static void philox_keep_bytes(uint64_t key, uint64_t first, uint32_t keep_min, uint8_t out[PHILOX_LANES]) {
    if (keep_min > 0xffffu) {   // 65,536 (p within 2⁻¹⁷ of 1): no 16-bit draw is kept
        memset(out, 0, PHILOX_LANES);
        return;
    }
    const uint64_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, LOW = 0xffffffffu;
    u64v lane, zero = {0};
    for (int j = 0; j < U64_LANES; j++) lane[j] = (uint64_t)j;
    u64v c0[PHILOX_VECS], c1[PHILOX_VECS], c2[PHILOX_VECS], c3[PHILOX_VECS];
    for (int v = 0; v < PHILOX_VECS; v++) {
        u64v ctr = lane + (first + U64_LANES * (uint64_t)v);
        c0[v] = ctr & LOW;
        c1[v] = ctr >> 32;
        c2[v] = zero + 1;
        c3[v] = zero;
    }
    uint64_t k0 = key & LOW, k1 = key >> 32;
    for (int round = 0; round < 10; round++) {
        for (int v = 0; v < PHILOX_VECS; v++) {
            u64v p0 = MUL_LOW32(c0[v], M0), p1 = MUL_LOW32(c2[v], M1);
            c0[v] = (p1 >> 32) ^ c1[v] ^ k0;
            c2[v] = (p0 >> 32) ^ c3[v] ^ k1;
            c1[v] = p1;
            c3[v] = p0;
        }
        k0 = (k0 + 0x9E3779B9u) & LOW;   // Weyl key increments, modulo 2^32
        k1 = (k1 + 0xBB67AE85u) & LOW;
    }
#if defined(__AVX512BW__) && defined(__BMI2__)
    // One 16-bit comparison per word vector; its mask bits 4j and 4j + 1 (lane j's halves) moved to bits 2w and
    // 2w + 1 of byte j by pext/pdep, off the vector ports the rounds keep busy (the draws 25 % faster).
    __m512i min16 = _mm512_set1_epi16((short)keep_min);
    for (int v = 0; v < PHILOX_VECS; v++) {
        u64v words[4] = {c0[v], c1[v], c2[v], c3[v]};
        uint64_t bytes = 0;
        for (int w = 0; w < 4; w++) {
            uint32_t ge = _mm512_cmpge_epu16_mask((__m512i)words[w], min16);
            bytes |= _pdep_u64(_pext_u32(ge, 0x33333333u), 0x0303030303030303ull << 2 * w);
        }
        memcpy(out + U64_LANES * v, &bytes, sizeof bytes);
    }
#else
    for (int v = 0; v < PHILOX_VECS; v++) {
        u64v words[4] = {c0[v], c1[v], c2[v], c3[v]}, byte = zero;
        for (int w = 0; w < 4; w++) {   // comparisons give −1 (all ones) where true
            byte |= (u64v)((words[w] & 0xffffu) >= keep_min) & (1u << 2 * w);
            byte |= (u64v)((words[w] >> 16 & 0xffffu) >= keep_min) & (2u << 2 * w);
        }
        u8v bytes = __builtin_convertvector(byte, u8v);
        memcpy(out + U64_LANES * v, &bytes, sizeof bytes);
    }
#endif
}

// Element i is kept when hdlm_rng_u16_at(key, i) >= hdlm_dropout_keep_min(p): half i % 2 of word (i / 2) % 4 of
// Philox block i / 8 (counter_hi 1), so masks depend neither on the thread count nor on the tiling. One Philox block is
// one byte of keep bits; a block's byte sits at byte (i % 32) / 8 of the range's first word, hence the bit positions.
void hdlm_dropout_keep_bits(uint32_t *bits, uint64_t key, uint64_t start, int count, float p) {
    if (count <= 0) return;
    _Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "keep bits are written a byte per Philox block");
    const uint32_t keep_min = hdlm_dropout_keep_min(p);
    uint64_t first = start >> 3, last = (start + (uint64_t)count - 1) >> 3;
    uint8_t *bytes = (uint8_t *)bits + ((start & 31) >> 3);
    // the elements of the first and last blocks outside the range keep their bits
    uint8_t first_mask = (uint8_t)(0xffu << (start & 7));
    uint8_t last_mask = (uint8_t)(0xffu >> (7 - ((start + (uint64_t)count - 1) & 7)));
    uint8_t first_old = bytes[0], last_old = bytes[last - first];
    for (uint64_t b = first; b <= last; b += PHILOX_LANES) {   // a short tail: computed whole, the part needed kept
        uint8_t chunk[PHILOX_LANES];
        philox_keep_bytes(key, b, keep_min, chunk);
        memcpy(bytes + (b - first), chunk, last - b + 1 < PHILOX_LANES ? last - b + 1 : PHILOX_LANES);
    }
    if (first == last) first_mask &= last_mask;
    else bytes[last - first] = (uint8_t)((bytes[last - first] & last_mask) | (last_old & ~last_mask));
    bytes[0] = (uint8_t)((bytes[0] & first_mask) | (first_old & ~first_mask));
}

// scale[i] = 0 or 1/(1-p) by bit at + i of bits, i < count; reads up to 8 bytes past the last bit's byte.
static void dropout_expand(float *scale, const uint32_t *bits, int at, int count, float p) {
    const float keep = 1.0f / (1.0f - p);
    vecf kept = (vecf){0} + keep;
    int i = 0;
    for (; i + LANES <= count; i += LANES) {
        vecf v = (vecf)(hdlm_vec_bit_lanes((const uint8_t *)bits, at + i) & (veci)kept);
        memcpy(scale + i, &v, sizeof v);
    }
    for (; i < count; i++) scale[i] = bits[(at + i) >> 5] >> ((at + i) & 31) & 1u ? keep : 0.0f;
}

void hdlm_dropout_scales(float *scale, uint64_t key, uint64_t start, int count, float p) {
    enum { CHUNK = 2048 };   // whole words: every chunk's bits start at the same bit position
    uint32_t bits[CHUNK / 32 + 4] = {0};   // + the first word's offset and the expansion's 8-byte reads
    for (int c0 = 0; c0 < count; c0 += CHUNK) {
        int n = count - c0 < CHUNK ? count - c0 : CHUNK;
        hdlm_dropout_keep_bits(bits, key, start + (uint64_t)c0, n, p);
        dropout_expand(scale + c0, bits, (int)((start + (uint64_t)c0) & 31), n, p);
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

// Philox4x32-10 and the streams built on it (include/hdlm/rng.h).
#include "hdlm/rng.h"

#include <math.h>

#include "hdlm/common.h"

static inline uint32_t mulhilo32(uint32_t a, uint32_t b, uint32_t *hi) {
    uint64_t p = (uint64_t)a * b;
    *hi = (uint32_t)(p >> 32);
    return (uint32_t)p;
}

void hdlm_philox4x32(uint64_t key, uint64_t counter_hi, uint64_t counter_lo, uint32_t out[4]) {
    // Constants from the Random123 reference (multipliers and Weyl key increments).
    const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
    uint32_t c0 = (uint32_t)counter_lo, c1 = (uint32_t)(counter_lo >> 32);
    uint32_t c2 = (uint32_t)counter_hi, c3 = (uint32_t)(counter_hi >> 32);
    uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
    for (int round = 0; round < 10; round++) {
        uint32_t hi0, hi1;
        uint32_t lo0 = mulhilo32(M0, c0, &hi0);
        uint32_t lo1 = mulhilo32(M1, c2, &hi1);
        uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
        k0 += W0;
        k1 += W1;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

static inline uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

uint64_t hdlm_rng_key(uint64_t seed, uint64_t rank, uint64_t step, hdlm_rng_purpose purpose) {
    uint64_t h = splitmix64(seed);
    h = splitmix64(h ^ rank);
    h = splitmix64(h ^ step);
    return splitmix64(h ^ (uint64_t)purpose);
}

void hdlm_rng_init(hdlm_rng *rng, uint64_t key) {
    rng->key = key;
    rng->counter = 0;
    rng->index = 4;
}

uint32_t hdlm_rng_u32(hdlm_rng *rng) {
    if (rng->index == 4) {
        hdlm_philox4x32(rng->key, 0, rng->counter++, rng->block);
        rng->index = 0;
    }
    return rng->block[rng->index++];
}

uint64_t hdlm_rng_u64(hdlm_rng *rng) {
    uint64_t hi = hdlm_rng_u32(rng);
    return (hi << 32) | hdlm_rng_u32(rng);
}

float hdlm_rng_uniform(hdlm_rng *rng) { return (float)(hdlm_rng_u32(rng) >> 8) * 0x1.0p-24f; }

double hdlm_rng_uniform_double(hdlm_rng *rng) { return (double)(hdlm_rng_u64(rng) >> 11) * 0x1.0p-53; }

uint64_t hdlm_rng_below(hdlm_rng *rng, uint64_t n) {
    HDLM_ASSERT(n >= 1, "hdlm_rng_below needs n >= 1");
    // Rejection: discard the top partial range so every value is equally likely.
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = hdlm_rng_u64(rng);
    while (x >= limit);
    return x % n;
}

double hdlm_rng_normal(hdlm_rng *rng) {
    double u1 = 1.0 - hdlm_rng_uniform_double(rng);   // (0, 1]: log is finite
    double u2 = hdlm_rng_uniform_double(rng);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

void hdlm_rng_shuffle_u32(hdlm_rng *rng, uint32_t *items, uint64_t n) {
    for (uint64_t i = n; i > 1; i--) {
        uint64_t j = hdlm_rng_below(rng, i);
        uint32_t t = items[i - 1];
        items[i - 1] = items[j];
        items[j] = t;
    }
}

uint32_t hdlm_rng_u16_at(uint64_t key, uint64_t i) {
    uint32_t block[4];
    hdlm_philox4x32(key, 1, i >> 3, block);   // counter_hi = 1 keeps these apart from the sequential stream
    return (block[(i >> 1) & 3] >> (16 * (i & 1))) & 0xffffu;
}

// hdlm/rng.h — counter-based random numbers (Philox4x32-10, Salmon et al. 2011).
//
// Every random draw is a pure function of (key, counter): results never depend on the number of threads or on the
// order in which work is scheduled, and a stream can be resumed from its counter alone (checkpoints store it).
// Keys are derived from (seed, rank, step, purpose) so different uses never share numbers.
#ifndef HDLM_RNG_H
#define HDLM_RNG_H

#include <stdint.h>

// What a stream is used for; part of the key so that streams of different purposes are independent.
typedef enum {
    HDLM_RNG_DATA = 1,      // data-loader shuffles
    HDLM_RNG_STEP = 2,      // hyperschedule step / time sampling
    HDLM_RNG_NOISE = 3,     // forward-process corruption
    HDLM_RNG_DROPOUT = 4,   // dropout masks
    HDLM_RNG_INIT = 5,      // parameter initialisation
    HDLM_RNG_SAMPLE = 6,    // samplers
    HDLM_RNG_EVAL = 7,      // Monte-Carlo evaluation
} hdlm_rng_purpose;

// One Philox4x32-10 block: four 32-bit outputs for a 128-bit counter under a 64-bit key.
void hdlm_philox4x32(uint64_t key, uint64_t counter_hi, uint64_t counter_lo, uint32_t out[4]);

// A 64-bit key from (seed, rank, step, purpose): splitmix64 mixing, so nearby inputs give unrelated keys.
uint64_t hdlm_rng_key(uint64_t seed, uint64_t rank, uint64_t step, hdlm_rng_purpose purpose);

// A sequential stream over one key. `counter` counts blocks of 4 draws; the state is (key, counter, index) and can be
// saved and restored as plain integers.
typedef struct {
    uint64_t key;
    uint64_t counter;   // next block to generate
    uint32_t block[4];
    int index;          // next unused word of block (4 = empty)
} hdlm_rng;

void hdlm_rng_init(hdlm_rng *rng, uint64_t key);
uint32_t hdlm_rng_u32(hdlm_rng *rng);
uint64_t hdlm_rng_u64(hdlm_rng *rng);
// Uniform in [0, 1): float with 24 random bits, double with 53.
float hdlm_rng_uniform(hdlm_rng *rng);
double hdlm_rng_uniform_double(hdlm_rng *rng);
// Uniform integer in [0, n), without modulo bias (n >= 1).
uint64_t hdlm_rng_below(hdlm_rng *rng, uint64_t n);
// Standard normal (Box-Muller, double precision).
double hdlm_rng_normal(hdlm_rng *rng);
// In-place Fisher-Yates shuffle of n indices.
void hdlm_rng_shuffle_u32(hdlm_rng *rng, uint32_t *items, uint64_t n);

// Random access: the i-th 16-bit draw of the stream keyed by `key` (element i of a tensor, say), independent of every
// other element and of the thread or tile that asks: half i % 2 (low half first) of word (i / 2) % 4 of Philox block
// i / 8 (counter_hi 1), so one block serves 8 elements. Dropout masks use it (hdlm_dropout_keep_min, layers.h).
uint32_t hdlm_rng_u16_at(uint64_t key, uint64_t i);

#endif

// hdlm/compress.h — lossless compression with a trained model (docs/compression.md; method §13 A.7): an
// order-agnostic network run as the K-call parallel model of a fixed order and policy drives an rANS coder, so a chunk
// costs -log2 p(x | order, policy) bits plus a fixed overhead — the code length the ardm-order estimator reports.
//
// Exactness: decoding works only if the decoder computes the encoder's coding frequencies bit for bit. Both sides build
// the same network inputs (known positions filled, the rest MASK), run the same forward on the same groups of chunks,
// and quantise the float32 logits with one float64 routine on the CPU (hdlm_quantize_softmax); a file carries a
// fingerprint of the machine's numerics, checked before decoding.
#ifndef HDLM_COMPRESS_H
#define HDLM_COMPRESS_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "hdlm/sampler.h"

// ---- rANS: 64-bit state in [2^31, 2^63), 32-bit words, frequencies summing to 2^scale_bits (scale_bits <= 31) ----
typedef struct {
    uint64_t state;
    uint32_t *words;   // in the order they were emitted (the stream is their reverse)
    size_t n, cap;
} hdlm_rans_encoder;
void hdlm_rans_encoder_init(hdlm_rans_encoder *e);
// Pushes a symbol of frequency freq at cumulative start (symbols are pushed in reverse of the decoding order).
void hdlm_rans_put(hdlm_rans_encoder *e, uint32_t start, uint32_t freq, int scale_bits);
// Flushes the state; *words (malloc'ed, *n of them) is the stream in decoding order. Frees the encoder's buffer.
void hdlm_rans_encoder_finish(hdlm_rans_encoder *e, uint32_t **words, size_t *n);

typedef struct {
    uint64_t state;
    const uint32_t *words;
    size_t n, pos;
} hdlm_rans_decoder;
// Fails when the stream is shorter than the flushed state or the state is out of range (a corrupt stream).
int hdlm_rans_decoder_init(hdlm_rans_decoder *d, const uint32_t *words, size_t n);
// The cumulative frequency the next symbol's interval holds.
static inline uint32_t hdlm_rans_peek(const hdlm_rans_decoder *d, int scale_bits) {
    return (uint32_t)(d->state & ((1ull << scale_bits) - 1));
}
// Removes the symbol [start, start + freq); fails when the stream runs out (truncated or corrupt).
int hdlm_rans_advance(hdlm_rans_decoder *d, uint32_t start, uint32_t freq, int scale_bits);
// True when the decoder is back at the encoder's initial state with every word read: the stream was decoded whole.
bool hdlm_rans_decoder_done(const hdlm_rans_decoder *d);

// Coding frequencies of softmax(z[0..width)) computed in float64: every symbol gets 1, the other 2^scale_bits - width
// units are shared by flooring q_c·units, and the units left over go to the most probable symbol (the first of equal
// ones; no sort per symbol, and at most `width` units move, < 2.4e-5 of the total at 31 bits). freq[width] sums to
// 2^scale_bits; work[width] is scratch. Deterministic: the same z gives the same table on any thread count. Fails on a
// non-finite logit.
int hdlm_quantize_softmax(const float *z, int width, int scale_bits, uint32_t *freq, double *work);

// ---- the codec record: what encoder and decoder share, stored once with the model (docs/compression.md) ----
typedef struct {
    int length;            // L: tokens per chunk (the model's length)
    int vocab;             // V: the model's outputs (N = V - 1 real tokens are coded)
    int budget;            // K: network calls per chunk
    int *policy;           // [K] p_0 = 0 <= p_1 <= ... < L (method §13 A.5)
    int *order;            // [L] order[r] = the position coded r-th
    char order_name[64];   // "left-to-right" or "random:SEED" (how the order was made; the order itself is stored)
    int scale_bits;        // rANS precision (31)
    uint64_t model_hash;   // hdlm_model_hash of the weights it was made for
    bool next_token;       // an AR (next-token) model: left to right, one call per token against a KV cache, inputs
                           // shifted right after the start token (hdlm_ar_inputs); budget L, the identity order
} hdlm_codec;

// A codec for `model` (weights hashed): budget K, policy (K entries), order left-to-right or a uniform random
// permutation of seed order_seed (left_to_right false).
int hdlm_codec_make(hdlm_codec *c, const hdlm_model *model, int budget, const int *policy, bool left_to_right,
                    uint64_t order_seed);
// The codec of an AR model (training.objective = ar): the exact next-token likelihood as code length.
int hdlm_codec_make_next_token(hdlm_codec *c, const hdlm_model *model);
void hdlm_codec_free(hdlm_codec *c);
// JSON file (written atomically) and back; loading checks every field (a permutation, a valid policy).
int hdlm_codec_save(const hdlm_codec *c, const char *path);
int hdlm_codec_load(hdlm_codec *c, const char *path);
// Hash of everything coding depends on (L, V, K, policy, order, precision, quantiser version).
uint64_t hdlm_codec_hash(const hdlm_codec *c);
// Hash of the model's weights and shape (the ones a checkpoint was loaded with: EMA or raw).
uint64_t hdlm_model_hash(const hdlm_model *model);

// Fingerprint of this machine's numerics for the codec's model: the coding frequencies of one fixed chunk (ids 0, 1,
// 2, ...) through the coding path itself, hashed. Differs where the forward's or the quantiser's bits differ (other CPU
// kernels, libm).
int hdlm_codec_fingerprint(const hdlm_codec *c, hdlm_denoiser *d, uint64_t *fingerprint);

// One group of chunks coded together into one stream (the network runs on the whole group, one call per policy step;
// one state flush per group): chunk g holds n_tokens[g] (1..L) tokens in x[g·L ..]; the positions after them are
// known padding (never coded). Encoding writes the stream (*words malloc'ed, *n_words of them) and adds the ideal code
// length -log2 q(x) of the quantised frequencies to *ideal_bits; decoding fills x from it and fails on a corrupt or
// truncated stream.
int hdlm_codec_encode(const hdlm_codec *c, hdlm_denoiser *d, const uint32_t *x, const int *n_tokens, int chunks,
                      uint32_t **words, size_t *n_words, double *ideal_bits);
int hdlm_codec_decode(const hdlm_codec *c, hdlm_denoiser *d, const uint32_t *words, size_t n_words,
                      const int *n_tokens, int chunks, uint32_t *x);
#endif

// model/kv_cache.h — keys/values of settled blocks kept across sampler steps (method §3.5) and the model forward that
// runs only the new query positions against them.
//
// Valid for the `block` schedule with the block_causal context (the settled prefix is always whole ω-blocks, and a
// settled block's K/V depend only on itself and earlier blocks). The sampler appends each block once, when it becomes
// settled, with its final tokens and settled σ; every step then runs only the active positions against the cache.
// This reproduces the uncached forward's active outputs bit for bit (test_kv_cache). The keys and values live in the
// attention's own layout (hdlm_attention_rows reads them in place).
#ifndef HDLM_KV_CACHE_H
#define HDLM_KV_CACHE_H
#include <stdbool.h>
#include <stdint.h>
#include "hdlm/blas.h"
#include "hdlm/mask.h"
#include "hdlm/model.h"

// The model's linear weights packed once (hdlm_packed_weights): a cached step runs only a few dozen rows, where
// BLIS's packing of the weights on every call costs more than the product. Same bits as the uncached forward.
typedef struct {
    hdlm_packed_weights qkv, attn_out, fc1, fc2, ada;   // ada: γ only
} hdlm_kv_block_weights;

typedef struct hdlm_kv_cache_s {
    int batch, capacity, layers, width, heads;
    int batch_capacity;   // sequences the K/V buffer holds
    int length;    // cached positions [0, length)
    float *kv;     // [layers][batch][heads] stores of kv_floats (hdlm_attention_kv_floats): K/V after rotary
    size_t kv_floats;
    float *out;    // outputs of the last hdlm_model_forward_cached, [batch, n, V]
    size_t out_capacity;
    hdlm_kv_block_weights *blocks;               // [layers]
    hdlm_packed_weights head, sigma_w1, sigma_w2;   // sigma_*: γ only
    float *cos_t, *sin_t;                        // rotary tables of positions [0, capacity)
    float *work;                                 // activations of a call, kept between calls (grown when needed)
    size_t work_capacity;
} hdlm_kv_cache;

// Packs the model's weights (a copy as large as the model's linear weights): they must not change while the cache
// lives.
void hdlm_kv_cache_init(hdlm_kv_cache *cache, const hdlm_model *model, int batch);
void hdlm_kv_cache_free(hdlm_kv_cache *cache);
// Empties the cache for a new generation of `batch` sequences, keeping the packed weights and the buffers.
void hdlm_kv_cache_reset(hdlm_kv_cache *cache, int batch);

// One call over T = n_settle + n new positions [cache->length, cache->length + T) of `batch` sequences (tokens and σ
// [batch, T]; σ NULL for ε), eval mode, weights read once for both kinds of rows:
//  - the first n_settle positions of each sequence are a settled block entering the cache: each sees every cached key
//    and all of the block's keys; their K/V stay (cache->length += n_settle) and no outputs are computed (a settled
//    block's outputs are never used; the last layer stops after their attention);
//  - the next n positions are queries: each sees every cached key (those of the settling block too) and the query
//    keys under `rule` (full: all of them; causal: those at or before it). Outputs [batch, n, V] in cache->out.
// Each kind of row is computed exactly as a call with only that kind would compute it.
int hdlm_model_forward_cached(hdlm_model *model, hdlm_kv_cache *cache, const uint32_t *tokens, const float *sigma,
                              int batch, int n_settle, int n, hdlm_block_type rule);
#endif

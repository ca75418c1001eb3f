// model/layers.h — CPU forward and backward of the DDiT layers (method §7), one file per layer in src/model/layer_*.c.
//
// Shape letters: N tokens (B·L, row-major [B, L]), d width, F MLP hidden, c cond_dim, V vocabulary, H heads,
// D head dim. Every backward *accumulates* into parameter gradients; input gradients are written (=) unless the
// comment says +=. All functions use OpenMP over tokens (or columns) and BLIS for GEMMs.
#ifndef HDLM_LAYERS_H
#define HDLM_LAYERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hdlm/blas.h"
#include "hdlm/mask.h"
#include "hdlm/model.h"

// ---- linear (nn.Linear layout: W[out, in], y = x·Wᵀ + b) --------------------------------------- layer_linear.c
// out[N,o] = in[N,i]·Wᵀ + b (b may be NULL).
void hdlm_linear_forward(float *out, const float *in, const float *w, const float *b, int n, int in_dim, int out_dim);
// The same with W packed once (hdlm_packed_weights, inference with few rows): the same bits as hdlm_linear_forward.
void hdlm_linear_forward_packed(float *out, const float *in, const hdlm_packed_weights *w, const float *b, int n);
// dW += doutᵀ·in; db += Σ_rows dout (db may be NULL); din = dout·W, or din += when accumulate (din may be NULL).
void hdlm_linear_backward(float *din, float *dw, float *db, const float *dout, const float *in, const float *w, int n,
                          int in_dim, int out_dim, bool accumulate);

// ---- LayerNorm without bias, eps 1e-5, biased variance ----------------------------------------- layer_layernorm.c
void hdlm_layernorm_forward(float *out, float *mean, float *rstd, const float *in, const float *w, int n, int d);
// din += ∂/∂in (the residual stream's gradient); dw += Σ dout·x̂.
void hdlm_layernorm_backward(float *din, float *dw, const float *dout, const float *in, const float *w,
                             const float *mean, const float *rstd, int n, int d);
// LayerNorm with bias (GPT-2 judge, forward only): out = (x − mean)·rstd·w + b, same eps and biased variance.
void hdlm_layernorm_bias_forward(float *out, const float *in, const float *w, const float *b, int n, int d);

// ---- rotary embedding, rotate-half over the whole head (method §7.4) ------------------------------- layer_rotary.c
// x rounded to IEEE half precision (nearest even) and returned as float: (float)(_Float16)x, in software.
float hdlm_round_fp16(double x);
// inv_freq[D/2] = 1 / 10000^(2k/D) in fp32 (the state-dict buffer rotary_emb.inv_freq).
void hdlm_rotary_inv_freq(float *inv_freq, int head_dim);
// cos/sin[L, D/2] for positions 0..L-1: exact = fp32 angles; reference = the fp16 angle and fp16→bf16 tables.
void hdlm_rotary_tables(float *cos_t, float *sin_t, const float *inv_freq, int len, int head_dim,
                        hdlm_rotary_mode mode);
// The tables of a forward's rows under `mask`: row i at position hdlm_mask_position(mask, i) (the two-copy layout's
// noisy copy repeats the clean copy's positions, method §3.3). cos/sin hold mask->length rows.
void hdlm_rotary_tables_of_mask(float *cos_t, float *sin_t, const float *inv_freq, const hdlm_attn_mask *mask,
                                int head_dim, hdlm_rotary_mode mode);
// Rotates q and k of qkv[N, 3d] in place (backward: the inverse rotation of dq and dk in dqkv).
void hdlm_rotary_forward(float *qkv, const float *cos_t, const float *sin_t, int batch, int len, int heads,
                         int head_dim);
void hdlm_rotary_backward(float *dqkv, const float *cos_t, const float *sin_t, int batch, int len, int heads,
                          int head_dim);

// ---- attention under a hyperschedule mask (method §3.2), tiled over query blocks ------------------ layer_attention.c
// out[N, d] (heads concatenated), lse[B, H, L] (log-sum-exp of the scaled scores; 0 for fully masked rows).
// Dropout p on the probabilities, mask element (b, h, i, j) drawn at index ((b·H + h)·L + i)·L + j under key; its keep
// bits go to keep (hdlm_attention_keep_words(B, H, L) words, zeroed once when allocated; NULL when p = 0) for the
// backward, which then needs no draws.
void hdlm_attention_forward(float *out, float *lse, uint32_t *keep, const float *qkv, const hdlm_attn_mask *mask,
                            int batch, int len, int heads, int head_dim, float dropout, uint64_t key);
size_t hdlm_attention_keep_words(int batch, int heads, int len);
// dqkv[N, 3d] = gradient of q, k, v (written), with the forward's lse and keep bits.
void hdlm_attention_backward(float *dqkv, const float *dout, const float *out, const float *lse, const uint32_t *keep,
                             const float *qkv, const hdlm_attn_mask *mask, int batch, int len, int heads, int head_dim,
                             float dropout);
// The keys and values of one (sequence, head) kept for KV-cached steps, in the layout the products read (keys
// transposed, both padded to whole tiles): a store of hdlm_attention_kv_floats(capacity, head_dim) floats, 64-byte
// aligned and zeroed when allocated.
size_t hdlm_attention_kv_floats(int capacity, int head_dim);
// Attention of T = n_settle + n new rows [q0, q0 + T) of one (sequence, head): their q, k, v at columns 0, ld/3,
// 2·ld/3 of rows qkv[0, T) (row stride ld). Their keys and values are appended to the store kv (positions [q0, q0 + T);
// [0, q0) already there); the n_settle rows see keys [0, q0 + n_settle), the n rows after them keys [0, q0 + T), or
// with causal row i keys [0, i + 1). The tiles, chunks and softmax of hdlm_attention_forward, so each row has the bits
// it has there (the KV-cached forward, src/model/kv_cache.c, relies on it).
void hdlm_attention_rows(float *out, int ldo, const float *qkv, int ld, float *kv, int capacity, int q0, int n_settle,
                         int n, int head_dim, bool causal);

// ---- GELU (tanh form) --------------------------------------------------------------------------- layer_mlp.c
void hdlm_gelu_forward(float *out, const float *in, size_t n);
void hdlm_gelu_backward(float *din, const float *dout, const float *in, size_t n);

// ---- inverted dropout and the gated residual add ------------------------------------------------ layer_dropout.c
// Element i of a dropout site is kept when hdlm_rng_u16_at(key, i) >= hdlm_dropout_keep_min(p) = ⌈p·2¹⁶⌉, i.e. when
// its uniform u16·2⁻¹⁶ is >= p (p realised to 2⁻¹⁶: 6554/65536 for 0.1); kept elements are scaled by 1/(1 − p).
// 16-bit draws: one Philox block serves 8 elements (the GPU draws B·H·L² of them per attention layer).
static inline uint32_t hdlm_dropout_keep_min(float p) {
    double m = (double)p * 65536.0;   // exact; ⌈m⌉ without libm
    uint32_t k = p > 0.0f ? (uint32_t)m : 0u;
    return k < m ? k + 1 : k;
}
// Multipliers (0 or 1/(1-p)) of elements start..start+count-1 by the rule above.
void hdlm_dropout_scales(float *scale, uint64_t key, uint64_t start, int count, float p);
// The rule's keep bits of elements [start, start + count): element e at bit e − (start & ~31) of bits (bit b: bit
// b % 32 of word b / 32), so that calls for ranges of one row fill one bit array; the other bits of the words touched
// are left as they were.
void hdlm_dropout_keep_bits(uint32_t *bits, uint64_t key, uint64_t start, int count, float p);
// h_out[N,d] = h_in + gate ⊙ dropout(y); gate rows have stride gate_stride (gate NULL: 1). h_out may equal h_in.
void hdlm_residual_forward(float *h_out, const float *h_in, const float *y, const float *gate, int gate_stride, int n,
                           int d, float p, uint64_t key);
// dy = dh ⊙ gate ⊙ dropout mask; dgate (same stride as gate) = dh ⊙ dropout(y) when gate is given.
void hdlm_residual_backward(float *dy, float *dgate, const float *dh, const float *y, const float *gate,
                            int gate_stride, int n, int d, float p, uint64_t key);

// ---- γ conditioning: σ embedding, SiLU, adaLN modulation (method §7.2-7.3) ------------------------ layer_adaln.c
// freq[N, dim] = [cos(σ·f_k) | sin(σ·f_k)], f_k = exp(−ln(10000)·k/(dim/2)).
void hdlm_sigma_sinusoid(float *freq, const float *sigma, int n, int dim);
void hdlm_silu_forward(float *out, const float *in, size_t n);
// din = dout ⊙ silu'(in).
void hdlm_silu_backward(float *din, const float *dout, const float *in, size_t n);
// out = x ⊙ (1 + scale) + shift; shift/scale rows have stride mod_stride.
void hdlm_modulate_forward(float *out, const float *x, const float *shift, const float *scale, int mod_stride, int n,
                           int d);
// dx = dout ⊙ (1 + scale); dshift = dout; dscale = dout ⊙ x (dshift/dscale rows with stride mod_stride).
void hdlm_modulate_backward(float *dx, float *dshift, float *dscale, const float *dout, const float *x,
                            const float *scale, int mod_stride, int n, int d);

// ---- token embedding (γ: mixed with the MASK row, method §5.4) ----------------------------------- layer_embedding.c
// out[N,d] = E[id] or, with mix, mix·E[id] + (1 − mix)·E[mask_id].
void hdlm_embedding_forward(float *out, const float *table, const uint32_t *ids, const float *mix, uint32_t mask_id,
                            int n, int d);
void hdlm_embedding_backward(float *dtable, const float *dout, const uint32_t *ids, const float *mix,
                             uint32_t mask_id, int n, int d);

#endif

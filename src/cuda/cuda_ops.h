// cuda/cuda_ops.h — GPU twins of the CPU layers (model/layers.h), the fused output head + losses, and the optimizer.
//
// All pointers are device pointers, all work is queued on `stream` (asynchronous), shapes as in model/layers.h:
// N tokens (B·L rows, row-major [B, L]), d width, F MLP hidden, V vocabulary, H heads, D head dim.
// Precision: the residual stream h and every gradient of a parameter are fp32; matmul inputs and activations
// between layers are bf16 (hdlm_bf16); LayerNorm/softmax statistics fp32. Weights come from the bf16 shadow of the
// fp32 master buffer (same layout, refreshed by hdlm_cuda_adamw_update); LayerNorm weights and the embedding are
// read in fp32 from the master buffer. Backward passes accumulate (+=) into parameter gradients and write (=) input
// gradients unless a comment says +=. Dropout uses the CPU's element index rule and Philox stream, so with the same
// key the GPU drops exactly the elements the CPU drops.
//
// Each operation is tested against its CPU twin in tests/test_cuda_*.c.
#ifndef HDLM_CUDA_OPS_H
#define HDLM_CUDA_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hdlm/cuda.h"
#include "hdlm/diffusion.h"
#include "hdlm/mask.h"
#include "hdlm/train_config.h"   // hdlm_adamw_config

// ---- linear through cuBLASLt (nn.Linear layout W[out, in]) ------------------------------------ src/cuda/linear.cu
// out[N,o] = in[N,i]·Wᵀ + b (b may be NULL). With gelu_out: out receives the pre-activation and
// gelu_out = GELU_tanh(out) (cuBLASLt GELU_AUX_BIAS epilogue).
void hdlm_cuda_linear_forward(hdlm_bf16 *out, hdlm_bf16 *gelu_out, const hdlm_bf16 *in, const hdlm_bf16 *w,
                              const hdlm_bf16 *b, int n, int in_dim, int out_dim, hdlm_stream stream);
// dW[o,i] += doutᵀ·in (fp32); db[o] += Σ_rows dout (fp32, may be NULL); din = dout·W (bf16; += when accumulate;
// din may be NULL). With pre_gelu (this layer's input was GELU(pre_gelu), as for fc2): din = (dout·W) ⊙
// GELU'(pre_gelu), the gradient of the pre-activation (cuBLASLt DGELU epilogue).
void hdlm_cuda_linear_backward(hdlm_bf16 *din, float *dw, float *db, const hdlm_bf16 *dout, const hdlm_bf16 *in,
                               const hdlm_bf16 *w, const hdlm_bf16 *pre_gelu, int n, int in_dim, int out_dim,
                               bool accumulate, hdlm_stream stream);

// ---- elementwise layers ------------------------------------------------------------------------ src/cuda/layers.cu
// out = LN(in)·w (no bias, eps 1e-5, biased variance), mean/rstd[N] fp32. With shift and scale (γ adaLN, rows of
// stride mod_stride): out = LN(in)·w ⊙ (1 + scale) + shift.
void hdlm_cuda_layernorm_forward(hdlm_bf16 *out, float *mean, float *rstd, const float *in, const float *w,
                                 const hdlm_bf16 *shift, const hdlm_bf16 *scale, int mod_stride, int n, int d,
                                 hdlm_stream stream);
// din += ∂loss/∂in (fp32 residual stream); dw += Σ_rows (dout⊙(1+scale))·x̂ (fp32). When modulated, dshift = dout and
// dscale = dout ⊙ x̂·w are written (bf16, stride mod_stride; x̂·w recomputed in fp32 from in, mean, rstd and w).
// Deterministic (no float atomics on dw).
void hdlm_cuda_layernorm_backward(float *din, float *dw, hdlm_bf16 *dshift, hdlm_bf16 *dscale, const hdlm_bf16 *dout,
                                  const float *in, const float *w, const float *mean, const float *rstd,
                                  const hdlm_bf16 *scale, int mod_stride, int n, int d, hdlm_stream stream);

// Rotates q and k of qkv[N, 3d] in place with tables cos/sin[L, D/2] fp32 (hdlm_rotary_tables, uploaded);
// backward applies the inverse rotation to dq and dk of dqkv.
void hdlm_cuda_rotary_forward(hdlm_bf16 *qkv, const float *cos_t, const float *sin_t, int batch, int len, int heads,
                              int head_dim, hdlm_stream stream);
void hdlm_cuda_rotary_backward(hdlm_bf16 *dqkv, const float *cos_t, const float *sin_t, int batch, int len, int heads,
                               int head_dim, hdlm_stream stream);

// h_out = h_in + gate ⊙ dropout(y) (fp32 stream; y, gate bf16; gate rows stride gate_stride, NULL: 1).
// h_out may equal h_in. Element (r, c) is dropped by the CPU's rule (hdlm_dropout_keep_min) at index r·d + c.
void hdlm_cuda_residual_forward(float *h_out, const float *h_in, const hdlm_bf16 *y, const hdlm_bf16 *gate,
                                int gate_stride, int n, int d, float p, uint64_t key, hdlm_stream stream);
// dy = dh ⊙ gate ⊙ mask/(1−p); dgate = dh ⊙ dropout(y) when gate is given (written, same stride as gate).
void hdlm_cuda_residual_backward(hdlm_bf16 *dy, hdlm_bf16 *dgate, const float *dh, const hdlm_bf16 *y,
                                 const hdlm_bf16 *gate, int gate_stride, int n, int d, float p, uint64_t key,
                                 hdlm_stream stream);

// out[N,d] fp32 = E[id], or with mix (γ): mix·E[id] + (1 − mix)·E[mask_id]. table: fp32 master.
void hdlm_cuda_embedding_forward(float *out, const float *table, const uint32_t *ids, const float *mix,
                                 uint32_t mask_id, int n, int d, hdlm_stream stream);
// dtable += scatter of dout (deterministic: rows sorted by id, or one thread block per column slice).
void hdlm_cuda_embedding_backward(float *dtable, const float *dout, const uint32_t *ids, const float *mix,
                                  uint32_t mask_id, int n, int d, hdlm_stream stream);

// γ conditioning: freq[N, dim] = [cos(σ·f_k) | sin(σ·f_k)] (bf16), SiLU forward/backward on bf16, and the embedding
// mix = exp(−γσ) (fp32).
void hdlm_cuda_sigma_sinusoid(hdlm_bf16 *freq, const float *sigma, int n, int dim, hdlm_stream stream);
void hdlm_cuda_silu_forward(hdlm_bf16 *out, const hdlm_bf16 *in, size_t n, hdlm_stream stream);
void hdlm_cuda_silu_backward(hdlm_bf16 *din, const hdlm_bf16 *dout, const hdlm_bf16 *in, size_t n,
                             hdlm_stream stream);
void hdlm_cuda_gamma_mix(float *mix, const float *sigma, float gamma, int n, hdlm_stream stream);

// ---- flash attention under a hyperschedule mask (method §3.2) --------------------------------- src/cuda/attention.cu
// qkv bf16 [N, 3d] (rotated), out bf16 [N, d], lse fp32 [B, H, L] (natural log-sum-exp of the scaled scores; 0 for
// fully masked rows, which attend uniformly to all L keys as on the CPU). Tiles no key of which is allowed are
// skipped (hdlm_mask_key_range). Dropout p on the probabilities: element (b, h, i, j) dropped when
// hdlm_rng_u16_at(key, ((b·H + h)·L + i)·L + j) < ⌈p·2¹⁶⌉. Head dim 64 is the fast path; any even D ≤ 128 works.
// keep_bits (hdlm_cuda_attention_keep_bytes bytes, or NULL when no backward follows): where the forward drops
// probabilities it records which ones, for the backward of the same call, which then needs that buffer.
void hdlm_cuda_attention_forward(hdlm_bf16 *out, float *lse, uint32_t *keep_bits, const hdlm_bf16 *qkv,
                                 const hdlm_attn_mask *mask, int batch, int len, int heads, int head_dim,
                                 float dropout, uint64_t key, hdlm_stream stream);
// Bytes of the dropout keep bits of one forward (one bit per probability of every 64 × 64 tile).
size_t hdlm_cuda_attention_keep_bytes(int batch, int len, int heads);
// Bytes of scratch the backward needs (the row sums dO·O, fp32 [B, H, L]).
size_t hdlm_cuda_attention_workspace_bytes(int batch, int len, int heads, int head_dim);
// dqkv (bf16, written) from dout; workspace of hdlm_cuda_attention_workspace_bytes bytes; keep_bits as the forward
// of out and lse left them.
void hdlm_cuda_attention_backward(hdlm_bf16 *dqkv, void *workspace, const hdlm_bf16 *dout, const hdlm_bf16 *out,
                                  const float *lse, const uint32_t *keep_bits, const hdlm_bf16 *qkv,
                                  const hdlm_attn_mask *mask, int batch, int len, int heads, int head_dim,
                                  float dropout, uint64_t key, hdlm_stream stream);

// ---- fused output head + losses (src/cuda/head_loss.cu) -------------------------------------------------------
// loss = Σ_r coef_r·ℓ_r over the scored rows r, ℓ_r the cross-entropy or γ score entropy of the row's head output
// z_r = x_r·Wᵀ + b (V = vocab entries). Only scored rows (coef ≠ 0) go through the head: they are gathered, z is
// computed in fp32 for a chunk of them at a time (as many as the workspace holds, never all N×V), each row's loss
// taken from its chunk and, when dx is not NULL, its gradient coef_r·dℓ_r/dz_r (bf16) turned at once into dx (bf16,
// written; 0 for rows not scored), dW and db (fp32, +=). The rows and coefficients are those of the CPU losses, set
// by the two fill functions below, so *loss is hdlm_corruption_loss or hdlm_gamma_loss of the CPU model's outputs.
typedef struct hdlm_cuda_head_rows hdlm_cuda_head_rows;
hdlm_cuda_head_rows *hdlm_cuda_head_rows_create(int capacity);   // for up to `capacity` rows (N = B·L)
void hdlm_cuda_head_rows_free(hdlm_cuda_head_rows *rows);
// ε / ARDM (hdlm_corruption_loss): rows with c->weight ≠ 0, coef = weight/norm, CE against x0 (host array) over
// the first softmax_width entries. The rows are copied to the device on `stream` (host arrays reusable at return).
void hdlm_cuda_head_rows_cross_entropy(hdlm_cuda_head_rows *rows, const hdlm_corruption *c, const uint32_t *x0,
                                       int vocab, int softmax_width, hdlm_stream stream);
// γ (method §5.4-5.6: scale_by_sigma, hdlm_gamma_post_process, hdlm_gamma_loss and the backward of both): steps[b] of
// sequence b, xt/x0 [batch·L] on the host. The head output z is shifted by scale_by_sigma exactly as the CPU model
// does (the shift from hdlm_gamma_sigmas' σ), so W and b are the plain output layer.
void hdlm_cuda_head_rows_gamma(hdlm_cuda_head_rows *rows, const hdlm_gamma_config *cfg, const hdlm_step *const *steps,
                               const uint32_t *xt, const uint32_t *x0, int batch, int vocab, hdlm_stream stream);
// Workspace for n rows: fp32 logits and bf16 gradients of up to 2048 rows at a time (≈ 600 MB at V = 50258).
// A smaller workspace works with smaller chunks (at least one row must fit).
size_t hdlm_cuda_head_workspace_bytes(int n, int d, int vocab);
// *loss: device fp64 [1], set (a fixed-order sum: deterministic). x [n, d], w [vocab, d], b [vocab] (may be NULL);
// dx NULL: loss only (dw, db untouched); else dw is required and db may be NULL. workspace: 256-byte aligned (as
// hdlm_cuda_malloc returns). The rows must have been filled for these n rows and this vocab, on this stream.
void hdlm_cuda_head_loss(double *loss, hdlm_bf16 *dx, float *dw, float *db, void *workspace, size_t workspace_bytes,
                         const hdlm_bf16 *x, const hdlm_bf16 *w, const hdlm_bf16 *b, const hdlm_cuda_head_rows *rows,
                         int n, int d, int vocab, hdlm_stream stream);

// ---- optimizer (src/cuda/optim.cu) ----------------------------------------------------------------------------
// *out (device fp64 [1], set) = Σ x² over n floats, fp64 partial sums in a fixed order (deterministic).
void hdlm_cuda_sum_squares(double *out, const float *x, size_t n, hdlm_stream stream);
// AdamW exactly as hdlm_adamw_update (torch semantics), on grads·grad_scale (grad_scale folds the 1/(accum·world)
// mean and the clipping factor); also writes the bf16 shadow params_bf16 of the updated params.
void hdlm_cuda_adamw_update(float *params, hdlm_bf16 *params_bf16, const float *grads, float *m, float *v, size_t n,
                            const hdlm_adamw_config *config, float lr, int64_t step, float grad_scale,
                            hdlm_stream stream);
// shadow = decay·shadow + (1 − decay)·params (hdlm_ema_update with the decay already computed on the host).
void hdlm_cuda_ema_update(float *shadow, const float *params, size_t n, float decay, hdlm_stream stream);

#endif

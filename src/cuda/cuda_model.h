// cuda/cuda_model.h — the DDiT on one GPU (src/cuda/model.cu), the twin of hdlm/model.h.
//
// Created from a host hdlm_model: same configuration, same tensor table, and flat device buffers with the host's
// layout — params fp32 [n_params + n_buffer], grads fp32 [n_params], params_bf16 [n_params] (the bf16 shadow the
// matmuls read) — so all-reduce, checkpoints and the optimizer use the host's tensor offsets unchanged.
// Precision as in cuda/cuda_ops.h: fp32 master weights, gradients and residual stream; bf16 activations.
//
// A training micro-step: zero_grad (once per update), forward_epsilon or forward_gamma with backward = true (the
// fused head computes the output layer's gradients during the loss), hdlm_cuda_model_backward, then read the loss
// with hdlm_cuda_model_loss. Every call only queues work on the model's compute stream (hdlm_cuda_model_stream),
// except hdlm_cuda_model_loss, the downloads and create/free, which synchronise. Inputs are copied at the call
// (through pinned staging buffers), so the caller may reuse its arrays at once.
//
// Dropout draws the same elements as the CPU model for the same dropout_key, so with dropout 0, or with the same
// key, the GPU step is the CPU step up to bf16 rounding (tests/test_cuda_model.c).
#ifndef HDLM_CUDA_MODEL_H
#define HDLM_CUDA_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "hdlm/cuda.h"
#include "hdlm/diffusion.h"
#include "hdlm/model.h"
#include "hdlm/schedule.h"

typedef struct hdlm_cuda_model hdlm_cuda_model;

// Allocates the device model of `host` (needs hdlm_cuda_init), uploads host->params (buffers included) and zeroes
// the gradients. The configuration and tensor table are copied: `host` may be freed afterwards.
int hdlm_cuda_model_create(hdlm_cuda_model **out, const hdlm_model *host);
void hdlm_cuda_model_free(hdlm_cuda_model *model);

const hdlm_model_config *hdlm_cuda_model_config(const hdlm_cuda_model *model);
size_t hdlm_cuda_model_n_params(const hdlm_cuda_model *model);   // trainable floats (= host n_params)

// Device buffers and the compute stream (for the optimizer, all-reduce and checkpoints).
float *hdlm_cuda_model_params(hdlm_cuda_model *model);            // fp32 [n_params + n_buffer]
float *hdlm_cuda_model_grads(hdlm_cuda_model *model);             // fp32 [n_params]
hdlm_bf16 *hdlm_cuda_model_params_bf16(hdlm_cuda_model *model);   // bf16 [n_params]
hdlm_stream hdlm_cuda_model_stream(const hdlm_cuda_model *model);

// Parameters from/to the host layout (n_params + n_buffer floats). Upload also refreshes the bf16 shadow; after
// changing params on the device by other means (hdlm_cuda_adamw_update does it itself) call
// hdlm_cuda_model_refresh_bf16.
void hdlm_cuda_model_upload_params(hdlm_cuda_model *model, const float *host_params);
void hdlm_cuda_model_download_params(hdlm_cuda_model *model, float *host_params);
void hdlm_cuda_model_refresh_bf16(hdlm_cuda_model *model);
void hdlm_cuda_model_download_grads(hdlm_cuda_model *model, float *host_grads);   // n_params floats
void hdlm_cuda_model_zero_grad(hdlm_cuda_model *model);

// Forward pass and ε / ARDM loss: Σ_rows weight·CE(out, x0) / norm, the softmax over the first softmax_width entries
// (exactly hdlm_corruption_loss of the CPU model's outputs). input->tokens is normally corruption->xt. With backward,
// d(loss)/d(outputs) is turned at once into the output layer's gradients (+=) and the input gradient of the head,
// ready for hdlm_cuda_model_backward. Refuses bad inputs as hdlm_model_forward does (returns -1, nothing queued).
int hdlm_cuda_model_forward_epsilon(hdlm_cuda_model *model, const hdlm_model_input *input,
                                    const hdlm_corruption *corruption, const uint32_t *x0, int softmax_width,
                                    bool backward);
// Forward pass and γ loss (hdlm_gamma_post_process + hdlm_gamma_loss of the CPU model's outputs, method §5.4-5.6):
// input->tokens = xt, input->sigma from hdlm_gamma_sigmas of each sequence's step, steps[b] of sequence b.
int hdlm_cuda_model_forward_gamma(hdlm_cuda_model *model, const hdlm_model_input *input,
                                  const hdlm_gamma_config *config, const hdlm_step *const *steps, const uint32_t *x0,
                                  bool backward);
// hdlm_cuda_model_forward_epsilon or _gamma as target says (the CPU model's hdlm_model_forward_loss).
int hdlm_cuda_model_forward_loss(hdlm_cuda_model *model, const hdlm_model_input *input, const hdlm_loss_target *target,
                                 bool backward);
// The loss of the last forward (waits for it).
double hdlm_cuda_model_loss(hdlm_cuda_model *model);

// Accumulates (+=) the parameter gradients of the last forward's loss (which must have run with backward = true).
void hdlm_cuda_model_backward(hdlm_cuda_model *model);

// Gradient-ready hook, the semantics of hdlm_model.grad_ready: called on the host, during hdlm_cuda_model_backward,
// in the CPU model's order and with its `from` offsets (output layer, blocks from the last down to 1, then 0), when
// the work producing grads[from .. n_params) has been queued. Inside the hook, hdlm_cuda_model_grad_event returns a
// cudaEvent_t (as void *) recorded on the compute stream at that point: a communication stream waits on it
// (cudaStreamWaitEvent) before reading those gradients. Each hook point has its own event, valid until the next
// backward. fn NULL: no hook.
void hdlm_cuda_model_set_grad_ready(hdlm_cuda_model *model, hdlm_grad_ready_fn fn, void *ctx);
void *hdlm_cuda_model_grad_event(hdlm_cuda_model *model);

// Profile by kernel kind, the GPU twin of the CPU model's (environment HDLM_PROFILE=1, read at create): CUDA events
// on the compute stream between the kernel groups of the forward, head and backward, grouped as adaLN + σ
// conditioning, embedding, LayerNorm, each block linear, rotary, attention, residual + dropout, head + loss, and the
// caller's optimizer spans. The times are read at the next forward, which then first waits for the previous step's
// events (profiling serialises host and device once per step), or by the report. Off, each group costs one branch.
bool hdlm_cuda_model_profiling(const hdlm_cuda_model *model);
// The work the caller queues on the compute stream between these two calls counts as "optimizer" (global norm,
// AdamW, EMA, zero_grad); host waits between spans are not counted. No-ops when not profiling.
void hdlm_cuda_model_profile_optimizer_begin(hdlm_cuda_model *model);
void hdlm_cuda_model_profile_optimizer_end(hdlm_cuda_model *model);
// Forgets what was measured so far (e.g. the warm-up steps).
void hdlm_cuda_model_profile_reset(hdlm_cuda_model *model);
// Waits for the stream and prints the accumulated table to `out`: ms per forward (a training step when each forward
// has its backward) by kind, forward and backward, share of the timed GPU time and TFLOP/s of the GEMM kinds and
// attention (the CPU profile's counts). wall_step_s > 0: also how much of that wall time per step the events cover.
// Prints nothing when not profiling.
void hdlm_cuda_model_profile_report(hdlm_cuda_model *model, FILE *out, double wall_step_s);

#endif

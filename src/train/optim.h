// train/optim.h — AdamW with PyTorch semantics, learning-rate schedules, gradient-norm clipping and the EMA of
// method §8.2 and §8.5, all over flat fp32 buffers (parameters, gradients and each moment are one contiguous array).
#ifndef HDLM_OPTIM_H
#define HDLM_OPTIM_H

#include <stddef.h>
#include <stdint.h>

#include "hdlm/train_config.h"

// One AdamW update of n parameters at learning rate lr; `update` counts optimizer updates from 1 (bias
// corrections). Decoupled weight decay on every parameter (the reference has no parameter groups). Each gradient
// is used times (float)grad_scale (the mean over micro-batches and ranks, 1/(accum · ranks)) and then times
// (float)clip (the clipping factor), each product rounded to fp32 and skipped when its factor is not below 1; the
// gradients themselves are left as they are. When ema is given, the EMA shadow of these parameters follows the
// updated ones in the same pass (hdlm_ema_blend with ema_decay).
void hdlm_adamw_update(float *params, const float *grads, float *m, float *v, size_t n, const hdlm_adamw_config *c,
                       double lr, int64_t update, double grad_scale, double clip, float *ema, double ema_decay);

// Schedules (hdlm_lr_kind, from optim.scheduler): CONSTANT lr; COSINE min_lr + (lr - min_lr)(1 + cos(pi e /
// total))/2 (ε default, no warm-up); WARMUP_COSINE lr * e / warmup during warm-up, then cosine from lr to 0 at `total`
// (γ default); LINEAR lr * (1 - e / total).

typedef struct {
    hdlm_lr_kind kind;
    double lr, min_lr;
    int64_t warmup, total;   // in scheduler counts e
    int64_t multiplier;      // e = optimizer updates x multiplier (the reference: number of processes, method §8.2)
} hdlm_lr_schedule;

// Learning rate for the given number of completed optimizer updates.
double hdlm_lr_at(const hdlm_lr_schedule *s, int64_t updates);

// Global L2 norm of n gradients times (float)scale (scale as hdlm_adamw_update's grad_scale: the products AdamW
// uses): the squares (exact in double) summed in index order within blocks of HDLM_GRAD_NORM_BLOCK elements, then
// the blocks' sums in block order, so the result does not depend on the number of threads. NaN or infinity when
// any gradient is not finite.
enum { HDLM_GRAD_NORM_BLOCK = 1 << 14 };
double hdlm_grad_norm(const float *grads, size_t n, double scale);
// The clipping factor min(1, max_norm / (norm + 1e-6)) of PyTorch's clip_grad_norm_ (1 when max_norm <= 0: off).
double hdlm_grad_clip_factor(double norm, double max_norm);

typedef struct {
    double decay_max;          // 0.9999
    double power;              // 2/3 (diffusers' warm-up form, inv_gamma = 1)
    int64_t update_after;      // 2000: the shadow copies the weights until then
} hdlm_ema_config;

// Decay used at the n-th EMA call (n from 1), method §8.5.
double hdlm_ema_decay(const hdlm_ema_config *c, int64_t n);
// shadow <- shadow - (1 - d)(shadow - params) with d = hdlm_ema_decay(c, n).
void hdlm_ema_update(float *shadow, const float *params, size_t n_params, const hdlm_ema_config *c, int64_t n);
// The same with the decay given.
void hdlm_ema_blend(float *shadow, const float *params, size_t n_params, double decay);

#endif

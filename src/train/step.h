// src/train/step.h — the step backend: what the trainer asks of the device that holds the model and the optimizer
// state during one update (docs/architecture.md). The CPU backend (step_cpu.c) and the CUDA backend (step_cuda.c)
// implement the same calls side by side, in the spirit of ggml's backend interface; neither knows the trainer. The
// trainer keeps the data, the corruption, the statistics, the skip and clip rules, the counters and checkpoints.
#ifndef HDLM_STEP_H
#define HDLM_STEP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "hdlm/diffusion.h"
#include "hdlm/model.h"
#include "train/optim.h"

#define HDLM_STEP_BUCKET_FLOATS ((size_t)1 << 20)   // gradient all-reduce granularity of both backends: 4 MiB

// Shared with the trainer: the host model (its parameters are what checkpoints read and write) and the host optimizer
// state over this rank's range [lo, hi) of the flat buffers (everything, or its ZeRO-1 slice).
typedef struct {
    hdlm_model *model;
    float *adam_m, *adam_v, *ema;   // hi - lo floats each
    size_t lo, hi;
    const size_t *starts;           // world + 1 slice starts (hdlm_partition_rows)
    bool zero1;
    int world;
    hdlm_adamw_config adamw;
} hdlm_step_state;

// One optimizer update's parameters, decided by the trainer.
typedef struct {
    double lr;
    int64_t update;     // applied updates so far + 1 (AdamW's bias corrections)
    double grad_scale;  // the mean's 1/(accum · ranks), as given to grad_norm: the gradients stay unscaled
    double clip;        // clipping factor in (0, 1] on the scaled gradient
    double ema_decay;
} hdlm_step_apply;

typedef struct hdlm_step_backend hdlm_step_backend;

typedef struct {
    // Forward and loss of a corrupted micro-batch; with backward, its parameter gradients too (accumulated). last: the
    // last micro-batch of the update, whose gradients are reduced across ranks as they become final; discard: the
    // gradients accumulated so far are erased first (the reference's quirk, method §8.3). May return before
    // the device is done: the loss is read with `loss`.
    void (*micro_batch)(hdlm_step_backend *b, const hdlm_model_input *in, const hdlm_loss_target *target,
                        bool backward, bool last, bool discard);
    double (*loss)(hdlm_step_backend *b);   // the last micro-batch's loss
    // Completes the gradient reduction and returns the global L2 norm of scale × the summed gradient (collective).
    double (*grad_norm)(hdlm_step_backend *b, double scale);
    // AdamW with the clipping factor, the EMA, the ZeRO-1 all-gather (collective).
    void (*apply)(hdlm_step_backend *b, const hdlm_step_apply *a);
    void (*zero_grad)(hdlm_step_backend *b);
    // Puts the EMA weights into the model (gathered under ZeRO-1), or the raw weights back (collective).
    void (*use_ema)(hdlm_step_backend *b, bool ema);
    // Parameters, EMA and AdamW moments into the shared host buffers (before a checkpoint).
    void (*download)(hdlm_step_backend *b);
    // Timing by kernel kind since the last reset, for a step of step_s seconds (HDLM_PROFILE=1; may be NULL).
    void (*profile)(hdlm_step_backend *b, FILE *out, double step_s, bool reset);
    void (*free)(hdlm_step_backend *b);
} hdlm_step_ops;

struct hdlm_step_backend {
    const hdlm_step_ops *ops;
    hdlm_step_state *state;
};

// CPU: the host model itself, MPI all-reduce in buckets during the backward pass; dout scratch for B × L.
int hdlm_step_cpu_create(hdlm_step_backend **out, hdlm_step_state *state, int micro_batch, int length);
// CUDA: this rank's GPU, a device copy of the model and the optimizer state, NCCL between ranks. Refused with the
// reason when the build has no CUDA backend or no GPU is usable.
int hdlm_step_cuda_create(hdlm_step_backend **out, hdlm_step_state *state);

#endif

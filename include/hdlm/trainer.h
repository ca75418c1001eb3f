// hdlm/trainer.h — one training run on this rank: the model replica, the optimizer state (whole or this rank's
// ZeRO-1 slice), the data loader, the counters, one optimizer update at a time, validation, checkpoints and exact
// resume (docs/training.md).
//
// Counters: `update` counts optimizer updates attempted (training.n_iters is in these); `applied` those that were
// applied (a non-finite gradient skips the update, which then advances neither AdamW, the LR schedule nor the EMA);
// `micro_step` counts micro-batches (the same on every rank). Every random stream is keyed by (seed, sequence or rank,
// micro_step, purpose), so the counters and the seed are the whole RNG state.
#ifndef HDLM_TRAINER_H
#define HDLM_TRAINER_H

#include <stdbool.h>
#include <stdint.h>

#include "hdlm/checkpoint.h"
#include "hdlm/dataloader.h"
#include "hdlm/diffusion.h"
#include "hdlm/dist.h"
#include "hdlm/model.h"
#include "hdlm/optim.h"
#include "hdlm/schedule.h"
#include "hdlm/train_config.h"

typedef enum { HDLM_OBJECTIVE_EPSILON, HDLM_OBJECTIVE_EPSILON_UNSCHEDULED, HDLM_OBJECTIVE_GAMMA, HDLM_OBJECTIVE_ARDM }
hdlm_objective;

typedef struct {
    hdlm_train_config cfg;
    int rank, world, micro_batch, accum, length;
    hdlm_objective objective;
    hdlm_model *model;
    hdlm_tensor_desc *desc;   // trainable tensors (the checkpoint's table)
    int n_desc;
    size_t *starts;           // world + 1 optimizer slices (hdlm_partition_rows)
    size_t lo, hi;            // this rank's optimizer range: [0, n) or its ZeRO-1 slice
    float *adam_m, *adam_v, *ema;   // hi - lo floats each
    hdlm_adamw_config adamw;
    hdlm_lr_schedule lr;
    hdlm_ema_config ema_cfg;
    hdlm_schedule sched;
    bool scheduled;           // annealing.type != none
    hdlm_step_sampling sampling;
    hdlm_eps_config eps_cfg;
    hdlm_gamma_config gamma_cfg;
    hdlm_ardm_config ardm_cfg;
    hdlm_dataset train, valid;
    bool has_valid;
    hdlm_loader loader;
    hdlm_grad_sync sync;
    struct hdlm_trainer_gpu *gpu;   // training.device = cuda: device model, optimizer state, NCCL (src/trainer_cuda.c)
    int64_t update, applied, micro_step, tokens_seen;
    // per micro-batch scratch
    uint32_t *x0, *xt;
    float *sigma, *dout;
    hdlm_attn_mask full_mask;    // the mask of unscheduled objectives
    hdlm_corruption corr;
    hdlm_step *steps;
    const hdlm_step **step_of;   // [B]: the step of each sequence
    int *ks;
    double flops_per_token;      // 6 x non-embedding parameters + 12 x layers x width x L
} hdlm_trainer;

typedef struct {
    double loss;        // mean over ranks and micro-batches of the micro-batch losses
    double grad_norm;   // global norm before clipping (NaN/inf when the update was skipped)
    double lr;          // learning rate used (of the update, or the next one when skipped)
    bool skipped;
} hdlm_update_stats;

// Builds the run for this rank of MPI_COMM_WORLD (collective): model, data, optimizer state. With resume (a
// checkpoint directory) everything is restored from it, at any world size that keeps the global micro-batch.
// training.device = cuda puts the step on this rank's GPU (docs/cuda.md): the host model and optimizer state stay
// the checkpoints' source of truth (refreshed from the device before every save); refused with the reason when the
// build has no CUDA backend or no GPU is usable.
int hdlm_trainer_create(hdlm_trainer *t, const hdlm_train_config *cfg, const char *resume);
void hdlm_trainer_free(hdlm_trainer *t);
// One optimizer update (collective).
void hdlm_trainer_update(hdlm_trainer *t, hdlm_update_stats *stats);
// Validation loss of the EMA weights over training.eval_batches micro-batches per rank of fixed chunks and fixed
// draws (collective); NAN without a validation set.
double hdlm_trainer_eval(hdlm_trainer *t);
// Writes <run.dir>/checkpoints/step_<update> (collective).
int hdlm_trainer_save(hdlm_trainer *t, double *seconds);

#endif

// src/train/trainer_internal.h — the trainer's state (include/hdlm/trainer.h), for src/train and the tests.
#ifndef HDLM_TRAINER_INTERNAL_H
#define HDLM_TRAINER_INTERNAL_H

#include "data/dataloader.h"
#include "hdlm/trainer.h"
#include "train/step.h"

struct hdlm_trainer {
    hdlm_train_config cfg;
    int rank, world, micro_batch, accum, length;
    int model_length;         // positions per sequence in the model: 2·length in the two-copy layout, else length
    hdlm_model *model;
    hdlm_tensor *tensors;     // the trainable tensors: the checkpoint's table
    int n_tensors;
    size_t *starts;           // world + 1 optimizer slices (hdlm_partition_rows)
    hdlm_step_state state;    // model, optimizer state and this rank's range, shared with the backend
    hdlm_step_backend *backend;
    hdlm_lr_schedule lr;
    hdlm_ema_config ema_cfg;
    hdlm_schedule sched;      // when cfg.kind.scheduled
    hdlm_eps_config eps_cfg;
    hdlm_gamma_config gamma_cfg;
    hdlm_ardm_config ardm_cfg;
    hdlm_dataset train, valid;
    bool has_valid;
    int64_t eval_batches;     // training.eval_batches, capped at one pass over the validation set
    hdlm_loader loader;
    int64_t update, applied, micro_step, tokens_seen;
    double flops_per_token;
    // per micro-batch scratch
    uint32_t *chunks;         // [B, length] from the loader
    uint32_t *x0, *xt;        // [B, model_length]: the clean model input ([x; x] in the two-copy layout), corrupted
    float *sigma;
    hdlm_attn_mask full_mask;    // the mask of unscheduled objectives
    hdlm_attn_mask causal_mask;  // the AR objective's
    hdlm_corruption corr;
    hdlm_step *steps;
    const hdlm_step **step_of;   // [B]: the step of each sequence
    int *ks;
    int *block_steps, *levels;   // two-copy layout: [B, L/ω] steps of the blocks, [L] scratch
};

#endif

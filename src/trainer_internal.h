// src/trainer_internal.h — what the trainer (src/trainer.c) shares with its GPU side (src/trainer_cuda.c), used when
// training.device = cuda.
#ifndef HDLM_TRAINER_INTERNAL_H
#define HDLM_TRAINER_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "hdlm/trainer.h"

// Corrupts the micro-batch in t->x0 for micro-step ms (steps, t->corr, and for γ t->xt and t->sigma) and returns the
// model input (pointing into t).
hdlm_model_input hdlm_trainer_corrupt(hdlm_trainer *t, uint64_t seed, uint64_t ms, bool training);

// The device side. create: after the host model, the optimizer state and any restore exist (uploads them); the
// others only with t->gpu set.
int hdlm_trainer_gpu_create(hdlm_trainer *t);
void hdlm_trainer_gpu_free(hdlm_trainer *t);
void hdlm_trainer_gpu_update(hdlm_trainer *t, hdlm_update_stats *stats);
// Loss of the micro-batch input (no gradients), for validation.
double hdlm_trainer_gpu_loss(hdlm_trainer *t, const hdlm_model_input *in);
// Puts the EMA weights into the device model (the raw weights saved in the host model), or back.
void hdlm_trainer_gpu_use_ema(hdlm_trainer *t, bool ema);
// Parameters, EMA and AdamW moments from the device into the host buffers (before a checkpoint).
void hdlm_trainer_gpu_download(hdlm_trainer *t);

#endif

// hdlm/trainer.h — one training run on this rank: the model replica, the optimizer state (whole or this rank's
// ZeRO-1 slice), the data loader, the counters, one optimizer update at a time, validation, checkpoints and exact
// resume (docs/training.md). The update runs on a step backend, CPU or CUDA (docs/architecture.md).
//
// Counters: `update` counts optimizer updates attempted (training.n_iters is in these); `applied` those that were
// applied (a non-finite gradient skips the update, which then advances neither AdamW, the LR schedule nor the EMA);
// `micro_step` counts micro-batches (the same on every rank). Every random stream is keyed by (seed, sequence or rank,
// micro_step, purpose), so the counters and the seed are the whole RNG state.
#ifndef HDLM_TRAINER_H
#define HDLM_TRAINER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "hdlm/train_config.h"

typedef struct hdlm_trainer hdlm_trainer;

// Where the run stands (hdlm_trainer_state).
typedef struct {
    int rank, world, micro_batch, accum, length;
    size_t n_params;            // trainable floats
    double flops_per_token;     // hdlm_model_flops_per_token at the training length
    bool has_valid;             // data.valid is set
    int64_t update, applied, micro_step, tokens_seen;
    int64_t epoch;              // of the data loader
    uint64_t position;          // chunks into the epoch
} hdlm_trainer_info;

typedef struct {
    double loss;        // mean over ranks and micro-batches of the micro-batch losses
    double grad_norm;   // global norm before clipping (NaN/inf when the update was skipped)
    double lr;          // learning rate used (of the update, or the next one when skipped)
    bool skipped;
} hdlm_update_stats;

// Builds the run for this rank of MPI_COMM_WORLD (collective): model, data, optimizer state, step backend. With
// resume (a checkpoint directory, or "latest") everything is restored from it, at any world size that keeps the
// global micro-batch. training.device = cuda puts the step on this rank's GPU (docs/cuda.md): the host model and
// optimizer state stay the checkpoints' source of truth (refreshed from the device before every save); refused with
// the reason when the build has no CUDA backend or no GPU is usable.
int hdlm_trainer_create(hdlm_trainer **trainer, const hdlm_train_config *cfg, const char *resume);
void hdlm_trainer_free(hdlm_trainer *t);
hdlm_trainer_info hdlm_trainer_state(const hdlm_trainer *t);
// One optimizer update (collective).
void hdlm_trainer_update(hdlm_trainer *t, hdlm_update_stats *stats);
// Validation loss of the EMA weights over training.eval_batches micro-batches per rank of fixed chunks and fixed
// draws (collective); NAN without a validation set.
double hdlm_trainer_eval(hdlm_trainer *t);
// Writes <run.dir>/checkpoints/step_<update> (collective).
int hdlm_trainer_save(hdlm_trainer *t, double *seconds);
// The job's watchdog (src/train/watchdog.c): with timeout_s > 0, a thread ends the process with a message naming the
// rank that stopped answering when this rank has made no progress for timeout_s (training.watchdog_s). The trainer
// beats once per micro-batch, validation batch and checkpoint; hdlm_watchdog_beat may be called around other long
// collective phases.
int hdlm_watchdog_start(const char *run_dir, double timeout_s);
void hdlm_watchdog_beat(int64_t update);
void hdlm_watchdog_stop(void);
// The backend's timing by kernel kind (HDLM_PROFILE=1 on the GPU): reset starts a new measurement; otherwise the
// table since the last reset is printed for steps of step_s seconds. Nothing on the CPU backend (hdlm-bench model).
void hdlm_trainer_profile(hdlm_trainer *t, FILE *out, double step_s, bool reset);

#endif

// The trainer's GPU side (training.device = cuda, docs/cuda.md): the step on the device model (hdlm/cuda_model.h),
// gradients reduced by NCCL (hdlm/dist_nccl.h), AdamW, the global norm, clipping and the EMA on the device
// (hdlm/cuda_ops.h), with the CPU path's semantics (src/trainer.c): the same corruption, keys, skipped updates and
// ZeRO-1 slices. The host model and host optimizer state are what checkpoints read and write.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hdlm/common.h"
#include "hdlm/cuda.h"
#include "trainer_internal.h"

#ifdef HDLM_HAVE_CUDA

#include "hdlm/cuda_model.h"
#include "hdlm/cuda_ops.h"
#include "hdlm/dist_nccl.h"

#define BUCKET_FLOATS ((size_t)1 << 20)   // the CPU path's 4 MiB buckets (src/trainer.c)

struct hdlm_trainer_gpu {
    hdlm_cuda_model *model;
    hdlm_nccl_sync *sync;
    float *adam_m, *adam_v, *ema;   // device, hi - lo floats each (this rank's range, as on the host)
    double *sum_squares;            // device [1]
    bool nccl;                      // a communicator was created (more than one rank)
};

static size_t range_bytes(const hdlm_trainer *t) { return (t->hi - t->lo) * sizeof(float); }

int hdlm_trainer_gpu_create(hdlm_trainer *t) {
    int device;
    HDLM_TRY(hdlm_cuda_local_device(&device));
    HDLM_TRY(hdlm_cuda_init(device));
    struct hdlm_trainer_gpu *g = hdlm_calloc(1, sizeof *g);
    t->gpu = g;
    if (t->world > 1) {
        HDLM_TRY(hdlm_nccl_init());
        g->nccl = true;
    }
    HDLM_TRY(hdlm_cuda_model_create(&g->model, t->model));   // uploads the (possibly restored) parameters
    size_t bytes = range_bytes(t);
    g->adam_m = hdlm_cuda_malloc(bytes + sizeof(float));
    g->adam_v = hdlm_cuda_malloc(bytes + sizeof(float));
    g->ema = hdlm_cuda_malloc(bytes + sizeof(float));
    g->sum_squares = hdlm_cuda_malloc(sizeof(double));
    hdlm_cuda_upload(g->adam_m, t->adam_m, bytes);
    hdlm_cuda_upload(g->adam_v, t->adam_v, bytes);
    hdlm_cuda_upload(g->ema, t->ema, bytes);
    hdlm_stream stream = hdlm_cuda_model_stream(g->model);
    g->sync = hdlm_nccl_sync_create(hdlm_cuda_model_grads(g->model), t->model->n_params, t->starts,
                                    t->cfg.optim.zero1, BUCKET_FLOATS, stream);
    hdlm_cuda_model_set_grad_ready(g->model, hdlm_nccl_sync_ready, g->sync);
    hdlm_cuda_synchronize();
    return 0;
}

void hdlm_trainer_gpu_free(hdlm_trainer *t) {
    struct hdlm_trainer_gpu *g = t->gpu;
    hdlm_cuda_synchronize();
    hdlm_nccl_sync_free(g->sync);
    if (g->model) {
        hdlm_cuda_model_profile_report(g->model, stderr, 0.0);   // HDLM_PROFILE=1: the whole run's table
        hdlm_cuda_model_free(g->model);
    }
    hdlm_cuda_free(g->adam_m);
    hdlm_cuda_free(g->adam_v);
    hdlm_cuda_free(g->ema);
    hdlm_cuda_free(g->sum_squares);
    if (g->nccl) hdlm_nccl_shutdown();
    free(g);
    t->gpu = NULL;   // the CUDA runtime stays initialised: it belongs to the process (hdlm_cuda_init is idempotent)
}

// Queues forward + loss (+ the head's gradients when backward) of a prepared micro-batch.
static void forward(hdlm_trainer *t, const hdlm_model_input *in, bool backward) {
    hdlm_cuda_model *dm = t->gpu->model;
    int V = t->model->config.vocab;
    switch (t->objective) {
    case HDLM_OBJECTIVE_EPSILON:
    case HDLM_OBJECTIVE_EPSILON_UNSCHEDULED:
        HDLM_MUST(hdlm_cuda_model_forward_epsilon(dm, in, &t->corr, t->x0, V, backward));
        break;
    case HDLM_OBJECTIVE_ARDM:
        HDLM_MUST(hdlm_cuda_model_forward_epsilon(dm, in, &t->corr, t->x0, hdlm_ardm_softmax_width(&t->ardm_cfg, V),
                                                  backward));
        break;
    case HDLM_OBJECTIVE_GAMMA:
        HDLM_MUST(hdlm_cuda_model_forward_gamma(dm, in, &t->gamma_cfg, t->step_of, t->x0, backward));
        break;
    }
}

double hdlm_trainer_gpu_loss(hdlm_trainer *t, const hdlm_model_input *in) {
    forward(t, in, false);
    return hdlm_cuda_model_loss(t->gpu->model);
}

void hdlm_trainer_gpu_update(hdlm_trainer *t, hdlm_update_stats *stats) {
    struct hdlm_trainer_gpu *g = t->gpu;
    hdlm_cuda_model *dm = g->model;
    hdlm_stream stream = hdlm_cuda_model_stream(dm);
    uint64_t seed = (uint64_t)t->cfg.training.seed;
    double loss_sum = 0;
    for (int a = 0; a < t->accum; a++) {
        hdlm_loader_next(&t->loader, t->x0);
        bool last = a == t->accum - 1;
        // The host corrupts micro-batch a while the device still runs a - 1; a - 1's loss is read just before
        // micro-batch a's forward replaces it.
        hdlm_model_input in = hdlm_trainer_corrupt(t, seed, (uint64_t)t->micro_step, true);
        if (a > 0) loss_sum += hdlm_cuda_model_loss(dm);
        // Spec §8.3 quirk (parity only): the window's gradients are erased before its last micro-batch contributes
        // (before the forward here: the fused head accumulates the output layer's gradients during the loss).
        if (last && t->cfg.training.reference_zero_grad_quirk) hdlm_cuda_model_zero_grad(dm);
        forward(t, &in, true);
        if (last) hdlm_nccl_sync_arm(g->sync);
        hdlm_cuda_model_backward(dm);
        t->micro_step++;
    }
    loss_sum += hdlm_cuda_model_loss(dm);
    hdlm_nccl_sync_finish(g->sync);

    // The update's gradient is the mean over micro-batches and ranks: 1/(accum·world) is folded into AdamW's
    // grad_scale with the clipping factor; the norm is of the scaled gradient, as on the CPU.
    double scale = 1.0 / ((double)t->accum * t->world);
    float *params = hdlm_cuda_model_params(dm), *grads = hdlm_cuda_model_grads(dm);
    size_t n = t->hi - t->lo;
    hdlm_cuda_model_profile_optimizer_begin(dm);
    hdlm_cuda_sum_squares(g->sum_squares, grads + t->lo, n, stream);
    hdlm_cuda_model_profile_optimizer_end(dm);
    double sum_squares;
    hdlm_cuda_synchronize();
    hdlm_cuda_download(&sum_squares, g->sum_squares, sizeof sum_squares);
    if (t->cfg.optim.zero1) sum_squares = hdlm_allreduce_sum(sum_squares);
    stats->loss = hdlm_allreduce_sum(loss_sum) / ((double)t->accum * t->world);
    stats->grad_norm = sqrt(sum_squares) * scale;
    stats->lr = hdlm_lr_at(&t->lr, t->applied);
    stats->skipped = !isfinite(stats->grad_norm);
    if (stats->skipped) {
        hdlm_warn("update %lld: non-finite gradient norm (%g): update skipped, LR schedule not advanced\n",
                  (long long)t->update + 1, stats->grad_norm);
    } else {
        double clip = 1.0, factor = t->cfg.optim.grad_clip / (stats->grad_norm + 1e-6);   // hdlm_grad_clip's rule
        if (t->cfg.optim.grad_clip > 0 && factor < 1.0) clip = factor;
        hdlm_cuda_model_profile_optimizer_begin(dm);
        hdlm_cuda_adamw_update(params + t->lo, hdlm_cuda_model_params_bf16(dm) + t->lo, grads + t->lo, g->adam_m,
                               g->adam_v, n, &t->adamw, (float)stats->lr, t->applied + 1, (float)(scale * clip),
                               stream);
        hdlm_cuda_ema_update(g->ema, params + t->lo, n, (float)hdlm_ema_decay(&t->ema_cfg, t->applied + 1), stream);
        hdlm_cuda_model_profile_optimizer_end(dm);
        if (t->cfg.optim.zero1) {
            hdlm_nccl_params_allgather(g->sync, params);
            hdlm_cuda_model_refresh_bf16(dm);   // the other ranks' slices arrived in fp32 only
        }
        t->applied++;
    }
    hdlm_cuda_model_zero_grad(dm);
    t->update++;
    t->tokens_seen += t->cfg.training.batch_size * t->length;
}

void hdlm_trainer_gpu_use_ema(hdlm_trainer *t, bool ema) {
    struct hdlm_trainer_gpu *g = t->gpu;
    hdlm_cuda_model *dm = g->model;
    // Synchronous copies: the device is idle around them, whatever stream the copies use.
    hdlm_cuda_synchronize();
    if (!ema) {
        hdlm_cuda_model_upload_params(dm, t->model->params);   // the raw weights kept on the host
        hdlm_cuda_synchronize();
        return;
    }
    hdlm_cuda_model_download_params(dm, t->model->params);
    hdlm_cuda_download(t->ema, g->ema, range_bytes(t));
    float *params = hdlm_cuda_model_params(dm);
    hdlm_cuda_upload(params + t->lo, t->ema, range_bytes(t));
    hdlm_cuda_synchronize();
    if (t->cfg.optim.zero1) hdlm_nccl_params_allgather(g->sync, params);
    hdlm_cuda_model_refresh_bf16(dm);
    hdlm_cuda_synchronize();
}

void hdlm_trainer_gpu_download(hdlm_trainer *t) {
    struct hdlm_trainer_gpu *g = t->gpu;
    hdlm_cuda_synchronize();
    hdlm_cuda_model_download_params(g->model, t->model->params);
    hdlm_cuda_download(t->ema, g->ema, range_bytes(t));
    hdlm_cuda_download(t->adam_m, g->adam_m, range_bytes(t));
    hdlm_cuda_download(t->adam_v, g->adam_v, range_bytes(t));
}

#else   // a build without the CUDA backend: hdlm_trainer_create refuses training.device = cuda before these

int hdlm_trainer_gpu_create(hdlm_trainer *t) {
    (void)t;
    return HDLM_FAIL("training.device = cuda: %s", hdlm_cuda_unavailable_reason());
}
void hdlm_trainer_gpu_free(hdlm_trainer *t) { (void)t; }
void hdlm_trainer_gpu_update(hdlm_trainer *t, hdlm_update_stats *stats) {
    (void)t, (void)stats;
    HDLM_DIE("training.device = cuda in a build without the CUDA backend");
}
double hdlm_trainer_gpu_loss(hdlm_trainer *t, const hdlm_model_input *in) {
    (void)t, (void)in;
    HDLM_DIE("training.device = cuda in a build without the CUDA backend");
}
void hdlm_trainer_gpu_use_ema(hdlm_trainer *t, bool ema) {
    (void)t, (void)ema;
    HDLM_DIE("training.device = cuda in a build without the CUDA backend");
}
void hdlm_trainer_gpu_download(hdlm_trainer *t) {
    (void)t;
    HDLM_DIE("training.device = cuda in a build without the CUDA backend");
}

#endif

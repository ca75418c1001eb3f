// The CUDA step backend (src/train/step.h, training.device = cuda, docs/cuda.md): the device model
// (cuda/cuda_model.h), gradients reduced by NCCL (cuda/dist_nccl.h), the global norm, AdamW and the EMA on the device
// (cuda/cuda_ops.h), with the CPU backend's semantics: the same ZeRO-1 slices and the same floats where the
// arithmetic allows. The host model and optimizer state are refreshed from the device by `download`.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hdlm/common.h"
#include "hdlm/cuda.h"
#include "train/step.h"

#ifdef HDLM_HAVE_CUDA

#include "cuda/cuda_model.h"
#include "cuda/cuda_ops.h"
#include "cuda/dist_nccl.h"

typedef struct {
    hdlm_step_backend base;
    hdlm_cuda_model *model;
    hdlm_nccl_sync *sync;
    float *adam_m, *adam_v, *ema;   // device, hi - lo floats each (this rank's range, as on the host)
    double *sum_squares;            // device [1]
    bool nccl;                      // a communicator was created (more than one rank)
} cuda_backend;

static size_t range_bytes(const hdlm_step_state *s) { return (s->hi - s->lo) * sizeof(float); }

// Queued on the device; the host goes on to corrupt the next micro-batch while it runs. The quirk's erase comes
// before the forward: the fused head accumulates the output layer's gradients during the loss.
static void cuda_micro_batch(hdlm_step_backend *b, const hdlm_model_input *in, const hdlm_loss_target *target,
                             bool backward, bool last, bool discard) {
    cuda_backend *c = (cuda_backend *)b;
    if (discard) hdlm_cuda_model_zero_grad(c->model);
    HDLM_MUST(hdlm_cuda_model_forward_loss(c->model, in, target, backward));
    if (!backward) return;
    if (last) hdlm_nccl_sync_arm(c->sync);
    hdlm_cuda_model_backward(c->model);
}

static double cuda_loss(hdlm_step_backend *b) { return hdlm_cuda_model_loss(((cuda_backend *)b)->model); }

// The gradient stays unscaled on the device: scale (and later the clip factor) is folded into AdamW's grad_scale.
static double cuda_grad_norm(hdlm_step_backend *b, double scale) {
    cuda_backend *c = (cuda_backend *)b;
    hdlm_step_state *s = b->state;
    hdlm_nccl_sync_finish(c->sync);
    hdlm_cuda_model_profile_optimizer_begin(c->model);
    hdlm_cuda_sum_squares(c->sum_squares, hdlm_cuda_model_grads(c->model) + s->lo, s->hi - s->lo,
                          hdlm_cuda_model_stream(c->model));
    hdlm_cuda_model_profile_optimizer_end(c->model);
    double sum_squares;
    hdlm_cuda_synchronize();
    hdlm_cuda_download(&sum_squares, c->sum_squares, sizeof sum_squares);
    if (s->zero1) sum_squares = hdlm_allreduce_sum(sum_squares);
    return sqrt(sum_squares) * scale;
}

static void cuda_apply(hdlm_step_backend *b, const hdlm_step_apply *a) {
    cuda_backend *c = (cuda_backend *)b;
    hdlm_step_state *s = b->state;
    hdlm_cuda_model *dm = c->model;
    hdlm_stream stream = hdlm_cuda_model_stream(dm);
    float *params = hdlm_cuda_model_params(dm);
    size_t n = s->hi - s->lo;
    hdlm_cuda_model_profile_optimizer_begin(dm);
    hdlm_cuda_adamw_update(params + s->lo, hdlm_cuda_model_params_bf16(dm) + s->lo, hdlm_cuda_model_grads(dm) + s->lo,
                           c->adam_m, c->adam_v, n, &s->adamw, (float)a->lr, a->update,
                           (float)(a->grad_scale * a->clip), stream);
    hdlm_cuda_ema_update(c->ema, params + s->lo, n, (float)a->ema_decay, stream);
    hdlm_cuda_model_profile_optimizer_end(dm);
    if (s->zero1) {
        hdlm_nccl_params_allgather(c->sync, params);
        hdlm_cuda_model_refresh_bf16(dm);   // the other ranks' slices arrived in fp32 only
    }
}

static void cuda_zero_grad(hdlm_step_backend *b) { hdlm_cuda_model_zero_grad(((cuda_backend *)b)->model); }

// The raw weights wait in the host model while the EMA weights are on the device (synchronous copies).
static void cuda_use_ema(hdlm_step_backend *b, bool ema) {
    cuda_backend *c = (cuda_backend *)b;
    hdlm_step_state *s = b->state;
    hdlm_cuda_model *dm = c->model;
    hdlm_cuda_synchronize();
    if (!ema) {
        hdlm_cuda_model_upload_params(dm, s->model->params);
        hdlm_cuda_synchronize();
        return;
    }
    hdlm_cuda_model_download_params(dm, s->model->params);
    hdlm_cuda_download(s->ema, c->ema, range_bytes(s));
    float *params = hdlm_cuda_model_params(dm);
    hdlm_cuda_upload(params + s->lo, s->ema, range_bytes(s));
    hdlm_cuda_synchronize();
    if (s->zero1) hdlm_nccl_params_allgather(c->sync, params);
    hdlm_cuda_model_refresh_bf16(dm);
    hdlm_cuda_synchronize();
}

static void cuda_download(hdlm_step_backend *b) {
    cuda_backend *c = (cuda_backend *)b;
    hdlm_step_state *s = b->state;
    hdlm_cuda_synchronize();
    hdlm_cuda_model_download_params(c->model, s->model->params);
    hdlm_cuda_download(s->ema, c->ema, range_bytes(s));
    hdlm_cuda_download(s->adam_m, c->adam_m, range_bytes(s));
    hdlm_cuda_download(s->adam_v, c->adam_v, range_bytes(s));
}

static void cuda_profile(hdlm_step_backend *b, FILE *out, double step_s, bool reset) {
    cuda_backend *c = (cuda_backend *)b;
    if (reset) {
        hdlm_cuda_synchronize();
        hdlm_cuda_model_profile_reset(c->model);
        return;
    }
    hdlm_cuda_model_profile_report(c->model, out, step_s);   // prints only with HDLM_PROFILE=1
}

static void cuda_free(hdlm_step_backend *b) {
    cuda_backend *c = (cuda_backend *)b;
    hdlm_cuda_synchronize();
    hdlm_nccl_sync_free(c->sync);
    if (c->model) {
        hdlm_cuda_model_profile_report(c->model, stderr, 0.0);   // HDLM_PROFILE=1: the whole run's table
        hdlm_cuda_model_free(c->model);
    }
    hdlm_cuda_free(c->adam_m);
    hdlm_cuda_free(c->adam_v);
    hdlm_cuda_free(c->ema);
    hdlm_cuda_free(c->sum_squares);
    if (c->nccl) hdlm_nccl_shutdown();
    free(c);   // the CUDA runtime stays initialised: it belongs to the process (hdlm_cuda_init is idempotent)
}

static const hdlm_step_ops cuda_ops = {cuda_micro_batch, cuda_loss,     cuda_grad_norm, cuda_apply, cuda_zero_grad,
                                       cuda_use_ema,     cuda_download, cuda_profile,   cuda_free};

// After the host model, the optimizer state and any restore exist: uploads them.
int hdlm_step_cuda_create(hdlm_step_backend **out, hdlm_step_state *s) {
    HDLM_CHECK(hdlm_cuda_device_count() > 0, "training.device = cuda, but no GPU is usable here (%s): set "
               "training.device=cpu", hdlm_cuda_unavailable_reason());
    int device;
    HDLM_TRY(hdlm_cuda_local_device(&device));
    HDLM_TRY(hdlm_cuda_init(device));
    cuda_backend *c = hdlm_calloc(1, sizeof *c);
    c->base = (hdlm_step_backend){&cuda_ops, s};
    if (s->world > 1) {
        if (hdlm_nccl_init() != 0) {
            free(c);
            return -1;
        }
        c->nccl = true;
    }
    if (hdlm_cuda_model_create(&c->model, s->model) != 0) {   // uploads the (possibly restored) parameters
        cuda_free(&c->base);
        return -1;
    }
    size_t bytes = range_bytes(s);
    c->adam_m = hdlm_cuda_malloc(bytes + sizeof(float));
    c->adam_v = hdlm_cuda_malloc(bytes + sizeof(float));
    c->ema = hdlm_cuda_malloc(bytes + sizeof(float));
    c->sum_squares = hdlm_cuda_malloc(sizeof(double));
    hdlm_cuda_upload(c->adam_m, s->adam_m, bytes);
    hdlm_cuda_upload(c->adam_v, s->adam_v, bytes);
    hdlm_cuda_upload(c->ema, s->ema, bytes);
    c->sync = hdlm_nccl_sync_create(hdlm_cuda_model_grads(c->model), s->model->n_params, s->starts, s->zero1,
                                    HDLM_STEP_BUCKET_FLOATS, hdlm_cuda_model_stream(c->model));
    hdlm_cuda_model_set_grad_ready(c->model, hdlm_nccl_sync_ready, c->sync);
    hdlm_cuda_synchronize();
    *out = &c->base;
    return 0;
}

#else   // a build without the CUDA backend

int hdlm_step_cuda_create(hdlm_step_backend **out, hdlm_step_state *s) {
    (void)s;
    *out = NULL;
    return HDLM_FAIL("training.device = cuda, but this build has no CUDA backend (%s): configure with nvcc present "
                     "(-DHDLM_CUDA=ON) or set training.device=cpu",
                     hdlm_cuda_unavailable_reason());
}

#endif

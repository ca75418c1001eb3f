// The CPU step backend (src/train/step.h): the host model, gradients summed over MPI ranks in buckets while the
// backward pass runs (hdlm_grad_sync), AdamW and the EMA over this rank's range of the flat buffers.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hdlm/common.h"
#include "train/dist.h"
#include "train/step.h"

typedef struct {
    hdlm_step_backend base;
    hdlm_grad_sync sync;
    float *dout;   // [B, L, V] d(loss)/d(outputs)
    float *raw;    // the raw weights while the EMA weights are in use
    double loss;
} cpu_backend;

static void cpu_micro_batch(hdlm_step_backend *b, const hdlm_model_input *in, const hdlm_loss_target *target,
                            bool backward, bool last, bool discard) {
    cpu_backend *c = (cpu_backend *)b;
    hdlm_model *m = b->state->model;
    if (discard) hdlm_model_zero_grad(m);
    HDLM_MUST(hdlm_model_forward_loss(m, in, target, backward ? c->dout : NULL, &c->loss));
    if (!backward) return;
    if (last) hdlm_grad_sync_arm(&c->sync);
    hdlm_model_backward(m, c->dout);
}

static double cpu_loss(hdlm_step_backend *b) { return ((cpu_backend *)b)->loss; }

// The norm of the gradients times scale, whose products AdamW forms again (cpu_apply): the gradients are read twice
// and never rewritten.
static double cpu_grad_norm(hdlm_step_backend *b, double scale) {
    cpu_backend *c = (cpu_backend *)b;
    hdlm_step_state *s = b->state;
    hdlm_grad_sync_finish(&c->sync);
    double local = hdlm_grad_norm(s->model->grads + s->lo, s->hi - s->lo, scale);
    return s->zero1 ? sqrt(hdlm_allreduce_sum(local * local)) : local;
}

static void cpu_apply(hdlm_step_backend *b, const hdlm_step_apply *a) {
    cpu_backend *c = (cpu_backend *)b;
    hdlm_step_state *s = b->state;
    hdlm_model *m = s->model;
    hdlm_adamw_update(m->params + s->lo, m->grads + s->lo, s->adam_m, s->adam_v, s->hi - s->lo, &s->adamw, a->lr,
                      a->update, a->grad_scale, a->clip, s->ema, a->ema_decay);
    if (s->zero1) hdlm_params_allgather(&c->sync, m->params);
}

static void cpu_zero_grad(hdlm_step_backend *b) { hdlm_model_zero_grad(b->state->model); }

static void cpu_use_ema(hdlm_step_backend *b, bool ema) {
    cpu_backend *c = (cpu_backend *)b;
    hdlm_step_state *s = b->state;
    hdlm_model *m = s->model;
    size_t bytes = m->n_params * sizeof(float);
    if (!ema) {
        memcpy(m->params, c->raw, bytes);
        return;
    }
    memcpy(c->raw, m->params, bytes);
    memcpy(m->params + s->lo, s->ema, (s->hi - s->lo) * sizeof(float));
    if (s->zero1) hdlm_params_allgather(&c->sync, m->params);
}

static void cpu_download(hdlm_step_backend *b) { (void)b; }   // the host buffers are the state

static void cpu_free(hdlm_step_backend *b) {
    cpu_backend *c = (cpu_backend *)b;
    hdlm_model *m = b->state->model;
    m->grad_ready = NULL;
    m->grad_ready_ctx = NULL;
    hdlm_grad_sync_free(&c->sync);
    free(c->dout);
    free(c->raw);
    free(c);
}

static const hdlm_step_ops cpu_ops = {cpu_micro_batch, cpu_loss, cpu_grad_norm, cpu_apply, cpu_zero_grad,
                                      cpu_use_ema,     cpu_download, NULL,        cpu_free};

int hdlm_step_cpu_create(hdlm_step_backend **out, hdlm_step_state *state, int micro_batch, int length) {
    hdlm_model *m = state->model;
    cpu_backend *c = hdlm_calloc(1, sizeof *c);
    c->base = (hdlm_step_backend){&cpu_ops, state};
    c->dout = hdlm_malloc((size_t)micro_batch * length * m->config.vocab * sizeof(float));
    c->raw = hdlm_malloc(m->n_params * sizeof(float));
    hdlm_grad_sync_init(&c->sync, m->grads, m->n_params, state->starts, state->zero1, HDLM_STEP_BUCKET_FLOATS);
    m->grad_ready = hdlm_grad_sync_ready;
    m->grad_ready_ctx = &c->sync;
    *out = &c->base;
    return 0;
}

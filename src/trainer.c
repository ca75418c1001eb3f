// One training run on this rank: micro-batches, corruption, forward, loss, backward, gradient reduction, clipping,
// AdamW, EMA; validation; checkpoints and exact resume (include/hdlm/trainer.h, docs/training.md).
#include "hdlm/trainer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hdlm/common.h"
#include "hdlm/cuda.h"
#include "hdlm/rng.h"
#include "hdlm/tokenizer.h"
#include "trainer_internal.h"

#define BUCKET_FLOATS ((size_t)1 << 20)   // 4 MiB all-reduce buckets
#define ARDM_CE_WEIGHT 1e-4               // λ_CE of the ARDM objective (spec §13 A.3, text8 value)

static int setup_objective(hdlm_trainer *t) {
    const hdlm_train_config *c = &t->cfg;
    bool gamma = strcmp(c->model.name, "gamma_hdlm") == 0;
    t->scheduled = strcmp(c->annealing.type, "none") != 0;
    if (strcmp(c->training.objective, "ardm") == 0) t->objective = HDLM_OBJECTIVE_ARDM;
    else if (gamma) t->objective = HDLM_OBJECTIVE_GAMMA;
    else t->objective = t->scheduled ? HDLM_OBJECTIVE_EPSILON : HDLM_OBJECTIVE_EPSILON_UNSCHEDULED;
    if (t->objective == HDLM_OBJECTIVE_ARDM) t->scheduled = false;
    t->sampling = strcmp(c->training.step_sampling, "per_sequence") == 0 ? HDLM_STEPS_PER_SEQUENCE
                                                                         : HDLM_STEPS_PER_BATCH;
    if (t->scheduled) {
        hdlm_schedule_type type;
        hdlm_context_type context;
        hdlm_block_type block;
        HDLM_TRY(hdlm_schedule_type_parse(c->annealing.type, "annealing.type", &type));
        HDLM_TRY(hdlm_context_type_parse(c->annealing.context_type, "annealing.attention.context_type", &context));
        HDLM_TRY(hdlm_block_type_parse(c->annealing.block_type, "annealing.attention.block_type", &block));
        // The model takes one attention mask per micro-batch: per-sequence steps need a step-independent mask.
        HDLM_CHECK(t->sampling == HDLM_STEPS_PER_BATCH || (type == HDLM_SCHEDULE_BLOCK && c->annealing.width >= t->length),
                   "training.step_sampling = per_sequence needs one attention mask for every step: use "
                   "annealing.type = block with annealing.width >= model.length (plain diffusion), or per_batch");
        HDLM_TRY(hdlm_schedule_init(&t->sched, type, t->length, (int)c->annealing.width, (int)c->annealing.tau,
                                    c->annealing.sampling_eps, context, block));
    }
    t->eps_cfg = (hdlm_eps_config){strcmp(c->training.loss_type, "standard") == 0 ? HDLM_EPS_LOSS_STANDARD
                                                                                   : HDLM_EPS_LOSS_HYBRID,
                                   c->training.epsilon, c->training.lambda};
    t->gamma_cfg = (hdlm_gamma_config){c->graph.gamma, c->annealing.diffusion_loss_weight, c->annealing.ce_loss_weight};
    t->ardm_cfg = (hdlm_ardm_config){ARDM_CE_WEIGHT, 1, 0};
    return 0;
}

static void setup_optimizer(hdlm_trainer *t) {
    const hdlm_train_config *c = &t->cfg;
    t->adamw = (hdlm_adamw_config){c->optim.beta1, c->optim.beta2, c->optim.eps, c->optim.weight_decay};
    hdlm_lr_kind kind = HDLM_LR_CONSTANT;
    if (strcmp(c->optim.scheduler, "cosine") == 0) kind = HDLM_LR_COSINE;
    else if (strcmp(c->optim.scheduler, "lambda") == 0) kind = HDLM_LR_WARMUP_COSINE;
    else if (strcmp(c->optim.scheduler, "linear") == 0) kind = HDLM_LR_LINEAR;
    // lr_multiplier 0 mirrors the reference: accelerate advances the scheduler once per process per update (§8.2).
    t->lr = (hdlm_lr_schedule){kind, c->optim.lr, c->optim.min_lr, c->optim.warmup, c->optim.total,
                               c->optim.lr_multiplier ? c->optim.lr_multiplier : t->world};
    t->ema_cfg = (hdlm_ema_config){c->training.ema, 2.0 / 3.0, c->training.ema_update_after};
}

static int restore(hdlm_trainer *t, const char *resume);

// training.device = cuda needs the CUDA backend and a GPU: refused before anything is allocated.
static int check_device(const hdlm_train_config *c) {
    if (strcmp(c->training.device, "cuda") != 0) return 0;
    HDLM_CHECK(hdlm_cuda_compiled(),
               "training.device = cuda, but this build has no CUDA backend (%s): configure with nvcc present "
               "(-DHDLM_CUDA=ON) or set training.device=cpu",
               hdlm_cuda_unavailable_reason());
    HDLM_CHECK(hdlm_cuda_device_count() > 0, "training.device = cuda, but no GPU is usable here (%s): set "
               "training.device=cpu", hdlm_cuda_unavailable_reason());
    return 0;
}

int hdlm_trainer_create(hdlm_trainer *t, const hdlm_train_config *cfg, const char *resume) {
    memset(t, 0, sizeof *t);
    HDLM_TRY(check_device(cfg));
    t->cfg = *cfg;
    t->rank = hdlm_rank();
    t->world = hdlm_world_size();
    t->accum = (int)cfg->training.accum;
    HDLM_CHECK(cfg->training.batch_size % ((int64_t)t->world * t->accum) == 0,
               "training.batch_size = %lld is not a multiple of ranks x training.accum = %d x %d",
               (long long)cfg->training.batch_size, t->world, t->accum);
    t->micro_batch = (int)(cfg->training.batch_size / ((int64_t)t->world * t->accum));
    t->length = (int)cfg->model.length;
    HDLM_TRY(setup_objective(t));
    setup_optimizer(t);

    hdlm_model_config mc;
    HDLM_TRY(hdlm_train_config_model(cfg, &mc));
    HDLM_TRY(hdlm_model_create(&t->model, &mc));
    hdlm_model_init(t->model, (uint64_t)cfg->training.seed);
    hdlm_model *m = t->model;
    t->desc = hdlm_calloc((size_t)m->n_tensors, sizeof *t->desc);
    for (int i = 0; i < m->n_tensors; i++) {
        const hdlm_tensor *x = &m->tensors[i];
        if (!x->trainable) continue;
        hdlm_tensor_desc *d = &t->desc[t->n_desc++];
        d->name = x->name;
        d->ndim = x->ndim;
        d->shape[0] = x->shape[0];
        d->shape[1] = x->shape[1];
        d->offset = x->offset;
    }
    t->starts = hdlm_malloc(((size_t)t->world + 1) * sizeof(size_t));
    hdlm_partition_rows(t->desc, t->n_desc, t->world, t->starts);
    t->lo = cfg->optim.zero1 ? t->starts[t->rank] : 0;
    t->hi = cfg->optim.zero1 ? t->starts[t->rank + 1] : m->n_params;
    size_t n = t->hi - t->lo;
    t->adam_m = hdlm_calloc(n + 1, sizeof(float));
    t->adam_v = hdlm_calloc(n + 1, sizeof(float));
    t->ema = hdlm_malloc((n + 1) * sizeof(float));
    memcpy(t->ema, m->params + t->lo, n * sizeof(float));
    hdlm_grad_sync_init(&t->sync, m->grads, m->n_params, t->starts, cfg->optim.zero1, BUCKET_FLOATS);
    m->grad_ready = hdlm_grad_sync_ready;
    m->grad_ready_ctx = &t->sync;

    HDLM_TRY(hdlm_dataset_open_dir(&t->train, cfg->data.train, "train", (uint64_t)t->length, HDLM_GPT2_VOCAB));
    HDLM_TRY(hdlm_loader_init(&t->loader, &t->train, (uint64_t)cfg->training.seed, t->rank, t->world, t->micro_batch,
                              cfg->data.train));
    if (cfg->data.valid[0]) {
        HDLM_TRY(hdlm_dataset_open_dir(&t->valid, cfg->data.valid, "validation", (uint64_t)t->length,
                                       HDLM_GPT2_VOCAB));
        t->has_valid = true;
    }

    int B = t->micro_batch, L = t->length, V = mc.vocab;
    t->x0 = hdlm_malloc((size_t)B * L * sizeof(uint32_t));
    t->xt = hdlm_malloc((size_t)B * L * sizeof(uint32_t));
    t->sigma = hdlm_malloc((size_t)B * L * sizeof(float));
    bool cuda = strcmp(cfg->training.device, "cuda") == 0;
    if (!cuda) t->dout = hdlm_malloc((size_t)B * L * V * sizeof(float));   // the GPU fuses the loss into the head
    t->full_mask = hdlm_mask_full(L);
    hdlm_corruption_alloc(&t->corr, B, L);
    t->steps = hdlm_calloc((size_t)B, sizeof(hdlm_step));
    for (int b = 0; b < B; b++) hdlm_step_alloc(&t->steps[b], L);
    t->step_of = hdlm_calloc((size_t)B, sizeof(hdlm_step *));
    t->ks = hdlm_calloc((size_t)B, sizeof(int));
    double non_embedding = (double)(m->n_params - hdlm_model_embedding_params(m));
    t->flops_per_token = 6.0 * non_embedding + 12.0 * mc.n_layers * mc.width * L;
    if (resume) HDLM_TRY(restore(t, resume));
    if (cuda) HDLM_TRY(hdlm_trainer_gpu_create(t));
    return 0;
}

void hdlm_trainer_free(hdlm_trainer *t) {
    if (t->gpu) hdlm_trainer_gpu_free(t);
    if (t->steps)
        for (int b = 0; b < t->micro_batch; b++) hdlm_step_free(&t->steps[b]);
    free(t->steps);
    free(t->step_of);
    free(t->ks);
    hdlm_corruption_free(&t->corr);
    free(t->x0);
    free(t->xt);
    free(t->sigma);
    free(t->dout);
    hdlm_grad_sync_free(&t->sync);
    hdlm_loader_free(&t->loader);
    if (t->train.shards) hdlm_dataset_close(&t->train);
    if (t->has_valid) hdlm_dataset_close(&t->valid);
    if (t->scheduled) hdlm_schedule_free(&t->sched);
    free(t->adam_m);
    free(t->adam_v);
    free(t->ema);
    free(t->starts);
    free(t->desc);
    hdlm_model_free(t->model);
    memset(t, 0, sizeof *t);
}

// The steps of this micro-batch: one per rank (the reference, keyed by rank) or one per sequence (keyed by the
// sequence's index in the global micro-batch, so the draws do not depend on how sequences are spread over ranks).
static void draw_steps(hdlm_trainer *t, uint64_t seed, uint64_t ms) {
    int B = t->micro_batch;
    uint64_t first = (uint64_t)t->rank * (uint64_t)B;
    if (t->sampling == HDLM_STEPS_PER_BATCH) {
        hdlm_schedule_sample_steps(&t->sched, HDLM_STEPS_PER_BATCH, seed, (uint64_t)t->rank, ms, B, t->ks);
        HDLM_ASSERT(hdlm_schedule_step(&t->sched, t->ks[0], &t->steps[0]) == 0, "%s", hdlm_last_error());
        for (int b = 0; b < B; b++) t->step_of[b] = &t->steps[0];
        return;
    }
    for (int b = 0; b < B; b++) {
        hdlm_schedule_sample_steps(&t->sched, HDLM_STEPS_PER_SEQUENCE, seed, first + (uint64_t)b, ms, 1, &t->ks[b]);
        HDLM_ASSERT(hdlm_schedule_step(&t->sched, t->ks[b], &t->steps[b]) == 0, "%s", hdlm_last_error());
        t->step_of[b] = &t->steps[b];
    }
}

// Sequence b's corruption draws from the stream keyed by its index in the global micro-batch (see draw_steps).
hdlm_model_input hdlm_trainer_corrupt(hdlm_trainer *t, uint64_t seed, uint64_t ms, bool training) {
    int B = t->micro_batch, L = t->length, V = t->model->config.vocab;
    uint64_t first = (uint64_t)t->rank * (uint64_t)B;
    const hdlm_attn_mask *mask = &t->full_mask;
    if (t->scheduled) {
        draw_steps(t, seed, ms);
        mask = &t->step_of[0]->mask;
    }
    hdlm_corruption *c = &t->corr;
    c->norm = 0;
    for (int b = 0; b < B; b++) {
        size_t o = (size_t)b * L;
        uint64_t key = hdlm_rng_key(seed, first + (uint64_t)b, ms, HDLM_RNG_NOISE);
        hdlm_corruption one = {1, L, c->xt + o, c->kind + o, c->weight + o, 0};
        switch (t->objective) {
        case HDLM_OBJECTIVE_EPSILON: hdlm_epsilon_corrupt(&t->eps_cfg, &t->step_of[b], t->x0 + o, V, key, &one); break;
        case HDLM_OBJECTIVE_EPSILON_UNSCHEDULED:
            hdlm_epsilon_corrupt_unscheduled(&t->eps_cfg, t->cfg.annealing.sampling_eps, t->x0 + o, V, key, &one, NULL);
            break;
        case HDLM_OBJECTIVE_ARDM: hdlm_ardm_corrupt(&t->ardm_cfg, t->x0 + o, V, key, &one, NULL); break;
        case HDLM_OBJECTIVE_GAMMA:
            hdlm_gamma_corrupt(t->cfg.graph.gamma, &t->step_of[b], t->x0 + o, 1, V, key, t->xt + o);
            hdlm_gamma_sigmas(t->step_of[b], t->sigma + o);
            break;
        }
        c->norm += one.norm;
    }
    bool gamma = t->objective == HDLM_OBJECTIVE_GAMMA;
    return (hdlm_model_input){gamma ? t->xt : c->xt, gamma ? t->sigma : NULL, mask, B, L,
                              training && t->cfg.model.dropout > 0,
                              hdlm_rng_key(seed, (uint64_t)t->rank, ms, HDLM_RNG_DROPOUT)};
}

// Loss of the micro-batch in t->x0 (and d(loss)/d(outputs) into dout unless NULL; on the GPU only without).
static double micro_batch_loss(hdlm_trainer *t, uint64_t seed, uint64_t ms, bool training, float *dout) {
    hdlm_model_input in = hdlm_trainer_corrupt(t, seed, ms, training);
    if (t->gpu) return hdlm_trainer_gpu_loss(t, &in);
    int B = t->micro_batch, L = t->length, V = t->model->config.vocab;
    hdlm_corruption *c = &t->corr;
    HDLM_MUST(hdlm_model_forward(t->model, &in));
    float *out = t->model->out;
    size_t LV = (size_t)L * V;
    switch (t->objective) {
    case HDLM_OBJECTIVE_EPSILON:
    case HDLM_OBJECTIVE_EPSILON_UNSCHEDULED: return hdlm_corruption_loss(c, t->x0, out, V, V, dout);
    case HDLM_OBJECTIVE_ARDM:
        return hdlm_corruption_loss(c, t->x0, out, V, hdlm_ardm_softmax_width(&t->ardm_cfg, V), dout);
    case HDLM_OBJECTIVE_GAMMA: {
        for (int b = 0; b < B; b++) hdlm_gamma_post_process(t->step_of[b], V, out + b * LV);
        double loss = hdlm_gamma_loss(&t->gamma_cfg, t->step_of, out, t->xt, t->x0, B, V, dout, NULL);
        if (dout)
            for (int b = 0; b < B; b++) hdlm_gamma_post_process_backward(t->step_of[b], V, dout + b * LV);
        return loss;
    }
    }
    return NAN;
}

// Global gradient norm: of the whole (already reduced) buffer, or the sum of the slices' squared norms (ZeRO-1).
static double global_grad_norm(hdlm_trainer *t) {
    double local = hdlm_grad_norm(t->model->grads + t->lo, t->hi - t->lo);
    if (!t->cfg.optim.zero1) return local;
    return sqrt(hdlm_allreduce_sum(local * local));
}

void hdlm_trainer_update(hdlm_trainer *t, hdlm_update_stats *stats) {
    if (t->gpu) {
        hdlm_trainer_gpu_update(t, stats);
        return;
    }
    hdlm_model *m = t->model;
    uint64_t seed = (uint64_t)t->cfg.training.seed;
    double loss_sum = 0;
    for (int a = 0; a < t->accum; a++) {
        hdlm_loader_next(&t->loader, t->x0);
        bool last = a == t->accum - 1;
        loss_sum += micro_batch_loss(t, seed, (uint64_t)t->micro_step, true, t->dout);
        // Spec §8.3 quirk (parity only): the reference erases the window's gradients before its last backward.
        if (last && t->cfg.training.reference_zero_grad_quirk) hdlm_model_zero_grad(m);
        if (last) hdlm_grad_sync_arm(&t->sync);
        hdlm_model_backward(m, t->dout);
        t->micro_step++;
    }
    hdlm_grad_sync_finish(&t->sync);
    // Each micro-batch loss is a mean, so the update's gradient is the mean over micro-batches and ranks.
    float scale = (float)(1.0 / ((double)t->accum * t->world));
    float *g = m->grads + t->lo;
    size_t n = t->hi - t->lo;
    for (size_t i = 0; i < n; i++) g[i] *= scale;
    stats->loss = hdlm_allreduce_sum(loss_sum) / ((double)t->accum * t->world);
    stats->grad_norm = global_grad_norm(t);
    stats->lr = hdlm_lr_at(&t->lr, t->applied);
    stats->skipped = !isfinite(stats->grad_norm);
    if (stats->skipped) {
        hdlm_warn("update %lld: non-finite gradient norm (%g): update skipped, LR schedule not advanced\n",
                  (long long)t->update + 1, stats->grad_norm);
    } else {
        if (t->cfg.optim.grad_clip > 0) hdlm_grad_clip(g, n, stats->grad_norm, t->cfg.optim.grad_clip);
        hdlm_adamw_update(m->params + t->lo, g, t->adam_m, t->adam_v, n, &t->adamw, stats->lr, t->applied + 1);
        hdlm_ema_update(t->ema, m->params + t->lo, n, &t->ema_cfg, t->applied + 1);
        if (t->cfg.optim.zero1) hdlm_params_allgather(&t->sync, m->params);
        t->applied++;
    }
    hdlm_model_zero_grad(m);
    t->update++;
    t->tokens_seen += t->cfg.training.batch_size * t->length;
}

double hdlm_trainer_eval(hdlm_trainer *t) {
    if (!t->has_valid) return NAN;
    hdlm_model *m = t->model;
    size_t n = m->n_params;
    // Evaluate the EMA weights: swap them in (gathered from the slices under ZeRO-1), then restore the raw weights.
    float *raw = NULL;
    if (t->gpu) {
        hdlm_trainer_gpu_use_ema(t, true);
    } else {
        raw = hdlm_malloc(n * sizeof(float));
        memcpy(raw, m->params, n * sizeof(float));
        memcpy(m->params + t->lo, t->ema, (t->hi - t->lo) * sizeof(float));
        if (t->cfg.optim.zero1) hdlm_params_allgather(&t->sync, m->params);
    }
    uint64_t seed = hdlm_rng_key((uint64_t)t->cfg.training.seed, 0, 0, HDLM_RNG_EVAL);
    uint64_t count = hdlm_dataset_chunk_count(&t->valid), G = (uint64_t)t->world * t->micro_batch;
    double sum = 0;
    for (int64_t i = 0; i < t->cfg.training.eval_batches; i++) {
        // Fixed chunks (in file order) and fixed draws: every evaluation scores the same corrupted sequences.
        for (int b = 0; b < t->micro_batch; b++) {
            uint64_t chunk = ((uint64_t)i * G + (uint64_t)t->rank * t->micro_batch + (uint64_t)b) % count;
            hdlm_dataset_chunk_copy(&t->valid, chunk, t->x0 + (size_t)b * t->length);
        }
        sum += micro_batch_loss(t, seed, (uint64_t)i, false, NULL);
    }
    if (t->gpu) {
        hdlm_trainer_gpu_use_ema(t, false);
    } else {
        memcpy(m->params, raw, n * sizeof(float));
        free(raw);
    }
    return hdlm_allreduce_sum(sum) / ((double)t->cfg.training.eval_batches * t->world);
}

static void checkpoint_root(const hdlm_trainer *t, char *path, size_t size) {
    snprintf(path, size, "%s/checkpoints", t->cfg.run.dir);
}

int hdlm_trainer_save(hdlm_trainer *t, double *seconds) {
    if (t->gpu) hdlm_trainer_gpu_download(t);
    char root[HDLM_CONFIG_STRING_MAX + 32];
    checkpoint_root(t, root, sizeof root);
    hdlm_ckpt_group groups[] = {
        {"params", t->model->params, 0},
        {"ema", t->ema, t->lo},
        {"adam_m", t->adam_m, t->lo},
        {"adam_v", t->adam_v, t->lo},
    };
    hdlm_ckpt_scalar scalars[] = {
        {"update", t->update},
        {"applied_updates", t->applied},
        {"micro_step", t->micro_step},
        {"tokens_seen", t->tokens_seen},
        {"seed", t->cfg.training.seed},
        {"world_size", t->world},
        {"epoch", t->loader.epoch},
        {"loader_position", (int64_t)t->loader.position},
        {"global_micro_batch", (int64_t)t->world * t->micro_batch},
        {"lr_multiplier", t->lr.multiplier},
    };
    int64_t rank_state[] = {t->loader.epoch, (int64_t)t->loader.position, t->rank, t->micro_batch};
    char *yaml = hdlm_config_to_yaml(&hdlm_train_config_schema, &t->cfg);
    hdlm_ckpt_contents c = {t->desc, t->n_desc, groups, 4, scalars, (int)(sizeof scalars / sizeof scalars[0]),
                            yaml, rank_state, 4};
    hdlm_ckpt_retention keep = {(int)t->cfg.run.keep_last, t->cfg.run.keep_every};
    int rc = hdlm_checkpoint_save(root, t->update, &c, &keep, seconds);
    free(yaml);
    return rc;
}

static int restore_from(hdlm_trainer *t, hdlm_ckpt *ck) {
    hdlm_model *m = t->model;
    const char *path = hdlm_checkpoint_path(ck);
    HDLM_TRY(hdlm_checkpoint_read(ck, "params", t->desc, t->n_desc, 0, m->n_params, m->params));
    HDLM_TRY(hdlm_checkpoint_read(ck, "ema", t->desc, t->n_desc, t->lo, t->hi, t->ema));
    HDLM_TRY(hdlm_checkpoint_read(ck, "adam_m", t->desc, t->n_desc, t->lo, t->hi, t->adam_m));
    HDLM_TRY(hdlm_checkpoint_read(ck, "adam_v", t->desc, t->n_desc, t->lo, t->hi, t->adam_v));
    int64_t seed, epoch, position, G;
    HDLM_TRY(hdlm_checkpoint_scalar(ck, "update", &t->update));
    HDLM_TRY(hdlm_checkpoint_scalar(ck, "applied_updates", &t->applied));
    HDLM_TRY(hdlm_checkpoint_scalar(ck, "micro_step", &t->micro_step));
    HDLM_TRY(hdlm_checkpoint_scalar(ck, "tokens_seen", &t->tokens_seen));
    HDLM_TRY(hdlm_checkpoint_scalar(ck, "seed", &seed));
    HDLM_TRY(hdlm_checkpoint_scalar(ck, "epoch", &epoch));
    HDLM_TRY(hdlm_checkpoint_scalar(ck, "loader_position", &position));
    HDLM_TRY(hdlm_checkpoint_scalar(ck, "global_micro_batch", &G));
    HDLM_CHECK(seed == t->cfg.training.seed, "%s: written with training.seed = %lld, this run has %lld", path,
               (long long)seed, (long long)t->cfg.training.seed);
    HDLM_CHECK(G == (int64_t)t->world * t->micro_batch,
               "%s: written with a global micro-batch of %lld sequences (training.batch_size / training.accum), this "
               "run has %lld: the data order could not continue",
               path, (long long)G, (long long)t->world * t->micro_batch);
    HDLM_TRY(hdlm_loader_seek(&t->loader, epoch, (uint64_t)position));
    hdlm_model_zero_grad(m);
    return 0;
}

static int restore(hdlm_trainer *t, const char *resume) {
    char path[HDLM_CONFIG_STRING_MAX + 64];
    if (strcmp(resume, "latest") == 0) {
        char root[HDLM_CONFIG_STRING_MAX + 32];
        checkpoint_root(t, root, sizeof root);
        HDLM_TRY(hdlm_checkpoint_find_latest(root, path, sizeof path));
    } else {
        snprintf(path, sizeof path, "%s", resume);
    }
    hdlm_ckpt *ck;
    HDLM_TRY(hdlm_checkpoint_open(&ck, path));
    int rc = restore_from(t, ck);
    hdlm_checkpoint_close(ck);
    return rc;
}

// One training run on this rank (include/hdlm/trainer.h): data, corruption, the update's statistics, the skip and
// clip rules, counters, validation and checkpoints; the forward, backward, reduction and optimizer run on the step
// backend (train/step.h). One update, top to bottom: docs/architecture.md.
#include "train/trainer_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hdlm/common.h"
#include "hdlm/cuda.h"
#include "hdlm/model_io.h"
#include "hdlm/rng.h"
#include "hdlm/tokenizer.h"

#define ARDM_CE_WEIGHT 1e-4   // λ_CE of the ARDM objective (method §13 A.3, the text8 value)

static int setup_objective(hdlm_trainer *t) {
    const hdlm_train_config *c = &t->cfg;
    if (c->kind.scheduled) {
        // The model takes one attention mask per micro-batch: per-sequence steps need a step-independent mask.
        HDLM_CHECK(c->kind.sampling == HDLM_STEPS_PER_BATCH || c->annealing.efficient ||
                       (c->kind.schedule == HDLM_SCHEDULE_BLOCK && c->annealing.width >= t->length),
                   "training.step_sampling = per_sequence needs one attention mask for every step: use "
                   "annealing.efficient = true, annealing.type = block with annealing.width >= model.length (plain "
                   "diffusion), or per_batch");
        HDLM_TRY(hdlm_train_config_schedule(c, t->length, 0, false, &t->sched));
        if (c->annealing.efficient) HDLM_TRY(hdlm_schedule_two_copy_check(&t->sched));
    }
    t->eps_cfg = (hdlm_eps_config){c->kind.eps_loss, c->training.epsilon, c->training.lambda};
    t->gamma_cfg = (hdlm_gamma_config){c->graph.gamma, c->annealing.diffusion_loss_weight, c->annealing.ce_loss_weight};
    t->ardm_cfg = (hdlm_ardm_config){ARDM_CE_WEIGHT, 1, 0};
    return 0;
}

static void setup_optimizer(hdlm_trainer *t) {
    const hdlm_train_config *c = &t->cfg;
    t->state.adamw = (hdlm_adamw_config){c->optim.beta1, c->optim.beta2, c->optim.eps, c->optim.weight_decay};
    // lr_multiplier 0 mirrors the reference: accelerate advances the scheduler once per process per update (§8.2).
    t->lr = (hdlm_lr_schedule){c->kind.lr, c->optim.lr, c->optim.min_lr, c->optim.warmup, c->optim.total,
                               c->optim.lr_multiplier ? c->optim.lr_multiplier : t->world};
    t->ema_cfg = (hdlm_ema_config){c->training.ema, 2.0 / 3.0, c->training.ema_update_after};
}

static int restore(hdlm_trainer *t, const char *resume);

// training.device = cuda needs the CUDA backend and a GPU: refused before anything is allocated.
static int check_device(const hdlm_train_config *c) {
    if (c->kind.device != HDLM_DEVICE_CUDA) return 0;
    HDLM_CHECK(hdlm_cuda_compiled(),
               "training.device = cuda, but this build has no CUDA backend (%s): configure with nvcc present "
               "(-DHDLM_CUDA=ON) or set training.device=cpu",
               hdlm_cuda_unavailable_reason());
    HDLM_CHECK(hdlm_cuda_device_count() > 0, "training.device = cuda, but no GPU is usable here (%s): set "
               "training.device=cpu", hdlm_cuda_unavailable_reason());
    return 0;
}

static int create(hdlm_trainer *t, const hdlm_train_config *cfg, const char *resume) {
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
    t->model_length = cfg->annealing.efficient ? 2 * t->length : t->length;
    HDLM_TRY(setup_objective(t));
    setup_optimizer(t);

    hdlm_model_config mc;
    HDLM_TRY(hdlm_train_config_model(cfg, &mc));
    HDLM_TRY(hdlm_model_create(&t->model, &mc));
    hdlm_model_init(t->model, (uint64_t)cfg->training.seed);
    hdlm_model *m = t->model;
    hdlm_model_trainable_tensors(m, &t->tensors, &t->n_tensors);
    t->starts = hdlm_malloc(((size_t)t->world + 1) * sizeof(size_t));
    hdlm_partition_rows(t->tensors, t->n_tensors, t->world, t->starts);
    hdlm_step_state *s = &t->state;
    s->model = m;
    s->starts = t->starts;
    s->zero1 = cfg->optim.zero1;
    s->world = t->world;
    s->lo = s->zero1 ? t->starts[t->rank] : 0;
    s->hi = s->zero1 ? t->starts[t->rank + 1] : m->n_params;
    size_t n = s->hi - s->lo;
    s->adam_m = hdlm_calloc(n + 1, sizeof(float));
    s->adam_v = hdlm_calloc(n + 1, sizeof(float));
    s->ema = hdlm_malloc((n + 1) * sizeof(float));
    memcpy(s->ema, m->params + s->lo, n * sizeof(float));

    HDLM_TRY(hdlm_dataset_open_dir(&t->train, cfg->data.train, "train", (uint64_t)t->length, HDLM_GPT2_VOCAB));
    HDLM_TRY(hdlm_loader_init(&t->loader, &t->train, (uint64_t)cfg->training.seed, t->rank, t->world, t->micro_batch,
                              cfg->data.train));
    if (cfg->data.valid[0]) {
        HDLM_TRY(hdlm_dataset_open_dir(&t->valid, cfg->data.valid, "validation", (uint64_t)t->length,
                                       HDLM_GPT2_VOCAB));
        t->has_valid = true;
        // More batches than the set holds would score the same chunks over and over, for minutes, without output.
        uint64_t G = (uint64_t)t->world * t->micro_batch, count = hdlm_dataset_chunk_count(&t->valid);
        int64_t pass = (int64_t)((count + G - 1) / G);
        t->eval_batches = cfg->training.eval_batches < pass ? cfg->training.eval_batches : pass;
        if (t->eval_batches < cfg->training.eval_batches)
            hdlm_log("training.eval_batches = %lld covers the %llu validation chunks of %s more than once: using "
                     "%lld (every chunk once)\n", (long long)cfg->training.eval_batches, (unsigned long long)count,
                     cfg->data.valid, (long long)t->eval_batches);
    }

    int B = t->micro_batch, L = t->length, Lm = t->model_length;
    t->chunks = hdlm_malloc((size_t)B * L * sizeof(uint32_t));
    t->x0 = hdlm_malloc((size_t)B * Lm * sizeof(uint32_t));
    t->xt = hdlm_malloc((size_t)B * Lm * sizeof(uint32_t));
    t->sigma = hdlm_malloc((size_t)B * Lm * sizeof(float));
    t->full_mask = hdlm_mask_full(L);
    t->causal_mask = hdlm_mask_causal(L);
    hdlm_corruption_alloc(&t->corr, B, Lm);
    t->steps = hdlm_calloc((size_t)B, sizeof(hdlm_step));
    for (int b = 0; b < B; b++) hdlm_step_alloc(&t->steps[b], Lm);
    t->step_of = hdlm_calloc((size_t)B, sizeof(hdlm_step *));
    t->ks = hdlm_calloc((size_t)B, sizeof(int));
    if (cfg->annealing.efficient) {
        t->block_steps = hdlm_calloc((size_t)B * hdlm_schedule_two_copy_blocks(&t->sched), sizeof(int));
        t->levels = hdlm_calloc((size_t)L, sizeof(int));
    }
    // Per token of data: the two-copy layout runs two model positions per token (attention counted as dense over L),
    // less the output layer on the clean copy when the ε loss lets the model skip it (corrupt(): head_from).
    t->flops_per_token = hdlm_model_flops_per_token(m, L) * (Lm / L);
    if (Lm > L && cfg->kind.objective == HDLM_OBJECTIVE_EPSILON)
        t->flops_per_token -= 6.0 * ((double)mc.vocab * mc.width + mc.vocab);
    if (resume) HDLM_TRY(restore(t, resume));
    // The backend starts from the (possibly restored) host state.
    if (cfg->kind.device == HDLM_DEVICE_CUDA) return hdlm_step_cuda_create(&t->backend, s);
    return hdlm_step_cpu_create(&t->backend, s, B, Lm);
}

int hdlm_trainer_create(hdlm_trainer **out, const hdlm_train_config *cfg, const char *resume) {
    hdlm_trainer *t = hdlm_calloc(1, sizeof *t);
    if (create(t, cfg, resume) != 0) {
        hdlm_trainer_free(t);
        *out = NULL;
        return -1;
    }
    *out = t;
    return 0;
}

void hdlm_trainer_free(hdlm_trainer *t) {
    if (!t) return;
    if (t->backend) t->backend->ops->free(t->backend);
    if (t->steps)
        for (int b = 0; b < t->micro_batch; b++) hdlm_step_free(&t->steps[b]);
    free(t->steps);
    free(t->step_of);
    free(t->ks);
    free(t->block_steps);
    free(t->levels);
    hdlm_corruption_free(&t->corr);
    free(t->chunks);
    free(t->x0);
    free(t->xt);
    free(t->sigma);
    hdlm_loader_free(&t->loader);
    if (t->train.shards) hdlm_dataset_close(&t->train);
    if (t->has_valid) hdlm_dataset_close(&t->valid);
    if (t->cfg.kind.scheduled) hdlm_schedule_free(&t->sched);
    free(t->state.adam_m);
    free(t->state.adam_v);
    free(t->state.ema);
    free(t->starts);
    free(t->tensors);
    hdlm_model_free(t->model);
    free(t);
}

hdlm_trainer_info hdlm_trainer_state(const hdlm_trainer *t) {
    return (hdlm_trainer_info){t->rank,        t->world,           t->micro_batch, t->accum,       t->length,
                               t->model->n_params, t->flops_per_token, t->has_valid,   t->update,      t->applied,
                               t->micro_step,  t->tokens_seen,     t->loader.epoch, t->loader.position};
}

// The steps of this micro-batch: one per rank (the reference, keyed by rank) or one per sequence (keyed by the
// sequence's index in the global micro-batch, so the draws do not depend on how sequences are spread over ranks).
// In the two-copy layout every block of a sequence draws its own step (method §2.10), per rank or per sequence alike.
static void draw_steps(hdlm_trainer *t, uint64_t seed, uint64_t ms) {
    int B = t->micro_batch;
    uint64_t first = (uint64_t)t->rank * (uint64_t)B;
    if (t->cfg.annealing.efficient) {
        bool shared = t->cfg.kind.sampling == HDLM_STEPS_PER_BATCH;
        int nb = hdlm_schedule_two_copy_blocks(&t->sched);
        for (int b = 0; b < (shared ? 1 : B); b++) {
            int *steps = t->block_steps + (size_t)b * nb;
            hdlm_schedule_sample_block_steps(&t->sched, seed, shared ? (uint64_t)t->rank : first + (uint64_t)b, ms,
                                             steps);
            HDLM_ASSERT(hdlm_schedule_two_copy_step(&t->sched, steps, t->levels, &t->steps[b]) == 0, "%s",
                        hdlm_last_error());
        }
        for (int b = 0; b < B; b++) t->step_of[b] = &t->steps[shared ? 0 : b];
        return;
    }
    if (t->cfg.kind.sampling == HDLM_STEPS_PER_BATCH) {
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

// Corrupts the micro-batch in t->x0 for micro-step ms: the model input and what its loss compares the outputs with.
// The one switch over the objective (method §4.2, §4.4, §5.3, §13 A.3). Sequence b draws from the stream
// keyed by its index in the global micro-batch (see draw_steps).
static hdlm_model_input corrupt(hdlm_trainer *t, uint64_t seed, uint64_t ms, bool training, hdlm_loss_target *target) {
    int B = t->micro_batch, L = t->model_length, V = t->model->config.vocab;
    uint64_t first = (uint64_t)t->rank * (uint64_t)B;
    hdlm_objective objective = t->cfg.kind.objective;
    // The clean input: the chunks, each twice in the two-copy layout (method §2.10).
    for (int b = 0; b < B; b++)
        for (int copy = 0; copy < L / t->length; copy++)
            memcpy(t->x0 + (size_t)b * L + (size_t)copy * t->length, t->chunks + (size_t)b * t->length,
                   (size_t)t->length * sizeof(uint32_t));
    const hdlm_attn_mask *mask = objective == HDLM_OBJECTIVE_AR ? &t->causal_mask : &t->full_mask;
    if (t->cfg.kind.scheduled) {
        draw_steps(t, seed, ms);
        mask = &t->step_of[0]->mask;
    }
    hdlm_corruption *c = &t->corr;
    c->norm = 0;
    for (int b = 0; b < B; b++) {
        size_t o = (size_t)b * L;
        uint64_t key = hdlm_rng_key(seed, first + (uint64_t)b, ms, HDLM_RNG_NOISE);
        hdlm_corruption one = {1, L, c->xt + o, c->kind + o, c->weight + o, 0};
        switch (objective) {
        case HDLM_OBJECTIVE_EPSILON: hdlm_epsilon_corrupt(&t->eps_cfg, &t->step_of[b], t->x0 + o, V, key, &one); break;
        case HDLM_OBJECTIVE_EPSILON_UNSCHEDULED:
            hdlm_epsilon_corrupt_unscheduled(&t->eps_cfg, t->cfg.annealing.sampling_eps, t->x0 + o, V, key, &one, NULL);
            break;
        case HDLM_OBJECTIVE_ARDM: hdlm_ardm_corrupt(&t->ardm_cfg, t->x0 + o, V, key, &one, NULL); break;
        case HDLM_OBJECTIVE_AR: hdlm_ar_inputs(t->x0 + o, hdlm_ar_start(V), &one); break;
        case HDLM_OBJECTIVE_GAMMA:
            hdlm_gamma_corrupt(t->cfg.graph.gamma, &t->step_of[b], t->x0 + o, 1, V, key, t->xt + o);
            hdlm_gamma_sigmas(t->step_of[b], t->sigma + o);
            break;
        }
        c->norm += one.norm;
    }
    bool gamma = objective == HDLM_OBJECTIVE_GAMMA;
    *target = (hdlm_loss_target){t->x0, gamma ? NULL : c,
                                 objective == HDLM_OBJECTIVE_ARDM || objective == HDLM_OBJECTIVE_AR
                                     ? hdlm_ardm_softmax_width(&t->ardm_cfg, V)   // real tokens only: no MASK
                                     : V,
                                 gamma ? &t->gamma_cfg : NULL, t->step_of};
    // The ε loss gives the two-copy layout's clean copy weight 0: the output layer skips it (γ's CE needs it).
    int head_from = t->model_length > t->length && objective == HDLM_OBJECTIVE_EPSILON ? t->length : 0;
    return (hdlm_model_input){gamma ? t->xt : c->xt, gamma ? t->sigma : NULL, mask, B, L,
                              training && t->cfg.model.dropout > 0,
                              hdlm_rng_key(seed, (uint64_t)t->rank, ms, HDLM_RNG_DROPOUT), head_from, NULL, NULL};
}

void hdlm_trainer_update(hdlm_trainer *t, hdlm_update_stats *stats) {
    hdlm_step_backend *b = t->backend;
    uint64_t seed = (uint64_t)t->cfg.training.seed;
    double loss_sum = 0;
    for (int a = 0; a < t->accum; a++) {
        hdlm_loader_next(&t->loader, t->chunks);
        bool last = a == t->accum - 1;
        // The host corrupts micro-batch a while an asynchronous backend still runs a - 1, whose loss is read just
        // before micro-batch a replaces it.
        hdlm_loss_target target;
        hdlm_model_input in = corrupt(t, seed, (uint64_t)t->micro_step, true, &target);
        hdlm_watchdog_beat(t->update + 1);
        if (a > 0) loss_sum += b->ops->loss(b);
        b->ops->micro_batch(b, &in, &target, true, last, last && t->cfg.training.reference_zero_grad_quirk);
        t->micro_step++;
    }
    loss_sum += b->ops->loss(b);
    hdlm_watchdog_beat(t->update + 1);   // this rank's work is done; what follows waits for the others
    // Each micro-batch loss is a mean, so the update's gradient is the mean over micro-batches and ranks.
    double scale = 1.0 / ((double)t->accum * t->world);
    stats->grad_norm = b->ops->grad_norm(b, scale);
    stats->loss = hdlm_allreduce_sum(loss_sum) * scale;
    stats->lr = hdlm_lr_at(&t->lr, t->applied);
    stats->skipped = !isfinite(stats->grad_norm);
    if (stats->skipped) {
        hdlm_warn("update %lld: non-finite gradient norm (%g): update skipped, LR schedule not advanced\n",
                  (long long)t->update + 1, stats->grad_norm);
    } else {
        hdlm_step_apply apply = {stats->lr, t->applied + 1, scale,
                                 hdlm_grad_clip_factor(stats->grad_norm, t->cfg.optim.grad_clip),
                                 hdlm_ema_decay(&t->ema_cfg, t->applied + 1)};
        b->ops->apply(b, &apply);
        t->applied++;
    }
    b->ops->zero_grad(b);
    t->update++;
    t->tokens_seen += t->cfg.training.batch_size * t->length;
}

double hdlm_trainer_eval(hdlm_trainer *t) {
    if (!t->has_valid) return NAN;
    hdlm_step_backend *b = t->backend;
    b->ops->use_ema(b, true);
    uint64_t seed = hdlm_rng_key((uint64_t)t->cfg.training.seed, 0, 0, HDLM_RNG_EVAL);
    uint64_t count = hdlm_dataset_chunk_count(&t->valid), G = (uint64_t)t->world * t->micro_batch;
    double sum = 0;
    for (int64_t i = 0; i < t->eval_batches; i++) {
        // Fixed chunks (in file order) and fixed draws: every evaluation scores the same corrupted sequences.
        for (int k = 0; k < t->micro_batch; k++) {
            uint64_t chunk = ((uint64_t)i * G + (uint64_t)t->rank * t->micro_batch + (uint64_t)k) % count;
            hdlm_dataset_chunk_copy(&t->valid, chunk, t->chunks + (size_t)k * t->length);
        }
        hdlm_watchdog_beat(t->update);
        hdlm_loss_target target;
        hdlm_model_input in = corrupt(t, seed, (uint64_t)i, false, &target);
        b->ops->micro_batch(b, &in, &target, false, false, false);
        sum += b->ops->loss(b);
    }
    b->ops->use_ema(b, false);
    return hdlm_allreduce_sum(sum) / ((double)t->eval_batches * t->world);
}

void hdlm_trainer_profile(hdlm_trainer *t, FILE *out, double step_s, bool reset) {
    if (t->backend->ops->profile) t->backend->ops->profile(t->backend, out, step_s, reset);
}

static void checkpoint_root(const hdlm_trainer *t, char *path, size_t size) {
    snprintf(path, size, "%s/checkpoints", t->cfg.run.dir);
}

int hdlm_trainer_save(hdlm_trainer *t, double *seconds) {
    hdlm_watchdog_beat(t->update);
    t->backend->ops->download(t->backend);
    char root[HDLM_CONFIG_STRING_MAX + 32];
    checkpoint_root(t, root, sizeof root);
    hdlm_ckpt_group groups[] = {
        {"params", t->model->params, 0},
        {"ema", t->state.ema, t->state.lo},
        {"adam_m", t->state.adam_m, t->state.lo},
        {"adam_v", t->state.adam_v, t->state.lo},
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
        {"length", t->length},
        {"train_data_id", (int64_t)hdlm_dataset_identity(&t->train)},
    };
    int64_t rank_state[] = {t->loader.epoch, (int64_t)t->loader.position, t->rank, t->micro_batch};
    char *yaml = hdlm_config_to_yaml(&hdlm_train_config_schema, &t->cfg);
    hdlm_ckpt_contents c = {t->tensors, t->n_tensors, groups, 4, scalars, (int)(sizeof scalars / sizeof scalars[0]),
                            yaml, rank_state, 4};
    hdlm_ckpt_retention keep = {(int)t->cfg.run.keep_last, t->cfg.run.keep_every};
    int rc = hdlm_checkpoint_save(root, t->update, &c, &keep, seconds);
    free(yaml);
    return rc;
}

// What exact resume needs besides the shapes the tensor table checks: the same sequence length (the loader's
// position counts chunks) and the same training data. Checkpoints from before these were recorded skip the check.
static int check_resumable(hdlm_trainer *t, hdlm_ckpt *ck) {
    const char *path = hdlm_checkpoint_path(ck);
    int64_t length, data_id, world;
    bool present;
    HDLM_TRY(hdlm_checkpoint_scalar_if(ck, "length", &length, &present));
    HDLM_CHECK(!present || length == t->length,
               "%s: written with model.length = %lld, this run has %d: the data position and the model's inputs "
               "would not continue (resume with model.length=%lld, or start a new run)",
               path, (long long)length, t->length, (long long)length);
    HDLM_TRY(hdlm_checkpoint_scalar_if(ck, "train_data_id", &data_id, &present));
    HDLM_CHECK(!present || (uint64_t)data_id == hdlm_dataset_identity(&t->train),
               "%s: data.train = %s is not the data this run was trained on (other shards or other content: %llu "
               "chunks now); resume with the original data.train, or start a new run",
               path, t->cfg.data.train, (unsigned long long)hdlm_dataset_chunk_count(&t->train));
    HDLM_TRY(hdlm_checkpoint_scalar(ck, "world_size", &world));
    if (world != t->world && (t->cfg.model.dropout > 0 || t->cfg.kind.sampling == HDLM_STEPS_PER_BATCH))
        hdlm_warn("%s: written by %lld ranks, resumed on %d: the dropout masks and the per-rank hyperschedule steps "
                  "are keyed by rank, so the run continues with other random draws than an uninterrupted run\n",
                  path, (long long)world, t->world);
    return 0;
}

static int restore_from(hdlm_trainer *t, hdlm_ckpt *ck) {
    hdlm_model *m = t->model;
    const char *path = hdlm_checkpoint_path(ck);
    HDLM_TRY(check_resumable(t, ck));
    HDLM_TRY(hdlm_checkpoint_read(ck, "params", t->tensors, t->n_tensors, 0, m->n_params, m->params));
    HDLM_TRY(hdlm_checkpoint_read(ck, "ema", t->tensors, t->n_tensors, t->state.lo, t->state.hi, t->state.ema));
    HDLM_TRY(hdlm_checkpoint_read(ck, "adam_m", t->tensors, t->n_tensors, t->state.lo, t->state.hi, t->state.adam_m));
    HDLM_TRY(hdlm_checkpoint_read(ck, "adam_v", t->tensors, t->n_tensors, t->state.lo, t->state.hi, t->state.adam_v));
    int64_t seed, epoch, position, G;
    HDLM_TRY(hdlm_checkpoint_scalar(ck, "update", &t->update));
    HDLM_TRY(hdlm_checkpoint_scalar(ck, "applied_updates", &t->applied));
    HDLM_TRY(hdlm_checkpoint_scalar(ck, "micro_step", &t->micro_step));
    HDLM_TRY(hdlm_checkpoint_scalar(ck, "tokens_seen", &t->tokens_seen));
    HDLM_TRY(hdlm_checkpoint_scalar(ck, "seed", &seed));
    HDLM_TRY(hdlm_checkpoint_scalar(ck, "epoch", &epoch));
    HDLM_TRY(hdlm_checkpoint_scalar(ck, "loader_position", &position));
    HDLM_TRY(hdlm_checkpoint_scalar(ck, "global_micro_batch", &G));
    HDLM_CHECK(seed == t->cfg.training.seed,
               "%s: written with training.seed = %lld, this run has %lld: the data order and every random draw are "
               "keyed by it (resume with training.seed=%lld, or start a new run)",
               path, (long long)seed, (long long)t->cfg.training.seed, (long long)seed);
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
        HDLM_TRY(hdlm_checkpoint_resolve(resume, path, sizeof path));
    }
    hdlm_ckpt *ck;
    HDLM_TRY(hdlm_checkpoint_open(&ck, path));
    int rc = restore_from(t, ck);
    hdlm_checkpoint_close(ck);
    return rc;
}

// hdlm/train_config.h — the configuration of a training run: YAML keys mirror the reference's epsilon_hdlm.yaml /
// gamma_hdlm.yaml (and configs/model/*.yaml under `model:`) where they mean something here. Presets: jobs/configs/.
#ifndef HDLM_TRAIN_CONFIG_H
#define HDLM_TRAIN_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "hdlm/config.h"
#include "hdlm/diffusion.h"
#include "hdlm/model.h"
#include "hdlm/schedule.h"

typedef enum { HDLM_DEVICE_CPU, HDLM_DEVICE_CUDA } hdlm_device;
// What one training step computes (method §4, §5, §13): the ε family with a hyperschedule or without one
// (annealing.type = none), the γ family, ARDM's count-based objective, or a plain next-token model (AR: causal
// attention, the ε network without MASK, method §2.8).
typedef enum {
    HDLM_OBJECTIVE_EPSILON,
    HDLM_OBJECTIVE_EPSILON_UNSCHEDULED,
    HDLM_OBJECTIVE_GAMMA,
    HDLM_OBJECTIVE_ARDM,
    HDLM_OBJECTIVE_AR
} hdlm_objective;
typedef enum { HDLM_LR_CONSTANT, HDLM_LR_COSINE, HDLM_LR_WARMUP_COSINE, HDLM_LR_LINEAR } hdlm_lr_kind;
// AdamW's hyperparameters (optim.beta1, beta2, eps, weight_decay), shared by the CPU and CUDA optimizers.
typedef struct {
    double beta1, beta2, eps, weight_decay;
} hdlm_adamw_config;

// The configuration's string choices as enums: the only place they are compared (hdlm_train_config_resolve).
typedef struct {
    hdlm_family family;             // model.name
    hdlm_objective objective;       // model.name, annealing.type, training.objective
    bool scheduled;                 // a hyperschedule drives the step (ε or γ with annealing.type != none)
    hdlm_schedule_type schedule;    // annealing.type (when scheduled)
    hdlm_context_type context;      // annealing.attention.context_type
    hdlm_block_type block;          // annealing.attention.block_type
    hdlm_step_sampling sampling;    // training.step_sampling
    hdlm_eps_loss_type eps_loss;    // training.loss_type
    hdlm_lr_kind lr;                // optim.scheduler
    hdlm_rotary_mode rotary;        // model.rotary
    hdlm_device device;             // training.device
} hdlm_train_kinds;

typedef struct {
    struct {
        char name[HDLM_CONFIG_STRING_MAX];      // epsilon_hdlm | gamma_hdlm: the family
        int64_t hidden_size, n_blocks, n_heads, cond_dim, length, mlp_ratio;
        double dropout;
        char rotary[HDLM_CONFIG_STRING_MAX];    // exact | reference (fp16-emulated angles, method §7.4)
    } model;
    struct {
        int64_t batch_size;   // global sequences per optimizer update = world x micro-batch x accum
        int64_t accum;        // micro-batches per update on each rank
        int64_t n_iters;      // optimizer updates
        int64_t log_freq, eval_freq, snapshot_freq, eval_batches;
        double ema;           // EMA decay ceiling (method §8.5)
        int64_t ema_update_after;
        char objective[HDLM_CONFIG_STRING_MAX];       // hdlm | ardm | ar
        char loss_type[HDLM_CONFIG_STRING_MAX];       // hybrid | standard (ε, method §4.3)
        double epsilon, lambda;                       // ε-hybrid corruption and weights
        char step_sampling[HDLM_CONFIG_STRING_MAX];   // per_batch (reference) | per_sequence
        bool reference_zero_grad_quirk;               // method §8.3: keep only the last micro-batch of each window
        int64_t seed;
        char device[HDLM_CONFIG_STRING_MAX];          // cpu | cuda (docs/cuda.md)
        double watchdog_s;                            // end the job when a rank makes no progress this long (0: off)
    } training;
    struct {
        char type[HDLM_CONFIG_STRING_MAX];   // block | simple | hybrid | none (ε only: no schedule, method §4.4)
        int64_t width, tau;
        double sampling_eps;
        char context_type[HDLM_CONFIG_STRING_MAX], block_type[HDLM_CONFIG_STRING_MAX];
        double diffusion_loss_weight, ce_loss_weight;   // γ loss (method §5.6)
        bool efficient;   // the two-copy layout: every ω-block of a sequence trained in one forward (method §2.10)
    } annealing;
    struct {
        double gamma;   // γ family: mixture of absorbing and uniform rates (method §5.1)
    } graph;
    struct {
        double lr, min_lr, beta1, beta2, eps, weight_decay, grad_clip;
        char scheduler[HDLM_CONFIG_STRING_MAX];   // cosine | lambda (warm-up + cosine) | linear | constant
        int64_t warmup;                           // in scheduler counts (lambda)
        int64_t total;                            // scheduler counts of the cosine / linear horizon
        int64_t lr_multiplier;                    // scheduler counts per update; 0 = world size (the reference)
        bool zero1;                               // shard AdamW moments and EMA across ranks (ZeRO-1)
    } optim;
    struct {
        char train[HDLM_CONFIG_STRING_MAX], valid[HDLM_CONFIG_STRING_MAX];   // token-shard directories
    } data;
    struct {
        char dir[HDLM_CONFIG_STRING_MAX];   // run directory: config, metrics.jsonl, checkpoints/
        int64_t keep_last, keep_every;
    } run;
    hdlm_train_kinds kind;   // resolved from the strings above by hdlm_train_config_resolve (not a YAML key)
} hdlm_train_config;

extern const hdlm_config_schema hdlm_train_config_schema;

// Defaults, then the YAML file (NULL: none), then the key=value overrides; then the cross-field checks
// (batch divisible by world x accum, width and heads consistent, ...) for a job of `world` ranks; then
// hdlm_train_config_resolve.
int hdlm_train_config_load(hdlm_train_config *c, const char *yaml_path, const char *const *overrides, int n_overrides,
                           int world);

// The same from YAML text (a checkpoint's stored configuration; origin names it in messages).
int hdlm_train_config_load_text(hdlm_train_config *c, const char *yaml, const char *origin,
                                const char *const *overrides, int n_overrides, int world);

// Fills c->kind from the string fields (needed after loading a configuration any other way, e.g. from a checkpoint);
// an unknown value is an error naming its key.
int hdlm_train_config_resolve(hdlm_train_config *c);

// The hyperschedule of a scheduled configuration (c->kind.scheduled) for sequences of `length` tokens, with tau > 0
// replacing annealing.tau. for_sampling: the schedule generation walks (`hybrid` trains only: sampling walks `block`,
// method §2.5). The caller frees it with hdlm_schedule_free.
int hdlm_train_config_schedule(const hdlm_train_config *c, int length, int tau, bool for_sampling, hdlm_schedule *s);

// What the training loss of a resolved configuration counts, for the progress line and metrics.jsonl:
// "nats/token" (ε: the weighted CE averaged over active positions, method §4.3; AR: next-token CE), "nats/seq"
// (γ: the per-sequence NELBO estimate D + C of method §5.6), "bits/token" (ARDM, method §13 A.3).
const char *hdlm_train_loss_unit(const hdlm_train_kinds *kind);

// The model configuration a training configuration describes (vocabulary 50258 with MASK, method §1).
int hdlm_train_config_model(const hdlm_train_config *c, hdlm_model_config *model);

#endif

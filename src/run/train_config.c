// The training configuration's schema and cross-field checks (include/hdlm/train_config.h).
#include "hdlm/train_config.h"

#include <stddef.h>
#include <string.h>

#include "hdlm/common.h"
#include "hdlm/tokenizer.h"

// lo > hi: no range (strings and booleans).
#define F(key, type, member, def, lo, hi, choices, help)                                                               \
    { key, HDLM_CONFIG_##type, offsetof(hdlm_train_config, member), def, lo, hi, choices, help }

static const hdlm_config_field fields[] = {
    F("model.name", STRING, model.name, "epsilon_hdlm", 1, 0, "epsilon_hdlm|gamma_hdlm", "model family"),
    F("model.hidden_size", INT, model.hidden_size, "768", 2, 65536, NULL, "width d"),
    F("model.n_blocks", INT, model.n_blocks, "12", 1, 1024, NULL, "transformer blocks"),
    F("model.n_heads", INT, model.n_heads, "12", 1, 1024, NULL, "attention heads (divide hidden_size)"),
    F("model.cond_dim", INT, model.cond_dim, "128", 1, 65536, NULL, "γ: σ-conditioning width"),
    F("model.length", INT, model.length, "1024", 2, 1 << 20, NULL, "sequence length L"),
    F("model.mlp_ratio", INT, model.mlp_ratio, "4", 1, 64, NULL, "MLP hidden = mlp_ratio x hidden_size"),
    F("model.dropout", DOUBLE, model.dropout, "0.1", 0, 0.99, NULL, "dropout probability"),
    F("model.rotary", STRING, model.rotary, "exact", 1, 0, "exact|reference", "rotary angle precision (method §7.4)"),

    F("training.batch_size", INT, training.batch_size, "512", 1, 1e9, NULL, "global sequences per update"),
    F("training.accum", INT, training.accum, "8", 1, 1e6, NULL, "micro-batches per update and rank"),
    F("training.n_iters", INT, training.n_iters, "125000", 1, 1e12, NULL, "optimizer updates"),
    F("training.log_freq", INT, training.log_freq, "50", 1, 1e12, NULL, "updates between progress lines"),
    F("training.eval_freq", INT, training.eval_freq, "1000", 1, 1e12, NULL, "updates between validation losses"),
    F("training.snapshot_freq", INT, training.snapshot_freq, "1000", 1, 1e12, NULL, "updates between checkpoints"),
    F("training.eval_batches", INT, training.eval_batches, "8", 1, 1e9, NULL, "validation micro-batches per rank"),
    F("training.ema", DOUBLE, training.ema, "0.9999", 0, 1, NULL, "EMA decay ceiling"),
    F("training.ema_update_after", INT, training.ema_update_after, "250", 0, 1e12, NULL,
      "updates before the EMA starts averaging (method §8.5)"),
    F("training.objective", STRING, training.objective, "hdlm", 1, 0, "hdlm|ardm|ar",
      "training objective: the hyperschedule (hdlm), order-agnostic ARDM, or next-token AR"),
    F("training.loss_type", STRING, training.loss_type, "hybrid", 1, 0, "hybrid|standard", "ε loss (method §4.3)"),
    F("training.epsilon", DOUBLE, training.epsilon, "0.01", 0, 1, NULL, "ε: uniform replacement probability"),
    F("training.lambda", DOUBLE, training.lambda, "1.0", 0, 1e6, NULL, "ε: weight of the unmasked terms"),
    F("training.step_sampling", STRING, training.step_sampling, "per_batch", 1, 0, "per_batch|per_sequence",
      "hyperschedule steps per micro-batch or per sequence"),
    F("training.reference_zero_grad_quirk", BOOL, training.reference_zero_grad_quirk, "false", 1, 0, NULL,
      "reproduce the reference's accumulation quirk (method §8.3)"),
    F("training.seed", INT, training.seed, "42", 0, 9e15, NULL, "seed of every random stream"),
    F("training.watchdog_s", DOUBLE, training.watchdog_s, "1800", 0, 1e7, NULL,
      "seconds without progress on a rank before the job ends naming the rank that stopped answering (0: off)"),
    F("training.device", STRING, training.device, "cpu", 1, 0, "cpu|cuda",
      "where the step runs: cpu (MPI ranks) or cuda (one GPU per rank, NCCL; docs/cuda.md)"),

    F("annealing.type", STRING, annealing.type, "block", 1, 0, "block|simple|hybrid|none", "hyperschedule"),
    F("annealing.width", INT, annealing.width, "1024", 1, 1 << 20, NULL, "ω"),
    F("annealing.tau", INT, annealing.tau, "1024", 2, 1 << 20, NULL, "τ: noise levels"),
    F("annealing.sampling_eps", DOUBLE, annealing.sampling_eps, "1e-4", 1e-12, 0.04, NULL, "ε_s"),
    F("annealing.attention.context_type", STRING, annealing.context_type, "block_causal", 1, 0,
      "block_causal|causal|full", "attention among settled positions"),
    F("annealing.attention.block_type", STRING, annealing.block_type, "full", 1, 0, "full|causal",
      "attention among active positions"),
    F("annealing.diffusion_loss_weight", DOUBLE, annealing.diffusion_loss_weight, "1.0", 0, 1e6, NULL, "γ"),
    F("annealing.ce_loss_weight", DOUBLE, annealing.ce_loss_weight, "1.0", 0, 1e6, NULL, "γ settled-prefix CE"),
    F("annealing.efficient", BOOL, annealing.efficient, "false", 1, 0, NULL,
      "two-copy layout [clean x; noisy x]: every ω-block trained in one forward (method §2.10, block schedule)"),

    F("graph.gamma", DOUBLE, graph.gamma, "0.01", 0, 1, NULL, "γ family: uniform-rate share"),

    F("optim.lr", DOUBLE, optim.lr, "3e-4", 0, 10, NULL, "peak learning rate"),
    F("optim.min_lr", DOUBLE, optim.min_lr, "4e-5", 0, 10, NULL, "cosine floor"),
    F("optim.beta1", DOUBLE, optim.beta1, "0.9", 0, 0.999999, NULL, "AdamW β1"),
    F("optim.beta2", DOUBLE, optim.beta2, "0.95", 0, 0.999999999, NULL, "AdamW β2"),
    F("optim.eps", DOUBLE, optim.eps, "1e-8", 0, 1, NULL, "AdamW ε"),
    F("optim.weight_decay", DOUBLE, optim.weight_decay, "0.1", 0, 10, NULL, "decoupled weight decay"),
    F("optim.grad_clip", DOUBLE, optim.grad_clip, "1.0", 0, 1e12, NULL, "global-norm clip (0: off)"),
    F("optim.scheduler", STRING, optim.scheduler, "cosine", 1, 0, "cosine|lambda|linear|constant", "LR schedule"),
    F("optim.warmup", INT, optim.warmup, "10000", 0, 1e12, NULL, "warm-up (lambda scheduler)"),
    F("optim.total", INT, optim.total, "1000000", 1, 1e15, NULL, "schedule horizon in scheduler counts"),
    F("optim.lr_multiplier", INT, optim.lr_multiplier, "0", 0, 1e6, NULL, "scheduler counts per update (0: ranks)"),
    F("optim.zero1", BOOL, optim.zero1, "false", 1, 0, NULL, "shard AdamW moments and EMA across ranks (ZeRO-1)"),

    F("data.train", STRING, data.train, "", 1, 0, NULL, "training token shards (directory)"),
    F("data.valid", STRING, data.valid, "", 1, 0, NULL, "validation token shards (directory)"),

    F("run.dir", STRING, run.dir, "runs/default", 1, 0, NULL, "run directory"),
    F("run.keep_last", INT, run.keep_last, "3", 1, 1e6, NULL, "checkpoints kept"),
    F("run.keep_every", INT, run.keep_every, "0", 0, 1e12, NULL, "also keep steps that are multiples (0: none)"),
};

const hdlm_config_schema hdlm_train_config_schema = {fields, sizeof fields / sizeof fields[0]};

static int check_cross_fields(const hdlm_train_config *c, int world) {
    const int64_t per_update = (int64_t)world * c->training.accum;
    HDLM_CHECK(c->training.batch_size % per_update == 0,
               "training.batch_size = %lld must be a multiple of ranks x training.accum = %d x %lld",
               (long long)c->training.batch_size, world, (long long)c->training.accum);
    HDLM_CHECK(c->model.hidden_size % c->model.n_heads == 0,
               "model.hidden_size = %lld is not divisible by model.n_heads = %lld", (long long)c->model.hidden_size,
               (long long)c->model.n_heads);
    HDLM_CHECK((c->model.hidden_size / c->model.n_heads) % 2 == 0,
               "model.hidden_size / model.n_heads = %lld must be even (rotary embedding pairs)",
               (long long)(c->model.hidden_size / c->model.n_heads));
    const hdlm_train_kinds *k = &c->kind;
    bool gamma = k->family == HDLM_FAMILY_GAMMA;
    HDLM_CHECK(!(gamma && k->objective == HDLM_OBJECTIVE_ARDM),
               "training.objective = ardm uses the ε model: set model.name = epsilon_hdlm");
    HDLM_CHECK(!(gamma && k->objective == HDLM_OBJECTIVE_AR),
               "training.objective = ar uses the ε model (no σ input): set model.name = epsilon_hdlm");
    HDLM_CHECK(!(gamma && !k->scheduled),
               "annealing.type = none (no schedule) exists only for the ε family (model.name = epsilon_hdlm)");
    HDLM_CHECK(!k->scheduled || k->schedule != HDLM_SCHEDULE_SIMPLE || c->annealing.width >= 2,
               "annealing.width must be at least 2 for the simple schedule (method §11 item 24)");
    HDLM_CHECK(!c->annealing.efficient || (k->scheduled && k->schedule == HDLM_SCHEDULE_BLOCK),
               "annealing.efficient = true (the two-copy layout) needs annealing.type = block and the hdlm objective");
    HDLM_CHECK(!c->annealing.efficient || c->model.length % c->annealing.width == 0,
               "annealing.efficient = true: model.length = %lld must be a multiple of annealing.width = %lld",
               (long long)c->model.length, (long long)c->annealing.width);
    HDLM_CHECK(c->optim.min_lr <= c->optim.lr, "optim.min_lr = %g exceeds optim.lr = %g", c->optim.min_lr,
               c->optim.lr);
    HDLM_CHECK(c->data.train[0], "data.train is not set: the directory of training token shards (hdlm-prep prepare)");
    // An empty run.dir would put config.yaml, metrics.jsonl, checkpoints/ and DONE at the filesystem root.
    HDLM_CHECK(c->run.dir[0], "run.dir is empty: name the run directory (config, metrics.jsonl, checkpoints/)");
    return 0;
}

// Defaults, then the YAML (a file, or text with its origin for messages), then the overrides and the checks.
static int load(hdlm_train_config *c, const char *yaml_path, const char *yaml_text, const char *origin,
                const char *const *overrides, int n_overrides, int world) {
    memset(c, 0, sizeof *c);
    HDLM_TRY(hdlm_config_defaults(&hdlm_train_config_schema, c));
    if (yaml_path) HDLM_TRY(hdlm_config_load_yaml(&hdlm_train_config_schema, c, yaml_path));
    if (yaml_text) HDLM_TRY(hdlm_config_load_yaml_string(&hdlm_train_config_schema, c, yaml_text, origin));
    for (int i = 0; i < n_overrides; i++) HDLM_TRY(hdlm_config_override(&hdlm_train_config_schema, c, overrides[i]));
    HDLM_TRY(hdlm_train_config_resolve(c));
    return check_cross_fields(c, world);
}

int hdlm_train_config_load(hdlm_train_config *c, const char *yaml_path, const char *const *overrides, int n_overrides,
                           int world) {
    return load(c, yaml_path, NULL, NULL, overrides, n_overrides, world);
}

int hdlm_train_config_load_text(hdlm_train_config *c, const char *yaml, const char *origin,
                                const char *const *overrides, int n_overrides, int world) {
    return load(c, NULL, yaml, origin, overrides, n_overrides, world);
}

// The schema already restricts each string to its choices; an unknown value can still arrive through a stored
// configuration that skipped the schema's check, so every lookup fails with the key's name.
static int choice(const char *value, const char *key, const char *const *names, int n, int *out) {
    for (int i = 0; i < n; i++)
        if (strcmp(value, names[i]) == 0) {
            *out = i;
            return 0;
        }
    return HDLM_FAIL("%s: unknown value '%s'", key, value);
}

int hdlm_train_config_resolve(hdlm_train_config *c) {
    static const char *const families[] = {"epsilon_hdlm", "gamma_hdlm"}, *const rotary[] = {"exact", "reference"},
                             *const devices[] = {"cpu", "cuda"}, *const objectives[] = {"hdlm", "ardm", "ar"},
                             *const losses[] = {"hybrid", "standard"},
                             *const samplings[] = {"per_batch", "per_sequence"},
                             *const schedulers[] = {"constant", "cosine", "lambda", "linear"};
    hdlm_train_kinds *k = &c->kind;
    int family = 0, rot = 0, device = 0, objective = 0, loss = 0, sampling = 0, lr = 0;
    HDLM_TRY(choice(c->model.name, "model.name", families, 2, &family));
    HDLM_TRY(choice(c->model.rotary, "model.rotary", rotary, 2, &rot));
    HDLM_TRY(choice(c->training.device, "training.device", devices, 2, &device));
    HDLM_TRY(choice(c->training.objective, "training.objective", objectives, 3, &objective));
    HDLM_TRY(choice(c->training.loss_type, "training.loss_type", losses, 2, &loss));
    HDLM_TRY(choice(c->training.step_sampling, "training.step_sampling", samplings, 2, &sampling));
    HDLM_TRY(choice(c->optim.scheduler, "optim.scheduler", schedulers, 4, &lr));
    k->family = (hdlm_family)family;
    k->rotary = (hdlm_rotary_mode)rot;
    k->device = (hdlm_device)device;
    k->eps_loss = loss ? HDLM_EPS_LOSS_STANDARD : HDLM_EPS_LOSS_HYBRID;
    k->sampling = sampling ? HDLM_STEPS_PER_SEQUENCE : HDLM_STEPS_PER_BATCH;
    k->lr = (hdlm_lr_kind)lr;
    k->scheduled = strcmp(c->annealing.type, "none") != 0;
    if (k->scheduled) HDLM_TRY(hdlm_schedule_type_parse(c->annealing.type, "annealing.type", &k->schedule));
    HDLM_TRY(hdlm_context_type_parse(c->annealing.context_type, "annealing.attention.context_type", &k->context));
    HDLM_TRY(hdlm_block_type_parse(c->annealing.block_type, "annealing.attention.block_type", &k->block));
    if (objective == 1) k->objective = HDLM_OBJECTIVE_ARDM, k->scheduled = false;   // count-based masks, no schedule
    else if (objective == 2) k->objective = HDLM_OBJECTIVE_AR, k->scheduled = false;   // causal, next token
    else if (k->family == HDLM_FAMILY_GAMMA) k->objective = HDLM_OBJECTIVE_GAMMA;
    else k->objective = k->scheduled ? HDLM_OBJECTIVE_EPSILON : HDLM_OBJECTIVE_EPSILON_UNSCHEDULED;
    return 0;
}

int hdlm_train_config_schedule(const hdlm_train_config *c, int length, int tau, bool for_sampling, hdlm_schedule *s) {
    const hdlm_train_kinds *k = &c->kind;
    HDLM_CHECK(k->scheduled, "annealing.type = %s: this configuration has no hyperschedule", c->annealing.type);
    hdlm_schedule_type type = k->schedule;
    int width = (int)c->annealing.width;
    if (for_sampling && type == HDLM_SCHEDULE_HYBRID) type = HDLM_SCHEDULE_BLOCK;
    if (for_sampling && width > length) width = length;
    return hdlm_schedule_init(s, type, length, width, tau > 0 ? tau : (int)c->annealing.tau,
                              c->annealing.sampling_eps, k->context, k->block);
}

const char *hdlm_train_loss_unit(const hdlm_train_kinds *k) {
    switch (k->objective) {
    case HDLM_OBJECTIVE_GAMMA: return "nats/seq";
    case HDLM_OBJECTIVE_ARDM: return "bits/token";
    default: return "nats/token";
    }
}

int hdlm_train_config_model(const hdlm_train_config *c, hdlm_model_config *m) {
    hdlm_train_config resolved = *c;   // callers may not have resolved a configuration they read themselves
    HDLM_TRY(hdlm_train_config_resolve(&resolved));
    *m = hdlm_model_config_ddit_small(resolved.kind.family);
    m->width = (int)c->model.hidden_size;
    m->n_layers = (int)c->model.n_blocks;
    m->n_heads = (int)c->model.n_heads;
    m->mlp_ratio = (int)c->model.mlp_ratio;
    m->cond_dim = (int)c->model.cond_dim;
    m->vocab = HDLM_MODEL_VOCAB;
    m->max_length = (int)c->model.length;
    m->dropout = (float)c->model.dropout;
    m->gamma = (float)c->graph.gamma;
    m->rotary = resolved.kind.rotary;
    return hdlm_model_config_check(m);
}

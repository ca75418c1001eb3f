// ε-hybrid forward corruption on the hyperschedule path and the no-schedule MDLM path (method §4.2-§4.4).
#include "hdlm/common.h"
#include "hdlm/diffusion.h"
#include "hdlm/rng.h"

// Loss weight of a position by what happened to it (method §4.3); p is t_i (schedule) or p_b (no schedule), and
// `unmasked_scale` is 1 on the schedule path and 1/(1-p_b) on the no-schedule path (§11 item 6).
static float epsilon_weight(const hdlm_eps_config *cfg, hdlm_corrupt_kind kind, double p, double unmasked_scale) {
    switch (kind) {
    case HDLM_CORRUPT_MASKED: return (float)(1.0 / (p > 1e-4 ? p : 1e-4));
    case HDLM_CORRUPT_REPLACED: return (float)(cfg->lambda * (1.0 - cfg->epsilon) * unmasked_scale);
    case HDLM_CORRUPT_UNTOUCHED:
        return cfg->loss == HDLM_EPS_LOSS_HYBRID ? (float)(cfg->lambda * cfg->epsilon * unmasked_scale) : 0.0f;
    default: return 0.0f;
    }
}

// Masks with probability p, else (hybrid only) replaces with probability ε (method §4.2). The replacement draw comes
// before the MASK overwrite in the reference, so it is made for every position that is not masked.
static hdlm_corrupt_kind epsilon_corrupt_position(const hdlm_eps_config *cfg, hdlm_rng *rng, float p, int vocab,
                                                  uint32_t clean, uint32_t *xt) {
    float u_mask = hdlm_rng_uniform(rng), u_replace = hdlm_rng_uniform(rng);
    if (u_mask < p) {
        *xt = (uint32_t)(vocab - 1);
        return HDLM_CORRUPT_MASKED;
    }
    if (cfg->loss == HDLM_EPS_LOSS_HYBRID && u_replace < (float)cfg->epsilon) {
        *xt = (uint32_t)hdlm_rng_below(rng, (uint64_t)(vocab - 1));
        return HDLM_CORRUPT_REPLACED;
    }
    *xt = clean;
    return HDLM_CORRUPT_UNTOUCHED;
}

void hdlm_epsilon_corrupt(const hdlm_eps_config *cfg, const hdlm_step *const *steps, const uint32_t *x0, int vocab,
                          uint64_t key, hdlm_corruption *c) {
    int B = c->batch, L = c->length;
    double active = 0;
    for (int b = 0; b < B; b++) {
        HDLM_ASSERT(steps[b]->length == L, "step of length %d for sequences of length %d", steps[b]->length, L);
        active += steps[b]->n_active;
    }
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        const hdlm_step *st = steps[b];
        hdlm_rng rng;
        hdlm_rng_init(&rng, hdlm_rng_key(key, (uint64_t)b, 0, HDLM_RNG_NOISE));
        for (int i = 0; i < L; i++) {
            size_t r = (size_t)b * L + i;
            hdlm_corrupt_kind kind = HDLM_CORRUPT_KEPT;
            c->xt[r] = x0[r];
            if (st->cls[i] == HDLM_POS_ACTIVE)
                kind = epsilon_corrupt_position(cfg, &rng, st->t[i], vocab, x0[r], &c->xt[r]);
            c->kind[r] = (uint8_t)kind;
            c->weight[r] = epsilon_weight(cfg, kind, st->t[i], 1.0);
        }
    }
    c->norm = active > 0 ? active : 1.0;   // B·|A| under one step per micro-batch
}

void hdlm_epsilon_corrupt_unscheduled(const hdlm_eps_config *cfg, double sampling_eps, const uint32_t *x0, int vocab,
                                      uint64_t key, hdlm_corruption *c, float *p) {
    int B = c->batch, L = c->length;
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        hdlm_rng rng;
        hdlm_rng_init(&rng, hdlm_rng_key(key, (uint64_t)b, 0, HDLM_RNG_NOISE));
        float pb = (float)((1.0 - sampling_eps) * hdlm_rng_uniform(&rng) + sampling_eps);
        if (p) p[b] = pb;
        for (int i = 0; i < L; i++) {
            size_t r = (size_t)b * L + i;
            hdlm_corrupt_kind kind = epsilon_corrupt_position(cfg, &rng, pb, vocab, x0[r], &c->xt[r]);
            c->kind[r] = (uint8_t)kind;
            c->weight[r] = epsilon_weight(cfg, kind, pb, 1.0 / (1.0 - pb));
        }
    }
    c->norm = (double)B * L;
}

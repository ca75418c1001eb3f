// Order-agnostic ARDM corruption: count-based absorbing masks with the D/m weight (method §13, A.3.1).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hdlm/common.h"
#include "hdlm/diffusion.h"
#include "hdlm/rng.h"

int hdlm_ardm_softmax_width(const hdlm_ardm_config *cfg, int vocab) { return cfg->exclude_mask ? vocab - 1 : vocab; }

static int gcd(int a, int b) { return b ? gcd(b, a % b) : a; }

// Antithetic steps (A.3.2): g = gcd(B, L) strata of Δ = L/g steps; n = B/g offsets u_j, each used in every stratum,
// then a random permutation over the batch. Drawn from one batch-level stream.
static void antithetic_steps(int B, int L, uint64_t key, int *steps) {
    hdlm_rng rng;
    hdlm_rng_init(&rng, hdlm_rng_key(key, UINT64_MAX, 0, HDLM_RNG_STEP));
    int g = gcd(B, L), spacing = L / g, n = B / g;
    uint32_t *order = hdlm_malloc((size_t)B * sizeof *order);
    for (int j = 0; j < n; j++) {
        int u = (int)hdlm_rng_below(&rng, (uint64_t)spacing);
        for (int k = 0; k < g; k++) order[j * g + k] = (uint32_t)(u + k * spacing);
    }
    hdlm_rng_shuffle_u32(&rng, order, (uint64_t)B);
    for (int b = 0; b < B; b++) steps[b] = (int)order[b];
    free(order);
}

void hdlm_ardm_corrupt(const hdlm_ardm_config *cfg, const uint32_t *x0, int vocab, uint64_t key, hdlm_corruption *c,
                       int *steps) {
    int B = c->batch, L = c->length;
    int *drawn = hdlm_malloc((size_t)B * sizeof *drawn);
    if (cfg->antithetic) antithetic_steps(B, L, key, drawn);
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        hdlm_rng rng;
        hdlm_rng_init(&rng, hdlm_rng_key(key, (uint64_t)b, 0, HDLM_RNG_NOISE));
        int s = cfg->antithetic ? drawn[b] : (int)hdlm_rng_below(&rng, (uint64_t)L), m = L - s;
        if (steps) steps[b] = s;
        // Mean CE in bits over the m masked positions plus λ_CE times their sum over L (A.3.1 items 5-6).
        float w = (float)((1.0 / m + cfg->ce_weight / L) / M_LN2);
        size_t base = (size_t)b * L;
        for (int i = 0; i < L; i++) {
            c->xt[base + i] = x0[base + i];
            c->kind[base + i] = HDLM_CORRUPT_KEPT;
            c->weight[base + i] = 0.0f;
        }
        // The last m ranks of a uniform order = a uniform m-subset: a partial Fisher-Yates shuffle of the positions.
        uint32_t *order = hdlm_malloc((size_t)L * sizeof *order);
        for (int i = 0; i < L; i++) order[i] = (uint32_t)i;
        for (int j = 0; j < m; j++) {
            int pick = j + (int)hdlm_rng_below(&rng, (uint64_t)(L - j));
            uint32_t tmp = order[j];
            order[j] = order[pick];
            order[pick] = tmp;
            size_t r = base + order[j];
            c->xt[r] = (uint32_t)(vocab - 1);
            c->kind[r] = HDLM_CORRUPT_MASKED;
            c->weight[r] = w;
        }
        free(order);
    }
    free(drawn);
    c->norm = B;
}

void hdlm_ar_inputs(const uint32_t *x0, uint32_t start, hdlm_corruption *c) {
    int L = c->length;
    for (int b = 0; b < c->batch; b++) {
        const uint32_t *x = x0 + (size_t)b * L;
        uint32_t *xt = c->xt + (size_t)b * L;
        xt[0] = start;
        memcpy(xt + 1, x, (size_t)(L - 1) * sizeof(uint32_t));
        for (int i = 0; i < L; i++) {
            c->kind[(size_t)b * L + i] = HDLM_CORRUPT_KEPT;
            c->weight[(size_t)b * L + i] = 1.0f;
        }
    }
    c->norm = (double)c->batch * L;
}

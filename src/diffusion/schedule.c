// Hyperschedules: closed-form levels, times, classes, weights, masks and step sampling (include/hdlm/schedule.h).
#include "hdlm/schedule.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hdlm/common.h"

static int ceil_div(int a, int b) { return (a + b - 1) / b; }

// `simple` main tuple M_i = round_half_even(i·(τ-1)/(ω-1)) in double precision (method §2.4); rint() rounds half to
// even under the default rounding mode, like Python's round.
static void simple_main_tuple(int width, int tau, int *m) {
    for (int i = 0; i < width; i++) m[i] = (int)rint((double)i * (tau - 1) / (width - 1));
}

// Levels of the `simple` schedule at step k (method §2.4): bootstrap steps slide M in from the left, later steps shift
// it right by z positions per step.
static void simple_levels(const hdlm_schedule *s, int k, int *levels, int *n_set) {
    int L = s->length, w = s->width, W = s->worthless_level;
    if (k <= w - 1) {
        *n_set = 0;
        for (int i = 0; i < L; i++) levels[i] = i < k ? s->main_tuple[w - k + i] : W;
        return;
    }
    int o = s->rate * (k - w);
    *n_set = o < L ? o : L;
    for (int i = 0; i < L; i++) levels[i] = i < o ? 0 : (i < o + w ? s->main_tuple[i - o] : W);
}

// Levels of the `block` schedule (method §2.3): block blk walks through τ-1 … 0, earlier blocks are settled.
static void block_levels(const hdlm_schedule *s, int k, int *levels, int *n_set) {
    int L = s->length, w = s->width, tau = s->tau;
    int blk = (k - 1) / tau, step_in_block = k - blk * tau;
    long start = (long)blk * w, end = start + w;
    *n_set = start < L ? (int)start : L;
    for (int i = 0; i < L; i++) levels[i] = i < start ? 0 : (i < end ? tau - step_in_block : tau);
}

// Sub-steps per block of the `hybrid` schedule: τ + min(ω, L) − 1, the first block's size as in the reference
// (method §2.5; with ω > L the one block is only L long).
static int64_t hybrid_period(const hdlm_schedule *s) {
    return (int64_t)s->tau + (s->width < s->length ? s->width : s->length) - 1;
}

// Levels of the `hybrid` schedule (method §2.5): a diagonal sweep of hybrid_period sub-steps in each block.
static void hybrid_levels(const hdlm_schedule *s, int k, int *levels, int *n_set) {
    int L = s->length, w = s->width, tau = s->tau;
    int period = (int)hybrid_period(s), k_last = period * ceil_div(L, w);   // fit: hdlm_schedule_init checked K_max
    if (k < 1) k = 1;
    if (k > k_last) k = k_last;
    int b = (k - 1) / period, sub = (k - 1) % period;
    long start = (long)b * w, end = start + w;
    *n_set = start < L ? (int)start : L;
    for (int i = 0; i < L; i++) {
        if (i < start) levels[i] = 0;
        else if (i >= end) levels[i] = tau;
        else {
            int lag = sub - (int)(i - start);
            int level = (tau - 1) - (lag > 0 ? lag : 0);
            levels[i] = level > 0 ? level : 0;
        }
    }
}

void hdlm_schedule_levels(const hdlm_schedule *s, int k, int *levels, int *n_set) {
    HDLM_ASSERT(k >= 1 && k < s->k_max, "step %d outside 1..%d", k, s->k_max - 1);
    switch (s->type) {
    case HDLM_SCHEDULE_BLOCK: block_levels(s, k, levels, n_set); break;
    case HDLM_SCHEDULE_SIMPLE: simple_levels(s, k, levels, n_set); break;
    case HDLM_SCHEDULE_HYBRID: hybrid_levels(s, k, levels, n_set); break;
    }
}

// `simple` K_max: one past the first step at which every level is 0; the reference scans k = 1 … L+τ+ω (method §2.4).
static int64_t simple_k_max(const hdlm_schedule *s) {
    int64_t limit = (int64_t)s->length + s->tau + s->width;
    int *levels = hdlm_malloc((size_t)s->length * sizeof *levels);
    int64_t k_max = limit;
    int n_set;
    for (int64_t k = 1; k <= limit && k_max == limit; k++) {
        simple_levels(s, k, levels, &n_set);
        int all_zero = 1;
        for (int i = 0; i < s->length && all_zero; i++) all_zero = levels[i] == 0;
        if (all_zero) k_max = k + 1;
    }
    free(levels);
    return k_max;
}

int hdlm_schedule_init(hdlm_schedule *s, hdlm_schedule_type type, int length, int width, int tau, double sampling_eps,
                       hdlm_context_type context, hdlm_block_type block) {
    memset(s, 0, sizeof *s);
    HDLM_CHECK(type == HDLM_SCHEDULE_BLOCK || type == HDLM_SCHEDULE_SIMPLE || type == HDLM_SCHEDULE_HYBRID,
               "annealing.type: unknown schedule type %d", (int)type);
    HDLM_CHECK(length >= 1, "model.length must be >= 1, got %d", length);
    // τ = 1 makes Δ = (1-2ε_a)/(W-1) a division by zero (method §2.6, §11 item 24).
    HDLM_CHECK(tau >= 2, "annealing.tau must be >= 2 (tau = 1 leaves a one-point time grid), got %d", tau);
    HDLM_CHECK(width >= 1, "annealing.width must be >= 1, got %d", width);
    // simple with ω = 1 never settles anything (the reference's "some step starts with 0" assertion, §11 item 24).
    HDLM_CHECK(type != HDLM_SCHEDULE_SIMPLE || width >= 2,
               "annealing.width must be >= 2 for the simple schedule (width 1 never settles a token), got %d", width);
    HDLM_CHECK(sampling_eps > 0 && 10 * sampling_eps < 0.5,
               "annealing.sampling_eps must be in (0, 0.05) so that the active grid [10*eps, 1-10*eps] is not empty, "
               "got %g", sampling_eps);
    HDLM_CHECK(context == HDLM_CONTEXT_BLOCK_CAUSAL || context == HDLM_CONTEXT_CAUSAL || context == HDLM_CONTEXT_FULL,
               "annealing.attention.context_type: unknown value %d", (int)context);
    HDLM_CHECK(block == HDLM_BLOCK_FULL || block == HDLM_BLOCK_CAUSAL,
               "annealing.attention.block_type: unknown value %d", (int)block);
    s->type = type;
    s->length = length;
    s->width = width;
    s->tau = tau;
    s->sampling_eps = sampling_eps;
    s->context = context;
    s->block = block;
    s->worthless_level = tau;
    // K_max in 64 bits, refused past INT_MAX: a step index must fit an int everywhere it travels.
    int64_t blocks = ((int64_t)length + width - 1) / width, k_max = 0;
    switch (type) {
    case HDLM_SCHEDULE_BLOCK: k_max = (int64_t)tau * blocks + 1; break;
    case HDLM_SCHEDULE_HYBRID: k_max = hybrid_period(s) * blocks + 1; break;
    case HDLM_SCHEDULE_SIMPLE:
        s->main_tuple = hdlm_malloc((size_t)width * sizeof *s->main_tuple);
        simple_main_tuple(width, tau, s->main_tuple);
        while (s->rate < width && s->main_tuple[s->rate] == 0) s->rate++;
        k_max = simple_k_max(s);
        break;
    }
    if (k_max > INT_MAX) {
        hdlm_schedule_free(s);
        return HDLM_FAIL("the %s schedule with L = %d, annealing.width = %d, annealing.tau = %d has %lld steps, more "
                         "than %d: use a smaller tau or a wider block", hdlm_schedule_type_name(type), length, width,
                         tau, (long long)k_max - 1, INT_MAX - 1);
    }
    s->k_max = (int)k_max;
    return 0;
}

void hdlm_schedule_free(hdlm_schedule *s) {
    free(s->main_tuple);
    s->main_tuple = NULL;
}

static const char *schedule_names[] = {"block", "simple", "hybrid"};
static const char *context_names[] = {"block_causal", "causal", "full"};
static const char *block_names[] = {"full", "causal"};

static int parse_name(const char *name, const char *field, const char **names, int n, int *out) {
    for (int i = 0; i < n; i++)
        if (name && strcmp(name, names[i]) == 0) {
            *out = i;
            return 0;
        }
    char expected[128] = "";
    for (int i = 0; i < n; i++) {
        strcat(expected, i ? (i == n - 1 ? " or " : ", ") : "");
        strcat(expected, names[i]);
    }
    return HDLM_FAIL("%s: expected %s, got '%s'", field, expected, name ? name : "(null)");
}

int hdlm_schedule_type_parse(const char *name, const char *field, hdlm_schedule_type *type) {
    int v = 0;
    HDLM_TRY(parse_name(name, field, schedule_names, 3, &v));
    *type = (hdlm_schedule_type)v;
    return 0;
}

const char *hdlm_schedule_type_name(hdlm_schedule_type type) {
    return (unsigned)type < 3 ? schedule_names[type] : "unknown";
}

int hdlm_context_type_parse(const char *name, const char *field, hdlm_context_type *type) {
    int v = 0;
    HDLM_TRY(parse_name(name, field, context_names, 3, &v));
    *type = (hdlm_context_type)v;
    return 0;
}

int hdlm_block_type_parse(const char *name, const char *field, hdlm_block_type *type) {
    int v = 0;
    HDLM_TRY(parse_name(name, field, block_names, 2, &v));
    *type = (hdlm_block_type)v;
    return 0;
}

double hdlm_schedule_active_eps(const hdlm_schedule *s) { return 10.0 * s->sampling_eps; }

double hdlm_schedule_delta(const hdlm_schedule *s) {
    return (1.0 - 2.0 * hdlm_schedule_active_eps(s)) / (s->worthless_level - 1);
}

static float clamp_time(const hdlm_schedule *s, float t) {
    float lo = (float)s->sampling_eps, hi = (float)(1.0 - s->sampling_eps);
    return t < lo ? lo : (t > hi ? hi : t);
}

// Float32 arithmetic as in the reference (method §2.6).
float hdlm_schedule_level_time(const hdlm_schedule *s, int level) {
    return clamp_time(s, (float)hdlm_schedule_active_eps(s) + (float)level * (float)hdlm_schedule_delta(s));
}

void hdlm_step_alloc(hdlm_step *st, int length) {
    memset(st, 0, sizeof *st);
    st->length = length;
    st->level = hdlm_malloc((size_t)length * sizeof *st->level);
    st->t = hdlm_malloc((size_t)length * sizeof *st->t);
    st->cls = hdlm_malloc((size_t)length);
    st->to_denoise = hdlm_malloc((size_t)length);
    st->weight = hdlm_malloc((size_t)length * sizeof *st->weight);
}

void hdlm_step_free(hdlm_step *st) {
    free(st->level);
    free(st->t);
    free(st->cls);
    free(st->to_denoise);
    free(st->weight);
    memset(st, 0, sizeof *st);
}

// Classes, times, weights and the active range of st from its levels and n_set (method §2.6).
static void step_fill(const hdlm_schedule *s, hdlm_step *st) {
    int W = s->worthless_level;
    st->width = s->width;
    st->a_end = st->n_set - 1;
    float t_settled = clamp_time(s, (float)s->sampling_eps), t_worthless = clamp_time(s, (float)(1 - s->sampling_eps));
    for (int i = 0; i < st->length; i++) {
        st->to_denoise[i] = 0;
        if (i < st->n_set) {
            st->cls[i] = HDLM_POS_SETTLED;
            st->t[i] = t_settled;
            st->weight[i] = 0.05f;
        } else if (st->level[i] == W) {
            st->cls[i] = HDLM_POS_WORTHLESS;
            st->t[i] = t_worthless;
            st->weight[i] = 0.001f;
        } else {
            // Active positions are contiguous after the settled prefix for every built-in schedule (method §3.2).
            HDLM_ASSERT(st->a_end == i - 1, "active positions of step %d are not contiguous at %d", st->step, i);
            st->cls[i] = HDLM_POS_ACTIVE;
            st->t[i] = hdlm_schedule_level_time(s, st->level[i]);
            st->weight[i] = 1.0f;
            st->to_denoise[i] = st->level[i] == 0;
            st->a_end = i;
        }
    }
    st->n_active = st->a_end - st->n_set + 1;
}

int hdlm_schedule_step(const hdlm_schedule *s, int k, hdlm_step *st) {
    HDLM_CHECK(k >= 1 && k < s->k_max, "hyperschedule step %d outside the range 1..%d", k, s->k_max - 1);
    HDLM_ASSERT(st->length == s->length, "step buffer of length %d for a schedule of length %d", st->length,
                s->length);
    hdlm_schedule_levels(s, k, st->level, &st->n_set);
    st->step = k;
    step_fill(s, st);
    hdlm_attn_mask m = {s->length, st->n_set, st->a_end, s->context, s->block, s->width, 0};
    st->mask = m;
    return 0;
}

int hdlm_schedule_two_copy_check(const hdlm_schedule *s) {
    HDLM_CHECK(s->type == HDLM_SCHEDULE_BLOCK,
               "the two-copy layout (annealing.efficient, the block estimator) needs annealing.type = block, got %s",
               hdlm_schedule_type_name(s->type));
    HDLM_CHECK(s->width <= s->length && s->length % s->width == 0,
               "the two-copy layout (annealing.efficient, the block estimator): model.length = %d must be a multiple "
               "of annealing.width = %d", s->length, s->width);
    return 0;
}

int hdlm_schedule_two_copy_blocks(const hdlm_schedule *s) { return s->length / s->width; }

// Block b's step is uniform in [bτ + 1, min((b + 1)τ + 1, K_max)): its level τ − (k − bτ) uniform in {0 … τ−1}.
void hdlm_schedule_sample_block_steps(const hdlm_schedule *s, uint64_t seed, uint64_t stream, uint64_t micro_step,
                                      int *block_steps) {
    hdlm_rng rng;
    hdlm_rng_init(&rng, hdlm_rng_key(seed, stream, micro_step, HDLM_RNG_STEP));
    for (int b = 0; b < hdlm_schedule_two_copy_blocks(s); b++) {
        int first = b * s->tau + 1, end = (b + 1) * s->tau + 1 < s->k_max ? (b + 1) * s->tau + 1 : s->k_max;
        block_steps[b] = first + (int)hdlm_rng_below(&rng, (uint64_t)(end - first));
    }
}

int hdlm_schedule_two_copy_step(const hdlm_schedule *s, const int *block_steps, int *scratch, hdlm_step *st) {
    HDLM_TRY(hdlm_schedule_two_copy_check(s));
    int L = s->length, w = s->width;
    HDLM_ASSERT(st->length == 2 * L, "step buffer of length %d for the two-copy layout of length %d", st->length,
                2 * L);
    for (int b = 0; b < hdlm_schedule_two_copy_blocks(s); b++) {
        int k = block_steps[b], n_set;
        HDLM_CHECK(k >= b * s->tau + 1 && k < s->k_max && k <= (b + 1) * s->tau,
                   "two-copy block %d: step %d is not one of the block's steps %d..%d", b, k, b * s->tau + 1,
                   (b + 1) * s->tau);
        hdlm_schedule_levels(s, k, scratch, &n_set);
        memcpy(st->level + L + b * w, scratch + b * w, (size_t)w * sizeof(int));
    }
    for (int i = 0; i < L; i++) st->level[i] = 0;
    st->step = 0;
    st->n_set = L;
    step_fill(s, st);
    st->mask = hdlm_mask_two_copy(L, w, s->context, s->block);
    return 0;
}

void hdlm_mask_expand(const hdlm_attn_mask *m, uint8_t *allowed) {
    int L = m->length;
    for (int i = 0; i < L; i++)
        for (int j = 0; j < L; j++) allowed[(size_t)i * L + j] = hdlm_mask_allowed(m, i, j);
}

void hdlm_schedule_sample_steps(const hdlm_schedule *s, hdlm_step_sampling mode, uint64_t seed, uint64_t rank,
                                uint64_t micro_step, int batch, int *steps) {
    hdlm_rng rng;
    hdlm_rng_init(&rng, hdlm_rng_key(seed, rank, micro_step, HDLM_RNG_STEP));
    uint64_t n = (uint64_t)(s->k_max - 1);   // uniform over 1 .. K_max-1 (numpy randint(1, K_max))
    int shared = 1 + (int)hdlm_rng_below(&rng, n);
    for (int b = 0; b < batch; b++)
        steps[b] = mode == HDLM_STEPS_PER_BATCH ? shared : (b == 0 ? shared : 1 + (int)hdlm_rng_below(&rng, n));
}

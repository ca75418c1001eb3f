// hdlm/schedule.h — hyperschedules (method §2): level vectors per step, the level → time map, position classes,
// γ position weights, the attention mask of a step (§3.2) and step sampling (§2.7).
//
// One code path covers every configuration: plain diffusion is `block` with ω >= L, block-autoregression is `block`
// with 1 < ω < L and autoregression is `simple` with ω = τ = 2 (method §2.8). Levels run from τ-1 (noisiest active
// level) down to 0 (must be clean now); level W = τ means "not started" (worthless).
// Shape letters: B = sequences in a micro-batch, L = sequence length.
#ifndef HDLM_SCHEDULE_H
#define HDLM_SCHEDULE_H

#include <stdint.h>

#include "hdlm/mask.h"
#include "hdlm/rng.h"

typedef enum { HDLM_SCHEDULE_BLOCK = 0, HDLM_SCHEDULE_SIMPLE = 1, HDLM_SCHEDULE_HYBRID = 2 } hdlm_schedule_type;

// Per-position class at one step (method §2.1).
typedef enum { HDLM_POS_SETTLED = 0, HDLM_POS_ACTIVE = 1, HDLM_POS_WORTHLESS = 2 } hdlm_pos_class;

// Default ε_s (`annealing.sampling_eps`); ε_a = 10·ε_s.
#define HDLM_SAMPLING_EPS 1e-4

typedef struct {
    hdlm_schedule_type type;
    int length;             // L
    int width;              // ω
    int tau;                // τ: number of noise levels
    double sampling_eps;    // ε_s
    hdlm_context_type context;   // attention rule among settled positions (§3.2)
    hdlm_block_type block;       // attention rule among active positions
    // Derived by hdlm_schedule_init:
    int worthless_level;    // W = τ
    int k_max;              // steps used are 1 .. k_max-1
    int rate;               // `simple`: tokens settled per step once the diagonal is inside (z); else 0
    int *main_tuple;        // `simple`: M_0..M_{ω-1} (§2.4); NULL otherwise
} hdlm_schedule;

// Validates the parameters (τ >= 2; ω >= 2 for `simple`, ω >= 1 otherwise; L >= 1; 0 < ε_s, 10·ε_s < 0.5) and derives
// W, K_max and, for `simple`, the main tuple. context/block select the mask rules (defaults: block_causal / full).
int hdlm_schedule_init(hdlm_schedule *s, hdlm_schedule_type type, int length, int width, int tau, double sampling_eps,
                       hdlm_context_type context, hdlm_block_type block);
void hdlm_schedule_free(hdlm_schedule *s);

// "block" / "simple" / "hybrid" (the config value `annealing.type`); anything else is refused naming `field`.
int hdlm_schedule_type_parse(const char *name, const char *field, hdlm_schedule_type *type);
const char *hdlm_schedule_type_name(hdlm_schedule_type type);
int hdlm_context_type_parse(const char *name, const char *field, hdlm_context_type *type);
int hdlm_block_type_parse(const char *name, const char *field, hdlm_block_type *type);

// ε_a = 10·ε_s and the grid spacing Δ = (1 - 2ε_a)/(W - 1) (method §2.6), in double precision.
double hdlm_schedule_active_eps(const hdlm_schedule *s);
double hdlm_schedule_delta(const hdlm_schedule *s);
// The float32 time of an active position at `level` (ε_a + level·Δ, clamped into [ε_s, 1-ε_s]).
float hdlm_schedule_level_time(const hdlm_schedule *s, int level);

// Levels of step k (1 <= k < K_max) by the closed forms of §2.3-§2.5: levels[L], *n_set.
void hdlm_schedule_levels(const hdlm_schedule *s, int k, int *levels, int *n_set);

// Everything a step means for the forward process, the losses and the model (method §2.6, §3.2). All arrays have L
// entries and are owned by the struct.
typedef struct {
    int step;                // k
    int length;              // L
    int width;               // ω (block weights of the γ settled-prefix CE, §5.6)
    int n_set;               // settled prefix [0, n_set)
    int a_end;               // last active position (n_set - 1 when none)
    int n_active;            // |A| = a_end - n_set + 1
    int *level;              // ℓ_i
    float *t;                // t_i (float32, clamped)
    uint8_t *cls;            // hdlm_pos_class
    uint8_t *to_denoise;     // active with level 0 (t_i == ε_a)
    float *weight;           // γ position weight: settled 0.05, worthless 0.001, active 1.0
    hdlm_attn_mask mask;     // compact attention mask of the step
} hdlm_step;

void hdlm_step_alloc(hdlm_step *st, int length);
void hdlm_step_free(hdlm_step *st);
// Fills st for step k of schedule s (1 <= k < K_max, else -1 naming the range).
int hdlm_schedule_step(const hdlm_schedule *s, int k, hdlm_step *st);

// ---- the two-copy training layout (method §2.10, §3.3) ----
// One sequence as [clean x; noisy x] of length 2L, every ω-block of the noisy copy at its own level: one forward
// trains all L/ω blocks. `block` schedule only, L a multiple of ω (refused with a message naming the keys).
int hdlm_schedule_two_copy_check(const hdlm_schedule *s);
int hdlm_schedule_two_copy_blocks(const hdlm_schedule *s);   // L / ω
// block_steps[L/ω]: block b's step k_b drawn uniformly from [bτ + 1, min((b + 1)τ + 1, K_max)), i.e. a level
// uniform in {0 … τ−1} independently per block, from the stream keyed by (seed, stream, micro_step, HDLM_RNG_STEP).
void hdlm_schedule_sample_block_steps(const hdlm_schedule *s, uint64_t seed, uint64_t stream, uint64_t micro_step,
                                      int *block_steps);
// The step of length 2L (st allocated for 2L; scratch holds L ints): the clean copy settled (levels 0), block b of
// the noisy copy at the levels of step block_steps[b] over its positions, the mask hdlm_mask_two_copy. st->step = 0.
int hdlm_schedule_two_copy_step(const hdlm_schedule *s, const int *block_steps, int *scratch, hdlm_step *st);

// The explicit L x L expansion of a compact mask: allowed[i*L + j] = 1 when query i may attend key j (rules 1-3 of
// §3.2). Fully-masked (worthless) rows are left all 0; the attention kernel turns them into uniform rows.
void hdlm_mask_expand(const hdlm_attn_mask *m, uint8_t *allowed);

// Step sampling (method §2.7). HDLM_STEPS_PER_BATCH is the reference: one k for the whole micro-batch of this rank;
// HDLM_STEPS_PER_SEQUENCE draws one k per sequence (§11 item 2). steps[B] receives k in [1, K_max-1].
// The draws come from the stream keyed by (seed, rank, micro_step, HDLM_RNG_STEP) — micro_step counts loss calls,
// so every micro-batch of an accumulation window gets its own k — and never depend on the thread count.
typedef enum { HDLM_STEPS_PER_BATCH = 0, HDLM_STEPS_PER_SEQUENCE = 1 } hdlm_step_sampling;
void hdlm_schedule_sample_steps(const hdlm_schedule *s, hdlm_step_sampling mode, uint64_t seed, uint64_t rank,
                                uint64_t micro_step, int batch, int *steps);

#endif

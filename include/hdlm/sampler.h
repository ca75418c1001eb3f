// hdlm/sampler.h — generation (method §6): the ε samplers (MDLM ancestral, ACS, and a hyperschedule walker for ω < L),
// the γ analytic sampler (NAR and SAR forms) and ARDM budgeted generation (method §13 A.5).
//
// Samplers see the network through hdlm_denoiser: a callback that maps tokens [B, n] (+ γ σ [B, n], + an attention
// mask) to outputs [B, n, V] (ε logits, γ log-scores). hdlm_denoiser_model() wraps a model; tests wrap hand-set
// outputs so the sampler's distribution is known exactly.
//
// Randomness: sequence number `first_sample + b` at step j draws from the stream keyed by
// hdlm_rng_key(seed, first_sample + b, j, HDLM_RNG_SAMPLE), position i of it (the schedule samplers, ancestral and
// ACS) from that stream's blocks i·2^32 on, so a sample depends only on (seed, its number) and not on the batch it was
// generated in, the number of ranks or of threads (the positions of a step draw in parallel).
// Token ids: 0..V-2 real tokens (N = V-1), V-1 MASK.
#ifndef HDLM_SAMPLER_H
#define HDLM_SAMPLER_H
#include <stdbool.h>
#include <stdint.h>
#include "hdlm/mask.h"
#include "hdlm/model.h"
#include "hdlm/schedule.h"

typedef struct hdlm_denoiser {
    int vocab;    // V (MASK = V-1)
    // Outputs [batch, length, V] for tokens [batch, length] (positions 0..length-1), σ [batch, length] (γ; NULL for ε)
    // and mask (NULL: full attention). *out stays valid until the next call.
    int (*forward)(struct hdlm_denoiser *d, const uint32_t *tokens, const float *sigma, const hdlm_attn_mask *mask,
                   int batch, int length, const float **out);
    void *ctx;           // the forward's own state
    hdlm_model *model;   // the wrapped model (hdlm_denoiser_model), needed by the KV-cached path; NULL otherwise
    struct hdlm_kv_cache_s *kv;   // the KV-cached path's packed weights and buffers, made at its first use
    // Set by hdlm_denoiser_forward_rows for one forward: only the output rows r with rows_read[r] != 0 will be read
    // (the others may hold anything). hdlm_denoiser_model runs its output layer on those rows alone; NULL: every row.
    const uint8_t *rows_read;
} hdlm_denoiser;

// d->forward, telling the denoiser that only the output rows r with read[r] != 0 will be read (read NULL: every row):
// the likelihood estimators and the ancestral sampler read the masked rows alone, and the output layer is most of a
// small model's forward.
int hdlm_denoiser_forward_rows(hdlm_denoiser *d, const uint8_t *read, const uint32_t *tokens, const float *sigma,
                               const hdlm_attn_mask *mask, int batch, int length, const float **out);

// A denoiser that runs hdlm_model_forward (eval mode, no dropout). Its first forward packs the output layer's weight,
// and the KV-cached path's first call every linear weight, and keeps them, with the cache's buffers, for every later
// call until hdlm_denoiser_free (which every denoiser made here needs): the weights must not change in between (make
// a new denoiser after they do).
hdlm_denoiser hdlm_denoiser_model(hdlm_model *model);
void hdlm_denoiser_free(hdlm_denoiser *d);

typedef enum {
    HDLM_SAMPLER_ANCESTRAL = 0,   // ε full_diff `original` (method §6.2)
    HDLM_SAMPLER_ACS = 1,         // ε full_diff `acs` (method §6.3)
    HDLM_SAMPLER_GAMMA_NAR = 2,   // γ analytic sampler over the hyperschedule (method §6.7)
    HDLM_SAMPLER_GAMMA_SAR = 3,   // its SAR form (method §6.8)
    HDLM_SAMPLER_WALK = 4,        // ε hyperschedule walker with the training masks (extension, §11 item 19)
    HDLM_SAMPLER_AR = 5,          // next-token sampling of an AR model (training.objective = ar): L calls
} hdlm_sampler_kind;

// γ score at the current token (decision §14.2): parity keeps the network's value; sedd sets it to exp(0) = 1.
typedef enum { HDLM_GAMMA_SCORE_SEDD = 0, HDLM_GAMMA_SCORE_PARITY = 1 } hdlm_gamma_score_convention;

typedef struct {
    hdlm_sampler_kind kind;
    int steps;                 // ancestral / ACS: number of steps n (γ and walk: the schedule decides, K_max - 1;
                               // ar: the length, one call per token)
    double eta;                // ACS / walk: correction strength η (0.01)
    double temperature;        // ε samplers: T (1.0)
    bool exclude_mask;         // ε samplers: never draw MASK (§11 item 20); off = reference behaviour
    double gamma;              // γ samplers: graph γ
    hdlm_gamma_score_convention score_convention;
    const hdlm_schedule *schedule;   // γ and walk samplers: the (eval) hyperschedule
    // Prompt: where prompt_mask[i] is non-zero, position i holds prompt[i] from the start and after every step
    // (prefix conditioning: a prefix of ones; infilling: any pattern). Both NULL: unconditional.
    const uint32_t *prompt;
    const uint8_t *prompt_mask;
    uint64_t seed;
    // walk / γ samplers on a model denoiser: keep settled blocks' K/V and run only the active positions (method §3.5,
    // src/model/kv_cache.h); needs the block schedule with the block_causal context. ar: keep every earlier
    // position's K/V and run one row per call. The same tokens as without: the cached rows have the uncached bits.
    bool kv_cache;
    // Truncated draws from the network's softmax (ε samplers, ar, ardm; the γ samplers refuse them, their transition
    // is not one softmax): top_k > 0 keeps the k most probable entries, then top_p in (0, 1) the smallest set of the
    // most probable ones whose probability reaches top_p (nucleus); ties at the cut are kept. 0 = off.
    int top_k;
    double top_p;
    // End of text (ar: generation ends once every sequence of the batch has drawn it, a saving of calls): when set,
    // every position after the first stop_token that follows the last prompt position becomes stop_token.
    bool stop;
    uint32_t stop_token;
} hdlm_sampler_config;

// Refuses inconsistent configurations (steps < 1, η outside [0, 1], T <= 0, top-k/top-p out of range or on a γ sampler,
// stop_token >= V-1, missing schedule, prompt ids >= V-1,
// schedule length != length, a KV cache without the block schedule and block_causal context) naming the field.
int hdlm_sampler_check(const hdlm_sampler_config *cfg, int vocab, int length);
// Whether cfg->kv_cache may be set: the ar sampler, or walk / γ on the block schedule with the block_causal context.
bool hdlm_sampler_kv_cache_applies(const hdlm_sampler_config *cfg);
const char *hdlm_sampler_kind_name(hdlm_sampler_kind kind);
int hdlm_sampler_kind_parse(const char *name, const char *field, hdlm_sampler_kind *kind);
// Number of network calls one batch takes.
int hdlm_sampler_calls(const hdlm_sampler_config *cfg);

// Generates `batch` sequences of `length` tokens into x[batch*length] (samples first_sample .. first_sample+batch-1).
// progress (may be NULL) is called after every network call with (calls done, calls total).
typedef void (*hdlm_sampler_progress)(void *ctx, int done, int total);
int hdlm_sample(const hdlm_sampler_config *cfg, hdlm_denoiser *d, int batch, int length, uint64_t first_sample,
                uint32_t *x, hdlm_sampler_progress progress, void *progress_ctx);

// One categorical draw from softmax(z/T) over z[0..width), by inversion of the CDF with one uniform (method §6.1:
// any exact categorical sampler gives the reference's distribution; this one needs one draw instead of V). The
// weights are fp32 (vectorised exp, scratch[width] receives them), the CDF is summed in float64.
uint32_t hdlm_sample_softmax(const float *z, int width, double temperature, float *scratch, hdlm_rng *rng);
// A draw ∝ max(w_y, 0) over w[0..n) (method §6.1), one uniform, float64 sums over chunks of 1024 entries (more when
// n > 256 Ki) then inside the chosen chunk: entries <= 0 are never chosen; when all are <= 0 the largest entry is
// returned (no draw).
uint32_t hdlm_sample_weights(const float *w, int n, hdlm_rng *rng);
// Top-k / nucleus truncation of weights w[0..n) (unnormalised probabilities, entries <= 0 never drawn): sets to 0 every
// entry outside the k largest (top_k > 0; ties with the k-th kept), then outside the smallest set of largest entries
// whose sum reaches top_p of the total (0 < top_p < 1; ties at the cut kept). Expected O(n): selection, no sort;
// work[n] is scratch.
void hdlm_truncate_weights(float *w, int n, int top_k, double top_p, float *work);
// The length of sequence x[0..length) up to and including its first stop_token after the last prompt position
// (cfg->stop), or length when there is none or cfg->stop is off.
int hdlm_sampler_stop_length(const hdlm_sampler_config *cfg, const uint32_t *x, int length);

// ---- ARDM budgeted generation (method §13 A.5) ----
// Policy DP: L[0..D) per-step losses (the caller's values; sorted descending first, as the reference does), budget K
// (1 <= K <= D). `strict` restricts predecessors to k-1 <= u <= v-1 (every entry distinct, the recommended default);
// otherwise the reference's argmin rule (smallest u over 0..v). policy[K] receives p_0..p_{K-1}; returns the cost
// C[K][D] = Σ_j (p_{j+1}-p_j)·L_{p_j}.
double hdlm_ardm_policy_dp(const double *L, int D, int K, bool strict, int *policy);
// Σ_j (p_{j+1} - p_j)·L_{p_j}, p_K = D (A.5.4).
double hdlm_ardm_policy_cost(const double *L, int D, const int *policy, int K);
// Naive policy p_j = round_half_even(j·D/K) (A.5.4).
void hdlm_ardm_policy_naive(int D, int K, int *policy);
// The policy of budget K over L steps (method §13 A.5): with losses_path (L numbers L_0..L_{L-1}, one per line, the
// --losses flag) the strict DP optimum of the losses sorted descending (logged with its cost), else (NULL) the naive
// policy.
int hdlm_ardm_policy_load(const char *losses_path, int L, int K, int *policy);
// Sampling with a policy (A.5.4): per sequence a fresh random order r; call j runs one forward on the current input
// (unknown positions = MASK) and draws every position with p_j <= r_i < p_{j+1} from its softmax over the N real
// tokens (MASK excluded, decision A.3.3). Prompt positions of cfg are known from the start (they come first in the
// order). cfg->seed and cfg->temperature are used.
int hdlm_ardm_sample(const hdlm_sampler_config *cfg, const int *policy, int K, hdlm_denoiser *d, int batch, int length,
                     uint64_t first_sample, uint32_t *x);

#endif

// hdlm/likelihood.h — likelihood estimators (method §9.1, A.6) and the unigram entropy of samples (method §9.3).
//
// Which number bounds what (§11 item 8, docs/evaluation.md):
//  - HDLM_NELBO_MASKING (the reference's estimator, §9.1): the continuous-time NELBO of a pure masking process with
//    α(t) = 1 - t. For an ε model it is a valid upper bound on -log p under the model's *masking-only* reverse process
//    (it ignores the ε uniform component); for a γ model it is NOT a bound (log-scores used as logits, σ ≡ 1e-3) and is
//    reported only for parity with the reference. Token count L-1 per chunk while L positions are scored (§11 item 10).
//  - HDLM_NELBO_ARDM (A.6 mode 1): the stochastic order-agnostic ARDM bound, a valid upper bound for ARDM-trained models
//    (and any network without time input); L tokens per chunk, softmax over the N real tokens.
//  - HDLM_NELBO_ARDM_POLICY / _ORDER (A.6 modes 3, 4): the same network used as the K-call parallel model of a policy
//    (method §13 A.5): upper bounds on -log p of that model (the mixture over orders); ORDER's every copy is the exact
//    -log p(x | order, policy). K forwards per round; L tokens per chunk.
//  - HDLM_NLL_AR: the exact -log p(x) of a next-token (training.objective = ar) model: one causal forward on the chunk
//    shifted right after the start token (hdlm_ar_inputs, start = V - 2, <|endoftext|>), softmax over the N real
//    tokens; L tokens per chunk, no Monte-Carlo error (copies and rounds unused).
//  - HDLM_NELBO_BLOCK: the block-autoregressive bound of a model trained on the block schedule at ω < L (block
//    diffusion, BD3-LM's bound): Σ_b of the masking NELBO of block b given the clean blocks before it, every block
//    at its own stratified time, all blocks of a copy in one forward of the two-copy layout (method §2.10, §3.3). A
//    valid upper bound on -log p of the ε model's masking-only block-wise process; L tokens per chunk.
// Randomness: chunk c, round r draws from hdlm_rng_key(seed, c, r, HDLM_RNG_EVAL), so a chunk's estimate depends only on
// (seed, c): the result does not depend on how chunks are split over ranks or batched.
#ifndef HDLM_LIKELIHOOD_H
#define HDLM_LIKELIHOOD_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "hdlm/dataset.h"
#include "hdlm/sampler.h"

typedef enum {
    HDLM_NELBO_MASKING = 0,
    HDLM_NELBO_ARDM = 1,          // A.6 mode 1
    HDLM_NELBO_ARDM_POLICY = 2,   // A.6 mode 3: NELBO of the K-call parallel model (policy), averaged over orders
    HDLM_NELBO_ARDM_ORDER = 3,    // A.6 mode 4: exact -log p(x | order, policy), one random order per copy
    HDLM_NLL_AR = 4,              // exact next-token -log p(x) of an AR model
    HDLM_NELBO_BLOCK = 5,         // block-autoregressive masking NELBO (block diffusion)
} hdlm_nelbo_kind;

typedef struct {
    hdlm_nelbo_kind kind;
    int copies;          // noisy copies per round (reference 16)
    int rounds;          // Monte-Carlo rounds (reference ⌊100/16⌋ = 6)
    double floor;        // masking: p_b = (1 - floor)·t_b + floor (reference 1e-3)
    bool sigma_input;    // γ model: condition every token on σ = sigma (reference 1e-3)
    double sigma;
    uint64_t seed;
    uint64_t max_chunks;   // score only the first max_chunks chunks of the data set (0: all)
    const int *policy;     // ARDM_POLICY / ARDM_ORDER: p_0 = 0 <= p_1 <= ... <= p_{K-1} < L (method §13 A.5.1)
    int budget;            // K
    const int *order;      // ARDM_POLICY / ARDM_ORDER: NULL (a fresh uniform order per copy), or one fixed order for
                           // every copy, order[r] = the position generated r-th (a codec's: ORDER is then its code length)
    const hdlm_schedule *schedule;   // BLOCK: the block schedule of the chunk length (ω, context and block rules)
} hdlm_nelbo_config;

// The reference's defaults: masking, 16 copies, 6 rounds, floor 1e-3, σ 1e-3 (γ only), seed 0.
hdlm_nelbo_config hdlm_nelbo_config_default(bool gamma_family);
int hdlm_nelbo_config_check(const hdlm_nelbo_config *cfg);
const char *hdlm_nelbo_kind_name(hdlm_nelbo_kind kind);

// One masking round on given masks (method §9.1): copies b = 0..C-1 of x, masked[b*L + i] != 0 → MASK, masking
// probability p[b]. Returns (1/C)·Σ_b Σ_{i masked} CE(z_{b,i}, x_i)/p_b (CE over all V entries) in *value.
int hdlm_nelbo_masking_round(hdlm_denoiser *d, const hdlm_nelbo_config *cfg, const uint32_t *x, int length,
                             const uint8_t *masked, const double *p, double *value);

// One chunk: *nll = mean over counted rounds (nats, whole chunk), *var = the Monte-Carlo variance of that mean
// (sample variance of the rounds / rounds counted, 0 with one round), *counted = rounds counted (masking rounds
// where nothing was masked are skipped, as in the reference).
int hdlm_nelbo_chunk(hdlm_denoiser *d, const hdlm_nelbo_config *cfg, const uint32_t *x, int length, uint64_t chunk,
                     double *nll, double *var, int *counted);

// Both policy estimators of method §13 A.6 (modes 3 and 4) from the same K forwards: copies b = 0..C-1 of x, copy b
// with its own generation order rank[b·L + i] (the place of position i; a permutation of 0..L-1). Call j (skipped when
// its segment [p_j, p_{j+1}) is empty) runs one forward on the copies with the positions of rank < p_j known and the
// others MASK; CE over the N real tokens (MASK excluded, A.3.3), nats. Per copy:
//   policy_nll[b] = Σ_j (p_{j+1} - p_j)/(L - p_j) · Σ_{rank_i >= p_j} CE_i   (A.5.4: every masked position stands
//                   for the segment's tokens, eq. 3; its mean over orders is the policy NELBO C(p) on x)
//   order_nll[b]  = Σ_j Σ_{p_j <= rank_i < p_{j+1}} CE_i                    (-log p(x | order, policy), the code
//                   length of A.7; the same mean over orders)
int hdlm_ardm_policy_nll(hdlm_denoiser *d, const uint32_t *x, int length, int copies, const int *rank,
                         const int *policy, int budget, double *policy_nll, double *order_nll);

typedef struct {
    uint64_t chunks;
    uint64_t tokens;      // denominator: chunks·(L-1) (masking, parity) or chunks·L (ARDM)
    double nll;           // Σ_chunks nll (nats)
    double bound;         // nll / tokens, nats per token
    double std_error;     // its Monte-Carlo standard error; 0 for the exact ar estimator; NAN when not estimable
                          // (a chunk with fewer than two counted rounds, e.g. --rounds 1)
    double perplexity;    // exp(bound)
} hdlm_nelbo_result;

// Every chunk of the data set, chunks split over MPI ranks (hdlm_partition_range); collective when MPI runs. The
// result is identical on every rank and for every number of ranks. progress (may be NULL) runs on every rank after
// each chunk with (chunks done here, chunks here).
int hdlm_nelbo_dataset(hdlm_denoiser *d, const hdlm_nelbo_config *cfg, const hdlm_dataset *data,
                       hdlm_nelbo_result *result, hdlm_sampler_progress progress, void *progress_ctx);

// Unigram entropy of one token list (method §9.3): H = -Σ_k p_k·ln(p_k + 1e-8), p_k = count_k/n over distinct ids;
// 0 for an empty list.
double hdlm_unigram_entropy(const uint32_t *ids, size_t n);
#endif

// hdlm/diffusion.h — forward processes and training losses: ε-hybrid (method §4), γ-hybrid (method §5) and the
// order-agnostic ARDM objective (method §13, A.3).
//
// Shape letters: B = sequences, L = positions, V = output width (vocabulary incl. MASK). Token ids 0..V-2 are real
// tokens (N = V-1 of them) and V-1 is MASK, as in the model (HDLM_MODEL_VOCAB = 50258, HDLM_TOKEN_MASK = 50257);
// V is a parameter so tests can use a small vocabulary.
// Model outputs are fp32 [B, L, V] row-major. Every loss returns its value and writes d(loss)/d(outputs) in the same
// layout, row by row (OpenMP over rows), never holding probabilities for the whole batch. Sums over rows are taken in
// a fixed order, so results do not depend on the number of threads.
// Randomness: `key` is a Philox key (hdlm_rng_key(seed, rank, step, HDLM_RNG_NOISE)); sequence b draws from its own
// stream derived from (key, b), so corruption does not depend on the number of threads either.
#ifndef HDLM_DIFFUSION_H
#define HDLM_DIFFUSION_H

#include <stdint.h>

#include "hdlm/schedule.h"

// ---- shared: a corrupted micro-batch and its weighted cross-entropy ----

// What the corruption did to a position (ε and ARDM paths).
typedef enum {
    HDLM_CORRUPT_KEPT = 0,        // outside the active set (settled, worthless) or known (ARDM): clean input
    HDLM_CORRUPT_MASKED = 1,      // input is MASK
    HDLM_CORRUPT_REPLACED = 2,    // input is a uniformly drawn real token (may equal the clean one)
    HDLM_CORRUPT_UNTOUCHED = 3,   // active but left clean
} hdlm_corrupt_kind;

// A corrupted micro-batch. loss = Σ_{b,i} weight_{b,i}·CE_{b,i} / norm, CE against the clean token.
typedef struct {
    int batch, length;
    uint32_t *xt;     // [B*L] model input
    uint8_t *kind;    // [B*L] hdlm_corrupt_kind
    float *weight;    // [B*L] loss weight of the position's CE (0 = no loss)
    double norm;      // denominator of the loss
} hdlm_corruption;

void hdlm_corruption_alloc(hdlm_corruption *c, int batch, int length);
void hdlm_corruption_free(hdlm_corruption *c);

// Σ weight·CE / norm over the batch, with d/d(logits) in dlogits (may be NULL). The softmax runs over the first
// `softmax_width` entries of each row (V, or V-1 to leave MASK out); the other entries get gradient 0.
// Rows with weight 0 are skipped (gradient 0).
double hdlm_corruption_loss(const hdlm_corruption *c, const uint32_t *x0, const float *logits, int vocab,
                            int softmax_width, float *dlogits);
// The same over the rows rows[0 .. n_rows) of the batch only (those with a weight, in order): logits and dlogits hold
// one row per listed row, consecutively. Gives the same value as hdlm_corruption_loss when the other rows weigh 0.
double hdlm_corruption_loss_rows(const hdlm_corruption *c, const uint32_t *x0, const int *rows, int n_rows,
                                 const float *logits, int vocab, int softmax_width, float *dlogits);

// One row: returns CE(z, target) = logsumexp(z[0..width)) - z[target] (double precision) and, when grad is not
// NULL, writes grad_scale·(softmax(z) - onehot(target)) into grad[0..V) (entries >= softmax_width get 0).
double hdlm_ce_row(const float *z, int vocab, int softmax_width, uint32_t target, double grad_scale, float *grad);

// ---- ε-hybrid (method §4) ----

typedef enum { HDLM_EPS_LOSS_HYBRID = 0, HDLM_EPS_LOSS_STANDARD = 1 } hdlm_eps_loss_type;

typedef struct {
    hdlm_eps_loss_type loss;   // training.loss_type (default hybrid)
    double epsilon;            // training.epsilon: uniform-replacement probability (0.01)
    double lambda;             // training.lambda: weight of the unmasked terms (1.0 in the shipped config)
} hdlm_eps_config;

// Hyperschedule path (method §4.2-4.3): sequence b uses steps[b] (the same pointer for every b under the reference's
// one-step-per-micro-batch sampling). Active positions are masked with probability t_i, else (hybrid only) replaced
// by a uniform real token with probability ε; weights 1/max(t,1e-4) (masked), λ(1-ε) (replaced), λε (untouched),
// 0 outside the active set (standard: masked only); norm = Σ_b |A_b|.
void hdlm_epsilon_corrupt(const hdlm_eps_config *cfg, const hdlm_step *const *steps, const uint32_t *x0, int vocab,
                          uint64_t key, hdlm_corruption *c);

// No-schedule MDLM path (method §4.4): per sequence t_b ~ U(0,1), p_b = (1-ε_s)t_b + ε_s, every position masked with
// probability p_b, else (hybrid) replaced with probability ε. Weights 1/max(p_b,1e-4) (masked), λ(1-ε)/(1-p_b)
// (replaced), λε/(1-p_b) (untouched); norm = B·L. p[B] receives p_b (may be NULL).
void hdlm_epsilon_corrupt_unscheduled(const hdlm_eps_config *cfg, double sampling_eps, const uint32_t *x0, int vocab,
                                      uint64_t key, hdlm_corruption *c, float *p);

// ---- ARDM (method §13 A.3) ----

typedef struct {
    double ce_weight;   // λ_CE of the auxiliary term (1e-4 for text8)
    int exclude_mask;   // softmax over the N real tokens only (default 1, decision A.3.3)
    int antithetic;     // stratified steps over the batch (A.3.2) instead of independent uniform ones
} hdlm_ardm_config;

// Order-agnostic ARDM corruption: per sequence s_b ~ U{0..L-1} (the paper's t = s_b + 1; with `antithetic`, the
// batch's steps are u_j + kΔ, Δ = L/gcd(B, L), for B/gcd(B, L) draws u_j ~ U{0..Δ-1} and every k < gcd(B, L),
// randomly permuted over the batch, so each stratum of Δ steps gets exactly B/gcd(B, L) sequences), then a uniformly random
// subset of m_b = L - s_b positions (the last m_b of a random order) is masked; nothing else changes. Masked positions
// get weight (1/m_b + λ_CE/L)/ln 2 and norm = B, so hdlm_corruption_loss gives the reference's loss in bits:
// mean_b [ (1/(m_b ln 2))·Σ_masked CE + λ_CE·(1/(L ln 2))·Σ_masked CE ]. With λ_CE = 0 this is the NELBO estimate
// (L/m_b)·Σ_masked CE (the paper's weight D/(D-t+1)) divided by L·ln 2. steps[B] receives s_b (may be NULL).
void hdlm_ardm_corrupt(const hdlm_ardm_config *cfg, const uint32_t *x0, int vocab, uint64_t key, hdlm_corruption *c,
                       int *steps);
// The softmax width the ARDM loss uses for this config (V - 1 when MASK is excluded).
int hdlm_ardm_softmax_width(const hdlm_ardm_config *cfg, int vocab);

// ---- next-token AR (method §2.8): the baseline every diffusion LM is compared with ----

// The next-token objective as a corruption record of one or more sequences: input xt_i = x0_{i-1} with xt_0 = start
// (<|endoftext|>, as GPT-2 begins a document), every position weight 1 against its own clean token, norm = L per
// sequence: with a causal mask, hdlm_corruption_loss is the mean next-token cross-entropy in nats per token, and its
// sum over a chunk the exact -log p(x) of all L tokens.
void hdlm_ar_inputs(const uint32_t *x0, uint32_t start, hdlm_corruption *c);
// The start token of a vocabulary of V ids (the last real token: <|endoftext|> for GPT-2 with MASK, V = 50258); the
// trainer, the AR likelihood and the AR sampler all take it from here.
static inline uint32_t hdlm_ar_start(int vocab) { return (uint32_t)vocab - 2; }

// ---- γ-hybrid (method §5) ----

// Log-linear noise with eps_n = 5e-3 (method §5.2): σ(t) = -log1p(-(1-eps_n)t), σ'(t) = (1-eps_n)/(1-(1-eps_n)t).
double hdlm_loglinear_sigma(double t);
double hdlm_loglinear_dsigma(double t);

// Forward marginal from a real token after total noise σ (method §5.3): P(MASK) = 1-a and P(uniform branch) = a(1-g),
// a = e^{-(1-γ)σ}, g = e^{-γσ}.
void hdlm_gamma_forward_probs(double sigma, double gamma, double *p_mask, double *p_uniform);

// Forward sampling of every position with its own σ_i = σ(t_i) of steps[b] (method §5.3): r < 1-a → MASK, else
// r < (1-a)+a(1-g) → uniform real token, else keep. MASK inputs stay MASK. xt[B*L].
void hdlm_gamma_corrupt(double gamma, const hdlm_step *const *steps, const uint32_t *x0, int batch, int vocab,
                        uint64_t key, uint32_t *xt);

// Per-token σ_i = σ(t_i) for the model's conditioning, sigma[L].
void hdlm_gamma_sigmas(const hdlm_step *st, float *sigma);

// The sampler prior (method §6.7): MASK with probability ρ_abs = A/(A+U), A = 1-e^{-4(1-γ)}, U = (1-e^{-4γ})e^{-4(1-γ)}
// (σ_max = 4 hard-coded, §11 item 12), else a uniform real token.
double hdlm_gamma_prior_mask_prob(double gamma);
void hdlm_gamma_prior_sample(double gamma, int count, int vocab, uint64_t key, uint32_t *x);

// E = e^σ - 1 as the reference computes it: expm1 below σ = 0.5, exp - 1 above (method §5.4).
double hdlm_gamma_sigma_expm1(double sigma);

// Score parametrisation (method §5.4). Step 1, `scale_by_sigma`: o = raw - log(e^σ_i - 1) - log(V - 1), the shift
// being hdlm_gamma_log_score_shift(σ_i, V); hdlm_gamma_scale_by_sigma applies it in place to out[L, V] of one
// sequence. Its backward is the identity (the shift does not depend on the outputs).
double hdlm_gamma_log_score_shift(double sigma, int vocab);
void hdlm_gamma_scale_by_sigma(const float *sigma, int length, int vocab, float *out);
// Step 2, `post_process_logits` with the settled mask (parity switch, §11 item 14): o_i[MASK] = -1000 for every
// i <= L-2 whose next position i+1 is settled (the reference's off-by-one). Those entries are constants, so the
// backward pass zeroes their gradient: hdlm_gamma_post_process_backward on d(loss)/d(out) of the same sequence.
void hdlm_gamma_post_process(const hdlm_step *st, int vocab, float *out);
void hdlm_gamma_post_process_backward(const hdlm_step *st, int vocab, float *dout);

// Per-position score entropy SE exactly as method §5.5, for log-scores o[0..V) (the MASK entry o[V-1] is not used),
// current token x, clean token x0, total noise σ. Returns SE; when grad is not NULL it receives grad_scale·dSE/do
// (grad[V-1] = 0, and grad[x] = 0 for a real x: o_x cancels out).
double hdlm_gamma_score_entropy(const float *o, int vocab, uint32_t x, uint32_t x0, double sigma, double gamma,
                                double grad_scale, float *grad);

typedef struct {
    double gamma;              // graph.gamma (0.01)
    double diffusion_weight;   // annealing.diffusion_loss_weight (1.0)
    double ce_weight;          // annealing.ce_loss_weight (1.0)
} hdlm_gamma_config;

typedef struct {
    double diffusion;   // mean_b D_b
    double ce;          // mean_b C_b
} hdlm_gamma_terms;

// The γ loss of method §5.6: diffusion_weight·mean_b Σ_{i not settled} σ'_i·w_i·SE_{b,i} + ce_weight·mean_b C_b,
// C_b = Σ_{i<n_set} CE(o_{b,i}, x0)·bw_i / n_set (0 when n_set = 0). out = log-scores after scale_by_sigma.
// Returns the loss, writes d(loss)/d(out) into dout (may be NULL) and the two terms into terms (may be NULL).
// Block weight bw_i of settled position i (method §5.6): with nb = ⌈n_set/ω⌉ blocks, 1 when nb = 1, else ⌊i/ω⌋/(nb-1);
// 1 on the clean copy of the two-copy layout (method §5.7).
double hdlm_gamma_settled_weight(const hdlm_step *st, int i);
double hdlm_gamma_loss(const hdlm_gamma_config *cfg, const hdlm_step *const *steps, const float *out,
                       const uint32_t *xt, const uint32_t *x0, int batch, int vocab, float *dout,
                       hdlm_gamma_terms *terms);

// What the loss of one corrupted micro-batch compares the model's outputs with: the ε and ARDM losses take the
// corruption record (hdlm_corruption_loss), the γ loss the steps (hdlm_gamma_loss). Both backends' combined
// forward + loss calls take it, so the objective decides the loss in one place (the trainer's corruption).
typedef struct {
    const uint32_t *x0;                 // [B*L] clean tokens
    const hdlm_corruption *corruption;  // ε, ARDM: weights and normaliser; NULL for γ
    int softmax_width;                  // ε: V; ARDM: hdlm_ardm_softmax_width
    const hdlm_gamma_config *gamma;     // γ: loss weights; NULL for ε and ARDM
    const hdlm_step *const *steps;      // γ: [B] the step of each sequence
} hdlm_loss_target;

#endif

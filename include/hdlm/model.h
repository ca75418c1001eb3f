// hdlm/model.h — the DDiT transformer of both families on the CPU (method §7): configuration, the tensor table, the
// flat parameter/gradient buffers and forward/backward.
//
// Every parameter is a named view into one contiguous fp32 buffer (gradients: a second buffer with the same layout).
// Names and shapes are the reference's state-dict keys (method §7.1), so importers, exporters and checkpoints map one
// to one. The table is built once from the configuration and drives allocation, initialisation and the views.
//
// Outputs: fp32 [B, L, V] row-major — ε: logits; γ: log-scores after scale_by_sigma (method §5.4 step 1).
// hdlm_model_backward takes d(loss)/d(outputs) in the same layout (it may be m->out itself, overwritten by a loss),
// or as hdlm_model_forward_loss wrote it.
#ifndef HDLM_MODEL_H
#define HDLM_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hdlm/blas.h"
#include "hdlm/diffusion.h"
#include "hdlm/mask.h"
#include "hdlm/tensor.h"

typedef enum { HDLM_FAMILY_EPSILON = 0, HDLM_FAMILY_GAMMA = 1 } hdlm_family;
// Rotary angles: fp32 (exact) or the reference's fp16-rounded table (method §7.4).
typedef enum { HDLM_ROTARY_EXACT = 0, HDLM_ROTARY_REFERENCE = 1 } hdlm_rotary_mode;

#define HDLM_SIGMA_FREQ_DIM 256   // width of the sinusoidal σ embedding (method §7.3)

typedef struct {
    hdlm_family family;
    int width;        // d
    int n_layers;
    int n_heads;      // head dim = width / n_heads, even (rotary pairs)
    int mlp_ratio;    // MLP hidden = mlp_ratio · width
    int cond_dim;     // γ: width of the σ conditioning (ε: unused)
    int vocab;        // V; the last id (V − 1) is MASK
    int max_length;   // longest sequence a forward accepts
    float dropout;    // p of the three dropout sites, in [0, 1)
    float gamma;      // γ family: graph γ of the embedding mix w = exp(−γσ) (method §5.4)
    hdlm_rotary_mode rotary;
} hdlm_model_config;

// The paper's DDiT-small (768 wide, 12 layers, 12 heads, V = 50258, L = 1024, dropout 0.1, γ = 0.01).
hdlm_model_config hdlm_model_config_ddit_small(hdlm_family family);
// Refuses inconsistent configurations with a message naming the field.
int hdlm_model_config_check(const hdlm_model_config *config);
const char *hdlm_family_name(hdlm_family family);


// Builds the tensor table of a configuration (checked first). *n_params counts trainable floats, *n_buffer the
// buffers stored after them. The caller frees *tensors.
int hdlm_model_tensor_table(const hdlm_model_config *config, hdlm_tensor **tensors, int *n_tensors, size_t *n_params,
                            size_t *n_buffer);

// Views into a flat buffer (parameters or gradients).
typedef struct {
    float *norm1, *qkv, *attn_out, *norm2, *fc1_w, *fc1_b, *fc2_w, *fc2_b, *ada_w, *ada_b;   // ada: γ only
} hdlm_block_views;

typedef struct {
    float *embed;
    float *sigma_w1, *sigma_b1, *sigma_w2, *sigma_b2;   // γ only
    float *inv_freq;                                    // parameters only (a buffer)
    hdlm_block_views *blocks;
    float *norm_final, *head_w, *head_b;
} hdlm_model_views;

typedef struct hdlm_model_acts hdlm_model_acts;

// Called by hdlm_model_backward each time the gradients of a suffix of the flat buffer are final: grads[from ..
// n_params) will not change again in this backward (the output layer first, then each block from the last, then the
// rest with from = 0). Data parallelism starts reducing those gradients while the backward pass goes on.
typedef void (*hdlm_grad_ready_fn)(void *ctx, size_t from);

typedef struct {
    hdlm_model_config config;
    hdlm_tensor *tensors;
    int n_tensors;
    size_t n_params;    // trainable floats
    size_t n_buffer;    // floats of buffers after the parameters
    float *params;      // n_params + n_buffer
    float *grads;       // n_params
    hdlm_model_views p, g;
    float *out;         // [B, L, V] of the last forward
    int batch, length;  // shape of the last forward
    hdlm_model_acts *acts;
    hdlm_grad_ready_fn grad_ready;   // optional (NULL: none)
    void *grad_ready_ctx;
} hdlm_model;

// Inputs of one forward. tokens and sigma are copied; mask is copied.
typedef struct {
    const uint32_t *tokens;       // [B, L], ids < V
    const float *sigma;           // γ: total noise per token [B, L] (ε: ignored)
    const hdlm_attn_mask *mask;   // one mask for the whole batch; NULL: full attention
    int batch, length;
    bool training;                // dropout on
    uint64_t dropout_key;         // e.g. hdlm_rng_key(seed, rank, step, HDLM_RNG_DROPOUT)
    // Rows i < head_from of each sequence need no output (the loss gives them weight 0, e.g. the clean copy of the
    // two-copy layout under the ε loss): the output layer skips them, their outputs and gradients are 0. 0: all rows.
    // The CUDA model computes every row (same result).
    int head_from;
    // Inference (training false) that reads a few rows: only rows r of [B·L] with head_rows[r] != 0 get outputs, the
    // others hold anything (the likelihood estimators read the masked rows, the coder of hdlm-compress one segment per
    // call; the output layer is most of a small model's forward). NULL: every row. The CUDA model computes every row.
    const uint8_t *head_rows;
    // Inference: the output layer's weight packed (hdlm_packed_weights_init of head_w as it is now), for a caller that
    // runs many forwards on the same weights (hdlm_denoiser_model); the same bits. NULL: packed by each product.
    const hdlm_packed_weights *head_packed;
} hdlm_model_input;

// Dropout sites of a block; each gets its own key from the step's dropout key and the layer (the GPU model uses the
// same keys, so both drop the same elements).
typedef enum {
    HDLM_DROPOUT_ATTN_PROBS = 0,
    HDLM_DROPOUT_ATTN_RESIDUAL = 1,
    HDLM_DROPOUT_MLP_RESIDUAL = 2,
} hdlm_dropout_site;
uint64_t hdlm_model_dropout_key(uint64_t step_key, int layer, hdlm_dropout_site site);

int hdlm_model_create(hdlm_model **out, const hdlm_model_config *config);
void hdlm_model_free(hdlm_model *model);
// Initialisation of method §7.6 from a seed (counter-based: independent of threads), and zero gradients.
void hdlm_model_init(hdlm_model *model, uint64_t seed);
const hdlm_tensor *hdlm_model_find_tensor(const hdlm_model *model, const char *name);
size_t hdlm_model_embedding_params(const hdlm_model *model);   // the V×d embedding (for FLOP counts)
// Training FLOPs per token at sequence length L, forward and backward: 6 × non-embedding parameters + 12 · layers ·
// width · L (attention). The one definition behind every tokens/s → MFU figure.
double hdlm_model_flops_per_token(const hdlm_model *model, int length);
void hdlm_model_zero_grad(hdlm_model *model);

// Refuses bad inputs (ids ≥ V, length > max_length, mask of another length or out of range, σ missing or not positive
// for γ) with a message; *mask receives the input's mask (full attention when input->mask is NULL). Shared with the
// GPU model.
int hdlm_model_check_input(const hdlm_model_config *config, const hdlm_model_input *input, hdlm_attn_mask *mask);
// Forward pass; refuses bad inputs (ids ≥ V, length > max_length, mask of another length, σ missing for γ).
int hdlm_model_forward(hdlm_model *model, const hdlm_model_input *input);
// Forward pass and the loss of a corrupted micro-batch against target (method §4.3, §5.4-5.6, §13 A.3) into
// *loss; with dout (B·L·V floats, may be m->out), d(loss)/d(outputs) for hdlm_model_backward. Under the ε and ARDM
// losses the output layer runs on the rows with a loss weight alone: m->out and dout then hold those rows' outputs
// and gradients, consecutively in row order (hdlm_corruption_loss_rows); hand dout to hdlm_model_backward as written.
// The CUDA model's twin is hdlm_cuda_model_forward_loss.
int hdlm_model_forward_loss(hdlm_model *model, const hdlm_model_input *input, const hdlm_loss_target *target,
                            float *dout, double *loss);
// Accumulates parameter gradients for d(loss)/d(out) of the last forward.
void hdlm_model_backward(hdlm_model *model, const float *dout);

#endif

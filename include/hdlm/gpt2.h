// hdlm/gpt2.h — the GPT-2 judge of the evaluation (method §9.3-§9.4, docs/mauve.md): HF GPT2Model
// weights from a safetensors file, forward only, on the project's CPU kernels (layers.h).
//
// Layout: wte [V, d] (also the tied LM head), wpe [n_ctx, d], h.i.{ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc,
// mlp.c_proj}, ln_f; keys may carry a "transformer." prefix (GPT2LMHeadModel files; "lm_head.weight" is then ignored).
// Conv1D weights ([in, out]) are transposed at load into the nn.Linear layout the kernels use. LayerNorm eps 1e-5 with
// bias, GELU tanh, learned positions, causal attention.
#ifndef HDLM_GPT2_H
#define HDLM_GPT2_H

#include <stdint.h>

typedef struct {
    const float *ln1_w, *ln1_b, *qkv_w, *qkv_b, *proj_w, *proj_b;   // qkv_w [3d, d], proj_w [d, d]
    const float *ln2_w, *ln2_b, *fc_w, *fc_b, *fc2_w, *fc2_b;       // fc_w [4d, d], fc2_w [d, 4d]
} hdlm_gpt2_layer;

typedef struct {
    int n_layer, n_head, d, vocab, n_ctx;
    float *params;   // every tensor, fp32, owned
    const float *wte, *wpe, *lnf_w, *lnf_b;
    hdlm_gpt2_layer *layers;
} hdlm_gpt2;

// Loads `path`: a .safetensors file, or a directory holding model.safetensors (and maybe config.json). n_layer, d,
// V and n_ctx follow from the tensor shapes; the head count is `heads` when > 0, else config.json's "n_head" (next to
// the weights), else d / 64 (every released GPT-2 has head dimension 64). Missing or misshapen tensors, and a head
// count that does not divide d, are refused by name.
int hdlm_gpt2_load(hdlm_gpt2 *g, const char *path, int heads);
void hdlm_gpt2_free(hdlm_gpt2 *g);

// One sequence ids[0..len-1] (1 <= len <= n_ctx, ids < V, else refused). hidden[len, d] (may be NULL): the last hidden
// state after ln_f; nll[len] (may be NULL): nll[t] = −log p(ids[t] | ids[<t]) for t >= 1 and nll[0] = 0.
int hdlm_gpt2_forward(const hdlm_gpt2 *g, const uint32_t *ids, int len, float *hidden, double *nll);

#endif

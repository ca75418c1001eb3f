// hdlm/tensor.h — the one tensor descriptor: a named, row-major view into a flat fp32 buffer (parameters, gradients,
// EMA, AdamW moments all share one layout). The model's table, checkpoints and converters use it.
#ifndef HDLM_TENSOR_H
#define HDLM_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    HDLM_INIT_UNIFORM_FAN_IN = 0,   // U(−1/√fan_in, 1/√fan_in) (nn.Linear and the embedding, method §7.6)
    HDLM_INIT_ZERO = 1,             // output head, adaLN
    HDLM_INIT_ONE = 2,              // LayerNorm weights
    HDLM_INIT_INV_FREQ = 3,         // rotary_emb.inv_freq buffer
} hdlm_init_rule;

typedef struct {
    char name[64];      // state-dict key, e.g. "blocks.3.attn_qkv.weight"
    int ndim;           // 1..4
    int64_t shape[4];   // shape[0] rows
    size_t offset;      // in floats, into the flat buffer
    size_t numel;       // product of the shape (0: compute it with hdlm_tensor_numel)
    hdlm_init_rule init;
    int fan_in;
    bool decay;         // weight decay applies (the reference decays every parameter, method §11 item 26)
    bool trainable;     // false for buffers (stored after all parameters, no gradient)
} hdlm_tensor;

#endif

// hdlm/mask.h — the attention mask of one hyperschedule step in compact form (method §3.2).
//
// A step's mask is fully described by the settled prefix [0, n_set), the active range [n_set, a_end] and two rules;
// positions after a_end are worthless. Attention kernels consume this struct directly (never an L x L tensor):
// hdlm_mask_allowed() is the reference rule, and hdlm_mask_key_range() gives the contiguous key range of a row when
// one exists, so tiled kernels can skip whole tiles.
#ifndef HDLM_MASK_H
#define HDLM_MASK_H

#include <stdbool.h>

// The rules below are also called by the CUDA kernels (src/cuda/attention.cu): one definition for host and device.
#ifdef __CUDACC__
#define HDLM_MASK_FN static inline __host__ __device__
#else
#define HDLM_MASK_FN static inline
#endif

typedef enum { HDLM_CONTEXT_BLOCK_CAUSAL = 0, HDLM_CONTEXT_CAUSAL = 1, HDLM_CONTEXT_FULL = 2 } hdlm_context_type;
typedef enum { HDLM_BLOCK_FULL = 0, HDLM_BLOCK_CAUSAL = 1 } hdlm_block_type;

typedef struct {
    int length;                  // L: positions 0..L-1
    int n_set;                   // settled prefix [0, n_set)
    int a_end;                   // last active position; active = [n_set, a_end]; a_end = n_set - 1 when none active
    hdlm_context_type context;   // rule among settled positions
    hdlm_block_type block;       // rule among active positions
    int block_size;              // bs = ω, used by the block-causal context rule
} hdlm_attn_mask;

// The mask that lets every position see every other one (plain diffusion, ω >= L).
static inline hdlm_attn_mask hdlm_mask_full(int length) {
    hdlm_attn_mask m = {length, 0, length - 1, HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL, length};
    return m;
}

// May query i attend key j? (method §3.2 rules 1-3; fully-masked rows are handled by the kernel, see below).
HDLM_MASK_FN bool hdlm_mask_allowed(const hdlm_attn_mask *m, int i, int j) {
    if (i < m->n_set) {   // settled row: settled keys only
        if (j >= m->n_set) return false;
        switch (m->context) {
        case HDLM_CONTEXT_FULL: return true;
        case HDLM_CONTEXT_CAUSAL: return j <= i;
        default: return j / m->block_size <= i / m->block_size;
        }
    }
    if (i > m->a_end) return false;   // worthless row: sees nothing
    if (j < m->n_set) return true;    // active row: every settled key
    if (j > m->a_end) return false;   // nobody sees worthless keys
    return m->block == HDLM_BLOCK_FULL || j <= i;
}

// A row with no allowed key (only worthless rows) attends uniformly to all L keys: the reference's kernel turns an
// all -inf score row into all zeros (method §3.2, "fully-masked rows").
HDLM_MASK_FN bool hdlm_mask_row_fully_masked(const hdlm_attn_mask *m, int i) { return i > m->a_end; }

// For row i, the allowed keys form the contiguous range [*lo, *hi) under every built-in rule (settled and active
// rows always start at key 0). A fully masked row returns [0, L) (the uniform rule above).
HDLM_MASK_FN void hdlm_mask_key_range(const hdlm_attn_mask *m, int i, int *lo, int *hi) {
    *lo = 0;
    if (hdlm_mask_row_fully_masked(m, i)) {
        *hi = m->length;
    } else if (i < m->n_set) {
        if (m->context == HDLM_CONTEXT_FULL) *hi = m->n_set;
        else if (m->context == HDLM_CONTEXT_CAUSAL) *hi = i + 1;
        else {
            int end = (i / m->block_size + 1) * m->block_size;
            *hi = end < m->n_set ? end : m->n_set;
        }
    } else {
        *hi = m->block == HDLM_BLOCK_FULL ? m->a_end + 1 : i + 1;
    }
}

#endif

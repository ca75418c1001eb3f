// hdlm/mask.h — the attention mask of one hyperschedule step in compact form (method §3.2).
//
// A step's mask is fully described by the settled prefix [0, n_set), the active range [n_set, a_end] and two rules;
// positions after a_end are worthless. The two-copy training layout (method §3.3: a clean copy [0, half) and a noisy
// copy [half, 2·half) of one sequence, every ω-block of the noisy copy trained at once) is the same struct with
// half > 0. Attention kernels consume this struct directly (never an L x L tensor): hdlm_mask_allowed() is the
// rule, and hdlm_mask_key_range() gives a row's keys as at most two contiguous ranges, so tiled kernels skip every
// tile outside them.
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
    int block_size;              // bs = ω, used by the block-causal context rule and the two-copy blocks
    int half;                    // two-copy layout: L / 2 (positions i and half + i hold the same token); else 0
} hdlm_attn_mask;

// The mask that lets every position see every other one (plain diffusion, ω >= L).
static inline hdlm_attn_mask hdlm_mask_full(int length) {
    hdlm_attn_mask m = {length, 0, length - 1, HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL, length, 0};
    return m;
}

// Causal attention over `length` positions: every position settled, the causal context rule (a next-token model).
static inline hdlm_attn_mask hdlm_mask_causal(int length) {
    hdlm_attn_mask m = {length, length, length - 1, HDLM_CONTEXT_CAUSAL, HDLM_BLOCK_CAUSAL, length, 0};
    return m;
}

// The two-copy layout of a sequence of `half` positions (method §3.3): length 2·half, the clean copy settled, the
// noisy copy active. half must be a multiple of ω = block_size (hdlm_schedule_two_copy_step checks it).
static inline hdlm_attn_mask hdlm_mask_two_copy(int half, int block_size, hdlm_context_type context,
                                                hdlm_block_type block) {
    hdlm_attn_mask m = {2 * half, half, 2 * half - 1, context, block, block_size, half};
    return m;
}

// The position (rotary phase) of row i: the noisy copy repeats the clean copy's positions.
HDLM_MASK_FN int hdlm_mask_position(const hdlm_attn_mask *m, int i) {
    return m->half > 0 && i >= m->half ? i - m->half : i;
}

// The rule among settled (or clean-copy) rows i, j.
HDLM_MASK_FN bool hdlm_mask_context_allowed(const hdlm_attn_mask *m, int i, int j) {
    switch (m->context) {
    case HDLM_CONTEXT_FULL: return true;
    case HDLM_CONTEXT_CAUSAL: return j <= i;
    default: return j / m->block_size <= i / m->block_size;
    }
}

// May query i attend key j? (method §3.2 rules 1-3 and §3.3; fully-masked rows are handled by the kernel, see below).
HDLM_MASK_FN bool hdlm_mask_allowed(const hdlm_attn_mask *m, int i, int j) {
    if (i < m->n_set)   // settled row: settled keys only
        return j < m->n_set && hdlm_mask_context_allowed(m, i, j);
    if (i > m->a_end) return false;   // worthless row: sees nothing
    if (m->half > 0) {   // noisy block b: the clean keys before the block, and its own block
        int b = (i - m->half) / m->block_size, start = m->half + b * m->block_size;
        if (j < m->half) return j < b * m->block_size;
        return j >= start && j < start + m->block_size && (m->block == HDLM_BLOCK_FULL || j <= i);
    }
    if (j < m->n_set) return true;    // active row: every settled key
    if (j > m->a_end) return false;   // nobody sees worthless keys
    return m->block == HDLM_BLOCK_FULL || j <= i;
}

// A row with no allowed key (only worthless rows) attends uniformly to all L keys: the reference's kernel turns an
// all -inf score row into all zeros (method §3.2, "fully-masked rows").
HDLM_MASK_FN bool hdlm_mask_row_fully_masked(const hdlm_attn_mask *m, int i) { return i > m->a_end; }

// The keys a row may see: [0, prefix) ∪ [lo, hi), prefix <= lo; either part may be empty (lo = hi = prefix when the
// row sees one range from key 0).
typedef struct {
    int prefix, lo, hi;
} hdlm_key_range;

HDLM_MASK_FN bool hdlm_key_range_has(hdlm_key_range r, int j) { return j < r.prefix || (j >= r.lo && j < r.hi); }
// One past the last key of the range.
HDLM_MASK_FN int hdlm_key_range_end(hdlm_key_range r) { return r.lo < r.hi ? r.hi : r.prefix; }

// Row i's allowed keys under every built-in rule: a prefix [0, end) for the length-L layout (settled and active rows
// always start at key 0) and for the clean copy; the clean keys before the row's block plus the block itself for a
// noisy row of the two-copy layout. A fully masked row returns [0, L) (the uniform rule above).
HDLM_MASK_FN hdlm_key_range hdlm_mask_key_range(const hdlm_attn_mask *m, int i) {
    int end;
    if (hdlm_mask_row_fully_masked(m, i)) {
        end = m->length;
    } else if (i < m->n_set) {
        if (m->context == HDLM_CONTEXT_FULL) end = m->n_set;
        else if (m->context == HDLM_CONTEXT_CAUSAL) end = i + 1;
        else {
            end = (i / m->block_size + 1) * m->block_size;
            if (end > m->n_set) end = m->n_set;
        }
    } else if (m->half > 0) {
        int prefix = (i - m->half) / m->block_size * m->block_size, lo = m->half + prefix;
        hdlm_key_range r = {prefix, lo, m->block == HDLM_BLOCK_FULL ? lo + m->block_size : i + 1};
        return r;
    } else {
        end = m->block == HDLM_BLOCK_FULL ? m->a_end + 1 : i + 1;
    }
    hdlm_key_range r = {end, end, end};
    return r;
}

// The union of the ranges of rows [i0, i0 + rows) (rows >= length ignored) as one hdlm_key_range that covers it:
// tiles of keys outside it are masked for every one of those rows. without_uniform leaves fully masked rows out.
HDLM_MASK_FN hdlm_key_range hdlm_mask_rows_key_range(const hdlm_attn_mask *m, int i0, int rows, bool without_uniform) {
    hdlm_key_range u = {0, m->length, 0};
    for (int i = i0; i < i0 + rows && i < m->length; i++) {
        if (without_uniform && hdlm_mask_row_fully_masked(m, i)) continue;
        hdlm_key_range r = hdlm_mask_key_range(m, i);
        if (r.prefix > u.prefix) u.prefix = r.prefix;
        if (r.lo < r.hi) {
            if (r.lo < u.lo) u.lo = r.lo;
            if (r.hi > u.hi) u.hi = r.hi;
        }
    }
    if (u.lo >= u.hi || u.hi <= u.prefix) u.lo = u.hi = u.prefix;   // no second range beyond the prefix
    else if (u.lo < u.prefix) u.lo = u.prefix;                      // overlapping: the second range extends it
    return u;
}

#endif

// CUDA flash attention (src/cuda/attention.cu) against its CPU twin hdlm_attention_forward/backward on random bf16
// inputs, under every mask rule of method §3.2 (full, causal, block-causal with a partial block, hyperschedule masks
// with settled / active / worthless rows and both block rules), lengths that are not multiples of the 64-row tile,
// batch and heads > 1, head dim 64 (the tensor-core path) and 32, 48, 80 (the SIMT path, padded to 32/64/128),
// dropout 0, 0.1 and 0.3 (on the tensor-core path with L % 8 = 0, where lanes share their Philox draws, with a whole
// and a partial last tile, and otherwise).
// The backward reads the forward's dropout keep bits; the CPU draws every element again.
//
// Both sides get the same bf16-rounded qkv and dout (as floats on the CPU); the backward reference is given the GPU's
// own out (bf16) and lse, so the comparison sees only the kernels' own rounding: the bf16 outputs and fp32
// accumulation in another order. Dropout uses the same Philox elements on both sides, so the agreement stays tight.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "harness.h"
#include "hdlm/common.h"
#include "hdlm/cuda.h"
#include "cuda/cuda_ops.h"
#include "model/layers.h"
#include "hdlm/mask.h"
#include "hdlm/rng.h"

#ifdef HDLM_HAVE_CUDA

// Tolerances. bf16 keeps 8 significant bits: a rounded output is off by at most 2^-8 of its value; REL_TOL allows
// twice that. The head-dim-64 path also rounds P and dS to bf16 before its second tensor-core GEMM (P·V, dS·K, ...),
// as flash attention does: an element then carries up to 2^-8·Σ_j |p_ij v_j| more, which is not relative to the
// element itself; ABS_TOL = 2^-7 of the tensor's largest |value| covers it (the worst element measured in an
// emulation of these cases used 0.3 of the tolerance). fp32 accumulation in another order adds ~1e-6 of max|value|.
// Bugs stay visible: a dropout element or mask position that differs moves an output by ~p_ij·|v_j| ~ 1/L per
// element, over thousands of elements, and weighting the uniform rows by 1.1/L instead of 1/L fails dV at 3.7× the
// tolerance. lse is fp32 on both sides: the scores differ by ~1e-6 (dot products in another order), allowed LSE_TOL.
#define REL_TOL 0x1.0p-7
#define ABS_TOL 0x1.0p-7
#define LSE_TOL 3e-5

typedef struct {
    const char *name;
    int batch, heads, len, head_dim;
    hdlm_attn_mask mask;
    float dropout;
} attention_case;

static hdlm_attn_mask mask_of(int len, int n_set, int a_end, hdlm_context_type context, hdlm_block_type block,
                              int block_size) {
    hdlm_attn_mask m = {len, n_set, a_end, context, block, block_size, 0};
    return m;
}

// Random values in [-amp, amp) rounded to bf16: the bits for the GPU, their exact floats for the CPU.
static void random_bf16(hdlm_bf16 *bits, float *values, size_t n, float amp, hdlm_rng *rng) {
    for (size_t i = 0; i < n; i++) {
        bits[i] = hdlm_bf16_from_float(amp * (2.0f * hdlm_rng_uniform(rng) - 1.0f));
        values[i] = hdlm_bf16_to_float(bits[i]);
    }
}

static float max_abs(const float *x, size_t n, size_t stride, size_t width) {
    float m = 0.0f;
    for (size_t i = 0; i < n; i += stride)
        for (size_t e = 0; e < width; e++) m = fmaxf(m, fabsf(x[i + e]));
    return m;
}

// Compares a bf16 GPU tensor with the CPU reference over rows of `width` values at `stride` (from offset `first`):
// |gpu − cpu| <= REL_TOL·|cpu| + ABS_TOL·max|cpu|. Returns the number of violations and prints the worst.
static size_t compare_bf16(const char *what, const char *name, const hdlm_bf16 *gpu, const float *cpu, size_t n,
                           size_t stride, size_t width) {
    float scale = max_abs(cpu, n, stride, width);
    size_t bad = 0, worst_at = 0;
    double worst = 0.0;
    for (size_t i = 0; i < n; i += stride)
        for (size_t e = 0; e < width; e++) {
            double g = hdlm_bf16_to_float(gpu[i + e]), c = cpu[i + e];
            double ratio = fabs(g - c) / (REL_TOL * fabs(c) + ABS_TOL * scale + 1e-30);
            if (!(ratio <= 1.0)) bad++;
            if (!(ratio <= worst)) {
                worst = ratio;
                worst_at = i + e;
            }
        }
    printf("  %-40s %-4s max|ref| %.3e, worst error/tolerance %.3f (gpu %.6e cpu %.6e)\n", name, what, (double)scale,
           worst, (double)hdlm_bf16_to_float(gpu[worst_at]), (double)cpu[worst_at]);
    return bad;
}

// Fills the outputs with NaN so that an element a kernel fails to write cannot pass.
static void poison(hdlm_bf16 *out, float *lse, hdlm_bf16 *dqkv, size_t n_out, size_t n_lse, size_t n_qkv) {
    size_t n = n_qkv > n_lse ? n_qkv : n_lse;
    uint16_t *bits = hdlm_malloc(n * sizeof(uint16_t));
    float *nan = hdlm_malloc(n_lse * sizeof(float));
    for (size_t i = 0; i < n; i++) bits[i] = 0x7fc0;   // bf16 quiet NaN
    for (size_t i = 0; i < n_lse; i++) nan[i] = NAN;
    hdlm_cuda_upload(out, bits, n_out * sizeof(hdlm_bf16));
    hdlm_cuda_upload(dqkv, bits, n_qkv * sizeof(hdlm_bf16));
    hdlm_cuda_upload(lse, nan, n_lse * sizeof(float));
    free(bits);
    free(nan);
}

static void run_case(const attention_case *tc) {
    const int B = tc->batch, H = tc->heads, L = tc->len, D = tc->head_dim, d = H * D;
    const size_t n = (size_t)B * L, n_qkv = n * 3 * d, n_out = n * d, n_lse = (size_t)B * H * L;
    const uint64_t key = 0x5eed0000u + (uint64_t)L;
    hdlm_rng rng;
    hdlm_rng_init(&rng, 1234 + (uint64_t)L * 7 + (uint64_t)D);

    hdlm_bf16 *qkv_b = hdlm_malloc(n_qkv * sizeof(hdlm_bf16)), *dout_b = hdlm_malloc(n_out * sizeof(hdlm_bf16));
    hdlm_bf16 *out_b = hdlm_malloc(n_out * sizeof(hdlm_bf16)), *dqkv_b = hdlm_malloc(n_qkv * sizeof(hdlm_bf16));
    float *qkv = hdlm_malloc(n_qkv * sizeof(float)), *dout = hdlm_malloc(n_out * sizeof(float));
    float *out_ref = hdlm_malloc(n_out * sizeof(float)), *lse_ref = hdlm_malloc(n_lse * sizeof(float));
    float *out_gpu = hdlm_malloc(n_out * sizeof(float)), *lse_gpu = hdlm_malloc(n_lse * sizeof(float));
    float *dqkv_ref = hdlm_malloc(n_qkv * sizeof(float));
    random_bf16(qkv_b, qkv, n_qkv, 1.5f, &rng);   // scores of spread ~1: peaked but not one-hot softmax rows
    random_bf16(dout_b, dout, n_out, 1.0f, &rng);

    hdlm_stream stream = hdlm_cuda_stream();
    hdlm_bf16 *qkv_d = hdlm_cuda_malloc(n_qkv * sizeof(hdlm_bf16));
    hdlm_bf16 *dqkv_d = hdlm_cuda_malloc(n_qkv * sizeof(hdlm_bf16));
    hdlm_bf16 *out_d = hdlm_cuda_malloc(n_out * sizeof(hdlm_bf16));
    hdlm_bf16 *dout_d = hdlm_cuda_malloc(n_out * sizeof(hdlm_bf16));
    float *lse_d = hdlm_cuda_malloc(n_lse * sizeof(float));
    size_t ws_bytes = hdlm_cuda_attention_workspace_bytes(B, L, H, D);
    void *ws = hdlm_cuda_malloc(ws_bytes);
    uint32_t *keep = hdlm_cuda_malloc(hdlm_cuda_attention_keep_bytes(B, L, H));
    hdlm_cuda_upload(qkv_d, qkv_b, n_qkv * sizeof(hdlm_bf16));
    hdlm_cuda_upload(dout_d, dout_b, n_out * sizeof(hdlm_bf16));
    poison(out_d, lse_d, dqkv_d, n_out, n_lse, n_qkv);

    // forward
    uint32_t *keep_ref = hdlm_calloc(hdlm_attention_keep_words(B, H, L), sizeof(uint32_t));
    hdlm_attention_forward(out_ref, lse_ref, keep_ref, qkv, &tc->mask, B, L, H, D, tc->dropout, key);
    hdlm_cuda_attention_forward(out_d, lse_d, keep, qkv_d, &tc->mask, B, L, H, D, tc->dropout, key, stream);
    hdlm_cuda_synchronize();
    hdlm_cuda_download(out_b, out_d, n_out * sizeof(hdlm_bf16));
    hdlm_cuda_download(lse_gpu, lse_d, n_lse * sizeof(float));
    size_t bad = compare_bf16("out", tc->name, out_b, out_ref, n_out, d, d);
    double lse_worst = 0.0;
    for (size_t r = 0; r < n_lse; r++) {
        int i = (int)(r % (size_t)L);
        if (hdlm_mask_row_fully_masked(&tc->mask, i)) {
            if (lse_gpu[r] != 0.0f) bad++;   // the CPU's convention for fully masked rows, exactly
            continue;
        }
        double err = fabs((double)lse_gpu[r] - lse_ref[r]);
        if (!(err <= LSE_TOL)) bad++;
        if (!(err <= lse_worst)) lse_worst = err;
    }
    printf("  %-40s lse  worst |error| %.3e (tolerance %.0e)\n", tc->name, lse_worst, LSE_TOL);

    // backward: the reference sees the GPU's out and lse
    for (size_t x = 0; x < n_out; x++) out_gpu[x] = hdlm_bf16_to_float(out_b[x]);
    hdlm_attention_backward(dqkv_ref, dout, out_gpu, lse_gpu, keep_ref, qkv, &tc->mask, B, L, H, D, tc->dropout);
    hdlm_cuda_attention_backward(dqkv_d, ws, dout_d, out_d, lse_d, keep, qkv_d, &tc->mask, B, L, H, D, tc->dropout,
                                 key, stream);
    hdlm_cuda_synchronize();
    hdlm_cuda_download(dqkv_b, dqkv_d, n_qkv * sizeof(hdlm_bf16));
    const char *part_name[3] = {"dq", "dk", "dv"};
    for (int part = 0; part < 3; part++)
        bad += compare_bf16(part_name[part], tc->name, dqkv_b + (size_t)part * d, dqkv_ref + (size_t)part * d,
                            n_qkv - (size_t)part * d, 3 * (size_t)d, (size_t)d);
    if (bad) printf("  %s: %zu values outside tolerance\n", tc->name, bad);
    assert_int_equal(bad, 0);

    hdlm_cuda_free(qkv_d);
    hdlm_cuda_free(dqkv_d);
    hdlm_cuda_free(out_d);
    hdlm_cuda_free(dout_d);
    hdlm_cuda_free(lse_d);
    hdlm_cuda_free(ws);
    hdlm_cuda_free(keep);
    free(keep_ref);
    free(qkv_b);
    free(dout_b);
    free(out_b);
    free(dqkv_b);
    free(qkv);
    free(dout);
    free(out_ref);
    free(lse_ref);
    free(out_gpu);
    free(lse_gpu);
    free(dqkv_ref);
}

static bool have_gpu(void) {
    if (hdlm_cuda_device_count() > 0) return true;
    printf("no usable GPU: %s\n", hdlm_cuda_unavailable_reason());
    return false;
}

static int group_setup(void **state) {
    (void)state;
    if (hdlm_cuda_device_count() > 0) HDLM_MUST(hdlm_cuda_init(0));
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    if (hdlm_cuda_device_count() > 0) hdlm_cuda_shutdown();
    return 0;
}

static void run_cases(const attention_case *cases, int count) {
    if (!have_gpu()) skip();
    for (int c = 0; c < count; c++) run_case(&cases[c]);
}

// No settled or worthless rows: every key visible (L = 77: one full and one partial tile).
static void test_full_mask(void **state) {
    (void)state;
    const attention_case cases[] = {
        {"full L77 B2 H3 D64", 2, 3, 77, 64, hdlm_mask_full(77), 0.0f},
        {"full L130 B2 H2 D32 dropout", 2, 2, 130, 32, hdlm_mask_full(130), 0.1f},
        {"full L192 B2 H2 D64 dropout", 2, 2, 192, 64, hdlm_mask_full(192), 0.1f},
        {"full L200 B1 H2 D64 dropout 0.3", 1, 2, 200, 64, hdlm_mask_full(200), 0.3f},
        {"full L132 B1 H3 D64 dropout 0.3", 1, 3, 132, 64, hdlm_mask_full(132), 0.3f},
    };
    run_cases(cases, 5);
}

// All rows settled: causal and block-causal context (ω = 48 over L = 130 leaves a partial block of 34).
static void test_context_rules(void **state) {
    (void)state;
    const attention_case cases[] = {
        {"causal L130 B2 H2 D64", 2, 2, 130, 64,
         mask_of(130, 130, 129, HDLM_CONTEXT_CAUSAL, HDLM_BLOCK_FULL, 130), 0.0f},
        {"causal L77 B1 H2 D32 dropout", 1, 2, 77, 32,
         mask_of(77, 77, 76, HDLM_CONTEXT_CAUSAL, HDLM_BLOCK_FULL, 77), 0.1f},
        {"block-causal w48 L130 B1 H3 D64", 1, 3, 130, 64,
         mask_of(130, 130, 129, HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL, 48), 0.0f},
        {"block-causal w48 L130 B2 H1 D48 dropout", 2, 1, 130, 48,
         mask_of(130, 130, 129, HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL, 48), 0.1f},
    };
    run_cases(cases, 4);
}

// Hyperschedule steps: settled prefix, active range, worthless tail (uniform rows; at L = 200 the last query tile is
// all worthless), both block rules, every context rule, and head dim 80 (padded to 128).
static void test_hyperschedule_masks(void **state) {
    (void)state;
    const attention_case cases[] = {
        {"hyper ctx-block16 block-full L130 D64", 2, 2, 130, 64,
         mask_of(130, 50, 97, HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL, 16), 0.0f},
        {"hyper ctx-block16 block-full L130 drop", 2, 2, 130, 64,
         mask_of(130, 50, 97, HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL, 16), 0.1f},
        {"hyper ctx-causal block-causal L130 D32", 2, 2, 130, 32,
         mask_of(130, 40, 100, HDLM_CONTEXT_CAUSAL, HDLM_BLOCK_CAUSAL, 16), 0.0f},
        {"hyper ctx-causal block-causal L130 drop", 1, 3, 130, 32,
         mask_of(130, 40, 100, HDLM_CONTEXT_CAUSAL, HDLM_BLOCK_CAUSAL, 16), 0.1f},
        {"hyper ctx-full block-causal L77 D80 drop", 1, 2, 77, 80,
         mask_of(77, 20, 60, HDLM_CONTEXT_FULL, HDLM_BLOCK_CAUSAL, 20), 0.1f},
        {"hyper no-settled block-full L200 D64", 2, 2, 200, 64,
         mask_of(200, 0, 100, HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL, 32), 0.0f},
        {"hyper no-settled block-full L200 drop", 1, 2, 200, 64,
         mask_of(200, 0, 100, HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL, 32), 0.1f},
    };
    run_cases(cases, 7);
}

// The two-copy layout (method §3.3): key tiles between the clean prefix and a noisy block are skipped; a query tile
// of clean and noisy rows (half = 96) takes the union. Tensor-core (D64) and SIMT (D32) paths, both block rules.
static void test_two_copy_masks(void **state) {
    (void)state;
    const attention_case cases[] = {
        {"two-copy half96 w32 D64", 2, 2, 192, 64,
         hdlm_mask_two_copy(96, 32, HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL), 0.0f},
        {"two-copy half96 w32 D64 dropout", 1, 2, 192, 64,
         hdlm_mask_two_copy(96, 32, HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL), 0.1f},
        {"two-copy half128 w64 causal D64 dropout", 1, 2, 256, 64,
         hdlm_mask_two_copy(128, 64, HDLM_CONTEXT_CAUSAL, HDLM_BLOCK_CAUSAL), 0.1f},
        {"two-copy half128 w16 D32 dropout", 1, 2, 256, 32,
         hdlm_mask_two_copy(128, 16, HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_CAUSAL), 0.1f},
    };
    run_cases(cases, 4);
}

// A single position, and sequences shorter than a tile, down to every row worthless (all uniform, no dq or dk).
static void test_edge_shapes(void **state) {
    (void)state;
    const attention_case cases[] = {
        {"tiny L1 full D64 dropout", 1, 1, 1, 64, hdlm_mask_full(1), 0.1f},
        {"tiny L17 all worthless D64 dropout", 2, 1, 17, 64,
         mask_of(17, 0, -1, HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL, 4), 0.1f},
        {"tiny L17 all worthless D32 dropout", 1, 1, 17, 32,
         mask_of(17, 0, -1, HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL, 4), 0.1f},
        {"tiny L17 hyper block-causal D32", 1, 2, 17, 32,
         mask_of(17, 3, 5, HDLM_CONTEXT_CAUSAL, HDLM_BLOCK_CAUSAL, 4), 0.0f},
    };
    run_cases(cases, 4);
}

static double seconds_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

// DDiT-small's attention shape: a timing print, not an assertion (FLOPs: 4·B·H·L²·D forward, 2.5× that backward).
static void test_timing(void **state) {
    (void)state;
    if (!have_gpu()) skip();
#ifdef HDLM_CUDA_EMULATE
    print_message("skipped: timings of the CPU emulation (tests/cuda_emu) mean nothing\n");
    skip();
#endif
    const int B = 8, H = 12, L = 1024, D = 64, d = H * D, reps = 5;
    const size_t n_qkv = (size_t)B * L * 3 * d, n_out = (size_t)B * L * d;
    hdlm_stream stream = hdlm_cuda_stream();
    hdlm_bf16 *host = hdlm_malloc(n_qkv * sizeof(hdlm_bf16));
    hdlm_rng rng;
    hdlm_rng_init(&rng, 99);
    for (size_t i = 0; i < n_qkv; i++) host[i] = hdlm_bf16_from_float(2.0f * hdlm_rng_uniform(&rng) - 1.0f);
    hdlm_bf16 *qkv = hdlm_cuda_malloc(n_qkv * sizeof(hdlm_bf16)), *dqkv = hdlm_cuda_malloc(n_qkv * sizeof(hdlm_bf16));
    hdlm_bf16 *out = hdlm_cuda_malloc(n_out * sizeof(hdlm_bf16)), *dout = hdlm_cuda_malloc(n_out * sizeof(hdlm_bf16));
    float *lse = hdlm_cuda_malloc((size_t)B * H * L * sizeof(float));
    void *ws = hdlm_cuda_malloc(hdlm_cuda_attention_workspace_bytes(B, L, H, D));
    uint32_t *keep = hdlm_cuda_malloc(hdlm_cuda_attention_keep_bytes(B, L, H));
    hdlm_cuda_upload(qkv, host, n_qkv * sizeof(hdlm_bf16));
    hdlm_cuda_upload(dout, host, n_out * sizeof(hdlm_bf16));
    const double flops = 4.0 * B * H * (double)L * L * D;
    const struct {
        const char *name;
        hdlm_attn_mask mask;
        float dropout;
    } runs[] = {
        {"full", hdlm_mask_full(L), 0.0f},
        {"full, dropout 0.1", hdlm_mask_full(L), 0.1f},
        {"causal", mask_of(L, L, L - 1, HDLM_CONTEXT_CAUSAL, HDLM_BLOCK_FULL, L), 0.0f},
    };
    for (int r = 0; r < 3; r++) {
        const hdlm_attn_mask *m = &runs[r].mask;
        float p = runs[r].dropout;
        hdlm_cuda_attention_forward(out, lse, keep, qkv, m, B, L, H, D, p, 7, stream);   // warm-up
        hdlm_cuda_attention_backward(dqkv, ws, dout, out, lse, keep, qkv, m, B, L, H, D, p, 7, stream);
        hdlm_cuda_synchronize();
        double t0 = seconds_now();
        for (int i = 0; i < reps; i++) hdlm_cuda_attention_forward(out, lse, keep, qkv, m, B, L, H, D, p, 7, stream);
        hdlm_cuda_synchronize();
        double t1 = seconds_now();
        for (int i = 0; i < reps; i++)
            hdlm_cuda_attention_backward(dqkv, ws, dout, out, lse, keep, qkv, m, B, L, H, D, p, 7, stream);
        hdlm_cuda_synchronize();
        double t2 = seconds_now(), fwd = (t1 - t0) / reps, bwd = (t2 - t1) / reps;
        printf("attention B=%d H=%d L=%d D=%d %-18s forward %.3f ms (%.1f TFLOP/s), backward %.3f ms "
               "(%.1f TFLOP/s, FLOPs of a full mask)\n",
               B, H, L, D, runs[r].name, 1e3 * fwd, flops / fwd * 1e-12, 1e3 * bwd, 2.5 * flops / bwd * 1e-12);
    }
    hdlm_cuda_free(qkv);
    hdlm_cuda_free(dqkv);
    hdlm_cuda_free(out);
    hdlm_cuda_free(dout);
    hdlm_cuda_free(lse);
    hdlm_cuda_free(ws);
    hdlm_cuda_free(keep);
    free(host);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_mask),
        cmocka_unit_test(test_context_rules),
        cmocka_unit_test(test_hyperschedule_masks),
        cmocka_unit_test(test_two_copy_masks),
        cmocka_unit_test(test_edge_shapes),
        cmocka_unit_test(test_timing),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

#else

static void test_no_cuda_backend(void **state) {
    (void)state;
    printf("built without the CUDA backend (no nvcc): the GPU attention kernels are not compiled\n");
    skip();
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_no_cuda_backend)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}

#endif

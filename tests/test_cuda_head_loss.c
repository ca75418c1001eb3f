// The fused output head + losses on the GPU (src/cuda/head_loss.cu) against the CPU path on random bf16-rounded
// x, W, b: hdlm_linear_forward, then hdlm_corruption_loss (ε, ARDM widths) or scale_by_sigma + hdlm_gamma_post_process
// + hdlm_gamma_loss (γ rows of several steps: settled with and without the pinned MASK entry, the absorbing and both
// uniform branches of the score entropy), their backward and hdlm_linear_backward. Weight-0 rows are mixed in; the
// workspace is shrunk so the rows run in several chunks, the last one partial; a repeated ε run must give the same
// bits. Skips without a usable GPU.
//
// Tolerances. Both sides start from the same bf16 values, so z differs only by fp32 summation order. Loss: relative
// 1e-5 — per row the GPU differs from the CPU's fp64 by fp32 exp/logit rounding, ~1e-7 of the row's terms (the
// largest, r·o_x0 of the absorbing branch with r ≈ 10³, does not cancel on random logits). Gradients: the GPU rounds
// dℓ/dz to bf16 (unit roundoff u = 2^-8: 8 significand bits) before the two GEMMs and rounds dx to bf16, so element
// (i, j) of dx may differ by u·Σ_k |g_ik|·|W_kj| + u·|dx_ij|, of dW by u·Σ_r |g_ri|·|x_rj|, of db by u·Σ_r |g_ri|;
// we allow twice these bounds (fp32 exp and accumulation-order differences are ~1e-6 relative) plus 2^-20 of the
// value for the fp32 += onto the initial dW, db. A host replay of the kernels' arithmetic with this rounding reached
// 0.96 of u·bound (one large gradient entry in a column), i.e. 0.48 of the tolerance. Rows that are not scored must
// get dx exactly 0.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hdlm/common.h"
#include "hdlm/cuda.h"
#include "cuda/cuda_ops.h"
#include "hdlm/diffusion.h"
#include "model/layers.h"
#include "hdlm/rng.h"
#include "hdlm/schedule.h"
#include "hdlm/tokenizer.h"

static bool gpu_usable(void) {
    if (hdlm_cuda_device_count() > 0) return true;
    print_message("SKIPPED: no usable GPU: %s\n", hdlm_cuda_unavailable_reason());
    return false;
}

static int group_setup(void **state) {
    (void)state;
    if (hdlm_cuda_device_count() > 0 && hdlm_cuda_init(0) != 0) return -1;
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    if (hdlm_cuda_device_count() > 0) hdlm_cuda_shutdown();
    return 0;
}

#ifdef HDLM_HAVE_CUDA

// A head problem: x [n, d], W [V, d], b [V] rounded to bf16 (the floats are the bf16 values), and initial dW, db.
typedef struct {
    int n, d, V;
    float *x, *w, *b, *dw0, *db0;
} problem;

static float bf16_round(float v) { return hdlm_bf16_to_float(hdlm_bf16_from_float(v)); }

static float *uniform_array(hdlm_rng *rng, size_t count, float scale, bool to_bf16) {
    float *a = hdlm_malloc(count * sizeof *a);
    for (size_t i = 0; i < count; i++) {
        float v = scale * (2.0f * hdlm_rng_uniform(rng) - 1.0f);
        a[i] = to_bf16 ? bf16_round(v) : v;
    }
    return a;
}

// W ~ U(±6/√d) gives logits of standard deviation ≈ 2 for x ~ U(±1): softmaxes neither flat nor one-hot.
static void problem_init(problem *p, int n, int d, int V, uint64_t seed) {
    hdlm_rng rng;
    hdlm_rng_init(&rng, seed);
    p->n = n, p->d = d, p->V = V;
    p->x = uniform_array(&rng, (size_t)n * d, 1.0f, true);
    p->w = uniform_array(&rng, (size_t)V * d, 6.0f / sqrtf((float)d), true);
    p->b = uniform_array(&rng, (size_t)V, 1.0f, true);
    p->dw0 = uniform_array(&rng, (size_t)V * d, 0.1f, false);
    p->db0 = uniform_array(&rng, (size_t)V, 0.1f, false);
}

static void problem_free(problem *p) {
    free(p->x), free(p->w), free(p->b), free(p->dw0), free(p->db0);
}

// Results of one side: loss, dx [n, d], dW [V, d], db [V].
typedef struct {
    double loss;
    float *dx, *dw, *db;
} result;

static void result_alloc(result *r, const problem *p) {
    r->dx = hdlm_malloc((size_t)p->n * p->d * sizeof(float));
    r->dw = hdlm_malloc((size_t)p->V * p->d * sizeof(float));
    r->db = hdlm_malloc((size_t)p->V * sizeof(float));
    memcpy(r->dw, p->dw0, (size_t)p->V * p->d * sizeof(float));
    memcpy(r->db, p->db0, (size_t)p->V * sizeof(float));
}

static void result_free(result *r) { free(r->dx), free(r->dw), free(r->db); }

// Runs hdlm_cuda_head_loss with a workspace for `chunk` rows at a time (0: the full workspace); with_grad false
// passes dx = NULL and checks that dW, db are left alone.
static void gpu_run(const problem *p, const hdlm_cuda_head_rows *rows, int chunk, bool with_grad, result *out) {
    const int n = p->n, d = p->d, V = p->V;
    hdlm_bf16 *x = test_cuda_upload_bf16(p->x, (size_t)n * d), *w = test_cuda_upload_bf16(p->w, (size_t)V * d);
    hdlm_bf16 *b = test_cuda_upload_bf16(p->b, V);
    float *dw = test_cuda_upload_f32(p->dw0, (size_t)V * d), *db = test_cuda_upload_f32(p->db0, V);
    hdlm_bf16 *dx = with_grad ? hdlm_cuda_malloc((size_t)n * d * sizeof(hdlm_bf16)) : NULL;
    double *loss = hdlm_cuda_malloc(sizeof *loss);
    size_t ws_bytes = hdlm_cuda_head_workspace_bytes(n, d, V);
    if (chunk > 0) {   // the workspace grows by one row's share per row below the 2048-row cap
        size_t per_row = hdlm_cuda_head_workspace_bytes(2, d, V) - hdlm_cuda_head_workspace_bytes(1, d, V);
        ws_bytes -= (size_t)(n - chunk) * per_row;
    }
    void *ws = hdlm_cuda_malloc(ws_bytes);
    if (with_grad) {   // garbage in dx: every row must be written (0 for rows not scored)
        hdlm_bf16 *junk = hdlm_malloc((size_t)n * d * sizeof *junk);
        for (size_t i = 0; i < (size_t)n * d; i++) junk[i] = hdlm_bf16_from_float(123.0f);
        hdlm_cuda_upload(dx, junk, (size_t)n * d * sizeof *junk);
        free(junk);
    }
    hdlm_cuda_head_loss(loss, dx, with_grad ? dw : NULL, with_grad ? db : NULL, ws, ws_bytes, x, w, b, rows, n, d, V,
                        hdlm_cuda_stream());
    hdlm_cuda_synchronize();
    hdlm_cuda_download(&out->loss, loss, sizeof out->loss);
    hdlm_cuda_download(out->dw, dw, (size_t)V * d * sizeof(float));
    hdlm_cuda_download(out->db, db, (size_t)V * sizeof(float));
    if (with_grad) {
        hdlm_bf16 *h = hdlm_malloc((size_t)n * d * sizeof *h);
        hdlm_cuda_download(h, dx, (size_t)n * d * sizeof *h);
        for (size_t i = 0; i < (size_t)n * d; i++) out->dx[i] = hdlm_bf16_to_float(h[i]);
        free(h);
    }
    hdlm_cuda_free(ws), hdlm_cuda_free(loss), hdlm_cuda_free(dx), hdlm_cuda_free(db), hdlm_cuda_free(dw);
    hdlm_cuda_free(b), hdlm_cuda_free(w), hdlm_cuda_free(x);
}

static void assert_loss(double got, double expect) {
    if (!(fabs(got - expect) <= 1e-5 * fabs(expect) + 1e-12)) {
        print_error("loss: GPU %.12g, CPU %.12g (relative tolerance 1e-5)\n", got, expect);
        fail();
    }
}

// |got − expect| ≤ 2u·bound + 2u·|expect|·rel_out + 2^-20·|expect| element-wise, u = 2^-8 (see the top comment).
static void assert_close(const char *what, const float *got, const float *expect, const float *bound, size_t count,
                         double rel_out) {
    size_t bad = 0, worst = 0;
    double worst_ratio = 0;
    for (size_t i = 0; i < count; i++) {
        double tol = 0x1p-7 * bound[i] + (0x1p-7 * rel_out + 0x1p-20) * fabs(expect[i]) + 1e-30;
        double ratio = fabs((double)got[i] - expect[i]) / tol;
        if (!(ratio <= 1.0)) bad++;
        if (!(ratio <= worst_ratio)) worst_ratio = ratio, worst = i;
    }
    if (bad) {
        print_error("%s: %zu of %zu entries outside tolerance; worst [%zu] GPU %.9g CPU %.9g bound %.3g\n", what, bad,
                    count, worst, got[worst], expect[worst], bound[worst]);
        fail();
    }
}

// CPU backward of the head from dlogits (cpu->dx, dw, db) and the error bounds Σ|g||W|, Σ|g||x|, Σ|g|.
static void cpu_backward_and_compare(const problem *p, const float *dlogits, result *cpu, const result *gpu,
                                     const uint8_t *scored) {
    const int n = p->n, d = p->d, V = p->V;
    hdlm_linear_backward(cpu->dx, cpu->dw, cpu->db, dlogits, p->x, p->w, n, d, V, false);
    float *ag = hdlm_malloc((size_t)n * V * sizeof *ag), *ax = hdlm_malloc((size_t)n * d * sizeof *ax);
    float *aw = hdlm_malloc((size_t)V * d * sizeof *aw);
    for (size_t i = 0; i < (size_t)n * V; i++) ag[i] = fabsf(dlogits[i]);
    for (size_t i = 0; i < (size_t)n * d; i++) ax[i] = fabsf(p->x[i]);
    for (size_t i = 0; i < (size_t)V * d; i++) aw[i] = fabsf(p->w[i]);
    float *bdx = hdlm_malloc((size_t)n * d * sizeof *bdx), *bdw = hdlm_calloc((size_t)V * d, sizeof *bdw);
    float *bdb = hdlm_calloc((size_t)V, sizeof *bdb);
    hdlm_linear_backward(bdx, bdw, bdb, ag, ax, aw, n, d, V, false);
    assert_close("dx", gpu->dx, cpu->dx, bdx, (size_t)n * d, 1.0);
    assert_close("dW", gpu->dw, cpu->dw, bdw, (size_t)V * d, 0.0);
    assert_close("db", gpu->db, cpu->db, bdb, (size_t)V, 0.0);
    for (int r = 0; r < n; r++)
        if (!scored[r])
            for (int j = 0; j < d; j++)
                if (gpu->dx[(size_t)r * d + j] != 0.0f) {
                    print_error("dx of row %d (not scored) is %g, not 0\n", r, gpu->dx[(size_t)r * d + j]);
                    fail();
                }
    free(ag), free(ax), free(aw), free(bdx), free(bdw), free(bdb);
}

// ---- ε / ARDM ---------------------------------------------------------------------------------------------------

// Random corruption weights (about a third 0), targets below softmax_width; GPU (full and chunked workspace, and
// without gradients) against hdlm_corruption_loss.
static void check_cross_entropy(int batch, int length, int d, int V, int softmax_width, int chunk, uint64_t seed) {
    const int n = batch * length;
    problem p;
    problem_init(&p, n, d, V, seed);
    hdlm_corruption c;
    hdlm_corruption_alloc(&c, batch, length);
    uint32_t *x0 = hdlm_malloc((size_t)n * sizeof *x0);
    uint8_t *scored = hdlm_malloc((size_t)n);
    hdlm_rng rng;
    hdlm_rng_init(&rng, seed + 1);
    for (int r = 0; r < n; r++) {
        x0[r] = (uint32_t)hdlm_rng_below(&rng, (uint64_t)softmax_width);
        c.xt[r] = x0[r];
        c.kind[r] = HDLM_CORRUPT_KEPT;
        c.weight[r] = hdlm_rng_uniform(&rng) < 0.35f ? 0.0f : 0.1f + 3.0f * hdlm_rng_uniform(&rng);
        scored[r] = c.weight[r] != 0.0f;
    }
    c.norm = 0.75 * n;

    float *logits = hdlm_malloc((size_t)n * V * sizeof *logits);
    float *dlogits = hdlm_malloc((size_t)n * V * sizeof *dlogits);
    hdlm_linear_forward(logits, p.x, p.w, p.b, n, d, V);
    result cpu, gpu;
    result_alloc(&cpu, &p);
    result_alloc(&gpu, &p);
    cpu.loss = hdlm_corruption_loss(&c, x0, logits, V, softmax_width, dlogits);

    hdlm_cuda_head_rows *rows = hdlm_cuda_head_rows_create(n);
    hdlm_cuda_head_rows_cross_entropy(rows, &c, x0, V, softmax_width, hdlm_cuda_stream());
    gpu_run(&p, rows, 0, false, &gpu);   // loss only: dW, db untouched
    assert_loss(gpu.loss, cpu.loss);
    assert_memory_equal(gpu.dw, p.dw0, (size_t)V * d * sizeof(float));
    assert_memory_equal(gpu.db, p.db0, (size_t)V * sizeof(float));
    gpu_run(&p, rows, chunk, true, &gpu);
    assert_loss(gpu.loss, cpu.loss);
    cpu_backward_and_compare(&p, dlogits, &cpu, &gpu, scored);
    result again;   // a second run gives the same bits (fixed-order sums, no atomics)
    result_alloc(&again, &p);
    gpu_run(&p, rows, chunk, true, &again);
    assert_true(again.loss == gpu.loss);
    assert_memory_equal(again.dx, gpu.dx, (size_t)n * d * sizeof(float));
    assert_memory_equal(again.dw, gpu.dw, (size_t)V * d * sizeof(float));
    assert_memory_equal(again.db, gpu.db, (size_t)V * sizeof(float));
    result_free(&again);

    hdlm_cuda_head_rows_free(rows);
    result_free(&cpu), result_free(&gpu);
    free(logits), free(dlogits), free(x0), free(scored);
    hdlm_corruption_free(&c);
    problem_free(&p);
}

// ε: softmax over all V entries, 3 sequences of 32 in chunks of 13 rows (the last chunk partial).
static void test_cross_entropy(void **state) {
    (void)state;
    if (!gpu_usable()) skip();
    check_cross_entropy(3, 32, 64, 1000, 1000, 13, 11);
}

// ARDM: softmax over V − 1 entries (MASK left out, its gradient 0), one chunk.
static void test_cross_entropy_ardm_width(void **state) {
    (void)state;
    if (!gpu_usable()) skip();
    check_cross_entropy(2, 40, 96, 1000, 999, 0, 12);
}

// The model's vocabulary (V = 50258, not a multiple of the block size) on a few rows, in chunks of 2.
static void test_cross_entropy_full_vocab(void **state) {
    (void)state;
    if (!gpu_usable()) skip();
    check_cross_entropy(1, 7, 32, HDLM_MODEL_VOCAB, HDLM_MODEL_VOCAB - 1, 2, 13);
}

// ---- γ -----------------------------------------------------------------------------------------------------------

// Block schedule, one step k per sequence, xt from the forward process with some rows forced into each branch of
// the score entropy (MASK, x = x0, real x ≠ x0). GPU against scale_by_sigma + post-processing + hdlm_gamma_loss.
static void check_gamma(int length, int width, int tau, const int *ks, int batch, int d, int V, int chunk,
                        uint64_t seed) {
    const int n = batch * length, N = V - 1;
    hdlm_schedule s;
    assert_int_equal(hdlm_schedule_init(&s, HDLM_SCHEDULE_BLOCK, length, width, tau, HDLM_SAMPLING_EPS,
                                        HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL), 0);
    hdlm_step *steps = hdlm_malloc((size_t)batch * sizeof *steps);
    const hdlm_step **step_of = hdlm_malloc((size_t)batch * sizeof *step_of);
    int n_settled = 0, n_pinned = 0;
    for (int bi = 0; bi < batch; bi++) {   // equal neighbouring k share one step, as under per-batch sampling
        hdlm_step_alloc(&steps[bi], length);
        assert_int_equal(hdlm_schedule_step(&s, ks[bi] < s.k_max ? ks[bi] : s.k_max - 1, &steps[bi]), 0);
        step_of[bi] = bi > 0 && ks[bi] == ks[bi - 1] ? step_of[bi - 1] : &steps[bi];
        n_settled += steps[bi].n_set;
        n_pinned += steps[bi].n_set > 1 ? steps[bi].n_set - 1 : 0;
    }
    assert_true(n_settled > 0 && n_pinned > 0 && n_settled < n);   // every kind of row is present

    problem p;
    problem_init(&p, n, d, V, seed);
    const hdlm_gamma_config cfg = {0.1, 1.0, 0.5};
    uint32_t *x0 = hdlm_malloc((size_t)n * sizeof *x0), *xt = hdlm_malloc((size_t)n * sizeof *xt);
    uint8_t *scored = hdlm_malloc((size_t)n);
    hdlm_rng rng;
    hdlm_rng_init(&rng, seed + 1);
    for (int r = 0; r < n; r++) x0[r] = (uint32_t)hdlm_rng_below(&rng, (uint64_t)N);
    hdlm_gamma_corrupt(cfg.gamma, step_of, x0, batch, V, seed + 2, xt);
    int branch[3] = {0, 0, 0};   // MASK, x = x0, real x ≠ x0 among the rows scored by the score entropy
    for (int r = 0; r < n; r++) {
        const hdlm_step *st = step_of[r / length];
        int i = r % length;
        scored[r] = !(st->cls[i] == HDLM_POS_SETTLED && hdlm_gamma_settled_weight(st, i) == 0.0);
        if (st->cls[i] == HDLM_POS_SETTLED) continue;
        if (r % 5 == 1) xt[r] = (uint32_t)N;
        if (r % 5 == 2) xt[r] = x0[r];
        if (r % 5 == 3) xt[r] = (x0[r] + 1 + (uint32_t)hdlm_rng_below(&rng, (uint64_t)N - 1)) % (uint32_t)N;
        branch[xt[r] == (uint32_t)N ? 0 : xt[r] == x0[r] ? 1 : 2]++;
    }
    assert_true(branch[0] > 0 && branch[1] > 0 && branch[2] > 0);

    float *out = hdlm_malloc((size_t)n * V * sizeof *out), *dout = hdlm_malloc((size_t)n * V * sizeof *dout);
    float *sigma = hdlm_malloc((size_t)length * sizeof *sigma);
    hdlm_linear_forward(out, p.x, p.w, p.b, n, d, V);
    const size_t LV = (size_t)length * V;
    for (int bi = 0; bi < batch; bi++) {
        hdlm_gamma_sigmas(step_of[bi], sigma);
        hdlm_gamma_scale_by_sigma(sigma, length, V, out + bi * LV);
        hdlm_gamma_post_process(step_of[bi], V, out + bi * LV);
    }
    result cpu, gpu;
    result_alloc(&cpu, &p);
    result_alloc(&gpu, &p);
    cpu.loss = hdlm_gamma_loss(&cfg, step_of, out, xt, x0, batch, V, dout, NULL);
    for (int bi = 0; bi < batch; bi++) hdlm_gamma_post_process_backward(step_of[bi], V, dout + bi * LV);

    hdlm_cuda_head_rows *rows = hdlm_cuda_head_rows_create(n);
    hdlm_cuda_head_rows_gamma(rows, &cfg, step_of, xt, x0, batch, V, hdlm_cuda_stream());
    gpu_run(&p, rows, chunk, true, &gpu);
    assert_loss(gpu.loss, cpu.loss);
    cpu_backward_and_compare(&p, dout, &cpu, &gpu, scored);

    hdlm_cuda_head_rows_free(rows);
    result_free(&cpu), result_free(&gpu);
    free(out), free(dout), free(sigma), free(x0), free(xt), free(scored);
    problem_free(&p);
    for (int bi = 0; bi < batch; bi++) hdlm_step_free(&steps[bi]);
    free(steps), free((void *)step_of);
    hdlm_schedule_free(&s);
}

// Block-autoregressive steps (ω = 4, τ = 4) with settled prefixes of 0 to 3 blocks (block weights 0, ½ and 1), the
// active block at levels 2, 1, 0 and 1 (t down to ε_a = 10⁻³), worthless rows, two sequences sharing one step;
// chunks of 11 rows.
static void test_gamma_score_entropy(void **state) {
    (void)state;
    if (!gpu_usable()) skip();
    static const int ks[5] = {2, 7, 12, 12, 15};
    check_gamma(16, 4, 4, ks, 5, 64, 1000, 11, 21);
}

// The model's vocabulary on two short sequences: ρ ≈ 10⁻⁸ and r ≈ 10³ at the lowest level.
static void test_gamma_full_vocab(void **state) {
    (void)state;
    if (!gpu_usable()) skip();
    static const int ks[2] = {3, 4};
    check_gamma(6, 2, 2, ks, 2, 32, HDLM_MODEL_VOCAB, 0, 22);
}

#else

static void skip_all(void **state) {
    (void)state;
    gpu_usable();
    skip();
}

#endif

int main(void) {
#ifdef HDLM_HAVE_CUDA
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cross_entropy),
        cmocka_unit_test(test_cross_entropy_ardm_width),
        cmocka_unit_test(test_cross_entropy_full_vocab),
        cmocka_unit_test(test_gamma_score_entropy),
        cmocka_unit_test(test_gamma_full_vocab),
    };
#else
    const struct CMUnitTest tests[] = {cmocka_unit_test(skip_all)};
#endif
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

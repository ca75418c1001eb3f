// The GPU model (cuda/cuda_model.h) against the CPU model: one whole training step — forward, loss, backward — for
// the ε objective (full mask and a hyperschedule mask with settled, active and worthless positions), ARDM (MASK left
// out of the softmax) and γ (score entropy + settled CE), with dropout 0 and 0.1 (same keys, so the same elements are
// dropped); the loss and EVERY parameter gradient are compared. Also the grad-ready hook (same order and offsets as
// the CPU model, one event per point), a forward without backward leaving the gradients alone, one model through
// changing shapes (new length, more tokens), the refusal of bad inputs and the profile (HDLM_PROFILE=1).
//
// Tolerances (bf16 activations and matmul inputs, fp32 accumulation, fp32 residual stream and statistics): the
// parameters are rounded to bf16 first, so the GPU's bf16 weight shadow is exact and only activations and
// activation gradients are rounded (relative error ≤ 2⁻⁹ each). Calibration on the CPU: perturbing every parameter
// by a bf16-sized relative error (uniform ±2⁻⁸) moves the gradients by up to 1.4e-2 of a tensor's RMS (the LayerNorm
// weights, whose gradients are sums over rows with cancellation; the others less) and the largest entries by up to
// 1.8e-2 of the largest. The GPU rounds at ~15 places forward and back, each a perturbation of that size, so we expect
// 1–3e-2 and allow, per tensor, an RMS error of 5e-2 × the CPU gradient's RMS and a largest error of 0.1 × its largest
// entry. The loss is a mean over rows where rounding averages out (1.6e-4 in the calibration): relative 5e-3. A
// wrong dropout key, gate, layer or offset gives errors of order 1; one wrong row in 128 about 0.09.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hdlm/common.h"
#include "hdlm/cuda.h"
#ifdef HDLM_HAVE_CUDA
#include "cuda/cuda_model.h"
#include "hdlm/diffusion.h"
#include "hdlm/model.h"
#include "hdlm/rng.h"
#include "hdlm/schedule.h"
#endif

#ifdef HDLM_HAVE_CUDA

enum { L = 64, V = 1000 };   // longest sequence (max_length) and vocabulary
static const double LOSS_TOL = 5e-3, GRAD_RMS_TOL = 5e-2, GRAD_MAX_TOL = 0.1;

// Width 256 with 4 heads gives head dim 64, the flash-attention fast path the real model uses.
static hdlm_model_config small_config(hdlm_family family, float dropout) {
    hdlm_model_config c = hdlm_model_config_ddit_small(family);
    c.width = 256;
    c.n_layers = 2;
    c.n_heads = 4;
    c.mlp_ratio = 4;
    c.cond_dim = 64;
    c.vocab = V;
    c.max_length = L;
    c.dropout = dropout;
    c.gamma = 0.05f;   // larger than the paper's 0.01 so that the MASK mix carries a visible gradient
    return c;
}

// test_model_randomize's parameters rounded to bf16, so the GPU's bf16 shadow equals the fp32 master exactly.
static void randomize_params(hdlm_model *m, uint64_t seed) {
    test_model_randomize(m, seed);
    for (size_t k = 0; k < m->n_params; k++) m->params[k] = hdlm_bf16_to_float(hdlm_bf16_from_float(m->params[k]));
}

// A block step of L = 64, ω = 16, τ = 4: settled 0..31 (two blocks, so the γ CE block weights differ), active
// 32..47 at a middle level (t ≈ 0.67: masked, replaced and untouched positions all occur), worthless 48..63.
static void hyperschedule_step(hdlm_schedule *s, hdlm_step *st, hdlm_context_type context, hdlm_block_type block) {
    assert_int_equal(hdlm_schedule_init(s, HDLM_SCHEDULE_BLOCK, L, 16, 4, HDLM_SAMPLING_EPS, context, block), 0);
    hdlm_step_alloc(st, L);
    for (int k = 1; k < s->k_max; k++) {
        assert_int_equal(hdlm_schedule_step(s, k, st), 0);
        if (st->n_set == 32 && st->a_end == 47 && st->t[32] > 0.5f && st->t[32] < 0.9f) return;
    }
    fail_msg("no step with 32 settled positions, active ones at a middle level and worthless ones");
}

// Per-tensor comparison of GPU and CPU gradients (tolerances in the header comment); prints the worst ratios.
static void compare_grads(const hdlm_model *cpu, const float *gpu_grads, const char *label) {
    double worst = 0, worst_max = 0;
    const char *worst_name = "", *worst_max_name = "";
    bool ok = true;
    for (int i = 0; i < cpu->n_tensors; i++) {
        const hdlm_tensor *t = &cpu->tensors[i];
        if (!t->trainable) continue;
        const float *a = cpu->grads + t->offset, *b = gpu_grads + t->offset;
        double ss = 0, se = 0, amax = 0, emax = 0;
        for (size_t k = 0; k < t->numel; k++) {
            double e = fabs((double)b[k] - a[k]);
            ss += (double)a[k] * a[k];
            se += e * e;
            amax = fmax(amax, fabs(a[k]));
            emax = isnan(e) ? INFINITY : fmax(emax, e);
        }
        double rms = sqrt(ss / t->numel), erms = sqrt(se / t->numel);
        double ratio = rms > 0 ? erms / rms : (emax > 0 ? INFINITY : 0);
        bool bad = !(ratio <= GRAD_RMS_TOL) || !(emax <= GRAD_MAX_TOL * amax);
        if (bad) {
            print_message("  %s: %s rms %.3e, error rms %.3e (ratio %.3e), max %.3e vs largest %.3e\n", label, t->name,
                          rms, erms, ratio, emax, amax);
            ok = false;
        }
        if (ratio > worst) {
            worst = ratio;
            worst_name = t->name;
        }
        if (amax > 0 && emax / amax > worst_max) {
            worst_max = emax / amax;
            worst_max_name = t->name;
        }
    }
    print_message("  %-28s gradient error: RMS %.2e of the RMS (%s), largest %.2e of the largest (%s)\n", label,
                  worst, worst_name, worst_max, worst_max_name);
    assert_true(ok);
}

static void assert_loss_close(double gpu, double cpu, const char *label) {
    print_message("  %-28s loss %.6f (CPU %.6f, relative error %.2e)\n", label, gpu, cpu, fabs(gpu - cpu) / fabs(cpu));
    assert_true(isfinite(gpu));
    assert_true(fabs(gpu - cpu) <= LOSS_TOL * fabs(cpu));
}

typedef enum { CASE_EPS_FULL, CASE_EPS_HYPER, CASE_ARDM, CASE_GAMMA, CASE_EPS_TWO_COPY, CASE_GAMMA_TWO_COPY } case_kind;

// The two-copy layout (method §2.10) of L/2 = 32 tokens, ω = 8, τ = 4: 2L = 64 model positions, the four blocks at
// levels drawn independently (steps fixed by the seed).
static void two_copy_step(hdlm_schedule *s, hdlm_step *st, hdlm_context_type context, hdlm_block_type block) {
    assert_int_equal(hdlm_schedule_init(s, HDLM_SCHEDULE_BLOCK, L / 2, 8, 4, HDLM_SAMPLING_EPS, context, block), 0);
    hdlm_step_alloc(st, L);
    int steps[4], scratch[L / 2];
    hdlm_schedule_sample_block_steps(s, 3, 0, 0, steps);
    assert_int_equal(hdlm_schedule_two_copy_step(s, steps, scratch, st), 0);
}

// The `from` offsets of the grad-ready hook, and the events of the GPU hook.
typedef struct {
    hdlm_cuda_model *gpu;   // NULL for the CPU model
    size_t from[64];
    void *event[64];
    int count;
} hook_log;

static void hook_record(void *ctx, size_t from) {
    hook_log *h = ctx;
    assert_true(h->count < 64);
    h->event[h->count] = h->gpu ? hdlm_cuda_model_grad_event(h->gpu) : NULL;
    h->from[h->count++] = from;
}

// One training step of `kind` on both models (same parameters) with the same data, mask and dropout key, batch × len
// tokens; compares the loss, every gradient and the grad-ready hook.
static void step_and_compare(hdlm_model *cpu, hdlm_cuda_model *gpu, case_kind kind, int batch, int len,
                             const char *label) {
    const hdlm_model_config *config = &cpu->config;
    bool two_copy = kind == CASE_EPS_TWO_COPY || kind == CASE_GAMMA_TWO_COPY;
    bool gamma = kind == CASE_GAMMA || kind == CASE_GAMMA_TWO_COPY;
    bool hyper = kind == CASE_EPS_HYPER || gamma || two_copy;
    const int N = batch * len;
    uint32_t *x0 = hdlm_malloc((size_t)N * sizeof(uint32_t)), *xt = hdlm_malloc((size_t)N * sizeof(uint32_t));
    float *sigma = hdlm_malloc((size_t)N * sizeof(float));
    hdlm_rng rng;
    hdlm_rng_init(&rng, hdlm_rng_key(5, (uint64_t)N, (uint64_t)kind, HDLM_RNG_NOISE));
    for (int i = 0; i < N; i++) x0[i] = (uint32_t)hdlm_rng_below(&rng, V - 1);
    uint64_t noise_key = hdlm_rng_key(7, (uint64_t)N, (uint64_t)kind, HDLM_RNG_NOISE);

    hdlm_schedule sched = {0};
    hdlm_step st = {0};
    const hdlm_step **steps = hdlm_malloc((size_t)batch * sizeof *steps);
    if (hyper) {
        assert_int_equal(len, L);
        (two_copy ? two_copy_step : hyperschedule_step)(&sched, &st,
                                                        gamma ? HDLM_CONTEXT_CAUSAL : HDLM_CONTEXT_BLOCK_CAUSAL,
                                                        gamma ? HDLM_BLOCK_CAUSAL : HDLM_BLOCK_FULL);
    }
    for (int b = 0; b < batch; b++) steps[b] = &st;

    hdlm_corruption corr;
    hdlm_corruption_alloc(&corr, batch, len);
    hdlm_eps_config eps_cfg = {HDLM_EPS_LOSS_HYBRID, 0.01, 1.0};
    hdlm_ardm_config ardm_cfg = {1e-4, 1, 0};
    hdlm_gamma_config gamma_cfg = {config->gamma, 1.0, 1.0};
    int width = V;
    switch (kind) {
    case CASE_EPS_FULL:
        hdlm_epsilon_corrupt_unscheduled(&eps_cfg, HDLM_SAMPLING_EPS, x0, V, noise_key, &corr, NULL);
        break;
    case CASE_EPS_HYPER:
    case CASE_EPS_TWO_COPY: hdlm_epsilon_corrupt(&eps_cfg, steps, x0, V, noise_key, &corr); break;
    case CASE_ARDM:
        hdlm_ardm_corrupt(&ardm_cfg, x0, V, noise_key, &corr, NULL);
        width = hdlm_ardm_softmax_width(&ardm_cfg, V);
        assert_int_equal(width, V - 1);
        break;
    case CASE_GAMMA:
    case CASE_GAMMA_TWO_COPY:
        hdlm_gamma_corrupt(gamma_cfg.gamma, steps, x0, batch, V, noise_key, xt);
        for (int b = 0; b < batch; b++) hdlm_gamma_sigmas(steps[b], sigma + b * len);
        break;
    }
    hdlm_model_input in = {gamma ? xt : corr.xt, gamma ? sigma : NULL, hyper ? &st.mask : NULL, batch, len,
                           config->dropout > 0, hdlm_rng_key(9, (uint64_t)N, (uint64_t)kind, HDLM_RNG_DROPOUT), 0, NULL,
                           NULL};

    // CPU step (as src/train/trainer.c does it).
    hook_log cpu_hooks = {0}, gpu_hooks = {0};
    gpu_hooks.gpu = gpu;
    cpu->grad_ready = hook_record;
    cpu->grad_ready_ctx = &cpu_hooks;
    hdlm_model_zero_grad(cpu);
    assert_int_equal(hdlm_model_forward(cpu, &in), 0);
    float *dout = hdlm_malloc((size_t)N * V * sizeof(float));
    double cpu_loss;
    if (gamma) {
        for (int b = 0; b < batch; b++) hdlm_gamma_post_process(steps[b], V, cpu->out + (size_t)b * len * V);
        cpu_loss = hdlm_gamma_loss(&gamma_cfg, steps, cpu->out, xt, x0, batch, V, dout, NULL);
        for (int b = 0; b < batch; b++) hdlm_gamma_post_process_backward(steps[b], V, dout + (size_t)b * len * V);
    } else {
        cpu_loss = hdlm_corruption_loss(&corr, x0, cpu->out, V, width, dout);
    }
    hdlm_model_backward(cpu, dout);

    // A forward without backward gives the same loss and leaves the gradients alone.
    float *grads = hdlm_malloc(cpu->n_params * sizeof(float));
    hdlm_cuda_model_set_grad_ready(gpu, NULL, NULL);
    hdlm_cuda_model_zero_grad(gpu);
    if (gamma) assert_int_equal(hdlm_cuda_model_forward_gamma(gpu, &in, &gamma_cfg, steps, x0, false), 0);
    else assert_int_equal(hdlm_cuda_model_forward_epsilon(gpu, &in, &corr, x0, width, false), 0);
    double eval_loss = hdlm_cuda_model_loss(gpu);
    hdlm_cuda_model_download_grads(gpu, grads);
    for (size_t k = 0; k < cpu->n_params; k++) assert_true(grads[k] == 0.0f);

    // GPU step.
    hdlm_cuda_model_set_grad_ready(gpu, hook_record, &gpu_hooks);
    if (gamma) assert_int_equal(hdlm_cuda_model_forward_gamma(gpu, &in, &gamma_cfg, steps, x0, true), 0);
    else assert_int_equal(hdlm_cuda_model_forward_epsilon(gpu, &in, &corr, x0, width, true), 0);
    hdlm_cuda_model_backward(gpu);
    double gpu_loss = hdlm_cuda_model_loss(gpu);
    hdlm_cuda_model_download_grads(gpu, grads);

    assert_loss_close(gpu_loss, cpu_loss, label);
    assert_true(fabs(eval_loss - gpu_loss) <= 1e-5 * fabs(gpu_loss));   // same kernels, same inputs
    compare_grads(cpu, grads, label);

    // The hook: CPU order and offsets, a distinct event at each point.
    assert_int_equal(gpu_hooks.count, config->n_layers + 1);
    assert_int_equal(gpu_hooks.count, cpu_hooks.count);
    for (int i = 0; i < gpu_hooks.count; i++) {
        assert_true(gpu_hooks.from[i] == cpu_hooks.from[i]);
        assert_non_null(gpu_hooks.event[i]);
        for (int j = 0; j < i; j++) assert_ptr_not_equal(gpu_hooks.event[i], gpu_hooks.event[j]);
    }

    free(grads);
    free(dout);
    hdlm_corruption_free(&corr);
    if (hyper) {
        hdlm_step_free(&st);
        hdlm_schedule_free(&sched);
    }
    free(steps);
    free(sigma);
    free(xt);
    free(x0);
}

// A CPU model with random bf16-representable parameters and its GPU twin.
static void create_models(case_kind kind, float dropout, hdlm_model **cpu, hdlm_cuda_model **gpu) {
    bool gamma = kind == CASE_GAMMA || kind == CASE_GAMMA_TWO_COPY;
    hdlm_model_config config = small_config(gamma ? HDLM_FAMILY_GAMMA : HDLM_FAMILY_EPSILON, dropout);
    assert_int_equal(hdlm_model_create(cpu, &config), 0);
    randomize_params(*cpu, 11 + (uint64_t)kind);
    assert_int_equal(hdlm_cuda_model_create(gpu, *cpu), 0);
    assert_int_equal(hdlm_cuda_model_n_params(*gpu), (*cpu)->n_params);
}

static void run_case(case_kind kind, float dropout, const char *label) {
    hdlm_model *cpu;
    hdlm_cuda_model *gpu;
    create_models(kind, dropout, &cpu, &gpu);
    step_and_compare(cpu, gpu, kind, 2, L, label);
    hdlm_cuda_model_free(gpu);
    hdlm_model_free(cpu);
}

#endif

static void test_epsilon_full_mask(void **state) {
    (void)state;
    if (!test_gpu_ready()) skip();
#ifdef HDLM_HAVE_CUDA
    run_case(CASE_EPS_FULL, 0.0f, "epsilon full");
    run_case(CASE_EPS_FULL, 0.1f, "epsilon full, dropout 0.1");
#endif
}

static void test_epsilon_hyperschedule(void **state) {
    (void)state;
    if (!test_gpu_ready()) skip();
#ifdef HDLM_HAVE_CUDA
    run_case(CASE_EPS_HYPER, 0.0f, "epsilon hyperschedule");
    run_case(CASE_EPS_HYPER, 0.1f, "epsilon hyperschedule, p 0.1");
#endif
}

static void test_ardm(void **state) {
    (void)state;
    if (!test_gpu_ready()) skip();
#ifdef HDLM_HAVE_CUDA
    run_case(CASE_ARDM, 0.0f, "ardm (softmax V-1)");
#endif
}

static void test_gamma_hyperschedule(void **state) {
    (void)state;
    if (!test_gpu_ready()) skip();
#ifdef HDLM_HAVE_CUDA
    run_case(CASE_GAMMA, 0.0f, "gamma hyperschedule");
    run_case(CASE_GAMMA, 0.1f, "gamma hyperschedule, p 0.1");
#endif
}

// The two-copy layout: rotary positions repeated over the noisy copy, the attention's key windows, γ's unit
// weights on the clean copy.
static void test_two_copy(void **state) {
    (void)state;
    if (!test_gpu_ready()) skip();
#ifdef HDLM_HAVE_CUDA
    run_case(CASE_EPS_TWO_COPY, 0.1f, "epsilon two-copy, p 0.1");
    run_case(CASE_GAMMA_TWO_COPY, 0.0f, "gamma two-copy");
#endif
}

// One GPU model through changing shapes: a new length (rotary tables and attention workspace rebuilt, same token
// count), then more tokens (every buffer grown), each step still matching the CPU.
static void test_shapes_change(void **state) {
    (void)state;
    if (!test_gpu_ready()) skip();
#ifdef HDLM_HAVE_CUDA
    hdlm_model *cpu;
    hdlm_cuda_model *gpu;
    create_models(CASE_EPS_FULL, 0.1f, &cpu, &gpu);
    step_and_compare(cpu, gpu, CASE_EPS_FULL, 2, L, "shapes: 2 x 64");
    step_and_compare(cpu, gpu, CASE_EPS_FULL, 4, L / 2, "shapes: 4 x 32");
    step_and_compare(cpu, gpu, CASE_EPS_FULL, 3, L, "shapes: 3 x 64 (grown)");
    hdlm_cuda_model_free(gpu);
    hdlm_model_free(cpu);
#endif
}

// Bad inputs are refused with the CPU model's messages, before anything is queued.
static void test_bad_inputs_refused(void **state) {
    (void)state;
    if (!test_gpu_ready()) skip();
#ifdef HDLM_HAVE_CUDA
    hdlm_model *cpu;
    hdlm_cuda_model *gpu;
    create_models(CASE_EPS_FULL, 0.0f, &cpu, &gpu);
    enum { N = 2 * L };
    uint32_t x0[N] = {0};
    hdlm_corruption corr;
    hdlm_corruption_alloc(&corr, 2, L);
    for (int i = 0; i < N; i++) {
        corr.xt[i] = (uint32_t)i;
        corr.weight[i] = 1.0f;
    }
    corr.xt[7] = V;   // out of the vocabulary
    hdlm_model_input in = {corr.xt, NULL, NULL, 2, L, false, 0, 0, NULL, NULL};
    assert_int_equal(hdlm_cuda_model_forward_epsilon(gpu, &in, &corr, x0, V, true), -1);
    assert_error_contains("token 7 has id 1000");
    corr.xt[7] = 7;
    in.length = L / 2;   // the corruption is for 2 x L
    assert_int_equal(hdlm_cuda_model_forward_epsilon(gpu, &in, &corr, x0, V, true), -1);
    assert_error_contains("corruption of shape [2, 64]");
    in.length = L;
    x0[3] = V - 1;   // ARDM leaves MASK out of the softmax: a MASK target is refused
    assert_int_equal(hdlm_cuda_model_forward_epsilon(gpu, &in, &corr, x0, V - 1, true), -1);
    assert_error_contains("clean token 3");
    x0[3] = 0;
    hdlm_gamma_config gamma_cfg = {0.05, 1.0, 1.0};
    const hdlm_step *steps[2] = {NULL, NULL};
    assert_int_equal(hdlm_cuda_model_forward_gamma(gpu, &in, &gamma_cfg, steps, x0, true), -1);
    assert_error_contains("gamma-family model");
    assert_int_equal(hdlm_cuda_model_forward_epsilon(gpu, &in, &corr, x0, V, false), 0);   // still usable
    assert_true(isfinite(hdlm_cuda_model_loss(gpu)));
    hdlm_corruption_free(&corr);
    hdlm_cuda_model_free(gpu);
    hdlm_model_free(cpu);
#endif
}

// HDLM_PROFILE=1 at create: the step still matches the CPU, and the report has every kind the γ model runs plus the
// caller's optimizer span, with positive times. A model created without it reports nothing.
static void test_profile(void **state) {
    (void)state;
    if (!test_gpu_ready()) skip();
#ifdef HDLM_HAVE_CUDA
    hdlm_model *cpu;
    hdlm_cuda_model *gpu;
    hdlm_model_config config = small_config(HDLM_FAMILY_GAMMA, 0.1f);
    assert_int_equal(hdlm_model_create(&cpu, &config), 0);
    randomize_params(cpu, 11 + CASE_GAMMA);
    setenv("HDLM_PROFILE", "1", 1);   // for the GPU model only: the CPU model would print its own table per step
    assert_int_equal(hdlm_cuda_model_create(&gpu, cpu), 0);
    unsetenv("HDLM_PROFILE");
    assert_true(hdlm_cuda_model_profiling(gpu));
    step_and_compare(cpu, gpu, CASE_GAMMA, 2, L, "gamma, profiled");   // a forward alone, then a training step
    hdlm_cuda_model_profile_optimizer_begin(gpu);
    hdlm_cuda_model_zero_grad(gpu);
    hdlm_cuda_model_profile_optimizer_end(gpu);
    char *text;
    size_t size;
    FILE *f = open_memstream(&text, &size);
    hdlm_cuda_model_profile_report(gpu, f, 10.0);
    fclose(f);
    printf("%s", text);
    assert_non_null(strstr(text, "2 forwards, 1 backwards, 1 optimizer spans (last 2x64)"));
    static const char *const kinds[] = {"adaln+sigma", "embed", "layernorm", "linear qkv", "rotary", "attention",
                                        "linear attn_out", "residual+dropout", "linear fc1+gelu", "linear fc2",
                                        "head+loss", "optimizer"};
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        char row[32];
        snprintf(row, sizeof row, "\n  %s ", kinds[k]);
        assert_non_null(strstr(text, row));
    }
    double total = 0, share = 0;
    const char *t = strstr(text, "\n  total ");
    assert_non_null(t);
    assert_int_equal(sscanf(t, " total %lf %lf%%", &total, &share), 2);
    assert_true(total > 0 && share == 100.0);
    free(text);
    hdlm_cuda_model_profile_reset(gpu);
    hdlm_cuda_model_free(gpu);
    hdlm_model_free(cpu);

    create_models(CASE_EPS_FULL, 0.0f, &cpu, &gpu);
    assert_false(hdlm_cuda_model_profiling(gpu));
    f = open_memstream(&text, &size);
    hdlm_cuda_model_profile_report(gpu, f, 0.0);
    fclose(f);
    assert_int_equal(size, 0);
    free(text);
    hdlm_cuda_model_free(gpu);
    hdlm_model_free(cpu);
#endif
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_epsilon_full_mask),
        cmocka_unit_test(test_epsilon_hyperschedule),
        cmocka_unit_test(test_ardm),
        cmocka_unit_test(test_gamma_hyperschedule),
        cmocka_unit_test(test_two_copy),
        cmocka_unit_test(test_shapes_change),
        cmocka_unit_test(test_bad_inputs_refused),
        cmocka_unit_test(test_profile),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

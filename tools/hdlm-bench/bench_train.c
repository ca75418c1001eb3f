// hdlm-bench train: full training steps of DDiT-small (ε, dropout 0.1, full attention, MDLM-hybrid corruption so
// every position carries a loss) at B×T — corruption, forward, loss, backward, global norm and clipping, AdamW, EMA —
// on one GPU (--device cuda, the default) or on the CPU, with tok/s and MFU; then, in the same run, the same steps of
// the same model in PyTorch (tools/bench_torch_ddit.py: eager and torch.compile with bf16 autocast on the GPU).
// FLOPs per token: 6 × non-embedding parameters + 12 · n_layers · width · T (forward + backward, spec'd in
// docs/cuda.md; the optimizer's O(N) work is not counted). MFU = FLOPs per token × tok/s / peak.
#include <getopt.h>
#include <math.h>
#include <omp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "bench.h"
#include "hdlm/blas.h"
#include "hdlm/common.h"
#include "hdlm/cuda.h"
#include "hdlm/diffusion.h"
#include "hdlm/model.h"
#include "hdlm/optim.h"
#include "hdlm/peak.h"
#include "hdlm/rng.h"
#ifdef HDLM_HAVE_CUDA
#include "hdlm/cuda_model.h"
#include "hdlm/cuda_ops.h"
#endif

typedef struct {
    bool cuda;
    int batch, length, layers, steps, warmup;
    double peak;            // FLOP/s
    bool torch;
    const char *python;     // NULL: the first of python3, /usr/bin/python3 that imports torch
} train_opts;

// The optimizer as hdlm-train runs it (paper presets: AdamW β = (0.9, 0.95), wd 0.1, clip 1, EMA 0.9999).
static const hdlm_adamw_config ADAMW = {0.9, 0.95, 1e-8, 0.1};
static const hdlm_ema_config EMA = {0.9999, 2.0 / 3.0, 0};
static const double LR = 3e-4, CLIP = 1.0;

typedef struct {
    hdlm_model *m;
    uint32_t *x0;
    hdlm_corruption corr;
    hdlm_eps_config eps;
} bench_run;

static void corrupt(bench_run *r, int step) {
    hdlm_epsilon_corrupt_unscheduled(&r->eps, 1e-4, r->x0, r->m->config.vocab,
                                     hdlm_rng_key(1, 0, (uint64_t)step, HDLM_RNG_NOISE), &r->corr, NULL);
}

static hdlm_model_input step_input(const bench_run *r, int step) {
    return (hdlm_model_input){.tokens = r->corr.xt, .batch = r->corr.batch, .length = r->corr.length,
                              .training = true, .dropout_key = hdlm_rng_key(1, 0, (uint64_t)step, HDLM_RNG_DROPOUT)};
}

// Seconds per step on the CPU (mean over o->steps after o->warmup); *loss: the last step's loss.
static double time_cpu(bench_run *r, const train_opts *o, double *loss) {
    hdlm_model *m = r->m;
    size_t n = m->n_params;
    float *adam_m = hdlm_calloc(n, sizeof(float)), *adam_v = hdlm_calloc(n, sizeof(float));
    float *ema = hdlm_malloc(n * sizeof(float));
    memcpy(ema, m->params, n * sizeof(float));
    double t0 = 0;
    for (int s = 0; s < o->warmup + o->steps; s++) {
        if (s == o->warmup) t0 = hdlm_time_now();
        corrupt(r, s);
        hdlm_model_input in = step_input(r, s);
        HDLM_MUST(hdlm_model_forward(m, &in));
        int V = m->config.vocab;
        *loss = hdlm_corruption_loss(&r->corr, r->x0, m->out, V, V, m->out);
        hdlm_model_backward(m, m->out);
        double norm = hdlm_grad_norm(m->grads, n);
        hdlm_grad_clip(m->grads, n, norm, CLIP);
        hdlm_adamw_update(m->params, m->grads, adam_m, adam_v, n, &ADAMW, LR, s + 1);
        hdlm_ema_update(ema, m->params, n, &EMA, s + 1);
        hdlm_model_zero_grad(m);
    }
    double sec = (hdlm_time_now() - t0) / o->steps;
    free(adam_m);
    free(adam_v);
    free(ema);
    return sec;
}

#ifdef HDLM_HAVE_CUDA
// The same steps on GPU 0, as hdlm-train's training.device = cuda runs them (src/trainer_cuda.c). With HDLM_PROFILE=1,
// *profile: the device model's table of the timed steps (the optimizer's kernels included), for after the timing row.
static double time_cuda(bench_run *r, const train_opts *o, double *loss, char **profile) {
    HDLM_MUST(hdlm_cuda_init(0));
    hdlm_cuda_model *dm;
    HDLM_MUST(hdlm_cuda_model_create(&dm, r->m));
    size_t n = r->m->n_params;
    hdlm_stream stream = hdlm_cuda_model_stream(dm);
    float *adam_m = hdlm_cuda_malloc(n * sizeof(float)), *adam_v = hdlm_cuda_malloc(n * sizeof(float));
    float *ema = hdlm_cuda_malloc(n * sizeof(float));
    double *sum_squares = hdlm_cuda_malloc(sizeof(double));
    hdlm_cuda_memset0(adam_m, n * sizeof(float), stream);
    hdlm_cuda_memset0(adam_v, n * sizeof(float), stream);
    hdlm_cuda_synchronize();
    hdlm_cuda_upload(ema, r->m->params, n * sizeof(float));
    float *params = hdlm_cuda_model_params(dm), *grads = hdlm_cuda_model_grads(dm);
    double t0 = 0;
    for (int s = 0; s < o->warmup + o->steps; s++) {
        if (s == o->warmup) {
            hdlm_cuda_model_profile_reset(dm);
            hdlm_cuda_synchronize();
            t0 = hdlm_time_now();
        }
        corrupt(r, s);
        hdlm_model_input in = step_input(r, s);
        HDLM_MUST(hdlm_cuda_model_forward_epsilon(dm, &in, &r->corr, r->x0, r->m->config.vocab, true));
        hdlm_cuda_model_backward(dm);
        hdlm_cuda_model_profile_optimizer_begin(dm);
        hdlm_cuda_sum_squares(sum_squares, grads, n, stream);
        hdlm_cuda_model_profile_optimizer_end(dm);
        *loss = hdlm_cuda_model_loss(dm);
        double ss;
        hdlm_cuda_synchronize();
        hdlm_cuda_download(&ss, sum_squares, sizeof ss);
        double norm = sqrt(ss), clip = CLIP / (norm + 1e-6);
        hdlm_cuda_model_profile_optimizer_begin(dm);
        hdlm_cuda_adamw_update(params, hdlm_cuda_model_params_bf16(dm), grads, adam_m, adam_v, n, &ADAMW, (float)LR,
                               s + 1, clip < 1.0 ? (float)clip : 1.0f, stream);
        hdlm_cuda_ema_update(ema, params, n, (float)hdlm_ema_decay(&EMA, s + 1), stream);
        hdlm_cuda_model_zero_grad(dm);
        hdlm_cuda_model_profile_optimizer_end(dm);
    }
    hdlm_cuda_synchronize();
    double sec = (hdlm_time_now() - t0) / o->steps;
    hdlm_cuda_free(adam_m);
    hdlm_cuda_free(adam_v);
    hdlm_cuda_free(ema);
    hdlm_cuda_free(sum_squares);
    if (hdlm_cuda_model_profiling(dm)) {
        size_t size;
        FILE *f = open_memstream(profile, &size);
        hdlm_cuda_model_profile_report(dm, f, sec);
        fclose(f);
    }
    hdlm_cuda_model_free(dm);
    hdlm_cuda_shutdown();
    return sec;
}
#endif

static void print_row(const char *impl, const train_opts *o, double sec, double flops_per_token, double ours) {
    double tok_s = o->batch * o->length / sec;
    char shape[32];
    snprintf(shape, sizeof shape, "%dx%d", o->batch, o->length);
    printf("%-18s %-11s %9.4f %11.0f %7.1f%%", impl, shape, sec, tok_s, 100.0 * flops_per_token * tok_s / o->peak);
    if (ours > 0) printf("   hdlm speed-up %.2fx", sec / ours);
    printf("\n");
    fflush(stdout);
}

// Runs tools/bench_torch_ddit.py and prints a row per variant from its `torch_bench` lines.
static void run_torch(const train_opts *o, double flops_per_token, double ours) {
    char cmd[8192], finder[512];
    if (o->python)
        snprintf(finder, sizeof finder, "'%s'", o->python);
    else
        snprintf(finder, sizeof finder, "python3 /usr/bin/python3");
    snprintf(cmd, sizeof cmd,
             "for p in %s; do \"$p\" -c 'import torch' 2>/dev/null && exec \"$p\" %s/tools/bench_torch_ddit.py "
             "--device %s --batch %d --length %d --layers %d --steps %d --warmup %d --variants %s; done; "
             "echo 'torch_bench variant=all error=\"no python3 that imports torch\"'",
             finder, HDLM_SOURCE_DIR, o->cuda ? "cuda" : "cpu", o->batch, o->length, o->layers, o->steps,
             o->warmup, o->cuda ? "eager,compile" : "eager");
    FILE *p = popen(cmd, "r");
    if (!p) {
        printf("pytorch: could not start %s/tools/bench_torch_ddit.py\n", HDLM_SOURCE_DIR);
        return;
    }
    char line[1024];
    while (fgets(line, sizeof line, p)) {
        if (strncmp(line, "torch_bench ", 12) != 0) continue;
        char variant[64] = "?", impl[96];
        const char *v = strstr(line, "variant="), *tok = strstr(line, "tok_s="), *err = strstr(line, "error=");
        if (v) sscanf(v + 8, "%63s", variant);
        snprintf(impl, sizeof impl, "pytorch %s", variant);
        double tok_s = tok ? atof(tok + 6) : 0;
        if (tok_s > 0) {
            print_row(impl, o, o->batch * o->length / tok_s, flops_per_token, ours);
        } else {
            line[strcspn(line, "\n")] = '\0';
            printf("%-18s did not run: %s\n", impl, err ? err + 6 : line);
        }
    }
    int status = pclose(p);
    if (status != 0)
        printf("(the PyTorch baseline exited with status %d)\n", WIFEXITED(status) ? WEXITSTATUS(status) : status);
}

static void usage(FILE *out) {
    fprintf(out,
            "usage: hdlm-bench train [--device cuda|cpu] [--batch B] [--length T] [--layers N] [--steps N]\n"
            "                        [--warmup N] [--peak-tflops X] [--no-torch] [--python PATH]\n"
            "  DDiT-small training steps; defaults: cuda, B 32, T 1024, 12 layers, 10 steps after 3 warm-up steps;\n"
            "  peak: 989 TFLOP/s on cuda (dense bf16, H100/H200 SXM), the measured fp32 FMA peak on cpu\n");
}

int bench_train_main(int argc, char **argv) {
    static const struct option options[] = {{"device", required_argument, NULL, 'd'},
                                            {"batch", required_argument, NULL, 'b'},
                                            {"length", required_argument, NULL, 'l'},
                                            {"layers", required_argument, NULL, 'n'},
                                            {"steps", required_argument, NULL, 's'},
                                            {"warmup", required_argument, NULL, 'w'},
                                            {"peak-tflops", required_argument, NULL, 'p'},
                                            {"no-torch", no_argument, NULL, 't'},
                                            {"python", required_argument, NULL, 'y'},
                                            {"help", no_argument, NULL, 'h'},
                                            {NULL, 0, NULL, 0}};
    train_opts o = {true, 32, 1024, 12, 10, 3, 0, true, NULL};
    int opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        switch (opt) {
        case 'd':
            if (strcmp(optarg, "cuda") != 0 && strcmp(optarg, "cpu") != 0)
                HDLM_DIE("--device wants cuda or cpu, got '%s'", optarg);
            o.cuda = strcmp(optarg, "cuda") == 0;
            break;
        case 'b': o.batch = atoi(optarg); break;
        case 'l': o.length = atoi(optarg); break;
        case 'n': o.layers = atoi(optarg); break;
        case 's': o.steps = atoi(optarg); break;
        case 'w': o.warmup = atoi(optarg); break;
        case 'p': o.peak = atof(optarg) * 1e12; break;
        case 't': o.torch = false; break;
        case 'y': o.python = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (o.batch < 1 || o.length < 2 || o.layers < 1 || o.steps < 1 || o.warmup < 0 || o.peak < 0)
        HDLM_DIE("--batch, --layers and --steps must be positive, --length at least 2, --warmup and --peak-tflops "
                 "not negative");
    if (o.cuda && (!hdlm_cuda_compiled() || hdlm_cuda_device_count() == 0)) {
        fprintf(stderr, "hdlm-bench train: --device cuda needs a GPU and the CUDA backend: %s (use --device cpu)\n",
                hdlm_cuda_unavailable_reason());
        return 1;
    }
    int threads = omp_get_max_threads();
    if (!o.cuda) hdlm_blas_init(threads);
    const char *peak_what = "given with --peak-tflops";
    if (o.peak == 0) {
        o.peak = o.cuda ? HDLM_GPU_PEAK_BF16_FLOPS : bench_fma_peak(threads) * 1e9;
        peak_what = o.cuda ? "dense bf16 of an H100/H200 SXM" : "fp32 FMA, measured";
    }

    hdlm_model_config cfg = hdlm_model_config_ddit_small(HDLM_FAMILY_EPSILON);
    cfg.n_layers = o.layers;
    if (o.length > cfg.max_length) cfg.max_length = o.length;
    bench_run r = {0};
    HDLM_MUST(hdlm_model_create(&r.m, &cfg));
    hdlm_model_init(r.m, 1);
    // The zero-initialised head would make every upstream gradient zero; give it values so the step is realistic.
    const hdlm_tensor *head = hdlm_model_find_tensor(r.m, "output_layer.linear.weight");
    for (size_t i = 0; i < head->numel; i++) r.m->params[head->offset + i] = 0.01f * (float)((int)(i % 7) - 3);
    size_t n_tokens = (size_t)o.batch * o.length;
    r.x0 = hdlm_malloc(n_tokens * sizeof(uint32_t));
    hdlm_rng rng;
    hdlm_rng_init(&rng, hdlm_rng_key(1, 0, 0, HDLM_RNG_DATA));
    for (size_t i = 0; i < n_tokens; i++) r.x0[i] = (uint32_t)hdlm_rng_below(&rng, (uint64_t)cfg.vocab - 1);
    hdlm_corruption_alloc(&r.corr, o.batch, o.length);
    r.eps = (hdlm_eps_config){HDLM_EPS_LOSS_HYBRID, 0.01, 1.0};

    double non_embedding = (double)(r.m->n_params - hdlm_model_embedding_params(r.m));
    double flops_per_token = 6.0 * non_embedding + 12.0 * cfg.n_layers * cfg.width * (double)o.length;
    printf("DDiT-small ε: width %d, %d layers, %d heads, V %d; %zu parameters (%.0f non-embedding); dropout %.1f, "
           "full attention\n",
           cfg.width, cfg.n_layers, cfg.n_heads, cfg.vocab, r.m->n_params, non_embedding, cfg.dropout);
    printf("%s, B x T = %d x %d; %.1f MFLOP per token; peak %.1f TFLOP/s (%s); %d steps after %d warm-up\n",
           o.cuda ? "GPU 0" : "CPU", o.batch, o.length, flops_per_token * 1e-6, o.peak * 1e-12, peak_what, o.steps,
           o.warmup);
    printf("%-18s %-11s %9s %11s %8s\n", "impl", "BxT", "s/step", "tok/s", "MFU");
    double loss = NAN, sec = NAN;
    char *profile = NULL;
    if (o.cuda) {
#ifdef HDLM_HAVE_CUDA
        sec = time_cuda(&r, &o, &loss, &profile);
#endif
    } else {
        sec = time_cpu(&r, &o, &loss);
    }
    print_row(o.cuda ? "hdlm cuda" : "hdlm cpu", &o, sec, flops_per_token, 0);
    printf("(last step's loss %.4f)\n", loss);
    if (profile) fputs(profile, stdout);
    free(profile);
    hdlm_corruption_free(&r.corr);
    free(r.x0);
    hdlm_model_free(r.m);
    if (o.torch) run_torch(&o, flops_per_token, sec);
    return isfinite(loss) ? 0 : 1;
}

// hdlm-bench train: training updates of DDiT-small (ε, dropout 0.1, no hyperschedule: MDLM-hybrid corruption, so
// every position carries a loss) at B×T through the trainer's own step — the code of hdlm-train: corruption, forward,
// loss, backward, global norm and clipping, AdamW, EMA — on one GPU (--device cuda, the default) or on the CPU, with
// tok/s and MFU; then, in the same run, the same steps of the same model in PyTorch (tools/bench_torch_ddit.py: eager
// and torch.compile with bf16 autocast on the GPU). FLOPs per token: hdlm_model_flops_per_token (the optimizer's O(N)
// work is not counted). MFU = FLOPs per token × tok/s / peak. The tokens are random, written once as a token shard.
// With --omega W: the block hyperschedule at width W in both training layouts, same model, same run — one active
// block per sequence (the length-L layout) against every block at once (the two-copy layout, method §2.10) — as
// positions trained per second (positions that carry a loss: W per sequence, or all L).
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
#include "hdlm/peak.h"
#include "hdlm/rng.h"
#include "hdlm/shard.h"
#include "hdlm/tokenizer.h"
#include "hdlm/trainer.h"

typedef struct {
    bool cuda;
    int batch, length, layers, steps, warmup;
    int omega;              // > 0: compare the two training layouts of the block schedule at this width
    double peak;            // FLOP/s
    bool torch;
    const char *python;     // NULL: the first of python3, /usr/bin/python3 that imports torch
} train_opts;

// Random tokens for `chunks` sequences of the training length, as a one-shard data directory.
static int write_tokens(const char *dir, const train_opts *o, int chunks) {
    char path[4200];
    snprintf(path, sizeof path, "%s/train_000000.bin", dir);
    hdlm_shard_writer *w;
    HDLM_TRY(hdlm_shard_writer_open(&w, path, HDLM_GPT2_VOCAB));
    size_t n = (size_t)chunks * o->length;
    uint16_t *tokens = hdlm_malloc(n * sizeof *tokens);
    hdlm_rng rng;
    hdlm_rng_init(&rng, hdlm_rng_key(1, 0, 0, HDLM_RNG_DATA));
    for (size_t i = 0; i < n; i++) tokens[i] = (uint16_t)hdlm_rng_below(&rng, HDLM_GPT2_VOCAB);
    int rc = hdlm_shard_writer_append(w, tokens, n);
    free(tokens);
    if (rc != 0) {
        hdlm_shard_writer_abort(w);
        return -1;
    }
    return hdlm_shard_writer_close(w, 1, NULL);
}

// The paper's optimizer settings (AdamW β = (0.9, 0.95), wd 0.1, clip 1, EMA 0.9999) at a constant learning rate.
// layout: NULL for MDLM-hybrid corruption without a schedule, else "false"/"true" for annealing.efficient with the
// block schedule at width o->omega.
static int bench_config(const train_opts *o, const char *dir, const char *layout, hdlm_train_config *cfg) {
    char v[11][4200];
    snprintf(v[0], sizeof v[0], "data.train=%s", dir);
    snprintf(v[1], sizeof v[1], "run.dir=%s", dir);
    snprintf(v[2], sizeof v[2], "model.length=%d", o->length);
    snprintf(v[3], sizeof v[3], "model.n_blocks=%d", o->layers);
    snprintf(v[4], sizeof v[4], "training.batch_size=%d", o->batch);
    snprintf(v[5], sizeof v[5], "training.device=%s", o->cuda ? "cuda" : "cpu");
    snprintf(v[6], sizeof v[6], "annealing.type=%s", layout ? "block" : "none");
    snprintf(v[7], sizeof v[7], "training.seed=1");
    snprintf(v[8], sizeof v[8], "annealing.width=%d", o->omega > 0 ? o->omega : o->length);
    snprintf(v[9], sizeof v[9], "annealing.efficient=%s", layout ? layout : "false");
    snprintf(v[10], sizeof v[10], "annealing.tau=%d", 128);
    const char *overrides[] = {v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], "training.accum=1",
                               "training.ema_update_after=0", "optim.scheduler=constant", "data.valid="};
    return hdlm_train_config_load(cfg, NULL, overrides, (int)(sizeof overrides / sizeof overrides[0]), 1);
}

// Seconds per update (mean over o->steps after o->warmup) of the trainer; *loss: the last update's loss. With
// HDLM_PROFILE=1 on the GPU, *profile: the backend's table of the timed updates, for after the timing row.
static double time_updates(hdlm_trainer *t, const train_opts *o, double *loss, char **profile) {
    double t0 = 0;
    for (int s = 0; s < o->warmup + o->steps; s++) {
        if (s == o->warmup) {
            hdlm_trainer_profile(t, NULL, 0, true);   // also waits for the device
            t0 = hdlm_time_now();
        }
        hdlm_update_stats stats;
        hdlm_trainer_update(t, &stats);
        *loss = stats.loss;
    }
    if (o->cuda) hdlm_cuda_synchronize();
    double sec = (hdlm_time_now() - t0) / o->steps;
    size_t size;
    FILE *f = open_memstream(profile, &size);
    hdlm_trainer_profile(t, f, sec, false);
    fclose(f);
    return sec;
}

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

// The two training layouts of the block schedule at width o->omega, one after the other in this run.
static int compare_layouts(const train_opts *o, const char *dir) {
    printf("block hyperschedule, ω = %d of L = %d (%d blocks): positions trained per second (positions with a loss)\n",
           o->omega, o->length, o->length / o->omega);
    printf("%-34s %9s %14s %16s\n", "layout", "s/step", "trained/step", "trained/s");
    double base = 0;
    for (int efficient = 0; efficient < 2; efficient++) {
        hdlm_train_config cfg;
        hdlm_trainer *t = NULL;
        HDLM_TRY(bench_config(o, dir, efficient ? "true" : "false", &cfg));
        HDLM_TRY(hdlm_trainer_create(&t, &cfg, NULL));
        double loss = NAN;
        char *profile = NULL;
        double sec = time_updates(t, o, &loss, &profile);
        free(profile);
        hdlm_trainer_free(t);
        HDLM_CHECK(isfinite(loss), "the %s layout's loss is %g", efficient ? "two-copy" : "length-L", loss);
        double trained = (double)o->batch * (efficient ? o->length : o->omega), rate = trained / sec;
        printf("%-34s %9.4f %14.0f %16.0f", efficient ? "two-copy [x; x] (every block)" : "length L (one active block)",
               sec, trained, rate);
        if (efficient) printf("   %.2fx", rate / base);
        else base = rate;
        printf("\n");
    }
    return 0;
}

static void usage(FILE *out) {
    fprintf(out,
            "usage: hdlm-bench train [--device cuda|cpu] [--batch B] [--length T] [--layers N] [--steps N]\n"
            "                        [--warmup N] [--peak-tflops X] [--no-torch] [--python PATH] [--omega W]\n"
            "  DDiT-small training steps; defaults: cuda, B 32, T 1024, 12 layers, 10 steps after 3 warm-up steps;\n"
            "  peak: 989 TFLOP/s on cuda (dense bf16, H100/H200 SXM), the measured fp32 FMA peak on cpu\n"
            "  --omega W: the block schedule at width W, length-L layout against the two-copy layout\n"
            "             (annealing.efficient), as positions trained per second\n");
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
                                            {"omega", required_argument, NULL, 'o'},
                                            {"help", no_argument, NULL, 'h'},
                                            {NULL, 0, NULL, 0}};
    train_opts o = {true, 32, 1024, 12, 10, 3, 0, 0, true, NULL};
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
        case 'o': o.omega = atoi(optarg); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (o.batch < 1 || o.length < 2 || o.layers < 1 || o.steps < 1 || o.warmup < 0 || o.peak < 0 || o.omega < 0)
        HDLM_DIE("--batch, --layers and --steps must be positive, --length at least 2, --warmup, --peak-tflops and "
                 "--omega not negative");
    if (o.omega > 0 && (o.omega >= o.length || o.length % o.omega != 0))
        HDLM_DIE("--omega %d must divide --length %d and be smaller", o.omega, o.length);
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

    char dir[] = "/tmp/hdlm-bench-train-XXXXXX";
    if (!mkdtemp(dir)) HDLM_DIE("cannot create a temporary directory under /tmp");
    hdlm_train_config cfg;
    hdlm_model_config mc;
    hdlm_trainer *t = NULL;
    int rc = write_tokens(dir, &o, 4 * o.batch);
    char cleanup[4300];
    snprintf(cleanup, sizeof cleanup, "rm -rf '%s'", dir);
    if (rc == 0 && o.omega > 0) {
        rc = compare_layouts(&o, dir);
        if (system(cleanup) != 0) fprintf(stderr, "hdlm-bench train: could not remove %s\n", dir);
        if (rc != 0) HDLM_DIE("hdlm-bench train: %s", hdlm_last_error());
        return 0;
    }
    if (rc == 0) rc = bench_config(&o, dir, NULL, &cfg);
    if (rc == 0) rc = hdlm_train_config_model(&cfg, &mc);
    if (rc == 0) rc = hdlm_trainer_create(&t, &cfg, NULL);
    if (rc != 0) {
        if (system(cleanup) != 0) fprintf(stderr, "hdlm-bench train: could not remove %s\n", dir);
        HDLM_DIE("hdlm-bench train: %s", hdlm_last_error());
    }
    hdlm_trainer_info info = hdlm_trainer_state(t);
    double flops_per_token = info.flops_per_token;
    printf("DDiT-small ε: width %d, %d layers, %d heads, V %d; %zu parameters; dropout %.1f, full attention; "
           "the trainer's update (hdlm-train's code)\n",
           mc.width, mc.n_layers, mc.n_heads, mc.vocab, info.n_params, mc.dropout);
    printf("%s, B x T = %d x %d; %.1f MFLOP per token; peak %.1f TFLOP/s (%s); %d steps after %d warm-up\n",
           o.cuda ? "GPU 0" : "CPU", o.batch, o.length, flops_per_token * 1e-6, o.peak * 1e-12, peak_what, o.steps,
           o.warmup);
    printf("%-18s %-11s %9s %11s %8s\n", "impl", "BxT", "s/step", "tok/s", "MFU");
    double loss = NAN;
    char *profile = NULL;
    double sec = time_updates(t, &o, &loss, &profile);
    print_row(o.cuda ? "hdlm cuda" : "hdlm cpu", &o, sec, flops_per_token, 0);
    printf("(last step's loss %.4f)\n", loss);
    if (profile) fputs(profile, stdout);
    free(profile);
    hdlm_trainer_free(t);
    if (system(cleanup) != 0) fprintf(stderr, "hdlm-bench train: could not remove %s\n", dir);
    if (o.torch) run_torch(&o, flops_per_token, sec);
    return isfinite(loss) ? 0 : 1;
}

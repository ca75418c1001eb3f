// hdlm-bench model: forward + training loss (hdlm_corruption_loss) + backward of the DDiT-small shape (ε, dropout 0.1,
// training mode, full attention) at several B×T, with tok/s, achieved GFLOP/s and its fraction of the measured FMA peak,
// the same step's GEMMs alone; then the same step of the PyTorch reference model (tests/reference/ddit.py, float32) in
// the same run.
// FLOPs per token: 6 × non-embedding parameters + attention 12 · n_layers · width · T (forward + backward).
#include <getopt.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "hdlm/blas.h"
#include "hdlm/common.h"
#include "hdlm/diffusion.h"
#include "hdlm/model.h"
#include "hdlm/peak.h"
#include "hdlm/rng.h"

typedef struct {
    int batch, length;
} bench_shape;

static double step_flops(const hdlm_model *m, bench_shape s) {
    return hdlm_model_flops_per_token(m, s.length) * s.batch * s.length;
}

// Scratch for the step's linear-layer and head GEMMs alone (see gemm_pass).
typedef struct {
    float *x, *y, *w, *gw, *dx;
} gemm_scratch;

// Scratch of values in [-0.5, 0.52]. Not zeros: memory never written (calloc's) reads as one shared page of zeros,
// always in cache, and the weights' reads would cost less than in the step. The pass writes its d-input to a buffer
// of its own, so that no product's output comes back as an input (values then grew without bound).
static float *scratch_filled(size_t floats) {
    float *x = hdlm_malloc(floats * sizeof(float));
    for (size_t i = 0; i < floats; i++) x[i] = (float)(i % 1021) * 1e-3f - 0.5f;
    return x;
}

// One pass of the step's linear-layer and head GEMMs alone, with the shapes and transposes hdlm_linear_forward and
// hdlm_linear_backward use, on scratch buffers: seconds, and their FLOPs in *flops. Against the step time this
// separates the GEMM kernels' own rate on these shapes from everything else the step does (attention, element-wise
// layers, loss, bias sums).
static double gemm_pass(const hdlm_model *m, bench_shape s, const gemm_scratch *g, double *flops) {
    const hdlm_model_config *c = &m->config;
    int n = s.batch * s.length, d = c->width, f = c->mlp_ratio * d, V = c->vocab;
    int dims[5][2] = {{d, 3 * d}, {d, d}, {d, f}, {f, d}, {d, V}};   // (in, out): qkv, attn_out, fc1, fc2, head
    double t0 = hdlm_time_now();
    *flops = 0.0;
    for (int k = 0; k < 5; k++) {
        int in = dims[k][0], out = dims[k][1], times = k == 4 ? 1 : c->n_layers;
        for (int l = 0; l < times; l++) {
            hdlm_sgemm(false, true, n, out, in, 1.0f, g->x, in, g->w, in, 0.0f, g->y, out);    // forward
            hdlm_sgemm(true, false, out, in, n, 1.0f, g->y, out, g->x, in, 1.0f, g->gw, in);   // dW
            hdlm_sgemm(false, false, n, in, out, 1.0f, g->y, out, g->w, in, 0.0f, g->dx, in);  // d input
            *flops += 6.0 * n * in * out;
        }
    }
    return hdlm_time_now() - t0;
}

// Best of `reps` steps (after one warm-up step) in *step_sec; after each step, one pass of the step's GEMMs alone
// (best in *gemm_sec), so that both see the same machine load.
static void time_steps(hdlm_model *m, bench_shape s, int reps, double *step_sec, double *gemm_sec,
                       double *gemm_flops) {
    int n = s.batch * s.length, V = m->config.vocab;
    uint32_t *tokens = hdlm_malloc((size_t)n * sizeof(uint32_t)), *targets = hdlm_malloc((size_t)n * sizeof(uint32_t));
    hdlm_rng rng;
    hdlm_rng_init(&rng, hdlm_rng_key(1, 0, 0, HDLM_RNG_DATA));
    for (int i = 0; i < n; i++) {
        tokens[i] = (uint32_t)hdlm_rng_below(&rng, (uint64_t)V);
        targets[i] = (uint32_t)hdlm_rng_below(&rng, (uint64_t)V - 1);
    }
    // The training loss itself (ε: every position weighted 1/N), its gradient written over the outputs.
    hdlm_corruption loss;
    hdlm_corruption_alloc(&loss, s.batch, s.length);
    for (int i = 0; i < n; i++) loss.weight[i] = 1.0f;
    loss.norm = n;
    size_t most = (size_t)n * (V > 4 * m->config.width ? V : 4 * m->config.width);
    size_t weights = (size_t)V * m->config.width;
    gemm_scratch g = {scratch_filled(most), scratch_filled(most), scratch_filled(weights), scratch_filled(weights),
                      scratch_filled(most)};
    *step_sec = *gemm_sec = INFINITY;
    for (int r = 0; r <= reps; r++) {   // r = 0 warms up (allocation, page faults)
        hdlm_model_input in = {.tokens = tokens, .batch = s.batch, .length = s.length, .training = true,
                               .dropout_key = hdlm_rng_key(1, 0, (uint64_t)r, HDLM_RNG_DROPOUT)};
        double t0 = hdlm_time_now();
        HDLM_MUST(hdlm_model_forward(m, &in));
        hdlm_corruption_loss(&loss, targets, m->out, V, V, m->out);
        hdlm_model_backward(m, m->out);
        double dt = hdlm_time_now() - t0, gt = gemm_pass(m, s, &g, gemm_flops);
        if (r > 0 && dt < *step_sec) *step_sec = dt;
        if (r > 0 && gt < *gemm_sec) *gemm_sec = gt;
    }
    free(g.x);
    free(g.y);
    free(g.w);
    free(g.gw);
    free(g.dx);
    hdlm_corruption_free(&loss);
    free(tokens);
    free(targets);
}

// Seconds per step of the PyTorch reference (its own float32 model, dropout 0.1), or NAN when it cannot run.
static double time_pytorch(bench_shape s, int reps) {
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s/tests/reference/ddit.py --bench %d %d %d", HDLM_SOURCE_DIR,
             s.batch, s.length, reps);
    FILE *p = popen(cmd, "r");
    if (!p) return NAN;
    double sec = NAN;
    if (fscanf(p, "%lf", &sec) != 1) sec = NAN;
    if (pclose(p) != 0) sec = NAN;
    return sec;
}

static void usage(FILE *out) {
    fprintf(out, "usage: hdlm-bench model [--reps N] [--threads N] [--no-pytorch] [--shape BxT]...\n"
                 "  default shapes 4x256 and 1x1024; reps 3; threads = OMP_NUM_THREADS or all cores\n");
}

int bench_model_main(int argc, char **argv) {
    static const struct option options[] = {{"reps", required_argument, NULL, 'r'},
                                            {"threads", required_argument, NULL, 't'},
                                            {"shape", required_argument, NULL, 's'},
                                            {"no-pytorch", no_argument, NULL, 'n'},
                                            {"help", no_argument, NULL, 'h'},
                                            {NULL, 0, NULL, 0}};
    int reps = 3, threads = omp_get_max_threads(), with_torch = 1, n_shapes = 0;
    bench_shape shapes[8];
    int opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        switch (opt) {
        case 'r': reps = atoi(optarg); break;
        case 't': threads = atoi(optarg); break;
        case 'n': with_torch = 0; break;
        case 's':
            if (n_shapes == 8 || sscanf(optarg, "%dx%d", &shapes[n_shapes].batch, &shapes[n_shapes].length) != 2 ||
                shapes[n_shapes].batch < 1 || shapes[n_shapes].length < 1 || shapes[n_shapes].length > 1024)
                HDLM_DIE("--shape wants BxT with B >= 1 and 1 <= T <= 1024 (at most 8 shapes), got '%s'", optarg);
            n_shapes++;
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (reps < 1 || threads < 1) HDLM_DIE("--reps and --threads must be positive");
    if (n_shapes == 0) {
        shapes[n_shapes++] = (bench_shape){4, 256};
        shapes[n_shapes++] = (bench_shape){1, 1024};
    }
    omp_set_num_threads(threads);
    hdlm_blas_init(threads);
    // The peak is measured before the runs (the fractions use it), after each shape and at the end: a machine shared
    // with other jobs shows its load in these numbers, printed with the load average. The first is the larger of two
    // measurements apart (hdlm_fma_peak_flops_settled): a single one on a host that had taken a vCPU away read 262
    // GFLOP/s against 499-517 after it, and every fraction of the table came out near 150 %.
    double peak = hdlm_fma_peak_flops_settled(threads) * 1e-9;
    char load[64] = "?";
    FILE *lf = fopen("/proc/loadavg", "r");
    if (lf) {
        if (!fgets(load, sizeof load, lf)) snprintf(load, sizeof load, "?");
        load[strcspn(load, "\n")] = '\0';
        fclose(lf);
    }
    printf("machine: %d threads, GEMM kernels %s, fp32 FMA peak %.0f GFLOP/s (measured, %d-lane FMAs), load average "
           "%s\n", threads, hdlm_blas_arch(), peak, hdlm_blas_lanes(), load);

    hdlm_model_config cfg = hdlm_model_config_ddit_small(HDLM_FAMILY_EPSILON);
    hdlm_model *m;
    HDLM_MUST(hdlm_model_create(&m, &cfg));
    hdlm_model_init(m, 1);
    // The zero-initialised head would make every upstream gradient zero; give it values so the step is realistic.
    const hdlm_tensor *head = hdlm_model_find_tensor(m, "output_layer.linear.weight");
    for (size_t i = 0; i < head->numel; i++) m->params[head->offset + i] = 0.01f * (float)((int)(i % 7) - 3);

    printf("%-10s %-8s %10s %10s %10s %9s\n", "impl", "BxT", "s/step", "tok/s", "GFLOP/s", "of peak");
    double ours[8], flops[8];
    for (int i = 0; i < n_shapes; i++) {
        double sec, gemm_sec, gemm_flops;
        time_steps(m, shapes[i], reps, &sec, &gemm_sec, &gemm_flops);
        flops[i] = step_flops(m, shapes[i]);
        double gf = flops[i] / sec * 1e-9;
        ours[i] = sec;
        char shape[32];
        snprintf(shape, sizeof shape, "%dx%d", shapes[i].batch, shapes[i].length);
        printf("%-10s %-8s %10.3f %6.0f tok/s %10.1f %8.1f%%\n", "hdlm", shape, sec,
               shapes[i].batch * shapes[i].length / sec, gf, 100.0 * gf / peak);
        printf("%-10s %-8s %10.3f %16s %10.1f %8.1f%%   (%.0f%% of the step's FLOPs; the rest of the step: %.3f s)\n",
               "GEMMs only", shape, gemm_sec, "", gemm_flops / gemm_sec * 1e-9,
               100.0 * gemm_flops / gemm_sec * 1e-9 / peak, 100.0 * gemm_flops / flops[i], sec - gemm_sec);
        double peak_now = bench_fma_peak(threads);   // re-measured next to the step: the load may have changed
        printf("%-10s %-8s %10s FMA peak re-measured: %.0f GFLOP/s (step at %.1f%%, GEMMs at %.1f%% of it)\n", "", shape,
               "", peak_now, 100.0 * gf / peak_now, 100.0 * gemm_flops / gemm_sec * 1e-9 / peak_now);
        fflush(stdout);
    }
    hdlm_model_free(m);
    double peak_after = bench_fma_peak(threads);
    printf("fp32 FMA peak after the runs: %.0f GFLOP/s%s\n", peak_after,
           peak_after > peak ? " (higher: the fractions above are against the first measurement)" : "");
    if (with_torch) {
        for (int i = 0; i < n_shapes; i++) {
            double sec = time_pytorch(shapes[i], reps);
            char shape[32];
            snprintf(shape, sizeof shape, "%dx%d", shapes[i].batch, shapes[i].length);
            if (isnan(sec)) {
                printf("%-10s %-8s (the reference did not run: needs /usr/bin/python3 with torch)\n", "pytorch", shape);
                continue;
            }
            double gf = flops[i] / sec * 1e-9;
            printf("%-10s %-8s %10.3f %6.0f tok/s %10.1f %8.1f%%   (hdlm: %.2fx)\n", "pytorch", shape, sec,
                   shapes[i].batch * shapes[i].length / sec, gf, 100.0 * gf / peak, sec / ours[i]);
            fflush(stdout);
        }
    }
    return 0;
}

// hdlm-bench eval: the masking NELBO estimator of `hdlm-eval perplexity` (method §9.1: chunks × rounds × noisy
// copies, one batched eval-mode forward per round, CE over the masked positions) with hdlm's library, next to the
// PyTorch reference model (tests/reference/ddit.py, float32, eval mode, no_grad) doing the same estimator on the
// same weights and chunks (tests/bench/torch_nelbo.py), in one run. Default shape: the small preset (the main job's
// model: width 128, 2 blocks, 4 heads, L = 64).
#include <getopt.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "hdlm/blas.h"
#include "hdlm/common.h"
#include "hdlm/likelihood.h"
#include "hdlm/model.h"
#include "hdlm/model_io.h"
#include "hdlm/rng.h"
#include "hdlm/sampler.h"

static void usage(FILE *f) {
    fprintf(f, "usage: hdlm-bench eval [--width D] [--layers N] [--heads H] [--length L] [--chunks K] [--copies C]\n"
               "                       [--rounds R] [--work DIR] [--no-torch]\n"
               "Scores K random chunks of L tokens with the masking NELBO (R rounds of C noisy copies) on an ε DDiT\n"
               "with random weights (V 50258), with hdlm and with the PyTorch reference model on the same weights and\n"
               "chunks, both on OMP_NUM_THREADS threads. Defaults: the small preset, width 128, 2 layers, 4 heads,\n"
               "L 64, K 8, C 16, R 8 (128 noisy copies per chunk).\n");
}

int bench_eval_main(int argc, char **argv) {
    static const struct option longopts[] = {
        {"width", required_argument, NULL, 'd'},  {"layers", required_argument, NULL, 'n'},
        {"heads", required_argument, NULL, 'H'},  {"length", required_argument, NULL, 'L'},
        {"chunks", required_argument, NULL, 'k'}, {"copies", required_argument, NULL, 'c'},
        {"rounds", required_argument, NULL, 'r'}, {"work", required_argument, NULL, 'w'},
        {"no-torch", no_argument, NULL, 't'},     {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int width = 128, layers = 2, heads = 4, length = 64, chunks = 8, copies = 16, rounds = 8, no_torch = 0;
    const char *work = "/tmp/hdlm-bench-eval";
    optind = 1;
    int option = 0;
    for (int c; (c = getopt_long(argc, argv, "h", longopts, &option)) != -1;) {
        int *target = c == 'd' ? &width : c == 'n' ? &layers : c == 'H' ? &heads : c == 'L' ? &length
                      : c == 'k' ? &chunks : c == 'c' ? &copies : c == 'r' ? &rounds : NULL;
        if (target) {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || v < 1 || v > 1 << 20)
                HDLM_DIE("--%s expects a positive integer, got \"%s\"", longopts[option].name, optarg);
            *target = (int)v;
        } else if (c == 'w') {
            work = optarg;
        } else if (c == 't') {
            no_torch = 1;
        } else if (c == 'h') {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (hdlm_world_size() != 1) HDLM_DIE("hdlm-bench eval runs as one process");
    HDLM_MUST(hdlm_make_dirs(work, "--work"));
    int threads = omp_get_max_threads();
    hdlm_blas_init(threads);
    hdlm_model_config mc = {HDLM_FAMILY_EPSILON, width, layers, heads, 4, width, 50258, length, 0.0f, 0.01f,
                            HDLM_ROTARY_EXACT};
    hdlm_model *m;
    HDLM_MUST(hdlm_model_create(&m, &mc));
    hdlm_model_init(m, 1);
    uint32_t *x = hdlm_malloc((size_t)chunks * length * sizeof *x);
    int32_t *x32 = hdlm_malloc((size_t)chunks * length * sizeof *x32);
    hdlm_rng rng;
    hdlm_rng_init(&rng, hdlm_rng_key(2, 0, 0, HDLM_RNG_DATA));
    for (size_t i = 0; i < (size_t)chunks * length; i++) x32[i] = (int32_t)(x[i] = (uint32_t)hdlm_rng_below(&rng, 50257));

    // hdlm: the library's estimator, as hdlm-eval perplexity runs it (one warm-up forward first, not timed).
    hdlm_denoiser d = hdlm_denoiser_model(m);
    hdlm_nelbo_config cfg = hdlm_nelbo_config_default(false);
    cfg.copies = copies;
    cfg.rounds = rounds;
    double nll, var;
    int counted;
    HDLM_MUST(hdlm_nelbo_chunk(&d, &cfg, x, length, 0, &nll, &var, &counted));
    double total = 0, variance = 0, t0 = hdlm_time_now();
    long forwards = 0;
    for (int k = 0; k < chunks; k++) {
        HDLM_MUST(hdlm_nelbo_chunk(&d, &cfg, x + (size_t)k * length, length, (uint64_t)k, &nll, &var, &counted));
        total += nll;
        variance += var;
        forwards += counted;
    }
    double t_hdlm = hdlm_time_now() - t0, bound = total / ((double)chunks * (length - 1));
    double se = sqrt(variance) / ((double)chunks * (length - 1));
    // Forward FLOPs per token: 2 × non-embedding parameters + attention 4 · layers · width · L.
    double flops_token = hdlm_model_flops_per_token(m, length) / 3.0;
    double tokens = (double)forwards * copies * length, peak = bench_fma_peak(threads);

    // The same weights and chunks for PyTorch.
    char path[4300], cmd[16384];
    snprintf(path, sizeof path, "%s/model.safetensors", work);
    HDLM_MUST(hdlm_safetensors_write_model(path, m, m->params, NULL, NULL));
    snprintf(path, sizeof path, "%s/chunks.i32", work);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(x32, sizeof *x32, (size_t)chunks * length, f) != (size_t)chunks * length || fclose(f) != 0)
        HDLM_DIE("cannot write %s", path);
    snprintf(path, sizeof path, "%s/config.json", work);
    f = fopen(path, "w");
    if (!f) HDLM_DIE("cannot write %s", path);
    fprintf(f, "{\"family\": \"epsilon\", \"width\": %d, \"n_layers\": %d, \"n_heads\": %d, \"mlp_ratio\": 4, "
               "\"vocab\": 50258, \"rotary\": \"exact\", \"length\": %d, \"chunks\": %d, \"copies\": %d, "
               "\"rounds\": %d, \"floor\": %.17g}\n", width, layers, heads, length, chunks, copies, rounds, cfg.floor);
    fclose(f);
    double t_torch = -1, bound_torch = 0, se_torch = 0;
    long forwards_torch = 0;
    if (!no_torch) {
        snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s/tests/bench/torch_nelbo.py' '%s' %d", HDLM_SOURCE_DIR, work,
                 threads);
        FILE *p = popen(cmd, "r");
        char line[512] = "";
        int ok = p && fgets(line, sizeof line, p) &&
                 sscanf(line, "torch_eval seconds=%lf bound=%lf se=%lf forwards=%ld", &t_torch, &bound_torch,
                        &se_torch, &forwards_torch) == 4;
        if (p) ok = pclose(p) == 0 && ok;
        if (!ok) HDLM_DIE("the PyTorch side failed (%s): %s", cmd, line);
    }

    printf("hdlm-bench eval: ε DDiT width %d, %d layers, %d heads, V 50258, L %d; %d chunks x %d rounds x %d copies "
           "(masking NELBO, method §9.1); %d threads; FMA peak %.1f GFLOP/s\n",
           width, layers, heads, length, chunks, rounds, copies, threads, peak);
    printf("\n%-34s %9s %9s %12s %9s %8s %20s\n", "implementation", "forwards", "seconds", "tokens/s", "GFLOP/s",
           "% peak", "bound (± MC s.e.)");
    printf("%-34s %9ld %9.3f %12.0f %9.1f %7.1f%% %10.4f ± %7.4f\n", "hdlm", forwards, t_hdlm, tokens / t_hdlm,
           tokens * flops_token / t_hdlm / 1e9, 100 * tokens * flops_token / t_hdlm / 1e9 / peak, bound, se);
    if (t_torch > 0) {
        double tokens_torch = (double)forwards_torch * copies * length;
        printf("%-34s %9ld %9.3f %12.0f %9.1f %7.1f%% %10.4f ± %7.4f\n", "PyTorch reference model (float32)",
               forwards_torch, t_torch, tokens_torch / t_torch, tokens_torch * flops_token / t_torch / 1e9,
               100 * tokens_torch * flops_token / t_torch / 1e9 / peak, bound_torch, se_torch);
        printf("\nhdlm: %.2fx PyTorch's tokens/s on the same weights and chunks (bounds differ only by their own "
               "Monte-Carlo draws).\n", (tokens / t_hdlm) / (tokens_torch / t_torch));
    }
    printf("tokens = forwards x copies x L; forward FLOPs per token = 2 x non-embedding parameters + 4 x layers x "
           "width x L (%.3g), the model's count: hdlm runs the output layer on the masked rows alone (those the "
           "estimator scores).\n", flops_token);
    free(x);
    free(x32);
    hdlm_denoiser_free(&d);
    hdlm_model_free(m);
    return 0;
}

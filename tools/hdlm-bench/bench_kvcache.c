// hdlm-bench kvcache: generation time with and without the KV cache of settled blocks (method §3.5) for ω = L/16 and
// L/4 on the block schedule: the ε hyperschedule walker (its uncached forward already drops the worthless tail, as
// the γ SAR sampler does) and the γ NAR sampler (uncached: full-length forward every step, as the reference). Also
// checks that both paths give the same tokens. The headline is the wall-time speed-up; next to it the two paths' FLOP
// ratio (linear layers, attention, head) and the share of it the speed-up reaches (100 %: the cached path as
// efficient per FLOP as the uncached one; the sampler's own per-step work, the same on both paths, holds it below),
// and the ratio of process CPU times (on a shared machine run it with OMP_NUM_THREADS=1: then the work ratio).
// `--sampler ar`: next-token generation (the AR baseline), uncached = one causal forward over the prefix per token
// (every row's logits, as a model without a cache computes them), cached = one row per token against the cache; a
// row's product streams every weight, so the cached path is measured against the memory read rate instead.
#include <getopt.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"
#include "hdlm/common.h"
#include "hdlm/model.h"
#include "hdlm/peak.h"
#include "hdlm/rng.h"
#include "hdlm/sampler.h"

static void usage(FILE *out) {
    fprintf(out, "usage: hdlm-bench kvcache [--length L] [--width D] [--layers N] [--heads H] [--tau T] [--batch B]\n"
                 "                        [--omega 16|4]   (only ω = L/16 or L/4; default both)\n"
                 "                        [--sampler walk|gamma-nar|ar] (default walk and gamma-nar) [--repeat R]\n"
                 "                        [--only cached|plain]   (one path, for a profiler)\n"
                 "  --repeat R: after one untimed run of each path (the cached one packs the weights), R alternating\n"
                 "              runs of each, the fastest of each kept (a busy machine)\n"
                 "  defaults: L 1024, width 256, 4 layers, 4 heads, V 50258, τ 2, batch 1 (random weights)\n");
}

static hdlm_model *bench_model(hdlm_family family, int width, int layers, int heads, int length) {
    hdlm_model_config c = hdlm_model_config_ddit_small(family);
    c.width = width, c.n_layers = layers, c.n_heads = heads, c.max_length = length, c.dropout = 0;
    hdlm_model *m;
    HDLM_MUST(hdlm_model_create(&m, &c));
    hdlm_model_init(m, 1);
    hdlm_rng rng;
    hdlm_rng_init(&rng, 5);
    for (size_t i = 0; i < m->n_params; i++) m->params[i] += 0.02f * (float)hdlm_rng_normal(&rng);
    return m;
}

static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// FLOPs of one sample's network calls: per row 2·layers·(12d² + 12d·cond (γ adaLN)) for the linear layers, 4·layers·d
// per key the row attends to (scores and values), and 2dV for rows with outputs. Uncached: every step runs rows
// [0, a_end] (walker) or all L (γ NAR) under the step's mask (a row past a_end reads all L values), all with outputs.
// Cached: the active rows with outputs against keys [0, a_end], and each settled ω-block once, without them, against
// the keys up to its end (a settling row skips its last layer's output projection and MLP: 2·9d² fewer).
static double path_flops(const hdlm_model_config *c, const hdlm_schedule *s, bool nar, bool cached) {
    double d = c->width, ada = c->family == HDLM_FAMILY_GAMMA ? 12 * d * c->cond_dim : 0;
    double per_row = 2.0 * c->n_layers * (12 * d * d + ada), per_key = 4.0 * c->n_layers * d;
    double per_settling_row = per_row - 2.0 * 9 * d * d;
    double head = 2.0 * d * c->vocab, total = 0;
    hdlm_step st;
    hdlm_step_alloc(&st, s->length);
    int settled = 0;
    for (int k = 1; k < s->k_max; k++) {
        HDLM_MUST(hdlm_schedule_step(s, k, &st));
        int first = cached ? st.n_set : 0, end = cached || !nar ? st.a_end + 1 : s->length;
        for (int i = first; i < end; i++) {
            int keys = cached ? st.a_end + 1 : hdlm_key_range_end(hdlm_mask_key_range(&st.mask, i));
            total += per_row + head + per_key * keys;
        }
        for (; cached && settled < st.n_set; settled += s->width)   // blocks entering the cache
            total += s->width * (per_settling_row + per_key * (settled + s->width));
    }
    hdlm_step_free(&st);
    return total;
}

// The same for next-token generation: uncached, position i runs the prefix [0, i] causally with every row's logits;
// cached, each position runs once as a query (with logits) and enters once (without), against the keys before it.
static double ar_flops(const hdlm_model_config *c, int length, bool cached) {
    double d = c->width, per_row = 2.0 * c->n_layers * 12 * d * d, per_key = 4.0 * c->n_layers * d;
    double head = 2.0 * d * c->vocab, per_settling_row = per_row - 2.0 * 9 * d * d, total = 0;
    for (int i = 0; i < length; i++)
        total += cached ? per_row + head + per_key * (i + 1) + (i > 0 ? per_settling_row + per_key * i : 0)
                        : (i + 1) * (per_row + head) + per_key * (i + 1) * (i + 2) / 2.0;
    return total;
}

// Bytes the cached path reads per call of next-token generation, on average: every weight of the linear layers and
// the head (a call's product of `batch` rows streams them once), and each sequence's K/V rows of the keys before it.
static double ar_cached_bytes(const hdlm_model_config *c, int length, int batch) {
    double d = c->width, weights = 4.0 * (c->n_layers * 12 * d * d + d * c->vocab);
    return weights + batch * 4.0 * 2 * c->n_layers * d * (length + 1) / 2.0;
}

// One row of the table: the fastest of `repeat` alternating runs of each path, after an untimed one of each.
// Returns the cached path's seconds.
static double time_paths(hdlm_sampler_config *cfg, hdlm_denoiser *d, int batch, int length, int repeat,
                       const char *omega, double flop_ratio, int only_path) {
    uint32_t *plain = hdlm_malloc((size_t)batch * length * sizeof *plain);
    uint32_t *cached = hdlm_malloc((size_t)batch * length * sizeof *cached);
    // One untimed run of each path first: the cached path's first call packs the model's weights (kept by the
    // denoiser for every later generation; ≈ 1 s at DDiT-small, which had made the first timed cached run the slowest),
    // and both fault in their buffers. Then the two paths alternate, so a change in the machine's load hits both; the
    // fastest run of each counts.
    double t_plain = INFINITY, c_plain = INFINITY, t_cached = INFINITY, c_cached = INFINITY;
    bool same = true;
    for (int r = -1; r < repeat; r++) {
        for (int use_cache = 0; use_cache < 2; use_cache++) {
            if (only_path >= 0 && use_cache != only_path) continue;
            cfg->kv_cache = use_cache;
            double t0 = hdlm_time_now(), c0 = cpu_now();
            HDLM_MUST(hdlm_sample(cfg, d, batch, length, 0, use_cache ? cached : plain, NULL, NULL));
            double t = hdlm_time_now() - t0, c = cpu_now() - c0;
            if (r < 0) continue;
            double *tb = use_cache ? &t_cached : &t_plain, *cb = use_cache ? &c_cached : &c_plain;
            *tb = t < *tb ? t : *tb;
            *cb = c < *cb ? c : *cb;
        }
        same &= only_path >= 0 || memcmp(plain, cached, (size_t)batch * length * sizeof *plain) == 0;
    }
    double speedup = t_plain / t_cached;
    printf("%-10s %-5s %5d %7.1fx %11.2f %9.2f %9.1fx %8.0f%% %10.1fx %s\n", hdlm_sampler_kind_name(cfg->kind), omega,
           hdlm_sampler_calls(cfg), speedup, t_plain, t_cached, flop_ratio, 100 * speedup / flop_ratio,
           c_plain / c_cached, same ? "yes" : "NO");
    fflush(stdout);
    free(plain);
    free(cached);
    return t_cached;
}

int bench_kvcache_main(int argc, char **argv) {
    static const struct option options[] = {
        {"length", required_argument, NULL, 'L'}, {"width", required_argument, NULL, 'd'},
        {"layers", required_argument, NULL, 'l'}, {"heads", required_argument, NULL, 'H'},
        {"tau", required_argument, NULL, 't'},    {"batch", required_argument, NULL, 'b'},
        {"omega", required_argument, NULL, 'w'},  {"help", no_argument, NULL, 'h'},
        {"sampler", required_argument, NULL, 's'}, {"repeat", required_argument, NULL, 'r'},
        {"only", required_argument, NULL, 'o'},
        {NULL, 0, NULL, 0}};
    int length = 1024, width = 256, layers = 4, heads = 4, tau = 2, batch = 1, only = 0, repeat = 1, opt;
    int only_path = -1;   // --only: -1 both paths, 0 plain, 1 cached
    const char *sampler = NULL;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        switch (opt) {
        case 'L': length = atoi(optarg); break;
        case 'd': width = atoi(optarg); break;
        case 'l': layers = atoi(optarg); break;
        case 'H': heads = atoi(optarg); break;
        case 't': tau = atoi(optarg); break;
        case 'b': batch = atoi(optarg); break;
        case 'w': only = atoi(optarg); break;
        case 's': sampler = optarg; break;
        case 'r': repeat = atoi(optarg); break;
        case 'o': only_path = strcmp(optarg, "cached") == 0 ? 1 : strcmp(optarg, "plain") == 0 ? 0 : -2; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (length < 16 || length % 16 || width < 2 || layers < 1 || heads < 1 || tau < 2 || batch < 1 || repeat < 1 ||
        only_path == -2 ||
        (only != 0 && only != 4 && only != 16) ||
        (sampler && strcmp(sampler, "walk") != 0 && strcmp(sampler, "gamma-nar") != 0 && strcmp(sampler, "ar") != 0))
        HDLM_DIE("kvcache: need L a multiple of 16, τ >= 2, positive sizes, --omega 4 or 16, --sampler walk, "
                 "gamma-nar or ar, --only cached or plain");
    printf("kvcache: L %d, width %d, %d layers, %d heads, V 50258, τ %d, batch %d, random weights, %d OpenMP "
           "thread(s), fastest of %d after an untimed run\n",
           length, width, layers, heads, tau, batch, omp_get_max_threads(), repeat);
    printf("%-10s %-5s %5s %8s %11s %9s %10s %9s %11s %s\n", "sampler", "ω", "calls", "speed-up", "no cache s",
           "cache s", "FLOP ratio", "of FLOPs", "CPU s ratio", "same tokens");
    if (sampler && strcmp(sampler, "ar") == 0) {
        hdlm_model *m = bench_model(HDLM_FAMILY_EPSILON, width, layers, heads, length);
        hdlm_denoiser d = hdlm_denoiser_model(m);
        hdlm_sampler_config cfg = {.kind = HDLM_SAMPLER_AR, .steps = length, .temperature = 1, .seed = 1};
        double t = time_paths(&cfg, &d, batch, length, repeat, "1",
                              ar_flops(&m->config, length, false) / ar_flops(&m->config, length, true), only_path);
        // One row per token: the cached path is bound by streaming the weights, not by FLOPs (its FLOP ratio is
        // out of reach); its measure is the memory read rate, measured here on a buffer beyond the last-level cache.
        double bytes = ar_cached_bytes(&m->config, length, batch), rate = bytes * length / t;
        double bw = hdlm_read_bandwidth(omp_get_max_threads(), (size_t)1 << 30);
        if (only_path != 0)
            printf("ar cached: %.1f MB read per call (weights, K/V) at %.1f GB/s, %.0f%% of the machine's memory read "
                   "rate (%.1f GB/s, %d threads; weights kept in the last-level cache can take it above 100%%)\n",
                   bytes * 1e-6, rate * 1e-9, 100 * rate / bw, bw * 1e-9, omp_get_max_threads());
        hdlm_denoiser_free(&d);
        hdlm_model_free(m);
        return 0;
    }
    for (int fam = 0; fam < 2; fam++) {
        if (sampler && (strcmp(sampler, "gamma-nar") == 0) != fam) continue;
        hdlm_model *m = bench_model(fam ? HDLM_FAMILY_GAMMA : HDLM_FAMILY_EPSILON, width, layers, heads, length);
        hdlm_denoiser d = hdlm_denoiser_model(m);
        for (int div = 16; div >= 4; div /= 4) {
            if (only && div != only) continue;
            hdlm_schedule s;
            HDLM_MUST(hdlm_schedule_init(&s, HDLM_SCHEDULE_BLOCK, length, length / div, tau, HDLM_SAMPLING_EPS,
                                         HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL));
            hdlm_sampler_config cfg = {.kind = fam ? HDLM_SAMPLER_GAMMA_NAR : HDLM_SAMPLER_WALK, .eta = 0.01,
                                       .temperature = 1, .gamma = 0.01, .schedule = &s, .seed = 1};
            char omega[32];
            snprintf(omega, sizeof omega, "L/%d", div);
            time_paths(&cfg, &d, batch, length, repeat, omega,
                       path_flops(&m->config, &s, fam, false) / path_flops(&m->config, &s, fam, true), only_path);
            hdlm_schedule_free(&s);
        }
        hdlm_denoiser_free(&d);
        hdlm_model_free(m);
    }
    return 0;
}

// hdlm-eval perplexity: the Monte-Carlo likelihood bound of a prepared token set (method §9.1, §13 A.6;
// docs/evaluation.md).
#include <getopt.h>
#include <math.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval.h"
#include "hdlm/common.h"
#include "hdlm/compress.h"
#include "hdlm/likelihood.h"

static const char *const PERPLEXITY_USAGE =
    "usage: hdlm-eval perplexity --ckpt DIR --data DIR [options]\n"
    "Monte-Carlo NELBO of every L-token chunk of the token shards DIR/<split>_*.bin (hdlm-prep prepare), chunks\n"
    "split over MPI ranks; the result does not depend on the number of ranks for a fixed seed.\n"
    "  --ckpt DIR          checkpoint directory, or a checkpoint root (its newest valid checkpoint)\n"
    "  --data DIR          token shards (e.g. a zero-shot set made with hdlm-prep and a detokenizer)\n"
    "  --split NAME        shard name prefix [validation]\n"
    "  --raw               raw weights (group params) instead of the EMA weights\n"
    "  --estimator E       masking (the reference's, method §9.1) | ardm (A.6 mode 1) | ardm-policy (A.6 mode 3:\n"
    "                      the K-call policy's NELBO) | ardm-order (A.6 mode 4: exact -log p(x | order, policy)\n"
    "                      of one random order per copy) | ar (exact next-token -log p of an AR run) |\n"
    "                      block (block-autoregressive NELBO of a block-diffusion run: ε, block schedule, ω < L)\n"
    "                      [ar for AR runs, ardm for ARDM-trained runs, block for ε runs with ω < L, else masking]\n"
    "  --budget K          ardm-policy / ardm-order: network calls of the policy (K forwards per round)\n"
    "  --losses FILE       their policy: the DP optimum of these per-step losses (as hdlm-eval sample) [naive]\n"
    "  --codec FILE        ardm-order with the fixed order and policy of an hdlm-compress codec: the exact code\n"
    "                      length hdlm-compress approaches (one copy, one round)\n"
    "  --copies N          noisy copies per round [16]\n"
    "  --rounds R          Monte-Carlo rounds per chunk [6]\n"
    "  --max-chunks N      score only the first N chunks (a quick estimate) [all]\n"
    "  --floor F           masking probability floor p = (1-F)t + F [0.001]\n"
    "  --seed S            seed of the masks [0]\n"
    "  --json              also print one machine-readable JSON line\n"
    "  --help              this text\n";

// What the number is (§11 item 8).
static const char *validity(hdlm_nelbo_kind kind, hdlm_family family, bool ardm_run) {
    if (kind == HDLM_NLL_AR) return "exact -log p of the next-token (AR) model: no bound, no Monte-Carlo error";
    if (kind == HDLM_NELBO_BLOCK)
        return "upper bound on -log p of the ε model's block-wise masking-only process (blocks in order, each given "
               "the clean blocks before it)";
    if (kind == HDLM_NELBO_ARDM)
        return "valid upper bound on -log p for an ARDM (order-agnostic) model; not the ε/γ model's bound";
    if (kind == HDLM_NELBO_ARDM_POLICY)
        return "valid upper bound on -log p of the network run as the K-call parallel model of the policy (A.5)";
    if (kind == HDLM_NELBO_ARDM_ORDER)
        return "mean over random orders of the exact -log p(x | order, policy) (code length, A.7); upper bound on "
               "-log p of the K-call parallel model";
    if (ardm_run) return "masking NELBO of the ARDM network (same expectation as the ARDM bound up to the floor, A.6)";
    if (family == HDLM_FAMILY_GAMMA)
        return "NOT a bound for the γ model (log-scores used as logits, σ fixed at 1e-3): reference parity only";
    return "upper bound on -log p of the ε model's masking-only reverse process (ignores the ε uniform component)";
}

int eval_perplexity_main(int argc, char **argv) {
    static const struct option longopts[] = {
        {"ckpt", required_argument, NULL, 'c'},   {"data", required_argument, NULL, 'd'},
        {"split", required_argument, NULL, 'p'},  {"raw", no_argument, NULL, 'r'},
        {"estimator", required_argument, NULL, 'e'}, {"copies", required_argument, NULL, 'n'},
        {"rounds", required_argument, NULL, 'R'}, {"floor", required_argument, NULL, 'f'},
        {"seed", required_argument, NULL, 's'},   {"json", no_argument, NULL, 'j'},
        {"max-chunks", required_argument, NULL, 'm'}, {"budget", required_argument, NULL, 'k'},
        {"losses", required_argument, NULL, 'l'}, {"codec", required_argument, NULL, 'C'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0},
    };
    const char *ckpt = NULL, *data_dir = NULL, *split = "validation", *estimator = NULL, *losses = NULL,
               *codec_path = NULL;
    bool raw = false, json = false;
    long copies = 16, rounds = 6, seed = 0, max_chunks = 0, budget = 0;
    double floor_p = 1e-3;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        switch (c) {
        case 'c': ckpt = optarg; break;
        case 'C': codec_path = optarg; break;
        case 'd': data_dir = optarg; break;
        case 'p': split = optarg; break;
        case 'r': raw = true; break;
        case 'e': estimator = optarg; break;
        case 'n':
            if (eval_parse_int("perplexity", "copies", optarg, 1, 4096, &copies)) return 2;
            break;
        case 'R':
            if (eval_parse_int("perplexity", "rounds", optarg, 1, 1000000, &rounds)) return 2;
            break;
        case 'm':
            if (eval_parse_int("perplexity", "max-chunks", optarg, 1, 1000000000000L, &max_chunks)) return 2;
            break;
        case 'f':
            if (eval_parse_double("perplexity", "floor", optarg, 1e-12, 1 - 1e-12, &floor_p)) return 2;
            break;
        case 's':
            if (eval_parse_int("perplexity", "seed", optarg, 0, LONG_MAX, &seed))
                return 2;
            break;
        case 'k':
            if (eval_parse_int("perplexity", "budget", optarg, 1, INT_MAX, &budget)) return 2;
            break;
        case 'l': losses = optarg; break;
        case 'j': json = true; break;
        case 'h': fputs(PERPLEXITY_USAGE, stdout); return 0;
        case ':': fprintf(stderr, "hdlm-eval perplexity: option '%s' needs a value\n", argv[optind - 1]); return 2;
        default: eval_report_bad_option("perplexity", argc, argv, optopt); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "hdlm-eval perplexity: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!ckpt || !data_dir) {
        fprintf(stderr, "hdlm-eval perplexity: --ckpt and --data are required (see hdlm-eval perplexity --help)\n");
        return 2;
    }
    hdlm_nelbo_kind kind = HDLM_NELBO_MASKING;
    bool known = estimator == NULL;
    for (int k = HDLM_NELBO_MASKING; k <= HDLM_NELBO_BLOCK && !known; k++)
        if (strcmp(estimator, hdlm_nelbo_kind_name((hdlm_nelbo_kind)k)) == 0) kind = (hdlm_nelbo_kind)k, known = true;
    if (!known) {
        fprintf(stderr, "hdlm-eval perplexity: --estimator expects masking, ardm, ardm-policy, ardm-order, ar or "
                        "block, got '%s'\n", estimator);
        return 2;
    }
    if (codec_path && !estimator) kind = HDLM_NELBO_ARDM_ORDER, estimator = "ardm-order";
    bool policy_kind = kind == HDLM_NELBO_ARDM_POLICY || kind == HDLM_NELBO_ARDM_ORDER;
    if (codec_path && (!policy_kind || budget > 0 || losses)) {
        fprintf(stderr, "hdlm-eval perplexity: --codec gives the order, budget and policy of --estimator ardm-order "
                        "(or ardm-policy): without --budget and --losses\n");
        return 2;
    }
    if (policy_kind != (budget > 0 || codec_path) || (losses && !policy_kind)) {
        fprintf(stderr, "hdlm-eval perplexity: --budget (and --losses) go with --estimator ardm-policy or ardm-order,"
                        " which need --budget\n");
        return 2;
    }

    eval_model em;
    HDLM_MUST(eval_model_load(&em, ckpt, raw, 0));
    hdlm_family family = em.model->config.family;
    bool ardm_run = em.config.kind.objective == HDLM_OBJECTIVE_ARDM;
    bool ar_run = em.config.kind.objective == HDLM_OBJECTIVE_AR;
    hdlm_nelbo_config cfg = hdlm_nelbo_config_default(family == HDLM_FAMILY_GAMMA);
    // Block diffusion (the ε family on the block schedule at ω < L) is scored block by block, as it generates.
    bool block_run = eval_model_block_diffusion(&em);
    cfg.kind = estimator ? kind
               : ar_run  ? HDLM_NLL_AR
               : ardm_run ? HDLM_NELBO_ARDM
               : block_run ? HDLM_NELBO_BLOCK
                           : HDLM_NELBO_MASKING;
    if (codec_path && ar_run) cfg.kind = HDLM_NLL_AR;   // a next-token codec codes with the AR model's likelihood
    cfg.schedule = em.has_schedule ? &em.schedule : NULL;
    if (cfg.kind == HDLM_NELBO_BLOCK && !block_run)
        HDLM_DIE("--estimator block on %s: it needs an ε run on the block schedule with annealing.width < "
                 "model.length", em.path);
    // A causal next-token network and a denoiser read their inputs differently: either estimator on the other is
    // a number about nothing.
    if (ar_run != (cfg.kind == HDLM_NLL_AR))
        HDLM_DIE("--estimator %s on %s: the ar estimator goes with AR runs (training.objective = ar) and only with "
                 "them", hdlm_nelbo_kind_name(cfg.kind), em.path);
    if (policy_kind && !ar_run && family == HDLM_FAMILY_GAMMA)
        HDLM_DIE("--estimator %s needs a model without σ input (ε family or ARDM), %s is γ", estimator, em.path);
    cfg.copies = (int)copies, cfg.rounds = (int)rounds, cfg.floor = floor_p, cfg.seed = (uint64_t)seed;
    cfg.max_chunks = (uint64_t)max_chunks;

    int L = em.model->config.max_length;
    int *policy = NULL;
    hdlm_codec codec = {0};
    if (codec_path) {   // the order and policy of hdlm-compress: one fixed order, so one copy and one round say all
        HDLM_MUST(hdlm_codec_load(&codec, codec_path));
        if (codec.model_hash != hdlm_model_hash(em.model))
            HDLM_DIE("--codec %s was made for another model than %s (%s weights)", codec_path, em.path,
                     raw ? "raw" : "EMA");
        cfg.policy = codec.policy, cfg.budget = codec.budget, cfg.order = codec.order;
        cfg.copies = cfg.rounds = 1;
        if (codec.next_token != ar_run)
            HDLM_DIE("--codec %s is a %s codec, %s a %s run", codec_path, codec.next_token ? "next-token" : "ARDM",
                     em.path, ar_run ? "next-token (AR)" : "denoising");
        if (ar_run) cfg.kind = HDLM_NLL_AR;   // left to right, one token per call: the AR model's exact NLL
    } else if (policy_kind) {
        policy = hdlm_malloc((size_t)budget * sizeof *policy);
        HDLM_MUST(hdlm_ardm_policy_load(losses, L, (int)budget, policy));
        cfg.policy = policy, cfg.budget = (int)budget;
    }
    hdlm_dataset data;
    // The shards' vocabulary must be the model's real tokens, as the trainer requires of its data.
    HDLM_MUST(hdlm_dataset_open_dir(&data, data_dir, split, (uint64_t)L, (uint32_t)(em.model->config.vocab - 1)));
    hdlm_log("perplexity: %s (%s weights), %s, %" PRIu64 " chunks of %d tokens on %d rank(s)\n", em.path,
             raw ? "raw" : "EMA", hdlm_nelbo_kind_name(cfg.kind), hdlm_dataset_chunk_count(&data), L,
             hdlm_world_size());
    hdlm_denoiser d = hdlm_denoiser_model(em.model);
    eval_progress progress;
    eval_progress_init(&progress, "perplexity chunks (rank 0)", 10.0);
    hdlm_nelbo_result res;
    double t0 = hdlm_time_now();
    HDLM_MUST(hdlm_nelbo_dataset(&d, &cfg, &data, &res, eval_progress_report, &progress));
    double seconds = hdlm_time_now() - t0;
    if (codec_path) res.std_error = 0;   // one fixed order: the value itself, not an estimate
    if (!isfinite(res.bound))
        HDLM_DIE("the bound is %g: the model's outputs are not finite on %s (diverged or damaged weights in %s?)",
                 res.bound, data_dir, em.path);
    if (hdlm_rank() == 0) {
        if (cfg.kind == HDLM_NLL_AR)
            printf("estimator   ar (one causal forward per chunk)\n");
        else if (codec_path)
            printf("estimator   %s (budget %d, the order and policy of the codec %s: exact, no Monte-Carlo error)\n",
                   hdlm_nelbo_kind_name(cfg.kind), cfg.budget, codec_path);
        else if (policy_kind)
            printf("estimator   %s (budget %d, %s policy, copies %d, rounds %d, seed %ld)\n",
                   hdlm_nelbo_kind_name(cfg.kind), cfg.budget, losses ? "DP" : "naive", cfg.copies, cfg.rounds, seed);
        else
            printf("estimator   %s (copies %d, rounds %d, floor %g, seed %ld)\n", hdlm_nelbo_kind_name(cfg.kind),
                   cfg.copies, cfg.rounds, cfg.floor, seed);
        printf("family      %s%s\n", hdlm_family_name(family),
               ardm_run ? " (ARDM objective)" : ar_run ? " (AR objective)" : "");
        if (cfg.kind == HDLM_NLL_AR || (codec_path && cfg.kind == HDLM_NELBO_ARDM_ORDER))
            printf("nll         %.6f nats/token (exact; %.6f bits/token)\n", res.bound, res.bound / log(2.0));
        else if (isfinite(res.std_error))
            printf("bound       %.6f nats/token (± %.6f Monte-Carlo standard error)\n", res.bound, res.std_error);
        else
            printf("bound       %.6f nats/token (± not estimable: a chunk has one counted Monte-Carlo round; use "
                   "--rounds 2 or more)\n", res.bound);
        printf("perplexity  %.4f\n", res.perplexity);
        printf("tokens      %" PRIu64 " scored as %" PRIu64 " chunks x %d%s\n", res.tokens, res.chunks,
               cfg.kind == HDLM_NELBO_MASKING ? L - 1 : L,
               cfg.kind == HDLM_NELBO_MASKING ? " (L-1, reference parity)" : "");
        printf("validity    %s\n", codec_path ? "exact -log p(x | the codec's order and policy): the code length "
                                             "hdlm-compress approaches (docs/compression.md)"
                                           : validity(cfg.kind, family, ardm_run));
        printf("time        %.2f s on %d rank(s)\n", seconds, hdlm_world_size());
        if (json) {   // JSON has no NaN or infinity: a value that is not finite is written as null
            char se[32] = "null", ppl[32] = "null";
            if (isfinite(res.std_error)) snprintf(se, sizeof se, "%.17g", res.std_error);
            if (isfinite(res.perplexity)) snprintf(ppl, sizeof ppl, "%.17g", res.perplexity);
            printf("{\"estimator\":\"%s\",\"family\":\"%s\",\"bound\":%.17g,\"std_error\":%s,\"perplexity\":%s,"
                   "\"tokens\":%" PRIu64 ",\"chunks\":%" PRIu64 ",\"copies\":%d,\"rounds\":%d,\"floor\":%.17g,"
                   "\"seed\":%ld,\"weights\":\"%s\",\"checkpoint\":\"%s\"}\n",
                   hdlm_nelbo_kind_name(cfg.kind), hdlm_family_name(family), res.bound, se, ppl, res.tokens,
                   res.chunks, cfg.copies, cfg.rounds, cfg.floor, seed, raw ? "raw" : "ema", em.path);
        }
    }
    hdlm_denoiser_free(&d);
    hdlm_dataset_close(&data);
    hdlm_codec_free(&codec);
    free(policy);
    eval_model_free(&em);
    return 0;
}

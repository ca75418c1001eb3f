// hdlm-eval sample: generation to JSONL (method §6, A.5; docs/evaluation.md). Samples are split over MPI ranks by
// number; sample i depends only on (seed, i), so the file is the same for any number of ranks.
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval.h"
#include "hdlm/common.h"
#include "hdlm/dataset.h"
#include "hdlm/likelihood.h"
#include "hdlm/sampler.h"
#include "hdlm/tokenizer.h"

static const char *const SAMPLE_USAGE =
    "usage: hdlm-eval sample --ckpt DIR --n N --out FILE [options]\n"
    "Generates N sequences of the model's length L and writes one JSON object per line: index, sampler, seed, ids,\n"
    "mask_count (MASK ids left), and with a GPT-2 model text (decoded, special tokens skipped) and entropy (unigram\n"
    "entropy of the re-encoded text, method §9.3).\n"
    "  --ckpt DIR            checkpoint directory, or a checkpoint root (its newest valid checkpoint)\n"
    "  --raw                 raw weights instead of EMA\n"
    "  --n N                 number of samples\n"
    "  --out FILE            JSONL output (written by rank 0)\n"
    "  --sampler S           ancestral | acs | walk (ε), gamma-nar | gamma-sar (γ), ardm (budgeted), ar (AR runs:\n"
    "                        next token, L calls) [ar for AR runs, walk for ε runs on the block schedule at\n"
    "                        ω < L, ancestral for other ε runs, gamma-nar for γ]\n"
    "  --steps S             ancestral/acs steps [128]; gamma and walk take K_max-1 steps of the schedule\n"
    "  --tau T               the schedule's τ for sampling (the reference's eval_tau) [annealing.tau]\n"
    "  --eta E               ACS / walk correction strength [0.01]\n"
    "  --temperature T       ε and ARDM samplers [1]\n"
    "  --no-mask             never draw MASK (ε samplers; the reference allows it)\n"
    "  --kv-cache            walk / gamma samplers: cache settled blocks' K/V (block schedule, block_causal context;\n"
    "                        same tokens as without, method §3.5); ar: one row per call against the cache\n"
    "  --score sedd|parity   γ score at the current token (method §14.2) [sedd]\n"
    "  --budget K            ardm: network calls [--steps]\n"
    "  --losses FILE         ardm: per-step losses L_0..L_{L-1}, one per line; the policy is the DP optimum\n"
    "                        (sorted descending first, method §13 A.5.3); without it the naive policy\n"
    "  --prompt-ids I,J,...  prefix prompt: positions 0.. hold these ids\n"
    "  --infill P:I,...      infilling: position P holds id I\n"
    "  --batch B             sequences per forward [16]\n"
    "  --seed S              [0]\n"
    "  --tokenizer DIR       GPT-2 encoder.json + vocab.bpe for text and entropy [.cache/gpt2 of the source tree]\n"
    "  --help                this text\n";

typedef struct {
    const char *ckpt, *out, *sampler, *losses, *tokenizer, *prompt_ids, *infill, *score;
    bool raw, no_mask, kv_cache;
    long n, steps, tau, budget, batch, seed;
    double eta, temperature;
} sample_args;

static int parse_args(int argc, char **argv, sample_args *a) {
    static const struct option longopts[] = {
        {"ckpt", required_argument, NULL, 'c'},     {"raw", no_argument, NULL, 'r'},
        {"n", required_argument, NULL, 'n'},        {"out", required_argument, NULL, 'o'},
        {"sampler", required_argument, NULL, 'S'},  {"steps", required_argument, NULL, 's'},
        {"tau", required_argument, NULL, 't'},      {"eta", required_argument, NULL, 'e'},
        {"temperature", required_argument, NULL, 'T'}, {"no-mask", no_argument, NULL, 'm'},
        {"score", required_argument, NULL, 'g'},    {"budget", required_argument, NULL, 'k'},
        {"losses", required_argument, NULL, 'l'},   {"prompt-ids", required_argument, NULL, 'p'},
        {"infill", required_argument, NULL, 'i'},   {"batch", required_argument, NULL, 'b'},
        {"seed", required_argument, NULL, 'x'},     {"tokenizer", required_argument, NULL, 'z'},
        {"kv-cache", no_argument, NULL, 'K'},       {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    *a = (sample_args){.steps = 128, .batch = 16, .eta = 0.01, .temperature = 1.0, .score = "sedd"};
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        switch (c) {
        case 'c': a->ckpt = optarg; break;
        case 'r': a->raw = true; break;
        case 'n': if (eval_parse_int("sample", "n", optarg, 1, INT_MAX, &a->n)) return 2; break;
        case 'o': a->out = optarg; break;
        case 'S': a->sampler = optarg; break;
        case 's': if (eval_parse_int("sample", "steps", optarg, 1, INT_MAX, &a->steps)) return 2; break;
        case 't': if (eval_parse_int("sample", "tau", optarg, 2, INT_MAX, &a->tau)) return 2; break;
        case 'e': if (eval_parse_double("sample", "eta", optarg, 0, 1, &a->eta)) return 2; break;
        case 'T': if (eval_parse_double("sample", "temperature", optarg, 1e-6, 1e6, &a->temperature)) return 2; break;
        case 'm': a->no_mask = true; break;
        case 'K': a->kv_cache = true; break;
        case 'g': a->score = optarg; break;
        case 'k': if (eval_parse_int("sample", "budget", optarg, 1, INT_MAX, &a->budget)) return 2; break;
        case 'l': a->losses = optarg; break;
        case 'p': a->prompt_ids = optarg; break;
        case 'i': a->infill = optarg; break;
        case 'b': if (eval_parse_int("sample", "batch", optarg, 1, 4096, &a->batch)) return 2; break;
        case 'x': if (eval_parse_int("sample", "seed", optarg, 0, LONG_MAX, &a->seed)) return 2; break;
        case 'z': a->tokenizer = optarg; break;
        case 'h': fputs(SAMPLE_USAGE, stdout); return 1;
        case ':': fprintf(stderr, "hdlm-eval sample: option '%s' needs a value\n", argv[optind - 1]); return 2;
        default: eval_report_bad_option("sample", argc, argv, optopt); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "hdlm-eval sample: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!a->ckpt || !a->out || a->n == 0) {
        fprintf(stderr, "hdlm-eval sample: --ckpt, --n and --out are required (see hdlm-eval sample --help)\n");
        return 2;
    }
    if (strcmp(a->score, "sedd") != 0 && strcmp(a->score, "parity") != 0) {
        fprintf(stderr, "hdlm-eval sample: --score expects sedd or parity, got '%s'\n", a->score);
        return 2;
    }
    return 0;
}

// "--prompt-ids 1,2,3" (prefix) and "--infill 5:7,9:11" into prompt/prompt_mask of length L.
static int parse_prompt(const sample_args *a, int L, int vocab, uint32_t *prompt, uint8_t *mask, bool *any) {
    *any = false;
    const char *lists[2] = {a->prompt_ids, a->infill};
    for (int which = 0; which < 2; which++) {
        const char *s = lists[which];
        const char *flag = which ? "--infill" : "--prompt-ids";
        for (int pos = 0; s && *s; pos++) {
            char *end;
            errno = 0;
            long p = pos, id;
            if (which) {
                p = strtol(s, &end, 10);
                HDLM_CHECK(errno == 0 && end != s && *end == ':', "%s: expected POSITION:ID at '%s'", flag, s);
                s = end + 1;
            }
            id = strtol(s, &end, 10);
            HDLM_CHECK(errno == 0 && end != s && (*end == ',' || *end == '\0'), "%s: expected an id at '%s'", flag, s);
            HDLM_CHECK(p >= 0 && p < L, "%s: position %ld outside the sequence [0, %d)", flag, p, L);
            HDLM_CHECK(id >= 0 && id < vocab - 1, "%s: id %ld is not a real token of the model (< %d)", flag, id,
                       vocab - 1);
            prompt[p] = (uint32_t)id;
            mask[p] = 1;
            *any = true;
            s = *end ? end + 1 : end;
        }
    }
    return 0;
}

// Per-call progress over the whole run: call `done` of the current batch out of `calls`.
typedef struct {
    eval_progress *progress;
    int base, total;
} call_progress;

static void call_progress_report(void *ctx, int done, int total) {
    (void)total;
    call_progress *c = ctx;
    eval_progress_report(c->progress, c->base + done, c->total);
}

static void write_json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
        else if (*p == '\n') fputs("\\n", f);
        else if (*p < 0x20) fprintf(f, "\\u%04x", *p);
        else fputc(*p, f);
    }
    fputc('"', f);
}

// One JSONL line; with a tokenizer also the decoded text (MASK ids dropped) and the unigram entropy.
static int write_sample(FILE *f, const hdlm_tokenizer *tok, uint64_t index, const char *sampler, long seed,
                        const uint32_t *ids, int L, int vocab) {
    int masks = 0;
    fprintf(f, "{\"index\":%" PRIu64 ",\"sampler\":\"%s\",\"seed\":%ld,\"ids\":[", index, sampler, seed);
    for (int i = 0; i < L; i++) {
        fprintf(f, "%s%u", i ? "," : "", ids[i]);
        masks += ids[i] == (uint32_t)(vocab - 1);
    }
    fprintf(f, "],\"mask_count\":%d", masks);
    if (tok) {
        uint32_t *real = hdlm_malloc((size_t)L * sizeof *real);
        int n = 0;
        for (int i = 0; i < L; i++)
            if (ids[i] != (uint32_t)(vocab - 1)) real[n++] = ids[i];
        char *text;
        size_t len;
        hdlm_tokens re = {0};
        int rc = hdlm_tokenizer_decode(tok, real, (size_t)n, 1, &text, &len);
        if (rc == 0) rc = hdlm_tokenizer_encode(tok, text, len, &re);
        free(real);
        HDLM_TRY(rc);
        fputs(",\"text\":", f);
        write_json_string(f, text);
        fprintf(f, ",\"entropy\":%.10g", hdlm_unigram_entropy(re.ids, re.len));
        free(text);
        hdlm_tokens_free(&re);
    }
    fputs("}\n", f);
    return 0;
}

int eval_sample_main(int argc, char **argv) {
    sample_args a;
    int prc = parse_args(argc, argv, &a);
    if (prc) return prc == 1 ? 0 : prc;
    eval_model em;
    HDLM_MUST(eval_model_load(&em, a.ckpt, a.raw, (int)a.tau));
    hdlm_model *m = em.model;
    int L = m->config.max_length, V = m->config.vocab;
    bool gamma = m->config.family == HDLM_FAMILY_GAMMA, ardm = false;
    hdlm_sampler_config cfg = {.kind = gamma ? HDLM_SAMPLER_GAMMA_NAR : HDLM_SAMPLER_ANCESTRAL,
                               .steps = (int)a.steps, .eta = a.eta, .temperature = a.temperature,
                               .exclude_mask = a.no_mask, .gamma = em.config.graph.gamma,
                               .score_convention = strcmp(a.score, "parity") == 0 ? HDLM_GAMMA_SCORE_PARITY
                                                                                  : HDLM_GAMMA_SCORE_SEDD,
                               .schedule = em.has_schedule ? &em.schedule : NULL, .seed = (uint64_t)a.seed,
                               .kv_cache = a.kv_cache};
    bool ar_run = em.config.kind.objective == HDLM_OBJECTIVE_AR;
    if (ar_run) cfg.kind = HDLM_SAMPLER_AR;
    if (eval_model_block_diffusion(&em)) cfg.kind = HDLM_SAMPLER_WALK;   // block by block, as it was trained
    if (a.sampler && strcmp(a.sampler, "ardm") == 0) ardm = true;
    else if (a.sampler) HDLM_MUST(hdlm_sampler_kind_parse(a.sampler, "--sampler", &cfg.kind));
    // A next-token network only continues a prefix; a denoiser only denoises.
    if (ar_run != (!ardm && cfg.kind == HDLM_SAMPLER_AR))
        HDLM_DIE("--sampler %s on %s: the ar sampler goes with AR runs (training.objective = ar) and only with them",
                 ardm ? "ardm" : hdlm_sampler_kind_name(cfg.kind), em.path);
    if (cfg.kind == HDLM_SAMPLER_AR) cfg.steps = L;
    bool gamma_kind = cfg.kind == HDLM_SAMPLER_GAMMA_NAR || cfg.kind == HDLM_SAMPLER_GAMMA_SAR;
    if (!ardm && gamma_kind != gamma)
        HDLM_DIE("--sampler %s does not fit the %s model in %s", hdlm_sampler_kind_name(cfg.kind),
                 hdlm_family_name(m->config.family), em.path);
    if (ardm && gamma) HDLM_DIE("--sampler ardm needs a model without σ input (ε family), %s is γ", em.path);
    uint32_t *prompt = hdlm_calloc((size_t)L, sizeof *prompt);
    uint8_t *pmask = hdlm_calloc((size_t)L, 1);
    bool any_prompt;
    HDLM_MUST(parse_prompt(&a, L, V, prompt, pmask, &any_prompt));
    if (any_prompt) cfg.prompt = prompt, cfg.prompt_mask = pmask;
    int K = 0, *policy = NULL;
    if (ardm) {
        K = (int)(a.budget ? a.budget : a.steps);
        if (K > L) HDLM_DIE("--budget %d is more than the %d positions", K, L);
        policy = hdlm_malloc((size_t)K * sizeof *policy);
        HDLM_MUST(eval_ardm_policy(a.losses, L, K, policy));
    } else {
        HDLM_MUST(hdlm_sampler_check(&cfg, V, L));
    }
    hdlm_tokenizer *tok = NULL;
    if (V == HDLM_MODEL_VOCAB) {
        char dir[4096];
        snprintf(dir, sizeof dir, "%s", a.tokenizer ? a.tokenizer : HDLM_SOURCE_DIR "/.cache/gpt2");
        HDLM_MUST(hdlm_tokenizer_load_dir(&tok, dir));
    }

    int world = hdlm_world_size(), rank = hdlm_rank();
    uint64_t begin, end;
    hdlm_partition_range((uint64_t)a.n, rank, world, &begin, &end);
    uint32_t *mine = hdlm_malloc(((end - begin) ? (end - begin) : 1) * (size_t)L * sizeof *mine);
    hdlm_denoiser d = hdlm_denoiser_model(m);
    const char *name = ardm ? "ardm" : hdlm_sampler_kind_name(cfg.kind);
    int calls = ardm ? K : hdlm_sampler_calls(&cfg);
    hdlm_log("sample: %s, %ld samples of %d tokens, %d network calls per batch of %ld, %d rank(s), %s\n", name, a.n,
             L, calls, a.batch, world, em.path);
    eval_progress progress;
    eval_progress_init(&progress, "sample network calls (rank 0)", 10.0);
    int batches = (int)((end - begin + (uint64_t)a.batch - 1) / (uint64_t)a.batch), done = 0, status = 0;
    call_progress per_call = {&progress, 0, batches * calls};
    double t0 = hdlm_time_now();
    for (uint64_t s = begin; s < end && status == 0; s += (uint64_t)a.batch) {
        int b = (int)(end - s < (uint64_t)a.batch ? end - s : (uint64_t)a.batch);
        uint32_t *x = mine + (s - begin) * (size_t)L;
        per_call.base = done * calls;
        status = ardm ? hdlm_ardm_sample(&cfg, policy, K, &d, b, L, s, x)
                      : hdlm_sample(&cfg, &d, b, L, s, x, call_progress_report, &per_call);
        done++;
        if (ardm) eval_progress_report(&progress, done * calls, batches * calls);   // ARDM: per batch
    }
    int bad = status != 0, any_bad = 0;
    MPI_Allreduce(&bad, &any_bad, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (status) HDLM_MUST(status);
    if (any_bad) HDLM_DIE("sample: another rank failed");
    double seconds = hdlm_time_now() - t0;
    // Rank 0 gathers every rank's samples in sample order and writes the file.
    int *counts = hdlm_malloc((size_t)world * sizeof *counts), *displs = hdlm_malloc((size_t)world * sizeof *displs);
    for (int r = 0; r < world; r++) {
        uint64_t rb, re;
        hdlm_partition_range((uint64_t)a.n, r, world, &rb, &re);
        counts[r] = (int)((re - rb) * (uint64_t)L);
        displs[r] = (int)(rb * (uint64_t)L);
    }
    uint32_t *all = rank == 0 ? hdlm_malloc((size_t)a.n * L * sizeof *all) : NULL;
    MPI_Gatherv(mine, counts[rank], MPI_UINT32_T, all, counts, displs, MPI_UINT32_T, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        FILE *f = fopen(a.out, "w");
        if (!f) HDLM_DIE("--out %s: %s", a.out, strerror(errno));
        for (long i = 0; i < a.n; i++)
            HDLM_MUST(write_sample(f, tok, (uint64_t)i, name, a.seed, all + (size_t)i * L, L, V));
        if (fclose(f) != 0) HDLM_DIE("--out %s: %s", a.out, strerror(errno));
        printf("wrote %ld samples to %s (%s, %d calls each, %.2f s, %.3f s per sample)\n", a.n, a.out, name, calls,
               seconds, seconds * world / (double)a.n);
    }
    free(all);
    free(displs);
    free(counts);
    free(mine);
    hdlm_tokenizer_free(tok);
    free(policy);
    free(pmask);
    free(prompt);
    eval_model_free(&em);
    return 0;
}

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
    "Generates N sequences of the model's length L and writes one JSON object per line (docs/sample-format.md):\n"
    "index, sampler, seed, ids, mask_count (MASK ids left), and with a GPT-2 model text (decoded, special tokens\n"
    "skipped), entropy (unigram entropy of the re-encoded text, method §9.3) and the prompt given as text.\n"
    "  --ckpt DIR            a run directory, a checkpoint root (its newest complete checkpoint) or a checkpoint\n"
    "  --raw                 raw weights instead of EMA\n"
    "  --n N                 number of samples\n"
    "  --out FILE            JSONL output (written by rank 0; - for standard output)\n"
    "  --sampler S           ancestral | acs | walk (ε), gamma-nar | gamma-sar (γ), ardm (budgeted), ar (AR runs:\n"
    "                        next token, L calls) [ar for AR runs, walk for ε runs on the block schedule at\n"
    "                        ω < L, ancestral for other ε runs, gamma-nar for γ]\n"
    "  --steps S             ancestral/acs steps [128]; gamma and walk take K_max-1 steps of the schedule\n"
    "  --tau T               the schedule's τ for sampling (the reference's eval_tau) [annealing.tau]\n"
    "  --eta E               ACS / walk correction strength [0.01]\n"
    "  --temperature T       ε, ar and ARDM samplers [1]\n"
    "  --top-k K             ε, ar and ARDM samplers: draw among the K most probable tokens only [0: off]\n"
    "  --top-p P             ε, ar and ARDM samplers: nucleus sampling, the smallest set of most probable tokens\n"
    "                        whose probability reaches P [1: off]\n"
    "  --no-mask             never draw MASK (ε samplers; the reference allows it)\n"
    "  --kv-cache            walk / gamma samplers: cache settled blocks' K/V (block schedule, block_causal context;\n"
    "                        same tokens as without, method §3.5); ar: one row per call against the cache\n"
    "                        [on wherever it applies; --no-kv-cache: a full forward every call]\n"
    "  --score sedd|parity   γ score at the current token (method §14.2) [sedd]\n"
    "  --budget K            ardm: network calls [--steps]\n"
    "  --losses FILE         ardm: per-step losses L_0..L_{L-1}, one per line; the policy is the DP optimum\n"
    "                        (sorted descending first, method §13 A.5.3); without it the naive policy\n"
    "  --prompt TEXT         prefix prompt: TEXT's GPT-2 tokens at positions 0..\n"
    "  --template TEXT       infilling: TEXT with holes, <mask:N> for N generated tokens (<mask> for one); the\n"
    "                        text around them is tokenized piece by piece and fixed, positions after the template\n"
    "                        are generated too (the model's length is fixed)\n"
    "  --prompt-ids I,J,...  prefix prompt as token ids\n"
    "  --infill P:I,...      position P holds id I (with or without one of the above)\n"
    "  --eos keep|drop|pad   end of text (<|endoftext|> after the prompt): keep everything, drop what follows it,\n"
    "                        or replace what follows it by <|endoftext|> (length kept) [keep]; ar stops early\n"
    "  --batch B             sequences per forward [16]\n"
    "  --seed S              [0]\n"
    "  --tokenizer DIR       GPT-2 encoder.json + vocab.bpe [$HDLM_VOCAB or <prefix>/share/hdlm/gpt2]\n"
    "  --help                this text\n";

static const char *const GENERATE_USAGE =
    "usage: hdlm-eval generate --ckpt DIR [--prompt TEXT | --template TEXT] [options]\n"
    "A quick look at a checkpoint: samples text and prints it (standard output; progress on standard error).\n"
    "hdlm-eval sample with other defaults: --n 1, --out - as text, --eos drop, --no-mask; every sample option\n"
    "applies (hdlm-eval sample --help), --json prints the JSONL records instead.\n";

typedef struct {
    const char *ckpt, *out, *sampler, *losses, *tokenizer, *prompt_ids, *infill, *score, *prompt, *template, *eos;
    bool raw, no_mask, generate, json;
    int kv_cache;   // -1: wherever it applies (hdlm_sampler_kv_cache_applies), 0 off, 1 on
    long n, steps, tau, budget, batch, seed, top_k;
    double eta, temperature, top_p;
} sample_args;

static int parse_args(int argc, char **argv, bool generate, sample_args *a) {
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
        {"kv-cache", no_argument, NULL, 'K'},       {"no-kv-cache", no_argument, NULL, 'N'},
        {"prompt", required_argument, NULL, 'P'},
        {"template", required_argument, NULL, 'M'}, {"eos", required_argument, NULL, 'E'},
        {"top-k", required_argument, NULL, 'A'},    {"top-p", required_argument, NULL, 'B'},
        {"json", no_argument, NULL, 'J'},           {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *cmd = generate ? "generate" : "sample";
    *a = (sample_args){.steps = 128, .batch = 16, .eta = 0.01, .temperature = 1.0, .score = "sedd", .eos = "keep",
                       .generate = generate, .kv_cache = -1};
    if (generate) a->n = 1, a->out = "-", a->eos = "drop", a->no_mask = true;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        switch (c) {
        case 'c': a->ckpt = optarg; break;
        case 'r': a->raw = true; break;
        case 'n': if (eval_parse_int(cmd, "n", optarg, 1, INT_MAX, &a->n)) return 2; break;
        case 'o': a->out = optarg; break;
        case 'S': a->sampler = optarg; break;
        case 's': if (eval_parse_int(cmd, "steps", optarg, 1, INT_MAX, &a->steps)) return 2; break;
        case 't': if (eval_parse_int(cmd, "tau", optarg, 2, INT_MAX, &a->tau)) return 2; break;
        case 'e': if (eval_parse_double(cmd, "eta", optarg, 0, 1, &a->eta)) return 2; break;
        case 'T': if (eval_parse_double(cmd, "temperature", optarg, 1e-6, 1e6, &a->temperature)) return 2; break;
        case 'A': if (eval_parse_int(cmd, "top-k", optarg, 0, INT_MAX, &a->top_k)) return 2; break;
        case 'B': if (eval_parse_double(cmd, "top-p", optarg, 1e-9, 1, &a->top_p)) return 2; break;
        case 'm': a->no_mask = true; break;
        case 'K': a->kv_cache = 1; break;
        case 'N': a->kv_cache = 0; break;
        case 'g': a->score = optarg; break;
        case 'k': if (eval_parse_int(cmd, "budget", optarg, 1, INT_MAX, &a->budget)) return 2; break;
        case 'l': a->losses = optarg; break;
        case 'p': a->prompt_ids = optarg; break;
        case 'i': a->infill = optarg; break;
        case 'P': a->prompt = optarg; break;
        case 'M': a->template = optarg; break;
        case 'E': a->eos = optarg; break;
        case 'J': a->json = true; break;
        case 'b': if (eval_parse_int(cmd, "batch", optarg, 1, 4096, &a->batch)) return 2; break;
        case 'x': if (eval_parse_int(cmd, "seed", optarg, 0, LONG_MAX, &a->seed)) return 2; break;
        case 'z': a->tokenizer = optarg; break;
        case 'h':
            if (generate) fputs(GENERATE_USAGE, stdout);
            fputs(SAMPLE_USAGE, stdout);
            return 1;
        case ':': fprintf(stderr, "hdlm-eval %s: option '%s' needs a value\n", cmd, argv[optind - 1]); return 2;
        default: eval_report_bad_option(cmd, argc, argv, optopt); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "hdlm-eval %s: unexpected argument '%s'\n", cmd, argv[optind]);
        return 2;
    }
    if (!a->ckpt || !a->out || a->n == 0) {
        fprintf(stderr, "hdlm-eval %s: --ckpt%s are required (see hdlm-eval %s --help)\n", cmd,
                generate ? "" : ", --n and --out", cmd);
        return 2;
    }
    if (strcmp(a->score, "sedd") != 0 && strcmp(a->score, "parity") != 0) {
        fprintf(stderr, "hdlm-eval %s: --score expects sedd or parity, got '%s'\n", cmd, a->score);
        return 2;
    }
    if (strcmp(a->eos, "keep") != 0 && strcmp(a->eos, "drop") != 0 && strcmp(a->eos, "pad") != 0) {
        fprintf(stderr, "hdlm-eval %s: --eos expects keep, drop or pad, got '%s'\n", cmd, a->eos);
        return 2;
    }
    if (!!a->prompt + !!a->template + !!a->prompt_ids > 1) {
        fprintf(stderr, "hdlm-eval %s: --prompt, --template and --prompt-ids each set the prompt: give one\n", cmd);
        return 2;
    }
    return 0;
}

// Places `len` bytes of text's tokens at positions *pos.. (advanced past them).
static int place_text(const hdlm_tokenizer *tok, const char *flag, const char *text, size_t len, int L,
                      uint32_t *prompt, uint8_t *mask, int *pos) {
    hdlm_tokens t = {0};
    if (hdlm_tokenizer_encode(tok, text, len, &t) != 0) return HDLM_FAIL("%s: %s", flag, hdlm_last_error());
    int fits = *pos + (long)t.len <= L;
    for (size_t k = 0; k < t.len && fits; k++, (*pos)++) prompt[*pos] = t.ids[k], mask[*pos] = 1;
    size_t n = t.len;
    hdlm_tokens_free(&t);
    HDLM_CHECK(fits, "%s: %zu more tokens from position %d do not fit the model's length %d", flag, n, *pos, L);
    return 0;
}

// --template: text pieces tokenized one by one around holes <mask:N> (N generated positions) or <mask> (one).
static int place_template(const hdlm_tokenizer *tok, const char *s, int L, uint32_t *prompt, uint8_t *mask) {
    int pos = 0;
    for (;;) {
        const char *hole = strstr(s, "<mask");
        HDLM_TRY(place_text(tok, "--template", s, hole ? (size_t)(hole - s) : strlen(s), L, prompt, mask, &pos));
        if (!hole) return 0;
        long n = 1;
        const char *end = hole + 5;
        if (*end == ':') {
            char *num;
            errno = 0;
            n = strtol(end + 1, &num, 10);
            HDLM_CHECK(errno == 0 && num != end + 1 && n >= 1 && n <= L, "--template: expected <mask:N> with N in "
                       "[1, %d] at '%.20s'", L, hole);
            end = num;
        }
        HDLM_CHECK(*end == '>', "--template: expected <mask> or <mask:N> at '%.20s'", hole);
        HDLM_CHECK(pos + n <= L, "--template: the hole at '%.20s' ends at position %ld, past the model's length %d",
                   hole, pos + n, L);
        pos += (int)n;
        s = end + 1;
    }
}

// The prompt of --prompt / --template / --prompt-ids and --infill into prompt/prompt_mask of length L.
static int build_prompt(const sample_args *a, const hdlm_tokenizer *tok, int L, int vocab, uint32_t *prompt,
                        uint8_t *mask, bool *any) {
    if ((a->prompt || a->template) && !tok)
        return HDLM_FAIL("%s: text prompts need a model with GPT-2's vocabulary (%d tokens + MASK), this one has %d",
                         a->prompt ? "--prompt" : "--template", HDLM_GPT2_VOCAB, vocab);
    int pos = 0;
    if (a->prompt) HDLM_TRY(place_text(tok, "--prompt", a->prompt, strlen(a->prompt), L, prompt, mask, &pos));
    if (a->template) HDLM_TRY(place_template(tok, a->template, L, prompt, mask));
    const char *lists[2] = {a->prompt_ids, a->infill};
    for (int which = 0; which < 2; which++) {
        const char *s = lists[which];
        const char *flag = which ? "--infill" : "--prompt-ids";
        for (int at = 0; s && *s; at++) {
            char *end;
            errno = 0;
            long p = at, id;
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
            s = *end ? end + 1 : end;
        }
    }
    int fixed = 0;
    for (int i = 0; i < L; i++) fixed += mask[i];
    HDLM_CHECK(fixed < L, "the prompt fixes all %d positions of the model's length: nothing is left to generate", L);
    *any = fixed > 0;
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

// The text of ids[0..n): MASK ids dropped, decoded with special tokens skipped (malloc'ed).
static int sample_text(const hdlm_tokenizer *tok, const uint32_t *ids, int n, int vocab, char **text) {
    uint32_t *real = hdlm_malloc((size_t)(n ? n : 1) * sizeof *real);
    int m = 0;
    for (int i = 0; i < n; i++)
        if (ids[i] != (uint32_t)(vocab - 1)) real[m++] = ids[i];
    size_t len;
    int rc = hdlm_tokenizer_decode(tok, real, (size_t)m, 1, text, &len);
    free(real);
    return rc;
}

// One JSONL record (docs/sample-format.md) of ids[0..n); with a tokenizer also text, entropy and the text prompt.
static int write_sample(FILE *f, const hdlm_tokenizer *tok, uint64_t index, const char *sampler, const sample_args *a,
                        const uint32_t *ids, int n, int vocab) {
    int masks = 0;
    fprintf(f, "{\"index\":%" PRIu64 ",\"sampler\":\"%s\",\"seed\":%ld,\"ids\":[", index, sampler, a->seed);
    for (int i = 0; i < n; i++) {
        fprintf(f, "%s%u", i ? "," : "", ids[i]);
        masks += ids[i] == (uint32_t)(vocab - 1);
    }
    fprintf(f, "],\"mask_count\":%d", masks);
    if (tok) {
        char *text;
        hdlm_tokens re = {0};
        HDLM_TRY(sample_text(tok, ids, n, vocab, &text));
        int rc = hdlm_tokenizer_encode(tok, text, strlen(text), &re);
        if (rc != 0) free(text);
        HDLM_TRY(rc);
        fputs(",\"text\":", f);
        write_json_string(f, text);
        fprintf(f, ",\"entropy\":%.10g", hdlm_unigram_entropy(re.ids, re.len));
        free(text);
        hdlm_tokens_free(&re);
        if (a->prompt || a->template) {
            fputs(",\"prompt\":", f);
            write_json_string(f, a->prompt ? a->prompt : a->template);
        }
    }
    fputs("}\n", f);
    return 0;
}

// hdlm-eval generate without --json: the text of each sample.
static int print_text(FILE *f, const hdlm_tokenizer *tok, long index, long n_samples, const uint32_t *ids, int n,
                      int vocab) {
    char *text;
    HDLM_TRY(sample_text(tok, ids, n, vocab, &text));
    if (n_samples > 1) fprintf(f, "%s=== sample %ld ===\n", index ? "\n" : "", index);
    fprintf(f, "%s\n", text);
    free(text);
    return 0;
}

static int sample_run(int argc, char **argv, bool generate) {
    sample_args a;
    int prc = parse_args(argc, argv, generate, &a);
    if (prc) return prc == 1 ? 0 : prc;
    bool to_stdout = strcmp(a.out, "-") == 0;
    if (to_stdout) hdlm_log_set_stream(stderr);   // standard output carries the samples
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
                               .top_k = (int)a.top_k, .top_p = a.top_p,
                               .stop = strcmp(a.eos, "keep") != 0, .stop_token = HDLM_GPT2_VOCAB - 1};
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
    hdlm_tokenizer *tok = NULL;
    if (V == HDLM_MODEL_VOCAB) HDLM_MUST(hdlm_tokenizer_load_dir(&tok, a.tokenizer));
    if (cfg.stop && !tok)
        HDLM_DIE("--eos %s: end of text is GPT-2's <|endoftext|>; this model's vocabulary has %d tokens, not %d",
                 a.eos, V, HDLM_MODEL_VOCAB);
    if (generate && !a.json && !tok)
        HDLM_DIE("hdlm-eval generate prints text, which needs GPT-2's vocabulary (this model has %d tokens): "
                 "pass --json for the token ids", V);
    uint32_t *prompt = hdlm_calloc((size_t)L, sizeof *prompt);
    uint8_t *pmask = hdlm_calloc((size_t)L, 1);
    bool any_prompt = false;
    HDLM_MUST(build_prompt(&a, tok, L, V, prompt, pmask, &any_prompt));
    if (any_prompt) cfg.prompt = prompt, cfg.prompt_mask = pmask;
    int K = 0, *policy = NULL;
    if (ardm) {
        K = (int)(a.budget ? a.budget : a.steps);
        if (K > L) HDLM_DIE("--budget %d is more than the %d positions", K, L);
        policy = hdlm_malloc((size_t)K * sizeof *policy);
        HDLM_MUST(hdlm_ardm_policy_load(a.losses, L, K, policy));
    } else {
        // The cache gives the same tokens (cached rows have the uncached bits), so it is on wherever it applies.
        cfg.kv_cache = a.kv_cache < 0 ? hdlm_sampler_kv_cache_applies(&cfg) : a.kv_cache;
        HDLM_MUST(hdlm_sampler_check(&cfg, V, L));
    }

    int world = hdlm_world_size(), rank = hdlm_rank();
    uint64_t begin, end;
    hdlm_partition_range((uint64_t)a.n, rank, world, &begin, &end);
    uint32_t *mine = hdlm_malloc(((end - begin) ? (end - begin) : 1) * (size_t)L * sizeof *mine);
    hdlm_denoiser d = hdlm_denoiser_model(m);
    const char *name = ardm ? "ardm" : hdlm_sampler_kind_name(cfg.kind);
    int calls = ardm ? K : hdlm_sampler_calls(&cfg);
    hdlm_log("sample: %s%s, %ld samples of %d tokens, %d network calls per batch of %ld, %d rank(s), %s\n", name,
             cfg.kv_cache ? " with the KV cache" : "", a.n, L, calls, a.batch, world, em.path);
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
        FILE *f = to_stdout ? stdout : fopen(a.out, "w");
        if (!f) HDLM_DIE("--out %s: %s", a.out, strerror(errno));
        for (long i = 0; i < a.n; i++) {
            const uint32_t *ids = all + (size_t)i * L;
            // --eos drop: the record ends at the end-of-text token (pad: the sampler already padded after it)
            int n = strcmp(a.eos, "drop") == 0 ? hdlm_sampler_stop_length(&cfg, ids, L) : L;
            HDLM_MUST(generate && !a.json ? print_text(f, tok, i, a.n, ids, n, V)
                                          : write_sample(f, tok, (uint64_t)i, name, &a, ids, n, V));
        }
        if (to_stdout ? fflush(f) != 0 : fclose(f) != 0) HDLM_DIE("--out %s: %s", a.out, strerror(errno));
        fprintf(to_stdout ? stderr : stdout, "wrote %ld samples to %s (%s, %d calls each, %.2f s, %.3f s per sample)\n",
                a.n, to_stdout ? "standard output" : a.out, name, calls, seconds, seconds * world / (double)a.n);
    }
    hdlm_denoiser_free(&d);
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

int eval_sample_main(int argc, char **argv) { return sample_run(argc, argv, false); }
int eval_generate_main(int argc, char **argv) { return sample_run(argc, argv, true); }

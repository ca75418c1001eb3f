// hdlm-schedule: prints what a hyperschedule does (method §2.9 tables): per step the settled prefix and the level of
// every position, optionally the level → time map and the attention mask of one step (method §3.2).
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hdlm/common.h"
#include "hdlm/schedule.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: hdlm-schedule --type block|simple|hybrid --length L --width W --tau T [options]\n"
            "  --sampling-eps E   eps_s (default 1e-4); active times run from 10*E to 1-10*E\n"
            "  --context C        settled-context attention rule: block_causal (default), causal, full\n"
            "  --block B          rule among active positions: full (default), causal\n"
            "  --times            print the time t of every level\n"
            "  --mask K           print the L x L attention mask of step K\n"
            "  --summary          print only the summary lines (no level table)\n"
            "Table: one row per step k = 1 .. K_max-1; S = settled, W = worthless, digits = level of the position\n"
            "(0 = must be clean at this step, T-1 = noisiest).\n");
}

static int parse_int(const char *arg, const char *flag, int *out) {
    char *end;
    long v = strtol(arg, &end, 10);
    HDLM_CHECK(*arg && !*end && v >= -1000000000 && v <= 1000000000, "%s: expected an integer, got '%s'", flag, arg);
    *out = (int)v;
    return 0;
}

static int parse_double(const char *arg, const char *flag, double *out) {
    char *end;
    *out = strtod(arg, &end);
    HDLM_CHECK(*arg && !*end, "%s: expected a number, got '%s'", flag, arg);
    return 0;
}

static void print_levels(const hdlm_schedule *s, hdlm_step *st) {
    int digits = snprintf(NULL, 0, "%d", s->tau - 1), kdigits = snprintf(NULL, 0, "%d", s->k_max - 1);
    printf("%*s  n_set  levels of positions 0..%d\n", kdigits, "k", s->length - 1);
    for (int k = 1; k < s->k_max; k++) {
        HDLM_MUST(hdlm_schedule_step(s, k, st));
        printf("%*d  %5d ", kdigits, k, st->n_set);
        for (int i = 0; i < s->length; i++) {
            if (st->cls[i] == HDLM_POS_SETTLED) printf(" %*s", digits, "S");
            else if (st->cls[i] == HDLM_POS_WORTHLESS) printf(" %*s", digits, "W");
            else printf(" %*d", digits, st->level[i]);
        }
        printf("\n");
    }
}

// What one training step sees on average (k is drawn uniformly): the share of positions that are active (they carry
// the ε loss), settled (context) and worthless (hidden), and the range of the active window.
static void print_step_statistics(const hdlm_schedule *s, hdlm_step *st) {
    double active = 0, settled = 0, worthless = 0;
    int lo = s->length, hi = 0;
    for (int k = 1; k < s->k_max; k++) {
        HDLM_MUST(hdlm_schedule_step(s, k, st));
        active += st->n_active;
        settled += st->n_set;
        worthless += s->length - st->n_set - st->n_active;
        lo = st->n_active < lo ? st->n_active : lo;
        hi = st->n_active > hi ? st->n_active : hi;
    }
    double steps = s->k_max - 1, L = s->length;
    printf("per step: active %d..%d positions (mean %.1f%% of L), settled mean %.1f%%, worthless mean %.1f%%; "
           "generation walks %d steps\n", lo, hi, 100 * active / steps / L, 100 * settled / steps / L,
           100 * worthless / steps / L, s->k_max - 1);
}

static void print_times(const hdlm_schedule *s) {
    printf("times (float32): settled %.7g, worthless %.7g\n", (double)(float)s->sampling_eps,
           (double)(float)(1 - s->sampling_eps));
    for (int level = 0; level < s->tau; level++) {
        if (s->tau > 12 && level == 3) {
            printf("  ...\n");
            level = s->tau - 4;
            continue;
        }
        printf("  level %*d -> t = %.7g\n", snprintf(NULL, 0, "%d", s->tau - 1), level,
               (double)hdlm_schedule_level_time(s, level));
    }
}

static void print_mask(const hdlm_schedule *s, hdlm_step *st, int k) {
    HDLM_MUST(hdlm_schedule_step(s, k, st));
    int L = s->length;
    uint8_t *allowed = hdlm_malloc((size_t)L * L);
    hdlm_mask_expand(&st->mask, allowed);
    printf("attention mask of step %d (n_set %d, active %d..%d; row = query, 1 = may attend)\n", k, st->n_set,
           st->n_set, st->a_end);
    for (int i = 0; i < L; i++) {
        printf("  row %*d ", snprintf(NULL, 0, "%d", L - 1), i);
        if (hdlm_mask_row_fully_masked(&st->mask, i)) {
            printf(" fully masked (worthless): attends uniformly to all %d keys\n", L);
            continue;
        }
        for (int j = 0; j < L; j++) printf(" %d", allowed[(size_t)i * L + j]);
        printf("\n");
    }
    free(allowed);
}

int main(int argc, char **argv) {
    static const struct option options[] = {
        {"type", required_argument, 0, 't'},    {"length", required_argument, 0, 'L'},
        {"width", required_argument, 0, 'w'},   {"tau", required_argument, 0, 'T'},
        {"sampling-eps", required_argument, 0, 'e'}, {"context", required_argument, 0, 'c'},
        {"block", required_argument, 0, 'b'},   {"times", no_argument, 0, 'x'},
        {"mask", required_argument, 0, 'm'},    {"summary", no_argument, 0, 's'},
        {"help", no_argument, 0, 'h'},          {0, 0, 0, 0},
    };
    hdlm_schedule_type type = HDLM_SCHEDULE_BLOCK;
    hdlm_context_type context = HDLM_CONTEXT_BLOCK_CAUSAL;
    hdlm_block_type block = HDLM_BLOCK_FULL;
    int length = 0, width = 0, tau = 0, mask_step = 0, times = 0, summary = 0, have_mask = 0, given = 0;
    double eps = HDLM_SAMPLING_EPS;
    int opt;
    while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        switch (opt) {
        case 't': HDLM_MUST(hdlm_schedule_type_parse(optarg, "--type", &type)); given |= 1; break;
        case 'L': HDLM_MUST(parse_int(optarg, "--length", &length)); given |= 2; break;
        case 'w': HDLM_MUST(parse_int(optarg, "--width", &width)); given |= 4; break;
        case 'T': HDLM_MUST(parse_int(optarg, "--tau", &tau)); given |= 8; break;
        case 'e': HDLM_MUST(parse_double(optarg, "--sampling-eps", &eps)); break;
        case 'c': HDLM_MUST(hdlm_context_type_parse(optarg, "--context", &context)); break;
        case 'b': HDLM_MUST(hdlm_block_type_parse(optarg, "--block", &block)); break;
        case 'x': times = 1; break;
        case 'm': HDLM_MUST(parse_int(optarg, "--mask", &mask_step)); have_mask = 1; break;
        case 's': summary = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (given != 15 || optind < argc) {
        usage(stderr);
        HDLM_DIE("--type, --length, --width and --tau are required (and no other arguments)");
    }
    hdlm_schedule s;
    HDLM_MUST(hdlm_schedule_init(&s, type, length, width, tau, eps, context, block));
    printf("%s schedule: L=%d width=%d tau=%d  W=%d  K_max=%d (steps 1..%d)  delta=%.10g", hdlm_schedule_type_name(type),
           length, width, tau, s.worthless_level, s.k_max, s.k_max - 1, hdlm_schedule_delta(&s));
    if (type == HDLM_SCHEDULE_SIMPLE) {
        printf("  rate z=%d  M=(", s.rate);
        for (int i = 0; i < width; i++) printf(i ? ",%d" : "%d", s.main_tuple[i]);
        printf(")");
    }
    printf("\n");
    hdlm_step st;
    hdlm_step_alloc(&st, length);
    print_step_statistics(&s, &st);
    if (times) print_times(&s);
    if (!summary) print_levels(&s, &st);
    if (have_mask) print_mask(&s, &st, mask_step);
    hdlm_step_free(&st);
    hdlm_schedule_free(&s);
    return 0;
}

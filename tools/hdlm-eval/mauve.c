// hdlm-eval mauve: MAUVE of two feature files (method §9.3-§9.4, docs/mauve.md).
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "eval.h"
#include "hdlm/common.h"
#include "hdlm/features.h"
#include "hdlm/mauve.h"

static const char *const MAUVE_USAGE =
    "usage: hdlm-eval mauve --p P --q Q [options]\n"
    "MAUVE between P (e.g. human text) and Q (model text) from two feature files (.npy '<f4'/'<f8' (n, d), or the\n"
    "HDF5 export with dataset 'features'), as mauve-text 0.4.0 computes it with faiss 1.7.3.\n"
    "  --p FILE              features of P\n"
    "  --q FILE              features of Q (same width d as P)\n"
    "  --buckets auto|K      k-means clusters (auto: max(2, round(min(n_p, n_q) / 10))) [auto]\n"
    "  --explained-var V     PCA keeps components up to this explained variance, 0 < V < 1 [0.9]\n"
    "  --redo N              k-means restarts, lowest objective kept [5]\n"
    "  --iters N             Lloyd iterations per restart [500]\n"
    "  --seed N              seed (faiss k-means gets seed + 2) [25]\n"
    "  --scaling C           scaling constant c of the divergence curve [5]\n"
    "  --json                also print one machine-readable JSON line\n"
    "  --help                this text\n";

static void print_counts_json(const char *name, const int64_t *counts, int k) {
    printf(",\"%s\":[", name);
    for (int i = 0; i < k; i++) printf("%s%" PRId64, i ? "," : "", counts[i]);
    printf("]");
}

int eval_mauve_main(int argc, char **argv) {
    static const struct option longopts[] = {
        {"p", required_argument, NULL, 'p'},          {"q", required_argument, NULL, 'q'},
        {"buckets", required_argument, NULL, 'k'},    {"explained-var", required_argument, NULL, 'v'},
        {"redo", required_argument, NULL, 'r'},       {"iters", required_argument, NULL, 'i'},
        {"seed", required_argument, NULL, 's'},       {"scaling", required_argument, NULL, 'c'},
        {"json", no_argument, NULL, 'j'},             {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    hdlm_mauve_options opt;
    hdlm_mauve_options_default(&opt);
    const char *p_path = NULL, *q_path = NULL;
    int json = 0;
    long v;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        switch (c) {
        case 'p': p_path = optarg; break;
        case 'q': q_path = optarg; break;
        case 'k':
            if (strcmp(optarg, "auto") == 0) {
                opt.num_buckets = 0;
            } else {
                if (eval_parse_int("mauve", "buckets", optarg, 1, 1L << 30, &v) != 0) return 2;
                opt.num_buckets = (int)v;
            }
            break;
        case 'v':
            if (eval_parse_double("mauve", "explained-var", optarg, 1e-12, 1 - 1e-12, &opt.explained_var) != 0)
                return 2;
            break;
        case 'r':
            if (eval_parse_int("mauve", "redo", optarg, 1, 1000, &v) != 0) return 2;
            opt.kmeans_redo = (int)v;
            break;
        case 'i':
            if (eval_parse_int("mauve", "iters", optarg, 1, 1000000, &v) != 0) return 2;
            opt.kmeans_iters = (int)v;
            break;
        case 's':
            if (eval_parse_int("mauve", "seed", optarg, 0, 2147483645L, &v) != 0) return 2;
            opt.seed = (int)v;
            break;
        case 'c':
            if (eval_parse_double("mauve", "scaling", optarg, 1e-12, 1e12, &opt.scaling) != 0) return 2;
            break;
        case 'j': json = 1; break;
        case 'h': fputs(MAUVE_USAGE, stdout); return 0;
        case ':':
            fprintf(stderr, "hdlm-eval mauve: option '%s' needs a value\n", argv[optind - 1]);
            return 2;
        default: eval_report_bad_option("mauve", argc, argv, optopt); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "hdlm-eval mauve: unexpected argument '%s' (see hdlm-eval mauve --help)\n", argv[optind]);
        return 2;
    }
    if (!p_path || !q_path) {
        fprintf(stderr, "hdlm-eval mauve: both --p and --q are required (see hdlm-eval mauve --help)\n");
        return 2;
    }

    hdlm_feature_matrix p = {0}, q = {0};
    hdlm_mauve_result res = {0};
    int rc = hdlm_features_read(p_path, &p);
    if (rc == 0) rc = hdlm_features_read(q_path, &q);
    if (rc == 0 && p.d != q.d)
        rc = HDLM_FAIL("feature files of different widths: P %s has d = %lld, Q %s has d = %lld", p_path,
                       (long long)p.d, q_path, (long long)q.d);
    double t0 = hdlm_time_now();
    if (rc == 0) rc = hdlm_mauve_compute(p.data, p.n, q.data, q.n, p.d, &opt, &res);
    double seconds = hdlm_time_now() - t0;
    if (rc != 0) {
        fprintf(stderr, "hdlm-eval mauve: error: %s\n", hdlm_last_error());
        hdlm_feature_matrix_free(&p);
        hdlm_feature_matrix_free(&q);
        return 1;
    }
    printf("MAUVE    %.17g\n", res.mauve);
    printf("MAUVE*   %.17g\n", res.mauve_star);
    printf("FI       %.17g\n", res.frontier_integral);
    printf("FI*      %.17g\n", res.frontier_integral_star);
    printf("buckets  %d\n", res.num_buckets);
    printf("pca_dim  %d (explained variance %.6f of %lld dimensions)\n", res.pca_dim, res.explained_var,
           (long long)p.d);
    printf("points   P %lld, Q %lld (%.2f s)\n", (long long)p.n, (long long)q.n, seconds);
    if (json) {
        printf("{\"mauve\":%.17g,\"mauve_star\":%.17g,\"frontier_integral\":%.17g,\"frontier_integral_star\":%.17g,"
               "\"num_buckets\":%d,\"pca_dim\":%d,\"explained_var\":%.17g,\"n_p\":%lld,\"n_q\":%lld,\"d\":%lld",
               res.mauve, res.mauve_star, res.frontier_integral, res.frontier_integral_star, res.num_buckets,
               res.pca_dim, res.explained_var, (long long)p.n, (long long)q.n, (long long)p.d);
        print_counts_json("p_counts", res.p_counts, res.num_buckets);
        print_counts_json("q_counts", res.q_counts, res.num_buckets);
        printf(",\"seconds\":%.3f}\n", seconds);
    }
    hdlm_mauve_result_free(&res);
    hdlm_feature_matrix_free(&p);
    hdlm_feature_matrix_free(&q);
    return 0;
}

// hdlm-eval: the ARDM policy of a budget (method §13 A.5), shared by `sample --sampler ardm` and the policy estimators
// of `perplexity` (A.6).
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval.h"
#include "hdlm/common.h"
#include "hdlm/sampler.h"

static int read_losses(const char *path, int D, double *L) {
    FILE *f;
    HDLM_TRY(hdlm_fopen_regular(path, "--losses", &f));
    int n = 0;
    double v;
    while (n <= D && fscanf(f, "%lf", &v) == 1) {
        if (n < D) L[n] = v;
        n++;
    }
    bool clean_end = feof(f);
    fclose(f);
    HDLM_CHECK(clean_end && n == D, "--losses %s: expected %d numbers (one per step), found %s%d", path, D,
               clean_end ? "" : "a non-number after ", n);
    for (int i = 0; i < D; i++) HDLM_CHECK(L[i] >= 0, "--losses %s: entry %d is negative (%g)", path, i, L[i]);
    return 0;
}

static int compare_desc(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x < y) - (x > y);
}

int eval_ardm_policy(const char *losses_path, int L, int K, int *policy) {
    HDLM_CHECK(K >= 1 && K <= L, "--budget %d must be in [1, %d] (the positions)", K, L);
    if (!losses_path) {
        hdlm_ardm_policy_naive(L, K, policy);
        return 0;
    }
    double *losses = hdlm_malloc((size_t)L * sizeof *losses);
    if (read_losses(losses_path, L, losses) != 0) {
        free(losses);
        return -1;
    }
    qsort(losses, (size_t)L, sizeof *losses, compare_desc);
    double cost = hdlm_ardm_policy_dp(losses, L, K, true, policy), full = 0;
    for (int i = 0; i < L; i++) full += losses[i];
    hdlm_log("ardm policy: budget %d, DP cost %.6g per token (full chain of %d calls %.6g)\n", K, cost / L, L,
             full / L);
    free(losses);
    return 0;
}

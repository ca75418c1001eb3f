// ARDM budgeted parallel generation (method §13 A.5): the policy dynamic programme, policy costs, the naive policy and
// sampling with a policy.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hdlm/common.h"
#include "hdlm/sampler.h"
#include "sampler_internal.h"

// C[k][v] = min_u C[k-1][u] + (v-u)·L_u with two rolling cost rows and K×(D+1) back-pointers (method §13 A.5.3).
// Reference mode scans u = 0..v (the smallest argmin wins; u > v never improves for L >= 0); strict mode u = k-1..v-1.
double hdlm_ardm_policy_dp(const double *L, int D, int K, bool strict, int *policy) {
    HDLM_ASSERT(D >= 1 && K >= 1 && K <= D, "policy DP: budget %d for %d steps", K, D);
    double *prev = hdlm_malloc((size_t)(D + 1) * sizeof *prev), *cur = hdlm_malloc((size_t)(D + 1) * sizeof *cur);
    int *back = hdlm_malloc((size_t)K * (D + 1) * sizeof *back);
    for (int v = 0; v <= D; v++) prev[v] = v == 0 ? 0.0 : INFINITY;
    for (int k = 1; k <= K; k++) {
        int *bk = back + (size_t)(k - 1) * (D + 1);
        for (int v = 0; v <= D; v++) {
            int lo = strict ? k - 1 : 0, hi = strict ? v - 1 : v;
            double best = INFINITY;
            int arg = lo <= hi ? lo : 0;
            for (int u = lo; u <= hi; u++) {
                double c = prev[u] + (u < v ? (double)(v - u) * L[u] : 0.0);
                if (c < best) {
                    best = c;
                    arg = u;
                }
            }
            cur[v] = best;
            bk[v] = arg;
        }
        double *swap = prev;
        prev = cur;
        cur = swap;
    }
    double cost = prev[D];
    int v = D;
    for (int k = K; k >= 1; k--) {
        v = back[(size_t)(k - 1) * (D + 1) + v];
        policy[k - 1] = v;
    }
    free(back);
    free(cur);
    free(prev);
    return cost;
}

double hdlm_ardm_policy_cost(const double *L, int D, const int *policy, int K) {
    double cost = 0;
    for (int j = 0; j < K; j++) {
        int next = j + 1 < K ? policy[j + 1] : D;
        cost += (double)(next - policy[j]) * L[policy[j]];
    }
    return cost;
}

void hdlm_ardm_policy_naive(int D, int K, int *policy) {
    for (int j = 0; j < K; j++) {
        long q = (long)j * D / K, r = (long)j * D % K;
        long p = 2 * r < K ? q : 2 * r > K ? q + 1 : (q % 2 == 0 ? q : q + 1);   // round half to even
        policy[j] = (int)p;
    }
}

int hdlm_ardm_sample(const hdlm_sampler_config *cfg, const int *policy, int K, hdlm_denoiser *d, int batch, int length,
                     uint64_t first_sample, uint32_t *x) {
    int V = d->vocab;
    HDLM_CHECK(batch >= 1 && length >= 1, "ARDM sampler: batch %d and length %d must be positive", batch, length);
    HDLM_CHECK(K >= 1 && K <= length, "ARDM sampler: budget %d must be in [1, %d]", K, length);
    HDLM_CHECK(cfg->temperature > 0, "ARDM sampler: temperature must be > 0, got %g", cfg->temperature);
    HDLM_CHECK(cfg->top_k >= 0 && cfg->top_p >= 0 && cfg->top_p <= 1,
               "ARDM sampler: top-k %d must be >= 0 and top-p %g in [0, 1]", cfg->top_k, cfg->top_p);
    HDLM_CHECK(!cfg->stop || cfg->stop_token < (uint32_t)(V - 1), "ARDM sampler: stop token %u is not a real token",
               cfg->stop_token);
    HDLM_CHECK(policy[0] == 0, "ARDM sampler: a policy starts at step 0, got %d", policy[0]);
    for (int j = 1; j < K; j++)
        HDLM_CHECK(policy[j] >= policy[j - 1] && policy[j] < length,
                   "ARDM sampler: policy entry %d (%d) must be non-decreasing and < %d", j, policy[j], length);
    if (cfg->prompt)
        for (int i = 0; i < length; i++)
            HDLM_CHECK(!cfg->prompt_mask[i] || cfg->prompt[i] < (uint32_t)(V - 1),
                       "ARDM sampler: prompt id %u at position %d is not a real token", cfg->prompt[i], i);
    // rank[b*L + i]: the position's place in the generation order; prompt positions take the first places.
    int *rank = hdlm_malloc((size_t)batch * length * sizeof *rank);
    uint32_t *order = hdlm_malloc((size_t)length * sizeof *order);
    int known = 0;
    for (int i = 0; i < length; i++) known += cfg->prompt && cfg->prompt_mask[i];
    for (int b = 0; b < batch; b++) {
        hdlm_rng rng;
        hdlm_sampler_rng(&rng, cfg, first_sample + (uint64_t)b, 0);
        int n_free = 0, n_known = 0;
        for (int i = 0; i < length; i++) {
            if (cfg->prompt && cfg->prompt_mask[i]) rank[(size_t)b * length + i] = n_known++;
            else order[n_free++] = (uint32_t)i;
        }
        hdlm_rng_shuffle_u32(&rng, order, (uint64_t)n_free);
        for (int r = 0; r < n_free; r++) rank[(size_t)b * length + order[r]] = known + r;
        for (int i = 0; i < length; i++) x[(size_t)b * length + i] = (uint32_t)(V - 1);
        hdlm_sampler_impose_prompt(cfg, length, x + (size_t)b * length);
    }
    float *scratch = hdlm_malloc(2 * (size_t)V * sizeof *scratch);
    uint8_t *read = hdlm_malloc((size_t)batch * length);
    int status = 0;
    for (int j = 0; j < K && status == 0; j++) {
        int lo = policy[j] > known ? policy[j] : known, hi = j + 1 < K ? policy[j + 1] : length;
        if (hi <= lo) continue;   // nothing to reveal (an empty segment, or prompt positions only)
        for (size_t r = 0; r < (size_t)batch * length; r++) read[r] = rank[r] >= lo && rank[r] < hi;
        const float *z;
        status = hdlm_denoiser_forward_rows(d, read, x, NULL, NULL, batch, length, &z);   // the segment's rows
        if (status) break;
        for (int b = 0; b < batch; b++) {
            hdlm_rng rng;
            hdlm_sampler_rng(&rng, cfg, first_sample + (uint64_t)b, j + 1);
            for (int i = 0; i < length; i++) {
                int r = rank[(size_t)b * length + i];
                if (r >= lo && r < hi)
                    x[(size_t)b * length + i] = hdlm_sampler_draw(cfg, z + ((size_t)b * length + i) * V, V - 1, scratch,
                                                                  &rng);
            }
        }
    }
    if (status == 0) hdlm_sampler_pad_after_stop(cfg, batch, length, x);
    free(read);
    free(scratch);
    free(order);
    free(rank);
    return status;
}

// ---- the policy of a budget, from a losses file or naive (hdlm-eval sample/perplexity, hdlm-compress) ----

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

int hdlm_ardm_policy_load(const char *losses_path, int L, int K, int *policy) {
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

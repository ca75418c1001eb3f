// Monte-Carlo likelihood bounds: the reference's masking NELBO (method §9.1) and the stochastic ARDM bound
// (method §13 A.6), per chunk and over a data set split across MPI ranks.
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <mpi.h>
#include <string.h>

#include "hdlm/common.h"
#include "hdlm/diffusion.h"
#include "hdlm/likelihood.h"
#include "hdlm/rng.h"

hdlm_nelbo_config hdlm_nelbo_config_default(bool gamma_family) {
    hdlm_nelbo_config c = {HDLM_NELBO_MASKING, 16, 100 / 16, 1e-3, gamma_family, 1e-3, 0, 0, NULL, 0, NULL, NULL};
    return c;
}

const char *hdlm_nelbo_kind_name(hdlm_nelbo_kind kind) {
    static const char *const names[] = {"masking", "ardm", "ardm-policy", "ardm-order", "ar", "block"};
    return (unsigned)kind <= HDLM_NELBO_BLOCK ? names[kind] : "?";
}

int hdlm_nelbo_config_check(const hdlm_nelbo_config *cfg) {
    HDLM_CHECK((unsigned)cfg->kind <= HDLM_NELBO_BLOCK, "likelihood: unknown estimator %d", (int)cfg->kind);
    if (cfg->kind == HDLM_NELBO_BLOCK) {
        HDLM_CHECK(cfg->schedule && !cfg->sigma_input,
                   "likelihood: the block estimator needs the ε model's block schedule (no σ input)");
        HDLM_TRY(hdlm_schedule_two_copy_check(cfg->schedule));
    }
    if (cfg->kind == HDLM_NELBO_ARDM_POLICY || cfg->kind == HDLM_NELBO_ARDM_ORDER) {
        HDLM_CHECK(cfg->policy && cfg->budget >= 1, "likelihood: the %s estimator needs a policy (budget >= 1)",
                   hdlm_nelbo_kind_name(cfg->kind));
        HDLM_CHECK(cfg->policy[0] == 0, "likelihood: a policy starts at step 0, got %d", cfg->policy[0]);
        for (int j = 1; j < cfg->budget; j++)
            HDLM_CHECK(cfg->policy[j] >= cfg->policy[j - 1], "likelihood: policy entry %d (%d) is below entry %d (%d)",
                       j, cfg->policy[j], j - 1, cfg->policy[j - 1]);
    }
    HDLM_CHECK(cfg->copies >= 1 && cfg->copies <= 4096, "likelihood: --copies must be in [1, 4096], got %d",
               cfg->copies);
    HDLM_CHECK(cfg->rounds >= 1, "likelihood: --rounds must be >= 1, got %d", cfg->rounds);
    HDLM_CHECK(cfg->floor > 0 && cfg->floor < 1, "likelihood: --floor must be in (0, 1), got %g", cfg->floor);
    HDLM_CHECK(!cfg->sigma_input || (cfg->sigma >= 0 && isfinite(cfg->sigma)),
               "likelihood: sigma must be finite and >= 0, got %g", cfg->sigma);
    return 0;
}

// Runs the network on the C copies in `xt` (rows `read` read): returns the outputs (σ filled when the model takes it).
static int nelbo_forward(hdlm_denoiser *d, const hdlm_nelbo_config *cfg, const uint32_t *xt, const uint8_t *read,
                         int copies, int length, const float **z) {
    float *sigma = NULL;
    if (cfg->sigma_input) {
        sigma = hdlm_malloc((size_t)copies * length * sizeof *sigma);
        for (size_t r = 0; r < (size_t)copies * length; r++) sigma[r] = (float)cfg->sigma;
    }
    int status = hdlm_denoiser_forward_rows(d, read, xt, sigma, NULL, copies, length, z);
    free(sigma);
    return status;
}

// CE of rows rows[j] of z (softmax over the first `width` of their V entries) against targets[j], j < n, on all
// threads: each row is the same hdlm_ce_row call as one at a time, so sums taken over the result in the callers'
// order keep their bits. The caller frees the result.
static double *rows_ce(const float *z, int V, int width, const size_t *rows, const uint32_t *targets, size_t n) {
    double *ce = hdlm_malloc((n + 1) * sizeof *ce);
#pragma omp parallel for schedule(dynamic, 16)
    for (size_t j = 0; j < n; j++) ce[j] = hdlm_ce_row(z + rows[j] * V, V, width, targets[j], 0, NULL);
    return ce;
}

// sums[b] = Σ over the masked positions of copy b (masked[b·L + i]) of CE(z, x_i), softmax over `width` entries.
static void masked_ce_sums(const float *z, const uint8_t *masked, const uint32_t *x, int copies, int length, int V,
                           int width, double *sums) {
    size_t n = 0, *rows = hdlm_malloc(((size_t)copies * length + 1) * sizeof *rows);
    uint32_t *targets = hdlm_malloc(((size_t)copies * length + 1) * sizeof *targets);
    for (size_t r = 0; r < (size_t)copies * length; r++)
        if (masked[r]) rows[n] = r, targets[n++] = x[r % (size_t)length];
    double *ce = rows_ce(z, V, width, rows, targets, n);
    for (int b = 0, j = 0; b < copies; b++) {
        sums[b] = 0;
        for (int i = 0; i < length; i++)
            if (masked[(size_t)b * length + i]) sums[b] += ce[j++];
    }
    free(ce), free(rows), free(targets);
}

int hdlm_nelbo_masking_round(hdlm_denoiser *d, const hdlm_nelbo_config *cfg, const uint32_t *x, int length,
                             const uint8_t *masked, const double *p, double *value) {
    int C = cfg->copies, V = d->vocab;
    uint32_t *xt = hdlm_malloc((size_t)C * length * sizeof *xt);
    for (int b = 0; b < C; b++)
        for (int i = 0; i < length; i++)
            xt[(size_t)b * length + i] = masked[(size_t)b * length + i] ? (uint32_t)(V - 1) : x[i];
    const float *z;
    int status = nelbo_forward(d, cfg, xt, masked, C, length, &z);
    if (status == 0) {
        double *sums = hdlm_malloc((size_t)C * sizeof *sums), total = 0;
        masked_ce_sums(z, masked, x, C, length, V, V, sums);
        for (int b = 0; b < C; b++) total += sums[b] / p[b];
        *value = total / C;
        free(sums);
    }
    free(xt);
    return status;
}

// The masking probability of copy b of C at stratified time t_b = (u0 + b/C) mod 1 (method §9.1).
static double stratified_p(const hdlm_nelbo_config *cfg, double u0, int b) {
    return (1 - cfg->floor) * fmod(u0 + (double)b / cfg->copies, 1.0) + cfg->floor;
}

// One block round: copy b's block k at time t = (u_k + b/C) mod 1 (stratified over the copies, u_k per block),
// masking probability p = (1 - floor)·t + floor; the copies' noisy halves in one forward of the two-copy layout, the
// estimate (1/C)·Σ_b Σ_k Σ_{i in block k masked} CE_i / p_{b,k} (CE over all V entries, as the masking round).
// *any: whether anything was masked.
static int block_round(hdlm_denoiser *d, const hdlm_nelbo_config *cfg, const uint32_t *x, int length, hdlm_rng *rng,
                       double *value, bool *any) {
    const hdlm_schedule *s = cfg->schedule;
    HDLM_CHECK(s->length == length, "likelihood: block schedule of length %d for chunks of %d", s->length, length);
    int C = cfg->copies, V = d->vocab, w = s->width, nb = length / w, L2 = 2 * length;
    uint32_t *xt = hdlm_malloc((size_t)C * L2 * sizeof *xt);
    double *p = hdlm_malloc((size_t)C * nb * sizeof *p);
    *any = false;
    for (int k = 0; k < nb; k++) {
        double u0 = hdlm_rng_uniform_double(rng);
        for (int b = 0; b < C; b++) p[(size_t)b * nb + k] = stratified_p(cfg, u0, b);
    }
    for (int b = 0; b < C; b++) {
        uint32_t *row = xt + (size_t)b * L2;
        memcpy(row, x, (size_t)length * sizeof *row);
        for (int i = 0; i < length; i++) {
            bool m = hdlm_rng_uniform_double(rng) < p[(size_t)b * nb + i / w];
            row[length + i] = m ? (uint32_t)(V - 1) : x[i];
            *any |= m;
        }
    }
    int status = 0;
    if (*any) {
        hdlm_attn_mask mask = hdlm_mask_two_copy(length, w, s->context, s->block);
        uint8_t *read = hdlm_malloc((size_t)C * L2);
        for (size_t r = 0; r < (size_t)C * L2; r++) read[r] = xt[r] == (uint32_t)(V - 1);   // the noisy copy's MASKs
        const float *z;
        status = hdlm_denoiser_forward_rows(d, read, xt, NULL, &mask, C, L2, &z);
        free(read);
        if (status == 0) {
            size_t n = 0, *rows = hdlm_malloc(((size_t)C * length + 1) * sizeof *rows);
            uint32_t *targets = hdlm_malloc(((size_t)C * length + 1) * sizeof *targets);
            for (int b = 0; b < C; b++)
                for (int i = 0; i < length; i++)
                    if (xt[(size_t)b * L2 + length + i] == (uint32_t)(V - 1))
                        rows[n] = (size_t)b * L2 + length + i, targets[n++] = x[i];
            double *ce = rows_ce(z, V, V, rows, targets, n), total = 0;
            for (int b = 0, j = 0; b < C; b++)
                for (int i = 0; i < length; i++)
                    if (xt[(size_t)b * L2 + length + i] == (uint32_t)(V - 1))
                        total += ce[j++] / p[(size_t)b * nb + i / w];
            *value = total / C;
            free(ce), free(rows), free(targets);
        }
    }
    free(p);
    free(xt);
    return status;
}

// One ARDM round (A.6 mode 1): copy b gets step s_b = ⌊L·((u0 + b/C) mod 1)⌋ (stratified), a uniformly random subset
// of m_b = L - s_b positions masked, estimate (L/m_b)·Σ_masked CE over the N real tokens; returns the mean over copies.
static int ardm_round(hdlm_denoiser *d, const hdlm_nelbo_config *cfg, const uint32_t *x, int length, hdlm_rng *rng,
                      double *value) {
    int C = cfg->copies, V = d->vocab;
    uint32_t *xt = hdlm_malloc((size_t)C * length * sizeof *xt);
    uint8_t *masked = hdlm_calloc((size_t)C * length, 1);
    uint32_t *order = hdlm_malloc((size_t)length * sizeof *order);
    int *m = hdlm_malloc((size_t)C * sizeof *m);
    double u0 = hdlm_rng_uniform_double(rng);
    for (int b = 0; b < C; b++) {
        double frac = fmod(u0 + (double)b / C, 1.0);
        int s = (int)(frac * length);
        if (s >= length) s = length - 1;
        m[b] = length - s;
        for (int i = 0; i < length; i++) order[i] = (uint32_t)i;
        hdlm_rng_shuffle_u32(rng, order, (uint64_t)length);
        for (int r = 0; r < m[b]; r++) masked[(size_t)b * length + order[r]] = 1;
        for (int i = 0; i < length; i++)
            xt[(size_t)b * length + i] = masked[(size_t)b * length + i] ? (uint32_t)(V - 1) : x[i];
    }
    const float *z;
    int status = nelbo_forward(d, cfg, xt, masked, C, length, &z);
    if (status == 0) {
        double *sums = hdlm_malloc((size_t)C * sizeof *sums), total = 0;
        masked_ce_sums(z, masked, x, C, length, V, V - 1, sums);
        for (int b = 0; b < C; b++) total += sums[b] * length / m[b];
        *value = total / C;
        free(sums);
    }
    free(m);
    free(order);
    free(masked);
    free(xt);
    return status;
}

int hdlm_ardm_policy_nll(hdlm_denoiser *d, const uint32_t *x, int length, int copies, const int *rank,
                         const int *policy, int budget, double *policy_nll, double *order_nll) {
    HDLM_CHECK(policy[budget - 1] < length, "likelihood: policy entry %d (%d) is not below the length %d", budget - 1,
               policy[budget - 1], length);
    int V = d->vocab, C = copies;
    uint32_t *xt = hdlm_malloc((size_t)C * length * sizeof *xt);
    uint32_t *targets = hdlm_malloc(((size_t)C * length + 1) * sizeof *targets);
    size_t *rows = hdlm_malloc(((size_t)C * length + 1) * sizeof *rows);
    uint8_t *read = hdlm_malloc((size_t)C * length);
    for (int b = 0; b < C; b++) policy_nll[b] = order_nll[b] = 0;
    int status = 0;
    for (int j = 0; j < budget && status == 0; j++) {
        int lo = policy[j], hi = j + 1 < budget ? policy[j + 1] : length;
        if (hi <= lo) continue;   // an empty segment (reference-mode policies): no call, no cost
        for (int b = 0; b < C; b++)
            for (int i = 0; i < length; i++)
                xt[(size_t)b * length + i] = rank[(size_t)b * length + i] < lo ? x[i] : (uint32_t)(V - 1);
        for (size_t r = 0; r < (size_t)C * length; r++) read[r] = rank[r] >= lo;
        const float *z;
        status = hdlm_denoiser_forward_rows(d, read, xt, NULL, NULL, C, length, &z);
        if (status) break;
        size_t n = 0;
        for (size_t r = 0; r < (size_t)C * length; r++)
            if (rank[r] >= lo) rows[n] = r, targets[n++] = x[r % (size_t)length];
        double *ce = rows_ce(z, V, V - 1, rows, targets, n);
        for (int b = 0, k = 0; b < C; b++) {
            double masked = 0, revealed = 0;
            for (int i = 0; i < length; i++) {
                int r = rank[(size_t)b * length + i];
                if (r < lo) continue;
                masked += ce[k];
                if (r < hi) revealed += ce[k];
                k++;
            }
            policy_nll[b] += (double)(hi - lo) / (length - lo) * masked;
            order_nll[b] += revealed;
        }
        free(ce);
    }
    free(read);
    free(rows);
    free(targets);
    free(xt);
    return status;
}

// One policy round (A.6 modes 3-4): C fresh uniform orders, the K calls; the mean over copies of the chosen estimate.
static int ardm_policy_round(hdlm_denoiser *d, const hdlm_nelbo_config *cfg, const uint32_t *x, int length,
                             hdlm_rng *rng, double *value) {
    int C = cfg->copies;
    int *rank = hdlm_malloc((size_t)C * length * sizeof *rank);
    uint32_t *order = hdlm_malloc((size_t)length * sizeof *order);
    double *pol = hdlm_malloc((size_t)C * sizeof *pol), *ord = hdlm_malloc((size_t)C * sizeof *ord);
    for (int b = 0; b < C; b++) {
        for (int i = 0; i < length; i++) order[i] = cfg->order ? (uint32_t)cfg->order[i] : (uint32_t)i;
        if (!cfg->order) hdlm_rng_shuffle_u32(rng, order, (uint64_t)length);
        for (int r = 0; r < length; r++) rank[(size_t)b * length + order[r]] = r;
    }
    int status = hdlm_ardm_policy_nll(d, x, length, C, rank, cfg->policy, cfg->budget, pol, ord);
    if (status == 0) {
        double total = 0;
        for (int b = 0; b < C; b++) total += cfg->kind == HDLM_NELBO_ARDM_POLICY ? pol[b] : ord[b];
        *value = total / C;
    }
    free(ord);
    free(pol);
    free(order);
    free(rank);
    return status;
}

// The exact -log p(x) of a next-token model: one causal forward, Σ_i CE(z_i, x_i) over the N real tokens (nats).
static int ar_nll(hdlm_denoiser *d, const uint32_t *x, int length, double *value) {
    hdlm_corruption c;
    hdlm_corruption_alloc(&c, 1, length);
    hdlm_ar_inputs(x, hdlm_ar_start(d->vocab), &c);
    hdlm_attn_mask causal = hdlm_mask_causal(length);
    const float *out;
    int status = d->forward(d, c.xt, NULL, &causal, 1, length, &out);
    if (status == 0) *value = hdlm_corruption_loss(&c, x, out, d->vocab, d->vocab - 1, NULL) * c.norm;
    hdlm_corruption_free(&c);
    return status;
}

int hdlm_nelbo_chunk(hdlm_denoiser *d, const hdlm_nelbo_config *cfg, const uint32_t *x, int length, uint64_t chunk,
                     double *nll, double *var, int *counted) {
    HDLM_TRY(hdlm_nelbo_config_check(cfg));
    for (int i = 0; i < length; i++)
        HDLM_CHECK(x[i] < (uint32_t)(d->vocab - 1), "likelihood: chunk %llu position %d holds id %u, not a real token "
                   "of the model (< %d)", (unsigned long long)chunk, i, x[i], d->vocab - 1);
    if (cfg->kind == HDLM_NLL_AR) {   // exact: one forward, nothing to average
        HDLM_TRY(ar_nll(d, x, length, nll));
        *var = 0;
        *counted = 1;
        return 0;
    }
    int C = cfg->copies;
    uint8_t *masked = hdlm_malloc((size_t)C * length);
    double *p = hdlm_malloc((size_t)C * sizeof *p);
    double sum = 0, sum_sq = 0;
    int n = 0, status = 0;
    for (int r = 0; r < cfg->rounds && status == 0; r++) {
        hdlm_rng rng;
        hdlm_rng_init(&rng, hdlm_rng_key(cfg->seed, chunk, (uint64_t)r, HDLM_RNG_EVAL));
        double value = 0;
        if (cfg->kind == HDLM_NELBO_ARDM) {
            status = ardm_round(d, cfg, x, length, &rng, &value);
        } else if (cfg->kind == HDLM_NELBO_BLOCK) {
            bool any = false;
            status = block_round(d, cfg, x, length, &rng, &value, &any);
            if (!any) continue;   // as the masking rounds: nothing masked, nothing measured
        } else if (cfg->kind != HDLM_NELBO_MASKING) {
            status = ardm_policy_round(d, cfg, x, length, &rng, &value);
        } else {
            // Stratified times t_b = (u0 + b/C) mod 1, p_b = (1 - floor)·t_b + floor (method §9.1).
            double u0 = hdlm_rng_uniform_double(&rng);
            bool any = false;
            for (int b = 0; b < C; b++) {
                p[b] = stratified_p(cfg, u0, b);
                for (int i = 0; i < length; i++) {
                    masked[(size_t)b * length + i] = hdlm_rng_uniform_double(&rng) < p[b];
                    any |= masked[(size_t)b * length + i];
                }
            }
            if (!any) continue;   // the reference skips a round with nothing masked
            status = hdlm_nelbo_masking_round(d, cfg, x, length, masked, p, &value);
        }
        sum += value;
        sum_sq += value * value;
        n++;
    }
    free(p);
    free(masked);
    HDLM_TRY(status);
    HDLM_CHECK(n > 0, "likelihood: chunk %llu had no masked position in %d rounds (raise --rounds)",
               (unsigned long long)chunk, cfg->rounds);
    *nll = sum / n;
    *var = n > 1 ? fmax(0.0, (sum_sq - sum * sum / n) / (n - 1)) / n : 0.0;
    *counted = n;
    return 0;
}

int hdlm_nelbo_dataset(hdlm_denoiser *d, const hdlm_nelbo_config *cfg, const hdlm_dataset *data,
                       hdlm_nelbo_result *result, hdlm_sampler_progress progress, void *progress_ctx) {
    HDLM_TRY(hdlm_nelbo_config_check(cfg));
    uint64_t n = hdlm_dataset_chunk_count(data);
    if (cfg->max_chunks > 0 && cfg->max_chunks < n) n = cfg->max_chunks;
    int L = (int)data->chunk_len;
    HDLM_CHECK(n > 0, "likelihood: the data set has no chunk of %d tokens", L);
    int world = hdlm_world_size(), rank = hdlm_rank();
    uint64_t begin, end;
    hdlm_partition_range(n, rank, world, &begin, &end);
    // Per-chunk values in one array per quantity, zero outside this rank's range: the all-reduce then adds each value
    // to zeros only, and the final sums run in chunk order, so the result is the same for any number of ranks.
    double *vals = hdlm_calloc(2 * n, sizeof *vals);
    uint32_t *x = hdlm_malloc((size_t)L * sizeof *x);
    int status = 0, fewest = INT_MAX;   // the fewest rounds counted in a chunk: one gives no variance estimate
    for (uint64_t c = begin; c < end && status == 0; c++) {
        hdlm_dataset_chunk_copy(data, c, x);
        int counted;
        status = hdlm_nelbo_chunk(d, cfg, x, L, c, &vals[c], &vals[n + c], &counted);
        if (counted < fewest) fewest = counted;
        if (progress && status == 0) progress(progress_ctx, (int)(c - begin + 1), (int)(end - begin));
    }
    free(x);
    if (world > 1) {
        // Every rank must reach the collective; a failure on any rank fails all of them.
        int bad = status != 0, any_bad = 0;
        MPI_Allreduce(&bad, &any_bad, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        if (any_bad) {
            free(vals);
            if (status) return -1;
            return HDLM_FAIL("likelihood: another rank failed (see its message)");
        }
        MPI_Allreduce(MPI_IN_PLACE, vals, (int)(2 * n), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
        MPI_Allreduce(MPI_IN_PLACE, &fewest, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    } else if (status) {
        free(vals);
        return -1;
    }
    double nll = 0, var = 0;
    for (uint64_t c = 0; c < n; c++) {
        nll += vals[c];
        var += vals[n + c];
    }
    free(vals);
    result->chunks = n;
    result->tokens = n * (uint64_t)(cfg->kind == HDLM_NELBO_MASKING ? L - 1 : L);
    HDLM_CHECK(result->tokens > 0, "likelihood: chunks of one token have no token to count (L - 1 = 0)");
    result->nll = nll;
    result->bound = nll / (double)result->tokens;
    // An exact estimator has no error; a Monte-Carlo one with a single counted round in some chunk has no estimate.
    result->std_error = cfg->kind != HDLM_NLL_AR && fewest < 2 ? NAN : sqrt(var) / (double)result->tokens;
    result->perplexity = exp(result->bound);
    return 0;
}

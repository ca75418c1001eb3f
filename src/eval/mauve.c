// MAUVE from features (method §9.4; docs/mauve.md): histograms of k-means labels, divergence curve, the area
// under it, and the frontier integral. Sums and sorts follow numpy's order (pairwise summation, the introsort of
// np.argsort) so that the score matches mauve-text 0.4.0 to the last bits, ties on the curve included.
//
// No contraction into FMAs here either: numpy evaluates w p + (1 - w) q and the trapezoids with separate roundings.
#pragma GCC optimize("fp-contract=off")

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hdlm/common.h"
#include "hdlm/mauve.h"

enum { CURVE_WEIGHTS = 25 };   // divergence_curve_discretization_size

void hdlm_mauve_options_default(hdlm_mauve_options *opt) {
    *opt = (hdlm_mauve_options){
        .num_buckets = 0, .explained_var = 0.9, .kmeans_redo = 5, .kmeans_iters = 500, .seed = 25, .scaling = 5};
}

int hdlm_mauve_auto_buckets(int64_t n_p, int64_t n_q) {
    int64_t n = n_p < n_q ? n_p : n_q;
    double k = rint((double)n / 10);   // Python round(): ties to even (the default rounding mode)
    return k < 2 ? 2 : (int)k;
}

// numpy's pairwise summation of a contiguous float64 array (np.sum, add.reduce).
static double numpy_sum(const double *a, int64_t n) {
    if (n < 8) {
        double res = 0;
        for (int64_t i = 0; i < n; i++) res += a[i];
        return res;
    }
    if (n <= 128) {
        double r[8];
        memcpy(r, a, sizeof(r));
        int64_t i = 8;
        for (; i < n - n % 8; i += 8)
            for (int j = 0; j < 8; j++) r[j] += a[i + j];
        double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) res += a[i];
        return res;
    }
    int64_t half = n / 2;
    half -= half % 8;
    return numpy_sum(a, half) + numpy_sum(a + half, n - half);
}

// np.argsort(v) (default kind 'quicksort' = median-of-3 quicksort, insertion sort below 17 elements). Only the order
// of equal keys depends on this, but that order changes the trapezoids when the curve has repeated abscissae.
static void numpy_argsort(const double *v, int *idx, int n) {
    for (int i = 0; i < n; i++) idx[i] = i;
    int stack[2 * 64], sp = 0;
    int lo = 0, hi = n - 1;
#define SWAP_IDX(a, b) do { int t_ = idx[a]; idx[a] = idx[b]; idx[b] = t_; } while (0)
    for (;;) {
        while (hi - lo > 16) {
            int mid = lo + ((hi - lo) >> 1);
            if (v[idx[mid]] < v[idx[lo]]) SWAP_IDX(mid, lo);
            if (v[idx[hi]] < v[idx[mid]]) SWAP_IDX(hi, mid);
            if (v[idx[mid]] < v[idx[lo]]) SWAP_IDX(mid, lo);
            double pivot = v[idx[mid]];
            int i = lo, j = hi - 1;
            SWAP_IDX(mid, j);
            for (;;) {
                do ++i; while (v[idx[i]] < pivot);
                do --j; while (pivot < v[idx[j]]);
                if (i >= j) break;
                SWAP_IDX(i, j);
            }
            SWAP_IDX(i, hi - 1);
            // the larger part waits on the stack
            if (i - lo < hi - i) {
                stack[sp++] = i + 1, stack[sp++] = hi;
                hi = i - 1;
            } else {
                stack[sp++] = lo, stack[sp++] = i - 1;
                lo = i + 1;
            }
            HDLM_ASSERT(sp <= (int)(sizeof(stack) / sizeof(stack[0])), "argsort stack overflow");
        }
        for (int i = lo + 1; i <= hi; i++) {
            int vi = idx[i];
            double key = v[vi];
            int j = i;
            while (j > lo && key < v[idx[j - 1]]) {
                idx[j] = idx[j - 1];
                j--;
            }
            idx[j] = vi;
        }
        if (sp == 0) break;
        hi = stack[--sp];
        lo = stack[--sp];
    }
#undef SWAP_IDX
}

// KL(a || b) over the buckets where both are positive; +inf when a has mass where b has none.
static double kl_divergence(const double *a, const double *b, int k, double *terms) {
    int m = 0;
    for (int i = 0; i < k; i++) {
        if (a[i] != 0 && b[i] == 0) return INFINITY;
        if (a[i] != 0 && b[i] != 0) terms[m++] = a[i] * log(a[i] / b[i]);
    }
    return numpy_sum(terms, m);
}

// sklearn.metrics.auc on abscissae sorted ascending: the trapezoid rule as np.trapz computes it.
static double trapezoid_area(const double *x, const double *y, const int *order, int n, double *terms) {
    for (int i = 0; i + 1 < n; i++) {
        double dx = x[order[i + 1]] - x[order[i]];
        terms[i] = dx * (y[order[i + 1]] + y[order[i]]) / 2.0;
    }
    return numpy_sum(terms, n - 1);
}

double hdlm_mauve_from_histograms(const double *p, const double *q, int k, double scaling) {
    enum { N = CURVE_WEIGHTS + 2 };
    double x[N], y[N];
    double *r = hdlm_malloc((size_t)k * sizeof(double));
    double *terms = hdlm_malloc((size_t)(k > N ? k : N) * sizeof(double));
    // np.linspace(1e-6, 1 - 1e-6, 25): start + i * step, the last point set to the stop value itself
    const double start = 1e-6, stop = 1 - 1e-6, step = (stop - start) / (CURVE_WEIGHTS - 1);
    x[0] = 0, y[0] = INFINITY;   // extreme points (KL pairs before the exp map)
    for (int i = 0; i < CURVE_WEIGHTS; i++) {
        double w = i == CURVE_WEIGHTS - 1 ? stop : i * step + start;
        for (int b = 0; b < k; b++) r[b] = w * p[b] + (1 - w) * q[b];
        x[i + 1] = kl_divergence(q, r, k, terms);
        y[i + 1] = kl_divergence(p, r, k, terms);
    }
    x[N - 1] = INFINITY, y[N - 1] = 0;
    for (int i = 0; i < N; i++) {
        x[i] = exp(-scaling * x[i]);
        y[i] = exp(-scaling * y[i]);
    }
    int by_x[N], by_y[N];
    numpy_argsort(x, by_x, N);
    numpy_argsort(y, by_y, N);
    double area = 0.5 * (trapezoid_area(x, y, by_x, N, terms) + trapezoid_area(y, x, by_y, N, terms));
    free(terms);
    free(r);
    return area;
}

double hdlm_mauve_frontier_integral(const double *p, const double *q, int k) {
    double total = 0;
    for (int i = 0; i < k; i++) {
        double a = p[i], b = q[i];
        if (a == 0 && b == 0) continue;
        if (a == 0) {
            total += b / 4;
        } else if (b == 0) {
            total += a / 4;
        } else if (fabs(a - b) > 1e-8) {
            double t1 = a + b;
            double t2 = a * b * (log(a) - log(b)) / (a - b);
            total += 0.25 * t1 - 0.5 * t2;
        }
    }
    return total * 2;
}

void hdlm_mauve_histograms(const int64_t *counts, int k, double *hist, double *hist_smoothed) {
    int64_t total = 0;
    for (int i = 0; i < k; i++) total += counts[i];
    for (int i = 0; i < k; i++) hist[i] = (double)counts[i] / (double)total;
    for (int i = 0; i < k; i++) hist_smoothed[i] = (double)counts[i] + 0.5;
    double smoothed_total = numpy_sum(hist_smoothed, k);
    for (int i = 0; i < k; i++) hist_smoothed[i] /= smoothed_total;
}

int hdlm_mauve_compute(const double *p, int64_t n_p, const double *q, int64_t n_q, int64_t d,
                       const hdlm_mauve_options *opt, hdlm_mauve_result *out) {
    memset(out, 0, sizeof(*out));
    HDLM_CHECK(n_p >= 1 && n_q >= 1, "MAUVE: P has %lld and Q has %lld feature rows; both need at least one",
               (long long)n_p, (long long)n_q);
    HDLM_CHECK(d >= 1, "MAUVE: features have width %lld", (long long)d);
    HDLM_CHECK(opt->kmeans_redo >= 1, "MAUVE: --redo must be >= 1, got %d", opt->kmeans_redo);
    HDLM_CHECK(opt->kmeans_iters >= 1, "MAUVE: --iters must be >= 1, got %d", opt->kmeans_iters);
    HDLM_CHECK(opt->scaling > 0 && isfinite(opt->scaling), "MAUVE: --scaling must be positive, got %g", opt->scaling);
    HDLM_CHECK(opt->explained_var > 0 && opt->explained_var < 1,
               "MAUVE: --explained-var must lie strictly between 0 and 1, got %g", opt->explained_var);
    HDLM_CHECK(opt->num_buckets >= 0, "MAUVE: --buckets must be positive or auto, got %d", opt->num_buckets);
    int k = opt->num_buckets > 0 ? opt->num_buckets : hdlm_mauve_auto_buckets(n_p, n_q);
    int64_t n = n_p + n_q;
    HDLM_CHECK(k <= n, "MAUVE: %d buckets need at least %d feature rows, P and Q have %lld together", k, k,
               (long long)n);

    // X = [Q; P]: Q first, as the reference stacks them (the order seeds the k-means initialisation).
    double *x = hdlm_malloc((size_t)n * (size_t)d * sizeof(double));
    memcpy(x, q, (size_t)n_q * (size_t)d * sizeof(double));
    memcpy(x + n_q * d, p, (size_t)n_p * (size_t)d * sizeof(double));
    for (int64_t i = 0; i < n * d; i++) {
        if (!isfinite(x[i])) {
            int64_t row = i / d;
            int in_q = row < n_q;
            free(x);
            return HDLM_FAIL("MAUVE: %s feature row %lld column %lld is not finite", in_q ? "Q" : "P",
                             (long long)(in_q ? row : row - n_q), (long long)(i % d));
        }
    }
    double *ratios = hdlm_malloc((size_t)d * sizeof(double));
    float *z = NULL;
    int kept = 0;
    int rc = hdlm_mauve_l2_normalize(x, n, d);
    if (rc == 0) rc = hdlm_mauve_pca(x, n, d, opt->explained_var, ratios, &kept, &z);
    free(x);
    if (rc != 0) {
        free(ratios);
        return -1;
    }
    double cum = 0;
    for (int m = 0; m < kept; m++) cum += ratios[m];
    free(ratios);

    hdlm_kmeans_options km = {.k = k, .niter = opt->kmeans_iters, .nredo = opt->kmeans_redo,
                              .seed = (int64_t)opt->seed + 2};
    float *centroids = hdlm_malloc((size_t)k * (size_t)kept * sizeof(float));
    int64_t *labels = hdlm_malloc((size_t)n * sizeof(int64_t));
    float objective;
    rc = hdlm_kmeans_faiss(z, n, kept, &km, centroids, labels, &objective);
    free(centroids);
    free(z);
    if (rc != 0) {
        free(labels);
        return -1;
    }

    out->num_buckets = k;
    out->pca_dim = kept;
    out->explained_var = cum;
    out->q_counts = hdlm_calloc((size_t)k, sizeof(int64_t));
    out->p_counts = hdlm_calloc((size_t)k, sizeof(int64_t));
    for (int64_t i = 0; i < n; i++) (i < n_q ? out->q_counts : out->p_counts)[labels[i]]++;
    free(labels);

    double *hist = hdlm_malloc(4 * (size_t)k * sizeof(double));
    double *p_hist = hist, *q_hist = hist + k, *p_star = hist + 2 * k, *q_star = hist + 3 * k;
    hdlm_mauve_histograms(out->p_counts, k, p_hist, p_star);
    hdlm_mauve_histograms(out->q_counts, k, q_hist, q_star);
    out->mauve = hdlm_mauve_from_histograms(p_hist, q_hist, k, opt->scaling);
    out->mauve_star = hdlm_mauve_from_histograms(p_star, q_star, k, opt->scaling);
    out->frontier_integral = hdlm_mauve_frontier_integral(p_hist, q_hist, k);
    out->frontier_integral_star = hdlm_mauve_frontier_integral(p_star, q_star, k);
    free(hist);
    return 0;
}

void hdlm_mauve_result_free(hdlm_mauve_result *res) {
    free(res->p_counts);
    free(res->q_counts);
    res->p_counts = res->q_counts = NULL;
}

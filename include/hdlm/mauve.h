// hdlm/mauve.h — the MAUVE score of two feature matrices (Pillutla et al., 2021; mauve-text 0.4.0 defaults).
//
// Pipeline (method §9.4, docs/mauve.md): stack [Q; P], L2-normalise rows, PCA keeping the smallest number of
// components that explain `explained_var` of the variance, k-means exactly as faiss 1.7.3 (Debian 12) runs it,
// histograms of the cluster labels, divergence curve, MAUVE / MAUVE* (Krichevsky-Trofimov smoothed) and the frontier
// integrals FI / FI*. The k-means seed alone moves the score by up to 0.08, so the clustering reproduces faiss 1.7.3's
// random initialisation, float32 distance arithmetic and empty-cluster rule: scores are comparable with published ones.
//
// Shapes: n rows of d features, row-major. Labels and counts are int64.
#ifndef HDLM_MAUVE_H
#define HDLM_MAUVE_H

#include <stdint.h>

typedef struct {
    int num_buckets;       // k; 0 = auto: max(2, round-half-even(min(n_p, n_q) / 10))
    double explained_var;  // PCA keeps the first components whose cumulative ratio reaches this (0 < v < 1); 0.9
    int kmeans_redo;       // independent k-means runs, the lowest final objective wins; 5
    int kmeans_iters;      // Lloyd iterations per run (no convergence test, as faiss); 500
    int seed;              // mauve-text seed; faiss gets seed + 2; 25
    double scaling;        // the constant c of exp(-c KL); 5
} hdlm_mauve_options;

typedef struct {
    double mauve, mauve_star;                          // plain and smoothed histograms
    double frontier_integral, frontier_integral_star;  // FI (scaling 2) and FI*
    int num_buckets;                                   // k actually used
    int pca_dim;                                       // PCA components kept
    double explained_var;                              // cumulative explained-variance ratio of those components
    int64_t *p_counts, *q_counts;                      // [num_buckets] cluster sizes of P and Q
} hdlm_mauve_result;

void hdlm_mauve_options_default(hdlm_mauve_options *opt);
// k for 'auto': max(2, round(min(n_p, n_q) / 10)) with Python's round (ties to even).
int hdlm_mauve_auto_buckets(int64_t n_p, int64_t n_q);

// The whole score. p: [n_p, d], q: [n_q, d] (double, so float32 and float64 files both enter exactly).
// Fails (message) on empty inputs, non-finite values, rows of zero norm, bad options or fewer points than buckets.
int hdlm_mauve_compute(const double *p, int64_t n_p, const double *q, int64_t n_q, int64_t d,
                       const hdlm_mauve_options *opt, hdlm_mauve_result *out);
void hdlm_mauve_result_free(hdlm_mauve_result *res);

// ---- the stages, exposed for tests ----

// MAUVE from two histograms of k buckets (each summing to 1): 25 mixture weights in [1e-6, 1 - 1e-6], curve
// exp(-c (KL(q||r), KL(p||r))) with the extreme points, 0.5 (AUC over x + AUC over y) by the trapezoid rule.
double hdlm_mauve_from_histograms(const double *p, const double *q, int k, double scaling);
// Frontier integral (scaling 2): closed form per bucket (docs/mauve.md).
double hdlm_mauve_frontier_integral(const double *p, const double *q, int k);
// Histograms from counts: plain counts / sum and smoothed (counts + 0.5) / sum(counts + 0.5).
void hdlm_mauve_histograms(const int64_t *counts, int k, double *hist, double *hist_smoothed);

// Rows L2-normalised in place (x: [n, d]); fails naming the row when one has zero norm.
int hdlm_mauve_l2_normalize(double *x, int64_t n, int64_t d);
// PCA of x [n, d] (centred by the column mean; eigen-decomposition of the covariance with LAPACK dsyevd).
// ratios [d] receives the explained-variance ratios in decreasing order; *kept = smallest m with cumulative ratio >=
// explained_var; *z = the projection onto those m components, cast to float32 ([n, m], caller frees).
int hdlm_mauve_pca(const double *x, int64_t n, int64_t d, double explained_var, double *ratios, int *kept, float **z);
// Eigenvalues (ascending) and eigenvectors (columns, in place of the row-major symmetric matrix a [d, d]).
int hdlm_symmetric_eigen(double *a, int64_t d, double *eigenvalues);

// The Mersenne twister mt19937 (standard init_genrand seeding), as std::mt19937 inside faiss.
typedef struct {
    uint32_t state[624];
    int index;
} hdlm_mt19937;
void hdlm_mt19937_seed(hdlm_mt19937 *mt, uint32_t seed);
uint32_t hdlm_mt19937_next(hdlm_mt19937 *mt);
// faiss 1.7.3 rand_perm(perm, n, seed): identity, then Fisher-Yates with i2 = i + mt() % (n - i).
void hdlm_faiss_rand_perm(int64_t *perm, int64_t n, int64_t seed);

typedef struct {
    int k;        // clusters
    int niter;    // Lloyd iterations per redo
    int nredo;    // redos
    int64_t seed; // faiss ClusteringParameters.seed (mauve: seed + 2)
} hdlm_kmeans_options;

// faiss 1.7.3 Clustering::train on x [n, d] float32 with an IndexFlatL2, then labels = nearest final centroid of every
// row. centroids: [k, d] out; labels: [n] out; *objective = the winning redo's last objective. Fails when n < k.
int hdlm_kmeans_faiss(const float *x, int64_t n, int d, const hdlm_kmeans_options *opt, float *centroids,
                      int64_t *labels, float *objective);

#endif

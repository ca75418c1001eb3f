// The MAUVE feature reduction (docs/mauve.md steps 2-3): row-wise L2 normalisation and PCA in double, keeping
// the smallest number of components whose cumulative explained-variance ratio reaches the threshold, projected and cast
// to float32 for the k-means. The reference (sklearn) takes an SVD of the centred data; the eigen-decomposition of
// X^T X gives the same components (up to sign, which distances ignore) and ratios s_i^2 / sum s^2.
#include <blis.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>

#include "hdlm/common.h"
#include "hdlm/mauve.h"

int hdlm_mauve_l2_normalize(double *x, int64_t n, int64_t d) {
    for (int64_t i = 0; i < n; i++) {
        double *row = x + i * d;
        double sum = 0;
        for (int64_t j = 0; j < d; j++) sum += row[j] * row[j];
        double norm = sqrt(sum);
        HDLM_CHECK(norm > 0, "MAUVE features: row %lld is all zeros (it has no direction to normalise)",
                   (long long)i);
        for (int64_t j = 0; j < d; j++) row[j] /= norm;
    }
    return 0;
}

int hdlm_mauve_pca(const double *x, int64_t n, int64_t d, double explained_var, double *ratios, int *kept,
                   float **z) {
    HDLM_CHECK(n >= 1 && d >= 1, "PCA: empty input (%lld x %lld)", (long long)n, (long long)d);
    HDLM_CHECK(explained_var > 0 && explained_var < 1, "PCA: explained variance must lie in (0, 1), got %g",
               explained_var);
    // Centre by the column mean (rows summed in order, as numpy's mean over axis 0).
    double *mean = hdlm_calloc((size_t)d, sizeof(double));
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < d; j++) mean[j] += x[i * d + j];
    for (int64_t j = 0; j < d; j++) mean[j] /= (double)n;
    double *xc = hdlm_malloc((size_t)n * (size_t)d * sizeof(double));
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < d; j++) xc[i * d + j] = x[i * d + j] - mean[j];
    free(mean);

    // Scatter matrix X^T X (upper triangle) and its eigen-decomposition (ascending eigenvalues).
    double *scatter = hdlm_calloc((size_t)d * (size_t)d, sizeof(double));
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (f77_int)d, (f77_int)n, 1.0, xc, (f77_int)d, 0.0, scatter,
                (f77_int)d);
    double *eig = hdlm_malloc((size_t)d * sizeof(double));
    if (hdlm_symmetric_eigen(scatter, d, eig) != 0) {
        free(eig), free(scatter), free(xc);
        return -1;
    }
    // Ratios in decreasing order; round-off can leave tiny negative eigenvalues for a rank-deficient matrix.
    double total = 0;
    for (int64_t m = 0; m < d; m++) {
        double v = eig[d - 1 - m];
        ratios[m] = v > 0 ? v : 0;
        total += ratios[m];
    }
    int keep = 1;   // all-identical points: no variance at all, one (zero) component
    if (total > 0) {
        double cum = 0;
        keep = 0;
        for (int64_t m = 0; m < d; m++) {
            ratios[m] /= total;
            cum += ratios[m];
            if (keep == 0 && cum >= explained_var) keep = (int)(m + 1);
        }
        if (keep == 0) keep = 1;   // numpy's argmax of an all-false mask is 0: one component
    }

    // Kept components as rows (component m = eigenvector column d-1-m) and the projection Z = Xc V^T.
    double *components = hdlm_malloc((size_t)keep * (size_t)d * sizeof(double));
    for (int m = 0; m < keep; m++)
        for (int64_t i = 0; i < d; i++) components[m * d + i] = scatter[i * d + (d - 1 - m)];
    double *proj = hdlm_malloc((size_t)n * (size_t)keep * sizeof(double));
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (f77_int)n, keep, (f77_int)d, 1.0, xc, (f77_int)d,
                components, (f77_int)d, 0.0, proj, keep);
    float *out = hdlm_malloc((size_t)n * (size_t)keep * sizeof(float));
    for (int64_t i = 0; i < n * keep; i++) out[i] = (float)proj[i];
    free(proj), free(components), free(eig), free(scatter), free(xc);
    *kept = keep;
    *z = out;
    return 0;
}

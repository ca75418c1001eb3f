// Linear layer (nn.Linear layout W[out, in]): forward and backward through hdlm_sgemm (method §7.1).
#include <omp.h>
#include <string.h>

#include "hdlm/blas.h"
#include "model/layers.h"

void hdlm_linear_forward(float *out, const float *in, const float *w, const float *b, int n, int in_dim,
                         int out_dim) {
    // out[N,o] = in[N,i] · W[o,i]ᵀ + b
    hdlm_sgemm_bias(false, true, n, out_dim, in_dim, 1.0f, in, in_dim, w, in_dim, 0.0f, out, out_dim, b);
}

void hdlm_linear_forward_packed(float *out, const float *in, const hdlm_packed_weights *w, const float *b, int n) {
    hdlm_sgemm_packed(n, in, w->k, w, b, NULL, out, w->n);
}

// db[o] += Σ_r dout[r, o]: threads own disjoint column ranges, so the sum order is fixed.
static void linear_bias_backward(float *db, const float *dout, int n, int out_dim) {
#pragma omp parallel
    {
        enum { COLS = 256 };
        float acc[COLS];
#pragma omp for schedule(static)
        for (int o0 = 0; o0 < out_dim; o0 += COLS) {
            int cols = out_dim - o0 < COLS ? out_dim - o0 : COLS;
            memset(acc, 0, sizeof acc);
            for (int r = 0; r < n; r++) {
                const float *row = dout + (size_t)r * out_dim + o0;
                for (int o = 0; o < cols; o++) acc[o] += row[o];
            }
            for (int o = 0; o < cols; o++) db[o0 + o] += acc[o];
        }
    }
}

void hdlm_linear_backward(float *din, float *dw, float *db, const float *dout, const float *in, const float *w, int n,
                          int in_dim, int out_dim, bool accumulate) {
    float din_beta = accumulate ? 1.0f : 0.0f;
#if !defined(__AVX512F__)
    if (din && hdlm_blas_threads() == 2 && !omp_in_parallel()) {
        // With BLIS (include/hdlm/blas.h): dW and din are independent GEMMs of equal FLOPs, so on two threads one
        // each with single-threaded BLIS. No barriers inside BLIS then, which measured ~5% faster on an idle 2-core
        // machine and much less sensitive to other jobs preempting one of the threads. hdlm's AVX-512 kernel is
        // faster the other way (both GEMMs on both threads: linear backward 0.80–0.82 s against 0.86–0.88 s per
        // 4×256 step). Results are the same either way (the k order of each element does not depend on the split).
#pragma omp parallel num_threads(2)
        {
            if (omp_get_thread_num() == 0)
                hdlm_sgemm_serial(true, false, out_dim, in_dim, n, 1.0f, dout, out_dim, in, in_dim, 1.0f, dw, in_dim);
            else
                hdlm_sgemm_serial(false, false, n, in_dim, out_dim, 1.0f, dout, out_dim, w, in_dim, din_beta, din,
                                  in_dim);
        }
        if (db) linear_bias_backward(db, dout, n, out_dim);
        return;
    }
#endif
    // dW[o,i] += dout[N,o]ᵀ · in[N,i]
    hdlm_sgemm(true, false, out_dim, in_dim, n, 1.0f, dout, out_dim, in, in_dim, 1.0f, dw, in_dim);
    if (db) linear_bias_backward(db, dout, n, out_dim);
    // din[N,i] = dout[N,o] · W[o,i]
    if (din) hdlm_sgemm(false, false, n, in_dim, out_dim, 1.0f, dout, out_dim, w, in_dim, din_beta, din, in_dim);
}

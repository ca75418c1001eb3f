// Shared helpers of the loss tests: a finite-difference gradient check and seeded random logits.
// Included by tests/test_loss_*.c and tests/test_ardm.c after cmocka.h.
#ifndef HDLM_TEST_LOSS_CHECK_H
#define HDLM_TEST_LOSS_CHECK_H

#include <math.h>
#include <stdlib.h>

#include "hdlm/common.h"
#include "hdlm/rng.h"

// A loss of `n` outputs: returns the value, writes d(loss)/d(out) into grad when it is not NULL.
typedef double (*loss_fn)(void *ctx, const float *out, float *grad);

// Central differences on every output, h = 1e-3 (the step actually taken in float is used as the denominator).
// Passes when |fd - analytic| <= abs_tol + rel_tol·|analytic| everywhere; returns the worst absolute error.
static inline double check_gradient(loss_fn fn, void *ctx, float *out, size_t n, double abs_tol, double rel_tol) {
    float *grad = hdlm_malloc(n * sizeof *grad);
    fn(ctx, out, grad);
    double worst = 0;
    for (size_t k = 0; k < n; k++) {
        float saved = out[k];
        float up = saved + 1e-3f, down = saved - 1e-3f;
        out[k] = up;
        double lu = fn(ctx, out, NULL);
        out[k] = down;
        double ld = fn(ctx, out, NULL);
        out[k] = saved;
        double fd = (lu - ld) / ((double)up - (double)down), err = fabs(fd - grad[k]);
        if (err > abs_tol + rel_tol * fabs(grad[k])) {
            print_error("gradient mismatch at output %zu: analytic %.9g, finite difference %.9g\n", k, grad[k], fd);
            fail();
        }
        if (err > worst) worst = err;
    }
    free(grad);
    return worst;
}

// n normal(0, scale) values from a seeded stream.
static inline void random_outputs(float *out, size_t n, double scale, uint64_t seed) {
    hdlm_rng rng;
    hdlm_rng_init(&rng, hdlm_rng_key(seed, 0, 0, HDLM_RNG_INIT));
    for (size_t k = 0; k < n; k++) out[k] = (float)(scale * hdlm_rng_normal(&rng));
}

// Upper 0.999 quantiles of the chi-square distribution for 1..12 degrees of freedom.
static inline double chi2_999(int dof) {
    static const double q[] = {0, 10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32, 26.12, 27.88, 29.59, 31.26, 32.91};
    return q[dof];
}

#endif

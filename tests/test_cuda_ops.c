// The CUDA runtime and every GPU op of src/cuda/{runtime,linear,layers,optim}.cu against its CPU twin on random
// inputs, in the manner of ggml's test-backend-ops: the same (bf16-rounded) inputs go to both, the outputs are compared
// with a tolerance stated per kind of output. Without a GPU (or without the CUDA backend) the GPU tests skip with
// hdlm_cuda_unavailable_reason(); the bf16 host conversions are tested in every build.
//
// Error measure: err = max_i |gpu_i − cpu_i| / (|cpu_i| + rms(cpu)), i.e. relative per element with the RMS of the
// reference as the floor for elements near zero. Tolerances:
//   BF16_TOL 5e-3 — a bf16 output: both sides round (nearly) the same fp32 value to 8 significant bits; when the
//                   fp32 values differ by a few ulps (another tanh/exp, another summation order) the roundings may
//                   land on neighbouring bf16 values, one ulp = 2^-8 = 3.9e-3 relative; 5e-3 leaves room for the fp32
//                   noise. An indexing or formula error gives errors of order 1.
//   SUM_TOL 1e-4  — fp32 outputs that are sums over d or N terms in another order (warp trees, cuBLASLt tiles):
//                   ≤ terms · 2^-24 relative to the sum of magnitudes, ~1e-5 for the sizes here.
//   EXACT_TOL 1e-6 — fp32 outputs of the same few fp32 operations (at most fused multiply-adds differ): a few ulps.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hdlm/common.h"
#include "hdlm/cuda.h"
#include "model/layers.h"
#include "train/optim.h"
#include "hdlm/rng.h"
#ifdef HDLM_HAVE_CUDA
#include "cuda/cuda_ops.h"
#endif

#define BF16_TOL 5e-3
#define SUM_TOL 1e-4
#define EXACT_TOL 1e-6

// ---- bf16 on the host (every build) -----------------------------------------------------------------------------

static float bits_to_float(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static void test_bf16_host_rounding(void **state) {
    (void)state;
    assert_int_equal(hdlm_bf16_from_float(1.0f), 0x3f80);
    assert_int_equal(hdlm_bf16_from_float(-2.0f), 0xc000);
    // Ties to even: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7 → 1 (even); 1 + 3·2^-8 → 1 + 2^-6 (even).
    assert_int_equal(hdlm_bf16_from_float(bits_to_float(0x3f808000u)), 0x3f80);
    assert_int_equal(hdlm_bf16_from_float(bits_to_float(0x3f818000u)), 0x3f82);
    assert_int_equal(hdlm_bf16_from_float(bits_to_float(0x3f808001u)), 0x3f81);   // above the tie: up
    assert_int_equal(hdlm_bf16_from_float(INFINITY), 0x7f80);
    assert_int_equal(hdlm_bf16_from_float(bits_to_float(0x7f7fffffu)), 0x7f80);   // FLT_MAX rounds to infinity
    hdlm_bf16 nan = hdlm_bf16_from_float(bits_to_float(0x7f800001u));             // signalling NaN, tiny payload
    assert_true(isnan(hdlm_bf16_to_float(nan)));
    float negative_nan = hdlm_bf16_to_float(hdlm_bf16_from_float(-NAN));
    assert_true(isnan(negative_nan) && signbit(negative_nan));
    // Every bf16 value converts to float and back unchanged (NaNs stay NaN).
    for (uint32_t b = 0; b < 0x10000u; b++) {
        float f = hdlm_bf16_to_float((hdlm_bf16)b);
        if (isnan(f))
            assert_true(isnan(hdlm_bf16_to_float(hdlm_bf16_from_float(f))));
        else
            assert_int_equal(hdlm_bf16_from_float(f), b);
    }
}

static void test_runtime_availability(void **state) {
    (void)state;
#ifdef HDLM_HAVE_CUDA
    assert_true(hdlm_cuda_compiled());
#else
    assert_false(hdlm_cuda_compiled());
    assert_int_equal(hdlm_cuda_device_count(), 0);
    assert_non_null(strstr(hdlm_cuda_unavailable_reason(), "built without the CUDA backend"));
    assert_int_equal(hdlm_cuda_init(0), -1);
    assert_error_contains("built without the CUDA backend");
#endif
    int count = hdlm_cuda_device_count();   // never fails, with or without a driver
    assert_true(count >= 0);
    if (count == 0) assert_true(strlen(hdlm_cuda_unavailable_reason()) > 0);
}

#ifdef HDLM_HAVE_CUDA

// ---- helpers ----------------------------------------------------------------------------------------------------

static bool gpu_ready(void) {
    static int ready = -1;
    if (ready < 0) {
        ready = hdlm_cuda_device_count() > 0;
        if (ready && hdlm_cuda_init(0) != 0) {
            print_message("hdlm_cuda_init(0) failed: %s\n", hdlm_last_error());
            ready = 0;
        }
    }
    return ready;
}

#define REQUIRE_GPU()                                                                                                  \
    do {                                                                                                               \
        if (!gpu_ready()) {                                                                                            \
            print_message("skipped: %s\n", hdlm_cuda_unavailable_reason());                                           \
            skip();                                                                                                    \
        }                                                                                                              \
    } while (0)

static hdlm_rng g_rng;

// n floats uniform in [lo, hi).
static float *random_floats(size_t n, float lo, float hi) {
    float *x = hdlm_calloc(n ? n : 1, sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * hdlm_rng_uniform(&g_rng);
    return x;
}

// Rounds x to bf16 values in place (the CPU reference then sees exactly what the GPU reads).
static void round_bf16(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = hdlm_bf16_to_float(hdlm_bf16_from_float(x[i]));
}


static float *download_f32(const float *d, size_t n) {
    hdlm_cuda_synchronize();
    float *x = hdlm_malloc(n * sizeof(float));
    hdlm_cuda_download(x, d, n * sizeof(float));
    return x;
}

static float *download_bf16(const hdlm_bf16 *d, size_t n) {
    hdlm_cuda_synchronize();
    hdlm_bf16 *h = hdlm_malloc(n * sizeof *h);
    hdlm_cuda_download(h, d, n * sizeof *h);
    float *x = hdlm_malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = hdlm_bf16_to_float(h[i]);
    free(h);
    return x;
}

// Compares n values (row stride `stride` ≥ cols for strided views: rows·cols values) and fails above tol.
static void expect_close_strided(const char *what, const float *got, const float *ref, int rows, int cols, int stride,
                                 double tol) {
    double sq = 0.0;
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) sq += (double)ref[(size_t)r * stride + c] * ref[(size_t)r * stride + c];
    double rms = sqrt(sq / ((double)rows * cols));
    double worst = 0.0;
    size_t worst_i = 0;
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            size_t i = (size_t)r * stride + c;
            double err = fabs((double)got[i] - ref[i]) / (fabs(ref[i]) + rms + 1e-30);
            if (!(err <= worst)) {   // NaN counts as worst
                worst = err;
                worst_i = i;
            }
        }
    print_message("  %-28s err %.2e (tol %.0e, rms %.3g)\n", what, worst, tol, rms);
    if (!(worst <= tol))
        fail_msg("%s: element %zu is %.9g on the GPU, %.9g on the CPU (err %.3g > %.0e)", what, worst_i,
                 (double)got[worst_i], (double)ref[worst_i], worst, tol);
}

static void expect_close(const char *what, const float *got, const float *ref, size_t n, double tol) {
    expect_close_strided(what, got, ref, 1, (int)n, (int)n, tol);
}

// ---- runtime ----------------------------------------------------------------------------------------------------

static void test_runtime_memory_and_conversions(void **state) {
    (void)state;
    REQUIRE_GPU();
    assert_string_equal(hdlm_cuda_unavailable_reason(), "");
    assert_int_equal(hdlm_cuda_init(0), 0);   // a second init on the same device is a no-op
    assert_non_null(hdlm_cuda_stream());
    enum { N = 4099 };
    float *x = random_floats(N, -3.0f, 3.0f);
    x[0] = INFINITY, x[1] = -0.0f, x[2] = bits_to_float(0x3f808000u), x[3] = bits_to_float(0x3f818000u);
    x[4] = 1e-40f;   // subnormal
    float *dx = test_cuda_upload_f32(x, N);
    float *back = download_f32(dx, N);
    assert_memory_equal(back, x, N * sizeof(float));
    // Device float → bf16 rounds like the host (bit for bit), bf16 → float is exact.
    hdlm_bf16 *db = hdlm_cuda_malloc(N * sizeof(hdlm_bf16));
    hdlm_cuda_float_to_bf16(db, dx, N, hdlm_cuda_stream());
    hdlm_bf16 *bits = hdlm_malloc(N * sizeof *bits);
    hdlm_cuda_synchronize();
    hdlm_cuda_download(bits, db, N * sizeof *bits);
    for (int i = 0; i < N; i++) assert_int_equal(bits[i], hdlm_bf16_from_float(x[i]));
    hdlm_cuda_bf16_to_float(dx, db, N, hdlm_cuda_stream());
    float *widened = download_f32(dx, N);
    for (int i = 0; i < N; i++) assert_true(widened[i] == hdlm_bf16_to_float(bits[i]) || (isnan(widened[i])));
    hdlm_cuda_memset0(dx, N * sizeof(float), hdlm_cuda_stream());
    float *zeros = download_f32(dx, N);
    for (int i = 0; i < N; i++) assert_true(zeros[i] == 0.0f);
    hdlm_cuda_free(dx);
    hdlm_cuda_free(db);
    hdlm_cuda_free(NULL);
    free(x), free(back), free(bits), free(widened), free(zeros);
}

// ---- linear -----------------------------------------------------------------------------------------------------

// Forward with bias (BIAS epilogue) and with bias + GELU (GELU_AUX_BIAS), against hdlm_linear_forward (+
// hdlm_gelu_forward) on the same bf16 inputs.
static void check_linear_forward(int n, int in_dim, int out_dim, bool bias, bool gelu) {
    print_message(" linear forward n=%d in=%d out=%d%s%s\n", n, in_dim, out_dim, bias ? " +bias" : "",
                  gelu ? " +gelu" : "");
    float *in = random_floats((size_t)n * in_dim, -1.0f, 1.0f), *w = random_floats((size_t)out_dim * in_dim, -0.3f, 0.3f);
    float *b = random_floats(out_dim, -0.5f, 0.5f);
    round_bf16(in, (size_t)n * in_dim), round_bf16(w, (size_t)out_dim * in_dim), round_bf16(b, out_dim);
    hdlm_bf16 *d_in = test_cuda_upload_bf16(in, (size_t)n * in_dim), *d_w = test_cuda_upload_bf16(w, (size_t)out_dim * in_dim);
    hdlm_bf16 *d_b = test_cuda_upload_bf16(b, out_dim);
    hdlm_bf16 *d_out = hdlm_cuda_malloc((size_t)n * out_dim * 2), *d_gelu = hdlm_cuda_malloc((size_t)n * out_dim * 2);
    hdlm_cuda_linear_forward(d_out, gelu ? d_gelu : NULL, d_in, d_w, bias ? d_b : NULL, n, in_dim, out_dim,
                             hdlm_cuda_stream());
    float *ref = hdlm_malloc((size_t)n * out_dim * sizeof(float)), *ref_gelu = hdlm_malloc((size_t)n * out_dim * 4);
    hdlm_linear_forward(ref, in, w, bias ? b : NULL, n, in_dim, out_dim);
    float *out = download_bf16(d_out, (size_t)n * out_dim);
    expect_close("out (pre-activation)", out, ref, (size_t)n * out_dim, BF16_TOL);
    if (gelu) {
        hdlm_gelu_forward(ref_gelu, ref, (size_t)n * out_dim);
        float *g = download_bf16(d_gelu, (size_t)n * out_dim);
        expect_close("gelu_out", g, ref_gelu, (size_t)n * out_dim, BF16_TOL);
        free(g);
    }
    hdlm_cuda_free(d_in), hdlm_cuda_free(d_w), hdlm_cuda_free(d_b), hdlm_cuda_free(d_out), hdlm_cuda_free(d_gelu);
    free(in), free(w), free(b), free(ref), free(ref_gelu), free(out);
}

static void test_linear_forward(void **state) {
    (void)state;
    REQUIRE_GPU();
    check_linear_forward(77, 40, 24, false, false);
    check_linear_forward(77, 40, 24, true, false);
    check_linear_forward(77, 40, 24, true, true);    // fused GELU_AUX_BIAS (out_dim % 8 == 0)
    check_linear_forward(50, 64, 48, false, true);   // GELU_AUX without bias
    check_linear_forward(33, 37, 19, true, false);   // odd sizes and leading dimensions
    check_linear_forward(33, 37, 19, true, true);    // unfused GELU (aux ld 19 not a multiple of 8)
    check_linear_forward(300, 128, 512, true, true); // an MLP fc1 shape, several tiles
}

// cuBLASLt's GELU must be the tanh form of the CPU: at x = −3 tanh-GELU is −0.00364, erf-GELU −0.00405 (10 % apart,
// far beyond bf16 rounding). W = identity makes the pre-activation exactly x.
static void test_linear_gelu_is_tanh_form(void **state) {
    (void)state;
    REQUIRE_GPU();
    enum { N = 8, D = 8 };
    const float xs[N] = {-3.0f, -2.5f, -2.0f, -1.0f, -0.5f, 0.5f, 1.5f, 3.0f};
    float in[N * D] = {0}, w[D * D] = {0}, tanh_form[N], erf_form[N];
    for (int i = 0; i < D; i++) w[i * D + i] = 1.0f;
    for (int r = 0; r < N; r++) in[r * D] = xs[r];
    hdlm_gelu_forward(tanh_form, xs, N);
    hdlm_bf16 *d_in = test_cuda_upload_bf16(in, N * D), *d_w = test_cuda_upload_bf16(w, D * D);
    hdlm_bf16 *d_out = hdlm_cuda_malloc(N * D * 2), *d_gelu = hdlm_cuda_malloc(N * D * 2);
    hdlm_cuda_linear_forward(d_out, d_gelu, d_in, d_w, NULL, N, D, D, hdlm_cuda_stream());
    float *g = download_bf16(d_gelu, N * D);
    for (int r = 0; r < N; r++) {
        erf_form[r] = 0.5f * xs[r] * (1.0f + erff(xs[r] / sqrtf(2.0f)));
        float got = g[r * D];
        print_message("  GELU(%5.2f): GPU %.6f, tanh form %.6f, erf form %.6f\n", xs[r], got, tanh_form[r],
                      erf_form[r]);
        assert_true(fabsf(got - tanh_form[r]) <= 4e-3f * fabsf(tanh_form[r]) + 1e-7f);
    }
    assert_true(fabsf(g[0] - erf_form[0]) > 0.05f * fabsf(erf_form[0]));
    hdlm_cuda_free(d_in), hdlm_cuda_free(d_w), hdlm_cuda_free(d_out), hdlm_cuda_free(d_gelu);
    free(g);
}

// Backward: dW and db accumulate in fp32 onto existing values; din written, accumulated, or through DGELU.
static void check_linear_backward(int n, int in_dim, int out_dim, bool bias, bool accumulate, bool dgelu) {
    print_message(" linear backward n=%d in=%d out=%d%s%s%s\n", n, in_dim, out_dim, bias ? " +db" : "",
                  accumulate ? " din+=" : "", dgelu ? " +dgelu" : "");
    size_t ni = (size_t)n * in_dim, no = (size_t)n * out_dim, nw = (size_t)out_dim * in_dim;
    float *in = random_floats(ni, -1.0f, 1.0f), *w = random_floats(nw, -0.3f, 0.3f);
    float *dout = random_floats(no, -1.0f, 1.0f), *pre = random_floats(ni, -3.0f, 3.0f);
    float *dw = random_floats(nw, -1.0f, 1.0f), *db = random_floats(out_dim, -1.0f, 1.0f);
    float *din = random_floats(ni, -1.0f, 1.0f);
    round_bf16(in, ni), round_bf16(w, nw), round_bf16(dout, no), round_bf16(pre, ni), round_bf16(din, ni);
    hdlm_bf16 *d_in = test_cuda_upload_bf16(in, ni), *d_w = test_cuda_upload_bf16(w, nw), *d_dout = test_cuda_upload_bf16(dout, no);
    hdlm_bf16 *d_pre = test_cuda_upload_bf16(pre, ni), *d_din = test_cuda_upload_bf16(din, ni);
    float *d_dw = test_cuda_upload_f32(dw, nw), *d_db = test_cuda_upload_f32(db, out_dim);
    hdlm_cuda_linear_backward(d_din, d_dw, bias ? d_db : NULL, d_dout, d_in, d_w, dgelu ? d_pre : NULL, n, in_dim,
                              out_dim, accumulate, hdlm_cuda_stream());
    // CPU: the same on fp32 copies; DGELU as din = GELU'(pre) ⊙ (dout·W).
    float *dlin = hdlm_malloc(ni * sizeof(float));
    memcpy(dlin, din, ni * sizeof(float));
    hdlm_linear_backward(dlin, dw, bias ? db : NULL, dout, in, w, n, in_dim, out_dim, accumulate);
    if (dgelu) hdlm_gelu_backward(din, dlin, pre, ni);
    const float *ref_din = dgelu ? din : dlin;
    float *g_dw = download_f32(d_dw, nw), *g_db = download_f32(d_db, out_dim), *g_din = download_bf16(d_din, ni);
    expect_close("dW (fp32, +=)", g_dw, dw, nw, SUM_TOL);
    if (bias) expect_close("db (fp32, +=)", g_db, db, out_dim, SUM_TOL);
    expect_close(dgelu ? "din (DGELU)" : "din", g_din, ref_din, ni, BF16_TOL);
    hdlm_cuda_free(d_in), hdlm_cuda_free(d_w), hdlm_cuda_free(d_dout), hdlm_cuda_free(d_pre), hdlm_cuda_free(d_din);
    hdlm_cuda_free(d_dw), hdlm_cuda_free(d_db);
    free(in), free(w), free(dout), free(pre), free(dw), free(db), free(din), free(dlin), free(g_dw), free(g_db),
        free(g_din);
}

static void test_linear_backward(void **state) {
    (void)state;
    REQUIRE_GPU();
    check_linear_backward(77, 40, 24, true, false, false);
    check_linear_backward(77, 40, 24, false, true, false);   // din +=
    check_linear_backward(77, 96, 40, true, false, true);    // fused DGELU (in_dim % 8 == 0): an MLP fc2
    check_linear_backward(33, 37, 19, true, false, false);   // odd sizes
    check_linear_backward(33, 37, 19, true, true, false);
    check_linear_backward(33, 37, 19, false, false, true);   // unfused DGELU
    check_linear_backward(1000, 128, 96, true, false, true); // many rows: several row chunks in the db reduction
}

// ---- LayerNorm --------------------------------------------------------------------------------------------------

// Forward and backward, plain or γ-modulated (shift, scale: columns 0 and d of rows with stride 6d, as adaLN lays
// them out), against hdlm_layernorm_* + hdlm_modulate_*.
static void check_layernorm(int n, int d, bool modulated) {
    print_message(" layernorm n=%d d=%d%s\n", n, d, modulated ? " (adaLN modulated)" : "");
    size_t nd = (size_t)n * d;
    int ms = 6 * d;
    float *in = random_floats(nd, -2.0f, 3.0f), *w = random_floats(d, 0.5f, 1.5f);
    float *mod = random_floats((size_t)n * ms, -0.5f, 0.5f), *dout = random_floats(nd, -1.0f, 1.0f);
    float *din = random_floats(nd, -1.0f, 1.0f), *dw = random_floats(d, -1.0f, 1.0f);
    round_bf16(mod, (size_t)n * ms), round_bf16(dout, nd);
    const float *shift = mod, *scale = mod + d;
    float *d_in = test_cuda_upload_f32(in, nd), *d_w = test_cuda_upload_f32(w, d), *d_din = test_cuda_upload_f32(din, nd), *d_dw = test_cuda_upload_f32(dw, d);
    hdlm_bf16 *d_mod = test_cuda_upload_bf16(mod, (size_t)n * ms), *d_dout = test_cuda_upload_bf16(dout, nd);
    hdlm_bf16 *d_out = hdlm_cuda_malloc(nd * 2);
    hdlm_bf16 *d_dmod = hdlm_cuda_malloc((size_t)n * ms * 2);
    hdlm_cuda_memset0(d_dmod, (size_t)n * ms * 2, hdlm_cuda_stream());
    float *d_mean = hdlm_cuda_malloc(n * sizeof(float)), *d_rstd = hdlm_cuda_malloc(n * sizeof(float));
    hdlm_cuda_layernorm_forward(d_out, d_mean, d_rstd, d_in, d_w, modulated ? d_mod : NULL,
                                modulated ? d_mod + d : NULL, ms, n, d, hdlm_cuda_stream());
    hdlm_cuda_layernorm_backward(d_din, d_dw, modulated ? d_dmod : NULL, modulated ? d_dmod + d : NULL, d_dout, d_in,
                                 d_w, d_mean, d_rstd, modulated ? d_mod + d : NULL, ms, n, d, hdlm_cuda_stream());

    float *xw = hdlm_malloc(nd * 4), *out = hdlm_malloc(nd * 4), *mean = hdlm_malloc(n * 4), *rstd = hdlm_malloc(n * 4);
    float *dln = hdlm_malloc(nd * 4), *dmod = hdlm_calloc((size_t)n * ms, 4);
    hdlm_layernorm_forward(xw, mean, rstd, in, w, n, d);
    if (modulated) {
        hdlm_modulate_forward(out, xw, shift, scale, ms, n, d);
        hdlm_modulate_backward(dln, dmod, dmod + d, dout, xw, scale, ms, n, d);
    } else {
        memcpy(out, xw, nd * 4);
        memcpy(dln, dout, nd * 4);
    }
    hdlm_layernorm_backward(din, dw, dln, in, w, mean, rstd, n, d);

    float *g_out = download_bf16(d_out, nd), *g_mean = download_f32(d_mean, n), *g_rstd = download_f32(d_rstd, n);
    float *g_din = download_f32(d_din, nd), *g_dw = download_f32(d_dw, d);
    expect_close("out", g_out, out, nd, BF16_TOL);
    expect_close("mean", g_mean, mean, n, SUM_TOL);
    expect_close("rstd", g_rstd, rstd, n, SUM_TOL);
    expect_close("din (fp32, +=)", g_din, din, nd, SUM_TOL);
    expect_close("dw (fp32, +=)", g_dw, dw, d, SUM_TOL);
    if (modulated) {
        float *g_dmod = download_bf16(d_dmod, (size_t)n * ms);
        expect_close_strided("dshift", g_dmod, dmod, n, d, ms, BF16_TOL);
        expect_close_strided("dscale", g_dmod + d, dmod + d, n, d, ms, BF16_TOL);
        free(g_dmod);
    }
    hdlm_cuda_free(d_in), hdlm_cuda_free(d_w), hdlm_cuda_free(d_din), hdlm_cuda_free(d_dw), hdlm_cuda_free(d_mod);
    hdlm_cuda_free(d_dout), hdlm_cuda_free(d_out), hdlm_cuda_free(d_dmod);
    hdlm_cuda_free(d_mean), hdlm_cuda_free(d_rstd);
    free(in), free(w), free(mod), free(dout), free(din), free(dw), free(xw), free(out), free(mean), free(rstd);
    free(dln), free(dmod), free(g_out), free(g_mean), free(g_rstd), free(g_din), free(g_dw);
}

static void test_layernorm(void **state) {
    (void)state;
    REQUIRE_GPU();
    check_layernorm(67, 96, false);
    check_layernorm(45, 200, true);    // d not a multiple of the warp
    check_layernorm(1000, 768, true);  // DDiT-small width, several row chunks in the dw reduction
    check_layernorm(3, 17, false);
}

// ---- rotary -----------------------------------------------------------------------------------------------------

static void check_rotary(int batch, int len, int heads, int head_dim, hdlm_rotary_mode mode, bool backward) {
    print_message(" rotary %s B=%d L=%d H=%d D=%d %s tables\n", backward ? "backward" : "forward", batch, len, heads,
                  head_dim, mode == HDLM_ROTARY_EXACT ? "exact" : "reference");
    int half = head_dim / 2;
    size_t total = (size_t)batch * len * 3 * heads * head_dim;
    float *inv = hdlm_malloc(half * 4), *cos_t = hdlm_malloc((size_t)len * half * 4);
    float *sin_t = hdlm_malloc((size_t)len * half * 4);
    hdlm_rotary_inv_freq(inv, head_dim);
    hdlm_rotary_tables(cos_t, sin_t, inv, len, head_dim, mode);
    float *qkv = random_floats(total, -2.0f, 2.0f);
    round_bf16(qkv, total);
    hdlm_bf16 *d_qkv = test_cuda_upload_bf16(qkv, total);
    float *d_cos = test_cuda_upload_f32(cos_t, (size_t)len * half), *d_sin = test_cuda_upload_f32(sin_t, (size_t)len * half);
    if (backward) {
        hdlm_cuda_rotary_backward(d_qkv, d_cos, d_sin, batch, len, heads, head_dim, hdlm_cuda_stream());
        hdlm_rotary_backward(qkv, cos_t, sin_t, batch, len, heads, head_dim);
    } else {
        hdlm_cuda_rotary_forward(d_qkv, d_cos, d_sin, batch, len, heads, head_dim, hdlm_cuda_stream());
        hdlm_rotary_forward(qkv, cos_t, sin_t, batch, len, heads, head_dim);
    }
    float *got = download_bf16(d_qkv, total);
    expect_close("qkv (q, k rotated; v kept)", got, qkv, total, BF16_TOL);
    hdlm_cuda_free(d_qkv), hdlm_cuda_free(d_cos), hdlm_cuda_free(d_sin);
    free(inv), free(cos_t), free(sin_t), free(qkv), free(got);
}

static void test_rotary(void **state) {
    (void)state;
    REQUIRE_GPU();
    check_rotary(2, 13, 3, 20, HDLM_ROTARY_EXACT, false);
    check_rotary(2, 13, 3, 20, HDLM_ROTARY_REFERENCE, true);
    check_rotary(1, 64, 4, 64, HDLM_ROTARY_REFERENCE, false);   // D/2 even: bf16 pairs
    check_rotary(3, 5, 2, 6, HDLM_ROTARY_EXACT, true);          // D/2 odd: single values
}

// ---- residual + gate + dropout ----------------------------------------------------------------------------------

// h_out = h + gate ⊙ dropout(y): the GPU must drop exactly the CPU's elements (the same Philox draws).
static void check_residual(int n, int d, float p, bool gated) {
    print_message(" residual n=%d d=%d p=%.2f%s\n", n, d, (double)p, gated ? " gated" : "");
    size_t nd = (size_t)n * d;
    int gs = 6 * d;
    uint64_t key = hdlm_rng_u64(&g_rng);
    float *h = random_floats(nd, -1.0f, 1.0f), *y = random_floats(nd, 0.1f, 1.0f);
    float *gate = random_floats((size_t)n * gs, 0.5f, 1.5f), *dh = random_floats(nd, -1.0f, 1.0f);
    round_bf16(y, nd), round_bf16(gate, (size_t)n * gs);
    float *d_h = test_cuda_upload_f32(h, nd), *d_dh = test_cuda_upload_f32(dh, nd), *d_out = hdlm_cuda_malloc(nd * 4);
    hdlm_bf16 *d_y = test_cuda_upload_bf16(y, nd), *d_gate = test_cuda_upload_bf16(gate, (size_t)n * gs);
    hdlm_bf16 *d_dy = hdlm_cuda_malloc(nd * 2), *d_dgate = hdlm_cuda_malloc((size_t)n * gs * 2);
    hdlm_cuda_memset0(d_dgate, (size_t)n * gs * 2, hdlm_cuda_stream());
    hdlm_cuda_residual_forward(d_out, d_h, d_y, gated ? d_gate : NULL, gs, n, d, p, key, hdlm_cuda_stream());
    hdlm_cuda_residual_backward(d_dy, gated ? d_dgate : NULL, d_dh, d_y, gated ? d_gate : NULL, gs, n, d, p, key,
                                hdlm_cuda_stream());
    float *out = hdlm_malloc(nd * 4), *dy = hdlm_malloc(nd * 4), *dgate = hdlm_calloc((size_t)n * gs, 4);
    hdlm_residual_forward(out, h, y, gated ? gate : NULL, gs, n, d, p, key);
    hdlm_residual_backward(dy, gated ? dgate : NULL, dh, y, gated ? gate : NULL, gs, n, d, p, key);
    float *g_out = download_f32(d_out, nd), *g_dy = download_bf16(d_dy, nd);
    expect_close("h_out", g_out, out, nd, EXACT_TOL);
    expect_close("dy", g_dy, dy, nd, BF16_TOL);
    // The dropped elements: y ≠ 0 everywhere, so an element is dropped exactly when it leaves h unchanged.
    size_t dropped = 0;
    for (size_t i = 0; i < nd; i++) {
        bool cpu_drop = out[i] == h[i], gpu_drop = g_out[i] == h[i];
        if (cpu_drop != gpu_drop) fail_msg("element %zu: dropped on the %s only", i, cpu_drop ? "CPU" : "GPU");
        if ((g_dy[i] == 0.0f) != (dy[i] == 0.0f) && dh[i] != 0.0f) fail_msg("dy[%zu]: zero pattern differs", i);
        dropped += cpu_drop;
    }
    print_message("  dropped %zu of %zu (%.3f, p = %.2f), same elements on both\n", dropped, nd,
                  (double)dropped / nd, (double)p);
    if (p > 0.0f) assert_true(fabs((double)dropped / nd - p) < 0.03);
    else assert_int_equal(dropped, 0);
    if (gated) {
        float *g_dgate = download_bf16(d_dgate, (size_t)n * gs);
        expect_close_strided("dgate", g_dgate, dgate, n, d, gs, BF16_TOL);
        free(g_dgate);
    }
    hdlm_cuda_free(d_h), hdlm_cuda_free(d_dh), hdlm_cuda_free(d_out), hdlm_cuda_free(d_y), hdlm_cuda_free(d_gate);
    hdlm_cuda_free(d_dy), hdlm_cuda_free(d_dgate);
    free(h), free(y), free(gate), free(dh), free(out), free(dy), free(dgate), free(g_out), free(g_dy);
}

static void test_residual_dropout(void **state) {
    (void)state;
    REQUIRE_GPU();
    check_residual(37, 101, 0.1f, true);   // n·d = 3737: the last Philox block is partial; element by element
    check_residual(64, 768, 0.1f, false);  // d % 8 = 0 and aligned rows: 16-byte vectors
    check_residual(24, 64, 0.3f, true);
    check_residual(20, 50, 0.0f, true);
}

// ---- embedding --------------------------------------------------------------------------------------------------

static void check_embedding(int vocab, int n, int d, bool mixed) {
    print_message(" embedding V=%d n=%d d=%d%s\n", vocab, n, d, mixed ? " (γ mix with MASK)" : "");
    size_t nv = (size_t)vocab * d, nd = (size_t)n * d;
    uint32_t mask_id = (uint32_t)vocab - 1;
    float *table = random_floats(nv, -1.0f, 1.0f), *dtable = random_floats(nv, -1.0f, 1.0f);
    float *mix = random_floats(n, 0.0f, 1.0f), *dout = random_floats(nd, -1.0f, 1.0f);
    uint32_t *ids = hdlm_malloc(n * sizeof *ids);
    for (int r = 0; r < n; r++) ids[r] = r % 7 == 0 ? mask_id : (uint32_t)hdlm_rng_below(&g_rng, (uint64_t)vocab);
    float *d_table = test_cuda_upload_f32(table, nv), *d_dtable = test_cuda_upload_f32(dtable, nv), *d_mix = test_cuda_upload_f32(mix, n);
    float *d_dout = test_cuda_upload_f32(dout, nd), *d_out = hdlm_cuda_malloc(nd * 4);
    uint32_t *d_ids = hdlm_cuda_malloc(n * sizeof *ids);
    hdlm_cuda_upload(d_ids, ids, n * sizeof *ids);
    hdlm_cuda_embedding_forward(d_out, d_table, d_ids, mixed ? d_mix : NULL, mask_id, n, d, hdlm_cuda_stream());
    hdlm_cuda_embedding_backward(d_dtable, d_dout, d_ids, mixed ? d_mix : NULL, mask_id, n, d, hdlm_cuda_stream());
    float *out = hdlm_malloc(nd * 4);
    hdlm_embedding_forward(out, table, ids, mixed ? mix : NULL, mask_id, n, d);
    hdlm_embedding_backward(dtable, dout, ids, mixed ? mix : NULL, mask_id, n, d);
    float *g_out = download_f32(d_out, nd), *g_dtable = download_f32(d_dtable, nv);
    expect_close("out", g_out, out, nd, EXACT_TOL);
    expect_close("dtable (fp32, +=)", g_dtable, dtable, nv, SUM_TOL);
    // Deterministic: a second backward from the same start gives the same bits.
    hdlm_cuda_upload(d_dtable, g_dtable, nv * 4);
    hdlm_cuda_embedding_backward(d_dtable, d_dout, d_ids, mixed ? d_mix : NULL, mask_id, n, d, hdlm_cuda_stream());
    float *again = download_f32(d_dtable, nv);
    hdlm_cuda_upload(d_dtable, g_dtable, nv * 4);
    hdlm_cuda_embedding_backward(d_dtable, d_dout, d_ids, mixed ? d_mix : NULL, mask_id, n, d, hdlm_cuda_stream());
    float *again2 = download_f32(d_dtable, nv);
    assert_memory_equal(again, again2, nv * 4);
    hdlm_cuda_free(d_table), hdlm_cuda_free(d_dtable), hdlm_cuda_free(d_mix), hdlm_cuda_free(d_dout);
    hdlm_cuda_free(d_out), hdlm_cuda_free(d_ids);
    free(table), free(dtable), free(mix), free(dout), free(ids), free(out), free(g_out), free(g_dtable), free(again),
        free(again2);
}

static void test_embedding(void **state) {
    (void)state;
    REQUIRE_GPU();
    check_embedding(50, 300, 70, false);
    check_embedding(50, 300, 70, true);
    check_embedding(1000, 2048, 128, true);
}

// ---- γ conditioning ---------------------------------------------------------------------------------------------

static void test_gamma_conditioning(void **state) {
    (void)state;
    REQUIRE_GPU();
    enum { N = 33, DIM = 128, M = 5000 };
    float *sigma = random_floats(N, 0.0f, 20.0f);
    float *d_sigma = test_cuda_upload_f32(sigma, N), *d_mix = hdlm_cuda_malloc(N * 4);
    hdlm_bf16 *d_freq = hdlm_cuda_malloc(N * DIM * 2);
    hdlm_cuda_sigma_sinusoid(d_freq, d_sigma, N, DIM, hdlm_cuda_stream());
    const float gamma = 0.7f;
    hdlm_cuda_gamma_mix(d_mix, d_sigma, gamma, N, hdlm_cuda_stream());
    float freq[N * DIM], mix[N];
    hdlm_sigma_sinusoid(freq, sigma, N, DIM);
    for (int r = 0; r < N; r++) mix[r] = expf(-gamma * sigma[r]);   // src/model/model.c
    float *g_freq = download_bf16(d_freq, N * DIM), *g_mix = download_f32(d_mix, N);
    print_message(" sigma sinusoid, γ mix, SiLU\n");
    expect_close("freq", g_freq, freq, N * DIM, BF16_TOL);
    expect_close("mix", g_mix, mix, N, EXACT_TOL);

    float *x = random_floats(M, -6.0f, 6.0f), *dout = random_floats(M, -1.0f, 1.0f);
    round_bf16(x, M), round_bf16(dout, M);
    hdlm_bf16 *d_x = test_cuda_upload_bf16(x, M), *d_dout = test_cuda_upload_bf16(dout, M);
    hdlm_bf16 *d_y = hdlm_cuda_malloc(M * 2), *d_dx = hdlm_cuda_malloc(M * 2);
    hdlm_cuda_silu_forward(d_y, d_x, M, hdlm_cuda_stream());
    hdlm_cuda_silu_backward(d_dx, d_dout, d_x, M, hdlm_cuda_stream());
    float *y = hdlm_malloc(M * 4), *dx = hdlm_malloc(M * 4);
    hdlm_silu_forward(y, x, M);
    hdlm_silu_backward(dx, dout, x, M);
    float *g_y = download_bf16(d_y, M), *g_dx = download_bf16(d_dx, M);
    expect_close("silu", g_y, y, M, BF16_TOL);
    expect_close("silu backward", g_dx, dx, M, BF16_TOL);
    hdlm_cuda_free(d_sigma), hdlm_cuda_free(d_mix), hdlm_cuda_free(d_freq), hdlm_cuda_free(d_x), hdlm_cuda_free(d_dout);
    hdlm_cuda_free(d_y), hdlm_cuda_free(d_dx);
    free(sigma), free(g_freq), free(g_mix), free(x), free(dout), free(y), free(dx), free(g_y), free(g_dx);
}

// ---- optimizer --------------------------------------------------------------------------------------------------

// Σx² in fp64: every square of a float is exact in fp64, so only the summation order differs from hdlm_grad_norm:
// relative error ≲ n·2^-53 ≈ 1e-10 here.
static void test_sum_squares(void **state) {
    (void)state;
    REQUIRE_GPU();
    const size_t sizes[] = {0, 5, 1000003};
    double *d_out = hdlm_cuda_malloc(sizeof(double));
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t n = sizes[k];
        float *x = random_floats(n, -2.0f, 2.0f);
        float *d_x = test_cuda_upload_f32(x, n ? n : 1);
        hdlm_cuda_sum_squares(d_out, d_x, n, hdlm_cuda_stream());
        double got, again, ref = hdlm_grad_norm(x, n, 1.0);
        hdlm_cuda_synchronize();
        hdlm_cuda_download(&got, d_out, sizeof got);
        hdlm_cuda_sum_squares(d_out, d_x, n, hdlm_cuda_stream());
        hdlm_cuda_synchronize();
        hdlm_cuda_download(&again, d_out, sizeof again);
        ref *= ref;
        print_message(" sum of squares n=%zu: GPU %.17g, CPU %.17g\n", n, got, ref);
        assert_true(fabs(got - ref) <= 1e-9 * ref);
        assert_memory_equal(&got, &again, sizeof got);   // deterministic
        hdlm_cuda_free(d_x);
        free(x);
    }
    hdlm_cuda_free(d_out);
}

// Six AdamW updates (warm-up + cosine learning rates, a gradient scale as clipping would give) against
// hdlm_adamw_update on the same gradients: the same fp32 operations, so parameters and moments agree to a few ulps
// (EXACT_TOL); the bf16 shadow is the rounding of the GPU's parameters, bit for bit. Then the EMA.
static void test_adamw_and_ema(void **state) {
    (void)state;
    REQUIRE_GPU();
    enum { N = 10007, STEPS = 6 };
    hdlm_adamw_config adamw = {0.9, 0.95, 1e-8, 0.1};
    hdlm_lr_schedule sched = {HDLM_LR_WARMUP_COSINE, 3e-4, 0.0, 3, 10, 1};
    float *params = random_floats(N, -1.0f, 1.0f);
    float *m = hdlm_calloc(N, 4), *v = hdlm_calloc(N, 4);
    float *d_params = test_cuda_upload_f32(params, N), *d_m = test_cuda_upload_f32(m, N), *d_v = test_cuda_upload_f32(v, N);
    float *d_grads = hdlm_cuda_malloc(N * 4);
    hdlm_bf16 *d_shadow = hdlm_cuda_malloc(N * 2);
    for (int step = 1; step <= STEPS; step++) {
        float *grads = random_floats(N, -0.01f, 0.01f);
        const float grad_scale = step % 2 ? 1.0f : 0.37f;
        hdlm_cuda_upload(d_grads, grads, N * 4);
        float lr = (float)hdlm_lr_at(&sched, step);
        hdlm_cuda_adamw_update(d_params, d_shadow, d_grads, d_m, d_v, N, &adamw, lr, step, grad_scale,
                               hdlm_cuda_stream());
        hdlm_adamw_update(params, grads, m, v, N, &adamw, (double)lr, step, grad_scale, 1.0, NULL, 0.0);
        free(grads);
    }
    float *g_params = download_f32(d_params, N), *g_m = download_f32(d_m, N), *g_v = download_f32(d_v, N);
    hdlm_bf16 *g_shadow = hdlm_malloc(N * 2);
    hdlm_cuda_download(g_shadow, d_shadow, N * 2);
    print_message(" AdamW, %d steps over %d parameters\n", STEPS, N);
    expect_close("params", g_params, params, N, EXACT_TOL);
    expect_close("m", g_m, m, N, EXACT_TOL);
    expect_close("v", g_v, v, N, EXACT_TOL);
    for (int i = 0; i < N; i++) assert_int_equal(g_shadow[i], hdlm_bf16_from_float(g_params[i]));

    // EMA: the decay of call 2500 of the reference schedule, given to the GPU as a float.
    hdlm_ema_config ema = {0.9999, 2.0 / 3.0, 2000};
    float *shadow = random_floats(N, -1.0f, 1.0f);
    float *d_ema = test_cuda_upload_f32(shadow, N);
    hdlm_cuda_ema_update(d_ema, d_params, N, (float)hdlm_ema_decay(&ema, 2500), hdlm_cuda_stream());
    hdlm_ema_update(shadow, g_params, N, &ema, 2500);
    float *g_ema = download_f32(d_ema, N);
    expect_close("EMA shadow", g_ema, shadow, N, EXACT_TOL);
    hdlm_cuda_free(d_params), hdlm_cuda_free(d_m), hdlm_cuda_free(d_v), hdlm_cuda_free(d_grads);
    hdlm_cuda_free(d_shadow), hdlm_cuda_free(d_ema);
    free(params), free(m), free(v), free(g_params), free(g_m), free(g_v), free(g_shadow), free(shadow), free(g_ema);
}

#else

// Built without nvcc: the GPU comparisons cannot even be compiled; say so as a skipped test.
static void test_gpu_ops(void **state) {
    (void)state;
    print_message("skipped: %s\n", hdlm_cuda_unavailable_reason());
    skip();
}

#endif   // HDLM_HAVE_CUDA

int main(void) {
#ifdef HDLM_HAVE_CUDA
    hdlm_rng_init(&g_rng, 0x5eedc0dau);
#endif
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bf16_host_rounding),
        cmocka_unit_test(test_runtime_availability),
#ifdef HDLM_HAVE_CUDA
        cmocka_unit_test(test_runtime_memory_and_conversions),
        cmocka_unit_test(test_linear_forward),
        cmocka_unit_test(test_linear_gelu_is_tanh_form),
        cmocka_unit_test(test_linear_backward),
        cmocka_unit_test(test_layernorm),
        cmocka_unit_test(test_rotary),
        cmocka_unit_test(test_residual_dropout),
        cmocka_unit_test(test_embedding),
        cmocka_unit_test(test_gamma_conditioning),
        cmocka_unit_test(test_sum_squares),
        cmocka_unit_test(test_adamw_and_ema),
#else
        cmocka_unit_test(test_gpu_ops),
#endif
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

// AdamW, learning-rate schedules, clipping and EMA against PyTorch (tests/reference/optim_golden.py) and method §8.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hdlm/common.h"
#include "train/optim.h"

static void *read_golden(const char *dir, const char *name, size_t bytes) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    char *data;
    size_t len;
    if (hdlm_read_file(path, &data, &len) != 0) fail_msg("%s", hdlm_last_error());
    assert_int_equal(len, bytes);
    return data;
}

// Six AdamW updates with clipping and a warm-up + cosine schedule, compared with torch.optim.AdamW in fp32.
// Same fp32 operations in the same order: agreement to a few ulps (relative 1e-6 of the parameter scale).
static void test_adamw_matches_pytorch(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("optim-golden");
    assert_int_equal(test_run("/usr/bin/python3 %s/tests/reference/optim_golden.py %s", HDLM_SOURCE_DIR, dir), 0);
    enum { N = 1000, STEPS = 6 };
    float *params = read_golden(dir, "params0.f32", N * 4), *grads = read_golden(dir, "grads.f32", STEPS * N * 4);
    float *expected = read_golden(dir, "params.f32", STEPS * N * 4);
    float *m_expected = read_golden(dir, "m.f32", N * 4), *v_expected = read_golden(dir, "v.f32", N * 4);
    double *lr_expected = read_golden(dir, "lr.f64", STEPS * 8), *norm_expected = read_golden(dir, "norm.f64", STEPS * 8);
    float *m = calloc(N, 4), *v = calloc(N, 4);
    hdlm_adamw_config adamw = {0.9, 0.95, 1e-8, 0.1};
    hdlm_lr_schedule sched = {HDLM_LR_WARMUP_COSINE, 3e-4, 0.0, 3, 10, 1};
    for (int s = 0; s < STEPS; s++) {
        float *g = grads + (size_t)s * N;
        double norm = hdlm_grad_norm(g, N, 1.0);
        assert_true(fabs(norm - norm_expected[s]) <= 1e-6 * norm_expected[s]);
        double lr = hdlm_lr_at(&sched, s);
        assert_true(fabs(lr - lr_expected[s]) <= 1e-15);
        // the trainer's way: the clipping factor applied in AdamW's pass
        hdlm_adamw_update(params, g, m, v, N, &adamw, lr, s + 1, 1.0, hdlm_grad_clip_factor(norm, 1.0), NULL, 0.0);
        for (int i = 0; i < N; i++) {
            float want = expected[(size_t)s * N + i];
            if (fabsf(params[i] - want) > 1e-6f * 0.02f + 1e-6f * fabsf(want))
                fail_msg("update %d, parameter %d: %.9g, PyTorch %.9g", s + 1, i, params[i], want);
        }
    }
    // Moments: relative to the largest moment, since single elements can cancel to near zero.
    float m_max = 0, v_max = 0;
    for (int i = 0; i < N; i++) m_max = fmaxf(m_max, fabsf(m_expected[i])), v_max = fmaxf(v_max, v_expected[i]);
    for (int i = 0; i < N; i++) {
        if (fabsf(m[i] - m_expected[i]) > 1e-6f * m_max) fail_msg("m[%d] = %.9g, PyTorch %.9g", i, m[i], m_expected[i]);
        if (fabsf(v[i] - v_expected[i]) > 1e-6f * v_max) fail_msg("v[%d] = %.9g, PyTorch %.9g", i, v[i], v_expected[i]);
    }
    free(params), free(grads), free(expected), free(m_expected), free(v_expected), free(lr_expected);
    free(norm_expected), free(m), free(v);
}

// Closed forms of method §8.2 at chosen points.
static void test_lr_schedules(void **state) {
    (void)state;
    hdlm_lr_schedule eps = {HDLM_LR_COSINE, 3e-4, 4e-5, 0, 1000000, 2};
    assert_true(fabs(hdlm_lr_at(&eps, 0) - 3e-4) < 1e-18);
    assert_true(fabs(hdlm_lr_at(&eps, 250000) - (4e-5 + 2.6e-4 * 0.5)) < 1e-15);   // e = 500k: halfway
    assert_true(fabs(hdlm_lr_at(&eps, 125000) - 2.619e-4) < 1e-7);                // method §8.2: final ε lr ≈ 2.619e-4
    assert_true(fabs(hdlm_lr_at(&eps, 500000) - 4e-5) < 1e-18);
    hdlm_lr_schedule gamma = {HDLM_LR_WARMUP_COSINE, 3e-4, 0, 10000, 1000000, 4};
    assert_true(fabs(hdlm_lr_at(&gamma, 1250) - 1.5e-4) < 1e-15);                 // e = 5000: half of warm-up
    assert_true(fabs(hdlm_lr_at(&gamma, 125000) / 3e-4 - 0.508) < 1e-3);           // method §8.2: final factor ≈ 0.508
    hdlm_lr_schedule lin = {HDLM_LR_LINEAR, 1e-3, 0, 0, 100, 1};
    assert_true(fabs(hdlm_lr_at(&lin, 25) - 7.5e-4) < 1e-15);
    assert_true(hdlm_lr_at(&lin, 200) == 0.0);
}

// The norm of the gradients times a scale, and the clipping factor it gives.
static void test_grad_norm_and_clip(void **state) {
    (void)state;
    enum { N = 100003 };   // not a multiple of the summation block
    float *g = malloc(N * sizeof *g);
    double want = 0, want_scaled = 0;
    for (int i = 0; i < N; i++) {
        g[i] = (float)((i % 7) - 3) * 0.01f;
        float scaled = g[i] * (float)(1.0 / 3);
        want += (double)g[i] * g[i], want_scaled += (double)scaled * scaled;
    }
    want = sqrt(want), want_scaled = sqrt(want_scaled);
    double norm = hdlm_grad_norm(g, N, 1.0);
    assert_true(fabs(norm - want) < 1e-9 * want);
    assert_true(hdlm_grad_norm(g, N, 2.0) == norm);   // a factor of 1 or more: the gradients as they are
    assert_true(fabs(hdlm_grad_norm(g, N, 1.0 / 3) - want_scaled) < 1e-12 * want_scaled);
    assert_true(fabs(hdlm_grad_clip_factor(norm, 1.0) - 1.0 / (want + 1e-6)) < 1e-12);
    assert_true(hdlm_grad_clip_factor(0.5, 1.0) == 1.0);   // below the threshold: unchanged
    assert_true(hdlm_grad_clip_factor(norm, 0.0) == 1.0);  // max_norm 0: clipping off
    g[17] = NAN;
    assert_true(isnan(hdlm_grad_norm(g, N, 1.0)));
    g[17] = INFINITY;
    assert_false(isfinite(hdlm_grad_norm(g, N, 0.5)));
    free(g);
}

// The norm's bits are those of its stated order (src/train/optim.h), on 1 and 2 threads: two whole groups of blocks
// that run side by side, then a short group and a partial block; unscaled and scaled by 1/3.
static void test_grad_norm_order(void **state) {
    (void)state;
    const size_t n = 19 * HDLM_GRAD_NORM_BLOCK + 77;
    float *g = malloc(n * sizeof *g);
    for (size_t i = 0; i < n; i++) g[i] = (float)((i * 2654435761u) % 100003) * 1e-5f - 0.5f;
    for (int k = 0; k < 2; k++) {
        const double scale = k ? 1.0 / 3 : 1.0;
        double total = 0;
        for (size_t b0 = 0; b0 < n; b0 += HDLM_GRAD_NORM_BLOCK) {
            double s = 0;
            for (size_t i = b0; i < n && i < b0 + HDLM_GRAD_NORM_BLOCK; i++) {
                float x = g[i] * (float)scale;
                s += (double)x * x;
            }
            total += s;
        }
        double want = sqrt(total);
        for (int threads = 1; threads <= 2; threads++) {
            omp_set_num_threads(threads);
            double got = hdlm_grad_norm(g, n, scale);
            assert_memory_equal(&got, &want, sizeof got);
        }
    }
    free(g);
}

// Method §8.5: the shadow copies the weights until call 2001; d = 0.999 near 31.6k calls; 0.99989987 at 1e6.
static void test_ema_decay_and_update(void **state) {
    (void)state;
    hdlm_ema_config c = {0.9999, 2.0 / 3.0, 2000};
    assert_true(hdlm_ema_decay(&c, 1) == 0.0 && hdlm_ema_decay(&c, 2001) == 0.0);
    assert_true(fabs(hdlm_ema_decay(&c, 2002) - (1 - pow(2.0, -2.0 / 3))) < 1e-15);
    assert_true(fabs(hdlm_ema_decay(&c, 1000000) - 0.99989987) < 1e-8);
    assert_true(hdlm_ema_decay(&c, 2000 + 31624) > 0.999 && hdlm_ema_decay(&c, 2000 + 31600) < 0.999);
    float shadow[3] = {1, 2, 3}, params[3] = {0, 0, 0};
    hdlm_ema_update(shadow, params, 3, &c, 5);   // warm-up: shadow <- params
    assert_true(shadow[0] == 0 && shadow[2] == 0);
    params[0] = 1;
    hdlm_ema_update(shadow, params, 3, &c, 2003);   // j = 2: d = 1 - 3^(-2/3)
    assert_true(fabsf(shadow[0] - (float)pow(3.0, -2.0 / 3)) < 1e-7f);
}

// The trainer's update in one pass (both gradient factors, AdamW, EMA) gives the bits of the passes it replaced,
// one after the other, on 1 and 2 threads, and leaves the gradients as they were.
static void test_adamw_one_pass_equals_passes(void **state) {
    (void)state;
    enum { N = 10007 };   // not a multiple of the vector width
    hdlm_adamw_config adamw = {0.9, 0.999, 1e-8, 0.03};
    float *init = malloc(5 * N * sizeof *init), *a = malloc(5 * N * sizeof *a), *b = malloc(5 * N * sizeof *b);
    for (size_t i = 0; i < 5 * (size_t)N; i++) init[i] = (float)((i * 2654435761u) % 100003) * 2e-5f - 1.0f;
    for (int i = 0; i < N; i++) init[3 * N + i] = fabsf(init[3 * N + i]);   // v >= 0
    const double scales[] = {1.0 / 3, 1.0}, clips[] = {0.37, 1.0, 1.5}, decays[] = {0.999, 0.0};
    for (int threads = 1; threads <= 2; threads++)
        for (int k = 0; k < 12; k++) {
            double scale = scales[k % 2], clip = clips[k / 2 % 3], decay = decays[k / 6];
            omp_set_num_threads(threads);
            memcpy(a, init, 5 * N * sizeof *a);   // params, grads, m, v, ema
            memcpy(b, init, 5 * N * sizeof *b);
            for (int i = 0; i < N; i++) {   // the gradients scaled in place, then clipped in place
                if (scale < 1.0) a[N + i] *= (float)scale;
                if (clip < 1.0) a[N + i] *= (float)clip;
            }
            hdlm_adamw_update(a, a + N, a + 2 * N, a + 3 * N, N, &adamw, 1e-3, 7, 1.0, 1.0, NULL, 0.0);
            hdlm_ema_blend(a + 4 * N, a, N, decay);
            hdlm_adamw_update(b, b + N, b + 2 * N, b + 3 * N, N, &adamw, 1e-3, 7, scale, clip, b + 4 * N, decay);
            assert_memory_equal(b + N, init + N, N * sizeof *b);   // gradients untouched
            for (int j = 0; j < 5; j++)
                if (j != 1) assert_memory_equal(a + (size_t)j * N, b + (size_t)j * N, N * sizeof *a);
        }
    free(init), free(a), free(b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_adamw_matches_pytorch),
        cmocka_unit_test(test_lr_schedules),
        cmocka_unit_test(test_grad_norm_and_clip),
        cmocka_unit_test(test_grad_norm_order),
        cmocka_unit_test(test_ema_decay_and_update),
        cmocka_unit_test(test_adamw_one_pass_equals_passes),
    };
    return cmocka_run_group_tests_name("optim", tests, NULL, NULL);
}

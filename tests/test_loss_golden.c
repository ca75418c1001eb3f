// The ε and γ losses and their gradients against an independent PyTorch float64 implementation
// (tests/reference/losses.py, gradients by autograd) at V = 50258.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hdlm/diffusion.h"
#include "hdlm/tokenizer.h"
#include "loss_check.h"

typedef struct {
    int mode, B, L, V, width;
    double params[5];   // epsilon, lambda, gamma, diffusion_weight, ce_weight
    const float *out;
    int32_t *x0, *xt, *kind, *cls, *n_set;
    float *t, *weight;
} golden_case;

static void write_array(FILE *f, const void *data, size_t bytes) { assert_int_equal(fwrite(data, 1, bytes, f), bytes); }

static const char *case_path(const char *dir, const char *file) {
    static char paths[4][4200];
    static int next;
    char *p = paths[next++ % 4];
    snprintf(p, 4200, "%s/%s", dir, file);
    return p;
}

static void write_case(const golden_case *c, const char *path) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    int32_t header[5] = {c->mode, c->B, c->L, c->V, c->width};
    size_t n = (size_t)c->B * c->L;
    write_array(f, header, sizeof header);
    write_array(f, c->params, sizeof c->params);
    write_array(f, c->out, n * c->V * sizeof *c->out);
    write_array(f, c->x0, n * 4);
    write_array(f, c->xt, n * 4);
    write_array(f, c->kind, n * 4);
    write_array(f, c->cls, n * 4);
    write_array(f, c->n_set, (size_t)c->B * 4);
    write_array(f, c->t, n * 4);
    write_array(f, c->weight, n * 4);
    assert_int_equal(fclose(f), 0);
}

// The reference's loss, diffusion term, CE term and gradient for a case of `n` outputs (caller frees).
static double *read_result(const char *path, size_t n) {
    double *result = hdlm_malloc((3 + n) * sizeof *result);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fread(result, sizeof *result, 3 + n, f), 3 + n);
    fclose(f);
    return result;
}

static void assert_close(double got, double expect, double tol, const char *what) {
    if (fabs(got - expect) > tol * (1 + fabs(expect))) {
        print_error("%s: hdlm %.12g, PyTorch %.12g\n", what, got, expect);
        fail();
    }
}

static void assert_gradient(const float *grad, const double *ref, size_t n) {
    double scale = 0;
    for (size_t k = 0; k < n; k++) scale = fabs(ref[k]) > scale ? fabs(ref[k]) : scale;
    for (size_t k = 0; k < n; k++)
        if (fabs(grad[k] - ref[k]) > 1e-6 * scale + 1e-5 * fabs(ref[k])) {
            print_error("gradient %zu: hdlm %.9g, PyTorch %.9g\n", k, grad[k], ref[k]);
            fail();
        }
}

static void alloc_case(golden_case *c, int mode, int B, int L, int V, int width) {
    memset(c, 0, sizeof *c);
    c->mode = mode;
    c->B = B;
    c->L = L;
    c->V = V;
    c->width = width;
    size_t n = (size_t)B * L;
    c->x0 = hdlm_calloc(n, 4);
    c->xt = hdlm_calloc(n, 4);
    c->kind = hdlm_calloc(n, 4);
    c->cls = hdlm_calloc(n, 4);
    c->n_set = hdlm_calloc((size_t)B, 4);
    c->t = hdlm_calloc(n, 4);
    c->weight = hdlm_calloc(n, 4);
}

static void free_case(golden_case *c) {
    free(c->x0);
    free(c->xt);
    free(c->kind);
    free(c->cls);
    free(c->n_set);
    free(c->t);
    free(c->weight);
}

// What hdlm computed for a case, to compare once the reference has run.
typedef struct {
    double loss, diffusion, ce;
    float *grad;
    size_t n;
} hdlm_result;

// ε hybrid loss (method §4.3) on a block-AR step and a plain-diffusion step, one per sequence; writes the case file.
static hdlm_result epsilon_case(int V, const char *path) {
    const int B = 2, L = 12;
    hdlm_schedule s1, s2;
    assert_int_equal(hdlm_schedule_init(&s1, HDLM_SCHEDULE_BLOCK, L, 4, 3, HDLM_SAMPLING_EPS, 0, 0), 0);
    assert_int_equal(hdlm_schedule_init(&s2, HDLM_SCHEDULE_BLOCK, L, L, 3, HDLM_SAMPLING_EPS, 0, 0), 0);
    hdlm_step st1, st2;
    hdlm_step_alloc(&st1, L);
    hdlm_step_alloc(&st2, L);
    assert_int_equal(hdlm_schedule_step(&s1, 5, &st1), 0);
    assert_int_equal(hdlm_schedule_step(&s2, 2, &st2), 0);
    const hdlm_step *steps[] = {&st1, &st2};
    golden_case c;
    alloc_case(&c, 0, B, L, V, 4);
    uint32_t x0[24];
    for (int r = 0; r < B * L; r++) x0[r] = (uint32_t)((r * 7919) % (V - 1));
    float *out = hdlm_malloc((size_t)B * L * V * sizeof *out), *grad = hdlm_malloc((size_t)B * L * V * sizeof *grad);
    random_outputs(out, (size_t)B * L * V, 3.0, 17);
    hdlm_eps_config cfg = {HDLM_EPS_LOSS_HYBRID, 0.3, 0.7};
    hdlm_corruption cor;
    hdlm_corruption_alloc(&cor, B, L);
    hdlm_epsilon_corrupt(&cfg, steps, x0, V, 5, &cor);
    int kinds[4] = {0};
    for (int r = 0; r < B * L; r++) {
        c.x0[r] = (int32_t)x0[r];
        c.kind[r] = cor.kind[r];
        c.t[r] = steps[r / L]->t[r % L];
        kinds[cor.kind[r]]++;
    }
    for (int k = 0; k < 4; k++) assert_true(kinds[k] > 0);   // every case is exercised
    c.params[0] = 0.3;
    c.params[1] = 0.7;
    c.out = out;
    hdlm_result res = {hdlm_corruption_loss(&cor, x0, out, V, V, grad), 0, 0, grad, (size_t)B * L * V};
    write_case(&c, path);
    free(out);
    hdlm_corruption_free(&cor);
    free_case(&c);
    hdlm_step_free(&st1);
    hdlm_step_free(&st2);
    hdlm_schedule_free(&s1);
    hdlm_schedule_free(&s2);
    return res;
}

// γ loss (method §5.6) on a step with three settled blocks, active and worthless positions, and a plain-diffusion step;
// outputs are realistic log-scores (the scale_by_sigma shift plus noise); every SE case occurs.
static hdlm_result gamma_case(int V, const char *path) {
    const int B = 2, L = 10, N = V - 1;
    hdlm_schedule s1, s2;
    assert_int_equal(hdlm_schedule_init(&s1, HDLM_SCHEDULE_BLOCK, L, 2, 3, HDLM_SAMPLING_EPS, 0, 0), 0);
    assert_int_equal(hdlm_schedule_init(&s2, HDLM_SCHEDULE_BLOCK, L, L, 3, HDLM_SAMPLING_EPS, 0, 0), 0);
    hdlm_step st1, st2;
    hdlm_step_alloc(&st1, L);
    hdlm_step_alloc(&st2, L);
    assert_int_equal(hdlm_schedule_step(&s1, 11, &st1), 0);
    assert_int_equal(hdlm_schedule_step(&s2, 2, &st2), 0);
    const hdlm_step *steps[] = {&st1, &st2};
    golden_case c;
    alloc_case(&c, 1, B, L, V, 2);
    uint32_t x0[20], xt[20];
    for (int r = 0; r < B * L; r++) x0[r] = (uint32_t)((r * 7919) % N);
    for (int r = 0; r < B * L; r++) xt[r] = r % 3 == 0 ? (uint32_t)N : (r % 3 == 1 ? x0[r] : (x0[r] + 1) % N);
    float *out = hdlm_malloc((size_t)B * L * V * sizeof *out), *grad = hdlm_malloc((size_t)B * L * V * sizeof *grad);
    random_outputs(out, (size_t)B * L * V, 1.0, 23);
    for (int r = 0; r < B * L; r++) {
        const hdlm_step *st = steps[r / L];
        int i = r % L;
        float shift = (float)hdlm_gamma_log_score_shift(hdlm_loglinear_sigma(st->t[i]), V);
        for (int y = 0; y < V; y++) out[(size_t)r * V + y] += shift;
        c.x0[r] = (int32_t)x0[r];
        c.xt[r] = (int32_t)xt[r];
        c.cls[r] = st->cls[i];
        c.t[r] = st->t[i];
        c.weight[r] = st->weight[i];
    }
    c.n_set[0] = st1.n_set;
    c.n_set[1] = st2.n_set;
    hdlm_gamma_config cfg = {0.05, 0.7, 1.3};
    c.params[2] = 0.05;
    c.params[3] = 0.7;
    c.params[4] = 1.3;
    c.out = out;
    hdlm_gamma_terms terms;
    double loss = hdlm_gamma_loss(&cfg, steps, out, xt, x0, B, V, grad, &terms);
    hdlm_result res = {loss, terms.diffusion, terms.ce, grad, (size_t)B * L * V};
    write_case(&c, path);
    free(out);
    free_case(&c);
    hdlm_step_free(&st1);
    hdlm_step_free(&st2);
    hdlm_schedule_free(&s1);
    hdlm_schedule_free(&s2);
    return res;
}

// Both losses at V = 50258 against one run of the reference.
static void test_losses_match_pytorch(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("loss_golden");
    const char *eps_in = case_path(dir, "eps.bin"), *eps_out = case_path(dir, "eps.out");
    const char *gamma_in = case_path(dir, "gamma.bin"), *gamma_out = case_path(dir, "gamma.out");
    hdlm_result eps = epsilon_case(HDLM_MODEL_VOCAB, eps_in);
    hdlm_result gamma = gamma_case(HDLM_MODEL_VOCAB, gamma_in);
    assert_int_equal(test_run("/usr/bin/python3 %s/tests/reference/losses.py %s %s %s %s", HDLM_SOURCE_DIR, eps_in,
                              eps_out, gamma_in, gamma_out), 0);
    double *ref = read_result(eps_out, eps.n);
    assert_close(eps.loss, ref[0], 2e-7, "ε loss");   // position weights are stored as float
    assert_gradient(eps.grad, ref + 3, eps.n);
    free(ref);
    ref = read_result(gamma_out, gamma.n);
    assert_close(gamma.loss, ref[0], 1e-10, "γ loss");
    assert_close(gamma.diffusion, ref[1], 1e-10, "γ diffusion term");
    assert_close(gamma.ce, ref[2], 1e-10, "γ CE term");
    assert_true(gamma.ce > 0);
    assert_gradient(gamma.grad, ref + 3, gamma.n);
    free(ref);
    free(eps.grad);
    free(gamma.grad);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_losses_match_pytorch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

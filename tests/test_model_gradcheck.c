// DDiT backward against central finite differences of the forward pass, for every tensor (up to 48 elements each)
// of a tiny model of each family, in training mode (dropout 0.2 with a fixed key: the masks are a fixed function of
// the key), under a hyperschedule mask with settled, active and worthless positions.
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

#include "hdlm/blas.h"
#include "hdlm/common.h"
#include "hdlm/model.h"
#include "hdlm/rng.h"
#include "harness.h"

enum { B = 2, L = 7 };

typedef struct {
    hdlm_model *m;
    hdlm_model_input in;
    double *proj;   // the loss is Σ proj ⊙ out (double), so d loss / d out = proj
} gradcheck_problem;

static double problem_loss(gradcheck_problem *p) {
    assert_int_equal(hdlm_model_forward(p->m, &p->in), 0);
    size_t n = (size_t)B * L * p->m->config.vocab;
    double loss = 0.0;
    for (size_t i = 0; i < n; i++) loss += p->proj[i] * (double)p->m->out[i];
    return loss;
}

static void gradcheck_family(hdlm_family family) {
    hdlm_model_config c = hdlm_model_config_ddit_small(family);
    c.width = 8;
    c.n_layers = 2;
    c.n_heads = 2;
    c.mlp_ratio = 2;
    c.cond_dim = 4;
    c.vocab = 11;
    c.max_length = L;
    c.dropout = 0.2f;
    c.gamma = 0.1f;
    hdlm_model *m;
    assert_int_equal(hdlm_model_create(&m, &c), 0);
    hdlm_rng rng;
    hdlm_rng_init(&rng, hdlm_rng_key(17, (uint64_t)family, 0, HDLM_RNG_INIT));
    // parameters of order one (the §7.6 init zeroes the head and adaLN, which would hide every gradient below them)
    for (size_t i = 0; i < m->n_params; i++) m->params[i] = 0.6f * (2.0f * hdlm_rng_uniform(&rng) - 1.0f);
    static uint32_t tokens[B * L];
    static float sigma[B * L];
    for (int i = 0; i < B * L; i++) {
        tokens[i] = (uint32_t)hdlm_rng_below(&rng, (uint64_t)c.vocab);
        sigma[i] = 0.1f + 2.0f * hdlm_rng_uniform(&rng);
    }
    // settled [0, 2), active [2, 4] (causal among themselves), worthless [5, 7)
    hdlm_attn_mask mask = {L, 2, 4, HDLM_CONTEXT_CAUSAL, HDLM_BLOCK_CAUSAL, 2, 0};
    size_t n_out = (size_t)B * L * c.vocab;
    gradcheck_problem p = {m,
                           {tokens, sigma, &mask, B, L, true, hdlm_rng_key(1, 0, 3, HDLM_RNG_DROPOUT), 0, NULL, NULL},
                           hdlm_malloc(n_out * sizeof(double))};
    float *dout = hdlm_malloc(n_out * sizeof(float));
    for (size_t i = 0; i < n_out; i++) {
        p.proj[i] = 2.0 * hdlm_rng_uniform_double(&rng) - 1.0;
        dout[i] = (float)p.proj[i];
    }
    problem_loss(&p);
    hdlm_model_zero_grad(m);
    hdlm_model_backward(m, dout);

    // Central differences in fp32 parameters: step 1e-2 balances truncation (O(h²) ~ 1e-4 relative) against rounding
    // of the fp32 forward (~1e-7 · |loss| / h ~ 1e-4). Per tensor, max |fd − analytic| must stay below 1 % of the
    // tensor's largest gradient (measured: at most 0.5 %, on the small σ-MLP gradients; a wrong formula is off by
    // tens of percent).
    double worst = 0.0;
    const char *worst_name = "";
    size_t checked = 0;
    for (int t = 0; t < m->n_tensors; t++) {
        const hdlm_tensor *x = &m->tensors[t];
        if (!x->trainable) continue;
        double err = 0.0, scale = 0.0;
        size_t step = x->numel > 48 ? x->numel / 48 : 1;   // at most ~48 evenly spread elements per tensor
        for (size_t k = 0; k < x->numel; k += step) {
            float *w = m->params + x->offset + k;
            float saved = *w, h = 1e-2f;
            *w = saved + h;
            float up = *w;
            double lp = problem_loss(&p);
            *w = saved - h;
            float down = *w;
            double lm = problem_loss(&p);
            *w = saved;
            double fd = (lp - lm) / ((double)up - (double)down);
            double an = m->grads[x->offset + k];
            checked++;
            err = fmax(err, fabs(fd - an));
            scale = fmax(scale, fabs(an));
        }
        double rel = err / fmax(scale, 1e-6);
        if (rel > 1e-2) printf("  %s: max |fd - analytic| %.2e, max |analytic| %.2e\n", x->name, err, scale);
        assert_true(scale > 0.0);
        assert_true(rel <= 1e-2);
        if (rel > worst) {
            worst = rel;
            worst_name = x->name;
        }
    }
    printf("  %s: %zu parameters in %d tensors checked, worst relative error %.2e (%s)\n", hdlm_family_name(family),
           checked, m->n_tensors - 1, worst, worst_name);
    free(dout);
    free(p.proj);
    hdlm_model_free(m);
}

static void test_gradcheck_epsilon(void **state) {
    (void)state;
    gradcheck_family(HDLM_FAMILY_EPSILON);
}

static void test_gradcheck_gamma(void **state) {
    (void)state;
    gradcheck_family(HDLM_FAMILY_GAMMA);
}

int main(void) {
    // One thread: thousands of tiny forwards, where thread start-up would dominate on a shared machine.
    omp_set_num_threads(1);
    hdlm_blas_init(1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gradcheck_epsilon),
        cmocka_unit_test(test_gradcheck_gamma),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

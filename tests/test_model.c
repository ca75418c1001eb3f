// DDiT model (method §7): forward outputs, loss and every parameter gradient against the independent float64 PyTorch
// model of tests/reference/ddit.py for both families under full, block-causal and hyperschedule masks; parameter
// counts of the paper configurations; the initial loss ln V; refusal of bad configurations and inputs.
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
#include "model/layers.h"
#include "hdlm/rng.h"
#include "harness.h"

// ---- helpers ---------------------------------------------------------------------------------------------------

static hdlm_model_config small_config(hdlm_family family, hdlm_rotary_mode rotary) {
    hdlm_model_config c = hdlm_model_config_ddit_small(family);
    c.width = 32;
    c.n_layers = 2;
    c.n_heads = 4;
    c.mlp_ratio = 4;
    c.cond_dim = 16;
    c.vocab = 61;
    c.max_length = 128;
    c.dropout = 0.0f;
    c.gamma = 0.05f;   // larger than the paper's 0.01 so that the MASK mix carries a visible gradient
    c.rotary = rotary;
    return c;
}

// Mean cross-entropy of out[N, V] against targets; writes d(loss)/d(out) into dout.
static double cross_entropy(const float *out, const uint32_t *targets, int n, int vocab, float *dout) {
    double loss = 0.0;
    for (int r = 0; r < n; r++) {
        const float *o = out + (size_t)r * vocab;
        double mx = -INFINITY, sum = 0.0;
        for (int v = 0; v < vocab; v++) mx = o[v] > mx ? o[v] : mx;
        for (int v = 0; v < vocab; v++) sum += exp(o[v] - mx);
        loss += mx + log(sum) - o[targets[r]];
        for (int v = 0; v < vocab; v++)
            dout[(size_t)r * vocab + v] = (float)((exp(o[v] - mx) / sum - (v == (int)targets[r])) / n);
    }
    return loss / n;
}

static void write_raw(const char *dir, const char *file, const void *data, size_t bytes) {
    char path[4300];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    test_write_file(path, data, bytes);
}

static double *read_f64(const char *dir, const char *file, size_t count) {
    char path[4300];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("the reference did not write %s", path);
    double *x = hdlm_malloc(count * sizeof(double) + 1);
    size_t got = fread(x, sizeof(double), count + 1, f);
    fclose(f);
    if (got != count) fail_msg("%s: %zu values, expected %zu", path, got, count);
    return x;
}

static const char *context_name(hdlm_context_type t) {
    return t == HDLM_CONTEXT_FULL ? "full" : t == HDLM_CONTEXT_CAUSAL ? "causal" : "block_causal";
}

// ---- PyTorch comparison ----------------------------------------------------------------------------------------

enum { CASE_BATCH = 2, CASE_LENGTH = 70, N_CASES = 9 };

typedef struct {
    hdlm_family family;
    hdlm_rotary_mode rotary;
    hdlm_attn_mask mask;
    const char *label;
    char dir[4096];
    hdlm_model *model;
    uint32_t tokens[CASE_BATCH * CASE_LENGTH], targets[CASE_BATCH * CASE_LENGTH];
    float sigma[CASE_BATCH * CASE_LENGTH];
    double loss;
} model_case;

static hdlm_attn_mask case_mask(int kind) {
    hdlm_attn_mask m = hdlm_mask_full(CASE_LENGTH);
    if (kind == 1) {   // block-causal: everything settled, ω = 16
        m.n_set = CASE_LENGTH;
        m.a_end = CASE_LENGTH - 1;
        m.context = HDLM_CONTEXT_BLOCK_CAUSAL;
        m.block_size = 16;
    } else if (kind == 2) {   // hyperschedule: settled [0,24), active [24,50], worthless after; block full
        m.n_set = 24;
        m.a_end = 50;
        m.context = HDLM_CONTEXT_BLOCK_CAUSAL;
        m.block = HDLM_BLOCK_FULL;
        m.block_size = 16;
    } else if (kind == 4) {   // next-token AR: causal attention over every position
        m = hdlm_mask_causal(CASE_LENGTH);
    } else if (kind == 3) {   // hyperschedule: causal context, causal block, worthless tail [61, 70)
        m.n_set = 20;
        m.a_end = 60;
        m.context = HDLM_CONTEXT_CAUSAL;
        m.block = HDLM_BLOCK_CAUSAL;
        m.block_size = 16;
    }
    return m;
}

static void case_prepare(model_case *c, int index) {
    static const char *labels[5] = {"full", "block-causal", "hyperschedule-block-full", "hyperschedule-causal",
                                    "AR (causal, next token)"};
    int kind = index < 8 ? index % 4 : 4;   // case 8: the AR baseline, ε network
    c->family = index < 4 || index == 8 ? HDLM_FAMILY_EPSILON : HDLM_FAMILY_GAMMA;
    c->rotary = (index % 2) ? HDLM_ROTARY_REFERENCE : HDLM_ROTARY_EXACT;
    c->mask = case_mask(kind);
    c->label = labels[kind];
    char name[64];
    snprintf(name, sizeof name, "model_case_%d", index);
    snprintf(c->dir, sizeof c->dir, "%s", test_tmp_dir(name));

    hdlm_model_config cfg = small_config(c->family, c->rotary);
    assert_int_equal(hdlm_model_create(&c->model, &cfg), 0);
    hdlm_model *m = c->model;
    test_model_randomize(m, 100 + (uint64_t)index);
    hdlm_rng rng;
    hdlm_rng_init(&rng, hdlm_rng_key(7, (uint64_t)index, 0, HDLM_RNG_DATA));
    int n = CASE_BATCH * CASE_LENGTH;
    for (int i = 0; i < n; i++) {
        // γ inputs include the MASK id (the last one) so its embedding row gets both gradient paths
        c->tokens[i] = (uint32_t)hdlm_rng_below(&rng, (uint64_t)cfg.vocab);
        if (i % 5 == 0) c->tokens[i] = (uint32_t)(cfg.vocab - 1);
        c->targets[i] = (uint32_t)hdlm_rng_below(&rng, (uint64_t)cfg.vocab - 1);
        c->sigma[i] = 0.05f + 5.0f * hdlm_rng_uniform(&rng);   // both sides of the expm1 switch at 0.5
    }
    if (kind == 4) {   // inputs shifted right after a start token, targets the sequence itself (hdlm_ar_inputs)
        hdlm_corruption ar;
        hdlm_corruption_alloc(&ar, CASE_BATCH, CASE_LENGTH);
        hdlm_ar_inputs(c->targets, (uint32_t)cfg.vocab - 2, &ar);
        memcpy(c->tokens, ar.xt, sizeof c->tokens);
        hdlm_corruption_free(&ar);
        for (int b = 0; b < CASE_BATCH; b++) {
            assert_int_equal(c->tokens[b * CASE_LENGTH], cfg.vocab - 2);
            assert_int_equal(c->tokens[b * CASE_LENGTH + 5], c->targets[b * CASE_LENGTH + 4]);
        }
    }
    hdlm_model_input in = {.tokens = c->tokens, .sigma = c->sigma, .mask = &c->mask, .batch = CASE_BATCH,
                           .length = CASE_LENGTH};
    assert_int_equal(hdlm_model_forward(m, &in), 0);
    float *dout = hdlm_malloc((size_t)n * cfg.vocab * sizeof(float));
    c->loss = cross_entropy(m->out, c->targets, n, cfg.vocab, dout);
    hdlm_model_backward(m, dout);
    free(dout);

    char path[4300];
    snprintf(path, sizeof path, "%s/config.json", c->dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f,
            "{\"family\": \"%s\", \"width\": %d, \"n_layers\": %d, \"n_heads\": %d, \"mlp_ratio\": %d, "
            "\"cond_dim\": %d, \"vocab\": %d, \"gamma\": %.9g, \"rotary\": \"%s\", \"batch\": %d, \"length\": %d, "
            "\"mask\": {\"n_set\": %d, \"a_end\": %d, \"context\": \"%s\", \"block\": \"%s\", \"block_size\": %d}}\n",
            hdlm_family_name(cfg.family), cfg.width, cfg.n_layers, cfg.n_heads, cfg.mlp_ratio, cfg.cond_dim,
            cfg.vocab, (double)cfg.gamma, cfg.rotary == HDLM_ROTARY_REFERENCE ? "reference" : "exact", CASE_BATCH,
            CASE_LENGTH, c->mask.n_set, c->mask.a_end, context_name(c->mask.context),
            c->mask.block == HDLM_BLOCK_FULL ? "full" : "causal", c->mask.block_size);
    fclose(f);
    snprintf(path, sizeof path, "%s/tensors.txt", c->dir);
    f = fopen(path, "w");
    assert_non_null(f);
    for (int i = 0; i < m->n_tensors; i++) {
        const hdlm_tensor *t = &m->tensors[i];
        fprintf(f, "%s %zu %zu %lld", t->name, t->offset, t->numel, (long long)t->shape[0]);
        if (t->ndim == 2) fprintf(f, " %lld", (long long)t->shape[1]);
        fprintf(f, "\n");
    }
    fclose(f);
    write_raw(c->dir, "params.f32", m->params, (m->n_params + m->n_buffer) * sizeof(float));
    int32_t ids[CASE_BATCH * CASE_LENGTH], tg[CASE_BATCH * CASE_LENGTH];
    for (int i = 0; i < n; i++) {
        ids[i] = (int32_t)c->tokens[i];
        tg[i] = (int32_t)c->targets[i];
    }
    write_raw(c->dir, "tokens.i32", ids, sizeof ids);
    write_raw(c->dir, "targets.i32", tg, sizeof tg);
    write_raw(c->dir, "sigma.f32", c->sigma, sizeof c->sigma);
}

// max |ours − ref| / max |ref| over a tensor (ref of zero size: absolute).
static double scaled_error(const float *ours, const double *ref, size_t n) {
    double err = 0.0, scale = 0.0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)ours[i] - ref[i]);
        err = e > err ? e : err;
        scale = fabs(ref[i]) > scale ? fabs(ref[i]) : scale;
    }
    return scale > 0.0 ? err / scale : err;
}

// Tolerances (fp32 against float64): every value passes through ~10 fp32 operations per layer, with dot products of
// length <= 128 and softmax/LayerNorm reductions; the unit roundoff is 6e-8, so errors relative to a tensor's largest
// entry of order 1e-6 are expected (measured: <= 6e-7 for outputs, <= 1.2e-6 for gradients). 1e-5 / 2e-5 leave a
// margin of 10-20x, while a wrong term (a missing mask rule, a dropped gradient path) gives errors of 1e-3 to 1.
#define OUT_TOL 1e-5
#define GRAD_TOL 2e-5
#define LOSS_TOL 1e-5

static void test_model_matches_pytorch(void **state) {
    (void)state;
    static model_case cases[N_CASES];
    char dirs[N_CASES * 4200] = "";
    for (int i = 0; i < N_CASES; i++) {
        case_prepare(&cases[i], i);
        strcat(dirs, " ");
        strcat(dirs, cases[i].dir);
    }
    int rc = test_run("/usr/bin/python3 %s/tests/reference/ddit.py%s", HDLM_SOURCE_DIR, dirs);
    assert_int_equal(rc, 0);
    double worst_out = 0.0, worst_grad = 0.0;
    for (int i = 0; i < N_CASES; i++) {
        model_case *c = &cases[i];
        hdlm_model *m = c->model;
        size_t n_out = (size_t)CASE_BATCH * CASE_LENGTH * m->config.vocab;
        double *out = read_f64(c->dir, "out.f64", n_out);
        double *loss = read_f64(c->dir, "loss.f64", 1);
        double *grads = read_f64(c->dir, "grads.f64", m->n_params);
        double e_out = scaled_error(m->out, out, n_out);
        double e_loss = fabs(c->loss - loss[0]) / fabs(loss[0]);
        printf("  %-7s %-26s loss %.6f (ref %.6f)  out err %.1e", hdlm_family_name(c->family), c->label, c->loss,
               loss[0], e_out);
        assert_true(e_out <= OUT_TOL);
        assert_true(e_loss <= LOSS_TOL);
        worst_out = e_out > worst_out ? e_out : worst_out;
        double case_grad = 0.0;
        for (int t = 0; t < m->n_tensors; t++) {
            const hdlm_tensor *x = &m->tensors[t];
            if (!x->trainable) continue;
            double e = scaled_error(m->grads + x->offset, grads + x->offset, x->numel);
            // a gradient that is zero in the reference must be zero here too, and vice versa
            double ref_max = 0.0;
            for (size_t k = 0; k < x->numel; k++) ref_max = fmax(ref_max, fabs(grads[x->offset + k]));
            if (ref_max == 0.0 || e > GRAD_TOL) printf("\n    %s: grad err %.2e (ref max %.2e)", x->name, e, ref_max);
            assert_true(ref_max > 0.0);
            assert_true(e <= GRAD_TOL);
            case_grad = e > case_grad ? e : case_grad;
        }
        printf("  grad err %.1e\n", case_grad);
        worst_grad = case_grad > worst_grad ? case_grad : worst_grad;
        free(out);
        free(loss);
        free(grads);
        hdlm_model_free(m);
    }
    printf("  worst: outputs %.2e, gradients %.2e (tolerances %.0e, %.0e)\n", worst_out, worst_grad, OUT_TOL,
           GRAD_TOL);
}

// ---- sizes, init, refusals -------------------------------------------------------------------------------------

static size_t count_params(hdlm_family family) {
    hdlm_model_config c = hdlm_model_config_ddit_small(family);
    hdlm_tensor *t;
    int n;
    size_t params, buffer;
    assert_int_equal(hdlm_model_tensor_table(&c, &t, &n, &params, &buffer), 0);
    assert_int_equal(buffer, 32);   // rotary_emb.inv_freq, not a parameter
    free(t);
    return params;
}

static void test_paper_parameter_counts(void **state) {
    (void)state;
    assert_int_equal(count_params(HDLM_FAMILY_EPSILON), 162246482);
    assert_int_equal(count_params(HDLM_FAMILY_GAMMA), 169429074);
}

static const hdlm_tensor *table_find(const hdlm_tensor *t, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (strcmp(t[i].name, name) == 0) return &t[i];
    return NULL;
}

// State-dict names and shapes of method §7.1 (γ paper configuration).
static void test_tensor_names_and_shapes(void **state) {
    (void)state;
    hdlm_model_config c = hdlm_model_config_ddit_small(HDLM_FAMILY_GAMMA);
    hdlm_tensor *t;
    int n;
    size_t params, buffer;
    assert_int_equal(hdlm_model_tensor_table(&c, &t, &n, &params, &buffer), 0);
    assert_int_equal(n, 1 + 4 + 1 + 12 * 10 + 3);
    const hdlm_tensor *x = table_find(t, n, "blocks.11.adaLN_modulation.weight");
    assert_non_null(x);
    assert_int_equal(x->shape[0], 4608);
    assert_int_equal(x->shape[1], 128);
    x = table_find(t, n, "output_layer.linear.weight");
    assert_non_null(x);
    assert_int_equal(x->shape[0], 50258);
    assert_int_equal(x->shape[1], 768);
    x = table_find(t, n, "blocks.0.attn_qkv.weight");
    assert_int_equal(x->shape[0], 2304);
    assert_int_equal(x->shape[1], 768);
    x = table_find(t, n, "sigma_map.mlp.0.weight");
    assert_int_equal(x->shape[0], 128);
    assert_int_equal(x->shape[1], 256);
    assert_non_null(table_find(t, n, "blocks.3.mlp.2.bias"));
    assert_non_null(table_find(t, n, "output_layer.norm_final.weight"));
    assert_null(table_find(t, n, "blocks.12.norm1.weight"));
    // parameters are packed without gaps; the buffer follows them
    size_t next = 0;
    for (int i = 0; i < n; i++)
        if (t[i].trainable) {
            assert_int_equal(t[i].offset, next);
            next += t[i].numel;
        }
    assert_int_equal(table_find(t, n, "rotary_emb.inv_freq")->offset, params);
    free(t);
}

// The zero-initialised head gives every logit 0, hence cross-entropy ln 50258 per token, for both families
// (scale_by_sigma shifts a whole row by one constant, which cross-entropy ignores).
static void test_initial_loss_is_log_vocab(void **state) {
    (void)state;
    for (int fam = 0; fam < 2; fam++) {
        hdlm_model_config c = hdlm_model_config_ddit_small((hdlm_family)fam);
        c.width = 64;
        c.n_heads = 2;
        c.n_layers = 2;
        hdlm_model *m;
        assert_int_equal(hdlm_model_create(&m, &c), 0);
        hdlm_model_init(m, 42);
        // init rules of method §7.6; the views agree with the table
        float bound = 1.0f / sqrtf(64.0f), emax = 0.0f;
        for (size_t i = 0; i < (size_t)50258 * 64; i++) emax = fmaxf(emax, fabsf(m->p.embed[i]));
        assert_true(emax <= bound && emax > 0.99f * bound);
        assert_true(m->p.head_b[17] == 0.0f && m->p.head_w[1000] == 0.0f && m->p.norm_final[5] == 1.0f);
        if (fam == HDLM_FAMILY_GAMMA) assert_true(m->p.blocks[1].ada_w[7] == 0.0f && m->p.blocks[0].ada_b[3] == 0.0f);
        assert_ptr_equal(m->p.blocks[1].qkv,
                         m->params + hdlm_model_find_tensor(m, "blocks.1.attn_qkv.weight")->offset);
        assert_float_equal(m->p.inv_freq[1], 1.0f / powf(10000.0f, 2.0f / 32.0f), 1e-9);
        enum { B = 1, L = 16 };
        uint32_t tokens[B * L], targets[B * L];
        float sigma[B * L];
        for (int i = 0; i < B * L; i++) {
            tokens[i] = (uint32_t)(i * 3001 % 50258);
            targets[i] = (uint32_t)(i * 977 % 50257);
            sigma[i] = 0.1f + 0.2f * i;
        }
        hdlm_model_input in = {.tokens = tokens, .sigma = sigma, .batch = B, .length = L, .training = true,
                               .dropout_key = 9};
        assert_int_equal(hdlm_model_forward(m, &in), 0);
        float *dout = hdlm_malloc((size_t)B * L * c.vocab * sizeof(float));
        double loss = cross_entropy(m->out, targets, B * L, c.vocab, dout);
        printf("  %s: initial loss %.6f\n", hdlm_family_name(c.family), loss);
        assert_float_equal(loss, 10.824925, 2e-6);
        free(dout);
        hdlm_model_free(m);
    }
}

static void expect_refused(hdlm_model_config c, const char *field) {
    hdlm_model *m = NULL;
    hdlm_clear_error();
    assert_int_equal(hdlm_model_create(&m, &c), -1);
    assert_null(m);
    assert_error_contains(field);
}

static void test_bad_configs_are_refused(void **state) {
    (void)state;
    hdlm_model_config base = small_config(HDLM_FAMILY_GAMMA, HDLM_ROTARY_EXACT), c;
    c = base, c.n_heads = 5;
    expect_refused(c, "'n_heads' (5) must divide field 'width' (32)");
    c = base, c.n_layers = 0;
    expect_refused(c, "'n_layers'");
    c = base, c.width = 24, c.n_heads = 8;   // head dim 3
    expect_refused(c, "must be even for rotary");
    c = base, c.vocab = 1;
    expect_refused(c, "'vocab'");
    c = base, c.dropout = 1.0f;
    expect_refused(c, "'dropout'");
    c = base, c.cond_dim = 0;
    expect_refused(c, "'cond_dim'");
    c = base, c.max_length = 0;
    expect_refused(c, "'max_length'");
    c = base, c.mlp_ratio = 0;
    expect_refused(c, "'mlp_ratio'");
    c = base, c.family = (hdlm_family)7;
    expect_refused(c, "'family'");
}


// The two-copy layout (method §2.10, §3.3) computes exactly what it stands for: with the clean copy x and a noisy
// copy y, the outputs of noisy block b equal those of the length-L forward whose settled prefix is x[0, bω), whose
// active block is y's block b and whose tail is worthless; and the gradient of a linear functional of the noisy
// outputs equals the sum over blocks of the separate computations' gradients. Both families, both block rules, the
// block-causal and causal context rules (with full context the clean copy sees later clean tokens, which the
// length-L step does not: the reference's layout is not equivalent there, method §3.3).
static void two_copy_case(hdlm_family family, hdlm_context_type context, hdlm_block_type block) {
    enum { TB = 2, TL = 32, TW = 8, NB = TL / TW };
    hdlm_model_config cfg = small_config(family, HDLM_ROTARY_EXACT);
    const int V = cfg.vocab;
    hdlm_model *two, *one;
    assert_int_equal(hdlm_model_create(&two, &cfg), 0);
    assert_int_equal(hdlm_model_create(&one, &cfg), 0);
    test_model_randomize(two, 5);
    memcpy(one->params, two->params, (two->n_params + two->n_buffer) * sizeof(float));
    hdlm_rng rng;
    hdlm_rng_init(&rng, hdlm_rng_key(3, (uint64_t)family, (uint64_t)context, HDLM_RNG_DATA));
    uint32_t x[TB * TL], y[TB * TL], tokens2[TB * 2 * TL], tokens1[TB * TL];
    float sigma_y[TB * TL], sigma2[TB * 2 * TL], sigma1[TB * TL];
    const float sigma_clean = 0.01f;
    for (int i = 0; i < TB * TL; i++) {
        x[i] = (uint32_t)hdlm_rng_below(&rng, (uint64_t)V - 1);
        y[i] = hdlm_rng_uniform(&rng) < 0.5f ? (uint32_t)(V - 1) : (uint32_t)hdlm_rng_below(&rng, (uint64_t)V - 1);
        sigma_y[i] = 0.1f + 3.0f * hdlm_rng_uniform(&rng);
    }
    for (int b = 0; b < TB; b++)
        for (int i = 0; i < TL; i++) {
            tokens2[b * 2 * TL + i] = x[b * TL + i];
            tokens2[b * 2 * TL + TL + i] = y[b * TL + i];
            sigma2[b * 2 * TL + i] = sigma_clean;
            sigma2[b * 2 * TL + TL + i] = sigma_y[b * TL + i];
        }
    hdlm_attn_mask mask2 = hdlm_mask_two_copy(TL, TW, context, block);
    hdlm_model_input in2 = {.tokens = tokens2, .sigma = sigma2, .mask = &mask2, .batch = TB, .length = 2 * TL};
    assert_int_equal(hdlm_model_forward(two, &in2), 0);
    size_t n2 = (size_t)TB * 2 * TL * V, n1 = (size_t)TB * TL * V;
    float *dout2 = hdlm_calloc(n2, sizeof(float)), *dout1 = hdlm_calloc(n1, sizeof(float));
    for (int b = 0; b < TB; b++)
        for (size_t e = 0; e < (size_t)TL * V; e++) dout2[((size_t)b * 2 * TL + TL) * V + e] = hdlm_rng_normal(&rng);
    hdlm_model_backward(two, dout2);

    double out_err = 0, out_max = 0;
    hdlm_model_zero_grad(one);
    for (int k = 0; k < NB; k++) {
        int lo = k * TW, hi = lo + TW;
        for (int b = 0; b < TB; b++)
            for (int i = 0; i < TL; i++) {
                int r = b * TL + i;
                tokens1[r] = i >= lo && i < hi ? y[r] : x[r];   // worthless tail: clean tokens, invisible
                sigma1[r] = i < lo ? sigma_clean : i < hi ? sigma_y[r] : 3.0f;
            }
        hdlm_attn_mask mask1 = {TL, lo, hi - 1, context, block, TW, 0};
        hdlm_model_input in1 = {.tokens = tokens1, .sigma = sigma1, .mask = &mask1, .batch = TB, .length = TL};
        assert_int_equal(hdlm_model_forward(one, &in1), 0);
        memset(dout1, 0, n1 * sizeof(float));
        for (int b = 0; b < TB; b++)
            for (int i = lo; i < hi; i++)
                for (int v = 0; v < V; v++) {
                    size_t r1 = ((size_t)b * TL + i) * V + v, r2 = ((size_t)b * 2 * TL + TL + i) * V + v;
                    out_err = fmax(out_err, fabs((double)one->out[r1] - two->out[r2]));
                    out_max = fmax(out_max, fabs((double)two->out[r2]));
                    dout1[r1] = dout2[r2];
                }
        hdlm_model_backward(one, dout1);   // accumulates over the blocks
    }
    double dg = 0, g2 = 0;
    for (size_t i = 0; i < two->n_params; i++) {
        double d = (double)one->grads[i] - two->grads[i];
        dg += d * d;
        g2 += (double)two->grads[i] * two->grads[i];
    }
    print_message("two-copy %s context %d block %d: outputs max |diff| %.2e of max %.2e, gradients relative rms %.2e\n",
                  hdlm_family_name(family), (int)context, (int)block, out_err, out_max, sqrt(dg / g2));
    assert_true(out_max > 0.1 && out_err <= 1e-5 * out_max);
    assert_true(g2 > 0 && sqrt(dg / g2) <= 1e-5);

    // head_from = L: the output layer skips the clean copy (its gradient is zero there): the same noisy outputs, zero
    // clean outputs, the same gradients.
    float *full_out = hdlm_malloc(n2 * sizeof(float)), *full_grads = hdlm_malloc(two->n_params * sizeof(float));
    memcpy(full_out, two->out, n2 * sizeof(float));
    memcpy(full_grads, two->grads, two->n_params * sizeof(float));
    hdlm_model_zero_grad(two);
    in2.head_from = TL;
    assert_int_equal(hdlm_model_forward(two, &in2), 0);
    hdlm_model_backward(two, dout2);
    double skip_err = 0, dgs = 0;
    for (size_t e = 0; e < n2; e++) {
        bool clean = (e / V) % (2 * TL) < TL;
        skip_err = fmax(skip_err, fabs((double)two->out[e] - (clean ? 0.0 : full_out[e])));
    }
    for (size_t i = 0; i < two->n_params; i++) dgs += ((double)two->grads[i] - full_grads[i]) * (two->grads[i] - full_grads[i]);
    assert_true(skip_err <= 1e-6 * out_max);
    assert_true(sqrt(dgs / g2) <= 1e-6);
    free(full_out);
    free(full_grads);
    free(dout1);
    free(dout2);
    hdlm_model_free(one);
    hdlm_model_free(two);
}

static void test_two_copy_equals_separate_blocks(void **state) {
    (void)state;
    for (int f = 0; f < 2; f++) {
        hdlm_family family = f ? HDLM_FAMILY_GAMMA : HDLM_FAMILY_EPSILON;
        two_copy_case(family, HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL);
        two_copy_case(family, HDLM_CONTEXT_CAUSAL, HDLM_BLOCK_CAUSAL);
    }
}

static void test_bad_inputs_are_refused(void **state) {
    (void)state;
    hdlm_model_config c = small_config(HDLM_FAMILY_GAMMA, HDLM_ROTARY_EXACT);
    hdlm_model *m;
    assert_int_equal(hdlm_model_create(&m, &c), 0);
    uint32_t tokens[8] = {1, 2, 3, 4, 5, 6, 7, 61};
    float sigma[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    hdlm_model_input in = {.tokens = tokens, .sigma = sigma, .batch = 1, .length = 8};
    assert_int_equal(hdlm_model_forward(m, &in), -1);
    assert_error_contains("token 7 has id 61, vocabulary is 61");
    tokens[7] = 60;
    sigma[2] = 0.0f;
    assert_int_equal(hdlm_model_forward(m, &in), -1);
    assert_error_contains("sigma of token 2");
    sigma[2] = 1.0f;
    hdlm_attn_mask mask = hdlm_mask_full(7);
    in.mask = &mask;
    assert_int_equal(hdlm_model_forward(m, &in), -1);
    assert_error_contains("mask length 7 differs from the length 8");
    in.mask = NULL;
    in.length = 200;
    assert_int_equal(hdlm_model_forward(m, &in), -1);
    assert_error_contains("max_length = 128");
    // The two-copy layout takes up to 2 · max_length positions, with a consistent mask only.
    uint32_t *long_tokens = hdlm_calloc(300, sizeof(uint32_t));
    float *long_sigma = hdlm_malloc(300 * sizeof(float));
    for (int i = 0; i < 300; i++) long_sigma[i] = 1.0f;
    hdlm_attn_mask two = hdlm_mask_two_copy(150, 50, HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL);
    hdlm_model_input in2 = {.tokens = long_tokens, .sigma = long_sigma, .mask = &two, .batch = 1, .length = 300};
    assert_int_equal(hdlm_model_forward(m, &in2), -1);
    assert_error_contains("length must be in [1, 2 × max_length = 128], got 300");
    two = hdlm_mask_two_copy(64, 24, HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL);
    in2.length = 128;
    assert_int_equal(hdlm_model_forward(m, &in2), -1);
    assert_error_contains("two-copy mask inconsistent");
    two = hdlm_mask_two_copy(64, 16, HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL);
    assert_int_equal(hdlm_model_forward(m, &in2), 0);
    free(long_tokens);
    free(long_sigma);
    in.length = 8;
    assert_int_equal(hdlm_model_forward(m, &in), 0);
    hdlm_model_free(m);
}

// Dropout multipliers follow the uniforms hdlm_rng_u16_at·2⁻¹⁶ element by element (any start, any count), so masks do not depend
// on tiling or threads; the kept fraction is 1 − p and the scale 1/(1 − p).
static void test_dropout_mask_is_counter_based(void **state) {
    (void)state;
    enum { N = 10001 };
    static float s[N];
    uint64_t key = hdlm_rng_key(3, 0, 5, HDLM_RNG_DROPOUT);
    hdlm_dropout_scales(s, key, 7, N, 0.1f);
    int kept = 0;
    for (int i = 0; i < N; i++) {
        float expect = (float)hdlm_rng_u16_at(key, 7 + (uint64_t)i) * 0x1p-16f >= 0.1f ? 1.0f / 0.9f : 0.0f;
        assert_true(s[i] == expect);
        kept += s[i] != 0.0f;
    }
    assert_true(fabs(kept / (double)N - 0.9) < 5 * sqrt(0.09 / N));
}

// Keep bits: element e of a range at bit e − (start & ~31), the same rule as the multipliers, for ranges starting at
// every offset within a word and a Philox block, of lengths around the 32-block vector width (256 elements); the bits
// of the words touched outside the range stay as they were.
static void test_dropout_keep_bits_follow_the_rule(void **state) {
    (void)state;
    enum { WORDS = 24 };
    uint64_t key = hdlm_rng_key(3, 0, 6, HDLM_RNG_DROPOUT);
    // p = 0.3, and the ends: 2⁻¹⁶ (only u16 0 dropped) and the float below 1 (keep_min 65,536: nothing kept)
    const float ps[] = {0.3f, 0x1p-16f, 0x1.fffffep-1f};
    const int counts[] = {1, 5, 8, 31, 255, 256, 257, 300, 511, 700};
    for (size_t pi = 0; pi < sizeof ps / sizeof ps[0]; pi++) {
        uint32_t keep_min = hdlm_dropout_keep_min(ps[pi]);
        for (uint64_t start = 1000; start < 1000 + (pi == 0 ? 40 : 9); start++)
            for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) {
                uint32_t bits[WORDS];
                for (int w = 0; w < WORDS; w++) bits[w] = 0x5A5A5A5Au ^ (uint32_t)w;
                hdlm_dropout_keep_bits(bits, key, start, counts[c], ps[pi]);
                int at = (int)(start & 31);
                for (int b = 0; b < WORDS * 32; b++) {
                    bool got = bits[b / 32] >> (b % 32) & 1u, expect;
                    if (b >= at && b < at + counts[c])
                        expect = hdlm_rng_u16_at(key, start + (uint64_t)(b - at)) >= keep_min;
                    else
                        expect = (0x5A5A5A5Au ^ (uint32_t)(b / 32)) >> (b % 32) & 1u;
                    assert_int_equal(got, expect);
                }
            }
    }
}

// The small ε model with dropout 0.1 and random weights.
static hdlm_model *small_dropout_model(uint64_t seed) {
    hdlm_model_config c = small_config(HDLM_FAMILY_EPSILON, HDLM_ROTARY_EXACT);
    c.dropout = 0.1f;
    hdlm_model *m;
    assert_int_equal(hdlm_model_create(&m, &c), 0);
    test_model_randomize(m, seed);
    return m;
}

// Training mode with a fixed dropout key is repeatable; another key or evaluation mode changes the outputs.
static void test_dropout_is_repeatable(void **state) {
    (void)state;
    hdlm_model *m = small_dropout_model(5);
    hdlm_model_config c = m->config;
    enum { B = 2, L = 9 };
    uint32_t tokens[B * L];
    for (int i = 0; i < B * L; i++) tokens[i] = (uint32_t)(i * 7 % 61);
    size_t n = (size_t)B * L * c.vocab;
    float *first = hdlm_malloc(n * sizeof(float));
    hdlm_model_input in = {.tokens = tokens, .batch = B, .length = L, .training = true, .dropout_key = 11};
    assert_int_equal(hdlm_model_forward(m, &in), 0);
    memcpy(first, m->out, n * sizeof(float));
    assert_int_equal(hdlm_model_forward(m, &in), 0);
    assert_memory_equal(first, m->out, n * sizeof(float));
    in.dropout_key = 12;
    assert_int_equal(hdlm_model_forward(m, &in), 0);
    assert_memory_not_equal(first, m->out, n * sizeof(float));
    in.training = false;
    assert_int_equal(hdlm_model_forward(m, &in), 0);
    assert_memory_not_equal(first, m->out, n * sizeof(float));
    free(first);
    hdlm_model_free(m);
}

// A training step's outputs and every gradient are the same bits on 1, 2 and 3 threads (ε and γ, dropout 0.1): the
// products, attention, LayerNorm's weight gradient (once summed per thread) and the row-wise layers.
static void test_step_does_not_depend_on_threads(void **state) {
    (void)state;
    enum { B = 2, L = 64 };
    int saved = omp_get_max_threads();
    for (int family = 0; family < 2; family++) {
        hdlm_model_config c = small_config(family ? HDLM_FAMILY_GAMMA : HDLM_FAMILY_EPSILON, HDLM_ROTARY_EXACT);
        c.dropout = 0.1f;
        hdlm_model *m;
        assert_int_equal(hdlm_model_create(&m, &c), 0);
        test_model_randomize(m, 9);
        uint32_t tokens[B * L], targets[B * L];
        float sigma[B * L];
        for (int i = 0; i < B * L; i++) {
            tokens[i] = (uint32_t)(i * 7 % c.vocab);
            targets[i] = (uint32_t)(i * 13 % (c.vocab - 1));
            sigma[i] = 0.1f + 0.01f * (float)(i % 17);
        }
        size_t n_out = (size_t)B * L * c.vocab;
        float *dout = hdlm_malloc(n_out * sizeof(float)), *first = hdlm_malloc((n_out + m->n_params) * sizeof(float));
        for (int threads = 1; threads <= 3; threads++) {
            omp_set_num_threads(threads);
            hdlm_blas_init(threads);
            hdlm_model_input in = {.tokens = tokens, .sigma = family ? sigma : NULL, .batch = B, .length = L,
                                   .training = true, .dropout_key = 21};
            assert_int_equal(hdlm_model_forward(m, &in), 0);
            cross_entropy(m->out, targets, B * L, c.vocab, dout);
            hdlm_model_zero_grad(m);
            hdlm_model_backward(m, dout);
            if (threads == 1) {
                memcpy(first, m->out, n_out * sizeof(float));
                memcpy(first + n_out, m->grads, m->n_params * sizeof(float));
                continue;
            }
            assert_memory_equal(first, m->out, n_out * sizeof(float));
            assert_memory_equal(first + n_out, m->grads, m->n_params * sizeof(float));
        }
        free(dout);
        free(first);
        hdlm_model_free(m);
    }
    omp_set_num_threads(saved);
    hdlm_blas_init(saved);
}

// The ε/ARDM training loss runs the output layer on the rows with a loss weight only (hdlm_model_forward_loss):
// against the forward of every row + hdlm_corruption_loss + the backward of the full [N, V] gradient, the loss is
// the same double, the outputs are the weighted rows' own, in order, and every gradient is the same bits (the output
// layer's weight and bias within 1e-6: with the rows left out, a GEMM may block its depth differently).
static void test_loss_skips_rows_without_weight(void **state) {
    (void)state;
    hdlm_model *m = small_dropout_model(8);
    hdlm_model_config c = m->config;
    enum { B = 3, L = 20, N = B * L };
    int V = c.vocab;
    uint32_t x0[N];
    hdlm_corruption cor;
    hdlm_corruption_alloc(&cor, B, L);
    hdlm_rng rng;
    hdlm_rng_init(&rng, 77);
    int weighted = 0, first_weighted = -1;
    for (int r = 0; r < N; r++) {
        x0[r] = (uint32_t)hdlm_rng_below(&rng, (uint64_t)V - 1);
        bool masked = hdlm_rng_uniform(&rng) < 0.45f;
        cor.xt[r] = masked ? (uint32_t)(V - 1) : x0[r];
        cor.weight[r] = masked ? 1.0f + hdlm_rng_uniform(&rng) : 0.0f;
        if (masked && first_weighted < 0) first_weighted = r;
        weighted += masked;
    }
    cor.norm = N;
    assert_true(weighted > 5 && weighted < N - 5);
    hdlm_loss_target target = {.x0 = x0, .corruption = &cor, .softmax_width = V};
    hdlm_model_input in = {.tokens = cor.xt, .batch = B, .length = L, .training = true, .dropout_key = 21};
    size_t n_out = (size_t)N * V;
    float *dout = hdlm_malloc(n_out * sizeof(float)), *full = hdlm_malloc(n_out * sizeof(float));
    float *grads = hdlm_malloc(m->n_params * sizeof(float));

    memset(m->grads, 0, m->n_params * sizeof(float));
    double loss_rows;
    assert_int_equal(hdlm_model_forward_loss(m, &in, &target, dout, &loss_rows), 0);
    float first_out[64];
    memcpy(first_out, m->out, (size_t)V * sizeof(float));   // compacted: row 0 is the first weighted row's
    hdlm_model_backward(m, dout);
    memcpy(grads, m->grads, m->n_params * sizeof(float));

    memset(m->grads, 0, m->n_params * sizeof(float));
    assert_int_equal(hdlm_model_forward(m, &in), 0);
    assert_memory_equal(first_out, m->out + (size_t)first_weighted * V, (size_t)V * sizeof(float));
    double loss_all = hdlm_corruption_loss(&cor, x0, m->out, V, V, full);
    hdlm_model_backward(m, full);
    printf("  %d of %d rows weighted: loss %.17g and %.17g\n", weighted, N, loss_rows, loss_all);
    assert_true(loss_rows == loss_all);
    size_t head_w = hdlm_model_find_tensor(m, "output_layer.linear.weight")->offset;
    size_t head_b = hdlm_model_find_tensor(m, "output_layer.linear.bias")->offset;
    for (size_t i = 0; i < m->n_params; i++) {
        bool output_layer =
            (i >= head_w && i < head_w + (size_t)V * c.width) || (i >= head_b && i < head_b + (size_t)V);
        if (output_layer) assert_true(fabsf(grads[i] - m->grads[i]) <= 1e-6f * (fabsf(m->grads[i]) + 1e-3f));
        else if (grads[i] != m->grads[i]) fail_msg("gradient %zu: %.9g with the rows skipped, %.9g without", i,
                                                   (double)grads[i], (double)m->grads[i]);
    }
    // refused: a corruption of another shape, inference's head_rows
    in.batch = 2;
    assert_int_equal(hdlm_model_forward_loss(m, &in, &target, dout, &loss_rows), -1);
    assert_error_contains("corruption of 3 x 20 tokens for a micro-batch of 2 x 20");
    uint8_t some[N] = {1};
    in.batch = B, in.training = false, in.head_rows = some;
    assert_int_equal(hdlm_model_forward_loss(m, &in, &target, dout, &loss_rows), -1);
    assert_error_contains("head_rows is for inference forwards, not for a loss");
    free(grads);
    free(full);
    free(dout);
    hdlm_corruption_free(&cor);
    hdlm_model_free(m);
}

// hdlm-bench model: --help works; a bad --shape is refused naming the flag (the timing itself is a benchmark).
// The software half-precision rounding of the reference rotary tables equals the compiler's _Float16 conversion
// (IEEE, nearest even) on every edge (subnormals, the largest half, overflow, ties) and 4M random doubles.
static void test_fp16_rounding_matches_float16(void **state) {
    (void)state;
#ifdef __FLT16_MAX__
    static const double edges[] = {0.0, -0.0, 65504.0, 65519.999, 65520.0, -65520.0, 1e9, 0x1p-14, 0x1p-24,
                                   0x1p-25, 0x1.8p-25, 0x1p-26, 0x1.0008p0, 0x1.0018p0, 0x1.002p-20, 1023.5,
                                   2047.0, 2049.0, 767.1428, 0.7498942, -3.3e-6, INFINITY};
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++) {
        float want = (float)(_Float16)edges[i], got = hdlm_round_fp16(edges[i]);
        if (memcmp(&want, &got, sizeof want) != 0) fail_msg("%a: _Float16 gives %a, hdlm_round_fp16 %a", edges[i],
                                                            (double)want, (double)got);
    }
    hdlm_rng rng;
    hdlm_rng_init(&rng, 11);
    for (int i = 0; i < 1 << 22; i++) {
        // Exponents over the half range and beyond, all mantissa bits random (ties and near-ties included).
        uint64_t bits = hdlm_rng_u64(&rng);
        double x = ldexp(1.0 + (double)(bits >> 12) * 0x1p-52, (int)(bits % 50) - 30) * (bits & 2048 ? -1 : 1);
        if (i % 4 == 0) x = ldexp(round(ldexp(x, 11)) + 0.5, -11);   // exact ties of the 11-bit significand
        float want = (float)(_Float16)x, got = hdlm_round_fp16(x);
        if (memcmp(&want, &got, sizeof want) != 0) fail_msg("%a: _Float16 gives %a, hdlm_round_fp16 %a", x,
                                                            (double)want, (double)got);
    }
#else
    skip();   // this compiler has no _Float16 to compare with
#endif
}

static void test_bench_model_flags(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("bench_model_flags");
    const char *bench = "ASAN_OPTIONS=detect_leaks=0 '" HDLM_BIN_DIR "/hdlm-bench'";
    assert_int_equal(test_run("%s model --help > '%s/help.txt' 2>&1", bench, dir), 0);
    assert_int_equal(test_run("grep -q -- '--shape BxT' '%s/help.txt'", dir), 0);
    assert_int_not_equal(test_run("%s model --shape 4 --no-pytorch > '%s/bad.txt' 2>&1", bench, dir), 0);
    assert_int_equal(test_run("grep -q -- \"--shape wants BxT\" '%s/bad.txt'", dir), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bench_model_flags),
        cmocka_unit_test(test_fp16_rounding_matches_float16),
        cmocka_unit_test(test_paper_parameter_counts),
        cmocka_unit_test(test_tensor_names_and_shapes),
        cmocka_unit_test(test_initial_loss_is_log_vocab),
        cmocka_unit_test(test_bad_configs_are_refused),
        cmocka_unit_test(test_bad_inputs_are_refused),
        cmocka_unit_test(test_dropout_mask_is_counter_based),
        cmocka_unit_test(test_dropout_keep_bits_follow_the_rule),
        cmocka_unit_test(test_dropout_is_repeatable),
        cmocka_unit_test(test_step_does_not_depend_on_threads),
        cmocka_unit_test(test_model_matches_pytorch),
        cmocka_unit_test(test_two_copy_equals_separate_blocks),
        cmocka_unit_test(test_loss_skips_rows_without_weight),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

// In-process checks of the training pieces: the data loader's order rule (disjoint shares, independence of the
// world size for a fixed global micro-batch, a new shuffle per epoch, seek) and the skip of an update whose
// gradients are not finite (AdamW, the LR schedule and the EMA do not advance).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "harness.h"
#include "data/dataloader.h"
#include "train/trainer_internal.h"
#include "train_helpers.h"

static const char *data;

static void test_loader_order(void **state) {
    (void)state;
    const int L = 32, B = 3;
    hdlm_dataset d;
    assert_int_equal(hdlm_dataset_open_dir(&d, data, "validation", L, 0), 0);
    uint64_t count = hdlm_dataset_chunk_count(&d);
    hdlm_loader one, r0, r1;
    assert_int_equal(hdlm_loader_init(&one, &d, 7, 0, 1, 2 * B, "validation"), 0);
    assert_int_equal(hdlm_loader_init(&r0, &d, 7, 0, 2, B, "validation"), 0);
    assert_int_equal(hdlm_loader_init(&r1, &d, 7, 1, 2, B, "validation"), 0);
    uint64_t per_epoch = hdlm_loader_batches_per_epoch(&one);
    assert_int_equal(per_epoch, count / (2 * B));
    uint32_t *a = malloc(2 * B * L * sizeof(uint32_t)), *b = malloc(2 * B * L * sizeof(uint32_t));
    uint32_t *first_epoch = malloc(per_epoch * 2 * B * L * sizeof(uint32_t));
    for (uint64_t i = 0; i < per_epoch + 2; i++) {
        hdlm_loader_next(&one, a);
        hdlm_loader_next(&r0, b);
        hdlm_loader_next(&r1, b + B * L);
        // 2 ranks x B read exactly what 1 rank x 2B reads, rank 0 the first half.
        assert_memory_equal(a, b, 2 * B * L * sizeof(uint32_t));
        if (i < per_epoch) memcpy(first_epoch + i * 2 * B * L, a, 2 * B * L * sizeof(uint32_t));
    }
    assert_int_equal(one.epoch, 1);
    assert_int_equal(one.position, 2 * 2 * B);
    // Epoch 1 is shuffled differently from epoch 0.
    assert_memory_not_equal(a, first_epoch + 2 * B * L, 2 * B * L * sizeof(uint32_t));
    // Within an epoch no chunk repeats: compare chunk heads (distinct chunks of real text differ in 32 tokens).
    for (uint64_t i = 0; i < per_epoch * 2 * B; i++)
        for (uint64_t j = i + 1; j < per_epoch * 2 * B; j++)
            assert_memory_not_equal(first_epoch + i * L, first_epoch + j * L, L * sizeof(uint32_t));
    // Seek back to the start of epoch 0 and read the same first micro-batch; positions off the grid are refused.
    assert_int_equal(hdlm_loader_seek(&r0, 0, 0), 0);
    hdlm_loader_next(&r0, b);
    assert_memory_equal(b, first_epoch, B * L * sizeof(uint32_t));
    assert_int_not_equal(hdlm_loader_seek(&r0, 0, 1), 0);
    assert_error_contains("training.batch_size");
    // A data set smaller than one global micro-batch is refused naming it.
    hdlm_loader big;
    assert_int_not_equal(hdlm_loader_init(&big, &d, 7, 0, 1, (int)count + 1, "validation"), 0);
    assert_error_contains("fewer than one global micro-batch");
    hdlm_loader_free(&one);
    hdlm_loader_free(&r0);
    hdlm_loader_free(&r1);
    hdlm_dataset_close(&d);
    free(a);
    free(b);
    free(first_epoch);
}

static void test_non_finite_gradient_skips_update(void **state) {
    (void)state;
    char train[1100];
    snprintf(train, sizeof train, "data.train=%s", data);
    const char *over[] = {train, "data.valid=", "optim.scheduler=linear", "optim.total=10"};
    hdlm_train_config cfg;
    assert_int_equal(hdlm_train_config_load(&cfg, TINY, over, 4, 1), 0);
    hdlm_trainer *t;
    assert_int_equal(hdlm_trainer_create(&t, &cfg, NULL), 0);
    hdlm_update_stats s;
    hdlm_trainer_update(t, &s);
    assert_false(s.skipped);
    assert_int_equal(t->applied, 1);
    double lr1 = s.lr;
    // A NaN output bias makes the loss and the gradients NaN.
    const hdlm_tensor *w = hdlm_model_find_tensor(t->model, "output_layer.linear.bias");
    float saved = t->model->params[w->offset];
    t->model->params[w->offset] = NAN;
    size_t n = t->model->n_params;
    float *m = malloc(n * sizeof(float)), *ema = malloc(n * sizeof(float));
    memcpy(m, t->state.adam_m, n * sizeof(float));
    memcpy(ema, t->state.ema, n * sizeof(float));
    hdlm_trainer_update(t, &s);
    assert_true(s.skipped);
    assert_false(isfinite(s.grad_norm));
    assert_int_equal(t->update, 2);
    assert_int_equal(t->applied, 1);
    assert_memory_equal(m, t->state.adam_m, n * sizeof(float));
    assert_memory_equal(ema, t->state.ema, n * sizeof(float));
    // The next good update uses the learning rate the skipped one would have used (the schedule did not move).
    t->model->params[w->offset] = saved;
    hdlm_trainer_update(t, &s);
    assert_false(s.skipped);
    assert_int_equal(t->applied, 2);
    assert_true(s.lr < lr1);
    assert_true(fabs(s.lr - cfg.optim.lr * (1.0 - 1.0 / 10.0)) < 1e-12);
    free(m);
    free(ema);
    hdlm_trainer_free(t);
}

static int setup(void **state) {
    (void)state;
    data = prepare_sotu(test_tmp_dir("train_inprocess_data"));
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loader_order),
        cmocka_unit_test(test_non_finite_gradient_skips_update),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}

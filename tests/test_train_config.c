// The training configuration: shipped presets load, overrides apply, cross-field errors name the keys.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hdlm/common.h"
#include "hdlm/cuda.h"
#include "hdlm/train_config.h"
#include "hdlm/trainer.h"

static void test_paper_presets_load(void **state) {
    (void)state;
    const char *names[] = {"epsilon_hdlm", "gamma_hdlm"};
    for (int i = 0; i < 2; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/jobs/configs/%s.yaml", HDLM_SOURCE_DIR, names[i]);
        const char *overrides[] = {"data.train=/data/owt"};
        hdlm_train_config c;
        if (hdlm_train_config_load(&c, path, overrides, 1, 2) != 0) fail_msg("%s", hdlm_last_error());
        assert_string_equal(c.model.name, names[i]);
        assert_int_equal(c.model.hidden_size, 768);
        assert_int_equal(c.annealing.tau, i == 0 ? 1024 : 2048);
        assert_true(c.optim.beta2 == (i == 0 ? 0.95 : 0.999));
        // The model they describe is the paper's DDiT-small (parameter counts of method §0).
        hdlm_model_config m;
        assert_int_equal(hdlm_train_config_model(&c, &m), 0);
        hdlm_tensor *tensors;
        int n_tensors;
        size_t n_params, n_buffer;
        assert_int_equal(hdlm_model_tensor_table(&m, &tensors, &n_tensors, &n_params, &n_buffer), 0);
        assert_int_equal(n_params, i == 0 ? 162246482 : 169429074);   // trainable; inv_freq is a buffer
        free(tensors);
    }
}

// One preset per method of docs/methods.md, each at DDiT-small size with the paper's batch, resolving to its method.
static void test_method_presets(void **state) {
    (void)state;
    static const struct {
        const char *name;
        hdlm_objective objective;
        int width;          // annealing.width when scheduled
        bool efficient;
        double epsilon, gamma;
    } presets[] = {
        {"ar", HDLM_OBJECTIVE_AR, 0, false, 0.01, 0.01},
        {"mdlm", HDLM_OBJECTIVE_EPSILON_UNSCHEDULED, 0, false, 0.0, 0.01},
        {"sedd", HDLM_OBJECTIVE_GAMMA, 1024, false, 0.01, 0.0},
        {"bd3lm_w4", HDLM_OBJECTIVE_EPSILON, 4, true, 0.0, 0.01},
        {"bd3lm_w8", HDLM_OBJECTIVE_EPSILON, 8, true, 0.0, 0.01},
        {"bd3lm_w16", HDLM_OBJECTIVE_EPSILON, 16, true, 0.0, 0.01},
        {"epsilon_hdlm", HDLM_OBJECTIVE_EPSILON, 1024, false, 0.01, 0.01},
        {"gamma_hdlm", HDLM_OBJECTIVE_GAMMA, 1024, false, 0.01, 0.01},
        {"ardm", HDLM_OBJECTIVE_ARDM, 0, false, 0.01, 0.01},
    };
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/jobs/configs/%s.yaml", HDLM_SOURCE_DIR, presets[i].name);
        const char *overrides[] = {"data.train=/data/owt"};
        hdlm_train_config c;
        if (hdlm_train_config_load(&c, path, overrides, 1, 2) != 0) fail_msg("%s: %s", path, hdlm_last_error());
        print_message("%-13s objective %d, %s\n", presets[i].name, (int)c.kind.objective,
                      hdlm_train_loss_unit(&c.kind));
        assert_int_equal(c.kind.objective, presets[i].objective);
        assert_int_equal(c.model.hidden_size, 768);
        assert_int_equal(c.model.n_blocks, 12);
        assert_int_equal(c.model.length, 1024);
        if (presets[i].width) assert_int_equal(c.annealing.width, presets[i].width);
        assert_int_equal(c.annealing.efficient, presets[i].efficient);
        assert_true(c.training.epsilon == presets[i].epsilon);
        assert_true(c.graph.gamma == presets[i].gamma);
    }
}

static void test_cross_field_checks(void **state) {
    (void)state;
    hdlm_train_config c;
    const char *no_data[] = {"model.n_heads=12"};
    assert_int_equal(hdlm_train_config_load(&c, NULL, no_data, 1, 1), -1);
    assert_error_contains("data.train is not set");
    const char *bad_batch[] = {"data.train=x", "training.batch_size=100", "training.accum=8"};
    assert_int_equal(hdlm_train_config_load(&c, NULL, bad_batch, 3, 2), -1);
    assert_error_contains("training.batch_size = 100 must be a multiple of ranks x training.accum = 2 x 8");
    const char *bad_heads[] = {"data.train=x", "model.n_heads=7"};
    assert_int_equal(hdlm_train_config_load(&c, NULL, bad_heads, 2, 1), -1);
    assert_error_contains("model.hidden_size = 768 is not divisible by model.n_heads = 7");
    const char *odd_head_dim[] = {"data.train=x", "model.hidden_size=36", "model.n_heads=4"};
    assert_int_equal(hdlm_train_config_load(&c, NULL, odd_head_dim, 3, 1), -1);
    assert_error_contains("must be even");
    const char *gamma_none[] = {"data.train=x", "model.name=gamma_hdlm", "annealing.type=none"};
    assert_int_equal(hdlm_train_config_load(&c, NULL, gamma_none, 3, 1), -1);
    assert_error_contains("annealing.type = none");
    const char *tau1[] = {"data.train=x", "annealing.tau=1"};
    assert_int_equal(hdlm_train_config_load(&c, NULL, tau1, 2, 1), -1);
    assert_error_contains("'annealing.tau' = 1 is out of range");
    const char *efficient_simple[] = {"data.train=x", "annealing.efficient=true", "annealing.type=simple",
                                      "annealing.width=64"};
    assert_int_equal(hdlm_train_config_load(&c, NULL, efficient_simple, 4, 1), -1);
    assert_error_contains("annealing.efficient = true (the two-copy layout) needs annealing.type = block");
    const char *efficient_ardm[] = {"data.train=x", "annealing.efficient=true", "training.objective=ardm"};
    assert_int_equal(hdlm_train_config_load(&c, NULL, efficient_ardm, 3, 1), -1);
    assert_error_contains("needs annealing.type = block and the hdlm objective");
    const char *efficient_width[] = {"data.train=x", "annealing.efficient=true", "annealing.width=48"};
    assert_int_equal(hdlm_train_config_load(&c, NULL, efficient_width, 3, 1), -1);
    assert_error_contains("model.length = 1024 must be a multiple of annealing.width = 48");
    const char *efficient_ok[] = {"data.train=x", "annealing.efficient=true", "annealing.width=64"};
    assert_int_equal(hdlm_train_config_load(&c, NULL, efficient_ok, 3, 1), 0);
}

static void test_device_choices(void **state) {
    (void)state;
    hdlm_train_config c;
    const char *none[] = {"data.train=x"};
    assert_int_equal(hdlm_train_config_load(&c, NULL, none, 1, 1), 0);
    assert_string_equal(c.training.device, "cpu");
    const char *cuda[] = {"data.train=x", "training.device=cuda"};
    assert_int_equal(hdlm_train_config_load(&c, NULL, cuda, 2, 1), 0);
    assert_string_equal(c.training.device, "cuda");
    const char *gpu[] = {"data.train=x", "training.device=gpu"};
    assert_int_equal(hdlm_train_config_load(&c, NULL, gpu, 2, 1), -1);
    assert_error_contains("'training.device' must be one of cpu|cuda, got 'gpu'");
}

// Without a GPU (or without the CUDA backend) training.device = cuda is refused before anything is built, naming
// the key and the reason hdlm_cuda_unavailable_reason() gives.
static void test_device_cuda_refused_without_gpu(void **state) {
    (void)state;
    if (hdlm_cuda_device_count() > 0) {
        print_message("a GPU is usable here: the refusal cannot be observed\n");
        skip();
    }
    hdlm_train_config c;
    const char *cuda[] = {"data.train=/nonexistent", "training.device=cuda"};
    assert_int_equal(hdlm_train_config_load(&c, NULL, cuda, 2, 1), 0);
    hdlm_trainer *t;
    assert_int_equal(hdlm_trainer_create(&t, &c, NULL), -1);
    assert_error_contains("training.device = cuda");
    assert_error_contains(hdlm_cuda_unavailable_reason());
    assert_true(hdlm_cuda_unavailable_reason()[0] != '\0');
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_paper_presets_load),
        cmocka_unit_test(test_method_presets),
        cmocka_unit_test(test_cross_field_checks),
        cmocka_unit_test(test_device_choices),
        cmocka_unit_test(test_device_cuda_refused_without_gpu),
    };
    return cmocka_run_group_tests_name("train_config", tests, NULL, NULL);
}

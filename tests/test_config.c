// Typed configurations: YAML loading, overrides, refusals that name the key, and the YAML round trip.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hdlm/common.h"
#include "hdlm/config.h"

typedef struct {
    int64_t batch_size, n_iters;
    double lr;
    bool efficient;
    char annealing_type[HDLM_CONFIG_STRING_MAX], run_name[HDLM_CONFIG_STRING_MAX];
    int64_t width;
} demo_config;

static const hdlm_config_field demo_fields[] = {
    {"training.batch_size", HDLM_CONFIG_INT, offsetof(demo_config, batch_size), "512", 1, 1e9, NULL, "sequences"},
    {"training.n_iters", HDLM_CONFIG_INT, offsetof(demo_config, n_iters), "1e6", 1, 1e12, NULL, "micro-steps"},
    {"optim.lr", HDLM_CONFIG_DOUBLE, offsetof(demo_config, lr), "3e-4", 0, 1, NULL, "peak learning rate"},
    {"annealing.efficient", HDLM_CONFIG_BOOL, offsetof(demo_config, efficient), "False", HDLM_CONFIG_NO_RANGE, NULL, ""},
    {"annealing.type", HDLM_CONFIG_STRING, offsetof(demo_config, annealing_type), "block", HDLM_CONFIG_NO_RANGE,
     "block|simple|hybrid|none", "hyperschedule"},
    {"annealing.width", HDLM_CONFIG_INT, offsetof(demo_config, width), "1024", 1, 1 << 20, NULL, "omega"},
    {"run.name", HDLM_CONFIG_STRING, offsetof(demo_config, run_name), "demo run: 1", HDLM_CONFIG_NO_RANGE, NULL, ""},
};
static const hdlm_config_schema demo_schema = {demo_fields, sizeof demo_fields / sizeof demo_fields[0]};

static const char *write_yaml(const char *name, const char *text) {
    static char path[4096];
    snprintf(path, sizeof path, "%s/%s", test_tmp_dir("config"), name);
    test_write_file(path, text, strlen(text));
    return path;
}

static void test_defaults_file_and_overrides(void **state) {
    (void)state;
    demo_config c;
    assert_int_equal(hdlm_config_defaults(&demo_schema, &c), 0);
    assert_int_equal(c.batch_size, 512);
    assert_int_equal(c.n_iters, 1000000);
    assert_true(c.lr == 3e-4 && !c.efficient);
    assert_string_equal(c.annealing_type, "block");
    const char *path = write_yaml("a.yaml", "training:\n  batch_size: 64\n  # comment\nannealing:\n  type: simple\n"
                                            "  efficient: True\n  width: 256\noptim: {lr: 1.5e-4}\n");
    assert_int_equal(hdlm_config_load_yaml(&demo_schema, &c, path), 0);
    assert_int_equal(c.batch_size, 64);
    assert_int_equal(c.width, 256);
    assert_true(c.efficient && c.lr == 1.5e-4);
    assert_string_equal(c.annealing_type, "simple");
    assert_int_equal(hdlm_config_override(&demo_schema, &c, "training.batch_size=8"), 0);
    assert_int_equal(hdlm_config_override(&demo_schema, &c, "run.name=a=b"), 0);   // only the first '=' splits
    assert_int_equal(c.batch_size, 8);
    assert_string_equal(c.run_name, "a=b");
}

static void test_refusals_name_the_key(void **state) {
    (void)state;
    demo_config c;
    assert_int_equal(hdlm_config_defaults(&demo_schema, &c), 0);
    assert_int_equal(hdlm_config_override(&demo_schema, &c, "training.batchsize=4"), -1);
    assert_error_contains("unknown configuration key 'training.batchsize' (did you mean 'training.batch_size'?)");
    assert_int_equal(hdlm_config_override(&demo_schema, &c, "training.lr=1e-3"), -1);   // the right key, wrong section
    assert_error_contains("unknown configuration key 'training.lr' (did you mean 'optim.lr'?)");
    assert_int_equal(hdlm_config_override(&demo_schema, &c, "training.batch_size=4.5"), -1);
    assert_error_contains("'training.batch_size' expects an integer, got '4.5'");
    assert_int_equal(hdlm_config_override(&demo_schema, &c, "training.batch_size=0"), -1);
    assert_error_contains("'training.batch_size' = 0 is out of range");
    assert_int_equal(hdlm_config_override(&demo_schema, &c, "optim.lr=fast"), -1);
    assert_error_contains("'optim.lr' expects a number");
    assert_int_equal(hdlm_config_override(&demo_schema, &c, "annealing.efficient=maybe"), -1);
    assert_error_contains("'annealing.efficient' expects true or false");
    assert_int_equal(hdlm_config_override(&demo_schema, &c, "annealing.type=diagonal"), -1);
    assert_error_contains("must be one of block|simple|hybrid|none");
    assert_int_equal(hdlm_config_override(&demo_schema, &c, "batch_size"), -1);
    assert_error_contains("expected key=value");
    assert_int_equal(c.batch_size, 512);   // nothing was changed by the refused values

    const char *path = write_yaml("unknown.yaml", "training:\n  batch_size: 4\n  warmup: 10\n");
    assert_int_equal(hdlm_config_load_yaml(&demo_schema, &c, path), -1);
    assert_error_contains("unknown.yaml:3: unknown configuration key 'training.warmup'");
    path = write_yaml("syntax.yaml", "training:\n  batch_size: [4\n");
    assert_int_equal(hdlm_config_load_yaml(&demo_schema, &c, path), -1);
    assert_error_contains("syntax.yaml:");
    path = write_yaml("list.yaml", "annealing:\n  width: [1, 2]\n");
    assert_int_equal(hdlm_config_load_yaml(&demo_schema, &c, path), -1);
    assert_error_contains("list.yaml:2: lists are not configuration values");
    path = write_yaml("null.yaml", "optim:\n  lr:\n");
    assert_int_equal(hdlm_config_load_yaml(&demo_schema, &c, path), -1);
    assert_error_contains("'optim.lr' has no value");
    assert_int_equal(hdlm_config_load_yaml(&demo_schema, &c, "/nonexistent/cfg.yaml"), -1);
    assert_error_contains("cannot open configuration file /nonexistent/cfg.yaml");
}

static void test_yaml_round_trip(void **state) {
    (void)state;
    demo_config a, b;
    assert_int_equal(hdlm_config_defaults(&demo_schema, &a), 0);
    assert_int_equal(hdlm_config_override(&demo_schema, &a, "optim.lr=0.1"), 0);
    assert_int_equal(hdlm_config_override(&demo_schema, &a, "run.name=say \"hi\" \\ 2"), 0);
    char path[4096];
    snprintf(path, sizeof path, "%s/resolved.yaml", test_tmp_dir("config-roundtrip"));
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    hdlm_config_write_yaml(&demo_schema, &a, f);
    fclose(f);
    memset(&b, 0, sizeof b);
    assert_int_equal(hdlm_config_load_yaml(&demo_schema, &b, path), 0);
    assert_int_equal(a.batch_size, b.batch_size);
    assert_int_equal(a.n_iters, b.n_iters);
    assert_true(a.lr == b.lr && a.efficient == b.efficient && a.width == b.width);
    assert_string_equal(a.annealing_type, b.annealing_type);
    assert_string_equal(a.run_name, b.run_name);
    // The same text from memory (as stored in a checkpoint).
    char *text;
    size_t len;
    assert_int_equal(hdlm_read_file(path, &text, &len), 0);
    memset(&b, 0, sizeof b);
    assert_int_equal(hdlm_config_load_yaml_string(&demo_schema, &b, text, "checkpoint config"), 0);
    assert_true(a.lr == b.lr && a.batch_size == b.batch_size);
    assert_string_equal(a.run_name, b.run_name);
    free(text);
    assert_int_equal(hdlm_config_load_yaml_string(&demo_schema, &b, "optim:\n  beta: 1\n", "checkpoint config"), -1);
    assert_error_contains("checkpoint config:2: unknown configuration key 'optim.beta'");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_file_and_overrides),
        cmocka_unit_test(test_refusals_name_the_key),
        cmocka_unit_test(test_yaml_round_trip),
    };
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include <math.h>

#include "hdlm/common.h"
#include "hdlm/config.h"
#include "hdlm/model_io.h"
#include "hdlm/rng.h"
#include "hdlm/tokenizer.h"
#include "hdlm/train_config.h"
#include "harness.h"

const char *test_cache_path(const char *rel) {
    static char paths[8][4096];
    static int next;
    char *p = paths[next++ % 8];
    snprintf(p, 4096, "%s/.cache/%s", HDLM_SOURCE_DIR, rel);
    if (access(p, R_OK) != 0) {
        print_error("missing test data %s: run tools/setup.sh first\n", p);
        fail();
    }
    return p;
}

const char *test_tmp_dir(const char *name) {
    static char paths[8][4096];
    static int next;
    char *p = paths[next++ % 8];
    snprintf(p, 4096, "%s/%s", HDLM_TEST_TMP, name);
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", p, p);
    assert_int_equal(system(cmd), 0);
    return p;
}

int test_run(const char *fmt, ...) {
    char cmd[16384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    fflush(stdout);
    int status = system(cmd);
    if (status == -1) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

void test_write_file(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

void test_assert_error_contains(const char *needle, const char *file, int line) {
    const char *msg = hdlm_last_error();
    if (!strstr(msg, needle)) {
        print_error("%s:%d: expected the error to mention \"%s\", got \"%s\"\n", file, line, needle, msg);
        fail();
    }
}

cJSON *test_load_json(const char *path) {
    char *text;
    size_t len;
    assert_int_equal(hdlm_read_file(path, &text, &len), 0);
    cJSON *json = cJSON_Parse(text);
    free(text);
    assert_non_null(json);
    return json;
}

double test_json_number(const cJSON *json, const char *key) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(json, key);
    assert_true(cJSON_IsNumber(item));
    return item->valuedouble;
}

void test_write_checkpoint(const char *root, const char *preset, const char *const *overrides, size_t n_overrides,
                           uint64_t seed, float eos_bias) {
    char path[4200];
    snprintf(path, sizeof path, "%s/jobs/configs/%s.yaml", HDLM_SOURCE_DIR, preset);
    hdlm_train_config c;
    assert_int_equal(hdlm_config_defaults(&hdlm_train_config_schema, &c), 0);
    assert_int_equal(hdlm_config_load_yaml(&hdlm_train_config_schema, &c, path), 0);
    for (size_t i = 0; i < n_overrides; i++)
        assert_int_equal(hdlm_config_override(&hdlm_train_config_schema, &c, overrides[i]), 0);
    hdlm_model_config mc;
    assert_int_equal(hdlm_train_config_model(&c, &mc), 0);
    hdlm_model *m;
    assert_int_equal(hdlm_model_create(&m, &mc), 0);
    hdlm_model_init(m, 1);
    hdlm_rng rng;
    hdlm_rng_init(&rng, seed);
    for (size_t i = 0; i < m->n_params; i++) m->params[i] += 0.2f * (float)hdlm_rng_normal(&rng);
    if (eos_bias != 0) m->p.head_b[HDLM_GPT2_VOCAB - 1] += eos_bias;
    if (hdlm_model_save_checkpoint(root, 1, m, &c, false, NULL) != 0) fail_msg("%s", hdlm_last_error());
    hdlm_model_free(m);
}

void test_model_randomize(hdlm_model *m, uint64_t seed) {
    hdlm_rng rng;
    hdlm_rng_init(&rng, hdlm_rng_key(seed, 0, 0, HDLM_RNG_INIT));
    for (int i = 0; i < m->n_tensors; i++) {
        const hdlm_tensor *t = &m->tensors[i];
        if (!t->trainable) continue;
        float *x = m->params + t->offset;
        bool norm = t->init == HDLM_INIT_ONE;
        float bound = t->fan_in > 0 ? 1.5f / sqrtf((float)t->fan_in) : 0.2f;
        if (strstr(t->name, "adaLN")) bound = 0.25f;
        for (size_t k = 0; k < t->numel; k++)
            x[k] = (norm ? 1.0f : 0.0f) + (2.0f * hdlm_rng_uniform(&rng) - 1.0f) * bound;
    }
}

bool test_gpu_ready(void) {
    static int ready = -1;
    if (ready < 0) ready = hdlm_cuda_device_count() > 0 && hdlm_cuda_init(0) == 0;
    if (!ready) print_message("skipped: %s\n", hdlm_cuda_unavailable_reason());
    return ready == 1;
}

float *test_cuda_upload_f32(const float *x, size_t n) {
    float *d = hdlm_cuda_malloc(n * sizeof(float));
    hdlm_cuda_upload(d, x, n * sizeof(float));
    return d;
}

hdlm_bf16 *test_cuda_upload_bf16(const float *x, size_t n) {
    hdlm_bf16 *h = hdlm_malloc(n * sizeof *h);
    for (size_t i = 0; i < n; i++) h[i] = hdlm_bf16_from_float(x[i]);
    hdlm_bf16 *d = hdlm_cuda_malloc(n * sizeof *d);
    hdlm_cuda_upload(d, h, n * sizeof *d);
    free(h);
    return d;
}

// Helpers shared by the CMocka tests. Include after <setjmp.h>, <stdarg.h>, <stddef.h>, <stdint.h>, <cmocka.h>.
#ifndef HDLM_TEST_HARNESS_H
#define HDLM_TEST_HARNESS_H

#include <stddef.h>
#include <stdint.h>

#include "hdlm/cuda.h"
#include "hdlm/model.h"

// Absolute path of a file in the data cache that tools/setup.sh fills (".cache/<rel>" under the source tree).
// Fails the test, naming the file and the fix, when it is missing.
const char *test_cache_path(const char *rel);
// A fresh, empty directory for this test under the build's test-tmp/ (name should be unique per test).
const char *test_tmp_dir(const char *name);
// Runs a shell command; returns its exit status (or -1 when it could not be run).
int test_run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
// Writes `len` bytes to `path` (fails the test on error).
void test_write_file(const char *path, const void *data, size_t len);
// A JSON file parsed with cJSON (fails the test when it does not parse); caller frees with cJSON_Delete.
struct cJSON *test_load_json(const char *path);
// The number under `key` of a JSON object (fails the test when absent or not a number).
double test_json_number(const struct cJSON *json, const char *key);
// Random parameters of moderate size in every trainable tensor (LayerNorm weights around 1): the §7.6 init zeroes
// the head and adaLN, which would hide every gradient below them. Deterministic in seed.
void test_model_randomize(hdlm_model *m, uint64_t seed);
// A checkpoint (step 1, weights only) at root of the model of preset jobs/configs/PRESET.yaml with `overrides`
// (key=value) applied: the §7.6 init plus 0.2·N(0, 1) per parameter from the stream `seed`, then eos_bias added to
// the output bias of <|endoftext|> (0: none). For the tool tests that need a small trained-looking run.
void test_write_checkpoint(const char *root, const char *preset, const char *const *overrides, size_t n_overrides,
                           uint64_t seed, float eos_bias);
// GPU tests: true when a GPU is usable (the runtime is then initialised on device 0, once); otherwise prints
// "skipped: <hdlm_cuda_unavailable_reason()>" and returns false (the caller skips).
bool test_gpu_ready(void);
// Device copies of host floats, as fp32 or rounded to bf16 (callers free with hdlm_cuda_free).
float *test_cuda_upload_f32(const float *x, size_t n);
hdlm_bf16 *test_cuda_upload_bf16(const float *x, size_t n);
// Asserts that the last recorded hdlm error contains `needle` (prints the message when it does not).
#define assert_error_contains(needle) test_assert_error_contains((needle), __FILE__, __LINE__)
void test_assert_error_contains(const char *needle, const char *file, int line);

#endif

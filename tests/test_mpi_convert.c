// include/hdlm/model_io.h on 2 ranks: hdlm_model_save_checkpoint is collective (one shard per rank) and the model
// loader reads the whole model back bit for bit on every rank, EMA and raw, with the stored configuration.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "hdlm/checkpoint.h"
#include "hdlm/common.h"
#include "hdlm/config.h"
#include "hdlm/model_io.h"
#include "hdlm/rng.h"

static void test_collective_model_save_and_load(void **state) {
    (void)state;
    char root[4096];
    if (hdlm_rank() == 0) snprintf(root, sizeof root, "%s", test_tmp_dir("mpi_convert"));
    MPI_Bcast(root, sizeof root, MPI_CHAR, 0, MPI_COMM_WORLD);
    hdlm_train_config c;
    memset(&c, 0, sizeof c);
    assert_int_equal(hdlm_config_defaults(&hdlm_train_config_schema, &c), 0);
    const char *overrides[] = {"model.name=gamma_hdlm", "model.hidden_size=16", "model.n_blocks=1",
                               "model.n_heads=2", "model.cond_dim=8", "model.length=8", "training.seed=77"};
    for (size_t i = 0; i < sizeof overrides / sizeof *overrides; i++)
        assert_int_equal(hdlm_config_override(&hdlm_train_config_schema, &c, overrides[i]), 0);
    hdlm_model_config mc;
    assert_int_equal(hdlm_train_config_model(&c, &mc), 0);
    hdlm_model *m;
    assert_int_equal(hdlm_model_create(&m, &mc), 0);
    hdlm_model_init(m, 5);
    hdlm_rng rng;
    hdlm_rng_init(&rng, hdlm_rng_key(9, 0, 0, HDLM_RNG_DATA));   // same weights on both ranks (a replica)
    for (size_t i = 0; i < m->n_params; i++) m->params[i] = hdlm_rng_uniform(&rng) - 0.5f;

    assert_int_equal(hdlm_model_save_checkpoint(root, 4, m, &c, true, NULL), 0);
    char dir[4200];
    assert_int_equal(hdlm_checkpoint_find_latest(root, dir, sizeof dir), 0);
    hdlm_ckpt *ck;
    assert_int_equal(hdlm_checkpoint_open(&ck, dir), 0);
    assert_int_equal(hdlm_checkpoint_world_size(ck), 2);
    int64_t v;
    assert_int_equal(hdlm_checkpoint_scalar(ck, "update", &v), 0);
    assert_int_equal(v, 4);
    assert_int_equal(hdlm_checkpoint_scalar(ck, "seed", &v), 0);
    assert_int_equal(v, 77);
    assert_int_equal(hdlm_checkpoint_scalar(ck, "world_size", &v), 0);
    assert_int_equal(v, 2);
    hdlm_checkpoint_close(ck);
    for (int g = 0; g < 2; g++) {
        hdlm_model *back;
        hdlm_train_config bc;
        assert_int_equal(hdlm_model_load_checkpoint(&back, &bc, dir, g ? "ema" : "params"), 0);
        assert_int_equal(back->config.family, HDLM_FAMILY_GAMMA);
        assert_int_equal(back->n_params, m->n_params);
        assert_int_equal(bc.training.seed, 77);
        // Weights bit for bit; the rotary buffer recomputed as hdlm_model_init does.
        assert_memory_equal(back->params, m->params, (m->n_params + m->n_buffer) * sizeof(float));
        hdlm_model_free(back);
    }
    float *zeros = hdlm_calloc(m->n_params, sizeof(float)), *adam = hdlm_malloc(m->n_params * sizeof(float));
    assert_int_equal(hdlm_model_read_checkpoint(m, dir, "params"), 0);
    hdlm_tensor *descs;
    int n;
    hdlm_model_trainable_tensors(m, &descs, &n);
    assert_int_equal(hdlm_checkpoint_open(&ck, dir), 0);
    assert_int_equal(hdlm_checkpoint_read(ck, "adam_v", descs, n, 0, m->n_params, adam), 0);
    assert_memory_equal(adam, zeros, m->n_params * sizeof(float));
    hdlm_checkpoint_close(ck);
    free(descs);
    free(zeros);
    free(adam);
    hdlm_model_free(m);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_collective_model_save_and_load)};
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    MPI_Finalize();
    return rc;
}

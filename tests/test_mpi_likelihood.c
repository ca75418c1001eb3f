// The likelihood estimators over a data set on 2 ranks give exactly the result of one rank scoring every chunk
// (rank independence for a fixed seed), for the masking and the ARDM estimator, on a small random model.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hdlm/common.h"
#include "hdlm/likelihood.h"
#include "hdlm/rng.h"

enum { V = 13, L = 8, TOKENS = 7 * L + 3 };
static char dir[4096];

static hdlm_model *small_model(hdlm_family family) {
    hdlm_model_config c = {family, 16, 1, 2, 2, 8, V, L, 0.0f, 0.01f, HDLM_ROTARY_EXACT};
    hdlm_model *m;
    assert_int_equal(hdlm_model_create(&m, &c), 0);
    hdlm_model_init(m, 1);
    hdlm_rng rng;
    hdlm_rng_init(&rng, 5);
    for (size_t i = 0; i < m->n_params; i++) m->params[i] += 0.3f * (float)hdlm_rng_normal(&rng);
    return m;
}

static void test_two_ranks_equal_one(void **state) {
    (void)state;
    hdlm_dataset data;
    assert_int_equal(hdlm_dataset_open_dir(&data, dir, "val", L, V - 1), 0);
    assert_int_equal(hdlm_dataset_chunk_count(&data), 7);
    for (int fam = 0; fam < 2; fam++)
        for (int kind = HDLM_NELBO_MASKING; kind <= HDLM_NELBO_ARDM; kind++) {
            hdlm_model *m = small_model(fam ? HDLM_FAMILY_GAMMA : HDLM_FAMILY_EPSILON);
            hdlm_denoiser d = hdlm_denoiser_model(m);
            hdlm_nelbo_config cfg = hdlm_nelbo_config_default(fam == 1);
            cfg.kind = kind, cfg.copies = 3, cfg.rounds = 2, cfg.seed = 17;
            hdlm_nelbo_result res;
            assert_int_equal(hdlm_nelbo_dataset(&d, &cfg, &data, &res, NULL, NULL), 0);
            // One rank's view: every chunk scored here, summed in chunk order.
            double nll = 0, var = 0;
            uint32_t x[L];
            for (uint64_t c = 0; c < 7; c++) {
                double n1, v1;
                int counted;
                hdlm_dataset_chunk_copy(&data, c, x);
                assert_int_equal(hdlm_nelbo_chunk(&d, &cfg, x, L, c, &n1, &v1, &counted), 0);
                nll += n1, var += v1;
            }
            uint64_t tokens = 7 * (uint64_t)(kind == HDLM_NELBO_ARDM ? L : L - 1);
            assert_int_equal(res.chunks, 7);
            assert_int_equal(res.tokens, tokens);
            assert_true(res.nll == nll);
            assert_true(res.bound == nll / (double)tokens);
            assert_true(res.std_error == sqrt(var) / (double)tokens);
            assert_true(res.perplexity > 1 && res.perplexity < 1e6);
            // --max-chunks 3: the first three chunks only, still split over the ranks.
            cfg.max_chunks = 3;
            assert_int_equal(hdlm_nelbo_dataset(&d, &cfg, &data, &res, NULL, NULL), 0);
            double first3 = 0;
            for (uint64_t c = 0; c < 3; c++) {
                double n1, v1;
                int counted;
                hdlm_dataset_chunk_copy(&data, c, x);
                assert_int_equal(hdlm_nelbo_chunk(&d, &cfg, x, L, c, &n1, &v1, &counted), 0);
                first3 += n1;
            }
            assert_int_equal(res.chunks, 3);
            assert_true(res.nll == first3);
            hdlm_denoiser_free(&d);
            hdlm_model_free(m);
        }
    hdlm_dataset_close(&data);
}

static int sync_ranks(void **state) {
    (void)state;
    MPI_Barrier(MPI_COMM_WORLD);
    return 0;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    if (hdlm_rank() != 0) {
        freopen("/dev/null", "w", stdout);
        freopen("/dev/null", "w", stderr);
    }
    snprintf(dir, sizeof dir, "%s/mpi-likelihood", HDLM_TEST_TMP);
    if (hdlm_rank() == 0) {
        test_run("rm -rf %s && mkdir -p %s", dir, dir);
        char path[4200];
        snprintf(path, sizeof path, "%s/val_000.bin", dir);
        hdlm_shard_writer *w;
        uint16_t tokens[TOKENS];
        for (int i = 0; i < TOKENS; i++) tokens[i] = (uint16_t)((i * 7 + i / 5) % (V - 1));
        if (hdlm_shard_writer_open(&w, path, V - 1) || hdlm_shard_writer_append(w, tokens, TOKENS) ||
            hdlm_shard_writer_close(w, 1, NULL))
            fprintf(stderr, "shard: %s\n", hdlm_last_error());
    }
    MPI_Barrier(MPI_COMM_WORLD);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_two_ranks_equal_one, sync_ranks),
    };
    int failed = cmocka_run_group_tests_name("mpi_likelihood", tests, NULL, NULL);
    int any;
    MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Finalize();
    return any;
}

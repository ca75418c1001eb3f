// Sharded HDF5 checkpoints on 2 ranks: round trip at other world sizes, h5py reads whole tensors, and every kind of
// damaged checkpoint is refused (and skipped by find_latest) with a message naming the file and the problem.
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

static const hdlm_tensor tensors[] = {
    {.name = "embed.weight", .ndim = 2, .shape = {7, 3}, .offset = 0},
    {.name = "blocks.0.norm.weight", .ndim = 1, .shape = {5}, .offset = 21},
    {.name = "blocks.0.qkv.weight", .ndim = 3, .shape = {4, 2, 3}, .offset = 26},
    {.name = "head.weight", .ndim = 2, .shape = {10, 4}, .offset = 50},
    {.name = "head.bias", .ndim = 1, .shape = {1}, .offset = 90},
};
enum { T = 5, N = 91 };

static char root[4096];
static float params[N], ema[N];

static int rank(void) { return hdlm_rank(); }

static void save(int64_t step, const hdlm_ckpt_retention *keep) {
    hdlm_ckpt_group groups[] = {{"params", params, 0}, {"ema", ema, 0}};
    hdlm_ckpt_scalar scalars[] = {{"update", step / 2}, {"micro_step", step}};
    int64_t state[3] = {rank(), 100 + rank(), step};
    hdlm_ckpt_contents c = {tensors, T, groups, 2, scalars, 2, "model:\n  width: 3\n", state, 3};
    double seconds;
    if (hdlm_checkpoint_save(root, step, &c, keep, &seconds) != 0) fail_msg("%s", hdlm_last_error());
}

static void test_partition_is_row_aligned_and_covering(void **state) {
    (void)state;
    for (int world = 1; world <= 7; world++) {
        size_t starts[8];
        hdlm_partition_rows(tensors, T, world, starts);
        assert_int_equal(starts[0], 0);
        assert_int_equal(starts[world], N);
        for (int r = 0; r < world; r++) {
            assert_true(starts[r] <= starts[r + 1]);
            // each boundary is a row start of the tensor containing it
            for (int t = 0; t < T; t++) {
                size_t n = hdlm_tensor_numel(&tensors[t]), row = tensors[t].ndim > 1 ? n / tensors[t].shape[0] : 1;
                if (starts[r] >= tensors[t].offset && starts[r] < tensors[t].offset + n)
                    assert_int_equal((starts[r] - tensors[t].offset) % row, 0);
            }
        }
    }
}

static void test_save_and_read_at_any_world_size(void **state) {
    (void)state;
    for (int i = 0; i < N; i++) params[i] = (float)i * 0.5f - 3.0f, ema[i] = (float)i * -0.25f;
    hdlm_ckpt_retention keep = {3, 0};
    save(10, &keep);
    hdlm_ckpt *ck;
    char latest[4096];
    assert_int_equal(hdlm_checkpoint_find_latest(root, latest, sizeof latest), 0);
    assert_non_null(strstr(latest, "step_000000010"));
    assert_int_equal(hdlm_checkpoint_open(&ck, latest), 0);
    assert_int_equal(hdlm_checkpoint_world_size(ck), 2);
    // Whole buffer (world size 1), and the slices of a 3-rank partition.
    float out[N];
    assert_int_equal(hdlm_checkpoint_read(ck, "ema", tensors, T, 0, N, out), 0);
    assert_memory_equal(out, ema, sizeof ema);
    size_t starts[4];
    hdlm_partition_rows(tensors, T, 3, starts);
    for (int r = 0; r < 3; r++) {
        memset(out, 0, sizeof out);
        assert_int_equal(hdlm_checkpoint_read(ck, "params", tensors, T, starts[r], starts[r + 1], out), 0);
        assert_memory_equal(out, params + starts[r], (starts[r + 1] - starts[r]) * sizeof(float));
    }
    int64_t v;
    assert_int_equal(hdlm_checkpoint_scalar(ck, "micro_step", &v), 0);
    assert_int_equal(v, 10);
    assert_int_equal(hdlm_checkpoint_scalar(ck, "nonexistent", &v), -1);
    char *yaml;
    assert_int_equal(hdlm_checkpoint_config(ck, &yaml), 0);
    assert_string_equal(yaml, "model:\n  width: 3\n");
    free(yaml);
    int world, len;
    int64_t *rs;
    assert_int_equal(hdlm_checkpoint_rank_state(ck, &world, &len, &rs), 0);
    assert_int_equal(world, 2);
    assert_int_equal(len, 3);
    assert_int_equal(rs[3], 1);     // rank 1's first value
    assert_int_equal(rs[4], 101);
    free(rs);
    // A model of another shape is refused, naming the tensor.
    hdlm_tensor other[T];
    memcpy(other, tensors, sizeof other);
    other[3].shape[1] = 5;
    assert_int_equal(hdlm_checkpoint_read(ck, "params", other, T, 0, N, out), -1);
    assert_error_contains("tensor 'head.weight' has shape [10, 4], the model expects [10, 5]");
    hdlm_checkpoint_close(ck);
}

// Standard tools read whole tensors by name (HDF5 virtual datasets over both shards).
static void test_h5py_reads_whole_tensors(void **state) {
    (void)state;
    if (rank() != 0) return;
    int rc = test_run("/usr/bin/python3 -c \"import h5py, numpy as np\n"
                      "f = h5py.File('%s/step_000000010/index.h5', 'r')\n"
                      "w = f['params/head.weight'][...]\n"
                      "assert w.shape == (10, 4), w.shape\n"
                      "assert np.allclose(w.ravel(), np.arange(50, 90) * 0.5 - 3), w\n"
                      "assert f['ema/blocks.0.qkv.weight'].shape == (4, 2, 3)\n"
                      "\"",
                      root);
    assert_int_equal(rc, 0);
    assert_int_equal(test_run("h5dump -d /params/head.bias %s/step_000000010/index.h5 | grep -q '42'", root), 0);
}

static void test_damaged_checkpoints_are_refused(void **state) {
    (void)state;
    hdlm_ckpt_retention keep = {10, 0};
    params[0] = 7.0f;
    save(20, &keep);
    save(30, &keep);
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank() == 0) {
        char path[4400], latest[4096];
        hdlm_ckpt *ck;
        // step 30: no COMPLETE marker -> refused; find_latest falls back to step 20.
        snprintf(path, sizeof path, "%s/step_000000030/COMPLETE", root);
        assert_int_equal(unlink(path), 0);
        snprintf(path, sizeof path, "%s/step_000000030", root);
        assert_int_equal(hdlm_checkpoint_open(&ck, path), -1);
        assert_error_contains("no COMPLETE marker");
        assert_int_equal(hdlm_checkpoint_find_latest(root, latest, sizeof latest), 0);
        assert_non_null(strstr(latest, "step_000000020"));
        // step 20: a flipped byte inside the tensor data fails the CRC of the tensor that holds it.
        snprintf(path, sizeof path, "%s/step_000000020/shard_00001-of-00002.h5", root);
        assert_int_equal(hdlm_checkpoint_open(&ck, latest), 0);
        float out[N];
        // Flip one byte inside the raw data of params/head.weight in rank 1's shard (offset from HDF5 itself).
        assert_int_equal(test_run("/usr/bin/python3 -c \"import h5py\n"
                                  "f = h5py.File('%s', 'r'); off = f['params/head.weight'].id.get_offset(); f.close()\n"
                                  "b = bytearray(open('%s', 'rb').read()); b[off + 3] ^= 0x55\n"
                                  "open('%s', 'wb').write(b)\"",
                                  path, path, path),
                         0);
        assert_int_equal(hdlm_checkpoint_read(ck, "ema", tensors, T, 0, N, out), 0);   // other group: intact
        assert_int_equal(hdlm_checkpoint_read(ck, "params", tensors, T, 0, N, out), -1);
        assert_error_contains("tensor 'params/head.weight' fails its CRC-32 check");
        hdlm_checkpoint_close(ck);
        // A truncated shard is refused on open, naming the shard.
        assert_int_equal(truncate(path, 100), 0);
        assert_int_equal(hdlm_checkpoint_open(&ck, latest), -1);
        assert_error_contains("shard_00001-of-00002.h5 has 100 bytes");
        // A missing shard likewise.
        assert_int_equal(unlink(path), 0);
        assert_int_equal(hdlm_checkpoint_open(&ck, latest), -1);
        assert_error_contains("shard_00001-of-00002.h5 is missing");
        // Now find_latest falls back to step 10 and says so.
        assert_int_equal(hdlm_checkpoint_find_latest(root, latest, sizeof latest), 0);
        assert_non_null(strstr(latest, "step_000000010"));
        // Another schema version is refused.
        assert_int_equal(test_run("/usr/bin/python3 -c \"import h5py\n"
                                  "f = h5py.File('%s/step_000000010/index.h5', 'r+'); f.attrs['schema_version'] = 99\"",
                                  root),
                         0);
        // The edit changed the index: its checksum in COMPLETE refuses it before HDF5 reads it. Without a recorded
        // checksum (markers written before there was one), the schema check refuses it.
        assert_int_equal(hdlm_checkpoint_open(&ck, latest), -1);
        assert_error_contains("the index was damaged after it was written");
        assert_int_equal(test_run("sed -i '/^index_xxh64/d' '%s/step_000000010/COMPLETE'", root), 0);
        assert_int_equal(hdlm_checkpoint_open(&ck, latest), -1);
        assert_error_contains("schema version 99");
        assert_int_equal(hdlm_checkpoint_find_latest(root, latest, sizeof latest), -1);
        assert_error_contains("no valid checkpoint");
    }
}

// keep_last = 2, keep_every = 40: after steps 40..100 only 40, 80 (multiples) and the newest two remain.
static void test_retention(void **state) {
    (void)state;
    hdlm_ckpt_retention keep = {2, 40};
    for (int64_t s = 40; s <= 100; s += 10) save(s, &keep);
    if (rank() == 0) {
        for (int64_t s = 40; s <= 100; s += 10) {
            char path[4400];
            snprintf(path, sizeof path, "%s/step_%09lld", root, (long long)s);
            int expected = s == 40 || s == 80 || s == 90 || s == 100;
            if ((access(path, F_OK) == 0) != expected) fail_msg("step %lld: exists=%d", (long long)s, !expected);
        }
    }
}

// A rank that cannot write fails the save on every rank, and the published checkpoints stay as they were.
static void test_failure_on_one_rank_fails_everywhere(void **state) {
    (void)state;
    hdlm_ckpt_group groups[] = {{"params", params, 0}, {"bad/name", ema, 0}};
    hdlm_ckpt_contents c = {tensors, T, rank() == 1 ? groups : groups, rank() == 1 ? 2 : 1, NULL, 0, "", NULL, 0};
    hdlm_ckpt_retention keep = {100, 0};
    int rc = hdlm_checkpoint_save(root, 110, &c, &keep, NULL);
    assert_int_equal(rc, -1);
    assert_error_contains("checkpoint failed on rank 1");
    char path[4400];
    snprintf(path, sizeof path, "%s/step_000000110", root);
    assert_int_not_equal(access(path, F_OK), 0);
}

// Runs after every test, also a failed one, so that no rank enters the next test's collectives alone.
static int sync_ranks(void **state) {
    (void)state;
    MPI_Barrier(MPI_COMM_WORLD);
    return 0;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    if (rank() != 0) {   // only rank 0 reports
        freopen("/dev/null", "w", stdout);
        freopen("/dev/null", "w", stderr);
    }
    snprintf(root, sizeof root, "%s/mpi-checkpoint", HDLM_TEST_TMP);
    if (rank() == 0) test_run("rm -rf %s", root);
    MPI_Barrier(MPI_COMM_WORLD);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_partition_is_row_aligned_and_covering, sync_ranks),
        cmocka_unit_test_teardown(test_save_and_read_at_any_world_size, sync_ranks),
        cmocka_unit_test_teardown(test_h5py_reads_whole_tensors, sync_ranks),
        cmocka_unit_test_teardown(test_damaged_checkpoints_are_refused, sync_ranks),
        cmocka_unit_test_teardown(test_retention, sync_ranks),
        cmocka_unit_test_teardown(test_failure_on_one_rank_fails_everywhere, sync_ranks),
    };
    int failed = cmocka_run_group_tests_name("mpi_checkpoint", tests, NULL, NULL);
    int any;
    MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Finalize();
    return any;
}

// NCCL data parallelism (src/cuda/dist_nccl.h) on 2 ranks with one GPU each: bucketed all-reduce started by the
// grad-ready hook (and without it), ZeRO-1 reduction onto equal and unequal slices, and the parameter all-gather.
// Values are small integers, so every sum is exact in fp32 whatever order NCCL adds in: the comparisons are exact.
// Skips (with the reason) without the CUDA backend or with fewer GPUs than ranks: NCCL needs one GPU per rank.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

#include "harness.h"
#include "hdlm/common.h"
#include "hdlm/cuda.h"
#ifdef HDLM_HAVE_CUDA
#include "cuda/dist_nccl.h"
#endif

static bool have_gpus(void) {
    int count = hdlm_cuda_device_count();
    if (count == 0) {
        print_message("skipped: %s\n", hdlm_cuda_unavailable_reason());
        return false;
    }
    if (count < hdlm_world_size()) {
        print_message("skipped: %d rank(s) but %d GPU(s): NCCL needs one GPU per rank\n", hdlm_world_size(), count);
        return false;
    }
    return true;
}

#ifdef HDLM_HAVE_CUDA
#define N_FLOATS ((size_t)5000)   // 4 buckets of 1024 floats and a short one
#define BUCKET ((size_t)1024)

static float value(int rank, size_t i) { return (float)((i % 17) + 3 * rank); }

// Device buffer of this rank's values.
static float *upload_values(float *host) {
    for (size_t i = 0; i < N_FLOATS; i++) host[i] = value(hdlm_rank(), i);
    float *d = hdlm_cuda_malloc(N_FLOATS * sizeof(float));
    hdlm_cuda_upload(d, host, N_FLOATS * sizeof(float));
    hdlm_cuda_synchronize();   // the copy is complete before other streams read d
    return d;
}

static float summed(size_t i) {
    float s = 0;
    for (int r = 0; r < hdlm_world_size(); r++) s += value(r, i);
    return s;
}

static void check_allreduce(bool use_hook) {
    assert_int_equal(hdlm_world_size(), 2);
    float *host = hdlm_malloc(N_FLOATS * sizeof(float));
    float *d = upload_values(host);
    size_t starts[3] = {0, N_FLOATS / 2, N_FLOATS};
    hdlm_nccl_sync *s = hdlm_nccl_sync_create(d, N_FLOATS, starts, false, BUCKET, hdlm_cuda_stream());
    hdlm_nccl_sync_arm(s);
    if (use_hook) {
        // The backward's order: suffixes of the buffer become final from the end (here not on bucket boundaries).
        size_t froms[] = {4500, 3000, 2100, 700, 0};
        for (int k = 0; k < 5; k++) hdlm_nccl_sync_ready(s, froms[k]);
    }
    hdlm_nccl_sync_finish(s);
    hdlm_cuda_synchronize();
    hdlm_cuda_download(host, d, N_FLOATS * sizeof(float));
    size_t bad = 0;
    for (size_t i = 0; i < N_FLOATS; i++) bad += host[i] != summed(i);
    assert_int_equal(bad, 0);
    hdlm_nccl_sync_free(s);
    hdlm_cuda_free(d);
    free(host);
}

static void test_allreduce_with_hook(void **state) {
    (void)state;
    if (!have_gpus()) skip();
    check_allreduce(true);
}

static void test_allreduce_without_hook(void **state) {
    (void)state;
    if (!have_gpus()) skip();
    check_allreduce(false);
}

// ZeRO-1: the own slice receives the sum, the rest keeps this rank's values; then each rank writes its slice of the
// parameters and the all-gather gives every rank the owners' values.
static void check_zero1(size_t split) {
    assert_int_equal(hdlm_world_size(), 2);
    int rank = hdlm_rank();
    float *host = hdlm_malloc(N_FLOATS * sizeof(float));
    float *d = upload_values(host);
    size_t starts[3] = {0, split, N_FLOATS};
    hdlm_nccl_sync *s = hdlm_nccl_sync_create(d, N_FLOATS, starts, true, BUCKET, hdlm_cuda_stream());
    hdlm_nccl_sync_arm(s);
    hdlm_nccl_sync_ready(s, 0);   // no effect under ZeRO-1: reduced after the backward
    hdlm_nccl_sync_finish(s);
    hdlm_cuda_synchronize();
    hdlm_cuda_download(host, d, N_FLOATS * sizeof(float));
    size_t bad = 0;
    for (size_t i = 0; i < N_FLOATS; i++) {
        bool own = i >= starts[rank] && i < starts[rank + 1];
        bad += host[i] != (own ? summed(i) : value(rank, i));
    }
    assert_int_equal(bad, 0);

    for (size_t i = 0; i < N_FLOATS; i++) host[i] = -1.0f;
    for (size_t i = starts[rank]; i < starts[rank + 1]; i++) host[i] = (float)(i + 100000 * (size_t)rank);
    hdlm_cuda_upload(d, host, N_FLOATS * sizeof(float));
    hdlm_cuda_synchronize();
    hdlm_nccl_params_allgather(s, d);
    hdlm_cuda_synchronize();
    hdlm_cuda_download(host, d, N_FLOATS * sizeof(float));
    bad = 0;
    for (int r = 0; r < 2; r++)
        for (size_t i = starts[r]; i < starts[r + 1]; i++) bad += host[i] != (float)(i + 100000 * (size_t)r);
    assert_int_equal(bad, 0);
    hdlm_nccl_sync_free(s);
    hdlm_cuda_free(d);
    free(host);
}

static void test_zero1_equal_slices(void **state) {   // ncclReduceScatter / ncclAllGather
    (void)state;
    if (!have_gpus()) skip();
    check_zero1(N_FLOATS / 2);
}

static void test_zero1_unequal_slices(void **state) {   // grouped ncclReduce / ncclBroadcast
    (void)state;
    if (!have_gpus()) skip();
    check_zero1(1536);
}

static int setup(void **state) {
    (void)state;
    if (!have_gpus()) return 0;
    int device;
    if (hdlm_cuda_local_device(&device) != 0 || hdlm_cuda_init(device) != 0) {
        fprintf(stderr, "%s\n", hdlm_last_error());
        return -1;
    }
    return hdlm_nccl_init();
}

static int teardown(void **state) {
    (void)state;
    if (!have_gpus()) return 0;
    hdlm_nccl_shutdown();
    hdlm_cuda_shutdown();
    return 0;
}
#else
static void test_skipped_without_cuda(void **state) {
    (void)state;
    assert_false(have_gpus());
    skip();
}
#endif

// Runs after every test, also a failed one, so that no rank enters the next test's collectives alone.
static int sync_ranks(void **state) {
    (void)state;
    MPI_Barrier(MPI_COMM_WORLD);
    return 0;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    if (hdlm_rank() != 0) {   // only rank 0 reports
        freopen("/dev/null", "w", stdout);
        freopen("/dev/null", "w", stderr);
    }
#ifdef HDLM_HAVE_CUDA
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_allreduce_with_hook, sync_ranks),
        cmocka_unit_test_teardown(test_allreduce_without_hook, sync_ranks),
        cmocka_unit_test_teardown(test_zero1_equal_slices, sync_ranks),
        cmocka_unit_test_teardown(test_zero1_unequal_slices, sync_ranks),
    };
    int failed = cmocka_run_group_tests_name("mpi_cuda_nccl", tests, setup, teardown);
#else
    const struct CMUnitTest tests[] = {cmocka_unit_test_teardown(test_skipped_without_cuda, sync_ranks)};
    int failed = cmocka_run_group_tests_name("mpi_cuda_nccl", tests, NULL, NULL);
#endif
    int any;
    MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Finalize();
    return any;
}

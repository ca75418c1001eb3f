// NCCL data parallelism of the CUDA backend (src/cuda/dist_nccl.h): the GPU twin of src/train/dist.c, with the same
// buckets (started from the end of the buffer) and the same ZeRO-1 slices.
#define OMPI_SKIP_MPICXX 1   // C bindings only
#include <mpi.h>
#include <nccl.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.cuh"

extern "C" {
#include "cuda/dist_nccl.h"
}

static ncclComm_t g_comm;   // the world's communicator (NULL with one rank or before hdlm_nccl_init)

// A failing NCCL call ends the job: abort the communicator (so no kernel keeps spinning on a dead peer), then
// MPI_Abort through HDLM_DIE, with the call's text and NCCL's last error.
#define HDLM_NCCL_CHECK(call)                                                                                          \
    do {                                                                                                               \
        ncclResult_t nr_ = (call);                                                                                     \
        if (nr_ != ncclSuccess) nccl_die(nr_, #call, __FILE__, __LINE__);                                             \
    } while (0)

static void nccl_die(ncclResult_t rc, const char *call, const char *file, int line) {
    const char *detail = g_comm ? ncclGetLastError(g_comm) : ncclGetLastError(NULL);
    if (g_comm) ncclCommAbort(g_comm);
    g_comm = NULL;
    hdlm_die(file, line, "NCCL error '%s' in %s%s%s", ncclGetErrorString(rc), call, detail && detail[0] ? ": " : "",
             detail ? detail : "");
}

static void mpi_ok(int rc, const char *what) {
    if (rc != MPI_SUCCESS) HDLM_DIE("MPI %s failed (error %d)", what, rc);
}

static int env_int(const char *name, int fallback) {
    const char *s = getenv(name);
    if (!s || !s[0]) return fallback;
    char *end;
    long v = strtol(s, &end, 10);
    return *end == '\0' && v >= 0 && v < (1L << 30) ? (int)v : fallback;
}

int hdlm_cuda_local_device(int *device) {
    // The shared-memory split is collective: every rank takes part even when the launcher names the local rank.
    int node_rank = 0, node_size = 1, mpi;
    mpi_ok(MPI_Initialized(&mpi), "Initialized");
    if (mpi) {   // else one process (in-process tests, tools without MPI)
        MPI_Comm node;
        mpi_ok(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node), "Comm_split_type");
        mpi_ok(MPI_Comm_rank(node, &node_rank), "Comm_rank");
        mpi_ok(MPI_Comm_size(node, &node_size), "Comm_size");
        mpi_ok(MPI_Comm_free(&node), "Comm_free");
    }
    int local = env_int("OMPI_COMM_WORLD_LOCAL_RANK", env_int("SLURM_LOCALID", node_rank));
    int count = hdlm_cuda_device_count();
    HDLM_CHECK(count > 0, "rank %d sees no usable GPU: %s", hdlm_rank(), hdlm_cuda_unavailable_reason());
    if (count == 1 && node_size > 1) {
        *device = 0;   // one GPU visible per rank (CUDA_VISIBLE_DEVICES set per task by the launcher)
        return 0;
    }
    HDLM_CHECK(local < count,
               "rank %d is local rank %d on its node but only %d GPU(s) are visible: run one rank per GPU "
               "(or give each rank its own GPU through CUDA_VISIBLE_DEVICES)",
               hdlm_rank(), local, count);
    *device = local;
    return 0;
}

int hdlm_nccl_init(void) {
    HDLM_CHECK(!g_comm, "hdlm_nccl_init called twice");
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    if (hdlm_rank() == 0) HDLM_NCCL_CHECK(ncclGetUniqueId(&id));
    mpi_ok(MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD), "Bcast of the NCCL unique id");
    HDLM_NCCL_CHECK(ncclCommInitRank(&g_comm, hdlm_world_size(), id, hdlm_rank()));
    return 0;
}

void hdlm_nccl_shutdown(void) {
    if (!g_comm) return;
    HDLM_NCCL_CHECK(ncclCommFinalize(g_comm));
    HDLM_NCCL_CHECK(ncclCommDestroy(g_comm));
    g_comm = NULL;
}

struct hdlm_nccl_sync {
    float *grads;
    size_t n;
    int rank, world;
    bool zero1;
    bool equal_slices;        // every slice has the same size and they tile [starts[0], starts[world]) in rank order
    const size_t *starts;
    size_t *bucket;           // n_buckets + 1 bucket starts
    int n_buckets;
    int next;                 // buckets [next, n_buckets) have been queued
    bool armed;
    cudaStream_t compute;     // the backward's and the optimizer's stream
    cudaStream_t comm;        // communication stream
    cudaEvent_t ready, done;  // compute -> comm (gradients final), comm -> compute (reduction finished)
};

hdlm_nccl_sync *hdlm_nccl_sync_create(float *grads, size_t n, const size_t *starts, bool zero1, size_t bucket_floats,
                                      hdlm_stream compute) {
    HDLM_ASSERT(bucket_floats > 0, "bucket of 0 floats");
    hdlm_nccl_sync *s = (hdlm_nccl_sync *)hdlm_calloc(1, sizeof *s);
    s->grads = grads;
    s->n = n;
    s->rank = hdlm_rank();
    s->world = hdlm_world_size();
    s->zero1 = zero1;
    s->starts = starts;
    s->compute = (cudaStream_t)compute;
    HDLM_ASSERT(s->world == 1 || g_comm, "hdlm_nccl_sync_create before hdlm_nccl_init on %d ranks", s->world);
    s->equal_slices = true;
    for (int r = 0; r < s->world; r++)
        if (starts[r + 1] - starts[r] != starts[1] - starts[0]) s->equal_slices = false;
    s->n_buckets = (int)((n + bucket_floats - 1) / bucket_floats);
    s->bucket = (size_t *)hdlm_malloc(((size_t)s->n_buckets + 1) * sizeof(size_t));
    for (int b = 0; b < s->n_buckets; b++) s->bucket[b] = (size_t)b * bucket_floats;
    s->bucket[s->n_buckets] = n;
    s->next = s->n_buckets;
    // The highest priority lets the reduction kernels start between the backward's kernels.
    int lowest, highest;
    HDLM_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&lowest, &highest));
    HDLM_CUDA_CHECK(cudaStreamCreateWithPriority(&s->comm, cudaStreamNonBlocking, highest));
    HDLM_CUDA_CHECK(cudaEventCreateWithFlags(&s->ready, cudaEventDisableTiming));
    HDLM_CUDA_CHECK(cudaEventCreateWithFlags(&s->done, cudaEventDisableTiming));
    return s;
}

void hdlm_nccl_sync_free(hdlm_nccl_sync *s) {
    if (!s) return;
    HDLM_CUDA_CHECK(cudaStreamSynchronize(s->comm));
    HDLM_CUDA_CHECK(cudaEventDestroy(s->ready));
    HDLM_CUDA_CHECK(cudaEventDestroy(s->done));
    HDLM_CUDA_CHECK(cudaStreamDestroy(s->comm));
    free(s->bucket);
    free(s);
}

void hdlm_nccl_sync_arm(hdlm_nccl_sync *s) {
    s->armed = s->world > 1 && !s->zero1;
    s->next = s->n_buckets;
}

// The communication stream waits for everything queued so far on the compute stream.
static void comm_after_compute(hdlm_nccl_sync *s) {
    HDLM_CUDA_CHECK(cudaEventRecord(s->ready, s->compute));
    HDLM_CUDA_CHECK(cudaStreamWaitEvent(s->comm, s->ready, 0));
}

// The compute stream waits for everything queued so far on the communication stream.
static void compute_after_comm(hdlm_nccl_sync *s) {
    HDLM_CUDA_CHECK(cudaEventRecord(s->done, s->comm));
    HDLM_CUDA_CHECK(cudaStreamWaitEvent(s->compute, s->done, 0));
}

void hdlm_nccl_sync_ready(void *ctx, size_t from) {
    hdlm_nccl_sync *s = (hdlm_nccl_sync *)ctx;
    if (!s->armed || s->next == 0 || s->bucket[s->next - 1] < from) return;
    comm_after_compute(s);
    HDLM_NCCL_CHECK(ncclGroupStart());
    // Buckets are queued from the end of the buffer, the order in which the backward pass finishes them.
    while (s->next > 0 && s->bucket[s->next - 1] >= from) {
        int b = --s->next;
        float *p = s->grads + s->bucket[b];
        HDLM_NCCL_CHECK(ncclAllReduce(p, p, s->bucket[b + 1] - s->bucket[b], ncclFloat32, ncclSum, g_comm, s->comm));
    }
    HDLM_NCCL_CHECK(ncclGroupEnd());
}

// Host wait for the communication stream's last `done` event that notices a failed or silent peer instead of
// blocking forever.
static void wait_done(hdlm_nccl_sync *s) {
    double timeout = env_int("HDLM_NCCL_TIMEOUT", 600), t0 = hdlm_time_now();
    for (;;) {
        cudaError_t q = cudaEventQuery(s->done);
        if (q == cudaSuccess) return;
        if (q != cudaErrorNotReady) HDLM_CUDA_CHECK(q);
        ncclResult_t async = ncclSuccess;
        HDLM_NCCL_CHECK(ncclCommGetAsyncError(g_comm, &async));
        if (async != ncclSuccess && async != ncclInProgress) nccl_die(async, "a collective (asynchronous error)",
                                                                       __FILE__, __LINE__);
        if (hdlm_time_now() - t0 > timeout) {
            ncclCommAbort(g_comm);
            g_comm = NULL;
            HDLM_DIE("NCCL collectives did not complete within %.0f s (HDLM_NCCL_TIMEOUT): a peer rank is stuck or "
                     "gone",
                     timeout);
        }
        sched_yield();
    }
}

void hdlm_nccl_sync_finish(hdlm_nccl_sync *s) {
    if (s->world == 1) return;
    if (s->zero1) {
        comm_after_compute(s);
        float *base = s->grads + s->starts[0];
        size_t own = s->starts[s->rank + 1] - s->starts[s->rank];
        if (s->equal_slices) {
            // Slices tile the buffer in rank order: ncclReduceScatter's layout, in place.
            HDLM_NCCL_CHECK(ncclReduceScatter(base, s->grads + s->starts[s->rank], own, ncclFloat32, ncclSum, g_comm,
                                              s->comm));
        } else {
            // Row-aligned slices differ in size: one in-place reduce onto each slice's owner, grouped into one launch
            // (the same bytes on the wire as a reduce-scatter).
            HDLM_NCCL_CHECK(ncclGroupStart());
            for (int r = 0; r < s->world; r++) {
                float *p = s->grads + s->starts[r];
                size_t count = s->starts[r + 1] - s->starts[r];
                if (count) HDLM_NCCL_CHECK(ncclReduce(p, p, count, ncclFloat32, ncclSum, r, g_comm, s->comm));
            }
            HDLM_NCCL_CHECK(ncclGroupEnd());
        }
    } else {
        if (!s->armed) hdlm_nccl_sync_arm(s);
        hdlm_nccl_sync_ready(s, 0);
        s->armed = false;
    }
    compute_after_comm(s);
    wait_done(s);
}

void hdlm_nccl_params_allgather(hdlm_nccl_sync *s, float *params) {
    if (s->world == 1) return;
    comm_after_compute(s);
    size_t own = s->starts[s->rank + 1] - s->starts[s->rank];
    if (s->equal_slices) {
        HDLM_NCCL_CHECK(ncclAllGather(params + s->starts[s->rank], params + s->starts[0], own, ncclFloat32, g_comm,
                                      s->comm));
    } else {
        HDLM_NCCL_CHECK(ncclGroupStart());
        for (int r = 0; r < s->world; r++) {
            float *p = params + s->starts[r];
            size_t count = s->starts[r + 1] - s->starts[r];
            if (count) HDLM_NCCL_CHECK(ncclBroadcast(p, p, count, ncclFloat32, r, g_comm, s->comm));
        }
        HDLM_NCCL_CHECK(ncclGroupEnd());
    }
    // No host wait: the next hdlm_nccl_sync_finish polls the stream (in order) and notices a failure there.
    compute_after_comm(s);
}

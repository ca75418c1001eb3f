// Gradient reduction across MPI ranks (src/train/dist.h).
#include "train/dist.h"

#include <stdlib.h>
#include <string.h>

#include "hdlm/common.h"

static void mpi_ok(int rc, const char *what) {
    if (rc != MPI_SUCCESS) HDLM_DIE("MPI %s failed (error %d)", what, rc);
}

// Overlap pays only if the non-blocking all-reduce is as fast as the blocking one: without a progress thread it
// advances inside MPI calls, on the cores the backward uses, so it hides nothing and costs what it costs. On one node
// with Open MPI (libnbc) it is the slower: timed here 16.3 ms against 11.4 for the small preset's 13 buckets, and in
// training 3,000 against 3,750 tokens/s. Both ways timed twice on up to 16 buckets of zeros, as the step uses them
// (the faster run counts); the slowest rank decides for all.
// HDLM_ALLREDUCE=overlap or after sets the choice (a cluster whose MPI progresses in the network; the tests).
static void choose_overlap(hdlm_grad_sync *s) {
    const char *set = getenv("HDLM_ALLREDUCE");
    if (set && *set && strcmp(set, "auto") != 0) {
        if (strcmp(set, "overlap") != 0 && strcmp(set, "after") != 0)
            HDLM_DIE("environment HDLM_ALLREDUCE=%s: expected overlap, after or auto", set);
        s->overlap = strcmp(set, "overlap") == 0;
        return;
    }
    int buckets = s->n_buckets < 16 ? s->n_buckets : 16;
    float *buf = hdlm_calloc(s->bucket[buckets], sizeof *buf);
    double best[2] = {1e30, 1e30}, worst[2];
    for (int rep = 0; rep < 4; rep++) {
        int nonblocking = rep % 2;
        mpi_ok(MPI_Barrier(MPI_COMM_WORLD), "Barrier");
        double t0 = MPI_Wtime();
        for (int b = 0; b < buckets; b++) {
            int count = (int)(s->bucket[b + 1] - s->bucket[b]);
            if (nonblocking)
                mpi_ok(MPI_Iallreduce(MPI_IN_PLACE, buf + s->bucket[b], count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD,
                                      &s->requests[b]),
                       "Iallreduce");
            else
                mpi_ok(MPI_Allreduce(MPI_IN_PLACE, buf + s->bucket[b], count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD),
                       "Allreduce");
        }
        if (nonblocking) mpi_ok(MPI_Waitall(buckets, s->requests, MPI_STATUSES_IGNORE), "Waitall");
        double t = MPI_Wtime() - t0;
        if (t < best[nonblocking]) best[nonblocking] = t;
    }
    mpi_ok(MPI_Allreduce(best, worst, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD), "Allreduce");
    s->overlap = worst[1] <= worst[0];
    if (s->rank == 0)
        hdlm_log("gradient all-reduce: %s (%d buckets of up to %zu floats: blocking %.1f ms, non-blocking %.1f ms)\n",
                 s->overlap ? "overlapping the backward" : "after the backward", buckets, s->bucket[1],
                 1e3 * worst[0], 1e3 * worst[1]);
    free(buf);
}

void hdlm_grad_sync_init(hdlm_grad_sync *s, float *grads, size_t n, const size_t *starts, bool zero1,
                         size_t bucket_floats) {
    memset(s, 0, sizeof *s);
    s->grads = grads;
    s->n = n;
    s->rank = hdlm_rank();
    s->world = hdlm_world_size();
    s->zero1 = zero1;
    s->starts = starts;
    HDLM_ASSERT(n < (size_t)1 << 31 && bucket_floats > 0, "gradient buffer of %zu floats too large for MPI counts", n);
    s->counts = hdlm_malloc((size_t)s->world * sizeof(int));
    s->displs = hdlm_malloc((size_t)s->world * sizeof(int));
    for (int r = 0; r < s->world; r++) {
        s->displs[r] = (int)starts[r];
        s->counts[r] = (int)(starts[r + 1] - starts[r]);
    }
    s->n_buckets = (int)((n + bucket_floats - 1) / bucket_floats);
    s->bucket = hdlm_malloc(((size_t)s->n_buckets + 1) * sizeof(size_t));
    for (int b = 0; b < s->n_buckets; b++) s->bucket[b] = (size_t)b * bucket_floats;
    s->bucket[s->n_buckets] = n;
    s->requests = hdlm_malloc((size_t)s->n_buckets * sizeof(MPI_Request));
    for (int b = 0; b < s->n_buckets; b++) s->requests[b] = MPI_REQUEST_NULL;
    s->next = s->n_buckets;
    if (zero1) s->scratch = hdlm_malloc((size_t)s->counts[s->rank] * sizeof(float) + 1);
    if (s->world > 1 && !zero1) choose_overlap(s);
}

void hdlm_grad_sync_free(hdlm_grad_sync *s) {
    free(s->counts);
    free(s->displs);
    free(s->bucket);
    free(s->requests);
    free(s->scratch);
    memset(s, 0, sizeof *s);
}

void hdlm_grad_sync_arm(hdlm_grad_sync *s) {
    s->armed = s->world > 1 && !s->zero1 && s->overlap;
    s->next = s->n_buckets;
}

void hdlm_grad_sync_ready(void *ctx, size_t from) {
    hdlm_grad_sync *s = ctx;
    if (!s->armed) return;
    // Buckets are started from the end of the buffer, the order in which the backward pass finishes them.
    while (s->next > 0 && s->bucket[s->next - 1] >= from) {
        int b = --s->next;
        mpi_ok(MPI_Iallreduce(MPI_IN_PLACE, s->grads + s->bucket[b], (int)(s->bucket[b + 1] - s->bucket[b]), MPI_FLOAT,
                              MPI_SUM, MPI_COMM_WORLD, &s->requests[b]),
               "Iallreduce");
    }
    int done;   // without a progress thread, Open MPI advances non-blocking collectives only inside MPI calls
    mpi_ok(MPI_Testall(s->n_buckets - s->next, s->requests + s->next, &done, MPI_STATUSES_IGNORE), "Testall");
}

void hdlm_grad_sync_finish(hdlm_grad_sync *s) {
    if (s->world == 1) return;
    if (s->zero1) {
        // The slices are contiguous from 0 in rank order: exactly MPI_Reduce_scatter's layout.
        mpi_ok(MPI_Reduce_scatter(s->grads, s->scratch, s->counts, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD),
               "Reduce_scatter");
        memcpy(s->grads + s->starts[s->rank], s->scratch, (size_t)s->counts[s->rank] * sizeof(float));
        return;
    }
    if (!s->overlap) {
        for (int b = 0; b < s->n_buckets; b++)
            mpi_ok(MPI_Allreduce(MPI_IN_PLACE, s->grads + s->bucket[b], (int)(s->bucket[b + 1] - s->bucket[b]),
                                 MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD),
                   "Allreduce");
        return;
    }
    if (!s->armed) hdlm_grad_sync_arm(s);
    hdlm_grad_sync_ready(s, 0);
    mpi_ok(MPI_Waitall(s->n_buckets, s->requests, MPI_STATUSES_IGNORE), "Waitall");
    s->armed = false;
}

void hdlm_params_allgather(const hdlm_grad_sync *s, float *params) {
    if (s->world == 1) return;
    mpi_ok(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_FLOAT, params, s->counts, s->displs, MPI_FLOAT, MPI_COMM_WORLD),
           "Allgatherv");
}

// Gradient reduction across MPI ranks (src/train/dist.h).
#include "train/dist.h"

#include <stdlib.h>
#include <string.h>

#include "hdlm/common.h"

static void mpi_ok(int rc, const char *what) {
    if (rc != MPI_SUCCESS) HDLM_DIE("MPI %s failed (error %d)", what, rc);
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
    s->armed = s->world > 1 && !s->zero1;
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

// train/dist.h — data parallelism over MPI_COMM_WORLD: the sum of every rank's gradients, reduced in buckets (started
// while the backward pass is still running, hdlm_model.grad_ready, when this MPI's non-blocking all-reduce is as fast
// as its blocking one; after the backward otherwise), or reduce-scattered onto the ranks' slices for ZeRO-1, and the
// all-gather of the updated parameter slices.
#ifndef HDLM_DIST_H
#define HDLM_DIST_H

#include <stdbool.h>
#include <stddef.h>

#include <mpi.h>

#include "hdlm/common.h"   // hdlm_allreduce_sum

typedef struct {
    float *grads;
    size_t n;
    int rank, world;
    bool zero1;              // reduce-scatter onto slices instead of all-reduce
    const size_t *starts;    // world + 1 slice starts (rank r owns [starts[r], starts[r+1]))
    int *counts, *displs;    // the same as MPI counts
    size_t *bucket;          // n_buckets + 1 bucket starts
    int n_buckets;
    int next;                // buckets [next, n_buckets) have been started
    bool overlap;            // buckets start during the backward (MPI_Iallreduce), chosen by hdlm_grad_sync_init
    bool armed;              // the current backward's gradients are the last of the update
    MPI_Request *requests;
    float *scratch;          // ZeRO-1: this rank's reduced slice
} hdlm_grad_sync;

// bucket_floats: all-reduce granularity (e.g. 4 Mi floats). starts: the optimizer's slices (hdlm_partition_rows).
// Collective (all-reduce mode, world > 1): times the buckets' blocking and non-blocking all-reduce and overlaps only
// when the non-blocking one is no slower (with Open MPI on one node it is slower).
void hdlm_grad_sync_init(hdlm_grad_sync *s, float *grads, size_t n, const size_t *starts, bool zero1,
                         size_t bucket_floats);
void hdlm_grad_sync_free(hdlm_grad_sync *s);
// Arms the sync before the last backward of an update (with overlap, buckets start as gradients become final).
void hdlm_grad_sync_arm(hdlm_grad_sync *s);
// hdlm_grad_ready_fn: grads[from, n) are final; starts every bucket inside that range (only when armed, all-reduce
// mode) and lets MPI progress the ones in flight.
void hdlm_grad_sync_ready(void *ctx, size_t from);
// Completes the reduction: afterwards grads hold the sum over ranks (all of it, or this rank's slice for ZeRO-1).
void hdlm_grad_sync_finish(hdlm_grad_sync *s);
// ZeRO-1: every rank's updated slice of params to every rank.
void hdlm_params_allgather(const hdlm_grad_sync *s, float *params);

#endif

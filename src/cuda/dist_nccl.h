// cuda/dist_nccl.h — data parallelism of the CUDA backend: one MPI rank per GPU, the NCCL communicator bootstrapped
// over MPI_COMM_WORLD, and the GPU twin of train/dist.h's hdlm_grad_sync: gradients all-reduced in the same buckets,
// started from the end of the buffer as the backward pass finishes them (the model's grad-ready hook), on a
// communication stream that overlaps the backward; or, for ZeRO-1, reduced onto the same row-aligned slices
// (hdlm_partition_rows) and the updated parameter slices gathered back.
//
// Only CUDA builds have these functions (src/cuda/nccl.cu); CPU ranks keep using MPI (train/dist.h). All buffers are
// device pointers. Every NCCL failure dies through MPI_Abort naming the call; a peer that stops answering is detected
// by polling (ncclCommGetAsyncError, HDLM_NCCL_TIMEOUT seconds, default 600) instead of hanging.
#ifndef HDLM_DIST_NCCL_H
#define HDLM_DIST_NCCL_H

#include <stdbool.h>
#include <stddef.h>

#include "hdlm/cuda.h"

// The GPU this rank drives (collective over MPI_COMM_WORLD): its local rank on the node, from
// OMPI_COMM_WORLD_LOCAL_RANK, else SLURM_LOCALID, else its rank in MPI_Comm_split_type(MPI_COMM_TYPE_SHARED). When a
// launcher gives each rank a single visible GPU (CUDA_VISIBLE_DEVICES per task), that GPU. Returns -1 with a message
// when this rank has no GPU of its own (more ranks on the node than GPUs).
int hdlm_cuda_local_device(int *device);

// The NCCL communicator over MPI_COMM_WORLD on the current device (after hdlm_cuda_init); collective: rank 0's
// ncclGetUniqueId is broadcast with MPI_Bcast. hdlm_nccl_shutdown destroys it (collective).
int hdlm_nccl_init(void);
void hdlm_nccl_shutdown(void);

typedef struct hdlm_nccl_sync hdlm_nccl_sync;

// grads: the device model's fp32 gradient buffer of n floats; starts: world + 1 slice starts (host memory, kept by
// reference); bucket_floats: all-reduce granularity; compute: the stream the backward and the optimizer run on.
// Needs hdlm_nccl_init when the world has more than one rank.
hdlm_nccl_sync *hdlm_nccl_sync_create(float *grads, size_t n, const size_t *starts, bool zero1, size_t bucket_floats,
                                      hdlm_stream compute);
void hdlm_nccl_sync_free(hdlm_nccl_sync *s);
// Arms the sync before the last backward of an update (buckets start as their gradients become final).
void hdlm_nccl_sync_arm(hdlm_nccl_sync *s);
// The grad-ready hook: grads[from, n) are final once the work queued so far on the compute stream has run. Queues
// the all-reduce of every bucket inside that range on the communication stream behind an event of the compute stream
// (only when armed, all-reduce mode). Never blocks.
void hdlm_nccl_sync_ready(void *ctx, size_t from);
// Completes the reduction: afterwards (in compute-stream order) grads hold the sum over ranks, all of it or this
// rank's slice for ZeRO-1. Waits on the host until the collectives are done (detecting failed peers).
void hdlm_nccl_sync_finish(hdlm_nccl_sync *s);
// ZeRO-1: every rank's updated slice of the fp32 params (device) to every rank, in compute-stream order.
void hdlm_nccl_params_allgather(hdlm_nccl_sync *s, float *params);

#endif

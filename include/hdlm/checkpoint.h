// hdlm/checkpoint.h — sharded HDF5 checkpoints (format: docs/checkpoint-format.md).
//
// One checkpoint = one directory <root>/step_NNNNNNNNN/ holding a shard file per rank (its row-aligned slice of every
// flat buffer: parameters, EMA, AdamW moments, ...) and index.h5, in which every tensor of every group is a named
// virtual dataset over the shards: h5dump and h5py read whole tensors by their state-dict names. Saving is
// collective and atomic (temporary directory, fsync, rename, then a COMPLETE marker; <root>/latest names the newest
// complete checkpoint). Reading needs no MPI and works whatever world size wrote the checkpoint.
#ifndef HDLM_CHECKPOINT_H
#define HDLM_CHECKPOINT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hdlm/tensor.h"

#define HDLM_CHECKPOINT_SCHEMA 1


size_t hdlm_tensor_numel(const hdlm_tensor *t);

// Splits the flat range covered by the tensors (contiguous, in offset order) into `world` slices whose boundaries
// fall on row boundaries: rank r owns [starts[r], starts[r+1]). starts has world + 1 entries.
void hdlm_partition_rows(const hdlm_tensor *tensors, int n_tensors, int world, size_t *starts);

typedef struct {
    const char *name;     // group name: "params", "ema", "adam_m", "adam_v", ...
    const float *data;    // holds at least this rank's slice
    size_t data_offset;   // flat index of data[0]: 0 for a full replica, the slice start when sharded (ZeRO-1)
} hdlm_ckpt_group;

typedef struct {
    const char *key;
    int64_t value;
} hdlm_ckpt_scalar;

typedef struct {
    const hdlm_tensor *tensors;
    int n_tensors;
    const hdlm_ckpt_group *groups;
    int n_groups;
    const hdlm_ckpt_scalar *scalars;   // counters, schedule state, seeds (same on every rank)
    int n_scalars;
    const char *config_yaml;           // the resolved configuration (rank 0's is stored)
    const int64_t *rank_state;         // this rank's own state (data-loader position, RNG counters, ...)
    int rank_state_len;                // same on every rank
} hdlm_ckpt_contents;

typedef struct {
    int keep_last;    // keep the newest K complete checkpoints (>= 1)
    int64_t keep_every;   // and every checkpoint whose step is a multiple of M (0: none)
} hdlm_ckpt_retention;

// Collective over MPI_COMM_WORLD (or a single process without MPI). Writes <root>/step_<step>/ atomically, updates
// <root>/latest and applies the retention rule. A failure on any rank fails the call on every rank with that rank's
// message; the previous checkpoints stay untouched. *seconds (optional) receives the wall time.
int hdlm_checkpoint_save(const char *root, int64_t step, const hdlm_ckpt_contents *c, const hdlm_ckpt_retention *keep,
                         double *seconds);

typedef struct hdlm_ckpt hdlm_ckpt;

// Opens and validates a checkpoint directory: COMPLETE marker, schema version, every shard present with the recorded
// size. Problems are refused naming the file and the problem.
int hdlm_checkpoint_open(hdlm_ckpt **out, const char *dir);
void hdlm_checkpoint_close(hdlm_ckpt *ck);
// The newest valid checkpoint under root: `latest` if it validates, else the newest complete one (a warning says which
// was skipped and why). Fails when there is none. path receives the directory.
int hdlm_checkpoint_find_latest(const char *root, char *path, size_t path_size);

// A checkpoint named the way users name one, the same for every tool: a checkpoint directory (holding index.h5), a
// checkpoint root (its newest valid checkpoint, as hdlm_checkpoint_find_latest) or a run directory (its checkpoints/
// root). path receives the checkpoint directory (validated later by hdlm_checkpoint_open). Fails with one message that
// says what was looked for and lists what was found.
int hdlm_checkpoint_resolve(const char *what, char *path, size_t path_size);

const char *hdlm_checkpoint_path(const hdlm_ckpt *ck);
int hdlm_checkpoint_world_size(const hdlm_ckpt *ck);
// Reads flat elements [lo, hi) of a group into out[0 .. hi-lo). The checkpoint's tensor names and shapes must match
// `tensors` (else refused naming the first difference); each tensor read is verified against its CRC-32.
int hdlm_checkpoint_read(hdlm_ckpt *ck, const char *group, const hdlm_tensor *tensors, int n_tensors, size_t lo,
                         size_t hi, float *out);
// A scalar of the checkpoint (refused when absent).
int hdlm_checkpoint_scalar(hdlm_ckpt *ck, const char *key, int64_t *value);
// The same for a scalar that older checkpoints may lack: *present says whether it was there.
int hdlm_checkpoint_scalar_if(hdlm_ckpt *ck, const char *key, int64_t *value, bool *present);
// The stored configuration (malloc'ed, NUL-terminated).
int hdlm_checkpoint_config(hdlm_ckpt *ck, char **yaml);
// The per-rank state of the writing ranks: world x len values, row r = rank r (malloc'ed).
int hdlm_checkpoint_rank_state(hdlm_ckpt *ck, int *world, int *len, int64_t **state);

#endif

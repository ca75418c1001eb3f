// data/dataloader.h — the training data loader: L-token chunks of a token-shard set, a seeded shuffle per epoch, a
// disjoint share per rank, and a position that checkpoints store (docs/training.md, "Data order").
//
// Data order rule: epoch e visits the chunks in the order of a Fisher-Yates shuffle keyed by (seed, e); that order is
// consumed in global micro-batches of G = world x B chunks, rank r taking positions [r·B, (r+1)·B) of each; the last
// (count mod G) chunks of an epoch are skipped. The order depends on (seed, G) only, so 2 ranks with micro-batch B
// read exactly the chunks 1 rank with micro-batch 2B reads, and a run resumed at another world size with the same G
// continues where it stopped.
#ifndef HDLM_DATALOADER_H
#define HDLM_DATALOADER_H

#include <stdint.h>

#include "hdlm/dataset.h"

typedef struct {
    const hdlm_dataset *data;
    uint64_t seed;
    int rank, world, batch;   // batch = B, this rank's micro-batch
    int64_t epoch;            // current epoch (from 0)
    uint64_t position;        // global chunks consumed in this epoch (a multiple of G)
    uint64_t *order;          // the epoch's shuffled chunk indices
    uint64_t order_epoch;     // epoch `order` was built for (UINT64_MAX: none yet)
} hdlm_loader;

// Fails (naming the directory) when the data set holds fewer than one global micro-batch of chunks.
int hdlm_loader_init(hdlm_loader *l, const hdlm_dataset *data, uint64_t seed, int rank, int world, int batch,
                     const char *what);
void hdlm_loader_free(hdlm_loader *l);
// Global micro-batches per epoch.
uint64_t hdlm_loader_batches_per_epoch(const hdlm_loader *l);
// Fills tokens[B·L] with this rank's next micro-batch and advances (to the next epoch when this one is used up).
void hdlm_loader_next(hdlm_loader *l, uint32_t *tokens);
// Moves to a saved position (epoch, global chunks consumed); fails when the position is not a multiple of G or lies
// beyond the epoch.
int hdlm_loader_seek(hdlm_loader *l, int64_t epoch, uint64_t position);

#endif

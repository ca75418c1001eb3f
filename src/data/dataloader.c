// Shuffled, rank-partitioned micro-batches over a token-shard set (src/data/dataloader.h).
#include "data/dataloader.h"

#include <stdlib.h>

#include "hdlm/common.h"
#include "hdlm/rng.h"

static uint64_t global_batch(const hdlm_loader *l) { return (uint64_t)l->world * (uint64_t)l->batch; }

int hdlm_loader_init(hdlm_loader *l, const hdlm_dataset *data, uint64_t seed, int rank, int world, int batch,
                     const char *what) {
    HDLM_ASSERT(world >= 1 && rank >= 0 && rank < world && batch >= 1, "bad loader layout");
    l->data = data;
    l->seed = seed;
    l->rank = rank;
    l->world = world;
    l->batch = batch;
    l->epoch = 0;
    l->position = 0;
    l->order = NULL;
    l->order_epoch = UINT64_MAX;
    uint64_t count = hdlm_dataset_chunk_count(data);
    HDLM_CHECK(count >= global_batch(l),
               "%s: %llu chunks of %llu tokens, fewer than one global micro-batch of %llu (ranks x micro-batch); "
               "use more data, a shorter model.length or a smaller training.batch_size",
               what, (unsigned long long)count, (unsigned long long)data->chunk_len,
               (unsigned long long)global_batch(l));
    l->order = hdlm_malloc(count * sizeof(uint64_t));
    return 0;
}

void hdlm_loader_free(hdlm_loader *l) {
    free(l->order);
    l->order = NULL;
}

uint64_t hdlm_loader_batches_per_epoch(const hdlm_loader *l) {
    return hdlm_dataset_chunk_count(l->data) / global_batch(l);
}

// The epoch's permutation: the same key on every rank (rank 0 in the key), so all ranks agree on the order.
static void build_order(hdlm_loader *l) {
    if (l->order_epoch == (uint64_t)l->epoch) return;
    uint64_t count = hdlm_dataset_chunk_count(l->data);
    for (uint64_t i = 0; i < count; i++) l->order[i] = i;
    hdlm_rng rng;
    hdlm_rng_init(&rng, hdlm_rng_key(l->seed, 0, (uint64_t)l->epoch, HDLM_RNG_DATA));
    for (uint64_t i = count; i > 1; i--) {
        uint64_t j = hdlm_rng_below(&rng, i);
        uint64_t t = l->order[i - 1];
        l->order[i - 1] = l->order[j];
        l->order[j] = t;
    }
    l->order_epoch = (uint64_t)l->epoch;
}

void hdlm_loader_next(hdlm_loader *l, uint32_t *tokens) {
    if (l->position + global_batch(l) > hdlm_dataset_chunk_count(l->data)) {
        l->epoch++;
        l->position = 0;
    }
    build_order(l);
    uint64_t L = l->data->chunk_len, first = l->position + (uint64_t)l->rank * (uint64_t)l->batch;
    for (int b = 0; b < l->batch; b++) hdlm_dataset_chunk_copy(l->data, l->order[first + (uint64_t)b], tokens + b * L);
    l->position += global_batch(l);
}

int hdlm_loader_seek(hdlm_loader *l, int64_t epoch, uint64_t position) {
    HDLM_CHECK(epoch >= 0 && position % global_batch(l) == 0 &&
                   position <= hdlm_dataset_chunk_count(l->data),
               "data-loader position (epoch %lld, %llu chunks) does not fit %llu chunks in global micro-batches of "
               "%llu: resume with the same training.batch_size / training.accum",
               (long long)epoch, (unsigned long long)position, (unsigned long long)hdlm_dataset_chunk_count(l->data),
               (unsigned long long)global_batch(l));
    l->epoch = epoch;
    l->position = position;
    return 0;
}

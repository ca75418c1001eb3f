// hdlm/metrics.h — training metrics as JSON Lines: one object per progress line (fields: docs/training.md).
#ifndef HDLM_METRICS_H
#define HDLM_METRICS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

typedef struct {
    int64_t update, epoch, micro_step, tokens;
    double loss, lr, grad_norm;
    double tokens_per_s, flops_fraction;   // throughput since the previous record; achieved / peak FLOP/s
    double elapsed_s, eta_s;
    double val_loss;                        // NAN: not evaluated at this update (written as null)
    int64_t skipped;                        // updates skipped so far (non-finite gradients)
    const char *loss_unit;                  // what loss and val_loss count (hdlm_train_loss_unit); NULL: not written
} hdlm_metrics_record;

typedef struct {
    FILE *file;   // NULL on ranks other than 0
    char path[4096];
} hdlm_metrics;

// Rank 0 opens path; other ranks get a no-op writer. resumed_update >= 0: the run resumes after that update, so the
// records of later updates (written before a crash, about to be redone) are dropped and the rest is appended to;
// -1: a new file.
int hdlm_metrics_open(hdlm_metrics *m, const char *path, int64_t resumed_update);
// Writes one record and flushes it; a write error (a full disk) is returned with the cause, never ignored.
int hdlm_metrics_write(hdlm_metrics *m, const hdlm_metrics_record *r);
void hdlm_metrics_close(hdlm_metrics *m);

#endif

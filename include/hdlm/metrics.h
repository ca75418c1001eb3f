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
} hdlm_metrics_record;

typedef struct {
    FILE *file;   // NULL on ranks other than 0
} hdlm_metrics;

// Rank 0 opens path (appending when resuming); other ranks get a no-op writer.
int hdlm_metrics_open(hdlm_metrics *m, const char *path, bool append);
void hdlm_metrics_write(hdlm_metrics *m, const hdlm_metrics_record *r);
void hdlm_metrics_close(hdlm_metrics *m);

#endif

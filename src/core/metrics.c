// Training metrics as JSON Lines (include/hdlm/metrics.h).
#include "hdlm/metrics.h"

#include <errno.h>
#include <math.h>
#include <string.h>

#include "hdlm/common.h"

int hdlm_metrics_open(hdlm_metrics *m, const char *path, bool append) {
    m->file = NULL;
    if (hdlm_rank() != 0) return 0;
    m->file = fopen(path, append ? "a" : "w");
    HDLM_CHECK(m->file, "cannot open the metrics file %s: %s", path, strerror(errno));
    return 0;
}

// JSON has no NaN or infinity: such values are written as null.
static void put_number(FILE *f, const char *key, double x) {
    if (isfinite(x)) fprintf(f, ",\"%s\":%.9g", key, x);
    else fprintf(f, ",\"%s\":null", key);
}

void hdlm_metrics_write(hdlm_metrics *m, const hdlm_metrics_record *r) {
    if (!m->file) return;
    FILE *f = m->file;
    fprintf(f, "{\"update\":%lld,\"epoch\":%lld,\"micro_step\":%lld,\"tokens\":%lld", (long long)r->update,
            (long long)r->epoch, (long long)r->micro_step, (long long)r->tokens);
    put_number(f, "loss", r->loss);
    put_number(f, "lr", r->lr);
    put_number(f, "grad_norm", r->grad_norm);
    put_number(f, "tokens_per_s", r->tokens_per_s);
    put_number(f, "flops_fraction", r->flops_fraction);
    put_number(f, "elapsed_s", r->elapsed_s);
    put_number(f, "eta_s", r->eta_s);
    put_number(f, "val_loss", r->val_loss);
    fprintf(f, ",\"skipped\":%lld}\n", (long long)r->skipped);
    fflush(f);
}

void hdlm_metrics_close(hdlm_metrics *m) {
    if (m->file) fclose(m->file);
    m->file = NULL;
}

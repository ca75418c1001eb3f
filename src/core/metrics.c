// Training metrics as JSON Lines (include/hdlm/metrics.h).
#include "hdlm/metrics.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hdlm/common.h"

// Keeps the records of updates <= last (a resumed run redoes the later ones), through a temporary file and a rename.
static int drop_later_records(const char *path, int64_t last) {
    FILE *in = fopen(path, "r");
    if (!in) return 0;   // nothing written yet
    hdlm_atomic_file out;
    if (hdlm_atomic_open(&out, path) != 0) {
        fclose(in);
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    long long update;
    while (getline(&line, &cap, in) > 0)
        if (sscanf(line, "{\"update\":%lld", &update) == 1 && update <= last)
            hdlm_atomic_write(&out, line, strlen(line));
    free(line);
    fclose(in);
    return hdlm_atomic_commit(&out);
}

int hdlm_metrics_open(hdlm_metrics *m, const char *path, int64_t resumed_update) {
    m->file = NULL;
    snprintf(m->path, sizeof m->path, "%s", path);
    if (hdlm_rank() != 0) return 0;
    if (resumed_update >= 0) HDLM_TRY(drop_later_records(path, resumed_update));
    m->file = fopen(path, resumed_update >= 0 ? "a" : "w");
    HDLM_CHECK(m->file, "cannot open the metrics file %s: %s", path, strerror(errno));
    return 0;
}

// JSON has no NaN or infinity: such values are written as null.
static void put_number(FILE *f, const char *key, double x) {
    if (isfinite(x)) fprintf(f, ",\"%s\":%.9g", key, x);
    else fprintf(f, ",\"%s\":null", key);
}

int hdlm_metrics_write(hdlm_metrics *m, const hdlm_metrics_record *r) {
    if (!m->file) return 0;
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
    if (r->loss_unit) fprintf(f, ",\"loss_unit\":\"%s\"", r->loss_unit);
    fprintf(f, ",\"skipped\":%lld}\n", (long long)r->skipped);
    HDLM_CHECK(fflush(f) == 0 && !ferror(f), "cannot write the metrics file %s: %s (record of update %lld lost)",
               m->path, strerror(errno), (long long)r->update);
    return 0;
}

void hdlm_metrics_close(hdlm_metrics *m) {
    if (m->file) fclose(m->file);
    m->file = NULL;
}

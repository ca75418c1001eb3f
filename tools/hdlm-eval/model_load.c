// Loading a model for evaluation (checkpoint or checkpoint root, EMA or raw weights) and progress reports.
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "eval.h"
#include "hdlm/common.h"
#include "hdlm/checkpoint.h"
#include "hdlm/model_io.h"

int eval_model_load(eval_model *em, const char *ckpt, bool raw, int tau) {
    memset(em, 0, sizeof *em);
    HDLM_TRY(hdlm_checkpoint_resolve(ckpt, em->path, sizeof em->path));
    HDLM_TRY(hdlm_model_load_checkpoint(&em->model, &em->config, em->path, raw ? "params" : "ema"));
    if (!em->config.kind.scheduled) return 0;
    if (hdlm_train_config_schedule(&em->config, em->model->config.max_length, tau, true, &em->schedule) != 0) {
        hdlm_model_free(em->model);
        em->model = NULL;
        return -1;
    }
    em->has_schedule = true;
    return 0;
}

bool eval_model_block_diffusion(const eval_model *em) {
    return em->model->config.family == HDLM_FAMILY_EPSILON && em->has_schedule &&
           em->schedule.type == HDLM_SCHEDULE_BLOCK && em->schedule.width < em->schedule.length;
}

void eval_model_free(eval_model *em) {
    if (em->has_schedule) hdlm_schedule_free(&em->schedule);
    hdlm_model_free(em->model);
    em->model = NULL;
}

void eval_progress_init(eval_progress *p, const char *what, double every) {
    p->what = what;
    p->start = p->last = hdlm_time_now();
    p->every = every;
}

void eval_progress_report(void *ctx, int done, int total) {
    eval_progress *p = ctx;
    double now = hdlm_time_now();
    if (done < total && now - p->last < p->every) return;
    p->last = now;
    double elapsed = now - p->start, eta = done > 0 ? elapsed * (total - done) / done : 0;
    if (hdlm_rank() == 0)
        fprintf(stderr, "%s: %d/%d, %.1f s elapsed, ETA %.1f s\n", p->what, done, total, elapsed, eta);
}

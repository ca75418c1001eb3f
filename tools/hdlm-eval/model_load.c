// Loading a model for evaluation (checkpoint or checkpoint root, EMA or raw weights) and progress reports.
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "eval.h"
#include "hdlm/common.h"
#include "hdlm/model_io.h"

int eval_model_load(eval_model *em, const char *ckpt, bool raw, int tau) {
    memset(em, 0, sizeof *em);
    struct stat st;
    HDLM_CHECK(stat(ckpt, &st) == 0 && S_ISDIR(st.st_mode), "--ckpt %s: no such checkpoint directory", ckpt);
    char latest[4096];
    snprintf(latest, sizeof latest, "%s/latest", ckpt);
    if (stat(latest, &st) == 0) HDLM_TRY(hdlm_checkpoint_find_latest(ckpt, em->path, sizeof em->path));
    else snprintf(em->path, sizeof em->path, "%s", ckpt);
    HDLM_TRY(hdlm_model_load_checkpoint(&em->model, &em->config, em->path, raw ? "params" : "ema"));
    const char *type = em->config.annealing.type;
    if (strcmp(type, "none") == 0) return 0;
    hdlm_schedule_type stype;
    hdlm_context_type context;
    hdlm_block_type block;
    int rc = hdlm_schedule_type_parse(type, "annealing.type", &stype);
    if (rc == 0) rc = hdlm_context_type_parse(em->config.annealing.context_type, "annealing.context_type", &context);
    if (rc == 0) rc = hdlm_block_type_parse(em->config.annealing.block_type, "annealing.block_type", &block);
    if (stype == HDLM_SCHEDULE_HYBRID) stype = HDLM_SCHEDULE_BLOCK;
    int length = em->model->config.max_length;
    if (rc == 0)
        rc = hdlm_schedule_init(&em->schedule, stype, length, (int)(em->config.annealing.width < length
                                                                        ? em->config.annealing.width : length),
                                tau > 0 ? tau : (int)em->config.annealing.tau, em->config.annealing.sampling_eps,
                                context, block);
    if (rc != 0) {
        hdlm_model_free(em->model);
        em->model = NULL;
        return -1;
    }
    em->has_schedule = true;
    return 0;
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

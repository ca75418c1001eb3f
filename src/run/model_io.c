// A model's weights to and from checkpoints of the store (conventions: docs/checkpoint-format.md).
#include "hdlm/model_io.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hdlm/common.h"
#include "hdlm/config.h"
#include "model/layers.h"

void hdlm_model_trainable_tensors(const hdlm_model *m, hdlm_tensor **descs, int *n_descs) {
    hdlm_tensor *d = hdlm_calloc((size_t)m->n_tensors, sizeof *d);
    int n = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        const hdlm_tensor *t = &m->tensors[i];
        if (!t->trainable) continue;
        d[n++] = *t;
    }
    *descs = d;
    *n_descs = n;
}

int hdlm_model_read_checkpoint(hdlm_model *m, const char *dir, const char *group) {
    hdlm_ckpt *ck;
    HDLM_TRY(hdlm_checkpoint_open(&ck, dir));
    hdlm_tensor *descs;
    int n;
    hdlm_model_trainable_tensors(m, &descs, &n);
    int rc = hdlm_checkpoint_read(ck, group, descs, n, 0, m->n_params, m->params);
    free(descs);
    hdlm_checkpoint_close(ck);
    return rc;
}

int hdlm_model_load_checkpoint(hdlm_model **out, hdlm_train_config *config, const char *dir, const char *group) {
    *out = NULL;
    hdlm_ckpt *ck;
    HDLM_TRY(hdlm_checkpoint_open(&ck, dir));
    char *yaml = NULL;
    int rc = hdlm_checkpoint_config(ck, &yaml);
    hdlm_checkpoint_close(ck);
    HDLM_TRY(rc);
    hdlm_train_config c;
    char origin[4200];
    snprintf(origin, sizeof origin, "%s/index.h5 config_yaml", dir);
    hdlm_model_config mc;
    rc = hdlm_config_defaults(&hdlm_train_config_schema, &c);
    if (rc == 0) rc = hdlm_config_load_yaml_string(&hdlm_train_config_schema, &c, yaml, origin);
    if (rc == 0) rc = hdlm_train_config_resolve(&c);
    free(yaml);
    HDLM_TRY(rc);
    if (hdlm_train_config_model(&c, &mc) != 0)
        return HDLM_FAIL("%s: the stored configuration gives no valid model: %s", origin, hdlm_last_error());
    hdlm_model *m;
    HDLM_TRY(hdlm_model_create(&m, &mc));
    if (hdlm_model_read_checkpoint(m, dir, group) != 0) {
        hdlm_model_free(m);
        return -1;
    }
    hdlm_rotary_inv_freq(m->p.inv_freq, mc.width / mc.n_heads);   // buffers follow from the configuration
    if (config) *config = c;
    *out = m;
    return 0;
}

int hdlm_model_save_checkpoint(const char *root, int64_t step, const hdlm_model *m, const hdlm_train_config *config,
                               bool with_optimizer, double *seconds) {
    char *yaml = hdlm_config_to_yaml(&hdlm_train_config_schema, config);

    hdlm_tensor *descs;
    int n;
    hdlm_model_trainable_tensors(m, &descs, &n);
    float *zeros = with_optimizer ? hdlm_calloc(m->n_params, sizeof(float)) : NULL;
    hdlm_ckpt_group groups[] = {{"params", m->params, 0}, {"ema", m->params, 0}, {"adam_m", zeros, 0},
                                {"adam_v", zeros, 0}};
    hdlm_ckpt_scalar scalars[] = {{"update", step},          {"micro_step", 0}, {"tokens_seen", 0},
                                  {"seed", config->training.seed}, {"world_size", hdlm_world_size()}, {"epoch", 0}};
    hdlm_ckpt_contents c = {descs, n, groups, with_optimizer ? 4 : 2, scalars, 6, yaml, NULL, 0};
    hdlm_ckpt_retention keep = {config->run.keep_last > 0 ? (int)config->run.keep_last : 1, config->run.keep_every};
    int rc = hdlm_checkpoint_save(root, step, &c, &keep, seconds);
    free(zeros);
    free(descs);
    free(yaml);
    return rc;
}

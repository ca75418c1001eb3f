// hdlm-convert: model weights between hdlm checkpoints and safetensors files with the reference's state-dict keys
// (method §7.1, §8.6; docs/checkpoint-format.md).
//   hdlm-convert export CKPT_DIR OUT.safetensors [--raw] [--prefix P]
//   hdlm-convert import IN.safetensors --config CONFIG.yaml [key=value ...] --out RUN_DIR [--prefix P] [--weights-only]
//   hdlm-convert info CKPT_DIR|FILE.safetensors
#include <getopt.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hdlm/checkpoint.h"
#include "hdlm/common.h"
#include "hdlm/config.h"
#include "hdlm/model_io.h"

static void print_usage(FILE *f) {
    fprintf(f,
            "usage:\n"
            "  hdlm-convert export CKPT_DIR OUT.safetensors [--raw] [--prefix P]\n"
            "      writes the checkpoint's EMA weights (--raw: the raw weights, group \"params\") as fp32 safetensors\n"
            "      with the reference's state-dict keys (each preceded by P when given)\n"
            "  hdlm-convert import IN.safetensors --config CONFIG.yaml [key=value ...] --out RUN_DIR [--prefix P]\n"
            "                      [--weights-only]\n"
            "      reads F32/BF16/F16 weights of the model CONFIG.yaml describes (keys after removing P; a\n"
            "      rotary_emb.inv_freq buffer is verified, not loaded) and writes RUN_DIR/checkpoints/step_000000000\n"
            "      with the weights as params and ema, the configuration, and zero AdamW moments (a run resumes\n"
            "      from it as a fresh start; --weights-only leaves the moments out)\n"
            "  hdlm-convert info CKPT_DIR|FILE.safetensors\n"
            "      tensors, shapes, element counts and the configuration summary\n");
}

static int is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int cmd_export(const char *what, const char *out, bool raw, const char *prefix) {
    char ckpt[4200];
    HDLM_TRY(hdlm_checkpoint_resolve(what, ckpt, sizeof ckpt));
    hdlm_model *m;
    hdlm_train_config c;
    HDLM_TRY(hdlm_model_load_checkpoint(&m, &c, ckpt, raw ? "params" : "ema"));
    hdlm_ckpt *ck;
    char *yaml = NULL;
    int rc = hdlm_checkpoint_open(&ck, ckpt);
    if (rc == 0) {
        rc = hdlm_checkpoint_config(ck, &yaml);
        hdlm_checkpoint_close(ck);
    }
    if (rc == 0) rc = hdlm_safetensors_write_model(out, m, m->params, prefix, yaml);
    if (rc == 0)
        hdlm_log("hdlm-convert: wrote %s: %zu %s weights (%s) of %s\n", out, m->n_params, raw ? "raw" : "EMA",
                 hdlm_family_name(m->config.family), ckpt);
    free(yaml);
    hdlm_model_free(m);
    return rc;
}

static int cmd_import(const char *in, const char *config_path, char **overrides, int n_overrides, const char *run_dir,
                      const char *prefix, bool weights_only) {
    // The configuration as a run reads it, without the run's own checks (data.train may be set later, on resume).
    hdlm_train_config c;
    memset(&c, 0, sizeof c);
    HDLM_TRY(hdlm_config_defaults(&hdlm_train_config_schema, &c));
    HDLM_TRY(hdlm_config_load_yaml(&hdlm_train_config_schema, &c, config_path));
    for (int i = 0; i < n_overrides; i++) HDLM_TRY(hdlm_config_override(&hdlm_train_config_schema, &c, overrides[i]));
    HDLM_TRY(hdlm_train_config_resolve(&c));
    hdlm_model_config mc;
    HDLM_TRY(hdlm_train_config_model(&c, &mc));
    // The checkpoint records where it lives, so a run or the evaluation tool started on it finds its directory.
    HDLM_CHECK(strlen(run_dir) < sizeof c.run.dir, "--out %s: path longer than %zu characters", run_dir,
               sizeof c.run.dir - 1);
    snprintf(c.run.dir, sizeof c.run.dir, "%s", run_dir);
    // A second import into a run would publish step 0 as `latest` beside newer checkpoints (and retention could
    // delete it at once): refuse.
    char latest[4300];
    snprintf(latest, sizeof latest, "%s/checkpoints/latest", run_dir);
    HDLM_CHECK(access(latest, F_OK) != 0, "--out %s already holds checkpoints (%s exists): give a new run directory",
               run_dir, latest);
    hdlm_safetensors *st;
    HDLM_TRY(hdlm_safetensors_open(&st, in));
    hdlm_model *m;
    HDLM_TRY(hdlm_model_create(&m, &mc));
    hdlm_model_init(m, 0);   // buffers; every trainable tensor is overwritten below
    int rc = hdlm_safetensors_load_model(st, m, prefix);
    hdlm_safetensors_close(st);
    char root[4200];
    snprintf(root, sizeof root, "%s/checkpoints", run_dir);
    if (rc == 0 && mkdir(run_dir, 0755) != 0 && !is_dir(run_dir)) rc = HDLM_FAIL("--out %s: cannot create it", run_dir);
    if (rc == 0 && mkdir(root, 0755) != 0 && !is_dir(root)) rc = HDLM_FAIL("cannot create %s", root);
    double seconds = 0;
    if (rc == 0) rc = hdlm_model_save_checkpoint(root, 0, m, &c, !weights_only, &seconds);
    if (rc == 0)
        hdlm_log("hdlm-convert: imported %s (%zu %s parameters) into %s/step_000000000 in %.2f s\n", in, m->n_params,
                 hdlm_family_name(mc.family), root, seconds);
    hdlm_model_free(m);
    return rc;
}

static void print_shape(const int64_t *shape, int ndim) {
    printf("[");
    for (int k = 0; k < ndim; k++) printf(k ? ", %lld" : "%lld", (long long)shape[k]);
    printf("]");
}

static int info_safetensors(const char *path) {
    hdlm_safetensors *st;
    HDLM_TRY(hdlm_safetensors_open(&st, path));
    size_t total = 0;
    printf("%s: safetensors, %d tensors, %zu data bytes\n", path, st->n_tensors, st->size);
    for (int i = 0; i < st->n_tensors; i++) {
        const hdlm_st_tensor *t = &st->tensors[i];
        size_t numel = (t->end - t->begin) / (t->dtype == HDLM_ST_F32 ? 4 : 2);
        total += numel;
        printf("  %-48s %-4s ", t->name, hdlm_st_dtype_name(t->dtype));
        print_shape(t->shape, t->ndim);
        printf(" %zu\n", numel);
    }
    printf("total elements: %zu\n", total);
    if (st->metadata) printf("metadata: %.300s%s\n", st->metadata, strlen(st->metadata) > 300 ? " ..." : "");
    hdlm_safetensors_close(st);
    return 0;
}

static int info_checkpoint(const char *dir) {
    hdlm_model *m;
    hdlm_train_config c;
    HDLM_TRY(hdlm_model_load_checkpoint(&m, &c, dir, "params"));
    hdlm_ckpt *ck;
    if (hdlm_checkpoint_open(&ck, dir) != 0) {
        hdlm_model_free(m);
        return -1;
    }
    printf("%s: checkpoint written by %d rank(s)\n", dir, hdlm_checkpoint_world_size(ck));
    const char *keys[] = {"update", "micro_step", "tokens_seen", "seed", "world_size", "epoch"};
    for (size_t k = 0; k < sizeof keys / sizeof *keys; k++) {
        int64_t v;
        if (hdlm_checkpoint_scalar(ck, keys[k], &v) == 0) printf("  %s: %lld\n", keys[k], (long long)v);
    }
    hdlm_clear_error();
    hdlm_checkpoint_close(ck);
    const hdlm_model_config *mc = &m->config;
    printf("model: %s, width %d, %d layers, %d heads, mlp ratio %d, cond_dim %d, vocab %d, length %d, rotary %s\n",
           c.model.name, mc->width, mc->n_layers, mc->n_heads, mc->mlp_ratio, mc->cond_dim, mc->vocab, mc->max_length,
           c.model.rotary);
    printf("training: objective %s, loss %s, batch %lld, iters %lld, lr %g; annealing %s (width %lld, tau %lld)\n",
           c.training.objective, c.training.loss_type, (long long)c.training.batch_size,
           (long long)c.training.n_iters, c.optim.lr, c.annealing.type, (long long)c.annealing.width,
           (long long)c.annealing.tau);
    for (int i = 0; i < m->n_tensors; i++) {
        const hdlm_tensor *t = &m->tensors[i];
        if (!t->trainable) continue;
        int64_t s[2] = {t->shape[0], t->ndim > 1 ? t->shape[1] : 0};
        printf("  %-48s ", t->name);
        print_shape(s, t->ndim);
        printf(" %zu\n", t->numel);
    }
    printf("total parameters: %zu\n", m->n_params);
    hdlm_model_free(m);
    return 0;
}

static int run(int argc, char **argv) {
    static const struct option opts[] = {{"raw", no_argument, 0, 'r'},         {"prefix", required_argument, 0, 'p'},
                                         {"config", required_argument, 0, 'c'}, {"out", required_argument, 0, 'o'},
                                         {"weights-only", no_argument, 0, 'w'}, {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    bool raw = false, weights_only = false;
    const char *prefix = NULL, *config = NULL, *out = NULL;
    int opt;
    // GNU getopt permutes: options may come before or after the command and its operands.
    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (opt) {
            case 'r': raw = true; break;
            case 'p': prefix = optarg; break;
            case 'c': config = optarg; break;
            case 'o': out = optarg; break;
            case 'w': weights_only = true; break;
            case 'h': print_usage(stdout); return 0;
            default: print_usage(stderr); return HDLM_FAIL("bad command line (see above)");
        }
    }
    HDLM_CHECK(optind < argc, "missing command: export, import or info (hdlm-convert --help)");
    const char *cmd = argv[optind];
    char **pos = argv + optind + 1;
    int n_pos = argc - optind - 1;
    int rc;
    if (strcmp(cmd, "export") == 0) {
        if (n_pos != 2) rc = HDLM_FAIL("export needs CKPT_DIR and OUT.safetensors (got %d operands)", n_pos);
        else if (config || out || weights_only) rc = HDLM_FAIL("export takes only --raw and --prefix");
        else rc = cmd_export(pos[0], pos[1], raw, prefix);
    } else if (strcmp(cmd, "import") == 0) {
        if (n_pos < 1) rc = HDLM_FAIL("import needs IN.safetensors");
        else if (!config) rc = HDLM_FAIL("import needs --config CONFIG.yaml (the model the weights belong to)");
        else if (!out) rc = HDLM_FAIL("import needs --out RUN_DIR");
        else if (raw) rc = HDLM_FAIL("--raw belongs to export");
        else rc = cmd_import(pos[0], config, pos + 1, n_pos - 1, out, prefix, weights_only);
    } else if (strcmp(cmd, "info") == 0) {
        if (n_pos != 1) rc = HDLM_FAIL("info needs one CKPT_DIR or FILE.safetensors (got %d operands)", n_pos);
        else rc = is_dir(pos[0]) ? info_checkpoint(pos[0]) : info_safetensors(pos[0]);
    } else {
        rc = HDLM_FAIL("unknown command '%s' (export, import or info; hdlm-convert --help)", cmd);
    }
    return rc;
}

// Under mpirun the checkpoint save is collective over the job; a process started alone saves without MPI (the store
// supports it), which spares Open MPI's singleton start-up (about a second).
static bool launched_by_mpirun(void) { return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK"); }

int main(int argc, char **argv) {
    bool mpi = launched_by_mpirun();
    if (mpi) MPI_Init(&argc, &argv);
    HDLM_MUST(run(argc, argv));
    if (mpi) MPI_Finalize();
    return 0;
}

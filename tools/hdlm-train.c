// hdlm-train — trains a hybrid diffusion language model with MPI data parallelism (docs/training.md).
//   mpirun -np 2 hdlm-train --config jobs/configs/small.yaml [key=value ...] [--resume [latest|DIR]]
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <mpi.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hdlm/checkpoint.h"
#include "hdlm/common.h"
#include "hdlm/metrics.h"
#include "hdlm/peak.h"
#include "hdlm/trainer.h"

// Exit status after a SIGTERM/SIGUSR1: a checkpoint of the current update was written; run again with --resume.
#define EXIT_PREEMPTED 75   // EX_TEMPFAIL (sysexits.h): "try again later"

// Set by the handler only; the training loop polls it at each update boundary (docs/cluster.md).
static volatile sig_atomic_t stop_signal;

static void on_stop_signal(int sig) { stop_signal = sig; }

static void install_stop_handlers(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    // A rank whose launcher dies (kill -9 of mpirun or of the node's daemon) ends at once instead of writing more
    // checkpoints nobody will read. Only under a launcher: a run started from a shell outlives it (nohup).
    if (!getenv("OMPI_COMM_WORLD_RANK") && !getenv("PMIX_RANK") && !getenv("SLURM_STEP_ID")) return;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() == 1) _exit(EXIT_FAILURE);   // the launcher died before the line above: adopted by init
}

// True on every rank when any rank got a stop signal: all ranks must take part in the collective checkpoint.
static bool stop_requested(void) {
    int local = stop_signal, any = 0;
    MPI_Allreduce(&local, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return any != 0;
}

// <run.dir>/DONE holds the number of updates of the completed run; -1 when there is none.
static int64_t done_updates(const char *run_dir) {
    char path[HDLM_CONFIG_STRING_MAX + 16];
    snprintf(path, sizeof path, "%s/DONE", run_dir);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long long n = -1;
    if (fscanf(f, "update %lld", &n) != 1) n = -1;
    fclose(f);
    return n;
}

// Written after the final checkpoint, through a rename so that a reader never sees a partial marker.
static int write_done(const char *run_dir, int64_t updates) {
    char path[HDLM_CONFIG_STRING_MAX + 16], tmp[HDLM_CONFIG_STRING_MAX + 32];
    snprintf(path, sizeof path, "%s/DONE", run_dir);
    snprintf(tmp, sizeof tmp, "%s/DONE.tmp", run_dir);
    FILE *f = fopen(tmp, "w");
    HDLM_CHECK(f, "cannot write %s: %s", tmp, strerror(errno));
    fprintf(f, "update %lld\n", (long long)updates);
    HDLM_CHECK(fclose(f) == 0 && rename(tmp, path) == 0, "cannot write %s: %s", path, strerror(errno));
    return 0;
}

static void usage(FILE *out) {
    fprintf(out,
            "usage: mpirun -np R hdlm-train --config FILE [key=value ...] [--resume [latest|DIR]]\n"
            "       mpirun -np R hdlm-train --resume RUN_DIR [key=value ...]   (the configuration its checkpoint stores)\n"
            "  --config FILE      YAML training configuration, or the name of a preset (tiny, small, mdlm, sedd, ar,\n"
            "                     bd3lm_w4, ardm, ...: <prefix>/share/hdlm/jobs/configs/NAME.yaml)\n"
            "  key=value          override one key, e.g. training.batch_size=64 annealing.width=256\n"
            "  --resume [WHAT]    continue from <run.dir>/checkpoints/latest (default), or from WHAT: a run directory,\n"
            "                     a checkpoint root or a checkpoint (without --config: its stored configuration)\n"
            "  --help             this text and every configuration key\n"
            "Writes <run.dir>/config.yaml, <run.dir>/metrics.jsonl, <run.dir>/checkpoints/ and, once training.n_iters\n"
            "updates are done, <run.dir>/DONE. SIGTERM or SIGUSR1: every rank saves a checkpoint at the end of the\n"
            "current update and the job exits with status 75 (resume with --resume).\n"
            "Plot the metrics: tools/plot-metrics.sh <run.dir>/metrics.jsonl out.png\n\n");
}

static int write_config(const hdlm_train_config *cfg, const char *yaml) {
    char path[HDLM_CONFIG_STRING_MAX + 16];
    snprintf(path, sizeof path, "%s/config.yaml", cfg->run.dir);
    FILE *f = fopen(path, "w");
    HDLM_CHECK(f, "cannot write %s: %s", path, strerror(errno));
    fputs(yaml, f);
    HDLM_CHECK(fclose(f) == 0, "cannot write %s: %s", path, strerror(errno));
    return 0;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    install_stop_handlers();
    const char *config_path = NULL, *resume = NULL;
    const char **overrides = hdlm_calloc((size_t)argc, sizeof(char *));
    int n_overrides = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            if (hdlm_rank() == 0) {
                usage(stdout);
                hdlm_config_print_help(&hdlm_train_config_schema, stdout);
            }
            MPI_Finalize();
            return 0;
        } else if (strcmp(argv[i], "--config") == 0) {
            if (i + 1 >= argc) HDLM_DIE("--config needs a file");
            config_path = argv[++i];
        } else if (strcmp(argv[i], "--resume") == 0) {
            resume = "latest";
            if (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0 && !strchr(argv[i + 1], '=')) resume = argv[++i];
        } else if (strchr(argv[i], '=') && argv[i][0] != '-') {
            overrides[n_overrides++] = argv[i];
        } else {
            if (hdlm_rank() == 0) usage(stderr);
            HDLM_DIE("unknown argument '%s'", argv[i]);
        }
    }
    hdlm_train_config cfg;
    char resumed_from[4200] = "", origin[4300], preset[4400];   // origin: the configuration's source, for the log
    // --config NAME (no such file, no '/'): the preset NAME of <prefix>/share/hdlm/jobs/configs.
    if (config_path && !strchr(config_path, '/') && access(config_path, F_OK) != 0) {
        snprintf(preset, sizeof preset, "%s/jobs/configs/%s%s", hdlm_share_dir(), config_path,
                 strstr(config_path, ".yaml") ? "" : ".yaml");
        if (access(preset, F_OK) != 0)
            HDLM_DIE("--config %s: no such file, and no preset of that name in %s/jobs/configs", config_path,
                     hdlm_share_dir());
        config_path = preset;
    }
    if (config_path) {
        HDLM_MUST(hdlm_train_config_load(&cfg, config_path, overrides, n_overrides, hdlm_world_size()));
    } else {
        // Every checkpoint stores its configuration: --resume RUN_DIR (a checkpoint root, a checkpoint) is enough.
        if (!resume || strcmp(resume, "latest") == 0)
            HDLM_DIE("--config FILE is required (presets: jobs/configs/*.yaml), or --resume RUN_DIR to continue a run "
                     "with the configuration its checkpoint stores");
        HDLM_MUST(hdlm_checkpoint_resolve(resume, resumed_from, sizeof resumed_from));
        hdlm_ckpt *ck;
        char *stored = NULL;
        HDLM_MUST(hdlm_checkpoint_open(&ck, resumed_from));
        int rc = hdlm_checkpoint_config(ck, &stored);
        hdlm_checkpoint_close(ck);
        HDLM_MUST(rc);
        snprintf(origin, sizeof origin, "%s/index.h5 config_yaml", resumed_from);
        // The run continues where its checkpoints are (a run directory may have been moved since): run.dir is the
        // folder holding checkpoints/step_N, unless an override says otherwise.
        static char run_dir[4300];
        snprintf(run_dir, sizeof run_dir, "run.dir=%s", resumed_from);
        char *cut = strrchr(run_dir, '/');
        if (cut) *cut = '\0';
        size_t n = strlen(run_dir);
        bool in_root = n > 12 && strcmp(run_dir + n - 12, "/checkpoints") == 0;
        if (in_root) run_dir[n - 12] = '\0';
        const char **all = hdlm_calloc((size_t)n_overrides + 1, sizeof *all);
        all[0] = run_dir;
        for (int i = 0; i < n_overrides; i++) all[1 + i] = overrides[i];
        HDLM_MUST(hdlm_train_config_load_text(&cfg, stored, origin, in_root ? all : all + 1,
                                              n_overrides + (in_root ? 1 : 0), hdlm_world_size()));
        free(all);
        free(stored);
        resume = resumed_from;
        config_path = origin;
    }
    free(overrides);
    int64_t done = resume ? done_updates(cfg.run.dir) : -1;
    if (done >= cfg.training.n_iters) {
        hdlm_log("hdlm-train: %s/DONE: the run is complete (%lld updates); nothing to do\n", cfg.run.dir,
                 (long long)done);
        MPI_Finalize();
        return 0;
    }
    char *yaml = hdlm_config_to_yaml(&hdlm_train_config_schema, &cfg);
    hdlm_log("hdlm-train: resolved configuration (%s):\n%s", config_path, yaml);
    if (hdlm_rank() == 0) {
        char ckdir[HDLM_CONFIG_STRING_MAX + 16];
        snprintf(ckdir, sizeof ckdir, "%s/checkpoints", cfg.run.dir);
        HDLM_MUST(hdlm_make_dirs(ckdir, "run.dir"));
        HDLM_MUST(write_config(&cfg, yaml));
    }
    free(yaml);
    MPI_Barrier(MPI_COMM_WORLD);
    HDLM_MUST(hdlm_watchdog_start(cfg.run.dir, cfg.training.watchdog_s));   // from here on every collective is watched

    // CPU: every rank measures its own threads at once, so the sum is the peak of the cores the job uses (measured
    // in 6 ms runs, one job read half of it, and its fraction of the peak 72 % where the runs beside it read 36 %).
    // GPU: one GPU per rank at the dense bf16 peak of an H100/H200 SXM.
    bool cuda = cfg.kind.device == HDLM_DEVICE_CUDA;
    double peak = cuda ? hdlm_world_size() * HDLM_GPU_PEAK_BF16_FLOPS
                       : hdlm_allreduce_sum(hdlm_fma_peak_flops_settled(omp_get_max_threads()));
    hdlm_trainer *t;
    HDLM_MUST(hdlm_trainer_create(&t, &cfg, resume));
    hdlm_trainer_info info = hdlm_trainer_state(t);
    char peak_of[64];
    if (cuda)
        snprintf(peak_of, sizeof peak_of, "%d GPU(s), dense bf16", info.world);
    else
        snprintf(peak_of, sizeof peak_of, "%d ranks x %d threads", info.world, omp_get_max_threads());
    hdlm_log("model: %s, %zu parameters; %d ranks x micro-batch %d x accum %d = %lld sequences of %d tokens per "
             "update; %.3g FLOP/token; peak %.1f GFLOP/s (%s)%s\n",
             cfg.model.name, info.n_params, info.world, info.micro_batch, info.accum,
             (long long)cfg.training.batch_size, info.length, info.flops_per_token, peak * 1e-9, peak_of,
             cfg.optim.zero1 ? "; ZeRO-1" : "");
    if (resume)
        hdlm_log("resumed at update %lld (epoch %lld, %llu chunks into it)\n", (long long)info.update,
                 (long long)info.epoch, (unsigned long long)info.position);
    char metrics_path[HDLM_CONFIG_STRING_MAX + 16];
    snprintf(metrics_path, sizeof metrics_path, "%s/metrics.jsonl", cfg.run.dir);
    hdlm_metrics metrics;
    HDLM_MUST(hdlm_metrics_open(&metrics, metrics_path, resume ? info.update : -1));

    int64_t n_iters = cfg.training.n_iters, first = info.update, skipped = 0, last_tokens = info.tokens_seen;
    if (!resume && info.has_valid) {   // the untrained model's validation loss: the baseline of the run
        double val = hdlm_trainer_eval(t);
        hdlm_metrics_record r = {0, 0, 0, 0, NAN, NAN, NAN, NAN, NAN, 0, NAN, val, 0, hdlm_train_loss_unit(&cfg.kind)};
        HDLM_MUST(hdlm_metrics_write(&metrics, &r));
        hdlm_log("update 0/%lld | val %.4f\n", (long long)n_iters, val);
    }
    double start = hdlm_time_now(), last_time = start, excluded = 0;   // excluded: evaluation and checkpoint time
    double loss_sum = 0;   // the logged loss is the mean over the updates since the previous progress line
    int loss_count = 0;
    bool preempted = false;
    while (info.update < n_iters) {
        hdlm_update_stats s;
        hdlm_trainer_update(t, &s);
        info = hdlm_trainer_state(t);
        skipped += s.skipped;
        loss_sum += s.loss;
        loss_count++;
        int64_t u = info.update;
        bool final = u == n_iters;
        double val = NAN;
        if (u % cfg.training.eval_freq == 0 || final) {
            double t0 = hdlm_time_now();
            val = hdlm_trainer_eval(t);
            excluded += hdlm_time_now() - t0;
        }
        if (u % cfg.training.log_freq == 0 || final || isfinite(val)) {
            double now = hdlm_time_now(), elapsed = now - start;
            double tok_s = (double)(info.tokens_seen - last_tokens) / fmax(now - last_time - excluded, 1e-9);
            double eta = elapsed / (double)(u - first) * (double)(n_iters - u);
            double loss = loss_sum / loss_count;
            hdlm_metrics_record r = {u,     info.epoch, info.micro_step, info.tokens_seen, loss, s.lr,
                                     s.grad_norm, tok_s, tok_s * info.flops_per_token / peak, elapsed, eta, val,
                                     skipped, hdlm_train_loss_unit(&cfg.kind)};
            HDLM_MUST(hdlm_metrics_write(&metrics, &r));
            char el[32], et[32], vl[48] = "";
            hdlm_format_duration(elapsed, el, sizeof el);
            hdlm_format_duration(eta, et, sizeof et);
            if (isfinite(val)) snprintf(vl, sizeof vl, " | val %.4f", val);
            hdlm_log("update %lld/%lld | epoch %lld | loss %.4f %s | lr %.3e | grad %.3f | %.0f tok/s | %.1f%% of "
                     "peak | %s elapsed | ETA %s%s\n",
                     (long long)u, (long long)n_iters, (long long)info.epoch, loss, r.loss_unit, s.lr, s.grad_norm,
                     tok_s, 100.0 * r.flops_fraction, el, et, vl);
            last_time = hdlm_time_now();
            last_tokens = info.tokens_seen;
            excluded = 0;
            loss_sum = 0;
            loss_count = 0;
        }
        preempted = !final && stop_requested();   // collective: every rank calls it at every update
        if (u % cfg.training.snapshot_freq == 0 || final || preempted) {
            double seconds = 0, t0 = hdlm_time_now();
            HDLM_MUST(hdlm_trainer_save(t, &seconds));
            excluded += hdlm_time_now() - t0;
            hdlm_log("checkpoint %s/checkpoints/step_%09lld (%.2f s)\n", cfg.run.dir, (long long)u, seconds);
        }
        if (preempted) {
            hdlm_log("stop signal: exiting with status %d after the checkpoint of update %lld; continue with "
                     "--resume\n", EXIT_PREEMPTED, (long long)u);
            break;
        }
    }
    if (!preempted && hdlm_rank() == 0) HDLM_MUST(write_done(cfg.run.dir, info.update));
    hdlm_metrics_close(&metrics);
    hdlm_watchdog_stop();
    hdlm_trainer_free(t);
    MPI_Finalize();
    return preempted ? EXIT_PREEMPTED : 0;
}

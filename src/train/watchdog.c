// The training job's watchdog (include/hdlm/trainer.h): a rank that stops answering (stopped, swapped out, stuck in a
// driver) leaves the others waiting in a collective forever. Every rank counts its beats (one per micro-batch,
// validation batch and checkpoint, the same sequence on every rank); its watchdog thread writes them with a pulse
// (the time) every second to <run.dir>/heartbeat/rank_NNNNN. The thread ends the job when this rank has made no
// progress for the timeout, naming the rank the others wait for: one whose pulse stopped (a stopped process), else
// the one with the fewest beats (a stuck one).
#include "hdlm/trainer.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "hdlm/common.h"

static struct {
    pthread_t thread;
    bool running;
    atomic_bool stop;
    _Atomic double last;           // hdlm_time_now() of this rank's last beat
    _Atomic long long update;      // the update it was in
    _Atomic long long beats;
    double timeout_s;
    int rank;
    char dir[4200];
} wd;

static void write_heartbeat(void) {
    char path[4300], tmp[4400];
    snprintf(path, sizeof path, "%s/rank_%05d", wd.dir, wd.rank);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return;   // best effort: the in-memory timestamp is what ends the job
    fprintf(f, "%lld %lld %lld\n", (long long)atomic_load(&wd.beats), (long long)atomic_load(&wd.update),
            (long long)time(NULL));
    if (fclose(f) == 0) rename(tmp, path);
}

// The rank the others wait for: one whose pulse is more than 3 s old (*silent set), else the one with the fewest
// beats; -1 when no file is readable, -2 when every rank is alive with as many beats. *update: its update.
static int stalest_rank(long long *update, bool *silent) {
    DIR *d = opendir(wd.dir);
    if (!d) return -1;
    int fewest_rank = -1, quiet_rank = -1;
    long long fewest = 0, most = 0, oldest = 0, u_fewest = -1, u_quiet = -1, now = (long long)time(NULL);
    for (struct dirent *e; (e = readdir(d));) {
        int r;
        if (sscanf(e->d_name, "rank_%d", &r) != 1 || strchr(e->d_name, '.')) continue;
        char path[4600];
        snprintf(path, sizeof path, "%s/%s", wd.dir, e->d_name);
        FILE *f = fopen(path, "r");
        long long beats, u, pulse;
        int got = f ? fscanf(f, "%lld %lld %lld", &beats, &u, &pulse) : 0;
        if (f) fclose(f);
        if (got != 3) continue;
        if (fewest_rank < 0 || beats > most) most = beats;
        if (fewest_rank < 0 || beats < fewest) fewest_rank = r, fewest = beats, u_fewest = u;
        if (now - pulse > 3 && (quiet_rank < 0 || pulse < oldest)) quiet_rank = r, oldest = pulse, u_quiet = u;
    }
    closedir(d);
    *silent = quiet_rank >= 0;
    *update = *silent ? u_quiet : u_fewest;
    if (*silent) return quiet_rank;
    return fewest_rank >= 0 && fewest == most ? -2 : fewest_rank;
}

static void *watch(void *arg) {
    (void)arg;
    while (!atomic_load(&wd.stop)) {
        sleep(1);
        write_heartbeat();   // the pulse: a stopped process writes none
        double idle = hdlm_time_now() - atomic_load(&wd.last);
        if (idle < wd.timeout_s || atomic_load(&wd.stop)) continue;
        long long update = -1;
        bool silent = false;
        int r = stalest_rank(&update, &silent);
        char who[256] = "no heartbeat of the other ranks is readable";
        if (r >= 0 && r != wd.rank)
            snprintf(who, sizeof who, "rank %d stopped answering (%s, in update %lld)", r,
                     silent ? "no sign of life" : "it is behind the others", update);
        else if (r == wd.rank)
            snprintf(who, sizeof who, "this rank is behind the others: it is the one stuck");
        else if (r == -2)
            snprintf(who, sizeof who, "every rank reached the same point: the job is stuck inside a collective");
        fprintf(stderr, "hdlm: error on rank %d: no progress for %.0f s after update %lld (training.watchdog_s = %g); "
                "%s; ending the job\n", wd.rank, idle, (long long)atomic_load(&wd.update), wd.timeout_s, who);
        fflush(stderr);
        _exit(3);   // the launcher then ends the other ranks
    }
    return NULL;
}

int hdlm_watchdog_start(const char *run_dir, double timeout_s) {
    if (timeout_s <= 0) return 0;
    memset(&wd, 0, sizeof wd);
    wd.rank = hdlm_rank();
    wd.timeout_s = timeout_s;
    snprintf(wd.dir, sizeof wd.dir, "%s/heartbeat", run_dir);
    HDLM_CHECK(mkdir(wd.dir, 0755) == 0 || errno == EEXIST, "cannot create %s: %s", wd.dir, strerror(errno));
    atomic_store(&wd.last, hdlm_time_now());
    write_heartbeat();
    HDLM_CHECK(pthread_create(&wd.thread, NULL, watch, NULL) == 0, "cannot start the watchdog thread");
    wd.running = true;
    return 0;
}

void hdlm_watchdog_beat(int64_t update) {
    if (!wd.running) return;
    atomic_store(&wd.last, hdlm_time_now());
    atomic_store(&wd.update, (long long)update);
    atomic_fetch_add(&wd.beats, 1);
}

void hdlm_watchdog_stop(void) {
    if (!wd.running) return;
    atomic_store(&wd.stop, true);
    pthread_join(wd.thread, NULL);
    wd.running = false;
}

// The training job's watchdog (include/hdlm/trainer.h): a rank that stops answering (stopped, swapped out, stuck in a
// driver) leaves the others waiting in a collective forever. Every rank counts its beats (one per micro-batch,
// validation batch and checkpoint, the same sequence on every rank) in <run.dir>/heartbeat/rank_NNNNN; a thread ends
// the job when this rank has made no progress for the timeout, naming the rank with the fewest beats — the one the
// others wait for.
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
#include <unistd.h>

#include "hdlm/common.h"

static struct {
    pthread_t thread;
    bool running;
    atomic_bool stop;
    _Atomic double last;           // hdlm_time_now() of this rank's last beat
    _Atomic long long update;      // the update it was in
    long long beats;
    double timeout_s;
    int rank;
    char dir[4200];
} wd;

static void write_heartbeat(long long beats, long long update) {
    char path[4300], tmp[4400];
    snprintf(path, sizeof path, "%s/rank_%05d", wd.dir, wd.rank);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return;   // best effort: the in-memory timestamp is what ends the job
    fprintf(f, "%lld %lld\n", beats, update);
    if (fclose(f) == 0) rename(tmp, path);
}

// The rank with the fewest beats (-1 when no file is readable, -2 when every rank has as many), and its update.
static int stalest_rank(long long *update) {
    DIR *d = opendir(wd.dir);
    if (!d) return -1;
    int worst = -1;
    long long fewest = 0, most = 0;
    for (struct dirent *e; (e = readdir(d));) {
        int r;
        if (sscanf(e->d_name, "rank_%d", &r) != 1 || strchr(e->d_name, '.')) continue;
        char path[4600];
        snprintf(path, sizeof path, "%s/%s", wd.dir, e->d_name);
        FILE *f = fopen(path, "r");
        long long beats, u;
        int got = f ? fscanf(f, "%lld %lld", &beats, &u) : 0;
        if (f) fclose(f);
        if (got != 2) continue;
        if (worst < 0 || beats > most) most = beats;
        if (worst < 0 || beats < fewest) worst = r, fewest = beats, *update = u;
    }
    closedir(d);
    return worst >= 0 && fewest == most ? -2 : worst;
}

static void *watch(void *arg) {
    (void)arg;
    while (!atomic_load(&wd.stop)) {
        sleep(1);
        double idle = hdlm_time_now() - atomic_load(&wd.last);
        if (idle < wd.timeout_s || atomic_load(&wd.stop)) continue;
        long long update = -1;
        int r = stalest_rank(&update);
        char who[256] = "no heartbeat of the other ranks is readable";
        if (r >= 0 && r != wd.rank)
            snprintf(who, sizeof who, "rank %d stopped answering (it is behind the others, in update %lld)", r, update);
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
    write_heartbeat(0, 0);
    HDLM_CHECK(pthread_create(&wd.thread, NULL, watch, NULL) == 0, "cannot start the watchdog thread");
    wd.running = true;
    return 0;
}

void hdlm_watchdog_beat(int64_t update) {
    if (!wd.running) return;
    atomic_store(&wd.last, hdlm_time_now());
    atomic_store(&wd.update, (long long)update);
    write_heartbeat(++wd.beats, (long long)update);
}

void hdlm_watchdog_stop(void) {
    if (!wd.running) return;
    atomic_store(&wd.stop, true);
    pthread_join(wd.thread, NULL);
    wd.running = false;
}

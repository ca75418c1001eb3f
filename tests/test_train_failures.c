// A rank that fails ends the whole job within seconds with a message naming the rank and the cause (bad configuration
// or unreadable shards on one rank, one rank killed); kill -9 during checkpoint writes leaves a resumable checkpoint.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "harness.h"
#include "train_helpers.h"

static const char *data;

// Runs an MPMD job: rank 0 with the good arguments, rank 1 with `bad` added; returns the exit status and the time.
static int run_broken(const char *dir, const char *bad, double *seconds) {
    double t0 = hdlm_time_now();
    int rc = test_run(MPIRUN "1 " TRAIN " data.train='%s' data.valid= run.dir='%s/run' training.n_iters=100000 : -np 1 " TRAIN
                      " data.train='%s' data.valid= run.dir='%s/run' training.n_iters=100000 %s > '%s/log' 2>&1",
                      data, dir, data, dir, bad, dir);
    *seconds = hdlm_time_now() - t0;
    return rc;
}

static void test_bad_config_on_one_rank(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("train_fail_config");
    double s;
    assert_int_not_equal(run_broken(dir, "training.bogus=1", &s), 0);
    assert_true(s < 30);
    assert_int_equal(test_run("grep 'error on rank 1 of 2' '%s/log' | grep -q training.bogus", dir), 0);
}

static void test_unreadable_shard_on_one_rank(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("train_fail_shard");
    char bad[1200];
    assert_int_equal(test_run("mkdir -p '%s/broken' && head -c 100 '%s/train_000000.bin' > '%s/broken/train_000000.bin'",
                              dir, data, dir),
                     0);
    snprintf(bad, sizeof bad, "data.train='%s/broken'", dir);
    double s;
    assert_int_not_equal(run_broken(dir, bad, &s), 0);
    assert_true(s < 30);
    assert_int_equal(test_run("grep 'error on rank 1 of 2' '%s/log' | grep -q 'broken/train_000000.bin'", dir), 0);
}

// Starts a 2-rank training job in the background and kills -9 its rank 1 process after `delay` seconds.
static int run_and_kill(const char *dir, double delay) {
    return test_run("(" MPIRUN "2 " TRAIN " data.train='%s' data.valid= run.dir='%s/run' training.n_iters=100000 "
                    "> '%s/log' 2>&1 & mp=$!; sleep %.2f; kill -9 $(pgrep -P $mp | tail -n 1); wait $mp)",
                    data, dir, dir, delay);
}

static void test_killed_rank_ends_job(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("train_fail_kill");
    double t0 = hdlm_time_now();
    assert_int_not_equal(run_and_kill(dir, 4.0), 0);
    assert_true(hdlm_time_now() - t0 < 30);
    assert_int_equal(test_run("grep -q 'rank 1 with PID .* exited on signal 9' '%s/log'", dir), 0);
}

// A rank that stops answering (SIGSTOP) left the other spinning in a collective forever: the watchdog ends the job
// within its timeout and names the stopped rank.
static void test_stopped_rank_ends_job(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("train_fail_stop");
    double t0 = hdlm_time_now();
    int rc = test_run("(" MPIRUN "2 " TRAIN " data.train='%s' data.valid= run.dir='%s/run' training.n_iters=100000 "
                      "training.watchdog_s=6 > '%s/log' 2>&1 & mp=$!; "
                      "for i in $(seq 120); do [ \"$(cut -d' ' -f1 '%s/run/heartbeat/rank_00000' 2>/dev/null)\" "
                      "-gt 3 ] 2>/dev/null && break; sleep 0.5; done; r=$(pgrep -P $mp | tail -n 1); "
                      "tr '\\0' '\\n' < /proc/$r/environ | sed -n 's/^OMPI_COMM_WORLD_RANK=//p' > '%s/stopped'; "
                      "kill -STOP $r; wait $mp; rc=$?; kill -9 $r 2>/dev/null; exit $rc)",
                      data, dir, dir, dir, dir);
    assert_int_not_equal(rc, 0);
    assert_true(hdlm_time_now() - t0 < 90);
    assert_int_equal(test_run("s=$(cat '%s/stopped'); grep 'no progress for' '%s/log' | "
                              "grep -q \"error on rank $((1 - s)): .*rank $s stopped answering\"", dir, dir), 0);
}

// kill -9 of mpirun: the ranks end at once (they wrote checkpoints for seconds before, with no log).
static void test_launcher_death_ends_ranks(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("train_fail_launcher");
    assert_int_equal(test_run("(" MPIRUN "2 " TRAIN " data.train='%s' data.valid= run.dir='%s/run' "
                              "training.n_iters=100000 training.snapshot_freq=1 > '%s/log' 2>&1 & mp=$!; "
                              "for i in $(seq 120); do [ -e '%s/run/checkpoints/latest' ] && break; sleep 0.5; done; "
                              "ranks=$(pgrep -P $mp); kill -9 $mp; sleep 1; "
                              "for r in $ranks; do s=$(ps -o stat= -p $r); [ -n \"$s\" ] && [ \"${s#Z}\" = \"$s\" ] && "
                              "exit 1; done; exit 0)",   // gone, or a zombie nobody reaps yet
                              data, dir, dir, dir), 0);
}

// Every update writes a checkpoint; once one is complete, the test waits for the next write to start (no step_N.tmp
// directory, then one appears) and kills both ranks with -9 a moment later. Evidence of an interrupted write: a .tmp
// directory left, or a step directory newer than `latest`. Whatever the kill hit, `latest` must resume. A write takes
// ≈ 0.1 s here, so the wait polls with shell builtins only (a glob, not `ls`; a counter, not `seq`) and the ranks'
// pids are taken before it: forking `ls` and `pgrep` between seeing the directory and the kill, or catching a write
// that began before the poll, let writes finish first (1 of 3 kills interrupted one in a CI run).
static void test_kill_during_checkpoint_write(void **state) {
    (void)state;
    const double delays[] = {0.0, 0.01, 0.03};   // three points of the first third of a write of ≈ 0.1 s
    int interrupted = 0;
    for (int i = 0; i < 3; i++) {
        char name[64];
        snprintf(name, sizeof name, "train_fail_ckpt_%d", i);
        const char *dir = test_tmp_dir(name);
        test_run("(" MPIRUN "2 " TRAIN " data.train='%s' data.valid= run.dir='%s/run' training.n_iters=100000 "
                 "training.snapshot_freq=1 run.keep_last=2 > '%s/log' 2>&1 & mp=$!; c='%s/run/checkpoints'; "
                 "for k in $(seq 6000); do test -f $c/latest && break; sleep 0.005; done; ranks=$(pgrep -P $mp); "
                 "k=0; while [ $k -lt 1000000 ]; do set -- $c/*.tmp; test -e \"$1\" || break; k=$((k + 1)); done; "
                 "while [ $k -lt 1000000 ]; do set -- $c/*.tmp; test -e \"$1\" && break; k=$((k + 1)); done; "
                 "sleep %.3f; kill -9 $ranks; wait $mp)",
                 data, dir, dir, dir, delays[i]);
        assert_int_equal(test_run("test -f '%s/run/checkpoints/latest'", dir), 0);
        if (test_run("cd '%s/run/checkpoints' && { ls -d *.tmp > /dev/null 2>&1 || "
                     "test \"$(ls -d step_* | grep -v tmp | tail -n 1)\" != \"$(cat latest)\"; }",
                     dir) == 0)
            interrupted++;
        // Resume from latest and do one more update.
        int rc = test_run(MPIRUN "2 " TRAIN " data.train='%s' data.valid= run.dir='%s/run' training.n_iters=$(( $(sed "
                          "'s/step_0*//' '%s/run/checkpoints/latest') + 1 )) --resume > '%s/resume.log' 2>&1",
                          data, dir, dir, dir);
        if (rc != 0) test_run("cat '%s/resume.log'", dir);
        assert_int_equal(rc, 0);
        assert_int_equal(test_run("grep -q 'resumed at update' '%s/resume.log'", dir), 0);
    }
    print_message("%d of 3 kills interrupted a checkpoint write\n", interrupted);
    assert_true(interrupted >= 2);
}

static int setup(void **state) {
    (void)state;
    data = prepare_sotu(test_tmp_dir("train_fail_data"));
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_config_on_one_rank),
        cmocka_unit_test(test_unreadable_shard_on_one_rank),
        cmocka_unit_test(test_killed_rank_ends_job),
        cmocka_unit_test(test_stopped_rank_ends_job),
        cmocka_unit_test(test_launcher_death_ends_ranks),
        cmocka_unit_test(test_kill_during_checkpoint_write),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}

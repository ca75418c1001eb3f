// Pre-emption: SIGTERM to the ranks or SIGUSR1 to mpirun (which forwards it) mid-run makes every rank write a
// checkpoint of the current update and exit with status 75; `--resume latest` then finishes with the parameters and
// losses of an uninterrupted run, writes <run.dir>/DONE, and a further --resume finds the run complete.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "harness.h"
#include "train_helpers.h"

static const char *data;

#define ARGS " data.train='%s' data.valid= training.log_freq=1 training.eval_freq=100000 training.snapshot_freq=100000"

// Starts a 1000-update run, waits for 3 logged updates, sends `sig` to the ranks (children of mpirun) or to mpirun
// itself, and returns the update of the checkpoint the ranks wrote (mpirun's status in *rc).
static int interrupt(const char *run, const char *sig, bool to_ranks, int *rc) {
    *rc = test_run("(" MPIRUN "2 " TRAIN ARGS " run.dir='%s' training.n_iters=1000 > '%s.log' 2>&1 & mp=$!; "
                   "for k in $(seq 3000); do test \"$(cat '%s/metrics.jsonl' 2>/dev/null | wc -l)\" -ge 3 && break; "
                   "sleep 0.01; done; kill -%s %s; wait $mp)",
                   data, run, run, run, sig, to_ranks ? "$(pgrep -P $mp)" : "$mp");
    char path[1300];
    snprintf(path, sizeof path, "%s/checkpoints/latest", run);
    FILE *f = fopen(path, "r");
    if (!f) {
        test_run("cat '%s.log'", run);
        fail_msg("no checkpoint after SIG%s", sig);
    }
    int step = -1;
    assert_int_equal(fscanf(f, "step_%d", &step), 1);
    fclose(f);
    assert_int_equal(test_run("grep -q 'stop signal: exiting with status 75' '%s.log'", run), 0);
    assert_int_equal(test_run("test ! -e '%s/DONE'", run), 0);
    print_message("SIG%s to %s: checkpoint at update %d, mpirun status %d\n", sig, to_ranks ? "the ranks" : "mpirun",
                  step, *rc);
    assert_true(step >= 3 && step < 1000);
    return step;
}

static double last_loss(const char *run) {
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "tail -n 1 '%s/metrics.jsonl' | sed 's/.*\"loss\": *\\([^,]*\\).*/\\1/'", run);
    FILE *p = popen(cmd, "r");
    double loss = NAN;
    assert_int_equal(fscanf(p, "%lf", &loss), 1);
    pclose(p);
    return loss;
}

static void check_resume(const char *dir, const char *sig, bool to_ranks) {
    char run[1200], ref[1200], a[1300], b[1300];
    snprintf(run, sizeof run, "%s/run", dir);
    snprintf(ref, sizeof ref, "%s/ref", dir);
    int rc, step = interrupt(run, sig, to_ranks, &rc);
    if (to_ranks) assert_int_equal(rc, 75);   // mpirun passes the ranks' status on
    int n = step + 3;
    rc = test_run(MPIRUN "2 " TRAIN ARGS " run.dir='%s' training.n_iters=%d --resume latest > '%s.resume.log' 2>&1",
                  data, run, n, run);
    if (rc != 0) test_run("cat '%s.resume.log'", run);
    assert_int_equal(rc, 0);
    assert_int_equal(test_run("grep -qx 'update %d' '%s/DONE'", n, run), 0);
    assert_int_equal(test_run(MPIRUN "2 " TRAIN ARGS " run.dir='%s' training.n_iters=%d > '%s.log' 2>&1", data, ref,
                              n, ref),
                     0);
    snprintf(a, sizeof a, "%s/checkpoints/step_%09d", run, n);
    snprintf(b, sizeof b, "%s/checkpoints/step_%09d", ref, n);
    double d = max_abs_diff(a, b, "params"), la = last_loss(run), lb = last_loss(ref);
    print_message("after %d updates: max |params resumed - uninterrupted| = %g, loss %.6f vs %.6f\n", n, d, la, lb);
    assert_true(d == 0);
    assert_true(fabs(la - lb) <= 1e-6);
    // A complete run resumed again does nothing and succeeds (the batch script's loop relies on it).
    rc = test_run(MPIRUN "2 " TRAIN ARGS " run.dir='%s' training.n_iters=%d --resume latest > '%s.again.log' 2>&1",
                  data, run, n, run);
    assert_int_equal(rc, 0);
    assert_int_equal(test_run("grep -q 'the run is complete' '%s.again.log'", run), 0);
}

static void test_sigterm_to_ranks(void **state) {
    (void)state;
    check_resume(test_tmp_dir("train_signal_term"), "TERM", true);
}

static void test_sigusr1_to_mpirun(void **state) {
    (void)state;
    check_resume(test_tmp_dir("train_signal_usr1"), "USR1", false);
}

static int setup(void **state) {
    (void)state;
    data = prepare_sotu(test_tmp_dir("train_signal_data"));
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sigterm_to_ranks),
        cmocka_unit_test(test_sigusr1_to_mpirun),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}

// Data parallelism is exact: 2 ranks x micro-batch b give the parameters of 1 rank x micro-batch 2b on the same data
// (with and without ZeRO-1); resume at another world size continues the same run. hdlm-train is run under mpirun and
// the checkpoints' tensors are compared.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "harness.h"
#include "train_helpers.h"

// fp32 tolerance: sums over 2b rows split into two sums of b rows round differently (~1e-7 relative per gradient),
// and AdamW turns the noise of near-zero gradients into full steps of either sign for a few parameters. So the runs
// are compared by the RMS of their difference relative to how far they moved (measured ~1e-5: docs/training.md); a
// rank's gradient lost or counted twice gives 0.1 and more.
#define REL_TOL 1e-3

static const char *data;

static const char *step_dir(const char *run, int step) {
    static char buf[4][1300];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/checkpoints/step_%09d", run, step);
    return buf[k];
}

// Runs the tiny preset on `ranks` ranks for n updates (global batch 8 = ranks x micro-batch x accum 2).
static void train(const char *run, int ranks, int n, const char *extra) {
    int rc = test_run(MPIRUN "%d " TRAIN " data.train='%s' data.valid= run.dir='%s' training.n_iters=%d "
                      "training.batch_size=8 training.accum=2 training.log_freq=1 training.eval_freq=1000 "
                      "training.snapshot_freq=2 run.keep_last=5 %s > '%s.log' 2>&1",
                      ranks, data, run, n, extra, run);
    if (rc != 0) {
        test_run("cat '%s.log'", run);
        fail_msg("hdlm-train failed (rank count %d, %s)", ranks, extra);
    }
}

static void test_two_ranks_equal_one_rank(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("train_parallel_exact");
    char one[1200], two[1200], after[1200], zero[1200];
    snprintf(one, sizeof one, "%s/one", dir);
    snprintf(two, sizeof two, "%s/two", dir);
    snprintf(after, sizeof after, "%s/after", dir);
    snprintf(zero, sizeof zero, "%s/zero", dir);
    train(one, 1, 4, "");
    // The gradient all-reduce overlapping the backward and after it (src/train/dist.c): the same sums, the same bits.
    setenv("HDLM_ALLREDUCE", "overlap", 1);
    train(two, 2, 4, "");
    setenv("HDLM_ALLREDUCE", "after", 1);
    train(after, 2, 4, "");
    unsetenv("HDLM_ALLREDUCE");
    assert_true(max_abs_diff(step_dir(two, 4), step_dir(after, 4), "params") == 0.0);
    train(zero, 2, 4, "optim.zero1=true");
    const char *groups[] = {"params", "ema", "adam_m", "adam_v"};
    for (int g = 0; g < 4; g++) {
        double d_two = relative_rms_diff(step_dir(one, 4), step_dir(two, 4), step_dir(one, 2), groups[g]);
        double d_zero = relative_rms_diff(step_dir(one, 4), step_dir(zero, 4), step_dir(one, 2), groups[g]);
        print_message("%s: 1 rank vs 2 ranks, relative RMS difference %.3g (with ZeRO-1 %.3g); largest element "
                      "difference %.3g\n", groups[g], d_two, d_zero,
                      max_abs_diff(step_dir(one, 4), step_dir(two, 4), groups[g]));
        assert_true(d_two <= REL_TOL);
        assert_true(d_zero <= REL_TOL);
    }
    // The parameters did move (the comparison is not between two untouched initialisations).
    assert_true(max_abs_diff(step_dir(one, 4), step_dir(one, 2), "params") > 1e-3);
}

// Written by 2 ranks with ZeRO-1 (sharded moments), resumed by 1 rank; written by 1, resumed by 2 with ZeRO-1.
static void test_resume_at_other_world_size(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("train_parallel_resume");
    char ref[1200], a[1200], b[1200], arg[1300];
    snprintf(ref, sizeof ref, "%s/ref", dir);
    snprintf(a, sizeof a, "%s/a", dir);
    snprintf(b, sizeof b, "%s/b", dir);
    train(ref, 1, 4, "");   // the uninterrupted run
    train(a, 2, 2, "optim.zero1=true");
    snprintf(arg, sizeof arg, "--resume '%s'", step_dir(a, 2));
    train(a, 1, 4, arg);
    train(b, 1, 2, "");
    snprintf(arg, sizeof arg, "optim.zero1=true --resume '%s'", step_dir(b, 2));
    train(b, 2, 4, arg);
    const char *groups[] = {"params", "ema", "adam_m", "adam_v"};
    for (int g = 0; g < 4; g++) {
        double da = relative_rms_diff(step_dir(ref, 4), step_dir(a, 4), step_dir(ref, 2), groups[g]);
        double db = relative_rms_diff(step_dir(ref, 4), step_dir(b, 4), step_dir(ref, 2), groups[g]);
        print_message("%s: relative RMS difference 2 -> 1 ranks %.3g, 1 -> 2 ranks %.3g\n", groups[g], da, db);
        assert_true(da <= REL_TOL);
        assert_true(db <= REL_TOL);
    }
    // The data order continued: the resumed runs logged the same losses as the uninterrupted one (5 digits).
    assert_int_equal(test_run("grep -o 'update [34]/4 | epoch 0 | loss [0-9.]*' '%s.log' > '%s/ref.loss' && "
                              "grep -o 'update [34]/4 | epoch 0 | loss [0-9.]*' '%s.log' > '%s/a.loss' && "
                              "cmp '%s/ref.loss' '%s/a.loss'",
                              ref, dir, a, dir, dir, dir),
                     0);
    // Rank-independent streams (per-sequence steps, no dropout): no warning. With dropout the masks are keyed by
    // rank, so a resume at another rank count says that it continues with other draws.
    assert_int_not_equal(test_run("grep -q 'other random draws' '%s.log'", a), 0);
    char c[1200];
    snprintf(c, sizeof c, "%s/c", dir);
    train(c, 2, 2, "model.dropout=0.1");
    snprintf(arg, sizeof arg, "model.dropout=0.1 --resume '%s'", step_dir(c, 2));
    train(c, 1, 3, arg);
    assert_int_equal(test_run("grep -q 'written by 2 ranks, resumed on 1: .*other random draws' '%s.log'", c), 0);
}

// At world size 2: a run of 6 updates, and a run of 3 updates, stop, resume from `latest`, 3 more, print the same
// losses, learning rates and gradient norms, and end with bit-identical parameters, EMA and AdamW moments.
static void test_resume_is_exact(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("train_parallel_resume_exact");
    char ref[1200], a[1200];
    snprintf(ref, sizeof ref, "%s/ref", dir);
    snprintf(a, sizeof a, "%s/a", dir);
    train(ref, 2, 6, "training.snapshot_freq=3");
    train(a, 2, 3, "training.snapshot_freq=3");
    assert_int_equal(test_run("mv '%s.log' '%s.first.log'", a, a), 0);
    train(a, 2, 6, "training.snapshot_freq=3 --resume");
    assert_int_equal(test_run("grep -q 'resumed at update 3' '%s.log'", a), 0);
    const char *pattern = "update [456]/6 | epoch [0-9]* | loss [0-9.]* [a-z/]* | lr [^ ]* | grad [0-9.]*";
    assert_int_equal(test_run("grep -o '%s' '%s.log' > '%s/ref.lines' && grep -o '%s' '%s.log' > '%s/a.lines' && "
                              "test $(wc -l < '%s/a.lines') = 3 && cmp '%s/ref.lines' '%s/a.lines'",
                              pattern, ref, dir, pattern, a, dir, dir, dir, dir),
                     0);
    const char *groups[] = {"params", "ema", "adam_m", "adam_v"};
    for (int g = 0; g < 4; g++) assert_true(max_abs_diff(step_dir(ref, 6), step_dir(a, 6), groups[g]) == 0.0);
}

static int setup(void **state) {
    (void)state;
    data = prepare_sotu(test_tmp_dir("train_parallel_data"));
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_two_ranks_equal_one_rank),
        cmocka_unit_test(test_resume_at_other_world_size),
        cmocka_unit_test(test_resume_is_exact),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}

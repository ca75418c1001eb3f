// Bad and edge inputs found by an adversarial pass over the tools (issue 19): each gets a clear error naming the
// file, field or flag — no crash, hang, NaN passed along or silent wrong result. One test per finding.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <limits.h>
#include <mpi.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "hdlm/config.h"
#include "hdlm/dataset.h"
#include "hdlm/metrics.h"
#include "hdlm/model_io.h"
#include "hdlm/rng.h"
#include "hdlm/schedule.h"
#include "hdlm/shard.h"
#include "hdlm/tokenizer.h"
#include "train/trainer_internal.h"
#include "train_helpers.h"

static char tmp[1024], train_dir[1100], ckpt[1200];

// A shard of n random token ids (vocabulary `vocab`) at dir/name.
static void write_shard(const char *dir, const char *name, size_t n, uint32_t vocab, uint64_t seed) {
    char path[1300];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    hdlm_shard_writer *w;
    assert_int_equal(hdlm_shard_writer_open(&w, path, vocab), 0);
    uint16_t *ids = malloc(n * sizeof *ids);
    hdlm_rng rng;
    hdlm_rng_init(&rng, seed);
    for (size_t i = 0; i < n; i++) ids[i] = (uint16_t)hdlm_rng_below(&rng, vocab);
    assert_int_equal(hdlm_shard_writer_append(w, ids, n), 0);
    free(ids);
    assert_int_equal(hdlm_shard_writer_close(w, 1, NULL), 0);
}

// A new directory tmp/name holding one shard split_000000.bin of n random ids; *override = "key=<dir>".
static const char *one_shard_dir(const char *name, const char *split, size_t n, uint64_t seed, const char *key,
                                 char *override, size_t size) {
    static char dir[1100];
    char file[64];
    snprintf(dir, sizeof dir, "%s/%s", tmp, name);
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(file, sizeof file, "%s_000000.bin", split);
    write_shard(dir, file, n, HDLM_GPT2_VOCAB, seed);
    snprintf(override, size, "%s=%s", key, dir);
    return dir;
}

// The tiny preset on train_dir with the given extra overrides (up to 4).
static int tiny_config(hdlm_train_config *cfg, const char *run, const char *const *extra, int n_extra) {
    char train[1200], dir[1200];
    snprintf(train, sizeof train, "data.train=%s", train_dir);
    snprintf(dir, sizeof dir, "run.dir=%s/%s", tmp, run);
    const char *over[8] = {train, dir, "data.valid="};
    for (int i = 0; i < n_extra; i++) over[3 + i] = extra[i];
    return hdlm_train_config_load(cfg, TINY, over, 3 + n_extra, 1);
}

// 1. A validation split shorter than one chunk: refused when the run is built (it divided by zero in validation).
static void test_validation_shorter_than_a_chunk(void **state) {
    (void)state;
    char over[1200];
    one_shard_dir("short_valid", "validation", 5, 3, "data.valid", over, sizeof over);
    const char *extra[] = {over};
    hdlm_train_config cfg;
    assert_int_equal(tiny_config(&cfg, "short", extra, 1), 0);
    hdlm_trainer *t;
    assert_int_equal(hdlm_trainer_create(&t, &cfg, NULL), -1);
    assert_error_contains("validation_000000.bin");
    assert_error_contains("5 tokens in 1 shard(s), fewer than one chunk of 32 tokens");
}

static void on_alarm(int sig) {
    (void)sig;
    static const char msg[] = "test_bad_inputs: a reader blocked (on a FIFO, or inside HDF5 on a corrupt heap)\n";
    (void)!write(2, msg, sizeof msg - 1);
    _exit(1);
}

// 2. A FIFO (or any non-regular file) in place of a shard or a configuration: refused at once, not a hang in open().
static void test_fifo_and_directory_refused(void **state) {
    (void)state;
    char dir[1100], fifo[1200];
    snprintf(dir, sizeof dir, "%s/fifo_data", tmp);
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(fifo, sizeof fifo, "%s/train_000000.bin", dir);
    assert_int_equal(mkfifo(fifo, 0644), 0);
    signal(SIGALRM, on_alarm);
    alarm(20);
    hdlm_dataset d;
    assert_int_equal(hdlm_dataset_open_dir(&d, dir, "train", 32, HDLM_GPT2_VOCAB), -1);
    assert_error_contains("shard");
    assert_error_contains("is not a regular file");
    hdlm_train_config cfg;
    assert_int_equal(hdlm_config_defaults(&hdlm_train_config_schema, &cfg), 0);
    assert_int_equal(hdlm_config_load_yaml(&hdlm_train_config_schema, &cfg, fifo), -1);
    assert_error_contains("configuration file");
    assert_error_contains("is not a regular file");
    assert_int_equal(hdlm_config_load_yaml(&hdlm_train_config_schema, &cfg, "/tmp"), -1);   // `--config /tmp`
    assert_error_contains("configuration file /tmp is not a regular file");
    alarm(0);
}

// 3. Non-finite state: a checkpoint is never written with it, and one that holds it (CRC consistent, as a diverged
// run could leave) is never loaded — not by evaluation, not by a resume.
static void test_non_finite_state_refused(void **state) {
    (void)state;
    hdlm_train_config cfg;
    assert_int_equal(tiny_config(&cfg, "nan", NULL, 0), 0);
    hdlm_trainer *t;
    assert_int_equal(hdlm_trainer_create(&t, &cfg, NULL), 0);
    hdlm_update_stats s;
    hdlm_trainer_update(t, &s);
    t->state.adam_v[7] = NAN;   // the optimizer state alone: the next update would write NaN parameters
    double seconds;
    assert_int_equal(hdlm_trainer_save(t, &seconds), -1);
    assert_error_contains("refusing to checkpoint adam_v/");
    t->state.adam_v[7] = 0;
    assert_int_equal(hdlm_trainer_save(t, &seconds), 0);
    hdlm_trainer_free(t);

    snprintf(ckpt, sizeof ckpt, "%s/nan/checkpoints/step_000000001", tmp);
    char bad[1300];
    snprintf(bad, sizeof bad, "%s/nan_copy", tmp);
    assert_int_equal(test_run("cp -r '%s' '%s' && /usr/bin/python3 %s/tests/reference/poison_checkpoint.py '%s' ema "
                              "blocks.0.attn_qkv.weight nan",
                              ckpt, bad, HDLM_SOURCE_DIR, bad), 0);
    hdlm_model *m;
    assert_int_equal(hdlm_model_load_checkpoint(&m, NULL, bad, "ema"), -1);
    assert_error_contains("tensor 'ema/blocks.0.attn_qkv.weight' holds nan at element 0");
    // A damaged index (one byte flipped) is refused by its checksum before the HDF5 library parses it.
    char flipped[1300];
    snprintf(flipped, sizeof flipped, "%s/flipped", tmp);
    assert_int_equal(test_run("cp -r '%s' '%s' && printf 'X' | dd of='%s/index.h5' bs=1 seek=3000 conv=notrunc "
                              "2>/dev/null", ckpt, flipped, flipped), 0);
    hdlm_ckpt *ck;
    assert_int_equal(hdlm_checkpoint_open(&ck, flipped), -1);
    assert_error_contains("index.h5 has checksum");
    assert_error_contains("the index was damaged after it was written");
    // An index whose string heap holds a free-space object of size 0, with no recorded checksum (markers written
    // before there was one): HDF5 1.10 itself would loop forever reading the strings; the walk before it refuses.
    char heap[1300];
    snprintf(heap, sizeof heap, "%s/heap", tmp);
    assert_int_equal(test_run("cp -r '%s' '%s' && sed -i '/^index_xxh64/d' '%s/COMPLETE' && /usr/bin/python3 -c \""
                              "import struct,sys; p=sys.argv[1]; b=bytearray(open(p,'rb').read()); a=b.index(b'GCOL'); "
                              "n=struct.unpack_from('<Q',b,a+8)[0]; o=a+16\n"
                              "while struct.unpack_from('<H',b,o)[0]: o+=16+(struct.unpack_from('<Q',b,o+8)[0]+7)//8*8\n"
                              "struct.pack_into('<Q',b,o+8,0); open(p,'wb').write(b)\" '%s/index.h5'",
                              ckpt, heap, heap, heap), 0);
    alarm(60);   // a regression hangs inside HDF5: fail instead of waiting for CTest's timeout
    assert_int_equal(hdlm_checkpoint_open(&ck, heap), -1);
    alarm(0);
    assert_error_contains("is corrupt (object 0 of size 0)");
    assert_int_equal(test_run("'%s/hdlm-eval' perplexity --ckpt '%s' --data '%s' --split train --max-chunks 1 "
                              "> /dev/null 2> '%s/nan_eval.txt'", HDLM_BIN_DIR, bad, train_dir, tmp), 1);
    assert_int_equal(test_run("grep -q 'holds nan' '%s/nan_eval.txt'", tmp), 0);
    // --resume RUN_DIR without --config: the configuration the checkpoint stores, overrides on top, and the run
    // continues in RUN_DIR even when it was moved after the checkpoint was written.
    assert_int_equal(test_run("cp -r '%s/nan' '%s/nan_moved' && OMP_NUM_THREADS=1 '%s/hdlm-train' --resume "
                              "'%s/nan_moved' training.n_iters=2 > '%s/resume.log' 2>&1",
                              tmp, tmp, HDLM_BIN_DIR, tmp, tmp), 0);
    assert_int_equal(test_run("grep -q 'resumed at update 1' '%s/resume.log' && grep -q 'update 2/2' '%s/resume.log'",
                              tmp, tmp), 0);
    assert_int_equal(test_run("test -f '%s/nan_moved/checkpoints/step_000000002/COMPLETE' && "
                              "! test -e '%s/nan/checkpoints/step_000000002'", tmp, tmp), 0);
    // an override that breaks exact resume is refused with the reason
    assert_int_equal(test_run("OMP_NUM_THREADS=1 '%s/hdlm-train' --resume '%s/nan_moved' training.n_iters=3 training.seed=7 > '%s/resume.log' "
                              "2>&1", HDLM_BIN_DIR, tmp, tmp), 1);
    assert_int_equal(test_run("grep -q 'written with training.seed = .*, this run has 7' '%s/resume.log'", tmp), 0);
    assert_int_equal(test_run("'%s/hdlm-train' --resume > /dev/null 2> '%s/resume.log'", HDLM_BIN_DIR, tmp), 1);
    assert_int_equal(test_run("grep -q 'or --resume RUN_DIR' '%s/resume.log'", tmp), 0);
    assert_int_equal(tiny_config(&cfg, "nan_resume", NULL, 0), 0);
    assert_int_equal(hdlm_trainer_create(&t, &cfg, bad), -1);
    assert_error_contains("holds nan");
}

// 4. Evaluation refuses token shards of another vocabulary, as the trainer does.
static void test_eval_refuses_other_vocabulary(void **state) {
    (void)state;
    char dir[1100];
    snprintf(dir, sizeof dir, "%s/vocab100", tmp);
    assert_int_equal(mkdir(dir, 0755), 0);
    write_shard(dir, "validation_000000.bin", 256, 100, 4);
    assert_int_equal(test_run("'%s/hdlm-eval' perplexity --ckpt '%s' --data '%s' --max-chunks 1 > /dev/null "
                              "2> '%s/vocab_eval.txt'", HDLM_BIN_DIR, ckpt, dir, tmp), 1);
    assert_int_equal(test_run("grep -q 'validation_000000.bin has vocabulary size 100, expected 50257' "
                              "'%s/vocab_eval.txt'", tmp), 0);
}

// 5. An empty run.dir (it put config, metrics and checkpoints at the filesystem root).
static void test_empty_run_dir_refused(void **state) {
    (void)state;
    hdlm_train_config cfg;
    const char *over[] = {"data.train=x", "run.dir="};
    assert_int_equal(hdlm_train_config_load(&cfg, NULL, over, 2, 1), -1);
    assert_error_contains("run.dir is empty");
}

// 6. Metrics: a write error (a full disk) is an error, not a silent loss; a resumed run drops the records of the
// updates it redoes instead of writing them twice.
static void test_metrics_checked_and_deduplicated(void **state) {
    (void)state;
    hdlm_metrics m;
    hdlm_metrics_record r = {.update = 1, .loss = 1.0, .val_loss = NAN};
    assert_int_equal(hdlm_metrics_open(&m, "/dev/full", -1), 0);
    assert_int_equal(hdlm_metrics_write(&m, &r), -1);
    assert_error_contains("cannot write the metrics file /dev/full");
    assert_error_contains("update 1");
    hdlm_metrics_close(&m);
    char path[1200];
    snprintf(path, sizeof path, "%s/metrics.jsonl", tmp);
    assert_int_equal(hdlm_metrics_open(&m, path, -1), 0);
    for (r.update = 1; r.update <= 5; r.update++) assert_int_equal(hdlm_metrics_write(&m, &r), 0);
    hdlm_metrics_close(&m);
    assert_int_equal(hdlm_metrics_open(&m, path, 3), 0);   // resumed after update 3: updates 4 and 5 are redone
    for (r.update = 4; r.update <= 5; r.update++) assert_int_equal(hdlm_metrics_write(&m, &r), 0);
    hdlm_metrics_close(&m);
    assert_int_equal(test_run("[ \"$(grep -o '\"update\":[0-9]*' '%s' | tr '\\n' ' ')\" = "
                              "'\"update\":1 \"update\":2 \"update\":3 \"update\":4 \"update\":5 ' ]", path), 0);
}

// 7. Resume refuses what would not continue the run: another model.length, other training data, a shard directory
// that lacks a shard its manifest lists.
static void test_resume_refuses_other_length_and_data(void **state) {
    (void)state;
    hdlm_train_config cfg;
    const char *length[] = {"model.length=16"};
    assert_int_equal(tiny_config(&cfg, "resume_len", length, 1), 0);
    hdlm_trainer *t;
    assert_int_equal(hdlm_trainer_create(&t, &cfg, ckpt), -1);
    assert_error_contains("written with model.length = 32, this run has 16");
    char over[1200];
    const char *other = one_shard_dir("other_train", "train", 4096, 99, "data.train", over, sizeof over);
    const char *data[] = {over};
    assert_int_equal(tiny_config(&cfg, "resume_data", data, 1), 0);
    assert_int_equal(hdlm_trainer_create(&t, &cfg, ckpt), -1);
    assert_error_contains("is not the data this run was trained on");
    // A manifest listing two shards over a directory holding one.
    char manifest[1200];
    snprintf(manifest, sizeof manifest, "%s/manifest.json", other);
    const char *text = "{\"splits\": {\"train\": {\"shards\": [{\"name\": \"train_000000.bin\", \"xxh64\": \"0\"}, "
                       "{\"name\": \"train_000001.bin\", \"xxh64\": \"0\"}]}}}";
    test_write_file(manifest, text, strlen(text));
    hdlm_dataset d;
    assert_int_equal(hdlm_dataset_open_dir(&d, other, "train", 32, HDLM_GPT2_VOCAB), -1);
    assert_error_contains("lists 2 train shard(s), the directory holds 1");
}

// 8. Step counts past INT_MAX are refused, not wrapped to negative numbers.
static void test_schedule_step_overflow_refused(void **state) {
    (void)state;
    hdlm_schedule s;
    assert_int_equal(hdlm_schedule_init(&s, HDLM_SCHEDULE_BLOCK, 2048, 1, 1048576, HDLM_SAMPLING_EPS, 0, 0), -1);
    assert_error_contains("has 2147483648 steps, more than 2147483646");
    assert_int_equal(hdlm_schedule_init(&s, HDLM_SCHEDULE_HYBRID, 64, 8, INT_MAX, HDLM_SAMPLING_EPS, 0, 0), -1);
    assert_error_contains("hybrid schedule");
    assert_int_equal(hdlm_schedule_init(&s, HDLM_SCHEDULE_BLOCK, 1024, 1024, INT_MAX - 1, HDLM_SAMPLING_EPS, 0, 0),
                     0);
    assert_int_equal(s.k_max, INT_MAX);   // the largest that fits
    hdlm_schedule_free(&s);
    assert_int_equal(test_run("'%s/hdlm-schedule' --type block --length 2048 --width 1 --tau 1048576 --summary "
                              "> /dev/null 2>&1", HDLM_BIN_DIR), 1);
}

// 9. A JSONL text holding \u0000 was silently cut at the NUL: now a malformed line (error, or skipped and counted).
static void test_jsonl_nul_refused(void **state) {
    (void)state;
    char in[1200];
    snprintf(in, sizeof in, "%s/nul.jsonl", tmp);
    const char *lines = "{\"text\": \"abc\\u0000def\"}\n{\"text\": \"escaped backslash \\\\u0000 is text\"}\n";
    test_write_file(in, lines, strlen(lines));
    const char *prep = "OMPI_MCA_pml=ob1 ASAN_OPTIONS=detect_leaks=0 '" HDLM_BIN_DIR "/hdlm-prep' prepare";
    assert_int_equal(test_run("%s --vocab '%s' --out '%s/nul_out' '%s' > /dev/null 2> '%s/nul.txt'", prep,
                              test_cache_path("gpt2"), tmp, in, tmp), 1);
    assert_int_equal(test_run("grep -q 'nul.jsonl:1: the line holds .u0000 (NUL)' '%s/nul.txt'", tmp), 0);
    assert_int_equal(test_run("%s --vocab '%s' --out '%s/nul_skip' --on-error skip '%s' > '%s/nul_skip.txt' 2>&1", prep,
                              test_cache_path("gpt2"), tmp, in, tmp), 0);
    assert_int_equal(test_run("grep -q 'malformed or unreadable: 1 (skipped)' '%s/nul_skip.txt'", tmp), 0);
}

// 10. training.eval_batches far beyond the validation set is capped at one pass (it ran for minutes silently).
static void test_eval_batches_capped(void **state) {
    (void)state;
    char over[1200];
    snprintf(over, sizeof over, "data.valid=%s", train_dir);
    const char *extra[] = {over, "training.eval_batches=1000000"};
    hdlm_train_config cfg;
    assert_int_equal(tiny_config(&cfg, "eval_cap", extra, 2), 0);
    hdlm_trainer *t;
    write_shard(train_dir, "validation_000000.bin", 32 * 20, HDLM_GPT2_VOCAB, 5);   // 20 chunks: 3 batches of 8
    assert_int_equal(hdlm_trainer_create(&t, &cfg, NULL), 0);
    assert_int_equal(t->eval_batches, 3);
    assert_true(isfinite(hdlm_trainer_eval(t)));
    hdlm_trainer_free(t);
}

// 12. Smaller ones: a key or section written twice in YAML; a `latest` pointer naming a path outside the root.
static void test_yaml_duplicates_and_latest_pointer(void **state) {
    (void)state;
    char path[1200];
    snprintf(path, sizeof path, "%s/dup.yaml", tmp);
    const char *dup_key = "optim:\n  lr: 1e-3\n  lr: 2e-3\n";
    test_write_file(path, dup_key, strlen(dup_key));
    hdlm_train_config cfg;
    assert_int_equal(hdlm_config_defaults(&hdlm_train_config_schema, &cfg), 0);
    assert_int_equal(hdlm_config_load_yaml(&hdlm_train_config_schema, &cfg, path), -1);
    assert_error_contains("dup.yaml:3: 'optim.lr' appears twice (first at line 2)");
    const char *dup_section = "optim:\n  lr: 1e-3\ntraining:\n  seed: 3\noptim:\n  min_lr: 0\n";
    test_write_file(path, dup_section, strlen(dup_section));
    assert_int_equal(hdlm_config_load_yaml(&hdlm_train_config_schema, &cfg, path), -1);
    assert_error_contains("dup.yaml:5: 'optim' appears twice (first at line 1)");

    char root[1200], found[1400], latest[1300];
    snprintf(root, sizeof root, "%s/nan/checkpoints", tmp);
    snprintf(latest, sizeof latest, "%s/latest", root);
    const char *escape = "../../../../etc\n";
    test_write_file(latest, escape, strlen(escape));
    assert_int_equal(hdlm_checkpoint_find_latest(root, found, sizeof found), 0);   // ignored: the newest valid one
    assert_non_null(strstr(found, "/nan/checkpoints/step_000000001"));
}

// 12. An export to a full disk left a 0-byte file: the shared atomic writer leaves nothing (PATH.tmp is made a link
// to /dev/full, so every write fails with ENOSPC).
static void test_export_to_full_disk_leaves_nothing(void **state) {
    (void)state;
    char path[1200], tmp_path[1300];
    snprintf(path, sizeof path, "%s/full.safetensors", tmp);
    snprintf(tmp_path, sizeof tmp_path, "%s.tmp", path);
    assert_int_equal(symlink("/dev/full", tmp_path), 0);
    hdlm_train_config cfg;
    hdlm_model_config mc;
    assert_int_equal(tiny_config(&cfg, "full", NULL, 0), 0);
    assert_int_equal(hdlm_train_config_model(&cfg, &mc), 0);
    hdlm_model *m;
    assert_int_equal(hdlm_model_create(&m, &mc), 0);
    assert_int_equal(hdlm_safetensors_write_model(path, m, m->params, NULL, NULL), -1);
    assert_error_contains("cannot write");
    assert_error_contains("full.safetensors: No space left on device (nothing written)");
    hdlm_model_free(m);
    assert_int_equal(access(path, F_OK), -1);
    assert_int_equal(access(tmp_path, F_OK), -1);
}

static int setup(void **state) {
    (void)state;
    snprintf(tmp, sizeof tmp, "%s", test_tmp_dir("bad_inputs"));
    snprintf(train_dir, sizeof train_dir, "%s/train", tmp);
    assert_int_equal(mkdir(train_dir, 0755), 0);
    write_shard(train_dir, "train_000000.bin", 4096, HDLM_GPT2_VOCAB, 1);
    return 0;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);   // checkpoints are written collectively (here: one rank)
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_validation_shorter_than_a_chunk),
        cmocka_unit_test(test_fifo_and_directory_refused),
        cmocka_unit_test(test_non_finite_state_refused),   // writes the checkpoint the tests below use
        cmocka_unit_test(test_eval_refuses_other_vocabulary),
        cmocka_unit_test(test_empty_run_dir_refused),
        cmocka_unit_test(test_metrics_checked_and_deduplicated),
        cmocka_unit_test(test_resume_refuses_other_length_and_data),
        cmocka_unit_test(test_schedule_step_overflow_refused),
        cmocka_unit_test(test_jsonl_nul_refused),
        cmocka_unit_test(test_eval_batches_capped),
        cmocka_unit_test(test_yaml_duplicates_and_latest_pointer),
        cmocka_unit_test(test_export_to_full_disk_leaves_nothing),
    };
    int failed = cmocka_run_group_tests(tests, setup, NULL);
    MPI_Finalize();
    return failed;
}

// hdlm-prep prepare under mpirun: 2 and 3 ranks write shards byte-identical to a 1-rank run (one large JSONL file
// split at line starts, several text files, --val-input and --val-fraction, shards that straddle rank boundaries;
// a nested OpenWebText-shaped archive and compressed JSONL, their units spread over the ranks), and a malformed line
// seen by one rank only ends every rank with the right file:line, leaving nothing behind.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hdlm/common.h"

#define MPIRUN "ASAN_OPTIONS=detect_leaks=0 OMP_NUM_THREADS=1 timeout 120 mpirun --oversubscribe --allow-run-as-root --bind-to none"
#define PREP "'" HDLM_BIN_DIR "/hdlm-prep' prepare"

static const char *const words[] = {"alpha", "beta", "gamma", "delta", "river", "stone", "light", "north",
                                    "quiet", "house", "green", "seven"};

// A JSONL file of `lines` documents of varied length (line k has 1 + (7k mod 23) words), optionally one bad line.
static void write_jsonl(const char *path, int lines, int bad_line) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (int k = 1; k <= lines; k++) {
        if (k == bad_line) {
            fprintf(f, "{\"text\": broken}\n");
            continue;
        }
        fprintf(f, "{\"id\": %d, \"text\": \"", k);
        int n = 1 + (7 * k) % 23;
        for (int w = 0; w < n; w++) fprintf(f, "%s%s", w ? " " : "", words[(k * 5 + w * 3) % 12]);
        fprintf(f, k % 5 == 0 ? "\"}\n{\"text\": \"\"}\n" : "\"}\n");   // some empty documents too
    }
    fclose(f);
}

static void test_ranks_byte_identical(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("prep_mpi_identical");
    char path[4096];
    snprintf(path, sizeof path, "%s/big.jsonl", dir);
    write_jsonl(path, 600, 0);
    for (int i = 0; i < 5; i++) {
        snprintf(path, sizeof path, "%s/t%d.txt", dir, i);
        char text[128];
        snprintf(text, sizeof text, "Document %d: %s %s.\n", i, words[i], words[i + 3]);
        test_write_file(path, text, strlen(text));
    }
    const char *args = "--shard-tokens 997 --val-fraction 0.2 --val-input '%s/t1.txt' '%s/t0.txt' '%s/big.jsonl' "
                       "'%s/t2.txt' '%s/t3.txt' '%s/t4.txt'";
    char inputs[4096];
    snprintf(inputs, sizeof inputs, args, dir, dir, dir, dir, dir, dir);
    for (int np = 1; np <= 3; np++)
        assert_int_equal(test_run(MPIRUN " -np %d " PREP " %s --out '%s/np%d' > '%s/log%d' 2>&1", np, inputs, dir, np,
                                  dir, np),
                         0);
    // Several shards in each split, and every file identical across rank counts.
    assert_int_equal(test_run("ls '%s/np1'/train_000003.bin '%s/np1'/validation_000000.bin > /dev/null", dir, dir), 0);
    for (int np = 2; np <= 3; np++) {
        int rc = test_run("diff -r '%s/np1' '%s/np%d'", dir, dir, np);
        if (rc != 0) print_error("%d-rank output differs from the 1-rank output\n", np);
        assert_int_equal(rc, 0);
        assert_int_equal(test_run("grep -q '%d ranks' '%s/log%d'", np, dir, np), 0);
    }
    assert_int_equal(test_run("grep -q 'empty: 120 (skipped)' '%s/log2'", dir), 0);
}

static void test_archive_ranks_byte_identical(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("prep_mpi_archive");
    char path[4096];
    snprintf(path, sizeof path, "%s/docs.jsonl", dir);
    write_jsonl(path, 300, 0);
    // Twelve inner .xz tars of documents cut from the JSONL's lines, in an outer .tar.xz; the JSONL gzip-compressed.
    int rc = test_run("set -e; cd '%s'; mkdir -p owt/openwebtext; split -l 25 -d docs.jsonl part; "
                      "for p in part*; do mkdir -p owt/$p; n=0; while read -r line; do n=$((n + 1)); "
                      "  printf '%%s\n' \"$line\" | cut -c 20- > owt/$p/$(printf %%04d $n).txt; done < $p; "
                      "  (cd owt/$p && tar --sort=name -cf - *.txt) | xz > owt/openwebtext/urlsf_$p-1_data.xz; done; "
                      "(cd owt && tar --sort=name -cf - openwebtext) | xz > openwebtext.tar.xz; gzip -k docs.jsonl; "
                      "(cd owt && tar -cf - $(ls -r openwebtext/*)) | xz > reversed.tar.xz",
                      dir);
    assert_int_equal(rc, 0);
    for (int np = 1; np <= 3; np++)
        assert_int_equal(test_run(MPIRUN " -np %d " PREP " --shard-tokens 1999 --val-last 37 --unit-bytes 3000 "
                                  "--out '%s/np%d' '%s/openwebtext.tar.xz' '%s/docs.jsonl.gz' > '%s/log%d' 2>&1",
                                  np, dir, np, dir, dir, dir, np),
                         0);
    assert_int_equal(test_run("grep -q 'documents: 660 (train 623, validation 37)' '%s/log1'", dir), 0);
    assert_int_equal(test_run("ls '%s/np1'/train_000002.bin > /dev/null", dir), 0);
    for (int np = 2; np <= 3; np++) {
        rc = test_run("diff -r '%s/np1' '%s/np%d'", dir, dir, np);
        if (rc != 0) print_error("%d-rank output of the archive differs from the 1-rank output\n", np);
        assert_int_equal(rc, 0);
    }
    // Members stored in reverse order are read sorted: the same shards, for any number of ranks (each rank's runs
    // then come out of key order).
    for (int np = 1; np <= 3; np += 2)
        assert_int_equal(test_run(MPIRUN " -np %d " PREP " --shard-tokens 1999 --val-last 37 --unit-bytes 3000 "
                                  "--out '%s/rev%d' '%s/reversed.tar.xz' '%s/docs.jsonl.gz' > /dev/null 2>&1 && "
                                  "diff -r '%s/np1' '%s/rev%d'",
                                  np, dir, np, dir, dir, dir, dir, np),
                         0);
    // The default units give the same shards (the work split does not show in the output).
    assert_int_equal(test_run(MPIRUN " -np 2 " PREP " --shard-tokens 1999 --val-last 37 --out '%s/default' "
                              "'%s/openwebtext.tar.xz' '%s/docs.jsonl.gz' > /dev/null 2>&1 && diff -r '%s/np1' '%s/default'",
                              dir, dir, dir, dir, dir),
                     0);
    // Standard input needs one rank; refused before anything is written.
    assert_int_not_equal(test_run(MPIRUN " -np 2 " PREP " --out '%s/stdin' - < '%s/docs.jsonl.gz' > '%s/log_stdin' 2>&1",
                                  dir, dir, dir),
                         0);
    assert_int_equal(test_run("grep -q 'standard input (-) can be read by one rank only' '%s/log_stdin' && "
                              "test ! -e '%s/stdin'", dir, dir),
                     0);
}

static void test_rank_failure_ends_all(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("prep_mpi_failure");
    char path[4096];
    snprintf(path, sizeof path, "%s/big.jsonl", dir);
    // File line 695 of 719 lies in a unit of rank 1 (units of 4 KiB alternate between the ranks): only that rank
    // sees it, and must name the right line (counted from the start of the file it started reading in the middle).
    write_jsonl(path, 600, 580);
    int rc = test_run(MPIRUN " -np 2 " PREP " --unit-bytes 4096 --out '%s/out' '%s' > '%s/log' 2>&1", dir, path, dir);
    assert_int_not_equal(rc, 0);
    assert_int_not_equal(rc, 124);   // no hang
    // 580 lines, plus one empty-document line after every 5th: line 580 of the generator is file line 580 + 115.
    assert_int_equal(test_run("grep -q 'error on rank 1 of 2: .*big.jsonl:695: invalid JSON' '%s/log'", dir), 0);
    assert_int_equal(test_run("test ! -e '%s/out'", dir), 0);   // nothing half-written left behind
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ranks_byte_identical),
        cmocka_unit_test(test_archive_ranks_byte_identical),
        cmocka_unit_test(test_rank_failure_ends_all),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

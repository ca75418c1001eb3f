// hdlm-prep prepare on archives and compressed files made here with tar, xz, gzip, zstd and bzip2: an
// OpenWebText-shaped archive (outer .tar.xz of inner .xz tars of .txt documents) and its other compressions give the
// same shards as the unpacked files, sorted by name whatever the archive order (or in archive order on request);
// compressed JSONL as plain JSONL; standard input; the work units not changing
// the result; each bad input (corrupt or truncated archive, inner archive that is not a tar, non-UTF-8 member,
// zero-length member or inner archive) named by archive and member, skipped and counted with --on-error skip, and
// nothing half-written left behind; an unfinished output refused by the dataset reader.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "harness.h"
#include "hdlm/common.h"
#include "hdlm/dataset.h"
#include "hdlm/tokenizer.h"

#define PREP "ASAN_OPTIONS=detect_leaks=0 OMPI_MCA_pml=ob1 '" HDLM_BIN_DIR "/hdlm-prep' prepare"

// dir/owt/in{0,1,2}/*.txt: twelve documents (UTF-8, one spanning lines); then OpenWebText's shape from them:
// dir/owt/openwebtext/urlsf_subset0{0,1,2}-1_data.xz (xz-compressed tars of one folder each) inside
// dir/openwebtext.tar.xz, and the same with gzip (.tar.gz of .gz) and zstd (.tar.zst of .tar.zst); and
// dir/docs.jsonl (the same documents as JSONL) compressed four ways.
static void make_corpus(const char *dir) {
    int rc = test_run(
        "set -e; cd '%s'; mkdir -p owt/openwebtext gz/openwebtext zst/openwebtext; : > docs.jsonl; "
        "for i in 0 1 2; do mkdir -p owt/in$i; for j in 0 1 2 3; do "
        "  f=owt/in$i/$(printf '%%07d-%%d.txt' $j $i); "
        "  printf 'Document %%d.%%d: caf\\303\\251 na\\303\\257ve \\342\\200\\234quotes\\342\\200\\235 %%d\\nsecond line.'"
        "    $i $j $((i * 7 + j)) > $f; "
        "  printf '{\"text\": \"Document %%d.%%d: caf\\303\\251 na\\303\\257ve \\342\\200\\234quotes\\342\\200\\235 "
        "%%d\\\\nsecond line.\"}\\n' $i $j $((i * 7 + j)) >> docs.jsonl; "
        "done; "
        "(cd owt/in$i && tar --sort=name -cf - *.txt) | xz > owt/openwebtext/urlsf_subset0$i-1_data.xz; "
        "(cd owt/in$i && tar --sort=name -cf - *.txt) | gzip > gz/openwebtext/urlsf_subset0$i-1_data.gz; "
        "(cd owt/in$i && tar --sort=name -cf - *.txt) | zstd -q > zst/openwebtext/urlsf_subset0$i-1_data.tar.zst; "
        "done; "
        "(cd owt && tar --sort=name -cf - openwebtext) | xz > openwebtext.tar.xz; "
        "(cd gz && tar --sort=name -cf - openwebtext) | gzip > openwebtext.tar.gz; "
        "(cd zst && tar --sort=name -cf - openwebtext) | zstd -q > openwebtext.tar.zst; "
        "gzip -c docs.jsonl > docs.jsonl.gz; xz -c docs.jsonl > docs.jsonl.xz; zstd -q -c docs.jsonl > docs.jsonl.zst; "
        "bzip2 -c docs.jsonl > docs.jsonl.bz2; "
        // Members stored out of name order: inner archives 2, 0, 1 and documents in reverse.
        "mkdir -p rev/openwebtext; for i in 0 1 2; do "
        "(cd owt/in$i && tar -cf - $(ls -r)) | xz > rev/openwebtext/urlsf_subset0$i-1_data.xz; done; "
        "(cd rev && tar -cf - openwebtext/urlsf_subset02-1_data.xz openwebtext/urlsf_subset00-1_data.xz "
        "openwebtext/urlsf_subset01-1_data.xz) | xz > unsorted.tar.xz",
        dir);
    assert_int_equal(rc, 0);
}

// 0 when the two outputs are the same files, byte for byte (shards and manifest).
static int same_output(const char *a, const char *b) { return test_run("diff -r '%s' '%s' > /dev/null", a, b); }

static void assert_log(const char *dir, const char *log, const char *needle) {
    int rc = test_run("grep -qF -- '%s' '%s/%s'", needle, dir, log);
    if (rc != 0) {
        print_error("%s/%s does not contain \"%s\":\n", dir, log, needle);
        test_run("cat '%s/%s' >&2", dir, log);
    }
    assert_int_equal(rc, 0);
}

static void test_archives_match_unpacked(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("prep_archive_same");
    make_corpus(dir);
    // The reference: the unpacked folders (a directory's entries sorted, as the archives were made).
    assert_int_equal(test_run("cd '%s' && " PREP " --out ref owt/in0 owt/in1 owt/in2 > ref.log 2>&1", dir), 0);
    assert_log(dir, "ref.log", "documents: 12 (train 12, validation 0)");
    const char *inputs[] = {"openwebtext.tar.xz", "openwebtext.tar.gz", "openwebtext.tar.zst", "owt/openwebtext",
                            "unsorted.tar.xz", "docs.jsonl", "docs.jsonl.gz", "docs.jsonl.xz", "docs.jsonl.zst",
                            "docs.jsonl.bz2"};
    for (size_t i = 0; i < sizeof inputs / sizeof *inputs; i++) {
        int rc = test_run("cd '%s' && " PREP " --out out%zu %s > out%zu.log 2>&1", dir, i, inputs[i], i);
        char out[4200], ref[4200];
        snprintf(out, sizeof out, "%s/out%zu", dir, i);
        snprintf(ref, sizeof ref, "%s/ref", dir);
        if (rc != 0 || same_output(out, ref) != 0) {
            print_error("%s: not the shards of the unpacked files\n", inputs[i]);
            test_run("cat '%s/out%zu.log' >&2", dir, i);
        }
        assert_int_equal(rc, 0);
        assert_int_equal(same_output(out, ref), 0);
    }
    // --member-order stored: archive order (inner archives 2, 0, 1, documents reversed), the same documents.
    assert_int_equal(test_run("cd '%s' && " PREP " --member-order stored --out stored unsorted.tar.xz > stored.log 2>&1 "
                              "&& ! cmp -s stored/train_000000.bin ref/train_000000.bin",
                              dir),
                     0);
    assert_log(dir, "stored.log", "documents: 12 (train 12, validation 0)");
    assert_int_equal(test_run("cd '%s' && for i in 2 0 1; do ls -r owt/in$i | sed \"s|^|owt/in$i/|\"; done > order && "
                              PREP " --out stored_ref $(cat order) > /dev/null 2>&1 && "
                              "cmp stored/train_000000.bin stored_ref/train_000000.bin",
                              dir),
                     0);
    // Work units down to 50 bytes (every member and line its own unit) change nothing.
    assert_int_equal(test_run("cd '%s' && " PREP " --unit-bytes 50 --out small openwebtext.tar.xz docs.jsonl.gz "
                              "owt/in1 > small.log 2>&1 && " PREP " --out big openwebtext.tar.xz docs.jsonl.gz owt/in1 "
                              "> big.log 2>&1 && cmp small/train_000000.bin big/train_000000.bin",
                              dir),
                     0);
    assert_log(dir, "small.log", "documents: 28 (train 28, validation 0)");
    // Standard input: a compressed tar, then compressed JSONL.
    assert_int_equal(test_run("cd '%s' && " PREP " --out stdin_tar - < openwebtext.tar.xz > /dev/null 2>&1 && "
                              PREP " --out stdin_jsonl - < docs.jsonl.zst > /dev/null 2>&1",
                              dir),
                     0);
    char a[4200], b[4200];
    snprintf(a, sizeof a, "%s/ref", dir);
    snprintf(b, sizeof b, "%s/stdin_tar", dir);
    assert_int_equal(same_output(a, b), 0);
    snprintf(b, sizeof b, "%s/stdin_jsonl", dir);
    assert_int_equal(same_output(a, b), 0);
    // --out makes missing parents.
    assert_int_equal(test_run("cd '%s' && " PREP " --out new/deeper/data docs.jsonl.xz > /dev/null 2>&1 && "
                              "test -f new/deeper/data/manifest.json",
                              dir),
                     0);
}

static void test_archive_errors(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("prep_archive_bad");
    // good.txt, then per case one bad member; an inner archive of one good document for the nested cases.
    int rc = test_run(
        "set -e; cd '%s'; mkdir -p m; printf 'Hello world' > m/good.txt; printf 'bad \\377 byte' > m/bad.txt; "
        ": > m/empty.txt; printf 'not a tar' | xz > m/inner.xz; : > m/zero.xz; "
        "(cd m && tar cf - good.txt) | xz > m/fine.xz; head -c 60 m/fine.xz > m/cut.xz; "
        "tar cf nonutf8.tar -C m good.txt bad.txt; tar cf emptymember.tar -C m good.txt empty.txt; "
        "tar cf notatar.tar -C m good.txt inner.xz fine.xz; tar cf zeroinner.tar -C m good.txt zero.xz fine.xz; "
        "tar cf cutinner.tar -C m good.txt cut.xz fine.xz; "
        "head -c 400000 /dev/urandom | base64 > m/big.txt; tar cf - -C m big.txt good.txt | xz > big.tar.xz; "
        "head -c 200000 big.tar.xz > truncated.tar.xz; cp big.tar.xz corrupt.tar.xz; "
        "printf 'XXXXXXXXXXXXXXXX' | dd of=corrupt.tar.xz bs=1 seek=200000 conv=notrunc 2> /dev/null; "
        "mkdir -p existing",
        dir);
    assert_int_equal(rc, 0);
    struct {
        const char *input, *error;   // error: the message with --on-error stop
        int skip_docs;               // documents with --on-error skip; -1: fails even then
        const char *skip_count;      // the summary's count with --on-error skip
    } cases[] = {
        {"nonutf8.tar", "nonutf8.tar, member bad.txt: invalid UTF-8 at byte offset 4", 1,
         "malformed or unreadable: 1 (skipped)"},
        {"notatar.tar", "notatar.tar, member inner.xz: not a tar archive", 2, "malformed or unreadable: 1 (skipped)"},
        {"zeroinner.tar", "zeroinner.tar, member zero.xz: not a tar archive", 2, "malformed or unreadable: 1 (skipped)"},
        {"cutinner.tar", "cutinner.tar, member cut.xz: ", 2, "malformed or unreadable: 1 (skipped)"},
        {"truncated.tar.xz", "truncated.tar.xz, member big.txt: ", -1, NULL},
        {"corrupt.tar.xz", "corrupt.tar.xz, member big.txt: ", -1, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        // A failure leaves nothing: neither the folder it made, nor shards or the temporary folder in an existing one.
        assert_int_not_equal(test_run("cd '%s' && " PREP " --out made%zu %s > stop%zu.log 2>&1", dir, i,
                                      cases[i].input, i),
                             0);
        char log[64];
        snprintf(log, sizeof log, "stop%zu.log", i);
        assert_log(dir, log, cases[i].error);
        assert_int_equal(test_run("cd '%s' && test ! -e made%zu", dir, i), 0);
        assert_int_not_equal(test_run("cd '%s' && " PREP " --out existing %s > /dev/null 2>&1", dir, cases[i].input), 0);
        assert_int_equal(test_run("cd '%s' && test -d existing && test -z \"$(ls -A existing)\"", dir), 0);
        rc = test_run("cd '%s' && " PREP " --on-error skip --out skip%zu %s > skip%zu.log 2>&1", dir, i,
                      cases[i].input, i);
        snprintf(log, sizeof log, "skip%zu.log", i);
        if (cases[i].skip_docs < 0) {
            assert_int_not_equal(rc, 0);   // a corrupt input file itself is never skipped silently
            assert_log(dir, log, cases[i].error);
            continue;
        }
        assert_int_equal(rc, 0);
        char docs[64];
        snprintf(docs, sizeof docs, "documents: %d (train %d,", cases[i].skip_docs, cases[i].skip_docs);
        assert_log(dir, log, docs);
        assert_log(dir, log, cases[i].skip_count);
        assert_log(dir, log, "warning: ");
    }
    // The same damage found by the header pass that sorts an archive larger than a unit: the same message.
    assert_int_not_equal(test_run("cd '%s' && " PREP " --unit-bytes 1000 --out made truncated.tar.xz > pass.log 2>&1", dir),
                         0);
    assert_log(dir, "pass.log", "truncated.tar.xz, member big.txt: ");
    // A zero-length document member: named in a warning, skipped and counted as empty (as empty files are).
    assert_int_equal(test_run("cd '%s' && " PREP " --out empty emptymember.tar > empty.log 2>&1", dir), 0);
    assert_log(dir, "empty.log", "warning: emptymember.tar, member empty.txt: empty document");
    assert_log(dir, "empty.log", "documents: 1 (train 1, validation 0); empty: 1 (skipped)");
    // Standard input is for one process: refused under several ranks before anything is written (test_prep_mpi).
}

static void test_unfinished_output_refused(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("prep_archive_unfinished");
    assert_int_equal(test_run("cd '%s' && printf 'Hello world' > a.txt && " PREP " --out out a.txt > /dev/null 2>&1 && "
                              "mkdir out/.prepare-tmp",
                              dir),
                     0);
    // A run that was killed leaves .prepare-tmp: the reader refuses the folder, prepare says so without --overwrite.
    char out[4200];
    snprintf(out, sizeof out, "%s/out", dir);
    hdlm_dataset d;
    assert_int_not_equal(hdlm_dataset_open_dir(&d, out, "train", 1, HDLM_GPT2_VOCAB), 0);
    assert_non_null(strstr(hdlm_last_error(), "unfinished hdlm-prep prepare"));
    assert_int_not_equal(test_run("cd '%s' && " PREP " --out out a.txt > log 2>&1", dir), 0);
    assert_log(dir, "log", "holds the output of an unfinished run");
    assert_int_equal(test_run("cd '%s' && " PREP " --overwrite --out out a.txt > /dev/null 2>&1", dir), 0);
    assert_int_equal(hdlm_dataset_open_dir(&d, out, "train", 1, HDLM_GPT2_VOCAB), 0);
    hdlm_dataset_close(&d);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_archives_match_unpacked),
        cmocka_unit_test(test_archive_errors),
        cmocka_unit_test(test_unfinished_output_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

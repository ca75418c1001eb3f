// hdlm-compress end to end (docs/compression.md): round trips of the default corpora, empty input, one token, text
// that ends mid-chunk, non-ASCII text, standard input and output, several budgets and both orders; 1 and 2 ranks and
// 1 and 2 threads give the same bytes; a file made with another model or codec, a truncated or corrupt file, each a
// clear error with nothing written; and the size against perplexity --codec, the same order and policy.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hdlm/common.h"
#include "hdlm/config.h"
#include "hdlm/model.h"
#include "hdlm/model_io.h"
#include "hdlm/rng.h"
#include "hdlm/tokenizer.h"
#include "hdlm/train_config.h"

#define ENV "OMPI_MCA_ess_singleton_isolated=1 ASAN_OPTIONS=detect_leaks=0 OMP_NUM_THREADS=1 "
#define HZ ENV HDLM_BIN_DIR "/hdlm-compress"
#define MPI_HZ                                                                                                         \
    "ASAN_OPTIONS=detect_leaks=0 OMP_NUM_THREADS=1 mpirun -np 2 --oversubscribe --allow-run-as-root --bind-to none " \
    HDLM_BIN_DIR "/hdlm-compress"

static char tmp[2048], run_a[4200], run_b[4200], run_ar[4200];

// A small checkpoint (random weights) of GPT-2's vocabulary, of the ardm or ar preset.
static void make_checkpoint(const char *root, const char *preset, uint64_t seed) {
    const char *ov[] = {"model.hidden_size=16", "model.n_blocks=1", "model.n_heads=2", "model.cond_dim=8",
                        "model.length=32", "model.dropout=0"};
    test_write_checkpoint(root, preset, ov, sizeof ov / sizeof ov[0], seed, 0);
}

static int setup(void **state) {
    (void)state;
    snprintf(tmp, sizeof tmp, "%s", test_tmp_dir("compress_tool"));
    snprintf(run_a, sizeof run_a, "%s/a/checkpoints", tmp);
    snprintf(run_b, sizeof run_b, "%s/b/checkpoints", tmp);
    snprintf(run_ar, sizeof run_ar, "%s/ar/checkpoints", tmp);
    make_checkpoint(run_a, "ardm", 9);
    make_checkpoint(run_b, "ardm", 10);
    make_checkpoint(run_ar, "ar", 11);
    return 0;
}

__attribute__((noinline)) static char *slurp(const char *path) {   // (inlined, gcc 12 sees a dangling pointer)
    char *text = NULL;
    size_t len;
    assert_int_equal(hdlm_read_file(path, &text, &len), 0);
    return text;
}

static void write_text(const char *path, const char *text, size_t len) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    fclose(f);
}

// codec + encode + decode of `in`; asserts the decoded file equals it.
static void round_trip(const char *codec, const char *in, const char *tag) {
    assert_int_equal(test_run(HZ " encode --ckpt %s --codec %s %s %s/%s.hz 2> %s/%s.log", run_a, codec, in, tmp, tag,
                              tmp, tag), 0);
    assert_int_equal(test_run(HZ " decode --ckpt %s --codec %s %s/%s.hz %s/%s.out 2>> %s/%s.log", run_a, codec, tmp,
                              tag, tmp, tag, tmp, tag), 0);
    assert_int_equal(test_run("cmp -s %s %s/%s.out", in, tmp, tag), 0);
}

static void test_round_trips(void **state) {
    (void)state;
    char codec[4300], in[4300];
    const struct {
        int budget;
        const char *order;
    } codecs[] = {{1, "random"}, {7, "random"}, {32, "left-to-right"}};
    char moby[4300], sotu[4300];
    snprintf(moby, sizeof moby, "%s/moby.txt", tmp);
    snprintf(sotu, sizeof sotu, "%s/sotu.txt", tmp);
    assert_int_equal(test_run("head -c 6000 %s > %s", test_cache_path("moby-dick/data/data.txt"), moby), 0);
    assert_int_equal(test_run("cat $(ls %s/*.txt | tail -1) | head -c 5000 > %s", test_cache_path("sotu/data"), sotu),
                     0);
    for (size_t k = 0; k < sizeof codecs / sizeof codecs[0]; k++) {
        snprintf(codec, sizeof codec, "%s/k%d.codec", tmp, codecs[k].budget);
        assert_int_equal(test_run(HZ " codec --ckpt %s --budget %d --order %s --out %s > /dev/null 2>&1", run_a,
                                  codecs[k].budget, codecs[k].order, codec), 0);
        round_trip(codec, moby, "moby");
        round_trip(codec, sotu, "sotu");
    }
    // empty input, one token, mid-chunk ends, non-ASCII, a literal <|endoftext|>
    const char *texts[] = {"", "a", "The end of one chunk and the start of the next one falls mid-text here, "
                           "once and again: thirty-two tokens per chunk.",
                           "Grüße, 世界! naïve café — ½ € 🙂 ∑ Ωmega\n\ttabs\r\nand <|endoftext|> inside"};
    for (size_t t = 0; t < sizeof texts / sizeof texts[0]; t++) {
        snprintf(in, sizeof in, "%s/text%zu.txt", tmp, t);
        write_text(in, texts[t], strlen(texts[t]));
        char tag[16];
        snprintf(tag, sizeof tag, "text%zu", t);
        round_trip(codec, in, tag);
    }
    // standard input and output
    assert_int_equal(test_run("cat %s | " HZ " encode --ckpt %s --codec %s - - 2> /dev/null | " HZ
                              " decode --ckpt %s --codec %s - - 2> /dev/null | cmp -s - %s", moby, run_a, codec, run_a,
                              codec, moby), 0);
    // an AR run: left to right, one token per call, KV cache
    snprintf(codec, sizeof codec, "%s/ar.codec", tmp);
    assert_int_equal(test_run(HZ " codec --ckpt %s --out %s > /dev/null 2>&1", run_ar, codec), 0);
    assert_int_equal(test_run(HZ " encode --ckpt %s --codec %s %s %s/ar.hz 2> /dev/null && " HZ " decode --ckpt %s "
                              "--codec %s %s/ar.hz %s/ar.out 2> /dev/null && cmp -s %s %s/ar.out", run_ar, codec, moby,
                              tmp, run_ar, codec, tmp, tmp, moby, tmp), 0);
    assert_int_equal(test_run(HZ " codec --ckpt %s --budget 4 --out %s/x.codec 2> /dev/null", run_ar, tmp), 1);
    // the ideal code length is printed with the real one
    char *log = slurp(strcat(strcpy(in, tmp), "/moby.log"));
    assert_non_null(strstr(log, "bits/token (ideal "));
    free(log);
}

// 1 and 2 ranks, 1 and 2 threads: the same bytes; a decode on 2 ranks of a file made on 1.
static void test_same_bytes_for_any_ranks_and_threads(void **state) {
    (void)state;
    char codec[4300], in[4300];
    snprintf(codec, sizeof codec, "%s/k7.codec", tmp);
    snprintf(in, sizeof in, "%s/moby.txt", tmp);
    assert_int_equal(test_run(HZ " encode --ckpt %s --codec %s --group 2 %s %s/r1.hz 2> /dev/null", run_a, codec, in,
                              tmp), 0);
    assert_int_equal(test_run(MPI_HZ " encode --ckpt %s --codec %s --group 2 %s %s/r2.hz 2> /dev/null", run_a, codec,
                              in, tmp), 0);
    assert_int_equal(test_run("OMPI_MCA_ess_singleton_isolated=1 ASAN_OPTIONS=detect_leaks=0 OMP_NUM_THREADS=2 " HDLM_BIN_DIR
                              "/hdlm-compress "
                              "encode --ckpt %s --codec %s --group 2 %s %s/t2.hz 2> /dev/null", run_a, codec, in, tmp),
                     0);
    assert_int_equal(test_run("cmp -s %s/r1.hz %s/r2.hz && cmp -s %s/r1.hz %s/t2.hz", tmp, tmp, tmp, tmp), 0);
    assert_int_equal(test_run(MPI_HZ " decode --ckpt %s --codec %s %s/r1.hz %s/r2.out 2> /dev/null", run_a, codec,
                              tmp, tmp), 0);
    assert_int_equal(test_run("cmp -s %s %s/r2.out", in, tmp), 0);
}

static void expect_failure(const char *cmd_fmt, const char *out, const char *message, ...) {
    char cmd[8192], err[4300];
    va_list ap;
    va_start(ap, message);
    vsnprintf(cmd, sizeof cmd, cmd_fmt, ap);
    va_end(ap);
    snprintf(err, sizeof err, "%s/err.txt", tmp);
    test_run("rm -f %s", out);
    assert_int_equal(test_run("%s 2> %s", cmd, err), 1);
    char *text = slurp(err);
    if (!strstr(text, message)) fail_msg("expected '%s' in:\n%s", message, text);
    free(text);
    assert_int_equal(test_run("test ! -e %s && test -z \"$(ls %s.tmp* 2> /dev/null)\"", out, out), 0);   // nothing written
}

static void test_bad_files_refused(void **state) {
    (void)state;
    char codec[4300], other[4300], file[4300], bad[4300], out[4300];
    snprintf(codec, sizeof codec, "%s/k7.codec", tmp);
    snprintf(other, sizeof other, "%s/k1.codec", tmp);
    snprintf(file, sizeof file, "%s/moby.hz", tmp);   // made with k7? no: the last codec of test_round_trips
    snprintf(bad, sizeof bad, "%s/bad.hz", tmp);
    snprintf(out, sizeof out, "%s/bad.out", tmp);
    assert_int_equal(test_run(HZ " encode --ckpt %s --codec %s %s/moby.txt %s 2> /dev/null", run_a, codec, tmp, file),
                     0);
    expect_failure(HZ " decode --ckpt %s --codec %s %s %s", out, "was made for another model", run_b, codec, file, out);
    expect_failure(HZ " decode --ckpt %s --codec %s %s %s", out, "was compressed with another codec", run_a, other,
                   file, out);
    // truncated, corrupt header, corrupt stream, not ours
    assert_int_equal(test_run("head -c -9 %s > %s", file, bad), 0);
    expect_failure(HZ " decode --ckpt %s --codec %s %s %s", out, "truncated", run_a, codec, bad, out);
    assert_int_equal(test_run("cp %s %s && printf '\\377' | dd of=%s bs=1 seek=45 conv=notrunc 2> /dev/null", file,
                              bad, bad), 0);
    expect_failure(HZ " decode --ckpt %s --codec %s %s %s", out, "the header is corrupt", run_a, codec, bad, out);
    assert_int_equal(test_run("cp %s %s && printf '\\002' | dd of=%s bs=1 seek=8 conv=notrunc 2> /dev/null", file,
                              bad, bad), 0);
    expect_failure(HZ " decode --ckpt %s --codec %s %s %s", out, "format version 2, this hdlm-compress reads version 1",
                   run_a, codec, bad, out);
    assert_int_equal(test_run("cp %s %s && printf '\\125\\125' | dd of=%s bs=1 seek=400 conv=notrunc 2> /dev/null",
                              file, bad, bad), 0);
    expect_failure(HZ " decode --ckpt %s --codec %s %s %s", out, "", run_a, codec, bad, out);
    char *err = slurp(strcat(strcpy(bad, tmp), "/err.txt"));
    assert_true(strstr(err, "does not decode to its end") || strstr(err, "checksum differs") ||
                strstr(err, "rANS stream"));
    free(err);
    expect_failure(HZ " decode --ckpt %s --codec %s %s/moby.txt %s", out, "not an hdlm-compress file", run_a, codec,
                   tmp, out);
    // invalid UTF-8 input, a γ or AR model, a missing codec
    snprintf(bad, sizeof bad, "%s/latin1.txt", tmp);
    write_text(bad, "caf\xe9", 4);
    expect_failure(HZ " encode --ckpt %s --codec %s %s %s", out, "codes UTF-8 text", run_a, codec, bad, out);
    expect_failure(HZ " encode --ckpt %s %s/moby.txt %s", out, "--codec CODEC is required", run_a, tmp, out);
    // info: the header as JSON
    assert_int_equal(test_run(HZ " info %s > %s/info.json", file, tmp), 0);
    char *info = slurp(strcat(strcpy(bad, tmp), "/info.json"));
    assert_non_null(strstr(info, "\"original_bytes\":6000"));
    free(info);
}

// On held-out addresses: the coded bits per token within 1 % of perplexity --codec's exact value for the same order
// and policy, after the fixed costs (header; per group of chunks its word count, the flushed state and the last word:
// at most 128 bits). The text is cut to exactly C chunks of tokens, so that both see the same chunks (hdlm-prep appends one
// end-of-text token, which the estimator's whole chunks leave out).
static void test_size_matches_perplexity(void **state) {
    (void)state;
    enum { L = 32, C = 24 };
    char codec[4300], in[4300], data[4300], path[4400];
    snprintf(codec, sizeof codec, "%s/k7.codec", tmp);
    snprintf(in, sizeof in, "%s/exact.txt", tmp);
    snprintf(data, sizeof data, "%s/shards", tmp);
    hdlm_tokenizer *tok;
    assert_int_equal(hdlm_tokenizer_load_dir(&tok, test_cache_path("gpt2")), 0);
    char *text = slurp(strcat(strcpy(path, tmp), "/sotu.txt")), *cut = NULL;
    hdlm_tokens t = {0}, re = {0};
    assert_int_equal(hdlm_tokenizer_encode(tok, text, strlen(text), &t), 0);
    assert_true(t.len > C * L + 100);
    size_t len = 0;
    for (size_t s = 0; s < 100 && !cut; s++) {   // a window of C·L tokens that re-encodes to itself
        assert_int_equal(hdlm_tokenizer_decode(tok, t.ids + s, C * L, 0, &cut, &len), 0);
        re.len = 0;
        assert_int_equal(hdlm_tokenizer_encode(tok, cut, len, &re), 0);
        if (re.len != C * L || memcmp(re.ids, t.ids + s, C * L * sizeof *re.ids) != 0) free(cut), cut = NULL;
    }
    assert_non_null(cut);
    write_text(in, cut, len);
    free(cut), free(text), hdlm_tokens_free(&t), hdlm_tokens_free(&re), hdlm_tokenizer_free(tok);
    assert_int_equal(test_run(ENV HDLM_BIN_DIR "/hdlm-prep prepare --split validation --overwrite --out %s %s "
                              "> /dev/null", data, in), 0);
    // an ARDM codec and an AR (next-token) codec, each against its model's exact value
    const char *runs[2] = {run_a, run_ar}, *codecs[2] = {"k7.codec", "ar.codec"};
    for (int k = 0; k < 2; k++) {
        snprintf(codec, sizeof codec, "%s/%s", tmp, codecs[k]);
        assert_int_equal(test_run(ENV HDLM_BIN_DIR "/hdlm-eval perplexity --ckpt %s --data %s --codec %s > %s/ppl.txt",
                                  runs[k], data, codec, tmp), 0);
        assert_int_equal(test_run(HZ " encode --ckpt %s --codec %s %s %s/size.hz 2> /dev/null", runs[k], codec, in,
                                  tmp), 0);
        assert_int_equal(test_run(HZ " info %s/size.hz > %s/size.json", tmp, tmp), 0);
        char *ppl = slurp(strcat(strcpy(path, tmp), "/ppl.txt")), *info = slurp(strcat(strcpy(path, tmp), "/size.json"));
        double bound = 0;
        long tokens = 0, groups = 0, bytes = 0, scored = 0;
        assert_int_equal(sscanf(strstr(ppl, "nats/token (exact; "), "nats/token (exact; %lf", &bound), 1);
        assert_int_equal(sscanf(strstr(ppl, "tokens      "), "tokens %ld", &scored), 1);
        assert_int_equal(sscanf(strstr(info, "\"tokens\":"), "\"tokens\":%ld", &tokens), 1);
        assert_int_equal(sscanf(strstr(info, "\"groups\":"), "\"groups\":%ld", &groups), 1);
        assert_int_equal(sscanf(strstr(info, "\"bytes\":"), "\"bytes\":%ld", &bytes), 1);
        assert_int_equal(tokens, C * L);
        assert_int_equal(scored, C * L);   // the same tokens in the same chunks
        double coded = (8.0 * bytes - 8 * 96 - 32.0 * groups) / tokens;   // the streams, state flush included
        print_message("%s: %.4f bits/token in the streams, exact code length %.4f, %.4f with every fixed cost\n",
                      codecs[k], coded, bound, 8.0 * bytes / tokens);
        assert_true(coded >= 0.999 * bound);   // no stream beats the model (0.1 %: the AR estimator's own rounding)
        assert_true(coded <= 1.01 * bound + 96.0 * groups / tokens);
        free(ppl);
        free(info);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trips),
        cmocka_unit_test(test_same_bytes_for_any_ranks_and_threads),
        cmocka_unit_test(test_bad_files_refused),
        cmocka_unit_test(test_size_matches_perplexity),
    };
    return cmocka_run_group_tests_name("compress_tool", tests, setup, NULL);
}

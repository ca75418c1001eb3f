// hdlm-bench prepare: hdlm-prep prepare on an OpenWebText-shaped archive of at least 1 GB of text made from the
// default corpus (an outer .tar.xz of inner .xz tars of ~5 kB .txt documents, 400 per inner archive, as the real
// one), on 1 and 2 ranks; the time split between reading (libarchive: xz, tar) and tokenizing; peak memory per rank;
// next to the command-line tools (tar and xz) and the npm GPT-2 encoder doing the two halves on the same machine.
#define _GNU_SOURCE   // environ
#include <archive.h>
#include <archive_entry.h>
#include <getopt.h>
#include <glob.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench.h"
#include "hdlm/common.h"
#include "hdlm/textsource.h"
#include "hdlm/tokenizer.h"

#define JS_SCRIPT HDLM_SOURCE_DIR "/tests/bench/js_tokenizers.js"
#define SOTU_DIR HDLM_SOURCE_DIR "/.cache/sotu/data"

enum { DOC_BYTES = 5000, DOCS_PER_INNER = 400 };

typedef struct {
    char **text;
    size_t *len;
    size_t n, bytes;
} doc_set;

// The SOTU addresses cut at line or sentence ends into documents of about DOC_BYTES (OpenWebText's are ~5 kB on average).
static int load_documents(doc_set *d) {
    glob_t g;
    HDLM_CHECK(glob(SOTU_DIR "/*.txt", 0, NULL, &g) == 0, "no corpus files in %s (run tools/setup.sh)", SOTU_DIR);
    *d = (doc_set){0};
    size_t cap = 0;
    for (size_t i = 0; i < g.gl_pathc; i++) {
        char *text;
        size_t len;
        HDLM_TRY(hdlm_read_file(g.gl_pathv[i], &text, &len));
        for (size_t a = 0; a < len;) {
            size_t b = a + DOC_BYTES < len ? a + DOC_BYTES : len;
            while (b < len && !(text[b - 1] == '\n' || (text[b - 1] == ' ' && text[b - 2] == '.'))) b++;
            if (d->n == cap) {
                cap = cap ? 2 * cap : 1024;
                d->text = hdlm_realloc(d->text, cap * sizeof *d->text);
                d->len = hdlm_realloc(d->len, cap * sizeof *d->len);
            }
            d->text[d->n] = hdlm_malloc(b - a + 1);
            memcpy(d->text[d->n], text + a, b - a);
            d->text[d->n][b - a] = '\0';
            d->len[d->n++] = b - a;
            d->bytes += b - a;
            a = b;
        }
        free(text);
    }
    globfree(&g);
    return 0;
}

typedef struct {
    char *data;
    size_t len, cap;
} membuf;

static la_ssize_t membuf_write(struct archive *a, void *client, const void *buf, size_t n) {
    (void)a;
    membuf *m = client;
    if (m->len + n > m->cap) m->data = hdlm_realloc(m->data, m->cap = 2 * (m->len + n));
    memcpy(m->data + m->len, buf, n);
    m->len += n;
    return (la_ssize_t)n;
}

static int add_member(struct archive *a, const char *name, const void *data, size_t len) {
    struct archive_entry *e = archive_entry_new();
    archive_entry_set_pathname(e, name);
    archive_entry_set_size(e, (la_int64_t)len);
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    int ok = archive_write_header(a, e) == ARCHIVE_OK && archive_write_data(a, data, len) == (la_ssize_t)len;
    archive_entry_free(e);
    HDLM_CHECK(ok, "cannot write archive member %s: %s", name, archive_error_string(a));
    return 0;
}

// A tar of documents [first, first + count) (indices mod the set), xz level 1, in memory.
static int make_inner(const doc_set *d, size_t first, size_t count, membuf *out) {
    struct archive *a = archive_write_new();
    archive_write_set_format_ustar(a);
    archive_write_add_filter_xz(a);
    archive_write_set_filter_option(a, "xz", "compression-level", "1");
    archive_write_set_bytes_in_last_block(a, 1);
    int rc = archive_write_open(a, out, NULL, membuf_write, NULL) == ARCHIVE_OK ? 0 : -1;
    for (size_t k = 0; rc == 0 && k < count; k++) {
        char name[64];
        snprintf(name, sizeof name, "%07zu-doc.txt", first + k);
        size_t i = (first + k) % d->n;
        rc = add_member(a, name, d->text[i], d->len[i]);
    }
    if (archive_write_close(a) != ARCHIVE_OK) rc = -1;
    archive_write_free(a);
    HDLM_CHECK(rc == 0, "cannot make an inner archive");
    return 0;
}

// The archive at `path` with at least `text_bytes` of documents; returns the documents and text bytes it holds.
static int make_archive(const doc_set *d, const char *path, double text_bytes, size_t *docs, size_t *bytes) {
    size_t inner = 0, per_pass = d->bytes;
    *docs = (size_t)((text_bytes / (double)per_pass) * (double)d->n) + 1;
    *docs = (*docs + DOCS_PER_INNER - 1) / DOCS_PER_INNER * DOCS_PER_INNER;
    size_t n_inner = *docs / DOCS_PER_INNER;
    *bytes = 0;
    for (size_t i = 0; i < *docs; i++) *bytes += d->len[i % d->n];
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.partial", path);
    struct archive *a = archive_write_new();
    archive_write_set_format_ustar(a);
    archive_write_add_filter_xz(a);
    archive_write_set_filter_option(a, "xz", "compression-level", "1");
    HDLM_CHECK(archive_write_open_filename(a, tmp) == ARCHIVE_OK, "cannot write %s: %s", tmp, archive_error_string(a));
    int threads = omp_get_max_threads(), rc = 0;
    membuf *bufs = hdlm_calloc((size_t)threads, sizeof *bufs);
    double start = hdlm_time_now();
    while (rc == 0 && inner < n_inner) {
        int batch = (int)(n_inner - inner < (size_t)threads ? n_inner - inner : (size_t)threads), failed = 0;
#pragma omp parallel for reduction(+ : failed)
        for (int t = 0; t < batch; t++) {
            bufs[t].len = 0;
            failed += make_inner(d, (inner + (size_t)t) * DOCS_PER_INNER, DOCS_PER_INNER, &bufs[t]) != 0;
        }
        HDLM_CHECK(!failed, "cannot make the inner archives");
        for (int t = 0; rc == 0 && t < batch; t++, inner++) {
            char name[96];
            snprintf(name, sizeof name, "openwebtext/urlsf_subset%05zu-1_data.xz", inner);
            rc = add_member(a, name, bufs[t].data, bufs[t].len);
        }
        if (inner % 64 < (size_t)threads)
            fprintf(stderr, "hdlm-bench prepare: making the archive: %zu of %zu inner archives, %.0f s\n", inner,
                    n_inner, hdlm_time_now() - start);
    }
    for (int t = 0; t < threads; t++) free(bufs[t].data);
    free(bufs);
    if (archive_write_close(a) != ARCHIVE_OK) rc = HDLM_FAIL("cannot write %s: %s", tmp, archive_error_string(a));
    archive_write_free(a);
    HDLM_TRY(rc);
    HDLM_CHECK(rename(tmp, path) == 0, "cannot rename %s to %s", tmp, path);
    return 0;
}

// Reads every document of the archive with hdlm's reader (one process, one thread): the decompression half.
static int read_only(const char *path, double *seconds, size_t *docs, size_t *bytes) {
    hdlm_text_inputs in = {0};
    HDLM_TRY(hdlm_text_inputs_add(&in, path, HDLM_DETOK_NONE, 0));
    hdlm_text_reader *r;
    hdlm_text_read_options options = {0};
    HDLM_TRY(hdlm_text_reader_open(&r, &in, 0, 1, &options));
    double start = hdlm_time_now();
    *docs = *bytes = 0;
    hdlm_text_doc doc;
    int rc;
    while ((rc = hdlm_text_reader_next(r, &doc)) == 1) {
        ++*docs;
        *bytes += doc.len;
        hdlm_text_doc_free(&doc);
    }
    *seconds = hdlm_time_now() - start;
    hdlm_text_reader_close(r);
    hdlm_text_inputs_free(&in);
    return rc;
}

// Encodes one pass of the documents in memory on one thread, best of 5 (0.1 s each): the tokenizing half.
static int tokenize_only(const doc_set *d, double *seconds) {
    hdlm_tokenizer *tok;
    HDLM_TRY(hdlm_tokenizer_load_dir(&tok, hdlm_tokenizer_default_dir()));
    int rc = 0;
    *seconds = INFINITY;
    for (int repeat = 0; repeat < 5; repeat++) {
        double start = hdlm_time_now();
        for (size_t i = 0; i < d->n && rc == 0; i++) {
            hdlm_tokens ids = {0};
            rc = hdlm_tokenizer_encode(tok, d->text[i], d->len[i], &ids);
            hdlm_tokens_free(&ids);
        }
        double t = hdlm_time_now() - start;
        if (t < *seconds) *seconds = t;
    }
    hdlm_tokenizer_free(tok);
    return rc;
}

// Runs a shell command; the variables of this process's own MPI singleton are removed first, so that a command
// may start mpirun. Returns the wall time, or a negative number on failure.
static double timed_shell(const char *cmd) {
    static const char *const singleton[] = {"OMPI_MCA_ess", "OMPI_MCA_pmix", "OMPI_APP_CTX_NUM_PROCS", "OMPI_ARGV",
                                            "OMPI_COMMAND", "OMPI_MCA_orte_ess_num_procs",
                                            "OMPI_MCA_orte_precondition_transports"};
    for (size_t i = 0; i < sizeof singleton / sizeof *singleton; i++) unsetenv(singleton[i]);
    double start = hdlm_time_now();
    int status = system(cmd);
    return status == 0 ? hdlm_time_now() - start : -1;
}

static double file_value(const char *path, const char *key) {
    char *text;
    size_t len;
    if (hdlm_read_file(path, &text, &len) != 0) return -1;
    const char *p = strstr(text, key);
    double v = p ? atof(p + strlen(key)) : -1;
    free(text);
    return v;
}

static void usage(FILE *f) {
    fprintf(f, "usage: hdlm-bench prepare [--gb G] [--work DIR] [--no-js]\n"
               "Makes (once, kept in DIR) an OpenWebText-shaped archive of G GB of text (default 1) from the SOTU\n"
               "corpus: openwebtext.tar.xz of inner .xz tars of 400 documents of ~5 kB each (xz level 1). Then times\n"
               "hdlm-prep prepare on it with 1 and 2 ranks (1 thread each), hdlm's reader alone (decompression) and\n"
               "the tokenizer alone, and the baselines on this machine: tar + xz (CLI) reading the same archive and\n"
               "the npm gpt-tokenizer (node) encoding the corpus. MB/s = 1e6 bytes of document text per second.\n"
               "  --work DIR   where the archive and the outputs go (default /tmp/hdlm-bench-prepare)\n"
               "  --no-js      skip the node encoder\n");
}

int bench_prepare_main(int argc, char **argv) {
    static const struct option longopts[] = {{"gb", required_argument, NULL, 'g'}, {"work", required_argument, NULL, 'w'},
                                              {"no-js", no_argument, NULL, 'n'}, {"help", no_argument, NULL, 'h'},
                                              {NULL, 0, NULL, 0}};
    double gb = 1.0;
    const char *work = "/tmp/hdlm-bench-prepare";
    int no_js = 0;
    optind = 1;
    for (int c; (c = getopt_long(argc, argv, "h", longopts, NULL)) != -1;) {
        if (c == 'g') {
            char *end;
            gb = strtod(optarg, &end);
            if (*end || !(gb > 0)) HDLM_DIE("--gb expects a positive number, got \"%s\"", optarg);
        } else if (c == 'w') {
            work = optarg;
        } else if (c == 'n') {
            no_js = 1;
        } else if (c == 'h') {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (hdlm_world_size() != 1) HDLM_DIE("hdlm-bench prepare runs as one process (it starts mpirun itself)");
    HDLM_MUST(hdlm_make_dirs(work, "--work"));
    doc_set d;
    HDLM_MUST(load_documents(&d));
    char archive[4200], info[4300];
    snprintf(archive, sizeof archive, "%s/openwebtext-%.2fGB.tar.xz", work, gb);
    snprintf(info, sizeof info, "%s.info", archive);
    size_t docs = 0, bytes = 0;
    if (access(archive, R_OK) != 0 || file_value(info, "bytes ") <= 0) {
        HDLM_MUST(make_archive(&d, archive, gb * 1e9, &docs, &bytes));
        FILE *f = fopen(info, "w");
        if (!f) HDLM_DIE("cannot write %s", info);
        fprintf(f, "docs %zu\nbytes %zu\n", docs, bytes);
        fclose(f);
    }
    docs = (size_t)file_value(info, "docs ");
    bytes = (size_t)file_value(info, "bytes ");
    struct stat st;
    stat(archive, &st);
    printf("hdlm-bench prepare: %s, %.2f GB on disk, %zu documents, %.3f GB of text; %s\n", archive,
           (double)st.st_size / 1e9, docs, (double)bytes / 1e9, "MB/s = 1e6 bytes of text per second");
    double mb = (double)bytes / 1e6;

    double t_read, t_tok;
    size_t read_docs, read_bytes;
    HDLM_MUST(read_only(archive, &t_read, &read_docs, &read_bytes));
    if (read_docs != docs || read_bytes != bytes)
        HDLM_DIE("the reader found %zu documents, %zu bytes; the archive holds %zu, %zu", read_docs, read_bytes, docs,
                 bytes);
    HDLM_MUST(tokenize_only(&d, &t_tok));
    double tok_mbs = (double)d.bytes / 1e6 / t_tok;

    // hdlm-prep prepare on 1 and 2 ranks, one thread each; the outputs must be the same bytes.
    const char *root = geteuid() == 0 ? " --allow-run-as-root" : "";
    double t_prep[3] = {0}, rss[3] = {0};
    for (int ranks = 1; ranks <= 2; ranks++) {
        char cmd[16384], log[4300];
        snprintf(log, sizeof log, "%s/prepare-%d.log", work, ranks);
        snprintf(cmd, sizeof cmd,
                 "OMP_NUM_THREADS=1 mpirun -n %d --oversubscribe --bind-to none%s '%s/../../bin/hdlm-prep' prepare "
                 "--overwrite --progress 30 --out '%s/out-%d' '%s' > '%s' 2>&1",
                 ranks, root, hdlm_share_dir(), work, ranks, archive, log);
        t_prep[ranks] = timed_shell(cmd);
        if (t_prep[ranks] < 0) HDLM_DIE("hdlm-prep prepare failed: see %s", log);
        rss[ranks] = file_value(log, "peak memory ");
    }
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "cmp -s '%s/out-1/train_000000.bin' '%s/out-2/train_000000.bin' && "
                              "cmp -s '%s/out-1/manifest.json' '%s/out-2/manifest.json'", work, work, work, work);
    int same = system(cmd) == 0;

    // Baselines: the CLI tools read the same archive (the inner .xz streams concatenated: xz -dc reads them all),
    // and node encodes the corpus files.
    snprintf(cmd, sizeof cmd, "tar -xOJf '%s' | xz -dc | tar -xiO > /dev/null", archive);
    double t_cli = timed_shell(cmd), t_node = -1, node_mb = 0;
    if (!no_js) {
        snprintf(cmd, sizeof cmd, "ls '%s'/*.txt > '%s/files' && node '%s' '%s/.cache' bench gpt-tokenizer @'%s/files' "
                                  "> '%s/node.json'", SOTU_DIR, work, JS_SCRIPT, HDLM_SOURCE_DIR, work, work);
        if (timed_shell(cmd) >= 0) {
            snprintf(info, sizeof info, "%s/node.json", work);
            t_node = file_value(info, "\"seconds\":");
            node_mb = file_value(info, "\"bytes\":") / 1e6;
        }
    }

    printf("\n%-46s %9s %12s %12s %10s\n", "step", "seconds", "MB/s", "MB/s/rank", "peak MB");
    printf("%-46s %9.2f %12.1f %12.1f %10s\n", "hdlm reader alone (libarchive xz + tar), 1 thr", t_read,
           mb / t_read, mb / t_read, "");
    printf("%-46s %9.2f %12.1f %12.1f %10s\n", "hdlm tokenizer alone, in memory, 1 thread (*)", t_tok, tok_mbs, tok_mbs,
           "");
    for (int ranks = 1; ranks <= 2; ranks++) {
        char name[64];
        snprintf(name, sizeof name, "hdlm-prep prepare, %d rank%s x 1 thread", ranks, ranks > 1 ? "s" : "");
        printf("%-46s %9.2f %12.1f %12.1f %10.0f\n", name, t_prep[ranks], mb / t_prep[ranks],
               mb / t_prep[ranks] / ranks, rss[ranks]);
    }
    if (t_cli > 0)
        printf("%-46s %9.2f %12.1f %12.1f %10s\n", "baseline: tar -xOJ | xz -dc | tar -xiO (CLI)", t_cli, mb / t_cli,
               mb / t_cli, "");
    if (t_node > 0) {
        double node_mbs = node_mb / t_node, pipeline = 1 / (1 / (mb / t_cli) + 1 / node_mbs);
        printf("%-46s %9.2f %12.1f %12.1f %10s\n", "baseline: gpt-tokenizer 4.0.0 (node), corpus", t_node, node_mbs,
               node_mbs, "");
        printf("%-46s %9s %12.1f %12.1f %10s\n", "baseline pipeline, CLI then node (1 core)", "", pipeline, pipeline,
               "");
        printf("\nhdlm-prep on 1 rank x 1 thread: %.1fx the baseline pipeline on one core.\n",
               mb / t_prep[1] / pipeline);
    }
    printf("Time split of 1 rank: reading %.0f%%, tokenizing %.0f%% (the two halves alone: %.2f s + %.2f s for %.2f "
           "s).\n", 100 * t_read / (t_read + mb / tok_mbs), 100 * (mb / tok_mbs) / (t_read + mb / tok_mbs), t_read,
           mb / tok_mbs, t_prep[1]);
    printf("Shards of 1 and 2 ranks: %s.\n(*) best of 5 passes over the corpus's documents (a warm piece cache, as in a long "
           "run).\n", same ? "byte-identical" : "DIFFERENT");
    for (size_t i = 0; i < d.n; i++) free(d.text[i]);
    free(d.text);
    free(d.len);
    return same ? 0 : 1;
}

// hdlm-bench checkpoint: write and read time and size of a DDiT-small checkpoint (params + ema + adam_m + adam_v,
// ~2.6 GB) on however many ranks the job has (mpirun -np 2 for two), next to the raw disk speed measured in the same
// run (before and after the checkpoint, averaged): each rank writes (and fsyncs) its share of the same bytes to a plain
// file, then reads it back. Reads are cold:
// the files' pages are dropped from the page cache first (posix_fadvise DONTNEED; our files only).
#define _XOPEN_SOURCE 700   // nftw
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench.h"
#include "hdlm/checkpoint.h"
#include "hdlm/common.h"
#include "hdlm/model.h"

static double max_over_ranks(double x) {
    double m;
    MPI_Allreduce(&x, &m, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    return m;
}

static int evict_file(const char *path, const struct stat *sb, int type, struct FTW *ftw) {
    (void)sb;
    (void)ftw;
    if (type != FTW_F) return 0;
    int fd = open(path, O_RDONLY);
    if (fd >= 0) {
        posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        close(fd);
    }
    return 0;
}

static int remove_entry(const char *path, const struct stat *sb, int type, struct FTW *ftw) {
    (void)sb;
    (void)type;
    (void)ftw;
    return remove(path) == 0 ? 0 : -1;
}

static size_t tree_bytes_total;
static int add_size(const char *path, const struct stat *sb, int type, struct FTW *ftw) {
    (void)path;
    (void)ftw;
    if (type == FTW_F) tree_bytes_total += (size_t)sb->st_size;
    return 0;
}

static size_t tree_bytes(const char *dir) {
    tree_bytes_total = 0;
    nftw(dir, add_size, 16, FTW_PHYS);
    return tree_bytes_total;
}

// dd-like baseline: write `bytes` (buf's buf_bytes over and over) in 64 MB chunks, fsync, close; then a cold read.
// Seconds (slowest rank) in *w, *r.
static int raw_disk(const char *path, const char *buf, size_t buf_bytes, size_t bytes, double *w, double *r) {
    const size_t chunk = 64u << 20;
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = hdlm_time_now();
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    HDLM_CHECK(fd >= 0, "cannot write %s: %s", path, strerror(errno));
    for (size_t at = 0; at < bytes;) {
        size_t from = at % buf_bytes, n = bytes - at < chunk ? bytes - at : chunk;
        n = n < buf_bytes - from ? n : buf_bytes - from;
        ssize_t k = write(fd, buf + from, n);
        if (k <= 0) {
            close(fd);
            return HDLM_FAIL("cannot write %s: %s", path, strerror(errno));
        }
        at += (size_t)k;
    }
    int ok = fsync(fd) == 0;
    ok = close(fd) == 0 && ok;
    HDLM_CHECK(ok, "cannot write %s: %s", path, strerror(errno));
    *w = max_over_ranks(hdlm_time_now() - t0);
    evict_file(path, NULL, FTW_F, NULL);
    MPI_Barrier(MPI_COMM_WORLD);
    t0 = hdlm_time_now();
    fd = open(path, O_RDONLY);
    HDLM_CHECK(fd >= 0, "cannot read %s: %s", path, strerror(errno));
    char *in = hdlm_malloc(chunk);
    while (read(fd, in, chunk) > 0) {}
    free(in);
    close(fd);
    *r = max_over_ranks(hdlm_time_now() - t0);
    return 0;
}

static void print_usage(FILE *f) {
    fprintf(f, "usage: [mpirun -np R] hdlm-bench checkpoint [--dir DIR] [--family epsilon|gamma]\n"
               "  writes and reads a DDiT-small checkpoint (params, ema, adam_m, adam_v) under DIR (default\n"
               "  /tmp/hdlm-bench-checkpoint; needs ~2x its size free) next to a raw write+fsync / read of the same\n"
               "  bytes, and removes everything it wrote\n");
}

static int bench(const char *dir, hdlm_family family) {
    int rank = hdlm_rank(), world = hdlm_world_size();
    hdlm_model_config mc = hdlm_model_config_ddit_small(family);
    hdlm_tensor *tt;
    int nt;
    size_t n_params, n_buffer;
    HDLM_TRY(hdlm_model_tensor_table(&mc, &tt, &nt, &n_params, &n_buffer));
    hdlm_tensor *descs = hdlm_calloc((size_t)nt, sizeof *descs);
    int n = 0;
    for (int i = 0; i < nt; i++)
        if (tt[i].trainable) descs[n++] = tt[i];
    size_t *starts = hdlm_malloc(((size_t)world + 1) * sizeof *starts);
    hdlm_partition_rows(descs, n, world, starts);
    size_t lo = starts[rank], hi = starts[rank + 1];
    // Four distinct groups (so no file system can share blocks); each rank fills only its slice.
    float *bufs[4];
    for (int g = 0; g < 4; g++) {
        bufs[g] = hdlm_malloc(n_params * sizeof(float));
        for (size_t i = lo; i < hi; i++) bufs[g][i] = (float)(i % 1013) * 0.001f + (float)g;
    }
    hdlm_ckpt_group groups[] = {{"params", bufs[0], 0}, {"ema", bufs[1], 0}, {"adam_m", bufs[2], 0},
                                {"adam_v", bufs[3], 0}};
    hdlm_ckpt_scalar scalars[] = {{"update", 1}};
    int64_t state = rank;
    hdlm_ckpt_contents c = {descs, n, groups, 4, scalars, 1, "model:\n  name: epsilon_hdlm\n", &state, 1};
    hdlm_ckpt_retention keep = {1, 0};
    char root[4200], raw[4300], ckdir[4400];
    snprintf(root, sizeof root, "%s/checkpoints", dir);
    snprintf(raw, sizeof raw, "%s/raw_rank%d.bin", dir, rank);
    snprintf(ckdir, sizeof ckdir, "%s/step_000000001", root);
    if (rank == 0 && mkdir(dir, 0755) != 0 && errno != EEXIST) return HDLM_FAIL("cannot create %s", dir);
    MPI_Barrier(MPI_COMM_WORLD);

    size_t my_bytes = (hi - lo) * sizeof(float) * 4, total_bytes = n_params * sizeof(float) * 4;
    // The disk is shared and its speed drifts: the raw baseline runs before and after the checkpoint.
    double raw_w1 = 0, raw_r1 = 0, raw_w2 = 0, raw_r2 = 0;
    HDLM_TRY(raw_disk(raw, (const char *)(bufs[0] + lo), my_bytes / 4, my_bytes, &raw_w1, &raw_r1));
    remove(raw);

    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = hdlm_time_now();
    HDLM_TRY(hdlm_checkpoint_save(root, 1, &c, &keep, NULL));
    double ck_w = max_over_ranks(hdlm_time_now() - t0);
    size_t size = rank == 0 ? tree_bytes(ckdir) : 0;
    if (rank == 0) nftw(ckdir, evict_file, 16, FTW_PHYS);
    MPI_Barrier(MPI_COMM_WORLD);
    t0 = hdlm_time_now();
    hdlm_ckpt *ck;
    HDLM_TRY(hdlm_checkpoint_open(&ck, ckdir));
    for (int g = 0; g < 4; g++) HDLM_TRY(hdlm_checkpoint_read(ck, groups[g].name, descs, n, lo, hi, bufs[g] + lo));
    hdlm_checkpoint_close(ck);
    double ck_r = max_over_ranks(hdlm_time_now() - t0);
    for (size_t i = lo; i < hi; i += 4099)   // what came back is what was written
        HDLM_ASSERT(bufs[3][i] == (float)(i % 1013) * 0.001f + 3.0f, "checkpoint read back differs at %zu", i);

    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) nftw(root, remove_entry, 16, FTW_DEPTH | FTW_PHYS);   // the same free space for the second run
    HDLM_TRY(raw_disk(raw, (const char *)(bufs[0] + lo), my_bytes / 4, my_bytes, &raw_w2, &raw_r2));
    remove(raw);
    double raw_w = 0.5 * (raw_w1 + raw_w2), raw_r = 0.5 * (raw_r1 + raw_r2);

    const double gb = 1e9;
    hdlm_log("DDiT-small (%s), %zu parameters x 4 groups = %.2f GB, %d rank(s), files under %s\n",
             hdlm_family_name(family), n_params, (double)total_bytes / gb, world, dir);
    hdlm_log("%-28s %9s %9s %10s\n", "", "seconds", "GB/s", "vs raw");
    hdlm_log("%-28s %9.2f %9.2f %10s   (before %.2f s, after %.2f s)\n", "raw write+fsync (mean)", raw_w,
             (double)total_bytes / gb / raw_w, "", raw_w1, raw_w2);
    hdlm_log("%-28s %9.2f %9.2f %9.2fx\n", "checkpoint save", ck_w, (double)total_bytes / gb / ck_w, ck_w / raw_w);
    hdlm_log("%-28s %9.2f %9.2f %10s   (before %.2f s, after %.2f s)\n", "raw read (cold, mean)", raw_r,
             (double)total_bytes / gb / raw_r, "", raw_r1, raw_r2);
    hdlm_log("%-28s %9.2f %9.2f %9.2fx\n", "checkpoint open+read (cold)", ck_r, (double)total_bytes / gb / ck_r,
             ck_r / raw_r);
    hdlm_log("checkpoint size on disk: %.3f GB (%zu bytes; %.4f%% over the tensor bytes)\n", (double)size / gb, size,
             100.0 * ((double)size - (double)total_bytes) / (double)total_bytes);

    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    for (int g = 0; g < 4; g++) free(bufs[g]);
    free(starts);
    free(descs);
    free(tt);
    return 0;
}

int bench_checkpoint_main(int argc, char **argv) {
    static const struct option options[] = {{"dir", required_argument, NULL, 'd'},
                                            {"family", required_argument, NULL, 'f'},
                                            {"help", no_argument, NULL, 'h'},
                                            {NULL, 0, NULL, 0}};
    const char *dir = "/tmp/hdlm-bench-checkpoint";
    hdlm_family family = HDLM_FAMILY_EPSILON;
    int opt;
    while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        if (opt == 'd') dir = optarg;
        else if (opt == 'f' && strcmp(optarg, "epsilon") == 0) family = HDLM_FAMILY_EPSILON;
        else if (opt == 'f' && strcmp(optarg, "gamma") == 0) family = HDLM_FAMILY_GAMMA;
        else if (opt == 'h') {
            print_usage(stdout);
            return 0;
        } else {
            print_usage(stderr);
            return 2;
        }
    }
    HDLM_MUST(bench(dir, family));
    return 0;
}

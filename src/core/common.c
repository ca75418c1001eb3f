// Errors, allocation, logging and timing (see include/hdlm/common.h for the conventions).
#include "hdlm/common.h"

#include <errno.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static _Thread_local char last_error[2048];

int hdlm_fail(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < sizeof last_error) {
        const char *base = strrchr(file, '/');
        snprintf(last_error + n, sizeof last_error - (size_t)n, " (at %s:%d)", base ? base + 1 : file, line);
    }
    return -1;
}

const char *hdlm_last_error(void) { return last_error; }
void hdlm_clear_error(void) { last_error[0] = '\0'; }

int hdlm_world_size(void) {
    int initialized = 0, finalized = 0, size = 1;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (initialized && !finalized) MPI_Comm_size(MPI_COMM_WORLD, &size);
    return size;
}

int hdlm_rank(void) {
    int initialized = 0, finalized = 0, rank = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (initialized && !finalized) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    return rank;
}

double hdlm_allreduce_sum(double x) {
    if (hdlm_world_size() == 1) return x;
    double sum = 0;
    int rc = MPI_Allreduce(&x, &sum, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS) HDLM_DIE("MPI Allreduce failed (error %d)", rc);
    return sum;
}

void hdlm_die(const char *file, int line, const char *fmt, ...) {
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    // A message recorded by HDLM_FAIL already says where it was raised; otherwise add the caller's place.
    char where[256] = "";
    if (!strstr(msg, " (at ")) {
        const char *base = strrchr(file, '/');
        snprintf(where, sizeof where, " (at %s:%d)", base ? base + 1 : file, line);
    }
    int size = hdlm_world_size();
    if (size > 1)
        fprintf(stderr, "hdlm: error on rank %d of %d: %s%s\n", hdlm_rank(), size, msg, where);
    else
        fprintf(stderr, "hdlm: error: %s%s\n", msg, where);
    fflush(stderr);
    fflush(stdout);
    if (size > 1) MPI_Abort(MPI_COMM_WORLD, 1);
    exit(1);
}

void *hdlm_malloc_at(size_t bytes, const char *file, int line) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) hdlm_die(file, line, "out of memory allocating %zu bytes (%.1f MiB)", bytes, bytes / 1048576.0);
    return p;
}

void *hdlm_calloc_at(size_t count, size_t size, const char *file, int line) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) hdlm_die(file, line, "out of memory allocating %zu x %zu bytes", count, size);
    return p;
}

void *hdlm_aligned_malloc_at(size_t bytes, const char *file, int line) {
    size_t rounded = bytes ? (bytes + 63) / 64 * 64 : 64;
    void *p = aligned_alloc(64, rounded);
    if (!p) hdlm_die(file, line, "out of memory allocating %zu bytes (%.1f MiB)", bytes, bytes / 1048576.0);
    return p;
}

void *hdlm_realloc_at(void *ptr, size_t bytes, const char *file, int line) {
    void *p = realloc(ptr, bytes ? bytes : 1);
    if (!p) hdlm_die(file, line, "out of memory reallocating to %zu bytes (%.1f MiB)", bytes, bytes / 1048576.0);
    return p;
}

char *hdlm_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = hdlm_malloc(n);
    memcpy(d, s, n);
    return d;
}

void hdlm_log(const char *fmt, ...) {
    if (hdlm_rank() != 0) return;
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fflush(stdout);
}

void hdlm_warn(const char *fmt, ...) {
    if (hdlm_rank() != 0) return;
    va_list ap;
    va_start(ap, fmt);
    fputs("hdlm: warning: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fflush(stderr);
}

double hdlm_time_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int hdlm_read_file(const char *path, char **data, size_t *len) {
    *data = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    HDLM_CHECK(f, "cannot open %s: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = hdlm_malloc(cap);
    for (;;) {
        if (n + 1 >= cap) buf = hdlm_realloc(buf, cap *= 2);
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        free(buf);
        return HDLM_FAIL("error reading %s", path);
    }
    buf[n] = '\0';
    *data = buf;
    *len = n;
    return 0;
}

// Errors, allocation, logging and timing (see include/hdlm/common.h for the conventions).
#include "hdlm/common.h"

#include <errno.h>
#include <math.h>
#include <fcntl.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static _Thread_local char last_error[2048];

// Formatted into a buffer of its own first: a message may quote the previous one (hdlm_last_error() as an argument).
int hdlm_fail(const char *file, int line, const char *fmt, ...) {
    char msg[sizeof last_error];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < sizeof msg) {
        const char *base = strrchr(file, '/');
        snprintf(msg + n, sizeof msg - (size_t)n, " (at %s:%d)", base ? base + 1 : file, line);
    }
    memcpy(last_error, msg, sizeof msg);
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

static void (*die_cleanup)(void *);
static void *die_cleanup_arg;

void hdlm_set_die_cleanup(void (*cleanup)(void *), void *arg) {
    die_cleanup = cleanup;
    die_cleanup_arg = arg;
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
    void (*cleanup)(void *) = die_cleanup;
    die_cleanup = NULL;   // a failure inside the cleanup ends the job without it
    if (cleanup) cleanup(die_cleanup_arg);
    if (size > 1) MPI_Abort(MPI_COMM_WORLD, 1);
    exit(1);
}

// Buffers of 2 MB or more (weights, activations, optimizer state, the logits) on 2 MB pages where the kernel gives
// them on request (transparent huge pages in "madvise" mode, Debian's default): the products and the optimizer stream
// them, and with 4 KB pages their TLB misses cost the DDiT step 5–13 % and the KV-cached generation ≈ 7 %
// (docs/model.md, sixth session). The advice is only that: without it the pages are 4 KB, as before. NULL when out of memory.
static void *large_alloc(size_t bytes, size_t align) {
    enum { HUGE_PAGE = 2 << 20 };
    bool huge = bytes >= HUGE_PAGE;
    if (huge) align = HUGE_PAGE;
    size_t rounded = bytes ? (bytes + align - 1) / align * align : align;
    void *p = aligned_alloc(align, rounded);
    if (p && huge) (void)madvise(p, rounded, MADV_HUGEPAGE);
    return p;
}

void *hdlm_malloc_at(size_t bytes, const char *file, int line) {
    void *p = large_alloc(bytes, 16);
    if (!p) hdlm_die(file, line, "out of memory allocating %zu bytes (%.1f MiB)", bytes, bytes / 1048576.0);
    return p;
}

void *hdlm_calloc_at(size_t count, size_t size, const char *file, int line) {
    if (size && count > SIZE_MAX / size)
        hdlm_die(file, line, "out of memory allocating %zu x %zu bytes", count, size);
    size_t bytes = count * size;
    void *p = large_alloc(bytes, 16);
    if (!p) hdlm_die(file, line, "out of memory allocating %zu x %zu bytes", count, size);
    memset(p, 0, bytes);
    return p;
}

void *hdlm_aligned_malloc_at(size_t bytes, const char *file, int line) {
    void *p = large_alloc(bytes, 64);
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

static FILE *log_stream;

void hdlm_log_set_stream(FILE *f) { log_stream = f; }

void hdlm_log(const char *fmt, ...) {
    if (hdlm_rank() != 0) return;
    FILE *f = log_stream ? log_stream : stdout;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fflush(f);
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

const char *hdlm_share_dir(void) {
    static char dir[4200];
    if (!dir[0]) {
        char exe[4096];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (n <= 0) return "share/hdlm";   // no /proc: relative to the working directory
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) *slash = '\0';
        snprintf(dir, sizeof dir, "%s/../share/hdlm", exe);
    }
    return dir;
}

int hdlm_make_dirs(const char *path, const char *what) {
    char buf[4096];
    HDLM_CHECK(strlen(path) < sizeof buf, "%s: path too long: %s", what, path);
    strcpy(buf, path);
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p != '\0') continue;
        char c = *p;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return HDLM_FAIL("%s: cannot create %s: %s", what, buf, strerror(errno));
        *p = c;
        if (!c) return 0;
    }
}

double hdlm_time_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void hdlm_format_duration(double seconds, char *buf, size_t size) {
    if (!isfinite(seconds) || seconds < 0) seconds = 0;
    long t = (long)(seconds + 0.5);
    snprintf(buf, size, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
}

// O_NONBLOCK: open() of a FIFO without a writer returns at once instead of waiting for one; the flag is cleared
// again for a regular file.
int hdlm_open_regular(const char *path, const char *what, int *fd_out, uint64_t *size) {
    *fd_out = -1;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    HDLM_CHECK(fd >= 0, "cannot open %s %s: %s", what, path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return HDLM_FAIL("%s %s is not a regular file (a directory, FIFO or device)", what, path);
    }
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
        int err = errno;
        close(fd);
        return HDLM_FAIL("cannot open %s %s: %s", what, path, strerror(err));
    }
    if (size) *size = (uint64_t)st.st_size;
    *fd_out = fd;
    return 0;
}

int hdlm_fopen_regular(const char *path, const char *what, FILE **out) {
    int fd;
    HDLM_TRY(hdlm_open_regular(path, what, &fd, NULL));
    *out = fdopen(fd, "rb");
    if (!*out) {
        int err = errno;
        close(fd);
        return HDLM_FAIL("cannot open %s %s: %s", what, path, strerror(err));
    }
    return 0;
}

int hdlm_check_regular(const char *path, const char *what) {
    struct stat st;
    HDLM_CHECK(stat(path, &st) == 0, "cannot open %s %s: %s", what, path, strerror(errno));
    HDLM_CHECK(S_ISREG(st.st_mode), "%s %s is not a regular file (a directory, FIFO or device)", what, path);
    return 0;
}

int hdlm_atomic_open(hdlm_atomic_file *a, const char *path) {
    HDLM_CHECK(strlen(path) < sizeof a->path, "path too long: %s", path);
    snprintf(a->path, sizeof a->path, "%s", path);
    snprintf(a->tmp, sizeof a->tmp, "%s.tmp", path);
    a->err = 0;
    a->f = fopen(a->tmp, "wb");
    HDLM_CHECK(a->f, "cannot write %s: %s", a->tmp, strerror(errno));
    return 0;
}

void hdlm_atomic_write(hdlm_atomic_file *a, const void *data, size_t n) {
    if (a->err || n == 0) return;
    errno = 0;
    if (fwrite(data, 1, n, a->f) != n) a->err = errno ? errno : EIO;
}

int hdlm_atomic_commit(hdlm_atomic_file *a) {
    int err = a->err;
    errno = 0;
    if (!err && fflush(a->f) != 0) err = errno ? errno : EIO;
    if (!err && fsync(fileno(a->f)) != 0 && errno != EINVAL) err = errno;   // EINVAL: no fsync on this file kind
    errno = 0;
    if (fclose(a->f) != 0 && !err) err = errno ? errno : EIO;
    a->f = NULL;
    if (!err && rename(a->tmp, a->path) != 0) err = errno;
    if (!err) return 0;
    remove(a->tmp);
    return HDLM_FAIL("cannot write %s: %s (nothing written)", a->path, strerror(err));
}

void hdlm_atomic_abort(hdlm_atomic_file *a) {
    if (a->f) fclose(a->f);
    a->f = NULL;
    remove(a->tmp);
}

// An escape is active when an odd run of backslashes ends at the u.
bool hdlm_json_has_escaped_nul(const char *s, size_t len) {
    for (size_t i = 0; i + 6 <= len; i++) {
        if (s[i] != '\\' || s[i + 1] != 'u' || strncmp(s + i + 2, "0000", 4) != 0) continue;
        size_t run = 1;
        while (run <= i && s[i - run] == '\\') run++;
        if (run % 2 == 1) return true;
    }
    return false;
}

size_t hdlm_first_nonfinite(const float *x, size_t n) {
    // A float is non-finite when its exponent bits are all ones; checked branch-free in blocks, so it runs at memory
    // speed over a checkpoint's buffers.
    const size_t block = 4096;
    for (size_t b = 0; b < n; b += block) {
        size_t end = b + block < n ? b + block : n;
        uint32_t any = 0;
        for (size_t i = b; i < end; i++) {
            uint32_t u;
            memcpy(&u, &x[i], sizeof u);
            any |= (uint32_t)((u & 0x7f800000u) == 0x7f800000u);
        }
        if (any)
            for (size_t i = b; i < end; i++)
                if (!isfinite(x[i])) return i;
    }
    return n;
}

int hdlm_read_file(const char *path, char **data, size_t *len) {
    *data = NULL;
    *len = 0;
    bool in = strcmp(path, "-") == 0;   // standard input: a pipe is fine there, it ends
    FILE *f = stdin;
    if (!in) HDLM_TRY(hdlm_fopen_regular(path, "file", &f));
    size_t cap = 1 << 16, n = 0;
    char *buf = hdlm_malloc(cap);
    for (;;) {
        if (n + 1 >= cap) buf = hdlm_realloc(buf, cap *= 2);
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    int err = ferror(f);
    if (!in) fclose(f);
    if (err) {
        free(buf);
        return HDLM_FAIL("error reading %s", in ? "standard input" : path);
    }
    buf[n] = '\0';
    *data = buf;
    *len = n;
    return 0;
}

// hdlm/common.h — errors, checked allocation, logging and timing shared by the whole library.
//
// Error convention (two kinds, never mixed):
//  - Bad input (files, configurations, flags): library functions return int (0 = ok, -1 = error) after recording a
//    message with HDLM_FAIL / HDLM_CHECK that names the file, field or flag and what was expected. Callers propagate
//    with HDLM_TRY; tools end with HDLM_MUST, which prints the message and ends the job (every rank, under MPI).
//  - Broken invariants (a bug, out of memory): HDLM_ASSERT / hdlm_malloc print file:line and end the job at once.
#ifndef HDLM_COMMON_H
#define HDLM_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#if defined(__GNUC__)
#define HDLM_PRINTF(fmt_index, first_arg) __attribute__((format(printf, fmt_index, first_arg)))
#define HDLM_NORETURN __attribute__((noreturn))
#else
#define HDLM_PRINTF(fmt_index, first_arg)
#define HDLM_NORETURN
#endif

// Records "message (at file:line)" as this thread's last error and returns -1.
int hdlm_fail(const char *file, int line, const char *fmt, ...) HDLM_PRINTF(3, 4);
// The last error recorded on this thread ("" if none).
const char *hdlm_last_error(void);
void hdlm_clear_error(void);
// Prints "hdlm: error: message (at file:line)" to stderr and ends the job: MPI_Abort when MPI is running with more
// than one rank (so no rank hangs in a collective), exit(1) otherwise.
void hdlm_die(const char *file, int line, const char *fmt, ...) HDLM_PRINTF(3, 4) HDLM_NORETURN;
// A function hdlm_die calls after the message, before ending the job (once; NULL removes it): a tool removes what it
// had half written.
void hdlm_set_die_cleanup(void (*cleanup)(void *), void *arg);

#define HDLM_FAIL(...) hdlm_fail(__FILE__, __LINE__, __VA_ARGS__)
// In a function returning int: when cond is false, record the message and return -1.
#define HDLM_CHECK(cond, ...)                                                                                          \
    do {                                                                                                               \
        if (!(cond)) return hdlm_fail(__FILE__, __LINE__, __VA_ARGS__);                                                \
    } while (0)
// Propagates a failure (the message is already recorded).
#define HDLM_TRY(expr)                                                                                                 \
    do {                                                                                                               \
        if ((expr) != 0) return -1;                                                                                    \
    } while (0)
// In a tool: a failure ends the job with the recorded message.
#define HDLM_MUST(expr)                                                                                                \
    do {                                                                                                               \
        if ((expr) != 0) hdlm_die(__FILE__, __LINE__, "%s", hdlm_last_error());                                        \
    } while (0)
#define HDLM_DIE(...) hdlm_die(__FILE__, __LINE__, __VA_ARGS__)
// Internal invariant (always on, also in release builds): a failure is a bug in hdlm.
#define HDLM_ASSERT(cond, ...)                                                                                         \
    do {                                                                                                               \
        if (!(cond)) hdlm_die(__FILE__, __LINE__, "internal error: " __VA_ARGS__);                                     \
    } while (0)

// Allocation that ends the job with the requested size on failure (never returns NULL).
void *hdlm_malloc_at(size_t bytes, const char *file, int line);
void *hdlm_calloc_at(size_t count, size_t size, const char *file, int line);
void *hdlm_realloc_at(void *ptr, size_t bytes, const char *file, int line);
#define hdlm_malloc(bytes) hdlm_malloc_at((bytes), __FILE__, __LINE__)
#define hdlm_calloc(count, size) hdlm_calloc_at((count), (size), __FILE__, __LINE__)
#define hdlm_realloc(ptr, bytes) hdlm_realloc_at((ptr), (bytes), __FILE__, __LINE__)
// 64-byte aligned (whole vectors and cache lines), the size rounded up to 64 bytes; released with free().
void *hdlm_aligned_malloc_at(size_t bytes, const char *file, int line);
#define hdlm_aligned_malloc(bytes) hdlm_aligned_malloc_at((bytes), __FILE__, __LINE__)
char *hdlm_strdup(const char *s);

// Messages for people: printed by rank 0 only (every rank when MPI is not initialised). hdlm_warn goes to stderr.
void hdlm_log(const char *fmt, ...) HDLM_PRINTF(1, 2);
// Where hdlm_log writes (stdout by default; stderr for a tool whose stdout is its result).
void hdlm_log_set_stream(FILE *f);
void hdlm_warn(const char *fmt, ...) HDLM_PRINTF(1, 2);
// This process's MPI rank and world size (0 and 1 when MPI is not initialised).
int hdlm_rank(void);
int hdlm_world_size(void);
// Sum of a double over the ranks of MPI_COMM_WORLD (collective; x itself without MPI).
double hdlm_allreduce_sum(double x);

// Monotonic wall-clock time in seconds.
double hdlm_time_now(void);
// Seconds as "H:MM:SS" (negative or not finite: 0:00:00), for progress lines.
void hdlm_format_duration(double seconds, char *buf, size_t size);

// hdlm's data folder: <folder of the running executable>/../share/hdlm (docs/install.md). An installed prefix holds
// gpt2/ (the tokenizer files) and jobs/configs/ (the presets) there; in a build tree build/share/hdlm links into the
// checkout. Found from the executable, so a moved prefix still finds its own files.
const char *hdlm_share_dir(void);

// Little-endian integers in byte buffers (file formats: safetensors, checkpoint indexes, hdlm-compress), whatever
// the host's byte order.
static inline uint64_t hdlm_load_le(const uint8_t *p, int bytes) {
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}
static inline void hdlm_store_le(uint8_t *p, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; i++) p[i] = (uint8_t)(v >> (8 * i));
}

// mkdir -p: creates `path` and its missing parents; fails naming `what` and the folder that could not be made.
int hdlm_make_dirs(const char *path, const char *what);

// Reads a whole file into a NUL-terminated buffer (size in *len); "-" reads standard input to its end (a pipe too).
// Fails with the file name and errno text.
int hdlm_read_file(const char *path, char **data, size_t *len);
// The one way hdlm opens an existing file for reading: only a regular file is accepted (a FIFO would block in open()
// forever, a device or directory never ends), refused with a message naming `what` and the path. *size: its bytes.
int hdlm_open_regular(const char *path, const char *what, int *fd, uint64_t *size);
int hdlm_fopen_regular(const char *path, const char *what, FILE **f);
// The one way hdlm writes a file that must appear whole or not at all (exports, rewritten logs, markers): writes go
// to PATH.tmp; commit flushes, fsyncs and renames, and after any failed write or step removes PATH.tmp and returns
// an error naming PATH and the first cause (a full disk leaves no partial or empty file behind).
typedef struct {
    FILE *f;
    int err;   // errno of the first failed write (0: none)
    char path[4096], tmp[4104];
} hdlm_atomic_file;
int hdlm_atomic_open(hdlm_atomic_file *a, const char *path);
void hdlm_atomic_write(hdlm_atomic_file *a, const void *data, size_t n);
int hdlm_atomic_commit(hdlm_atomic_file *a);
void hdlm_atomic_abort(hdlm_atomic_file *a);

// The index of the first NaN or infinity among n floats, n when all are finite: the one non-finite check of every
// reader and writer of weights and optimizer state.
size_t hdlm_first_nonfinite(const float *x, size_t n);
// True when JSON text holds the escape \u0000: cJSON decodes it into a NUL that ends its C string, so a key or a
// text would be silently cut there. Readers of JSON refuse such input instead.
bool hdlm_json_has_escaped_nul(const char *json, size_t len);
// The same check without opening, for libraries that open by name (HDF5).
int hdlm_check_regular(const char *path, const char *what);

#endif

// Shared by the libFuzzer targets of this folder (README.md): the fuzzed bytes as a file, for readers that take a
// path. Each process writes under its own directory in $TMPDIR (default /tmp).
#ifndef HDLM_FUZZ_H
#define HDLM_FUZZ_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static inline const char *fuzz_dir(void) {
    static char dir[512];
    if (!dir[0]) {
        const char *t = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/hdlm-fuzz-%d", t && *t ? t : "/tmp", (int)getpid());
        mkdir(dir, 0700);
    }
    return dir;
}

// Writes data to fuzz_dir()/name and returns the path (static storage, one per name length class).
static inline const char *fuzz_file(const char *name, const uint8_t *data, size_t size) {
    static char path[1024];
    snprintf(path, sizeof path, "%s/%s", fuzz_dir(), name);
    FILE *f = fopen(path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0) abort();
    return path;
}

#endif

// Documents from plain-text files, JSONL files and directories (rules in include/hdlm/textsource.h).
#define _GNU_SOURCE   // getline
#include "hdlm/textsource.h"

#include "hdlm/common.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum { MAX_WARNINGS = 20 };   // skipped-line warnings printed per reader; the rest are only counted

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static void inputs_push(hdlm_text_inputs *in, const char *path, uint64_t bytes, hdlm_text_format format,
                        hdlm_detokenizer detok, int to_validation) {
    if (in->count == in->cap) in->files = hdlm_realloc(in->files, (in->cap = in->cap ? 2 * in->cap : 16) * sizeof *in->files);
    in->files[in->count++] = (hdlm_text_file){hdlm_strdup(path), format, detok, to_validation, bytes, in->total_bytes};
    in->total_bytes += bytes;
}

static int compare_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int add_path(hdlm_text_inputs *in, const char *path, hdlm_detokenizer detok, int to_validation, int in_dir) {
    struct stat st;
    HDLM_CHECK(stat(path, &st) == 0, "cannot read input %s: %s", path, strerror(errno));
    if (S_ISREG(st.st_mode)) {
        HDLM_CHECK(access(path, R_OK) == 0, "cannot read input %s: %s", path, strerror(errno));
        int jsonl = ends_with(path, ".jsonl");
        if (in_dir && !jsonl && !ends_with(path, ".txt")) {
            in->ignored_files++;
            return 0;
        }
        inputs_push(in, path, (uint64_t)st.st_size, jsonl ? HDLM_TEXT_JSONL : HDLM_TEXT_PLAIN, detok, to_validation);
        return 0;
    }
    HDLM_CHECK(S_ISDIR(st.st_mode), "input %s is neither a file nor a directory", path);
    DIR *dh = opendir(path);
    HDLM_CHECK(dh, "cannot read input directory %s: %s", path, strerror(errno));
    size_t n = 0, cap = 64;
    char **names = hdlm_malloc(cap * sizeof *names);
    for (struct dirent *e; (e = readdir(dh));) {
        if (e->d_name[0] == '.') continue;   // ".", ".." and hidden files
        if (n == cap) names = hdlm_realloc(names, (cap *= 2) * sizeof *names);
        names[n++] = hdlm_strdup(e->d_name);
    }
    closedir(dh);
    qsort(names, n, sizeof *names, compare_names);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        if (rc == 0) {
            size_t bytes = strlen(path) + strlen(names[i]) + 2;
            char *child = hdlm_malloc(bytes);
            snprintf(child, bytes, "%s/%s", path, names[i]);
            rc = add_path(in, child, detok, to_validation, 1);
            free(child);
        }
        free(names[i]);
    }
    free(names);
    return rc;
}

int hdlm_text_inputs_add(hdlm_text_inputs *in, const char *path, hdlm_detokenizer detok, int to_validation) {
    return add_path(in, path, detok, to_validation, 0);
}

void hdlm_text_inputs_free(hdlm_text_inputs *in) {
    for (size_t i = 0; i < in->count; i++) free(in->files[i].path);
    free(in->files);
    memset(in, 0, sizeof *in);
}

// ---- reader ----

struct hdlm_text_reader {
    const hdlm_text_inputs *in;
    uint64_t lo, hi;
    char *field;
    int skip_malformed;
    size_t file;        // current file
    FILE *jsonl;        // open JSONL file, positioned at the next line to read
    uint64_t pos;       // offset of that line in the file
    char *line;
    size_t line_cap;
    uint64_t skipped;
    // Line-number cache for messages: line `where_line` starts at or before `where_offset` of file `where_file`.
    size_t where_file;
    uint64_t where_offset, where_line;
    char where[4200];
};

int hdlm_text_reader_open(hdlm_text_reader **out, const hdlm_text_inputs *in, uint64_t lo, uint64_t hi,
                          const char *text_field, int skip_malformed) {
    hdlm_text_reader *r = hdlm_calloc(1, sizeof *r);
    r->in = in;
    r->lo = lo;
    r->hi = hi;
    r->field = hdlm_strdup(text_field);
    r->skip_malformed = skip_malformed;
    r->where_file = SIZE_MAX;
    *out = r;
    return 0;
}

uint64_t hdlm_text_reader_skipped(const hdlm_text_reader *r) { return r->skipped; }

void hdlm_text_reader_close(hdlm_text_reader *r) {
    if (!r) return;
    if (r->jsonl) fclose(r->jsonl);
    free(r->line);
    free(r->field);
    free(r);
}

const char *hdlm_text_reader_where(hdlm_text_reader *r, size_t file, uint64_t offset) {
    const hdlm_text_file *f = &r->in->files[file];
    if (f->format == HDLM_TEXT_PLAIN) {
        snprintf(r->where, sizeof r->where, "%s", f->path);
        return r->where;
    }
    // Count the newlines before `offset`, continuing from the cached position when possible (errors come in order).
    if (r->where_file != file || r->where_offset > offset) {
        r->where_file = file;
        r->where_offset = 0;
        r->where_line = 1;
    }
    int fd = open(f->path, O_RDONLY);
    char buf[1 << 16];
    while (fd >= 0 && r->where_offset < offset) {
        uint64_t want = offset - r->where_offset < sizeof buf ? offset - r->where_offset : sizeof buf;
        ssize_t got = pread(fd, buf, (size_t)want, (off_t)r->where_offset);
        if (got <= 0) break;
        for (ssize_t i = 0; i < got; i++) r->where_line += buf[i] == '\n';
        r->where_offset += (uint64_t)got;
    }
    if (fd >= 0) close(fd);
    snprintf(r->where, sizeof r->where, "%s:%llu", f->path, (unsigned long long)r->where_line);
    return r->where;
}

// Opens JSONL file r->file at the first line that starts at or after global offset r->lo.
static int jsonl_open(hdlm_text_reader *r) {
    const hdlm_text_file *f = &r->in->files[r->file];
    HDLM_TRY(hdlm_fopen_regular(f->path, "input", &r->jsonl));
    uint64_t start = r->lo > f->offset ? r->lo - f->offset : 0;
    r->pos = 0;
    if (start > 0) {
        // A line starts at `start` when the byte before it is a newline; otherwise skip to the next line.
        HDLM_CHECK(fseeko(r->jsonl, (off_t)(start - 1), SEEK_SET) == 0, "cannot seek in input %s: %s", f->path,
                   strerror(errno));
        r->pos = start - 1;
        int c;
        while ((c = getc(r->jsonl)) != EOF) {
            r->pos++;
            if (c == '\n') break;
        }
        HDLM_CHECK(!ferror(r->jsonl), "error reading input %s", f->path);
    }
    return 0;
}

// Parses one JSONL line into a document; 1 = document, 0 = malformed (reason in *why).
static int jsonl_parse(hdlm_text_reader *r, size_t len, hdlm_text_doc *doc, char *why, size_t why_len) {
    const char *end = NULL;
    cJSON *obj = cJSON_ParseWithLengthOpts(r->line, len + 1, &end, 1);   // + 1: the NUL ends the document
    int ok = 0;
    if (!obj) {
        snprintf(why, why_len, "invalid JSON at column %zu", (size_t)(end ? end - r->line + 1 : 1));
    } else if (!cJSON_IsObject(obj)) {
        snprintf(why, why_len, "not a JSON object");
    } else {
        const cJSON *value = cJSON_GetObjectItemCaseSensitive(obj, r->field);
        if (!value) snprintf(why, why_len, "no \"%s\" field", r->field);
        else if (!cJSON_IsString(value)) snprintf(why, why_len, "field \"%s\" is not a string", r->field);
        else if (hdlm_json_has_escaped_nul(r->line, len))
            snprintf(why, why_len, "the line holds \\u0000 (NUL), which would cut the text there; remove it");
        else {
            doc->len = strlen(value->valuestring);
            doc->text = hdlm_malloc(doc->len + 1);
            memcpy(doc->text, value->valuestring, doc->len + 1);
            ok = 1;
        }
    }
    cJSON_Delete(obj);
    return ok;
}

// Next line of the open JSONL file that belongs to this reader: 1 = document, 0 = file done, -1 = error.
static int jsonl_next(hdlm_text_reader *r, hdlm_text_doc *doc) {
    const hdlm_text_file *f = &r->in->files[r->file];
    for (;;) {
        if (f->offset + r->pos >= r->hi) return 0;
        ssize_t n = getline(&r->line, &r->line_cap, r->jsonl);
        if (n < 0) {
            HDLM_CHECK(!ferror(r->jsonl), "error reading input %s", f->path);
            return 0;
        }
        uint64_t line_offset = r->pos;
        r->pos += (uint64_t)n;
        size_t len = (size_t)n;
        while (len > 0 && (r->line[len - 1] == '\n' || r->line[len - 1] == '\r')) len--;
        r->line[len] = '\0';
        char why[256];
        *doc = (hdlm_text_doc){NULL, 0, r->file, line_offset};
        if (len == 0) snprintf(why, sizeof why, "empty line, expected a JSON object");
        else if (jsonl_parse(r, len, doc, why, sizeof why)) return 1;
        const char *where = hdlm_text_reader_where(r, r->file, line_offset);
        HDLM_CHECK(r->skip_malformed, "%s: %s (use --on-error skip to skip malformed lines)", where, why);
        if (r->skipped++ < MAX_WARNINGS)
            fprintf(stderr, "hdlm: warning: %s: %s; line skipped%s\n", where, why,
                    r->skipped == MAX_WARNINGS ? " (further skipped lines are only counted)" : "");
    }
}

int hdlm_text_reader_next(hdlm_text_reader *r, hdlm_text_doc *doc) {
    while (r->file < r->in->count) {
        const hdlm_text_file *f = &r->in->files[r->file];
        if (f->format == HDLM_TEXT_PLAIN) {
            size_t index = r->file++;
            if (f->offset < r->lo || f->offset >= r->hi) continue;
            *doc = (hdlm_text_doc){NULL, 0, index, 0};
            HDLM_TRY(hdlm_read_file(f->path, &doc->text, &doc->len));
            return 1;
        }
        // JSONL: skip files that end before the range or start after it.
        if (f->offset + f->bytes <= r->lo || f->offset >= r->hi) {
            r->file++;
            continue;
        }
        if (!r->jsonl) HDLM_TRY(jsonl_open(r));
        int rc = jsonl_next(r, doc);
        if (rc != 0) return rc;
        fclose(r->jsonl);
        r->jsonl = NULL;
        r->file++;
    }
    return 0;
}

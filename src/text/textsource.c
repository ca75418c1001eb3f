// Text inputs (files, directories, their segments) and the reader of documents (rules in include/hdlm/textsource.h):
// runs of uncompressed files here, compressed files and archives in textstream.c.
#define _GNU_SOURCE   // getline
#include "textsource_internal.h"

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

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

int text_classify(const char *name, hdlm_text_format *format, int *compressed) {
    static const char *const compressions[] = {".gz", ".xz", ".zst", ".bz2"};
    static const char *const tars[] = {".tar", ".tgz", ".txz", ".tbz2", ".tzst"};
    size_t n = strlen(name);
    *compressed = 0;
    for (size_t i = 0; i < sizeof compressions / sizeof *compressions; i++)
        if (ends_with(name, compressions[i])) {
            *compressed = 1;
            n -= strlen(compressions[i]);
            break;
        }
    char stem[4096];
    snprintf(stem, sizeof stem, "%.*s", (int)(n < sizeof stem ? n : sizeof stem - 1), name);
    if (ends_with(stem, ".jsonl")) *format = HDLM_TEXT_JSONL;
    else if (ends_with(stem, ".txt")) *format = HDLM_TEXT_PLAIN;
    else {
        int tar = *compressed;   // NAME.xz and the like: a compressed tar (OpenWebText's inner archives)
        for (size_t i = 0; i < sizeof tars / sizeof *tars; i++) tar |= ends_with(stem, tars[i]);
        if (!tar) return 0;
        *format = HDLM_TEXT_TAR;
        *compressed = 0;   // a tar is always streamed; compressed or not, libarchive finds out
    }
    return 1;
}

static void inputs_push(hdlm_text_inputs *in, const char *path, uint64_t bytes, hdlm_text_format format,
                        int compressed, hdlm_detokenizer detok, int to_validation) {
    int stream = compressed || format == HDLM_TEXT_TAR || strcmp(path, "-") == 0;
    hdlm_text_segment *seg = in->segment_count ? &in->segments[in->segment_count - 1] : NULL;
    if (!seg || seg->stream || stream) {   // a new segment: every stream is one, a run of uncompressed files another
        if (in->segment_count == in->segment_cap)
            in->segments = hdlm_realloc(in->segments, (in->segment_cap = in->segment_cap ? 2 * in->segment_cap : 16) *
                                                          sizeof *in->segments);
        seg = &in->segments[in->segment_count++];
        *seg = (hdlm_text_segment){in->count, 0, 0, stream};
    }
    if (in->count == in->cap) in->files = hdlm_realloc(in->files, (in->cap = in->cap ? 2 * in->cap : 16) * sizeof *in->files);
    in->files[in->count++] = (hdlm_text_file){hdlm_strdup(path), format, compressed, detok, to_validation, bytes,
                                              in->segment_count - 1, seg->bytes};
    seg->count++;
    seg->bytes += bytes;
    in->total_bytes += bytes;
}

static int compare_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int add_path(hdlm_text_inputs *in, const char *path, hdlm_detokenizer detok, int to_validation, int in_dir) {
    if (strcmp(path, "-") == 0 && !in_dir) {
        inputs_push(in, path, 0, HDLM_TEXT_TAR, 0, detok, to_validation);   // a tar, or JSONL if it is none
        return 0;
    }
    struct stat st;
    HDLM_CHECK(stat(path, &st) == 0, "cannot read input %s: %s", path, strerror(errno));
    if (S_ISREG(st.st_mode)) {
        HDLM_CHECK(access(path, R_OK) == 0, "cannot read input %s: %s", path, strerror(errno));
        const char *base = strrchr(path, '/');
        hdlm_text_format format = HDLM_TEXT_PLAIN;
        int compressed = 0;
        if (!text_classify(base ? base + 1 : path, &format, &compressed) && in_dir) {
            in->ignored_files++;
            return 0;
        }
        inputs_push(in, path, (uint64_t)st.st_size, format, compressed, detok, to_validation);
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
    free(in->segments);
    memset(in, 0, sizeof *in);
}

// ---- reader ----

int text_bad(text_context *c, const char *where, const char *why, const char *skipped_what) {
    HDLM_CHECK(c->skip_bad, "%s: %s (use --on-error skip to skip it)", where, why);
    if (c->skipped++ < TEXT_MAX_WARNINGS)
        fprintf(stderr, "hdlm: warning: %s: %s; %s%s\n", where, why, skipped_what,
                c->skipped == TEXT_MAX_WARNINGS ? " (further skips are only counted)" : "");
    return 0;
}

int text_jsonl_parse(const char *field, const char *line, size_t len, hdlm_text_doc *doc, char *why, size_t why_len) {
    const char *end = NULL;
    cJSON *obj = cJSON_ParseWithLengthOpts(line, len + 1, &end, 1);   // + 1: the NUL ends the document
    int ok = 0;
    if (!obj) {
        snprintf(why, why_len, "invalid JSON at column %zu", (size_t)(end ? end - line + 1 : 1));
    } else if (!cJSON_IsObject(obj)) {
        snprintf(why, why_len, "not a JSON object");
    } else {
        const cJSON *value = cJSON_GetObjectItemCaseSensitive(obj, field);
        if (!value) snprintf(why, why_len, "no \"%s\" field", field);
        else if (!cJSON_IsString(value)) snprintf(why, why_len, "field \"%s\" is not a string", field);
        else if (hdlm_json_has_escaped_nul(line, len))
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

void hdlm_text_doc_free(hdlm_text_doc *doc) {
    free(doc->text);
    free(doc->member);
    memset(doc, 0, sizeof *doc);
}

struct hdlm_text_reader {
    text_context c;
    size_t segment;       // current segment
    uint64_t segment_base;   // input bytes of the segments before it
    text_stream *stream;  // open when the current segment is a stream
    // A run of uncompressed files: the current unit [lo, hi) of the segment's content, the file being read.
    int in_unit;
    uint64_t unit, lo, hi;
    size_t file;
    FILE *jsonl;          // open JSONL file, positioned at the next line to read
    uint64_t pos;         // offset of that line in the file
    char *line;
    size_t line_cap;
    // Line-number cache for messages: line `where_line` starts at or before `where_offset` of file `where_file`.
    size_t where_file;
    uint64_t where_offset, where_line;
    char *where;
    size_t where_cap;
};

int hdlm_text_reader_open(hdlm_text_reader **out, const hdlm_text_inputs *in, int rank, int world,
                          const hdlm_text_read_options *options) {
    *out = NULL;
    HDLM_CHECK(world >= 1 && rank >= 0 && rank < world, "reader %d of %d", rank, world);
    for (size_t i = 0; i < in->count; i++)
        HDLM_CHECK(world == 1 || strcmp(in->files[i].path, "-") != 0,
                   "standard input (-) can be read by one rank only; run without mpirun or give the file");
    HDLM_CHECK(in->segment_count < (1u << 23), "too many input segments (%zu)", in->segment_count);
    hdlm_text_reader *r = hdlm_calloc(1, sizeof *r);
    r->c = (text_context){in,
                          rank,
                          world,
                          options->unit_bytes ? options->unit_bytes : HDLM_TEXT_UNIT_BYTES,
                          hdlm_strdup(options->text_field ? options->text_field : "text"),
                          options->skip_bad,
                          options->order,
                          0,
                          0};
    r->where_file = SIZE_MAX;
    *out = r;
    return 0;
}

uint64_t hdlm_text_reader_skipped(const hdlm_text_reader *r) { return r->c.skipped; }
uint64_t hdlm_text_reader_ignored(const hdlm_text_reader *r) { return r->c.ignored; }

uint64_t hdlm_text_reader_position(const hdlm_text_reader *r) {
    if (r->segment >= r->c.in->segment_count) return r->c.in->total_bytes;
    const hdlm_text_segment *seg = &r->c.in->segments[r->segment];
    uint64_t within = r->stream ? text_stream_position(r->stream) : r->in_unit ? r->lo : 0;
    return r->segment_base + (within < seg->bytes ? within : seg->bytes);
}

void hdlm_text_reader_close(hdlm_text_reader *r) {
    if (!r) return;
    text_stream_close(r->stream);
    if (r->jsonl) fclose(r->jsonl);
    free(r->line);
    free((char *)r->c.field);
    free(r->where);
    free(r);
}

// Line number of `offset` in uncompressed JSONL file `file`, counting newlines on from the cached place.
static uint64_t line_of(hdlm_text_reader *r, size_t file, uint64_t offset) {
    const hdlm_text_file *f = &r->c.in->files[file];
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
    return r->where_line;
}

const char *text_where(char **buf, size_t *cap, const char *path, const char *member, uint64_t line) {
    size_t need = strlen(path) + (member ? strlen(member) : 0) + 40;
    if (need > *cap) *buf = hdlm_realloc(*buf, *cap = need);
    int n = snprintf(*buf, *cap, "%s%s%s", path, member ? ", member " : "", member ? member : "");
    if (line) snprintf(*buf + n, *cap - (size_t)n, ":%llu", (unsigned long long)line);
    return *buf;
}

const char *hdlm_text_reader_where(hdlm_text_reader *r, const hdlm_text_doc *doc) {
    const hdlm_text_file *f = &r->c.in->files[doc->file];
    uint64_t line = doc->line;
    if (!line && f->format == HDLM_TEXT_JSONL && !f->compressed) line = line_of(r, doc->file, doc->offset);
    return text_where(&r->where, &r->where_cap, f->path, doc->member, line);
}

// Opens uncompressed JSONL file r->file at its first line that starts at or after segment position r->lo.
static int jsonl_open(hdlm_text_reader *r) {
    const hdlm_text_file *f = &r->c.in->files[r->file];
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

// Next line of the open JSONL file that starts in the current unit: 1 = document, 0 = file done, -1 = error.
static int jsonl_next(hdlm_text_reader *r, hdlm_text_doc *doc) {
    const hdlm_text_file *f = &r->c.in->files[r->file];
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
        *doc = (hdlm_text_doc){.file = r->file, .key = text_key(r->segment, r->unit), .offset = line_offset};
        if (len == 0) snprintf(why, sizeof why, "empty line, expected a JSON object");
        else if (text_jsonl_parse(r->c.field, r->line, len, doc, why, sizeof why)) return 1;
        HDLM_TRY(text_bad(&r->c, hdlm_text_reader_where(r, doc), why, "line skipped"));
    }
}

// Next document of the current unit of a run of uncompressed files: 1 = document, 0 = unit done, -1 = error.
static int run_next(hdlm_text_reader *r, const hdlm_text_segment *seg, hdlm_text_doc *doc) {
    for (; r->file < seg->first + seg->count; r->file++) {
        const hdlm_text_file *f = &r->c.in->files[r->file];
        if (f->offset >= r->hi) break;
        if (f->format == HDLM_TEXT_PLAIN) {
            if (f->offset < r->lo) continue;
            *doc = (hdlm_text_doc){.file = r->file, .key = text_key(r->segment, r->unit)};
            r->file++;
            HDLM_TRY(hdlm_read_file(f->path, &doc->text, &doc->len));
            return 1;
        }
        if (f->offset + f->bytes <= r->lo) continue;
        if (!r->jsonl) HDLM_TRY(jsonl_open(r));
        int rc = jsonl_next(r, doc);
        if (rc != 0) return rc;
        fclose(r->jsonl);
        r->jsonl = NULL;
    }
    if (r->jsonl) fclose(r->jsonl);
    r->jsonl = NULL;
    return 0;
}

// Starts this reader's next unit of the current run (the first when none is open); 0 when there is none left.
static int run_next_unit(hdlm_text_reader *r, const hdlm_text_segment *seg) {
    uint64_t world = (uint64_t)r->c.world, first = ((uint64_t)r->c.rank + world - r->segment % world) % world;
    r->unit = r->in_unit ? r->unit + world : first;
    r->in_unit = 0;
    if (r->unit > seg->bytes / r->c.unit_bytes) return 0;   // the last unit holds the run's end (empty files there)
    r->lo = r->unit * r->c.unit_bytes;
    r->hi = r->lo + r->c.unit_bytes;
    // The first file that can hold a document starting in [lo, hi): files are in increasing order of offset.
    size_t a = seg->first, b = seg->first + seg->count;
    while (a < b) {
        size_t mid = a + (b - a) / 2;
        const hdlm_text_file *f = &r->c.in->files[mid];
        if (f->offset + f->bytes > r->lo || f->offset >= r->lo) b = mid;
        else a = mid + 1;
    }
    r->file = a;
    r->in_unit = 1;
    return 1;
}

int hdlm_text_reader_next(hdlm_text_reader *r, hdlm_text_doc *doc) {
    memset(doc, 0, sizeof *doc);
    while (r->segment < r->c.in->segment_count) {
        const hdlm_text_segment *seg = &r->c.in->segments[r->segment];
        int rc;
        if (seg->stream) {
            if (!r->stream) HDLM_TRY(text_stream_open(&r->stream, &r->c, seg->first));
            if ((rc = text_stream_next(r->stream, doc)) != 0) return rc;
            text_stream_close(r->stream);
            r->stream = NULL;
        } else {
            if (r->in_unit && (rc = run_next(r, seg, doc)) != 0) return rc;
            if (run_next_unit(r, seg)) continue;
        }
        r->segment_base += seg->bytes;
        r->segment++;
    }
    return 0;
}

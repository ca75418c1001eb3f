// Shared by textsource.c (inputs, uncompressed runs) and textstream.c (compressed files and archives, libarchive).
#ifndef HDLM_TEXTSOURCE_INTERNAL_H
#define HDLM_TEXTSOURCE_INTERNAL_H

#include "hdlm/textsource.h"

#include <stdio.h>

enum { TEXT_MAX_WARNINGS = 20 };   // skip warnings printed per reader; the rest are only counted

// What the reader's parts share: the split of the work and the handling of bad lines.
typedef struct {
    const hdlm_text_inputs *in;
    int rank, world;
    uint64_t unit_bytes;
    const char *field;
    int skip_bad;
    hdlm_text_order order;
    uint64_t skipped, ignored;
} text_context;

// 1 when unit `unit` of segment `segment` is this reader's.
static inline int text_unit_is_mine(const text_context *c, uint64_t segment, uint64_t unit) {
    return (segment + unit) % (uint64_t)c->world == (uint64_t)c->rank;
}

// A document's key: its segment, then its place there (a unit, or a sorted archive's member index).
static inline uint64_t text_key(uint64_t segment, uint64_t place) { return segment << 40 | place; }

// Format of a name by the rules of hdlm/textsource.h; 0 when no rule matches.
int text_classify(const char *name, hdlm_text_format *format, int *compressed);

// One JSONL line (NUL-terminated at line[len], no newline) into doc->text/len: 1 = document, 0 = malformed (reason
// in why).
int text_jsonl_parse(const char *field, const char *line, size_t len, hdlm_text_doc *doc, char *why, size_t why_len);

// "path", "path:line", "path, member m" or "path, member m:line" (line 0: none; member NULL: none) into *buf
// (grown as needed), for messages; returns *buf.
const char *text_where(char **buf, size_t *cap, const char *path, const char *member, uint64_t line);

// Reports a bad line or member: an error (-1) unless skipping, else a counted warning (0).
int text_bad(text_context *c, const char *where, const char *why, const char *skipped_what);

// A compressed file, an archive or standard input, read through libarchive.
typedef struct text_stream text_stream;
int text_stream_open(text_stream **out, text_context *c, size_t file);
// 1 document, 0 end of the stream, -1 error.
int text_stream_next(text_stream *s, hdlm_text_doc *doc);
uint64_t text_stream_position(const text_stream *s);   // bytes of the file read so far
void text_stream_close(text_stream *s);

#endif

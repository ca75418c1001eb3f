// hdlm/textsource.h — documents from text inputs, for hdlm-prep prepare.
//
// Inputs: plain-text files (one document per file), JSONL files (one document per line, taken from a string field,
// "text" by default) and directories of them (recursive, entries sorted bytewise; inside directories only *.txt
// (plain) and *.jsonl files are read, others are counted as ignored). An explicit file is JSONL when its name ends in
// ".jsonl", plain text otherwise.
//
// Splitting across readers: the inputs are seen as one concatenation of their bytes; a document belongs to the reader
// whose byte range [lo, hi) holds its first byte (a plain file's first byte, a JSONL line's first byte). So any set of
// ranges that tiles [0, total) reads every document exactly once, in input order, and one large JSONL file is split at
// line starts.
#ifndef HDLM_TEXTSOURCE_H
#define HDLM_TEXTSOURCE_H

#include <stddef.h>
#include <stdint.h>

#include "hdlm/detokenize.h"

typedef enum { HDLM_TEXT_PLAIN = 0, HDLM_TEXT_JSONL = 1 } hdlm_text_format;

typedef struct {
    char *path;
    hdlm_text_format format;
    hdlm_detokenizer detok;   // applied to this file's documents
    int to_validation;        // this file's documents all go to the validation split
    uint64_t bytes;           // file size
    uint64_t offset;          // position of its first byte in the concatenation of all inputs
} hdlm_text_file;

typedef struct {
    hdlm_text_file *files;
    size_t count, cap;
    uint64_t total_bytes;
    uint64_t ignored_files;   // files inside directories that are neither *.txt nor *.jsonl
} hdlm_text_inputs;

// Adds a file, or a directory's files. A missing or unreadable path is refused naming it.
int hdlm_text_inputs_add(hdlm_text_inputs *in, const char *path, hdlm_detokenizer detok, int to_validation);
void hdlm_text_inputs_free(hdlm_text_inputs *in);

typedef struct {
    char *text;         // malloc'ed, NUL-terminated; the caller owns it
    size_t len;
    size_t file;        // index into the inputs
    uint64_t offset;    // byte offset of the document (JSONL: its line) in that file
} hdlm_text_doc;

typedef struct hdlm_text_reader hdlm_text_reader;

// A reader of the documents whose first byte lies in [lo, hi) of the concatenation. text_field: the JSONL field.
// skip_malformed: a malformed JSONL line (invalid JSON, not an object, field missing or not a string) is reported on
// stderr as "file:line: reason" and skipped (counted) when set; otherwise it is an error.
int hdlm_text_reader_open(hdlm_text_reader **out, const hdlm_text_inputs *in, uint64_t lo, uint64_t hi,
                          const char *text_field, int skip_malformed);
// 1: *doc holds the next document; 0: no more documents; -1: error (unreadable file, malformed line when not skipping).
int hdlm_text_reader_next(hdlm_text_reader *r, hdlm_text_doc *doc);
// Malformed lines skipped so far.
uint64_t hdlm_text_reader_skipped(const hdlm_text_reader *r);
// "path:line" (JSONL) or "path" (plain text) of a document, for messages; the result stays valid until the next call.
const char *hdlm_text_reader_where(hdlm_text_reader *r, size_t file, uint64_t offset);
void hdlm_text_reader_close(hdlm_text_reader *r);

#endif

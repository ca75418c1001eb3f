// hdlm/textsource.h — documents from text inputs as users have them, for hdlm-prep prepare (docs/prepare.md).
//
// Inputs, by name (an explicit file of another name is one plain-text document):
//   NAME.txt                        one document (the whole file)
//   NAME.jsonl                      one document per line, the string in a field ("text" by default)
//   NAME.txt.gz|.xz|.zst|.bz2       the same, compressed
//   NAME.jsonl.gz|.xz|.zst|.bz2
//   NAME.tar, NAME.tar.gz|.xz|.zst|.bz2, .tgz, .txz, .tbz2, and any other NAME.gz|.xz|.zst|.bz2: a tar archive whose
//                                   members are read by the same rules, recursively (OpenWebText: an outer .tar.xz of
//                                   inner .xz tars of .txt documents)
//   a directory                     its entries by the same rules, recursively, names sorted bytewise
//   -                               standard input: a tar archive or JSONL, compressed or not (one rank only)
// Inside directories and archives, entries that match none of the rules, and hidden ones, are ignored and counted.
// Archives and compression go through libarchive, streamed: nothing is unpacked to disk.
//
// Order: the inputs in the order given; a directory's entries and an archive's members sorted by name (bytewise),
// so the documents do not depend on how an archive was made (the OpenWebText loader of the reference sorts the
// same way). Sorting the top-level members of an archive larger than a unit costs one extra pass over its headers;
// a nested archive's documents, and those of an archive no larger than a unit (one unit: one reader), are held in
// memory while it is read. HDLM_TEXT_ORDER_STORED reads members in archive order instead (one pass, nothing held;
// standard input is always read so at its top level).
//
// Splitting the work (the result does not depend on it): the inputs form segments, a run of consecutive uncompressed
// files (.txt, .jsonl, others) being one segment and every compressed file or archive its own. A segment's content is
// cut into units of `unit_bytes`: a document belongs to the unit holding its first byte, counted in the segment's
// uncompressed content (the concatenation of the run's files; a tar's member data in order, a member that is itself
// an archive counting as one piece at its start). Unit u of segment s belongs to reader (s + u) mod world. Each
// document carries a key (segment, then the unit, or in sorted archives the member's place in the sorted order):
// documents in key order are corpus order, and one key's documents are read by one reader, consecutively. A reader
// seeks to its units in uncompressed files; it decompresses a compressed segment whole but skips other readers'
// members without decompressing them (OpenWebText's inner archives).
#ifndef HDLM_TEXTSOURCE_H
#define HDLM_TEXTSOURCE_H

#include <stddef.h>
#include <stdint.h>

#include "hdlm/detokenize.h"

typedef enum { HDLM_TEXT_PLAIN = 0, HDLM_TEXT_JSONL = 1, HDLM_TEXT_TAR = 2 } hdlm_text_format;

enum { HDLM_TEXT_UNIT_BYTES = 16 << 20 };   // default unit size

typedef struct {
    char *path;               // "-" = standard input
    hdlm_text_format format;
    int compressed;           // read through a decompressor (implied for a tar; a tar may also be uncompressed)
    hdlm_detokenizer detok;   // applied to this file's documents
    int to_validation;        // this file's documents all go to the validation split
    uint64_t bytes;           // file size (0 for standard input)
    size_t segment;
    uint64_t offset;          // uncompressed files: position of the first byte in the segment's content
} hdlm_text_file;

typedef struct {
    size_t first, count;      // files [first, first + count)
    uint64_t bytes;           // uncompressed run: its content's size; stream: the file's size
    int stream;               // a compressed file, an archive or standard input
} hdlm_text_segment;

typedef struct {
    hdlm_text_file *files;
    size_t count, cap;
    hdlm_text_segment *segments;
    size_t segment_count, segment_cap;
    uint64_t total_bytes;     // sum of the files' sizes (on disk)
    uint64_t ignored_files;   // files inside directories that match no rule
} hdlm_text_inputs;

// Adds a file, a directory's files or "-". A missing or unreadable path is refused naming it.
int hdlm_text_inputs_add(hdlm_text_inputs *in, const char *path, hdlm_detokenizer detok, int to_validation);
void hdlm_text_inputs_free(hdlm_text_inputs *in);

typedef struct {
    char *text;         // malloc'ed, NUL-terminated
    size_t len;
    size_t file;        // index into the inputs
    uint64_t key;       // (segment << 40) | place in the segment: corpus order (see the top of this file)
    uint64_t offset;    // byte offset of the document (JSONL: its line) in its file or archive member
    uint64_t line;      // JSONL: 1-based line number when known (streams), else 0
    char *member;       // archive member path, nested members joined by " > "; NULL outside archives
} hdlm_text_doc;

void hdlm_text_doc_free(hdlm_text_doc *doc);

typedef struct hdlm_text_reader hdlm_text_reader;

typedef enum { HDLM_TEXT_ORDER_SORTED = 0, HDLM_TEXT_ORDER_STORED = 1 } hdlm_text_order;

typedef struct {
    uint64_t unit_bytes;      // 0 = HDLM_TEXT_UNIT_BYTES
    const char *text_field;   // the JSONL field (NULL = "text")
    int skip_bad;             // a malformed JSONL line (invalid JSON, not an object, field missing or not a string)
                              // or an unreadable archive inside an archive is reported on stderr and skipped
                              // (counted); otherwise it is an error. A corrupt input file is always an error.
    hdlm_text_order order;    // of archive members
} hdlm_text_read_options;

// A reader of the documents of the units that belong to `rank` of `world`.
int hdlm_text_reader_open(hdlm_text_reader **out, const hdlm_text_inputs *in, int rank, int world,
                          const hdlm_text_read_options *options);
// 1: *doc holds the next document (free it with hdlm_text_doc_free); 0: no more; -1: error (message recorded).
int hdlm_text_reader_next(hdlm_text_reader *r, hdlm_text_doc *doc);
// Malformed lines and unreadable inner archives skipped so far.
uint64_t hdlm_text_reader_skipped(const hdlm_text_reader *r);
// Archive members that match no rule, so far.
uint64_t hdlm_text_reader_ignored(const hdlm_text_reader *r);
// Input bytes (on disk) passed so far, for progress: the reader's own units and the others it skipped.
uint64_t hdlm_text_reader_position(const hdlm_text_reader *r);
// "path", "path:line" or "archive, member m[:line]" of a document, for messages; valid until the next call.
const char *hdlm_text_reader_where(hdlm_text_reader *r, const hdlm_text_doc *doc);
void hdlm_text_reader_close(hdlm_text_reader *r);

#endif

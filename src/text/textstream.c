// Compressed files, tar archives (nested) and standard input through libarchive, streamed (rules, order and the split
// of the work in include/hdlm/textsource.h). A stack of open archives: level 0 is the input file, level k + 1 an
// archive member of level k read through a callback on level k's data. Sorted order: level 0's members are listed
// and sorted in a first pass over its headers (each member then has its sorted place and position); the documents of
// an archive inside it are collected while it is read and handed out sorted when it is done.
#include "textsource_internal.h"

#include "hdlm/common.h"

#include <archive.h>
#include <archive_entry.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_DEPTH = 4, READ_BYTES = 1 << 16 };

typedef struct {
    struct archive *a;
    int raw;                      // a compressed file: one entry, of format raw_format
    int raw_done;                 // that entry has been started
    hdlm_text_format raw_format;
    char *name;                   // name of this level's current entry (NULL for raw entries)
    int reading;                  // 1: the current entry is a document file (PLAIN or JSONL) being read
    hdlm_text_format format;      // of the current entry
    uint64_t entry_start;         // level 0: the current entry's position in the content
    uint64_t content_pos;         // level 0: the content's bytes before the next entry
    uint64_t entry_read;          // bytes of the current entry consumed
    uint64_t entry_size;          // its size as the archive records it (0: unknown)
    uint64_t line_no;
    size_t entry_index;           // level 0: the current entry's index in archive order
    uint64_t entry_key;           // level 0: the key of its documents (a JSONL member in stored order: per line)
    char *buf;                    // read-ahead for lines
    size_t buf_len, buf_pos;
    void *child_buf;              // what a child archive reads from this level's data
} level;

struct text_stream {
    text_context *c;
    size_t file;
    const hdlm_text_file *f;
    level levels[MAX_DEPTH];
    int depth;                    // levels [0, depth) are open
    char *line;
    size_t line_cap;
    char *where;                  // for messages
    size_t where_cap;
    char why[1024];               // level_open's reason for a failure
    // Sorted order. Level 0's members by archive index: place in the sorted order, content bytes before them there.
    size_t listed;
    uint64_t *sorted_place, *sorted_pos;
    // Documents read at levels >= collect_from wait in `pending` until that level's archive is done, each with its
    // member names from that level on (to sort by). collect_from = 1: the archives inside level 0; 0: a whole
    // archive no larger than a unit (one unit, one reader, sorted in memory without a header pass).
    int collect_from;
    struct pending {
        hdlm_text_doc doc;
        char *sort_name;
        size_t seq;
    } *pending;
    size_t pending_n, pending_cap, pending_next;
};

static const char *archive_message(struct archive *a) {
    const char *m = archive_error_string(a);
    return m ? m : "unknown libarchive error";
}

// The members being read at levels [0, depth), joined by " > "; NULL when there are none.
static char *member_path(const text_stream *s, int depth) {
    size_t need = 1;
    for (int k = 0; k < depth; k++) need += s->levels[k].name ? strlen(s->levels[k].name) + 3 : 0;
    if (need == 1) return NULL;
    char *path = hdlm_malloc(need);
    size_t n = 0;
    for (int k = 0; k < depth; k++)
        if (s->levels[k].name) n += (size_t)snprintf(path + n, need - n, "%s%s", n ? " > " : "", s->levels[k].name);
    return path;
}

// "file", "file, member a > b" (levels [0, depth)), with ":line" when line > 0, for messages.
static const char *stream_where(text_stream *s, int depth, uint64_t line) {
    char *member = member_path(s, depth);
    text_where(&s->where, &s->where_cap, s->f->path, member, line);
    free(member);
    return s->where;
}

static la_ssize_t child_read(struct archive *child, void *client, const void **buf) {
    level *parent = client;
    la_ssize_t n = archive_read_data(parent->a, parent->child_buf, READ_BYTES);
    if (n < 0) archive_set_error(child, archive_errno(parent->a), "%s", archive_message(parent->a));
    *buf = parent->child_buf;
    return n;
}

// Opens level `depth`: the input file (depth 0) or the current entry of level depth - 1. tar: a tar archive;
// otherwise a compressed file of `format`; standard input may be either. Returns 0, or -1 with the reason in s->why.
static int level_open(text_stream *s, int depth, int tar, hdlm_text_format format) {
    level *L = &s->levels[depth];
    memset(L, 0, sizeof *L);
    L->a = archive_read_new();
    L->raw = !tar;
    L->raw_format = format;
    s->depth = depth + 1;
    archive_read_support_filter_all(L->a);   // gzip, xz, zstd, bzip2, ... and none
    int is_stdin = depth == 0 && strcmp(s->f->path, "-") == 0;
    if (tar || is_stdin) archive_read_support_format_tar(L->a);
    if (!tar || is_stdin) archive_read_support_format_raw(L->a);
    int rc;
    if (depth > 0) {
        level *parent = &s->levels[depth - 1];
        if (!parent->child_buf) parent->child_buf = hdlm_malloc(READ_BYTES);
        rc = archive_read_open(L->a, parent, NULL, child_read, NULL);
    } else if (is_stdin) {
        rc = archive_read_open_fd(L->a, 0, READ_BYTES);
    } else {
        rc = archive_read_open_filename(L->a, s->f->path, READ_BYTES);
    }
    if (rc == ARCHIVE_OK || rc == ARCHIVE_WARN) return 0;
    const char *msg = archive_message(L->a);
    int unrecognized = strcmp(msg, "Unrecognized archive format") == 0;
    if (unrecognized && !tar) {
        // The raw reader bids on any non-empty data: this is an empty decompressed stream.
        archive_read_free(L->a);
        L->a = NULL;
        return 0;
    }
    if (unrecognized)
        snprintf(s->why, sizeof s->why, "not a tar archive, or an empty or corrupt one (by its name it is a tar, "
                 "possibly compressed: docs/prepare.md)");
    else
        snprintf(s->why, sizeof s->why, "%s", msg);
    return -1;
}

static void level_close(level *L) {
    if (L->a) archive_read_free(L->a);
    free(L->name);
    free(L->buf);
    free(L->child_buf);
    memset(L, 0, sizeof *L);
}

static void pop_to(text_stream *s, int depth) {
    while (s->depth > depth) level_close(&s->levels[--s->depth]);
}

// Next line of the current entry of L into s->line: 1 = line of *len bytes (newline kept), 0 = end, -1 = error.
static int level_getline(text_stream *s, level *L, size_t *len) {
    size_t n = 0;
    for (;;) {
        if (L->buf_pos == L->buf_len) {
            if (!L->buf) L->buf = hdlm_malloc(READ_BYTES);
            la_ssize_t got = L->a ? archive_read_data(L->a, L->buf, READ_BYTES) : 0;
            if (got < 0) return -1;
            L->buf_len = (size_t)got;
            L->buf_pos = 0;
            if (got == 0) break;
        }
        const char *start = L->buf + L->buf_pos, *nl = memchr(start, '\n', L->buf_len - L->buf_pos);
        size_t take = nl ? (size_t)(nl - start) + 1 : L->buf_len - L->buf_pos;
        if (n + take + 1 > s->line_cap) s->line = hdlm_realloc(s->line, s->line_cap = 2 * (n + take + 1));
        memcpy(s->line + n, start, take);
        n += take;
        L->buf_pos += take;
        if (nl) break;
    }
    if (n == 0) return 0;
    s->line[n] = '\0';
    *len = n;
    return 1;
}

// The whole current entry of L as one document; size_hint: its size when the archive says it (else 0).
static int level_read_all(level *L, uint64_t size_hint, char **text, size_t *len) {
    // The recorded size (+ 1: the read that finds the end), up to 64 MiB: a damaged header must not allocate more
    // than the data holds.
    size_t n = 0, cap = size_hint > 0 ? (size_t)(size_hint < (64u << 20) ? size_hint : 64u << 20) + 1 : READ_BYTES;
    char *buf = hdlm_malloc(cap + 1);
    for (la_ssize_t got; L->a;) {
        if (n == cap) buf = hdlm_realloc(buf, (cap *= 2) + 1);   // doubling: O(size) copies
        if ((got = archive_read_data(L->a, buf + n, cap - n)) <= 0) {
            if (got < 0) {
                free(buf);
                return -1;
            }
            break;
        }
        n += (size_t)got;
    }
    if (cap > n + READ_BYTES) buf = hdlm_realloc(buf, n + 1);   // a batch holds thousands: no slack per document
    buf[n] = '\0';
    *text = buf;
    *len = n;
    return 0;
}

// A failure inside level `depth` (>= 1): an error, or with skip_bad a warning, the rest of that archive skipped and
// reading resumed in its parent. Failures of the input file itself (level 0) always end the run.
static int fail_level(text_stream *s, int depth, const char *reason) {
    char why[1200];
    snprintf(why, sizeof why, "%s%s", reason, strstr(reason, "not a tar") ? "" : " (a corrupt or truncated archive?)");
    const char *where = stream_where(s, depth + 1, 0);   // with the member of level `depth` being read, if any
    if (depth == 0) return HDLM_FAIL("%s: %s", where, why);
    HDLM_TRY(text_bad(s->c, where, why, "the rest of this archive skipped"));
    pop_to(s, depth);
    s->levels[depth - 1].reading = 0;
    return 0;
}

typedef struct {
    const char *name;
    size_t index;
} named;

static int compare_named(const void *a, const void *b) {
    const named *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : (x->index > y->index) - (x->index < y->index);
}

// Sorted order, level 0: one pass over the headers of the input file gives every member its place in the sorted
// order and the content bytes before it there (which decide its unit).
static int list_members(text_stream *s) {
    struct archive *a = archive_read_new();
    archive_read_support_filter_all(a);
    archive_read_support_format_tar(a);
    char **names = NULL;
    uint64_t *sizes = NULL;
    size_t n = 0, cap = 0;
    int rc = archive_read_open_filename(a, s->f->path, READ_BYTES);
    struct archive_entry *e;
    while (rc == ARCHIVE_OK || rc == ARCHIVE_WARN) {
        rc = archive_read_next_header(a, &e);
        if (rc != ARCHIVE_OK && rc != ARCHIVE_WARN) break;
        if (n == cap) {
            cap = cap ? 2 * cap : 1024;
            names = hdlm_realloc(names, cap * sizeof *names);
            sizes = hdlm_realloc(sizes, cap * sizeof *sizes);
        }
        const char *path = archive_entry_pathname(e);
        names[n] = hdlm_strdup(path ? path : "(unnamed)");
        sizes[n++] = archive_entry_size_is_set(e) && archive_entry_size(e) > 0 ? (uint64_t)archive_entry_size(e) : 0;
    }
    int ok = rc == ARCHIVE_EOF;
    // The header after the last member listed is unreadable: that member's data is damaged (or the file's start).
    if (!ok && n) rc = HDLM_FAIL("%s, member %s: %s (a corrupt or truncated archive?)", s->f->path, names[n - 1],
                                 archive_message(a));
    if (!ok && !n) rc = HDLM_FAIL("%s: %s (a corrupt or truncated archive?)", s->f->path, archive_message(a));
    archive_read_free(a);
    if (ok) {
        named *order = hdlm_malloc((n + 1) * sizeof *order);
        for (size_t i = 0; i < n; i++) order[i] = (named){names[i], i};
        qsort(order, n, sizeof *order, compare_named);
        s->sorted_place = hdlm_malloc((n + 1) * sizeof *s->sorted_place);
        s->sorted_pos = hdlm_malloc((n + 1) * sizeof *s->sorted_pos);
        uint64_t pos = 0;
        for (size_t k = 0; k < n; k++) {
            s->sorted_place[order[k].index] = k;
            s->sorted_pos[order[k].index] = pos;
            pos += sizes[order[k].index];
        }
        s->listed = n;
        free(order);
    }
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    free(sizes);
    return ok ? 0 : -1;
}

// Sorted order: a document read inside an archive being collected waits until that archive is done.
static void pending_push(text_stream *s, hdlm_text_doc *doc) {
    if (s->pending_n == s->pending_cap)
        s->pending = hdlm_realloc(s->pending, (s->pending_cap = s->pending_cap ? 2 * s->pending_cap : 256) *
                                                  sizeof *s->pending);
    size_t need = 1;
    for (int k = s->collect_from; k < s->depth; k++) need += s->levels[k].name ? strlen(s->levels[k].name) + 1 : 0;
    char *name = hdlm_malloc(need);
    size_t n = 0;
    for (int k = s->collect_from; k < s->depth; k++)   // the member names, level by level; \x01 sorts first
        if (s->levels[k].name) n += (size_t)snprintf(name + n, need - n, "%s%s", n ? "\x01" : "", s->levels[k].name);
    name[n] = '\0';
    s->pending[s->pending_n] = (struct pending){*doc, name, s->pending_n};
    s->pending_n++;
    memset(doc, 0, sizeof *doc);
}

static int compare_pending(const void *a, const void *b) {
    const struct pending *x = a, *y = b;
    int c = strcmp(x->sort_name, y->sort_name);
    return c ? c : (x->seq > y->seq) - (x->seq < y->seq);
}

static void pending_clear(text_stream *s) {
    for (size_t i = s->pending_next; i < s->pending_n; i++) {
        hdlm_text_doc_free(&s->pending[i].doc);
        free(s->pending[i].sort_name);
    }
    s->pending_n = s->pending_next = 0;
}

int text_stream_open(text_stream **out, text_context *c, size_t file) {
    text_stream *s = hdlm_calloc(1, sizeof *s);
    s->c = c;
    s->file = file;
    s->f = &c->in->files[file];
    *out = s;
    int tar = s->f->format == HDLM_TEXT_TAR;
    s->collect_from = 1;
    if (tar && c->order == HDLM_TEXT_ORDER_SORTED && strcmp(s->f->path, "-") != 0) {
        if (s->f->bytes > c->unit_bytes) {
            HDLM_TRY(list_members(s));
        } else {   // one unit: its reader sorts it in memory; the others skip the file unopened
            s->collect_from = 0;
            if (!text_unit_is_mine(c, s->f->segment, 0)) return 0;
        }
    }
    return level_open(s, 0, tar, s->f->format) == 0 ? 0 : fail_level(s, 0, s->why);
}

// The next collected document, sorted (the sort when the first is taken); 0 when none is waiting.
static int pending_pop(text_stream *s, hdlm_text_doc *doc) {
    if (s->pending_next == s->pending_n) return 0;
    if (s->pending_next == 0) qsort(s->pending, s->pending_n, sizeof *s->pending, compare_pending);
    struct pending *p = &s->pending[s->pending_next++];
    *doc = p->doc;
    free(p->sort_name);
    if (s->pending_next == s->pending_n) s->pending_n = s->pending_next = 0;
    return 1;
}

uint64_t text_stream_position(const text_stream *s) {
    return s->depth > 0 && s->levels[0].a ? (uint64_t)archive_filter_bytes(s->levels[0].a, -1) : 0;
}

void text_stream_close(text_stream *s) {
    if (!s) return;
    pop_to(s, 0);
    pending_clear(s);
    free(s->pending);
    free(s->sorted_place);
    free(s->sorted_pos);
    free(s->line);
    free(s->where);
    free(s);
}

// Where the document or JSONL line just read from the current entry of level `depth` comes from.
static void set_origin(text_stream *s, int depth, uint64_t key, uint64_t offset, uint64_t line, hdlm_text_doc *doc) {
    doc->file = s->file;
    doc->key = key;
    doc->offset = offset;
    doc->line = line;
    doc->member = member_path(s, depth + 1);
}

// Reads on in the entry being read at level `depth`: 1 = document, 0 = entry done, -1 = error.
static int entry_next(text_stream *s, int depth, hdlm_text_doc *doc) {
    level *L = &s->levels[depth];
    uint64_t segment = s->f->segment, key = s->levels[0].entry_key;   // inside level 0's member: its key
    if (L->format == HDLM_TEXT_PLAIN) {
        L->reading = 0;
        memset(doc, 0, sizeof *doc);
        if (level_read_all(L, L->entry_size, &doc->text, &doc->len) != 0) {
            HDLM_TRY(fail_level(s, depth, archive_message(L->a)));
            return 0;
        }
        set_origin(s, depth, key, 0, 0, doc);
        return 1;
    }
    // A JSONL file at level 0 in stored order (or compressed, no members): each line's position decides its unit.
    int per_line = depth == 0 && (L->raw || s->listed == 0) && s->collect_from > 0;
    for (;;) {
        size_t len;
        int rc = level_getline(s, L, &len);
        if (rc < 0) {
            HDLM_TRY(fail_level(s, depth, archive_message(L->a)));
            return 0;
        }
        if (rc == 0) {
            L->reading = 0;
            return 0;
        }
        uint64_t offset = L->entry_read, line = ++L->line_no;
        L->entry_read += len;
        if (per_line) {
            uint64_t unit = (L->entry_start + offset) / s->c->unit_bytes;
            if (!text_unit_is_mine(s->c, segment, unit)) continue;
            key = text_key(segment, unit);
        }
        while (len > 0 && (s->line[len - 1] == '\n' || s->line[len - 1] == '\r')) len--;
        s->line[len] = '\0';
        char why[256];
        memset(doc, 0, sizeof *doc);
        if (len == 0) snprintf(why, sizeof why, "empty line, expected a JSON object");
        else if (text_jsonl_parse(s->c->field, s->line, len, doc, why, sizeof why)) {
            set_origin(s, depth, key, offset, line, doc);
            return 1;
        }
        HDLM_TRY(text_bad(s->c, stream_where(s, depth + 1, line), why, "line skipped"));
    }
}

int text_stream_next(text_stream *s, hdlm_text_doc *doc) {
    uint64_t segment = s->f->segment;
    while (s->depth > 0) {
        if (s->depth == s->collect_from && pending_pop(s, doc)) return 1;   // the archive collected is done
        int depth = s->depth - 1;
        level *L = &s->levels[depth];
        if (L->reading) {
            int rc = entry_next(s, depth, doc);
            if (rc == 1 && depth >= s->collect_from && s->c->order == HDLM_TEXT_ORDER_SORTED) {
                pending_push(s, doc);
                continue;
            }
            if (rc != 0) return rc;
            continue;
        }
        free(L->name);
        L->name = NULL;
        struct archive_entry *e = NULL;
        int rc = L->a ? archive_read_next_header(L->a, &e) : L->raw && !L->raw_done ? ARCHIVE_OK : ARCHIVE_EOF;
        if (rc == ARCHIVE_EOF) {
            if (depth == 0) {
                pop_to(s, 0);
                break;
            }
            pop_to(s, depth);
            s->levels[depth - 1].reading = 0;
            continue;
        }
        if (rc != ARCHIVE_OK && rc != ARCHIVE_WARN) {
            HDLM_TRY(fail_level(s, depth, archive_message(L->a)));
            continue;
        }
        L->entry_read = L->line_no = 0;
        L->buf_len = L->buf_pos = 0;
        L->entry_size = 0;
        if (L->raw || archive_format(L->a) == ARCHIVE_FORMAT_RAW) {
            // A compressed document file (or JSONL on standard input): its one entry, possibly empty (no archive).
            L->raw_done = 1;
            L->format = L->raw ? L->raw_format : HDLM_TEXT_JSONL;
            L->entry_start = 0;
            L->entry_key = text_key(segment, 0);
            // A whole compressed file is one piece at position 0 of its segment; its JSONL lines decide one by one.
            L->reading = depth > 0 || L->format == HDLM_TEXT_JSONL || text_unit_is_mine(s->c, segment, 0);
            continue;
        }
        const char *path = archive_entry_pathname(e);
        L->name = hdlm_strdup(path ? path : "(unnamed)");
        uint64_t size = archive_entry_size_is_set(e) && archive_entry_size(e) > 0 ? (uint64_t)archive_entry_size(e) : 0;
        L->entry_size = size;
        if (depth == 0) {   // the member's position (sorted or archive order) decides its unit and key
            size_t i = L->entry_index++;
            HDLM_CHECK(s->listed == 0 || i < s->listed, "%s changed while it was read", s->f->path);
            L->entry_start = s->listed ? s->sorted_pos[i] : s->collect_from == 0 ? 0 : L->content_pos;
            L->content_pos += size;
            L->entry_key = text_key(segment, s->listed ? s->sorted_place[i] : L->entry_start / s->c->unit_bytes);
        }
        if (archive_entry_filetype(e) == AE_IFDIR) continue;
        const char *base = strrchr(L->name, '/');
        base = base ? base + 1 : L->name;
        hdlm_text_format format;
        int compressed;
        if (archive_entry_filetype(e) != AE_IFREG || archive_entry_hardlink(e) || base[0] == '.' ||
            !text_classify(base, &format, &compressed)) {
            s->c->ignored++;
            continue;
        }
        // Level 0: a member that starts in another reader's unit is skipped unread (JSONL lines in archive order
        // decide one by one).
        if (depth == 0 && (format != HDLM_TEXT_JSONL || s->listed) &&
            !text_unit_is_mine(s->c, segment, L->entry_start / s->c->unit_bytes))
            continue;
        if (format == HDLM_TEXT_TAR || compressed) {
            HDLM_CHECK(depth + 1 < MAX_DEPTH, "%s: archives nested more than %d deep", stream_where(s, depth + 1, 0),
                       MAX_DEPTH);
            if (level_open(s, depth + 1, format == HDLM_TEXT_TAR, format) != 0)
                HDLM_TRY(fail_level(s, depth + 1, s->why));
            continue;
        }
        L->format = format;
        L->reading = 1;
    }
    return pending_pop(s, doc);   // a whole archive collected (collect_from 0), else nothing waits
}

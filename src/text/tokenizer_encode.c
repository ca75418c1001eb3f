// GPT-2 BPE encoding (docs/tokenizer.md, steps 3-4): UTF-8 check, pre-tokenizer regex, per-piece merges by rank,
// with a cache of recent pieces.
//
// Thread safety: an encode call takes one of the tokenizer's cache slots (an atomic busy flag) for its whole
// duration, so concurrent calls never share a cache or scratch buffers; when all slots are taken a call works with
// a private slot that it frees at the end.
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

#include "hdlm/common.h"

// Unicode White_Space, which OpenAI's reference (Python `regex`) uses for \s. PCRE2's own \s under UCP also matches
// U+180E, and JavaScript's matches U+FEFF but not U+0085, so the class is spelled out.
#define WS "\\t\\n\\x{0B}\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
// The GPT-2 pattern: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ . Anchored: every
// character matches one of the alternatives, so pieces tile the text.
static const char pretokenizer_pattern[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS "\\p{L}\\p{N}]+|[" WS
                                           "]+(?![^" WS "])|[" WS "]+";

// Character classes of the pre-tokenizer for ASCII bytes: letter (\p{L}), digit (\p{N}), White_Space, other.
enum { CLASS_OTHER, CLASS_LETTER, CLASS_DIGIT, CLASS_SPACE, CLASS_NON_ASCII };

#define CACHE_TABLE (1u << 16)          // entries of the open-addressing table
#define CACHE_MAX_ENTRIES (3u << 14)    // cleared when this full (75% load)
#define CACHE_MAX_PIECE 64              // longer pieces are not cached

typedef struct {
    uint64_t hash;
    uint32_t key_offset, ids_offset;
    uint16_t key_len, n_ids;   // key_len 0 = empty slot
} cache_entry;

struct piece_cache {
    cache_entry *table;
    uint32_t count;
    uint8_t *keys;   // bytes of the cached pieces
    size_t keys_len, keys_cap;
    uint32_t *ids;   // their token ids
    size_t ids_len, ids_cap;
    pcre2_match_data *match;
    // BPE scratch for one piece of n bytes: token id per node (UINT32_MAX = merged away), linked list, binary heap of
    // candidate merges (rank << 32 | left node).
    uint32_t *node_id;
    int32_t *node_next, *node_prev;
    uint64_t *heap;
    size_t scratch_cap;
};

int tokenizer_pretokenizer_compile(hdlm_tokenizer *tok) {
    int err;
    PCRE2_SIZE err_at;
    tok->pretokenizer = pcre2_compile((PCRE2_SPTR)pretokenizer_pattern, PCRE2_ZERO_TERMINATED,
                                      PCRE2_UTF | PCRE2_UCP | PCRE2_ANCHORED, &err, &err_at, NULL);
    if (!tok->pretokenizer) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return HDLM_FAIL("PCRE2 cannot compile the GPT-2 pre-tokenizer at pattern offset %zu: %s (PCRE2 built without "
                         "Unicode support?)",
                         (size_t)err_at, (const char *)msg);
    }
    for (int b = 0; b < 256; b++)
        tok->byte_class[b] = b >= 0x80                                          ? CLASS_NON_ASCII
                             : (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z') ? CLASS_LETTER
                             : b >= '0' && b <= '9'                             ? CLASS_DIGIT
                             : b == ' ' || (b >= '\t' && b <= '\r')             ? CLASS_SPACE
                                                                                : CLASS_OTHER;
    // Without JIT (some platforms) the interpreter gives the same pieces, only slower.
    tok->pretokenizer_jit = pcre2_jit_compile(tok->pretokenizer, PCRE2_JIT_COMPLETE) == 0;
    return 0;
}

static piece_cache *piece_cache_new(const hdlm_tokenizer *tok) {
    piece_cache *c = hdlm_calloc(1, sizeof *c);
    c->table = hdlm_calloc(CACHE_TABLE, sizeof *c->table);
    c->match = pcre2_match_data_create_from_pattern(tok->pretokenizer, NULL);
    HDLM_ASSERT(c->match, "pcre2_match_data_create_from_pattern failed");
    return c;
}

static void piece_cache_free(piece_cache *c) {
    if (!c) return;
    pcre2_match_data_free(c->match);
    free(c->table);
    free(c->keys);
    free(c->ids);
    free(c->node_id);
    free(c->node_next);
    free(c->node_prev);
    free(c->heap);
    free(c);
}

void tokenizer_caches_free(hdlm_tokenizer *tok) {
    for (int i = 0; i < TOKENIZER_CACHE_SLOTS; i++) {
        piece_cache_free(tok->slots[i].cache);
        tok->slots[i].cache = NULL;
    }
}

static uint64_t piece_hash(const uint8_t *s, size_t n) {
    uint64_t h = 0x9e3779b97f4a7c15ull ^ n, w;
    for (; n >= 8; s += 8, n -= 8) {
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
    }
    w = 0;
    memcpy(&w, s, n);
    h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
    return h ^ (h >> 29);
}

// Cached ids of a piece (count in *n_ids), or NULL. *slot_out receives the table slot to insert at after a miss.
static const uint32_t *piece_cache_find(const piece_cache *c, const uint8_t *s, size_t n, uint64_t hash,
                                        uint32_t *n_ids, uint32_t *slot_out) {
    for (uint32_t i = (uint32_t)hash & (CACHE_TABLE - 1);; i = (i + 1) & (CACHE_TABLE - 1)) {
        const cache_entry *e = &c->table[i];
        if (e->key_len == 0) {
            *slot_out = i;
            return NULL;
        }
        if (e->hash == hash && e->key_len == n && memcmp(c->keys + e->key_offset, s, n) == 0) {
            *n_ids = e->n_ids;
            return c->ids + e->ids_offset;
        }
    }
}

static void piece_cache_insert(piece_cache *c, uint32_t slot, const uint8_t *s, size_t n, uint64_t hash,
                               const uint32_t *ids, size_t n_ids) {
    if (c->count == CACHE_MAX_ENTRIES) {   // full: start over (the pieces of the current text come back quickly)
        memset(c->table, 0, CACHE_TABLE * sizeof *c->table);
        c->count = 0;
        c->keys_len = c->ids_len = 0;
        slot = (uint32_t)hash & (CACHE_TABLE - 1);   // the first probe of an empty table
    }
    if (c->keys_len + n > c->keys_cap) {
        c->keys_cap = 2 * (c->keys_len + n) + 4096;
        c->keys = hdlm_realloc(c->keys, c->keys_cap);
    }
    if (c->ids_len + n_ids > c->ids_cap) {
        c->ids_cap = 2 * (c->ids_len + n_ids) + 1024;
        c->ids = hdlm_realloc(c->ids, c->ids_cap * sizeof *c->ids);
    }
    memcpy(c->keys + c->keys_len, s, n);
    memcpy(c->ids + c->ids_len, ids, n_ids * sizeof *ids);
    c->table[slot] = (cache_entry){.hash = hash,
                                   .key_offset = (uint32_t)c->keys_len,
                                   .ids_offset = (uint32_t)c->ids_len,
                                   .key_len = (uint16_t)n,
                                   .n_ids = (uint16_t)n_ids};
    c->keys_len += n;
    c->ids_len += n_ids;
    c->count++;
}

// Binary min-heap of (rank << 32 | left node): the lowest rank first, and among equal ranks the leftmost pair.
static void heap_push(uint64_t *heap, size_t *n, uint64_t v) {
    size_t i = (*n)++;
    while (i > 0 && heap[(i - 1) / 2] > v) {
        heap[i] = heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    heap[i] = v;
}

static uint64_t heap_pop(uint64_t *heap, size_t *n) {
    uint64_t top = heap[0], v = heap[--*n];
    size_t i = 0, size = *n;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= size) break;
        if (child + 1 < size && heap[child + 1] < heap[child]) child++;
        if (heap[child] >= v) break;
        heap[i] = heap[child];
        i = child;
    }
    if (size) heap[i] = v;
    return top;
}

static void push_pair(const hdlm_tokenizer *tok, piece_cache *c, size_t *heap_len, int32_t left) {
    if (left < 0 || c->node_next[left] < 0) return;
    int32_t right = c->node_next[left];
    uint32_t rank = tokenizer_pair_rank(tok, c->node_id[left], c->node_id[right]);
    if (rank != TOKENIZER_NO_RANK) heap_push(c->heap, heap_len, (uint64_t)rank << 32 | (uint32_t)left);
}

// BPE of one piece: start from one token per byte and apply the lowest-ranked merge until none applies. Taking the
// (rank, position)-smallest candidate from a heap equals the reference's "merge every occurrence of the best pair,
// left to right" because a merge only creates pairs of higher rank (checked at load: merge r uses ids < 256 + r).
// O(n log n), so megabyte-long words stay fast.
static void bpe_piece(const hdlm_tokenizer *tok, piece_cache *c, const uint8_t *s, size_t n, hdlm_tokens *out) {
    if (n > c->scratch_cap) {
        c->scratch_cap = n < 256 ? 256 : 2 * n;
        c->node_id = hdlm_realloc(c->node_id, c->scratch_cap * sizeof *c->node_id);
        c->node_next = hdlm_realloc(c->node_next, c->scratch_cap * sizeof *c->node_next);
        c->node_prev = hdlm_realloc(c->node_prev, c->scratch_cap * sizeof *c->node_prev);
        c->heap = hdlm_realloc(c->heap, 2 * c->scratch_cap * sizeof *c->heap);   // <= 2n candidates
    }
    for (size_t i = 0; i < n; i++) {
        c->node_id[i] = tok->byte_id[s[i]];
        c->node_prev[i] = (int32_t)i - 1;
        c->node_next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    size_t heap_len = 0;
    for (size_t i = 0; i + 1 < n; i++) push_pair(tok, c, &heap_len, (int32_t)i);
    while (heap_len) {
        uint64_t top = heap_pop(c->heap, &heap_len);
        uint32_t rank = (uint32_t)(top >> 32);
        int32_t left = (int32_t)(uint32_t)top, right = c->node_next[left];
        // Stale candidates: the left node was merged away, or one side changed since the candidate was pushed.
        if (c->node_id[left] == UINT32_MAX || right < 0 ||
            tokenizer_pair_rank(tok, c->node_id[left], c->node_id[right]) != rank)
            continue;
        c->node_id[left] = 256 + rank;
        c->node_id[right] = UINT32_MAX;
        int32_t after = c->node_next[right];
        c->node_next[left] = after;
        if (after >= 0) c->node_prev[after] = left;
        push_pair(tok, c, &heap_len, c->node_prev[left]);
        push_pair(tok, c, &heap_len, left);
    }
    for (int32_t i = 0; i >= 0; i = c->node_next[i]) hdlm_tokens_push(out, c->node_id[i]);
}

static void tokens_reserve(hdlm_tokens *t, size_t extra) {
    if (t->len + extra > t->cap) {
        t->cap = 2 * (t->len + extra) + 256;
        t->ids = hdlm_realloc(t->ids, t->cap * sizeof *t->ids);
    }
}

static void encode_piece(const hdlm_tokenizer *tok, piece_cache *c, const uint8_t *s, size_t n, hdlm_tokens *out) {
    if (n == 1) {
        tokens_reserve(out, 1);
        out->ids[out->len++] = tok->byte_id[s[0]];
        return;
    }
    if (n > CACHE_MAX_PIECE) {
        bpe_piece(tok, c, s, n, out);
        return;
    }
    uint64_t hash = piece_hash(s, n);
    uint32_t n_ids = 0, slot = 0;
    const uint32_t *ids = piece_cache_find(c, s, n, hash, &n_ids, &slot);
    if (ids) {
        tokens_reserve(out, n_ids);
        memcpy(out->ids + out->len, ids, n_ids * sizeof *ids);
        out->len += n_ids;
        return;
    }
    size_t start = out->len;
    bpe_piece(tok, c, s, n, out);
    piece_cache_insert(c, slot, s, n, hash, out->ids + start, out->len - start);
}

// The pre-tokenizer regex evaluated by hand for ASCII text: the end of the piece that starts at `at`, or 0 when the
// answer depends on a non-ASCII character (then PCRE2 decides). Same alternatives, in the same order, as the
// pattern; the test suite compares both paths against an independent Python implementation.
static size_t ascii_piece_end(const uint8_t *cls, const uint8_t *s, size_t len, size_t at) {
    size_t i = at;
    if (s[i] == '\'' && i + 1 < len) {   // 's 't 're 've 'm 'll 'd
        uint8_t a = s[i + 1], b = i + 2 < len ? s[i + 2] : 0;
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
    }
    int c = cls[s[i]];
    if (s[i] == ' ' && i + 1 < len && cls[s[i + 1]] != CLASS_SPACE) {   // " ?X+" with the optional space
        c = cls[s[++i]];
    }
    if (c == CLASS_NON_ASCII) return 0;
    if (c != CLASS_SPACE) {   // \p{L}+, \p{N}+ or [^\s\p{L}\p{N}]+
        while (++i < len && cls[s[i]] == c) {
        }
        return i < len && cls[s[i]] == CLASS_NON_ASCII ? 0 : i;
    }
    while (++i < len && cls[s[i]] == CLASS_SPACE) {
    }
    if (i == len) return i;                          // \s+(?!\S) up to the end
    if (cls[s[i]] == CLASS_NON_ASCII) return 0;      // may be more White_Space
    return i - at > 1 ? i - 1 : i;                   // \s+(?!\S) leaves the last space to the next piece; else \s+
}

// Offset of the first byte that does not start a well-formed UTF-8 sequence, or len.
static size_t utf8_invalid_offset(const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        if (i + 8 <= len) {   // ASCII fast path, 8 bytes at a time
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (!(w & 0x8080808080808080ull)) {
                i += 8;
                continue;
            }
        }
        uint32_t cp;
        int step = tokenizer_utf8_next(s + i, len - i, &cp);
        if (step <= 0) return i;
        i += (size_t)step;
    }
    return len;
}

static piece_cache *slot_acquire(hdlm_tokenizer *tok, int *slot_index) {
    for (int i = 0; i < TOKENIZER_CACHE_SLOTS; i++) {
        if (!atomic_flag_test_and_set_explicit(&tok->slots[i].busy, memory_order_acquire)) {
            if (!tok->slots[i].cache) tok->slots[i].cache = piece_cache_new(tok);
            *slot_index = i;
            return tok->slots[i].cache;
        }
    }
    *slot_index = -1;
    return piece_cache_new(tok);
}

static void slot_release(hdlm_tokenizer *tok, int slot_index, piece_cache *c) {
    if (slot_index < 0) piece_cache_free(c);
    else atomic_flag_clear_explicit(&tok->slots[slot_index].busy, memory_order_release);
}

int hdlm_tokenizer_encode(const hdlm_tokenizer *ctok, const char *text, size_t len, hdlm_tokens *out) {
    const uint8_t *s = (const uint8_t *)text;
    size_t bad = utf8_invalid_offset(s, len);
    HDLM_CHECK(bad == len, "invalid UTF-8 at byte offset %zu (byte 0x%02x): the tokenizer needs UTF-8 text", bad,
               bad < len ? s[bad] : 0);
    // The slots are the only mutable part of a tokenizer, and each is guarded by its busy flag.
    hdlm_tokenizer *tok = (hdlm_tokenizer *)ctok;
    int slot_index;
    piece_cache *c = slot_acquire(tok, &slot_index);
    size_t start_len = out->len;
    int rc = 0;
    const uint8_t *cls = tok->byte_class;
    for (size_t at = 0; at < len;) {
        size_t end = ascii_piece_end(cls, s, len, at);
        if (!end) {
            int m = tok->pretokenizer_jit
                        ? pcre2_jit_match(tok->pretokenizer, s, len, at, 0, c->match, NULL)
                        : pcre2_match(tok->pretokenizer, s, len, at, PCRE2_NO_UTF_CHECK, c->match, NULL);
            if (m < 0) {
                PCRE2_UCHAR msg[256];
                pcre2_get_error_message(m, msg, sizeof msg);
                rc = HDLM_FAIL("pre-tokenizer regex failed at byte offset %zu: %s", at, (const char *)msg);
                break;
            }
            const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->match);
            HDLM_ASSERT(ov[0] == at && ov[1] > at, "pre-tokenizer piece [%zu, %zu) at offset %zu", (size_t)ov[0],
                        (size_t)ov[1], at);
            end = ov[1];
        }
        if (end - at >= INT32_MAX) {   // the BPE scratch indexes bytes with int32
            rc = HDLM_FAIL("a single pre-tokenizer piece of %zu bytes at byte offset %zu is too long (limit 2 GiB)",
                           end - at, at);
            break;
        }
        encode_piece(tok, c, s + at, end - at, out);
        at = end;
    }
    slot_release(tok, slot_index, c);
    if (rc != 0) out->len = start_len;   // nothing appended on failure
    return rc;
}

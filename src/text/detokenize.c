// Zero-shot detokenisers, rule by rule as method §9.2 lists them (semantics in include/hdlm/detokenize.h).
#define _GNU_SOURCE   // memmem
#include "hdlm/detokenize.h"

#include "hdlm/common.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

// Python's \s for str (the characters for which str.isspace() is true) and \w (str.isalnum() or '_').
#define PY_SPACE "[\\t\\n\\x{0b}\\x{0c}\\r\\x{1c}-\\x{1f} \\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}" \
                 "\\x{202f}\\x{205f}\\x{3000}]"
#define PY_WORD "[\\p{L}\\p{N}_]"

typedef struct {
    char *s;
    size_t len, cap;
} text_buf;

// One rewrite: a literal replacement (pattern == NULL) or a regex substitution (PCRE2 replacement syntax).
typedef struct {
    const char *from, *pattern, *to;
} rule;

#define LIT(a, b) {a, NULL, b}
#define RE(p, b) {NULL, p, b}

static const rule wikitext_rules[] = {
    LIT("s '", "s'"),
    RE("/' [0-9]/", "/'[0-9]/"),
    LIT(" @-@ ", "-"), LIT(" @,@ ", ","), LIT(" @.@ ", "."),
    LIT(" : ", ": "), LIT(" ; ", "; "), LIT(" . ", ". "), LIT(" ! ", "! "), LIT(" ? ", "? "), LIT(" , ", ", "),
    RE("\\(" PY_SPACE "*([^\\)]*?)" PY_SPACE "*\\)", "($1)"),
    RE("\\[" PY_SPACE "*([^\\]]*?)" PY_SPACE "*\\]", "[$1]"),
    RE("\\{" PY_SPACE "*([^\\}]*?)" PY_SPACE "*\\}", "{$1}"),
    RE("\"" PY_SPACE "*([^\"]*?)" PY_SPACE "*\"", "\"$1\""),
    RE("'" PY_SPACE "*([^']*?)" PY_SPACE "*'", "'$1'"),
    LIT("= = = =", "===="), LIT("= = =", "==="), LIT("= =", "=="),
    LIT(" \xc2\xb0 ", "\xc2\xb0"),   // " ° " -> "°"
    LIT(" \n", "\n"), LIT("\n ", "\n"), LIT(" N ", " 1 "), LIT(" 's", "'s"),
};

static const rule ptb_rules[] = {
    LIT(" 's", "'s"), LIT("s ' ", "s' "), LIT(" n't", "n't"), LIT(" \n ", "\n"), LIT("\\/", "/"),
    LIT(" N ", " 1 "), LIT(" N ", " 1 "), LIT(" N ", " 1 "), LIT(" N ", " 1 "), LIT(" N ", " 1 "),   // ten times
    LIT(" N ", " 1 "), LIT(" N ", " 1 "), LIT(" N ", " 1 "), LIT(" N ", " 1 "), LIT(" N ", " 1 "),
    LIT("$ 1", "$1"), LIT("# 1", "#1"), LIT("<unk>", "?"),
};

static const rule lm1b_rules[] = {
    LIT("http : / / ", "http://"), LIT("https : / / ", "https://"),
    RE(" '(" PY_WORD "+)", "'$1"),
    RE(" (" PY_WORD "+) \\. ", " $1. "),
    RE(" (" PY_WORD "+) \\.$", " $1."),
    LIT(" ? ", "? "), RE(" \\?$", "?"),
    LIT(" ! ", "! "), RE(" \\!$", "!"),
    LIT(" , ", ", "), LIT(" : ", ": "), LIT(" ; ", "; "), LIT(" / ", "/"),
    RE("\" ([^\"]+) \"", "\"$1\""),
    RE("' ([^']+) '", "'$1'"),
    RE("\\( ([^\\(\\)]+) \\)", "($1)"),
    RE("\\[ ([^\\[\\]]+) \\]", "[$1]"),
    LIT("$ ", "$"), LIT("\xc2\xa3 ", "\xc2\xa3"),   // "£ " -> "£"
};

static const rule lambada_rules[] = {
    LIT("\xe2\x80\x9c", "\""), LIT("\xe2\x80\x9d", "\""),   // curly double quotes “ ” -> "
};

// The cleanup of the OpenWebText loader the reference trains with: runs of 3+ newlines -> 2, then strip.
static const rule openwebtext_rules[] = {
    RE("\n\n\n+", "\n\n"),
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))
static const struct {
    const rule *rules;
    size_t n;
} rule_sets[] = {
    [HDLM_DETOK_NONE] = {NULL, 0},
    [HDLM_DETOK_WIKITEXT] = {wikitext_rules, COUNT(wikitext_rules)},
    [HDLM_DETOK_PTB] = {ptb_rules, COUNT(ptb_rules)},
    [HDLM_DETOK_LM1B] = {lm1b_rules, COUNT(lm1b_rules)},
    [HDLM_DETOK_LAMBADA] = {lambada_rules, COUNT(lambada_rules)},
    [HDLM_DETOK_SCIENTIFIC] = {NULL, 0},   // no rules of its own: the wikitext then the lm1b rules
    [HDLM_DETOK_OPENWEBTEXT] = {openwebtext_rules, COUNT(openwebtext_rules)},
};

// Compiled regexes, indexed like the rule tables; compiled once for every thread.
static pcre2_code *compiled[COUNT(rule_sets)][32];
static pthread_once_t compile_once = PTHREAD_ONCE_INIT;

static void compile_all(void) {
    for (size_t d = 0; d < COUNT(rule_sets); d++) {
        HDLM_ASSERT(rule_sets[d].n <= 32, "too many detokeniser rules");
        for (size_t i = 0; i < rule_sets[d].n; i++) {
            const char *p = rule_sets[d].rules[i].pattern;
            if (!p) continue;
            int err;
            PCRE2_SIZE off;
            compiled[d][i] = pcre2_compile((PCRE2_SPTR)p, PCRE2_ZERO_TERMINATED, PCRE2_UTF, &err, &off, NULL);
            HDLM_ASSERT(compiled[d][i], "detokeniser regex %s does not compile (error %d at %zu)", p, err, (size_t)off);
        }
    }
}

static void buf_reserve(text_buf *b, size_t need) {
    if (need < b->cap) return;   // room for need bytes and the NUL
    HDLM_ASSERT(need < SIZE_MAX / 4, "text of %zu bytes", need);
    while (b->cap <= need) b->cap = b->cap ? 2 * b->cap : 64;
    b->s = hdlm_realloc(b->s, b->cap);
}

static void buf_append(text_buf *b, const char *s, size_t n) {
    buf_reserve(b, b->len + n);
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

// Python str.replace: every non-overlapping occurrence, scanning left to right. Result goes to *out (reused).
static void replace_all(const text_buf *in, const char *from, const char *to, text_buf *out) {
    size_t from_len = strlen(from), to_len = strlen(to), i = 0;
    out->len = 0;
    for (;;) {
        const char *hit = in->len - i >= from_len ? memmem(in->s + i, in->len - i, from, from_len) : NULL;
        size_t end = hit ? (size_t)(hit - in->s) : in->len;
        buf_append(out, in->s + i, end - i);
        if (!hit) break;
        buf_append(out, to, to_len);
        i = end + from_len;
    }
}

static void regex_substitute(const text_buf *in, const pcre2_code *code, const char *to, text_buf *out) {
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(code, NULL);
    uint32_t opts = PCRE2_SUBSTITUTE_GLOBAL | PCRE2_SUBSTITUTE_OVERFLOW_LENGTH;
    buf_reserve(out, in->len + 64);
    PCRE2_SIZE out_len = out->cap;
    int rc = pcre2_substitute(code, (PCRE2_SPTR)in->s, in->len, 0, opts, md, NULL, (PCRE2_SPTR)to,
                              PCRE2_ZERO_TERMINATED, (PCRE2_UCHAR *)out->s, &out_len);
    if (rc == PCRE2_ERROR_NOMEMORY) {   // out_len now holds the size needed (with the NUL)
        buf_reserve(out, out_len);
        out_len = out->cap;
        rc = pcre2_substitute(code, (PCRE2_SPTR)in->s, in->len, 0, opts, md, NULL, (PCRE2_SPTR)to,
                              PCRE2_ZERO_TERMINATED, (PCRE2_UCHAR *)out->s, &out_len);
    }
    pcre2_match_data_free(md);
    HDLM_ASSERT(rc >= 0, "detokeniser substitution failed with PCRE2 error %d on valid UTF-8", rc);
    out->len = out_len;
}

// Offset of the first byte that is not part of a well-formed UTF-8 sequence, or len when there is none.
static size_t utf8_invalid_offset(const unsigned char *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        size_t n = c < 0x80 ? 1 : (c >= 0xc2 && c <= 0xdf) ? 2 : (c >= 0xe0 && c <= 0xef) ? 3 : (c >= 0xf0 && c <= 0xf4) ? 4 : 0;
        if (n == 0 || i + n > len) return i;
        for (size_t k = 1; k < n; k++)
            if ((s[i + k] & 0xc0) != 0x80) return i;
        // Overlong 3/4-byte forms, UTF-16 surrogates and code points above U+10FFFF.
        if ((c == 0xe0 && s[i + 1] < 0xa0) || (c == 0xed && s[i + 1] >= 0xa0) || (c == 0xf0 && s[i + 1] < 0x90) ||
            (c == 0xf4 && s[i + 1] >= 0x90))
            return i;
        i += n;
    }
    return len;
}

// Length in bytes of the code point at s[i] when it is whitespace for Python's str.isspace(), else 0.
static size_t space_len(const unsigned char *s, size_t len, size_t i) {
    unsigned c = s[i];
    if ((c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20)) return 1;
    if (c == 0xc2 && i + 1 < len && (s[i + 1] == 0x85 || s[i + 1] == 0xa0)) return 2;
    if (i + 2 >= len) return 0;
    if ((c & 0xf0) != 0xe0) return 0;
    unsigned cp = ((c & 0x0fu) << 12) | ((s[i + 1] & 0x3fu) << 6) | (s[i + 2] & 0x3fu);
    if (cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 || cp == 0x202f ||
        cp == 0x205f || cp == 0x3000)
        return 3;
    return 0;
}

// prefix + text.strip() (Python): lambada's last step with "\n", openwebtext's with "".
static void strip_with_prefix(const text_buf *in, const char *prefix, text_buf *out) {
    const unsigned char *s = (const unsigned char *)in->s;
    size_t b = 0, e = in->len, n;
    while (b < e && (n = space_len(s, e, b)) > 0) b += n;
    while (e > b) {
        size_t start = e - 1;
        while (start > b && (s[start] & 0xc0) == 0x80) start--;   // first byte of the last code point
        if (space_len(s, e, start) != e - start) break;
        e = start;
    }
    out->len = 0;
    buf_append(out, prefix, strlen(prefix));
    buf_append(out, in->s + b, e - b);
}

// The rules of set d in order, each from *cur into *next, then swapped: the result ends in *cur.
static void apply_rules(hdlm_detokenizer d, text_buf *cur, text_buf *next) {
    for (size_t i = 0; i < rule_sets[d].n; i++) {
        const rule *r = &rule_sets[d].rules[i];
        if (r->pattern) regex_substitute(cur, compiled[d][i], r->to, next);
        else replace_all(cur, r->from, r->to, next);
        text_buf t = *cur;
        *cur = *next;
        *next = t;
    }
}

int hdlm_detokenize(hdlm_detokenizer d, const char *text, size_t len, char **out, size_t *out_len) {
    *out = NULL;
    *out_len = 0;
    HDLM_ASSERT((size_t)d < COUNT(rule_sets), "detokenizer %d", (int)d);
    pthread_once(&compile_once, compile_all);
    size_t bad = d == HDLM_DETOK_NONE ? len : utf8_invalid_offset((const unsigned char *)text, len);
    HDLM_CHECK(bad == len, "invalid UTF-8 at byte offset %zu (the %s detokenizer needs UTF-8 text)", bad,
               hdlm_detokenizer_name(d));
    text_buf cur = {0}, next = {0};
    buf_append(&cur, text, len);
    // The scientific-papers detokenizer is the wikitext one followed by the lm1b one (method §9.2).
    if (d == HDLM_DETOK_SCIENTIFIC) {
        apply_rules(HDLM_DETOK_WIKITEXT, &cur, &next);
        apply_rules(HDLM_DETOK_LM1B, &cur, &next);
    } else {
        apply_rules(d, &cur, &next);
    }
    if (d == HDLM_DETOK_LAMBADA || d == HDLM_DETOK_OPENWEBTEXT) {
        strip_with_prefix(&cur, d == HDLM_DETOK_LAMBADA ? "\n" : "", &next);
        text_buf t = cur;
        cur = next;
        next = t;
    }
    free(next.s);
    buf_reserve(&cur, cur.len);
    cur.s[cur.len] = '\0';
    *out = cur.s;
    *out_len = cur.len;
    return 0;
}

static const char *const names[] = {"none", "wikitext", "ptb", "lm1b", "lambada", "scientific", "openwebtext"};

int hdlm_detokenizer_parse(const char *name, hdlm_detokenizer *out) {
    for (size_t i = 0; i < COUNT(names); i++)
        if (strcmp(name, names[i]) == 0) {
            *out = (hdlm_detokenizer)i;
            return 0;
        }
    if (strcmp(name, "wt") == 0) {
        *out = HDLM_DETOK_WIKITEXT;
        return 0;
    }
    return HDLM_FAIL("unknown detokenizer \"%s\" (expected none, wikitext, wt, ptb, lm1b, lambada, scientific or openwebtext)", name);
}

const char *hdlm_detokenizer_name(hdlm_detokenizer d) {
    HDLM_ASSERT((size_t)d < COUNT(names), "detokenizer %d", (int)d);
    return names[d];
}

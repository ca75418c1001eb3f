// GPT-2 BPE vocabulary: loading and checking encoder.json + vocab.bpe (docs/tokenizer.md, steps 1-2).
//
// The two files must agree: encoder.json holds exactly the ids 0..50256 (50256 = "<|endoftext|>", 0..255 the bytes
// in GPT-2's order), and merge line r of vocab.bpe joins two existing tokens into the token with id 256 + r. Anything
// else is refused, so the encoder can derive a merge's result from its rank alone.
#include "tokenizer_internal.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hdlm/common.h"

#define EOT_TEXT "<|endoftext|>"

void hdlm_tokens_push(hdlm_tokens *t, uint32_t id) {
    if (t->len == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 256;
        t->ids = hdlm_realloc(t->ids, t->cap * sizeof *t->ids);
    }
    t->ids[t->len++] = id;
}

void hdlm_tokens_free(hdlm_tokens *t) {
    free(t->ids);
    t->ids = NULL;
    t->len = t->cap = 0;
}

static int byte_is_printable(int b) {
    return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
}

// GPT-2's reversible byte-to-unicode map: printable bytes (33-126, 161-172, 174-255) keep their code point, the other
// 68 bytes (0-32, 127-160, 173), in increasing order, become U+0100..U+0143. Returns the byte of a mapped code point,
// or -1.
static int unicode_to_byte(uint32_t cp) {
    if (cp < 0x100) return byte_is_printable((int)cp) ? (int)cp : -1;
    uint32_t k = cp - 0x100;
    return k <= 32 ? (int)k : k <= 66 ? (int)(127 + k - 33) : k == 67 ? 173 : -1;
}

// Decodes a token string of the byte-to-unicode alphabet to raw bytes in out (capacity >= len). Returns the number
// of bytes, or -1 when a character is outside the alphabet or the string is not UTF-8.
static long token_string_to_bytes(const char *s, size_t len, uint8_t *out) {
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        int step = tokenizer_utf8_next((const uint8_t *)s + i, len - i, &cp);
        int b = step > 0 ? unicode_to_byte(cp) : -1;
        if (b < 0) return -1;
        out[n++] = (uint8_t)b;
        i += (size_t)step;
    }
    return (long)n;
}

static uint64_t bytes_hash(const uint8_t *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;   // FNV-1a: only used while loading
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 0x100000001b3ull;
    return h;
}

// Token bytes -> id, used while loading to resolve the merge lines. Slots hold id + 1 (0 = empty).
typedef struct {
    uint32_t *slot;
    uint64_t mask;
} token_index;

static uint32_t token_index_find(const token_index *ix, const hdlm_tokenizer *tok, const uint8_t *s, size_t n) {
    for (uint64_t i = bytes_hash(s, n) & ix->mask;; i = (i + 1) & ix->mask) {
        uint32_t id = ix->slot[i];
        if (id == 0) return UINT32_MAX;
        id--;
        size_t len = tok->token_offset[id + 1] - tok->token_offset[id];
        if (len == n && memcmp(tok->token_bytes + tok->token_offset[id], s, n) == 0) return id;
    }
}

// Builds the index; two ids with the same bytes make encoder.json inconsistent.
static int token_index_build(token_index *ix, const hdlm_tokenizer *tok, const char *path) {
    ix->mask = (1u << 17) - 1;   // 131,072 slots for 50,257 tokens
    ix->slot = hdlm_calloc(ix->mask + 1, sizeof *ix->slot);
    for (uint32_t id = 0; id < HDLM_GPT2_VOCAB; id++) {
        const uint8_t *s = tok->token_bytes + tok->token_offset[id];
        size_t n = tok->token_offset[id + 1] - tok->token_offset[id];
        uint32_t other = token_index_find(ix, tok, s, n);
        HDLM_CHECK(other == UINT32_MAX, "encoder.json %s: ids %u and %u are the same token", path, other, id);
        uint64_t i = bytes_hash(s, n) & ix->mask;
        while (ix->slot[i]) i = (i + 1) & ix->mask;
        ix->slot[i] = id + 1;
    }
    return 0;
}

// Fills tok->token_offset/token_bytes/byte_id from encoder.json.
static int load_encoder(hdlm_tokenizer *tok, const char *path) {
    char *data;
    size_t len;
    HDLM_TRY(hdlm_read_file(path, &data, &len));
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(data, len, &end, 0);
    if (!root) {
        size_t at = end && end >= data && end <= data + len ? (size_t)(end - data) : len;
        free(data);
        return HDLM_FAIL("encoder.json %s: not valid JSON at byte %zu of %zu (truncated or corrupt file?)", path, at,
                         len);
    }
    free(data);
    int rc = -1;
    const cJSON **by_id = hdlm_calloc(HDLM_GPT2_VOCAB, sizeof *by_id);
    if (!cJSON_IsObject(root)) {
        HDLM_FAIL("encoder.json %s: expected a JSON object mapping token strings to ids", path);
        goto done;
    }
    int count = cJSON_GetArraySize(root);
    if (count != HDLM_GPT2_VOCAB) {
        HDLM_FAIL("encoder.json %s: %d entries, expected %d (GPT-2 vocabulary; truncated or wrong file?)", path, count,
                  HDLM_GPT2_VOCAB);
        goto done;
    }
    size_t total = 0;
    for (const cJSON *e = root->child; e; e = e->next) {
        double v = cJSON_IsNumber(e) ? e->valuedouble : -1;
        if (!(v >= 0 && v < HDLM_GPT2_VOCAB && v == (double)(int)v)) {
            HDLM_FAIL("encoder.json %s: token \"%s\" has id %s, expected an integer in 0..%d", path, e->string,
                      cJSON_IsNumber(e) ? "out of range" : "that is not a number", HDLM_GPT2_VOCAB - 1);
            goto done;
        }
        int id = (int)v;
        if (by_id[id]) {
            HDLM_FAIL("encoder.json %s: id %d is used twice (\"%s\" and \"%s\")", path, id, by_id[id]->string,
                      e->string);
            goto done;
        }
        by_id[id] = e;
        total += strlen(e->string);
    }
    // The decoded bytes are never longer than the UTF-8 token strings.
    tok->token_bytes = hdlm_malloc(total + 1);
    uint32_t offset = 0;
    for (int id = 0; id < HDLM_GPT2_VOCAB; id++) {
        const char *s = by_id[id]->string;
        tok->token_offset[id] = offset;
        long n = token_string_to_bytes(s, strlen(s), tok->token_bytes + offset);
        if (n <= 0) {
            HDLM_FAIL("encoder.json %s: token \"%s\" (id %d) is %s", path, s, id,
                      n == 0 ? "empty" : "not made of GPT-2 byte-to-unicode characters");
            goto done;
        }
        offset += (uint32_t)n;
    }
    tok->token_offset[HDLM_GPT2_VOCAB] = offset;
    const uint8_t *eot = tok->token_bytes + tok->token_offset[HDLM_TOKEN_EOT];
    if (tok->token_offset[HDLM_TOKEN_EOT + 1] - tok->token_offset[HDLM_TOKEN_EOT] != strlen(EOT_TEXT) ||
        memcmp(eot, EOT_TEXT, strlen(EOT_TEXT)) != 0) {
        HDLM_FAIL("encoder.json %s: id %d is \"%s\", expected \"%s\"", path, HDLM_TOKEN_EOT,
                  by_id[HDLM_TOKEN_EOT]->string, EOT_TEXT);
        goto done;
    }
    // Ids 0..255 are the 256 one-byte tokens in GPT-2's order: the printable bytes, then the 68 remapped ones.
    for (uint32_t id = 0, printable = 0, remapped = 0; id < 256; id++) {
        int b = (int)(id < 188 ? printable : remapped);
        if (id < 188) {
            while (!byte_is_printable(b)) b++;
            printable = (uint32_t)b + 1;
        } else {
            while (byte_is_printable(b)) b++;
            remapped = (uint32_t)b + 1;
        }
        if (tok->token_offset[id + 1] - tok->token_offset[id] != 1 || tok->token_bytes[tok->token_offset[id]] != b) {
            HDLM_FAIL("encoder.json %s: id %u is \"%s\", expected the one-byte token of byte %d (ids 0..255 are the "
                      "bytes in GPT-2's byte-to-unicode order)",
                      path, id, by_id[id]->string, b);
            goto done;
        }
        tok->byte_id[b] = id;
    }
    rc = 0;
done:
    free(by_id);
    cJSON_Delete(root);
    return rc;
}

static void pair_map_insert(hdlm_tokenizer *tok, uint64_t key, uint32_t rank) {
    uint64_t i = tokenizer_pair_hash(key) & tok->pair_mask;
    while (tok->pair_slot[i] != UINT64_MAX) i = (i + 1) & tok->pair_mask;
    tok->pair_slot[i] = key << 16 | rank;
}

// Reads the merges of vocab.bpe and checks each against encoder.json (merge line r must produce id 256 + r).
static int load_merges(hdlm_tokenizer *tok, const token_index *ix, const char *path) {
    char *data;
    size_t len;
    HDLM_TRY(hdlm_read_file(path, &data, &len));
    tok->pair_mask = (1u << 17) - 1;   // 131,072 slots for 50,000 merges
    tok->pair_slot = hdlm_malloc((tok->pair_mask + 1) * sizeof *tok->pair_slot);
    memset(tok->pair_slot, 0xff, (tok->pair_mask + 1) * sizeof *tok->pair_slot);
    uint8_t *buf = hdlm_malloc(len + 1);
    int rc = -1;
    const char *p = data, *end = data + len;
    size_t line_no = 1;
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    if (strncmp(p, "#version", 8) != 0 || !eol) {
        HDLM_FAIL("vocab.bpe %s: line 1: expected the header \"#version: 0.2\"%s", path, len ? "" : " (empty file)");
        goto done;
    }
    p = eol + 1;
    uint32_t rank = 0;
    for (; p < end; p = eol + 1) {
        line_no++;
        eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol) eol = end;   // a last line without a newline still counts (its content is checked below)
        const char *space = memchr(p, ' ', (size_t)(eol - p));
        if (!space || space == p || space + 1 == eol || memchr(space + 1, ' ', (size_t)(eol - space - 1))) {
            HDLM_FAIL("vocab.bpe %s: line %zu: expected two tokens separated by one space, got \"%.*s\"", path, line_no,
                      (int)(eol - p < 60 ? eol - p : 60), p);
            goto done;
        }
        if (rank == TOKENIZER_MERGES) {
            HDLM_FAIL("vocab.bpe %s: line %zu: more than %d merges (the GPT-2 vocabulary has ids up to %d)", path,
                      line_no, TOKENIZER_MERGES, HDLM_TOKEN_EOT);
            goto done;
        }
        long nl = token_string_to_bytes(p, (size_t)(space - p), buf);
        long nr = nl < 0 ? -1 : token_string_to_bytes(space + 1, (size_t)(eol - space - 1), buf + nl);
        uint32_t left = nl < 0 ? UINT32_MAX : token_index_find(ix, tok, buf, (size_t)nl);
        uint32_t right = nr < 0 ? UINT32_MAX : token_index_find(ix, tok, buf + nl, (size_t)nr);
        uint32_t merged = nr < 0 ? UINT32_MAX : token_index_find(ix, tok, buf, (size_t)(nl + nr));
        uint32_t expected = 256 + rank;
        if (left == UINT32_MAX || right == UINT32_MAX) {
            HDLM_FAIL("vocab.bpe %s: line %zu: merge \"%.*s\" uses a token that is not in encoder.json", path, line_no,
                      (int)(eol - p), p);
            goto done;
        }
        if (merged != expected) {
            char got[32] = "no token";
            if (merged != UINT32_MAX) snprintf(got, sizeof got, "id %u", merged);
            HDLM_FAIL("vocab.bpe %s: line %zu: merge \"%.*s\" gives %s in encoder.json, expected id %u (merge line r "
                      "must produce id 256 + r): the two files do not belong together",
                      path, line_no, (int)(eol - p), p, got, expected);
            goto done;
        }
        if (left >= expected || right >= expected) {
            HDLM_FAIL("vocab.bpe %s: line %zu: merge \"%.*s\" uses id %u, which a later merge line produces", path,
                      line_no, (int)(eol - p), p, left >= expected ? left : right);
            goto done;
        }
        uint64_t key = tokenizer_pair_key(left, right);
        if (tokenizer_pair_rank(tok, left, right) != TOKENIZER_NO_RANK) {
            HDLM_FAIL("vocab.bpe %s: line %zu: merge \"%.*s\" appears twice", path, line_no, (int)(eol - p), p);
            goto done;
        }
        pair_map_insert(tok, key, rank++);
        if (eol == end) break;
    }
    if (rank != TOKENIZER_MERGES) {
        HDLM_FAIL("vocab.bpe %s: %u merges, expected %d (truncated file?)", path, rank, TOKENIZER_MERGES);
        goto done;
    }
    rc = 0;
done:
    free(buf);
    free(data);
    return rc;
}

int hdlm_tokenizer_load(hdlm_tokenizer **out, const char *encoder_json_path, const char *vocab_bpe_path) {
    *out = NULL;
    hdlm_tokenizer *tok = hdlm_calloc(1, sizeof *tok);
    for (int i = 0; i < TOKENIZER_CACHE_SLOTS; i++) atomic_flag_clear(&tok->slots[i].busy);
    token_index ix = {0};
    int rc = load_encoder(tok, encoder_json_path);
    if (rc == 0) rc = token_index_build(&ix, tok, encoder_json_path);
    if (rc == 0) rc = load_merges(tok, &ix, vocab_bpe_path);
    if (rc == 0) rc = tokenizer_pretokenizer_compile(tok);
    free(ix.slot);
    if (rc != 0) {
        hdlm_tokenizer_free(tok);
        return -1;
    }
    *out = tok;
    return 0;
}

const char *hdlm_tokenizer_default_dir(void) {
    static char dir[4300];
    const char *env = getenv("HDLM_VOCAB");
    if (env && *env) return env;
    snprintf(dir, sizeof dir, "%s/gpt2", hdlm_share_dir());
    return dir;
}

int hdlm_tokenizer_load_dir(hdlm_tokenizer **out, const char *dir) {
    if (!dir) dir = hdlm_tokenizer_default_dir();
    char enc[4096], bpe[4096];
    int a = snprintf(enc, sizeof enc, "%s/encoder.json", dir);
    int b = snprintf(bpe, sizeof bpe, "%s/vocab.bpe", dir);
    *out = NULL;
    HDLM_CHECK(a > 0 && b > 0 && (size_t)a < sizeof enc && (size_t)b < sizeof bpe,
               "vocabulary directory path too long: %s", dir);
    return hdlm_tokenizer_load(out, enc, bpe);
}

void hdlm_tokenizer_free(hdlm_tokenizer *tok) {
    if (!tok) return;
    tokenizer_caches_free(tok);
    if (tok->pretokenizer) pcre2_code_free(tok->pretokenizer);
    free(tok->pair_slot);
    free(tok->token_bytes);
    free(tok);
}

size_t hdlm_utf8_invalid_at(const char *s, size_t n) {
    const uint8_t *u = (const uint8_t *)s;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int k = tokenizer_utf8_next(u + i, n - i, &cp);
        if (k < 0) return i;
        i += (size_t)k;
    }
    return n;
}

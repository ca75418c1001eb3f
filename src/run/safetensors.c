// safetensors files (the Hugging Face format PyTorch users load with safetensors.torch.load_file): validated reading
// of F32 / BF16 / F16 tensors into a model, fp32 writing of a model's weights. Format: include/hdlm/model_io.h.
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hdlm/common.h"
#include "hdlm/model_io.h"
#include "hdlm/tokenizer.h"
#include "model/layers.h"

#define ST_HEADER_MAX (100u << 20)   // the format's own limit on the JSON header (100 MB)

static const char *const dtype_names[] = {"F32", "BF16", "F16"};
static const size_t dtype_sizes[] = {4, 2, 2};

const char *hdlm_st_dtype_name(hdlm_st_dtype dtype) { return dtype_names[dtype]; }

void hdlm_safetensors_close(hdlm_safetensors *st) {
    if (!st) return;
    for (int i = 0; i < st->n_tensors; i++) free(st->tensors[i].name);
    free(st->tensors);
    free(st->metadata);
    free(st->file);
    free(st->path);
    free(st);
}

// A JSON number that is a whole number in [0, 2^53).
static bool json_size(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble >= 9007199254740992.0 ||
        v->valuedouble != floor(v->valuedouble))
        return false;
    *out = (uint64_t)v->valuedouble;
    return true;
}

static int parse_tensor(const hdlm_safetensors *st, const cJSON *item, hdlm_st_tensor *t) {
    const char *p = st->path, *name = item->string;
    HDLM_CHECK(cJSON_IsObject(item), "%s: tensor '%s': header entry is not an object", p, name);
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(item, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    HDLM_CHECK(cJSON_IsString(dtype), "%s: tensor '%s' has no dtype string", p, name);
    int d = -1;
    for (int k = 0; k < 3; k++)
        if (strcmp(dtype->valuestring, dtype_names[k]) == 0) d = k;
    HDLM_CHECK(d >= 0, "%s: tensor '%s' has dtype '%s' (supported: F32, BF16, F16)", p, name, dtype->valuestring);
    t->dtype = (hdlm_st_dtype)d;
    HDLM_CHECK(cJSON_IsArray(shape) && cJSON_GetArraySize(shape) <= 8, "%s: tensor '%s': shape must be an array of at "
               "most 8 dimensions", p, name);
    t->ndim = cJSON_GetArraySize(shape);
    uint64_t numel = 1;
    for (int k = 0; k < t->ndim; k++) {
        uint64_t dim;
        HDLM_CHECK(json_size(cJSON_GetArrayItem(shape, k), &dim) && dim < (1ull << 40),
                   "%s: tensor '%s': shape[%d] is not a non-negative integer", p, name, k);
        t->shape[k] = (int64_t)dim;
        HDLM_CHECK(dim == 0 || numel <= (1ull << 40) / dim, "%s: tensor '%s': shape too large", p, name);
        numel *= dim;
    }
    uint64_t begin, end;
    HDLM_CHECK(cJSON_IsArray(offs) && cJSON_GetArraySize(offs) == 2 && json_size(cJSON_GetArrayItem(offs, 0), &begin) &&
                   json_size(cJSON_GetArrayItem(offs, 1), &end) && begin <= end,
               "%s: tensor '%s': data_offsets must be [begin, end] with 0 <= begin <= end", p, name);
    HDLM_CHECK(end <= st->size, "%s: tensor '%s': data_offsets [%llu, %llu] out of range (data section has %zu bytes)",
               p, name, (unsigned long long)begin, (unsigned long long)end, st->size);
    HDLM_CHECK(end - begin == numel * dtype_sizes[d], "%s: tensor '%s': data_offsets span %llu bytes but dtype %s and "
               "its shape need %llu", p, name, (unsigned long long)(end - begin), dtype_names[d],
               (unsigned long long)(numel * dtype_sizes[d]));
    t->begin = (size_t)begin;
    t->end = (size_t)end;
    return 0;
}

static int compare_begin(const void *a, const void *b) {
    const hdlm_st_tensor *x = *(const hdlm_st_tensor *const *)a, *y = *(const hdlm_st_tensor *const *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

static int parse_header(hdlm_safetensors *st, const char *json, size_t len) {
    const char *p = st->path;
    size_t bad = hdlm_utf8_invalid_at(json, len);
    HDLM_CHECK(bad == len, "%s: header byte %zu is not valid UTF-8 (the format requires a UTF-8 JSON header)", p, bad);
    HDLM_CHECK(!hdlm_json_has_escaped_nul(json, len), "%s: header holds \\u0000 (NUL) in a name or string, which "
               "would cut it short", p);
    cJSON *root = cJSON_ParseWithLength(json, len);
    HDLM_CHECK(root, "%s: header is not valid JSON", p);
    int rc = 0;
    if (!cJSON_IsObject(root)) rc = HDLM_FAIL("%s: header is not a JSON object", p);
    int n = rc == 0 ? cJSON_GetArraySize(root) : 0;
    st->tensors = hdlm_calloc((size_t)n + 1, sizeof *st->tensors);
    for (const cJSON *item = rc == 0 ? root->child : NULL; item && rc == 0; item = item->next) {
        if (strcmp(item->string, "__metadata__") == 0) {
            if (!cJSON_IsObject(item)) rc = HDLM_FAIL("%s: __metadata__ is not an object", p);
            else if (!st->metadata) st->metadata = cJSON_PrintUnformatted(item);
            continue;
        }
        for (int i = 0; i < st->n_tensors && rc == 0; i++)
            if (strcmp(st->tensors[i].name, item->string) == 0) rc = HDLM_FAIL("%s: tensor '%s' appears twice", p,
                                                                               item->string);
        if (rc != 0) break;
        hdlm_st_tensor *t = &st->tensors[st->n_tensors];
        t->name = hdlm_strdup(item->string);
        st->n_tensors++;
        rc = parse_tensor(st, item, t);
    }
    cJSON_Delete(root);
    HDLM_TRY(rc);
    // No two tensors may share bytes.
    hdlm_st_tensor **order = hdlm_malloc(((size_t)st->n_tensors + 1) * sizeof *order);
    for (int i = 0; i < st->n_tensors; i++) order[i] = &st->tensors[i];
    qsort(order, (size_t)st->n_tensors, sizeof *order, compare_begin);
    // Zero-size tensors hold no bytes: they overlap nothing wherever their offsets point.
    int kept = 0;
    for (int i = 0; i < st->n_tensors; i++)
        if (order[i]->end > order[i]->begin) order[kept++] = order[i];
    for (int i = 1; i < kept && rc == 0; i++)
        if (order[i]->begin < order[i - 1]->end)
            rc = HDLM_FAIL("%s: tensors '%s' and '%s' overlap (data_offsets [%zu, %zu] and [%zu, %zu])", p,
                           order[i - 1]->name, order[i]->name, order[i - 1]->begin, order[i - 1]->end,
                           order[i]->begin, order[i]->end);
    free(order);
    return rc;
}

int hdlm_safetensors_open(hdlm_safetensors **out, const char *path) {
    *out = NULL;
    char *buf;
    size_t len;
    HDLM_TRY(hdlm_read_file(path, &buf, &len));
    hdlm_safetensors *st = hdlm_calloc(1, sizeof *st);
    st->path = hdlm_strdup(path);
    int rc = 0;
    uint64_t header = 0;
    if (len < 8) rc = HDLM_FAIL("%s: %zu bytes, too short for a safetensors file (8-byte header length)", path, len);
    else {
        header = hdlm_load_le((const uint8_t *)buf, 8);
        if (header < 2 || header > ST_HEADER_MAX || header > len - 8)
            rc = HDLM_FAIL("%s: header length %llu is impossible (file has %zu bytes after the 8-byte length, limit "
                           "%u)", path, (unsigned long long)header, len - 8, ST_HEADER_MAX);
    }
    st->file = buf;
    if (rc == 0) {
        st->size = len - 8 - (size_t)header;
        st->data = (unsigned char *)buf + 8 + header;
        rc = parse_header(st, buf + 8, (size_t)header);
    }
    if (rc != 0) {
        hdlm_safetensors_close(st);
        return -1;
    }
    *out = st;
    return 0;
}

static float half_to_float(uint16_t h) {
    int exp = h >> 10 & 0x1f, mant = h & 0x3ff;
    float v = exp == 0 ? ldexpf((float)mant, -24) : exp == 31 ? (mant ? NAN : INFINITY)
                                                              : ldexpf((float)(mant | 0x400), exp - 25);
    return h & 0x8000 ? -v : v;
}

void hdlm_safetensors_tensor_f32(const hdlm_safetensors *st, const hdlm_st_tensor *t, float *out) {
    const unsigned char *src = st->data + t->begin;
    size_t n = (t->end - t->begin) / dtype_sizes[t->dtype];
    if (t->dtype == HDLM_ST_F32) {
        memcpy(out, src, n * sizeof(float));
        return;
    }
    for (size_t i = 0; i < n; i++) {
        uint16_t h = (uint16_t)(src[2 * i] | src[2 * i + 1] << 8);
        if (t->dtype == HDLM_ST_F16) out[i] = half_to_float(h);
        else {
            uint32_t bits = (uint32_t)h << 16;   // bf16 = the top half of an fp32
            memcpy(&out[i], &bits, sizeof bits);
        }
    }
}

static bool same_shape(const hdlm_st_tensor *t, const int64_t *shape, int ndim) {
    if (t->ndim != ndim) return false;
    for (int k = 0; k < ndim; k++)
        if (t->shape[k] != shape[k]) return false;
    return true;
}

static void shape_text(char *buf, size_t n, const int64_t *shape, int ndim) {
    size_t at = (size_t)snprintf(buf, n, "[");
    for (int k = 0; k < ndim && at < n; k++) at += (size_t)snprintf(buf + at, n - at, k ? ", %lld" : "%lld",
                                                                     (long long)shape[k]);
    if (at < n) snprintf(buf + at, n - at, "]");
}

// The rotary buffer of the file must be the one the configuration gives (another head size or base otherwise).
static int verify_inv_freq(const hdlm_safetensors *st, const hdlm_st_tensor *t, const hdlm_model *m) {
    const hdlm_tensor *mt = hdlm_model_find_tensor(m, "rotary_emb.inv_freq");
    HDLM_ASSERT(mt, "model without rotary_emb.inv_freq");
    HDLM_CHECK(same_shape(t, mt->shape, mt->ndim),
               "%s: tensor '%s' has %lld entries, the model's has %lld (another head size)", st->path, t->name,
               t->ndim == 1 ? (long long)t->shape[0] : -1LL, (long long)mt->shape[0]);
    float *file = hdlm_malloc(mt->numel * sizeof(float)), *want = hdlm_malloc(mt->numel * sizeof(float));
    hdlm_safetensors_tensor_f32(st, t, file);
    hdlm_rotary_inv_freq(want, 2 * (int)mt->numel);
    // bf16 / fp16 files round the buffer: allow their precision.
    double tol = t->dtype == HDLM_ST_F32 ? 1e-6 : t->dtype == HDLM_ST_BF16 ? 8e-3 : 1e-3;
    int rc = 0;
    for (size_t i = 0; i < mt->numel && rc == 0; i++)
        if (!(fabs((double)file[i] - want[i]) <= tol * fabs((double)want[i])))
            rc = HDLM_FAIL("%s: tensor '%s'[%zu] = %g, the model's configuration gives %g (another rotary base or "
                           "head size)", st->path, t->name, i, (double)file[i], (double)want[i]);
    free(file);
    free(want);
    return rc;
}

int hdlm_safetensors_load_model(const hdlm_safetensors *st, hdlm_model *m, const char *prefix) {
    size_t plen = prefix ? strlen(prefix) : 0;
    bool *seen = hdlm_calloc((size_t)m->n_tensors, sizeof *seen);
    int rc = 0;
    char have[128], want[128];
    for (int i = 0; i < st->n_tensors && rc == 0; i++) {
        const hdlm_st_tensor *t = &st->tensors[i];
        if (plen && strncmp(t->name, prefix, plen) != 0) {
            rc = HDLM_FAIL("%s: unexpected tensor '%s' (does not start with the prefix '%s')", st->path, t->name,
                           prefix);
            break;
        }
        const char *key = t->name + plen;
        const hdlm_tensor *mt = hdlm_model_find_tensor(m, key);
        if (!mt) {
            rc = HDLM_FAIL("%s: unexpected tensor '%s': the %s model has no such parameter", st->path, t->name,
                           hdlm_family_name(m->config.family));
        } else if (!mt->trainable) {
            rc = verify_inv_freq(st, t, m);
        } else if (!same_shape(t, mt->shape, mt->ndim)) {
            shape_text(have, sizeof have, t->shape, t->ndim);
            shape_text(want, sizeof want, mt->shape, mt->ndim);
            rc = HDLM_FAIL("%s: tensor '%s' has shape %s, the model expects %s", st->path, t->name, have, want);
        } else {
            hdlm_safetensors_tensor_f32(st, t, m->params + mt->offset);
            seen[mt - m->tensors] = true;
        }
    }
    int missing = 0;
    const char *first = NULL;
    for (int i = 0; i < m->n_tensors && rc == 0; i++)
        if (m->tensors[i].trainable && !seen[i]) {
            if (!first) first = m->tensors[i].name;
            missing++;
        }
    if (rc == 0 && missing)
        rc = HDLM_FAIL("%s: missing tensor '%s%s' (%d of the model's %s tensors are missing)", st->path,
                       plen ? prefix : "", first, missing, hdlm_family_name(m->config.family));
    free(seen);
    return rc;
}

int hdlm_safetensors_write_model(const char *path, const hdlm_model *m, const float *weights, const char *prefix,
                                 const char *config_yaml) {
    cJSON *root = cJSON_CreateObject(), *meta = cJSON_AddObjectToObject(root, "__metadata__");
    cJSON_AddStringToObject(meta, "format", "pt");
    if (config_yaml) cJSON_AddStringToObject(meta, "hdlm_config_yaml", config_yaml);
    size_t at = 0;
    char key[512];
    for (int i = 0; i < m->n_tensors; i++) {
        const hdlm_tensor *t = &m->tensors[i];
        if (!t->trainable) continue;
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "dtype", "F32");
        cJSON *shape = cJSON_AddArrayToObject(e, "shape"), *offs = cJSON_AddArrayToObject(e, "data_offsets");
        for (int k = 0; k < t->ndim; k++) cJSON_AddItemToArray(shape, cJSON_CreateNumber(t->shape[k]));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)at));
        at += t->numel * sizeof(float);
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)at));
        snprintf(key, sizeof key, "%s%s", prefix ? prefix : "", t->name);
        cJSON_AddItemToObject(root, key, e);
    }
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    // The data starts 8-byte aligned (header padded with spaces), as the format's own writer does.
    size_t hlen = strlen(json), padded = (hlen + 7) / 8 * 8;
    unsigned char len_bytes[8];
    for (int k = 0; k < 8; k++) len_bytes[k] = (unsigned char)((uint64_t)padded >> (8 * k));
    hdlm_atomic_file out;
    if (hdlm_atomic_open(&out, path) != 0) {
        free(json);
        return -1;
    }
    hdlm_atomic_write(&out, len_bytes, 8);
    hdlm_atomic_write(&out, json, hlen);
    hdlm_atomic_write(&out, "        ", padded - hlen);
    free(json);
    for (int i = 0; i < m->n_tensors; i++) {
        const hdlm_tensor *t = &m->tensors[i];
        if (t->trainable) hdlm_atomic_write(&out, weights + t->offset, t->numel * sizeof(float));
    }
    return hdlm_atomic_commit(&out);
}

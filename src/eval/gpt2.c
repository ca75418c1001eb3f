// The GPT-2 judge (method §9.3-§9.4): loading HF GPT2Model safetensors and the forward pass on the layers.h kernels.
#include "hdlm/gpt2.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "hdlm/common.h"
#include "model/layers.h"
#include "hdlm/mask.h"
#include "hdlm/model_io.h"

// The tensor named `key` (with or without the "transformer." prefix), or NULL.
static const hdlm_st_tensor *find_tensor(const hdlm_safetensors *st, const char *key) {
    char prefixed[256];
    snprintf(prefixed, sizeof prefixed, "transformer.%s", key);
    for (int i = 0; i < st->n_tensors; i++)
        if (strcmp(st->tensors[i].name, key) == 0 || strcmp(st->tensors[i].name, prefixed) == 0)
            return &st->tensors[i];
    return NULL;
}

// Copies tensor `key` (shape rows x cols, or a vector when cols == 0) into dst as fp32; transposed: the file holds
// [cols, rows] (Conv1D) and dst gets [rows, cols].
static int read_tensor(const hdlm_safetensors *st, const char *key, int64_t rows, int64_t cols, int transposed,
                       float *dst) {
    const hdlm_st_tensor *t = find_tensor(st, key);
    HDLM_CHECK(t, "%s: tensor '%s' is missing (not a GPT-2 judge?)", st->path, key);
    int64_t r = transposed ? cols : rows, c = transposed ? rows : cols;
    int ok = cols == 0 ? (t->ndim == 1 && t->shape[0] == rows) : (t->ndim == 2 && t->shape[0] == r && t->shape[1] == c);
    if (!ok) {
        char got[64], want[64];
        int k = snprintf(got, sizeof got, "[%lld", (long long)t->shape[0]);
        for (int i = 1; i < t->ndim && k < 40; i++)
            k += snprintf(got + k, sizeof got - k, ", %lld", (long long)t->shape[i]);
        snprintf(got + k, sizeof got - k, "]");
        if (cols) snprintf(want, sizeof want, "[%lld, %lld]", (long long)r, (long long)c);
        else snprintf(want, sizeof want, "[%lld]", (long long)rows);
        return HDLM_FAIL("%s: tensor '%s' has shape %s, expected %s", st->path, key, got, want);
    }
    size_t count = (size_t)rows * (size_t)(cols ? cols : 1);
    float *tmp = transposed ? hdlm_malloc(count * sizeof(float)) : dst;
    hdlm_safetensors_tensor_f32(st, t, tmp);
    if (transposed) {   // tmp is [cols, rows]
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = 0; j < cols; j++) dst[i * cols + j] = tmp[j * rows + i];
        free(tmp);
    }
    return 0;
}

static int config_heads(const char *config_path, int *heads) {
    char *text;
    size_t len;
    HDLM_TRY(hdlm_read_file(config_path, &text, &len));
    cJSON *json = cJSON_Parse(text);
    free(text);
    HDLM_CHECK(json, "%s: not valid JSON", config_path);
    const cJSON *n_head = cJSON_GetObjectItemCaseSensitive(json, "n_head");
    int ok = cJSON_IsNumber(n_head) && n_head->valuedouble >= 1 && n_head->valuedouble <= 1024 &&
             n_head->valuedouble == (int)n_head->valuedouble;
    if (ok) *heads = (int)n_head->valuedouble;
    cJSON_Delete(json);
    HDLM_CHECK(ok, "%s: field 'n_head' must be a positive integer", config_path);
    return 0;
}

static int load_from(hdlm_gpt2 *g, const hdlm_safetensors *st, const char *config_path, int heads) {
    const hdlm_st_tensor *wte = find_tensor(st, "wte.weight"), *wpe = find_tensor(st, "wpe.weight");
    HDLM_CHECK(wte && wte->ndim == 2, "%s: tensor 'wte.weight' [V, d] is missing (not a GPT-2 judge?)", st->path);
    HDLM_CHECK(wpe && wpe->ndim == 2 && wpe->shape[1] == wte->shape[1],
               "%s: tensor 'wpe.weight' [n_ctx, %lld] is missing or misshapen", st->path, (long long)wte->shape[1]);
    HDLM_CHECK(wte->shape[0] <= 1 << 24 && wte->shape[1] <= 1 << 16 && wpe->shape[0] <= 1 << 16,
               "%s: implausible GPT-2 sizes (V %lld, d %lld, n_ctx %lld)", st->path, (long long)wte->shape[0],
               (long long)wte->shape[1], (long long)wpe->shape[0]);
    g->vocab = (int)wte->shape[0], g->d = (int)wte->shape[1], g->n_ctx = (int)wpe->shape[0];
    char key[128];
    for (g->n_layer = 0;; g->n_layer++) {
        snprintf(key, sizeof key, "h.%d.ln_1.weight", g->n_layer);
        if (!find_tensor(st, key)) break;
    }
    HDLM_CHECK(g->n_layer > 0, "%s: no layer tensors 'h.0.*' found", st->path);
    if (heads <= 0 && config_path) HDLM_TRY(config_heads(config_path, &heads));
    if (heads <= 0) heads = g->d / 64;
    HDLM_CHECK(heads > 0 && g->d % heads == 0, "%s: %d heads do not divide the width d = %d (set the head count)",
               st->path, heads, g->d);
    g->n_head = heads;
    size_t d = (size_t)g->d;
    size_t per_layer = 2 * d + 3 * d * d + 3 * d + d * d + d + 2 * d + 4 * d * d + 4 * d + 4 * d * d + d;
    size_t total = (size_t)g->vocab * d + (size_t)g->n_ctx * d + 2 * d + (size_t)g->n_layer * per_layer;
    g->params = hdlm_malloc(total * sizeof(float));
    g->layers = hdlm_calloc((size_t)g->n_layer, sizeof(hdlm_gpt2_layer));
    float *p = g->params;
#define TAKE(dst, name, rows, cols, transposed)                                                                       \
    do {                                                                                                               \
        HDLM_TRY(read_tensor(st, name, rows, cols, transposed, p));                                                    \
        (dst) = p;                                                                                                     \
        p += (size_t)(rows) * (size_t)((cols) != 0 ? (cols) : 1);                                                      \
    } while (0)
    int64_t D = g->d;
    TAKE(g->wte, "wte.weight", g->vocab, D, 0);
    TAKE(g->wpe, "wpe.weight", g->n_ctx, D, 0);
    TAKE(g->lnf_w, "ln_f.weight", D, 0, 0);
    TAKE(g->lnf_b, "ln_f.bias", D, 0, 0);
    for (int l = 0; l < g->n_layer; l++) {
        hdlm_gpt2_layer *y = &g->layers[l];
#define LAYER_TAKE(dst, suffix, rows, cols, transposed)                                                               \
    do {                                                                                                               \
        snprintf(key, sizeof key, "h.%d.%s", l, suffix);                                                               \
        TAKE(dst, key, rows, cols, transposed);                                                                        \
    } while (0)
        LAYER_TAKE(y->ln1_w, "ln_1.weight", D, 0, 0);
        LAYER_TAKE(y->ln1_b, "ln_1.bias", D, 0, 0);
        LAYER_TAKE(y->qkv_w, "attn.c_attn.weight", 3 * D, D, 1);
        LAYER_TAKE(y->qkv_b, "attn.c_attn.bias", 3 * D, 0, 0);
        LAYER_TAKE(y->proj_w, "attn.c_proj.weight", D, D, 1);
        LAYER_TAKE(y->proj_b, "attn.c_proj.bias", D, 0, 0);
        LAYER_TAKE(y->ln2_w, "ln_2.weight", D, 0, 0);
        LAYER_TAKE(y->ln2_b, "ln_2.bias", D, 0, 0);
        LAYER_TAKE(y->fc_w, "mlp.c_fc.weight", 4 * D, D, 1);
        LAYER_TAKE(y->fc_b, "mlp.c_fc.bias", 4 * D, 0, 0);
        LAYER_TAKE(y->fc2_w, "mlp.c_proj.weight", D, 4 * D, 1);
        LAYER_TAKE(y->fc2_b, "mlp.c_proj.bias", D, 0, 0);
#undef LAYER_TAKE
    }
#undef TAKE
    HDLM_ASSERT(p == g->params + total, "GPT-2 parameter count");
    return 0;
}

int hdlm_gpt2_load(hdlm_gpt2 *g, const char *path, int heads) {
    memset(g, 0, sizeof *g);
    struct stat sb;
    HDLM_CHECK(stat(path, &sb) == 0, "%s: judge weights not found (a .safetensors file or a directory holding "
               "model.safetensors)", path);
    size_t n = strlen(path) + 32;
    char *weights = hdlm_malloc(n), *config = hdlm_malloc(n);
    int has_config;
    if (S_ISDIR(sb.st_mode)) {
        snprintf(weights, n, "%s/model.safetensors", path);
        snprintf(config, n, "%s/config.json", path);
    } else {
        snprintf(weights, n, "%s", path);
        const char *slash = strrchr(path, '/');
        int dir_len = slash ? (int)(slash - path) : 1;
        snprintf(config, n, "%.*s/config.json", dir_len, slash ? path : ".");
    }
    has_config = stat(config, &sb) == 0;
    hdlm_safetensors *st = NULL;
    int rc = hdlm_safetensors_open(&st, weights);
    if (rc == 0) rc = load_from(g, st, has_config ? config : NULL, heads);
    if (st) hdlm_safetensors_close(st);
    free(weights);
    free(config);
    if (rc != 0) hdlm_gpt2_free(g);
    return rc;
}

void hdlm_gpt2_free(hdlm_gpt2 *g) {
    free(g->params);
    free(g->layers);
    memset(g, 0, sizeof *g);
}

int hdlm_gpt2_forward(const hdlm_gpt2 *g, const uint32_t *ids, int len, float *hidden, double *nll) {
    HDLM_CHECK(len >= 1 && len <= g->n_ctx, "GPT-2 judge: sequence length %d outside [1, %d] (its n_ctx)", len,
               g->n_ctx);
    for (int t = 0; t < len; t++)
        HDLM_CHECK(ids[t] < (uint32_t)g->vocab, "GPT-2 judge: token id %u at position %d outside its vocabulary "
                   "[0, %d)", ids[t], t, g->vocab);
    int d = g->d, hd = d / g->n_head;
    size_t nd = (size_t)len * d;
    float *x = hdlm_malloc(nd * sizeof(float)), *a = hdlm_malloc(nd * sizeof(float));
    float *big = hdlm_malloc(4 * nd * sizeof(float)), *big2 = hdlm_malloc(4 * nd * sizeof(float));
    float *lse = hdlm_malloc((size_t)g->n_head * len * sizeof(float));
    for (int t = 0; t < len; t++)
        for (int i = 0; i < d; i++) x[(size_t)t * d + i] = g->wte[(size_t)ids[t] * d + i] + g->wpe[(size_t)t * d + i];
    hdlm_attn_mask mask = hdlm_mask_causal(len);
    for (int l = 0; l < g->n_layer; l++) {
        const hdlm_gpt2_layer *y = &g->layers[l];
        hdlm_layernorm_bias_forward(a, x, y->ln1_w, y->ln1_b, len, d);
        hdlm_linear_forward(big, a, y->qkv_w, y->qkv_b, len, d, 3 * d);
        hdlm_attention_forward(a, lse, NULL, big, &mask, 1, len, g->n_head, hd, 0.0f, 0);
        hdlm_linear_forward(big, a, y->proj_w, y->proj_b, len, d, d);
        for (size_t i = 0; i < nd; i++) x[i] += big[i];
        hdlm_layernorm_bias_forward(a, x, y->ln2_w, y->ln2_b, len, d);
        hdlm_linear_forward(big, a, y->fc_w, y->fc_b, len, d, 4 * d);
        hdlm_gelu_forward(big2, big, 4 * nd);
        hdlm_linear_forward(a, big2, y->fc2_w, y->fc2_b, len, 4 * d, d);
        for (size_t i = 0; i < nd; i++) x[i] += a[i];
    }
    hdlm_layernorm_bias_forward(a, x, g->lnf_w, g->lnf_b, len, d);
    if (hidden) memcpy(hidden, a, nd * sizeof(float));
    if (nll) {
        // Tied head over chunks of positions (a [len, V] block would be 200 MB for gpt2-large at n_ctx).
        enum { CHUNK = 64 };
        float *logits = hdlm_malloc((size_t)CHUNK * g->vocab * sizeof(float));
        nll[0] = 0.0;
        for (int t0 = 1; t0 < len; t0 += CHUNK) {
            int rows = len - t0 < CHUNK ? len - t0 : CHUNK;
            hdlm_linear_forward(logits, a + (size_t)(t0 - 1) * d, g->wte, NULL, rows, d, g->vocab);
#pragma omp parallel for schedule(static)
            for (int r = 0; r < rows; r++) {
                const float *row = logits + (size_t)r * g->vocab;
                double mx = -INFINITY, sum = 0.0;
                for (int v = 0; v < g->vocab; v++) mx = row[v] > mx ? row[v] : mx;
                for (int v = 0; v < g->vocab; v++) sum += exp(row[v] - mx);
                nll[t0 + r] = mx + log(sum) - row[ids[t0 + r]];
            }
        }
        free(logits);
    }
    free(x), free(a), free(big), free(big2), free(lse);
    return 0;
}

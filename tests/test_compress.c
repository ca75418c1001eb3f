// Lossless compression (docs/compression.md): the rANS coder on random streams, the quantiser against the float64
// softmax, the codec record's checks, and round trips of whole chunk groups with a context-dependent toy network and
// a real model — every budget, both orders, chunks that end early, 1 and 2 threads — whose sizes match the ideal code
// length and the ardm-order estimator's exact value for the same order and policy.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "harness.h"
#include "hdlm/common.h"
#include "hdlm/compress.h"
#include "hdlm/likelihood.h"
#include "hdlm/model.h"
#include "hdlm/rng.h"

static void test_rans_round_trip(void **state) {
    (void)state;
    hdlm_rng rng;
    hdlm_rng_init(&rng, 7);
    enum { N = 4000, K = 37 };
    const int bits[] = {16, 24, 31};
    for (int t = 0; t < 3; t++) {
        int n = bits[t];
        uint32_t freq[K], start[K + 1] = {0};
        uint64_t rest = (1ull << n) - K;
        for (int k = 0; k < K; k++) {   // skewed: a few large, many tiny
            uint64_t f = k == K - 1 ? rest : (uint64_t)(rest * pow(0.5, k + 1));
            freq[k] = (uint32_t)(1 + f), rest -= f;
            start[k + 1] = start[k] + freq[k];
        }
        assert_int_equal((uint64_t)start[K], 1ull << n);
        uint32_t sym[N];
        double ideal = 0;
        for (int i = 0; i < N; i++) {   // symbols drawn from the table itself
            uint32_t u = (uint32_t)(hdlm_rng_u64(&rng) & ((1ull << n) - 1)), k = 0;
            while (start[k + 1] <= u) k++;
            sym[i] = k;
            ideal += n - log2(freq[k]);
        }
        hdlm_rans_encoder e;
        hdlm_rans_encoder_init(&e);
        for (int i = N - 1; i >= 0; i--) hdlm_rans_put(&e, start[sym[i]], freq[sym[i]], n);
        uint32_t *w;
        size_t nw;
        hdlm_rans_encoder_finish(&e, &w, &nw);
        assert_true(32.0 * nw <= ideal + 96 && 32.0 * nw >= ideal);   // the ideal length + state flush + last word
        hdlm_rans_decoder d;
        assert_int_equal(hdlm_rans_decoder_init(&d, w, nw), 0);
        for (int i = 0; i < N; i++) {
            uint32_t u = hdlm_rans_peek(&d, n), k = 0;
            while (start[k + 1] <= u) k++;
            assert_int_equal(k, sym[i]);
            assert_int_equal(hdlm_rans_advance(&d, start[k], freq[k], n), 0);
        }
        assert_true(hdlm_rans_decoder_done(&d));
        // a truncated stream never passes for a whole one
        hdlm_rans_decoder_init(&d, w, nw - 1);
        int failed = 0;
        for (int i = 0; i < N && !failed; i++) {
            uint32_t u = hdlm_rans_peek(&d, n), k = 0;
            while (start[k + 1] <= u) k++;
            failed = hdlm_rans_advance(&d, start[k], freq[k], n) != 0;
        }
        assert_true(failed || !hdlm_rans_decoder_done(&d));
        assert_int_equal(hdlm_rans_decoder_init(&d, w, 1), -1);
        free(w);
    }
}

// Frequencies against the float64 softmax: every symbol >= 1, the sum exact, each within one unit of 1 + q·units
// (the argmax also gets the leftover, at most `width` units).
static void test_quantizer(void **state) {
    (void)state;
    enum { W = 50257 };
    float *z = hdlm_malloc(W * sizeof *z);
    uint32_t *f = hdlm_malloc(W * sizeof *f), *g = hdlm_malloc(W * sizeof *g);
    double *work = hdlm_malloc(W * sizeof *work);
    hdlm_rng rng;
    hdlm_rng_init(&rng, 3);
    for (int t = 0; t < 3; t++) {
        for (int c = 0; c < W; c++) z[c] = (float)(t == 2 ? 40 * hdlm_rng_normal(&rng) : 3 * hdlm_rng_normal(&rng));
        if (t == 1) z[17] = z[18] = 30;   // a tie at the top: the first one takes the leftover
        assert_int_equal(hdlm_quantize_softmax(z, W, 31, f, work), 0);
        double mx = -INFINITY, sum = 0;
        for (int c = 0; c < W; c++) mx = fmax(mx, z[c]);
        for (int c = 0; c < W; c++) sum += exp((double)z[c] - mx);
        uint64_t total = 0;
        int best = 0;
        for (int c = 0; c < W; c++) {
            total += f[c];
            if (z[c] > z[best]) best = c;
        }
        assert_int_equal(total, 1ull << 31);
        for (int c = 0; c < W; c++) {
            double want = 1 + exp((double)z[c] - mx) / sum * (double)((1ull << 31) - W);
            assert_true(f[c] >= 1);
            if (c != best) assert_true(fabs(f[c] - want) < 1.0);
            else assert_true(f[c] - want > -1.0 && f[c] - want < W + 1.0);
        }
        if (t == 1) assert_true(f[17] > f[18]);
        assert_int_equal(hdlm_quantize_softmax(z, W, 31, g, work), 0);   // deterministic
        assert_memory_equal(f, g, W * sizeof *f);
    }
    z[5] = NAN;
    assert_int_equal(hdlm_quantize_softmax(z, W, 31, f, work), -1);
    assert_error_contains("logit 5 is nan");
    free(work), free(g), free(f), free(z);
}

// A network whose outputs depend on every visible input token and on the position: a decoder that rebuilt one input
// wrongly would see other frequencies and fail.
static int toy_forward(hdlm_denoiser *d, const uint32_t *tokens, const float *sigma, const hdlm_attn_mask *mask,
                       int batch, int length, const float **out) {
    (void)sigma, (void)mask;
    float **buf = d->ctx;
    int V = d->vocab;
    *buf = hdlm_realloc(*buf, (size_t)batch * length * V * sizeof **buf);
    for (int b = 0; b < batch; b++) {
        uint64_t h = XXH64(tokens + (size_t)b * length, (size_t)length * sizeof *tokens, 0);
        for (int i = 0; i < length; i++)
            for (int y = 0; y < V; y++) {
                uint64_t r = XXH64(&(uint64_t[3]){h, (uint64_t)i, (uint64_t)y}, 24, 1);
                (*buf)[((size_t)b * length + i) * V + y] = (float)(r % 1000) / 150.0f;
            }
    }
    *out = *buf;
    return 0;
}

static hdlm_model *small_model(int L) {
    hdlm_model_config mc = {HDLM_FAMILY_EPSILON, 32, 1, 2, 2, 32, 300, L, 0.0f, 0.01f, HDLM_ROTARY_EXACT};
    hdlm_model *m;
    assert_int_equal(hdlm_model_create(&m, &mc), 0);
    hdlm_model_init(m, 5);
    hdlm_rng rng;
    hdlm_rng_init(&rng, 11);
    for (size_t i = 0; i < m->n_params; i++) m->params[i] += 0.3f * (float)hdlm_rng_normal(&rng);
    return m;
}

// Encodes and decodes `chunks` chunks (n_tokens each) of random tokens; returns the coded bits; *ideal the ideal ones.
static double round_trip(const hdlm_codec *c, hdlm_denoiser *d, const int *n_tokens, int chunks, uint64_t seed,
                         double *ideal, uint64_t *digest) {
    int L = c->length;
    uint32_t *x = hdlm_malloc((size_t)chunks * L * sizeof *x), *back = hdlm_malloc((size_t)chunks * L * sizeof *x);
    hdlm_rng rng;
    hdlm_rng_init(&rng, seed);
    for (int g = 0; g < chunks; g++)
        for (int i = 0; i < L; i++) x[(size_t)g * L + i] = i < n_tokens[g] ? hdlm_rng_u32(&rng) % (uint32_t)(c->vocab - 1) : 0;
    uint32_t *words;
    size_t n_words;
    *ideal = 0;
    assert_int_equal(hdlm_codec_encode(c, d, x, n_tokens, chunks, &words, &n_words, ideal), 0);
    assert_int_equal(hdlm_codec_decode(c, d, words, n_words, n_tokens, chunks, back), 0);
    for (int g = 0; g < chunks; g++)
        assert_memory_equal(back + (size_t)g * L, x + (size_t)g * L, (size_t)n_tokens[g] * sizeof *x);
    *digest = XXH64(words, n_words * sizeof *words, 0);
    if (n_words > 2) {   // a corrupt word: the stream no longer decodes whole, or decodes to other tokens
        words[n_words / 2] ^= 0x40000u;
        int rc = hdlm_codec_decode(c, d, words, n_words, n_tokens, chunks, back);
        bool same = true;
        for (int g = 0; g < chunks; g++)
            same &= memcmp(back + (size_t)g * L, x + (size_t)g * L, (size_t)n_tokens[g] * sizeof *x) == 0;
        assert_true(rc != 0 || !same);
        assert_int_equal(hdlm_codec_decode(c, d, words, n_words - 1, n_tokens, chunks, back), -1);   // truncated
    }
    free(words);
    free(back);
    free(x);
    return 32.0 * n_words;
}

static void test_codec_round_trips(void **state) {
    (void)state;
    enum { L = 24 };
    float *toy_buf = NULL;
    hdlm_model *m = small_model(L);
    hdlm_denoiser toy = {m->config.vocab, toy_forward, &toy_buf, NULL, NULL, NULL}, net = hdlm_denoiser_model(m);
    hdlm_denoiser *nets[2] = {&toy, &net};
    const int budgets[] = {1, 5, L};
    const int shapes[][4] = {{L, L, L, L}, {L, 7, 1, L}, {1, 0, 0, 0}, {L - 1, 0, 0, 0}};
    const int shape_chunks[] = {4, 4, 1, 1};
    int policy[L];
    for (int b = 0; b < 3; b++)
        for (int ltr = 0; ltr < 2; ltr++) {
            hdlm_ardm_policy_naive(L, budgets[b], policy);
            hdlm_codec c;
            assert_int_equal(hdlm_codec_make(&c, m, budgets[b], policy, ltr, 99), 0);
            for (int n = 0; n < 2; n++)
                for (int s = 0; s < 4; s++) {
                    double ideal, bits;
                    uint64_t digest, digest1;
                    bits = round_trip(&c, nets[n], shapes[s], shape_chunks[s], 100 + s, &ideal, &digest);
                    // the size is the ideal code length plus at most 96 bits per group (state flush, last word)
                    assert_true(bits >= ideal && bits <= ideal + 96.0);
                    if (n == 1 && s == 1) {   // one thread: the same bytes
                        int threads = omp_get_max_threads();
                        omp_set_num_threads(1);
                        round_trip(&c, nets[n], shapes[s], shape_chunks[s], 100 + s, &ideal, &digest1);
                        omp_set_num_threads(threads);
                        assert_true(digest1 == digest);
                    }
                }
            hdlm_codec_free(&c);
        }
    free(toy_buf);
    hdlm_denoiser_free(&net);
    hdlm_model_free(m);
}

// Encodes `chunks` whole chunks of random tokens (seed): *ideal = the encoder's ideal code length; returns the
// estimator cfg's value on the same chunks, in bits.
static double estimator_bits(const hdlm_codec *c, hdlm_denoiser *net, const hdlm_nelbo_config *cfg, int chunks,
                             uint64_t seed, double *ideal) {
    int L = c->length, n_tokens[8];
    uint32_t *x = hdlm_malloc((size_t)chunks * L * sizeof *x), *words;
    size_t n_words;
    hdlm_rng rng;
    hdlm_rng_init(&rng, seed);
    for (int i = 0; i < chunks * L; i++) x[i] = hdlm_rng_u32(&rng) % (uint32_t)(c->vocab - 1);
    for (int g = 0; g < chunks; g++) n_tokens[g] = L;
    *ideal = 0;
    assert_int_equal(hdlm_codec_encode(c, net, x, n_tokens, chunks, &words, &n_words, ideal), 0);
    free(words);
    double nats = 0;
    for (int g = 0; g < chunks; g++) {
        double nll, var;
        int counted;
        assert_int_equal(hdlm_nelbo_chunk(net, cfg, x + (size_t)g * L, L, (uint64_t)g, &nll, &var, &counted), 0);
        nats += nll;
    }
    free(x);
    return nats / log(2.0);
}

// The ideal code length of the encoder is the ardm-order estimator's exact value for the codec's order and policy
// (nats there, bits here; the quantised frequencies move it by far less than 0.1 %).
static void test_size_matches_the_estimator(void **state) {
    (void)state;
    enum { L = 32, C = 3 };
    hdlm_model *m = small_model(L);
    hdlm_denoiser net = hdlm_denoiser_model(m);
    int policy[8];
    hdlm_ardm_policy_naive(L, 8, policy);
    hdlm_codec c;
    assert_int_equal(hdlm_codec_make(&c, m, 8, policy, false, 5), 0);
    hdlm_nelbo_config cfg = hdlm_nelbo_config_default(false);
    cfg.kind = HDLM_NELBO_ARDM_ORDER, cfg.copies = cfg.rounds = 1, cfg.policy = c.policy, cfg.budget = c.budget;
    cfg.order = c.order;
    double ideal, bound_bits = estimator_bits(&c, &net, &cfg, C, 1, &ideal);
    assert_true(fabs(ideal - bound_bits) < 1e-3 * bound_bits);
    hdlm_codec_free(&c);
    hdlm_denoiser_free(&net);
    hdlm_model_free(m);
}

// The coder's forward with outputs for a few rows only (hdlm_model_input.head_rows) gives those rows' outputs of the
// full forward.
static void test_head_rows_match_the_full_forward(void **state) {
    (void)state;
    enum { L = 20, B = 3 };
    hdlm_model *m = small_model(L);
    int V = m->config.vocab;
    uint32_t x[B * L];
    uint8_t rows[B * L];
    for (int r = 0; r < B * L; r++) x[r] = (uint32_t)(r * 37 % V), rows[r] = r % 7 == 2;
    hdlm_model_input in = {.tokens = x, .batch = B, .length = L};
    assert_int_equal(hdlm_model_forward(m, &in), 0);
    float *full = hdlm_malloc((size_t)B * L * V * sizeof *full);
    memcpy(full, m->out, (size_t)B * L * V * sizeof *full);
    in.head_rows = rows;
    assert_int_equal(hdlm_model_forward(m, &in), 0);
    double worst = 0;
    for (int r = 0; r < B * L; r++)
        for (int y = 0; y < V && rows[r]; y++)
            worst = fmax(worst, fabs(m->out[(size_t)r * V + y] - full[(size_t)r * V + y]));
    assert_true(worst < 1e-5);
    in.training = true;
    assert_int_equal(hdlm_model_forward(m, &in), -1);
    assert_error_contains("head_rows is for inference");
    free(full);
    hdlm_model_free(m);
}

// The next-token codec of an AR model: round trips (whole and short chunks, 1 and 3 chunks a group) at the exact
// AR likelihood (the ar estimator: one causal forward; the codec's cached rows agree up to rounding).
static void test_next_token_codec(void **state) {
    (void)state;
    enum { L = 24, C = 3 };
    hdlm_model *m = small_model(L);
    hdlm_denoiser net = hdlm_denoiser_model(m);
    hdlm_codec c;
    assert_int_equal(hdlm_codec_make_next_token(&c, m), 0);
    assert_true(c.next_token && c.budget == L);
    const int shapes[][C] = {{L, L, L}, {L, 5, 1}};
    for (int s = 0; s < 2; s++) {
        double ideal, bits;
        uint64_t digest;
        bits = round_trip(&c, &net, shapes[s], C, 40 + s, &ideal, &digest);
        assert_true(bits >= ideal && bits <= ideal + 96.0);
    }
    hdlm_nelbo_config cfg = hdlm_nelbo_config_default(false);
    cfg.kind = HDLM_NLL_AR;
    double ideal, nll_bits = estimator_bits(&c, &net, &cfg, C, 4, &ideal);
    assert_true(fabs(ideal - nll_bits) < 1e-3 * ideal);
    hdlm_codec_free(&c);
    hdlm_denoiser_free(&net);
    hdlm_model_free(m);
}

static void test_codec_record(void **state) {
    (void)state;
    enum { L = 16 };
    hdlm_model *m = small_model(L);
    int policy[4];
    hdlm_ardm_policy_naive(L, 4, policy);
    hdlm_codec c, back;
    assert_int_equal(hdlm_codec_make(&c, m, 4, policy, false, 3), 0);
    char path[4200];
    snprintf(path, sizeof path, "%s/codec.json", test_tmp_dir("compress"));
    assert_int_equal(hdlm_codec_save(&c, path), 0);
    assert_int_equal(hdlm_codec_load(&back, path), 0);
    assert_true(hdlm_codec_hash(&back) == hdlm_codec_hash(&c) && back.model_hash == c.model_hash);
    assert_memory_equal(back.order, c.order, L * sizeof *c.order);
    hdlm_codec_free(&back);
    // an edited record: a repeated position in the order, a policy that goes back, a changed entry (hash)
    struct {
        const char *from, *to, *message;
    } edits[] = {
        {"\"order\":[", "\"order\":[0,", "field 'order' must be an array of 16 integers"},
        {"\"policy\":[0,", "\"policy\":[1,", "the policy starts at step 0"},
        {"\"budget\":4", "\"budget\":40", "field 'budget' must be an integer in [1, 16]"},
        {"\"format\":\"hdlm-codec\"", "\"format\":\"other\"", "not a codec record"},
    };
    char *text;
    size_t len;
    assert_int_equal(hdlm_read_file(path, &text, &len), 0);
    for (size_t e = 0; e < sizeof edits / sizeof edits[0]; e++) {
        char *at = strstr(text, edits[e].from), edited[8192], bad[4300];
        assert_non_null(at);
        snprintf(edited, sizeof edited, "%.*s%s%s", (int)(at - text), text, edits[e].to, at + strlen(edits[e].from));
        snprintf(bad, sizeof bad, "%s.bad", path);
        FILE *f = fopen(bad, "w");
        fputs(edited, f);
        fclose(f);
        assert_int_equal(hdlm_codec_load(&back, bad), -1);
        assert_error_contains(edits[e].message);
    }
    // a swapped pair in the order is still a permutation: the stored hash catches it
    char *o = strstr(text, "\"order\":[") + 9, edited[8192], bad[4300];
    char *comma = strchr(o, ','), *comma2 = strchr(comma + 1, ',');
    snprintf(edited, sizeof edited, "%.*s%.*s,%.*s%s", (int)(o - text), text, (int)(comma2 - comma - 1), comma + 1,
             (int)(comma - o), o, comma2);
    snprintf(bad, sizeof bad, "%s.bad", path);
    FILE *f = fopen(bad, "w");
    fputs(edited, f);
    fclose(f);
    assert_int_equal(hdlm_codec_load(&back, bad), -1);
    assert_error_contains("codec_hash does not match");
    free(text);
    hdlm_codec_free(&c);
    hdlm_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rans_round_trip),
        cmocka_unit_test(test_quantizer),
        cmocka_unit_test(test_codec_round_trips),
        cmocka_unit_test(test_size_matches_the_estimator),
        cmocka_unit_test(test_head_rows_match_the_full_forward),
        cmocka_unit_test(test_next_token_codec),
        cmocka_unit_test(test_codec_record),
    };
    return cmocka_run_group_tests_name("compress", tests, NULL, NULL);
}

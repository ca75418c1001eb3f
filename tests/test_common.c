// Errors, the counter-based RNG and the attention-mask rules (method §3.2).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/vecmath.h"
#include "hdlm/common.h"
#include "model/layers.h"
#include "hdlm/mask.h"
#include "hdlm/rng.h"
#include "harness.h"

static int parse_positive(int value) {
    HDLM_CHECK(value > 0, "field 'width' must be positive, got %d", value);
    return 0;
}

static void test_error_message_names_field_and_place(void **state) {
    (void)state;
    hdlm_clear_error();
    assert_int_equal(parse_positive(3), 0);
    assert_int_equal(parse_positive(-2), -1);
    assert_error_contains("field 'width' must be positive, got -2");
    assert_error_contains("test_common.c:");
}

// Known-answer vectors of the Random123 distribution (kat_vectors, philox4x32_10).
static void test_philox_known_answers(void **state) {
    (void)state;
    uint32_t out[4];
    hdlm_philox4x32(0, 0, 0, out);
    assert_int_equal(out[0], 0x6627e8d5u);
    assert_int_equal(out[1], 0xe169c58du);
    assert_int_equal(out[2], 0xbc57ac4cu);
    assert_int_equal(out[3], 0x9b00dbd8u);
    hdlm_philox4x32(0xffffffffffffffffull, 0xffffffffffffffffull, 0xffffffffffffffffull, out);
    assert_int_equal(out[0], 0x408f276du);
    assert_int_equal(out[1], 0x41c83b0eu);
    assert_int_equal(out[2], 0xa20bc7c6u);
    assert_int_equal(out[3], 0x6d5451fdu);
    // counter = (0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), key = (0xa4093822, 0x299f31d0)
    hdlm_philox4x32(0x299f31d0a4093822ull, 0x0370734413198a2eull, 0x85a308d3243f6a88ull, out);
    assert_int_equal(out[0], 0xd16cfe09u);
    assert_int_equal(out[1], 0x94fdccebu);
    assert_int_equal(out[2], 0x5001e420u);
    assert_int_equal(out[3], 0x24126ea1u);
}

// Uniform draws: mean and variance within 5 standard errors; a stream restarted from its state repeats itself.
static void test_rng_uniform_statistics_and_resume(void **state) {
    (void)state;
    hdlm_rng rng;
    hdlm_rng_init(&rng, hdlm_rng_key(1234, 0, 0, HDLM_RNG_NOISE));
    const int n = 200000;
    double sum = 0, sum2 = 0;
    int buckets[10] = {0};
    for (int i = 0; i < n; i++) {
        float u = hdlm_rng_uniform(&rng);
        assert_true(u >= 0.0f && u < 1.0f);
        sum += u;
        sum2 += (double)u * u;
        buckets[(int)(u * 10)]++;
    }
    double mean = sum / n, var = sum2 / n - mean * mean;
    assert_true(fabs(mean - 0.5) < 5 * sqrt(1.0 / 12 / n));
    assert_true(fabs(var - 1.0 / 12) < 0.002);
    double chi2 = 0;   // 9 degrees of freedom: P(chi2 > 27.9) = 0.001
    for (int b = 0; b < 10; b++) chi2 += pow(buckets[b] - n / 10.0, 2) / (n / 10.0);
    assert_true(chi2 < 27.9);

    hdlm_rng saved = rng;
    uint32_t a = hdlm_rng_u32(&rng), b = hdlm_rng_u32(&rng);
    assert_int_equal(hdlm_rng_u32(&saved), a);
    assert_int_equal(hdlm_rng_u32(&saved), b);
    // Different purposes or ranks give different streams.
    assert_int_not_equal(hdlm_rng_key(1234, 0, 0, HDLM_RNG_NOISE), hdlm_rng_key(1234, 0, 0, HDLM_RNG_DROPOUT));
    assert_int_not_equal(hdlm_rng_key(1234, 0, 0, HDLM_RNG_NOISE), hdlm_rng_key(1234, 1, 0, HDLM_RNG_NOISE));
}

static void test_rng_below_and_shuffle(void **state) {
    (void)state;
    hdlm_rng rng;
    hdlm_rng_init(&rng, 99);
    int counts[3] = {0};
    for (int i = 0; i < 30000; i++) counts[hdlm_rng_below(&rng, 3)]++;
    for (int k = 0; k < 3; k++) assert_true(abs(counts[k] - 10000) < 500);
    uint32_t items[100], seen[100] = {0};
    for (uint32_t i = 0; i < 100; i++) items[i] = i;
    hdlm_rng_shuffle_u32(&rng, items, 100);
    int moved = 0;
    for (uint32_t i = 0; i < 100; i++) {
        seen[items[i]]++;
        moved += items[i] != i;
    }
    for (int i = 0; i < 100; i++) assert_int_equal(seen[i], 1);
    assert_true(moved > 90);
    // Random access: element i is half i % 2 of word (i / 2) % 4 of block i / 8 of the counter_hi = 1 stream.
    for (uint64_t i = 0; i < 40; i++) {
        uint32_t block[4];
        hdlm_philox4x32(5, 1, i / 8, block);
        uint32_t word = block[(i % 8) / 2];
        assert_int_equal(hdlm_rng_u16_at(5, i), i % 2 ? word >> 16 : word & 0xffff);
    }
}

// Dropout keeps u16 >= ⌈p·2¹⁶⌉ exactly when the uniform u16·2⁻¹⁶ >= p, for every 16-bit value.
static void test_dropout_keep_min(void **state) {
    (void)state;
    assert_int_equal(hdlm_dropout_keep_min(0.0f), 0);
    assert_int_equal(hdlm_dropout_keep_min(0.1f), 6554);
    assert_int_equal(hdlm_dropout_keep_min(0.5f), 32768);
    const float ps[] = {0.1f, 0.25f, 0.3f, 1e-6f, 0x1p-16f, 0.99999f};
    for (size_t k = 0; k < sizeof ps / sizeof ps[0]; k++) {
        uint32_t keep_min = hdlm_dropout_keep_min(ps[k]);
        for (uint32_t u = 0; u < 65536; u++)
            if (((float)u * 0x1p-16f >= ps[k]) != (u >= keep_min)) fail_msg("p = %g, u16 = %u", (double)ps[k], u);
    }
}

// The attention's vector exp gives hdlm_expf's bits on non-positive floats: every pattern within 2^16 of the −87.3
// cut-off and of −0 (the denormals' start), a stride through the rest down to −inf; a NaN gives a NaN.
static void check_vec_exp(uint32_t first, uint32_t last, uint32_t stride) {
    for (uint64_t b = first; b <= last; b += (uint64_t)stride * LANES) {
        uint32_t u[LANES];
        for (int l = 0; l < LANES; l++) {
            uint64_t at = b + (uint64_t)l * stride;
            u[l] = (uint32_t)(at <= last ? at : last);
        }
        vecf x;
        float xs[LANES], es[LANES];
        memcpy(&x, u, sizeof x);
        memcpy(xs, u, sizeof xs);
        vecf e = hdlm_vec_exp_nonpositive(x);
        memcpy(es, &e, sizeof es);
        for (int l = 0; l < LANES; l++) {
            float want = hdlm_expf(xs[l]);
            if (isnan(xs[l])) assert_true(isnan(es[l]));
            else if (memcmp(&want, &es[l], sizeof want) != 0)
                fail_msg("exp(%a): vector %a, scalar %a", (double)xs[l], (double)es[l], (double)want);
        }
    }
}

static void test_vec_exp_matches_scalar(void **state) {
    (void)state;
    float cut = -87.3f;
    uint32_t c;
    memcpy(&c, &cut, sizeof c);
    check_vec_exp(c - 65536, c + 65536, 1);
    check_vec_exp(0x80000000u, 0x80010000u, 1);
    check_vec_exp(0x00000000u, 0x00000000u, 1);
    check_vec_exp(0x80000000u, 0xff800000u, 97);    // −0 … −inf
    check_vec_exp(0xff800001u, 0xffffffffu, 4099);   // NaNs
}

// The worked example of method §3.2: simple schedule, L = 8, ω = τ = 3, step 5 (n_set = 2, a_end = 4).
static void test_mask_worked_example(void **state) {
    (void)state;
    hdlm_attn_mask m = {8, 2, 4, HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL, 3, 0};
    static const char *expected[5] = {"11000000", "11000000", "11111000", "11111000", "11111000"};
    for (int i = 0; i < 8; i++) {
        hdlm_key_range r = hdlm_mask_key_range(&m, i);
        for (int j = 0; j < 8; j++) {
            bool want = i < 5 ? expected[i][j] == '1' : false;
            assert_int_equal(hdlm_mask_allowed(&m, i, j), want);
            if (i < 5) assert_int_equal(hdlm_key_range_has(r, j), want);
        }
        assert_int_equal(hdlm_mask_row_fully_masked(&m, i), i >= 5);
        if (i >= 5) assert_int_equal(hdlm_key_range_end(r), 8);
    }
    // context causal: row 0 sees {0}, row 1 sees {0, 1}; block causal: row 2 sees {0,1,2}, row 4 sees {0..4}.
    m.context = HDLM_CONTEXT_CAUSAL;
    assert_true(hdlm_mask_allowed(&m, 0, 0) && !hdlm_mask_allowed(&m, 0, 1) && hdlm_mask_allowed(&m, 1, 1));
    m.block = HDLM_BLOCK_CAUSAL;
    assert_true(hdlm_mask_allowed(&m, 2, 2) && !hdlm_mask_allowed(&m, 2, 3));
    assert_true(hdlm_mask_allowed(&m, 4, 4) && hdlm_mask_allowed(&m, 4, 0));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_error_message_names_field_and_place),
        cmocka_unit_test(test_philox_known_answers),
        cmocka_unit_test(test_dropout_keep_min),
        cmocka_unit_test(test_rng_uniform_statistics_and_resume),
        cmocka_unit_test(test_rng_below_and_shuffle),
        cmocka_unit_test(test_mask_worked_example),
        cmocka_unit_test(test_vec_exp_matches_scalar),
    };
    return cmocka_run_group_tests_name("common", tests, NULL, NULL);
}

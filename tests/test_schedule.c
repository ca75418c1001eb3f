// Hyperschedules (method §2), times (§2.6), masks (§3.2) and step sampling (§2.7), against the vectors of method §12.3.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hdlm/common.h"
#include "hdlm/schedule.h"

static void init(hdlm_schedule *s, hdlm_schedule_type type, int L, int w, int tau) {
    assert_int_equal(hdlm_schedule_init(s, type, L, w, tau, HDLM_SAMPLING_EPS, HDLM_CONTEXT_BLOCK_CAUSAL,
                                        HDLM_BLOCK_FULL), 0);
}

// Checks every step of a schedule against rows written as in method §2.9: one character per position, 'S' settled,
// 'W' worthless, a digit = level of an active position; n_set must be the number of leading 'S'.
static void assert_table(hdlm_schedule_type type, int L, int w, int tau, int k_max, const char *const *rows) {
    hdlm_schedule s;
    init(&s, type, L, w, tau);
    assert_int_equal(s.k_max, k_max);
    hdlm_step st;
    hdlm_step_alloc(&st, L);
    for (int k = 1; k < k_max; k++) {
        assert_int_equal(hdlm_schedule_step(&s, k, &st), 0);
        char got[64];
        for (int i = 0; i < L; i++)
            got[i] = st.cls[i] == HDLM_POS_SETTLED ? 'S' : st.cls[i] == HDLM_POS_WORTHLESS ? 'W' : '0' + st.level[i];
        got[L] = 0;
        if (strcmp(got, rows[k - 1]) != 0) print_error("%s step %d: got %s expected %s\n", hdlm_schedule_type_name(type),
                                                        k, got, rows[k - 1]);
        assert_string_equal(got, rows[k - 1]);
        int n_set = 0;
        while (n_set < L && rows[k - 1][n_set] == 'S') n_set++;
        assert_int_equal(st.n_set, n_set);
    }
    hdlm_step_free(&st);
    hdlm_schedule_free(&s);
}

// The five tables of method §2.9.
static void test_tables_of_method(void **state) {
    (void)state;
    static const char *a[] = {"2WWWWWWW", "12WWWWWW", "012WWWWW", "S012WWWW", "SS012WWW",
                              "SSS012WW", "SSSS012W", "SSSSS012", "SSSSSS01", "SSSSSSS0"};
    assert_table(HDLM_SCHEDULE_SIMPLE, 8, 3, 3, 11, a);
    static const char *b[] = {"222WWWWW", "111WWWWW", "000WWWWW", "SSS222WW", "SSS111WW",
                              "SSS000WW", "SSSSSS22", "SSSSSS11", "SSSSSS00"};
    assert_table(HDLM_SCHEDULE_BLOCK, 8, 3, 3, 10, b);
    static const char *c[] = {"33333333", "22222222", "11111111", "00000000"};
    assert_table(HDLM_SCHEDULE_BLOCK, 8, 8, 4, 5, c);
    static const char *d[] = {"1WWWWW", "01WWWW", "S01WWW", "SS01WW", "SSS01W", "SSSS01", "SSSSS0"};
    assert_table(HDLM_SCHEDULE_SIMPLE, 6, 2, 2, 8, d);
    static const char *e[] = {"1WWWWWWW", "11WWWWWW", "011WWWWW", "0011WWWW", "SS0011WW", "SSSS0011", "SSSSSS00"};
    assert_table(HDLM_SCHEDULE_SIMPLE, 8, 4, 2, 8, e);
}

// Main tuples of method §2.4, including the half-to-even tie (ω=3, τ=2) → (0,0,1), and the rate z.
static void test_simple_main_tuples(void **state) {
    (void)state;
    static const struct { int w, tau, rate, m[8]; } cases[] = {
        {4, 4, 1, {0, 1, 2, 3}}, {4, 8, 1, {0, 2, 5, 7}}, {4, 2, 2, {0, 0, 1, 1}}, {3, 2, 2, {0, 0, 1}},
        {3, 3, 1, {0, 1, 2}},    {3, 6, 1, {0, 2, 5}},    {8, 8, 1, {0, 1, 2, 3, 4, 5, 6, 7}},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        hdlm_schedule s;
        init(&s, HDLM_SCHEDULE_SIMPLE, 16, cases[c].w, cases[c].tau);
        for (int i = 0; i < cases[c].w; i++) assert_int_equal(s.main_tuple[i], cases[c].m[i]);
        assert_int_equal(s.rate, cases[c].rate);
        // z = ⌊(ω-1)/(2(τ-1))⌋ + 1 (method §2.4).
        assert_int_equal(s.rate, (cases[c].w - 1) / (2 * (cases[c].tau - 1)) + 1);
        hdlm_schedule_free(&s);
    }
}

// Block K_max = τ·⌈L/ω⌉ + 1 for several shapes, including a short last block.
static void test_block_k_max(void **state) {
    (void)state;
    static const int shapes[][3] = {{1024, 1024, 1024}, {1024, 1024, 2048}, {1024, 100, 7}, {10, 3, 5}, {5, 8, 2}};
    for (size_t c = 0; c < 5; c++) {
        hdlm_schedule s;
        init(&s, HDLM_SCHEDULE_BLOCK, shapes[c][0], shapes[c][1], shapes[c][2]);
        int blocks = (shapes[c][0] + shapes[c][1] - 1) / shapes[c][1];
        assert_int_equal(s.k_max, shapes[c][2] * blocks + 1);
        hdlm_schedule_free(&s);
    }
}

// Grid vectors of method §12.3 and the per-position times, classes and weights of §2.6.
static void test_time_grid(void **state) {
    (void)state;
    hdlm_schedule s;
    init(&s, HDLM_SCHEDULE_BLOCK, 1024, 1024, 1024);
    assert_true(fabs(hdlm_schedule_delta(&s) - 9.755620723362659e-4) < 1e-18);
    assert_float_equal(hdlm_schedule_level_time(&s, 0), 0.001, 1e-9);
    assert_float_equal(hdlm_schedule_level_time(&s, 1023), 0.999, 1e-6);
    hdlm_schedule_free(&s);
    init(&s, HDLM_SCHEDULE_BLOCK, 1024, 1024, 2048);
    assert_true(fabs(hdlm_schedule_delta(&s) - 4.87542745481192e-4) < 1e-18);
    assert_float_equal(hdlm_schedule_level_time(&s, 2047), 0.999, 1e-6);
    hdlm_schedule_free(&s);
    init(&s, HDLM_SCHEDULE_SIMPLE, 8, 3, 3);
    assert_true(fabs(hdlm_schedule_delta(&s) - 0.499) < 1e-15);
    assert_float_equal(hdlm_schedule_level_time(&s, 1), 0.500, 1e-7);
    assert_float_equal(hdlm_schedule_level_time(&s, 2), 0.999, 1e-7);
    // Step 5 of §2.9 (a): S S 0 1 2 W W W.
    hdlm_step st;
    hdlm_step_alloc(&st, 8);
    assert_int_equal(hdlm_schedule_step(&s, 5, &st), 0);
    static const float t[] = {1e-4f, 1e-4f, 0.001f, 0.5f, 0.999f, 0.9999f, 0.9999f, 0.9999f};
    static const float weight[] = {0.05f, 0.05f, 1, 1, 1, 0.001f, 0.001f, 0.001f};
    static const uint8_t cls[] = {0, 0, 1, 1, 1, 2, 2, 2}, denoise[] = {0, 0, 1, 0, 0, 0, 0, 0};
    for (int i = 0; i < 8; i++) {
        assert_float_equal(st.t[i], t[i], 1e-7);
        assert_float_equal(st.weight[i], weight[i], 0);
        assert_int_equal(st.cls[i], cls[i]);
        assert_int_equal(st.to_denoise[i], denoise[i]);
    }
    assert_true(st.t[2] == (float)hdlm_schedule_active_eps(&s));   // tokens_to_denoise ⇔ t == ε_a exactly
    assert_int_equal(st.n_set, 2);
    assert_int_equal(st.a_end, 4);
    assert_int_equal(st.n_active, 3);
    hdlm_step_free(&st);
    hdlm_schedule_free(&s);
    init(&s, HDLM_SCHEDULE_BLOCK, 8, 8, 2);
    assert_true(fabs(hdlm_schedule_delta(&s) - 0.998) < 1e-15);
    hdlm_schedule_free(&s);
    init(&s, HDLM_SCHEDULE_BLOCK, 8, 8, 4);
    static const double t4[] = {0.001, 0.333667, 0.666333, 0.999};
    for (int l = 0; l < 4; l++) assert_float_equal(hdlm_schedule_level_time(&s, l), t4[l], 1e-6);
    hdlm_schedule_free(&s);
}

static void assert_mask_rows(const hdlm_attn_mask *m, const char *const *rows) {
    int L = m->length;
    uint8_t allowed[64];
    hdlm_mask_expand(m, allowed);
    for (int i = 0; i < L; i++) {
        char got[16];
        for (int j = 0; j < L; j++) got[j] = '0' + allowed[i * L + j];
        got[L] = 0;
        assert_string_equal(got, rows[i]);
        // The compact key range agrees with the expansion for every non-worthless row.
        if (!hdlm_mask_row_fully_masked(m, i)) {
            hdlm_key_range r = hdlm_mask_key_range(m, i);
            for (int j = 0; j < L; j++) assert_int_equal(allowed[i * L + j], hdlm_key_range_has(r, j));
        }
    }
}

// The 8x8 example of method §3.2 (simple ω=τ=3, L=8, step 5) and its causal / block-causal variants.
static void test_mask_of_method(void **state) {
    (void)state;
    hdlm_schedule s;
    init(&s, HDLM_SCHEDULE_SIMPLE, 8, 3, 3);
    hdlm_step st;
    hdlm_step_alloc(&st, 8);
    assert_int_equal(hdlm_schedule_step(&s, 5, &st), 0);
    assert_int_equal(st.mask.n_set, 2);
    assert_int_equal(st.mask.a_end, 4);
    assert_int_equal(st.mask.block_size, 3);
    static const char *rows[] = {"11000000", "11000000", "11111000", "11111000",
                                 "11111000", "00000000", "00000000", "00000000"};
    assert_mask_rows(&st.mask, rows);
    for (int i = 0; i < 8; i++) assert_int_equal(hdlm_mask_row_fully_masked(&st.mask, i), i >= 5);
    hdlm_step_free(&st);
    hdlm_schedule_free(&s);

    assert_int_equal(hdlm_schedule_init(&s, HDLM_SCHEDULE_SIMPLE, 8, 3, 3, HDLM_SAMPLING_EPS, HDLM_CONTEXT_CAUSAL,
                                        HDLM_BLOCK_CAUSAL), 0);
    hdlm_step_alloc(&st, 8);
    assert_int_equal(hdlm_schedule_step(&s, 5, &st), 0);
    static const char *causal[] = {"10000000", "11000000", "11100000", "11110000",
                                   "11111000", "00000000", "00000000", "00000000"};
    assert_mask_rows(&st.mask, causal);
    hdlm_step_free(&st);
    hdlm_schedule_free(&s);
}

// Block-causal settled context across several blocks: block schedule ω=2, τ=2, L=6, step 5 (n_set 4).
static void test_mask_block_causal_context(void **state) {
    (void)state;
    hdlm_schedule s;
    init(&s, HDLM_SCHEDULE_BLOCK, 6, 2, 2);
    hdlm_step st;
    hdlm_step_alloc(&st, 6);
    assert_int_equal(hdlm_schedule_step(&s, 5, &st), 0);
    static const char *rows[] = {"110000", "110000", "111100", "111100", "111111", "111111"};
    assert_mask_rows(&st.mask, rows);
    hdlm_step_free(&st);
    hdlm_schedule_free(&s);
}

// Special cases come from the same code (method §2.8): ω >= L is plain diffusion (every step all-visible, nothing
// settled or worthless, one level for all positions); 1 < ω < L is block-autoregressive.
static void test_special_cases(void **state) {
    (void)state;
    hdlm_schedule s;
    init(&s, HDLM_SCHEDULE_BLOCK, 16, 32, 5);
    hdlm_step st;
    hdlm_step_alloc(&st, 16);
    uint8_t allowed[256];
    for (int k = 1; k < s.k_max; k++) {
        assert_int_equal(hdlm_schedule_step(&s, k, &st), 0);
        assert_int_equal(st.n_set, 0);
        assert_int_equal(st.n_active, 16);
        hdlm_mask_expand(&st.mask, allowed);
        for (int i = 0; i < 256; i++) assert_int_equal(allowed[i], 1);
        for (int i = 0; i < 16; i++) assert_int_equal(st.level[i], 5 - k);
    }
    hdlm_step_free(&st);
    hdlm_schedule_free(&s);
    // Block-AR: every block is walked τ-1 … 0 with the earlier blocks settled and the later ones worthless.
    init(&s, HDLM_SCHEDULE_BLOCK, 10, 4, 3);
    hdlm_step_alloc(&st, 10);
    for (int k = 1; k < s.k_max; k++) {
        assert_int_equal(hdlm_schedule_step(&s, k, &st), 0);
        int blk = (k - 1) / 3;
        assert_int_equal(st.n_set, 4 * blk);
        assert_int_equal(st.a_end, (4 * blk + 4 < 10 ? 4 * blk + 4 : 10) - 1);
        assert_int_equal(st.level[st.n_set], 3 - (k - 3 * blk));
    }
    hdlm_step_free(&st);
    hdlm_schedule_free(&s);
}

// The hybrid schedule of method §2.5: in each block, position j is at level max(0, τ-1 - max(0, s-j)); levels never
// rise along a position's trajectory, each block starts all at τ-1 and ends all at 0.
static void test_hybrid_schedule(void **state) {
    (void)state;
    hdlm_schedule s;
    init(&s, HDLM_SCHEDULE_HYBRID, 10, 4, 3);
    assert_int_equal(s.k_max, (3 + 4 - 1) * 3 + 1);
    hdlm_step st;
    hdlm_step_alloc(&st, 10);
    int prev[10];
    for (int i = 0; i < 10; i++) prev[i] = 3;
    for (int k = 1; k < s.k_max; k++) {
        assert_int_equal(hdlm_schedule_step(&s, k, &st), 0);
        int b = (k - 1) / 6, sub = (k - 1) % 6;
        assert_int_equal(st.n_set, 4 * b);
        for (int i = 0; i < 10; i++) {
            int j = i - 4 * b, expect = j < 0 ? 0 : (j >= 4 ? 3 : 2 - (sub > j ? sub - j : 0));
            if (expect < 0) expect = 0;
            if (i >= 4 * b) assert_int_equal(st.level[i], expect);
            assert_true(st.level[i] <= prev[i]);
            prev[i] = i < st.n_set ? 0 : st.level[i];
        }
        if (sub == 0)
            for (int i = 4 * b; i < 4 * b + 4 && i < 10; i++) assert_int_equal(st.level[i], 2);
        if (sub == 5)
            for (int i = 4 * b; i < 4 * b + 4 && i < 10; i++) assert_int_equal(st.level[i], 0);
    }
    hdlm_step_free(&st);
    hdlm_schedule_free(&s);
}

// Degenerate parameters are refused with a message naming the field (§11 item 24); step range is checked.
static void test_rejects_degenerate_parameters(void **state) {
    (void)state;
    hdlm_schedule s;
    const double eps = HDLM_SAMPLING_EPS;
    assert_int_equal(hdlm_schedule_init(&s, HDLM_SCHEDULE_BLOCK, 8, 8, 1, eps, 0, 0), -1);
    assert_error_contains("annealing.tau must be >= 2");
    assert_int_equal(hdlm_schedule_init(&s, HDLM_SCHEDULE_SIMPLE, 8, 3, 0, eps, 0, 0), -1);
    assert_error_contains("got 0");
    assert_int_equal(hdlm_schedule_init(&s, HDLM_SCHEDULE_SIMPLE, 8, 1, 2, eps, 0, 0), -1);
    assert_error_contains("annealing.width must be >= 2 for the simple schedule");
    assert_int_equal(hdlm_schedule_init(&s, HDLM_SCHEDULE_BLOCK, 8, 0, 2, eps, 0, 0), -1);
    assert_error_contains("annealing.width must be >= 1");
    assert_int_equal(hdlm_schedule_init(&s, HDLM_SCHEDULE_BLOCK, 0, 4, 2, eps, 0, 0), -1);
    assert_error_contains("model.length");
    assert_int_equal(hdlm_schedule_init(&s, HDLM_SCHEDULE_BLOCK, 8, 4, 2, 0.06, 0, 0), -1);
    assert_error_contains("annealing.sampling_eps");
    assert_int_equal(hdlm_schedule_init(&s, HDLM_SCHEDULE_BLOCK, 8, 4, 2, 0.0, 0, 0), -1);
    assert_int_equal(hdlm_schedule_init(&s, (hdlm_schedule_type)7, 8, 4, 2, eps, 0, 0), -1);
    assert_error_contains("annealing.type");
    hdlm_schedule_type type;
    assert_int_equal(hdlm_schedule_type_parse("simple_block", "annealing.type", &type), -1);
    assert_error_contains("annealing.type: expected block, simple or hybrid, got 'simple_block'");
    assert_int_equal(hdlm_schedule_type_parse("hybrid", "annealing.type", &type), 0);
    assert_int_equal(type, HDLM_SCHEDULE_HYBRID);
    hdlm_context_type ctx;
    assert_int_equal(hdlm_context_type_parse("full", "ctx", &ctx), 0);
    assert_int_equal(ctx, HDLM_CONTEXT_FULL);
    hdlm_block_type blk;
    assert_int_equal(hdlm_block_type_parse("bidirectional", "annealing.attention.block_type", &blk), -1);
    assert_error_contains("expected full or causal");

    init(&s, HDLM_SCHEDULE_BLOCK, 8, 3, 3);
    hdlm_step st;
    hdlm_step_alloc(&st, 8);
    assert_int_equal(hdlm_schedule_step(&s, 0, &st), -1);
    assert_error_contains("step 0 outside the range 1..9");
    assert_int_equal(hdlm_schedule_step(&s, 10, &st), -1);
    hdlm_step_free(&st);
    hdlm_schedule_free(&s);
}

// Step sampling (method §2.7): uniform over 1..K_max-1 (chi-square), one k per micro-batch or one per sequence, and a
// pure function of (seed, rank, train step).
static void test_step_sampling(void **state) {
    (void)state;
    hdlm_schedule s;
    init(&s, HDLM_SCHEDULE_BLOCK, 12, 4, 5);   // 15 steps
    int counts[16] = {0}, steps[8], again[8];
    const int draws = 30000;
    for (int n = 0; n < draws; n++) {
        hdlm_schedule_sample_steps(&s, HDLM_STEPS_PER_BATCH, 7, 1, (uint64_t)n, 8, steps);
        for (int b = 1; b < 8; b++) assert_int_equal(steps[b], steps[0]);
        assert_true(steps[0] >= 1 && steps[0] <= 15);
        counts[steps[0]]++;
    }
    double chi2 = 0, expect = draws / 15.0;   // 14 degrees of freedom: P(chi2 > 36.1) = 0.001
    for (int k = 1; k <= 15; k++) chi2 += (counts[k] - expect) * (counts[k] - expect) / expect;
    assert_true(chi2 < 36.1);
    hdlm_schedule_sample_steps(&s, HDLM_STEPS_PER_SEQUENCE, 7, 1, 3, 8, steps);
    hdlm_schedule_sample_steps(&s, HDLM_STEPS_PER_SEQUENCE, 7, 1, 3, 8, again);
    int distinct = 0;
    for (int b = 0; b < 8; b++) {
        assert_int_equal(steps[b], again[b]);
        distinct += steps[b] != steps[0];
    }
    assert_true(distinct > 0);
    hdlm_schedule_sample_steps(&s, HDLM_STEPS_PER_SEQUENCE, 7, 2, 3, 8, again);   // another rank, other steps
    assert_memory_not_equal(steps, again, sizeof steps);
    hdlm_schedule_free(&s);
}

// What `hdlm-schedule ARGS` prints (failing: its stderr, and it must fail), malloc'ed.
static char *tool_output(const char *args, bool failing) {
    const char *dir = test_tmp_dir("schedule_tool");
    int rc = test_run("%s/hdlm-schedule %s %s %s/out.txt", HDLM_BIN_DIR, args, failing ? "2>" : ">", dir);
    if (failing) assert_int_not_equal(rc, 0);
    else assert_int_equal(rc, 0);
    char path[4200], *text;
    size_t len;
    snprintf(path, sizeof path, "%s/out.txt", dir);
    assert_int_equal(hdlm_read_file(path, &text, &len), 0);
    return text;
}

// K_max of `hybrid` against the reference's construction (method §2.5): ⌈L/ω⌉ blocks of τ + min(ω, L) − 1
// steps each, so ω > L counts the one block's L positions, not ω; every position reaches level 0 at the last step.
static void test_hybrid_k_max_width_beyond_length(void **state) {
    (void)state;
    static const struct { int L, w, tau, k_max; } cases[] = {
        {5, 8, 2, 7},     // hdlm-schedule --type hybrid --length 5 --width 8 --tau 2 (10 before the fix)
        {5, 5, 2, 7},     {4, 16, 3, 7}, {1, 4, 2, 3}, {8, 3, 3, 16}, {10, 4, 2, 16}, {6, 1024, 4, 10},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        hdlm_schedule s;
        init(&s, HDLM_SCHEDULE_HYBRID, cases[c].L, cases[c].w, cases[c].tau);
        assert_int_equal(s.k_max, cases[c].k_max);
        int levels[16], n_set;
        hdlm_schedule_levels(&s, s.k_max - 1, levels, &n_set);
        int first_block = cases[c].w < cases[c].L ? cases[c].w : cases[c].L;
        for (int i = (int)((cases[c].L - 1) / cases[c].w) * cases[c].w; i < cases[c].L; i++)
            assert_int_equal(levels[i], 0);
        if (cases[c].w >= cases[c].L) {   // one block: the step before the last still has its last position active
            hdlm_schedule_levels(&s, s.k_max - 2, levels, &n_set);
            assert_int_equal(levels[first_block - 1], 1);
        }
        hdlm_schedule_free(&s);
    }
    char *text = tool_output("--type hybrid --length 5 --width 8 --tau 2 --summary", 0);
    assert_non_null(strstr(text, "K_max=7"));
    free(text);
}

// Level times equal the reference's float32 computation ε_a + ℓ·Δ — a float32 product, then a float32 sum, then the
// clamp — bit for bit at τ ∈ {2, 3, 1024, 2048} (tests/reference/level_times.py, PyTorch). A build that contracts
// the two operations into one FMA differs by one ulp on some levels (272 of 1024 at τ = 1024).
static void test_level_times_match_reference(void **state) {
    (void)state;
    const char *dir = test_tmp_dir("level_times");
    static const int taus[] = {2, 3, 1024, 2048};
    assert_int_equal(test_run("/usr/bin/python3 %s/tests/reference/level_times.py %g 2 3 1024 2048 > %s/times.txt",
                              HDLM_SOURCE_DIR, HDLM_SAMPLING_EPS, dir), 0);
    char path[4200];
    snprintf(path, sizeof path, "%s/times.txt", dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    int checked = 0;
    for (size_t k = 0; k < sizeof taus / sizeof taus[0]; k++) {
        hdlm_schedule s;
        init(&s, HDLM_SCHEDULE_BLOCK, 8, 8, taus[k]);
        for (int level = 0; level < taus[k]; level++) {
            int tau, lv;
            unsigned bits;
            assert_int_equal(fscanf(f, "%d %d %x", &tau, &lv, &bits), 3);
            assert_int_equal(tau, taus[k]);
            assert_int_equal(lv, level);
            float t = hdlm_schedule_level_time(&s, level);
            uint32_t got;
            memcpy(&got, &t, sizeof got);
            if (got != bits) fail_msg("tau %d level %d: t = %.9g (0x%08x), the reference has 0x%08x", tau, level, t,
                                      got, bits);
            checked++;
        }
        hdlm_schedule_free(&s);
    }
    fclose(f);
    assert_int_equal(checked, 2 + 3 + 1024 + 2048);
}


// The two-copy layout (method §2.10, §3.3) against tests/reference/two_copy.py, which builds it independently as the
// reference does (a dense 2L × 2L mask, block b's levels sliced from its own step's level vector, float32 times):
// the mask (expanded, and the compact key ranges the attention kernels read), levels, times and classes, for random
// block steps of every rule pair. The draws themselves: each block's step in its own range, every level reached.
static void test_two_copy_layout_matches_reference(void **state) {
    (void)state;
    static const struct {
        int L, w, tau;
        hdlm_context_type context;
        hdlm_block_type block;
    } cases[] = {{8, 4, 3, HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL},
                 {12, 3, 2, HDLM_CONTEXT_CAUSAL, HDLM_BLOCK_CAUSAL},
                 {16, 4, 5, HDLM_CONTEXT_FULL, HDLM_BLOCK_FULL},
                 {20, 5, 4, HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_CAUSAL},
                 {6, 6, 3, HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL}};
    static const char *const contexts[] = {"block_causal", "causal", "full"}, *const blocks[] = {"full", "causal"};
    const char *dir = test_tmp_dir("two_copy");
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int L = cases[c].L, w = cases[c].w, tau = cases[c].tau, nb = L / w;
        hdlm_schedule s;
        assert_int_equal(hdlm_schedule_init(&s, HDLM_SCHEDULE_BLOCK, L, w, tau, HDLM_SAMPLING_EPS, cases[c].context,
                                            cases[c].block), 0);
        assert_int_equal(hdlm_schedule_two_copy_blocks(&s), nb);
        for (int draw = 0; draw < 3; draw++) {
            int steps[8], scratch[32];
            hdlm_schedule_sample_block_steps(&s, 7, (uint64_t)c, (uint64_t)draw, steps);
            char args[256];
            int n = 0;
            for (int b = 0; b < nb; b++) n += snprintf(args + n, sizeof args - n, " %d", steps[b]);
            assert_int_equal(test_run("/usr/bin/python3 %s/tests/reference/two_copy.py %d %d %d %s %s %g%s > %s/ref.txt",
                                      HDLM_SOURCE_DIR, L, w, tau, contexts[cases[c].context], blocks[cases[c].block],
                                      HDLM_SAMPLING_EPS, args, dir), 0);
            hdlm_step st;
            hdlm_step_alloc(&st, 2 * L);
            assert_int_equal(hdlm_schedule_two_copy_step(&s, steps, scratch, &st), 0);
            assert_int_equal(st.n_set, L);
            assert_int_equal(st.a_end, 2 * L - 1);
            assert_int_equal(st.n_active, L);
            uint8_t allowed[40 * 40];
            hdlm_mask_expand(&st.mask, allowed);
            char path[4200];
            snprintf(path, sizeof path, "%s/ref.txt", dir);
            FILE *f = fopen(path, "r");
            assert_non_null(f);
            for (int i = 0; i < 2 * L; i++) {
                int row;
                char want[64];
                assert_int_equal(fscanf(f, " mask %d %63s", &row, want), 2);
                assert_int_equal(row, i);
                hdlm_key_range r = hdlm_mask_key_range(&st.mask, i);
                assert_false(hdlm_mask_row_fully_masked(&st.mask, i));
                for (int j = 0; j < 2 * L; j++) {
                    if (allowed[i * 2 * L + j] != (want[j] == '1'))
                        fail_msg("case %zu row %d key %d: allowed %d, the reference %c", c, i, j,
                                 allowed[i * 2 * L + j], want[j]);
                    assert_int_equal(hdlm_key_range_has(r, j), want[j] == '1');
                }
            }
            for (int i = 0; i < 2 * L; i++) {
                int pos, level;
                unsigned bits;
                assert_int_equal(fscanf(f, " pos %d %d %x", &pos, &level, &bits), 3);
                uint32_t got;
                memcpy(&got, &st.t[i], sizeof got);
                if (st.level[i] != level || got != bits)
                    fail_msg("case %zu position %d: level %d t %08x, the reference %d %08x", c, i, st.level[i], got,
                             level, bits);
                assert_int_equal(st.cls[i], i < L ? HDLM_POS_SETTLED : HDLM_POS_ACTIVE);
                assert_int_equal(st.to_denoise[i], i >= L && level == 0);
            }
            fclose(f);
            hdlm_step_free(&st);
        }
        // Block b's steps stay in [bτ + 1, (b + 1)τ] and every level of every block is drawn.
        int seen[8][8] = {{0}};
        for (int draw = 0; draw < 400; draw++) {
            int steps[8];
            hdlm_schedule_sample_block_steps(&s, 11, 0, (uint64_t)draw, steps);
            for (int b = 0; b < nb; b++) {
                assert_in_range(steps[b], b * tau + 1, (b + 1) * tau);
                seen[b][(b + 1) * tau - steps[b]]++;
            }
        }
        for (int b = 0; b < nb; b++)
            for (int level = 0; level < tau; level++) assert_true(seen[b][level] > 400 / tau / 3);
        hdlm_schedule_free(&s);
    }
    // Refused: another schedule, L not a multiple of ω; a step outside the block's range.
    hdlm_schedule s;
    init(&s, HDLM_SCHEDULE_SIMPLE, 8, 4, 3);
    assert_int_equal(hdlm_schedule_two_copy_check(&s), -1);
    assert_non_null(strstr(hdlm_last_error(), "annealing.type = block"));
    hdlm_schedule_free(&s);
    init(&s, HDLM_SCHEDULE_BLOCK, 10, 4, 3);
    assert_int_equal(hdlm_schedule_two_copy_check(&s), -1);
    assert_non_null(strstr(hdlm_last_error(), "multiple of annealing.width"));
    hdlm_schedule_free(&s);
    init(&s, HDLM_SCHEDULE_BLOCK, 8, 4, 3);
    hdlm_step st;
    hdlm_step_alloc(&st, 16);
    int bad[2] = {1, 2}, scratch[8];   // block 1's steps are 4..6
    assert_int_equal(hdlm_schedule_two_copy_step(&s, bad, scratch, &st), -1);
    assert_non_null(strstr(hdlm_last_error(), "block 1"));
    hdlm_step_free(&st);
    hdlm_schedule_free(&s);
}

// The tool prints method §2.9's table and mask (docs/hyperschedules.md relies on it) and refuses bad flags.
static void test_tool_output(void **state) {
    (void)state;
    char *text = tool_output("--type simple --length 8 --width 3 --tau 3 --mask 5", 0);
    assert_non_null(strstr(text, "K_max=11"));
    assert_non_null(strstr(text, " 5      2  S S 0 1 2 W W W\n"));
    assert_non_null(strstr(text, "  row 2  1 1 1 1 1 0 0 0\n"));
    free(text);
    text = tool_output("--type simple --length 8 --width 3 --tau 1", 1);
    assert_non_null(strstr(text, "annealing.tau must be >= 2"));
    free(text);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tables_of_method),
        cmocka_unit_test(test_simple_main_tuples),
        cmocka_unit_test(test_block_k_max),
        cmocka_unit_test(test_time_grid),
        cmocka_unit_test(test_mask_of_method),
        cmocka_unit_test(test_mask_block_causal_context),
        cmocka_unit_test(test_special_cases),
        cmocka_unit_test(test_hybrid_schedule),
        cmocka_unit_test(test_hybrid_k_max_width_beyond_length),
        cmocka_unit_test(test_level_times_match_reference),
        cmocka_unit_test(test_two_copy_layout_matches_reference),
        cmocka_unit_test(test_rejects_degenerate_parameters),
        cmocka_unit_test(test_step_sampling),
        cmocka_unit_test(test_tool_output),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

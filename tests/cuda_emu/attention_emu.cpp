// Emulated kernels (tests/cuda_emu/run.sh generates kernels.h) against the CPU attention, cases and tolerances of
// tests/test_cuda_attention.c.
#include "kernels.h"
extern "C" {
#include "hdlm/layers.h"
#include "hdlm/rng.h"
}
#include <cstring>

static attn_shape shape(int L, int H, int D, float p, uint64_t key) {
    attn_shape sh;
    sh.len = L; sh.heads = H; sh.head_dim = D; sh.width = H * D; sh.scale = 1.0f / sqrtf((float)D);
    sh.dropout = p; sh.keep = 1.0f / (1.0f - p); sh.key = key;
    return sh;
}

template <int DP>
static void run_gpu(bf16 *out, float *lse, bf16 *dqkv, float *delta, const bf16 *qkv, const bf16 *dout,
                    hdlm_attn_mask mask, int B, attn_shape sh) {
    int L = sh.len;
    emu_dim grid = {(unsigned)((L + 63) / 64), (unsigned)(B * sh.heads), 1};
    emu_launch(grid, 256, forward_smem<DP>(), [&] { attention_forward_kernel<DP>(out, lse, qkv, mask, sh); });
    size_t warps = (size_t)B * L * sh.heads;
    emu_dim g1 = {(unsigned)((warps * 32 + 255) / 256), 1, 1};
    emu_launch(g1, 256, 0, [&] { attention_delta_kernel(delta, dout, out, B, sh); });
    emu_launch(grid, 256, dq_smem<DP>(), [&] { attention_dq_kernel<DP>(dqkv, dout, lse, delta, qkv, mask, sh); });
    emu_launch(grid, 256, dkdv_smem<DP>(L), [&] { attention_dkdv_kernel<DP>(dqkv, dout, lse, delta, qkv, mask, sh); });
}

static void run_tc(bf16 *out, float *lse, bf16 *dqkv, float *delta, const bf16 *qkv, const bf16 *dout,
                    hdlm_attn_mask mask, int B, attn_shape sh) {
    int L = sh.len;
    emu_dim grid = {(unsigned)((L + 63) / 64), (unsigned)(B * sh.heads), 1};
    emu_launch(grid, 128, forward_tc_smem(), [&] { attention_forward_tc_kernel(out, lse, qkv, mask, sh); });
    size_t warps = (size_t)B * L * sh.heads;
    emu_dim g1 = {(unsigned)((warps * 32 + 255) / 256), 1, 1};
    emu_launch(g1, 256, 0, [&] { attention_delta_kernel(delta, dout, out, B, sh); });
    emu_launch(grid, 128, dq_tc_smem(), [&] { attention_dq_tc_kernel(dqkv, dout, lse, delta, qkv, mask, sh); });
    emu_launch(grid, 128, dkdv_tc_smem(L), [&] { attention_dkdv_tc_kernel(dqkv, dout, lse, delta, qkv, mask, sh); });
}

static float tof(bf16 x) { return __bfloat162float(x); }

static size_t cmp(const char *what, const bf16 *g, const float *c, size_t n, size_t stride, size_t width) {
    float scale = 0;
    for (size_t i = 0; i < n; i += stride) for (size_t e = 0; e < width; e++) scale = fmaxf(scale, fabsf(c[i + e]));
    size_t bad = 0; double worst = 0, maxerr = 0;
    for (size_t i = 0; i < n; i += stride)
        for (size_t e = 0; e < width; e++) {
            double r = fabs(tof(g[i + e]) - c[i + e]) / (0x1.0p-7 * fabs(c[i + e]) + 0x1.0p-7 * scale + 1e-30);
            if (!(r <= 1.0)) bad++;
            if (!(r <= worst)) worst = r;
            maxerr = fmax(maxerr, fabs(tof(g[i + e]) - c[i + e]));
        }
    printf("   %s max %.3e worst %.3f bad %zu  max|err|/max|ref| %.2e\n", what, scale, worst, bad, maxerr / scale);
    return bad;
}

static int run(const char *name, int B, int H, int L, int D, hdlm_attn_mask mask, float p) {
    printf("%s\n", name);
    int d = H * D; size_t n = (size_t)B * L, nq = n * 3 * d, no = n * d, nl = (size_t)B * H * L;
    uint64_t key = 0x5eed0000u + L;
    hdlm_rng rng; hdlm_rng_init(&rng, 1234 + L * 7 + D);
    std::vector<bf16> qkv_b(nq), dout_b(no), out_b(no, __float2bfloat16(NAN)), dqkv_b(nq, __float2bfloat16(NAN));
    std::vector<float> qkv(nq), dout(no), out_ref(no), lse_ref(nl), lse_g(nl, NAN), out_g(no), dqkv_ref(nq), delta(nl, NAN);
    for (size_t i = 0; i < nq; i++) { qkv_b[i] = __float2bfloat16(1.5f * (2 * hdlm_rng_uniform(&rng) - 1)); qkv[i] = tof(qkv_b[i]); }
    for (size_t i = 0; i < no; i++) { dout_b[i] = __float2bfloat16(2 * hdlm_rng_uniform(&rng) - 1); dout[i] = tof(dout_b[i]); }
    hdlm_attention_forward(out_ref.data(), lse_ref.data(), qkv.data(), &mask, B, L, H, D, p, key);
    attn_shape sh = shape(L, H, D, p, key);
    if (D == 64 && getenv("SIMT") == nullptr) run_tc(out_b.data(), lse_g.data(), dqkv_b.data(), delta.data(), qkv_b.data(), dout_b.data(), mask, B, sh);
    else if (D <= 32) run_gpu<32>(out_b.data(), lse_g.data(), dqkv_b.data(), delta.data(), qkv_b.data(), dout_b.data(), mask, B, sh);
    else if (D <= 64) run_gpu<64>(out_b.data(), lse_g.data(), dqkv_b.data(), delta.data(), qkv_b.data(), dout_b.data(), mask, B, sh);
    else run_gpu<128>(out_b.data(), lse_g.data(), dqkv_b.data(), delta.data(), qkv_b.data(), dout_b.data(), mask, B, sh);
    size_t bad = cmp("out", out_b.data(), out_ref.data(), no, d, d);
    double lw = 0;
    for (size_t r = 0; r < nl; r++) {
        int i = r % L;
        if (hdlm_mask_row_fully_masked(&mask, i)) { if (lse_g[r] != 0.0f) bad++; continue; }
        double e = fabs(lse_g[r] - lse_ref[r]); if (!(e <= 3e-5)) bad++; if (!(e <= lw)) lw = e;
    }
    printf("   lse worst %.3e\n", lw);
    for (size_t i = 0; i < no; i++) out_g[i] = tof(out_b[i]);
    hdlm_attention_backward(dqkv_ref.data(), dout.data(), out_g.data(), lse_g.data(), qkv.data(), &mask, B, L, H, D, p, key);
    const char *nm[3] = {"dq", "dk", "dv"};
    for (int part = 0; part < 3; part++)
        bad += cmp(nm[part], dqkv_b.data() + part * d, dqkv_ref.data() + part * d, nq - part * d, 3 * d, d);
    printf("   => %s\n", bad ? "FAIL" : "ok");
    return bad != 0;
}

static hdlm_attn_mask M(int L, int ns, int ae, hdlm_context_type c, hdlm_block_type b, int bs) {
    hdlm_attn_mask m = {L, ns, ae, c, b, bs}; return m;
}

int main(int argc, char **argv) {
    int which = argc > 1 ? atoi(argv[1]) : -1, fails = 0, k = 0;
#define CASE(...) if (which < 0 || which == k) fails += run(__VA_ARGS__); k++;
    CASE("full L77 B2 H3 D64", 2, 3, 77, 64, hdlm_mask_full(77), 0.0f)
    CASE("full L130 B2 H2 D32 dropout", 2, 2, 130, 32, hdlm_mask_full(130), 0.1f)
    CASE("causal L130 B2 H2 D64", 2, 2, 130, 64, M(130, 130, 129, HDLM_CONTEXT_CAUSAL, HDLM_BLOCK_FULL, 130), 0.0f)
    CASE("causal L77 B1 H2 D32 dropout", 1, 2, 77, 32, M(77, 77, 76, HDLM_CONTEXT_CAUSAL, HDLM_BLOCK_FULL, 77), 0.1f)
    CASE("block-causal w48 L130 B1 H3 D64", 1, 3, 130, 64, M(130, 130, 129, HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL, 48), 0.0f)
    CASE("block-causal w48 L130 B2 H1 D48 dropout", 2, 1, 130, 48, M(130, 130, 129, HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL, 48), 0.1f)
    CASE("hyper ctx-block16 block-full L130 D64", 2, 2, 130, 64, M(130, 50, 97, HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL, 16), 0.0f)
    CASE("hyper ctx-block16 block-full L130 drop", 2, 2, 130, 64, M(130, 50, 97, HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL, 16), 0.1f)
    CASE("hyper ctx-causal block-causal L130 D32", 2, 2, 130, 32, M(130, 40, 100, HDLM_CONTEXT_CAUSAL, HDLM_BLOCK_CAUSAL, 16), 0.0f)
    CASE("hyper ctx-causal block-causal L130 drop", 1, 3, 130, 32, M(130, 40, 100, HDLM_CONTEXT_CAUSAL, HDLM_BLOCK_CAUSAL, 16), 0.1f)
    CASE("hyper ctx-full block-causal L77 D80 drop", 1, 2, 77, 80, M(77, 20, 60, HDLM_CONTEXT_FULL, HDLM_BLOCK_CAUSAL, 20), 0.1f)
    CASE("hyper no-settled block-full L200 D64", 2, 2, 200, 64, M(200, 0, 100, HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL, 32), 0.0f)
    CASE("hyper no-settled block-full L200 drop", 1, 2, 200, 64, M(200, 0, 100, HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL, 32), 0.1f)
    CASE("tiny L1 full D64", 1, 1, 1, 64, hdlm_mask_full(1), 0.1f)
    CASE("tiny L17 all worthless D64 drop", 2, 1, 17, 64, M(17, 0, -1, HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL, 4), 0.1f)
    CASE("tiny L17 hyper D32", 1, 2, 17, 32, M(17, 3, 5, HDLM_CONTEXT_CAUSAL, HDLM_BLOCK_CAUSAL, 4), 0.0f)
    CASE("tiny L17 all worthless D32", 1, 1, 17, 32, M(17, 0, -1, HDLM_CONTEXT_BLOCK_CAUSAL, HDLM_BLOCK_FULL, 4), 0.1f)
    printf("%d failing\n", fails);
    return fails != 0;
}

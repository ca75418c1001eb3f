// Fused output head + losses (src/cuda/cuda_ops.h): the GPU twin of hdlm_linear_forward on the head, then
// hdlm_corruption_loss (ε, ARDM) or scale_by_sigma + hdlm_gamma_post_process + hdlm_gamma_loss (γ, method §5.4-5.6),
// their backward and hdlm_linear_backward, without ever holding N×V logits.
//
// Per chunk of scored rows: gather x → z = x·Wᵀ in fp32 (cuBLASLt, bf16 in, fp32 accumulate and out) → one thread
// block per row reads z + b (− the scale_by_sigma shift), writes the row's loss (fp64) and its gradient (bf16) →
// hdlm_cuda_linear_backward gives dx of the chunk (scattered back) and dW, db (+=). The per-row loss values are summed
// in a fixed order at the end.
//
// Precision: z fp32 (bf16 logits would move CE by up to 2^-8·|z| and the absorbing score entropy, where o_x0 is
// multiplied by r = 1/(e^σ − 1) ≈ 10³ at small σ, by far more). Entry-wise work (exp, softmax statistics, gradients)
// in fp32; the score-entropy sums Σe^o and Σo accumulate in fp64; every per-row constant (r, ρ, logs, the CE's
// log-sum-exp combination) in fp64 — ρ = 1 − N/(E + N) at σ ≈ 10⁻³ is 2·10⁻⁸ and vanishes in fp32.
#include <math.h>
#include <stdlib.h>

#include "cuda_internal.cuh"

namespace {

constexpr int ROW_THREADS = 512;      // per-row kernel; a multiple of 32 (the block reductions assume it)
constexpr int CHUNK_ROWS = 2048;      // rows per chunk with a full workspace: a GEMM large enough to run at speed
constexpr size_t ALIGN = 256;         // every workspace region (cuBLASLt prefers 256-byte aligned operands)
constexpr double SE_EPS0 = 1e-12;     // ε0 of method §5.5

enum : int32_t {
    ROW_CE = 0,          // CE = logsumexp(z[0..width)) − z[target]
    ROW_CE_PINNED = 1,   // γ settled row i < n_set − 1: o[MASK] pinned to −1000 (post-processing), gradient 0 there
    ROW_SE = 2,          // γ score entropy ℓ = α·Σ e^o_y − β·Σ o_y − κ·o_target + cst over real y ≠ skip
};

// One scored row (64 bytes). The score entropy of method §5.5 in this common form, per branch:
//   x = MASK:        α = 1−γ, β = 0, κ = (1−γ)·r, cst = (1−γ)·r·(log(r+ε0) − 1), r = 1/(E+ε0), no skip;
//   x real, x = x0:  α = γ/N, β = γρ/N, κ = 0, cst = γ·((N−1)/N)·ρ·(log(ρ+ε0) − 1), skip x;
//   x real, x ≠ x0:  α = γ/N, β = γ/N, κ = γ/(E+ε0), cst = γ·((−log(ρ+ε0) − 1)/(ρ+ε0) − (N−2))/N, skip x;
// (Ā and P̄ drop o_x and s_x: summing over y ≠ x is the same and gives the CPU's grad[x] = 0.) The gradient is
// dℓ/do_y = α·e^o_y − β − κ·[y = target] for real y ≠ skip, 0 for the skipped entry and for MASK.
struct head_row {
    double coef;                      // loss += coef·ℓ; the gradient is coef·dℓ/dz
    double alpha, beta, kappa, cst;   // ROW_SE only
    int32_t row;                      // row of x and dx
    int32_t kind;
    int32_t target;                   // x0
    int32_t width;                    // CE: softmax over [0, width); SE: N = V − 1 real tokens
    int32_t skip;                     // SE: the real current token x, or −1
    float shift;                      // o = z − shift (scale_by_sigma); 0 for ε / ARDM
};
static_assert(sizeof(head_row) == 64, "head_row is uploaded as raw bytes");

size_t align_up(size_t x) { return (x + ALIGN - 1) / ALIGN * ALIGN; }

// Row stride of the fp32 logits and of their bf16 gradient: 64 entries, so every row starts on a cache line and the
// strides suit cuBLASLt's Hopper kernels (16-byte multiples; V = 50,258 itself is not one).
int logits_stride(int vocab) { return (vocab + 63) / 64 * 64; }

size_t bytes_per_row(int d, int vocab) {
    return (size_t)logits_stride(vocab) * (sizeof(float) + sizeof(bf16)) + 2 * (size_t)d * sizeof(bf16);
}

}   // namespace

// A row set: the scored rows on the device and their host staging (head_row stays private to this file).
struct hdlm_cuda_head_rows {
    int capacity;
    int n, vocab;           // rows and vocabulary of the last fill
    int count;              // scored rows
    head_row *host;         // pinned staging, so the upload is asynchronous...
    cudaEvent_t uploaded;   // ...and a refill waits for the previous upload (long done by then) before writing it
    head_row *dev;
};

// ---- kernels --------------------------------------------------------------------------------------------------
namespace {

// Sum over the block (blockDim.x a multiple of 32), the same on every thread; fixed order, so deterministic.
__device__ double block_sum(double v, double *smem) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    __syncthreads();   // smem may still be read by a previous reduction
    if (lane == 0) smem[warp] = v;
    __syncthreads();
    v = lane < warps ? smem[lane] : 0.0;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// (max, Σ e^(v − max)) pairs: merge (m2, s2) into (m, s). An empty side has m = −inf, s = 0.
__device__ void lse_merge(float &m, float &s, float m2, float s2) {
    if (m2 == -INFINITY) return;
    if (m2 > m) {
        s = s * expf(m - m2) + s2;   // m = −inf gives 0·0 + s2
        m = m2;
    } else {
        s += s2 * expf(m2 - m);
    }
}

__device__ void warp_lse(float &m, float &s) {
    for (int o = 16; o > 0; o >>= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        lse_merge(m, s, m2, s2);
    }
}

__device__ void block_lse(float &m, float &s, float *smem_m, float *smem_s) {
    warp_lse(m, s);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) {
        smem_m[warp] = m;
        smem_s[warp] = s;
    }
    __syncthreads();
    m = lane < warps ? smem_m[lane] : -INFINITY;
    s = lane < warps ? smem_s[lane] : 0.0f;
    warp_lse(m, s);
}

// Rows of the chunk: xg[i] = x[rows[i].row].
__global__ void gather_rows(bf16 *xg, const bf16 *x, const head_row *rows, int count, int d) {
    size_t total = (size_t)count * d;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total; e += (size_t)gridDim.x * blockDim.x) {
        size_t i = e / d, k = e % d;
        xg[e] = x[(size_t)rows[i].row * d + k];
    }
}

__global__ void scatter_rows(bf16 *dx, const bf16 *dxg, const head_row *rows, int count, int d) {
    size_t total = (size_t)count * d;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total; e += (size_t)gridDim.x * blockDim.x) {
        size_t i = e / d, k = e % d;
        dx[(size_t)rows[i].row * d + k] = dxg[e];
    }
}

// One block per row of the chunk: z = logits + b, o = z − shift (pinned MASK entry −1000), the row's loss
// coef·ℓ into value[i] and, when grad is not NULL, coef·dℓ/dz (bf16) into grad[i·ld ..].
__global__ void __launch_bounds__(ROW_THREADS)
head_rows_loss(double *value, bf16 *grad, const float *logits, int ld, const bf16 *bias, const head_row *rows,
               int vocab) {
    __shared__ double smem_d[32];
    __shared__ float smem_m[32], smem_s[32];
    const int i = blockIdx.x, tid = threadIdx.x;
    const head_row h = rows[i];
    const float *z = logits + (size_t)i * ld;
    bf16 *g = grad ? grad + (size_t)i * ld : nullptr;
    const int pinned = h.kind == ROW_CE_PINNED ? vocab - 1 : -1;
    auto o_at = [&](int y) -> float {
        if (y == pinned) return -1000.0f;
        float zy = bias ? z[y] + __bfloat162float(bias[y]) : z[y];
        return zy - h.shift;
    };
    if (h.kind == ROW_SE) {
        double sum_s = 0, sum_o = 0;
        for (int y = tid; y < h.width; y += blockDim.x) {
            if (y == h.skip) continue;
            float o = o_at(y);
            sum_s += expf(o);
            sum_o += o;
        }
        sum_s = block_sum(sum_s, smem_d);
        sum_o = block_sum(sum_o, smem_d);
        if (tid == 0) {
            double se = h.alpha * sum_s - h.beta * sum_o - h.kappa * (double)o_at(h.target) + h.cst;
            value[i] = h.coef * se;
        }
        if (!g) return;
        const float a = (float)(h.coef * h.alpha), b = (float)(h.coef * h.beta), k = (float)(h.coef * h.kappa);
        for (int y = tid; y < vocab; y += blockDim.x) {
            float gy = 0.0f;
            if (y < h.width && y != h.skip) gy = fmaf(a, expf(o_at(y)), -b) - (y == h.target ? k : 0.0f);
            g[y] = __float2bfloat16(gy);
        }
        return;
    }
    float m = -INFINITY, s = 0.0f;
    for (int y = tid; y < h.width; y += blockDim.x) {
        float o = o_at(y);
        if (o > m) {
            s = s * expf(m - o) + 1.0f;
            m = o;
        } else {
            s += expf(o - m);
        }
    }
    block_lse(m, s, smem_m, smem_s);
    const float o_target = o_at(h.target);
    if (tid == 0) value[i] = h.coef * ((double)m + log((double)s) - (double)o_target);
    if (!g) return;
    // softmax − onehot; the target entry as coef·expm1(o_t − lse) (no cancellation when p_t → 1), as the CPU.
    const float k = (float)(h.coef / s), coef = (float)h.coef;
    const float d_target = (o_target - m) - logf(s);
    for (int y = tid; y < vocab; y += blockDim.x) {
        float gy;
        if (y == pinned || y >= h.width) gy = 0.0f;
        else if (y == h.target) gy = coef * expm1f(d_target);
        else gy = k * expf(o_at(y) - m);
        g[y] = __float2bfloat16(gy);
    }
}

// *loss = Σ value[0..count) in a fixed order (one block).
__global__ void sum_values(double *loss, const double *value, int count) {
    __shared__ double smem[32];
    double v = 0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) v += value[i];
    v = block_sum(v, smem);
    if (threadIdx.x == 0) *loss = v;
}

}   // namespace

// ---- host -----------------------------------------------------------------------------------------------------

// z[rows, ld] (fp32) = xg[rows, d]·Wᵀ with W [vocab, d]: in column-major terms zᵀ (vocab × rows, ld) = Wᵀ·xgᵀ,
// A = W stored d × vocab (transposed), B = xg stored d × rows.
static void head_logits(float *z, int ld, const bf16 *xg, const bf16 *w, int rows, int d, int vocab,
                        cudaStream_t stream) {
    hdlm_lt_matmul_must((hdlm_lt_matrix){w, CUDA_R_16BF, d, vocab, d}, true,
                        (hdlm_lt_matrix){xg, CUDA_R_16BF, d, rows, d}, false,
                        (hdlm_lt_matrix){z, CUDA_R_32F, vocab, rows, ld}, 0.0f, stream);
}

extern "C" {

hdlm_cuda_head_rows *hdlm_cuda_head_rows_create(int capacity) {
    HDLM_ASSERT(capacity > 0, "head rows for %d rows", capacity);
    hdlm_cuda_head_rows *rows = (hdlm_cuda_head_rows *)hdlm_calloc(1, sizeof *rows);
    rows->capacity = capacity;
    HDLM_CUDA_CHECK(cudaMallocHost((void **)&rows->host, (size_t)capacity * sizeof(head_row)));
    HDLM_CUDA_CHECK(cudaEventCreateWithFlags(&rows->uploaded, cudaEventDisableTiming));
    rows->dev = (head_row *)hdlm_cuda_malloc((size_t)capacity * sizeof(head_row));
    return rows;
}

void hdlm_cuda_head_rows_free(hdlm_cuda_head_rows *rows) {
    if (!rows) return;
    hdlm_cuda_free(rows->dev);
    HDLM_CUDA_CHECK(cudaEventDestroy(rows->uploaded));
    HDLM_CUDA_CHECK(cudaFreeHost(rows->host));
    free(rows);
}

// The staging rows, once the previous upload from them has been done.
static head_row *rows_staging(hdlm_cuda_head_rows *rows, long n) {
    HDLM_ASSERT(n <= rows->capacity, "%ld head rows for a capacity of %d", n, rows->capacity);
    HDLM_CUDA_CHECK(cudaEventSynchronize(rows->uploaded));
    return rows->host;
}

// Queues the copy on `stream`: after the previous head loss (which read rows->dev), before the next.
static void rows_upload(hdlm_cuda_head_rows *rows, int n, int vocab, int count, hdlm_stream stream) {
    rows->n = n;
    rows->vocab = vocab;
    rows->count = count;
    if (count == 0) return;
    HDLM_CUDA_CHECK(cudaMemcpyAsync(rows->dev, rows->host, (size_t)count * sizeof(head_row), cudaMemcpyHostToDevice,
                                    (cudaStream_t)stream));
    HDLM_CUDA_CHECK(cudaEventRecord(rows->uploaded, (cudaStream_t)stream));
}

void hdlm_cuda_head_rows_cross_entropy(hdlm_cuda_head_rows *rows, const hdlm_corruption *c, const uint32_t *x0,
                                       int vocab, int softmax_width, hdlm_stream stream) {
    const long n = (long)c->batch * c->length;
    head_row *staging = rows_staging(rows, n);
    HDLM_ASSERT(softmax_width > 0 && softmax_width <= vocab, "softmax width %d for vocab %d", softmax_width, vocab);
    const double scale = 1.0 / c->norm;   // as hdlm_corruption_loss
    int count = 0;
    for (long r = 0; r < n; r++) {
        if (c->weight[r] == 0.0f) continue;
        HDLM_ASSERT(x0[r] < (uint32_t)softmax_width, "target %u outside the softmax width %d", x0[r], softmax_width);
        head_row h = {};
        h.coef = c->weight[r] * scale;
        h.row = (int32_t)r;
        h.kind = ROW_CE;
        h.target = (int32_t)x0[r];
        h.width = softmax_width;
        h.skip = -1;
        staging[count++] = h;
    }
    rows_upload(rows, (int)n, vocab, count, stream);
}

// The rows of position i of a step, by current token: [0] x = MASK, [1] x = x0, [2] real x ≠ x0 (a settled position
// has one row, in [0..2]); row, target and skip are set per row. Per position, so B sequences sharing a step (the
// reference's sampling) pay the transcendental functions once.
static void gamma_position_rows(const hdlm_gamma_config *cfg, const hdlm_step *st, int i, int batch, int vocab,
                                head_row out[3]) {
    const int N = vocab - 1;
    const double gamma = cfg->gamma;
    head_row h = {};
    // scale_by_sigma as the CPU model: o = z − (float)(log E(σ_f) + log(V − 1)), σ_f from hdlm_gamma_sigmas.
    const float sigma_f = (float)hdlm_loglinear_sigma(st->t[i]);
    h.shift = -(float)hdlm_gamma_log_score_shift(sigma_f, vocab);
    if (st->cls[i] == HDLM_POS_SETTLED) {   // CE over all V entries (method §5.6), MASK pinned by post-processing
        h.coef = cfg->ce_weight * (hdlm_gamma_settled_weight(st, i) / st->n_set / batch);
        h.kind = i + 1 < st->n_set ? ROW_CE_PINNED : ROW_CE;
        h.width = vocab;
        out[0] = out[1] = out[2] = h;
        return;
    }
    // σ'-weighted score entropy (method §5.5-5.6), the constants of each branch in fp64.
    const double t = st->t[i], E = hdlm_gamma_sigma_expm1(hdlm_loglinear_sigma(t));
    h.coef = cfg->diffusion_weight * (hdlm_loglinear_dsigma(t) * st->weight[i] / batch);
    h.kind = ROW_SE;
    h.width = N;
    out[0] = out[1] = out[2] = h;
    const double rr = 1.0 / (E + SE_EPS0), rho = 1.0 - N / (E + N + SE_EPS0);
    out[0].alpha = 1.0 - gamma;
    out[0].kappa = (1.0 - gamma) * rr;
    out[0].cst = (1.0 - gamma) * rr * (log(rr + SE_EPS0) - 1.0);
    out[1].alpha = gamma / N;
    out[1].beta = gamma * rho / N;
    out[1].cst = gamma * ((N - 1.0) / N) * rho * (log(rho + SE_EPS0) - 1.0);
    out[2].alpha = gamma / N;
    out[2].beta = gamma / N;
    out[2].kappa = gamma / (E + SE_EPS0);
    out[2].cst = gamma * ((-log(rho + SE_EPS0) - 1.0) / (rho + SE_EPS0) - (N - 2.0)) / N;
}

void hdlm_cuda_head_rows_gamma(hdlm_cuda_head_rows *rows, const hdlm_gamma_config *cfg, const hdlm_step *const *steps,
                               const uint32_t *xt, const uint32_t *x0, int batch, int vocab, hdlm_stream stream) {
    const int L = steps[0]->length;
    const uint32_t mask = (uint32_t)(vocab - 1);
    const long n = (long)batch * L;
    head_row *staging = rows_staging(rows, n);
    head_row *table = (head_row *)hdlm_malloc((size_t)L * 3 * sizeof *table);
    int count = 0;
    for (int b = 0; b < batch; b++) {
        const hdlm_step *st = steps[b];
        HDLM_ASSERT(st->length == L, "steps of lengths %d and %d in one batch", st->length, L);
        if (b == 0 || st != steps[b - 1])
            for (int i = 0; i < L; i++) gamma_position_rows(cfg, st, i, batch, vocab, table + 3 * i);
        for (int i = 0; i < L; i++) {
            const long r = (long)b * L + i;
            const uint32_t x = xt[r];
            if (st->cls[i] == HDLM_POS_SETTLED)
                HDLM_ASSERT(x0[r] < (uint32_t)vocab, "target %u outside the vocabulary %d", x0[r], vocab);
            else
                HDLM_ASSERT(x0[r] < mask && x <= mask, "score entropy needs a real x0 (%u) and x <= MASK (%u)", x0[r],
                            x);
            const bool se = st->cls[i] != HDLM_POS_SETTLED;
            head_row h = table[3 * i + (!se || x == mask ? 0 : x == x0[r] ? 1 : 2)];
            if (h.coef == 0.0) continue;
            h.row = (int32_t)r;
            h.target = (int32_t)x0[r];
            h.skip = se && x != mask ? (int32_t)x : -1;   // Ā and P̄ leave out the current real token
            staging[count++] = h;
        }
    }
    free(table);
    rows_upload(rows, (int)n, vocab, count, stream);
}

size_t hdlm_cuda_head_workspace_bytes(int n, int d, int vocab) {
    const int chunk = n < CHUNK_ROWS ? (n > 0 ? n : 1) : CHUNK_ROWS;
    return align_up((size_t)n * sizeof(double)) + 4 * ALIGN + (size_t)chunk * bytes_per_row(d, vocab);
}

void hdlm_cuda_head_loss(double *loss, hdlm_bf16 *dx, float *dw, float *db, void *workspace, size_t workspace_bytes,
                         const hdlm_bf16 *x, const hdlm_bf16 *w, const hdlm_bf16 *b, const hdlm_cuda_head_rows *rows,
                         int n, int d, int vocab, hdlm_stream stream) {
    HDLM_ASSERT(rows->n == n && rows->vocab == vocab, "head rows filled for %d rows of vocab %d, used for %d of %d",
                rows->n, rows->vocab, n, vocab);
    HDLM_ASSERT(((uintptr_t)workspace % ALIGN) == 0, "head workspace not %zu-byte aligned", ALIGN);
    HDLM_ASSERT(!dx || dw, "head loss with dx but no dW");
    cudaStream_t s = (cudaStream_t)stream;
    const int count = rows->count, ld = logits_stride(vocab);
    // Workspace: values[n] fp64 | logits [chunk, ld] fp32 | grad [chunk, ld] bf16 | xg, dxg [chunk, d] bf16.
    const size_t values_bytes = align_up((size_t)n * sizeof(double));
    HDLM_ASSERT(workspace_bytes >= values_bytes + 4 * ALIGN + bytes_per_row(d, vocab),
                "head workspace of %zu bytes holds no row (d %d, vocab %d)", workspace_bytes, d, vocab);
    size_t fit = (workspace_bytes - values_bytes - 4 * ALIGN) / bytes_per_row(d, vocab);
    const int chunk = (int)(fit < (size_t)CHUNK_ROWS ? fit : (size_t)CHUNK_ROWS);
    char *p = (char *)workspace;
    double *values = (double *)p;
    p += values_bytes;
    float *logits = (float *)p;
    p += align_up((size_t)chunk * ld * sizeof(float));
    bf16 *grad = (bf16 *)p;
    p += align_up((size_t)chunk * ld * sizeof(bf16));
    bf16 *xg = (bf16 *)p;
    p += align_up((size_t)chunk * d * sizeof(bf16));
    bf16 *dxg = (bf16 *)p;
    HDLM_ASSERT((size_t)(p - (char *)workspace) + (size_t)chunk * d * sizeof(bf16) <= workspace_bytes,
                "head workspace carved past its end");

    if (dx) HDLM_CUDA_CHECK(cudaMemsetAsync(dx, 0, (size_t)n * d * sizeof(bf16), s));   // rows not scored
    for (int first = 0; first < count; first += chunk) {
        const int rows_c = count - first < chunk ? count - first : chunk;
        const head_row *hr = rows->dev + first;
        const int copy_blocks = hdlm_elementwise_blocks((size_t)rows_c * d, 256);
        gather_rows<<<copy_blocks, 256, 0, s>>>(xg, as_bf16(x), hr, rows_c, d);
        HDLM_CUDA_LAUNCHED();
        head_logits(logits, ld, xg, as_bf16(w), rows_c, d, vocab, s);
        head_rows_loss<<<rows_c, ROW_THREADS, 0, s>>>(values + first, dx ? grad : nullptr, logits, ld,
                                                      b ? as_bf16(b) : nullptr, hr, vocab);
        HDLM_CUDA_LAUNCHED();
        if (!dx) continue;
        hdlm_linear_backward_strided((hdlm_bf16 *)dxg, dw, db, (const hdlm_bf16 *)grad, ld, (const hdlm_bf16 *)xg, w,
                                     NULL, rows_c, d, vocab, false, s);
        scatter_rows<<<copy_blocks, 256, 0, s>>>(as_bf16(dx), dxg, hr, rows_c, d);
        HDLM_CUDA_LAUNCHED();
    }
    sum_values<<<1, 1024, 0, s>>>(loss, values, count);
    HDLM_CUDA_LAUNCHED();
}

}   // extern "C"

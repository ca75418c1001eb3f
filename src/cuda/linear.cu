// Linear layers through cuBLASLt (src/cuda/cuda_ops.h; CPU twin src/model/layer_linear.c): bf16 inputs, fp32
// accumulation, bias and GELU fused into the GEMM epilogue where cuBLASLt has a kernel for the shapes.
//
// cuBLASLt is column-major; a row-major X[r, c] is the column-major Xᵀ[c, r] with leading dimension c. So
//   forward  out[N,o] = in·Wᵀ      is  outᵀ[o,N] = W[o,i]·inᵀ[i,N]:    A = W (op T), B = in (op N), m=o n=N k=i
//   dW[o,i] += doutᵀ·in            is  dWᵀ[i,o] = inᵀ[i,N]·dout[N,o]:  A = in (op N), B = dout (op T), m=i n=o k=N
//   din[N,i] = dout·W              is  dinᵀ[i,N] = Wᵀ[i,o]·doutᵀ[o,N]: A = W (op N), B = dout (op N), m=i n=N k=o
// The bias (length m = o) is broadcast over the columns of Dᵀ, i.e. added to every row of out, as the BIAS epilogue
// wants. cuBLASLt's GELU epilogues use the tanh form 0.5x(1 + tanh(√(2/π)(x + 0.044715x³))), the CPU's
// (src/model/layer_mlp.c); tests/test_cuda_ops.c checks this at x = −3, where the erf form differs by 10 %.
#include <string.h>

#include "column_reduce.cuh"
#include "cuda_internal.cuh"

#define GELU_K 0.7978845608028654f   // √(2/π)
#define GELU_C 0.044715f

// Bias and aux pointers of fused epilogues: cuBLASLt kernels load them in 16-byte vectors, and the heuristic is
// not told their alignment (views into the flat bf16 weight buffer can sit at any even address).
enum { EPILOGUE_ALIGNMENT = 16 };

typedef struct {
    cublasLtEpilogue_t epilogue;
    const void *bias;    // BIAS epilogues (bf16, length m)
    const void *aux;     // GELU_AUX (written) or DGELU (read) matrix, bf16, leading dimension aux_ld
    int64_t aux_ld;
} lt_epilogue;

// Every input of cuBLASLt's heuristic for one GEMM (no padding, so memcmp compares keys).
struct lt_problem {
    int32_t trans_a, trans_b, epilogue, has_bias;
    int32_t a_type, a_rows, a_cols, a_ld, b_type, b_rows, b_cols, b_ld, d_type, d_rows, d_cols, d_ld;
    uint32_t align_a, align_b, align_d, pad;
    int64_t aux_ld;
    uint64_t workspace;
};
struct lt_algo_entry {
    bool used, found;
    lt_problem key;
    cublasLtMatmulAlgo_t algo;
};
// The heuristic costs more than many of the GEMMs, and a step runs the same few dozen problems (every linear layer
// forward and backward, the head's full and last chunks) over and over: remember its answer, an algorithm or none.
enum { LT_ALGO_CACHE = 64 };
static lt_algo_entry lt_algo_cache[LT_ALGO_CACHE];
static unsigned lt_algo_next;

// D = α·op(A)·op(B) + β·C with C = D, fp32 compute. Returns false (having done nothing) when cuBLASLt has no
// algorithm for this combination, so the caller can fall back to an unfused epilogue.
static bool lt_matmul(hdlm_lt_matrix a, bool trans_a, hdlm_lt_matrix b, bool trans_b, hdlm_lt_matrix d, float beta,
                      const lt_epilogue *ep, cudaStream_t stream) {
    cublasLtHandle_t handle = hdlm_cublaslt_handle();
    size_t workspace_bytes;
    void *workspace = hdlm_cublaslt_workspace(&workspace_bytes);

    cublasLtMatmulDesc_t desc;
    HDLM_CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    HDLM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof op_a));
    HDLM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof op_b));
    cublasLtEpilogue_t epilogue = ep ? ep->epilogue : CUBLASLT_EPILOGUE_DEFAULT;
    HDLM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue));
    if (ep && ep->bias) {
        cudaDataType_t bias_type = CUDA_R_16BF;
        HDLM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                                         sizeof bias_type));
        HDLM_CUBLAS_CHECK(
            cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &ep->bias, sizeof ep->bias));
    }
    if (ep && ep->aux) {
        HDLM_CUBLAS_CHECK(
            cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &ep->aux, sizeof ep->aux));
        HDLM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ep->aux_ld,
                                                         sizeof ep->aux_ld));
    }

    cublasLtMatrixLayout_t la, lb, ld;
    HDLM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&la, a.type, a.rows, a.cols, a.ld));
    HDLM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lb, b.type, b.rows, b.cols, b.ld));
    HDLM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&ld, d.type, d.rows, d.cols, d.ld));

    // Tell the heuristic the real alignment of each buffer (views into flat buffers are not 256-byte aligned).
    uint32_t align_a = hdlm_pointer_alignment(a.ptr), align_b = hdlm_pointer_alignment(b.ptr);
    uint32_t align_d = hdlm_pointer_alignment(d.ptr);
    const lt_problem key = {trans_a, trans_b, (int32_t)epilogue, ep && ep->bias,
                            (int32_t)a.type, a.rows, a.cols, a.ld,
                            (int32_t)b.type, b.rows, b.cols, b.ld,
                            (int32_t)d.type, d.rows, d.cols, d.ld,
                            align_a, align_b, align_d, 0,
                            ep ? ep->aux_ld : 0, workspace_bytes};
    const lt_algo_entry *entry = nullptr;
    for (const lt_algo_entry &e : lt_algo_cache)
        if (e.used && memcmp(&e.key, &key, sizeof key) == 0) entry = &e;
    if (!entry) {
        cublasLtMatmulPreference_t pref;
        HDLM_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
        HDLM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                               &workspace_bytes, sizeof workspace_bytes));
        HDLM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                               &align_a, sizeof align_a));
        HDLM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                               &align_b, sizeof align_b));
        HDLM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                               &align_d, sizeof align_d));
        HDLM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                               &align_d, sizeof align_d));
        cublasLtMatmulHeuristicResult_t heuristic = {};
        int found = 0;
        cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle, desc, la, lb, ld, ld, pref, 1, &heuristic, &found);
        HDLM_CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
        lt_algo_entry &e = lt_algo_cache[lt_algo_next++ % LT_ALGO_CACHE];
        e = {true, st == CUBLAS_STATUS_SUCCESS && found > 0, key, heuristic.algo};
        entry = &e;
    }
    if (entry->found) {
        const float alpha = 1.0f;
        HDLM_CUBLAS_CHECK(cublasLtMatmul(handle, desc, &alpha, a.ptr, la, b.ptr, lb, &beta, d.ptr, ld, (void *)d.ptr,
                                         ld, &entry->algo, workspace, workspace_bytes, stream));
    }
    // Descriptors are host objects read at the call: destroying them does not wait for the GEMM.
    HDLM_CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(ld));
    HDLM_CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(lb));
    HDLM_CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(la));
    HDLM_CUBLAS_CHECK(cublasLtMatmulDescDestroy(desc));
    return entry->found;
}

void hdlm_lt_matmul_must(hdlm_lt_matrix a, bool trans_a, hdlm_lt_matrix b, bool trans_b, hdlm_lt_matrix d,
                         float beta, cudaStream_t stream) {
    if (!lt_matmul(a, trans_a, b, trans_b, d, beta, NULL, stream))
        HDLM_DIE("cuBLASLt has no algorithm for the GEMM m=%d n=%d k=%d (op %c%c, lda %d ldb %d ldd %d)", d.rows,
                 d.cols, trans_a ? a.rows : a.cols, trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', a.ld, b.ld, d.ld);
}

__device__ inline float gelu_tanh(float u) { return 0.5f * u * (1.0f + tanhf(GELU_K * (u + GELU_C * u * u * u))); }

__device__ inline float gelu_tanh_grad(float u) {
    float t = tanhf(GELU_K * (u + GELU_C * u * u * u));
    return 0.5f * (1.0f + t) + 0.5f * u * (1.0f - t * t) * GELU_K * (1.0f + 3.0f * GELU_C * u * u);
}

// Unfused epilogues (when cuBLASLt has no fused kernel, e.g. out_dim not a multiple of 8) work on the fp32 product,
// so every output is rounded to bf16 once, as in the fused epilogue: out = bf16(acc + b), gelu_out = bf16(GELU(acc +
// b)). Rounding the product to bf16 first and then the sum again would cost up to two bf16 ulps.
__global__ void bias_gelu_kernel(bf16 *out, bf16 *gelu_out, const float *acc, const bf16 *b, int n, int out_dim) {
    size_t total = (size_t)n * out_dim;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        float u = acc[i];
        if (b) u += __bfloat162float(b[i % out_dim]);
        out[i] = __float2bfloat16_rn(u);
        if (gelu_out) gelu_out[i] = __float2bfloat16_rn(gelu_tanh(u));
    }
}

// Unfused DGELU: din = bf16(acc ⊙ GELU'(pre_gelu)) from the fp32 product.
__global__ void dgelu_kernel(bf16 *din, const float *acc, const bf16 *pre_gelu, size_t total) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x)
        din[i] = __float2bfloat16_rn(acc[i] * gelu_tanh_grad(__bfloat162float(pre_gelu[i])));
}

// One bias-gradient term: dout[r, c] (row stride ld) as fp32.
struct dout_value {
    const bf16 *dout;
    int ld;
    __device__ float operator()(int r, int c) const { return __bfloat162float(dout[(size_t)r * ld + c]); }
};

void hdlm_cuda_linear_forward(hdlm_bf16 *out, hdlm_bf16 *gelu_out, const hdlm_bf16 *in, const hdlm_bf16 *w,
                              const hdlm_bf16 *b, int n, int in_dim, int out_dim, hdlm_stream stream) {
    if (n <= 0 || out_dim <= 0) return;
    cudaStream_t s = (cudaStream_t)stream;
    hdlm_lt_matrix A = {w, CUDA_R_16BF, in_dim, out_dim, in_dim};
    hdlm_lt_matrix B = {in, CUDA_R_16BF, in_dim, n, in_dim};
    // With GELU, D is gelu_out and the aux matrix (the pre-activation) is out; aux ld must be a multiple of 8.
    hdlm_lt_matrix D = {gelu_out ? (const void *)gelu_out : (const void *)out, CUDA_R_16BF, out_dim, n, out_dim};
    bool bias_fusable = !b || hdlm_pointer_alignment(b) >= EPILOGUE_ALIGNMENT;
    if (gelu_out && out_dim % 8 == 0 && bias_fusable && hdlm_pointer_alignment(out) >= EPILOGUE_ALIGNMENT) {
        lt_epilogue ep = {b ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX, b, out, out_dim};
        if (lt_matmul(A, true, B, false, D, 0.0f, &ep, s)) return;
    } else if (!gelu_out && b && bias_fusable) {
        lt_epilogue ep = {CUBLASLT_EPILOGUE_BIAS, b, NULL, 0};
        if (lt_matmul(A, true, B, false, D, 0.0f, &ep, s)) return;
    }
    D.ptr = out;
    if (!b && !gelu_out) {
        hdlm_lt_matmul_must(A, true, B, false, D, 0.0f, s);
        return;
    }
    size_t total = (size_t)n * out_dim;
    float *acc;
    HDLM_CUDA_CHECK(cudaMallocAsync((void **)&acc, total * sizeof(float), s));
    hdlm_lt_matmul_must(A, true, B, false, (hdlm_lt_matrix){acc, CUDA_R_32F, out_dim, n, out_dim}, 0.0f, s);
    bias_gelu_kernel<<<hdlm_elementwise_blocks(total, 256), 256, 0, s>>>(as_bf16(out), as_bf16(gelu_out), acc,
                                                                          as_bf16(b), n, out_dim);
    HDLM_CUDA_LAUNCHED();
    HDLM_CUDA_CHECK(cudaFreeAsync(acc, s));
}

void hdlm_cuda_linear_backward(hdlm_bf16 *din, float *dw, float *db, const hdlm_bf16 *dout, const hdlm_bf16 *in,
                               const hdlm_bf16 *w, const hdlm_bf16 *pre_gelu, int n, int in_dim, int out_dim,
                               bool accumulate, hdlm_stream stream) {
    hdlm_linear_backward_strided(din, dw, db, dout, out_dim, in, w, pre_gelu, n, in_dim, out_dim, accumulate,
                                 (cudaStream_t)stream);
}

void hdlm_linear_backward_strided(hdlm_bf16 *din, float *dw, float *db, const hdlm_bf16 *dout, int dout_ld,
                                  const hdlm_bf16 *in, const hdlm_bf16 *w, const hdlm_bf16 *pre_gelu, int n,
                                  int in_dim, int out_dim, bool accumulate, cudaStream_t s) {
    HDLM_ASSERT(!(pre_gelu && accumulate), "linear backward: DGELU with an accumulated din is not defined");
    HDLM_ASSERT(dout_ld >= out_dim, "linear backward: dout row stride %d below its %d columns", dout_ld, out_dim);
    if (n <= 0) return;
    // dWᵀ[i,o] += inᵀ·dout, fp32 C = D with β = 1: the accumulation over micro-batches stays in fp32.
    hdlm_lt_matmul_must((hdlm_lt_matrix){in, CUDA_R_16BF, in_dim, n, in_dim}, false,
                   (hdlm_lt_matrix){dout, CUDA_R_16BF, out_dim, n, dout_ld}, true,
                   (hdlm_lt_matrix){dw, CUDA_R_32F, in_dim, out_dim, in_dim}, 1.0f, s);
    if (db) hdlm_column_reduce(db, dout_value{as_bf16(dout), dout_ld}, n, out_dim, s);
    if (!din) return;
    hdlm_lt_matrix A = {w, CUDA_R_16BF, in_dim, out_dim, in_dim};
    hdlm_lt_matrix B = {dout, CUDA_R_16BF, out_dim, n, dout_ld};
    hdlm_lt_matrix D = {din, CUDA_R_16BF, in_dim, n, in_dim};
    if (pre_gelu && in_dim % 8 == 0 && hdlm_pointer_alignment(pre_gelu) >= EPILOGUE_ALIGNMENT) {
        lt_epilogue ep = {CUBLASLT_EPILOGUE_DGELU, NULL, pre_gelu, in_dim};
        if (lt_matmul(A, false, B, false, D, 0.0f, &ep, s)) return;
    }
    if (!pre_gelu) {
        hdlm_lt_matmul_must(A, false, B, false, D, accumulate ? 1.0f : 0.0f, s);
        return;
    }
    size_t total = (size_t)n * in_dim;
    float *acc;
    HDLM_CUDA_CHECK(cudaMallocAsync((void **)&acc, total * sizeof(float), s));
    hdlm_lt_matmul_must(A, false, B, false, (hdlm_lt_matrix){acc, CUDA_R_32F, in_dim, n, in_dim}, 0.0f, s);
    dgelu_kernel<<<hdlm_elementwise_blocks(total, 256), 256, 0, s>>>(as_bf16(din), acc, as_bf16(pre_gelu), total);
    HDLM_CUDA_LAUNCHED();
    HDLM_CUDA_CHECK(cudaFreeAsync(acc, s));
}

// cuBLASLt, emulated on the host for tests/cuda_emu (README.md): the subset src/cuda/linear.cu uses, implemented from
// cuBLASLt's documented semantics (cublasLt.h, cuBLAS docs), not from the backend's reading of them:
//   D = ε(α·op(A)·op(B) + β·C [+ bias]),  matrices column-major: element (r, c) of a rows × cols layout at r + c·ld;
//   op(X) = X (CUBLAS_OP_N) or Xᵀ (CUBLAS_OP_T); op(A) is m × k, op(B) k × n, C and D m × n.
//   BIAS: the bias vector (length m = rows of D, packed) is added to every column; GELU_AUX(_BIAS): D = GELU(x) and
//   the GELU input x is written to the aux matrix (ld AUX_LD, divisible by 8 and ≥ m, type of D); DGELU: D = x ·
//   GELU'(aux). GELU is the tanh approximation. Products are accumulated in double (cuBLASLt's fp32 order is
//   unspecified). Dimension mismatches, a leading dimension below the row count, and operands that leave their
//   device allocation are errors, reported on stderr.
#include <cublasLt.h>
#include <cuda_bf16.h>

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <vector>

#include "emu_memory.h"

namespace {

struct layout {
    cudaDataType_t type;
    uint64_t rows, cols;
    int64_t ld;
};

struct matmul_desc {
    cublasComputeType_t compute;
    cudaDataType_t scale;
    cublasOperation_t trans_a = CUBLAS_OP_N, trans_b = CUBLAS_OP_N;
    cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
    const void *bias = nullptr;
    int bias_type = -1;   // -1: the type of D
    void *aux = nullptr;
    int64_t aux_ld = 0;
};

struct preference {
    size_t max_workspace = 0;
};

int g_handles;

size_t type_bytes(cudaDataType_t t) {
    switch (t) {
    case CUDA_R_32F: return 4;
    case CUDA_R_16BF: return 2;
    default: return 0;
    }
}

double load(const void *p, cudaDataType_t t, size_t i) {
    if (t == CUDA_R_32F) return ((const float *)p)[i];
    return (double)__bfloat162float(((const __nv_bfloat16 *)p)[i]);
}

void store(void *p, cudaDataType_t t, size_t i, double v) {
    if (t == CUDA_R_32F) ((float *)p)[i] = (float)v;
    else ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn((float)v);
}

double gelu(double x) { return 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))); }
double gelu_grad(double x) {
    double t = tanh(0.7978845608028654 * (x + 0.044715 * x * x * x));
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x);
}

cublasStatus_t invalid(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
cublasStatus_t invalid(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cuBLASLt emulator: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    return CUBLAS_STATUS_INVALID_VALUE;
}

bool has_aux(cublasLtEpilogue_t e) {
    return e == CUBLASLT_EPILOGUE_GELU_AUX || e == CUBLASLT_EPILOGUE_GELU_AUX_BIAS || e == CUBLASLT_EPILOGUE_DGELU;
}
bool has_bias(cublasLtEpilogue_t e) { return e == CUBLASLT_EPILOGUE_BIAS || e == CUBLASLT_EPILOGUE_GELU_AUX_BIAS; }

// The problem's m, n, k after checking that the operation is well defined (the heuristic's and the matmul's check).
cublasStatus_t check(const matmul_desc &d, const layout &a, const layout &b, const layout &c, const layout &o,
                     uint64_t *m, uint64_t *n, uint64_t *k) {
    if (d.compute != CUBLAS_COMPUTE_32F || d.scale != CUDA_R_32F)
        return invalid("compute type %d / scale type %d is not emulated", (int)d.compute, (int)d.scale);
    const layout *all[4] = {&a, &b, &c, &o};
    const char *names = "ABCD";
    for (int i = 0; i < 4; i++) {
        if (!type_bytes(all[i]->type)) return invalid("matrix %c: data type %d is not emulated", names[i], all[i]->type);
        if (all[i]->ld < (int64_t)all[i]->rows || all[i]->ld < 1)
            return invalid("matrix %c: ld %lld < rows %llu", names[i], (long long)all[i]->ld,
                           (unsigned long long)all[i]->rows);
    }
    if (a.type != CUDA_R_16BF || b.type != CUDA_R_16BF) return invalid("A and B must be bf16 in this emulation");
    if (c.type != o.type || c.rows != o.rows || c.cols != o.cols) return invalid("C and D differ in type or shape");
    *m = d.trans_a == CUBLAS_OP_N ? a.rows : a.cols;
    *k = d.trans_a == CUBLAS_OP_N ? a.cols : a.rows;
    uint64_t kb = d.trans_b == CUBLAS_OP_N ? b.rows : b.cols;
    *n = d.trans_b == CUBLAS_OP_N ? b.cols : b.rows;
    if (kb != *k || o.rows != *m || o.cols != *n)
        return invalid("shapes do not compose: op(A) %llu×%llu, op(B) %llu×%llu, D %llu×%llu",
                       (unsigned long long)*m, (unsigned long long)*k, (unsigned long long)kb,
                       (unsigned long long)*n, (unsigned long long)o.rows, (unsigned long long)o.cols);
    switch (d.epilogue) {
    case CUBLASLT_EPILOGUE_DEFAULT: case CUBLASLT_EPILOGUE_BIAS: case CUBLASLT_EPILOGUE_GELU_AUX:
    case CUBLASLT_EPILOGUE_GELU_AUX_BIAS: case CUBLASLT_EPILOGUE_DGELU: break;
    default: return invalid("epilogue %d is not emulated", (int)d.epilogue);
    }
    if (has_bias(d.epilogue)) {
        if (!d.bias) return invalid("epilogue %d without CUBLASLT_MATMUL_DESC_BIAS_POINTER", (int)d.epilogue);
        cudaDataType_t bt = d.bias_type < 0 ? o.type : (cudaDataType_t)d.bias_type;
        if (!emu::is_device_range(d.bias, *m * type_bytes(bt)))
            return invalid("bias vector of %llu elements at %p is not inside one device allocation",
                           (unsigned long long)*m, d.bias);
    }
    if (has_aux(d.epilogue)) {
        if (!d.aux) return invalid("epilogue %d without CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER", (int)d.epilogue);
        if (d.aux_ld % 8 || d.aux_ld < (int64_t)*m)
            return invalid("aux ld %lld: must be divisible by 8 and at least m = %llu", (long long)d.aux_ld,
                           (unsigned long long)*m);
        if (!emu::is_device_range(d.aux, ((*n - 1) * d.aux_ld + *m) * type_bytes(o.type)))
            return invalid("aux matrix %llu×%llu (ld %lld) at %p is not inside one device allocation",
                           (unsigned long long)*m, (unsigned long long)*n, (long long)d.aux_ld, d.aux);
    }
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t check_extent(const void *p, const layout &l, char name) {
    if (!l.rows || !l.cols) return CUBLAS_STATUS_SUCCESS;
    size_t bytes = ((l.cols - 1) * l.ld + l.rows) * type_bytes(l.type);
    if (!emu::is_device_range(p, bytes))
        return invalid("matrix %c (%llu×%llu, ld %lld) at %p is not inside one device allocation", name,
                       (unsigned long long)l.rows, (unsigned long long)l.cols, (long long)l.ld, p);
    return CUBLAS_STATUS_SUCCESS;
}

#define SET(field, type)                                                                                               \
    do {                                                                                                               \
        if (size != sizeof(type)) return invalid("attribute %d: size %zu, expected %zu", (int)attr, size, sizeof(type)); \
        type v_;                                                                                                       \
        memcpy(&v_, buf, sizeof(type));                                                                                \
        field = (decltype(field))v_;                                                                                              \
    } while (0)

}   // namespace

extern "C" {

cublasStatus_t cublasLtCreate(cublasLtHandle_t *handle) {
    *handle = (cublasLtHandle_t)&g_handles;
    g_handles++;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) {
    return handle == (cublasLtHandle_t)&g_handles && g_handles-- > 0 ? CUBLAS_STATUS_SUCCESS
                                                                     : CUBLAS_STATUS_NOT_INITIALIZED;
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *desc, cublasComputeType_t compute,
                                        cudaDataType_t scale) {
    matmul_desc *d = new matmul_desc;
    d->compute = compute;
    d->scale = scale;
    *desc = (cublasLtMatmulDesc_t)d;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
    delete (matmul_desc *)desc;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr,
                                              const void *buf, size_t size) {
    matmul_desc &d = *(matmul_desc *)desc;
    switch (attr) {
    case CUBLASLT_MATMUL_DESC_TRANSA: SET(d.trans_a, int32_t); break;
    case CUBLASLT_MATMUL_DESC_TRANSB: SET(d.trans_b, int32_t); break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE: SET(d.epilogue, uint32_t); break;
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: SET(d.bias, const void *); break;
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: SET(d.bias_type, int32_t); break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER: SET(d.aux, void *); break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD: SET(d.aux_ld, int64_t); break;
    default: return invalid("matmul attribute %d is not emulated", (int)attr);
    }
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *l, cudaDataType type, uint64_t rows, uint64_t cols,
                                          int64_t ld) {
    *l = (cublasLtMatrixLayout_t) new layout{type, rows, cols, ld};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) {
    delete (layout *)l;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *pref) {
    *pref = (cublasLtMatmulPreference_t) new preference;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
    delete (preference *)pref;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void *buf,
                                                    size_t size) {
    preference &p = *(preference *)pref;
    uint32_t alignment;
    switch (attr) {
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES: SET(p.max_workspace, uint64_t); break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES: case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES: case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES:
        SET(alignment, uint32_t);   // the emulation has no alignment requirements
        (void)alignment;
        break;
    default: return invalid("preference attribute %d is not emulated", (int)attr);
    }
    return CUBLAS_STATUS_SUCCESS;
}

// One algorithm for every well-defined problem.
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t a,
                                              cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c,
                                              cublasLtMatrixLayout_t d, cublasLtMatmulPreference_t, int requested,
                                              cublasLtMatmulHeuristicResult_t results[], int *count) {
    uint64_t m, n, k;
    *count = 0;
    if (requested < 1) return CUBLAS_STATUS_INVALID_VALUE;
    cublasStatus_t st = check(*(matmul_desc *)desc, *(layout *)a, *(layout *)b, *(layout *)c, *(layout *)d, &m, &n,
                              &k);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    memset(&results[0], 0, sizeof results[0]);
    results[0].state = CUBLAS_STATUS_SUCCESS;
    results[0].wavesCount = 1.0f;
    *count = 1;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t, cublasLtMatmulDesc_t desc, const void *alpha_p, const void *A,
                              cublasLtMatrixLayout_t adesc, const void *B, cublasLtMatrixLayout_t bdesc,
                              const void *beta_p, const void *C, cublasLtMatrixLayout_t cdesc, void *D,
                              cublasLtMatrixLayout_t ddesc, const cublasLtMatmulAlgo_t *algo, void *, size_t,
                              cudaStream_t) {
    const matmul_desc &d = *(matmul_desc *)desc;
    const layout &a = *(layout *)adesc, &b = *(layout *)bdesc, &c = *(layout *)cdesc, &o = *(layout *)ddesc;
    uint64_t m, n, k;
    cublasStatus_t st = check(d, a, b, c, o, &m, &n, &k);
    if (st == CUBLAS_STATUS_SUCCESS && !algo) st = invalid("no algorithm");
    if (st == CUBLAS_STATUS_SUCCESS) st = check_extent(A, a, 'A');
    if (st == CUBLAS_STATUS_SUCCESS) st = check_extent(B, b, 'B');
    if (st == CUBLAS_STATUS_SUCCESS) st = check_extent(C, c, 'C');
    if (st == CUBLAS_STATUS_SUCCESS) st = check_extent(D, o, 'D');
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    const float alpha = *(const float *)alpha_p, beta = *(const float *)beta_p;   // host pointer mode
    if (emu::tracing())
        fprintf(stderr, "CUDA emulator trace: cublasLtMatmul m %llu n %llu k %llu op %c%c D %s epilogue %d beta %g\n",
                (unsigned long long)m, (unsigned long long)n, (unsigned long long)k,
                d.trans_a == CUBLAS_OP_N ? 'N' : 'T', d.trans_b == CUBLAS_OP_N ? 'N' : 'T',
                o.type == CUDA_R_32F ? "fp32" : "bf16", (int)d.epilogue, beta);
    cudaDataType_t bias_type = d.bias_type < 0 ? o.type : (cudaDataType_t)d.bias_type;
    // op(A) as rows of k (row i = column i of op(A)ᵀ), op(B) as columns of k: the product is then dot products.
    std::vector<double> opa(m * k), opb(n * k);
    for (uint64_t i = 0; i < m; i++)
        for (uint64_t l = 0; l < k; l++)
            opa[i * k + l] = load(A, a.type, d.trans_a == CUBLAS_OP_N ? i + l * a.ld : l + i * a.ld);
    for (uint64_t j = 0; j < n; j++)
        for (uint64_t l = 0; l < k; l++)
            opb[j * k + l] = load(B, b.type, d.trans_b == CUBLAS_OP_N ? l + j * b.ld : j + l * b.ld);
    for (uint64_t j = 0; j < n; j++)
        for (uint64_t i = 0; i < m; i++) {
            double acc = 0;
            for (uint64_t l = 0; l < k; l++) acc += opa[i * k + l] * opb[j * k + l];
            double x = alpha * acc;
            if (beta != 0.0f) x += beta * load(C, c.type, i + j * c.ld);   // β = 0: C is not read (may hold NaN)
            if (has_bias(d.epilogue)) x += load(d.bias, bias_type, i);
            size_t id = i + j * o.ld, ix = i + j * d.aux_ld;
            switch (d.epilogue) {
            case CUBLASLT_EPILOGUE_GELU_AUX: case CUBLASLT_EPILOGUE_GELU_AUX_BIAS:
                store(d.aux, o.type, ix, x);
                x = gelu(x);
                break;
            case CUBLASLT_EPILOGUE_DGELU: x *= gelu_grad(load(d.aux, o.type, ix)); break;
            default: break;
            }
            store(D, o.type, id, x);
        }
    return CUBLAS_STATUS_SUCCESS;
}

}   // extern "C"

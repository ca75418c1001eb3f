// The CUDA runtime of the GPU backend (include/hdlm/cuda.h): device discovery that never fails, the compute stream,
// the cuBLASLt handle and workspace, device memory, and bf16 conversions on the device.
#include <stdio.h>

#include "cuda_internal.cuh"

enum { CUBLASLT_WORKSPACE_BYTES = 32 << 20 };   // what cuBLASLt's Hopper kernels ask for at most (split-K, stream-K)

static struct {
    bool ready;
    int device;
    cudaStream_t stream;
    cublasLtHandle_t lt;
    void *workspace;
} g_cuda;

static char g_unavailable[256];

bool hdlm_cuda_compiled(void) { return true; }

// The oldest architecture this library carries code for (nvcc's list of -arch values, e.g. 900 for sm_90).
static int built_arch_min(void) {
    const int archs[] = {__CUDA_ARCH_LIST__};
    int lo = archs[0];
    for (size_t i = 1; i < sizeof archs / sizeof archs[0]; i++) lo = archs[i] < lo ? archs[i] : lo;
    return lo;
}

int hdlm_cuda_device_count(void) {
    // Without a driver cudaGetDeviceCount returns an error and leaves the count alone.
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();   // do not leave the error for the next checked call
        snprintf(g_unavailable, sizeof g_unavailable, "no usable CUDA driver or device (cudaGetDeviceCount: %s: %s)",
                 cudaGetErrorName(err), cudaGetErrorString(err));
        return 0;
    }
    if (count == 0) {
        snprintf(g_unavailable, sizeof g_unavailable, "no CUDA device found");
        return 0;
    }
    // Kernels are built for built_arch_min() and newer only: an older GPU cannot run them.
    int usable = 0, major = 0, minor = 0;
    for (int dev = 0; dev < count; dev++) {
        if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
            (void)cudaGetLastError();
            continue;
        }
        if (major * 100 + minor * 10 >= built_arch_min()) usable++;
    }
    if (usable == 0) {
        snprintf(g_unavailable, sizeof g_unavailable,
                 "%d CUDA device(s), compute capability %d.%d, older than the sm_%d this build targets "
                 "(set CMAKE_CUDA_ARCHITECTURES)", count, major, minor, built_arch_min() / 10);
        return 0;
    }
    g_unavailable[0] = '\0';
    return usable;
}

const char *hdlm_cuda_unavailable_reason(void) {
    if (!g_cuda.ready) hdlm_cuda_device_count();   // fills the reason
    return g_unavailable;
}

// Records a CUDA failure of hdlm_cuda_init (recoverable: the caller may fall back to the CPU).
#define INIT_TRY(call)                                                                                                 \
    do {                                                                                                               \
        cudaError_t err_ = (call);                                                                                     \
        if (err_ != cudaSuccess) {                                                                                     \
            (void)cudaGetLastError();                                                                                  \
            hdlm_cuda_shutdown();                                                                                      \
            return HDLM_FAIL("CUDA device %d: %s failed: %s", device, #call, cudaGetErrorString(err_));               \
        }                                                                                                              \
    } while (0)

int hdlm_cuda_init(int device) {
    if (g_cuda.ready) {
        HDLM_CHECK(g_cuda.device == device, "CUDA is already initialised on device %d, not %d", g_cuda.device, device);
        return 0;
    }
    int count = hdlm_cuda_device_count();
    HDLM_CHECK(count > 0, "no CUDA device to use: %s", g_unavailable);
    HDLM_CHECK(device >= 0 && device < count, "CUDA device %d does not exist (%d usable)", device, count);
    g_cuda.device = device;
    INIT_TRY(cudaSetDevice(device));
    // A blocking stream: the synchronous copies below (legacy default stream) are then ordered with its kernels.
    INIT_TRY(cudaStreamCreate(&g_cuda.stream));
    cublasStatus_t st = cublasLtCreate(&g_cuda.lt);
    if (st != CUBLAS_STATUS_SUCCESS) {
        hdlm_cuda_shutdown();
        return HDLM_FAIL("CUDA device %d: cublasLtCreate failed (status %d)", device, (int)st);
    }
    INIT_TRY(cudaMalloc(&g_cuda.workspace, CUBLASLT_WORKSPACE_BYTES));
    g_cuda.ready = true;
    return 0;
}

void hdlm_cuda_shutdown(void) {
    // Also cleans up after a partial hdlm_cuda_init; errors here are ignored (the process is usually ending).
    if (g_cuda.workspace) (void)cudaFree(g_cuda.workspace);
    if (g_cuda.lt) (void)cublasLtDestroy(g_cuda.lt);
    if (g_cuda.stream) (void)cudaStreamDestroy(g_cuda.stream);
    (void)cudaGetLastError();
    g_cuda.workspace = NULL;
    g_cuda.lt = NULL;
    g_cuda.stream = NULL;
    g_cuda.ready = false;
}

hdlm_stream hdlm_cuda_stream(void) {
    HDLM_ASSERT(g_cuda.ready, "hdlm_cuda_stream before hdlm_cuda_init");
    return (hdlm_stream)g_cuda.stream;
}

cublasLtHandle_t hdlm_cublaslt_handle(void) {
    HDLM_ASSERT(g_cuda.ready, "cuBLASLt used before hdlm_cuda_init");
    return g_cuda.lt;
}

void *hdlm_cublaslt_workspace(size_t *bytes) {
    HDLM_ASSERT(g_cuda.ready, "cuBLASLt used before hdlm_cuda_init");
    *bytes = CUBLASLT_WORKSPACE_BYTES;
    return g_cuda.workspace;
}

void *hdlm_cuda_malloc(size_t bytes) {
    void *ptr = NULL;
    cudaError_t err = cudaMalloc(&ptr, bytes);
    if (err != cudaSuccess) {
        size_t free_bytes = 0, total = 0;
        (void)cudaMemGetInfo(&free_bytes, &total);
        HDLM_DIE("cudaMalloc of %zu bytes (%.1f MiB) failed: %s (%.1f of %.1f MiB free)", bytes,
                 (double)bytes / (1 << 20), cudaGetErrorString(err), (double)free_bytes / (1 << 20),
                 (double)total / (1 << 20));
    }
    return ptr;
}

void hdlm_cuda_free(void *ptr) {
    if (ptr) HDLM_CUDA_CHECK(cudaFree(ptr));
}

// cudaMemcpy runs on the legacy default stream, which waits for (and is waited for by) every blocking stream.
void hdlm_cuda_upload(void *dst_device, const void *src_host, size_t bytes) {
    if (bytes) HDLM_CUDA_CHECK(cudaMemcpy(dst_device, src_host, bytes, cudaMemcpyHostToDevice));
}

void hdlm_cuda_download(void *dst_host, const void *src_device, size_t bytes) {
    if (bytes) HDLM_CUDA_CHECK(cudaMemcpy(dst_host, src_device, bytes, cudaMemcpyDeviceToHost));
}

void hdlm_cuda_memset0(void *ptr, size_t bytes, hdlm_stream stream) {
    if (bytes) HDLM_CUDA_CHECK(cudaMemsetAsync(ptr, 0, bytes, (cudaStream_t)stream));
}

void hdlm_cuda_synchronize(void) { HDLM_CUDA_CHECK(cudaDeviceSynchronize()); }

// Grid-stride conversions (round to nearest even; NaN stays NaN, as on the host).
__global__ void float_to_bf16_kernel(bf16 *dst, const float *src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16_rn(src[i]);
}

__global__ void bf16_to_float_kernel(float *dst, const bf16 *src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __bfloat162float(src[i]);
}

void hdlm_cuda_float_to_bf16(hdlm_bf16 *dst, const float *src, size_t n, hdlm_stream stream) {
    if (!n) return;
    float_to_bf16_kernel<<<hdlm_elementwise_blocks(n, 256), 256, 0, (cudaStream_t)stream>>>(as_bf16(dst), src, n);
    HDLM_CUDA_LAUNCHED();
}

void hdlm_cuda_bf16_to_float(float *dst, const hdlm_bf16 *src, size_t n, hdlm_stream stream) {
    if (!n) return;
    bf16_to_float_kernel<<<hdlm_elementwise_blocks(n, 256), 256, 0, (cudaStream_t)stream>>>(dst, as_bf16(src), n);
    HDLM_CUDA_LAUNCHED();
}

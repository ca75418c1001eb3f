// src/cuda/runtime.cu — TEMPORARY STAND-IN on branch cuda-attn, only so that tests/test_cuda_attention.c links.
// The real runtime (hdlm/cuda.h) is written on another branch: at merge, take that file and drop this one whole.
// It implements just what the attention test calls, plainly (no cuBLASLt, default stream, no device conversions).
#include <stdio.h>
#include <string.h>

#include "cuda_internal.cuh"

static char unavailable[256];

bool hdlm_cuda_compiled(void) { return true; }

int hdlm_cuda_device_count(void) {
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
        snprintf(unavailable, sizeof unavailable, "cudaGetDeviceCount: %s", cudaGetErrorString(err));
        return 0;
    }
    if (count == 0) snprintf(unavailable, sizeof unavailable, "no CUDA device");
    return count;
}

const char *hdlm_cuda_unavailable_reason(void) { return unavailable; }

int hdlm_cuda_init(int device) {
    HDLM_CUDA_CHECK(cudaSetDevice(device));
    return 0;
}

void hdlm_cuda_shutdown(void) {}

hdlm_stream hdlm_cuda_stream(void) { return nullptr; }

void *hdlm_cuda_malloc(size_t bytes) {
    void *p = nullptr;
    HDLM_CUDA_CHECK(cudaMalloc(&p, bytes));
    return p;
}

void hdlm_cuda_free(void *ptr) { HDLM_CUDA_CHECK(cudaFree(ptr)); }

void hdlm_cuda_upload(void *dst_device, const void *src_host, size_t bytes) {
    HDLM_CUDA_CHECK(cudaMemcpy(dst_device, src_host, bytes, cudaMemcpyHostToDevice));
}

void hdlm_cuda_download(void *dst_host, const void *src_device, size_t bytes) {
    HDLM_CUDA_CHECK(cudaMemcpy(dst_host, src_device, bytes, cudaMemcpyDeviceToHost));
}

void hdlm_cuda_memset0(void *ptr, size_t bytes, hdlm_stream stream) {
    HDLM_CUDA_CHECK(cudaMemsetAsync(ptr, 0, bytes, stream));
}

void hdlm_cuda_synchronize(void) { HDLM_CUDA_CHECK(cudaDeviceSynchronize()); }

hdlm_bf16 hdlm_bf16_from_float(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (hdlm_bf16)((u >> 16) | 0x40);   // NaN stays a (quiet) NaN
    return (hdlm_bf16)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);                   // round to nearest even
}

float hdlm_bf16_to_float(hdlm_bf16 x) {
    uint32_t u = (uint32_t)x << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

// The CUDA runtime API (include/hdlm/cuda.h, cuda/cuda_ops.h) in builds without nvcc: nothing is usable, every call
// that would need a GPU ends the job saying so, and tests skip on hdlm_cuda_device_count() == 0.
#ifndef HDLM_HAVE_CUDA
#include "hdlm/common.h"
#include "hdlm/cuda.h"

#define NO_CUDA "built without the CUDA backend (nvcc not found at configure time)"

bool hdlm_cuda_compiled(void) { return false; }
int hdlm_cuda_device_count(void) { return 0; }
const char *hdlm_cuda_unavailable_reason(void) { return NO_CUDA; }
int hdlm_cuda_init(int device) { return HDLM_FAIL("cannot use CUDA device %d: %s", device, NO_CUDA); }
void hdlm_cuda_shutdown(void) {}
hdlm_stream hdlm_cuda_stream(void) { HDLM_DIE("hdlm_cuda_stream: %s", NO_CUDA); }
void *hdlm_cuda_malloc(size_t bytes) { HDLM_DIE("hdlm_cuda_malloc(%zu bytes): %s", bytes, NO_CUDA); }
void hdlm_cuda_free(void *ptr) {
    if (ptr) HDLM_DIE("hdlm_cuda_free: %s", NO_CUDA);
}
void hdlm_cuda_upload(void *dst_device, const void *src_host, size_t bytes) {
    (void)dst_device, (void)src_host;
    HDLM_DIE("hdlm_cuda_upload(%zu bytes): %s", bytes, NO_CUDA);
}
void hdlm_cuda_download(void *dst_host, const void *src_device, size_t bytes) {
    (void)dst_host, (void)src_device;
    HDLM_DIE("hdlm_cuda_download(%zu bytes): %s", bytes, NO_CUDA);
}
void hdlm_cuda_memset0(void *ptr, size_t bytes, hdlm_stream stream) {
    (void)ptr, (void)stream;
    HDLM_DIE("hdlm_cuda_memset0(%zu bytes): %s", bytes, NO_CUDA);
}
void hdlm_cuda_synchronize(void) { HDLM_DIE("hdlm_cuda_synchronize: %s", NO_CUDA); }
void hdlm_cuda_float_to_bf16(hdlm_bf16 *dst, const float *src, size_t n, hdlm_stream stream) {
    (void)dst, (void)src, (void)stream;
    HDLM_DIE("hdlm_cuda_float_to_bf16(%zu): %s", n, NO_CUDA);
}
void hdlm_cuda_bf16_to_float(float *dst, const hdlm_bf16 *src, size_t n, hdlm_stream stream) {
    (void)dst, (void)src, (void)stream;
    HDLM_DIE("hdlm_cuda_bf16_to_float(%zu): %s", n, NO_CUDA);
}
#endif

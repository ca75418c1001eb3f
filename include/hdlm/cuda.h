// hdlm/cuda.h — the CUDA runtime of the GPU backend: device discovery, memory, streams, bf16 storage.
//
// Every function here exists in every build. Without nvcc (HDLM_HAVE_CUDA undefined) src/cuda/cuda_none.c supplies
// them: hdlm_cuda_compiled() is false, hdlm_cuda_device_count() is 0 and the rest die with a message saying the
// build has no CUDA backend. With nvcc but no GPU or driver, hdlm_cuda_device_count() is 0 and
// hdlm_cuda_unavailable_reason() says why, so tests skip with that message instead of failing.
//
// Precision (issue 10): fp32 master weights, gradients and optimizer state; bf16 activations and matmul inputs,
// fp32 accumulation; LayerNorm and softmax statistics in fp32. bf16 values are stored as their raw 16 bits.
#ifndef HDLM_CUDA_H
#define HDLM_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef uint16_t hdlm_bf16;                 // raw bits of a bfloat16 (device arrays of __nv_bfloat16)
typedef struct CUstream_st *hdlm_stream;    // = cudaStream_t, without pulling CUDA headers into C code

bool hdlm_cuda_compiled(void);              // the library was built with the CUDA backend
int hdlm_cuda_device_count(void);           // usable GPUs; 0 (never an error) without driver or device
const char *hdlm_cuda_unavailable_reason(void);   // why the count is 0 ("" when GPUs are usable)

// Selects the device, creates the cuBLASLt handle and its workspace. Returns -1 with a message on failure.
int hdlm_cuda_init(int device);
void hdlm_cuda_shutdown(void);
hdlm_stream hdlm_cuda_stream(void);         // the main compute stream (created by hdlm_cuda_init)

// Memory: failures die with the size and the CUDA error (allocation failure is not recoverable mid-step).
void *hdlm_cuda_malloc(size_t bytes);
void hdlm_cuda_free(void *ptr);
void hdlm_cuda_upload(void *dst_device, const void *src_host, size_t bytes);      // synchronous
void hdlm_cuda_download(void *dst_host, const void *src_device, size_t bytes);    // synchronous
void hdlm_cuda_memset0(void *ptr, size_t bytes, hdlm_stream stream);
void hdlm_cuda_synchronize(void);           // the device; checks for asynchronous kernel errors

// bf16 on the host (round to nearest even; NaN stays NaN), for uploads and tests.
hdlm_bf16 hdlm_bf16_from_float(float x);
float hdlm_bf16_to_float(hdlm_bf16 x);
// Device conversions on a stream.
void hdlm_cuda_float_to_bf16(hdlm_bf16 *dst, const float *src, size_t n, hdlm_stream stream);
void hdlm_cuda_bf16_to_float(float *dst, const hdlm_bf16 *src, size_t n, hdlm_stream stream);

#endif

// Emulated device memory, shared by the runtime and the cuBLASLt emulation (tests/cuda_emu/README.md).
#ifndef HDLM_CUDA_EMU_MEMORY_H
#define HDLM_CUDA_EMU_MEMORY_H
#include <stddef.h>
namespace emu {
bool is_device_range(const void *p, size_t bytes);   // [p, p + bytes) lies inside one cudaMalloc'd block
bool tracing();                                      // HDLM_CUDA_EMU_TRACE=1
}
#endif

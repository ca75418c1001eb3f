// Shadows the toolkit's cuda_runtime.h when src/cuda/*.cu are compiled as host C++ (tests/cuda_emu/README.md).
// The toolkit's own headers supply every type, enum and runtime-API declaration (so the signatures the backend
// calls are the real ones); emu_device.h supplies what nvcc would: kernel qualifiers, built-in indices, barriers,
// warp shuffles and the device intrinsics the backend uses. tests/cuda_emu/runtime.cpp defines the API functions.
#ifndef HDLM_CUDA_EMU_RUNTIME_H
#define HDLM_CUDA_EMU_RUNTIME_H

#include <cuda_runtime_api.h>
#include <cuda_bf16.h>
#include <vector_functions.h>

#include "emu_device.h"

// cuda_runtime.h's C++ overload: the attribute of a kernel given as a function (pointer).
template <class T> cudaError_t cudaFuncSetAttribute(T *entry, cudaFuncAttribute attr, int value) {
    return cudaFuncSetAttribute((const void *)entry, attr, value);
}

#endif

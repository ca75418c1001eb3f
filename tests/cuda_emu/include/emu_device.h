// The device side of the CUDA emulation (tests/cuda_emu/README.md): what nvcc provides to kernels, for kernels
// compiled as host C++. A launch runs the blocks one after another; the threads of a block are fibers
// (tests/cuda_emu/runtime.cpp) that switch only at __syncthreads, warp shuffles and mma.sync, so every such
// operation is a real rendezvous of all threads of the block or warp, in a deterministic order.
#ifndef HDLM_CUDA_EMU_DEVICE_H
#define HDLM_CUDA_EMU_DEVICE_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <vector_types.h>

// Kernel and variable qualifiers. __shared__ variables are function statics: one instance that every fiber of the
// running block sees (blocks run one at a time). Their initial contents are whatever the previous block left.
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __constant__
#undef __forceinline__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __constant__ static
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
// The architectures this "build" targets (nvcc defines it from -arch): an sm_90 device, as emulated.
#define __CUDA_ARCH_LIST__ 900

constexpr int warpSize = 32;

namespace emu {
struct block_state;
// The running CUDA thread (a fiber); the emulator runs one host thread, so a plain global suffices.
struct thread_state {
    uint3 tid, bid;
    dim3 bdim, gdim;
    unsigned linear;        // threadIdx in the block, x fastest
    unsigned exchanges;     // warp exchanges so far (selects the double-buffered slot)
    block_state *block;
};
extern thread_state current;

void sync_block();                                        // __syncthreads
// Deposits 8 bytes for the warp and waits for every lane of it; returns the lane slots of this exchange.
const uint64_t *warp_exchange(uint64_t mine, unsigned mask);
const uint32_t *warp_exchange6(const uint32_t mine[6], unsigned mask);   // six 32-bit registers per lane
void *dynamic_smem();                                     // extern __shared__ arrays
[[noreturn]] void fail(const char *fmt, ...);
}   // namespace emu

#define threadIdx (::emu::current.tid)
#define blockIdx (::emu::current.bid)
#define blockDim (::emu::current.bdim)
#define gridDim (::emu::current.gdim)

inline void __syncthreads() { emu::sync_block(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { (void)emu::warp_exchange(0, mask); }

// __shfl_xor_sync: the value of lane (lane ^ lane_mask) within segments of `width` lanes; a source in a later
// segment yields the caller's own value (CUDA C++ Programming Guide, warp shuffle functions).
template <class T> T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
    static_assert(sizeof(T) <= 8, "emulated shuffles move at most 8 bytes");
    uint64_t mine = 0;
    memcpy(&mine, &var, sizeof(T));
    const uint64_t *lanes = emu::warp_exchange(mine, mask);
    int lane = (int)(emu::current.linear % warpSize), src = lane ^ lane_mask;
    if (src >= (lane / width + 1) * width) return var;
    T out;
    memcpy(&out, &lanes[src], sizeof(T));
    return out;
}
template <class T> T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
    uint64_t mine = 0;
    memcpy(&mine, &var, sizeof(T));
    const uint64_t *lanes = emu::warp_exchange(mine, mask);
    int lane = (int)(emu::current.linear % warpSize), src = (lane / width) * width + src_lane % width;
    T out;
    memcpy(&out, &lanes[src], sizeof(T));
    return out;
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 over the warp, from the PTX ISA's fragment layouts
// (group g = lane / 4, t = lane % 4): A register r holds rows g + 8·(r % 2), columns 2t + 8·(r / 2) (+1 in the high
// half); B register r holds k = 2t + 8r (+1), n = g; C/D element r holds row g + 8·(r / 2), column 2t + r % 2.
// Products of bf16 values are exact in fp32; the sum runs in k order (the hardware's order is unspecified).
namespace emu {
void mma_m16n8k16_bf16(float c[4], const uint32_t a[4], const uint32_t b[2]);
// ldmatrix.sync.aligned.m8n8.x4(.trans).shared.b16 (PTX ISA): lane 8i + q gives the address of row q of 8×8 matrix
// i (16-byte aligned); lane 4g + t receives in r[i] the elements 2t and 2t + 1 of row g of matrix i — with .trans,
// of column g (rows 2t and 2t + 1), low half first.
void ldmatrix_x4_b16(uint32_t r[4], const void *row, bool trans);
}

// Round-to-nearest intrinsics: each a separate rounded operation (no contraction into an FMA).
inline float emu_opaque(float x) {
    __asm__("" : "+x"(x));
    return x;
}
inline float __fadd_rn(float a, float b) { return emu_opaque(a + b); }
inline float __fsub_rn(float a, float b) { return emu_opaque(a - b); }
inline float __fmul_rn(float a, float b) { return emu_opaque(a * b); }
inline float __fdiv_rn(float a, float b) { return emu_opaque(a / b); }
inline float __fsqrt_rn(float a) { return emu_opaque(sqrtf(a)); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }

// Device min/max (CUDA's overloads for int, unsigned, float, ...).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }

// The <<<grid, block, smem, stream>>> launch. The build (tests/cuda_emu/launch.sed) rewrites
//   kernel<<<cfg>>>(args)   into   emu::launch([](auto... a_) { kernel(a_...); }, "kernel", cfg)(args)
// so templates whose arguments are deduced from the call work as under nvcc. The generic lambda takes its
// arguments by value: each thread gets its own copy of the parameters, as from the kernel parameter buffer.
namespace emu {
struct launch_config {
    dim3 grid, block;
    size_t smem;
    cudaStream_t stream;
};
// Runs body(ctx) as every thread of every block, after checking the configuration (errors go to cudaGetLastError).
void run_grid(const launch_config &cfg, void (*body)(void *), void *ctx, const char *kernel);
// HDLM_CUDA_EMU_TRACE=1: after each launch, the NaNs in every writable float, double and bf16 argument's allocation
// (from the pointer on) are counted and reported, to find the first kernel that produces one.
bool tracing();
void trace_output(const char *kernel, int index, const void *p, int kind);
template <class T> void trace_arg(const char *, int, const T &) {}
inline void trace_arg(const char *k, int i, float *p) { trace_output(k, i, p, 0); }
inline void trace_arg(const char *k, int i, double *p) { trace_output(k, i, p, 1); }
inline void trace_arg(const char *k, int i, __nv_bfloat16 *p) { trace_output(k, i, p, 2); }

template <class Fn> struct launcher {
    Fn fn;
    const char *kernel;
    launch_config cfg;
    template <class... Args> void operator()(Args... args) {
        auto bound = [&] { fn(args...); };
        run_grid(cfg, [](void *p) { (*static_cast<decltype(bound) *>(p))(); }, &bound, kernel);
        if (tracing()) {
            int index = 0;
            (trace_arg(kernel, index++, args), ...);
        }
    }
};
template <class Fn>
launcher<Fn> launch(Fn fn, const char *kernel, dim3 grid, dim3 block, size_t smem = 0, cudaStream_t stream = 0) {
    return launcher<Fn>{fn, kernel, {grid, block, smem, stream}};
}
}   // namespace emu

#endif

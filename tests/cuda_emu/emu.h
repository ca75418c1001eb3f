// Host emulation of the CUDA features src/cuda/attention.cu uses: one std::thread per CUDA thread, pthread barriers,
// mma.sync from the PTX fragment layouts (tests/cuda_emu/README.md).
#pragma once
#include <cuda_bf16.h>
#include <vector_types.h>
#include <vector_functions.h>
#include <cstring>
#include <pthread.h>
#include <math.h>
#include <stdint.h>
#include <thread>
#include <vector>
#include <functional>
#include <cstdio>
#include <cstdlib>
extern "C" {
#include "hdlm/common.h"
#include "hdlm/mask.h"
}
typedef __nv_bfloat16 bf16;
struct emu_dim { unsigned x, y, z; };
struct emu_ctx {
    emu_dim tid, bid, bdim;
    float *smem;
    pthread_barrier_t *block_bar, *warp_bars;
    float *xch;
    uint32_t *mxch;
};
extern thread_local emu_ctx emu;
#define threadIdx emu.tid
#define blockIdx emu.bid
#define blockDim emu.bdim
#undef __global__
#define __global__
#undef __launch_bounds__
#define __launch_bounds__(...)
inline void __syncthreads() { pthread_barrier_wait(emu.block_bar); }
inline float __shfl_xor_sync(unsigned, float x, int lm) {
    unsigned t = emu.tid.x;
    emu.xch[t] = x;
    pthread_barrier_wait(&emu.warp_bars[t / 32]);
    float y = emu.xch[t ^ lm];
    pthread_barrier_wait(&emu.warp_bars[t / 32]);
    return y;
}
// mma.sync.m16n8k16.row.col.f32.bf16.bf16.f32 over the warp, from the PTX fragment layouts.
inline float emu_bf16_half(uint32_t w, int half) {
    uint32_t u = half ? (w & 0xffff0000u) : (w << 16);
    float f; memcpy(&f, &u, 4); return f;
}
inline void mma_m16n8k16(float c[4], const uint32_t a[4], const uint32_t b[2]) {
    unsigned t = emu.tid.x, lane = t % 32, base = t - lane;
    uint32_t *mine = emu.mxch + 6 * t;
    for (int r = 0; r < 4; r++) mine[r] = a[r];
    mine[4] = b[0]; mine[5] = b[1];
    pthread_barrier_wait(&emu.warp_bars[t / 32]);
    auto A = [&](int row, int k) {
        unsigned owner = base + (row % 8) * 4 + (k % 8) / 2; int reg = row / 8 + 2 * (k / 8);
        return emu_bf16_half(emu.mxch[6 * owner + reg], k % 2);
    };
    auto B = [&](int k, int n) {
        unsigned owner = base + n * 4 + (k % 8) / 2; int reg = 4 + k / 8;
        return emu_bf16_half(emu.mxch[6 * owner + reg], k % 2);
    };
    float d[4];
    for (int r = 0; r < 4; r++) {
        int row = lane / 4 + 8 * (r / 2), col = 2 * (lane % 4) + r % 2;
        float acc = c[r];
        for (int k = 0; k < 16; k++) acc += A(row, k) * B(k, col);
        d[r] = acc;
    }
    pthread_barrier_wait(&emu.warp_bars[t / 32]);
    for (int r = 0; r < 4; r++) c[r] = d[r];
}
static inline int max(int a, int b) { return a > b ? a : b; }
static inline int hdlm_ceil_div(size_t a, size_t b) { return (int)((a + b - 1) / b); }
// from cuda_internal.cuh (copied: that header pulls cublasLt)
inline void hdlm_philox4x32_dev(uint64_t key, uint64_t counter_hi, uint64_t counter_lo, uint32_t out[4]) {
    const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
    uint32_t c0 = (uint32_t)counter_lo, c1 = (uint32_t)(counter_lo >> 32);
    uint32_t c2 = (uint32_t)counter_hi, c3 = (uint32_t)(counter_hi >> 32);
    uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)M0 * c0, p1 = (uint64_t)M1 * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c0 = n0; c1 = (uint32_t)p1; c2 = n2; c3 = (uint32_t)p0; k0 += W0; k1 += W1;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}
inline float hdlm_uniform_at_dev(uint64_t key, uint64_t i) {
    uint32_t block[4];
    hdlm_philox4x32_dev(key, 1, i >> 2, block);
    return (float)(block[i & 3] >> 8) * 0x1.0p-24f;
}
// Runs fn for every thread of every block; smem_bytes of shared memory per block (poisoned with NaN).
void emu_launch(emu_dim grid, unsigned threads, size_t smem_bytes, const std::function<void()> &fn);

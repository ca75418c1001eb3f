// core/simd.h — the CPU's widest float vector as a GCC vector type (16 lanes with AVX-512, 8 otherwise), for the
// hand-tiled kernels (the GEMM's, the attention's), the in-register transpose both pack with, and bits as lane masks.
#ifndef HDLM_SIMD_H
#define HDLM_SIMD_H

#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__)
enum { LANES = 16, VEC_REGISTERS = 32 };
#else
enum { LANES = 8, VEC_REGISTERS = 16 };
#endif

typedef float vecf __attribute__((vector_size(LANES * sizeof(float))));
typedef float vecf_unaligned __attribute__((vector_size(LANES * sizeof(float)), aligned(sizeof(float))));
typedef int32_t veci __attribute__((vector_size(LANES * sizeof(int32_t))));

// Transposes each n × n block along the lanes of x[0, n) (n a power of two ≤ LANES): x[r][h·n + j] ↔ x[j][h·n + r].
// Swaps the off-diagonal b×b blocks of every 2b×2b block, for b = n/2 down to 1 (two-source permutes; element by
// element, the strided stores of a transpose cost several cycles each).
static inline void hdlm_vec_transpose_blocks(vecf *x, int n) {
#if defined(__clang__)
    // clang has no __builtin_shuffle with indices computed at run time (it builds only the fuzz targets here)
    vecf t[LANES];
    for (int r = 0; r < n; r++)
        for (int j = 0; j < LANES; j++) t[j % n][j / n * n + r] = x[r][j];
    for (int r = 0; r < n; r++) x[r] = t[r];
#else
    for (int b = n / 2; b >= 1; b /= 2) {
        veci first, second;   // shuffle indices into the pair (x[r], x[r + b])
        for (int j = 0; j < LANES; j++) {
            int even = (j / b) % 2 == 0;
            first[j] = even ? j : LANES + j - b;
            second[j] = even ? j + b : LANES + j;
        }
        for (int r0 = 0; r0 < n; r0 += 2 * b)
            for (int r = r0; r < r0 + b; r++) {
                vecf lo = x[r], hi = x[r + b];
                x[r] = __builtin_shuffle(lo, hi, first);
                x[r + b] = __builtin_shuffle(lo, hi, second);
            }
    }
#endif
}

// x[r][j] ↔ x[j][r]: the LANES × LANES transpose.
static inline void hdlm_vec_transpose(vecf x[LANES]) { hdlm_vec_transpose_blocks(x, LANES); }

// Bits at, at + 1, …, at + LANES − 1 of a little-endian bit string as lane masks (all ones where set): dropout's keep
// bits. Reads the 8 bytes from byte at / 8.
static inline veci hdlm_vec_bit_lanes(const uint8_t *bytes, int at) {
    uint64_t word;
    memcpy(&word, bytes + (at >> 3), sizeof word);
    veci lane_bit;
    for (int l = 0; l < LANES; l++) lane_bit[l] = 1 << l;
    return (((veci){0} + (int32_t)(word >> (at & 7))) & lane_bit) != 0;
}

#endif

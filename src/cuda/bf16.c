// bfloat16 on the host (include/hdlm/cuda.h): in every build, so uploads and tests work with or without nvcc.
#include <string.h>

#include "hdlm/cuda.h"

hdlm_bf16 hdlm_bf16_from_float(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    // NaN keeps its sign and becomes quiet (rounding could carry its payload into the exponent = infinity).
    if ((u & 0x7fffffffu) > 0x7f800000u) return (hdlm_bf16)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);   // round to nearest, ties to even (overflow rounds to infinity, as it should)
    return (hdlm_bf16)(u >> 16);
}

float hdlm_bf16_to_float(hdlm_bf16 x) {
    uint32_t u = (uint32_t)x << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

// Token embedding; the γ family mixes each row with the MASK row, e = w·E[x] + (1−w)·E[MASK] (method §5.4).
#include <omp.h>

#include "model/layers.h"

void hdlm_embedding_forward(float *out, const float *table, const uint32_t *ids, const float *mix, uint32_t mask_id,
                            int n, int d) {
    const float *mask_row = table + (size_t)mask_id * d;
#pragma omp parallel for schedule(static)
    for (int r = 0; r < n; r++) {
        const float *e = table + (size_t)ids[r] * d;
        float *o = out + (size_t)r * d;
        if (mix) {
            float w = mix[r];
            for (int i = 0; i < d; i++) o[i] = w * e[i] + (1.0f - w) * mask_row[i];
        } else {
            for (int i = 0; i < d; i++) o[i] = e[i];
        }
    }
}

void hdlm_embedding_backward(float *dtable, const float *dout, const uint32_t *ids, const float *mix,
                             uint32_t mask_id, int n, int d) {
    // Tokens repeat, so threads split the d columns instead of the tokens: no two threads write the same float.
#pragma omp parallel
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        int lo = (int)((long)d * t / nt), hi = (int)((long)d * (t + 1) / nt);
        float *dmask = dtable + (size_t)mask_id * d;
        for (int r = 0; r < n; r++) {
            const float *g = dout + (size_t)r * d;
            float *de = dtable + (size_t)ids[r] * d;
            float w = mix ? mix[r] : 1.0f;
            for (int i = lo; i < hi; i++) de[i] += w * g[i];
            if (mix)
                for (int i = lo; i < hi; i++) dmask[i] += (1.0f - w) * g[i];
        }
    }
}

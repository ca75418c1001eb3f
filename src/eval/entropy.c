// Unigram entropy of a sample (method §9.3).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hdlm/common.h"
#include "hdlm/likelihood.h"

static int compare_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

double hdlm_unigram_entropy(const uint32_t *ids, size_t n) {
    if (n == 0) return 0.0;
    uint32_t *sorted = hdlm_malloc(n * sizeof *sorted);
    memcpy(sorted, ids, n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, compare_u32);
    double h = 0;
    for (size_t i = 0; i < n;) {   // one run of equal ids = one distinct token
        size_t j = i;
        while (j < n && sorted[j] == sorted[i]) j++;
        double p = (double)(j - i) / (double)n;
        h -= p * log(p + 1e-8);
        i = j;
    }
    free(sorted);
    return h;
}

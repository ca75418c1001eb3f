// k-means exactly as faiss 1.7.3 (Debian 12) trains it for MAUVE (docs/mauve.md): mt19937, rand_perm with
// modulo draws, random distinct initial centroids per redo, float32 distances ||x||^2 + ||c||^2 - 2 x.c from an sgemm,
// objective before the update, mean update by multiplying with 1/count, split of empty clusters.
//
// Randomness here deliberately bypasses hdlm_rng: reproducing the reference's draws is the whole point, and faiss
// draws from std::mt19937.
//
// Floating-point contraction stays off in this file: faiss's Debian build targets baseline x86-64 (no FMA), and a
// fused ||x||^2 + ||c||^2 - 2 x.c would round differently and could move points that sit near a cluster border.
#pragma GCC optimize("fp-contract=off")

#include <blis.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hdlm/common.h"
#include "hdlm/mauve.h"

enum {
    MT_N = 624,
    MT_M = 397,
    FAISS_REDO_SEED_STRIDE = 15486557,   // seed + 1 + redo * this (Clustering.cpp)
    FAISS_SPLIT_SEED = 1234,             // a fresh RandomGenerator(1234) per split_clusters call
    FAISS_MAX_POINTS_PER_CENTROID = 256, // beyond k * 256 points faiss subsamples the training set
    FAISS_BLAS_THRESHOLD = 20,           // distance_compute_blas_threshold: fewer queries use direct differences
    QUERY_BLOCK = 4096,                  // rows per sgemm (faiss distance_compute_blas_query_bs)
};

void hdlm_mt19937_seed(hdlm_mt19937 *mt, uint32_t seed) {
    mt->state[0] = seed;
    for (int i = 1; i < MT_N; i++) {
        uint32_t prev = mt->state[i - 1];
        mt->state[i] = 1812433253u * (prev ^ (prev >> 30)) + (uint32_t)i;
    }
    mt->index = MT_N;
}

static void mt19937_twist(hdlm_mt19937 *mt) {
    for (int i = 0; i < MT_N; i++) {
        uint32_t y = (mt->state[i] & 0x80000000u) | (mt->state[(i + 1) % MT_N] & 0x7fffffffu);
        uint32_t next = mt->state[(i + MT_M) % MT_N] ^ (y >> 1);
        mt->state[i] = (y & 1u) ? next ^ 0x9908b0dfu : next;
    }
    mt->index = 0;
}

uint32_t hdlm_mt19937_next(hdlm_mt19937 *mt) {
    if (mt->index >= MT_N) mt19937_twist(mt);
    uint32_t y = mt->state[mt->index++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

// faiss RandomGenerator(int64 seed) seeds std::mt19937 with (unsigned int)seed.
static void faiss_rng_seed(hdlm_mt19937 *mt, int64_t seed) { hdlm_mt19937_seed(mt, (uint32_t)(uint64_t)seed); }

// rand_float() = mt() / float(mt.max()): the draw is rounded to float first, float(4294967295) is 2^32.
static float faiss_rand_float(hdlm_mt19937 *mt) { return (float)hdlm_mt19937_next(mt) / (float)4294967295u; }

void hdlm_faiss_rand_perm(int64_t *perm, int64_t n, int64_t seed) {
    for (int64_t i = 0; i < n; i++) perm[i] = i;
    hdlm_mt19937 mt;
    faiss_rng_seed(&mt, seed);
    for (int64_t i = 0; i + 1 < n; i++) {
        // faiss 1.7.3: rand_int(max) = mt() % max (later versions use Lemire's multiply-shift instead)
        int64_t j = i + (int64_t)(hdlm_mt19937_next(&mt) % (uint32_t)(n - i));
        int64_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

// fvec_norm_L2sqr of faiss 1.7.3's generic build: float products accumulated in double, returned as float
// (checked bit for bit against python3-faiss).
static float squared_norm(const float *x, int d) {
    double sum = 0;
    for (int j = 0; j < d; j++) sum += x[j] * x[j];
    return (float)sum;
}

static float squared_distance(const float *x, const float *y, int d) {
    double sum = 0;
    for (int j = 0; j < d; j++) {
        float diff = x[j] - y[j];
        sum += diff * diff;
    }
    return (float)sum;
}

// IndexFlatL2 search with k = 1: nearest centroid of every row (ties to the lower centroid index) and its distance.
static void nearest_centroids(const float *x, int64_t n, int d, const float *c, int k, int64_t *label, float *dist) {
    if (n < FAISS_BLAS_THRESHOLD) {
        for (int64_t i = 0; i < n; i++) {
            float best = HUGE_VALF;
            int64_t arg = -1;
            for (int j = 0; j < k; j++) {
                float dis = squared_distance(x + i * d, c + (int64_t)j * d, d);
                if (dis < best) best = dis, arg = j;
            }
            label[i] = arg;
            dist[i] = best;
        }
        return;
    }
    float *c_norms = hdlm_malloc((size_t)k * sizeof(float));
    for (int j = 0; j < k; j++) c_norms[j] = squared_norm(c + (int64_t)j * d, d);
    int64_t block = n < QUERY_BLOCK ? n : QUERY_BLOCK;
    float *ip = hdlm_malloc((size_t)block * (size_t)k * sizeof(float));
    for (int64_t i0 = 0; i0 < n; i0 += block) {
        int64_t rows = n - i0 < block ? n - i0 : block;
        // ip[i][j] = x_i . c_j, the product faiss asks BLAS for (sgemm "T","N" in column-major terms)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (f77_int)rows, k, d, 1.0f, x + i0 * d, d, c, d, 0.0f, ip,
                    k);
        for (int64_t r = 0; r < rows; r++) {
            float x_norm = squared_norm(x + (i0 + r) * d, d);
            float *dis = ip + r * k;
            float best = HUGE_VALF;
            // two vectorisable passes: distances and their minimum, then the first index reaching it (= faiss's
            // strict-less scan, which keeps the lower index on ties)
#pragma omp simd reduction(min : best)
            for (int j = 0; j < k; j++) {
                float v = x_norm + c_norms[j] - 2 * dis[j];
                v = v < 0 ? 0 : v;   // round-off for (near-)identical vectors
                dis[j] = v;
                best = v < best ? v : best;
            }
            int arg = 0;
            while (dis[arg] != best) arg++;
            label[i0 + r] = arg;
            dist[i0 + r] = best;
        }
    }
    free(ip);
    free(c_norms);
}

// compute_centroids: float sums in point order, then multiplied by the float 1/count; empty clusters stay zero.
static void update_centroids(const float *x, int64_t n, int d, const int64_t *label, int k, float *c, float *count) {
    memset(c, 0, (size_t)k * (size_t)d * sizeof(float));
    memset(count, 0, (size_t)k * sizeof(float));
    for (int64_t i = 0; i < n; i++) {
        float *ci = c + label[i] * d;
        for (int j = 0; j < d; j++) ci[j] += x[i * d + j];
        count[label[i]] += 1.0f;
    }
    for (int ci = 0; ci < k; ci++) {
        if (count[ci] == 0) continue;
        float inv = 1 / count[ci];
        for (int j = 0; j < d; j++) c[(int64_t)ci * d + j] *= inv;
    }
}

// split_clusters: every empty cluster takes a copy of a cluster cj chosen with probability (count - 1) / (n - k),
// walking cj cyclically; both copies are nudged by (1 +- 1/1024) in alternating coordinates and share cj's count.
static void split_empty_clusters(int64_t n, int d, int k, float *c, float *count) {
    const double eps = 1.0 / 1024.0;
    hdlm_mt19937 mt;
    faiss_rng_seed(&mt, FAISS_SPLIT_SEED);
    for (int ci = 0; ci < k; ci++) {
        if (count[ci] != 0) continue;
        int cj = 0;
        for (;; cj = (cj + 1) % k) {
            float p = (float)((count[cj] - 1.0) / (float)(n - k));
            float r = faiss_rand_float(&mt);
            if (r < p) break;
        }
        float *a = c + (int64_t)ci * d, *b = c + (int64_t)cj * d;
        memcpy(a, b, (size_t)d * sizeof(float));
        for (int j = 0; j < d; j++) {
            double up = 1 + eps, down = 1 - eps;
            a[j] = (float)(a[j] * (j % 2 == 0 ? up : down));
            b[j] = (float)(b[j] * (j % 2 == 0 ? down : up));
        }
        count[ci] = count[cj] / 2;
        count[cj] -= count[ci];
    }
}

int hdlm_kmeans_faiss(const float *x_all, int64_t n_all, int d, const hdlm_kmeans_options *opt, float *centroids,
                      int64_t *labels, float *objective) {
    const int k = opt->k;
    HDLM_CHECK(k >= 1 && d >= 1 && opt->niter >= 1 && opt->nredo >= 1,
               "k-means: need k >= 1, d >= 1, iterations >= 1 and redos >= 1 (got k=%d, d=%d, %d, %d)", k, d,
               opt->niter, opt->nredo);
    HDLM_CHECK(n_all >= k, "k-means: %lld points cannot make %d clusters (need at least as many points as buckets)",
               (long long)n_all, k);

    // Training set: all points, or the first k * 256 of rand_perm(n, seed) as faiss subsamples them.
    const float *x = x_all;
    int64_t n = n_all;
    float *subset = NULL;
    int64_t *perm = hdlm_malloc((size_t)n_all * sizeof(int64_t));
    if (n_all > (int64_t)k * FAISS_MAX_POINTS_PER_CENTROID) {
        n = (int64_t)k * FAISS_MAX_POINTS_PER_CENTROID;
        hdlm_faiss_rand_perm(perm, n_all, opt->seed);
        subset = hdlm_malloc((size_t)n * (size_t)d * sizeof(float));
        for (int64_t i = 0; i < n; i++) memcpy(subset + i * d, x_all + perm[i] * d, (size_t)d * sizeof(float));
        x = subset;
    }

    int64_t *assign = hdlm_malloc((size_t)n_all * sizeof(int64_t));
    float *dist = hdlm_malloc((size_t)n_all * sizeof(float));
    float *count = hdlm_malloc((size_t)k * sizeof(float));
    float *current = hdlm_malloc((size_t)k * (size_t)d * sizeof(float));
    float best_obj = HUGE_VALF;
    if (n == k) {
        // faiss's corner case: the training points are the centroids
        memcpy(centroids, x, (size_t)k * (size_t)d * sizeof(float));
        best_obj = 0;
    } else {
        for (int redo = 0; redo < opt->nredo; redo++) {
            hdlm_faiss_rand_perm(perm, n, opt->seed + 1 + (int64_t)redo * FAISS_REDO_SEED_STRIDE);
            for (int i = 0; i < k; i++) memcpy(current + (int64_t)i * d, x + perm[i] * d, (size_t)d * sizeof(float));
            float obj = 0;
            for (int it = 0; it < opt->niter; it++) {
                nearest_centroids(x, n, d, current, k, assign, dist);
                obj = 0;   // faiss sums the distances in float, before the update
                for (int64_t i = 0; i < n; i++) obj += dist[i];
                update_centroids(x, n, d, assign, k, current, count);
                split_empty_clusters(n, d, k, current, count);
            }
            if (redo == 0 || obj < best_obj) {
                best_obj = obj;
                memcpy(centroids, current, (size_t)k * (size_t)d * sizeof(float));
            }
        }
    }
    nearest_centroids(x_all, n_all, d, centroids, k, labels, dist);
    *objective = best_obj;
    free(current);
    free(count);
    free(dist);
    free(assign);
    free(perm);
    free(subset);
    return 0;
}

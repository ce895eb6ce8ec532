/* bench/bench_rand.h: the random numbers and the routing draw shared by
 * `mxbench kernels` (bench/mxbench.c) and the ggml peer (bench/cpu/ggml_peer.c),
 * so that both time batches routed by one rule. Header only, no dependencies. */
#ifndef MXEP_BENCH_RAND_H
#define MXEP_BENCH_RAND_H

#include <stddef.h>
#include <stdint.h>

/* splitmix64 */
static inline uint64_t bench_rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* uniform in (lo, hi) */
static inline float bench_rng_uniform(uint64_t *s, float lo, float hi)
{
    float u = (float)((bench_rng_next(s) >> 40) + 1) / 16777217.0f; /* (0, 1) */
    return lo + (hi - lo) * u;
}

/* Routes T tokens: token t's k distinct experts of E (uniform), in
 * expert[t * k + j], with weights uniform in (0.1, 1) normalized to sum 1 per
 * token in weight[t * k + j]; used[e] is set to 1 for each expert drawn (the
 * caller zeroes its E entries). */
static inline void bench_route_draw(uint64_t *s, size_t T, size_t k, int E, int32_t *expert, float *weight, int *used)
{
    for (size_t t = 0; t < T; t++) {
        float sum = 0.0f;
        for (size_t j = 0; j < k; j++) {
            int e, dup;
            do {
                e = (int)(bench_rng_next(s) % (uint64_t)E);
                dup = 0;
                for (size_t q = 0; q < j; q++)
                    dup |= expert[t * k + q] == e;
            } while (dup);
            expert[t * k + j] = e;
            weight[t * k + j] = bench_rng_uniform(s, 0.1f, 1.0f);
            sum += weight[t * k + j];
            used[e] = 1;
        }
        for (size_t j = 0; j < k; j++)
            weight[t * k + j] /= sum;
    }
}

#endif

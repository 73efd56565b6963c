/* Counter-based random numbers: every value is a pure function of (seed, index),
 * so any backend, thread or replay draws the same numbers (dropout masks,
 * initialisation, sampling) without carrying generator state.
 *
 *   iisan_rng_u64(seed, i)     64 well-mixed bits
 *   iisan_rng_uniform(seed, i) float in [0, 1): the top 24 bits times 2^-24
 *   iisan_rng_normal(seed, i)  standard normal by Box-Muller from the uniforms at
 *                              indices 2i and 2i+1 (computed in double)
 * The *_key variants take iisan_rng_key(seed), hoisted out of a loop over i.
 *
 * Dropout element i of a call with seed s is kept when iisan_rng_uniform(s, i) >= p. */
#ifndef IISAN_KERNELS_RNG_H
#define IISAN_KERNELS_RNG_H

#include <math.h>
#include <stdint.h>

#include "kernels/hd.h"

/* the splitmix64 finaliser: a bijection on 64 bits with full avalanche */
static inline IISAN_HD uint64_t iisan_mix64(uint64_t z) {
    z ^= z >> 30;
    z *= 0xbf58476d1ce4e5b9ull;
    z ^= z >> 27;
    z *= 0x94d049bb133111ebull;
    z ^= z >> 31;
    return z;
}

/* The seed is hashed into a key, then element i is the splitmix64 output number
 * i + 1 of the stream starting at that key. Hashing the seed first keeps seeds
 * that differ by a multiple of the increment from giving shifted streams. */
static inline IISAN_HD uint64_t iisan_rng_key(uint64_t seed) {
    return iisan_mix64(seed ^ 0x6a09e667f3bcc909ull);
}

static inline IISAN_HD uint64_t iisan_rng_u64_key(uint64_t key, uint64_t i) {
    return iisan_mix64(key + (i + 1) * 0x9e3779b97f4a7c15ull);
}

static inline IISAN_HD uint64_t iisan_rng_u64(uint64_t seed, uint64_t i) {
    return iisan_rng_u64_key(iisan_rng_key(seed), i);
}

/* top 24 bits: exactly representable, so the result is < 1 */
static inline IISAN_HD float iisan_rng_uniform_key(uint64_t key, uint64_t i) {
    return (float)(uint32_t)(iisan_rng_u64_key(key, i) >> 40) * (1.0f / 16777216.0f);
}

static inline IISAN_HD float iisan_rng_uniform(uint64_t seed, uint64_t i) {
    return iisan_rng_uniform_key(iisan_rng_key(seed), i);
}

static inline IISAN_HD float iisan_rng_normal(uint64_t seed, uint64_t i) {
    double u1 = (double)iisan_rng_uniform(seed, 2 * i);
    double u2 = (double)iisan_rng_uniform(seed, 2 * i + 1);
    double r = sqrt(-2.0 * log(1.0 - u1)); /* 1 - u1 in (0, 1]: never log(0) */
    return (float)(r * cos(6.283185307179586476925 * u2));
}

#endif

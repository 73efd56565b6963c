/* IEEE 754 binary16 <-> binary32 conversion, bit-exact and branch-light, shared by
 * every backend (IISAN_HD marks the functions __host__ __device__ under nvcc).
 *
 * iisan_half_to_float is exact for every one of the 65536 patterns (subnormals
 * included); NaN stays NaN (payload kept, sign kept).
 * iisan_float_to_half rounds to nearest, ties to even; values >= 65520 in magnitude
 * become infinity, values <= 2^-25 become (signed) zero, and a NaN becomes a quiet
 * NaN keeping the top payload bits. Bulk conversion on the CPU: kernels/cpu/cpu.h. */
#ifndef IISAN_KERNELS_HALF_H
#define IISAN_KERNELS_HALF_H

#include <stdint.h>
#include <string.h>

#include "kernels/hd.h"

static inline IISAN_HD uint32_t iisan_f32_bits(float f) {
#ifdef __CUDA_ARCH__
    return __float_as_uint(f);
#else
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
#endif
}

static inline IISAN_HD float iisan_f32_from_bits(uint32_t u) {
#ifdef __CUDA_ARCH__
    return __uint_as_float(u);
#else
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
#endif
}

static inline IISAN_HD float iisan_half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0x1fu) return iisan_f32_from_bits(sign | 0x7f800000u | (man << 13)); /* inf/NaN */
    if (exp != 0) return iisan_f32_from_bits(sign | ((exp + 112u) << 23) | (man << 13));
    if (man == 0) return iisan_f32_from_bits(sign); /* signed zero */
    /* subnormal: man * 2^-24; shift the leading one up to bit 10 */
    exp = 113u;
    while (!(man & 0x400u)) {
        man <<= 1;
        exp--;
    }
    return iisan_f32_from_bits(sign | (exp << 23) | ((man & 0x3ffu) << 13));
}

static inline IISAN_HD uint16_t iisan_float_to_half(float f) {
    uint32_t x = iisan_f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) /* NaN: quiet it, keep the top payload bits */
        return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 (or inf): inf */
    if (ax >= 0x38800000u) {                                  /* normal half (>= 2^-14) */
        /* rebias the exponent (127 -> 15) and round the 13 dropped bits to even; a
         * carry out of the mantissa correctly bumps the exponent */
        uint32_t r = ax - 0x38000000u + 0xfffu + ((ax >> 13) & 1u);
        return (uint16_t)(sign | (r >> 13));
    }
    if (ax <= 0x33000000u) return sign; /* <= 2^-25: rounds to zero (2^-25 ties to even) */
    /* subnormal half: value / 2^-24 = m * 2^(e - 126), with shift 14..24 */
    uint32_t e = ax >> 23;
    uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126u - e;
    uint32_t q = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1u);
    uint32_t halfway = 1u << (shift - 1u);
    if (rem > halfway || (rem == halfway && (q & 1u))) q++; /* may reach 0x400: fine */
    return (uint16_t)(sign | q);
}

#ifndef __CUDACC__
/* Whole rows on the host (kernels/cpu/cpu_half.c, F16C when the CPU has it): the same values
 * as the per-element functions above (tests/test_ops.c checks every pattern). The project's
 * one bulk converter, for the CPU backend and for whatever stores or reads fp16 states. */
void iisan_cpu_half_to_float(float *restrict dst, const uint16_t *restrict src, size_t n);
void iisan_cpu_float_to_half(uint16_t *restrict dst, const float *restrict src, size_t n);
#endif

#endif

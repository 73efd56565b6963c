/* Bulk fp16 <-> fp32 conversion: F16C (8 values per instruction) when the CPU
 * has it, checked once at run time so the library also runs when built for an
 * older -march; otherwise the scalar code of kernels/half.h. Both give identical
 * results (round to nearest even) except possibly for NaN payload bits: NaN
 * stays NaN either way. */
#include "kernels/cpu/cpu.h"
#include "kernels/half.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_HAVE_F16C_PATH 1

__attribute__((target("f16c,avx"))) static void h2f_f16c(float *restrict dst,
                                                         const uint16_t *restrict src, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i *)(src + i));
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
    }
    for (; i < n; i++)
        dst[i] = iisan_half_to_float(src[i]);
}

__attribute__((target("f16c,avx"))) static void f2h_f16c(uint16_t *restrict dst,
                                                         const float *restrict src, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
        _mm_storeu_si128((__m128i *)(dst + i), h);
    }
    for (; i < n; i++)
        dst[i] = iisan_float_to_half(src[i]);
}

/* Compile-time when the -march already promises F16C (native, x86-64-v3);
 * otherwise the CPU model libgcc filled in at start-up, cheap enough per call.
 * Clang before 16 cannot query "f16c" there and takes the scalar path. */
static int have_f16c(void) {
#if defined(__F16C__) && defined(__AVX__)
    return 1;
#elif defined(__clang__)
    return 0;
#else
    return __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
#endif
}
#endif

void iisan_cpu_half_to_float(float *restrict dst, const uint16_t *restrict src, size_t n) {
#ifdef CPU_HAVE_F16C_PATH
    if (have_f16c()) {
        h2f_f16c(dst, src, n);
        return;
    }
#endif
    for (size_t i = 0; i < n; i++)
        dst[i] = iisan_half_to_float(src[i]);
}

void iisan_cpu_float_to_half(uint16_t *restrict dst, const float *restrict src, size_t n) {
#ifdef CPU_HAVE_F16C_PATH
    if (have_f16c()) {
        f2h_f16c(dst, src, n);
        return;
    }
#endif
    for (size_t i = 0; i < n; i++)
        dst[i] = iisan_float_to_half(src[i]);
}

/* Adam as PyTorch's torch.optim.Adam (no weight decay, no amsgrad), written in
 * the same order of float operations as its single-tensor path:
 *   m = m + (1 - b1) (g - m)            (lerp)
 *   v = b2 v + (1 - b2) g g
 *   w = w - lr/(1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
 * The bias corrections are computed once per call in double. The update is
 * bound by memory bandwidth (7 floats of traffic per parameter); the pool splits
 * it in ranges of 64-byte lines, so that threads never share a line.
 *
 * One pass per range, the gradient zeroed as it is read. With AVX-512 (a build for
 * a CPU that has it) the pass is written in 16-lane intrinsics, m and v read and
 * written aligned: they are the cold operands (the step's weights and gradients are
 * in cache; the moments come from memory), and the compiler's loop left 20 % on the
 * table (docs/benchmarks.md). Both paths make the same float operations in the same
 * order (no contraction: -std=c11), so the same bits. */
#include <math.h>
#include <stdint.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "kernels/cpu/cpu.h"

typedef struct {
    float *w, *m, *v, *g;
    float step, bc2_sqrt, b1, b2, eps;
    int zero_g;
} adam_range_args;

/* elements lo .. hi-1 (vectorised by the compiler where it can) */
#define ADAM_ONE(i)                                                                                \
    do {                                                                                           \
        float gi = gg[i];                                                                          \
        float mi = mm[i] + c1 * (gi - mm[i]);                                                      \
        float vi = b2 * vv[i] + c2 * gi * gi;                                                      \
        mm[i] = mi;                                                                                \
        vv[i] = vi;                                                                                \
        ww[i] -= step * (mi / (sqrtf(vi) / bc2_sqrt + eps));                                       \
    } while (0)

static CPU_VEC void adam_scalar(const adam_range_args *a, size_t lo, size_t hi) {
    float *restrict ww = a->w, *restrict mm = a->m, *restrict vv = a->v;
    float *restrict gg = a->g;
    const float step = a->step, bc2_sqrt = a->bc2_sqrt, b2 = a->b2, eps = a->eps;
    const float c1 = 1.0f - a->b1, c2 = 1.0f - b2;
    if (a->zero_g)
        for (size_t i = lo; i < hi; i++) {
            ADAM_ONE(i);
            gg[i] = 0.0f;
        }
    else
        for (size_t i = lo; i < hi; i++)
            ADAM_ONE(i);
}

#ifdef __AVX512F__
static void adam_range(void *va, size_t lo, size_t hi) {
    const adam_range_args *a = va;
    float *restrict ww = a->w, *restrict mm = a->m, *restrict vv = a->v;
    float *restrict gg = a->g;
    const __m512 c1 = _mm512_set1_ps(1.0f - a->b1), c2 = _mm512_set1_ps(1.0f - a->b2),
                 b2 = _mm512_set1_ps(a->b2), bc2 = _mm512_set1_ps(a->bc2_sqrt),
                 eps = _mm512_set1_ps(a->eps), step = _mm512_set1_ps(a->step),
                 zero = _mm512_setzero_ps();
    /* m and v share their offset in the arena: the first element where both are aligned */
    size_t i = lo;
    while (i < hi && (((uintptr_t)(mm + i) | (uintptr_t)(vv + i)) & 63))
        i++;
    if (((uintptr_t)(mm + i) | (uintptr_t)(vv + i)) & 63) i = hi; /* never both: scalar */
    adam_scalar(a, lo, i);
    for (; i + 16 <= hi; i += 16) {
        __m512 g = _mm512_loadu_ps(gg + i), m = _mm512_load_ps(mm + i), v = _mm512_load_ps(vv + i);
        m = _mm512_add_ps(m, _mm512_mul_ps(c1, _mm512_sub_ps(g, m)));
        v = _mm512_add_ps(_mm512_mul_ps(b2, v), _mm512_mul_ps(_mm512_mul_ps(c2, g), g));
        _mm512_store_ps(mm + i, m);
        _mm512_store_ps(vv + i, v);
        __m512 den = _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(v), bc2), eps);
        __m512 w =
            _mm512_sub_ps(_mm512_loadu_ps(ww + i), _mm512_mul_ps(step, _mm512_div_ps(m, den)));
        _mm512_storeu_ps(ww + i, w);
        if (a->zero_g) _mm512_storeu_ps(gg + i, zero);
    }
    adam_scalar(a, i, hi);
}
#else
static void adam_range(void *va, size_t lo, size_t hi) { adam_scalar(va, lo, hi); }
#endif

void cpu_adam(iisan_backend *be, float *w, float *g, float *m, float *v, size_t n, float lr,
              float b1, float b2, float eps, int t, int zero_g) {
    const float step = (float)((double)lr / (1.0 - pow((double)b1, t)));
    const float bc2_sqrt = (float)sqrt(1.0 - pow((double)b2, t));
    adam_range_args a = {w, m, v, g, step, bc2_sqrt, b1, b2, eps, zero_g};
    cpu_par(be, n, 1 << 14, adam_range, &a);
}

/* Adam as PyTorch's torch.optim.Adam (no weight decay, no amsgrad), written in
 * the same order of float operations as its single-tensor path:
 *   m = m + (1 - b1) (g - m)            (lerp)
 *   v = b2 v + (1 - b2) g g
 *   w = w - lr/(1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
 * The bias corrections are computed once per call in double. The update is
 * bound by memory bandwidth (7 floats of traffic per parameter); the pool splits
 * it in ranges of 64-byte lines, so that threads never share a line. */
#include <math.h>
#include <stdint.h>

#include "kernels/cpu/cpu.h"

typedef struct {
    float *w, *m, *v, *g;
    float step, bc2_sqrt, b1, b2, eps;
    int zero_g;
} adam_range_args;

static CPU_VEC void adam_range(void *va, size_t lo, size_t hi) {
    const adam_range_args *a = va;
    float *restrict ww = a->w, *restrict mm = a->m, *restrict vv = a->v;
    float *restrict gg = a->g;
    const float step = a->step, bc2_sqrt = a->bc2_sqrt, b2 = a->b2, eps = a->eps;
    const float c1 = 1.0f - a->b1, c2 = 1.0f - b2;
    for (size_t i = lo; i < hi; i++) {
        float gi = gg[i];
        float mi = mm[i] + c1 * (gi - mm[i]);
        float vi = b2 * vv[i] + c2 * gi * gi;
        mm[i] = mi;
        vv[i] = vi;
        ww[i] -= step * (mi / (sqrtf(vi) / bc2_sqrt + eps));
    }
    if (a->zero_g) /* the range's gradient lines are still in cache */
        for (size_t i = lo; i < hi; i++)
            gg[i] = 0.0f;
}

void cpu_adam(iisan_backend *be, float *w, float *g, float *m, float *v, size_t n, float lr,
              float b1, float b2, float eps, int t, int zero_g) {
    const float step = (float)((double)lr / (1.0 - pow((double)b1, t)));
    const float bc2_sqrt = (float)sqrt(1.0 - pow((double)b2, t));
    adam_range_args a = {w, m, v, g, step, bc2_sqrt, b1, b2, eps, zero_g};
    cpu_par(be, n, 1 << 14, adam_range, &a);
}

/* Adam as PyTorch's torch.optim.Adam (no weight decay, no amsgrad), written in
 * the same order of float operations as its single-tensor path:
 *   m = m + (1 - b1) (g - m)            (lerp)
 *   v = b2 v + (1 - b2) g g
 *   w = w - lr/(1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
 * The bias corrections are computed once per call in double. */
#include <math.h>

#include "kernels/cpu/cpu.h"

CPU_VEC void cpu_adam(iisan_backend *be, float *w, const float *g, float *m, float *v, size_t n,
                      float lr, float b1, float b2, float eps, int t) {
    float *restrict ww = w, *restrict mm = m, *restrict vv = v;
    const float *restrict gg = g;
    const float step = (float)((double)lr / (1.0 - pow((double)b1, t)));
    const float bc2_sqrt = (float)sqrt(1.0 - pow((double)b2, t));
    const float c1 = 1.0f - b1, c2 = 1.0f - b2;
    for (size_t i = 0; i < n; i++) {
        float gi = gg[i];
        float mi = mm[i] + c1 * (gi - mm[i]);
        float vi = b2 * vv[i] + c2 * gi * gi;
        mm[i] = mi;
        vv[i] = vi;
        ww[i] -= step * (mi / (sqrtf(vi) / bc2_sqrt + eps));
    }
}

/* Per-element activation maths shared by every backend (IISAN_HD marks them
 * __host__ __device__ under nvcc). GELU is the exact erf form, PyTorch's default
 * nn.GELU(): gelu(x) = 0.5 x (1 + erf(x / sqrt 2)), with erf to 3e-7 (iisan_erf). ReLU's derivative
 * at 0 is 0, as in PyTorch. */
#ifndef IISAN_KERNELS_ACT_H
#define IISAN_KERNELS_ACT_H

#include <math.h>

#include "kernels/hd.h"

static inline IISAN_HD float iisan_relu(float x) { return x > 0.0f ? x : 0.0f; }

/* erf by Abramowitz & Stegun 7.1.28: 1 - 1 / (1 + a1 z + ... + a6 z^6)^16 for z = |x|,
 * absolute error below 3e-7 (float rounding adds about as much). Polynomial, powers and one
 * division, no branch: it vectorises on the CPU (libm's erff does not, and was 11% of an
 * encoder's time), and every backend computes it the same way. */
static inline IISAN_HD float iisan_erf(float x) {
    float z = fabsf(x);
    float p =
        1.0f + z * (0.0705230784f +
                    z * (0.0422820123f +
                         z * (0.0092705272f +
                              z * (0.0001520143f + z * (0.0002765672f + z * 0.0000430638f)))));
    p = p * p; /* p^2, p^4, p^8, p^16 */
    p = p * p;
    p = p * p;
    p = p * p;
    return copysignf(1.0f - 1.0f / p, x);
}

static inline IISAN_HD float iisan_gelu(float x) {
    return 0.5f * x * (1.0f + iisan_erf(x * 0.70710678118654752f));
}

/* d gelu / dx = Phi(x) + x phi(x) */
static inline IISAN_HD float iisan_gelu_grad(float x) {
    float cdf = 0.5f * (1.0f + iisan_erf(x * 0.70710678118654752f));
    float pdf = 0.39894228040143268f * expf(-0.5f * x * x);
    return cdf + x * pdf;
}

static inline IISAN_HD float iisan_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

#endif

/* Per-element activation maths shared by every backend (IISAN_HD marks them
 * __host__ __device__ under nvcc). GELU is the exact erf form, PyTorch's default
 * nn.GELU(): gelu(x) = 0.5 x (1 + erf(x / sqrt 2)). ReLU's derivative at 0 is 0,
 * as in PyTorch. */
#ifndef IISAN_KERNELS_ACT_H
#define IISAN_KERNELS_ACT_H

#include <math.h>

#include "kernels/hd.h"

static inline IISAN_HD float iisan_relu(float x) { return x > 0.0f ? x : 0.0f; }

/* d relu / dx */
static inline IISAN_HD float iisan_relu_grad(float x) { return x > 0.0f ? 1.0f : 0.0f; }

static inline IISAN_HD float iisan_gelu(float x) {
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}

/* d gelu / dx = Phi(x) + x phi(x) */
static inline IISAN_HD float iisan_gelu_grad(float x) {
    float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
    float pdf = 0.39894228040143268f * expf(-0.5f * x * x);
    return cdf + x * pdf;
}

static inline IISAN_HD float iisan_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

#endif

/* Elementwise ops: activations, dropout, the IISAN gates. In-place use (y == x,
 * dx == dy, out == c) is allowed by the contract, so the in/out pointers are not
 * restrict; GCC's runtime overlap check still takes the vector path when they
 * are equal, since each element is read before it is written. */
#include <string.h>

#include "kernels/act.h"
#include "kernels/cpu/cpu.h"
#include "kernels/rng.h"

CPU_VEC void cpu_act_fwd(iisan_backend *be, int act, float *y, const float *x, size_t n) {
    if (act == IISAN_ACT_GELU)
        for (size_t i = 0; i < n; i++)
            y[i] = iisan_gelu(x[i]);
    else
        for (size_t i = 0; i < n; i++)
            y[i] = iisan_relu(x[i]);
}

CPU_VEC void cpu_act_bwd(iisan_backend *be, int act, float *dx, const float *dy, const float *x,
                         size_t n) {
    if (act == IISAN_ACT_GELU)
        for (size_t i = 0; i < n; i++)
            dx[i] = dy[i] * iisan_gelu_grad(x[i]);
    else
        for (size_t i = 0; i < n; i++)
            dx[i] = x[i] > 0.0f ? dy[i] : 0.0f;
}

/* y = x * keep / (1 - p), keep = uniform(seed, i) >= p. Forward and backward are
 * the same linear map, so both slots share it. */
static CPU_VEC void dropout_apply(float *y, const float *x, size_t n, float p, uint64_t seed) {
    if (p <= 0.0f) {
        if (n && y != x) memcpy(y, x, n * sizeof *y);
        return;
    }
    if (p >= 1.0f) { /* nothing is kept */
        if (n) memset(y, 0, n * sizeof *y);
        return;
    }
    float scale = 1.0f / (1.0f - p);
    uint64_t key = iisan_rng_key(seed);
    for (size_t i = 0; i < n; i++) {
        float m = iisan_rng_uniform_key(key, i) >= p ? scale : 0.0f; /* as x * mask / (1-p) */
        y[i] = x[i] * m;
    }
}

void cpu_dropout_fwd(iisan_backend *be, float *y, const float *x, size_t n, float p,
                     uint64_t seed) {
    dropout_apply(y, x, n, p, seed);
}

void cpu_dropout_bwd(iisan_backend *be, float *dx, const float *dy, size_t n, float p,
                     uint64_t seed) {
    dropout_apply(dx, dy, n, p, seed);
}

/* out = c + sx * x + sy * y, where c, x or y may be NULL (= zeros) and out may
 * equal c. One pass over memory whichever operands are present. */
static CPU_VEC void lin3(float *out, const float *c, const float *x, float sx, const float *y,
                         float sy, size_t n) {
    if (!x) { /* move the one present operand to x */
        x = y, sx = sy;
        y = NULL;
    }
    if (c && x && y)
        for (size_t i = 0; i < n; i++)
            out[i] = c[i] + sx * x[i] + sy * y[i];
    else if (c && x)
        for (size_t i = 0; i < n; i++)
            out[i] = c[i] + sx * x[i];
    else if (x && y)
        for (size_t i = 0; i < n; i++)
            out[i] = sx * x[i] + sy * y[i];
    else if (x)
        for (size_t i = 0; i < n; i++)
            out[i] = sx * x[i];
    else if (c) {
        if (n && out != c) memcpy(out, c, n * sizeof *out);
    } else if (n)
        memset(out, 0, n * sizeof *out);
}

void cpu_gate_fwd(iisan_backend *be, float *out, const float *c, const float *a, const float *b,
                  const float *p, float temp, size_t n) {
    float s = iisan_sigmoid(*p / temp);
    lin3(out, c, a, s, b, 1.0f - s, n);
}

/* sum_i dout[i] * (x[i] - y[i]) (x or y NULL = zeros) over one block, in 16
 * float lanes; the caller adds the blocks in double so that millions of terms
 * keep their precision */
static CPU_VEC double dot_diff(const float *restrict dout, const float *restrict x,
                               const float *restrict y, size_t n) {
    enum { LANES = 16 };
    float acc[LANES] = {0};
    size_t i = 0;
    if (x && y) {
        for (; i + LANES <= n; i += LANES)
            for (int l = 0; l < LANES; l++)
                acc[l] += dout[i + l] * (x[i + l] - y[i + l]);
        for (; i < n; i++)
            acc[0] += dout[i] * (x[i] - y[i]);
    } else if (x) {
        for (; i + LANES <= n; i += LANES)
            for (int l = 0; l < LANES; l++)
                acc[l] += dout[i + l] * x[i + l];
        for (; i < n; i++)
            acc[0] += dout[i] * x[i];
    } else if (y) {
        for (; i + LANES <= n; i += LANES)
            for (int l = 0; l < LANES; l++)
                acc[l] -= dout[i + l] * y[i + l];
        for (; i < n; i++)
            acc[0] -= dout[i] * y[i];
    }
    double total = 0.0;
    for (int l = 0; l < LANES; l++)
        total += acc[l];
    return total;
}

static CPU_VEC void scale_into(float *y, const float *x, float s, size_t n) {
    for (size_t i = 0; i < n; i++)
        y[i] = s * x[i];
}

/* Block by block (so dout is still in cache for the second use): the block's
 * share of the dp sum, then da and db. a and b are read before da / db are
 * written in each block. */
void cpu_gate_bwd(iisan_backend *be, float *da, float *db, float *dp, const float *dout,
                  const float *a, const float *b, const float *p, float temp, size_t n) {
    enum { BLOCK = 2048 };
    float s = iisan_sigmoid(*p / temp);
    double sum = 0.0;
    for (size_t i = 0; i < n; i += BLOCK) {
        size_t len = n - i < BLOCK ? n - i : BLOCK;
        sum += dot_diff(dout + i, a ? a + i : NULL, b ? b + i : NULL, len);
        if (da) scale_into(da + i, dout + i, s, len);
        if (db) scale_into(db + i, dout + i, 1.0f - s, len);
    }
    *dp += (float)(sum * (double)s * (1.0 - (double)s) / (double)temp);
}

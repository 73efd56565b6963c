/* LayerNorm over the last dimension (biased variance, as PyTorch). Row sums run
 * in 8 float lanes (vectorised; rows are short, d = 64) and the lanes are added
 * in double. */
#include <math.h>

#include "kernels/cpu/cpu.h"

enum { LANES = 8 };

static double lanes_total(const float *acc) {
    double t = 0.0;
    for (int l = 0; l < LANES; l++)
        t += acc[l];
    return t;
}

CPU_VEC void cpu_layernorm_fwd(iisan_backend *be, float *y, float *mean, float *rstd,
                               const float *x, const float *g, const float *b, int rows, int cols,
                               float eps) {
    const float *restrict gg = g, *restrict bb = b;
    for (int r = 0; r < rows; r++) {
        const float *restrict xr = x + (size_t)r * cols;
        float *restrict yr = y + (size_t)r * cols;
        float acc[LANES] = {0};
        int c = 0;
        for (; c + LANES <= cols; c += LANES)
            for (int l = 0; l < LANES; l++)
                acc[l] += xr[c + l];
        for (; c < cols; c++)
            acc[0] += xr[c];
        float mu = (float)(lanes_total(acc) / cols);

        float sq[LANES] = {0};
        for (c = 0; c + LANES <= cols; c += LANES)
            for (int l = 0; l < LANES; l++)
                sq[l] += (xr[c + l] - mu) * (xr[c + l] - mu);
        for (; c < cols; c++)
            sq[0] += (xr[c] - mu) * (xr[c] - mu);
        float rs = (float)(1.0 / sqrt(lanes_total(sq) / cols + (double)eps));

        for (c = 0; c < cols; c++)
            yr[c] = (xr[c] - mu) * rs * gg[c] + bb[c];
        mean[r] = mu;
        rstd[r] = rs;
    }
}

/* xhat = (x - mean) rstd, dxhat = dy g:
 *   dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)),
 *   dg += dy xhat, db += dy.
 * Per row, everything that reads dy happens before dx (which may be dy) is
 * written. */
CPU_VEC void cpu_layernorm_bwd(iisan_backend *be, float *dx, float *dg, float *db, const float *dy,
                               const float *x, const float *mean, const float *rstd, const float *g,
                               int rows, int cols) {
    const float *restrict gg = g;
    float *restrict dgg = dg, *restrict dbb = db;
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * cols;
        const float *dyr = dy + (size_t)r * cols;
        float *dxr = dx + (size_t)r * cols;
        float mu = mean[r], rs = rstd[r];

        float a1[LANES] = {0}, a2[LANES] = {0};
        int c = 0;
        for (; c + LANES <= cols; c += LANES)
            for (int l = 0; l < LANES; l++) {
                float xh = (xr[c + l] - mu) * rs, dxh = dyr[c + l] * gg[c + l];
                a1[l] += dxh;
                a2[l] += dxh * xh;
            }
        for (; c < cols; c++) {
            float xh = (xr[c] - mu) * rs, dxh = dyr[c] * gg[c];
            a1[0] += dxh;
            a2[0] += dxh * xh;
        }
        for (c = 0; c < cols; c++) {
            dgg[c] += dyr[c] * ((xr[c] - mu) * rs);
            dbb[c] += dyr[c];
        }

        float m1 = (float)(lanes_total(a1) / cols), m2 = (float)(lanes_total(a2) / cols);
        for (c = 0; c < cols; c++) {
            float xh = (xr[c] - mu) * rs;
            dxr[c] = rs * (dyr[c] * gg[c] - m1 - xh * m2);
        }
    }
}

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

typedef struct {
    float *y, *mean, *rstd, *dg, *db;
    const float *x, *g, *b, *dy;
    const float *cmean, *crstd;
    int rows, cols;
    float eps;
} ln_args;

static CPU_VEC void ln_fwd_range(void *va, size_t lo, size_t hi) {
    const ln_args *a = va;
    const float *restrict gg = a->g, *restrict bb = a->b;
    const int cols = a->cols;
    for (size_t r = lo; r < hi; r++) {
        const float *restrict xr = a->x + r * cols;
        float *restrict yr = a->y + r * cols;
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
        float rs = (float)(1.0 / sqrt(lanes_total(sq) / cols + (double)a->eps));

        for (c = 0; c < cols; c++)
            yr[c] = (xr[c] - mu) * rs * gg[c] + bb[c];
        a->mean[r] = mu;
        a->rstd[r] = rs;
    }
}

void cpu_layernorm_fwd(iisan_backend *be, float *y, float *mean, float *rstd, const float *x,
                       const float *g, const float *b, int rows, int cols, float eps) {
    ln_args a = {
        .y = y, .mean = mean, .rstd = rstd, .x = x, .g = g, .b = b, .cols = cols, .eps = eps};
    if (rows > 0) cpu_par(be, (size_t)rows, 64, ln_fwd_range, &a);
}

/* xhat = (x - mean) rstd, dxhat = dy g:
 *   dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)),
 *   dg += dy xhat, db += dy.
 * dg and db first, by columns (every row in order for each column), then dx by
 * rows: dx may be dy. */
static CPU_VEC void ln_bwd_params_range(void *va, size_t lo, size_t hi) {
    const ln_args *a = va;
    float *restrict dgg = a->dg, *restrict dbb = a->db;
    const int cols = a->cols;
    for (int r = 0; r < a->rows; r++) {
        const float *restrict xr = a->x + (size_t)r * cols;
        const float *restrict dyr = a->dy + (size_t)r * cols;
        const float mu = a->cmean[r], rs = a->crstd[r];
        for (size_t c = lo; c < hi; c++) {
            dgg[c] += dyr[c] * ((xr[c] - mu) * rs);
            dbb[c] += dyr[c];
        }
    }
}

static CPU_VEC void ln_bwd_rows_range(void *va, size_t lo, size_t hi) {
    const ln_args *a = va;
    const float *restrict gg = a->g;
    const int cols = a->cols;
    for (size_t r = lo; r < hi; r++) {
        const float *xr = a->x + r * cols;
        const float *dyr = a->dy + r * cols;
        float *dxr = a->y + r * cols;
        float mu = a->cmean[r], rs = a->crstd[r];

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
        float m1 = (float)(lanes_total(a1) / cols), m2 = (float)(lanes_total(a2) / cols);
        for (c = 0; c < cols; c++) {
            float xh = (xr[c] - mu) * rs;
            dxr[c] = rs * (dyr[c] * gg[c] - m1 - xh * m2);
        }
    }
}

void cpu_layernorm_bwd(iisan_backend *be, float *dx, float *dg, float *db, const float *dy,
                       const float *x, const float *mean, const float *rstd, const float *g,
                       int rows, int cols) {
    ln_args a = {.y = dx,
                 .dg = dg,
                 .db = db,
                 .x = x,
                 .g = g,
                 .dy = dy,
                 .cmean = mean,
                 .crstd = rstd,
                 .rows = rows,
                 .cols = cols};
    if (rows <= 0 || cols <= 0) return;
    cpu_par(be, (size_t)cols, 16, ln_bwd_params_range, &a);
    cpu_par(be, (size_t)rows, 64, ln_bwd_rows_range, &a);
}

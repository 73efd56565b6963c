/* Elementwise and small linear-algebra ops, Adam, and data movement. The per-element maths
 * comes from the headers the CPU backend uses (kernels/act.h, rng.h, half.h), and each
 * expression is written in the CPU backend's order of float operations (built without FMA
 * contraction, as the CPU's ISO C build is), so most of these ops match the CPU bit for bit;
 * dropout masks always do. */
#include "kernels/act.h"
#include "kernels/cuda/common.cuh"
#include "kernels/half.h"
#include "kernels/rng.h"

/* ---- linear algebra ---- */

static __global__ void k_axpby(size_t n, float a, const float *x, float b, float *y) {
    FOR_EACH(i, n) y[i] = a * x[i] + b * y[i];
}

void cuda_axpby(iisan_backend *be, size_t n, float a, const float *x, float b, float *y) {
    if (!n) return;
    CUDA_OP(be);
    cuda_ctx *cx = cuda_enter(be);
    LAUNCH(cx, k_axpby, ew_grid(n), EW_THREADS, 0, n, a, x, b, y);
}

static __global__ void k_add_bias(float *x, int ldx, const float *bias, int rows, int cols) {
    size_t n = (size_t)rows * cols;
    FOR_EACH(e, n) {
        size_t r = e / cols, c = e % cols;
        x[r * ldx + c] += bias[c];
    }
}

void cuda_add_bias(iisan_backend *be, float *x, int ldx, const float *bias, int rows, int cols) {
    if (rows <= 0 || cols <= 0) return;
    CUDA_OP(be);
    cuda_ctx *cx = cuda_enter(be);
    size_t n = (size_t)rows * cols;
    LAUNCH(cx, k_add_bias, ew_grid(n), EW_THREADS, 0, x, ldx, bias, rows, cols);
}

/* Column sums: a block of COLS_X columns x COLS_Y row lanes; lane y sums rows y, y+COLS_Y, ...
 * and the lanes are added in a fixed order (deterministic). */
#define COLS_X 32
#define COLS_Y 16

static __global__ void k_bias_grad(float *dbias, const float *dy, int ldy, int rows, int cols) {
    __shared__ float part[COLS_Y][COLS_X + 1];
    int c = blockIdx.x * COLS_X + threadIdx.x;
    float s = 0.0f;
    if (c < cols)
        for (int r = threadIdx.y; r < rows; r += COLS_Y)
            s += dy[(size_t)r * ldy + c];
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
        float t = 0.0f;
        for (int k = 0; k < COLS_Y; k++)
            t += part[k][threadIdx.x];
        dbias[c] += t;
    }
}

void cuda_bias_grad(iisan_backend *be, float *dbias, const float *dy, int ldy, int rows, int cols) {
    if (rows <= 0 || cols <= 0) return;
    CUDA_OP(be);
    cuda_ctx *cx = cuda_enter(be);
    dim3 block(COLS_X, COLS_Y);
    LAUNCH(cx, k_bias_grad, (cols + COLS_X - 1) / COLS_X, block, 0, dbias, dy, ldy, rows, cols);
}

static __global__ void k_ger(int M, int N, float alpha, const float *x, const float *y, float *A) {
    size_t n = (size_t)M * N;
    FOR_EACH(e, n) {
        size_t i = e / N, j = e % N;
        A[e] += alpha * x[i] * y[j];
    }
}

void cuda_ger(iisan_backend *be, int M, int N, float alpha, const float *x, const float *y,
              float *A) {
    if (M <= 0 || N <= 0) return;
    CUDA_OP(be);
    cuda_ctx *cx = cuda_enter(be);
    size_t n = (size_t)M * N;
    LAUNCH(cx, k_ger, ew_grid(n), EW_THREADS, 0, M, N, alpha, x, y, A);
}

/* ---- activations ---- */

static __global__ void k_act_fwd(int act, float *y, const float *x, size_t n) {
    if (act == IISAN_ACT_GELU) {
        FOR_EACH(i, n) y[i] = iisan_gelu(x[i]);
    } else {
        FOR_EACH(i, n) y[i] = iisan_relu(x[i]);
    }
}

void cuda_act_fwd(iisan_backend *be, int act, float *y, const float *x, size_t n) {
    if (!n) return;
    CUDA_OP(be);
    cuda_ctx *cx = cuda_enter(be);
    LAUNCH(cx, k_act_fwd, ew_grid(n), EW_THREADS, 0, act, y, x, n);
}

static __global__ void k_act_bwd(int act, float *dx, const float *dy, const float *x, size_t n) {
    if (act == IISAN_ACT_GELU) {
        FOR_EACH(i, n) dx[i] = dy[i] * iisan_gelu_grad(x[i]);
    } else {
        FOR_EACH(i, n) dx[i] = x[i] > 0.0f ? dy[i] : 0.0f; /* relu'(0) = 0, as PyTorch */
    }
}

void cuda_act_bwd(iisan_backend *be, int act, float *dx, const float *dy, const float *x,
                  size_t n) {
    if (!n) return;
    CUDA_OP(be);
    cuda_ctx *cx = cuda_enter(be);
    LAUNCH(cx, k_act_bwd, ew_grid(n), EW_THREADS, 0, act, dx, dy, x, n);
}

/* ---- dropout: y = x * keep / (1 - p), keep = uniform(seed, i) >= p ---- */

static __global__ void k_dropout(float *y, const float *x, size_t n, float p, float scale,
                                 uint64_t key) {
    FOR_EACH(i, n) { /* as the CPU: x * mask / (1-p), so a dropped -x gives -0 */
        float m = iisan_rng_uniform_key(key, i) >= p ? scale : 0.0f;
        y[i] = x[i] * m;
    }
}

/* forward and backward are the same linear map */
static void dropout_apply(iisan_backend *be, float *y, const float *x, size_t n, float p,
                          uint64_t seed) {
    if (!n) return;
    CUDA_OP(be);
    cuda_ctx *cx = cuda_enter(be);
    if (p <= 0.0f) {
        if (y != x) CK(cudaMemcpy(y, x, n * sizeof(float), cudaMemcpyDeviceToDevice));
        return;
    }
    if (p >= 1.0f) { /* nothing is kept */
        CK(cudaMemset(y, 0, n * sizeof(float)));
        return;
    }
    float scale = 1.0f / (1.0f - p);
    LAUNCH(cx, k_dropout, ew_grid(n), EW_THREADS, 0, y, x, n, p, scale, iisan_rng_key(seed));
}

void cuda_dropout_fwd(iisan_backend *be, float *y, const float *x, size_t n, float p,
                      uint64_t seed) {
    dropout_apply(be, y, x, n, p, seed);
}

void cuda_dropout_bwd(iisan_backend *be, float *dx, const float *dy, size_t n, float p,
                      uint64_t seed) {
    dropout_apply(be, dx, dy, n, p, seed);
}

/* ---- IISAN gates ---- */

/* The gate's weights s = sigmoid(p / temp) on a, 1 - s on b; the CPU's lin3 moves the one
 * present operand first, so a NULL a takes b (and its weight) */
static __device__ void gate_weights(const float **a, const float **b, const float *p, float temp,
                                    float *sa, float *sb) {
    float s = iisan_sigmoid(*p / temp);
    *sa = s;
    *sb = 1.0f - s;
    if (!*a) {
        *a = *b;
        *sa = *sb;
        *b = NULL;
    }
}

/* element i of c + sa a + sb b, NULL operands being zeros; the terms present are added in the
 * CPU's order (c first, then a, then b) */
static __device__ float gate_mix(const float *c, const float *a, const float *b, float sa, float sb,
                                 size_t i) {
    if (c && a && b) return c[i] + sa * a[i] + sb * b[i];
    if (c && a) return c[i] + sa * a[i];
    if (a && b) return sa * a[i] + sb * b[i];
    if (a) return sa * a[i];
    return c ? c[i] : 0.0f;
}

/* out = c + s a + (1 - s) b (gate_weights, gate_mix). out may equal c. */
static __global__ void k_gate_fwd(float *out, const float *c, const float *a, const float *b,
                                  const float *p, float temp, size_t n) {
    float sa, sb;
    gate_weights(&a, &b, p, temp, &sa, &sb);
    FOR_EACH(i, n) out[i] = gate_mix(c, a, b, sa, sb, i);
}

void cuda_gate_fwd(iisan_backend *be, float *out, const float *c, const float *a, const float *b,
                   const float *p, float temp, size_t n) {
    if (!n) return;
    CUDA_OP(be);
    cuda_ctx *cx = cuda_enter(be);
    LAUNCH(cx, k_gate_fwd, ew_grid(n), EW_THREADS, 0, out, c, a, b, p, temp, n);
}

/* k_gate_fwd's mix into out and, per element, h = out + bias[column] (the CPU's order) */
static __global__ void k_gate_bias_fwd(float *out, float *h, const float *c, const float *a,
                                       const float *b, const float *p, float temp,
                                       const float *bias, int cols, size_t n) {
    float sa, sb;
    gate_weights(&a, &b, p, temp, &sa, &sb);
    FOR_EACH(i, n) {
        float v = gate_mix(c, a, b, sa, sb, i);
        out[i] = v;
        h[i] = v + bias[i % cols];
    }
}

void cuda_gate_bias_fwd(iisan_backend *be, float *out, float *h, const float *c, const float *a,
                        const float *b, const float *p, float temp, const float *bias, int rows,
                        int cols) {
    if (rows <= 0 || cols <= 0) return;
    CUDA_OP(be);
    cuda_ctx *cx = cuda_enter(be);
    size_t n = (size_t)rows * cols;
    LAUNCH(cx, k_gate_bias_fwd, ew_grid(n), EW_THREADS, 0, out, h, c, a, b, p, temp, bias, cols, n);
}

/* da = s dout, db = (1 - s) dout (when wanted), out = the forward's mix c + s a + (1 - s) b
 * (when wanted: gate_bwd_mix) and, per block, the partial sum of dout (a - b) in double. a, b
 * and dout of element i are read before its da / db are written, so da / db may alias them. */
#define GATE_MAX_BLOCKS 1024

static __global__ void k_gate_bwd(float *da, float *db, float *out, double *part, const float *dout,
                                  const float *c, const float *a, const float *b, const float *p,
                                  float temp, size_t n) {
    float s = iisan_sigmoid(*p / temp);
    const float *ma = a, *mb = b;
    float sa, sb;
    gate_weights(&ma, &mb, p, temp, &sa, &sb);
    double acc = 0.0;
    FOR_EACH(i, n) {
        float d = dout[i];
        if (a && b)
            acc += d * (a[i] - b[i]);
        else if (a)
            acc += d * a[i];
        else if (b)
            acc -= d * b[i];
        if (out) out[i] = gate_mix(c, ma, mb, sa, sb, i);
        if (da) da[i] = s * d;
        if (db) db[i] = (1.0f - s) * d;
    }
    double t = block_sum_d(acc);
    if (threadIdx.x == 0) part[blockIdx.x] = t;
}

/* one block: *dp += (sum of the partials) s (1 - s) / temp, in double as the CPU */
static __global__ void k_gate_dp(float *dp, const double *part, int nb, const float *p,
                                 float temp) {
    double acc = 0.0;
    for (int k = threadIdx.x; k < nb; k += blockDim.x)
        acc += part[k];
    double sum = block_sum_d(acc);
    if (threadIdx.x == 0) {
        float s = iisan_sigmoid(*p / temp);
        *dp += (float)(sum * (double)s * (1.0 - (double)s) / (double)temp);
    }
}

void cuda_gate_bwd_mix(iisan_backend *be, float *out, float *da, float *db, float *dp,
                       const float *dout, const float *c, const float *a, const float *b,
                       const float *p, float temp, size_t n) {
    if (!n) return;
    CUDA_OP(be);
    cuda_ctx *cx = cuda_enter(be);
    unsigned nb = ew_grid(n);
    if (nb > GATE_MAX_BLOCKS) nb = GATE_MAX_BLOCKS;
    double *part = (double *)cuda_scratch(&cx->red, &cx->red_bytes, nb * sizeof(double));
    if (!part) return;
    LAUNCH(cx, k_gate_bwd, nb, EW_THREADS, 0, da, db, out, part, dout, c, a, b, p, temp, n);
    LAUNCH(cx, k_gate_dp, 1, 256, 0, dp, part, (int)nb, p, temp);
}

/* gate_bwd_mix without the mix */
void cuda_gate_bwd(iisan_backend *be, float *da, float *db, float *dp, const float *dout,
                   const float *a, const float *b, const float *p, float temp, size_t n) {
    cuda_gate_bwd_mix(be, NULL, da, db, dp, dout, NULL, a, b, p, temp, n);
}

/* ---- Adam (PyTorch's single-tensor order of operations, as kernels/cpu/cpu_optim.c) ---- */

static __global__ void k_adam(float *w, float *g, float *m, float *v, size_t n, float step,
                              float bc2_sqrt, float b2, float c1, float c2, float eps, int zero_g) {
    FOR_EACH(i, n) {
        float gi = g[i];
        if (zero_g) g[i] = 0.0f;
        float mi = m[i] + c1 * (gi - m[i]);
        float vi = b2 * v[i] + c2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        w[i] -= step * (mi / (sqrtf(vi) / bc2_sqrt + eps));
    }
}

void cuda_adam(iisan_backend *be, float *w, float *g, float *m, float *v, size_t n, float lr,
               float b1, float b2, float eps, int t, int zero_g) {
    if (!n) return;
    CUDA_OP(be);
    cuda_ctx *cx = cuda_enter(be);
    const float step = (float)((double)lr / (1.0 - pow((double)b1, t)));
    const float bc2_sqrt = (float)sqrt(1.0 - pow((double)b2, t));
    const float c1 = 1.0f - b1, c2 = 1.0f - b2;
    LAUNCH(cx, k_adam, ew_grid(n), EW_THREADS, 0, w, g, m, v, n, step, bc2_sqrt, b2, c1, c2, eps,
           zero_g);
}

/* ---- data movement ---- */

static __global__ void k_gather_half(float *dst, const uint16_t *const *rows, int n, int cols) {
    size_t total = (size_t)n * cols;
    FOR_EACH(e, total) {
        const uint16_t *r = rows[e / cols];
        dst[e] = r ? iisan_half_to_float(r[e % cols]) : 0.0f;
    }
}

void cuda_gather_half(iisan_backend *be, float *dst, const uint16_t *const *rows, int n, int cols) {
    if (n <= 0 || cols <= 0) return;
    CUDA_OP(be);
    cuda_ctx *cx = cuda_enter(be);
    size_t bytes = (size_t)n * sizeof(*rows);
    void *dev_rows = cuda_scratch(&cx->ptrs, &cx->ptrs_bytes, bytes);
    if (!dev_rows) return;
    /* a pageable-to-device copy: it waits for the work before it (which may still read the
     * previous table) and is ordered before the kernel below */
    if (!CK(cudaMemcpy(dev_rows, rows, bytes, cudaMemcpyHostToDevice))) return;
    size_t total = (size_t)n * cols;
    LAUNCH(cx, k_gather_half, ew_grid(total), EW_THREADS, 0, dst, (const uint16_t *const *)dev_rows,
           n, cols);
}

static __global__ void k_gather_rows(float *dst, const float *src, const int *idx, int n,
                                     int cols) {
    size_t total = (size_t)n * cols;
    FOR_EACH(e, total) {
        size_t i = e / cols, c = e % cols;
        dst[e] = src[(size_t)idx[i] * cols + c];
    }
}

void cuda_gather_rows(iisan_backend *be, float *dst, const float *src, const int *idx, int n,
                      int cols) {
    if (n <= 0 || cols <= 0) return;
    CUDA_OP(be);
    cuda_ctx *cx = cuda_enter(be);
    size_t total = (size_t)n * cols;
    LAUNCH(cx, k_gather_rows, ew_grid(total), EW_THREADS, 0, dst, src, idx, n, cols);
}

static __global__ void k_scatter_add_rows(float *dst, const float *src, const int *idx, int n,
                                          int cols) {
    size_t total = (size_t)n * cols;
    FOR_EACH(e, total) {
        size_t i = e / cols, c = e % cols;
        atomicAdd(dst + (size_t)idx[i] * cols + c, src[e]);
    }
}

void cuda_scatter_add_rows(iisan_backend *be, float *dst, const float *src, const int *idx, int n,
                           int cols) {
    if (n <= 0 || cols <= 0) return;
    CUDA_OP(be);
    cuda_ctx *cx = cuda_enter(be);
    size_t total = (size_t)n * cols;
    LAUNCH(cx, k_scatter_add_rows, ew_grid(total), EW_THREADS, 0, dst, src, idx, n, cols);
}

/* Linear algebra: GEMMs and the rank-1 update through OpenBLAS (row-major
 * CBLAS), the small vector/bias ops as plain vectorisable loops. */
#include <cblas.h>
#include <math.h>

#include "kernels/cpu/cpu.h"

static CPU_VEC void scale_rows(float *C, int ldc, int M, int N, float beta) {
    for (int i = 0; i < M; i++) {
        float *restrict c = C + (size_t)i * ldc;
        if (beta == 0.0f)
            for (int j = 0; j < N; j++)
                c[j] = 0.0f;
        else
            for (int j = 0; j < N; j++)
                c[j] *= beta;
    }
}

void cpu_gemm(iisan_backend *be, int ta, int tb, int M, int N, int K, float alpha, const float *A,
              int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (cpu_fault(be)) { /* the test hook: a failed op's output is garbage */
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++)
                C[(size_t)i * ldc + j] = NAN;
        return;
    }
    if (K <= 0) { /* an empty product: C = beta C (BLAS may reject lda = 0 here) */
        scale_rows(C, ldc, M, N, beta);
        return;
    }
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N,
                K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void cpu_gemm_batched(iisan_backend *be, int ta, int tb, int M, int N, int K, float alpha,
                      const float *A, int lda, long sa, const float *B, int ldb, long sb,
                      float beta, float *C, int ldc, long sc, int batch) {
    for (int i = 0; i < batch; i++)
        cpu_gemm(be, ta, tb, M, N, K, alpha, A + i * sa, lda, B + i * sb, ldb, beta, C + i * sc,
                 ldc);
}

/* x may equal y: each element is read before it is written, so no restrict */
CPU_VEC void cpu_axpby(iisan_backend *be, size_t n, float a, const float *x, float b, float *y) {
    for (size_t i = 0; i < n; i++)
        y[i] = a * x[i] + b * y[i];
}

CPU_VEC void cpu_add_bias(iisan_backend *be, float *x, int ldx, const float *bias, int rows,
                          int cols) {
    const float *restrict bb = bias;
    for (int r = 0; r < rows; r++) {
        float *restrict xr = x + (size_t)r * ldx;
        for (int c = 0; c < cols; c++)
            xr[c] += bb[c];
    }
}

CPU_VEC void cpu_bias_grad(iisan_backend *be, float *dbias, const float *dy, int ldy, int rows,
                           int cols) {
    float *restrict db = dbias;
    for (int r = 0; r < rows; r++) {
        const float *restrict d = dy + (size_t)r * ldy;
        for (int c = 0; c < cols; c++)
            db[c] += d[c];
    }
}

void cpu_ger(iisan_backend *be, int M, int N, float alpha, const float *x, const float *y,
             float *A) {
    if (M <= 0 || N <= 0) return;
    cblas_sger(CblasRowMajor, M, N, alpha, x, 1, y, 1, A, N);
}

/* GEMMs through cuBLAS.
 *
 * cuBLAS is column-major; our matrices are row-major. A row-major X [R, C] with leading
 * dimension ldx is, read column-major, X^T [C, R] with the same leading dimension. So the
 * row-major C = op(A) op(B) is computed as the column-major C^T = op(B)^T op(A)^T: pass B
 * before A, swap M and N, and keep each operand's transpose flag. */
#include "kernels/cuda/common.cuh"

/* C[r, c] = beta * C[r, c] (0 when beta == 0), for the K == 0 case that cuBLAS may refuse
 * (row-major lda/ldb of 0 fail its checks). */
static __global__ void k_scale2d(float *C, int ldc, int M, int N, float beta) {
    size_t n = (size_t)M * N;
    FOR_EACH(e, n) {
        size_t r = e / N, c = e % N;
        float *p = C + r * ldc + c;
        *p = beta == 0.0f ? 0.0f : beta * *p;
    }
}

static cublasOperation_t op(int t) { return t ? CUBLAS_OP_T : CUBLAS_OP_N; }

void cuda_gemm(iisan_backend *be, int ta, int tb, int M, int N, int K, float alpha, const float *A,
               int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    CUDA_OP(be);
    cuda_ctx *cx = cuda_enter(be);
    if (K <= 0) {
        LAUNCH(cx, k_scale2d, ew_grid((size_t)M * N), EW_THREADS, 0, C, ldc, M, N, beta);
        return;
    }
    CK(cublasSgemm(cx->blas, op(tb), op(ta), N, M, K, &alpha, B, ldb, A, lda, &beta, C, ldc));
}

void cuda_gemm_batched(iisan_backend *be, int ta, int tb, int M, int N, int K, float alpha,
                       const float *A, int lda, long sa, const float *B, int ldb, long sb,
                       float beta, float *C, int ldc, long sc, int batch) {
    if (M <= 0 || N <= 0 || batch <= 0) return;
    CUDA_OP(be);
    cuda_ctx *cx = cuda_enter(be);
    if (K <= 0) {
        for (int i = 0; i < batch; i++)
            LAUNCH(cx, k_scale2d, ew_grid((size_t)M * N), EW_THREADS, 0, C + i * sc, ldc, M, N,
                   beta);
        return;
    }
    CK(cublasSgemmStridedBatched(cx->blas, op(tb), op(ta), N, M, K, &alpha, B, ldb, (long long)sb,
                                 A, lda, (long long)sa, &beta, C, ldc, (long long)sc, batch));
}

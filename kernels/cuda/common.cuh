/* Private to kernels/cuda/: the backend's state, the checked-call macros, launch helpers and
 * block reductions shared by the kernel files, and the ops each file defines. */
#ifndef IISAN_KERNELS_CUDA_COMMON_CUH
#define IISAN_KERNELS_CUDA_COMMON_CUH

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/cuda/cuda_backend.h"

struct cuda_ctx {
    int device;
    int sync_each; /* IISAN_CUDA_SYNC=1: synchronise after every launch */
    cublasHandle_t blas;
    void *red; /* reduction partials, red_bytes */
    size_t red_bytes;
    void *ptrs; /* gather_half's device copy of the row-pointer table, ptrs_bytes */
    size_t ptrs_bytes;
    pthread_mutex_t op_mu; /* recursive: one op at a time (see CUDA_OP) */
};

/* Report (stderr) and record a failed call; true when the call succeeded. */
bool iisan_cuda_check(cudaError_t e, const char *stmt, const char *file, int line);
bool iisan_cuda_check(cublasStatus_t e, const char *stmt, const char *file, int line);

/* Every CUDA runtime and cuBLAS call goes through CK. */
#define CK(stmt) iisan_cuda_check((stmt), #stmt, __FILE__, __LINE__)

/* Launch a kernel and check the launch (and, with IISAN_CUDA_SYNC=1, its execution). */
#define LAUNCH(cx, kern, grid, block, shmem, ...)                                                  \
    do {                                                                                           \
        kern<<<(grid), (block), (shmem)>>>(__VA_ARGS__);                                           \
        iisan_cuda_check(cudaGetLastError(), #kern "<<<>>>", __FILE__, __LINE__);                  \
        if ((cx)->sync_each)                                                                       \
            iisan_cuda_check(cudaDeviceSynchronize(), #kern "<<<>>> (sync)", __FILE__, __LINE__);  \
    } while (0)

/* The backend's state, with its device made current on the calling thread. */
cuda_ctx *cuda_enter(iisan_backend *be);

/* Every op holds the backend's op mutex for its duration (CUDA_OP at its start; released when
 * the op returns). Threads may then share one backend, as the daemon's batch, retraining and
 * loading threads do: ops are issued whole, in some order, onto the one (legacy default)
 * stream, which runs them in that order, so the shared cuBLAS handle and scratch buffers are
 * never used by two ops at once. Each thread's own sequence of ops keeps its order. */
struct cuda_op_guard {
    pthread_mutex_t *mu;
    explicit cuda_op_guard(iisan_backend *be) : mu(&((cuda_ctx *)be->ctx)->op_mu) {
        pthread_mutex_lock(mu);
    }
    ~cuda_op_guard() { pthread_mutex_unlock(mu); }
    cuda_op_guard(const cuda_op_guard &) = delete;
    cuda_op_guard &operator=(const cuda_op_guard &) = delete;
};
#define CUDA_OP(be) cuda_op_guard cuda_op_guard_(be)

/* A device buffer of at least `bytes` in *buf (grown as needed); NULL on failure. Buffers are
 * reused by the next op: everything runs in order on one stream. */
void *cuda_scratch(void **buf, size_t *have, size_t bytes);

/* Threads per block for the elementwise kernels, and a grid for n elements (the kernels loop
 * with a grid stride, so the grid is capped). */
#define EW_THREADS 256
static inline unsigned ew_grid(size_t n) {
    size_t g = (n + EW_THREADS - 1) / EW_THREADS;
    return (unsigned)(g < 65536 ? (g ? g : 1) : 65536);
}

#define FOR_EACH(i, n)                                                                             \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (size_t)(n);                \
         i += (size_t)gridDim.x * blockDim.x)

/* ---- block reductions (blockDim.x a multiple of 32, at most 1024, every thread calls) ---- */

__device__ inline float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ inline float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ inline double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ inline int warp_sum_int(int v) {
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Every thread gets the same value: warp 0..nw-1 partials summed in a fixed order. */
__device__ inline float block_sum(float v) {
    __shared__ float sh[32];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads(); /* earlier readers of sh are done */
    if (lane == 0) sh[w] = v;
    __syncthreads();
    float t = 0.0f;
    for (int k = 0; k < nw; k++)
        t += sh[k];
    return t;
}

__device__ inline double block_sum_d(double v) {
    __shared__ double sh[32];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_sum_d(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    double t = 0.0;
    for (int k = 0; k < nw; k++)
        t += sh[k];
    return t;
}

__device__ inline float block_max(float v) {
    __shared__ float sh[32];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    float t = sh[0];
    for (int k = 1; k < nw; k++)
        t = fmaxf(t, sh[k]);
    return t;
}

__device__ inline int block_sum_int(int v) {
    __shared__ int sh[32];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_sum_int(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    int t = 0;
    for (int k = 0; k < nw; k++)
        t += sh[k];
    return t;
}

/* ---- the ops, one group per file ---- */

/* cuda_blas.cu */
void cuda_gemm(iisan_backend *be, int ta, int tb, int M, int N, int K, float alpha, const float *A,
               int lda, const float *B, int ldb, float beta, float *C, int ldc);
void cuda_gemm_batched(iisan_backend *be, int ta, int tb, int M, int N, int K, float alpha,
                       const float *A, int lda, long sa, const float *B, int ldb, long sb,
                       float beta, float *C, int ldc, long sc, int batch);

/* cuda_elementwise.cu */
void cuda_axpby(iisan_backend *be, size_t n, float a, const float *x, float b, float *y);
void cuda_add_bias(iisan_backend *be, float *x, int ldx, const float *bias, int rows, int cols);
void cuda_bias_grad(iisan_backend *be, float *dbias, const float *dy, int ldy, int rows, int cols);
void cuda_ger(iisan_backend *be, int M, int N, float alpha, const float *x, const float *y,
              float *A);
void cuda_act_fwd(iisan_backend *be, int act, float *y, const float *x, size_t n);
void cuda_act_bwd(iisan_backend *be, int act, float *dx, const float *dy, const float *x, size_t n);
void cuda_dropout_fwd(iisan_backend *be, float *y, const float *x, size_t n, float p,
                      uint64_t seed);
void cuda_dropout_bwd(iisan_backend *be, float *dx, const float *dy, size_t n, float p,
                      uint64_t seed);
void cuda_gate_bias_fwd(iisan_backend *be, float *out, float *h, const float *c, const float *a,
                        const float *b, const float *p, float temp, const float *bias, int rows,
                        int cols);
void cuda_gate_fwd(iisan_backend *be, float *out, const float *c, const float *a, const float *b,
                   const float *p, float temp, size_t n);
void cuda_gate_bwd(iisan_backend *be, float *da, float *db, float *dp, const float *dout,
                   const float *a, const float *b, const float *p, float temp, size_t n);
void cuda_gate_bwd_mix(iisan_backend *be, float *out, float *da, float *db, float *dp,
                       const float *dout, const float *c, const float *a, const float *b,
                       const float *p, float temp, size_t n);
void cuda_adam(iisan_backend *be, float *w, float *g, float *m, float *v, size_t n, float lr,
               float b1, float b2, float eps, int t, int zero_g);
void cuda_gather_half(iisan_backend *be, float *dst, const uint16_t *const *rows, int n, int cols);
void cuda_gather_rows(iisan_backend *be, float *dst, const float *src, const int *idx, int n,
                      int cols);
void cuda_scatter_add_rows(iisan_backend *be, float *dst, const float *src, const int *idx, int n,
                           int cols);

/* cuda_rows.cu */
void cuda_layernorm_fwd(iisan_backend *be, float *y, float *mean, float *rstd, const float *x,
                        const float *g, const float *b, int rows, int cols, float eps);
void cuda_layernorm_bwd(iisan_backend *be, float *dx, float *dg, float *db, const float *dy,
                        const float *x, const float *mean, const float *rstd, const float *g,
                        int rows, int cols);
void cuda_softmax_rows(iisan_backend *be, float *s, int R, int len, const int *keymask,
                       int rows_per_mask);
void cuda_attention_fwd(iisan_backend *be, float *out, float *probs, const float *qkv,
                        const float *mask, int B, int n, int H, int dh, float p, uint64_t seed);
void cuda_attention_bwd(iisan_backend *be, float *dqkv, const float *dout, const float *qkv,
                        const float *probs, int B, int n, int H, int dh, float p, uint64_t seed);
void cuda_inbatch_ce(iisan_backend *be, float *logits, float *loss, const float *logpop,
                     const int *cand_item, const unsigned char *umask, const int *quser,
                     const int *qtarget, int Q, int C);

/* cuda_eval.cu */
void cuda_rank_targets(iisan_backend *be, int *rank, const float *scores, int R, int N,
                       const int *target, const int *excl, int ne);
void cuda_topk(iisan_backend *be, int *out_idx, float *out_score, const float *scores, int R, int N,
               int k, const int *excl, int ne);

#endif

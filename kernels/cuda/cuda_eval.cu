/* Evaluation: target ranks and top-k, one block per row of scores. A row's eligible columns
 * (1..N-1, not listed in its exclusions) are a bitmap in shared memory, built once per row. */
#include <math.h>

#include "kernels/cuda/common.cuh"

#define EVAL_THREADS 256
#define SHARED_DEFAULT (48 * 1024) /* dynamic shared memory every launch may use */

/* bits[c] = 1 when column c is eligible: 1 <= c < N and c not in ex[0..ne) (ex may be NULL) */
__device__ void build_eligible(uint32_t *bits, int N, const int *ex, int ne) {
    int nw = (N + 31) / 32;
    for (int w = threadIdx.x; w < nw; w += blockDim.x) {
        int left = N - w * 32; /* columns of this word below N: >= 1 */
        uint32_t word = left >= 32 ? 0xffffffffu : (1u << left) - 1u;
        if (w == 0) word &= ~1u; /* column 0 is padding */
        bits[w] = word;
    }
    __syncthreads();
    if (ex)
        for (int e = threadIdx.x; e < ne; e += blockDim.x) {
            int c = ex[e];
            if (c > 0 && c < N) atomicAnd(&bits[c >> 5], ~(1u << (c & 31)));
        }
    __syncthreads();
}

__device__ inline bool eligible(const uint32_t *bits, int c) {
    return (bits[c >> 5] >> (c & 31)) & 1u;
}

static size_t bitmap_bytes(int N) { return (size_t)(N + 31) / 32 * sizeof(uint32_t); }

/* allow `bytes` of dynamic shared memory for kern when that is over the default */
template <typename K> static bool allow_shared(K kern, size_t bytes) {
    if (bytes <= SHARED_DEFAULT) return true;
    return CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

/* ---- rank_targets: 1 + #{eligible c != target : scores[c] > scores[target]} ---- */

static __global__ void k_rank(int *rank, const float *scores, int N, const int *target,
                              const int *excl, int ne) {
    extern __shared__ uint32_t bits[];
    const int r = blockIdx.x;
    const float *row = scores + (size_t)r * N;
    build_eligible(bits, N, excl ? excl + (size_t)r * ne : NULL, ne);
    const int t = target[r];
    const float st = row[t];
    int cnt = 0;
    for (int c = threadIdx.x; c < N; c += blockDim.x)
        if (c != t && eligible(bits, c) && row[c] > st) cnt++;
    cnt = block_sum_int(cnt);
    if (threadIdx.x == 0) rank[r] = 1 + cnt;
}

void cuda_rank_targets(iisan_backend *be, int *rank, const float *scores, int R, int N,
                       const int *target, const int *excl, int ne) {
    if (R <= 0 || N <= 0) return;
    CUDA_OP(be);
    cuda_ctx *cx = cuda_enter(be);
    size_t shm = bitmap_bytes(N);
    if (!allow_shared(k_rank, shm)) return;
    LAUNCH(cx, k_rank, R, EVAL_THREADS, shm, rank, scores, N, target, excl, ne);
}

/* ---- top-k: k passes, each taking the best eligible column ranked after the previous pass's
 * pick in the order (score descending, index ascending). NaN scores are never picked; rows with
 * fewer than k eligible columns end in index -1, score -INFINITY (as the CPU backend). ---- */

/* (s, c) ranks before (bs, bi): higher score, or the same score at a lower index */
__device__ inline bool before(float s, int c, float bs, int bi) {
    return s > bs || (s == bs && c < bi);
}

static __global__ void k_topk(int *out_idx, float *out_score, const float *scores, int N, int k,
                              const int *excl, int ne) {
    extern __shared__ uint32_t bits[];
    __shared__ float ws[32];
    __shared__ int wi[32];
    const int r = blockIdx.x;
    const float *row = scores + (size_t)r * N;
    int *oi = out_idx + (size_t)r * k;
    float *os = out_score + (size_t)r * k;
    build_eligible(bits, N, excl ? excl + (size_t)r * ne : NULL, ne);
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;

    float ps = INFINITY; /* the previous pick: (+inf, -1) ranks before everything */
    int pi = -1;
    int j = 0;
    for (; j < k; j++) {
        float bs = 0.0f;
        int bi = -1; /* -1: nothing found */
        for (int c = threadIdx.x; c < N; c += blockDim.x) {
            if (!eligible(bits, c)) continue;
            float s = row[c];
            if (!before(ps, pi, s, c)) continue; /* not ranked after the previous pick */
            if (bi < 0 || before(s, c, bs, bi)) {
                bs = s;
                bi = c;
            }
        }
        for (int o = 16; o > 0; o >>= 1) { /* the warp's best */
            float os2 = __shfl_xor_sync(0xffffffffu, bs, o);
            int oi2 = __shfl_xor_sync(0xffffffffu, bi, o);
            if (oi2 >= 0 && (bi < 0 || before(os2, oi2, bs, bi))) {
                bs = os2;
                bi = oi2;
            }
        }
        __syncthreads(); /* the previous pass is done with ws / wi */
        if (lane == 0) {
            ws[w] = bs;
            wi[w] = bi;
        }
        __syncthreads();
        bs = 0.0f;
        bi = -1;
        for (int q = 0; q < nw; q++) /* the block's best, the same in every thread */
            if (wi[q] >= 0 && (bi < 0 || before(ws[q], wi[q], bs, bi))) {
                bs = ws[q];
                bi = wi[q];
            }
        if (bi < 0) break; /* uniform: every thread saw the same ws / wi */
        if (threadIdx.x == 0) {
            oi[j] = bi;
            os[j] = bs;
        }
        ps = bs;
        pi = bi;
    }
    for (int q = j + threadIdx.x; q < k; q += blockDim.x) {
        oi[q] = -1;
        os[q] = -INFINITY;
    }
}

void cuda_topk(iisan_backend *be, int *out_idx, float *out_score, const float *scores, int R, int N,
               int k, const int *excl, int ne) {
    if (R <= 0 || k <= 0) return;
    CUDA_OP(be);
    cuda_ctx *cx = cuda_enter(be);
    if (N < 0) N = 0;
    size_t shm = bitmap_bytes(N);
    if (!allow_shared(k_topk, shm)) return;
    LAUNCH(cx, k_topk, R, EVAL_THREADS, shm, out_idx, out_score, scores, N, k, excl, ne);
}

/* The compute interface: every numeric operation core/ performs goes through
 * one table of function pointers. The CPU backend (kernels/cpu/) is the
 * readable reference; the CUDA backend (kernels/cuda/) fills the same table.
 * core/ asks a backend what it can do (caps), never its name.
 *
 * Conventions
 * - Every matrix is row-major. A matrix "X [R, C] with leading dimension ldx"
 *   has element (r, c) at X[r * ldx + c].
 * - Every float / int pointer passed to an op lives in backend memory
 *   (obtained from be->alloc); host memory is reached only through upload /
 *   download. For the CPU backend the two are the same thing.
 * - Ops that produce gradients ACCUMULATE (+=) into parameter gradients and
 *   OVERWRITE activation gradients, as each op's comment states.
 * - Dropout masks come from a counter-based hash of (seed, index) (see
 *   kernels/rng.h), so every backend draws the same mask for the same seed.
 */
#ifndef IISAN_KERNELS_BACKEND_H
#define IISAN_KERNELS_BACKEND_H

#include <stddef.h>
#include <stdint.h>

enum iisan_act { IISAN_ACT_RELU = 0, IISAN_ACT_GELU = 1 };

/* the precision of gemm_mixed (set_precision): fp32, or bf16 inputs with fp32 accumulation */
enum iisan_precision { IISAN_PREC_FP32 = 0, IISAN_PREC_BF16 = 1 };

typedef struct iisan_backend iisan_backend;

/* time spent inside one op (see op_times) */
typedef struct {
    const char *op; /* the slot's name: "gemm", "layernorm_bwd" */
    unsigned long long calls;
    double seconds;
} iisan_op_time;

/* What a backend can do: callers ask these, never the name. */
typedef struct {
    /* backend memory is host memory: ops read plain host pointers (hidden states in place in
     * the LMDB map, a table scanned by host code such as core/score_cpu.h) */
    int host_memory;
    /* ops called from several threads run at once; 0: they queue on one device stream, so a
     * second thread (an inference context, a batch thread) adds nothing */
    int parallel_ops;
    /* set_precision(IISAN_PREC_BF16) succeeds: gemm_mixed can round its inputs to bf16 and
     * sum in fp32 at a higher rate than gemm (CPU: AVX512-BF16) */
    int bf16;
} iisan_backend_caps;

struct iisan_backend {
    const char *name; /* "cpu", "cuda": for messages and logs */
    void *ctx;        /* backend-private state */
    iisan_backend_caps caps;

    /* ---- status ----
     * 0 while every op has succeeded; else how many failures were recorded, the first one's
     * message copied into msg (len bytes; msg may be NULL). Sticky: a failed op leaves garbage
     * in its results and in everything computed from them, so the status never returns to 0;
     * callers ask after a unit of work (a batch of requests, a model load, a training run)
     * and throw the work away when it is not 0. The ops themselves return nothing. */
    int (*status)(iisan_backend *be, char *msg, size_t len);

    /* ---- memory ---- */
    void *(*alloc)(iisan_backend *be, size_t bytes); /* zero-filled; NULL on failure */
    void (*free)(iisan_backend *be, void *p);
    void (*upload)(iisan_backend *be, void *dst, const void *src_host, size_t bytes);
    void (*download)(iisan_backend *be, void *dst_host, const void *src, size_t bytes);
    void (*copy)(iisan_backend *be, void *dst, const void *src, size_t bytes);
    void (*zero)(iisan_backend *be, void *p, size_t bytes);
    void (*sync)(iisan_backend *be);
    /* Backend memory that lives in host RAM: used like alloc's (every op reads it), for data
     * too large for the device. CUDA: pinned, mapped into the device's address space
     * (cudaHostAllocMapped), read by kernels over the bus. CPU: alloc. Zero-filled; NULL on
     * failure; released with free_host. */
    void *(*alloc_host)(iisan_backend *be, size_t bytes);
    void (*free_host)(iisan_backend *be, void *p);

    /* ---- linear algebra ---- */
    /* C[M,N] = alpha * op(A) * op(B) + beta * C.  op(A) is [M,K]: A is [M,K]
     * (lda >= K) when ta == 0, or [K,M] (lda >= M) when ta == 1; likewise
     * op(B) is [K,N]. */
    void (*gemm)(iisan_backend *be, int ta, int tb, int M, int N, int K, float alpha,
                 const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);
    /* As gemm, for the products that may run in the training precision (the SAN blocks and
     * the heads): in IISAN_PREC_BF16, op(A) and op(B) are rounded to bf16 (round to nearest
     * even) and their products summed in fp32; C, alpha and beta stay fp32. In fp32 (the
     * default) it is gemm. core/ calls it without knowing the precision. */
    void (*gemm_mixed)(iisan_backend *be, int ta, int tb, int M, int N, int K, float alpha,
                       const float *A, int lda, const float *B, int ldb, float beta, float *C,
                       int ldc);
    /* Sets gemm_mixed's precision (IISAN_PREC_*) for every later call. Returns 0, or -1 with
     * the reason in err (the backend or this CPU cannot run it; the precision is unchanged). */
    int (*set_precision)(iisan_backend *be, int precision, char *err, size_t len);
    /* batch independent GEMMs; matrix i starts at A + i*sa, B + i*sb, C + i*sc */
    void (*gemm_batched)(iisan_backend *be, int ta, int tb, int M, int N, int K, float alpha,
                         const float *A, int lda, long sa, const float *B, int ldb, long sb,
                         float beta, float *C, int ldc, long sc, int batch);
    /* y = a*x + b*y over n elements (x may equal y) */
    void (*axpby)(iisan_backend *be, size_t n, float a, const float *x, float b, float *y);
    /* x[r, c] += bias[c] for r < rows, c < cols; x has leading dimension ldx */
    void (*add_bias)(iisan_backend *be, float *x, int ldx, const float *bias, int rows, int cols);
    /* dbias[c] += sum_r dy[r, c] */
    void (*bias_grad)(iisan_backend *be, float *dbias, const float *dy, int ldy, int rows,
                      int cols);
    /* rank-1 update: A[M,N] += alpha * x[M] y[N]^T (A contiguous, lda = N) */
    void (*ger)(iisan_backend *be, int M, int N, float alpha, const float *x, const float *y,
                float *A);

    /* ---- elementwise ---- */
    /* y = act(x); y may equal x */
    void (*act_fwd)(iisan_backend *be, int act, float *y, const float *x, size_t n);
    /* dx = dy * act'(x) where x is the PRE-activation input; dx may equal dy */
    void (*act_bwd)(iisan_backend *be, int act, float *dx, const float *dy, const float *x,
                    size_t n);
    /* y = x * keep / (1-p) with keep = rng_uniform(seed, i) >= p; y may equal x.
     * p == 0 copies. */
    void (*dropout_fwd)(iisan_backend *be, float *y, const float *x, size_t n, float p,
                        uint64_t seed);
    /* dx = dy * keep / (1-p), the same mask as dropout_fwd(seed); dx may equal dy */
    void (*dropout_bwd)(iisan_backend *be, float *dx, const float *dy, size_t n, float p,
                        uint64_t seed);

    /* ---- IISAN gates ----
     * s = sigmoid(*p / temp) (p is one scalar in backend memory)
     * out = (c ? c : 0) + s * a + (1 - s) * b          a, b, c, out: [n]
     * a == NULL or b == NULL means zeros. out may equal c. */
    void (*gate_fwd)(iisan_backend *be, float *out, const float *c, const float *a, const float *b,
                     const float *p, float temp, size_t n);
    /* gate_fwd's mix into out [rows, cols] and, in the same pass, h = out + bias (bias
     * [cols], added to every row): a SAN block's input and the start of its residual sum
     * h = in + b_up + up(act(...)) (core/tower.c), one pass where gate_fwd, a copy and
     * add_bias took three. out may equal c; h overlaps no operand. The backward is
     * gate_bwd's with bias_grad's. */
    void (*gate_bias_fwd)(iisan_backend *be, float *out, float *h, const float *c, const float *a,
                          const float *b, const float *p, float temp, const float *bias, int rows,
                          int cols);
    /* given dout: da = s*dout, db = (1-s)*dout (OVERWRITE; skipped when NULL),
     * *dp += sum(dout * (a - b)) * s * (1 - s) / temp. (dc == dout: caller's.) */
    void (*gate_bwd)(iisan_backend *be, float *da, float *db, float *dp, const float *dout,
                     const float *a, const float *b, const float *p, float temp, size_t n);
    /* gate_bwd and, in the same pass, the forward's mix again: out = gate_fwd(c, a, b) with
     * gate_fwd's bits, for a backward that did not keep it (core/tower.c). out overlaps no
     * operand; da / db may alias a / b as in gate_bwd. */
    void (*gate_bwd_mix)(iisan_backend *be, float *out, float *da, float *db, float *dp,
                         const float *dout, const float *c, const float *a, const float *b,
                         const float *p, float temp, size_t n);
    /* Optional (NULL where a backend has none; core/tower.c then gathers the states to fp32):
     * gate_bias_fwd and gate_bwd_mix with the hidden states read as fp16, so that a batch's
     * gathered states take half the bytes. a is fp16 (ha, required); b is fp16 when hb is set,
     * else the fp32 b (NULL: zeros). A half converts to a float exactly, so these give the
     * fp32 ops' bits on the converted values. gate_bwd_mix_h writes no da (states take no
     * gradient), and db = (1-s)*dout only for an fp32 b (skipped when NULL). */
    void (*gate_bias_fwd_h)(iisan_backend *be, float *out, float *h, const float *c,
                            const uint16_t *ha, const uint16_t *hb, const float *b, const float *p,
                            float temp, const float *bias, int rows, int cols);
    void (*gate_bwd_mix_h)(iisan_backend *be, float *out, float *db, float *dp, const float *dout,
                           const float *c, const uint16_t *ha, const uint16_t *hb, const float *b,
                           const float *p, float temp, size_t n);
    /* Optional (NULL where a backend has none; core/tower.c then takes d in by its GEMM):
     * *dp += (1 - s) / temp * sum(x * y) over n, s = sigmoid(*p / temp), summed in gate_bwd's
     * blocks and order. For a SAN block whose input is s X alone (an intra tower's first
     * block, h_0 = 0), the gate's gradient through the down projection,
     * sum((dpre W_down) * X) s (1 - s) / temp, is this with x = W_down, y = dW_down. */
    void (*gate_dp_dot)(iisan_backend *be, float *dp, const float *x, const float *y,
                        const float *p, float temp, size_t n);

    /* ---- normalisation ---- */
    /* y = (x - mean) * rstd * g + b per row of [rows, cols]; saves mean, rstd [rows] */
    void (*layernorm_fwd)(iisan_backend *be, float *y, float *mean, float *rstd, const float *x,
                          const float *g, const float *b, int rows, int cols, float eps);
    /* dx OVERWRITTEN (dx may equal dy); dg, db ACCUMULATED */
    void (*layernorm_bwd)(iisan_backend *be, float *dx, float *dg, float *db, const float *dy,
                          const float *x, const float *mean, const float *rstd, const float *g,
                          int rows, int cols);

    /* ---- attention for short sequences ----
     * qkv [B*n, 3*d]: row (b, i) holds q | k | v, each d = H*dh wide, head h in
     * columns h*dh .. h*dh+dh-1 of its part. mask [B*n] (1 = real position).
     * score(i, j) = q_i.k_j / sqrt(dh) + (j <= i && mask[j] ? 0 : -1e9);
     * P = softmax_j(score) saved in probs [B, H, n, n] (before dropout);
     * out [B*n, d] = dropout(P; p, seed) . V */
    void (*attention_fwd)(iisan_backend *be, float *out, float *probs, const float *qkv,
                          const float *mask, int B, int n, int H, int dh, float p, uint64_t seed);
    /* In place, each row of s [R, len] becomes the softmax of its entries. With keymask
     * (int [R / rows_per_mask, len], row r using mask row r / rows_per_mask), entries whose
     * mask is 0 get probability 0 and take no part; a row with no unmasked entry becomes
     * zeros. The encoders' attention (core/encoder_bert.c, encoder_vit.c). */
    void (*softmax_rows)(iisan_backend *be, float *s, int R, int len, const int *keymask,
                         int rows_per_mask);
    /* dqkv [B*n, 3d] OVERWRITTEN */
    void (*attention_bwd)(iisan_backend *be, float *dqkv, const float *dout, const float *qkv,
                          const float *probs, int B, int n, int H, int dh, float p, uint64_t seed);

    /* ---- in-batch debiased cross-entropy ----
     * logits [Q, C] on input (= o_q . e_c), replaced by dloss/dlogits on output.
     * For query q (of user quser[q], target slot qtarget[q]), candidate c:
     *   masked when cand_item[c] == 0 (padding) or
     *   (umask[quser[q]*C + c] != 0 and c != qtarget[q]);
     *   logit = masked ? -1e4 : logits - logpop[c].
     * loss = mean_q CE(logit_q, qtarget[q]) written to *loss (backend memory);
     * gradient scaled by 1/Q. */
    void (*inbatch_ce)(iisan_backend *be, float *logits, float *loss, const float *logpop,
                       const int *cand_item, const unsigned char *umask, const int *quser,
                       const int *qtarget, int Q, int C);

    /* ---- optimiser ----
     * PyTorch Adam without weight decay, bias-corrected at step t (1-based). zero_g: each
     * g[i] is set to 0 once read, so that the next step's gradient starts from zeros
     * without a pass of its own. */
    void (*adam)(iisan_backend *be, float *w, float *g, float *m, float *v, size_t n, float lr,
                 float b1, float b2, float eps, int t, int zero_g);

    /* ---- data movement ---- */
    /* dst[i, :] = rows[i] converted from fp16 (cols halves) or zeros when rows[i]
     * is NULL. rows[] is a HOST array of pointers to fp16 rows the backend can
     * read (host memory for cpu; device-resident catalogue for cuda). */
    void (*gather_half)(iisan_backend *be, float *dst, const uint16_t *const *rows, int n,
                        int cols);
    /* Optional (with the _h gates): gather_half's rows copied as fp16, unconverted */
    void (*gather_half16)(iisan_backend *be, uint16_t *dst, const uint16_t *const *rows, int n,
                          int cols);
    /* dst[i, :] = src[idx[i], :]  (cols wide, both contiguous) */
    void (*gather_rows)(iisan_backend *be, float *dst, const float *src, const int *idx, int n,
                        int cols);
    /* dst[idx[i], :] += src[i, :] */
    void (*scatter_add_rows)(iisan_backend *be, float *dst, const float *src, const int *idx, int n,
                             int cols);

    /* ---- evaluation ----
     * scores [R, N]; for row r: rank[r] = 1 + #{c in 1..N-1 : c != target[r],
     * c not in excl[r*ne .. r*ne+ne-1], scores[r,c] > scores[r,target[r]]}.
     * Column 0 (padding) never counts; excl entries 0 are ignored. */
    void (*rank_targets)(iisan_backend *be, int *rank, const float *scores, int R, int N,
                         const int *target, const int *excl, int ne);
    /* top-k per row of scores [R, N] (descending; ties by lower index), skipping
     * column 0 and excluded columns as for rank_targets. out_idx/out_score [R, k] */
    void (*topk)(iisan_backend *be, int *out_idx, float *out_score, const float *scores, int R,
                 int N, int k, const int *excl, int ne);

    /* ---- time per op (NULL where a backend does not keep it) ----
     * Copies up to max entries {op, calls, seconds inside it} counted since the backend was
     * made, ops never called left out, and returns how many. The CPU backend times every
     * op's call on the one clock (kernels/clock.h), some 40 ns a call; CUDA ops return
     * before they run, so it keeps none. */
    int (*op_times)(iisan_backend *be, iisan_op_time *out, int max);

    void (*destroy)(iisan_backend *be);
};

/* The CPU backend (NULL only when out of memory). Its ops never fail, except by the test hook
 * IISAN_CPU_FAULT_FILE=PATH in the environment: once PATH exists, every GEMM leaves NaN in its
 * output and counts a failure, which is how the tests drive the status checks. */
iisan_backend *iisan_backend_cpu(int nthreads);
/* the threads the CPU backend's own ops run on (its worker pool, the caller's thread
 * included): nthreads, or every core when 0 */
int iisan_backend_cpu_threads(const iisan_backend *be);
/* the pool's threads of the last CPU backend created (every core before the first), and
 * whether it cuts GEMMs across them (0: IISAN_BLAS_OWN_THREADS=1, OpenBLAS's own threads) */
int iisan_cpu_threads_last(void);
int iisan_cpu_split_last(void);
/* caps.bf16 of the CPU backend: the CPU has AVX512-BF16 (kernels/cpu/cpu_bf16.c), unless the
 * test hook IISAN_CPU_NO_BF16=1 is in the environment, which makes it answer as a CPU without. */

#endif

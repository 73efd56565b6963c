/* Internals of the CPU backend (kernels/cpu/): one function per slot of the
 * iisan_backend table, grouped by file, plus the bulk fp16 converters. Not for
 * core/, which sees only kernels/backend.h. */
#ifndef IISAN_KERNELS_CPU_CPU_H
#define IISAN_KERNELS_CPU_CPU_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/backend.h"
#include "kernels/half.h"

/* Hot loops ask GCC for the full vectoriser: at -O2, GCC 12's "very cheap" cost
 * model refuses any loop whose trip count is not a known multiple of the vector
 * width. Clang vectorises these loops at -O2 already. */
#if defined(__GNUC__) && !defined(__clang__)
#define CPU_VEC __attribute__((optimize("tree-vectorize", "vect-cost-model=dynamic")))
#else
#define CPU_VEC
#endif

/* ---- cpu_half.c: bulk fp16 conversion, declared in kernels/half.h ---- */

/* ---- cpu_pool.c: the persistent worker pool ---- */
/* the body of a parallel loop: elements [lo, hi) of the loop */
typedef void (*cpu_range_fn)(void *arg, size_t lo, size_t hi);
typedef struct cpu_pool cpu_pool;
/* nthreads threads in all, the caller's included (fewer when some cannot start); NULL when
 * out of memory */
cpu_pool *cpu_pool_create(int nthreads);
void cpu_pool_destroy(cpu_pool *p);
int cpu_pool_threads(const cpu_pool *p);
/* runs fn over [0, n) in pieces of whole grains, one per thread, and returns when all are
 * done; inline when n fits one grain, the pool is busy or p is NULL */
void cpu_pool_for(cpu_pool *p, size_t n, size_t grain, cpu_range_fn fn, void *arg);

/* ---- cpu_profile.c: time per op ---- */
/* the ops timed, in the order op_times lists them */
enum {
    CPU_OP_GEMM,
    CPU_OP_GEMM_BATCHED,
    CPU_OP_GEMM_MIXED,
    CPU_OP_GER,
    CPU_OP_AXPBY,
    CPU_OP_ADD_BIAS,
    CPU_OP_BIAS_GRAD,
    CPU_OP_ACT_FWD,
    CPU_OP_ACT_BWD,
    CPU_OP_DROPOUT_FWD,
    CPU_OP_DROPOUT_BWD,
    CPU_OP_GATE_FWD,
    CPU_OP_GATE_BIAS_FWD,
    CPU_OP_GATE_BWD,
    CPU_OP_GATE_BWD_MIX,
    CPU_OP_LAYERNORM_FWD,
    CPU_OP_LAYERNORM_BWD,
    CPU_OP_ATTENTION_FWD,
    CPU_OP_SOFTMAX_ROWS,
    CPU_OP_ATTENTION_BWD,
    CPU_OP_INBATCH_CE,
    CPU_OP_ADAM,
    CPU_OP_GATHER_HALF,
    CPU_OP_GATHER_ROWS,
    CPU_OP_SCATTER_ADD_ROWS,
    CPU_OP_RANK_TARGETS,
    CPU_OP_TOPK,
    CPU_OP_COPY,
    CPU_OP_ZERO,
    CPU_OP_UPLOAD,
    CPU_OP_DOWNLOAD,
    CPU_OP_GATE_BIAS_FWD_H,
    CPU_OP_GATE_BWD_MIX_H,
    CPU_OP_GATHER_HALF16,
    CPU_OP_GATE_DP_DOT,
    CPU_N_OPS
};
typedef struct {
    _Atomic unsigned long long ns[CPU_N_OPS], calls[CPU_N_OPS];
} cpu_prof;
/* replaces be's op slots by timed wrappers of the plain table's (cpu_plain) and fills op_times */
void cpu_profile_install(iisan_backend *be);

/* ---- cpu_backend.c ---- */
/* the backend's private state */
typedef struct {
    char *fault_file;     /* the fault hook's trigger file, NULL: none */
    _Atomic int failures; /* failures counted since it fired */
    cpu_pool *pool;
    cpu_prof prof;
    int precision;  /* gemm_mixed's: IISAN_PREC_* */
    int split_gemm; /* 1: OpenBLAS runs one thread per call and the pool cuts large GEMMs */
} cpu_ctx;
/* the table without timing: what the timed wrappers call */
extern const iisan_backend cpu_plain;
/* 1 when the fault hook (IISAN_CPU_FAULT_FILE) has fired: the op must leave garbage (NaN)
 * instead of its result; counts one failure */
int cpu_fault(iisan_backend *be);
/* cpu_pool_for on be's pool */
void cpu_par(iisan_backend *be, size_t n, size_t grain, cpu_range_fn fn, void *arg);

/* ---- cpu_blas.c ---- */
void cpu_gemm(iisan_backend *be, int ta, int tb, int M, int N, int K, float alpha, const float *A,
              int lda, const float *B, int ldb, float beta, float *C, int ldc);
void cpu_gemm_batched(iisan_backend *be, int ta, int tb, int M, int N, int K, float alpha,
                      const float *A, int lda, long sa, const float *B, int ldb, long sb,
                      float beta, float *C, int ldc, long sc, int batch);
void cpu_axpby(iisan_backend *be, size_t n, float a, const float *x, float b, float *y);
void cpu_add_bias(iisan_backend *be, float *x, int ldx, const float *bias, int rows, int cols);
void cpu_bias_grad(iisan_backend *be, float *dbias, const float *dy, int ldy, int rows, int cols);
void cpu_ger(iisan_backend *be, int M, int N, float alpha, const float *x, const float *y,
             float *A);

/* ---- cpu_bf16.c (kernels/cpu/cpu_bf16.h): gemm_mixed and set_precision ---- */
void cpu_gemm_mixed(iisan_backend *be, int ta, int tb, int M, int N, int K, float alpha,
                    const float *A, int lda, const float *B, int ldb, float beta, float *C,
                    int ldc);
int cpu_set_precision(iisan_backend *be, int precision, char *err, size_t len);

/* ---- cpu_elementwise.c ---- */
void cpu_act_fwd(iisan_backend *be, int act, float *y, const float *x, size_t n);
void cpu_act_bwd(iisan_backend *be, int act, float *dx, const float *dy, const float *x, size_t n);
void cpu_dropout_fwd(iisan_backend *be, float *y, const float *x, size_t n, float p, uint64_t seed);
void cpu_dropout_bwd(iisan_backend *be, float *dx, const float *dy, size_t n, float p,
                     uint64_t seed);
void cpu_gate_fwd(iisan_backend *be, float *out, const float *c, const float *a, const float *b,
                  const float *p, float temp, size_t n);
void cpu_gate_bias_fwd(iisan_backend *be, float *out, float *h, const float *c, const float *a,
                       const float *b, const float *p, float temp, const float *bias, int rows,
                       int cols);
void cpu_gate_bwd(iisan_backend *be, float *da, float *db, float *dp, const float *dout,
                  const float *a, const float *b, const float *p, float temp, size_t n);
void cpu_gate_bwd_mix(iisan_backend *be, float *out, float *da, float *db, float *dp,
                      const float *dout, const float *c, const float *a, const float *b,
                      const float *p, float temp, size_t n);
void cpu_gate_bias_fwd_h(iisan_backend *be, float *out, float *h, const float *c,
                         const uint16_t *ha, const uint16_t *hb, const float *b, const float *p,
                         float temp, const float *bias, int rows, int cols);
void cpu_gate_bwd_mix_h(iisan_backend *be, float *out, float *db, float *dp, const float *dout,
                        const float *c, const uint16_t *ha, const uint16_t *hb, const float *b,
                        const float *p, float temp, size_t n);
void cpu_gate_dp_dot(iisan_backend *be, float *dp, const float *x, const float *y, const float *p,
                     float temp, size_t n);

/* ---- cpu_norm.c ---- */
void cpu_layernorm_fwd(iisan_backend *be, float *y, float *mean, float *rstd, const float *x,
                       const float *g, const float *b, int rows, int cols, float eps);
void cpu_layernorm_bwd(iisan_backend *be, float *dx, float *dg, float *db, const float *dy,
                       const float *x, const float *mean, const float *rstd, const float *g,
                       int rows, int cols);

/* ---- cpu_attention.c ---- */
void cpu_softmax_rows(iisan_backend *be, float *s, int R, int len, const int *keymask,
                      int rows_per_mask);
void cpu_attention_fwd(iisan_backend *be, float *out, float *probs, const float *qkv,
                       const float *mask, int B, int n, int H, int dh, float p, uint64_t seed);
void cpu_attention_bwd(iisan_backend *be, float *dqkv, const float *dout, const float *qkv,
                       const float *probs, int B, int n, int H, int dh, float p, uint64_t seed);

/* ---- cpu_loss.c ---- */
void cpu_inbatch_ce(iisan_backend *be, float *logits, float *loss, const float *logpop,
                    const int *cand_item, const unsigned char *umask, const int *quser,
                    const int *qtarget, int Q, int C);

/* ---- cpu_optim.c ---- */
void cpu_adam(iisan_backend *be, float *w, float *g, float *m, float *v, size_t n, float lr,
              float b1, float b2, float eps, int t, int zero_g);

/* ---- cpu_data.c ---- */
void cpu_gather_half(iisan_backend *be, float *dst, const uint16_t *const *rows, int n, int cols);
void cpu_gather_half16(iisan_backend *be, uint16_t *dst, const uint16_t *const *rows, int n,
                       int cols);
void cpu_gather_rows(iisan_backend *be, float *dst, const float *src, const int *idx, int n,
                     int cols);
void cpu_scatter_add_rows(iisan_backend *be, float *dst, const float *src, const int *idx, int n,
                          int cols);
void cpu_rank_targets(iisan_backend *be, int *rank, const float *scores, int R, int N,
                      const int *target, const int *excl, int ne);
void cpu_topk(iisan_backend *be, int *out_idx, float *out_score, const float *scores, int R, int N,
              int k, const int *excl, int ne);

#endif

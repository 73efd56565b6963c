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

/* ---- cpu_backend.c ---- */
/* 1 when the fault hook (IISAN_CPU_FAULT_FILE) has fired: the op must leave garbage (NaN)
 * instead of its result; counts one failure */
int cpu_fault(iisan_backend *be);

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

/* ---- cpu_elementwise.c ---- */
void cpu_act_fwd(iisan_backend *be, int act, float *y, const float *x, size_t n);
void cpu_act_bwd(iisan_backend *be, int act, float *dx, const float *dy, const float *x, size_t n);
void cpu_dropout_fwd(iisan_backend *be, float *y, const float *x, size_t n, float p, uint64_t seed);
void cpu_dropout_bwd(iisan_backend *be, float *dx, const float *dy, size_t n, float p,
                     uint64_t seed);
void cpu_gate_fwd(iisan_backend *be, float *out, const float *c, const float *a, const float *b,
                  const float *p, float temp, size_t n);
void cpu_gate_bwd(iisan_backend *be, float *da, float *db, float *dp, const float *dout,
                  const float *a, const float *b, const float *p, float temp, size_t n);

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
void cpu_adam(iisan_backend *be, float *w, const float *g, float *m, float *v, size_t n, float lr,
              float b1, float b2, float eps, int t);

/* ---- cpu_data.c ---- */
void cpu_gather_half(iisan_backend *be, float *dst, const uint16_t *const *rows, int n, int cols);
void cpu_gather_rows(iisan_backend *be, float *dst, const float *src, const int *idx, int n,
                     int cols);
void cpu_scatter_add_rows(iisan_backend *be, float *dst, const float *src, const int *idx, int n,
                          int cols);
void cpu_rank_targets(iisan_backend *be, int *rank, const float *scores, int R, int N,
                      const int *target, const int *excl, int ne);
void cpu_topk(iisan_backend *be, int *out_idx, float *out_score, const float *scores, int R, int N,
              int k, const int *excl, int ne);

#endif

/* Time per op: each slot of the CPU table wrapped in two readings of the one
 * clock, added to the backend's counters (atomics: the daemon calls ops from
 * several threads). Always on: a reading costs some 20 ns against ops of
 * microseconds and more. Ops called from inside another op (gemm_batched's
 * GEMMs) count once, under the outer op. */
#include "kernels/clock.h"
#include "kernels/cpu/cpu.h"

static const char *const op_name[] = {"gemm",
                                      "gemm_batched",
                                      "gemm_mixed",
                                      "ger",
                                      "axpby",
                                      "add_bias",
                                      "bias_grad",
                                      "act_fwd",
                                      "act_bwd",
                                      "dropout_fwd",
                                      "dropout_bwd",
                                      "gate_fwd",
                                      "gate_bias_fwd",
                                      "gate_bwd",
                                      "gate_bwd_mix",
                                      "layernorm_fwd",
                                      "layernorm_bwd",
                                      "attention_fwd",
                                      "softmax_rows",
                                      "attention_bwd",
                                      "inbatch_ce",
                                      "adam",
                                      "gather_half",
                                      "gather_rows",
                                      "scatter_add_rows",
                                      "rank_targets",
                                      "topk",
                                      "copy",
                                      "zero",
                                      "upload",
                                      "download",
                                      "gate_bias_fwd_h",
                                      "gate_bwd_mix_h",
                                      "gather_half16",
                                      "gate_dp_dot"};

_Static_assert(sizeof op_name / sizeof *op_name == CPU_N_OPS, "one name per timed op");

static void count(iisan_backend *be, int op, double t0) {
    cpu_prof *p = &((cpu_ctx *)be->ctx)->prof;
    p->ns[op] += (unsigned long long)((iisan_now() - t0) * 1e9);
    p->calls[op] += 1;
}

/* a wrapper: t_NAME(PARAMS) times cpu_plain.NAME(ARGS) under CPU_OP_ID */
#define TIMED(name, id, params, args)                                                              \
    static void t_##name params {                                                                  \
        double t0_ = iisan_now();                                                                  \
        cpu_plain.name args;                                                                       \
        count(be, id, t0_);                                                                        \
    }

TIMED(gemm, CPU_OP_GEMM,
      (iisan_backend * be, int ta, int tb, int M, int N, int K, float alpha, const float *A,
       int lda, const float *B, int ldb, float beta, float *C, int ldc),
      (be, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc))
TIMED(gemm_batched, CPU_OP_GEMM_BATCHED,
      (iisan_backend * be, int ta, int tb, int M, int N, int K, float alpha, const float *A,
       int lda, long sa, const float *B, int ldb, long sb, float beta, float *C, int ldc, long sc,
       int batch),
      (be, ta, tb, M, N, K, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, batch))
TIMED(gemm_mixed, CPU_OP_GEMM_MIXED,
      (iisan_backend * be, int ta, int tb, int M, int N, int K, float alpha, const float *A,
       int lda, const float *B, int ldb, float beta, float *C, int ldc),
      (be, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc))
TIMED(ger, CPU_OP_GER,
      (iisan_backend * be, int M, int N, float alpha, const float *x, const float *y, float *A),
      (be, M, N, alpha, x, y, A))
TIMED(axpby, CPU_OP_AXPBY,
      (iisan_backend * be, size_t n, float a, const float *x, float b, float *y),
      (be, n, a, x, b, y))
TIMED(add_bias, CPU_OP_ADD_BIAS,
      (iisan_backend * be, float *x, int ldx, const float *bias, int rows, int cols),
      (be, x, ldx, bias, rows, cols))
TIMED(bias_grad, CPU_OP_BIAS_GRAD,
      (iisan_backend * be, float *dbias, const float *dy, int ldy, int rows, int cols),
      (be, dbias, dy, ldy, rows, cols))
TIMED(act_fwd, CPU_OP_ACT_FWD, (iisan_backend * be, int act, float *y, const float *x, size_t n),
      (be, act, y, x, n))
TIMED(act_bwd, CPU_OP_ACT_BWD,
      (iisan_backend * be, int act, float *dx, const float *dy, const float *x, size_t n),
      (be, act, dx, dy, x, n))
TIMED(dropout_fwd, CPU_OP_DROPOUT_FWD,
      (iisan_backend * be, float *y, const float *x, size_t n, float p, uint64_t seed),
      (be, y, x, n, p, seed))
TIMED(dropout_bwd, CPU_OP_DROPOUT_BWD,
      (iisan_backend * be, float *dx, const float *dy, size_t n, float p, uint64_t seed),
      (be, dx, dy, n, p, seed))
TIMED(gate_fwd, CPU_OP_GATE_FWD,
      (iisan_backend * be, float *out, const float *c, const float *a, const float *b,
       const float *p, float temp, size_t n),
      (be, out, c, a, b, p, temp, n))
TIMED(gate_bias_fwd, CPU_OP_GATE_BIAS_FWD,
      (iisan_backend * be, float *out, float *h, const float *c, const float *a, const float *b,
       const float *p, float temp, const float *bias, int rows, int cols),
      (be, out, h, c, a, b, p, temp, bias, rows, cols))
TIMED(gate_bwd, CPU_OP_GATE_BWD,
      (iisan_backend * be, float *da, float *db, float *dp, const float *dout, const float *a,
       const float *b, const float *p, float temp, size_t n),
      (be, da, db, dp, dout, a, b, p, temp, n))
TIMED(gate_bwd_mix, CPU_OP_GATE_BWD_MIX,
      (iisan_backend * be, float *out, float *da, float *db, float *dp, const float *dout,
       const float *c, const float *a, const float *b, const float *p, float temp, size_t n),
      (be, out, da, db, dp, dout, c, a, b, p, temp, n))
TIMED(gate_bias_fwd_h, CPU_OP_GATE_BIAS_FWD_H,
      (iisan_backend * be, float *out, float *h, const float *c, const uint16_t *ha,
       const uint16_t *hb, const float *b, const float *p, float temp, const float *bias, int rows,
       int cols),
      (be, out, h, c, ha, hb, b, p, temp, bias, rows, cols))
TIMED(gate_bwd_mix_h, CPU_OP_GATE_BWD_MIX_H,
      (iisan_backend * be, float *out, float *db, float *dp, const float *dout, const float *c,
       const uint16_t *ha, const uint16_t *hb, const float *b, const float *p, float temp,
       size_t n),
      (be, out, db, dp, dout, c, ha, hb, b, p, temp, n))
TIMED(gate_dp_dot, CPU_OP_GATE_DP_DOT,
      (iisan_backend * be, float *dp, const float *x, const float *y, const float *p, float temp,
       size_t n),
      (be, dp, x, y, p, temp, n))
TIMED(layernorm_fwd, CPU_OP_LAYERNORM_FWD,
      (iisan_backend * be, float *y, float *mean, float *rstd, const float *x, const float *g,
       const float *b, int rows, int cols, float eps),
      (be, y, mean, rstd, x, g, b, rows, cols, eps))
TIMED(layernorm_bwd, CPU_OP_LAYERNORM_BWD,
      (iisan_backend * be, float *dx, float *dg, float *db, const float *dy, const float *x,
       const float *mean, const float *rstd, const float *g, int rows, int cols),
      (be, dx, dg, db, dy, x, mean, rstd, g, rows, cols))
TIMED(attention_fwd, CPU_OP_ATTENTION_FWD,
      (iisan_backend * be, float *out, float *probs, const float *qkv, const float *mask, int B,
       int n, int H, int dh, float p, uint64_t seed),
      (be, out, probs, qkv, mask, B, n, H, dh, p, seed))
TIMED(softmax_rows, CPU_OP_SOFTMAX_ROWS,
      (iisan_backend * be, float *s, int R, int len, const int *keymask, int rows_per_mask),
      (be, s, R, len, keymask, rows_per_mask))
TIMED(attention_bwd, CPU_OP_ATTENTION_BWD,
      (iisan_backend * be, float *dqkv, const float *dout, const float *qkv, const float *probs,
       int B, int n, int H, int dh, float p, uint64_t seed),
      (be, dqkv, dout, qkv, probs, B, n, H, dh, p, seed))
TIMED(inbatch_ce, CPU_OP_INBATCH_CE,
      (iisan_backend * be, float *logits, float *loss, const float *logpop, const int *cand_item,
       const unsigned char *umask, const int *quser, const int *qtarget, int Q, int C),
      (be, logits, loss, logpop, cand_item, umask, quser, qtarget, Q, C))
TIMED(adam, CPU_OP_ADAM,
      (iisan_backend * be, float *w, float *g, float *m, float *v, size_t n, float lr, float b1,
       float b2, float eps, int t, int zero_g),
      (be, w, g, m, v, n, lr, b1, b2, eps, t, zero_g))
TIMED(gather_half, CPU_OP_GATHER_HALF,
      (iisan_backend * be, float *dst, const uint16_t *const *rows, int n, int cols),
      (be, dst, rows, n, cols))
TIMED(gather_half16, CPU_OP_GATHER_HALF16,
      (iisan_backend * be, uint16_t *dst, const uint16_t *const *rows, int n, int cols),
      (be, dst, rows, n, cols))
TIMED(gather_rows, CPU_OP_GATHER_ROWS,
      (iisan_backend * be, float *dst, const float *src, const int *idx, int n, int cols),
      (be, dst, src, idx, n, cols))
TIMED(scatter_add_rows, CPU_OP_SCATTER_ADD_ROWS,
      (iisan_backend * be, float *dst, const float *src, const int *idx, int n, int cols),
      (be, dst, src, idx, n, cols))
TIMED(rank_targets, CPU_OP_RANK_TARGETS,
      (iisan_backend * be, int *rank, const float *scores, int R, int N, const int *target,
       const int *excl, int ne),
      (be, rank, scores, R, N, target, excl, ne))
TIMED(topk, CPU_OP_TOPK,
      (iisan_backend * be, int *out_idx, float *out_score, const float *scores, int R, int N, int k,
       const int *excl, int ne),
      (be, out_idx, out_score, scores, R, N, k, excl, ne))
TIMED(copy, CPU_OP_COPY, (iisan_backend * be, void *dst, const void *src, size_t bytes),
      (be, dst, src, bytes))
TIMED(zero, CPU_OP_ZERO, (iisan_backend * be, void *p, size_t bytes), (be, p, bytes))
TIMED(upload, CPU_OP_UPLOAD, (iisan_backend * be, void *dst, const void *src, size_t bytes),
      (be, dst, src, bytes))
TIMED(download, CPU_OP_DOWNLOAD, (iisan_backend * be, void *dst, const void *src, size_t bytes),
      (be, dst, src, bytes))

static int op_times(iisan_backend *be, iisan_op_time *out, int max) {
    cpu_prof *p = &((cpu_ctx *)be->ctx)->prof;
    int n = 0;
    for (int op = 0; op < CPU_N_OPS && n < max; op++) {
        unsigned long long calls = p->calls[op];
        if (calls) out[n++] = (iisan_op_time){op_name[op], calls, p->ns[op] * 1e-9};
    }
    return n;
}

void cpu_profile_install(iisan_backend *be) {
    be->gemm = t_gemm;
    be->gemm_mixed = t_gemm_mixed;
    be->gemm_batched = t_gemm_batched;
    be->ger = t_ger;
    be->axpby = t_axpby;
    be->add_bias = t_add_bias;
    be->bias_grad = t_bias_grad;
    be->act_fwd = t_act_fwd;
    be->act_bwd = t_act_bwd;
    be->dropout_fwd = t_dropout_fwd;
    be->dropout_bwd = t_dropout_bwd;
    be->gate_fwd = t_gate_fwd;
    be->gate_bias_fwd = t_gate_bias_fwd;
    be->gate_bwd = t_gate_bwd;
    be->gate_bwd_mix = t_gate_bwd_mix;
    be->gate_bias_fwd_h = t_gate_bias_fwd_h;
    be->gate_bwd_mix_h = t_gate_bwd_mix_h;
    be->gate_dp_dot = t_gate_dp_dot;
    be->layernorm_fwd = t_layernorm_fwd;
    be->layernorm_bwd = t_layernorm_bwd;
    be->attention_fwd = t_attention_fwd;
    be->softmax_rows = t_softmax_rows;
    be->attention_bwd = t_attention_bwd;
    be->inbatch_ce = t_inbatch_ce;
    be->adam = t_adam;
    be->gather_half = t_gather_half;
    be->gather_half16 = t_gather_half16;
    be->gather_rows = t_gather_rows;
    be->scatter_add_rows = t_scatter_add_rows;
    be->rank_targets = t_rank_targets;
    be->topk = t_topk;
    be->copy = t_copy;
    be->zero = t_zero;
    be->upload = t_upload;
    be->download = t_download;
    be->op_times = op_times;
}

/* Linear algebra: GEMMs and the rank-1 update through OpenBLAS (row-major
 * CBLAS), the small vector/bias ops as plain vectorisable loops. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>

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

/* Large GEMMs are cut across the backend's pool: OpenBLAS runs one thread per call (set when
 * the backend is created) and each of the pool's threads takes a block of C's rows, or of its
 * columns when C is short and wide (a weight gradient). This replaces OpenBLAS's own threads,
 * whose idle workers spin on sched_yield after every call and so compete with the pool's
 * elementwise passes for the same cores (docs/benchmarks.md). Cut by rows or columns, each
 * element of C is still one sgemm's dot product over all of K; when C is narrow and K long,
 * K is cut instead (gemm_ksplit, below) and the parts' products are added in part order. The
 * kernel's blocking of a part may differ from the whole's, so results agree with an uncut call
 * to rounding, not to the bit (and depend on the number of threads).
 * IISAN_BLAS_OWN_THREADS=1 (read at the backend's creation) keeps OpenBLAS's threads instead,
 * for comparison. */
typedef struct {
    CBLAS_TRANSPOSE ta, tb;
    int M, N, K, lda, ldb, ldc, by_rows;
    float alpha, beta;
    const float *A, *B;
    float *C;
    long sa, sb, sc; /* gemm_batched's strides */
} gemm_job;

static void gemm_block(void *arg, size_t lo, size_t hi) {
    const gemm_job *g = arg;
    int n = (int)(hi - lo);
    if (g->by_rows) /* rows [lo, hi) of C: rows of op(A) */
        cblas_sgemm(CblasRowMajor, g->ta, g->tb, n, g->N, g->K, g->alpha,
                    g->A + (g->ta == CblasTrans ? lo : lo * (size_t)g->lda), g->lda, g->B, g->ldb,
                    g->beta, g->C + lo * (size_t)g->ldc, g->ldc);
    else /* columns [lo, hi) of C: columns of op(B) */
        cblas_sgemm(CblasRowMajor, g->ta, g->tb, g->M, n, g->K, g->alpha, g->A, g->lda,
                    g->B + (g->tb == CblasTrans ? lo * (size_t)g->ldb : lo), g->ldb, g->beta,
                    g->C + lo, g->ldc);
}

/* K cut in parts instead (C tall but narrow, K longer than C is tall: a SAN block's
 * `in W_down^T`, 277 x 64 x 768): cutting C's rows would make every thread pack all of op(B)
 * (here 768 x 64), cutting K makes each pack its part of both operands; part 0 goes into C
 * with beta, part p > 0 into its own M x N of scratch, added into C after */
typedef struct {
    const gemm_job *g;
    int per;        /* K's part: whole 16-wide pieces, the last part what is left */
    float *scratch; /* (parts - 1) M x N */
} ksplit_job;

static void gemm_kpart(void *arg, size_t lo, size_t hi) {
    const ksplit_job *j = arg;
    const gemm_job *g = j->g;
    for (size_t p = lo; p < hi; p++) {
        int k0 = (int)p * j->per, k1 = k0 + j->per < g->K ? k0 + j->per : g->K;
        const float *A = g->A + (g->ta == CblasTrans ? (size_t)k0 * g->lda : (size_t)k0);
        const float *B = g->B + (g->tb == CblasTrans ? (size_t)k0 : (size_t)k0 * g->ldb);
        float *C = p ? j->scratch + (p - 1) * (size_t)g->M * g->N : g->C;
        cblas_sgemm(CblasRowMajor, g->ta, g->tb, g->M, g->N, k1 - k0, g->alpha, A, g->lda, B,
                    g->ldb, p ? 0.0f : g->beta, C, p ? g->N : g->ldc);
    }
}

static CPU_VEC void add_into(float *restrict C, int ldc, const float *restrict T, int M, int N) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++)
            C[(size_t)i * ldc + j] += T[(size_t)i * N + j];
}

/* 1 when the K cut ran (0: no room for its scratch) */
static int gemm_ksplit(iisan_backend *be, const gemm_job *g, int T) {
    const int per = (g->K / T + 15) / 16 * 16, parts = (g->K + per - 1) / per; /* none empty */
    ksplit_job j = {g, per, malloc((size_t)(parts - 1) * g->M * g->N * sizeof(float))};
    if (!j.scratch) return 0;
    cpu_par(be, (size_t)parts, 1, gemm_kpart, &j);
    for (int p = 1; p < parts; p++) /* in part order: the same sum for any thread's timing */
        add_into(g->C, g->ldc, j.scratch + (size_t)(p - 1) * g->M * g->N, g->M, g->N);
    free(j.scratch);
    return 1;
}

/* gemm_batched's products [lo, hi), each whole */
static void gemm_products(void *arg, size_t lo, size_t hi) {
    const gemm_job *g = arg;
    for (size_t i = lo; i < hi; i++)
        cblas_sgemm(CblasRowMajor, g->ta, g->tb, g->M, g->N, g->K, g->alpha, g->A + i * g->sa,
                    g->lda, g->B + i * g->sb, g->ldb, g->beta, g->C + i * g->sc, g->ldc);
}

/* below this many multiply-adds a GEMM (or a batch of them) is not worth a hand-off */
#define GEMM_SPLIT_MIN (1L << 20)

static int split_threads(iisan_backend *be, long madds) {
    const cpu_ctx *cx = be->ctx;
    return cx->split_gemm && madds >= GEMM_SPLIT_MIN ? iisan_backend_cpu_threads(be) : 1;
}

/* 1 when nothing is left to multiply: an empty C, the fault hook (the op leaves NaN), or an
 * empty product (C = beta C; BLAS may reject lda = 0 there) */
static int gemm_trivial(iisan_backend *be, int M, int N, int K, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return 1;
    if (cpu_fault(be)) {
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++)
                C[(size_t)i * ldc + j] = NAN;
        return 1;
    }
    if (K <= 0) {
        scale_rows(C, ldc, M, N, beta);
        return 1;
    }
    return 0;
}

void cpu_gemm(iisan_backend *be, int ta, int tb, int M, int N, int K, float alpha, const float *A,
              int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    if (gemm_trivial(be, M, N, K, beta, C, ldc)) return;
    gemm_job g = {ta ? CblasTrans : CblasNoTrans,
                  tb ? CblasTrans : CblasNoTrans,
                  M,
                  N,
                  K,
                  lda,
                  ldb,
                  ldc,
                  M >= N,
                  alpha,
                  beta,
                  A,
                  B,
                  C,
                  0,
                  0,
                  0};
    int T = split_threads(be, (long)M * N * K);
    if (T < 2) {
        cblas_sgemm(CblasRowMajor, g.ta, g.tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    /* C narrow (at most 128 columns) and K longer than C is tall: cut K */
    if (g.by_rows && N <= 128 && K > M && K >= 32 * T && gemm_ksplit(be, &g, T)) return;
    size_t n = (size_t)(g.by_rows ? M : N), per = (n + (size_t)T - 1) / (size_t)T;
    per = (per + 15) / 16 * 16; /* whole 16-wide blocks for the kernel */
    cpu_par(be, n, per, gemm_block, &g);
}

void cpu_gemm_batched(iisan_backend *be, int ta, int tb, int M, int N, int K, float alpha,
                      const float *A, int lda, long sa, const float *B, int ldb, long sb,
                      float beta, float *C, int ldc, long sc, int batch) {
    if (batch <= 0 || M <= 0 || N <= 0) return;
    if (K <= 0 || cpu_fault(be)) { /* each product trivial, as cpu_gemm would make it */
        for (int i = 0; i < batch; i++)
            cpu_gemm(be, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C + i * sc, ldc);
        return;
    }
    gemm_job g = {ta ? CblasTrans : CblasNoTrans,
                  tb ? CblasTrans : CblasNoTrans,
                  M,
                  N,
                  K,
                  lda,
                  ldb,
                  ldc,
                  1,
                  alpha,
                  beta,
                  A,
                  B,
                  C,
                  sa,
                  sb,
                  sc};
    if (split_threads(be, (long)M * N * K * batch) < 2)
        gemm_products(&g, 0, (size_t)batch);
    else
        cpu_par(be, (size_t)batch, 1, gemm_products, &g); /* whole products per thread */
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

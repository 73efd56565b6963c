/* bench_gemm: the training step's GEMMs at the shapes core/tower.c calls them with, one
 * batch's worth (R distinct items, default 277, Scientific's mean; D = 768, r = 64, d = 64;
 * 21 SAN blocks and 3 heads), timed one shape at a time through the CPU backend in fp32 and,
 * where the CPU has AVX512-BF16, in bf16 (gemm_mixed). Each shape: the best of 7 rounds of
 * enough calls to last about 20 ms. Prints GFLOP/s per shape and the batch's GEMM time (each
 * shape's time times its calls per batch), which is what the epoch's GEMM time is made of.
 *
 *   build/bench_gemm [R] [threads]
 *
 * A developer's tool for the GEMM work of issue 15 (docs/benchmarks.md). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"
#include "kernels/blas_info.h"
#include "kernels/clock.h"
#include "tests/bench_time.h"

typedef struct {
    const char *what;
    int ta, tb, M, N, K;
    float beta;
    int per_batch; /* calls per batch */
} shape;

typedef struct {
    iisan_backend *be;
    const shape *s;
    int mixed;
    float *A, *B, *C;
} shape_call;

static void call_shape(void *ctx, int i) {
    const shape_call *c = ctx;
    const shape *s = c->s;
    const int lda = s->ta ? s->M : s->K, ldb = s->tb ? s->K : s->N, ldc = s->N;
    iisan_backend *be = c->be;
    (void)i;
    if (c->mixed)
        be->gemm_mixed(be, s->ta, s->tb, s->M, s->N, s->K, 1, c->A, lda, c->B, ldb, s->beta, c->C,
                       ldc);
    else
        be->gemm(be, s->ta, s->tb, s->M, s->N, s->K, 1, c->A, lda, c->B, ldb, s->beta, c->C, ldc);
}

static double time_shape(iisan_backend *be, const shape *s, int mixed, float *A, float *B,
                         float *C) {
    shape_call c = {be, s, mixed, A, B, C};
    return bench_best(call_shape, &c, 1);
}

int main(int argc, char **argv) {
    blas_guard(argv);
    const int R = argc > 1 ? atoi(argv[1]) : 277, threads = argc > 2 ? atoi(argv[2]) : 0;
    const int D = 768, r = 64, d = 64, blocks = 21, heads = 3;
    if (R < 1 || R > 100000) {
        fprintf(stderr, "usage: bench_gemm [R] [threads]\n");
        return 2;
    }
    iisan_backend *be = iisan_backend_cpu(threads);
    blas_info bi;
    char line[640];
    blas_info_probe(&bi, 0.15);
    blas_info_line(&bi, line, sizeof line);
    fprintf(stderr, "%s\n", line);
    if (blas_refuse_generic(&bi, "bench-gemm")) return 3;
    const shape shapes[] = {
        {"SAN down, forward: in W_down^T", 0, 1, R, r, D, 0, blocks},
        {"SAN up, forward: act W_up^T", 0, 1, R, D, r, 1, blocks},
        {"SAN dW_up += dh^T act", 1, 0, D, r, R, 1, blocks},
        {"SAN dact = dh W_up", 0, 0, R, r, D, 0, blocks},
        {"SAN dW_down += dpre^T in", 1, 0, r, D, R, 1, blocks},
        {"SAN d in += dpre W_down", 0, 0, R, D, r, 1, blocks},
        {"head, forward: z = h M^T", 0, 1, R, d, D, 0, heads},
        {"head dM += dz^T h", 1, 0, d, D, R, 1, heads},
        {"head dh = dz M", 0, 0, R, D, d, 0, heads},
        {"head M = P_w F_w", 0, 0, d, D, D, 0, heads},
        {"head dP_w += dM F_w^T", 0, 1, d, D, D, 1, heads},
        {"head dF_w += P_w^T dM", 1, 0, D, D, d, 1, heads},
    };
    const int ns = (int)(sizeof shapes / sizeof shapes[0]);
    size_t most = (size_t)(R > D ? R : D) * D;
    float *A = be->alloc(be, most * 4), *B = be->alloc(be, most * 4), *C = be->alloc(be, most * 4);
    if (!A || !B || !C) {
        fprintf(stderr, "bench-gemm: out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < most; i++) {
        A[i] = (float)((i * 7) % 13) * 0.01f - 0.06f;
        B[i] = (float)((i * 5) % 11) * 0.01f - 0.05f;
        C[i] = 0;
    }
    char err[256];
    int bf16 = !be->set_precision(be, IISAN_PREC_BF16, err, sizeof err);
    be->set_precision(be, IISAN_PREC_FP32, err, sizeof err);
    printf("bench-gemm: R = %d, D = %d, r = %d, d = %d, %d threads; GFLOP/s\n", R, D, r, d,
           iisan_backend_cpu_threads(be));
    printf("  %-34s %5s %5s %5s %2s %2s %9s %9s\n", "shape", "M", "N", "K", "tA", "tB", "fp32",
           bf16 ? "bf16" : "(no bf16)");
    double batch[2] = {0, 0};
    for (int i = 0; i < ns; i++) {
        const shape *s = &shapes[i];
        double flop = 2.0 * s->M * s->N * s->K, t[2] = {0, 0};
        for (int p = 0; p < 1 + bf16; p++) {
            be->set_precision(be, p ? IISAN_PREC_BF16 : IISAN_PREC_FP32, err, sizeof err);
            t[p] = time_shape(be, s, 1, A, B, C);
            batch[p] += t[p] * s->per_batch;
        }
        printf("  %-34s %5d %5d %5d %2d %2d %9.1f", s->what, s->M, s->N, s->K, s->ta, s->tb,
               flop / t[0] / 1e9);
        if (bf16) printf(" %9.1f", flop / t[1] / 1e9);
        printf("\n");
    }
    printf("  one batch's SAN and head GEMMs: fp32 %.2f ms", batch[0] * 1e3);
    if (bf16) printf(", bf16 %.2f ms (%.2fx)", batch[1] * 1e3, batch[0] / batch[1]);
    printf("\n{\"bench\":\"gemm\",\"R\":%d,\"threads\":%d,\"batch_ms_fp32\":%.3f,"
           "\"batch_ms_bf16\":%.3f}\n",
           R, iisan_backend_cpu_threads(be), batch[0] * 1e3, batch[1] * 1e3);
    be->free(be, A), be->free(be, B), be->free(be, C);
    be->destroy(be);
    return 0;
}

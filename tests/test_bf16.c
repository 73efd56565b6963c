/* The bf16 GEMM (kernels/cpu/cpu_bf16.c, gemm_mixed in IISAN_PREC_BF16) against fp32, and
 * the setting's refusal on a CPU without AVX512-BF16 (the IISAN_CPU_NO_BF16 hook). On such a
 * CPU the kernel checks are skipped, said on stderr, and the refusal is checked alone.
 *
 * Tolerances. bf16 keeps 8 significant bits: rounding to nearest, |bf16(x) - x| <= u |x| with
 * u = 2^-8. A product of two rounded inputs is exact in fp32 (8 + 8 bits) and off the exact
 * a b by at most (2u + u^2) |a b|; summing K of them in fp32 (unit roundoff e = 2^-24) adds at
 * most (K + 2) e times the sum of their magnitudes (the K - 1 additions, alpha's product and
 * the add into C). So, elementwise,
 *   |C - C_exact| <= ((2u + u^2)(1 + (K + 2) e) + (K + 2) e) |alpha| (|A| |B|)_ij
 *                    + 2 e |beta C0_ij|,
 * checked against a double reference. Inputs that are small integers are exact in bf16 and
 * their sums exact in fp32: there the result must equal the reference exactly, which checks
 * every index of the packing and the tiles. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/model.h"
#include "kernels/backend.h"
#include "kernels/half.h"
#include "kernels/rng.h"
#include "tests/model_fd.h"
#include "tests/test.h"

static iisan_backend *be;

static float *falloc(size_t n) { return be->alloc(be, (n ? n : 1) * sizeof(float)); }

/* C = alpha op(A) op(B) + beta C0 in double, and |alpha| |op(A)| |op(B)| into mag */
static void ref_gemm(int ta, int tb, int M, int N, int K, double alpha, const float *A, int lda,
                     const float *B, int ldb, double beta, const float *C0, int ldc, double *C,
                     double *mag) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0.0, m = 0.0;
            for (int k = 0; k < K; k++) {
                double a = ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                double b = tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                s += a * b;
                m += fabs(a * b);
            }
            double c0 = C0[(size_t)i * ldc + j];
            C[(size_t)i * ldc + j] = alpha * s + (beta != 0.0 ? beta * c0 : 0.0);
            mag[(size_t)i * ldc + j] = fabs(alpha) * m;
        }
}

typedef struct {
    int ta, tb, M, N, K, pad;
    float alpha, beta;
} gcase;

typedef struct {
    int bad;           /* elements past the bound (or, for integers, not exact) */
    double worst;      /* largest |err| / bound */
    double max_rel;    /* largest |err| / (|alpha| |A||B|) */
    size_t differ_f32; /* elements where gemm_mixed's result differs from gemm's */
} gstats;

/* one case: integers in [-4, 4] (exact) or uniform floats in [-1, 1); C starts as NaN when
 * beta == 0 (must not be read), else random; padding columns of C must stay untouched */
static gstats run_case(const gcase *g, int ints, uint64_t seed) {
    int lda = (g->ta ? g->M : g->K) + g->pad, ldb = (g->tb ? g->K : g->N) + g->pad + 1,
        ldc = g->N + g->pad + 2;
    size_t na = (size_t)(g->ta ? g->K : g->M) * lda, nb = (size_t)(g->tb ? g->N : g->K) * ldb,
           nc = (size_t)g->M * ldc;
    float *A = falloc(na), *B = falloc(nb), *C = falloc(nc), *C0 = falloc(nc), *F = falloc(nc);
    double *want = calloc(nc, sizeof *want), *mag = calloc(nc, sizeof *mag);
    for (size_t i = 0; i < na; i++)
        A[i] = ints ? (float)(iisan_rng_u64(seed, i) % 9) - 4 : 2 * iisan_rng_uniform(seed, i) - 1;
    for (size_t i = 0; i < nb; i++)
        B[i] = ints ? (float)(iisan_rng_u64(seed + 1, i) % 9) - 4
                    : 2 * iisan_rng_uniform(seed + 1, i) - 1;
    for (size_t i = 0; i < nc; i++)
        C0[i] = g->beta == 0.0f && i % (size_t)ldc < (size_t)g->N
                    ? NAN
                    : (ints ? (float)(iisan_rng_u64(seed + 2, i) % 9) - 4
                            : 2 * iisan_rng_uniform(seed + 2, i) - 1);
    memcpy(C, C0, nc * sizeof *C);
    memcpy(F, C0, nc * sizeof *F);
    ref_gemm(g->ta, g->tb, g->M, g->N, g->K, g->alpha, A, lda, B, ldb, g->beta, C0, ldc, want, mag);
    be->gemm_mixed(be, g->ta, g->tb, g->M, g->N, g->K, g->alpha, A, lda, B, ldb, g->beta, C, ldc);
    be->gemm(be, g->ta, g->tb, g->M, g->N, g->K, g->alpha, A, lda, B, ldb, g->beta, F, ldc);
    const double u = 1.0 / 256, e = 1.0 / 16777216, ke = (g->K + 2) * e;
    gstats st = {0};
    for (int i = 0; i < g->M; i++)
        for (int j = 0; j < ldc; j++) {
            size_t x = (size_t)i * ldc + j;
            if (j >= g->N) { /* padding */
                st.bad += memcmp(&C[x], &C0[x], sizeof(float)) != 0;
                continue;
            }
            double err = fabs(C[x] - want[x]);
            double bound = ints ? 0.0
                                : ((2 * u + u * u) * (1 + ke) + ke) * mag[x] +
                                      (g->beta != 0.0f ? 2 * e * fabs(g->beta * C0[x]) : 0);
            if (!(err <= bound)) st.bad++; /* NaN too */
            if (bound > 0 && err / bound > st.worst) st.worst = err / bound;
            if (mag[x] > 0 && err / mag[x] > st.max_rel) st.max_rel = err / mag[x];
            st.differ_f32 += C[x] != F[x];
        }
    be->free(be, A), be->free(be, B), be->free(be, C), be->free(be, C0), be->free(be, F);
    free(want), free(mag);
    return st;
}

static const gcase cases[] = {
    /* the SAN block's shapes as core/tower.c calls them (R = 640, D = 768, r = 64) */
    {0, 1, 640, 64, 768, 0, 1, 0}, /* down: in . W_down^T */
    {0, 1, 640, 768, 64, 0, 1, 1}, /* up: h += act . W_up^T */
    {1, 0, 768, 64, 640, 0, 1, 1}, /* dW_up += dh^T . act */
    {0, 0, 640, 64, 768, 0, 1, 0}, /* d act = dh . W_up */
    {1, 0, 64, 768, 640, 0, 1, 1}, /* dW_down += dpre^T . in */
    {0, 0, 640, 768, 64, 0, 1, 1}, /* d in += dpre . W_down */
    {0, 0, 64, 384, 768, 0, 1, 0}, /* a head's M = P_w F_w */
    {0, 1, 64, 768, 768, 0, 1, 1}, /* a head's dP_w += dM F_w^T */
    /* op(B) = B^T: rows of B not a multiple of 16, pairs not of 16, an odd K */
    {0, 1, 5, 40, 70, 2, 1, 0},
    {1, 1, 3, 17, 33, 1, -1, 0.5f},
    /* edges: one element, K odd, M not a multiple of 12, N not of 32, K past one block */
    {0, 0, 1, 1, 1, 0, 1, 0},
    {0, 1, 1, 1, 2, 1, 1, 1},
    {1, 1, 13, 7, 5, 3, 0.5f, 2},
    {1, 0, 25, 33, 3, 2, -1.5f, 0},
    {0, 1, 12, 32, 257, 0, 2, -1},
    {1, 1, 37, 65, 301, 5, 1, 0.5f},
    {0, 0, 11, 31, 255, 1, 0.25f, 0},
    {1, 0, 70, 17, 1, 0, 1, 1},
};
#define NCASES (int)(sizeof cases / sizeof cases[0])

static void describe(char *out, size_t cap, const gcase *g, const char *what) {
    snprintf(out, cap, "%s ta=%d tb=%d %dx%dx%d pad %d alpha %g beta %g", what, g->ta, g->tb, g->M,
             g->N, g->K, g->pad, g->alpha, g->beta);
}

static void test_bf16_exact_ints(void) {
    char what[160];
    for (int c = 0; c < NCASES; c++) {
        gstats st = run_case(&cases[c], 1, 100 + c);
        describe(what, sizeof what, &cases[c], "integers exact");
        CHECKF(st.bad == 0, "%s: %d elements off", what, st.bad);
    }
}

static void test_bf16_bound(void) {
    char what[160];
    double worst_rel = 0;
    size_t differ = 0;
    for (int c = 0; c < NCASES; c++) {
        gstats st = run_case(&cases[c], 0, 200 + c);
        describe(what, sizeof what, &cases[c], "within the bf16 bound");
        CHECKF(st.bad == 0, "%s: %d elements past it (worst %.3g x the bound)", what, st.bad,
               st.worst);
        if (st.max_rel > worst_rel) worst_rel = st.max_rel;
        differ += st.differ_f32;
    }
    fprintf(stderr, "  bf16 vs exact: largest |err| / (|A||B|) %.2e (bound ~ 2^-7 = 7.8e-3)\n",
            worst_rel);
    /* it really ran in bf16: rounding 8 significant bits shows in most results */
    CHECKF(differ > 1000, "gemm_mixed differs from gemm in %zu elements only", differ);
    CHECKF(worst_rel > 1e-4, "largest relative error %.3g: not bf16-like", worst_rel);
}

/* one thread and several give the same bits: each element is summed by one thread, in one
 * order, whether C is cut by rows (tall C) or by columns (short C: fewer than 8 tiles of 12
 * rows, more panels of 32 columns), and whatever thread packed an operand */
static void test_bf16_threads(void) {
    static const struct {
        int ta, tb, M, N, K;
    } shapes[] = {
        {0, 1, 100, 70, 300}, /* by rows */
        {1, 0, 130, 45, 77},  /* by rows, op(A) tile by tile */
        {0, 0, 40, 200, 301}, /* by columns, op(B) in pairs of rows */
        {1, 1, 64, 768, 99},  /* by columns, op(B) = B^T, op(A) tile by tile */
        {0, 1, 1, 96, 64},    /* one row: by columns */
    };
    iisan_backend *one = iisan_backend_cpu(1), *three = iisan_backend_cpu(3);
    char err[256];
    CHECK(one && one->set_precision(one, IISAN_PREC_BF16, err, sizeof err) == 0);
    CHECK(three && three->set_precision(three, IISAN_PREC_BF16, err, sizeof err) == 0);
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        const int ta = shapes[c].ta, tb = shapes[c].tb, M = shapes[c].M, N = shapes[c].N,
                  K = shapes[c].K;
        float *A = falloc((size_t)M * K), *B = falloc((size_t)N * K), *C[3];
        for (int i = 0; i < M * K; i++)
            A[i] = iisan_rng_normal(5, i);
        for (int i = 0; i < N * K; i++)
            B[i] = iisan_rng_normal(6, i);
        iisan_backend *bs[3] = {be, one, three};
        for (int b = 0; b < 3; b++) {
            C[b] = falloc((size_t)M * N);
            for (int i = 0; i < M * N; i++) /* beta = 0.5 reads C */
                C[b][i] = (float)(i % 7) - 3;
            bs[b]->gemm_mixed(bs[b], ta, tb, M, N, K, 1.5f, A, ta ? M : K, B, tb ? K : N, 0.5f,
                              C[b], N);
        }
        CHECKF(!memcmp(C[0], C[1], (size_t)M * N * sizeof(float)) &&
                   !memcmp(C[0], C[2], (size_t)M * N * sizeof(float)),
               "ta=%d tb=%d %dx%dx%d: 1, 2 and 3 threads differ", ta, tb, M, N, K);
        be->free(be, A), be->free(be, B);
        for (int b = 0; b < 3; b++)
            be->free(be, C[b]);
    }
    one->destroy(one);
    three->destroy(three);
}

/* ---------------------------------------------------------------- the model in bf16 */

/* hidden states of catalogue items 1..8, both modalities: [9][2][NS * D] normal draws */
#define NS 5
#define DW 64
static uint16_t *states_mem;
static const uint16_t *states_get(void *ctx, int mod, uint32_t cat) {
    return cat >= 1 && cat <= 8 ? states_mem + ((size_t)cat * 2 + mod) * NS * DW : NULL;
}

/* the whole model's loss and gradient (model_fd.h's three users, dropout on) with the SAN and
 * head GEMMs in bf16 against fp32, from the same parameters: bf16's 8 bits give each GEMM a
 * relative error near 2^-8, a few such products deep; the loss must agree to 1e-2 relatively
 * and every tensor's gradient to 5e-2 in norm (||g16 - g32|| / ||g32||), the whole gradient
 * to 2e-2. FD checks of the gradients themselves are test_model's, in fp32. */
static void test_bf16_model_grads(void) {
    (void)fd_check_tensor; /* the fixture's FD check runs in test_model (fp32) */
    states_mem = malloc((size_t)9 * 2 * NS * DW * sizeof *states_mem);
    for (size_t i = 0; i < (size_t)9 * 2 * NS * DW; i++)
        states_mem[i] = iisan_float_to_half(iisan_rng_normal(31, i));
    iisan_states st = {states_get, NULL, NULL, NULL};
    iisan_config c;
    config_default(&c);
    c.D = DW, c.nstates = NS, c.r = 16, c.d = 16, c.n = 4, c.heads = 2, c.K = 3;
    c.sched[0] = 0, c.sched[1] = 2, c.sched[2] = 4;
    char err[256];
    iisan_model *m = model_create(&c, be, 3, 7, err, sizeof err);
    CHECKF(m != NULL, "%s", err);
    if (!m) return;
    make_logpop();
    randomise(m, 11);
    size_t P = m->pt.total;
    float *g32 = malloc(P * sizeof *g32);
    CHECK(be->set_precision(be, IISAN_PREC_FP32, err, sizeof err) == 0);
    double l32 = loss_at(m, &st, 1);
    memcpy(g32, m->g, P * sizeof *g32);
    CHECK(be->set_precision(be, IISAN_PREC_BF16, err, sizeof err) == 0);
    double l16 = loss_at(m, &st, 1);
    CHECKF(fabs(l16 - l32) <= 1e-2 * fabs(l32), "loss bf16 %.6f fp32 %.6f", l16, l32);
    double dall = 0, nall = 0, worst = 0;
    int differs = 0;
    for (int i = 0; i < m->pt.n; i++) {
        const param_info *p = &m->pt.t[i];
        double dn = 0, n = 0;
        for (size_t j = p->offset; j < p->offset + p->size; j++) {
            dn += ((double)m->g[j] - g32[j]) * ((double)m->g[j] - g32[j]);
            n += (double)g32[j] * g32[j];
            differs |= m->g[j] != g32[j];
        }
        dall += dn, nall += n;
        double rel = n > 0 ? sqrt(dn / n) : sqrt(dn);
        if (rel > worst) worst = rel;
        CHECKF(rel <= 5e-2, "%s: ||g_bf16 - g_fp32|| / ||g_fp32|| = %.3g", p->name, rel);
    }
    fprintf(stderr, "  model gradient bf16 vs fp32: %.2e overall, worst tensor %.2e; loss %.3g\n",
            sqrt(dall / nall), worst, fabs(l16 - l32) / fabs(l32));
    CHECK(sqrt(dall / nall) <= 2e-2);
    CHECK(differs); /* the SAN really ran in bf16 */
    free(g32);
    model_destroy(m);
    free(states_mem);
}

/* fp32 (the default, and after switching back) is gemm, bit for bit */
static void test_fp32_is_gemm(iisan_backend *b) {
    const int M = 33, N = 17, K = 45;
    float *A = falloc((size_t)M * K), *B = falloc((size_t)K * N), *C1 = falloc((size_t)M * N),
          *C2 = falloc((size_t)M * N);
    for (int i = 0; i < M * K; i++)
        A[i] = iisan_rng_normal(8, i);
    for (int i = 0; i < K * N; i++)
        B[i] = iisan_rng_normal(9, i);
    b->gemm_mixed(b, 0, 0, M, N, K, 1, A, K, B, N, 0, C1, N);
    b->gemm(b, 0, 0, M, N, K, 1, A, K, B, N, 0, C2, N);
    CHECK(memcmp(C1, C2, (size_t)M * N * sizeof(float)) == 0);
    be->free(be, A), be->free(be, B), be->free(be, C1), be->free(be, C2);
}

/* the fallback: on a CPU without AVX512-BF16, bf16 is refused with a reason, fp32 goes on */
static void test_refusal(void) {
    setenv("IISAN_CPU_NO_BF16", "1", 1);
    iisan_backend *b = iisan_backend_cpu(1);
    unsetenv("IISAN_CPU_NO_BF16");
    char err[256] = "";
    CHECK(b && !b->caps.bf16);
    CHECK(b->set_precision(b, IISAN_PREC_BF16, err, sizeof err) == -1);
    CHECKF(strstr(err, "AVX512-BF16") != NULL, "message: %s", err);
    CHECK(b->set_precision(b, 7, err, sizeof err) == -1);
    CHECK(b->set_precision(b, IISAN_PREC_FP32, err, sizeof err) == 0);
    test_fp32_is_gemm(b);
    b->destroy(b);
}

int main(int argc, char **argv) {
    TEST_MAIN_BEGIN(argc, argv);
    be = iisan_backend_cpu(2);
    if (!be) {
        printf("0 passed, 1 failed\n");
        return 1;
    }
    test_fp32_is_gemm(be);
    RUN(test_refusal);
    char err[256];
    if (!be->caps.bf16) {
        fprintf(stderr, "skipped: this CPU has no AVX512-BF16, the bf16 kernel cannot run\n");
    } else {
        CHECK(be->set_precision(be, IISAN_PREC_BF16, err, sizeof err) == 0);
        RUN(test_bf16_exact_ints);
        RUN(test_bf16_bound);
        RUN(test_bf16_threads);
        RUN(test_bf16_model_grads);
        CHECK(be->set_precision(be, IISAN_PREC_FP32, err, sizeof err) == 0);
        test_fp32_is_gemm(be);
    }
    be->destroy(be);
    TEST_MAIN_END();
}

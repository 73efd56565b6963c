/* Unit tests of every op of the CPU backend (kernels/cpu/) against naive
 * double-precision loops at small random sizes, central finite-difference
 * checks of every backward pass, and the shared headers half.h, rng.h, act.h.
 * Run: build/test/test_ops [name-filter]. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/act.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu.h"
#include "kernels/half.h"
#include "kernels/rng.h"
#include "tests/test.h"

static iisan_backend *be;

/* ---------------------------------------------------------------- helpers */

static float *falloc(size_t n) { return be->alloc(be, (n ? n : 1) * sizeof(float)); }
static double *dalloc(size_t n) { return calloc(n ? n : 1, sizeof(double)); }
static void bfree(void *p) { be->free(be, p); }

/* x[i] uniform in [lo, hi) from the counter-based stream `seed` */
static void fill(float *x, size_t n, uint64_t seed, float lo, float hi) {
    for (size_t i = 0; i < n; i++)
        x[i] = lo + (hi - lo) * iisan_rng_uniform(seed, i);
}

/* magnitudes in [lo, hi) with random signs: keeps values away from 0 (ReLU kink) */
static void fill_away(float *x, size_t n, uint64_t seed, float lo, float hi) {
    fill(x, n, seed, lo, hi);
    for (size_t i = 0; i < n; i++)
        if (iisan_rng_u64(seed + 1, i) & 1) x[i] = -x[i];
}

static double dot_d(const float *a, const float *b, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += (double)a[i] * b[i];
    return s;
}

/* one CHECK for the whole array: every |got - want| <= atol + rtol |want| */
static void check_array(const char *what, const float *got, const double *want, size_t n,
                        double atol, double rtol) {
    size_t bad = 0, worst = 0;
    double worst_excess = 0.0;
    for (size_t i = 0; i < n; i++) {
        double excess = fabs(got[i] - want[i]) - (atol + rtol * fabs(want[i]));
        if (!(excess <= 0.0)) { /* also catches NaN */
            if (!bad || excess > worst_excess) worst = i, worst_excess = excess;
            bad++;
        }
    }
    CHECKF(bad == 0, "%s: %zu of %zu off, e.g. [%zu] got %.9g want %.9g", what, bad, n, worst,
           bad ? got[worst] : 0.0, bad ? want[worst] : 0.0);
}

/* exact float equality of two arrays */
static void check_same(const char *what, const float *got, const float *want, size_t n) {
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n; i++)
        if (memcmp(&got[i], &want[i], sizeof(float)) != 0 && !bad++) first = i;
    CHECKF(bad == 0, "%s: %zu of %zu differ, first [%zu] %.9g vs %.9g", what, bad, n, first,
           bad ? got[first] : 0.0, bad ? want[first] : 0.0);
}

/* Central finite differences of the scalar objective f over x[0..n) against the
 * analytic gradient g: |fd - g| <= atol_frac * max|g| + rtol |g|. */
typedef double (*objective)(void *ctx);

static void fd_check(const char *what, objective f, void *ctx, float *x, size_t n, const float *g,
                     float eps, double rtol, double atol_frac) {
    double gmax = 0.0;
    for (size_t i = 0; i < n; i++)
        gmax = fmax(gmax, fabs(g[i]));
    double atol = atol_frac * gmax + 1e-6;
    size_t bad = 0, worst = 0;
    double worst_excess = 0.0, worst_fd = 0.0;
    for (size_t i = 0; i < n; i++) {
        float x0 = x[i], xp = x0 + eps, xm = x0 - eps;
        x[i] = xp;
        double lp = f(ctx);
        x[i] = xm;
        double lm = f(ctx);
        x[i] = x0;
        double fd = (lp - lm) / ((double)xp - (double)xm);
        double excess = fabs(fd - g[i]) - (atol + rtol * fabs(g[i]));
        if (!(excess <= 0.0)) {
            if (!bad || excess > worst_excess) worst = i, worst_excess = excess, worst_fd = fd;
            bad++;
        }
    }
    f(ctx); /* leave the forward state as it was */
    CHECKF(gmax > 0.0, "%s: the analytic gradient is all zero", what);
    CHECKF(bad == 0, "%s: %zu of %zu gradients off, e.g. [%zu] fd %.7g analytic %.7g (max|g| %.3g)",
           what, bad, n, worst, worst_fd, bad ? g[worst] : 0.0, gmax);
}

/* ------------------------------------------------------------------ memory */

static void test_memory(void) {
    unsigned char *p = be->alloc(be, 100);
    CHECK(p != NULL && ((uintptr_t)p & 63) == 0);
    int zeros = 1;
    for (int i = 0; i < 100; i++)
        zeros &= p[i] == 0;
    CHECK(zeros);
    unsigned char *q = be->alloc(be, 0);
    CHECK(q != NULL && ((uintptr_t)q & 63) == 0);

    unsigned char host[100], back[100];
    for (int i = 0; i < 100; i++)
        host[i] = (unsigned char)(i * 7 + 1);
    be->upload(be, p, host, 100);
    unsigned char *r = be->alloc(be, 100);
    be->copy(be, r, p, 100);
    be->copy(be, r, r, 100); /* onto itself: a no-op, not an overlap error */
    be->download(be, back, r, 100);
    CHECK(memcmp(back, host, 100) == 0);
    be->zero(be, r, 50);
    be->download(be, back, r, 100);
    CHECK(back[0] == 0 && back[49] == 0 && back[50] == host[50]);
    be->upload(be, r, NULL, 0); /* empty transfers are fine */
    be->sync(be);
    bfree(p);
    bfree(q);
    bfree(r);
    CHECK(strcmp(be->name, "cpu") == 0);
    CHECK(be->caps.host_memory && be->caps.parallel_ops && be->status(be, NULL, 0) == 0);
}

/* -------------------------------------------------------------------- half */

static int half_is_nan(uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu); }

static void test_half_known(void) {
    static const struct {
        uint32_t fbits;
        uint16_t h;
    } cases[] = {
        {0x3f800000u, 0x3c00u}, /* 1 */
        {0xc0000000u, 0xc000u}, /* -2 */
        {0x00000000u, 0x0000u}, /* +0 */
        {0x80000000u, 0x8000u}, /* -0 */
        {0x477fe000u, 0x7bffu}, /* 65504, the largest half */
        {0x477fefffu, 0x7bffu}, /* just below 65520 */
        {0x477ff000u, 0x7c00u}, /* 65520: the tie goes to even = infinity */
        {0x7f800000u, 0x7c00u}, /* +inf */
        {0xff800000u, 0xfc00u}, /* -inf */
        {0x3dcccccdu, 0x2e66u}, /* 0.1f */
        {0x3eaaaa9fu, 0x3555u}, /* 0.333333f */
        {0x38800000u, 0x0400u}, /* 2^-14, the smallest normal */
        {0x387fc000u, 0x03ffu}, /* 1023 * 2^-24, the largest subnormal */
        {0x33800000u, 0x0001u}, /* 2^-24, the smallest subnormal */
        {0x33000000u, 0x0000u}, /* 2^-25: tie between 0 and 2^-24 -> even (0) */
        {0x33000001u, 0x0001u}, /* just above that tie */
        {0x33c00000u, 0x0002u}, /* 3 * 2^-25: tie between 1 and 2 (x 2^-24) -> 2 */
        {0x34200000u, 0x0002u}, /* 5 * 2^-25: tie between 2 and 3 (x 2^-24) -> 2 */
        {0x3f801000u, 0x3c00u}, /* 1 + 2^-11: tie -> even (1) */
        {0x3f803000u, 0x3c02u}, /* 1 + 3 * 2^-11: tie -> even (1 + 2^-9) */
        {0x3f801001u, 0x3c01u}, /* just above the first tie */
        {0x3866afcdu, 0x039bu}, /* 5.5e-5f (subnormal) */
        {0xaedbe6ffu, 0x8000u}, /* -1e-10 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint16_t h = iisan_float_to_half(iisan_f32_from_bits(cases[i].fbits));
        CHECKF(h == cases[i].h, "float bits 0x%08x -> 0x%04x, want 0x%04x", cases[i].fbits, h,
               cases[i].h);
    }
    CHECK(half_is_nan(iisan_float_to_half(NAN)));
    CHECK(half_is_nan(iisan_float_to_half(iisan_f32_from_bits(0x7f800001u)))); /* tiny payload */
    CHECK(iisan_half_to_float(0x3c00u) == 1.0f);
    CHECK(iisan_half_to_float(0x0001u) == ldexpf(1.0f, -24));
    CHECK(iisan_half_to_float(0xfbffu) == -65504.0f);
    CHECK(isinf(iisan_half_to_float(0x7c00u)));
}

static void test_half_roundtrip(void) {
    int bad = 0, nan_bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = iisan_half_to_float((uint16_t)h);
        uint16_t back = iisan_float_to_half(f);
        if (half_is_nan((uint16_t)h))
            nan_bad += !isnan(f) || !half_is_nan(back);
        else
            bad += back != h;
        /* the value itself: (-1)^s 2^(e-15) (1 + m/1024), or m 2^-24 when e == 0 */
        uint32_t e = (h >> 10) & 31, m = h & 1023;
        if (e < 31) {
            double v = e ? ldexp(1.0 + m / 1024.0, (int)e - 15) : ldexp((double)m, -24);
            if (h & 0x8000) v = -v;
            bad += (double)f != v;
        }
    }
    CHECKF(bad == 0, "%d non-NaN patterns do not round-trip exactly", bad);
    CHECKF(nan_bad == 0, "%d NaN patterns lost NaN-ness", nan_bad);
}

/* F16C bulk conversion against the scalar code, at odd lengths and offsets */
static void test_half_bulk(void) {
    enum { N = 65536 };
    uint16_t *h = malloc(N * sizeof *h);
    float *f = malloc((N + 8) * sizeof *f);
    for (uint32_t i = 0; i < N; i++)
        h[i] = (uint16_t)i;
    int bad = 0;
    const size_t offs[] = {0, 3, 5};
    for (int o = 0; o < 3; o++) {
        size_t off = offs[o], n = N - off - o;
        iisan_cpu_half_to_float(f, h + off, n);
        for (size_t i = 0; i < n; i++) {
            float want = iisan_half_to_float(h[off + i]);
            if (half_is_nan(h[off + i]))
                bad += !isnan(f[i]);
            else
                bad += memcmp(&f[i], &want, sizeof want) != 0;
        }
    }
    CHECKF(bad == 0, "bulk half->float: %d mismatches", bad);

    /* float -> half: every half value, each tie between neighbours, and values
     * one ulp either side of the tie */
    bad = 0;
    float *src = malloc((size_t)N * 4 * sizeof *src);
    size_t n = 0;
    for (uint32_t i = 0; i < N; i++) {
        if (half_is_nan((uint16_t)i) || (i & 0x7c00u) == 0x7c00u) continue;
        uint32_t b = iisan_f32_bits(iisan_half_to_float((uint16_t)i));
        src[n++] = iisan_f32_from_bits(b);
        if ((i & 0x7fffu) == 0) continue; /* zero: neighbours are tiny, covered elsewhere */
        /* half an ulp up: a float bit for a normal half, m + 1/2 units of 2^-24 for
         * a subnormal one (exact in float either way) */
        uint32_t tie = (i & 0x7c00u) ? b + 0x1000u
                                     : iisan_f32_bits(ldexpf((float)(i & 0x3ffu) + 0.5f, -24)) |
                                           (b & 0x80000000u);
        src[n++] = iisan_f32_from_bits(tie);
        src[n++] = iisan_f32_from_bits(tie + 1);
        src[n++] = iisan_f32_from_bits(tie - 1);
    }
    src[n++] = NAN;
    src[n++] = INFINITY;
    src[n++] = 70000.0f;
    src[n++] = ldexpf(3.0f, -26); /* subnormal tie region */
    uint16_t *hb = malloc(n * sizeof *hb);
    iisan_cpu_float_to_half(hb, src, n);
    for (size_t i = 0; i < n; i++) {
        uint16_t want = iisan_float_to_half(src[i]);
        bad += half_is_nan(want) ? !half_is_nan(hb[i]) : hb[i] != want;
    }
    CHECKF(bad == 0, "bulk float->half: %d mismatches of %zu", bad, n);
    free(h);
    free(f);
    free(src);
    free(hb);
}

/* --------------------------------------------------------------------- rng */

static void test_rng(void) {
    CHECK(iisan_rng_u64(42, 7) == iisan_rng_u64(42, 7));
    CHECK(iisan_rng_u64(42, 7) != iisan_rng_u64(43, 7));
    CHECK(iisan_rng_u64(42, 7) != iisan_rng_u64(42, 8));
    CHECK(iisan_rng_u64(0, 0) != 0);
    CHECK(iisan_rng_uniform(9, 3) == iisan_rng_uniform(9, 3));
    CHECK(iisan_rng_normal(9, 3) == iisan_rng_normal(9, 3));

    enum { N = 200000 };
    double s = 0.0, lo = 1.0, hi = 0.0, ns = 0.0, nss = 0.0;
    int outside = 0, bitcount = 0;
    for (int i = 0; i < N; i++) {
        float u = iisan_rng_uniform(1234, (uint64_t)i);
        outside += !(u >= 0.0f && u < 1.0f);
        s += u;
        lo = fmin(lo, u);
        hi = fmax(hi, u);
        double z = iisan_rng_normal(99, (uint64_t)i);
        ns += z;
        nss += z * z;
        bitcount += __builtin_popcountll(iisan_rng_u64(5, (uint64_t)i)) - 32;
    }
    CHECK(outside == 0);
    CHECK_CLOSE(s / N, 0.5, 0.005, 0);
    CHECK(lo < 1e-4 && hi > 1 - 1e-4);
    CHECK_CLOSE(ns / N, 0.0, 0.01, 0);
    CHECK_CLOSE(nss / N, 1.0, 0.015, 0);
    CHECK_CLOSE((double)bitcount / N, 0.0, 0.05, 0); /* 32 of 64 bits set on average */
    CHECK(isfinite(iisan_rng_normal(0, 0)));
}

/* ---------------------------------------------------------- linear algebra */

/* C = alpha op(A) op(B) + beta C in double, strides as in backend.h */
static void ref_gemm(int ta, int tb, int M, int N, int K, double alpha, const float *A, int lda,
                     const float *B, int ldb, double beta, const float *C0, int ldc, double *C) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0.0;
            for (int k = 0; k < K; k++) {
                double a = ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                double b = tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                s += a * b;
            }
            C[(size_t)i * ldc + j] = alpha * s + beta * C0[(size_t)i * ldc + j];
        }
}

static void gemm_case(int ta, int tb, int M, int N, int K, int pad, float alpha, float beta,
                      uint64_t seed) {
    int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad + 1, ldc = N + pad + 2;
    size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb, nc = (size_t)M * ldc;
    float *A = falloc(na), *B = falloc(nb), *C = falloc(nc), *C0 = falloc(nc);
    double *want = dalloc(nc);
    fill(A, na, seed, -1, 1);
    fill(B, nb, seed + 1, -1, 1);
    fill(C0, nc, seed + 2, -1, 1);
    memcpy(C, C0, nc * sizeof *C);
    ref_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C0, ldc, want);
    for (int i = 0; i < M; i++) /* the padding columns must stay as they were */
        for (int j = N; j < ldc; j++)
            want[(size_t)i * ldc + j] = C0[(size_t)i * ldc + j];
    be->gemm(be, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    char what[64];
    snprintf(what, sizeof what, "gemm ta=%d tb=%d %dx%dx%d", ta, tb, M, N, K);
    check_array(what, C, want, nc, 1e-5, 1e-5);
    bfree(A), bfree(B), bfree(C), bfree(C0), free(want);
}

static void test_gemm(void) {
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            gemm_case(ta, tb, 5, 7, 9, 3, 0.7f, 0.3f, 10 + ta * 2 + tb);
            gemm_case(ta, tb, 17, 33, 70, 1, 1.0f, 0.0f, 20 + ta * 2 + tb);
            gemm_case(ta, tb, 1, 13, 3, 0, -1.5f, 1.0f, 30 + ta * 2 + tb);
        }
    gemm_case(0, 0, 6, 1, 11, 0, 1.0f, 0.0f, 40); /* matrix-vector as core uses it */
    gemm_case(0, 1, 4, 5, 0, 2, 1.0f, 0.5f, 41);  /* K = 0: C = beta C */
}

/* GEMMs large enough to be cut across the pool (cpu_blas.c: over 2^20 multiply-adds), by C's
 * rows (M >= N) and by its columns (a weight gradient's shape), on this backend's threads and
 * on 3 (more pieces than cores, a last piece short of 16) */
static void test_gemm_split(void) {
    iisan_backend *keep = be, *three = iisan_backend_cpu(3);
    CHECK(three != NULL);
    for (int pass = 0; pass < 2 && three; pass++) {
        be = pass ? three : keep;
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                gemm_case(ta, tb, 203, 70, 100, 1, 0.5f, 0.25f, 60 + ta * 2 + tb);
                gemm_case(ta, tb, 40, 301, 100, 2, 1.0f, 0.0f, 70 + ta * 2 + tb);
                /* K cut into parts (C narrow, K longer than C is tall) */
                gemm_case(ta, tb, 203, 64, 777, 1, 0.5f, 0.25f, 80 + ta * 2 + tb);
                gemm_case(ta, tb, 150, 100, 600, 0, 1.0f, 0.0f, 90 + ta * 2 + tb);
            }
    }
    be = keep;
    if (three) three->destroy(three);
}

/* batch products of M x N x K; over 2^20 multiply-adds in all they run on the pool's threads */
static void gemm_batched_case(int M, int N, int K, int batch) {
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            int lda = (ta ? M : K) + 2, ldb = (tb ? K : N) + 1, ldc = N + 3;
            long sa = (long)(ta ? K : M) * lda + 5, sb = (long)(tb ? N : K) * ldb + 3,
                 sc = (long)M * ldc + 7;
            size_t na = (size_t)sa * batch, nb = (size_t)sb * batch, nc = (size_t)sc * batch;
            float *A = falloc(na), *B = falloc(nb), *C = falloc(nc), *C0 = falloc(nc);
            double *want = dalloc(nc);
            fill(A, na, 50, -1, 1);
            fill(B, nb, 51, -1, 1);
            fill(C0, nc, 52, -1, 1);
            memcpy(C, C0, nc * sizeof *C);
            for (size_t i = 0; i < nc; i++)
                want[i] = C0[i];
            for (int b = 0; b < batch; b++)
                ref_gemm(ta, tb, M, N, K, 0.5, A + b * sa, lda, B + b * sb, ldb, 2.0, C0 + b * sc,
                         ldc, want + b * sc);
            /* ref_gemm wrote only the M x N blocks; the gaps keep C0 */
            be->gemm_batched(be, ta, tb, M, N, K, 0.5f, A, lda, sa, B, ldb, sb, 2.0f, C, ldc, sc,
                             batch);
            char what[64];
            snprintf(what, sizeof what, "gemm_batched ta=%d tb=%d %dx%dx%d x%d", ta, tb, M, N, K,
                     batch);
            check_array(what, C, want, nc, 1e-5, 1e-5);
            bfree(A), bfree(B), bfree(C), bfree(C0), free(want);
        }
}

static void test_gemm_batched(void) {
    gemm_batched_case(4, 6, 5, 3);
    gemm_batched_case(30, 33, 32, 37); /* 1.2 M multiply-adds: on the pool */
}

/* the backward identities core relies on: for L = sum(R .* (A B)),
 * dA = R B^T (gemm 0,1) and dB = A^T R (gemm 1,0), checked by finite differences */
typedef struct {
    float *A, *B, *C, *R;
    int M, N, K;
} gemm_ctx;

static double gemm_obj(void *p) {
    gemm_ctx *c = p;
    be->gemm(be, 0, 0, c->M, c->N, c->K, 1, c->A, c->K, c->B, c->N, 0, c->C, c->N);
    return dot_d(c->C, c->R, (size_t)c->M * c->N);
}

static void test_gemm_grad(void) {
    gemm_ctx c = {.M = 5, .N = 6, .K = 7};
    c.A = falloc(35), c.B = falloc(42), c.C = falloc(30), c.R = falloc(30);
    float *dA = falloc(35), *dB = falloc(42);
    fill(c.A, 35, 60, -1, 1);
    fill(c.B, 42, 61, -1, 1);
    fill(c.R, 30, 62, -1, 1);
    be->gemm(be, 0, 1, c.M, c.K, c.N, 1, c.R, c.N, c.B, c.N, 0, dA, c.K);
    be->gemm(be, 1, 0, c.K, c.N, c.M, 1, c.A, c.K, c.R, c.N, 0, dB, c.N);
    fd_check("gemm dA", gemm_obj, &c, c.A, 35, dA, 1e-2f, 1e-2, 5e-3);
    fd_check("gemm dB", gemm_obj, &c, c.B, 42, dB, 1e-2f, 1e-2, 5e-3);
    bfree(c.A), bfree(c.B), bfree(c.C), bfree(c.R), bfree(dA), bfree(dB);
}

static void test_vector_ops(void) {
    enum { N = 37 };
    float *x = falloc(N), *y = falloc(N);
    double want[N];
    fill(x, N, 70, -1, 1);
    fill(y, N, 71, -1, 1);
    for (int i = 0; i < N; i++)
        want[i] = 0.5 * x[i] - 2.0 * y[i];
    be->axpby(be, N, 0.5f, x, -2.0f, y);
    check_array("axpby", y, want, N, 1e-6, 1e-6);
    for (int i = 0; i < N; i++)
        want[i] = 3.0 * x[i];
    be->axpby(be, N, 1.0f, x, 2.0f, x); /* x == y */
    check_array("axpby in place", x, want, N, 1e-6, 1e-6);

    /* add_bias / bias_grad with a leading dimension wider than the width */
    const int rows = 5, cols = 11, ld = 14;
    float *X = falloc((size_t)rows * ld), *bias = falloc(cols), *db = falloc(cols);
    double *wx = dalloc((size_t)rows * ld), wdb[11];
    fill(X, (size_t)rows * ld, 72, -1, 1);
    fill(bias, cols, 73, -1, 1);
    fill(db, cols, 74, -1, 1);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < ld; c++)
            wx[r * ld + c] = X[r * ld + c] + (c < cols ? bias[c] : 0.0f);
    for (int c = 0; c < cols; c++) {
        wdb[c] = db[c];
        for (int r = 0; r < rows; r++)
            wdb[c] += X[r * ld + c];
    }
    be->bias_grad(be, db, X, ld, rows, cols);
    check_array("bias_grad (accumulates)", db, wdb, cols, 1e-6, 1e-6);
    { /* tall and wide enough for the pool: blocks of 64 columns, the last one short */
        const int wr = 300, wc = 160, wld = 166;
        float *WX = falloc((size_t)wr * wld), *wdbf = falloc(wc);
        double *want = dalloc(wc);
        fill(WX, (size_t)wr * wld, 78, -1, 1);
        fill(wdbf, wc, 79, -1, 1);
        for (int c = 0; c < wc; c++) {
            want[c] = wdbf[c];
            for (int r = 0; r < wr; r++)
                want[c] += WX[r * wld + c];
        }
        be->bias_grad(be, wdbf, WX, wld, wr, wc);
        check_array("bias_grad 300 x 160", wdbf, want, wc, 1e-4, 1e-5);
        bfree(WX), bfree(wdbf);
        free(want);
    }
    be->add_bias(be, X, ld, bias, rows, cols);
    check_array("add_bias", X, wx, (size_t)rows * ld, 1e-6, 1e-6);

    /* ger: A += alpha x y^T */
    const int M = 5, Ng = 9;
    float *A = falloc((size_t)M * Ng), *gx = falloc(M), *gy = falloc(Ng);
    double wa[45];
    fill(A, 45, 75, -1, 1);
    fill(gx, M, 76, -1, 1);
    fill(gy, Ng, 77, -1, 1);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < Ng; j++)
            wa[i * Ng + j] = A[i * Ng + j] + 0.25 * gx[i] * gy[j];
    be->ger(be, M, Ng, 0.25f, gx, gy, A);
    check_array("ger", A, wa, 45, 1e-6, 1e-6);
    bfree(x), bfree(y), bfree(X), bfree(bias), bfree(db), free(wx), bfree(A), bfree(gx), bfree(gy);
}

/* ------------------------------------------------------------- elementwise */

typedef struct {
    int act;
    float *x, *y, *R;
    size_t n;
} act_ctx;

static double act_obj(void *p) {
    act_ctx *c = p;
    be->act_fwd(be, c->act, c->y, c->x, c->n);
    return dot_d(c->y, c->R, c->n);
}

static void test_act(void) {
    enum { N = 45 };
    float *x = falloc(N), *y = falloc(N), *R = falloc(N), *dx = falloc(N), *tmp = falloc(N);
    double want[N];
    for (int act = 0; act < 2; act++) {
        const char *name = act == IISAN_ACT_GELU ? "gelu" : "relu";
        if (act == IISAN_ACT_GELU)
            fill(x, N, 80, -3, 3);
        else
            fill_away(x, N, 80, 0.1f, 2);
        fill(R, N, 81, -1, 1);
        for (int i = 0; i < N; i++) {
            double v = x[i];
            want[i] = act == IISAN_ACT_GELU ? 0.5 * v * (1 + erf(v / sqrt(2.0))) : fmax(v, 0);
        }
        be->act_fwd(be, act, y, x, N);
        check_array(name, y, want, N, 1e-6, 1e-6);
        memcpy(tmp, x, N * sizeof *x);
        be->act_fwd(be, act, tmp, tmp, N); /* y == x */
        check_same("act_fwd in place", tmp, y, N);

        be->act_bwd(be, act, dx, R, x, N);
        act_ctx c = {act, x, y, R, N};
        char what[32];
        snprintf(what, sizeof what, "act_bwd %s", name);
        fd_check(what, act_obj, &c, x, N, dx, 1e-2f, 1e-2, 5e-3);
        memcpy(tmp, R, N * sizeof *R);
        be->act_bwd(be, act, tmp, tmp, x, N); /* dx == dy */
        check_same("act_bwd in place", tmp, dx, N);
    }
    /* relu at and around zero: the derivative at 0 is 0, as in PyTorch */
    float z[3] = {0.0f, -0.0f, 1e-30f}, ones[3] = {1, 1, 1}, dz[3];
    be->act_bwd(be, IISAN_ACT_RELU, dz, ones, z, 3);
    CHECK(dz[0] == 0 && dz[1] == 0 && dz[2] == 1);
    CHECK_CLOSE(iisan_sigmoid(0.0f), 0.5, 1e-7, 0);
    CHECK_CLOSE(iisan_sigmoid(2.0f), 1.0 / (1.0 + exp(-2.0)), 1e-7, 0);
    CHECK(iisan_sigmoid(-200.0f) == 0.0f && iisan_sigmoid(200.0f) == 1.0f);
    bfree(x), bfree(y), bfree(R), bfree(dx), bfree(tmp);
}

typedef struct {
    float *x, *y, *R;
    size_t n;
    float p;
    uint64_t seed;
} drop_ctx;

static double drop_obj(void *q) {
    drop_ctx *c = q;
    be->dropout_fwd(be, c->y, c->x, c->n, c->p, c->seed);
    return dot_d(c->y, c->R, c->n);
}

static void test_dropout(void) {
    enum { N = 100000 };
    float *x = falloc(N), *y = falloc(N), *y2 = falloc(N), *dx = falloc(N);
    fill(x, N, 90, 0.5f, 1.5f); /* never zero, so a zero output means dropped */
    be->dropout_fwd(be, y, x, N, 0.0f, 7);
    check_same("dropout p=0 copies", y, x, N);

    const float p = 0.1f;
    be->dropout_fwd(be, y, x, N, p, 7);
    size_t dropped = 0, bad_scale = 0, bad_mask = 0;
    for (size_t i = 0; i < N; i++) {
        int keep = iisan_rng_uniform(7, i) >= p;
        if (y[i] == 0.0f)
            dropped++;
        else if (fabs(y[i] - x[i] / 0.9) > 1e-6 * fabs(x[i]))
            bad_scale++;
        bad_mask += keep != (y[i] != 0.0f);
    }
    CHECK_CLOSE((double)dropped / N, 0.1, 0.005, 0);
    CHECK(bad_scale == 0);
    CHECK(bad_mask == 0);
    be->dropout_fwd(be, y2, x, N, p, 7);
    check_same("dropout deterministic", y2, y, N);
    be->dropout_fwd(be, y2, x, N, p, 8);
    CHECK(memcmp(y2, y, N * sizeof *y) != 0);
    be->dropout_bwd(be, dx, x, N, p, 7); /* the same linear map */
    check_same("dropout_bwd mask", dx, y, N);
    memcpy(y2, x, N * sizeof *x);
    be->dropout_fwd(be, y2, y2, N, p, 7);
    check_same("dropout in place", y2, y, N);
    memcpy(y2, x, N * sizeof *x);
    be->dropout_bwd(be, y2, y2, N, p, 7);
    check_same("dropout_bwd in place", y2, y, N);

    /* a finite-difference check on a small slice */
    enum { S = 40 };
    float *R = falloc(S), *g = falloc(S);
    fill(R, S, 91, -1, 1);
    be->dropout_bwd(be, g, R, S, 0.3f, 11);
    drop_ctx c = {x, y, R, S, 0.3f, 11};
    fd_check("dropout_bwd", drop_obj, &c, x, S, g, 1e-2f, 1e-2, 5e-3);
    bfree(x), bfree(y), bfree(y2), bfree(dx), bfree(R), bfree(g);
}

/* ------------------------------------------------------------------- gates */

typedef struct {
    float *out, *c, *a, *b, *p, *R;
    float temp;
    size_t n;
} gate_ctx;

static double gate_obj(void *q) {
    gate_ctx *g = q;
    be->gate_fwd(be, g->out, g->c, g->a, g->b, g->p, g->temp, g->n);
    return dot_d(g->out, g->R, g->n);
}

static void test_gate(void) {
    enum { N = 29 };
    float *out = falloc(N), *c = falloc(N), *a = falloc(N), *b = falloc(N), *p = falloc(1),
          *R = falloc(N), *da = falloc(N), *db = falloc(N), *dp = falloc(1), *t = falloc(N);
    double want[N];
    const float temp = 0.7f;
    fill(c, N, 100, -1, 1);
    fill(a, N, 101, -1, 1);
    fill(b, N, 102, -1, 1);
    fill(R, N, 103, -1, 1);
    p[0] = 0.3f;
    const double s = 1.0 / (1.0 + exp(-0.3 / 0.7));

    for (int mask = 0; mask < 8; mask++) { /* every combination of NULL c, a, b */
        const float *cc = mask & 1 ? c : NULL, *aa = mask & 2 ? a : NULL, *bb = mask & 4 ? b : NULL;
        for (int i = 0; i < N; i++)
            want[i] = (cc ? cc[i] : 0) + s * (aa ? aa[i] : 0) + (1 - s) * (bb ? bb[i] : 0);
        fill(out, N, 104, -9, 9); /* garbage that must be overwritten */
        be->gate_fwd(be, out, cc, aa, bb, p, temp, N);
        char what[32];
        snprintf(what, sizeof what, "gate_fwd mask %d", mask);
        check_array(what, out, want, N, 1e-6, 1e-6);
        if (cc) {
            memcpy(t, c, N * sizeof *c);
            be->gate_fwd(be, t, t, aa, bb, p, temp, N); /* out == c */
            check_array("gate_fwd out == c", t, want, N, 1e-6, 1e-6);
        }
    }

    /* backward: dout = R */
    gate_ctx g = {out, c, a, b, p, R, temp, N};
    fill(da, N, 105, -9, 9);
    fill(db, N, 106, -9, 9);
    dp[0] = 0.0f;
    be->gate_bwd(be, da, db, dp, R, a, b, p, temp, N);
    fd_check("gate_bwd da", gate_obj, &g, a, N, da, 1e-2f, 1e-2, 5e-3);
    fd_check("gate_bwd db", gate_obj, &g, b, N, db, 1e-2f, 1e-2, 5e-3);
    fd_check("gate_bwd dp", gate_obj, &g, p, 1, dp, 1e-2f, 1e-2, 1e-4);
    double wdp = 0.0;
    for (int i = 0; i < N; i++)
        wdp += (double)R[i] * (a[i] - b[i]);
    wdp *= s * (1 - s) / temp;
    CHECK_CLOSE(dp[0], wdp, 1e-6, 1e-5);

    /* dp accumulates; NULL da skipped; b == NULL means zeros */
    float *db2 = falloc(N);
    dp[0] = 0.5f;
    be->gate_bwd(be, NULL, db2, dp, R, a, b, p, temp, N);
    CHECK_CLOSE(dp[0], 0.5 + wdp, 1e-6, 1e-5);
    check_same("gate_bwd db with da NULL", db2, db, N);
    dp[0] = 0.0f;
    g.b = NULL;
    be->gate_bwd(be, da, NULL, dp, R, a, NULL, p, temp, N);
    fd_check("gate_bwd dp (b NULL)", gate_obj, &g, p, 1, dp, 1e-2f, 1e-2, 1e-4);
    fd_check("gate_bwd da (b NULL)", gate_obj, &g, a, N, da, 1e-2f, 1e-2, 5e-3);
    dp[0] = 0.0f;
    g.b = b, g.a = NULL, g.c = NULL;
    be->gate_bwd(be, NULL, db, dp, R, NULL, b, p, temp, N);
    fd_check("gate_bwd dp (a NULL)", gate_obj, &g, p, 1, dp, 1e-2f, 1e-2, 1e-4);
    fd_check("gate_bwd db (a NULL)", gate_obj, &g, b, N, db, 1e-2f, 1e-2, 5e-3);

    /* a long vector: the blocked double reduction against a plain double sum */
    enum { L = 100003 };
    float *la = falloc(L), *lb = falloc(L), *ld = falloc(L);
    fill(la, L, 107, -1, 1);
    fill(lb, L, 108, -1, 1);
    fill(ld, L, 109, -1, 1);
    double wl = 0.0;
    for (int i = 0; i < L; i++)
        wl += (double)ld[i] * (la[i] - lb[i]);
    dp[0] = 0.0f;
    be->gate_bwd(be, NULL, NULL, dp, ld, la, lb, p, temp, L);
    CHECK_CLOSE(dp[0], wl * s * (1 - s) / temp, 1e-4, 1e-5);
    bfree(out), bfree(c), bfree(a), bfree(b), bfree(p), bfree(R), bfree(da), bfree(db), bfree(dp),
        bfree(t), bfree(db2), bfree(la), bfree(lb), bfree(ld);
}

/* the fused gate + residual + bias against its unfused composition (gate_fwd, copy,
 * add_bias): the same bits, every combination of NULL operands, out == c too */
static void test_gate_bias(void) {
    enum { ROWS = 7, COLS = 13, N = ROWS * COLS };
    float *c = falloc(N), *a = falloc(N), *b = falloc(N), *p = falloc(1), *bias = falloc(COLS);
    float *out = falloc(N), *h = falloc(N), *wout = falloc(N), *wh = falloc(N);
    fill(c, N, 110, -1, 1);
    fill(a, N, 111, -1, 1);
    fill(b, N, 112, -1, 1);
    fill(bias, COLS, 113, -1, 1);
    p[0] = -0.4f;
    for (int mask = 0; mask < 8; mask++) {
        const float *cc = mask & 1 ? c : NULL, *aa = mask & 2 ? a : NULL, *bb = mask & 4 ? b : NULL;
        be->gate_fwd(be, wout, cc, aa, bb, p, 0.5f, N);
        be->copy(be, wh, wout, N * sizeof *wh);
        be->add_bias(be, wh, COLS, bias, ROWS, COLS);
        fill(out, N, 114, -9, 9); /* garbage that must be overwritten */
        fill(h, N, 115, -9, 9);
        be->gate_bias_fwd(be, out, h, cc, aa, bb, p, 0.5f, bias, ROWS, COLS);
        char what[48];
        snprintf(what, sizeof what, "gate_bias_fwd out, mask %d", mask);
        check_same(what, out, wout, N);
        snprintf(what, sizeof what, "gate_bias_fwd h, mask %d", mask);
        check_same(what, h, wh, N);
    }
    memcpy(out, c, N * sizeof *c); /* out == c */
    be->gate_bias_fwd(be, out, h, out, a, b, p, 0.5f, bias, ROWS, COLS);
    be->gate_fwd(be, wout, c, a, b, p, 0.5f, N);
    check_same("gate_bias_fwd out == c", out, wout, N);
    bfree(c), bfree(a), bfree(b), bfree(p), bfree(bias), bfree(out), bfree(h), bfree(wout),
        bfree(wh);
}

/* gate_bwd_mix against its unfused composition (gate_fwd, gate_bwd): the same bits for out,
 * da, db and dp, every combination of NULL operands, on a vector of several blocks (the
 * pool's threads share it) and with da over a (the aliasing gate_bwd allows) */
static void test_gate_bwd_mix(void) {
    enum { N = 3 * 2048 + 77 };
    float *c = falloc(N), *a = falloc(N), *b = falloc(N), *p = falloc(1), *dout = falloc(N);
    float *out = falloc(N), *wout = falloc(N), *da = falloc(N), *db = falloc(N), *wda = falloc(N),
          *wdb = falloc(N), *dp = falloc(1), *wdp = falloc(1), *a2 = falloc(N);
    fill(c, N, 120, -1, 1);
    fill(a, N, 121, -1, 1);
    fill(b, N, 122, -1, 1);
    fill(dout, N, 123, -1, 1);
    p[0] = 0.6f;
    for (int mask = 0; mask < 8; mask++) {
        const float *cc = mask & 1 ? c : NULL, *aa = mask & 2 ? a : NULL, *bb = mask & 4 ? b : NULL;
        be->gate_fwd(be, wout, cc, aa, bb, p, 0.8f, N);
        wdp[0] = dp[0] = 0.25f;
        be->gate_bwd(be, wda, wdb, wdp, dout, aa, bb, p, 0.8f, N);
        fill(out, N, 124, -9, 9); /* garbage that must be overwritten */
        fill(da, N, 125, -9, 9);
        fill(db, N, 126, -9, 9);
        be->gate_bwd_mix(be, out, da, db, dp, dout, cc, aa, bb, p, 0.8f, N);
        char what[48];
        snprintf(what, sizeof what, "gate_bwd_mix out, mask %d", mask);
        check_same(what, out, wout, N);
        snprintf(what, sizeof what, "gate_bwd_mix da, mask %d", mask);
        check_same(what, da, wda, N);
        snprintf(what, sizeof what, "gate_bwd_mix db, mask %d", mask);
        check_same(what, db, wdb, N);
        snprintf(what, sizeof what, "gate_bwd_mix dp, mask %d", mask);
        check_same(what, dp, wdp, 1);
    }
    /* da == a: out is the mix of the a that was, da the gradient */
    memcpy(a2, a, N * sizeof *a);
    be->gate_fwd(be, wout, c, a, b, p, 0.8f, N);
    wdp[0] = dp[0] = 0.0f;
    be->gate_bwd(be, wda, NULL, wdp, dout, a, b, p, 0.8f, N);
    be->gate_bwd_mix(be, out, a2, NULL, dp, dout, c, a2, b, p, 0.8f, N);
    check_same("gate_bwd_mix out, da == a", out, wout, N);
    check_same("gate_bwd_mix da == a", a2, wda, N);
    check_same("gate_bwd_mix dp, da == a", dp, wdp, 1);
    bfree(c), bfree(a), bfree(b), bfree(p), bfree(dout), bfree(out), bfree(wout), bfree(da),
        bfree(db), bfree(wda), bfree(wdb), bfree(dp), bfree(wdp), bfree(a2);
}

/* gate_dp_dot: *dp += (1 - s) / temp * sum(x y) against a double sum, on a vector of several
 * 2048-element blocks and on one shorter than a block; and as gate_bwd's dp (whose factor is
 * s (1 - s) / temp) with x for dout and y for a, divided by s: the same sum */
static void test_gate_dp_dot(void) {
    enum { N = 64 * 768 + 5 };
    float *x = falloc(N), *y = falloc(N), *p = falloc(1), *dp = falloc(1), *gdp = falloc(1);
    fill(x, N, 140, -1, 1);
    fill(y, N, 141, -0.01f, 0.01f);
    const float temp = 0.1f;
    p[0] = -0.07f;
    const double s = 1.0 / (1.0 + exp(0.07 / 0.1));
    const size_t sizes[2] = {N, 1000};
    for (int c = 0; c < 2; c++) {
        const size_t n = sizes[c];
        double sum = 0.0;
        for (size_t i = 0; i < n; i++)
            sum += (double)x[i] * y[i];
        dp[0] = 0.5f;
        be->gate_dp_dot(be, dp, x, y, p, temp, n);
        CHECK_CLOSE(dp[0], 0.5 + (1.0 - s) / temp * sum, 1e-6, 1e-5);
        gdp[0] = 0.0f;
        be->gate_bwd(be, NULL, NULL, gdp, x, y, NULL, p, temp, n);
        dp[0] = 0.0f;
        be->gate_dp_dot(be, dp, x, y, p, temp, n);
        CHECK_CLOSE(dp[0], gdp[0] / s, 1e-7, 1e-6);
    }
    bfree(x), bfree(y), bfree(p), bfree(dp), bfree(gdp);
}

/* the gates with fp16 states (gate_bias_fwd_h, gate_bwd_mix_h) and gather_half16 against
 * the fp32 ops on the converted values: the same bits, b as fp16, fp32 or absent, c present
 * or not; rows wider than the ops' 512-element stretches, several 2048-element blocks */
static void test_gate_half(void) {
    enum { ROWS = 9, COLS = 1100, N = ROWS * COLS };
    uint16_t *ha = be->alloc(be, N * sizeof *ha), *hb = be->alloc(be, N * sizeof *hb);
    float *c = falloc(N), *a = falloc(N), *b = falloc(N), *fb = falloc(N), *p = falloc(1);
    float *bias = falloc(COLS), *dout = falloc(N), *out = falloc(N), *h = falloc(N);
    float *wout = falloc(N), *wh = falloc(N), *db = falloc(N), *wdb = falloc(N), *dp = falloc(1),
          *wdp = falloc(1);
    fill(a, N, 130, -3, 3);
    fill(b, N, 131, -3, 3);
    iisan_cpu_float_to_half(ha, a, N);
    iisan_cpu_float_to_half(hb, b, N);
    iisan_cpu_half_to_float(a, ha, N); /* a and b: exactly the halves' values */
    iisan_cpu_half_to_float(b, hb, N);
    fill(fb, N, 132, -1, 1);
    fill(c, N, 133, -1, 1);
    fill(bias, COLS, 134, -1, 1);
    fill(dout, N, 135, -1, 1);
    p[0] = 0.3f;
    for (int mode = 0; mode < 6; mode++) { /* c: mode & 1; b: fp16, fp32, none */
        const float *cc = mode & 1 ? c : NULL;
        const int bm = mode / 2;
        const uint16_t *hbb = bm == 0 ? hb : NULL;
        const float *fbb = bm == 1 ? fb : NULL, *wb = bm == 0 ? b : fbb;
        char what[64];
        be->gate_bias_fwd(be, wout, wh, cc, a, wb, p, 0.7f, bias, ROWS, COLS);
        fill(out, N, 136, -9, 9);
        fill(h, N, 137, -9, 9);
        be->gate_bias_fwd_h(be, out, h, cc, ha, hbb, fbb, p, 0.7f, bias, ROWS, COLS);
        snprintf(what, sizeof what, "gate_bias_fwd_h out, mode %d", mode);
        check_same(what, out, wout, N);
        snprintf(what, sizeof what, "gate_bias_fwd_h h, mode %d", mode);
        check_same(what, h, wh, N);
        wdp[0] = dp[0] = 0.125f;
        be->gate_bwd_mix(be, wout, NULL, fbb ? wdb : NULL, wdp, dout, cc, a, wb, p, 0.7f, N);
        fill(out, N, 138, -9, 9);
        fill(db, N, 139, -9, 9);
        be->gate_bwd_mix_h(be, out, fbb ? db : NULL, dp, dout, cc, ha, hbb, fbb, p, 0.7f, N);
        snprintf(what, sizeof what, "gate_bwd_mix_h out, mode %d", mode);
        check_same(what, out, wout, N);
        snprintf(what, sizeof what, "gate_bwd_mix_h dp, mode %d", mode);
        check_same(what, dp, wdp, 1);
        if (fbb) check_same("gate_bwd_mix_h db (fp32 b)", db, wdb, N);
    }
    /* gather_half16: rows copied as they are, a NULL row as zeros */
    const uint16_t *rows[ROWS];
    for (int i = 0; i < ROWS; i++)
        rows[i] = i == 4 ? NULL : ha + (size_t)((i * 5) % ROWS) * COLS;
    uint16_t *g16 = be->alloc(be, N * sizeof *g16);
    memset(g16, 0xff, N * sizeof *g16);
    be->gather_half16(be, g16, rows, ROWS, COLS);
    int bad = 0;
    for (int i = 0; i < ROWS; i++)
        for (int j = 0; j < COLS; j++)
            bad += g16[i * COLS + j] != (rows[i] ? rows[i][j] : 0);
    CHECKF(bad == 0, "gather_half16: %d halves differ", bad);
    be->free(be, ha), be->free(be, hb), be->free(be, g16);
    bfree(c), bfree(a), bfree(b), bfree(fb), bfree(p), bfree(bias), bfree(dout), bfree(out),
        bfree(h), bfree(wout), bfree(wh), bfree(db), bfree(wdb), bfree(dp), bfree(wdp);
}

/* ----------------------------------------------------------- normalisation */

typedef struct {
    float *y, *mean, *rstd, *x, *g, *b, *R;
    int rows, cols;
    float eps;
} ln_ctx;

static double ln_obj(void *q) {
    ln_ctx *c = q;
    be->layernorm_fwd(be, c->y, c->mean, c->rstd, c->x, c->g, c->b, c->rows, c->cols, c->eps);
    return dot_d(c->y, c->R, (size_t)c->rows * c->cols);
}

static void layernorm_case(int rows, int cols, uint64_t seed) {
    size_t n = (size_t)rows * cols;
    ln_ctx c = {falloc(n),    falloc(rows), falloc(rows), falloc(n), falloc(cols),
                falloc(cols), falloc(n),    rows,         cols,      1e-5f};
    fill(c.x, n, seed, -2, 2);
    for (size_t i = 0; i < n; i++)
        c.x[i] += (float)(i / cols); /* row means differ */
    fill(c.g, cols, seed + 1, 0.5f, 1.5f);
    fill(c.b, cols, seed + 2, -0.5f, 0.5f);
    fill(c.R, n, seed + 3, -1, 1);
    double *wy = dalloc(n), *wm = dalloc(rows), *wr = dalloc(rows);
    for (int r = 0; r < rows; r++) {
        const float *x = c.x + (size_t)r * cols;
        double mu = 0, var = 0;
        for (int j = 0; j < cols; j++)
            mu += x[j];
        mu /= cols;
        for (int j = 0; j < cols; j++)
            var += (x[j] - mu) * (x[j] - mu);
        var /= cols;
        double rs = 1 / sqrt(var + 1e-5);
        for (int j = 0; j < cols; j++)
            wy[(size_t)r * cols + j] = (x[j] - mu) * rs * c.g[j] + c.b[j];
        wm[r] = mu, wr[r] = rs;
    }
    ln_obj(&c);
    check_array("layernorm y", c.y, wy, n, 1e-5, 1e-5);
    check_array("layernorm mean", c.mean, wm, rows, 1e-6, 1e-6);
    check_array("layernorm rstd", c.rstd, wr, rows, 1e-6, 1e-5);

    float *dx = falloc(n), *dg = falloc(cols), *db = falloc(cols), *t = falloc(n);
    be->layernorm_bwd(be, dx, dg, db, c.R, c.x, c.mean, c.rstd, c.g, rows, cols);
    fd_check("layernorm_bwd dx", ln_obj, &c, c.x, n, dx, 1e-2f, 1e-2, 5e-3);
    fd_check("layernorm_bwd dg", ln_obj, &c, c.g, cols, dg, 1e-2f, 1e-2, 5e-3);
    fd_check("layernorm_bwd db", ln_obj, &c, c.b, cols, db, 1e-2f, 1e-2, 5e-3);

    /* dg, db accumulate; dx == dy gives the same dx */
    double *wdg = dalloc(cols), *wdb = dalloc(cols);
    for (int j = 0; j < cols; j++)
        wdg[j] = 2.0 * dg[j], wdb[j] = 2.0 * db[j];
    memcpy(t, c.R, n * sizeof *t);
    be->layernorm_bwd(be, t, dg, db, t, c.x, c.mean, c.rstd, c.g, rows, cols);
    check_array("layernorm_bwd dg accumulates", dg, wdg, cols, 1e-6, 1e-6);
    check_array("layernorm_bwd db accumulates", db, wdb, cols, 1e-6, 1e-6);
    check_same("layernorm_bwd dx == dy", t, dx, n);
    bfree(c.y), bfree(c.mean), bfree(c.rstd), bfree(c.x), bfree(c.g), bfree(c.b), bfree(c.R);
    bfree(dx), bfree(dg), bfree(db), bfree(t);
    free(wy), free(wm), free(wr), free(wdg), free(wdb);
}

static void test_layernorm(void) {
    layernorm_case(5, 13, 110);
    layernorm_case(3, 64, 120);
    layernorm_case(4, 3, 130);
}

/* --------------------------------------------------------------- attention */

/* the contract's formula evaluated literally in double, -1e9 and all */
static void ref_attention(double *out, double *probs, const float *qkv, const float *mask, int B,
                          int n, int H, int dh, float p, uint64_t seed) {
    int d = H * dh;
    double sc = 1.0 / sqrt((double)dh);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < n; i++) {
                size_t prow = (((size_t)b * H + h) * n + i) * n;
                double *P = probs + prow, mx = -INFINITY, sum = 0;
                for (int j = 0; j < n; j++) {
                    const float *q = qkv + ((size_t)b * n + i) * 3 * d + h * dh;
                    const float *k = qkv + ((size_t)b * n + j) * 3 * d + d + h * dh;
                    double s = 0;
                    for (int t = 0; t < dh; t++)
                        s += (double)q[t] * k[t];
                    P[j] = s * sc + (j <= i && mask[b * n + j] ? 0.0 : -1e9);
                    mx = fmax(mx, P[j]);
                }
                for (int j = 0; j < n; j++)
                    sum += P[j] = exp(P[j] - mx);
                for (int j = 0; j < n; j++)
                    P[j] /= sum;
                double *o = out + ((size_t)b * n + i) * d + h * dh;
                for (int t = 0; t < dh; t++)
                    o[t] = 0;
                for (int j = 0; j < n; j++) {
                    double w = P[j];
                    if (p > 0) w = iisan_rng_uniform(seed, prow + j) >= p ? w / (1.0 - p) : 0.0;
                    const float *v = qkv + ((size_t)b * n + j) * 3 * d + 2 * d + h * dh;
                    for (int t = 0; t < dh; t++)
                        o[t] += w * v[t];
                }
            }
}

typedef struct {
    float *out, *probs, *qkv, *mask, *R;
    int B, n, H, dh;
    float p;
    uint64_t seed;
} att_ctx;

static double att_obj(void *q) {
    att_ctx *c = q;
    be->attention_fwd(be, c->out, c->probs, c->qkv, c->mask, c->B, c->n, c->H, c->dh, c->p,
                      c->seed);
    return dot_d(c->out, c->R, (size_t)c->B * c->n * c->H * c->dh);
}

/* softmax_rows against a float64 softmax: with and without a key mask, a row
 * with one real key, a fully masked row (zeros), rows sharing a mask */
static void test_softmax_rows(void) {
    const int R = 6, len = 7, per = 2; /* mask rows: R / per = 3 */
    float *s = falloc((size_t)R * len);
    int *mk = be->alloc(be, (size_t)(R / per) * len * sizeof(int));
    fill(s, (size_t)R * len, 150, -4.0f, 4.0f);
    const int hm[21] = {1, 1, 1, 1, 1, 1, 1, /* every key */
                        0, 0, 1, 0, 1, 1, 0, /* some */
                        0, 0, 0, 0, 0, 0, 0 /* none: rows 4, 5 become zeros */};
    memcpy(mk, hm, sizeof hm);
    s[2 * len + 3] = 50.0f; /* a large masked score must not count */
    float *orig = falloc((size_t)R * len);
    memcpy(orig, s, (size_t)R * len * sizeof *s);
    double *want = dalloc((size_t)R * len);
    for (int masked = 0; masked < 2; masked++) {
        memcpy(s, orig, (size_t)R * len * sizeof *s);
        for (int r = 0; r < R; r++) {
            const int *m = masked ? hm + (r / per) * len : NULL;
            double mx = -INFINITY, sum = 0;
            for (int j = 0; j < len; j++)
                if (!m || m[j]) mx = fmax(mx, orig[r * len + j]);
            for (int j = 0; j < len; j++)
                sum += !m || m[j] ? exp(orig[r * len + j] - mx) : 0.0;
            for (int j = 0; j < len; j++)
                want[r * len + j] =
                    (!m || m[j]) && sum > 0 ? exp(orig[r * len + j] - mx) / sum : 0.0;
        }
        be->softmax_rows(be, s, R, len, masked ? mk : NULL, per);
        check_array(masked ? "softmax_rows masked" : "softmax_rows", s, want, (size_t)R * len, 1e-7,
                    1e-6);
    }
    bfree(s);
    bfree(mk);
    bfree(orig);
    free(want);
}

static void test_attention(void) {
    const int B = 3, n = 5, H = 2, dh = 4, d = H * dh;
    const float mask[15] = {0, 0, 1, 1, 1, /* left-padded */
                            1, 1, 1, 1, 1, /* full */
                            0, 0, 0, 0, 1};
    size_t nq = (size_t)B * n * 3 * d, no = (size_t)B * n * d, np = (size_t)B * H * n * n;
    att_ctx c = {falloc(no), falloc(np), falloc(nq), falloc(B * n), falloc(no), B,
                 n,          H,          dh,         0.0f,          77};
    memcpy(c.mask, mask, sizeof mask);
    fill(c.qkv, nq, 140, -1.5f, 1.5f);
    fill(c.R, no, 141, -1, 1);
    double *wo = dalloc(no), *wp = dalloc(np);
    float *dqkv = falloc(nq);
    const float ps[2] = {0.0f, 0.25f};
    for (int pi = 0; pi < 2; pi++) {
        c.p = ps[pi];
        ref_attention(wo, wp, c.qkv, c.mask, B, n, H, dh, c.p, c.seed);
        att_obj(&c);
        check_array("attention probs", c.probs, wp, np, 1e-6, 1e-5);
        check_array("attention out", c.out, wo, no, 1e-5, 1e-5);
        /* masked entries are exactly 0 in every row that has an allowed key */
        int leak = 0;
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++)
                for (int i = 0; i < n; i++) {
                    int any = 0;
                    for (int j = 0; j <= i; j++)
                        any |= mask[b * n + j] != 0;
                    for (int j = 0; j < n && any; j++)
                        if (!(j <= i && mask[b * n + j]))
                            leak += c.probs[(((size_t)b * H + h) * n + i) * n + j] != 0.0f;
                }
        CHECK(leak == 0);

        fill(dqkv, nq, 142, -9, 9); /* garbage: dqkv is overwritten */
        be->attention_bwd(be, dqkv, c.R, c.qkv, c.probs, B, n, H, dh, c.p, c.seed);
        fd_check(pi ? "attention_bwd (dropout 0.25)" : "attention_bwd", att_obj, &c, c.qkv, nq,
                 dqkv, 5e-3f, 1e-2, 5e-3);
    }
    bfree(c.out), bfree(c.probs), bfree(c.qkv), bfree(c.mask), bfree(c.R), bfree(dqkv);
    free(wo), free(wp);
}

/* ------------------------------------------------------------ in-batch CE */

typedef struct {
    float *base, *work, *loss, *logpop;
    int *cand_item, *quser, *qtarget;
    unsigned char *umask;
    int Q, C;
} ce_ctx;

static double ce_obj(void *q) {
    ce_ctx *c = q;
    memcpy(c->work, c->base, (size_t)c->Q * c->C * sizeof(float));
    be->inbatch_ce(be, c->work, c->loss, c->logpop, c->cand_item, c->umask, c->quser, c->qtarget,
                   c->Q, c->C);
    return c->loss[0];
}

static void test_inbatch_ce(void) {
    enum { Bu = 3, C = 9, Q = 6 };
    /* candidate slots: 1 and 6 are padding, item 7 fills slots 2 and 4 */
    static const int cand[C] = {5, 0, 7, 3, 7, 9, 0, 2, 4};
    /* user 0 saw items 5, 7, 3; user 1 saw 9, 2; user 2 saw 4, 7 */
    static const int seen[Bu][3] = {{5, 7, 3}, {9, 2, 0}, {4, 7, 0}};
    static const int quser[Q] = {0, 0, 1, 1, 2, 2};
    static const int qtarget[Q] = {2, 3, 5, 7, 8, 4}; /* each target is in its user's mask */
    ce_ctx c = {
        .base = falloc(Q * C), .work = falloc(Q * C), .loss = falloc(1), .logpop = falloc(C)};
    c.cand_item = be->alloc(be, sizeof cand);
    c.quser = be->alloc(be, sizeof quser);
    c.qtarget = be->alloc(be, sizeof qtarget);
    c.umask = be->alloc(be, Bu * C);
    c.Q = Q, c.C = C;
    be->upload(be, c.cand_item, cand, sizeof cand);
    be->upload(be, c.quser, quser, sizeof quser);
    be->upload(be, c.qtarget, qtarget, sizeof qtarget);
    for (int u = 0; u < Bu; u++)
        for (int s = 0; s < C; s++)
            for (int k = 0; k < 3; k++)
                if (cand[s] && seen[u][k] == cand[s]) c.umask[u * C + s] = 1;
    fill(c.base, Q * C, 150, -3, 3);
    fill(c.logpop, C, 151, -5, -1);

    /* reference in double */
    double want_loss = 0, want[Q * C];
    int masked[Q * C];
    for (int q = 0; q < Q; q++) {
        double z[C], mx = -INFINITY, sum = 0;
        int t = qtarget[q];
        for (int s = 0; s < C; s++) {
            masked[q * C + s] = cand[s] == 0 || (c.umask[quser[q] * C + s] && s != t);
            z[s] = masked[q * C + s] ? -1e4 : (double)c.base[q * C + s] - c.logpop[s];
            mx = fmax(mx, z[s]);
        }
        for (int s = 0; s < C; s++)
            sum += exp(z[s] - mx);
        want_loss += mx + log(sum) - z[t];
        for (int s = 0; s < C; s++)
            want[q * C + s] =
                masked[q * C + s] ? 0.0 : (exp(z[s] - mx) / sum - (s == t)) / (double)Q;
    }
    want_loss /= Q;

    ce_obj(&c);
    CHECK_CLOSE(c.loss[0], want_loss, 1e-6, 1e-6);
    check_array("inbatch_ce gradient", c.work, want, Q * C, 1e-7, 1e-5);
    /* masking exactly as documented */
    int zero_bad = 0;
    for (int i = 0; i < Q * C; i++)
        zero_bad += masked[i] && c.work[i] != 0.0f;
    CHECK(zero_bad == 0);
    CHECK(masked[0 * C + 0] && masked[0 * C + 1] && masked[0 * C + 4]); /* seen / padding */
    CHECK(!masked[0 * C + 2] && c.work[0 * C + 2] < 0.0f); /* the target, although seen */
    CHECK(masked[0 * C + 2 + C] && !masked[1 * C + 3]);    /* slot 2 for the other query */
    CHECK(!masked[2 * C + 0] && c.work[2 * C + 0] > 0.0f); /* unseen by user 1: a negative */

    /* the gradient is that of the loss (finite differences over the inputs) */
    float *g = falloc(Q * C);
    memcpy(g, c.work, Q * C * sizeof *g);
    fd_check("inbatch_ce", ce_obj, &c, c.base, Q * C, g, 1e-2f, 1e-2, 5e-3);

    be->inbatch_ce(be, c.work, c.loss, c.logpop, c.cand_item, c.umask, c.quser, c.qtarget, 0, C);
    CHECK(c.loss[0] == 0.0f);
    bfree(c.base), bfree(c.work), bfree(c.loss), bfree(c.logpop), bfree(c.cand_item),
        bfree(c.quser), bfree(c.qtarget), bfree(c.umask), bfree(g);
}

/* ------------------------------------------------------------------- adam */

/* Two steps of torch.optim.Adam(lr=0.01, betas=(0.9, 0.999), eps=1e-8), by hand:
 * element 0, g = 0.5 then -0.25:
 *   t=1: m = 0.05, v = 0.00025; m^ = 0.05/0.1 = 0.5, v^ = 0.00025/0.001 = 0.25
 *        w = 1 - 0.01 * 0.5 / (0.5 + 1e-8) = 0.9900000002
 *   t=2: m = 0.045 - 0.025 = 0.02, v = 0.00024975 + 0.0000625 = 0.00031225
 *        m^ = 0.02/0.19 = 0.105263157894..., v^ = 0.00031225/0.001999 = 0.156203101...
 *        w = 0.9900000002 - 0.01 * 0.105263157894 / (0.395225381 + 1e-8) = 0.987336629871
 * element 1, g = -1 then 0.5: the mirror image, w = -0.5 + 0.0099999999 + 0.002663370...
 *        = -0.490000000100, then -0.487336629737
 * element 2, g = 0 twice: m = v = 0 and w unchanged (eps keeps 0/0 away). */
static void test_adam(void) {
    float *w = falloc(3), *g = falloc(3), *m = falloc(3), *v = falloc(3);
    const float w0[3] = {1.0f, -0.5f, 2.0f}, g1[3] = {0.5f, -1.0f, 0.0f},
                g2[3] = {-0.25f, 0.5f, 0.0f};
    memcpy(w, w0, sizeof w0);
    memcpy(g, g1, sizeof g1);
    be->adam(be, w, g, m, v, 3, 0.01f, 0.9f, 0.999f, 1e-8f, 1, 0);
    CHECK_CLOSE(w[0], 0.990000000200, 2e-7, 0);
    CHECK_CLOSE(w[1], -0.490000000100, 2e-7, 0);
    CHECK(w[2] == 2.0f);
    /* the moments carry the float betas: 1 - 0.999f = 0.00099998713, so v is
     * 1.3e-5 (relative) below PyTorch's; the bias correction uses the same
     * float beta and cancels it out of w */
    CHECK_CLOSE(m[0], 0.05, 1e-9, 1e-6);
    CHECK_CLOSE(v[1], 0.001, 1e-10, 2e-5);
    memcpy(g, g2, sizeof g2);
    be->adam(be, w, g, m, v, 3, 0.01f, 0.9f, 0.999f, 1e-8f, 2, 0);
    CHECK_CLOSE(w[0], 0.987336629871, 2e-7, 0);
    CHECK_CLOSE(w[1], -0.487336629737, 2e-7, 0);
    CHECK(w[2] == 2.0f && m[2] == 0.0f && v[2] == 0.0f);
    CHECK_CLOSE(m[0], 0.02, 1e-9, 1e-5);
    CHECK_CLOSE(v[0], 0.00031225, 1e-10, 2e-5);

    /* a longer vector (exercises the vector loop) against the same formula in double */
    enum { N = 1003 };
    float *W = falloc(N), *G = falloc(N), *Mm = falloc(N), *V = falloc(N);
    double wd[N], md[N] = {0}, vd[N] = {0};
    fill(W, N, 160, -1, 1);
    for (int i = 0; i < N; i++)
        wd[i] = W[i];
    for (int t = 1; t <= 3; t++) {
        fill(G, N, 161 + t, -1, 1);
        double bc1 = 1 - pow(0.9, t), bc2 = 1 - pow(0.999, t);
        for (int i = 0; i < N; i++) {
            md[i] = 0.9 * md[i] + 0.1 * G[i];
            vd[i] = 0.999 * vd[i] + 0.001 * G[i] * G[i];
            wd[i] -= 2e-4 / bc1 * md[i] / (sqrt(vd[i]) / sqrt(bc2) + 1e-8);
        }
        be->adam(be, W, G, Mm, V, N, 2e-4f, 0.9f, 0.999f, 1e-8f, t, 0);
    }
    check_array("adam x3", W, wd, N, 1e-6, 0);
    bfree(w), bfree(g), bfree(m), bfree(v), bfree(W), bfree(G), bfree(Mm), bfree(V);

    /* a large update (split over threads) equals the same update done in
     * small single-threaded slices, bit for bit */
    const size_t NB = 3 * (1u << 18) + 7, SL = 1000;
    float *bw[2], *bg = falloc(NB), *bm[2], *bv[2];
    fill(bg, NB, 170, -1, 1);
    for (int k = 0; k < 2; k++) {
        bw[k] = falloc(NB), bm[k] = falloc(NB), bv[k] = falloc(NB);
        fill(bw[k], NB, 171, -1, 1);
    }
    for (int t = 1; t <= 2; t++) {
        be->adam(be, bw[0], bg, bm[0], bv[0], NB, 1e-3f, 0.9f, 0.999f, 1e-8f, t, 0);
        for (size_t at = 0; at < NB; at += SL) {
            size_t len = NB - at < SL ? NB - at : SL;
            be->adam(be, bw[1] + at, bg + at, bm[1] + at, bv[1] + at, len, 1e-3f, 0.9f, 0.999f,
                     1e-8f, t, 0);
        }
    }
    CHECK(!memcmp(bw[0], bw[1], NB * sizeof(float)) && !memcmp(bm[0], bm[1], NB * sizeof(float)) &&
          !memcmp(bv[0], bv[1], NB * sizeof(float)));
    /* zero_g: the same update, and every gradient element 0 after it */
    float *bz = falloc(NB);
    memcpy(bz, bg, NB * sizeof(float));
    be->adam(be, bw[0], bg, bm[0], bv[0], NB, 1e-3f, 0.9f, 0.999f, 1e-8f, 3, 0);
    be->adam(be, bw[1], bz, bm[1], bv[1], NB, 1e-3f, 0.9f, 0.999f, 1e-8f, 3, 1);
    size_t left = 0;
    for (size_t i = 0; i < NB; i++)
        left += bz[i] != 0.0f;
    CHECK(!memcmp(bw[0], bw[1], NB * sizeof(float)) && !memcmp(bm[0], bm[1], NB * sizeof(float)) &&
          !memcmp(bv[0], bv[1], NB * sizeof(float)));
    CHECKF(left == 0, "adam zero_g left %zu gradient elements", left);
    /* m and v at offsets of different alignment (no element where both are on a 64-byte
     * line's start: the whole range one element at a time) give the same bits too */
    enum { NM = 4099 };
    float *sw[2], *sm[2], *sv[2];
    for (int k = 0; k < 2; k++) {
        sw[k] = falloc(NM + 1), sm[k] = falloc(NM + 1), sv[k] = falloc(NM + 1);
        memcpy(sw[k], bw[0], NM * sizeof(float));
    }
    for (int t = 1; t <= 2; t++) {
        be->adam(be, sw[0], bg, sm[0], sv[0], NM, 1e-3f, 0.9f, 0.999f, 1e-8f, t, 0);
        be->adam(be, sw[1], bg, sm[1] + 1, sv[1], NM, 1e-3f, 0.9f, 0.999f, 1e-8f, t, 0);
    }
    CHECK(!memcmp(sw[0], sw[1], NM * sizeof(float)) &&
          !memcmp(sm[0], sm[1] + 1, NM * sizeof(float)) &&
          !memcmp(sv[0], sv[1], NM * sizeof(float)));
    for (int k = 0; k < 2; k++)
        bfree(sw[k]), bfree(sm[k]), bfree(sv[k]);
    bfree(bz);
    for (int k = 0; k < 2; k++)
        bfree(bw[k]), bfree(bm[k]), bfree(bv[k]);
    bfree(bg);
}

/* ----------------------------------------------------------- data movement */

static void test_gather_scatter(void) {
    enum { COLS = 13, NR = 4 };
    uint16_t rows_h[3][COLS];
    for (int r = 0; r < 3; r++)
        for (int j = 0; j < COLS; j++)
            rows_h[r][j] = iisan_float_to_half((float)(r * 100 + j) * 0.25f - 7.0f);
    const uint16_t *rows[NR] = {rows_h[2], NULL, rows_h[0], rows_h[2]};
    float *dst = falloc(NR * COLS);
    double want[NR * COLS];
    fill(dst, NR * COLS, 170, -9, 9);
    for (int i = 0; i < NR; i++)
        for (int j = 0; j < COLS; j++)
            want[i * COLS + j] = rows[i] ? iisan_half_to_float(rows[i][j]) : 0.0;
    be->gather_half(be, dst, rows, NR, COLS);
    check_array("gather_half", dst, want, NR * COLS, 0, 0);

    float *src = falloc(5 * COLS), *g = falloc(3 * COLS), *acc = falloc(5 * COLS);
    int *idx = be->alloc(be, 3 * sizeof(int));
    const int ix[3] = {4, 0, 4};
    be->upload(be, idx, ix, sizeof ix);
    fill(src, 5 * COLS, 171, -1, 1);
    fill(acc, 5 * COLS, 172, -1, 1);
    double wg[3 * COLS], wa[5 * COLS];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < COLS; j++)
            wg[i * COLS + j] = src[ix[i] * COLS + j];
    be->gather_rows(be, g, src, idx, 3, COLS);
    check_array("gather_rows", g, wg, 3 * COLS, 0, 0);
    for (int i = 0; i < 5 * COLS; i++)
        wa[i] = acc[i];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < COLS; j++)
            wa[ix[i] * COLS + j] += g[i * COLS + j];
    be->scatter_add_rows(be, acc, g, idx, 3, COLS);
    check_array("scatter_add_rows (repeated index)", acc, wa, 5 * COLS, 1e-6, 1e-6);
    bfree(dst), bfree(src), bfree(g), bfree(acc), bfree(idx);
}

/* ------------------------------------------------------------- evaluation */

static int excluded(const int *ex, int ne, int c) {
    for (int e = 0; e < ne; e++)
        if (ex[e] == c) return 1;
    return 0;
}

static int ref_rank(const float *row, int N, int t, const int *ex, int ne) {
    int r = 1;
    for (int c = 1; c < N; c++)
        if (c != t && !excluded(ex, ne, c) && row[c] > row[t]) r++;
    return r;
}

/* top-k by brute force: repeatedly the best remaining (score desc, index asc) */
static void ref_topk(int *oi, float *os, const float *row, int N, int k, const int *ex, int ne) {
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int c = 1; c < N; c++) {
            if (excluded(ex, ne, c) || isnan(row[c])) continue;
            int taken = 0;
            for (int u = 0; u < j; u++)
                taken |= oi[u] == c;
            if (taken) continue;
            if (best < 0 || row[c] > row[best]) best = c;
        }
        oi[j] = best;
        os[j] = best < 0 ? -INFINITY : row[best];
    }
}

static void test_rank_topk(void) {
    /* row 0: column 0 (padding) scores highest and never counts; ties at 0.5 and
     * 0.9; column 5 is excluded (listed twice), the 0 entry is ignored */
    enum { N = 8, NE = 3, K = 4 };
    const float sc[2 * N] = {9.0f, 0.5f, 0.9f, 0.5f, 0.7f, 0.9f, 0.1f, 0.9f,
                             9.0f, 0.3f, 0.3f, 0.2f, 0.8f, 0.3f, 0.6f, 0.3f};
    const int target[2] = {3, 2};
    const int excl[2 * NE] = {5, 0, 5, /* row 1: excludes the target itself and 4, 6 */ 2, 4, 6};
    float *s = falloc(2 * N), *os = falloc(2 * K);
    int *t = be->alloc(be, sizeof target), *ex = be->alloc(be, sizeof excl),
        *rank = be->alloc(be, 2 * sizeof(int)), *oi = be->alloc(be, 2 * K * sizeof(int));
    be->upload(be, s, sc, sizeof sc);
    be->upload(be, t, target, sizeof target);
    be->upload(be, ex, excl, sizeof excl);
    be->rank_targets(be, rank, s, 2, N, t, ex, NE);
    /* row 0: above 0.5 and not excluded: columns 2, 4, 7 -> rank 4 (col 1 only ties)
     * row 1: target 0.3; above it: 4 (excluded), 6 (excluded) -> rank 1 */
    CHECKF(rank[0] == 4, "rank[0] = %d", rank[0]);
    CHECKF(rank[1] == 1, "rank[1] = %d", rank[1]);

    be->topk(be, oi, os, s, 2, N, K, ex, NE);
    /* row 0: (2, .9) (7, .9) (4, .7) (1, .5): ties by lower index, 5 and 0 skipped
     * row 1: (1, .3) (5, .3) (7, .3) (3, .2): 2, 4, 6 excluded */
    const int wi[2 * K] = {2, 7, 4, 1, 1, 5, 7, 3};
    const float wsv[2 * K] = {0.9f, 0.9f, 0.7f, 0.5f, 0.3f, 0.3f, 0.3f, 0.2f};
    for (int j = 0; j < 2 * K; j++)
        CHECKF(oi[j] == wi[j] && os[j] == wsv[j], "topk [%d]: %d %g, want %d %g", j, oi[j], os[j],
               wi[j], wsv[j]);

    /* more asked for than there are eligible columns */
    int oi6[6];
    float os6[6];
    const int exall[3] = {1, 2, 3};
    const float small[5] = {1.0f, 0.5f, 0.4f, 0.3f, 0.2f};
    be->topk(be, oi6, os6, small, 1, 5, 3, exall, 3);
    CHECK(oi6[0] == 4 && os6[0] == 0.2f && oi6[1] == -1 && oi6[2] == -1 && isinf(os6[2]));

    /* random rows with many ties against brute force */
    enum { R = 6, NB = 300, NEB = 5, KB = 9 };
    float *big = falloc(R * NB), bos[R * KB], wos[KB];
    int bt[R], bex[R * NEB], boi[R * KB], woi[KB], br[R];
    for (int i = 0; i < R * NB; i++)
        big[i] = (float)(iisan_rng_u64(180, i) % 7);
    for (int r = 0; r < R; r++) {
        bt[r] = 1 + (int)(iisan_rng_u64(181, r) % (NB - 1));
        for (int e = 0; e < NEB; e++)
            bex[r * NEB + e] = (int)(iisan_rng_u64(182, r * NEB + e) % 40);
    }
    bex[0] = bt[0]; /* a target listed among its own exclusions */
    be->rank_targets(be, br, big, R, NB, bt, bex, NEB);
    be->topk(be, boi, bos, big, R, NB, KB, bex, NEB);
    int rbad = 0, tbad = 0;
    for (int r = 0; r < R; r++) {
        rbad += br[r] != ref_rank(big + r * NB, NB, bt[r], bex + r * NEB, NEB);
        ref_topk(woi, wos, big + r * NB, NB, KB, bex + r * NEB, NEB);
        for (int j = 0; j < KB; j++)
            tbad += boi[r * KB + j] != woi[j] || bos[r * KB + j] != wos[j];
    }
    CHECKF(rbad == 0, "rank_targets: %d rows differ from brute force", rbad);
    CHECKF(tbad == 0, "topk: %d entries differ from brute force", tbad);
    bfree(s), bfree(os), bfree(t), bfree(ex), bfree(rank), bfree(oi), bfree(big);
}

/* the status and its fault hook: nothing before the trigger file exists, then NaN out of
 * every GEMM and a failure count that stays after the file is gone (sticky) */
static void test_status_fault(void) {
    char path[] = "/tmp/iisan-fault-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    close(fd);
    unlink(path);
    setenv("IISAN_CPU_FAULT_FILE", path, 1);
    iisan_backend *fb = iisan_backend_cpu(0);
    unsetenv("IISAN_CPU_FAULT_FILE");
    float a[4] = {1, 2, 3, 4}, c[4];
    fb->gemm(fb, 0, 0, 2, 2, 2, 1, a, 2, a, 2, 0, c, 2);
    char msg[200] = "";
    CHECK(c[0] == 7 && fb->status(fb, msg, sizeof msg) == 0);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    fclose(f);
    fb->gemm(fb, 0, 0, 2, 2, 2, 1, a, 2, a, 2, 0, c, 2);
    CHECK(isnan(c[0]) && isnan(c[3]));
    CHECK(fb->status(fb, msg, sizeof msg) == 1 && strstr(msg, path) != NULL);
    unlink(path);
    fb->gemm(fb, 0, 0, 2, 2, 2, 1, a, 2, a, 2, 0, c, 2);
    CHECK(isnan(c[0]) && fb->status(fb, NULL, 0) == 2);
    fb->destroy(fb);
}

int main(int argc, char **argv) {
    TEST_MAIN_BEGIN(argc, argv);
    be = iisan_backend_cpu(0);
    if (!be) {
        printf("0 passed, 1 failed\n");
        return 1;
    }
    RUN(test_memory);
    RUN(test_half_known);
    RUN(test_half_roundtrip);
    RUN(test_half_bulk);
    RUN(test_rng);
    RUN(test_gemm);
    RUN(test_gemm_split);
    RUN(test_gemm_batched);
    RUN(test_gemm_grad);
    RUN(test_vector_ops);
    RUN(test_act);
    RUN(test_dropout);
    RUN(test_gate);
    RUN(test_gate_bias);
    RUN(test_gate_bwd_mix);
    RUN(test_gate_dp_dot);
    RUN(test_gate_half);
    RUN(test_layernorm);
    RUN(test_softmax_rows);
    RUN(test_attention);
    RUN(test_inbatch_ce);
    RUN(test_adam);
    RUN(test_gather_scatter);
    RUN(test_rank_topk);
    RUN(test_status_fault);
    be->destroy(be);
    TEST_MAIN_END();
}

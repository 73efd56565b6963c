/* The CUDA backend against the CPU backend, op by op: the same random inputs on both, every
 * output (forward and backward) compared.
 *
 * Tolerances, |cuda - cpu| <= atol + rtol |cpu| per element:
 *   exact (bitwise)      memory ops, dropout (values and masks; the mask also against
 *                        kernels/rng.h directly), gather_half, gather_rows, rank_targets,
 *                        topk (indices and scores)
 *   atol 1e-6, rtol 1e-5 elementwise ops: axpby, add_bias, ger, activations, gates, Adam
 *                        (the CUDA build has no FMA contraction, like the CPU's, so most of
 *                        these match bit for bit; erff / expf may differ in the last ulp)
 *   atol 1e-5, rtol 1e-4 row ops: LayerNorm (y, mean, rstd, dx), attention (probs, out, dqkv),
 *                        the loss; the logits' gradient (values ~1/(QC)) atol 1e-9, rtol 1e-4
 *   atol 1e-4, rtol 1e-4 GEMMs and the column sums (bias_grad, LayerNorm dg/db, gate dp,
 *                        scatter_add_rows with repeated rows): summation order differs;
 *                        with IISAN_CUDA_TF32=1 the GEMMs get atol 1e-1, rtol 1e-2.
 * Without a device (or built without CUDA=1) it prints "skipped: no CUDA device" and passes.
 *
 * `build/test/test_cuda_ops NAME` runs only the tests whose name contains NAME. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"
#include "tests/test.h"

#ifdef IISAN_CUDA
#include "kernels/cuda/cuda_backend.h"
#include "kernels/half.h"
#include "kernels/rng.h"

#include "tests/cuda_asan.h"

static iisan_backend *cpu, *gpu;
static double gemm_atol = 1e-4, gemm_rtol = 1e-4;

#define EW_ATOL 1e-6
#define EW_RTOL 1e-5
#define ROW_ATOL 1e-5
#define ROW_RTOL 1e-4
#define SUM_ATOL 1e-4
#define SUM_RTOL 1e-4

static void *xmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

/* ---- the same bytes on both backends ---- */

typedef struct {
    void *c, *g; /* cpu, cuda */
    size_t bytes;
} dbuf;

#define FC(d) ((float *)(d).c)
#define FG(d) ((float *)(d).g)
#define IC(d) ((int *)(d).c)
#define IG(d) ((int *)(d).g)

static dbuf dput(const void *host, size_t bytes) {
    dbuf d = {cpu->alloc(cpu, bytes), gpu->alloc(gpu, bytes), bytes};
    if (!d.c || !d.g) {
        fprintf(stderr, "backend alloc of %zu bytes failed\n", bytes);
        exit(2);
    }
    if (host) {
        cpu->upload(cpu, d.c, host, bytes);
        gpu->upload(gpu, d.g, host, bytes);
    }
    return d;
}

static void dfree(dbuf *d) {
    cpu->free(cpu, d->c);
    gpu->free(gpu, d->g);
}

static float *host_randn(size_t n, uint64_t seed, float scale) {
    float *h = xmalloc(n * sizeof *h);
    for (size_t i = 0; i < n; i++)
        h[i] = scale * iisan_rng_normal(seed, i);
    return h;
}

/* n floats ~ N(0, scale^2) */
static dbuf drandn(size_t n, uint64_t seed, float scale) {
    float *h = host_randn(n, seed, scale);
    dbuf d = dput(h, n * sizeof *h);
    free(h);
    return d;
}

/* n ints uniform in [lo, hi] */
static dbuf drandi(size_t n, uint64_t seed, int lo, int hi) {
    int *h = xmalloc(n * sizeof *h);
    for (size_t i = 0; i < n; i++)
        h[i] = lo + (int)(iisan_rng_u64(seed, i) % (uint64_t)(hi - lo + 1));
    dbuf d = dput(h, n * sizeof *h);
    free(h);
    return d;
}

static dbuf dscalar(float v) { return dput(&v, sizeof v); }

static void fetch(dbuf d, void *hc, void *hg) {
    cpu->download(cpu, hc, d.c, d.bytes);
    gpu->download(gpu, hg, d.g, d.bytes);
}

/* floats: |cuda - cpu| <= atol + rtol |cpu| (equal values, infinities included, and NaN
 * against NaN pass) */
static void cmp_f(const char *what, dbuf d, double atol, double rtol) {
    size_t n = d.bytes / sizeof(float);
    float *hc = xmalloc(d.bytes), *hg = xmalloc(d.bytes);
    fetch(d, hc, hg);
    size_t bad = 0, worst = 0;
    double wex = -1.0;
    for (size_t i = 0; i < n; i++) {
        double a = hg[i], b = hc[i];
        if (a == b || (isnan(a) && isnan(b)) || fabs(a - b) <= atol + rtol * fabs(b)) continue;
        double ex = fabs(a - b) - (atol + rtol * fabs(b));
        if (bad++ == 0 || isnan(ex) || ex > wex) {
            wex = ex;
            worst = i;
        }
    }
    CHECKF(bad == 0, "%s: %zu of %zu differ; worst [%zu] cpu %.9g cuda %.9g", what, bad, n, worst,
           n ? hc[worst] : 0.0, n ? hg[worst] : 0.0);
    free(hc);
    free(hg);
}

/* bit for bit */
static void cmp_bits(const char *what, dbuf d) {
    unsigned char *hc = xmalloc(d.bytes), *hg = xmalloc(d.bytes);
    fetch(d, hc, hg);
    size_t first = d.bytes;
    for (size_t i = 0; i < d.bytes; i++)
        if (hc[i] != hg[i]) {
            first = i;
            break;
        }
    CHECKF(first == d.bytes, "%s: first difference at byte %zu of %zu", what, first, d.bytes);
    free(hc);
    free(hg);
}

static void check_no_cuda_errors(void) {
    char msg[512];
    int n = iisan_cuda_errors(msg, sizeof msg);
    CHECKF(n == 0, "%d CUDA errors recorded, the first: %s", n, msg);
}

/* ---- the table and memory ---- */

static void test_table(void) {
    CHECK(strcmp(gpu->name, "cuda") == 0);
    /* every slot from alloc to destroy is a function pointer and must be set */
    size_t first = offsetof(iisan_backend, alloc), last = offsetof(iisan_backend, destroy);
    for (size_t off = first; off <= last; off += sizeof(void (*)(void))) {
        void (*fp)(void);
        memcpy(&fp, (const char *)gpu + off, sizeof fp);
        CHECKF(fp != NULL, "slot at offset %zu is NULL", off);
    }
}

static void test_memory(void) {
    enum { N = 100003 };
    /* alloc is zero-filled */
    unsigned char *h = xmalloc(N);
    void *p = gpu->alloc(gpu, N);
    CHECK(p != NULL);
    memset(h, 0xab, N);
    gpu->download(gpu, h, p, N);
    size_t nz = 0;
    for (size_t i = 0; i < N; i++)
        nz += h[i] != 0;
    CHECKF(nz == 0, "%zu non-zero bytes after alloc", nz);
    gpu->free(gpu, p);
    gpu->free(gpu, NULL);
    free(h);

    /* upload / copy / zero / download, on both, compared bitwise */
    dbuf a = drandn(N, 1, 1.0f), b = drandn(N, 2, 1.0f);
    cpu->copy(cpu, FC(b) + 10, FC(a) + 20, 5000 * sizeof(float));
    gpu->copy(gpu, FG(b) + 10, FG(a) + 20, 5000 * sizeof(float));
    cpu->zero(cpu, FC(b) + 7000, 333 * sizeof(float));
    gpu->zero(gpu, FG(b) + 7000, 333 * sizeof(float));
    cpu->copy(cpu, FC(a), FC(a), 0);
    gpu->copy(gpu, FG(a), FG(a), 0);
    gpu->sync(gpu);
    cmp_bits("memory: upload/download", a);
    cmp_bits("memory: copy/zero", b);
    dfree(&a);
    dfree(&b);
}

/* ---- linear algebra ---- */

static void gemm_case(int ta, int tb, int M, int N, int K, float alpha, float beta, int pad,
                      uint64_t seed) {
    int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
    int ra = ta ? K : M, rb = tb ? N : K;
    dbuf A = drandn((size_t)(ra > 0 ? ra : 1) * lda, seed, 1.0f);
    dbuf B = drandn((size_t)(rb > 0 ? rb : 1) * ldb, seed + 1, 1.0f);
    dbuf C = drandn((size_t)M * ldc, seed + 2, 1.0f);
    cpu->gemm(cpu, ta, tb, M, N, K, alpha, FC(A), lda, FC(B), ldb, beta, FC(C), ldc);
    gpu->gemm(gpu, ta, tb, M, N, K, alpha, FG(A), lda, FG(B), ldb, beta, FG(C), ldc);
    char what[96];
    snprintf(what, sizeof what, "gemm ta=%d tb=%d M=%d N=%d K=%d beta=%g", ta, tb, M, N, K, beta);
    cmp_f(what, C, gemm_atol, gemm_rtol);
    dfree(&A);
    dfree(&B);
    dfree(&C);
}

static void test_gemm(void) {
    uint64_t seed = 100;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            gemm_case(ta, tb, 37, 29, 53, 0.7f, 0.3f, 3, seed += 3);
            gemm_case(ta, tb, 37, 29, 53, 1.0f, 0.0f, 0, seed += 3);
            gemm_case(ta, tb, 200, 130, 300, 1.0f, 1.0f, 1, seed += 3);
            gemm_case(ta, tb, 16, 1, 40, 1.0f, 0.0f, 0, seed += 3); /* N = 1, ldb = 1 */
            gemm_case(ta, tb, 1, 33, 20, 2.0f, 0.5f, 0, seed += 3); /* M = 1 */
        }
    gemm_case(0, 0, 13, 11, 0, 1.0f, 0.5f, 1, seed += 3); /* K = 0: C = beta C */
    gemm_case(0, 1, 13, 11, 0, 1.0f, 0.0f, 1, seed += 3); /* K = 0, beta = 0: C = 0 */
}

static void test_gemm_batched(void) {
    uint64_t seed = 200;
    const int M = 21, N = 17, K = 30, batch = 5, pad = 2;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
            long sa = (long)(ta ? K : M) * lda + 5, sb = (long)(tb ? N : K) * ldb + 3,
                 sc = (long)M * ldc + 7;
            dbuf A = drandn((size_t)sa * batch, seed++, 1.0f);
            dbuf B = drandn((size_t)sb * batch, seed++, 1.0f);
            dbuf C = drandn((size_t)sc * batch, seed++, 1.0f);
            cpu->gemm_batched(cpu, ta, tb, M, N, K, 0.8f, FC(A), lda, sa, FC(B), ldb, sb, 0.5f,
                              FC(C), ldc, sc, batch);
            gpu->gemm_batched(gpu, ta, tb, M, N, K, 0.8f, FG(A), lda, sa, FG(B), ldb, sb, 0.5f,
                              FG(C), ldc, sc, batch);
            char what[64];
            snprintf(what, sizeof what, "gemm_batched ta=%d tb=%d", ta, tb);
            cmp_f(what, C, gemm_atol, gemm_rtol);
            dfree(&A);
            dfree(&B);
            dfree(&C);
        }
}

static void test_axpby(void) {
    const size_t n = 100003;
    dbuf x = drandn(n, 300, 1.0f), y = drandn(n, 301, 1.0f);
    cpu->axpby(cpu, n, 0.3f, FC(x), -1.7f, FC(y));
    gpu->axpby(gpu, n, 0.3f, FG(x), -1.7f, FG(y));
    cmp_f("axpby", y, EW_ATOL, EW_RTOL);
    cpu->axpby(cpu, n, 0.5f, FC(y), 0.25f, FC(y)); /* x == y */
    gpu->axpby(gpu, n, 0.5f, FG(y), 0.25f, FG(y));
    cmp_f("axpby in place", y, EW_ATOL, EW_RTOL);
    dfree(&x);
    dfree(&y);
}

static void test_add_bias(void) {
    const int rows = 33, cols = 45, ldx = 50;
    dbuf x = drandn((size_t)rows * ldx, 310, 1.0f), b = drandn(cols, 311, 1.0f);
    cpu->add_bias(cpu, FC(x), ldx, FC(b), rows, cols);
    gpu->add_bias(gpu, FG(x), ldx, FG(b), rows, cols);
    cmp_f("add_bias", x, EW_ATOL, EW_RTOL);
    dfree(&x);
    dfree(&b);
}

static void test_bias_grad(void) {
    const int rows = 1000, cols = 70, ldy = 75;
    dbuf dy = drandn((size_t)rows * ldy, 320, 1.0f), db = drandn(cols, 321, 1.0f);
    cpu->bias_grad(cpu, FC(db), FC(dy), ldy, rows, cols);
    gpu->bias_grad(gpu, FG(db), FG(dy), ldy, rows, cols);
    cmp_f("bias_grad", db, SUM_ATOL, SUM_RTOL);
    cpu->bias_grad(cpu, FC(db), FC(dy), ldy, 3, 5); /* a corner: fewer rows than lanes */
    gpu->bias_grad(gpu, FG(db), FG(dy), ldy, 3, 5);
    cmp_f("bias_grad small", db, SUM_ATOL, SUM_RTOL);
    dfree(&dy);
    dfree(&db);
}

static void test_ger(void) {
    const int M = 40, N = 33;
    dbuf x = drandn(M, 330, 1.0f), y = drandn(N, 331, 1.0f), A = drandn((size_t)M * N, 332, 1.0f);
    cpu->ger(cpu, M, N, 0.5f, FC(x), FC(y), FC(A));
    gpu->ger(gpu, M, N, 0.5f, FG(x), FG(y), FG(A));
    cmp_f("ger", A, EW_ATOL, EW_RTOL);
    dfree(&x);
    dfree(&y);
    dfree(&A);
}

/* ---- elementwise ---- */

static void test_act(void) {
    const size_t n = 50001;
    float *h = host_randn(n, 340, 2.0f);
    for (size_t i = 0; i < n; i += 97)
        h[i] = 0.0f; /* relu's kink */
    dbuf x = dput(h, n * sizeof *h);
    free(h);
    for (int act = 0; act < 2; act++) {
        const char *nm = act == IISAN_ACT_GELU ? "gelu" : "relu";
        char what[64];
        dbuf y = dput(NULL, n * sizeof(float)), dy = drandn(n, 341 + act, 1.0f);
        dbuf dx = dput(NULL, n * sizeof(float));
        cpu->act_fwd(cpu, act, FC(y), FC(x), n);
        gpu->act_fwd(gpu, act, FG(y), FG(x), n);
        snprintf(what, sizeof what, "%s fwd", nm);
        cmp_f(what, y, EW_ATOL, EW_RTOL);
        cpu->act_bwd(cpu, act, FC(dx), FC(dy), FC(x), n);
        gpu->act_bwd(gpu, act, FG(dx), FG(dy), FG(x), n);
        snprintf(what, sizeof what, "%s bwd", nm);
        cmp_f(what, dx, EW_ATOL, EW_RTOL);
        cpu->act_bwd(cpu, act, FC(dy), FC(dy), FC(x), n); /* dx == dy */
        gpu->act_bwd(gpu, act, FG(dy), FG(dy), FG(x), n);
        snprintf(what, sizeof what, "%s bwd in place", nm);
        cmp_f(what, dy, EW_ATOL, EW_RTOL);
        cpu->copy(cpu, FC(y), FC(x), n * sizeof(float));
        gpu->copy(gpu, FG(y), FG(x), n * sizeof(float));
        cpu->act_fwd(cpu, act, FC(y), FC(y), n); /* y == x */
        gpu->act_fwd(gpu, act, FG(y), FG(y), n);
        snprintf(what, sizeof what, "%s fwd in place", nm);
        cmp_f(what, y, EW_ATOL, EW_RTOL);
        dfree(&y);
        dfree(&dy);
        dfree(&dx);
    }
    dfree(&x);
}

static void test_dropout(void) {
    const size_t n = 200003;
    const float ps[] = {0.1f, 0.5f, 0.0f, 1.0f};
    const uint64_t seeds[] = {42, 0xdeadbeefcafef00dull, 7, 9};
    float *h = host_randn(n, 350, 1.0f);
    for (size_t i = 0; i < n; i++) /* never 0 (zeros are drops); both signs (-0 for a drop) */
        h[i] = (i & 1 ? -1.0f : 1.0f) * (1.0f + fabsf(h[i]));
    dbuf x = dput(h, n * sizeof *h);
    float *hy = xmalloc(n * sizeof *hy);
    for (int k = 0; k < 4; k++) {
        float p = ps[k];
        char what[64];
        dbuf y = dput(NULL, n * sizeof(float));
        cpu->dropout_fwd(cpu, FC(y), FC(x), n, p, seeds[k]);
        gpu->dropout_fwd(gpu, FG(y), FG(x), n, p, seeds[k]);
        snprintf(what, sizeof what, "dropout fwd p=%g", p);
        cmp_bits(what, y);
        /* the mask itself, against kernels/rng.h */
        gpu->download(gpu, hy, y.g, y.bytes);
        size_t wrong = 0;
        for (size_t i = 0; i < n; i++) {
            int keep = p <= 0.0f || (p < 1.0f && iisan_rng_uniform(seeds[k], i) >= p);
            wrong += keep != (hy[i] != 0.0f);
        }
        CHECKF(wrong == 0, "dropout p=%g: %zu elements with the wrong mask", p, wrong);
        /* backward in place: the same mask again */
        cpu->dropout_bwd(cpu, FC(y), FC(y), n, p, seeds[k]);
        gpu->dropout_bwd(gpu, FG(y), FG(y), n, p, seeds[k]);
        snprintf(what, sizeof what, "dropout bwd in place p=%g", p);
        cmp_bits(what, y);
        dfree(&y);
    }
    free(h);
    free(hy);
    dfree(&x);
}

/* ---- gates ---- */

static void test_gate(void) {
    const size_t n = 30001;
    const float temp = 0.1f;
    dbuf p = dscalar(0.03f);
    dbuf a = drandn(n, 360, 1.0f), b = drandn(n, 361, 1.0f), c = drandn(n, 362, 1.0f);
    dbuf out = dput(NULL, n * sizeof(float));
    /* forward: every combination of present operands; (a, b, c) index bits */
    for (int m = 0; m < 8; m++) {
        const float *ac = m & 1 ? FC(a) : NULL, *bc = m & 2 ? FC(b) : NULL,
                    *cc = m & 4 ? FC(c) : NULL;
        const float *ag = m & 1 ? FG(a) : NULL, *bg = m & 2 ? FG(b) : NULL,
                    *cg = m & 4 ? FG(c) : NULL;
        cpu->gate_fwd(cpu, FC(out), cc, ac, bc, FC(p), temp, n);
        gpu->gate_fwd(gpu, FG(out), cg, ag, bg, FG(p), temp, n);
        char what[64];
        snprintf(what, sizeof what, "gate_fwd a=%d b=%d c=%d", m & 1, !!(m & 2), !!(m & 4));
        cmp_f(what, out, EW_ATOL, EW_RTOL);
    }
    cpu->gate_fwd(cpu, FC(c), FC(c), FC(a), FC(b), FC(p), temp, n); /* out == c */
    gpu->gate_fwd(gpu, FG(c), FG(c), FG(a), FG(b), FG(p), temp, n);
    cmp_f("gate_fwd out == c", c, EW_ATOL, EW_RTOL);

    /* the fused gate + residual + bias: out as gate_fwd's, h = out + bias per row */
    {
        const int cols = 97, rows = (int)(n / cols);
        dbuf bias = drandn(cols, 364, 1.0f), h = dput(NULL, n * sizeof(float));
        for (int m = 0; m < 8; m++) {
            const float *ac = m & 1 ? FC(a) : NULL, *bc = m & 2 ? FC(b) : NULL,
                        *cc = m & 4 ? FC(c) : NULL;
            const float *ag = m & 1 ? FG(a) : NULL, *bg = m & 2 ? FG(b) : NULL,
                        *cg = m & 4 ? FG(c) : NULL;
            cpu->gate_bias_fwd(cpu, FC(out), FC(h), cc, ac, bc, FC(p), temp, FC(bias), rows, cols);
            gpu->gate_bias_fwd(gpu, FG(out), FG(h), cg, ag, bg, FG(p), temp, FG(bias), rows, cols);
            char what[64];
            snprintf(what, sizeof what, "gate_bias_fwd out a=%d b=%d c=%d", m & 1, !!(m & 2),
                     !!(m & 4));
            cmp_f(what, out, EW_ATOL, EW_RTOL);
            snprintf(what, sizeof what, "gate_bias_fwd h a=%d b=%d c=%d", m & 1, !!(m & 2),
                     !!(m & 4));
            cmp_f(what, h, EW_ATOL, EW_RTOL);
        }
        dfree(&bias);
        dfree(&h);
    }

    /* backward: dp accumulates onto 0.25; da / db each present or NULL; a / b each present
     * or NULL */
    dbuf dout = drandn(n, 363, 1.0f), da = dput(NULL, n * sizeof(float)),
         db = dput(NULL, n * sizeof(float));
    for (int m = 0; m < 4; m++) {
        dbuf dp = dscalar(0.25f);
        const float *ac = m & 1 ? NULL : FC(a), *bc = m & 2 ? NULL : FC(b);
        const float *ag = m & 1 ? NULL : FG(a), *bg = m & 2 ? NULL : FG(b);
        cpu->gate_bwd(cpu, FC(da), m == 3 ? NULL : FC(db), FC(dp), FC(dout), ac, bc, FC(p), temp,
                      n);
        gpu->gate_bwd(gpu, FG(da), m == 3 ? NULL : FG(db), FG(dp), FG(dout), ag, bg, FG(p), temp,
                      n);
        char what[64];
        snprintf(what, sizeof what, "gate_bwd dp (a=%d b=%d)", !(m & 1), !(m & 2));
        cmp_f(what, dp, SUM_ATOL, SUM_RTOL);
        snprintf(what, sizeof what, "gate_bwd da (a=%d b=%d)", !(m & 1), !(m & 2));
        cmp_f(what, da, EW_ATOL, EW_RTOL);
        snprintf(what, sizeof what, "gate_bwd db (a=%d b=%d)", !(m & 1), !(m & 2));
        cmp_f(what, db, EW_ATOL, EW_RTOL);
        dfree(&dp);
    }
    /* both gradients skipped: only dp */
    dbuf dp = dscalar(-1.0f);
    cpu->gate_bwd(cpu, NULL, NULL, FC(dp), FC(dout), FC(a), FC(b), FC(p), temp, n);
    gpu->gate_bwd(gpu, NULL, NULL, FG(dp), FG(dout), FG(a), FG(b), FG(p), temp, n);
    cmp_f("gate_bwd dp only", dp, SUM_ATOL, SUM_RTOL);
    dfree(&dp);
    /* gate_bwd_mix: gate_bwd's outputs and the forward's mix again, every NULL c / a / b */
    dbuf mix = dput(NULL, n * sizeof(float));
    for (int m = 0; m < 8; m++) {
        dbuf mdp = dscalar(0.5f);
        const float *cc = m & 1 ? FC(c) : NULL, *ac = m & 2 ? FC(a) : NULL,
                    *bc = m & 4 ? FC(b) : NULL;
        const float *cg = m & 1 ? FG(c) : NULL, *ag = m & 2 ? FG(a) : NULL,
                    *bg = m & 4 ? FG(b) : NULL;
        cpu->gate_bwd_mix(cpu, FC(mix), FC(da), FC(db), FC(mdp), FC(dout), cc, ac, bc, FC(p), temp,
                          n);
        gpu->gate_bwd_mix(gpu, FG(mix), FG(da), FG(db), FG(mdp), FG(dout), cg, ag, bg, FG(p), temp,
                          n);
        const char *name[] = {"out", "dp", "da", "db"};
        dbuf *got[] = {&mix, &mdp, &da, &db};
        for (int o = 0; o < 4; o++) {
            char what[64];
            snprintf(what, sizeof what, "gate_bwd_mix %s (c=%d a=%d b=%d)", name[o], m & 1,
                     !!(m & 2), !!(m & 4));
            cmp_f(what, *got[o], o == 1 ? SUM_ATOL : EW_ATOL, o == 1 ? SUM_RTOL : EW_RTOL);
        }
        dfree(&mdp);
    }
    dfree(&mix);
    dfree(&p);
    dfree(&a);
    dfree(&b);
    dfree(&c);
    dfree(&out);
    dfree(&dout);
    dfree(&da);
    dfree(&db);
}

/* ---- LayerNorm ---- */

static void layernorm_case(int rows, int cols, uint64_t seed) {
    const float eps = 1e-6f;
    char what[96];
    dbuf x = drandn((size_t)rows * cols, seed, 2.0f), g = drandn(cols, seed + 1, 1.0f),
         b = drandn(cols, seed + 2, 1.0f);
    dbuf y = dput(NULL, (size_t)rows * cols * sizeof(float));
    dbuf mean = dput(NULL, rows * sizeof(float)), rstd = dput(NULL, rows * sizeof(float));
    cpu->layernorm_fwd(cpu, FC(y), FC(mean), FC(rstd), FC(x), FC(g), FC(b), rows, cols, eps);
    gpu->layernorm_fwd(gpu, FG(y), FG(mean), FG(rstd), FG(x), FG(g), FG(b), rows, cols, eps);
    snprintf(what, sizeof what, "layernorm fwd %dx%d y", rows, cols);
    cmp_f(what, y, ROW_ATOL, ROW_RTOL);
    snprintf(what, sizeof what, "layernorm fwd %dx%d mean", rows, cols);
    cmp_f(what, mean, ROW_ATOL, ROW_RTOL);
    snprintf(what, sizeof what, "layernorm fwd %dx%d rstd", rows, cols);
    cmp_f(what, rstd, ROW_ATOL, ROW_RTOL);

    dbuf dy = drandn((size_t)rows * cols, seed + 3, 1.0f);
    dbuf dx = dput(NULL, (size_t)rows * cols * sizeof(float));
    dbuf dg = drandn(cols, seed + 4, 1.0f), db = drandn(cols, seed + 5, 1.0f);
    cpu->layernorm_bwd(cpu, FC(dx), FC(dg), FC(db), FC(dy), FC(x), FC(mean), FC(rstd), FC(g), rows,
                       cols);
    gpu->layernorm_bwd(gpu, FG(dx), FG(dg), FG(db), FG(dy), FG(x), FG(mean), FG(rstd), FG(g), rows,
                       cols);
    snprintf(what, sizeof what, "layernorm bwd %dx%d dx", rows, cols);
    cmp_f(what, dx, ROW_ATOL, ROW_RTOL);
    snprintf(what, sizeof what, "layernorm bwd %dx%d dg", rows, cols);
    cmp_f(what, dg, SUM_ATOL, SUM_RTOL);
    snprintf(what, sizeof what, "layernorm bwd %dx%d db", rows, cols);
    cmp_f(what, db, SUM_ATOL, SUM_RTOL);
    /* dx == dy */
    cpu->layernorm_bwd(cpu, FC(dy), FC(dg), FC(db), FC(dy), FC(x), FC(mean), FC(rstd), FC(g), rows,
                       cols);
    gpu->layernorm_bwd(gpu, FG(dy), FG(dg), FG(db), FG(dy), FG(x), FG(mean), FG(rstd), FG(g), rows,
                       cols);
    snprintf(what, sizeof what, "layernorm bwd %dx%d in place dx", rows, cols);
    cmp_f(what, dy, ROW_ATOL, ROW_RTOL);
    snprintf(what, sizeof what, "layernorm bwd %dx%d in place dg", rows, cols);
    cmp_f(what, dg, SUM_ATOL, SUM_RTOL);
    dbuf *all[] = {&x, &g, &b, &y, &mean, &rstd, &dy, &dx, &dg, &db};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        dfree(all[i]);
}

static void test_layernorm(void) {
    layernorm_case(77, 64, 400);
    layernorm_case(5, 300, 410); /* more columns than threads */
    layernorm_case(700, 13, 420);
}

/* ---- softmax rows (the encoders' attention) ---- */

static void softmax_case(int R, int len, int per, uint64_t seed) {
    char what[96];
    dbuf s = drandn((size_t)R * len, seed, 3.0f);
    int nm = (R + per - 1) / per;
    int *hm = xmalloc((size_t)nm * len * sizeof *hm);
    for (int m = 0; m < nm; m++) /* every key; a padded tail; none; random */
        for (int j = 0; j < len; j++)
            hm[(size_t)m * len + j] =
                m % 4 == 0   ? 1
                : m % 4 == 1 ? j < len - len / 3
                : m % 4 == 2 ? 0
                             : (int)(iisan_rng_u64(seed + 1, (uint64_t)m * len + j) & 1);
    dbuf mk = dput(hm, (size_t)nm * len * sizeof *hm);
    free(hm);
    cpu->softmax_rows(cpu, FC(s), R, len, IC(mk), per);
    gpu->softmax_rows(gpu, FG(s), R, len, IG(mk), per);
    snprintf(what, sizeof what, "softmax_rows R=%d len=%d masked", R, len);
    cmp_f(what, s, ROW_ATOL, ROW_RTOL);
    dbuf t = drandn((size_t)R * len, seed + 2, 3.0f);
    cpu->softmax_rows(cpu, FC(t), R, len, NULL, 1);
    gpu->softmax_rows(gpu, FG(t), R, len, NULL, 1);
    snprintf(what, sizeof what, "softmax_rows R=%d len=%d", R, len);
    cmp_f(what, t, ROW_ATOL, ROW_RTOL);
    dfree(&s);
    dfree(&mk);
    dfree(&t);
}

static void test_softmax_rows(void) {
    softmax_case(24, 30, 6, 560);   /* BERT: n * heads * rows, 30 tokens */
    softmax_case(12, 197, 12, 570); /* ViT-B/16: 197 tokens */
    softmax_case(3, 1, 1, 580);
}

/* ---- attention ---- */

static void attention_case(int B, int n, int H, int dh, float p, uint64_t seed) {
    const int d = H * dh;
    char what[96];
    /* masks: full; left padding of n/2; all padding; a single real last position; then
     * random */
    float *hm = xmalloc((size_t)B * n * sizeof *hm);
    for (int b = 0; b < B; b++)
        for (int j = 0; j < n; j++) {
            float v;
            switch (b % 5) {
            case 0: v = 1.0f; break;
            case 1: v = j >= n / 2; break;
            case 2: v = 0.0f; break;
            case 3: v = j == n - 1; break;
            default: v = (iisan_rng_u64(seed + 9, (uint64_t)b * n + j) & 3) != 0; break;
            }
            hm[(size_t)b * n + j] = v;
        }
    dbuf mask = dput(hm, (size_t)B * n * sizeof *hm);
    free(hm);
    dbuf qkv = drandn((size_t)B * n * 3 * d, seed, 1.0f);
    dbuf out = dput(NULL, (size_t)B * n * d * sizeof(float));
    dbuf probs = dput(NULL, (size_t)B * H * n * n * sizeof(float));
    cpu->attention_fwd(cpu, FC(out), FC(probs), FC(qkv), FC(mask), B, n, H, dh, p, seed + 1);
    gpu->attention_fwd(gpu, FG(out), FG(probs), FG(qkv), FG(mask), B, n, H, dh, p, seed + 1);
    snprintf(what, sizeof what, "attention fwd B=%d n=%d H=%d dh=%d p=%g probs", B, n, H, dh, p);
    cmp_f(what, probs, ROW_ATOL, ROW_RTOL);
    snprintf(what, sizeof what, "attention fwd B=%d n=%d H=%d dh=%d p=%g out", B, n, H, dh, p);
    cmp_f(what, out, ROW_ATOL, ROW_RTOL);

    dbuf dout = drandn((size_t)B * n * d, seed + 2, 1.0f);
    dbuf dqkv = drandn((size_t)B * n * 3 * d, seed + 3, 1.0f); /* overwritten: garbage in */
    cpu->attention_bwd(cpu, FC(dqkv), FC(dout), FC(qkv), FC(probs), B, n, H, dh, p, seed + 1);
    gpu->attention_bwd(gpu, FG(dqkv), FG(dout), FG(qkv), FG(probs), B, n, H, dh, p, seed + 1);
    snprintf(what, sizeof what, "attention bwd B=%d n=%d H=%d dh=%d p=%g dqkv", B, n, H, dh, p);
    cmp_f(what, dqkv, ROW_ATOL, ROW_RTOL);
    dbuf *all[] = {&mask, &qkv, &out, &probs, &dout, &dqkv};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        dfree(all[i]);
}

static void test_attention(void) {
    attention_case(7, 10, 2, 32, 0.0f, 500);
    attention_case(7, 10, 2, 32, 0.1f, 510);
    attention_case(5, 64, 2, 16, 0.2f, 520); /* the longest sequence the kernels take */
    attention_case(3, 1, 1, 8, 0.5f, 530);
    attention_case(2, 33, 4, 5, 0.1f, 540);
}

/* ---- in-batch cross-entropy ---- */

static void ce_case(int Q, int C, int U, uint64_t seed) {
    char what[64];
    dbuf logits = drandn((size_t)Q * C, seed, 3.0f), logpop = drandn(C, seed + 1, 1.0f);
    int *ci = xmalloc((size_t)C * sizeof *ci);
    for (int c = 0; c < C; c++)
        ci[c] = c % 11 == 5 ? 0 : 1 + c; /* some padding slots */
    dbuf cand = dput(ci, (size_t)C * sizeof *ci);
    free(ci);
    unsigned char *um = xmalloc((size_t)U * C);
    for (size_t i = 0; i < (size_t)U * C; i++)
        um[i] = iisan_rng_u64(seed + 2, i) % 5 == 0;
    dbuf umask = dput(um, (size_t)U * C);
    free(um);
    dbuf quser = drandi(Q, seed + 3, 0, U - 1), qtarget = drandi(Q, seed + 4, 0, C - 1);
    dbuf loss = dscalar(123.0f);
    cpu->inbatch_ce(cpu, FC(logits), FC(loss), FC(logpop), IC(cand), umask.c, IC(quser),
                    IC(qtarget), Q, C);
    gpu->inbatch_ce(gpu, FG(logits), FG(loss), FG(logpop), IG(cand), umask.g, IG(quser),
                    IG(qtarget), Q, C);
    snprintf(what, sizeof what, "inbatch_ce Q=%d C=%d loss", Q, C);
    cmp_f(what, loss, ROW_ATOL, ROW_RTOL);
    snprintf(what, sizeof what, "inbatch_ce Q=%d C=%d dlogits", Q, C);
    cmp_f(what, logits, 1e-9, ROW_RTOL);
    dbuf *all[] = {&logits, &logpop, &cand, &umask, &quser, &qtarget, &loss};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        dfree(all[i]);
}

static void test_inbatch_ce(void) {
    ce_case(50, 60, 7, 600);
    ce_case(300, 2000, 40, 610);
    ce_case(3, 1, 2, 620);
}

/* ---- Adam ---- */

static void test_adam(void) {
    const size_t n = 100003;
    dbuf w = drandn(n, 700, 1.0f), m = dput(NULL, n * sizeof(float)),
         v = dput(NULL, n * sizeof(float));
    for (int t = 1; t <= 3; t++) { /* the last step also zeroes the gradient */
        dbuf g = drandn(n, 700 + t, 0.1f);
        cpu->adam(cpu, FC(w), FC(g), FC(m), FC(v), n, 1e-3f, 0.9f, 0.999f, 1e-8f, t, t == 3);
        gpu->adam(gpu, FG(w), FG(g), FG(m), FG(v), n, 1e-3f, 0.9f, 0.999f, 1e-8f, t, t == 3);
        if (t == 3) {
            size_t nz = 0;
            for (size_t i = 0; i < n; i++)
                nz += FC(g)[i] != 0.0f;
            CHECKF(nz == 0, "adam zero_g: %zu gradient elements left on the CPU", nz);
            cmp_f("adam zero_g g", g, 0, 0);
        }
        dfree(&g);
    }
    cmp_f("adam w", w, EW_ATOL, EW_RTOL);
    cmp_f("adam m", m, EW_ATOL, EW_RTOL);
    cmp_f("adam v", v, EW_ATOL, EW_RTOL);
    dfree(&w);
    dfree(&m);
    dfree(&v);
}

/* ---- data movement ---- */

static void test_gather_half(void) {
    /* every one of the 65536 halves, as 256 rows of 256, gathered in a shuffled order with
     * NULL rows between them */
    const int cols = 256, nsrc = 256, n = 300;
    uint16_t *hh = xmalloc((size_t)nsrc * cols * sizeof *hh);
    for (size_t i = 0; i < (size_t)nsrc * cols; i++)
        hh[i] = (uint16_t)i;
    dbuf src = dput(hh, (size_t)nsrc * cols * sizeof *hh);
    free(hh);
    const uint16_t **rc = xmalloc(n * sizeof *rc), **rg = xmalloc(n * sizeof *rg);
    for (int i = 0; i < n; i++) {
        int s = (int)((uint64_t)i * 97 % 301); /* 256..300: NULL */
        rc[i] = s < nsrc ? (const uint16_t *)src.c + (size_t)s * cols : NULL;
        rg[i] = s < nsrc ? (const uint16_t *)src.g + (size_t)s * cols : NULL;
    }
    dbuf dst = drandn((size_t)n * cols, 800, 1.0f);
    cpu->gather_half(cpu, FC(dst), rc, n, cols);
    gpu->gather_half(gpu, FG(dst), rg, n, cols);
    cmp_bits("gather_half", dst);
    /* again with fewer, shorter rows (the device copy of the table is reused) */
    cpu->gather_half(cpu, FC(dst), rc + 3, 7, 5);
    gpu->gather_half(gpu, FG(dst), rg + 3, 7, 5);
    cmp_bits("gather_half again", dst);
    free(rc);
    free(rg);
    dfree(&src);
    dfree(&dst);
}

static void test_gather_scatter(void) {
    const int nsrc = 50, cols = 24, n = 80;
    dbuf table = drandn((size_t)nsrc * cols, 810, 1.0f);
    dbuf idx = drandi(n, 811, 0, nsrc - 1); /* repeats */
    dbuf rows = drandn((size_t)n * cols, 812, 1.0f);
    cpu->gather_rows(cpu, FC(rows), FC(table), IC(idx), n, cols);
    gpu->gather_rows(gpu, FG(rows), FG(table), IG(idx), n, cols);
    cmp_bits("gather_rows", rows);
    dbuf src = drandn((size_t)n * cols, 813, 1.0f);
    cpu->scatter_add_rows(cpu, FC(table), FC(src), IC(idx), n, cols);
    gpu->scatter_add_rows(gpu, FG(table), FG(src), IG(idx), n, cols);
    cmp_f("scatter_add_rows", table, SUM_ATOL, SUM_RTOL);
    dfree(&table);
    dfree(&idx);
    dfree(&rows);
    dfree(&src);
}

/* ---- evaluation ---- */

/* scores with many ties (quarters), some -inf and NaN; exclusions with 0s, repeats, the
 * target itself and out-of-range entries */
static dbuf eval_scores(int R, int N, uint64_t seed) {
    float *h = host_randn((size_t)R * N, seed, 2.0f);
    for (size_t i = 0; i < (size_t)R * N; i++) {
        h[i] = roundf(h[i] * 4.0f) / 4.0f;
        if (i % 101 == 7) h[i] = -INFINITY;
        if (i % 157 == 11) h[i] = NAN;
    }
    dbuf d = dput(h, (size_t)R * N * sizeof *h);
    free(h);
    return d;
}

static dbuf eval_excl(int R, int N, int ne, const int *target, uint64_t seed) {
    int *h = xmalloc((size_t)R * ne * sizeof *h);
    for (int r = 0; r < R; r++)
        for (int e = 0; e < ne; e++) {
            uint64_t u = iisan_rng_u64(seed, (uint64_t)r * ne + e);
            int v = (int)(u % (uint64_t)N);
            if (u % 7 == 0) v = 0;                                   /* ignored */
            if (u % 11 == 0 && e > 0) v = h[(size_t)r * ne + e - 1]; /* repeat */
            if (u % 13 == 0 && target) v = target[r];                /* the target */
            if (u % 17 == 0) v = N + 3;                              /* out of range */
            h[(size_t)r * ne + e] = v;
        }
    dbuf d = dput(h, (size_t)R * ne * sizeof *h);
    free(h);
    return d;
}

static void test_rank_targets(void) {
    const int R = 40, N = 500, ne = 12;
    dbuf scores = eval_scores(R, N, 900);
    int *ht = xmalloc(R * sizeof *ht);
    for (int r = 0; r < R; r++)
        ht[r] = 1 + (int)(iisan_rng_u64(901, r) % (N - 1));
    ht[0] = 7;   /* scores[0, 7] is -inf */
    ht[1] = 139; /* scores[1, 139] (element 639) is NaN: nothing ranks above it */
    dbuf target = dput(ht, R * sizeof *ht);
    dbuf excl = eval_excl(R, N, ne, ht, 902);
    dbuf rank = dput(NULL, R * sizeof(int));
    cpu->rank_targets(cpu, IC(rank), FC(scores), R, N, IC(target), IC(excl), ne);
    gpu->rank_targets(gpu, IG(rank), FG(scores), R, N, IG(target), IG(excl), ne);
    cmp_bits("rank_targets", rank);
    cpu->rank_targets(cpu, IC(rank), FC(scores), R, N, IC(target), NULL, 0);
    gpu->rank_targets(gpu, IG(rank), FG(scores), R, N, IG(target), NULL, 0);
    cmp_bits("rank_targets no exclusions", rank);
    free(ht);
    dfree(&scores);
    dfree(&target);
    dfree(&excl);
    dfree(&rank);
}

static void topk_case(int R, int N, int k, int ne, uint64_t seed) {
    char what[64];
    dbuf scores = eval_scores(R, N, seed);
    dbuf excl = eval_excl(R, N, ne > 0 ? ne : 1, NULL, seed + 1);
    dbuf idx = dput(NULL, (size_t)R * k * sizeof(int)), sc = dput(NULL, (size_t)R * k * 4);
    cpu->topk(cpu, IC(idx), FC(sc), FC(scores), R, N, k, ne > 0 ? IC(excl) : NULL, ne);
    gpu->topk(gpu, IG(idx), FG(sc), FG(scores), R, N, k, ne > 0 ? IG(excl) : NULL, ne);
    snprintf(what, sizeof what, "topk R=%d N=%d k=%d ne=%d idx", R, N, k, ne);
    cmp_bits(what, idx);
    snprintf(what, sizeof what, "topk R=%d N=%d k=%d ne=%d scores", R, N, k, ne);
    cmp_bits(what, sc);
    dfree(&scores);
    dfree(&excl);
    dfree(&idx);
    dfree(&sc);
}

static void test_topk(void) {
    topk_case(30, 700, 10, 12, 950);
    topk_case(30, 700, 1000, 12, 960); /* fewer eligible columns than k: -1 / -inf tails */
    topk_case(5, 5000, 100, 0, 970);
    topk_case(4, 5, 8, 3, 980);
    topk_case(3, 100000, 20, 50, 990); /* 12.5 KiB of eligibility bitmap */
    topk_case(2, 500000, 5, 10, 995);  /* 62.5 KiB: over the default shared memory */
}

static void test_no_errors(void) { check_no_cuda_errors(); }
#endif /* IISAN_CUDA */

int main(int argc, char **argv) {
    TEST_MAIN_BEGIN(argc, argv);
#ifdef IISAN_CUDA
    char err[512];
    gpu = iisan_backend_cuda(0, err, sizeof err);
    if (!gpu) {
        if (iisan_cuda_available()) { /* a device is there: failing to use it is a failure */
            CHECKF(gpu != NULL, "iisan_backend_cuda: %s", err);
        } else {
            fprintf(stderr, "skipped: %s\n", err); /* "no CUDA device (...)" */
        }
        TEST_MAIN_END();
    }
    cpu = iisan_backend_cpu(1);
    if (!cpu) {
        fprintf(stderr, "iisan_backend_cpu failed\n");
        return 2;
    }
    const char *tf = getenv("IISAN_CUDA_TF32");
    if (tf && strcmp(tf, "1") == 0) {
        gemm_atol = 1e-1;
        gemm_rtol = 1e-2;
    }
    RUN(test_table);
    RUN(test_memory);
    RUN(test_gemm);
    RUN(test_gemm_batched);
    RUN(test_axpby);
    RUN(test_add_bias);
    RUN(test_bias_grad);
    RUN(test_ger);
    RUN(test_act);
    RUN(test_dropout);
    RUN(test_gate);
    RUN(test_layernorm);
    RUN(test_softmax_rows);
    RUN(test_attention);
    RUN(test_inbatch_ce);
    RUN(test_adam);
    RUN(test_gather_half);
    RUN(test_gather_scatter);
    RUN(test_rank_targets);
    RUN(test_topk);
    RUN(test_no_errors);
    cpu->destroy(cpu);
    gpu->destroy(gpu);
#else
    fprintf(stderr, "skipped: no CUDA device (built without CUDA=1)\n");
#endif
    TEST_MAIN_END();
}

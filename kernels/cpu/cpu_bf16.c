/* bf16 GEMM with fp32 accumulation on AVX512-BF16 (kernels/cpu/cpu_bf16.h).
 *
 * Both operands are packed once per call, rounded to bf16 as they are packed, as pairs of
 * consecutive k in one 32-bit word (what vdpbf16ps multiplies and adds into one fp32 lane):
 * - op(B) [K, N] pair-major, Bp[p * Np + j] = (B(2p, j), B(2p+1, j)), Np = N rounded up to NR;
 * - op(A) [M, K] row-major when ta == 0 (Ap[i * P + p], a plain conversion of each row), and
 *   when ta == 1 tile by tile (Ap[(t * P + p) * MR + i] for row t MR + i), so that a tile's
 *   words are contiguous; P = ceil(K / 2), an odd K padded with a zero.
 * The microkernel keeps an MR x NR tile of C in 24 registers, per pair p broadcasting one word
 * of op(A) per row against two vectors of op(B). K is cut into blocks of KC pairs so that a
 * panel of op(B) stays in L1; the tiles' rows are split between the threads (disjoint rows of
 * C), and so is the packing (the backend's worker pool, kernels/cpu/cpu_pool.c). */
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_bf16.h"

#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define MR 12
#define NR 32
#define KC 128 /* pairs of k per block: an NR panel of op(B) is 16 KiB */

int bf16_supported(void) {
    const char *off = getenv("IISAN_CPU_NO_BF16");
    if (off && *off && strcmp(off, "0")) return 0;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16");
}

/* ---------------------------------------------------------------- packing */

/* 32 floats of x (n of them valid, the rest zeros) as 16 pairs of bf16 */
BF16_TARGET static inline __m512i pack32(const float *x, int n) {
    __mmask16 lo = n >= 16 ? 0xffff : (__mmask16)((1u << n) - 1);
    __mmask16 hi = n >= 32 ? 0xffff : n <= 16 ? 0 : (__mmask16)((1u << (n - 16)) - 1);
    __m512 a = _mm512_maskz_loadu_ps(lo, x), b = _mm512_maskz_loadu_ps(hi, x + 16);
    return (__m512i)_mm512_cvtne2ps_pbh(b, a);
}

/* rows i0..i1-1 of X [*, K] (ld) into pair rows of P words: dst[i * P + p] */
BF16_TARGET static void pack_rows(uint32_t *dst, const float *X, int ld, int K, int P, int i0,
                                  int i1) {
    for (int i = i0; i < i1; i++) {
        const float *x = X + (size_t)i * ld;
        uint32_t *d = dst + (size_t)i * P;
        int k = 0;
        for (; k + 32 <= K; k += 32)
            _mm512_storeu_si512(d + k / 2, pack32(x + k, 32));
        if (k < K) {
            int words = (K - k + 1) / 2;
            _mm512_mask_storeu_epi32(d + k / 2, (__mmask16)((1u << words) - 1),
                                     pack32(x + k, K - k));
        }
    }
}

/* 16 floats of x (n valid) as bf16 in the low half of each 32-bit lane */
BF16_TARGET static inline __m512i half16(const float *x, int n) {
    __mmask16 m = n >= 16 ? 0xffff : (__mmask16)((1u << n) - 1);
    return _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, x)));
}

/* pairs p0..p1-1 of X [K, N] (ld): dst[p * Np + j] = (X(2p, j), X(2p+1, j)), zeros past N */
BF16_TARGET static void pack_pairs(uint32_t *dst, const float *X, int ld, int K, int N, int Np,
                                   int p0, int p1) {
    for (int p = p0; p < p1; p++) {
        const float *x0 = X + (size_t)2 * p * ld, *x1 = x0 + ld;
        int two = 2 * p + 1 < K;
        uint32_t *d = dst + (size_t)p * Np;
        for (int j = 0; j < Np; j += 16) {
            int n = N - j < 0 ? 0 : N - j;
            __m512i lo = half16(x0 + j, n);
            __m512i hi = two ? _mm512_slli_epi32(half16(x1 + j, n), 16) : _mm512_setzero_si512();
            int w = Np - j < 16 ? Np - j : 16; /* Np: a multiple of NR (B) or of MR (A) */
            _mm512_mask_storeu_epi32(d + j, (__mmask16)((1u << w) - 1), _mm512_or_si512(lo, hi));
        }
    }
}

/* tiles t0..t1-1 of op(X) = X^T for X [K, M] (ld), MR columns of X each (zeros past M), tile
 * by tile: dst[(t * P + p) * MR + i] = (X(2p, t MR + i), X(2p+1, t MR + i)) */
BF16_TARGET static void pack_tiles(uint32_t *dst, const float *X, int ld, int K, int M, int P,
                                   int t0, int t1) {
    for (int t = t0; t < t1; t++) {
        int n = M - t * MR < MR ? M - t * MR : MR;
        uint32_t *d = dst + (size_t)t * P * MR;
        for (int p = 0; p < P; p++, d += MR) {
            const float *x0 = X + (size_t)2 * p * ld + (size_t)t * MR;
            __m512i lo = half16(x0, n);
            __m512i hi =
                2 * p + 1 < K ? _mm512_slli_epi32(half16(x0 + ld, n), 16) : _mm512_setzero_si512();
            _mm512_mask_storeu_epi32(d, (__mmask16)((1u << MR) - 1), _mm512_or_si512(lo, hi));
        }
    }
}

/* the 16 x 16 words r[0..15] transposed in place: r[q] word i = the old r[i] word q */
BF16_TARGET static inline void transpose16(__m512i r[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 16; i += 2) { /* pairs of rows, word by word, within 128-bit lanes */
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int g = 0; g < 16; g += 4) { /* u[g + c]: rows g..g+3 of column 4 L + c, lane L */
        u[g] = _mm512_unpacklo_epi64(t[g], t[g + 2]);
        u[g + 1] = _mm512_unpackhi_epi64(t[g], t[g + 2]);
        u[g + 2] = _mm512_unpacklo_epi64(t[g + 1], t[g + 3]);
        u[g + 3] = _mm512_unpackhi_epi64(t[g + 1], t[g + 3]);
    }
    for (int c = 0; c < 4; c++) { /* the four row groups' lane L into column 4 L + c */
        __m512i x0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x88);
        __m512i y0 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x88);
        __m512i x1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xdd);
        __m512i y1 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xdd);
        r[c] = _mm512_shuffle_i32x4(x0, y0, 0x88);
        r[8 + c] = _mm512_shuffle_i32x4(x0, y0, 0xdd);
        r[4 + c] = _mm512_shuffle_i32x4(x1, y1, 0x88);
        r[12 + c] = _mm512_shuffle_i32x4(x1, y1, 0xdd);
    }
}

/* rows j0..j1-1 of X [N, K] (ld), that is columns of op(X) = X^T [K, N], into the pair-major
 * layout dst[p * Np + j]: 16 rows by 16 pairs at a time, converted as rows and transposed in
 * registers, so that every store is 16 consecutive words */
BF16_TARGET static void pack_cols(uint32_t *dst, const float *X, int ld, int K, int P, int Np,
                                  int j0, int j1) {
    __m512i r[16];
    for (int j = j0; j < j1; j += 16) {
        int rows = j1 - j < 16 ? j1 - j : 16;
        __mmask16 m = (__mmask16)((1u << rows) - 1);
        for (int p = 0; p < P; p += 16) {
            int k = 2 * p, nk = K - k < 32 ? K - k : 32, pairs = P - p < 16 ? P - p : 16;
            for (int i = 0; i < 16; i++)
                r[i] = i < rows ? pack32(X + (size_t)(j + i) * ld + k, nk) : _mm512_setzero_si512();
            transpose16(r);
            for (int q = 0; q < pairs; q++)
                _mm512_mask_storeu_epi32(dst + (size_t)(p + q) * Np + j, m, r[q]);
        }
    }
}

/* ---------------------------------------------------------------- the microkernel */

typedef struct {
    const uint32_t *a; /* op(A) word (i, p) at a[i * si + p * sp] */
    long si, sp;
    const uint32_t *b; /* op(B) word (p, j) at b[p * ldb + j] */
    long ldb;
} tile_in;

/* C[0..mr-1, 0..nr-1] = alpha * sum over kp pairs + (first ? beta C : C) */
BF16_TARGET static void micro(const tile_in *t, int kp, float *C, int ldc, int mr, int nr,
                              float alpha, float beta, int first) {
    __m512 c0[MR], c1[MR];
    for (int i = 0; i < MR; i++)
        c0[i] = c1[i] = _mm512_setzero_ps();
    const uint32_t *a = t->a, *b = t->b;
    const long si = t->si, sp = t->sp, ldb = t->ldb;
    for (int p = 0; p < kp; p++, a += sp, b += ldb) {
        __m512bh b0 = (__m512bh)_mm512_loadu_si512(b), b1 = (__m512bh)_mm512_loadu_si512(b + 16);
#pragma GCC unroll 12
        for (int i = 0; i < MR; i++) {
            __m512bh av = (__m512bh)_mm512_set1_epi32((int)a[i * si]);
            c0[i] = _mm512_dpbf16_ps(c0[i], av, b0);
            c1[i] = _mm512_dpbf16_ps(c1[i], av, b1);
        }
    }
    __mmask16 m0 = nr >= 16 ? 0xffff : (__mmask16)((1u << nr) - 1);
    __mmask16 m1 = nr >= 32 ? 0xffff : nr <= 16 ? 0 : (__mmask16)((1u << (nr - 16)) - 1);
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(first ? beta : 1.0f);
    for (int i = 0; i < mr; i++) {
        float *c = C + (size_t)i * ldc;
        __m512 x0 = _mm512_mul_ps(va, c0[i]), x1 = _mm512_mul_ps(va, c1[i]);
        if (!(first && beta == 0.0f)) { /* beta == 0: C is not read (it may hold NaN) */
            x0 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m0, c), x0);
            x1 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m1, c + 16), x1);
        }
        _mm512_mask_storeu_ps(c, m0, x0);
        _mm512_mask_storeu_ps(c + 16, m1, x1);
    }
}

/* ---------------------------------------------------------------- the driver */

typedef struct {
    int ta, tb, M, N, K, P, Mp, Np, lda, ldb, ldc;
    float alpha, beta;
    const float *A, *B;
    float *C;
    uint32_t *Ap, *Bp;
} job;

static void share(int n, int tid, int nth, int *lo, int *hi) {
    *lo = (int)((long)n * tid / nth);
    *hi = (int)((long)n * (tid + 1) / nth);
}

/* packing pieces [lo, hi) of NPACK: piece i packs its share of op(A) and of op(B) */
#define NPACK 16
BF16_TARGET static void job_pack(void *q, size_t lo_, size_t hi_) {
    job *g = q;
    for (int tid = (int)lo_; tid < (int)hi_; tid++) {
        int lo, hi;
        if (g->ta) { /* A [K, M]: op(A) tile by tile */
            share(g->Mp / MR, tid, NPACK, &lo, &hi);
            pack_tiles(g->Ap, g->A, g->lda, g->K, g->M, g->P, lo, hi);
        } else { /* A [M, K]; rows M..Mp-1 stay zero */
            share(g->M, tid, NPACK, &lo, &hi);
            pack_rows(g->Ap, g->A, g->lda, g->K, g->P, lo, hi);
        }
        if (g->tb) { /* B [N, K]: op(B)'s columns are B's rows, in groups of 16 */
            share((g->N + 15) / 16, tid, NPACK, &lo, &hi);
            pack_cols(g->Bp, g->B, g->ldb, g->K, g->P, g->Np, 16 * lo,
                      16 * hi < g->N ? 16 * hi : g->N);
        } else {
            share(g->P, tid, NPACK, &lo, &hi);
            pack_pairs(g->Bp, g->B, g->ldb, g->K, g->N, g->Np, lo, hi);
        }
    }
}

/* the tiles [t0, t1) of MR rows of C */
BF16_TARGET static void job_compute(void *q, size_t t0, size_t t1) {
    job *g = q;
    for (int pc = 0; pc < g->P; pc += KC) {
        int kp = g->P - pc < KC ? g->P - pc : KC;
        for (int j = 0; j < g->N; j += NR) {
            tile_in t = {.b = g->Bp + (size_t)pc * g->Np + j, .ldb = g->Np};
            for (int ti = (int)t0; ti < (int)t1; ti++) {
                int i = ti * MR;
                if (g->ta)
                    t.a = g->Ap + ((size_t)ti * g->P + pc) * MR, t.si = 1, t.sp = MR;
                else
                    t.a = g->Ap + (size_t)i * g->P + pc, t.si = g->P, t.sp = 1;
                int mr = g->M - i < MR ? g->M - i : MR, nr = g->N - j < NR ? g->N - j : NR;
                if (mr > 0)
                    micro(&t, kp, g->C + (size_t)i * g->ldc + j, g->ldc, mr, nr, g->alpha, g->beta,
                          pc == 0);
            }
        }
    }
}

/* the calling thread's packing buffer, kept between calls (freed when the thread exits) */
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
typedef struct {
    void *p;
    size_t cap;
} scratch;

static void scratch_free(void *q) {
    scratch *s = q;
    free(s->p);
    free(s);
}

static void scratch_init(void) { pthread_key_create(&scratch_key, scratch_free); }

static void *scratch_get(size_t bytes) {
    pthread_once(&scratch_once, scratch_init);
    scratch *s = pthread_getspecific(scratch_key);
    if (!s) {
        if (!(s = calloc(1, sizeof *s))) return NULL;
        if (pthread_setspecific(scratch_key, s)) {
            free(s);
            return NULL;
        }
    }
    if (s->cap < bytes) {
        void *p = aligned_alloc(64, (bytes + 63) / 64 * 64);
        if (!p) return NULL;
        free(s->p);
        s->p = p, s->cap = bytes;
    }
    return s->p;
}

int cpu_gemm_bf16(cpu_pool *pool, int ta, int tb, int M, int N, int K, float alpha, const float *A,
                  int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    job g = {.ta = ta,
             .tb = tb,
             .M = M,
             .N = N,
             .K = K,
             .P = (K + 1) / 2,
             .lda = lda,
             .ldb = ldb,
             .ldc = ldc,
             .alpha = alpha,
             .beta = beta,
             .A = A,
             .B = B,
             .C = C};
    g.Mp = (M + MR - 1) / MR * MR;
    g.Np = (N + NR - 1) / NR * NR;
    size_t na = (size_t)g.Mp * g.P, nb = (size_t)g.P * g.Np;
    uint32_t *buf = scratch_get((na + nb) * sizeof(uint32_t));
    if (!buf) return -1;
    g.Ap = buf, g.Bp = buf + na;
    if (!ta) /* rows M..Mp-1 of the row-major op(A) are zeros; pack_pairs zero-fills its own */
        memset(g.Ap + (size_t)M * g.P, 0, (size_t)(g.Mp - M) * g.P * sizeof(uint32_t));
    cpu_pool_for(pool, NPACK, 1, job_pack, &g);
    cpu_pool_for(pool, (size_t)g.Mp / MR, 1, job_compute, &g);
    return 0;
}

/* ---------------------------------------------------------------- the backend's slots */

/* gemm, or the bf16 GEMM in IISAN_PREC_BF16 (gemm also when its packing buffer cannot be had) */
void cpu_gemm_mixed(iisan_backend *be, int ta, int tb, int M, int N, int K, float alpha,
                    const float *A, int lda, const float *B, int ldb, float beta, float *C,
                    int ldc) {
    cpu_ctx *cx = be->ctx;
    if (cx->precision != IISAN_PREC_BF16 || M <= 0 || N <= 0 || K <= 0 || cpu_fault(be) ||
        cpu_gemm_bf16(cx->pool, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc))
        cpu_gemm(be, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

int cpu_set_precision(iisan_backend *be, int precision, char *err, size_t len) {
    cpu_ctx *cx = be->ctx;
    if (precision != IISAN_PREC_FP32 && precision != IISAN_PREC_BF16) {
        if (err && len) snprintf(err, len, "unknown precision %d", precision);
        return -1;
    }
    if (precision == IISAN_PREC_BF16 && !be->caps.bf16) {
        if (err && len)
            snprintf(err, len,
                     "bf16 needs a CPU with AVX512-BF16 (vdpbf16ps), which this one lacks%s; "
                     "use fp32",
                     getenv("IISAN_CPU_NO_BF16") ? " (IISAN_CPU_NO_BF16 is set)" : "");
        return -1;
    }
    cx->precision = precision;
    return 0;
}

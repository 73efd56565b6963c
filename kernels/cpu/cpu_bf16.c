/* bf16 GEMM with fp32 accumulation on AVX512-BF16 (kernels/cpu/cpu_bf16.h).
 *
 * The operands are packed as they are read, rounded to bf16, as pairs of consecutive k in one
 * 32-bit word (what vdpbf16ps multiplies and adds into one fp32 lane):
 * - op(B) [K, N] pair-major, word (p, j) = (B(2p, j), B(2p+1, j)), rows of Np words (N
 *   rounded up to NR, zeros past N), or of NR words for one panel of NR columns;
 * - op(A) [M, K] row-major when ta == 0 (a plain conversion of each row: word (i, p) at
 *   i * P + p), and when ta == 1 tile by tile (word (i, p) of a tile at p * MR + i), so that a
 *   tile's words are contiguous; P = ceil(K / 2), an odd K padded with a zero.
 * The microkernel keeps an MR x NR tile of C in 24 registers, per pair p broadcasting one word
 * of op(A) per row against two vectors of op(B). K is cut into blocks of KC pairs so that a
 * panel of op(B) stays in L1. How C is shared between threads and who packs what: the driver,
 * below. */
#include <immintrin.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_bf16.h"

#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define MR 12
#define NR 32
#define AHEAD 4 /* rows of A (pairs of rows of B) prefetched ahead of the packing */
#define KC 128  /* pairs of k per block: an NR panel of op(B) is 16 KiB */

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

/* The packing reads operands that the step last touched long before (the weights, states
 * several blocks back): each loop asks for what it reads AHEAD steps later. Prefetching past
 * the end of an operand is harmless (no fault, the line is not used). */
static inline void prefetch2(const float *x, long second) {
    _mm_prefetch((const char *)x, _MM_HINT_T0);
    _mm_prefetch((const char *)(x + second), _MM_HINT_T0);
}

/* rows 0..n-1 of X [n, K] (ld) into pair rows of P words, dst[i * P + p], then rows n..rows-1
 * of zeros (the padding of the last tile) */
BF16_TARGET static void pack_rows(uint32_t *dst, const float *X, int ld, int K, int P, int n,
                                  int rows) {
    memset(dst + (size_t)n * P, 0, (size_t)(rows - n) * P * sizeof *dst);
    for (int i = 0; i < n; i++) {
        const float *x = X + (size_t)i * ld;
        uint32_t *d = dst + (size_t)i * P;
        int k = 0;
        for (; k + 32 <= K; k += 32) {
            prefetch2(x + AHEAD * ld + k, 16);
            _mm512_storeu_si512(d + k / 2, pack32(x + k, 32));
        }
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

/* the P = ceil(K / 2) pairs of X [K, n] (ld) into rows of w words (a multiple of 16, w >= n):
 * dst[p * ldd + j] = (X(2p, j), X(2p+1, j)), zeros past n */
BF16_TARGET static void pack_pairs(uint32_t *dst, long ldd, const float *X, int ld, int K, int n,
                                   int w) {
    for (int p = 0; 2 * p < K; p++) {
        const float *x0 = X + (size_t)2 * p * ld, *x1 = x0 + ld;
        int two = 2 * p + 1 < K;
        uint32_t *d = dst + (size_t)p * ldd;
        for (int j = 0; j < w; j += 16) {
            int v = n - j < 0 ? 0 : n - j;
            if (j < n) prefetch2(x0 + 2 * AHEAD * ld + j, ld);
            __m512i lo = half16(x0 + j, v);
            __m512i hi = two ? _mm512_slli_epi32(half16(x1 + j, v), 16) : _mm512_setzero_si512();
            _mm512_storeu_si512(d + j, _mm512_or_si512(lo, hi));
        }
    }
}

/* tile t of op(X) = X^T for X [K, M] (ld): MR columns of X (zeros past M), pair by pair:
 * dst[p * MR + i] = (X(2p, t MR + i), X(2p+1, t MR + i)) */
BF16_TARGET static void pack_tile(uint32_t *dst, const float *X, int ld, int K, int M, int P,
                                  int t) {
    int n = M - t * MR < MR ? M - t * MR : MR;
    for (int p = 0; p < P; p++, dst += MR) {
        const float *x0 = X + (size_t)2 * p * ld + (size_t)t * MR;
        if (2 * (p + AHEAD) + 1 < K) prefetch2(x0 + 2 * AHEAD * ld, ld);
        __m512i lo = half16(x0, n);
        __m512i hi =
            2 * p + 1 < K ? _mm512_slli_epi32(half16(x0 + ld, n), 16) : _mm512_setzero_si512();
        _mm512_mask_storeu_epi32(dst, (__mmask16)((1u << MR) - 1), _mm512_or_si512(lo, hi));
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

/* rows 0..n-1 of X [n, K] (ld), that is columns of op(X) = X^T [K, n], into rows of w words
 * (a multiple of 16, w >= n; zeros past n): dst[p * ldd + j] = (X(j, 2p), X(j, 2p+1)).
 * 16 rows by 16 pairs at a time, converted as rows and transposed in registers, so that every
 * store is 16 consecutive words */
BF16_TARGET static void pack_cols(uint32_t *dst, long ldd, const float *X, int ld, int K, int P,
                                  int n, int w) {
    __m512i r[16];
    for (int j = 0; j < w; j += 16) {
        int rows = n - j < 0 ? 0 : n - j < 16 ? n - j : 16;
        for (int p = 0; p < P; p += 16) {
            int k = 2 * p, nk = K - k < 32 ? K - k : 32, pairs = P - p < 16 ? P - p : 16;
            for (int i = 0; i < 16 && j + 16 + i < n; i++) /* the next 16 rows' block */
                prefetch2(X + (size_t)(j + 16 + i) * ld + k, nk > 16 ? 16 : 0);
            for (int i = 0; i < 16; i++)
                r[i] = i < rows ? pack32(X + (size_t)(j + i) * ld + k, nk) : _mm512_setzero_si512();
            transpose16(r);
            for (int q = 0; q < pairs; q++)
                _mm512_storeu_si512(dst + (size_t)(p + q) * ldd + j, r[q]);
        }
    }
}

/* ---------------------------------------------------------------- the microkernel */

typedef struct {
    const uint32_t *a; /* op(A) word (i, p) at a[i * si + p * sp] */
    long si, sp;
    const uint32_t *b; /* op(B) word (p, j) at b[p * ldb + j] */
    long ldb;
    const float *pf; /* the next tile's C, prefetched (NULL: none) */
    int pfr;         /* its rows */
} tile_in;

/* C[0..mr-1, 0..nr-1] = alpha * sum over kp pairs + (first ? beta C : C) */
BF16_TARGET static void micro(const tile_in *t, int kp, float *C, int ldc, int mr, int nr,
                              float alpha, float beta, int first) {
    __m512 c0[MR], c1[MR];
    for (int i = 0; i < MR; i++)
        c0[i] = c1[i] = _mm512_setzero_ps();
    const uint32_t *a = t->a, *b = t->b;
    const long si = t->si, sp = t->sp, ldb = t->ldb;
    /* C's tile, and the next one's, on their way (for writing) while the products run */
    for (int i = 0; i < mr; i++) {
        __builtin_prefetch(C + (size_t)i * ldc, 1, 3);
        if (nr > 16) __builtin_prefetch(C + (size_t)i * ldc + 16, 1, 3);
    }
    if (t->pf)
        for (int i = 0; i < t->pfr; i++) {
            __builtin_prefetch(t->pf + (size_t)i * ldc, 1, 3);
            __builtin_prefetch(t->pf + (size_t)i * ldc + 16, 1, 3);
        }
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

/* One parallel loop per call, over blocks of C, each thread packing what it reads into its
 * own slot of one buffer (the calling thread's, kept between calls), so that nothing packed
 * crosses between cores and no thread waits for another's packing:
 * - C tall (rows): the loop runs over tiles of MR rows. A thread packs all of op(B) once per
 *   call (the weights, or a small operand), then per tile that tile's rows of op(A);
 * - C short (fewer than BY_COLS tiles of rows: a weight gradient, a head's product): over
 *   panels of NR columns. A thread packs all of op(A) once, then per panel that panel's
 *   columns of op(B).
 * Every element of C is summed by one thread over the K blocks in order, whichever way C is
 * cut, so the result is the same for any number of threads. */
#define BY_COLS 8

typedef struct {
    int ta, tb, M, N, K, P, Mp, Np, lda, ldb, ldc, by_cols;
    float alpha, beta;
    const float *A, *B;
    float *C;
    uint32_t *buf;         /* T slots of `slot` words */
    size_t slot, part;     /* words per slot; of them, the operand packed once (the rest: a tile
                            * of op(A) or a panel of op(B)) */
    unsigned long long id; /* this call's number */
    _Atomic int slots;     /* slots taken */
    int T;
} job;

static _Atomic unsigned long long calls; /* numbers the calls, for the slots */

/* the slot of the calling thread for call g->id: the first time, a new one, with the operand
 * that every block of this thread reads packed into it. Only the pool's T threads run a call's
 * blocks, so at most T slots are taken; a call made from inside another's block (not done
 * today) puts the outer call's slot back when it returns. */
typedef struct {
    unsigned long long id;
    int slot;
} slot_of;
static _Thread_local slot_of mine;

BF16_TARGET static uint32_t *my_slot(job *g) {
    if (mine.id != g->id) {
        int s = atomic_fetch_add(&g->slots, 1);
        if (s >= g->T) abort(); /* more threads than the pool has: cannot happen */
        mine.id = g->id, mine.slot = s;
        uint32_t *d = g->buf + (size_t)s * g->slot;
        if (g->by_cols) { /* all of op(A), as rows (ta == 0) or tile by tile */
            if (g->ta)
                for (int t = 0; t < g->Mp / MR; t++)
                    pack_tile(d + (size_t)t * g->P * MR, g->A, g->lda, g->K, g->M, g->P, t);
            else {
                pack_rows(d, g->A, g->lda, g->K, g->P, g->M, g->Mp);
            }
        } else if (g->tb) /* all of op(B) */
            pack_cols(d, g->Np, g->B, g->ldb, g->K, g->P, g->N, g->Np);
        else
            pack_pairs(d, g->Np, g->B, g->ldb, g->K, g->N, g->Np);
    }
    return g->buf + (size_t)mine.slot * g->slot;
}

/* the tile ti (rows ti MR ..) of C against the pairs pc .. pc+kp-1 of panel j's op(B) words b */
BF16_TARGET static inline void tile(const job *g, tile_in *t, int ti, int j, int pc, int kp,
                                    int nti, int nj) {
    if (nti * MR < g->M && nj < g->N) {
        t->pf = g->C + (size_t)nti * MR * g->ldc + nj;
        t->pfr = g->M - nti * MR < MR ? g->M - nti * MR : MR;
    }
    int i = ti * MR, mr = g->M - i < MR ? g->M - i : MR, nr = g->N - j < NR ? g->N - j : NR;
    micro(t, kp, g->C + (size_t)i * g->ldc + j, g->ldc, mr, nr, g->alpha, g->beta, pc == 0);
}

/* tiles [t0, t1) of MR rows of C */

BF16_TARGET static void job_rows(void *q, size_t t0, size_t t1) {
    job *g = q;
    uint32_t *bp = my_slot(g), *ap = bp + g->part;
    for (int ti = (int)t0; ti < (int)t1; ti++) {
        int i = ti * MR, mr = g->M - i < MR ? g->M - i : MR;
        long si, sp;
        if (g->ta) {
            pack_tile(ap, g->A, g->lda, g->K, g->M, g->P, ti);
            si = 1, sp = MR;
        } else {
            pack_rows(ap, g->A + (size_t)i * g->lda, g->lda, g->K, g->P, mr, MR);
            si = g->P, sp = 1;
        }
        for (int pc = 0; pc < g->P; pc += KC) {
            int kp = g->P - pc < KC ? g->P - pc : KC;
            for (int j = 0; j < g->N; j += NR) {
                tile_in t = {.a = ap + pc * sp,
                             .si = si,
                             .sp = sp,
                             .b = bp + (size_t)pc * g->Np + j,
                             .ldb = g->Np};
                tile(g, &t, ti, j, pc, kp, j + NR < g->N ? ti : ti + 1, j + NR < g->N ? j + NR : 0);
            }
        }
    }
}

/* panels [j0, j1) of NR columns of C */
BF16_TARGET static void job_cols(void *q, size_t j0, size_t j1) {
    job *g = q;
    uint32_t *ap = my_slot(g), *bp = ap + g->part;
    const int tiles = g->Mp / MR;
    for (int jn = (int)j0; jn < (int)j1; jn++) {
        int j = jn * NR, n = g->N - j < NR ? g->N - j : NR;
        if (g->tb)
            pack_cols(bp, NR, g->B + (size_t)j * g->ldb, g->ldb, g->K, g->P, n, NR);
        else
            pack_pairs(bp, NR, g->B + j, g->ldb, g->K, n, NR);
        for (int pc = 0; pc < g->P; pc += KC) {
            int kp = g->P - pc < KC ? g->P - pc : KC;
            for (int ti = 0; ti < tiles; ti++) {
                tile_in t = {.b = bp + (size_t)pc * NR, .ldb = NR};
                if (g->ta)
                    t.a = ap + ((size_t)ti * g->P + pc) * MR, t.si = 1, t.sp = MR;
                else
                    t.a = ap + (size_t)ti * MR * g->P + pc, t.si = g->P, t.sp = 1;
                tile(g, &t, ti, j, pc, kp, ti + 1 < tiles ? ti + 1 : 0,
                     ti + 1 < tiles ? j : j + NR);
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
             .C = C,
             .T = cpu_pool_threads(pool)};
    g.Mp = (M + MR - 1) / MR * MR;
    g.Np = (N + NR - 1) / NR * NR;
    g.by_cols = g.Mp / MR < BY_COLS && g.Np / NR > g.Mp / MR;
    const size_t P = (size_t)g.P;
    /* a slot: all of op(A) and one panel of op(B), or all of op(B) and one tile of op(A), in
     * 64-byte lines of their own */
    g.part = ((g.by_cols ? (size_t)g.Mp : (size_t)g.Np) * P + 15) / 16 * 16;
    g.slot = (g.part + (g.by_cols ? (size_t)NR : (size_t)MR) * P + 15) / 16 * 16;
    if (!(g.buf = scratch_get((size_t)g.T * g.slot * sizeof(uint32_t)))) return -1;
    g.id = atomic_fetch_add(&calls, 1) + 1;
    atomic_init(&g.slots, 0);
    slot_of outer = mine;
    if (g.by_cols)
        cpu_pool_for(pool, (size_t)g.Np / NR, 1, job_cols, &g);
    else
        cpu_pool_for(pool, (size_t)g.Mp / MR, 1, job_rows, &g);
    mine = outer;
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

/* Data movement (fp16 gather, row gather / scatter-add) and evaluation
 * (target ranks, top-k). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu.h"
#include "kernels/topk_heap.h"

/* the operands of a row op, cut into ranges of rows (or of columns, for
 * scatter_add_rows) by the pool */
typedef struct {
    float *dst;
    const float *src;
    const int *idx;
    int cols;
    int n; /* rows, for scatter_add_rows */
} rows_args;

/* rows this far ahead are asked for before a row is converted: each row is a separate
 * place in the state store's map (a page of its own, usually not in any cache), which the
 * hardware's prefetchers do not foresee; with the loads in flight a row costs about its
 * bandwidth instead of a round trip to memory */
enum { GATHER_AHEAD = 4 };

static void prefetch_row(const uint16_t *row, int cols) {
    const char *p = (const char *)row;
    for (size_t off = 0; off < (size_t)cols * sizeof *row; off += 64)
        __builtin_prefetch(p + off, 0, 0);
}

/* rows[lo..hi) of a gather: converted into dst (float), or copied into dst16 as fp16 when
 * that is set; zeros for a NULL row */
typedef struct {
    float *dst;
    uint16_t *dst16;
    const uint16_t *const *rows;
    int cols;
} half_rows_args;

static void gather_half_range(void *va, size_t lo, size_t hi) {
    const half_rows_args *a = va;
    const size_t cols = (size_t)a->cols;
    for (size_t i = lo; i < hi && i < lo + GATHER_AHEAD; i++)
        if (a->rows[i]) prefetch_row(a->rows[i], a->cols);
    for (size_t i = lo; i < hi; i++) {
        if (i + GATHER_AHEAD < hi && a->rows[i + GATHER_AHEAD])
            prefetch_row(a->rows[i + GATHER_AHEAD], a->cols);
        const uint16_t *row = a->rows[i];
        if (a->dst16) {
            uint16_t *d = a->dst16 + i * cols;
            if (row)
                memcpy(d, row, cols * sizeof *d);
            else
                memset(d, 0, cols * sizeof *d);
        } else {
            float *d = a->dst + i * cols;
            if (row)
                iisan_cpu_half_to_float(d, row, cols);
            else
                memset(d, 0, cols * sizeof *d);
        }
    }
}

void cpu_gather_half(iisan_backend *be, float *dst, const uint16_t *const *rows, int n, int cols) {
    half_rows_args a = {.dst = dst, .rows = rows, .cols = cols};
    if (n > 0 && cols > 0) cpu_par(be, (size_t)n, 8, gather_half_range, &a);
}

void cpu_gather_half16(iisan_backend *be, uint16_t *dst, const uint16_t *const *rows, int n,
                       int cols) {
    half_rows_args a = {.dst16 = dst, .rows = rows, .cols = cols};
    if (n > 0 && cols > 0) cpu_par(be, (size_t)n, 8, gather_half_range, &a);
}

static void gather_rows_range(void *va, size_t lo, size_t hi) {
    const rows_args *a = va;
    size_t bytes = (size_t)a->cols * sizeof *a->dst;
    for (size_t i = lo; i < hi; i++)
        memcpy(a->dst + i * a->cols, a->src + (size_t)a->idx[i] * a->cols, bytes);
}

void cpu_gather_rows(iisan_backend *be, float *dst, const float *src, const int *idx, int n,
                     int cols) {
    rows_args a = {.dst = dst, .src = src, .idx = idx, .cols = cols};
    if (n > 0 && cols > 0) cpu_par(be, (size_t)n, 32, gather_rows_range, &a);
}

/* columns [lo, hi) of every row, sequential over i, so repeated indexes add up in
 * the same order whichever thread owns the columns */
static CPU_VEC void scatter_add_range(void *va, size_t lo, size_t hi) {
    const rows_args *a = va;
    const size_t cols = (size_t)a->cols;
    for (int i = 0; i < a->n; i++) {
        float *restrict d = a->dst + (size_t)a->idx[i] * cols;
        const float *restrict s = a->src + (size_t)i * cols;
        for (size_t c = lo; c < hi; c++)
            d[c] += s[c];
    }
}

void cpu_scatter_add_rows(iisan_backend *be, float *dst, const float *src, const int *idx, int n,
                          int cols) {
    rows_args a = {.dst = dst, .src = src, .idx = idx, .cols = cols, .n = n};
    if (n > 0 && cols > 0) cpu_par(be, (size_t)cols, 16, scatter_add_range, &a);
}

static CPU_VEC int count_greater(const float *restrict s, int n, float thr) {
    int cnt = 0;
    for (int c = 0; c < n; c++)
        cnt += s[c] > thr;
    return cnt;
}

/* does ex[0..ne) contain c? (c >= 1, so the ignored 0 entries never match) */
static int listed(const int *ex, int ne, int c) {
    for (int e = 0; e < ne; e++)
        if (ex[e] == c) return 1;
    return 0;
}

typedef struct {
    int *rank, *out_idx;
    float *out_score;
    const float *scores;
    const int *target, *excl;
    int N, ne, k;
} eval_args;

/* Count every column 1..N-1 above the target's score (the target itself never
 * is), then take back the excluded columns that were counted, each once. */
static void rank_range(void *va, size_t lo, size_t hi) {
    const eval_args *a = va;
    const int N = a->N, ne = a->ne;
    for (size_t r = lo; r < hi; r++) {
        const float *row = a->scores + r * N;
        const int *ex = a->excl ? a->excl + r * ne : NULL;
        const int t = a->target[r];
        const float st = row[t];
        int cnt = N > 1 ? count_greater(row + 1, N - 1, st) : 0;
        for (int e = 0; ex && e < ne; e++) {
            int c = ex[e];
            if (c <= 0 || c >= N || c == t || listed(ex, e, c)) continue;
            if (row[c] > st) cnt--;
        }
        a->rank[r] = 1 + cnt;
    }
}

void cpu_rank_targets(iisan_backend *be, int *rank, const float *scores, int R, int N,
                      const int *target, const int *excl, int ne) {
    eval_args a = {
        .rank = rank, .scores = scores, .target = target, .excl = excl, .N = N, .ne = ne};
    if (R > 0) cpu_par(be, (size_t)R, 4, rank_range, &a);
}

/* ---- top-k: kernels/topk_heap.h ---- */

/* whether any of x[0..8) > t */
static int any_above(const float *x, float t) {
    int m = 0;
    for (int q = 0; q < 8; q++)
        m |= x[q] > t;
    return m;
}

/* Columns are visited in increasing order, so a column whose score only ties
 * the heap's worst never displaces it (the tie goes to the lower index). NaN
 * scores are skipped. Rows with fewer than k eligible columns end in
 * index -1, score -INFINITY. */
static void topk_row(topk_item *heap, int *oi, float *os, const float *row, int N, int k,
                     const int *ex, int ne) {
    int cnt = 0, c = 1;
    for (; c < N && cnt < k; c++) { /* filling the heap */
        float s = row[c];
        if (isnan(s) || (ex && listed(ex, ne, c))) continue;
        heap[cnt] = (topk_item){s, c};
        topk_sift_up(heap, cnt++);
    }
    /* full: only a score above the worst kept enters; eight at a time, most
     * columns are passed over by one comparison of eight (NaN compares false) */
    for (; c < N; c++) {
        if ((c & 7) == 0)
            while (c + 8 <= N && !any_above(row + c, heap[0].s))
                c += 8;
        if (c >= N) break;
        float s = row[c];
        if (!(s > heap[0].s)) continue;
        if (ex && listed(ex, ne, c)) continue;
        heap[0] = (topk_item){s, c};
        topk_sift_down(heap, k, 0);
    }
    for (int j = cnt; j < k; j++)
        oi[j] = -1, os[j] = -INFINITY;
    topk_drain(heap, cnt, oi, os); /* best first */
}

static void topk_range(void *va, size_t lo, size_t hi) {
    const eval_args *a = va;
    const int k = a->k;
    topk_item stack_heap[256];
    topk_item *heap = k <= 256 ? stack_heap : malloc((size_t)k * sizeof *heap);
    for (size_t r = lo; r < hi; r++) {
        int *oi = a->out_idx + r * k;
        float *os = a->out_score + r * k;
        if (heap)
            topk_row(heap, oi, os, a->scores + r * a->N, a->N, k,
                     a->excl ? a->excl + r * a->ne : NULL, a->ne);
        else /* out of memory for a huge k: report nothing found */
            for (int j = 0; j < k; j++)
                oi[j] = -1, os[j] = -INFINITY;
    }
    if (heap != stack_heap) free(heap);
}

void cpu_topk(iisan_backend *be, int *out_idx, float *out_score, const float *scores, int R, int N,
              int k, const int *excl, int ne) {
    eval_args a = {.out_idx = out_idx,
                   .out_score = out_score,
                   .scores = scores,
                   .excl = excl,
                   .N = N,
                   .ne = ne,
                   .k = k};
    if (k > 0 && R > 0) cpu_par(be, (size_t)R, 4, topk_range, &a);
}

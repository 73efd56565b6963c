/* Data movement (fp16 gather, row gather / scatter-add) and evaluation
 * (target ranks, top-k). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu.h"
#include "kernels/topk_heap.h"

void cpu_gather_half(iisan_backend *be, float *dst, const uint16_t *const *rows, int n, int cols) {
    for (int i = 0; i < n; i++) {
        float *d = dst + (size_t)i * cols;
        if (rows[i])
            iisan_cpu_half_to_float(d, rows[i], (size_t)cols);
        else
            memset(d, 0, (size_t)cols * sizeof *d);
    }
}

void cpu_gather_rows(iisan_backend *be, float *dst, const float *src, const int *idx, int n,
                     int cols) {
    size_t bytes = (size_t)cols * sizeof *dst;
    for (int i = 0; i < n; i++)
        if (bytes) memcpy(dst + (size_t)i * cols, src + (size_t)idx[i] * cols, bytes);
}

/* sequential over i, so repeated indexes add up */
CPU_VEC void cpu_scatter_add_rows(iisan_backend *be, float *dst, const float *src, const int *idx,
                                  int n, int cols) {
    for (int i = 0; i < n; i++) {
        float *restrict d = dst + (size_t)idx[i] * cols;
        const float *restrict s = src + (size_t)i * cols;
        for (int c = 0; c < cols; c++)
            d[c] += s[c];
    }
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

/* Count every column 1..N-1 above the target's score (the target itself never
 * is), then take back the excluded columns that were counted, each once. */
void cpu_rank_targets(iisan_backend *be, int *rank, const float *scores, int R, int N,
                      const int *target, const int *excl, int ne) {
    for (int r = 0; r < R; r++) {
        const float *row = scores + (size_t)r * N;
        const int *ex = excl ? excl + (size_t)r * ne : NULL;
        const int t = target[r];
        const float st = row[t];
        int cnt = N > 1 ? count_greater(row + 1, N - 1, st) : 0;
        for (int e = 0; ex && e < ne; e++) {
            int c = ex[e];
            if (c <= 0 || c >= N || c == t || listed(ex, e, c)) continue;
            if (row[c] > st) cnt--;
        }
        rank[r] = 1 + cnt;
    }
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
void cpu_topk(iisan_backend *be, int *out_idx, float *out_score, const float *scores, int R, int N,
              int k, const int *excl, int ne) {
    if (k <= 0) return;
    topk_item stack_heap[256];
    topk_item *heap = k <= 256 ? stack_heap : malloc((size_t)k * sizeof *heap);
    for (int r = 0; r < R; r++) {
        int *oi = out_idx + (size_t)r * k;
        float *os = out_score + (size_t)r * k;
        if (!heap) { /* out of memory for a huge k: report nothing found */
            for (int j = 0; j < k; j++)
                oi[j] = -1, os[j] = -INFINITY;
            continue;
        }
        const float *row = scores + (size_t)r * N;
        const int *ex = excl ? excl + (size_t)r * ne : NULL;
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
    if (heap != stack_heap) free(heap);
}

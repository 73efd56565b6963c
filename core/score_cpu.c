/* Norm-sorted, blocked item table and exact pruned top-k (core/score_cpu.h). */
#include "core/score_cpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/topk_heap.h"

typedef float v8f __attribute__((vector_size(32), aligned(32)));

enum { LANES = 8, GROUP = 6 }; /* blocks scored per step: 6 independent accumulators */

struct score_table {
    int N0, d, nblocks;
    float *blk;     /* nblocks * d * LANES, 32-byte aligned; padding lanes are zero */
    int32_t *order; /* nblocks * LANES: the model index of each lane, 0 for padding */
    double *bound;  /* nblocks: the largest norm in the block (its first lane's) */
};

typedef struct {
    double norm;
    int32_t i;
} normed;

static int by_norm_desc(const void *a, const void *b) {
    const normed *x = a, *y = b;
    if (x->norm != y->norm) return x->norm > y->norm ? -1 : 1;
    return x->i < y->i ? -1 : x->i > y->i;
}

score_table *score_table_build(const float *all, int N0, int d) {
    score_table *t = calloc(1, sizeof *t);
    normed *v = malloc(((size_t)N0 + 1) * sizeof *v);
    if (!t || !v) goto oom;
    t->N0 = N0;
    t->d = d;
    t->nblocks = (N0 + LANES - 1) / LANES;
    size_t bytes = ((size_t)t->nblocks + GROUP) * d * LANES * sizeof(float);
    t->blk = aligned_alloc(32, (bytes + 31) / 32 * 32);
    t->order = calloc(((size_t)t->nblocks + GROUP) * LANES, sizeof *t->order);
    t->bound = calloc((size_t)t->nblocks + GROUP, sizeof *t->bound);
    if (!t->blk || !t->order || !t->bound) goto oom;
    memset(t->blk, 0, bytes);
    for (int i = 1; i <= N0; i++) {
        double s = 0;
        for (int j = 0; j < d; j++)
            s += (double)all[(size_t)i * d + j] * all[(size_t)i * d + j];
        v[i - 1] = (normed){sqrt(s), i};
    }
    qsort(v, (size_t)N0, sizeof *v, by_norm_desc);
    for (int p = 0; p < N0; p++) {
        int g = p / LANES, l = p % LANES;
        t->order[p] = v[p].i;
        if (l == 0) t->bound[g] = v[p].norm;
        for (int j = 0; j < d; j++)
            t->blk[((size_t)g * d + j) * LANES + l] = all[(size_t)v[p].i * d + j];
    }
    free(v);
    return t;
oom:
    free(v);
    score_table_free(t);
    return NULL;
}

void score_table_free(score_table *t) {
    if (!t) return;
    free(t->blk);
    free(t->order);
    free(t->bound);
    free(t);
}

typedef struct {
    topk_item *h;
    int n, k;
    const score_query *q;
} kbest;

static int listed(const int32_t *ex, int ne, int32_t i) {
    for (int e = 0; e < ne; e++)
        if (ex[e] == i) return 1;
    return 0;
}

static void offer(kbest *b, float s, int32_t i) {
    if (isnan(s) || i <= 0) return;
    topk_item e = {s, i};
    if (b->n == b->k && !topk_below(b->h[0], e)) return;
    if (b->q->banned && atomic_load_explicit(&b->q->banned[i], memory_order_relaxed)) return;
    if (b->q->ne && listed(b->q->excl, b->q->ne, i)) return;
    if (b->n < b->k) {
        b->h[b->n] = e;
        topk_sift_up(b->h, b->n++);
    } else {
        b->h[0] = e;
        topk_sift_down(b->h, b->k, 0);
    }
}

/* whether any lane of v could enter (>= the worst kept; ties are settled by offer) */
static int any_at_least(v8f v, float t) {
    int m = 0;
    for (int l = 0; l < LANES; l++)
        m |= v[l] >= t;
    return m;
}

#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("fp-contract=fast")))
#endif
int score_topk(const score_table *t, const float *all, int N1, const score_query *q,
               int32_t *out_idx, float *out_score, void *heap, long *scored_out) {
    const int d = t->d, N0 = t->N0;
    kbest b = {heap, 0, q->k, q};
    long nscored = 0;
    double on = 0;
    for (int j = 0; j < d; j++)
        on += (double)q->o[j] * q->o[j];
    on = sqrt(on);
    for (int g0 = 0; g0 < t->nblocks; g0 += GROUP) {
        /* every later item is bounded by this block's first norm (the table is sorted):
         * rounded up by a relative 1e-4 and 1e-6, far above float rounding */
        if (q->prune && b.n == b.k && t->bound[g0] * on * (1 + 1e-4) + 1e-6 < b.h[0].s) break;
        const v8f *w = (const v8f *)(t->blk + (size_t)g0 * d * LANES);
        const float *o = q->o;
        v8f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0};
        for (int j = 0; j < d; j++) { /* the padding past the last block is zero */
            const float x = o[j];
            a0 += x * w[j];
            a1 += x * w[d + j];
            a2 += x * w[2 * d + j];
            a3 += x * w[3 * d + j];
            a4 += x * w[4 * d + j];
            a5 += x * w[5 * d + j];
        }
        v8f acc[GROUP] = {a0, a1, a2, a3, a4, a5};
        const int ng = t->nblocks - g0 < GROUP ? t->nblocks - g0 : GROUP;
        nscored += (long)ng * LANES;
        for (int g = 0; g < ng; g++) {
            if (b.n == b.k && !any_at_least(acc[g], b.h[0].s)) continue;
            const int32_t *ord = t->order + (size_t)(g0 + g) * LANES;
            for (int l = 0; l < LANES; l++)
                offer(&b, acc[g][l], ord[l]);
        }
    }
    for (int i = N0 + 1; i < N1; i++) { /* rows added since the table was built */
        const float *e = all + (size_t)i * d;
        float s = 0;
        for (int j = 0; j < d; j++)
            s += e[j] * q->o[j];
        offer(&b, s, i);
        nscored++;
    }
    if (scored_out) *scored_out = nscored;
    topk_drain(b.h, b.n, out_idx, out_score); /* best first */
    return b.n;
}

/* The top-k heap shared by the CPU backend's top-k (kernels/cpu/cpu_data.c)
 * and the pruned top-k of serving (core/score_cpu.c): a min-heap of the k
 * best (score, index) pairs so far, its root the worst of them. One order
 * for both: a higher score ranks first, and of equal scores the lower index. */
#ifndef IISAN_KERNELS_TOPK_HEAP_H
#define IISAN_KERNELS_TOPK_HEAP_H

typedef struct {
    float s;
    int i;
} topk_item;

/* a ranks below b: lower score, or the same score at a higher index */
static inline int topk_below(topk_item a, topk_item b) {
    return a.s < b.s || (a.s == b.s && a.i > b.i);
}

static inline void topk_sift_down(topk_item *h, int n, int at) {
    for (;;) {
        int l = 2 * at + 1, r = l + 1, m = at;
        if (l < n && topk_below(h[l], h[m])) m = l;
        if (r < n && topk_below(h[r], h[m])) m = r;
        if (m == at) return;
        topk_item tmp = h[at];
        h[at] = h[m];
        h[m] = tmp;
        at = m;
    }
}

static inline void topk_sift_up(topk_item *h, int at) {
    while (at > 0) {
        int parent = (at - 1) / 2;
        if (!topk_below(h[at], h[parent])) return;
        topk_item tmp = h[at];
        h[at] = h[parent];
        h[parent] = tmp;
        at = parent;
    }
}

/* empties a heap of n items into idx / score, best first */
static inline void topk_drain(topk_item *h, int n, int *idx, float *score) {
    for (int j = n - 1; j >= 0; j--) {
        idx[j] = h[0].i;
        score[j] = h[0].s;
        h[0] = h[j];
        topk_sift_down(h, j, 0);
    }
}

#endif

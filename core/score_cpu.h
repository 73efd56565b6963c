/* Exact top-k against the item table on the CPU, without scoring most items.
 *
 * A score is a dot product s_i = <e_i, o>, so s_i <= |e_i| |o| (Cauchy-Schwarz).
 * The table keeps a copy of the embeddings sorted by norm, largest first, in
 * blocks of 8 items (block g: d rows of 8 lanes, so a block's 8 scores are one
 * vector of multiply-adds, no horizontal sums). A query scans the blocks in
 * that order and keeps its k best; once the k-th best score exceeds the bound
 * of the next block (its first item's norm times |o|, rounded up), no later
 * item can enter, and the scan stops. Learned embeddings have very unequal
 * norms (measured on Scientific, SASRec-ID: 37 of 20,314 items had to be
 * scored for a top-10), so most queries read a small prefix of the table.
 * The result is the exhaustive one exactly: same items, same scores (each
 * score is computed by the same arithmetic either way), ties to the lower
 * model index as kernels/cpu's top-k.
 *
 * Rows added after the table was built (core/infer.h's infer_add_items) are
 * scored one by one from the row-major table. */
#ifndef IISAN_CORE_SCORE_CPU_H
#define IISAN_CORE_SCORE_CPU_H

#include <stdatomic.h>
#include <stdint.h>

typedef struct score_table score_table;

/* from all (row-major (N0 + 1, d), row 0 the padding): rows 1..N0. NULL when out of memory */
score_table *score_table_build(const float *all, int N0, int d);
void score_table_free(score_table *t);

typedef struct {
    const float *o;      /* the query (d) */
    int k;               /* results wanted (>= 1) */
    const int32_t *excl; /* model indexes never returned */
    int ne;
    const atomic_uchar *banned; /* banned[i] != 0: never returned (may be NULL) */
    int prune;                  /* 0: score every item (the reference the tests compare) */
} score_query;

/* The k best of rows 1..N1-1: rows 1..N0 from t, rows N0+1..N1-1 from all
 * (row-major). Writes up to k (index, score) pairs best first and returns how
 * many; *scored (may be NULL) gets how many items were scored. heap: room
 * for 2k ints (scratch). */
int score_topk(const score_table *t, const float *all, int N1, const score_query *q,
               int32_t *out_idx, float *out_score, void *heap, long *scored);

#endif

/* The spec's evaluation: full ranking of items 1..N with the user state at
 * the last input position; the history before the target excluded;
 * rank = 1 + #items scored strictly above the target. */
#ifndef IISAN_CORE_EVAL_H
#define IISAN_CORE_EVAL_H

#include "core/dataset.h"
#include "core/model.h"

typedef struct {
    double hr10, ndcg10;
    int users;
    double seconds;
} eval_result;

/* embeddings of items 0..N into out (backend memory, (N+1) x d) */
void model_item_embeddings(iisan_model *m, int N, const uint32_t *item_cat, const iisan_states *st,
                           float *out);
/* split: SPLIT_VALID or SPLIT_TEST. Returns 0, or -1 when out of memory. */
int model_evaluate(iisan_model *m, const iisan_dataset *ds, int split, const iisan_states *st,
                   eval_result *res);
/* the popularity baseline: items scored by their count in the training parts */
int popularity_evaluate(const iisan_dataset *ds, int split, eval_result *res);

#endif

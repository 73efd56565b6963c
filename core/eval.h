/* The spec's evaluation: full ranking of items 1..N with the user state at
 * the last input position; the history before the target excluded;
 * rank = 1 + #items scored strictly above the target. */
#ifndef IISAN_CORE_EVAL_H
#define IISAN_CORE_EVAL_H

#include "core/dataset.h"
#include "core/model.h"

/* How a target that already occurs in the user's history is treated:
 * EVAL_RULE_V2 (the default) excludes the whole history, the target included, so such a
 * repeated target can never be ranked and counts as a miss; EVAL_RULE_V1 excludes the
 * history except the target, which is ranked like any other. */
#define EVAL_RULE_V1 1
#define EVAL_RULE_V2 2
/* "history" (v2) / "history-but-target" (v1), and back (-1 when unknown) */
const char *eval_rule_name(int rule);
int eval_rule_parse(const char *s);

typedef struct {
    double hr10, ndcg10;
    int users;
    int repeated; /* users whose target occurs earlier in their history */
    double seconds;
} eval_result;

/* embeddings of items 0..N into out (backend memory, (N+1) x d) */
void model_item_embeddings(iisan_model *m, int N, const uint32_t *item_cat, const iisan_states *st,
                           float *out);
/* split: SPLIT_VALID or SPLIT_TEST; rule: EVAL_RULE_*. Returns 0, or -1 when out of memory. */
int model_evaluate(iisan_model *m, const iisan_dataset *ds, int split, int rule,
                   const iisan_states *st, eval_result *res);
/* the popularity baseline: items scored by their count in the training parts */
int popularity_evaluate(const iisan_dataset *ds, int split, int rule, eval_result *res);

#endif

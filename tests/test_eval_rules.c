/* The two evaluation rules on a handmade catalogue with repeated targets.
 *
 * Spec version 2 excludes the whole history from the ranking, a target the user had before
 * included, so such a target can never be ranked and counts as a miss; version 1 excluded
 * the history except the target. Popularity's figures under both rules are worked out by
 * hand below; a trained model's are checked against a brute-force ranking of its own scores,
 * and the validation used for early stopping follows the training config's rule. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/dataset.h"
#include "core/eval.h"
#include "core/train.h"
#include "tests/test.h"

/* n = 3, min_len = 4; catalogue ids appear first in the order 1..5, so model ids equal them:
 *   u0 [1 2 3 1]      valid: hist [1 2]     target 3    test: hist [1 2 3]    target 1 (repeated)
 *   u1 [2 3 4 2 3]    valid: hist [2 3 4]   target 2 (repeated)   test: hist [2 3 4 2] target 3
 *                                                                  (repeated)
 *   u2 [4 5 1 2]      valid: hist [4 5]     target 1    test: hist [4 5 1]    target 2
 *   u3 [3 1 5 4]      valid: hist [3 1]     target 5    test: hist [3 1 5]    target 4
 *   u4 [1 3 1 2 5]    valid: hist [1 3 1]   target 2    test: hist [1 3 1 2]  target 5
 * Popularity over the training parts seq[:-2] ([1 2], [2 3 4], [4 5], [3 1], [1 3 1]):
 *   count 1: 4, 2: 2, 3: 3, 4: 2, 5: 1.
 * rank = 1 + #(items not excluded with a strictly higher count):
 *   test,  v1: u0 1, u1 2 (1 above; 2 and 4 excluded, not above), u2 2 (3 above, 1 excluded),
 *              u3 1 (1 and 3 excluded), u4 2 (4 above; 1, 3, 2 excluded)
 *   test,  v2: u0 and u1 miss, the rest as v1
 *   valid, v1: u0 1, u1 2 (1 above; 3 excluded), u2 1, u3 3 (2 and 4 above), u4 1
 *   valid, v2: u1 misses, the rest as v1
 * With N = 5 every ranked target is in the top 10: HR@10 counts the ranked targets, and
 * NDCG@10 = mean of 1 / log2(rank + 1). */
static const uint32_t U0[] = {1, 2, 3, 1}, U1[] = {2, 3, 4, 2, 3}, U2[] = {4, 5, 1, 2},
                      U3[] = {3, 1, 5, 4}, U4[] = {1, 3, 1, 2, 5};
static const uint32_t *SEQS[] = {U0, U1, U2, U3, U4};
static const uint32_t LENS[] = {4, 5, 4, 4, 5};

static void build(iisan_dataset *ds) {
    CHECK(dataset_from_sequences(ds, SEQS, LENS, 5, 3, 4) == 0);
    CHECK(ds->n_users == 5 && ds->n_items == 5);
}

static void test_popularity_by_hand(void) {
    iisan_dataset ds;
    build(&ds);
    const double l3 = 1 / log2(3.0), l4 = 1 / log2(4.0);
    eval_result r;
    CHECK(popularity_evaluate(&ds, SPLIT_TEST, EVAL_RULE_V1, &r) == 0);
    CHECK(r.users == 5 && r.repeated == 2);
    CHECK_CLOSE(r.hr10, 1.0, 1e-12, 0);
    CHECK_CLOSE(r.ndcg10, (1 + l3 + l3 + 1 + l3) / 5, 1e-12, 0);
    CHECK(popularity_evaluate(&ds, SPLIT_TEST, EVAL_RULE_V2, &r) == 0);
    CHECK(r.users == 5 && r.repeated == 2);
    CHECK_CLOSE(r.hr10, 3.0 / 5, 1e-12, 0);
    CHECK_CLOSE(r.ndcg10, (l3 + 1 + l3) / 5, 1e-12, 0);
    CHECK(popularity_evaluate(&ds, SPLIT_VALID, EVAL_RULE_V1, &r) == 0);
    CHECK(r.users == 5 && r.repeated == 1);
    CHECK_CLOSE(r.hr10, 1.0, 1e-12, 0);
    CHECK_CLOSE(r.ndcg10, (1 + l3 + 1 + l4 + 1) / 5, 1e-12, 0);
    CHECK(popularity_evaluate(&ds, SPLIT_VALID, EVAL_RULE_V2, &r) == 0);
    CHECK(r.users == 5 && r.repeated == 1);
    CHECK_CLOSE(r.hr10, 4.0 / 5, 1e-12, 0);
    CHECK_CLOSE(r.ndcg10, (1 + 1 + l4 + 1) / 5, 1e-12, 0);
    dataset_free(&ds);
}

/* the figures of one split under one rule, ranked here from the model's own scores */
static void brute_force(iisan_model *m, const iisan_dataset *ds, int split, int rule,
                        eval_result *want) {
    const int n = m->c.n, d = m->c.d, N = ds->n_items;
    iisan_backend *be = m->be;
    float *all = be->alloc(be, (size_t)(N + 1) * d * sizeof(float));
    model_item_embeddings(m, N, ds->item_cat, NULL, all);
    memset(want, 0, sizeof *want);
    for (int u = 0; u < ds->n_users; u++) {
        int32_t seq[16], hist[16], tgt;
        int in_idx[16];
        float mask[16];
        dataset_sequence(ds, u, split, seq, &tgt);
        int nh = dataset_history(ds, u, split, hist);
        for (int j = 0; j < n; j++) {
            in_idx[j] = seq[j];
            mask[j] = seq[j] != 0;
        }
        seq_forward(m, all, in_idx, mask, 1, 0, 0);
        const float *o = seq_output(m) + (size_t)(n - 1) * d;
        double score[16];
        for (int i = 1; i <= N; i++) {
            score[i] = 0;
            for (int k = 0; k < d; k++)
                score[i] += (double)o[k] * all[(size_t)i * d + k];
        }
        int repeated = 0, rank = 1;
        for (int j = 0; j < nh; j++)
            repeated |= hist[j] == tgt;
        for (int i = 1; i <= N; i++) {
            int excluded = 0;
            for (int j = 0; j < nh; j++)
                excluded |= hist[j] == i && i != tgt;
            /* float scores, as the backend compares them */
            if (!excluded && i != tgt && (float)score[i] > (float)score[tgt]) rank++;
        }
        want->users++;
        want->repeated += repeated;
        if (repeated && rule == EVAL_RULE_V2) continue;
        if (rank <= 10) {
            want->hr10 += 1;
            want->ndcg10 += 1 / log2(rank + 1.0);
        }
    }
    want->hr10 /= want->users;
    want->ndcg10 /= want->users;
    be->free(be, all);
}

/* a small SASRec-ID over the synthetic dataset (built into ds), on be */
static iisan_model *small_model(iisan_dataset *ds, iisan_backend *be, int no_dropout) {
    build(ds);
    iisan_config c;
    config_default(&c);
    c.kind = MODEL_SASREC_ID;
    c.n_items = ds->n_items;
    c.n = 3;
    c.d = 8;
    if (no_dropout) c.dropout = 0;
    char err[256];
    iisan_model *m = model_create(&c, be, 8, 3, err, sizeof err);
    CHECKF(m != NULL, "%s", err);
    return m;
}

static void test_model_both_rules(void) {
    iisan_dataset ds;
    iisan_backend *be = iisan_backend_cpu(1);
    iisan_model *m = small_model(&ds, be, 1);
    if (!m) {
        be->destroy(be);
        dataset_free(&ds);
        return;
    }
    double hr[2][3];
    for (int rule = EVAL_RULE_V1; rule <= EVAL_RULE_V2; rule++)
        for (int split = SPLIT_VALID; split <= SPLIT_TEST; split++) {
            eval_result got, want;
            CHECK(model_evaluate(m, &ds, split, rule, NULL, &got) == 0);
            brute_force(m, &ds, split, rule, &want);
            CHECKF(got.users == 5 && got.repeated == want.repeated &&
                       fabs(got.hr10 - want.hr10) < 1e-12 && fabs(got.ndcg10 - want.ndcg10) < 1e-9,
                   "rule %d split %d: HR %.4f NDCG %.4f repeated %d, want %.4f %.4f %d", rule,
                   split, got.hr10, got.ndcg10, got.repeated, want.hr10, want.ndcg10,
                   want.repeated);
            hr[rule - 1][split] = got.hr10;
        }
    /* N = 5: every ranked target is a hit, so HR@10 is 1 under v1 and the share of users
     * without a repeated target under v2 */
    CHECK(hr[0][SPLIT_VALID] == 1.0 && hr[0][SPLIT_TEST] == 1.0);
    CHECK_CLOSE(hr[1][SPLIT_VALID], 4.0 / 5, 1e-12, 0);
    CHECK_CLOSE(hr[1][SPLIT_TEST], 3.0 / 5, 1e-12, 0);

    /* the validation after each epoch follows the training config's rule */
    for (int rule = EVAL_RULE_V1; rule <= EVAL_RULE_V2; rule++) {
        iisan_train_config tc;
        train_config_default(&tc);
        tc.epochs = 1;
        tc.batch = 8;
        tc.eval_rule = rule;
        train_summary sum;
        CHECK(train_run(m, &ds, NULL, &tc, 1, NULL, NULL, &sum) == 0);
        CHECK(sum.best_valid.hr10 == (rule == EVAL_RULE_V1 ? 1.0 : 0.8));
    }
    model_destroy(m);
    be->destroy(be);
    dataset_free(&ds);
}

/* early stopping: rule 2 stops at the (patience + 1)-th flat epoch in a row, rule 1 at the
 * patience-th. A zero learning rate keeps every epoch's validation equal to the first's. */
static void test_early_stopping(void) {
    iisan_dataset ds;
    iisan_backend *be = iisan_backend_cpu(1);
    iisan_model *m = small_model(&ds, be, 0);
    for (int rule = IISAN_RULES_V1; m && rule <= IISAN_RULES_V2; rule++) {
        iisan_train_config tc;
        train_config_default(&tc);
        tc.batch = 8;
        tc.lr = tc.lr_san = 0;
        tc.patience = 3;
        tc.early_stop = rule;
        train_summary sum;
        CHECK(train_run(m, &ds, NULL, &tc, 1, NULL, NULL, &sum) == 0);
        CHECKF(sum.best_epoch == 1 && sum.epochs_run == (rule == IISAN_RULES_V1 ? 4 : 5),
               "rule %d: best %d of %d epochs", rule, sum.best_epoch, sum.epochs_run);
    }
    model_destroy(m);
    be->destroy(be);
    dataset_free(&ds);
}

int main(int argc, char **argv) {
    TEST_MAIN_BEGIN(argc, argv);
    RUN(test_popularity_by_hand);
    RUN(test_model_both_rules);
    RUN(test_early_stopping);
    TEST_MAIN_END();
}

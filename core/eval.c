#include "core/eval.h"
#include "kernels/clock.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void model_item_embeddings(iisan_model *m, int N, const uint32_t *item_cat, const iisan_states *st,
                           float *out) {
    iisan_backend *be = m->be;
    const int d = m->c.d, chunk = m->cap_items;
    int32_t *items = malloc((size_t)chunk * sizeof *items);
    uint32_t *cat = malloc((size_t)chunk * sizeof *cat);
    for (int i0 = 0; i0 <= N; i0 += chunk) {
        int U = N + 1 - i0 < chunk ? N + 1 - i0 : chunk;
        for (int u = 0; u < U; u++) {
            items[u] = i0 + u;
            cat[u] = item_cat ? item_cat[i0 + u] : 0;
        }
        tower_forward(m, items, cat, U, st);
        be->copy(be, out + (size_t)i0 * d, m->emb, (size_t)U * d * sizeof(float));
    }
    free(items);
    free(cat);
}

const char *eval_rule_name(int rule) {
    return rule == EVAL_RULE_V1 ? "history-but-target" : "history";
}

int eval_rule_parse(const char *s) {
    if (!strcmp(s, "history") || !strcmp(s, "v2")) return EVAL_RULE_V2;
    if (!strcmp(s, "history-but-target") || !strcmp(s, "v1")) return EVAL_RULE_V1;
    return -1;
}

static int occurs(const int32_t *hist, int nh, int32_t item) {
    for (int j = 0; j < nh; j++)
        if (hist[j] == item) return 1;
    return 0;
}

/* rank 0: a repeated target under EVAL_RULE_V2, never ranked, a miss */
static void add_rank(eval_result *r, int rank) {
    if (rank >= 1 && rank <= 10) {
        r->hr10 += 1;
        r->ndcg10 += 1.0 / log2(rank + 1.0);
    }
    r->users++;
}

static void finish(eval_result *r, double t0) {
    if (r->users) {
        r->hr10 /= r->users;
        r->ndcg10 /= r->users;
    }
    r->seconds = iisan_now() - t0;
}

int model_evaluate(iisan_model *m, const iisan_dataset *ds, int split, int rule,
                   const iisan_states *st, eval_result *res) {
    iisan_backend *be = m->be;
    const int n = m->c.n, d = m->c.d, N = ds->n_items, B = m->cap_users, ne = n + 2;
    double t0 = iisan_now();
    memset(res, 0, sizeof *res);
    float *all = be->alloc(be, (size_t)(N + 1) * d * sizeof(float));
    float *scores = be->alloc(be, (size_t)B * (N + 1) * sizeof(float));
    int *dtarget = be->alloc(be, (size_t)B * sizeof(int));
    int *dexcl = be->alloc(be, (size_t)B * ne * sizeof(int));
    int *drank = be->alloc(be, (size_t)B * sizeof(int));
    int *rowsel = be->alloc(be, (size_t)B * sizeof(int));
    int *in_idx = malloc((size_t)B * n * sizeof(int));
    float *mask = malloc((size_t)B * n * sizeof(float));
    int *target = malloc((size_t)B * sizeof(int));
    int *excl = malloc((size_t)B * ne * sizeof(int));
    int *rank = malloc((size_t)B * sizeof(int));
    int *sel = malloc((size_t)B * sizeof(int));
    unsigned char *rep = malloc((size_t)B);
    int32_t *seq = malloc((size_t)(n + 3) * sizeof *seq);
    int rc = -1;
    if (!all || !scores || !dtarget || !dexcl || !drank || !rowsel || !in_idx || !mask || !target ||
        !excl || !rank || !sel || !rep || !seq)
        goto out;
    model_item_embeddings(m, N, ds->item_cat, st, all);
    for (int b = 0; b < B; b++)
        sel[b] = b * n + n - 1;
    be->upload(be, rowsel, sel, (size_t)B * sizeof(int));
    for (int u0 = 0; u0 < ds->n_users; u0 += B) {
        int nb = ds->n_users - u0 < B ? ds->n_users - u0 : B;
        memset(excl, 0, (size_t)nb * ne * sizeof(int));
        for (int b = 0; b < nb; b++) {
            int32_t tgt;
            dataset_sequence(ds, u0 + b, split, seq, &tgt);
            for (int j = 0; j < n; j++) {
                in_idx[b * n + j] = seq[j];
                mask[b * n + j] = seq[j] != 0;
            }
            target[b] = tgt;
            int nh = dataset_history(ds, u0 + b, split, seq);
            for (int j = 0; j < nh && j < ne; j++)
                excl[b * ne + j] = seq[j];
            rep[b] = occurs(seq, nh < ne ? nh : ne, tgt);
        }
        seq_forward(m, all, in_idx, mask, nb, 0, 0);
        be->gather_rows(be, m->Oq, seq_output(m), rowsel, nb, d);
        be->gemm(be, 0, 1, nb, N + 1, d, 1, m->Oq, d, all, d, 0, scores, N + 1);
        be->upload(be, dtarget, target, (size_t)nb * sizeof(int));
        be->upload(be, dexcl, excl, (size_t)nb * ne * sizeof(int));
        be->rank_targets(be, drank, scores, nb, N + 1, dtarget, dexcl, ne);
        be->download(be, rank, drank, (size_t)nb * sizeof(int));
        for (int b = 0; b < nb; b++) {
            res->repeated += rep[b];
            add_rank(res, rep[b] && rule != EVAL_RULE_V1 ? 0 : rank[b]);
        }
    }
    finish(res, t0);
    rc = 0;
out:
    be->free(be, all);
    be->free(be, scores);
    be->free(be, dtarget);
    be->free(be, dexcl);
    be->free(be, drank);
    be->free(be, rowsel);
    free(in_idx);
    free(mask);
    free(target);
    free(excl);
    free(rank);
    free(sel);
    free(rep);
    free(seq);
    return rc;
}

int popularity_evaluate(const iisan_dataset *ds, int split, int rule, eval_result *res) {
    const int n = ds->max_len;
    double t0 = iisan_now();
    memset(res, 0, sizeof *res);
    int32_t *hist = malloc((size_t)(n + 3) * sizeof *hist);
    int32_t *seq = malloc((size_t)(n + 3) * sizeof *seq);
    /* items sorted by count, descending, so a rank is a count of items above */
    double *cnt = ds->pop_count;
    if (!hist || !seq) {
        free(hist);
        free(seq);
        return -1;
    }
    for (int u = 0; u < ds->n_users; u++) {
        int32_t tgt;
        dataset_sequence(ds, u, split, seq, &tgt);
        int nh = dataset_history(ds, u, split, hist);
        if (occurs(hist, nh, tgt)) {
            res->repeated++;
            if (rule != EVAL_RULE_V1) {
                add_rank(res, 0);
                continue;
            }
        }
        double t = cnt[tgt];
        int above = 0;
        for (int i = 1; i <= ds->n_items; i++)
            above += cnt[i] > t;
        for (int j = 0; j < nh; j++) { /* excluded items above the target do not count */
            int dup = 0;
            for (int q = 0; q < j; q++)
                dup |= hist[q] == hist[j];
            if (!dup && hist[j] != tgt && cnt[hist[j]] > t) above--;
        }
        add_rank(res, 1 + above);
    }
    free(hist);
    free(seq);
    finish(res, t0);
    return 0;
}

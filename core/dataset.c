/* The spec's data protocol (core/dataset.h): drop short users, cut to the
 * last n + 3 items, re-index items 1..N by first appearance, leave-one-out
 * splits, popularity over the training parts. */
#include "core/dataset.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/store.h"

/* cut sequences of catalogue indexes in CSR form */
typedef struct {
    int max_len, min_len;
    uint32_t max_cat; /* catalogue indexes must be 1..max_cat */
    uint32_t *cat;
    size_t len, cap;
    int64_t *off;
    size_t users, ucap;
    const char *bad_user; /* set when a sequence holds an index out of range */
    char bad_id[64];
} cut_seqs;

static int cut_add(cut_seqs *c, const uint32_t *items, uint32_t n) {
    if (n < (uint32_t)c->min_len) return 0;
    uint32_t keep = n < (uint32_t)c->max_len + 3 ? n : (uint32_t)c->max_len + 3;
    const uint32_t *p = items + (n - keep);
    for (uint32_t i = 0; i < keep; i++)
        if (p[i] == 0 || p[i] > c->max_cat) return IISAN_EFORMAT;
    if (c->users + 2 > c->ucap) {
        size_t nc = c->ucap ? 2 * c->ucap : 1024;
        int64_t *o = realloc(c->off, nc * sizeof *o);
        if (!o) return IISAN_ENOMEM;
        c->off = o;
        c->ucap = nc;
    }
    if (c->len + keep > c->cap) {
        size_t nc = c->cap ? 2 * c->cap : 8192;
        while (nc < c->len + keep)
            nc *= 2;
        uint32_t *q = realloc(c->cat, nc * sizeof *q);
        if (!q) return IISAN_ENOMEM;
        c->cat = q;
        c->cap = nc;
    }
    if (c->users == 0) c->off[0] = 0;
    memcpy(c->cat + c->len, p, keep * sizeof *p);
    c->len += keep;
    c->off[++c->users] = (int64_t)c->len;
    if (c->users > INT_MAX) return IISAN_ENOMEM;
    return 0;
}

static int cut_user(const char *user_id, const uint32_t *items, uint32_t n, void *arg) {
    cut_seqs *c = arg;
    int rc = cut_add(c, items, n);
    if (rc == IISAN_EFORMAT) snprintf(c->bad_id, sizeof c->bad_id, "%s", user_id);
    return rc;
}

void dataset_free(iisan_dataset *ds) {
    if (!ds) return;
    free(ds->item_cat);
    free(ds->seq_off);
    free(ds->seq);
    free(ds->pop_count);
    free(ds->logpop);
    memset(ds, 0, sizeof *ds);
}

/* re-index, splits' popularity; takes nothing from c (copies) */
static int finish(iisan_dataset *ds, const cut_seqs *c) {
    memset(ds, 0, sizeof *ds);
    ds->max_len = c->max_len;
    ds->n_users = (int)c->users;
    ds->n_interactions = c->len;
    uint32_t *map = calloc((size_t)c->max_cat + 1, sizeof *map);
    ds->seq_off = malloc((c->users + 1) * sizeof *ds->seq_off);
    ds->seq = malloc((c->len ? c->len : 1) * sizeof *ds->seq);
    ds->item_cat = malloc((c->len + 1) * sizeof *ds->item_cat);
    if (!map || !ds->seq_off || !ds->seq || !ds->item_cat) goto oom;
    ds->seq_off[0] = 0;
    if (c->users) memcpy(ds->seq_off, c->off, (c->users + 1) * sizeof *ds->seq_off);
    uint32_t N = 0;
    ds->item_cat[0] = 0;
    for (size_t i = 0; i < c->len; i++) {
        uint32_t k = c->cat[i];
        if (!map[k]) {
            map[k] = ++N;
            ds->item_cat[N] = k;
        }
        ds->seq[i] = (int32_t)map[k];
    }
    free(map);
    map = NULL;
    if (N > INT_MAX - 1) goto oom;
    ds->n_items = (int)N;
    uint32_t *ic = realloc(ds->item_cat, ((size_t)N + 1) * sizeof *ic);
    if (ic) ds->item_cat = ic;
    ds->pop_count = calloc((size_t)N + 1, sizeof *ds->pop_count);
    ds->logpop = malloc(((size_t)N + 1) * sizeof *ds->logpop);
    if (!ds->pop_count || !ds->logpop) goto oom;
    double total = 0;
    for (size_t u = 0; u < c->users; u++)
        for (int64_t j = ds->seq_off[u]; j < ds->seq_off[u + 1] - 2; j++) { /* seq[:-2] */
            ds->pop_count[ds->seq[j]] += 1;
            total += 1;
        }
    ds->logpop[0] = 0.0f;
    for (uint32_t i = 1; i <= N; i++) /* -inf for items seen only as targets */
        ds->logpop[i] = (float)log(ds->pop_count[i] / total);
    return 0;
oom:
    free(map);
    dataset_free(ds);
    return IISAN_ENOMEM;
}

static int check_lens(int max_len, int min_len) {
    return max_len >= 1 && max_len <= (1 << 20) && min_len >= 3 ? 0 : IISAN_EINVAL;
}

int dataset_build(iisan_dataset *ds, struct iisan_store *s, int max_len, int min_len, char *err,
                  size_t errlen) {
    memset(ds, 0, sizeof *ds);
    if (check_lens(max_len, min_len)) {
        if (err)
            snprintf(err, errlen,
                     "dataset: max_len must be at least 1 and min_len at least 3 (got %d, %d)",
                     max_len, min_len);
        return IISAN_EINVAL;
    }
    cut_seqs c = {.max_len = max_len, .min_len = min_len, .max_cat = store_item_count(s)};
    int rc = store_users_foreach(s, cut_user, &c);
    if (!rc) rc = finish(ds, &c);
    if (rc && err) {
        if (rc == IISAN_EFORMAT)
            snprintf(err, errlen,
                     "dataset: user '%s' refers to an item outside the catalogue (1..%u): the "
                     "store is damaged",
                     c.bad_id, c.max_cat);
        else
            snprintf(err, errlen, "dataset: reading the users failed: %s", iisan_strerror(rc));
    }
    free(c.cat);
    free(c.off);
    return rc;
}

int dataset_from_sequences(iisan_dataset *ds, const uint32_t *const *seqs, const uint32_t *lens,
                           int n_users, int max_len, int min_len) {
    memset(ds, 0, sizeof *ds);
    if (check_lens(max_len, min_len) || n_users < 0 || (n_users && (!seqs || !lens)))
        return IISAN_EINVAL;
    cut_seqs c = {.max_len = max_len, .min_len = min_len, .max_cat = 0};
    for (int u = 0; u < n_users; u++)
        for (uint32_t i = 0; i < lens[u]; i++)
            if (seqs[u][i] > c.max_cat) c.max_cat = seqs[u][i];
    int rc = 0;
    for (int u = 0; !rc && u < n_users; u++)
        rc = cut_add(&c, seqs[u], lens[u]);
    if (rc == IISAN_EFORMAT) rc = IISAN_EINVAL; /* a 0 in a sequence */
    if (!rc) rc = finish(ds, &c);
    free(c.cat);
    free(c.off);
    return rc;
}

/* left-pads s[b..e) into out[width] (keeping the last width items) */
static int pad_copy(const int32_t *s, int64_t b, int64_t e, int width, int32_t *out) {
    int64_t k = e - b < width ? e - b : width;
    int z = width - (int)k;
    for (int i = 0; i < z; i++)
        out[i] = 0;
    memcpy(out + z, s + (e - k), (size_t)k * sizeof *out);
    return (int)k;
}

int dataset_sequence(const iisan_dataset *ds, int u, int split, int32_t *out, int32_t *target) {
    if (u < 0 || u >= ds->n_users) return IISAN_EINVAL;
    const int32_t *s = ds->seq + ds->seq_off[u];
    int64_t L = ds->seq_off[u + 1] - ds->seq_off[u];
    int n = ds->max_len;
    switch (split) {
    case SPLIT_TRAIN:
        if (target) *target = 0;
        return pad_copy(s, 0, L - 2, n + 1, out);
    case SPLIT_VALID:
        if (target) *target = s[L - 2];
        return pad_copy(s, 0, L - 2, n, out);
    case SPLIT_TEST:
        if (target) *target = s[L - 1];
        return pad_copy(s, 0, L - 1, n, out);
    default: return IISAN_EINVAL;
    }
}

/* TRAIN gives the training part seq[:-2] (the same items as VALID) */
int dataset_history(const iisan_dataset *ds, int u, int split, int32_t *out) {
    if (u < 0 || u >= ds->n_users) return IISAN_EINVAL;
    const int32_t *s = ds->seq + ds->seq_off[u];
    int64_t L = ds->seq_off[u + 1] - ds->seq_off[u];
    int64_t k;
    switch (split) {
    case SPLIT_TRAIN:
    case SPLIT_VALID: k = L - 2; break;
    case SPLIT_TEST: k = L - 1; break;
    default: return IISAN_EINVAL;
    }
    memcpy(out, s, (size_t)k * sizeof *out);
    return (int)k;
}

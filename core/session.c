/* From a store to a ready model (core/session.h). */
#include "core/session.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/params.h"
#include "core/states.h"
#include "kernels/clock.h"

/* step 1: the checkpoint and its meta */
static int read_ckpt(iisan_session *ss, iisan_store *s, uint32_t version, char *err,
                     size_t errlen) {
    void *blob = NULL;
    size_t len = 0;
    int rc = store_ckpt_get(s, version, &blob, &len, &ss->meta, &ss->version);
    if (rc == IISAN_ENOTFOUND)
        return iisan_fail(err, errlen, rc, "%s",
                          version ? "no such checkpoint version" : "the store holds no checkpoint");
    if (rc) return iisan_fail(err, errlen, rc, "reading the checkpoint: %s", iisan_strerror(rc));
    char e2[400];
    rc = ckpt_decode(blob, len, &ss->ck, e2, sizeof e2);
    free(blob);
    if (rc) {
        snprintf(err, errlen, "checkpoint %u: %s", ss->version, e2);
        return IISAN_EFORMAT;
    }
    return 0;
}

/* The checkpoint's tensors over m's, by name (only names starting with prefix, when not
 * NULL); item_emb.weight row by row: row r of m takes the checkpoint's row of catalogue item
 * rows[r] (r = 0..n_rows-1), or keeps its own when the checkpoint has none (counted in
 * *missing, the first such item's catalogue index in *first_missing). A tensor of m the
 * checkpoint lacks (or holds in another size) keeps m's values and counts in *missing too
 * (*first_missing then 0). h holds m's parameters (host). *reused gets the rows taken.
 * 0, or -1 when out of memory. */
static int overlay(const param_table *pt, float *h, const iisan_ckpt *ck, const uint32_t *rows,
                   int n_rows, const char *prefix, int *reused, int *missing,
                   uint32_t *first_missing) {
    param_table old;
    if (params_build(&old, &ck->c)) return -1;
    const int d = ck->c.d;
    *reused = *missing = 0;
    *first_missing = 0;
    int rc = 0;
    for (int i = 0; !rc && i < pt->n; i++) {
        const param_info *p = &pt->t[i];
        if (prefix && strncmp(p->name, prefix, strlen(prefix))) continue;
        const param_info *q = params_find(&old, p->name);
        if (q && !strcmp(p->name, "item_emb.weight")) {
            uint32_t maxcat = 0;
            for (uint32_t r = 0; r < ck->n_cat; r++)
                maxcat = ck->item_cat[r] > maxcat ? ck->item_cat[r] : maxcat;
            int32_t *row = malloc(((size_t)maxcat + 1) * sizeof *row);
            if (!row) {
                rc = -1;
                break;
            }
            for (uint32_t c = 0; c <= maxcat; c++)
                row[c] = -1;
            for (uint32_t r = 0; r < ck->n_cat; r++)
                row[ck->item_cat[r]] = (int32_t)r;
            for (int r = 0; r < n_rows; r++) {
                uint32_t c = rows[r];
                if (c > maxcat || row[c] < 0) {
                    if (!(*missing)++) *first_missing = c;
                    continue;
                }
                memcpy(h + p->offset + (size_t)r * d, ck->params + q->offset + (size_t)row[c] * d,
                       (size_t)d * sizeof *h);
                (*reused)++;
            }
            free(row);
        } else if (q && q->size == p->size) {
            memcpy(h + p->offset, ck->params + q->offset, p->size * sizeof *h);
        } else if (!(*missing)++) {
            *first_missing = 0;
        }
    }
    params_free(&old);
    return rc;
}

/* step 4: the model, its parameters from the seed and the checkpoint */
static int make_model(iisan_session *ss, iisan_backend *be, const session_options *o,
                      const uint32_t *rows, int n_rows, char *err, size_t errlen) {
    int cap = o->cap_users > 0 ? o->cap_users : 64;
    ss->m = model_create(&ss->c, be, cap, o->seed, err, (int)errlen);
    if (!ss->m) return IISAN_ENOMEM;
    if (o->mode == SESSION_NEW) return 0;
    const size_t bytes = ss->m->pt.total * sizeof(float);
    float *h = malloc(bytes);
    if (!h) return iisan_fail(err, errlen, IISAN_ENOMEM, "%s", "out of memory");
    be->download(be, h, ss->m->w, bytes);
    int missing;
    uint32_t first;
    if (overlay(&ss->m->pt, h, &ss->ck, rows, n_rows, NULL, &ss->reused, &missing, &first)) {
        free(h);
        return iisan_fail(err, errlen, IISAN_ENOMEM, "%s", "out of memory");
    }
    if (missing && o->mode != SESSION_WARM) {
        free(h);
        if (first)
            snprintf(err, errlen,
                     "checkpoint %u has no embedding for catalogue item %u, which the store's "
                     "users now hold: train a new version",
                     ss->version, first);
        else
            snprintf(err, errlen, "checkpoint %u lacks parameters its config names", ss->version);
        return IISAN_EFORMAT;
    }
    be->upload(be, ss->m->w, h, bytes);
    free(h);
    return 0;
}

/* every catalogue index 0..max (the checkpoint's included): the rows a served version may
 * embed */
static uint32_t *catalogue_rows(iisan_store *s, const iisan_ckpt *ck, int *n) {
    uint32_t max = store_item_count(s);
    for (uint32_t r = 0; r < ck->n_cat; r++)
        max = ck->item_cat[r] > max ? ck->item_cat[r] : max;
    uint32_t *rows = malloc(((size_t)max + 1) * sizeof *rows);
    if (!rows) return NULL;
    for (uint32_t c = 0; c <= max; c++)
        rows[c] = c;
    *n = (int)max;
    return rows;
}

/* step 5: IISAN's hidden states, in place or resident in the backend's memory */
static int open_states(iisan_session *ss, iisan_store *s, iisan_backend *be,
                       const session_options *o, char *err, size_t errlen) {
    if (ss->c.kind != MODEL_IISAN) return 0;
    double t0 = iisan_now();
    if (store_reader_begin(s, &ss->rd))
        return iisan_fail(err, errlen, IISAN_EIO, "%s", "cannot read the hidden states");
    ss->st = states_from_reader(ss->rd);
    char fit[400];
    if (states_fit(ss->rd, &ss->c, fit, sizeof fit)) {
        if (o->mode == SESSION_NEW) return iisan_fail(err, errlen, IISAN_EFORMAT, "%s", fit);
        snprintf(err, errlen, "version %u: %s", ss->version, fit);
        return IISAN_EFORMAT;
    }
    if (be->caps.host_memory) return 0;
    /* the GPU reads states from its own memory: every needed item's, uploaded once */
    const uint32_t *rows = ss->ds.item_cat;
    int n = ss->ds.n_items;
    uint32_t *all = NULL;
    if (o->mode == SESSION_SERVE && !(rows = all = catalogue_rows(s, &ss->ck, &n)))
        return iisan_fail(err, errlen, IISAN_ENOMEM, "%s", "out of memory");
    int rc = states_resident_create(be, rows, n, &ss->st, &ss->c, &ss->rs, err, (int)errlen);
    free(all);
    if (rc) return states_check(&ss->st, NULL, 0) ? IISAN_EIO : IISAN_ENOMEM;
    ss->st = resident_states_source(ss->rs);
    char bm[300];
    if (be->status(be, bm, sizeof bm)) {
        snprintf(err, errlen, "the %s backend failed making the states resident: %s", be->name, bm);
        return IISAN_EBACKEND;
    }
    ss->states_seconds = iisan_now() - t0;
    return 0;
}

static int open_steps(iisan_session *ss, iisan_store *s, iisan_backend *be,
                      const session_options *o, char *err, size_t errlen) {
    int rc;
    if (o->mode != SESSION_NEW && (rc = read_ckpt(ss, s, o->version, err, errlen))) return rc;
    ss->c = o->mode == SESSION_NEW ? *o->config : ss->ck.c;
    const int min_len = o->mode == SESSION_NEW ? o->min_len : ss->ck.min_len;
    double t0 = iisan_now();
    if ((rc = dataset_build(&ss->ds, s, ss->c.n, min_len, err, errlen))) return rc;
    ss->dataset_seconds = iisan_now() - t0;
    if (o->need_users && ss->ds.n_users == 0) {
        snprintf(err, errlen, "no users with at least %d items", min_len);
        return IISAN_ENOTFOUND;
    }
    if (ss->c.kind == MODEL_POPULARITY) return 0;
    const int serve = o->mode == SESSION_SERVE;
    const uint32_t *rows = serve ? ss->ck.item_cat : ss->ds.item_cat;
    const int n_rows = serve ? (int)ss->ck.n_cat : ss->ds.n_items + 1;
    if (ss->c.kind == MODEL_SASREC_ID) ss->c.n_items = n_rows - 1;
    if ((rc = make_model(ss, be, o, rows, n_rows, err, errlen))) return rc;
    return open_states(ss, s, be, o, err, errlen);
}

int session_open(iisan_session *ss, iisan_store *s, iisan_backend *be, const session_options *o,
                 char *err, size_t errlen) {
    memset(ss, 0, sizeof *ss);
    int rc = open_steps(ss, s, be, o, err, errlen);
    if (rc) session_close(ss);
    return rc;
}

void session_release_states(iisan_session *ss) {
    states_resident_free(ss->rs);
    if (ss->rd) store_reader_end(ss->rd);
    ss->rs = NULL;
    ss->rd = NULL;
    memset(&ss->st, 0, sizeof ss->st);
}

void session_close(iisan_session *ss) {
    session_release_states(ss);
    model_destroy(ss->m);
    dataset_free(&ss->ds);
    ckpt_free(&ss->ck);
    free(ss->meta);
    memset(ss, 0, sizeof *ss);
}

iisan_model *session_seq_model(const iisan_ckpt *ck, iisan_backend *be, int cap_users, char *err,
                               size_t errlen) {
    iisan_config c = ck->c;
    c.kind = MODEL_SASREC_ID;
    c.n_items = 1;
    iisan_model *m = model_create(&c, be, cap_users, 0, err, (int)errlen);
    if (!m) return NULL;
    const size_t bytes = m->pt.total * sizeof(float);
    float *h = calloc(1, bytes);
    int reused, missing = 0;
    uint32_t first;
    if (!h || overlay(&m->pt, h, ck, NULL, 0, "seq.", &reused, &missing, &first) || missing) {
        snprintf(err, errlen, "%s",
                 missing ? "the checkpoint lacks a sequence-encoder parameter of the right size"
                         : "out of memory");
        free(h);
        model_destroy(m);
        return NULL;
    }
    be->upload(be, m->w, h, bytes);
    free(h);
    return m;
}

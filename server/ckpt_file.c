/* Checkpoints as safetensors files (server/ckpt_file.h). */
#include "server/ckpt_file.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/checkpoint.h"
#include "core/params.h"
#include "store/safetensors.h"

/* the item ids of checkpoint rows 1..N joined by '\n' (malloc'd, *used bytes) */
static char *ids_joined(iisan_store *s, const iisan_ckpt *ck, size_t *used, char *err,
                        size_t errlen) {
    size_t cap = 64 * (size_t)ck->n_cat + 1;
    char *ids = malloc(cap);
    *used = 0;
    if (!ids) return NULL;
    for (uint32_t i = 1; i < ck->n_cat; i++) {
        char id[1024];
        if (store_item_get(s, ck->item_cat[i], id, sizeof id, NULL, 0)) {
            snprintf(err, errlen, "catalogue item %u of the checkpoint is missing",
                     ck->item_cat[i]);
            free(ids);
            return NULL;
        }
        size_t l = strlen(id);
        if (*used + l + 2 > cap) {
            cap = 2 * cap + l;
            char *t = realloc(ids, cap);
            if (!t) {
                free(ids);
                return NULL;
            }
            ids = t;
        }
        memcpy(ids + *used, id, l);
        *used += l;
        if (i + 1 < ck->n_cat) ids[(*used)++] = '\n';
    }
    return ids;
}

int ckpt_file_export(iisan_store *s, uint32_t version, const char *path, uint32_t *ver_out,
                     char *summary, char *err, size_t errlen) {
    void *blob = NULL;
    char *meta = NULL, *cfg = NULL, *ids = NULL;
    size_t len, used = 0;
    uint32_t ver = 0;
    iisan_ckpt ck = {0};
    param_table pt = {0};
    st_writer *w = NULL;
    err[0] = 0;
    int rc = store_ckpt_get(s, version, &blob, &len, &meta, &ver);
    if (rc) {
        snprintf(err, errlen, "%s",
                 rc == IISAN_ENOTFOUND ? "no such checkpoint" : iisan_strerror(rc));
        goto out;
    }
    char e2[400];
    rc = IISAN_EFORMAT;
    if (ckpt_decode(blob, len, &ck, e2, sizeof e2)) {
        snprintf(err, errlen, "checkpoint %u: %s", ver, e2);
        goto out;
    }
    rc = IISAN_ENOMEM;
    if (params_build(&pt, &ck.c) || !(w = st_writer_new())) goto out;
    for (int i = 0; i < pt.n; i++) {
        const param_info *p = &pt.t[i];
        int64_t shape[2] = {p->shape[0], p->shape[1]};
        if (st_writer_add(w, p->name, ST_F32, p->ndim, shape, ck.params + p->offset)) goto out;
    }
    if (!(ids = ids_joined(s, &ck, &used, err, errlen))) {
        if (err[0]) rc = IISAN_EFORMAT;
        goto out;
    }
    int64_t ishape[1] = {(int64_t)used};
    cfg = config_to_json(&ck.c, ck.min_len);
    char vs[16];
    snprintf(vs, sizeof vs, "%u", ver);
    if ((used && st_writer_add(w, "item_ids", ST_U8, 1, ishape, ids)) ||
        st_writer_meta(w, "format", CKPT_FORMAT) || st_writer_meta(w, "format_version", "1") ||
        st_writer_meta(w, "config", cfg) || st_writer_meta(w, "version", vs) ||
        st_writer_meta(w, "figures", meta ? meta : "{}"))
        goto out;
    rc = IISAN_EIO;
    if (st_writer_write(w, path, err, errlen)) goto out;
    if (ver_out) *ver_out = ver;
    if (summary)
        snprintf(summary, 160, "%s, %zu parameters, %u items",
                 ck.c.kind == MODEL_IISAN ? "iisan" : "sasrec-id", pt.total, ck.n_cat - 1);
    rc = 0;
out:
    if (rc && !err[0]) snprintf(err, errlen, "out of memory");
    st_writer_free(w);
    params_free(&pt);
    ckpt_free(&ck);
    free(blob);
    free(meta);
    free(cfg);
    free(ids);
    return rc;
}

/* the parameters of f into ck->params (pt laid out by ck->c) */
static int read_params(st_file *f, const char *path, const param_table *pt, iisan_ckpt *ck,
                       char *err, size_t errlen) {
    ck->nparams = pt->total;
    ck->params = malloc(pt->total * sizeof(float));
    if (!ck->params) return IISAN_ENOMEM;
    for (int i = 0; i < pt->n; i++) {
        const param_info *p = &pt->t[i];
        const st_tensor *t = st_find(f, p->name);
        int ok = t && t->dtype == ST_F32 && t->ndim == p->ndim && t->shape[0] == p->shape[0] &&
                 (p->ndim == 1 || t->shape[1] == p->shape[1]);
        if (!ok) {
            if (p->ndim == 2)
                snprintf(err, errlen, "%s: tensor %s must be F32 [%d, %d]", path, p->name,
                         p->shape[0], p->shape[1]);
            else
                snprintf(err, errlen, "%s: tensor %s must be F32 [%d]", path, p->name, p->shape[0]);
            return IISAN_EFORMAT;
        }
        memcpy(ck->params + p->offset, t->data, p->size * sizeof(float));
    }
    return 0;
}

/* item rows: ids -> catalogue indexes of s */
static int read_items(st_file *f, const char *path, iisan_store *s, iisan_ckpt *ck, char *err,
                      size_t errlen) {
    const st_tensor *ti = st_find(f, "item_ids");
    uint32_t n = 0;
    const char *ids = ti ? ti->data : "";
    size_t ilen = ti ? ti->nbytes : 0;
    if (ti && ti->dtype != ST_U8) {
        snprintf(err, errlen, "%s: item_ids must be U8", path);
        return IISAN_EFORMAT;
    }
    for (size_t i = 0; i < ilen; i++)
        n += ids[i] == '\n';
    if (ilen) n++;
    ck->n_cat = n + 1;
    ck->item_cat = calloc(ck->n_cat, sizeof *ck->item_cat);
    if (!ck->item_cat) return IISAN_ENOMEM;
    for (uint32_t row = 1, at = 0; row <= n; row++) {
        size_t e = at;
        while (e < ilen && ids[e] != '\n')
            e++;
        char id[1024];
        size_t l = e - at < sizeof id - 1 ? e - at : sizeof id - 1;
        memcpy(id, ids + at, l);
        id[l] = 0;
        if (store_item_lookup(s, id, &ck->item_cat[row])) {
            snprintf(err, errlen, "%s: item_ids row %u: '%s' is not in the catalogue", path, row,
                     id);
            return IISAN_EFORMAT;
        }
        at = (uint32_t)e + 1;
    }
    if (ck->c.kind == MODEL_SASREC_ID && ck->c.n_items != (int)n) {
        snprintf(err, errlen, "%s: %d embedding rows but %u item ids", path, ck->c.n_items, n);
        return IISAN_EFORMAT;
    }
    return 0;
}

int ckpt_file_read(iisan_store *s, const char *path, void **blob, size_t *len, char *err,
                   size_t errlen) {
    *blob = NULL;
    st_file *f = NULL;
    if (st_open(&f, path, err, errlen)) return IISAN_EFORMAT;
    iisan_ckpt ck = {0};
    param_table pt = {0};
    int rc = IISAN_EFORMAT;
    const char *fmt = st_meta_get(f, "format"), *cfg = st_meta_get(f, "config");
    if (!fmt || strcmp(fmt, CKPT_FORMAT) || !cfg) {
        snprintf(err, errlen,
                 "%s: not an iisan checkpoint (metadata 'format' must be '" CKPT_FORMAT
                 "' and 'config' present)",
                 path);
        goto out;
    }
    char e2[400];
    if (config_from_json(cfg, strlen(cfg), &ck.c, &ck.min_len, e2, sizeof e2)) {
        snprintf(err, errlen, "%s: %s", path, e2);
        goto out;
    }
    if (ck.c.kind == MODEL_POPULARITY || params_build(&pt, &ck.c)) {
        snprintf(err, errlen, "%s: the config names no trainable model", path);
        goto out;
    }
    if ((rc = read_params(f, path, &pt, &ck, err, errlen))) goto out;
    if ((rc = read_items(f, path, s, &ck, err, errlen))) goto out;
    *blob = ckpt_encode(&ck, len);
    rc = *blob ? 0 : IISAN_ENOMEM;
out:
    if (rc == IISAN_ENOMEM) snprintf(err, errlen, "out of memory");
    ckpt_free(&ck);
    params_free(&pt);
    st_close(f);
    return rc;
}

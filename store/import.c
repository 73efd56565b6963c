/* File imports into the store: items.tsv, users.tsv and hidden states in
 * safetensors. Each file is one write transaction: any error aborts it, so
 * the store never holds part of a file. When the map fills up, the
 * transaction is dropped, the map doubled and the file read again. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/half.h"
#include "store/safetensors.h"
#include "store/store_internal.h"
#include "store/tsv.h"

#define PROGRESS_EVERY 4096u
#define ITEM_CACHE_MAX (1u << 22) /* item ids remembered by a users import */

static void report(iisan_store *s, const char *path, const char *unit, uint64_t done,
                   double fraction, int attempt) {
    if (!s->progress) return;
    store_progress p = {path, unit, done, fraction, attempt};
    s->progress(s->progress_arg, &p);
}

static double tsv_fraction(const tsv_reader *r) {
    return r->size ? (double)r->consumed / (double)r->size : 0.0;
}

#define LN(c) (unsigned long long)(c)->rd.lineno

static int damaged(iisan_store *s, char *err, size_t errlen) {
    store_err(err, errlen, "%s: the store's item index is damaged", s->dir);
    return IISAN_EIO;
}

/* ---- shared by both TSV importers ---- */

typedef struct {
    tsv_reader rd;
    strmap seen;   /* ids of this file -> line */
    strmap cache;  /* users: item id -> catalogue index, this attempt */
    char *rec;     /* item record buffer */
    uint32_t *seq; /* users: one line's catalogue indexes */
    size_t seqcap;
    int64_t last;    /* highest catalogue index */
    uint32_t titled; /* meta "titled" */
    /* results */
    uint32_t added, updated, users, lines;
    uint64_t interactions;
    int add_unknown;
} import_ctx;

static int ctx_init(import_ctx *c, const char *path, char *err, size_t errlen) {
    memset(c, 0, sizeof *c);
    strmap_init(&c->seen);
    strmap_init(&c->cache);
    int rc = tsv_open(&c->rd, path, err, errlen);
    if (rc) return rc;
    c->rec = malloc(TSV_MAX_LINE + 16);
    if (!c->rec) {
        tsv_close(&c->rd);
        store_err(err, errlen, "%s: out of memory", path);
        return IISAN_ENOMEM;
    }
    return 0;
}

static void ctx_free(import_ctx *c) {
    tsv_close(&c->rd);
    strmap_free(&c->seen);
    strmap_free(&c->cache);
    free(c->rec);
    free(c->seq);
}

/* resets the per-attempt state; reads the store's counters */
static int ctx_start(iisan_store *s, MDB_txn *txn, import_ctx *c, int attempt, char *err,
                     size_t errlen) {
    if (attempt > 1) {
        int rc = tsv_rewind(&c->rd, err, errlen);
        if (rc) return rc;
    }
    strmap_clear(&c->seen);
    strmap_clear(&c->cache);
    c->added = c->updated = c->users = c->lines = 0;
    c->interactions = 0;
    c->last = store_last_key(txn, s->item);
    if (c->last < 0 || store_meta_u32(txn, s, "titled", &c->titled)) {
        store_err(err, errlen, "%s: cannot read the catalogue", s->dir);
        return IISAN_EIO;
    }
    return 0;
}

static int lmdb_at(int rc, import_ctx *c, char *err, size_t errlen) {
    char where[512];
    snprintf(where, sizeof where, "%s:%llu", c->rd.path, LN(c));
    return store_lmdb(rc, where, err, errlen);
}

/* checks one id (item or user) of line c->rd.lineno */
static int check_id(iisan_store *s, import_ctx *c, const char *what, const char *id, size_t n,
                    char *err, size_t errlen) {
    char q[96];
    if (!n) {
        store_err(err, errlen, "%s:%llu: empty %s id", c->rd.path, LN(c), what);
        return IISAN_EFORMAT;
    }
    if (n > s->max_key) {
        tsv_quote(q, sizeof q, id, n, 40);
        store_err(err, errlen, "%s:%llu: %s id '%s' is %zu bytes, longer than the limit of %u",
                  c->rd.path, LN(c), what, q, n, s->max_key);
        return IISAN_EFORMAT;
    }
    if (memchr(id, ' ', n)) {
        tsv_quote(q, sizeof q, id, n, 60);
        store_err(err, errlen, "%s:%llu: %s id '%s' contains a space", c->rd.path, LN(c), what, q);
        return IISAN_EFORMAT;
    }
    return 0;
}

static int check_dup(import_ctx *c, const char *what, const char *id, size_t n, char *err,
                     size_t errlen) {
    uint32_t first;
    int r = strmap_put(&c->seen, id, n, (uint32_t)c->rd.lineno, &first);
    if (r == 1) {
        char q[96];
        tsv_quote(q, sizeof q, id, n, 60);
        store_err(err, errlen, "%s:%llu: duplicate %s id '%s' (first on line %u)", c->rd.path,
                  LN(c), what, q, first);
        return IISAN_EFORMAT;
    }
    if (r < 0) store_err(err, errlen, "%s: out of memory", c->rd.path);
    return r;
}

/* a new catalogue item with the next index */
static int item_add(iisan_store *s, MDB_txn *txn, import_ctx *c, const char *id, size_t idlen,
                    const char *title, size_t tlen, uint32_t flags, uint32_t *idx, char *err,
                    size_t errlen) {
    if (c->last >= UINT32_MAX) {
        store_err(err, errlen, "%s:%llu: the catalogue is full", c->rd.path, LN(c));
        return IISAN_EFULL;
    }
    uint32_t i = (uint32_t)++c->last;
    uint16_t l16 = (uint16_t)idlen;
    memcpy(c->rec, &flags, 4);
    memcpy(c->rec + 4, &l16, 2);
    memcpy(c->rec + ITEM_HDR, id, idlen);
    if (tlen) memcpy(c->rec + ITEM_HDR + idlen, title, tlen);
    MDB_val k = {idlen, (void *)id}, v = {4, &i};
    int rc = mdb_put(txn, s->item_by_id, &k, &v, MDB_NOOVERWRITE);
    if (!rc) {
        MDB_val ik = {4, &i}, iv = {ITEM_HDR + idlen + tlen, c->rec};
        rc = mdb_put(txn, s->item, &ik, &iv, MDB_APPEND);
    }
    if (rc) return lmdb_at(rc, c, err, errlen);
    c->added++;
    if (flags & ITEM_TITLED) c->titled++;
    *idx = i;
    return 0;
}

/* ---- items.tsv ---- */

static int item_update(iisan_store *s, MDB_txn *txn, import_ctx *c, uint32_t idx, const char *title,
                       size_t tlen, char *err, size_t errlen) {
    MDB_val k = {4, &idx}, v;
    int rc = mdb_get(txn, s->item, &k, &v);
    uint32_t flags;
    uint16_t idlen;
    if (rc || v.mv_size < ITEM_HDR) goto damaged;
    memcpy(&flags, v.mv_data, 4);
    memcpy(&idlen, (char *)v.mv_data + 4, 2);
    if (v.mv_size < ITEM_HDR + (size_t)idlen) goto damaged;
    const char *old = (const char *)v.mv_data + ITEM_HDR + idlen;
    size_t oldlen = v.mv_size - ITEM_HDR - idlen;
    uint32_t nflags = (flags & ~(ITEM_TITLED | ITEM_FROM_USERS)) | (tlen ? ITEM_TITLED : 0);
    int same_title = oldlen == tlen && !memcmp(old, title, tlen);
    if (same_title && nflags == flags) return 0;
    if (!same_title) c->updated++;
    if ((flags & ITEM_TITLED) && !(nflags & ITEM_TITLED)) c->titled--;
    if (!(flags & ITEM_TITLED) && (nflags & ITEM_TITLED)) c->titled++;
    memcpy(c->rec, &nflags, 4);
    memcpy(c->rec + 4, &idlen, 2);
    memcpy(c->rec + ITEM_HDR, (const char *)v.mv_data + ITEM_HDR, idlen);
    if (tlen) memcpy(c->rec + ITEM_HDR + idlen, title, tlen);
    MDB_val nv = {ITEM_HDR + idlen + tlen, c->rec};
    if ((rc = mdb_put(txn, s->item, &k, &nv, 0))) return lmdb_at(rc, c, err, errlen);
    return 0;
damaged:
    store_err(err, errlen, "%s:%llu: the store's record of item %u is damaged", c->rd.path, LN(c),
              idx);
    return IISAN_EIO;
}

static int items_txn(iisan_store *s, MDB_txn *txn, void *arg, int attempt, char *err,
                     size_t errlen) {
    import_ctx *c = arg;
    int rc = ctx_start(s, txn, c, attempt, err, errlen);
    if (rc) return rc;
    char *line;
    size_t len;
    while ((rc = tsv_next(&c->rd, &line, &len, err, errlen)) == 1) {
        if (c->rd.lineno % PROGRESS_EVERY == 0)
            report(s, c->rd.path, "lines", c->rd.lineno, tsv_fraction(&c->rd), attempt);
        if (len == 0) continue; /* blank line */
        char *tab = memchr(line, '\t', len);
        if (!tab) {
            store_err(err, errlen, "%s:%llu: missing tab (expected item_id<TAB>title)", c->rd.path,
                      LN(c));
            return IISAN_EFORMAT;
        }
        size_t idlen = (size_t)(tab - line), tlen = len - idlen - 1;
        const char *title = tab + 1;
        if ((rc = check_id(s, c, "item", line, idlen, err, errlen))) return rc;
        if (memchr(title, '\t', tlen)) {
            store_err(err, errlen,
                      "%s:%llu: more than two columns (a tab in the title; expected "
                      "item_id<TAB>title)",
                      c->rd.path, LN(c));
            return IISAN_EFORMAT;
        }
        if ((rc = check_dup(c, "item", line, idlen, err, errlen))) return rc;
        c->lines++;
        MDB_val k = {idlen, line}, v;
        rc = mdb_get(txn, s->item_by_id, &k, &v);
        if (rc == 0 && v.mv_size == 4) {
            uint32_t idx;
            memcpy(&idx, v.mv_data, 4);
            if ((rc = item_update(s, txn, c, idx, title, tlen, err, errlen))) return rc;
        } else if (rc == MDB_NOTFOUND) {
            uint32_t idx;
            rc = item_add(s, txn, c, line, idlen, title, tlen, tlen ? ITEM_TITLED : 0, &idx, err,
                          errlen);
            if (rc) return rc;
        } else {
            return rc ? lmdb_at(rc, c, err, errlen) : damaged(s, err, errlen);
        }
    }
    if (rc < 0) return rc;
    if ((rc = store_meta_put_u32(txn, s, "titled", c->titled))) return rc;
    report(s, c->rd.path, "lines", c->lines, 1.0, attempt);
    return 0;
}

int store_import_items(iisan_store *s, const char *path, uint32_t *n_added, uint32_t *n_updated,
                       char *err, size_t errlen) {
    import_ctx c;
    int rc = ctx_init(&c, path, err, errlen);
    if (rc) return rc;
    rc = store_write(s, items_txn, &c, err, errlen);
    if (!rc) {
        if (n_added) *n_added = c.added;
        if (n_updated) *n_updated = c.updated;
    }
    ctx_free(&c);
    return rc;
}

/* ---- users.tsv ---- */

/* catalogue index of an item id of a users line (cached), adding unknown
 * ids when the import allows it */
static int resolve_item(iisan_store *s, MDB_txn *txn, import_ctx *c, const char *id, size_t n,
                        uint32_t *idx, char *err, size_t errlen) {
    if (strmap_get(&c->cache, id, n, idx)) return 0;
    MDB_val k = {n, (void *)id}, v;
    int rc = mdb_get(txn, s->item_by_id, &k, &v);
    if (rc == 0 && v.mv_size == 4) {
        memcpy(idx, v.mv_data, 4);
    } else if (rc == MDB_NOTFOUND && c->add_unknown) {
        if ((rc = item_add(s, txn, c, id, n, "", 0, ITEM_FROM_USERS, idx, err, errlen))) return rc;
    } else if (rc == MDB_NOTFOUND) {
        char q[96];
        tsv_quote(q, sizeof q, id, n, 60);
        store_err(err, errlen, "%s:%llu: unknown item id '%s' (not in the catalogue)", c->rd.path,
                  LN(c), q);
        return IISAN_EFORMAT;
    } else {
        return rc ? lmdb_at(rc, c, err, errlen) : damaged(s, err, errlen);
    }
    if (c->cache.n < ITEM_CACHE_MAX && strmap_put(&c->cache, id, n, *idx, NULL) < 0) {
        store_err(err, errlen, "%s: out of memory", c->rd.path);
        return IISAN_ENOMEM;
    }
    return 0;
}

static int users_txn(iisan_store *s, MDB_txn *txn, void *arg, int attempt, char *err,
                     size_t errlen) {
    import_ctx *c = arg;
    int rc = ctx_start(s, txn, c, attempt, err, errlen);
    if (rc) return rc;
    char *line, q[96];
    size_t len;
    while ((rc = tsv_next(&c->rd, &line, &len, err, errlen)) == 1) {
        if (c->rd.lineno % PROGRESS_EVERY == 0)
            report(s, c->rd.path, "lines", c->rd.lineno, tsv_fraction(&c->rd), attempt);
        if (len == 0) continue; /* blank line */
        char *tab = memchr(line, '\t', len);
        if (!tab) {
            store_err(err, errlen, "%s:%llu: missing tab (expected user_id<TAB>item ids)",
                      c->rd.path, LN(c));
            return IISAN_EFORMAT;
        }
        size_t ulen = (size_t)(tab - line);
        const char *p = tab + 1, *end = line + len;
        if ((rc = check_id(s, c, "user", line, ulen, err, errlen))) return rc;
        if (memchr(p, '\t', (size_t)(end - p))) {
            store_err(err, errlen,
                      "%s:%llu: more than two columns (a tab in the item list; expected "
                      "user_id<TAB>item ids separated by spaces)",
                      c->rd.path, LN(c));
            return IISAN_EFORMAT;
        }
        if ((rc = check_dup(c, "user", line, ulen, err, errlen))) return rc;
        size_t n = 0;
        for (;;) {
            while (p < end && *p == ' ')
                p++;
            if (p == end) break;
            const char *q0 = p;
            while (p < end && *p != ' ')
                p++;
            size_t il = (size_t)(p - q0);
            if ((rc = check_id(s, c, "item", q0, il, err, errlen))) return rc;
            uint32_t idx;
            if ((rc = resolve_item(s, txn, c, q0, il, &idx, err, errlen))) return rc;
            if (n == c->seqcap) {
                size_t nc = c->seqcap ? 2 * c->seqcap : 256;
                uint32_t *ns = realloc(c->seq, nc * sizeof *ns);
                if (!ns) {
                    store_err(err, errlen, "%s: out of memory", c->rd.path);
                    return IISAN_ENOMEM;
                }
                c->seq = ns;
                c->seqcap = nc;
            }
            c->seq[n++] = idx;
        }
        if (!n) {
            tsv_quote(q, sizeof q, line, ulen, 60);
            store_err(err, errlen, "%s:%llu: user '%s' has no item ids", c->rd.path, LN(c), q);
            return IISAN_EFORMAT;
        }
        MDB_val k = {ulen, line}, v = {n * 4, c->seq};
        if ((rc = mdb_put(txn, s->user, &k, &v, 0))) return lmdb_at(rc, c, err, errlen);
        c->users++;
        c->interactions += n;
    }
    if (rc < 0) return rc;
    report(s, c->rd.path, "lines", c->users, 1.0, attempt);
    return 0;
}

int store_import_users(iisan_store *s, const char *path, int add_unknown_items, uint32_t *n_users,
                       uint64_t *n_interactions, char *err, size_t errlen) {
    import_ctx c;
    int rc = ctx_init(&c, path, err, errlen);
    if (rc) return rc;
    c.add_unknown = add_unknown_items;
    rc = store_write(s, users_txn, &c, err, errlen);
    if (!rc) {
        if (n_users) *n_users = c.users;
        if (n_interactions) *n_interactions = c.interactions;
    }
    ctx_free(&c);
    return rc;
}

/* ---- hidden states (safetensors) ---- */

typedef struct {
    const char *path;
    const st_tensor *t[2]; /* "text", "image" or NULL */
    const char *backbone[2];
    int nstates[2], width[2];
    const char *ids;         /* item_ids bytes */
    size_t *id_off, *id_len; /* [n] */
    uint32_t n;
    uint32_t *idx; /* [n] catalogue indexes */
    uint16_t *buf; /* one item converted from F32 */
} states_ctx;

static int states_txn(iisan_store *s, MDB_txn *txn, void *arg, int attempt, char *err,
                      size_t errlen) {
    states_ctx *c = arg;
    int rc;
    for (int m = 0; m < 2; m++)
        if (c->t[m] && (rc = store_states_check(s, txn, m, c->backbone[m], c->nstates[m],
                                                c->width[m], c->path, err, errlen)))
            return rc;
    for (uint32_t i = 0; i < c->n; i++) {
        MDB_val k = {c->id_len[i], (void *)(c->ids + c->id_off[i])}, v;
        rc = mdb_get(txn, s->item_by_id, &k, &v);
        if (rc == MDB_NOTFOUND) {
            char q[96];
            tsv_quote(q, sizeof q, c->ids + c->id_off[i], c->id_len[i], 60);
            store_err(err, errlen,
                      "%s: item_ids entry %u: unknown item id '%s' (not in the catalogue)", c->path,
                      i + 1, q);
            return IISAN_EFORMAT;
        }
        if (rc || v.mv_size != 4)
            return rc ? store_lmdb(rc, c->path, err, errlen) : damaged(s, err, errlen);
        memcpy(&c->idx[i], v.mv_data, 4);
    }
    uint64_t done = 0, total = (uint64_t)c->n * ((c->t[0] != NULL) + (c->t[1] != NULL));
    for (int m = 0; m < 2; m++) {
        const st_tensor *t = c->t[m];
        if (!t) continue;
        size_t per = (size_t)c->nstates[m] * c->width[m];
        for (uint32_t i = 0; i < c->n; i++) {
            MDB_val k = {4, &c->idx[i]}, v = {per * 2, NULL};
            if (t->dtype == ST_F16) {
                v.mv_data = (char *)t->data + (size_t)i * per * 2;
            } else {
                const char *src = (const char *)t->data + (size_t)i * per * 4;
                for (size_t e = 0; e < per; e++) {
                    float f;
                    memcpy(&f, src + e * 4, 4);
                    c->buf[e] = iisan_float_to_half(f);
                }
                v.mv_data = c->buf;
            }
            if ((rc = mdb_put(txn, s->state[m], &k, &v, 0)))
                return store_lmdb(rc, c->path, err, errlen);
            if (++done % PROGRESS_EVERY == 0)
                report(s, c->path, "items", done, (double)done / (double)total, attempt);
        }
    }
    report(s, c->path, "items", done, 1.0, attempt);
    return 0;
}

/* validates the file's layout before any transaction */
static int states_prepare(states_ctx *c, const st_file *f, char *err, size_t errlen) {
    static const char *const names[2] = {"text", "image"};
    static const char *const meta_keys[2] = {"text_backbone", "image_backbone"};
    const char *path = c->path;
    for (size_t i = 0; i < f->n_tensors; i++) {
        const char *nm = f->tensors[i].name;
        if (strcmp(nm, "text") && strcmp(nm, "image") && strcmp(nm, "item_ids")) {
            store_err(err, errlen,
                      "%s: unexpected tensor '%s' (a hidden-state file holds \"text\", "
                      "\"image\" and \"item_ids\"; docs/formats.md)",
                      path, nm);
            return IISAN_EFORMAT;
        }
    }
    const st_tensor *ids = st_find(f, "item_ids");
    if (!ids || ids->dtype != ST_U8 || ids->ndim != 1) {
        store_err(err, errlen, "%s: %s", path,
                  !ids ? "no \"item_ids\" tensor (U8, newline-separated item ids)"
                       : "\"item_ids\" must be a 1-D U8 tensor (newline-separated item ids)");
        return IISAN_EFORMAT;
    }
    c->t[0] = st_find(f, "text");
    c->t[1] = st_find(f, "image");
    if (!c->t[0] && !c->t[1]) {
        store_err(err, errlen, "%s: neither a \"text\" nor an \"image\" tensor", path);
        return IISAN_EFORMAT;
    }
    /* the ids */
    const char *b = ids->data;
    size_t len = ids->nbytes;
    if (len && b[len - 1] == '\n') len--; /* one trailing newline is fine */
    size_t bad = utf8_check(b, len);
    if (bad < len || memchr(b, '\0', len)) {
        store_err(err, errlen, "%s: item_ids is not valid UTF-8 text (byte %zu)", path,
                  bad < len ? bad : (size_t)((const char *)memchr(b, '\0', len) - b));
        return IISAN_EFORMAT;
    }
    size_t n = len ? 1 : 0;
    for (size_t i = 0; i < len; i++)
        n += b[i] == '\n';
    if (n > UINT32_MAX) {
        store_err(err, errlen, "%s: too many item ids", path);
        return IISAN_EFORMAT;
    }
    c->n = (uint32_t)n;
    c->ids = b;
    c->id_off = malloc((n ? n : 1) * sizeof *c->id_off);
    c->id_len = malloc((n ? n : 1) * sizeof *c->id_len);
    c->idx = malloc((n ? n : 1) * sizeof *c->idx);
    if (!c->id_off || !c->id_len || !c->idx) {
        store_err(err, errlen, "%s: out of memory", path);
        return IISAN_ENOMEM;
    }
    strmap seen;
    strmap_init(&seen);
    int rc = 0;
    for (size_t i = 0, at = 0; i < n; i++) {
        const char *nl = memchr(b + at, '\n', len - at);
        size_t l = nl ? (size_t)(nl - (b + at)) : len - at;
        c->id_off[i] = at;
        c->id_len[i] = l;
        char q[96];
        tsv_quote(q, sizeof q, b + at, l, 60);
        uint32_t first;
        if (!l || memchr(b + at, '\t', l) || memchr(b + at, ' ', l) || memchr(b + at, '\r', l)) {
            store_err(err, errlen,
                      "%s: item_ids entry %zu ('%s') is empty or holds a space, tab "
                      "or carriage return",
                      path, i + 1, q);
            rc = IISAN_EFORMAT;
        } else if ((rc = strmap_put(&seen, b + at, l, (uint32_t)i + 1, &first)) == 1) {
            store_err(err, errlen,
                      "%s: item_ids entry %zu: duplicate item id '%s' (first as "
                      "entry %u)",
                      path, i + 1, q, first);
            rc = IISAN_EFORMAT;
        } else if (rc < 0) {
            store_err(err, errlen, "%s: out of memory", path);
        }
        if (rc) break;
        at += l + 1;
    }
    strmap_free(&seen);
    if (rc) return rc;
    size_t maxper = 0;
    for (int m = 0; m < 2; m++) {
        const st_tensor *t = c->t[m];
        if (!t) continue;
        if ((t->dtype != ST_F16 && t->dtype != ST_F32) || t->ndim != 3) {
            store_err(err, errlen,
                      "%s: \"%s\" must be F16 or F32 [N, L+1, D], not %s with %d "
                      "dimensions",
                      path, names[m], st_dtype_name(t->dtype), t->ndim);
            return IISAN_EFORMAT;
        }
        if (t->shape[0] != (int64_t)n) {
            store_err(err, errlen, "%s: \"%s\" holds %lld items but item_ids lists %zu", path,
                      names[m], (long long)t->shape[0], n);
            return IISAN_EFORMAT;
        }
        if (t->shape[1] < 1 || t->shape[2] < 1 || t->shape[1] > 4096 || t->shape[2] > 65536) {
            store_err(err, errlen, "%s: \"%s\": L+1 = %lld and D = %lld are out of range", path,
                      names[m], (long long)t->shape[1], (long long)t->shape[2]);
            return IISAN_EFORMAT;
        }
        c->nstates[m] = (int)t->shape[1];
        c->width[m] = (int)t->shape[2];
        size_t per = (size_t)c->nstates[m] * c->width[m];
        if (per > maxper) maxper = per;
        c->backbone[m] = st_meta_get(f, meta_keys[m]);
        if (!c->backbone[m] || !*c->backbone[m] || strlen(c->backbone[m]) >= 128) {
            store_err(err, errlen,
                      "%s: metadata \"%s\" (the backbone's name, under 128 bytes) "
                      "is %s",
                      path, meta_keys[m], c->backbone[m] ? "too long or empty" : "missing");
            return IISAN_EFORMAT;
        }
    }
    c->buf = malloc((maxper ? maxper : 1) * sizeof *c->buf);
    if (!c->buf) {
        store_err(err, errlen, "%s: out of memory", path);
        return IISAN_ENOMEM;
    }
    return 0;
}

int store_import_states(iisan_store *s, const char *path, uint32_t *n_items, char *err,
                        size_t errlen) {
    st_file *f;
    int rc = st_open(&f, path, err, errlen);
    if (rc) return rc;
    states_ctx c;
    memset(&c, 0, sizeof c);
    c.path = path;
    rc = states_prepare(&c, f, err, errlen);
    if (!rc) rc = store_write(s, states_txn, &c, err, errlen);
    if (!rc && n_items) *n_items = c.n;
    free(c.id_off);
    free(c.id_len);
    free(c.idx);
    free(c.buf);
    st_close(f);
    return rc;
}

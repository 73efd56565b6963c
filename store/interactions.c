/* Group-committed interactions (store/interactions.h), on the store's
 * internal API (store_internal.h): one write transaction per batch, the map
 * grown under an exclusive lock so that no read transaction of this process
 * is open while LMDB remaps. */
#include "store/interactions.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "store/store_internal.h"

struct store_ix {
    iisan_store *s;
    MDB_dbi ilog, deleted, state, jobs;
    pthread_rwlock_t lock; /* shared: any transaction; exclusive: map resize */
};

iisan_store *store_ix_store(store_ix *x) { return x->s; }
void store_ix_rdlock(store_ix *x) { pthread_rwlock_rdlock(&x->lock); }
void store_ix_wrlock(store_ix *x) { pthread_rwlock_wrlock(&x->lock); }
void store_ix_unlock(store_ix *x) { pthread_rwlock_unlock(&x->lock); }

int store_ix_open(iisan_store *s, store_ix **out, char *err, size_t errlen) {
    *out = NULL;
    store_ix *x = calloc(1, sizeof *x);
    if (!x) {
        store_err(err, errlen, "%s: out of memory", s->dir);
        return IISAN_ENOMEM;
    }
    x->s = s;
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (!rc) {
        rc = mdb_dbi_open(txn, "ilog", MDB_CREATE | MDB_INTEGERKEY, &x->ilog);
        if (!rc) rc = mdb_dbi_open(txn, "item_deleted", MDB_CREATE | MDB_INTEGERKEY, &x->deleted);
        if (!rc) rc = mdb_dbi_open(txn, "serve", MDB_CREATE, &x->state);
        if (!rc) rc = mdb_dbi_open(txn, "jobs", MDB_CREATE | MDB_INTEGERKEY, &x->jobs);
        if (rc)
            mdb_txn_abort(txn);
        else
            rc = mdb_txn_commit(txn);
    }
    if (rc) {
        store_err(err, errlen, "%s: opening the interaction log: %s", s->dir, mdb_strerror(rc));
        free(x);
        return rc == MDB_MAP_FULL ? IISAN_EFULL : IISAN_EIO;
    }
    pthread_rwlock_init(&x->lock, NULL);
    *out = x;
    return 0;
}

void store_ix_close(store_ix *x) {
    if (!x) return;
    pthread_rwlock_destroy(&x->lock);
    free(x);
}

/* begins a transaction under the shared lock (held on success) */
static int begin(store_ix *x, unsigned flags, MDB_txn **txn) {
    for (int tries = 0;; tries++) {
        pthread_rwlock_rdlock(&x->lock);
        int rc = mdb_txn_begin(x->s->env, NULL, flags, txn);
        if (rc != MDB_MAP_RESIZED || tries) {
            if (rc) pthread_rwlock_unlock(&x->lock);
            return rc;
        }
        pthread_rwlock_unlock(&x->lock);
        pthread_rwlock_wrlock(&x->lock);
        rc = store_adopt_map(x->s);
        pthread_rwlock_unlock(&x->lock);
        if (rc) return rc;
    }
}

static int append_txn(store_ix *x, MDB_txn *txn, const store_interaction *v, size_t n,
                      uint64_t *first, char *err, size_t errlen) {
    iisan_store *s = x->s;
    int64_t last_item = store_last_key(txn, s->item);
    if (last_item < 0) {
        store_err(err, errlen, "%s: cannot read the catalogue", s->dir);
        return IISAN_EIO;
    }
    /* the last ilog key (u64) */
    uint64_t seq = 0;
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, x->ilog, &c);
    if (rc) return store_lmdb(rc, "interaction log", err, errlen);
    MDB_val k, d;
    rc = mdb_cursor_get(c, &k, &d, MDB_LAST);
    if (rc == 0 && k.mv_size == 8)
        memcpy(&seq, k.mv_data, 8);
    else if (rc != MDB_NOTFOUND) {
        mdb_cursor_close(c);
        store_err(err, errlen, "%s: the interaction log is damaged", s->dir);
        return IISAN_EIO;
    }
    mdb_cursor_close(c);
    *first = seq + 1;
    uint32_t *buf = NULL;
    size_t cap = 0;
    char *rec = NULL;
    size_t rcap = 0;
    for (size_t i = 0; i < n; i++) {
        const store_interaction *it = &v[i];
        size_t ul = strlen(it->user_id);
        if (it->item == 0 || it->item > (uint64_t)last_item || ul == 0 || ul > s->max_key) {
            store_err(err, errlen, "interaction %zu: %s", i,
                      ul == 0 || ul > s->max_key ? "bad user id length"
                                                 : "item outside the catalogue");
            rc = IISAN_EINVAL;
            goto out;
        }
        MDB_val uk = {ul, (void *)it->user_id}, uv;
        rc = mdb_get(txn, s->user, &uk, &uv);
        size_t have = 0;
        if (rc == 0) {
            if (uv.mv_size % 4) {
                store_err(err, errlen, "%s: user '%s' has a damaged sequence", s->dir, it->user_id);
                rc = IISAN_EIO;
                goto out;
            }
            have = uv.mv_size / 4;
        } else if (rc != MDB_NOTFOUND) {
            rc = store_lmdb(rc, "reading a user", err, errlen);
            goto out;
        }
        if (have + 1 > cap) {
            size_t nc = have + 1 > 2 * cap ? have + 1 : 2 * cap;
            uint32_t *p = realloc(buf, nc * 4);
            if (!p) {
                rc = IISAN_ENOMEM;
                goto out;
            }
            buf = p;
            cap = nc;
        }
        if (have) memcpy(buf, uv.mv_data, have * 4); /* values are only 2-byte aligned */
        buf[have] = it->item;
        MDB_val nv = {(have + 1) * 4, buf};
        if ((rc = mdb_put(txn, s->user, &uk, &nv, 0))) {
            rc = store_lmdb(rc, "writing a user", err, errlen);
            goto out;
        }
        if (12 + ul > rcap) {
            char *p = realloc(rec, 12 + ul + 64);
            if (!p) {
                rc = IISAN_ENOMEM;
                goto out;
            }
            rec = p;
            rcap = 12 + ul + 64;
        }
        memcpy(rec, &it->timestamp, 8);
        memcpy(rec + 8, &it->item, 4);
        memcpy(rec + 12, it->user_id, ul);
        uint64_t key = ++seq;
        MDB_val lk = {8, &key}, lv = {12 + ul, rec};
        if ((rc = mdb_put(txn, x->ilog, &lk, &lv, MDB_APPEND))) {
            rc = store_lmdb(rc, "writing the interaction log", err, errlen);
            goto out;
        }
    }
    rc = 0;
out:
    free(buf);
    free(rec);
    return rc;
}

/* one write transaction running fn, committed with fsync; a full map is grown
 * under the exclusive lock and fn run again from the start */
typedef int (*ix_txn_fn)(store_ix *x, MDB_txn *txn, void *ctx, char *err, size_t errlen);

static int ix_write(store_ix *x, ix_txn_fn fn, void *ctx, char *err, size_t errlen) {
    for (;;) {
        MDB_txn *txn;
        int rc = begin(x, 0, &txn);
        if (rc) {
            store_err(err, errlen, "%s: cannot begin a write transaction: %s", x->s->dir,
                      mdb_strerror(rc));
            return IISAN_EIO;
        }
        rc = fn(x, txn, ctx, err, errlen);
        if (rc)
            mdb_txn_abort(txn);
        else
            rc = store_commit(x->s, txn, err, errlen);
        pthread_rwlock_unlock(&x->lock);
        if (rc != ST_RETRY) return rc;
        pthread_rwlock_wrlock(&x->lock);
        rc = store_grow_map(x->s, err, errlen);
        pthread_rwlock_unlock(&x->lock);
        if (rc) return rc;
    }
}

typedef struct {
    const store_interaction *v;
    size_t n;
    uint64_t first;
} append_ctx;

static int append_fn(store_ix *x, MDB_txn *txn, void *arg, char *err, size_t errlen) {
    append_ctx *c = arg;
    return append_txn(x, txn, c->v, c->n, &c->first, err, errlen);
}

int store_ix_append(store_ix *x, const store_interaction *v, size_t n, uint64_t *first_seq,
                    char *err, size_t errlen) {
    if (n == 0) return 0;
    if (!v) return IISAN_EINVAL;
    append_ctx c = {v, n, 0};
    int rc = ix_write(x, append_fn, &c, err, errlen);
    if (rc == 0 && first_seq) *first_seq = c.first;
    return rc;
}

/* ---- catalogue ---- */

static int item_put_one(store_ix *x, MDB_txn *txn, store_item_put *c, uint32_t *titled, char *err,
                        size_t errlen) {
    iisan_store *s = x->s;
    size_t idlen = strlen(c->item_id);
    MDB_val k = {idlen, (void *)c->item_id}, v;
    int rc = mdb_get(txn, s->item_by_id, &k, &v);
    uint32_t nflags = c->tlen ? ITEM_TITLED : 0, flags = 0;
    char *rec = malloc(ITEM_HDR + idlen + c->tlen + 1);
    if (!rec) return IISAN_ENOMEM;
    uint16_t l16 = (uint16_t)idlen;
    if (rc == MDB_NOTFOUND) { /* a new item: the next index */
        int64_t last = store_last_key(txn, s->item);
        if (last < 0 || last >= UINT32_MAX) {
            free(rec);
            store_err(err, errlen, "%s: cannot add to the catalogue", s->dir);
            return last < 0 ? IISAN_EIO : IISAN_EFULL;
        }
        c->idx = (uint32_t)last + 1;
        c->created = 1;
        MDB_val nv = {4, &c->idx};
        rc = mdb_put(txn, s->item_by_id, &k, &nv, MDB_NOOVERWRITE);
    } else if (rc == 0 && v.mv_size == 4) {
        memcpy(&c->idx, v.mv_data, 4);
        c->created = 0;
        MDB_val ik = {4, &c->idx}, iv;
        if (mdb_get(txn, s->item, &ik, &iv) || iv.mv_size < ITEM_HDR) {
            free(rec);
            store_err(err, errlen, "%s: the record of item %u is damaged", s->dir, c->idx);
            return IISAN_EIO;
        }
        memcpy(&flags, iv.mv_data, 4);
        nflags |= flags & ~(ITEM_TITLED | ITEM_FROM_USERS);
        rc = 0;
    } else if (rc == 0) {
        rc = MDB_CORRUPTED;
    }
    if (rc) {
        free(rec);
        return store_lmdb(rc, "adding an item", err, errlen);
    }
    memcpy(rec, &nflags, 4);
    memcpy(rec + 4, &l16, 2);
    memcpy(rec + ITEM_HDR, c->item_id, idlen);
    if (c->tlen) memcpy(rec + ITEM_HDR + idlen, c->title, c->tlen);
    MDB_val ik = {4, &c->idx}, iv = {ITEM_HDR + idlen + c->tlen, rec};
    rc = mdb_put(txn, s->item, &ik, &iv, c->created ? MDB_APPEND : 0);
    free(rec);
    if (rc) return store_lmdb(rc, "adding an item", err, errlen);
    if ((flags & ITEM_TITLED) && !(nflags & ITEM_TITLED)) (*titled)--;
    if (!(flags & ITEM_TITLED) && (nflags & ITEM_TITLED)) (*titled)++;
    rc = mdb_del(txn, x->deleted, &ik, NULL);
    if (rc && rc != MDB_NOTFOUND) return store_lmdb(rc, "undeleting an item", err, errlen);
    return 0;
}

typedef struct {
    store_item_put *v;
    size_t n;
} items_put_ctx;

static int items_put_fn(store_ix *x, MDB_txn *txn, void *arg, char *err, size_t errlen) {
    items_put_ctx *c = arg;
    uint32_t titled;
    if (store_meta_u32(txn, x->s, "titled", &titled)) return IISAN_EIO;
    for (size_t i = 0; i < c->n; i++) {
        int rc = item_put_one(x, txn, &c->v[i], &titled, err, errlen);
        if (rc) return rc;
    }
    return store_meta_put_u32(txn, x->s, "titled", titled);
}

int store_ix_items_put(store_ix *x, store_item_put *v, size_t n, char *err, size_t errlen) {
    for (size_t i = 0; i < n; i++) {
        size_t idlen = v[i].item_id ? strlen(v[i].item_id) : 0;
        if (!idlen || idlen > x->s->max_key) {
            store_err(err, errlen, "item %zu: item ids are 1..%u bytes", i, x->s->max_key);
            return IISAN_EINVAL;
        }
        if (v[i].tlen > STORE_TITLE_MAX || (v[i].tlen && !v[i].title)) {
            store_err(err, errlen, "item %zu: titles are at most %d bytes", i, STORE_TITLE_MAX);
            return IISAN_EINVAL;
        }
        for (size_t j = 0; j < v[i].tlen; j++) {
            char ch = v[i].title[j];
            if (ch == '\0' || ch == '\t' || ch == '\n' || ch == '\r') {
                store_err(err, errlen, "item %zu: a title may not hold NUL, TAB, CR or LF", i);
                return IISAN_EINVAL;
            }
        }
    }
    items_put_ctx c = {v, n};
    return n ? ix_write(x, items_put_fn, &c, err, errlen) : 0;
}

typedef struct {
    uint32_t idx;
} item_del_ctx;

static int item_del_fn(store_ix *x, MDB_txn *txn, void *arg, char *err, size_t errlen) {
    item_del_ctx *c = arg;
    int64_t t = (int64_t)time(NULL);
    MDB_val k = {4, &c->idx}, v = {8, &t};
    int rc = mdb_put(txn, x->deleted, &k, &v, 0);
    return rc ? store_lmdb(rc, "deleting an item", err, errlen) : 0;
}

int store_ix_item_delete(store_ix *x, const char *item_id, uint32_t *idx, char *err,
                         size_t errlen) {
    item_del_ctx c;
    int rc = store_ix_item_lookup(x, item_id, &c.idx);
    if (rc) {
        store_err(err, errlen, "unknown item id");
        return rc;
    }
    rc = ix_write(x, item_del_fn, &c, err, errlen);
    if (!rc && idx) *idx = c.idx;
    return rc;
}

int store_ix_item_info(store_ix *x, const char *item_id, store_item_info *out) {
    memset(out, 0, sizeof *out);
    size_t idlen = item_id ? strlen(item_id) : 0;
    if (!idlen || idlen > x->s->max_key) return IISAN_ENOTFOUND;
    iisan_store *s = x->s;
    MDB_txn *txn;
    if (begin(x, MDB_RDONLY, &txn)) return IISAN_EIO;
    MDB_val k = {idlen, (void *)item_id}, v;
    int rc = mdb_get(txn, s->item_by_id, &k, &v);
    if (rc == 0 && v.mv_size == 4) {
        memcpy(&out->idx, v.mv_data, 4);
        MDB_val ik = {4, &out->idx}, iv;
        uint16_t l16;
        if (mdb_get(txn, s->item, &ik, &iv) || iv.mv_size < ITEM_HDR ||
            (memcpy(&l16, (char *)iv.mv_data + 4, 2), iv.mv_size < ITEM_HDR + (size_t)l16)) {
            rc = IISAN_EIO;
        } else {
            uint32_t flags;
            memcpy(&flags, iv.mv_data, 4);
            out->titled = !!(flags & ITEM_TITLED);
            out->from_users = !!(flags & ITEM_FROM_USERS);
            size_t tl = iv.mv_size - ITEM_HDR - l16;
            if (tl > STORE_TITLE_MAX) tl = STORE_TITLE_MAX;
            memcpy(out->title, (char *)iv.mv_data + ITEM_HDR + l16, tl);
            out->title[tl] = '\0';
            MDB_val dv;
            out->deleted = mdb_get(txn, x->deleted, &ik, &dv) == 0;
            for (int m = 0; m < 2; m++)
                out->has_state[m] = mdb_get(txn, s->state[m], &ik, &dv) == 0;
            rc = 0;
        }
    } else {
        rc = rc == MDB_NOTFOUND ? IISAN_ENOTFOUND : IISAN_EIO;
    }
    mdb_txn_abort(txn);
    pthread_rwlock_unlock(&x->lock);
    return rc;
}

int store_ix_deleted(store_ix *x, uint32_t **idx, uint32_t *n) {
    *idx = NULL;
    *n = 0;
    MDB_txn *txn;
    if (begin(x, MDB_RDONLY, &txn)) return IISAN_EIO;
    MDB_stat st;
    MDB_cursor *c;
    int rc = IISAN_EIO;
    if (!mdb_stat(txn, x->deleted, &st) && !mdb_cursor_open(txn, x->deleted, &c)) {
        uint32_t *v = malloc((st.ms_entries ? st.ms_entries : 1) * sizeof *v);
        size_t cnt = 0;
        MDB_val k, d;
        int r = MDB_NOTFOUND;
        if (v)
            for (r = mdb_cursor_get(c, &k, &d, MDB_FIRST); r == 0 && cnt < st.ms_entries;
                 r = mdb_cursor_get(c, &k, &d, MDB_NEXT))
                memcpy(&v[cnt++], k.mv_data, 4);
        mdb_cursor_close(c);
        if (!v) {
            rc = IISAN_ENOMEM;
        } else if (r && r != MDB_NOTFOUND) {
            free(v);
        } else {
            *idx = v;
            *n = (uint32_t)cnt;
            rc = 0;
        }
    }
    mdb_txn_abort(txn);
    pthread_rwlock_unlock(&x->lock);
    return rc;
}

int store_ix_user_get(store_ix *x, const char *user_id, uint32_t **items, uint32_t *n) {
    *items = NULL;
    *n = 0;
    size_t ul = user_id ? strlen(user_id) : 0;
    if (!ul || ul > x->s->max_key) return IISAN_ENOTFOUND;
    MDB_txn *txn;
    if (begin(x, MDB_RDONLY, &txn)) return IISAN_EIO;
    MDB_val k = {ul, (void *)user_id}, v;
    int rc = mdb_get(txn, x->s->user, &k, &v);
    if (rc == 0) {
        if (v.mv_size % 4) {
            rc = IISAN_EIO;
        } else {
            *items = malloc(v.mv_size ? v.mv_size : 1);
            if (!*items)
                rc = IISAN_ENOMEM;
            else {
                memcpy(*items, v.mv_data, v.mv_size);
                *n = (uint32_t)(v.mv_size / 4);
            }
        }
    } else {
        rc = rc == MDB_NOTFOUND ? IISAN_ENOTFOUND : IISAN_EIO;
    }
    mdb_txn_abort(txn);
    pthread_rwlock_unlock(&x->lock);
    return rc;
}

int store_ix_item_lookup(store_ix *x, const char *item_id, uint32_t *idx) {
    pthread_rwlock_rdlock(&x->lock);
    int rc = store_item_lookup(x->s, item_id, idx);
    pthread_rwlock_unlock(&x->lock);
    return rc;
}

int store_ix_counts(store_ix *x, uint64_t *logged, uint32_t *items, uint32_t *users) {
    MDB_txn *txn;
    if (begin(x, MDB_RDONLY, &txn)) return IISAN_EIO;
    MDB_stat st;
    int rc = 0;
    if (logged) {
        if (mdb_stat(txn, x->ilog, &st))
            rc = IISAN_EIO;
        else
            *logged = st.ms_entries;
    }
    if (!rc && users) {
        if (mdb_stat(txn, x->s->user, &st))
            rc = IISAN_EIO;
        else
            *users = (uint32_t)st.ms_entries;
    }
    if (!rc && items) {
        int64_t last = store_last_key(txn, x->s->item);
        if (last < 0)
            rc = IISAN_EIO;
        else
            *items = (uint32_t)last;
    }
    mdb_txn_abort(txn);
    pthread_rwlock_unlock(&x->lock);
    return rc;
}

int store_ix_state_get(store_ix *x, const char *key, uint32_t *v) {
    *v = 0;
    MDB_txn *txn;
    if (begin(x, MDB_RDONLY, &txn)) return IISAN_EIO;
    MDB_val k = {strlen(key), (void *)key}, d;
    int rc = mdb_get(txn, x->state, &k, &d);
    if (rc == 0 && d.mv_size == 4)
        memcpy(v, d.mv_data, 4);
    else if (rc != MDB_NOTFOUND)
        rc = IISAN_EIO;
    else
        rc = 0;
    mdb_txn_abort(txn);
    pthread_rwlock_unlock(&x->lock);
    return rc ? IISAN_EIO : 0;
}

typedef struct {
    const char *key;
    uint32_t v;
} state_put_ctx;

static int state_put_fn(store_ix *x, MDB_txn *txn, void *arg, char *err, size_t errlen) {
    state_put_ctx *c = arg;
    MDB_val k = {strlen(c->key), (void *)c->key}, d = {4, &c->v};
    int rc = mdb_put(txn, x->state, &k, &d, 0);
    return rc ? store_lmdb(rc, "writing the daemon's state", err, errlen) : 0;
}

int store_ix_state_put(store_ix *x, const char *key, uint32_t v, char *err, size_t errlen) {
    state_put_ctx c = {key, v};
    return ix_write(x, state_put_fn, &c, err, errlen);
}

/* ---- retraining jobs ---- */

typedef struct {
    uint32_t id;
    const char *json;
} job_put_ctx;

static int job_put_fn(store_ix *x, MDB_txn *txn, void *arg, char *err, size_t errlen) {
    job_put_ctx *c = arg;
    MDB_val k = {4, &c->id}, d = {strlen(c->json), (void *)c->json};
    int rc = mdb_put(txn, x->jobs, &k, &d, 0);
    return rc ? store_lmdb(rc, "writing a job record", err, errlen) : 0;
}

int store_ix_job_put(store_ix *x, uint32_t id, const char *json, char *err, size_t errlen) {
    job_put_ctx c = {id, json};
    return ix_write(x, job_put_fn, &c, err, errlen);
}

int store_ix_jobs_last(store_ix *x, int max, void (*fn)(void *arg, uint32_t id, const char *json),
                       void *arg) {
    MDB_txn *txn;
    if (begin(x, MDB_RDONLY, &txn)) return IISAN_EIO;
    MDB_cursor *c;
    int rc = IISAN_EIO;
    if (!mdb_cursor_open(txn, x->jobs, &c)) {
        MDB_val k, d;
        int r, n = 0;
        for (r = mdb_cursor_get(c, &k, &d, MDB_LAST); r == 0 && n < max;
             r = mdb_cursor_get(c, &k, &d, MDB_PREV), n++) {
            uint32_t id;
            memcpy(&id, k.mv_data, 4);
            char *text = malloc(d.mv_size + 1);
            if (!text) break;
            memcpy(text, d.mv_data, d.mv_size);
            text[d.mv_size] = '\0';
            fn(arg, id, text);
            free(text);
        }
        mdb_cursor_close(c);
        rc = r == 0 || r == MDB_NOTFOUND ? 0 : IISAN_EIO;
    }
    mdb_txn_abort(txn);
    pthread_rwlock_unlock(&x->lock);
    return rc;
}

int store_ix_job_get(store_ix *x, uint32_t id, char **json) {
    *json = NULL;
    MDB_txn *txn;
    if (begin(x, MDB_RDONLY, &txn)) return IISAN_EIO;
    MDB_val k = {4, &id}, d;
    int rc = mdb_get(txn, x->jobs, &k, &d);
    if (rc == 0) {
        *json = malloc(d.mv_size + 1);
        if (*json) {
            memcpy(*json, d.mv_data, d.mv_size);
            (*json)[d.mv_size] = '\0';
        } else
            rc = IISAN_ENOMEM;
    } else
        rc = rc == MDB_NOTFOUND ? IISAN_ENOTFOUND : IISAN_EIO;
    mdb_txn_abort(txn);
    pthread_rwlock_unlock(&x->lock);
    return rc;
}

/* ---- a consumer's read position (cluster mode) ---- */

typedef struct {
    const store_interaction *v;
    size_t n;
    uint64_t first;
    const char *key, *pos;
} append_at_ctx;

static int append_at_fn(store_ix *x, MDB_txn *txn, void *arg, char *err, size_t errlen) {
    append_at_ctx *c = arg;
    int rc = c->n ? append_txn(x, txn, c->v, c->n, &c->first, err, errlen) : 0;
    if (rc) return rc;
    MDB_val k = {strlen(c->key), (void *)c->key}, d = {strlen(c->pos), (void *)c->pos};
    rc = mdb_put(txn, x->state, &k, &d, 0);
    return rc ? store_lmdb(rc, "writing the read position", err, errlen) : 0;
}

int store_ix_append_at(store_ix *x, const store_interaction *v, size_t n, const char *key,
                       const char *pos, uint64_t *first_seq, char *err, size_t errlen) {
    if ((n && !v) || !key || !pos || !*key || !*pos) return IISAN_EINVAL;
    append_at_ctx c = {v, n, 0, key, pos};
    int rc = ix_write(x, append_at_fn, &c, err, errlen);
    if (rc == 0 && first_seq) *first_seq = c.first;
    return rc;
}

int store_ix_pos_get(store_ix *x, const char *key, char *buf, size_t cap) {
    if (!cap) return IISAN_EINVAL;
    buf[0] = 0;
    MDB_txn *txn;
    if (begin(x, MDB_RDONLY, &txn)) return IISAN_EIO;
    MDB_val k = {strlen(key), (void *)key}, d;
    int rc = mdb_get(txn, x->state, &k, &d);
    if (rc == 0 && d.mv_size < cap) {
        memcpy(buf, d.mv_data, d.mv_size);
        buf[d.mv_size] = 0;
    } else {
        rc = rc == MDB_NOTFOUND ? IISAN_ENOTFOUND : IISAN_EIO;
    }
    mdb_txn_abort(txn);
    pthread_rwlock_unlock(&x->lock);
    return rc;
}

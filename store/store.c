/* The LMDB environment of a data directory: opening and format check, write
 * transactions that grow the map, catalogue and state reads, the zero-copy
 * reader, users, checkpoints. Imports from files are in store/import.c. */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "store/store_internal.h"

const char *const store_modality_name[2] = {"text", "image"};
static const char *const state_meta_key[2] = {"states.text", "states.image"};

static size_t g_map_initial = (size_t)1 << 30;
static size_t g_map_max = (size_t)1 << 40;

void store_set_map_limits(size_t initial, size_t max) {
    if (initial) g_map_initial = initial;
    if (max) g_map_max = max;
}

const char *iisan_strerror(int code) {
    switch (code) {
    case IISAN_OK: return "IISAN_OK: success";
    case IISAN_EIO: return "IISAN_EIO: file or LMDB I/O failure";
    case IISAN_EFORMAT: return "IISAN_EFORMAT: malformed input";
    case IISAN_ENOTFOUND: return "IISAN_ENOTFOUND: not found";
    case IISAN_EMISMATCH: return "IISAN_EMISMATCH: does not match what the store holds";
    case IISAN_ENOMEM: return "IISAN_ENOMEM: out of memory";
    case IISAN_EINVAL: return "IISAN_EINVAL: bad argument";
    case IISAN_EFULL: return "IISAN_EFULL: LMDB map full";
    case IISAN_EBACKEND: return "IISAN_EBACKEND: the compute backend failed";
    case IISAN_ENOSPC: return "IISAN_ENOSPC: no space left on the store's device";
    default: return "IISAN_E?: unknown error code";
    }
}

int iisan_fail(char *err, size_t errlen, int code, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

void store_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

int store_lmdb(int rc, const char *what, char *err, size_t errlen) {
    if (rc == MDB_MAP_FULL) return ST_RETRY;
    if (rc == MDB_TXN_FULL) {
        store_err(err, errlen, "%s: %s", what, mdb_strerror(rc));
        return IISAN_EFULL;
    }
    if (rc == ENOSPC || rc == EDQUOT) {
        store_err(err, errlen, "%s: no space left on the device holding the store", what);
        return IISAN_ENOSPC;
    }
    store_err(err, errlen, "%s: %s", what, mdb_strerror(rc));
    return IISAN_EIO;
}

/* the filesystem holding dir has less than 64 KiB left for us */
static int disk_full(const char *dir) {
    struct statvfs v;
    return !statvfs(dir, &v) && (double)v.f_bavail * (double)v.f_frsize < 65536.0;
}

int store_commit(iisan_store *s, MDB_txn *txn, char *err, size_t errlen) {
    int rc = mdb_txn_commit(txn);
    if (rc == EIO && disk_full(s->dir)) rc = ENOSPC;
    return rc ? store_lmdb(rc, "committing", err, errlen) : 0;
}

/* ---- map size ---- */

int store_grow_map(iisan_store *s, char *err, size_t errlen) {
    if (s->map_bytes >= s->map_max) {
        store_err(err, errlen, "%s: the store is full at its largest map size (%.0f MiB)", s->dir,
                  s->map_bytes / 1048576.0);
        return IISAN_EFULL;
    }
    if (atomic_load(&s->readers)) {
        store_err(err, errlen,
                  "%s: the store's map is full (%.0f MiB) and cannot grow while a reader is "
                  "open in this process",
                  s->dir, s->map_bytes / 1048576.0);
        return IISAN_EFULL;
    }
    size_t want = s->map_bytes > s->map_max / 2 ? s->map_max : s->map_bytes * 2;
    int rc = mdb_env_set_mapsize(s->env, want);
    if (rc) {
        store_err(err, errlen, "%s: growing the map to %.0f MiB: %s", s->dir, want / 1048576.0,
                  mdb_strerror(rc));
        return IISAN_EFULL;
    }
    MDB_envinfo info;
    mdb_env_info(s->env, &info);
    s->map_bytes = info.me_mapsize;
    return 0;
}

/* another process grew the map: adopt its size (only with no reader open here) */
int store_adopt_map(iisan_store *s) {
    if (atomic_load(&s->readers)) return MDB_MAP_RESIZED;
    int rc = mdb_env_set_mapsize(s->env, 0);
    if (rc) return rc;
    MDB_envinfo info;
    mdb_env_info(s->env, &info);
    s->map_bytes = info.me_mapsize;
    return 0;
}

static int txn_begin(iisan_store *s, unsigned flags, MDB_txn **txn) {
    int rc = mdb_txn_begin(s->env, NULL, flags, txn);
    if (rc == MDB_MAP_RESIZED && !(rc = store_adopt_map(s)))
        rc = mdb_txn_begin(s->env, NULL, flags, txn);
    return rc;
}

int store_read_begin(iisan_store *s, MDB_txn **txn) { return txn_begin(s, MDB_RDONLY, txn); }

int store_write(iisan_store *s, store_txn_fn fn, void *ctx, char *err, size_t errlen) {
    for (int attempt = 1;; attempt++) {
        MDB_txn *txn;
        int rc = txn_begin(s, 0, &txn);
        if (rc) {
            store_err(err, errlen, "%s: cannot begin a write transaction: %s", s->dir,
                      mdb_strerror(rc));
            return IISAN_EIO;
        }
        rc = fn(s, txn, ctx, attempt, err, errlen);
        if (rc) {
            mdb_txn_abort(txn);
        } else {
            rc = store_commit(s, txn, err, errlen);
        }
        if (rc != ST_RETRY) return rc;
        if ((rc = store_grow_map(s, err, errlen))) return rc;
    }
}

int64_t store_last_key(MDB_txn *txn, MDB_dbi dbi) {
    MDB_cursor *c;
    if (mdb_cursor_open(txn, dbi, &c)) return IISAN_EIO;
    MDB_val k, v;
    int rc = mdb_cursor_get(c, &k, &v, MDB_LAST);
    int64_t last = 0;
    if (rc == 0 && k.mv_size == 4) {
        uint32_t u;
        memcpy(&u, k.mv_data, 4);
        last = u;
    } else if (rc != MDB_NOTFOUND) {
        last = IISAN_EIO;
    }
    mdb_cursor_close(c);
    return last;
}

int store_meta_u32(MDB_txn *txn, iisan_store *s, const char *key, uint32_t *v) {
    MDB_val k = {strlen(key), (void *)key}, d;
    int rc = mdb_get(txn, s->meta, &k, &d);
    *v = 0;
    if (rc == MDB_NOTFOUND) return 0;
    if (rc || d.mv_size != 4) return IISAN_EIO;
    memcpy(v, d.mv_data, 4);
    return 0;
}

int store_meta_put_u32(MDB_txn *txn, iisan_store *s, const char *key, uint32_t v) {
    MDB_val k = {strlen(key), (void *)key}, d = {4, &v};
    int rc = mdb_put(txn, s->meta, &k, &d, 0);
    return rc == MDB_MAP_FULL ? ST_RETRY : rc ? IISAN_EIO : 0;
}

/* ---- open / close ---- */

static int mkdir_p(const char *dir) {
    char tmp[PATH_MAX];
    size_t n = strlen(dir);
    if (n >= sizeof tmp) return ENAMETOOLONG;
    memcpy(tmp, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (tmp[i] != '/' && tmp[i] != '\0') continue;
        char c = tmp[i];
        tmp[i] = '\0';
        if (mkdir(tmp, 0700) && errno != EEXIST) return errno;
        tmp[i] = c;
    }
    struct stat st;
    if (stat(dir, &st)) return errno;
    return S_ISDIR(st.st_mode) ? 0 : ENOTDIR;
}

static const char format_text[] = "iisan-store 1";

static int store_init(iisan_store *s, int create, char *err, size_t errlen) {
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc) {
        store_err(err, errlen, "%s: %s", s->dir, mdb_strerror(rc));
        return IISAN_EIO;
    }
    MDB_dbi main_dbi;
    MDB_stat ms;
    if ((rc = mdb_dbi_open(txn, NULL, 0, &main_dbi)) || (rc = mdb_stat(txn, main_dbi, &ms))) {
        mdb_txn_abort(txn);
        store_err(err, errlen, "%s: %s", s->dir, mdb_strerror(rc));
        return IISAN_EIO;
    }
    int fresh = ms.ms_entries == 0;
    if (fresh && !create) {
        mdb_txn_abort(txn);
        store_err(err, errlen,
                  "%s holds no store yet: create one with `iisan import --data %s --items ... "
                  "--users ...`",
                  s->dir, s->dir);
        return IISAN_ENOTFOUND;
    }
    unsigned f = fresh ? MDB_CREATE : 0;
    if ((rc = mdb_dbi_open(txn, "meta", f, &s->meta))) {
        mdb_txn_abort(txn);
        store_err(err, errlen, "%s/data.mdb is an LMDB environment but not an iisand store",
                  s->dir);
        return IISAN_EFORMAT;
    }
    MDB_val k = {6, "format"}, v;
    if (fresh) {
        v.mv_size = sizeof format_text - 1;
        v.mv_data = (void *)format_text;
        rc = mdb_put(txn, s->meta, &k, &v, 0);
    } else {
        rc = mdb_get(txn, s->meta, &k, &v);
        char have[64];
        size_t n = rc ? 0 : v.mv_size < sizeof have ? v.mv_size : sizeof have - 1;
        if (!rc) memcpy(have, v.mv_data, n);
        have[n] = '\0';
        unsigned ver = 0;
        if (rc || v.mv_size != sizeof format_text - 1 || memcmp(v.mv_data, format_text, n)) {
            mdb_txn_abort(txn);
            if (!rc && sscanf(have, "iisan-store %u", &ver) == 1)
                store_err(err, errlen,
                          "%s holds an iisand store of format %u; this build reads format %u: "
                          "import the data again into a new directory (iisan import --data "
                          "NEWDIR ...) or use a build of that format",
                          s->dir, ver, IISAN_STORE_FORMAT);
            else
                store_err(err, errlen,
                          "%s: not an iisand store (format key %s); import the data into a "
                          "new directory",
                          s->dir, rc ? "missing" : "unrecognised");
            return IISAN_EFORMAT;
        }
        rc = 0;
    }
    struct {
        const char *name;
        MDB_dbi *dbi;
        unsigned flags;
    } dbs[] = {
        {"item_by_id", &s->item_by_id, 0},
        {"item", &s->item, MDB_INTEGERKEY},
        {"state_text", &s->state[0], MDB_INTEGERKEY},
        {"state_image", &s->state[1], MDB_INTEGERKEY},
        {"user", &s->user, 0},
        {"ckpt", &s->ckpt, MDB_INTEGERKEY},
        {"ckpt_meta", &s->ckpt_meta, MDB_INTEGERKEY},
    };
    for (size_t i = 0; !rc && i < sizeof dbs / sizeof dbs[0]; i++) {
        rc = mdb_dbi_open(txn, dbs[i].name, dbs[i].flags | f, dbs[i].dbi);
        if (rc) {
            mdb_txn_abort(txn);
            store_err(err, errlen, "%s: the store is damaged: database '%s': %s", s->dir,
                      dbs[i].name, mdb_strerror(rc));
            return IISAN_EFORMAT;
        }
    }
    if (!rc && fresh) {
        uint32_t zero = 0;
        MDB_val tk = {6, "titled"}, tv = {4, &zero};
        rc = mdb_put(txn, s->meta, &tk, &tv, 0);
    }
    if (!rc)
        rc = mdb_txn_commit(txn);
    else
        mdb_txn_abort(txn);
    if (rc) {
        store_err(err, errlen, "%s: %s", s->dir, mdb_strerror(rc));
        return IISAN_EIO;
    }
    return 0;
}

int store_open(iisan_store **out, const char *dir, int create, char *err, size_t errlen) {
    *out = NULL;
    if (!dir || !*dir) {
        store_err(err, errlen, "no data directory given");
        return IISAN_EINVAL;
    }
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/data.mdb", dir) >= (int)sizeof path) {
        store_err(err, errlen, "%s: path too long", dir);
        return IISAN_EINVAL;
    }
    struct stat st;
    int existed = stat(path, &st) == 0;
    if (!existed) {
        if (!create) {
            store_err(err, errlen,
                      "%s holds no store (no data.mdb): create one with `iisan import --data %s "
                      "--items ... --users ...`",
                      dir, dir);
            return IISAN_ENOTFOUND;
        }
        int e = mkdir_p(dir);
        if (e) {
            store_err(err, errlen, "%s: cannot create the directory: %s", dir, strerror(e));
            return IISAN_EIO;
        }
    }
    iisan_store *s = calloc(1, sizeof *s);
    if (!s || !(s->dir = strdup(dir))) {
        free(s);
        store_err(err, errlen, "%s: out of memory", dir);
        return IISAN_ENOMEM;
    }
    atomic_init(&s->readers, 0);
    s->map_max = g_map_max;
    int rc = mdb_env_create(&s->env);
    if (!rc) rc = mdb_env_set_maxdbs(s->env, 16);
    if (!rc && !existed) rc = mdb_env_set_mapsize(s->env, g_map_initial);
    if (!rc) rc = mdb_env_open(s->env, dir, MDB_NOTLS, 0600);
    if (rc) {
        store_err(err, errlen, "%s: cannot open the store: %s", dir, mdb_strerror(rc));
        store_close(s);
        return IISAN_EIO;
    }
    /* an existing store keeps the size it grew to (at least initial) */
    MDB_envinfo info;
    mdb_env_info(s->env, &info);
    if (info.me_mapsize < g_map_initial) {
        if ((rc = mdb_env_set_mapsize(s->env, g_map_initial))) {
            store_err(err, errlen, "%s: setting the map size: %s", dir, mdb_strerror(rc));
            store_close(s);
            return IISAN_EIO;
        }
        mdb_env_info(s->env, &info);
    }
    s->map_bytes = info.me_mapsize;
    if (s->map_max < s->map_bytes) s->map_max = s->map_bytes;
    s->max_key = (unsigned)mdb_env_get_maxkeysize(s->env);
    if ((rc = store_init(s, create, err, errlen))) {
        store_close(s);
        return rc;
    }
    *out = s;
    return 0;
}

void store_close(iisan_store *s) {
    if (!s) return;
    if (s->env) mdb_env_close(s->env);
    free(s->dir);
    free(s);
}

void store_set_progress(iisan_store *s, store_progress_fn fn, void *arg) {
    s->progress = fn;
    s->progress_arg = arg;
}

int store_usage_get(iisan_store *s, store_usage *u) {
    MDB_envinfo info;
    MDB_stat st;
    if (mdb_env_info(s->env, &info) || mdb_env_stat(s->env, &st)) return IISAN_EIO;
    u->map_bytes = info.me_mapsize;
    u->used_bytes = ((uint64_t)info.me_last_pgno + 1) * st.ms_psize;
    u->format = IISAN_STORE_FORMAT;
    return 0;
}

/* ---- catalogue ---- */

uint32_t store_item_count(iisan_store *s) {
    MDB_txn *txn;
    if (store_read_begin(s, &txn)) return 0;
    int64_t last = store_last_key(txn, s->item);
    mdb_txn_abort(txn);
    return last > 0 ? (uint32_t)last : 0;
}

uint32_t store_items_with_title(iisan_store *s) {
    MDB_txn *txn;
    uint32_t n = 0;
    if (store_read_begin(s, &txn)) return 0;
    store_meta_u32(txn, s, "titled", &n);
    mdb_txn_abort(txn);
    return n;
}

int store_item_lookup(iisan_store *s, const char *item_id, uint32_t *idx) {
    size_t n = item_id ? strlen(item_id) : 0;
    if (!n || n > s->max_key) return IISAN_ENOTFOUND;
    MDB_txn *txn;
    int rc = store_read_begin(s, &txn);
    if (rc) return IISAN_EIO;
    MDB_val k = {n, (void *)item_id}, v;
    rc = mdb_get(txn, s->item_by_id, &k, &v);
    if (rc == 0 && v.mv_size == 4) memcpy(idx, v.mv_data, 4);
    mdb_txn_abort(txn);
    return rc == MDB_NOTFOUND ? IISAN_ENOTFOUND : rc ? IISAN_EIO : v.mv_size == 4 ? 0 : IISAN_EIO;
}

static void copy_trunc(char *dst, size_t cap, const char *src, size_t n) {
    if (!dst || !cap) return;
    if (n > cap - 1) {
        n = cap - 1;
        while (n && ((unsigned char)src[n] & 0xC0) == 0x80)
            n--; /* whole characters */
    }
    memcpy(dst, src, n);
    dst[n] = '\0';
}

int store_item_get(iisan_store *s, uint32_t idx, char *id, size_t idcap, char *title,
                   size_t titlecap) {
    MDB_txn *txn;
    if (store_read_begin(s, &txn)) return IISAN_EIO;
    MDB_val k = {4, &idx}, v;
    int rc = mdb_get(txn, s->item, &k, &v);
    if (rc == 0) {
        uint16_t idlen;
        if (v.mv_size < ITEM_HDR ||
            (memcpy(&idlen, (char *)v.mv_data + 4, 2), v.mv_size < ITEM_HDR + (size_t)idlen)) {
            rc = IISAN_EIO;
        } else {
            const char *p = (const char *)v.mv_data + ITEM_HDR;
            copy_trunc(id, idcap, p, idlen);
            copy_trunc(title, titlecap, p + idlen, v.mv_size - ITEM_HDR - idlen);
        }
    } else {
        rc = rc == MDB_NOTFOUND ? IISAN_ENOTFOUND : IISAN_EIO;
    }
    mdb_txn_abort(txn);
    return rc;
}

/* ---- hidden states ---- */

typedef struct {
    uint32_t nstates, width;
    char backbone[128];
    int present;
} state_meta;

static int state_meta_read(MDB_txn *txn, iisan_store *s, int modality, state_meta *m) {
    memset(m, 0, sizeof *m);
    const char *key = state_meta_key[modality];
    MDB_val k = {strlen(key), (void *)key}, v;
    int rc = mdb_get(txn, s->meta, &k, &v);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc || v.mv_size < 8 || v.mv_size - 8 >= sizeof m->backbone) return IISAN_EIO;
    memcpy(&m->nstates, v.mv_data, 4);
    memcpy(&m->width, (char *)v.mv_data + 4, 4);
    memcpy(m->backbone, (char *)v.mv_data + 8, v.mv_size - 8);
    m->backbone[v.mv_size - 8] = '\0';
    m->present = 1;
    return 0;
}

int store_states_check(iisan_store *s, MDB_txn *txn, int modality, const char *backbone,
                       int nstates, int width, const char *src, char *err, size_t errlen) {
    state_meta m;
    if (state_meta_read(txn, s, modality, &m)) {
        store_err(err, errlen, "%s: the store's %s state record is damaged", s->dir,
                  store_modality_name[modality]);
        return IISAN_EIO;
    }
    if (m.present) {
        if (strcmp(m.backbone, backbone) || (int)m.nstates != nstates || (int)m.width != width) {
            store_err(err, errlen,
                      "%s: %s states from backbone '%s' with %d states x %d do not match the "
                      "store's '%s' with %u states x %u; import them into a new data directory",
                      src, store_modality_name[modality], backbone, nstates, width, m.backbone,
                      m.nstates, m.width);
            return IISAN_EMISMATCH;
        }
        return 0;
    }
    size_t bl = strlen(backbone);
    char buf[8 + 128];
    uint32_t a = (uint32_t)nstates, b = (uint32_t)width;
    memcpy(buf, &a, 4);
    memcpy(buf + 4, &b, 4);
    memcpy(buf + 8, backbone, bl);
    const char *key = state_meta_key[modality];
    MDB_val k = {strlen(key), (void *)key}, v = {8 + bl, buf};
    int rc = mdb_put(txn, s->meta, &k, &v, 0);
    return rc ? store_lmdb(rc, s->dir, err, errlen) : 0;
}

int store_states_info_get(iisan_store *s, int modality, store_states_info *out) {
    if (modality != IISAN_TEXT && modality != IISAN_IMAGE) return IISAN_EINVAL;
    MDB_txn *txn;
    if (store_read_begin(s, &txn)) return IISAN_EIO;
    state_meta m;
    MDB_stat st;
    int rc = state_meta_read(txn, s, modality, &m);
    if (!rc && !m.present) rc = IISAN_ENOTFOUND;
    if (!rc && mdb_stat(txn, s->state[modality], &st)) rc = IISAN_EIO;
    mdb_txn_abort(txn);
    if (rc) return rc;
    memcpy(out->backbone, m.backbone, sizeof out->backbone);
    out->nstates = (int)m.nstates;
    out->width = (int)m.width;
    out->count = (uint32_t)st.ms_entries;
    return 0;
}

static int valid_backbone(const char *b) { return b && *b && strlen(b) < 128; }

typedef struct {
    int modality;
    const char *backbone;
    int nstates, width;
    uint32_t n;
    const uint32_t *idx;
    const uint16_t *states;
} put_states_ctx;

static int put_states_txn(iisan_store *s, MDB_txn *txn, void *arg, int attempt, char *err,
                          size_t errlen) {
    put_states_ctx *c = arg;
    int rc = store_states_check(s, txn, c->modality, c->backbone, c->nstates, c->width,
                                "store_put_states", err, errlen);
    if (rc) return rc;
    int64_t last = store_last_key(txn, s->item);
    if (last < 0) {
        store_err(err, errlen, "%s: cannot read the catalogue", s->dir);
        return IISAN_EIO;
    }
    size_t per = (size_t)c->nstates * c->width;
    for (uint32_t i = 0; i < c->n; i++) {
        uint32_t idx = c->idx[i];
        if (idx == 0 || idx > last) {
            store_err(err, errlen, "store_put_states: catalogue index %u is not in 1..%lld", idx,
                      (long long)last);
            return IISAN_EINVAL;
        }
        MDB_val k = {4, &idx}, v = {per * 2, (void *)(c->states + per * i)};
        if ((rc = mdb_put(txn, s->state[c->modality], &k, &v, 0)))
            return store_lmdb(rc, "store_put_states", err, errlen);
    }
    return 0;
}

int store_put_states(iisan_store *s, int modality, const char *backbone, int nstates, int width,
                     uint32_t n, const uint32_t *idx, const uint16_t *states, char *err,
                     size_t errlen) {
    if ((modality != IISAN_TEXT && modality != IISAN_IMAGE) || !valid_backbone(backbone) ||
        nstates < 1 || width < 1 || (uint64_t)nstates * (uint64_t)width > (1u << 30) ||
        (n && (!idx || !states))) {
        store_err(err, errlen, "store_put_states: bad argument");
        return IISAN_EINVAL;
    }
    put_states_ctx c = {modality, backbone, nstates, width, n, idx, states};
    return store_write(s, put_states_txn, &c, err, errlen);
}

/* ---- zero-copy reader ---- */

struct store_reader {
    iisan_store *s;
    MDB_txn *txn;
    size_t bytes[2]; /* expected value size per modality, 0 when none */
    int shape[2][2]; /* nstates, width per modality (0, 0 when none) */
    int err;         /* the first failed read's IISAN_E* (0: none) */
    int idle;        /* the transaction is reset (store_reader_release): renew before a read */
    char msg[200];
};

int store_reader_begin(iisan_store *s, store_reader **out) {
    *out = NULL;
    store_reader *r = calloc(1, sizeof *r);
    if (!r) return IISAN_ENOMEM;
    r->s = s;
    if (store_read_begin(s, &r->txn)) {
        free(r);
        return IISAN_EIO;
    }
    for (int m = 0; m < 2; m++) {
        state_meta sm;
        if (state_meta_read(r->txn, s, m, &sm) == 0 && sm.present) {
            r->bytes[m] = (size_t)sm.nstates * sm.width * 2;
            r->shape[m][0] = (int)sm.nstates;
            r->shape[m][1] = (int)sm.width;
        }
    }
    atomic_fetch_add(&s->readers, 1);
    *out = r;
    return 0;
}

void store_reader_release(store_reader *r) {
    if (!r || r->idle) return;
    mdb_txn_reset(r->txn);
    r->idle = 1;
}

const uint16_t *store_reader_states(store_reader *r, int modality, uint32_t idx) {
    if ((unsigned)modality > 1 || !r->bytes[modality]) return NULL;
    MDB_val k = {4, &idx}, v;
    int rc = 0;
    if (r->idle && !(rc = mdb_txn_renew(r->txn))) r->idle = 0;
    if (!rc) rc = mdb_get(r->txn, r->s->state[modality], &k, &v);
    if (rc == MDB_NOTFOUND) return NULL;
    if (!rc && v.mv_size == r->bytes[modality]) return v.mv_data; /* LMDB: 2-byte aligned */
    if (!r->err) {
        r->err = rc ? IISAN_EIO : IISAN_EFORMAT;
        if (rc)
            snprintf(r->msg, sizeof r->msg, "reading the %s states of catalogue item %u: %s",
                     modality ? "image" : "text", idx, mdb_strerror(rc));
        else
            snprintf(r->msg, sizeof r->msg,
                     "the %s states of catalogue item %u are %zu bytes, the store's shape wants "
                     "%zu",
                     modality ? "image" : "text", idx, v.mv_size, r->bytes[modality]);
    }
    return NULL;
}

int store_reader_shape(const store_reader *r, int modality, int *nstates, int *width) {
    if ((unsigned)modality > 1 || !r->bytes[modality]) return IISAN_ENOTFOUND;
    *nstates = r->shape[modality][0];
    *width = r->shape[modality][1];
    return 0;
}

int store_reader_error(const store_reader *r, char *msg, size_t len) {
    if (r->err && msg && len) snprintf(msg, len, "%s", r->msg);
    return r->err;
}

void store_reader_end(store_reader *r) {
    if (!r) return;
    mdb_txn_abort(r->txn);
    atomic_fetch_sub(&r->s->readers, 1);
    free(r);
}

/* ---- users ---- */

uint32_t store_user_count(iisan_store *s) {
    MDB_txn *txn;
    MDB_stat st;
    if (store_read_begin(s, &txn)) return 0;
    int rc = mdb_stat(txn, s->user, &st);
    mdb_txn_abort(txn);
    return rc ? 0 : (uint32_t)st.ms_entries;
}

int store_users_foreach(iisan_store *s,
                        int (*fn)(const char *user_id, const uint32_t *items, uint32_t n,
                                  void *arg),
                        void *arg) {
    MDB_txn *txn;
    MDB_cursor *c;
    if (store_read_begin(s, &txn)) return IISAN_EIO;
    if (mdb_cursor_open(txn, s->user, &c)) {
        mdb_txn_abort(txn);
        return IISAN_EIO;
    }
    uint32_t *items = NULL;
    size_t cap = 0;
    char id[1024];
    MDB_val k, v;
    int rc, ret = 0;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (k.mv_size >= sizeof id || v.mv_size % 4) {
            ret = IISAN_EIO;
            break;
        }
        memcpy(id, k.mv_data, k.mv_size);
        id[k.mv_size] = '\0';
        size_t n = v.mv_size / 4;
        if (n > cap) { /* values are only 2-byte aligned in the map: copy */
            size_t nc = n > 2 * cap ? n : 2 * cap;
            uint32_t *p = realloc(items, nc * 4);
            if (!p) {
                ret = IISAN_ENOMEM;
                break;
            }
            items = p;
            cap = nc;
        }
        if (n) memcpy(items, v.mv_data, n * 4);
        if ((ret = fn(id, items, (uint32_t)n, arg))) break;
    }
    if (!ret && rc != MDB_NOTFOUND) ret = IISAN_EIO;
    free(items);
    mdb_cursor_close(c);
    mdb_txn_abort(txn);
    return ret;
}

/* ---- checkpoints ---- */

typedef struct {
    const void *blob;
    size_t len;
    const char *meta;
    uint32_t version;
    uint32_t at; /* 0: the next version */
} ckpt_put_ctx;

static int ckpt_put_txn(iisan_store *s, MDB_txn *txn, void *arg, int attempt, char *err,
                        size_t errlen) {
    ckpt_put_ctx *c = arg;
    int64_t last = store_last_key(txn, s->ckpt);
    if (last < 0) return IISAN_EIO;
    if (last >= UINT32_MAX) return IISAN_EFULL;
    uint32_t ver = c->at ? c->at : (uint32_t)last + 1;
    MDB_val k = {4, &ver}, v = {c->len, (void *)c->blob};
    int rc = mdb_put(txn, s->ckpt, &k, &v, c->at ? MDB_NOOVERWRITE : MDB_APPEND);
    if (rc == MDB_KEYEXIST) {
        store_err(err, errlen, "%s: checkpoint version %u exists already", s->dir, ver);
        return IISAN_EINVAL;
    }
    if (!rc) {
        v.mv_size = strlen(c->meta);
        v.mv_data = (void *)c->meta;
        rc = mdb_put(txn, s->ckpt_meta, &k, &v, 0);
    }
    if (rc) return store_lmdb(rc, "checkpoint", err, errlen);
    c->version = ver;
    return 0;
}

int store_ckpt_put(iisan_store *s, const void *blob, size_t len, const char *meta_json,
                   uint32_t *version) {
    if (!blob && len) return IISAN_EINVAL;
    ckpt_put_ctx c = {blob ? blob : "", len, meta_json ? meta_json : "{}", 0, 0};
    int rc = store_write(s, ckpt_put_txn, &c, NULL, 0);
    if (!rc && version) *version = c.version;
    return rc;
}

int store_ckpt_put_at(iisan_store *s, const void *blob, size_t len, const char *meta_json,
                      uint32_t version, char *err, size_t errlen) {
    if ((!blob && len) || !version) return IISAN_EINVAL;
    ckpt_put_ctx c = {blob ? blob : "", len, meta_json ? meta_json : "{}", 0, version};
    return store_write(s, ckpt_put_txn, &c, err, errlen);
}

/* blob or meta may be NULL to skip that copy (listing metadata only) */
int store_ckpt_get(iisan_store *s, uint32_t version, void **blob, size_t *len, char **meta,
                   uint32_t *version_out) {
    if (blob) *blob = NULL;
    if (meta) *meta = NULL;
    MDB_txn *txn;
    if (store_read_begin(s, &txn)) return IISAN_EIO;
    int rc = 0;
    if (version == 0) {
        int64_t last = store_last_key(txn, s->ckpt);
        if (last < 0)
            rc = IISAN_EIO;
        else if (last == 0)
            rc = IISAN_ENOTFOUND;
        version = (uint32_t)last;
    }
    MDB_val k = {4, &version}, v, m = {0, NULL};
    if (!rc) {
        int r = mdb_get(txn, s->ckpt, &k, &v);
        rc = r == MDB_NOTFOUND ? IISAN_ENOTFOUND : r ? IISAN_EIO : 0;
    }
    if (!rc) {
        int r = mdb_get(txn, s->ckpt_meta, &k, &m);
        if (r && r != MDB_NOTFOUND) rc = IISAN_EIO;
    }
    if (!rc && blob) {
        *blob = malloc(v.mv_size ? v.mv_size : 1);
        if (!*blob)
            rc = IISAN_ENOMEM;
        else
            memcpy(*blob, v.mv_data, v.mv_size);
    }
    if (!rc && meta) {
        *meta = malloc(m.mv_size + 1);
        if (!*meta) {
            rc = IISAN_ENOMEM;
        } else {
            if (m.mv_size) memcpy(*meta, m.mv_data, m.mv_size);
            (*meta)[m.mv_size] = '\0';
        }
    }
    if (!rc) {
        if (len) *len = v.mv_size;
        if (version_out) *version_out = version;
    } else {
        if (blob) free(*blob), *blob = NULL;
        if (meta) free(*meta), *meta = NULL;
    }
    mdb_txn_abort(txn);
    return rc;
}

int store_ckpt_list(iisan_store *s, uint32_t **versions, uint32_t *n) {
    *versions = NULL;
    *n = 0;
    MDB_txn *txn;
    MDB_cursor *c;
    MDB_stat st;
    if (store_read_begin(s, &txn)) return IISAN_EIO;
    if (mdb_stat(txn, s->ckpt, &st) || mdb_cursor_open(txn, s->ckpt, &c)) {
        mdb_txn_abort(txn);
        return IISAN_EIO;
    }
    uint32_t *v = malloc((st.ms_entries ? st.ms_entries : 1) * sizeof *v);
    size_t cnt = 0;
    int rc = v ? 0 : IISAN_ENOMEM;
    MDB_val key, val;
    int r = MDB_NOTFOUND;
    if (!rc)
        for (r = mdb_cursor_get(c, &key, &val, MDB_FIRST); r == 0 && cnt < st.ms_entries;
             r = mdb_cursor_get(c, &key, &val, MDB_NEXT))
            memcpy(&v[cnt++], key.mv_data, 4);
    if (!rc && r != 0 && r != MDB_NOTFOUND) rc = IISAN_EIO;
    mdb_cursor_close(c);
    mdb_txn_abort(txn);
    if (rc) {
        free(v);
        return rc;
    }
    *versions = v;
    *n = (uint32_t)cnt;
    return 0;
}

/* Serving a checkpoint (core/infer.h): item embeddings computed once, a pool
 * of sequence-encoder contexts, top-k by the backend, popularity fallback. */
#include "core/infer.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/checkpoint.h"
#include "core/dataset.h"
#include "core/eval.h"
#include "core/model.h"
#include "core/params.h"
#include "core/resident.h"
#include "core/score_cpu.h"
#include "core/session.h"
#include "core/states.h"
#include "kernels/clock.h"

typedef struct {
    iisan_model *m; /* sequence encoder only (SASRec-ID shape, n_items 1, max_batch users) */
    float *scores;  /* backend (max_batch, cap + 1); GPU only */
    int *didx;      /* backend (max_batch, max_k) */
    float *dscore;  /* backend (max_batch, max_k) */
    int *dexcl;     /* backend (max_batch, max_exclude) */
    int *in_idx;    /* host (max_batch * n) */
    float *mask;    /* host (max_batch * n) */
    int *hidx;      /* host (max_batch, max_k) */
    float *hscore;  /* host (max_batch, max_k) */
    int *hexcl;     /* host (max_batch, max_exclude) */
    float *dban;    /* backend (cap + 1): 0, or -inf for a deleted item; GPU only */
    float *hban;    /* host (cap + 1); GPU only */
    void *heap;     /* host: score_topk's scratch (2 max_k ints) */
} infer_ctx;

/* Rows 0..N0 are the checkpoint's items (and, for IISAN, the catalogue items
 * with states that it did not know at load); rows N0+1..n_items were added
 * while serving. A row, its id and its catalogue index are written before
 * n_items publishes them (release); the maps are updated after. */
struct infer_model {
    atomic_int refs;
    iisan_backend *be;
    iisan_config c;
    infer_info info;
    int N0;                      /* rows filled at load */
    int cap;                     /* rows 1..cap exist */
    atomic_int n_items;          /* rows 1..n_items are served */
    atomic_int n_added;          /* infer_add_items rows */
    float *all;                  /* backend (cap + 1, d): e_i of every model item */
    score_table *table;          /* CPU backend: the table sorted by norm, for pruned top-k */
    int exhaustive;              /* score every item (no pruning) */
    atomic_long queries, scored; /* CPU top-k: queries answered and items scored for them */
    uint32_t *item_cat;          /* host (cap + 1) */
    char **ids;                  /* host (cap + 1), ids[0] = NULL */
    _Atomic int32_t *slot;       /* open addressing: model indexes by id, nslot entries */
    size_t nslot;
    int32_t *of_cat; /* catalogue index -> model index at load, max_cat + 1 entries */
    uint32_t max_cat;
    _Atomic int32_t *cslot; /* open addressing: model indexes of added items by catalogue index */
    size_t ncslot;
    int32_t *pop_order; /* model indexes by training-part count, descending (rows 1..N0) */
    float *pop_count;   /* (N0 + 1) */
    int max_k, max_excl, max_batch;
    atomic_uchar *banned; /* (cap + 1) deleted items */
    atomic_int nbanned;
    /* IISAN: the item tower, kept to embed added items; guarded by add_mu */
    iisan_model *tower;
    resident_states *stage; /* a chunk of added items' states, in backend memory */
    pthread_mutex_t add_mu;
    /* the context pool */
    infer_ctx *ctx;
    int nctx;
    int *free_list, nfree;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    const infer_options *load_opt; /* during infer_load only */
};

enum { ADD_CHUNK = 64 }; /* items per pass of the tower in infer_add_items */

static uint64_t hash_id(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static uint64_t hash_cat(uint32_t c) { return (uint64_t)c * 0x9E3779B97F4A7C15ull >> 17; }

int infer_n_items(const infer_model *im) {
    return atomic_load_explicit(&((infer_model *)im)->n_items, memory_order_acquire);
}

int infer_n_added(const infer_model *im) { return atomic_load(&((infer_model *)im)->n_added); }

int infer_lookup(const infer_model *im, const char *item_id) {
    if (!item_id || !im->nslot) return 0;
    size_t mask = im->nslot - 1;
    for (size_t i = hash_id(item_id) & mask;; i = (i + 1) & mask) {
        int32_t v = atomic_load_explicit(&im->slot[i], memory_order_acquire);
        if (v == 0) return 0;
        if (!strcmp(im->ids[v], item_id)) {
            /* an update may have moved the id to a newer row: the slot holds the newest */
            return v;
        }
    }
}

/* inserts or repoints id's slot to row v (writers only, under add_mu or at load) */
static void slot_set(infer_model *im, const char *id, int32_t v) {
    size_t mask = im->nslot - 1, k = hash_id(id) & mask;
    int32_t cur;
    while ((cur = atomic_load_explicit(&im->slot[k], memory_order_relaxed)) &&
           strcmp(im->ids[cur], id))
        k = (k + 1) & mask;
    atomic_store_explicit(&im->slot[k], v, memory_order_release);
}

int infer_lookup_cat(const infer_model *im, uint32_t cat) {
    if (im->ncslot && atomic_load_explicit(&((infer_model *)im)->n_added, memory_order_acquire)) {
        size_t mask = im->ncslot - 1;
        for (size_t i = hash_cat(cat) & mask;; i = (i + 1) & mask) {
            int32_t v = atomic_load_explicit(&im->cslot[i], memory_order_acquire);
            if (v == 0) break;
            if (im->item_cat[v] == cat) return v;
        }
    }
    return cat <= im->max_cat ? im->of_cat[cat] : 0;
}

static void cslot_set(infer_model *im, uint32_t cat, int32_t v) {
    size_t mask = im->ncslot - 1, k = hash_cat(cat) & mask;
    int32_t cur;
    while ((cur = atomic_load_explicit(&im->cslot[k], memory_order_relaxed)) &&
           im->item_cat[cur] != cat)
        k = (k + 1) & mask;
    atomic_store_explicit(&im->cslot[k], v, memory_order_release);
}

const char *infer_item_id(const infer_model *im, int idx) {
    return idx >= 1 && idx <= infer_n_items(im) ? im->ids[idx] : NULL;
}

void infer_get_info(const infer_model *im, infer_info *info) {
    *info = im->info;
    long q = atomic_load(&((infer_model *)im)->queries);
    info->queries = q;
    info->mean_scored = q ? (double)atomic_load(&((infer_model *)im)->scored) / q : 0;
}

void infer_retain(infer_model *im) { atomic_fetch_add(&im->refs, 1); }

static void ctx_free(iisan_backend *be, infer_ctx *x) {
    model_destroy(x->m);
    be->free(be, x->scores);
    be->free(be, x->didx);
    be->free(be, x->dscore);
    be->free(be, x->dexcl);
    be->free(be, x->dban);
    free(x->hban);
    free(x->in_idx);
    free(x->mask);
    free(x->hidx);
    free(x->hscore);
    free(x->hexcl);
    free(x->heap);
}

static void destroy(infer_model *im) {
    if (!im) return;
    iisan_backend *be = im->be;
    for (int i = 0; i < im->nctx; i++)
        ctx_free(be, &im->ctx[i]);
    free(im->ctx);
    free(im->free_list);
    if (im->all) be->free(be, im->all);
    score_table_free(im->table);
    states_resident_free(im->stage);
    model_destroy(im->tower);
    if (im->ids)
        for (int i = 0; i <= im->cap; i++)
            free(im->ids[i]);
    free(im->ids);
    free(im->item_cat);
    free((void *)im->slot);
    free((void *)im->cslot);
    free(im->of_cat);
    free(im->pop_order);
    free(im->pop_count);
    free((void *)im->banned);
    pthread_mutex_destroy(&im->mu);
    pthread_cond_destroy(&im->cv);
    pthread_mutex_destroy(&im->add_mu);
    free(im);
}

void infer_release(infer_model *im) {
    if (im && atomic_fetch_sub(&im->refs, 1) == 1) destroy(im);
}

/* 1 when the load's table has a row for every model row 1..N0 (then, on the CPU, only the
 * padding row is embedded) */
static int table_covers(const infer_model *im) {
    const infer_options *o = im->load_opt;
    if (!o || !o->table || !im->be->caps.host_memory || im->c.kind != MODEL_IISAN) return 0;
    int found = 0;
    for (int j = 0; j < o->table_n; j++) {
        int idx = infer_lookup(im, o->table_ids[j]);
        found += idx >= 1 && idx <= im->N0;
    }
    return found >= im->N0;
}

/* the table's rows over the model rows of the same items */
static int apply_table(infer_model *im) {
    const infer_options *o = im->load_opt;
    if (!o || !o->table || im->c.kind != MODEL_IISAN) return 0;
    const size_t d = (size_t)im->c.d, bytes = ((size_t)im->N0 + 1) * d * sizeof(float);
    float *h = malloc(bytes);
    if (!h) return -1;
    im->be->download(im->be, h, im->all, bytes);
    for (int j = 0; j < o->table_n; j++) {
        int idx = infer_lookup(im, o->table_ids[j]);
        if (idx >= 1 && idx <= im->N0) memcpy(h + idx * d, o->table + j * d, d * sizeof *h);
    }
    im->be->upload(im->be, im->all, h, bytes);
    free(h);
    return 0;
}

/* e_i of model items 0..N0 into im->all with the session's model and states; IISAN keeps
 * the model as im->tower (taken from the session) */
static int embed_items(infer_model *im, iisan_session *ss, char *err, int errlen) {
    iisan_backend *be = im->be;
    model_item_embeddings(ss->m, table_covers(im) ? 0 : im->N0, im->item_cat, &ss->st, im->all);
    be->sync(be);
    int rc = apply_table(im) ? IISAN_ENOMEM : 0;
    if (states_check(&ss->st, err, (size_t)errlen)) rc = IISAN_EIO;
    if (!rc && ss->c.kind == MODEL_IISAN) {
        im->tower = ss->m;
        ss->m = NULL;
    }
    return rc;
}

static int make_ctx(infer_model *im, const iisan_ckpt *ck, infer_ctx *x, char *err, int errlen) {
    iisan_backend *be = im->be;
    x->m = session_seq_model(ck, be, im->max_batch, err, (size_t)errlen);
    if (!x->m) return -1;
    const size_t n = (size_t)ck->c.n, B = (size_t)im->max_batch,
                 ne = im->max_excl ? im->max_excl : 1;
    /* the backend top-k's buffers: the CPU ranks with score_topk into the requests' own */
    const size_t dev = !be->caps.host_memory;
    x->scores = be->alloc(be, (dev ? B * ((size_t)im->cap + 1) : 1) * sizeof(float));
    x->didx = be->alloc(be, B * im->max_k * sizeof(int));
    x->dscore = be->alloc(be, B * im->max_k * sizeof(float));
    x->dexcl = be->alloc(be, B * ne * sizeof(int));
    x->in_idx = malloc(B * n * sizeof *x->in_idx);
    x->mask = malloc(B * n * sizeof *x->mask);
    x->hidx = malloc(B * im->max_k * sizeof *x->hidx);
    x->hscore = malloc(B * im->max_k * sizeof *x->hscore);
    x->hexcl = malloc(B * ne * sizeof *x->hexcl);
    x->heap = malloc(2 * (size_t)im->max_k * sizeof(int32_t));
    x->dban = be->alloc(be, (dev ? (size_t)im->cap + 1 : 1) * sizeof(float));
    x->hban = malloc((dev ? (size_t)im->cap + 1 : 1) * sizeof(float));
    if (!x->dban || !x->hban || !x->scores || !x->didx || !x->dscore || !x->dexcl || !x->in_idx ||
        !x->mask || !x->hidx || !x->hscore || !x->hexcl || !x->heap) {
        snprintf(err, errlen, "out of memory for an inference context");
        return -1;
    }
    return 0;
}

static const float *g_sort_count; /* qsort has no context argument: used under g_sort_mu */
static pthread_mutex_t g_sort_mu = PTHREAD_MUTEX_INITIALIZER;
static int by_count(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    float cx = g_sort_count[x], cy = g_sort_count[y];
    if (cx != cy) return cx > cy ? -1 : 1;
    return x < y ? -1 : x > y;
}

/* popularity of the training parts of today's dataset, on the model's indexes */
static int popularity(infer_model *im, const iisan_dataset *ds) {
    const int N = im->N0;
    im->pop_count = calloc((size_t)N + 1, sizeof *im->pop_count);
    im->pop_order = malloc(((size_t)N + 1) * sizeof *im->pop_order);
    if (!im->pop_count || !im->pop_order) return IISAN_ENOMEM;
    for (int j = 1; j <= ds->n_items; j++) {
        int i = infer_lookup_cat(im, ds->item_cat[j]);
        if (i) im->pop_count[i] += (float)ds->pop_count[j];
    }
    for (int i = 0; i < N; i++)
        im->pop_order[i] = i + 1;
    pthread_mutex_lock(&g_sort_mu);
    g_sort_count = im->pop_count;
    qsort(im->pop_order, (size_t)N, sizeof *im->pop_order, by_count);
    pthread_mutex_unlock(&g_sort_mu);
    return 0;
}

static size_t pow2_at_least(size_t n) {
    size_t p = 16;
    while (p < n)
        p *= 2;
    return p;
}

/* the load's table items that are in the catalogue but not in the checkpoint (marked in
 * mark[max_cat + 1]) */
static int table_extras(infer_model *im, iisan_store *s, unsigned char *mark, uint32_t **extra,
                        size_t *nextra) {
    const infer_options *o = im->load_opt;
    for (int j = 0; o && o->table && j < o->table_n; j++) {
        uint32_t cat = 0;
        if (store_item_lookup(s, o->table_ids[j], &cat) || cat > im->max_cat || im->of_cat[cat] ||
            mark[cat])
            continue;
        uint32_t *p = realloc(*extra, (*nextra + 1) * sizeof *p);
        if (!p) return -1;
        *extra = p;
        p[(*nextra)++] = cat;
        mark[cat] = 1;
    }
    return 0;
}

/* the catalogue items 1..ncat with hidden states that are neither in the checkpoint nor
 * marked, appended to extra */
static int state_extras(infer_model *im, store_reader *r, uint32_t ncat, const unsigned char *mark,
                        uint32_t **extra, size_t *nextra, char *err, int errlen) {
    for (uint32_t cat = 1; cat <= ncat; cat++) {
        if (im->of_cat[cat] || mark[cat]) continue;
        if (!store_reader_states(r, IISAN_TEXT, cat) && !store_reader_states(r, IISAN_IMAGE, cat)) {
            if (store_reader_error(r, err, (size_t)errlen)) return IISAN_EIO;
            continue;
        }
        uint32_t *p = realloc(*extra, (*nextra + 1) * sizeof *p);
        if (!p) return IISAN_ENOMEM;
        *extra = p;
        p[(*nextra)++] = cat;
    }
    store_reader_release(r);
    return 0;
}

/* The rows of the checkpoint's items, then (IISAN) the catalogue items with
 * hidden states that the checkpoint does not know: added after its training,
 * they are served with its item tower as infer_add_items would. Fills
 * item_cat[0..N0], ids, the id and catalogue maps. */
static int build_maps(infer_model *im, iisan_store *s, store_reader *r, const iisan_ckpt *ck,
                      char *err, int errlen) {
    int rc;
    const int Nck = (int)ck->n_cat - 1;
    uint32_t ncat = store_item_count(s);
    im->max_cat = ncat;
    for (int i = 0; i <= Nck; i++)
        if (ck->item_cat[i] > im->max_cat) im->max_cat = ck->item_cat[i];
    im->of_cat = calloc((size_t)im->max_cat + 1, sizeof *im->of_cat);
    if (!im->of_cat) return IISAN_ENOMEM;
    for (int i = 1; i <= Nck; i++)
        if (!im->of_cat[ck->item_cat[i]]) im->of_cat[ck->item_cat[i]] = i;
    /* the extras: the table's (docs/scaling.md), then items with states */
    uint32_t *extra = NULL;
    size_t nextra = 0;
    unsigned char *mark = calloc((size_t)im->max_cat + 1, 1);
    if (!mark || (ck->c.kind == MODEL_IISAN && table_extras(im, s, mark, &extra, &nextra))) {
        free(mark);
        free(extra);
        return IISAN_ENOMEM;
    }
    if (r && (rc = state_extras(im, r, ncat, mark, &extra, &nextra, err, errlen))) {
        free(mark);
        free(extra);
        return rc;
    }
    free(mark);
    const int N = Nck + (int)nextra;
    im->N0 = N;
    im->cap = N + im->info.headroom;
    im->item_cat = calloc((size_t)im->cap + 1, sizeof *im->item_cat);
    im->ids = calloc((size_t)im->cap + 1, sizeof *im->ids);
    im->nslot = pow2_at_least(2 * (size_t)im->cap + 2);
    im->slot = calloc(im->nslot, sizeof *im->slot);
    im->ncslot = im->info.headroom ? pow2_at_least(2 * (size_t)im->info.headroom + 2) : 0;
    im->cslot = im->ncslot ? calloc(im->ncslot, sizeof *im->cslot) : NULL;
    if (!im->item_cat || !im->ids || !im->slot || (im->ncslot && !im->cslot)) {
        free(extra);
        return IISAN_ENOMEM;
    }
    memcpy(im->item_cat, ck->item_cat, ck->n_cat * sizeof *im->item_cat);
    for (size_t j = 0; j < nextra; j++) {
        im->item_cat[Nck + 1 + j] = extra[j];
        im->of_cat[extra[j]] = Nck + 1 + (int)j;
    }
    free(extra);
    char id[1024];
    for (int i = 1; i <= N; i++) {
        rc = store_item_get(s, im->item_cat[i], id, sizeof id, NULL, 0);
        if (rc) {
            snprintf(err, errlen, "model item %d (catalogue index %u) is not in the catalogue: %s",
                     i, im->item_cat[i], iisan_strerror(rc));
            return rc;
        }
        if (!(im->ids[i] = strdup(id))) return IISAN_ENOMEM;
        if (!infer_lookup(im, id)) slot_set(im, id, i);
    }
    im->info.n_items = Nck;
    im->info.n_extra = (int)nextra;
    return 0;
}

int infer_load(iisan_store *s, uint32_t version, iisan_backend *be, const infer_options *opt,
               infer_model **out, char *err, int errlen) {
    *out = NULL;
    double t0 = iisan_now();
    /* the checkpoint as it was stored, today's dataset (popularity), the model whose item
     * tower embeds the items, and the states of the whole catalogue */
    iisan_session ss;
    session_options so = {.mode = SESSION_SERVE, .version = version, .cap_users = 64};
    int rc = session_open(&ss, s, be, &so, err, (size_t)errlen);
    if (rc) return rc;
    const iisan_ckpt *ck = &ss.ck;
    const uint32_t ver = ss.version;
    const char *meta = ss.meta;
    infer_model *im = calloc(1, sizeof *im);
    if (!im) {
        session_close(&ss);
        snprintf(err, errlen, "out of memory");
        return IISAN_ENOMEM;
    }
    atomic_init(&im->refs, 1);
    im->load_opt = opt;
    pthread_mutex_init(&im->mu, NULL);
    pthread_cond_init(&im->cv, NULL);
    pthread_mutex_init(&im->add_mu, NULL);
    im->be = be;
    im->c = ck->c;
    im->max_k = opt->max_k > 0 ? opt->max_k : 1;
    im->max_excl = opt->max_exclude > 0 ? opt->max_exclude : 0;
    im->max_batch = opt->max_batch > 0 ? opt->max_batch : 1;
    im->exhaustive = opt->exhaustive;
    im->info.version = ver;
    im->info.kind = ck->c.kind;
    im->info.n = ck->c.n;
    im->info.d = ck->c.d;
    for (int mod = 0; mod < N_MODS; mod++) {
        im->info.nstates[mod] = ck->c.kind == MODEL_IISAN ? config_nstates(&ck->c, mod) : 0;
        im->info.D[mod] = ck->c.kind == MODEL_IISAN ? config_width(&ck->c, mod) : 0;
    }
    im->info.params = ck->nparams;
    im->info.headroom = ck->c.kind == MODEL_IISAN && opt->headroom > 0 ? opt->headroom : 0;
    snprintf(im->info.meta, sizeof im->info.meta, "%s", meta ? meta : "{}");
    config_describe(&ck->c, im->info.describe, sizeof im->info.describe);
    if (ck->c.kind != MODEL_IISAN && ck->c.kind != MODEL_SASREC_ID) {
        snprintf(err, errlen, "checkpoint %u is of a kind that cannot be served", ver);
        rc = IISAN_EFORMAT;
        goto fail;
    }
    if (ck->n_cat < 2) {
        snprintf(err, errlen, "checkpoint %u has no items", ver);
        rc = IISAN_EFORMAT;
        goto fail;
    }
    if (opt->table && opt->table_d != ck->c.d) {
        snprintf(err, errlen, "the item table's rows are %d wide, checkpoint %u's d is %d",
                 opt->table_d, ver, ck->c.d);
        rc = IISAN_EINVAL;
        goto fail;
    }
    if ((rc = build_maps(im, s, ss.rd, ck, err, errlen))) {
        if (rc == IISAN_ENOMEM) snprintf(err, errlen, "out of memory for the item map");
        goto fail;
    }
    im->banned = calloc((size_t)im->cap + 1, sizeof *im->banned);
    atomic_init(&im->nbanned, 0);
    im->all = be->alloc(be, ((size_t)im->cap + 1) * ck->c.d * sizeof(float));
    if (!im->all || !im->banned) {
        snprintf(err, errlen, "out of memory for %d item embeddings", im->cap + 1);
        rc = IISAN_ENOMEM;
        goto fail;
    }
    if ((rc = popularity(im, &ss.ds))) {
        snprintf(err, errlen, "out of memory for the popularity");
        goto fail;
    }
    if ((rc = embed_items(im, &ss, err, errlen))) goto fail;
    if (be->caps.host_memory && !(im->table = score_table_build(im->all, im->N0, ck->c.d))) {
        snprintf(err, errlen, "out of memory for the scoring table");
        rc = IISAN_ENOMEM;
        goto fail;
    }
    if (im->tower && states_resident_empty(be, ADD_CHUNK, &ck->c, &im->stage, err, errlen)) {
        rc = IISAN_ENOMEM;
        goto fail;
    }
    atomic_init(&im->n_items, im->N0);
    atomic_init(&im->n_added, 0);
    im->nctx = opt->contexts > 0 ? opt->contexts : 1;
    im->ctx = calloc((size_t)im->nctx, sizeof *im->ctx);
    im->free_list = malloc((size_t)im->nctx * sizeof *im->free_list);
    if (!im->ctx || !im->free_list) {
        im->nctx = 0;
        snprintf(err, errlen, "out of memory");
        rc = IISAN_ENOMEM;
        goto fail;
    }
    for (int i = 0; i < im->nctx; i++) {
        if (make_ctx(im, ck, &im->ctx[i], err, errlen)) {
            rc = IISAN_ENOMEM;
            goto fail;
        }
        im->free_list[im->nfree++] = i;
    }
    be->sync(be);
    char bm[300];
    if (be->status(be, bm, sizeof bm)) {
        snprintf(err, errlen, "the %s backend failed while loading version %u: %s", be->name, ver,
                 bm);
        rc = IISAN_EBACKEND;
        goto fail;
    }
    im->info.contexts = im->nctx;
    im->info.max_k = im->max_k;
    im->info.max_exclude = im->max_excl;
    im->info.max_batch = im->max_batch;
    im->info.load_seconds = iisan_now() - t0;
    im->load_opt = NULL;
    session_close(&ss);
    *out = im;
    return 0;
fail:
    session_close(&ss);
    destroy(im);
    return rc;
}

void infer_ban(infer_model *im, int idx, int on) {
    if (idx < 1 || idx > infer_n_items(im)) return;
    unsigned char was = atomic_exchange(&im->banned[idx], (unsigned char)(on != 0));
    if (was != (on != 0)) atomic_fetch_add(&im->nbanned, on ? 1 : -1);
}

int infer_banned_count(const infer_model *im) { return atomic_load(&((infer_model *)im)->nbanned); }

static int is_banned(const infer_model *im, int idx) {
    return atomic_load_explicit(&((infer_model *)im)->banned[idx], memory_order_relaxed) != 0;
}

static infer_ctx *checkout(infer_model *im) {
    pthread_mutex_lock(&im->mu);
    while (im->nfree == 0)
        pthread_cond_wait(&im->cv, &im->mu);
    infer_ctx *x = &im->ctx[im->free_list[--im->nfree]];
    pthread_mutex_unlock(&im->mu);
    return x;
}

static void checkin(infer_model *im, infer_ctx *x) {
    pthread_mutex_lock(&im->mu);
    im->free_list[im->nfree++] = (int)(x - im->ctx);
    pthread_cond_signal(&im->cv);
    pthread_mutex_unlock(&im->mu);
}

static int run_batch(infer_model *im, infer_ctx *x, infer_query *q, int nq) {
    iisan_backend *be = im->be;
    const int n = im->c.n, d = im->c.d, N1 = infer_n_items(im) + 1;
    const int cpu = be->caps.host_memory, nb = infer_banned_count(im);
    int kmax = 0, nemax = 0, B = 0;
    infer_query *ok[nq > 0 ? nq : 1];
    for (int r = 0; r < nq; r++) {
        infer_query *t = &q[r];
        t->cnt = -1;
        if (t->k < 1 || t->k > im->max_k || t->ne < 0 || t->ne > im->max_excl || t->nh < 1)
            continue;
        int bad = 0;
        for (int j = 0; j < t->nh; j++)
            bad |= t->hist[j] < 1 || t->hist[j] >= N1;
        if (bad) continue;
        if (t->k > kmax) kmax = t->k;
        if (t->ne > nemax) nemax = t->ne;
        ok[B++] = t;
    }
    if (!B) return 0;
    for (int b = 0; b < B; b++) {
        const infer_query *t = ok[b];
        int take = t->nh < n ? t->nh : n, pad = n - take;
        for (int j = 0; j < n; j++) {
            x->in_idx[b * n + j] = j < pad ? 0 : t->hist[t->nh - take + (j - pad)];
            x->mask[b * n + j] = j < pad ? 0.0f : 1.0f;
        }
        for (int j = 0; j < nemax; j++) /* index 0 is never a candidate: pads the lists */
            x->hexcl[b * nemax + j] = j < t->ne ? t->excl[j] : 0;
    }
    seq_forward(x->m, im->all, x->in_idx, x->mask, B, 0, 0);
    const float *O = seq_output(x->m) + (size_t)(n - 1) * d; /* row b at b * n * d */
    if (cpu) { /* exact top-k over the norm-sorted table, most items never scored */
        for (int b = 0; b < B; b++) {
            infer_query *t = ok[b];
            score_query sq = {O + (size_t)b * n * d, t->k, t->excl, t->ne, im->banned,
                              !im->exhaustive};
            long sc = 0;
            t->cnt =
                score_topk(im->table, im->all, N1, &sq, t->out_idx, t->out_score, x->heap, &sc);
            atomic_fetch_add_explicit(&im->queries, 1, memory_order_relaxed);
            atomic_fetch_add_explicit(&im->scored, sc, memory_order_relaxed);
        }
        return 0;
    }
    be->gemm(be, 0, 1, B, N1, d, 1, O, n * d, im->all, d, 0, x->scores, N1);
    if (nb) { /* deleted items rank last (one -inf row added to every request's scores); the
               * few that could still come up are dropped below */
        for (int i = 0; i < N1; i++)
            x->hban[i] = is_banned(im, i) ? -INFINITY : 0.0f;
        be->upload(be, x->dban, x->hban, (size_t)N1 * sizeof(float));
        be->add_bias(be, x->scores, N1, x->dban, B, N1);
    }
    if (nemax) be->upload(be, x->dexcl, x->hexcl, (size_t)B * nemax * sizeof(int));
    be->topk(be, x->didx, x->dscore, x->scores, B, N1, kmax, nemax ? x->dexcl : NULL, nemax);
    be->download(be, x->hidx, x->didx, (size_t)B * kmax * sizeof(int));
    be->download(be, x->hscore, x->dscore, (size_t)B * kmax * sizeof(float));
    for (int b = 0; b < B; b++) {
        infer_query *t = ok[b];
        const int *oi = x->hidx + (size_t)b * kmax;
        const float *os = x->hscore + (size_t)b * kmax;
        int cnt = 0;
        for (int j = 0; j < t->k && oi[j] > 0; j++)
            if (!nb || !is_banned(im, oi[j])) {
                t->out_idx[cnt] = oi[j];
                t->out_score[cnt++] = os[j];
            }
        t->cnt = cnt;
    }
    return 0;
}

int infer_recommend_batch(infer_model *im, infer_query *q, int nq) {
    if (nq < 1) return -1;
    infer_ctx *x = checkout(im);
    for (int r0 = 0; r0 < nq; r0 += im->max_batch)
        run_batch(im, x, q + r0, nq - r0 < im->max_batch ? nq - r0 : im->max_batch);
    checkin(im, x);
    if (im->be->status(im->be, NULL, 0)) { /* the results are garbage: none is returned */
        for (int r = 0; r < nq; r++)
            q[r].cnt = -1;
        return IISAN_EBACKEND;
    }
    return 0;
}

int infer_recommend(infer_model *im, const int32_t *hist, int nh, const int32_t *excl, int ne,
                    int k, int32_t *out_idx, float *out_score) {
    infer_query q = {hist, nh, excl, ne, k, out_idx, out_score, -1};
    infer_recommend_batch(im, &q, 1);
    return q.cnt;
}

int infer_add_items(infer_model *im, const infer_new_item *v, int n, int32_t *out_idx, char *err,
                    int errlen) {
    if (!im->tower) {
        snprintf(err, errlen,
                 "model version %u is SASRec-ID: an item's ID embedding needs training; it is "
                 "served after the next retrain",
                 im->info.version);
        return IISAN_EINVAL;
    }
    if (n < 1) return 0;
    iisan_backend *be = im->be;
    const int d = im->c.d;
    pthread_mutex_lock(&im->add_mu);
    const int base = atomic_load(&im->n_items);
    if (base + n > im->cap) {
        pthread_mutex_unlock(&im->add_mu);
        snprintf(err, errlen,
                 "the loaded model has room for %d more items, %d were sent: reload the model "
                 "(POST /admin/reload) to embed them all",
                 im->cap - base, n);
        return IISAN_EFULL;
    }
    for (int i = 0; i < n; i++)
        if (!(im->ids[base + 1 + i] = strdup(v[i].item_id))) {
            for (int j = 0; j < i; j++) {
                free(im->ids[base + 1 + j]);
                im->ids[base + 1 + j] = NULL;
            }
            pthread_mutex_unlock(&im->add_mu);
            snprintf(err, errlen, "out of memory");
            return IISAN_ENOMEM;
        }
    /* chunks of items through the tower, on a context so that a GPU's one stream is never
     * used by two threads; no request can see these rows yet */
    infer_ctx *x = checkout(im);
    int32_t rows[ADD_CHUNK];
    uint32_t cats[ADD_CHUNK];
    int oom = 0;
    for (int i0 = 0; i0 < n; i0 += ADD_CHUNK) {
        int U = n - i0 < ADD_CHUNK ? n - i0 : ADD_CHUNK;
        for (int u = 0; u < U; u++) {
            const infer_new_item *it = &v[i0 + u];
            rows[u] = base + 1 + i0 + u;
            cats[u] = it->cat;
            im->item_cat[rows[u]] = it->cat;
            oom |= states_resident_put(im->stage, u, it->cat, it->states) != 0;
        }
        iisan_states st = resident_states_source(im->stage);
        tower_forward(im->tower, rows, cats, U, &st);
        be->copy(be, im->all + (size_t)rows[0] * d, im->tower->emb, (size_t)U * d * sizeof(float));
    }
    be->sync(be);
    checkin(im, x);
    char bm[300];
    if (oom || be->status(be, bm, sizeof bm)) { /* garbage rows: none is published */
        for (int i = 0; i < n; i++) {
            free(im->ids[base + 1 + i]);
            im->ids[base + 1 + i] = NULL;
        }
        pthread_mutex_unlock(&im->add_mu);
        if (oom) {
            snprintf(err, errlen, "out of memory staging the items' states");
            return IISAN_ENOMEM;
        }
        snprintf(err, errlen, "the %s backend failed embedding the items: %s", be->name, bm);
        return IISAN_EBACKEND;
    }
    /* publish the rows, then point the maps at them, then retire the rows they replace */
    atomic_store_explicit(&im->n_items, base + n, memory_order_release);
    atomic_fetch_add(&im->n_added, n);
    for (int i = 0; i < n; i++) {
        const int row = base + 1 + i;
        int old = infer_lookup(im, v[i].item_id);
        int oldc = infer_lookup_cat(im, v[i].cat);
        slot_set(im, im->ids[row], row);
        cslot_set(im, v[i].cat, row);
        if (old && old != row) infer_ban(im, old, 1);
        if (oldc && oldc != row && oldc != old) infer_ban(im, oldc, 1);
        if (out_idx) out_idx[i] = row;
    }
    pthread_mutex_unlock(&im->add_mu);
    return 0;
}

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return x < y ? -1 : x > y;
}

int infer_popular(const infer_model *im, const int32_t *excl, int ne, int k, int32_t *out_idx,
                  float *out_score) {
    int32_t *ex = NULL;
    if (ne > 0) {
        ex = malloc((size_t)ne * sizeof *ex);
        if (!ex) return 0;
        memcpy(ex, excl, (size_t)ne * sizeof *ex);
        qsort(ex, (size_t)ne, sizeof *ex, cmp_i32);
    }
    int cnt = 0;
    for (int j = 0; j < im->N0 && cnt < k; j++) {
        int32_t i = im->pop_order[j];
        if (is_banned(im, i) || (ex && bsearch(&i, ex, (size_t)ne, sizeof *ex, cmp_i32))) continue;
        out_idx[cnt] = i;
        out_score[cnt] = im->pop_count[i];
        cnt++;
    }
    free(ex);
    return cnt;
}

int infer_embeddings(const infer_model *im, float *out, int rows) {
    int n = infer_n_items(im);
    if (rows < n) return -1;
    im->be->download(im->be, out, im->all + im->c.d, (size_t)n * im->c.d * sizeof(float));
    return n;
}

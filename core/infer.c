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

typedef struct {
    iisan_model *m; /* sequence encoder only (SASRec-ID shape, n_items 1, 1 user) */
    float *scores;  /* backend (N+1) */
    int *didx;      /* backend (max_k) */
    float *dscore;  /* backend (max_k) */
    int *dexcl;     /* backend (max_exclude) */
    int *in_idx;    /* host (n) */
    float *mask;    /* host (n) */
} infer_ctx;

struct infer_model {
    atomic_int refs;
    iisan_backend *be;
    iisan_config c;
    infer_info info;
    int N;
    float *all;         /* backend (N+1, d): e_i of every model item */
    uint32_t *item_cat; /* host (N+1) */
    char **ids;         /* host (N+1), ids[0] = NULL */
    int32_t *slot;      /* open-addressing table of model indexes by id, nslot entries */
    size_t nslot;
    int32_t *of_cat; /* catalogue index -> model index, max_cat + 1 entries */
    uint32_t max_cat;
    int32_t *pop_order; /* model indexes by training-part count, descending */
    float *pop_count;   /* (N+1) */
    int max_k, max_excl;
    atomic_uchar *banned; /* (N+1) deleted items */
    atomic_int nbanned;
    /* the context pool */
    infer_ctx *ctx;
    int nctx;
    int *free_list, nfree;
    pthread_mutex_t mu;
    pthread_cond_t cv;
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t hash_id(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

int infer_lookup(const infer_model *im, const char *item_id) {
    if (!item_id || !im->nslot) return 0;
    size_t mask = im->nslot - 1;
    for (size_t i = hash_id(item_id) & mask;; i = (i + 1) & mask) {
        int32_t v = im->slot[i];
        if (v == 0) return 0;
        if (!strcmp(im->ids[v], item_id)) return v;
    }
}

int infer_lookup_cat(const infer_model *im, uint32_t cat) {
    return cat <= im->max_cat ? im->of_cat[cat] : 0;
}

const char *infer_item_id(const infer_model *im, int idx) {
    return idx >= 1 && idx <= im->N ? im->ids[idx] : NULL;
}

void infer_get_info(const infer_model *im, infer_info *info) { *info = im->info; }

void infer_retain(infer_model *im) { atomic_fetch_add(&im->refs, 1); }

static void ctx_free(iisan_backend *be, infer_ctx *x) {
    model_destroy(x->m);
    be->free(be, x->scores);
    be->free(be, x->didx);
    be->free(be, x->dscore);
    be->free(be, x->dexcl);
    free(x->in_idx);
    free(x->mask);
}

static void destroy(infer_model *im) {
    if (!im) return;
    iisan_backend *be = im->be;
    for (int i = 0; i < im->nctx; i++)
        ctx_free(be, &im->ctx[i]);
    free(im->ctx);
    free(im->free_list);
    if (im->all) be->free(be, im->all);
    if (im->ids)
        for (int i = 0; i <= im->N; i++)
            free(im->ids[i]);
    free(im->ids);
    free(im->item_cat);
    free(im->slot);
    free(im->of_cat);
    free(im->pop_order);
    free(im->pop_count);
    free(im->banned);
    pthread_mutex_destroy(&im->mu);
    pthread_cond_destroy(&im->cv);
    free(im);
}

void infer_release(infer_model *im) {
    if (im && atomic_fetch_sub(&im->refs, 1) == 1) destroy(im);
}

/* hidden states straight from a store reader */
static const uint16_t *reader_get(void *ctx, int modality, uint32_t cat) {
    return store_reader_states(ctx, modality, cat);
}

/* e_i of model items 0..N into im->all, with a temporary full model */
static int embed_items(infer_model *im, iisan_store *s, const iisan_ckpt *ck, char *err,
                       int errlen) {
    iisan_backend *be = im->be;
    iisan_model *m = model_create(&ck->c, be, 64, 0, err, errlen);
    if (!m) return IISAN_ENOMEM;
    if (m->pt.total != ck->nparams) {
        snprintf(err, errlen, "checkpoint holds %llu parameters, its config wants %zu",
                 (unsigned long long)ck->nparams, m->pt.total);
        model_destroy(m);
        return IISAN_EFORMAT;
    }
    be->upload(be, m->w, ck->params, ck->nparams * sizeof(float));
    store_reader *r = NULL;
    resident_states *rs = NULL;
    iisan_states st = {reader_get, NULL};
    int rc = 0;
    if (ck->c.kind == MODEL_IISAN) {
        if (store_reader_begin(s, &r)) {
            snprintf(err, errlen, "cannot read the hidden states");
            model_destroy(m);
            return IISAN_EIO;
        }
        st.ctx = r;
        if (strcmp(be->name, "cpu")) { /* the GPU gathers states from its own memory */
            iisan_dataset fake = {0};
            fake.n_items = im->N;
            fake.item_cat = im->item_cat;
            if (states_resident_create(be, &fake, &st, ck->c.nstates, ck->c.D, &rs, err, errlen)) {
                rc = IISAN_ENOMEM;
                goto out;
            }
            st = resident_states_source(rs);
        }
    }
    model_item_embeddings(m, im->N, im->item_cat, &st, im->all);
    be->sync(be);
out:
    states_resident_free(rs);
    if (r) store_reader_end(r);
    model_destroy(m);
    return rc;
}

static int make_ctx(infer_model *im, const iisan_ckpt *ck, infer_ctx *x, char *err, int errlen) {
    iisan_backend *be = im->be;
    iisan_config c2 = ck->c;
    c2.kind = MODEL_SASREC_ID;
    c2.n_items = 1;
    x->m = model_create(&c2, be, 1, 0, err, errlen);
    if (!x->m) return -1;
    param_table full;
    if (params_build(&full, &ck->c)) {
        snprintf(err, errlen, "cannot build the parameter table");
        return -1;
    }
    const param_table *pt = &x->m->pt;
    float *h = calloc(pt->total, sizeof *h);
    int rc = h ? 0 : -1;
    for (int i = 0; !rc && i < pt->n; i++) {
        const param_info *p = &pt->t[i];
        if (strncmp(p->name, "seq.", 4)) continue;
        const param_info *q = params_find(&full, p->name);
        if (!q || q->size != p->size) {
            snprintf(err, errlen, "checkpoint lacks '%s' of the right size", p->name);
            rc = -1;
            break;
        }
        memcpy(h + p->offset, ck->params + q->offset, p->size * sizeof *h);
    }
    if (!rc) be->upload(be, x->m->w, h, pt->total * sizeof *h);
    free(h);
    params_free(&full);
    if (rc) return -1;
    const int n = ck->c.n;
    x->scores = be->alloc(be, ((size_t)im->N + 1) * sizeof(float));
    x->didx = be->alloc(be, (size_t)im->max_k * sizeof(int));
    x->dscore = be->alloc(be, (size_t)im->max_k * sizeof(float));
    x->dexcl = be->alloc(be, (size_t)(im->max_excl ? im->max_excl : 1) * sizeof(int));
    x->in_idx = malloc((size_t)n * sizeof *x->in_idx);
    x->mask = malloc((size_t)n * sizeof *x->mask);
    if (!x->scores || !x->didx || !x->dscore || !x->dexcl || !x->in_idx || !x->mask) {
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
static int popularity(infer_model *im, iisan_store *s, const iisan_ckpt *ck, char *err,
                      int errlen) {
    im->pop_count = calloc((size_t)im->N + 1, sizeof *im->pop_count);
    im->pop_order = malloc(((size_t)im->N + 1) * sizeof *im->pop_order);
    if (!im->pop_count || !im->pop_order) return IISAN_ENOMEM;
    iisan_dataset ds;
    int rc = dataset_build(&ds, s, ck->c.n, ck->min_len, err, (size_t)errlen);
    if (rc) return rc;
    for (int j = 1; j <= ds.n_items; j++) {
        int i = infer_lookup_cat(im, ds.item_cat[j]);
        if (i) im->pop_count[i] += (float)ds.pop_count[j];
    }
    dataset_free(&ds);
    for (int i = 0; i < im->N; i++)
        im->pop_order[i] = i + 1;
    pthread_mutex_lock(&g_sort_mu);
    g_sort_count = im->pop_count;
    qsort(im->pop_order, (size_t)im->N, sizeof *im->pop_order, by_count);
    pthread_mutex_unlock(&g_sort_mu);
    return 0;
}

static int build_maps(infer_model *im, iisan_store *s, char *err, int errlen) {
    const int N = im->N;
    im->ids = calloc((size_t)N + 1, sizeof *im->ids);
    im->nslot = 16;
    while (im->nslot < 2 * (size_t)N + 2)
        im->nslot *= 2;
    im->slot = calloc(im->nslot, sizeof *im->slot);
    im->max_cat = 0;
    for (int i = 0; i <= N; i++)
        if (im->item_cat[i] > im->max_cat) im->max_cat = im->item_cat[i];
    im->of_cat = calloc((size_t)im->max_cat + 1, sizeof *im->of_cat);
    if (!im->ids || !im->slot || !im->of_cat) return IISAN_ENOMEM;
    char id[1024];
    for (int i = 1; i <= N; i++) {
        int rc = store_item_get(s, im->item_cat[i], id, sizeof id, NULL, 0);
        if (rc) {
            snprintf(err, errlen, "model item %d (catalogue index %u) is not in the catalogue: %s",
                     i, im->item_cat[i], iisan_strerror(rc));
            return rc;
        }
        if (!(im->ids[i] = strdup(id))) return IISAN_ENOMEM;
        if (!im->of_cat[im->item_cat[i]]) im->of_cat[im->item_cat[i]] = i;
        size_t mask = im->nslot - 1, k = hash_id(id) & mask;
        while (im->slot[k] && strcmp(im->ids[im->slot[k]], id))
            k = (k + 1) & mask;
        if (!im->slot[k]) im->slot[k] = i;
    }
    return 0;
}

int infer_load(iisan_store *s, uint32_t version, iisan_backend *be, const infer_options *opt,
               infer_model **out, char *err, int errlen) {
    *out = NULL;
    double t0 = now();
    void *blob = NULL;
    size_t len = 0;
    char *meta = NULL;
    uint32_t ver = 0;
    int rc = store_ckpt_get(s, version, &blob, &len, &meta, &ver);
    if (rc) {
        if (rc == IISAN_ENOTFOUND)
            snprintf(err, errlen, "%s",
                     version ? "no such checkpoint version" : "the store holds no checkpoint");
        else
            snprintf(err, errlen, "reading the checkpoint: %s", iisan_strerror(rc));
        return rc;
    }
    iisan_ckpt ck = {0};
    char e2[400];
    rc = ckpt_decode(blob, len, &ck, e2, sizeof e2);
    free(blob);
    if (rc) {
        snprintf(err, errlen, "checkpoint %u: %s", ver, e2);
        free(meta);
        return IISAN_EFORMAT;
    }
    infer_model *im = calloc(1, sizeof *im);
    if (!im) {
        free(meta);
        ckpt_free(&ck);
        snprintf(err, errlen, "out of memory");
        return IISAN_ENOMEM;
    }
    atomic_init(&im->refs, 1);
    pthread_mutex_init(&im->mu, NULL);
    pthread_cond_init(&im->cv, NULL);
    im->be = be;
    im->c = ck.c;
    im->N = (int)ck.n_cat - 1;
    im->max_k = opt->max_k > 0 ? opt->max_k : 1;
    im->max_excl = opt->max_exclude > 0 ? opt->max_exclude : 0;
    im->info.version = ver;
    im->info.kind = ck.c.kind;
    im->info.n_items = im->N;
    im->info.n = ck.c.n;
    im->info.d = ck.c.d;
    im->info.params = ck.nparams;
    snprintf(im->info.meta, sizeof im->info.meta, "%s", meta ? meta : "{}");
    free(meta);
    if (ck.c.kind != MODEL_IISAN && ck.c.kind != MODEL_SASREC_ID) {
        snprintf(err, errlen, "checkpoint %u is of a kind that cannot be served", ver);
        rc = IISAN_EFORMAT;
        goto fail;
    }
    if (im->N < 1) {
        snprintf(err, errlen, "checkpoint %u has no items", ver);
        rc = IISAN_EFORMAT;
        goto fail;
    }
    im->item_cat = malloc(ck.n_cat * sizeof *im->item_cat);
    im->banned = calloc(ck.n_cat, sizeof *im->banned);
    atomic_init(&im->nbanned, 0);
    im->all = be->alloc(be, (size_t)ck.n_cat * ck.c.d * sizeof(float));
    if (!im->item_cat || !im->all || !im->banned) {
        snprintf(err, errlen, "out of memory for %u item embeddings", ck.n_cat);
        rc = IISAN_ENOMEM;
        goto fail;
    }
    memcpy(im->item_cat, ck.item_cat, ck.n_cat * sizeof *im->item_cat);
    if ((rc = build_maps(im, s, err, errlen))) {
        if (rc == IISAN_ENOMEM) snprintf(err, errlen, "out of memory for the item map");
        goto fail;
    }
    if ((rc = popularity(im, s, &ck, err, errlen))) {
        if (rc == IISAN_ENOMEM) snprintf(err, errlen, "out of memory for the popularity");
        goto fail;
    }
    if ((rc = embed_items(im, s, &ck, err, errlen))) goto fail;
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
        if (make_ctx(im, &ck, &im->ctx[i], err, errlen)) {
            rc = IISAN_ENOMEM;
            goto fail;
        }
        im->free_list[im->nfree++] = i;
    }
    be->sync(be);
    im->info.contexts = im->nctx;
    im->info.max_k = im->max_k;
    im->info.max_exclude = im->max_excl;
    im->info.load_seconds = now() - t0;
    ckpt_free(&ck);
    *out = im;
    return 0;
fail:
    ckpt_free(&ck);
    destroy(im);
    return rc;
}

void infer_ban(infer_model *im, int idx, int on) {
    if (idx < 1 || idx > im->N) return;
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

/* scores[i] = <all[i], o> on host memory. A GEMM with one row would pack the
 * whole (N+1) x d catalogue on every call (measured: 80% of a request on
 * OpenBLAS); a matrix-vector product reads it once. Eight partial sums keep
 * the loop vectorisable without reassociating a single sum. */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("tree-vectorize", "vect-cost-model=dynamic")))
#endif
static void
host_scores(float *scores, const float *all, const float *o, int N1, int d) {
    for (int i = 0; i < N1; i++) {
        const float *e = all + (size_t)i * d;
        float acc[8] = {0};
        int j = 0;
        for (; j + 8 <= d; j += 8)
            for (int q = 0; q < 8; q++)
                acc[q] += e[j + q] * o[j + q];
        float sum =
            ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
        for (; j < d; j++)
            sum += e[j] * o[j];
        scores[i] = sum;
    }
}

int infer_recommend(infer_model *im, const int32_t *hist, int nh, const int32_t *excl, int ne,
                    int k, int32_t *out_idx, float *out_score) {
    if (k < 1 || k > im->max_k || ne < 0 || ne > im->max_excl || nh < 1) return -1;
    iisan_backend *be = im->be;
    const int n = im->c.n, d = im->c.d, N1 = im->N + 1;
    infer_ctx *x = checkout(im);
    int take = nh < n ? nh : n, pad = n - take;
    for (int j = 0; j < n; j++) {
        x->in_idx[j] = j < pad ? 0 : hist[nh - take + (j - pad)];
        x->mask[j] = j < pad ? 0.0f : 1.0f;
    }
    seq_forward(x->m, im->all, x->in_idx, x->mask, 1, 0, 0);
    const float *o = seq_output(x->m) + (size_t)(n - 1) * d;
    const int cpu = !strcmp(be->name, "cpu"), nb = infer_banned_count(im);
    if (cpu)
        host_scores(x->scores, im->all, o, N1, d);
    else
        be->gemm(be, 0, 1, 1, N1, d, 1, o, d, im->all, d, 0, x->scores, N1);
    if (nb) { /* deleted items rank last; the few that could still come up are dropped below */
        const float ninf = -INFINITY;
        for (int i = 1; i < N1; i++)
            if (is_banned(im, i)) {
                if (cpu)
                    x->scores[i] = ninf;
                else
                    be->upload(be, x->scores + i, &ninf, sizeof ninf);
            }
    }
    if (ne) be->upload(be, x->dexcl, excl, (size_t)ne * sizeof(int));
    be->topk(be, x->didx, x->dscore, x->scores, 1, N1, k, x->dexcl, ne);
    be->download(be, out_idx, x->didx, (size_t)k * sizeof(int));
    be->download(be, out_score, x->dscore, (size_t)k * sizeof(float));
    checkin(im, x);
    int cnt = 0;
    for (int j = 0; j < k && out_idx[j] > 0; j++)
        if (!nb || !is_banned(im, out_idx[j])) {
            out_idx[cnt] = out_idx[j];
            out_score[cnt++] = out_score[j];
        }
    return cnt;
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
    for (int j = 0; j < im->N && cnt < k; j++) {
        int32_t i = im->pop_order[j];
        if (is_banned(im, i) || (ex && bsearch(&i, ex, (size_t)ne, sizeof *ex, cmp_i32))) continue;
        out_idx[cnt] = i;
        out_score[cnt] = im->pop_count[i];
        cnt++;
    }
    free(ex);
    return cnt;
}

/* Cluster mode's write path (cluster/cluster.h): HTTP writes appended to the
 * Redis log and answered once durable there and applied here; the consumer
 * thread that applies the log, in order, to this node's store, committing its
 * read position with the rows. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster/cluster_internal.h"
#include "server/serve.h"
#include "server/serve_state.h"

#define POS_KEY "bus_pos"

/* a request waiting for this node's consumer to apply its entry */
typedef struct waiter {
    struct waiter *next;
    char origin[192];
    int done;
    int status;
    json_t *body;
} waiter;

static pthread_mutex_t w_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t w_cv = PTHREAD_COND_INITIALIZER;
static waiter *w_head;
static unsigned long w_counter;

/* the write connections: a request takes one for its XADD; Redis fsyncs the
 * AOF once per event-loop pass, so concurrent appends share an fsync */
enum { WPOOL = 8 };
static pthread_mutex_t wb_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wb_cv = PTHREAD_COND_INITIALIZER;
static bus *wpool[WPOOL];
static int wfree[WPOOL], nwfree = -1; /* -1: no pool */

static bus *wb_take(void) {
    pthread_mutex_lock(&wb_mu);
    while (nwfree == 0)
        pthread_cond_wait(&wb_cv, &wb_mu);
    bus *b = nwfree > 0 ? wpool[wfree[--nwfree]] : NULL;
    pthread_mutex_unlock(&wb_mu);
    return b;
}

static void wb_give(bus *b) {
    pthread_mutex_lock(&wb_mu);
    for (int i = 0; i < WPOOL; i++)
        if (wpool[i] == b) wfree[nwfree++] = i;
    pthread_cond_broadcast(&wb_cv);
    pthread_mutex_unlock(&wb_mu);
}

static pthread_t consumer;
static int consumer_started;
static char applied_pos[64] = "0"; /* under w_mu */
static atomic_long applied_entries;

/* ---------------- waiters ---------------- */

static void waiter_add(waiter *w) {
    pthread_mutex_lock(&w_mu);
    snprintf(w->origin, sizeof w->origin, "%s:%lu", g_cl.node, ++w_counter);
    w->next = w_head;
    w_head = w;
    pthread_mutex_unlock(&w_mu);
}

static void waiter_remove(waiter *w) { /* under w_mu */
    for (waiter **p = &w_head; *p; p = &(*p)->next)
        if (*p == w) {
            *p = w->next;
            return;
        }
}

/* hands status and body (stolen) to the request that appended origin */
static void waiter_complete(const char *origin, int status, json_t *body) {
    int taken = 0;
    pthread_mutex_lock(&w_mu);
    for (waiter *w = w_head; w && origin[0]; w = w->next)
        if (!w->done && !strcmp(w->origin, origin)) {
            w->done = 1;
            w->status = status;
            w->body = body;
            taken = 1;
            pthread_cond_broadcast(&w_cv);
            break;
        }
    pthread_mutex_unlock(&w_mu);
    if (!taken) json_decref(body);
}

static json_t *error_body(const char *code, const char *msg) {
    return json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", msg);
}

/* Appends (type, payload) and waits for this node to apply it. 1: applied,
 * *status / *body set; 0: durable in Redis, not applied here in time (it will
 * be); -1: not acknowledged by the bus (*body is the 503 error). */
static int forward(const char *type, const char *payload, int *status, json_t **body) {
    waiter w = {0};
    waiter_add(&w);
    char id[64], err[300] = "";
    bus *wb = wb_take();
    int rc = -1;
    if (wb) {
        rc = bus_append(wb, type, w.origin, payload, strlen(payload), g_cl.wait_replicas,
                        (int)g_cl.wait_ms, id, err, sizeof err);
        wb_give(wb);
    } else {
        snprintf(err, sizeof err, "the server is stopping");
    }
    if (rc) {
        pthread_mutex_lock(&w_mu);
        waiter_remove(&w);
        pthread_mutex_unlock(&w_mu);
        json_decref(w.body);
        log_event("warn", "bus_write_failed", "type=%s error=%s", type,
                  log_q(err, (char[400]){0}, 400));
        char msg[400];
        snprintf(msg, sizeof msg, "the write bus is unavailable, nothing was stored; retry: %s",
                 err);
        *status = 503;
        *body = error_body("bus_unavailable", msg);
        return -1;
    }
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    long wait_ms = g_cl.timeout_ms * 2 + 3000;
    dl.tv_sec += wait_ms / 1000;
    dl.tv_nsec += (wait_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&w_mu);
    while (!w.done && !atomic_load(&g_cl_stop))
        if (pthread_cond_timedwait(&w_cv, &w_mu, &dl) == ETIMEDOUT) break;
    waiter_remove(&w);
    pthread_mutex_unlock(&w_mu);
    if (!w.done) return 0;
    *status = w.status;
    *body = w.body;
    return 1;
}

/* ---------------- the HTTP side ---------------- */

int cluster_post_interactions(const ix_request *q, const store_interaction *v, json_t **body) {
    json_t *a = json_array();
    for (size_t i = 0; a && i < q->n; i++)
        json_array_append_new(
            a, json_pack("[s,s,I]", q->v[i].user_id, q->v[i].item_id, (json_int_t)v[i].timestamp));
    char *payload = a ? json_dumps(a, JSON_COMPACT) : NULL;
    json_decref(a);
    if (!payload) {
        *body = NULL;
        return 500;
    }
    int status = 200;
    int rc = forward("ix", payload, &status, body);
    free(payload);
    if (rc == 0) /* durable on the bus; applied here shortly */
        *body = json_pack("{s:I,s:b,s:I}", "accepted", (json_int_t)q->n, "durable", 1, "first_seq",
                          (json_int_t)0);
    return status;
}

int cluster_post_items(const char *raw, size_t len, json_t **body) {
    char *payload = strndup(raw, len);
    if (!payload) {
        *body = NULL;
        return 500;
    }
    int status = 200;
    int rc = forward("items", payload, &status, body);
    free(payload);
    if (rc == 0) {
        status = 503;
        *body = error_body("apply_timeout",
                           "the items are durable on the bus but this node has not applied them "
                           "yet; GET /items/{item_id} shows when it has");
    }
    return status;
}

int cluster_delete_item(const char *item_id, json_t **body) {
    int status = 200;
    int rc = forward("del", item_id, &status, body);
    if (rc == 0) {
        status = 503;
        *body = error_body("apply_timeout",
                           "the deletion is durable on the bus but this node has not applied it "
                           "yet");
    }
    return status;
}

int consume_announce(uint32_t version) {
    char err[300];
    bus *wb = wb_take();
    int rc = wb ? bus_announce(wb, version, err, sizeof err) : -1;
    if (wb) wb_give(wb);
    if (rc)
        log_event("warn", "announce_failed",
                  "version=%u message=\"replicas will find it by "
                  "polling\"",
                  version);
    return rc;
}

/* ---------------- the consumer ---------------- */

typedef struct {
    char origin[192];
    size_t from, n;
} ix_src;

/* consecutive "ix" entries, applied in one transaction */
typedef struct {
    store_interaction *v;
    size_t n, cap;
    json_t **roots;
    size_t nroots, roots_cap;
    ix_src *src;
    size_t nsrc, src_cap;
    char last_id[64];
    int failed; /* a commit failed: stop reading, re-read from the stored position */
} ix_batch;

static void batch_clear(ix_batch *b) {
    for (size_t i = 0; i < b->nroots; i++)
        json_decref(b->roots[i]);
    b->n = b->nroots = b->nsrc = 0;
}

static void set_applied(const char *id) {
    pthread_mutex_lock(&w_mu);
    snprintf(applied_pos, sizeof applied_pos, "%s", id);
    pthread_mutex_unlock(&w_mu);
}

static int batch_flush(ix_batch *b) {
    if (!b->nsrc) return 0;
    char err[300] = "";
    uint64_t first = 0;
    double t0 = serve_now();
    int rc = store_ix_append_at(g_srv.ix, b->v, b->n, POS_KEY, b->last_id, &first, err, sizeof err);
    metrics_commit(b->n, serve_now() - t0, rc == 0);
    if (rc) {
        log_event("error", "bus_apply_failed", "interactions=%zu error=%s", b->n,
                  log_q(err, (char[400]){0}, 400));
        batch_clear(b);
        b->failed = 1;
        return -1;
    }
    if (b->n) serve_committed(b->n);
    set_applied(b->last_id);
    atomic_fetch_add(&applied_entries, (long)b->nsrc);
    for (size_t i = 0; i < b->nsrc; i++)
        waiter_complete(b->src[i].origin, 200,
                        json_pack("{s:I,s:b,s:I}", "accepted", (json_int_t)b->src[i].n, "durable",
                                  1, "first_seq", (json_int_t)(first + b->src[i].from)));
    batch_clear(b);
    return 0;
}

static int grow(void **p, size_t *cap, size_t need, size_t size) {
    if (need <= *cap) return 0;
    size_t nc = *cap ? *cap * 2 : 64;
    while (nc < need)
        nc *= 2;
    void *t = realloc(*p, nc * size);
    if (!t) return -1;
    *p = t;
    *cap = nc;
    return 0;
}

/* one "ix" entry into the batch: [[user, item, timestamp], ...] */
static int batch_add(ix_batch *b, const char *id, const char *origin, const char *payload,
                     size_t len) {
    json_t *a = json_loadb(payload, len, 0, NULL);
    size_t m = json_is_array(a) ? json_array_size(a) : 0;
    if (grow((void **)&b->v, &b->cap, b->n + m, sizeof *b->v) ||
        grow((void **)&b->roots, &b->roots_cap, b->nroots + 1, sizeof *b->roots) ||
        grow((void **)&b->src, &b->src_cap, b->nsrc + 1, sizeof *b->src)) {
        json_decref(a);
        return -1;
    }
    ix_src *s = &b->src[b->nsrc++];
    snprintf(s->origin, sizeof s->origin, "%s", origin);
    s->from = b->n;
    for (size_t i = 0; i < m; i++) {
        json_t *e = json_array_get(a, i);
        const char *user = json_string_value(json_array_get(e, 0));
        const char *item = json_string_value(json_array_get(e, 1));
        uint32_t cat = 0;
        if (!user || !item || store_ix_item_lookup(g_srv.ix, item, &cat)) {
            log_event("error", "bus_entry_skipped",
                      "id=%s message=\"interaction %zu names an "
                      "item this node's catalogue lacks\"",
                      id, i);
            continue;
        }
        b->v[b->n].user_id = user;
        b->v[b->n].item = cat;
        b->v[b->n].timestamp = (int64_t)json_integer_value(json_array_get(e, 2));
        b->n++;
    }
    s->n = b->n - s->from;
    b->roots[b->nroots++] = a;
    snprintf(b->last_id, sizeof b->last_id, "%s", id);
    return 0;
}

static int apply_items(const char *payload, size_t len, json_t **body) {
    const serve_config *cfg = serve_config_acquire();
    req_limits lim = {cfg->max_k, cfg->max_history, cfg->max_exclude, cfg->max_interactions};
    serve_config_release(cfg);
    items_request q;
    req_error e;
    if (items_request_parse(payload, len, &lim, &q, &e)) {
        *body = error_body(e.code, e.message);
        return e.status;
    }
    int status = items_post(&q, body);
    items_request_free(&q);
    return status;
}

static int apply_delete(const char *item_id, json_t **body) {
    char err[300];
    uint32_t cat = 0;
    int rc = store_ix_item_delete(g_srv.ix, item_id, &cat, err, sizeof err);
    if (rc == IISAN_ENOTFOUND) {
        char msg[700];
        snprintf(msg, sizeof msg, "item id '%s' is not in the catalogue", item_id);
        *body = error_body("unknown_item", msg);
        return 404;
    }
    if (rc) {
        *body = error_body("store_error", err);
        return rc == IISAN_EFULL ? 503 : 500;
    }
    infer_model *m = serve_model_get();
    if (m) {
        int midx = infer_lookup_cat(m, cat);
        if (midx) infer_ban(m, midx, 1);
        infer_release(m);
    }
    *body = json_pack("{s:s,s:I,s:b}", "item_id", item_id, "catalogue_index", (json_int_t)cat,
                      "deleted", 1);
    return 200;
}

static int on_entry(void *arg, const char *id, const char *type, const char *origin,
                    const char *payload, size_t len) {
    ix_batch *b = arg;
    if (!strcmp(type, "ix")) return batch_add(b, id, origin, payload, len) ? 1 : 0;
    if (batch_flush(b)) return 1;
    json_t *body = NULL;
    int status;
    if (!strcmp(type, "items"))
        status = apply_items(payload, len, &body);
    else if (!strcmp(type, "del"))
        status = apply_delete(payload, &body);
    else {
        log_event("warn", "bus_entry_unknown", "id=%s type=%s", id, type);
        status = 0;
    }
    /* items are applied idempotently (an id is put again); the position follows */
    char err[300];
    if (store_ix_append_at(g_srv.ix, NULL, 0, POS_KEY, id, NULL, err, sizeof err)) {
        log_event("error", "bus_pos_failed", "id=%s error=%s", id, log_q(err, (char[400]){0}, 400));
        json_decref(body);
        b->failed = 1;
        return 1;
    }
    set_applied(id);
    atomic_fetch_add(&applied_entries, 1);
    if (status)
        waiter_complete(origin, status, body);
    else
        json_decref(body);
    return 0;
}

static void *consume_main(void *arg) {
    bus *b = bus_new(g_cl.redis, g_cl.prefix, (int)g_cl.timeout_ms);
    ix_batch batch = {0};
    char pos[64] = "0", err[300];
    int down = 0;
    if (store_ix_pos_get(g_srv.ix, POS_KEY, pos, sizeof pos)) snprintf(pos, sizeof pos, "0");
    set_applied(pos);
    log_event("info", "bus_consuming", "from=%s", pos);
    while (b && !atomic_load(&g_cl_stop)) {
        batch.failed = 0;
        int n = bus_read(b, pos, 500, 512, on_entry, &batch, err, sizeof err);
        if (n >= 0 && !batch.failed) batch_flush(&batch);
        if (n < 0 || batch.failed) {
            batch_clear(&batch);
            if (n < 0 && !down)
                log_event("warn", "bus_unreachable", "error=%s", log_q(err, (char[400]){0}, 400));
            down = n < 0;
            cluster_sleep_ms(500);
        } else if (down) {
            log_event("info", "bus_reachable", "from=%s", pos);
            down = 0;
        }
        /* the stored position is the truth: a failed batch is read again */
        if (store_ix_pos_get(g_srv.ix, POS_KEY, pos, sizeof pos)) snprintf(pos, sizeof pos, "0");
    }
    batch_clear(&batch);
    free(batch.v);
    free(batch.roots);
    free(batch.src);
    bus_free(b);
    return NULL;
}

int consume_start(char *err, size_t errlen) {
    pthread_mutex_lock(&wb_mu);
    nwfree = 0;
    for (int i = 0; i < WPOOL; i++)
        if ((wpool[i] = bus_new(g_cl.redis, g_cl.prefix, (int)g_cl.timeout_ms)))
            wfree[nwfree++] = i;
    pthread_mutex_unlock(&wb_mu);
    if (nwfree < WPOOL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (pthread_create(&consumer, NULL, consume_main, NULL)) {
        snprintf(err, errlen, "cannot start the consumer thread");
        return -1;
    }
    consumer_started = 1;
    return 0;
}

void consume_stop(void) {
    pthread_mutex_lock(&w_mu);
    pthread_cond_broadcast(&w_cv); /* waiting writes answer (durable, applied at restart) */
    pthread_mutex_unlock(&w_mu);
    if (consumer_started) pthread_join(consumer, NULL);
    consumer_started = 0;
    pthread_mutex_lock(&wb_mu); /* waits for the connections in use */
    while (nwfree >= 0 && nwfree < WPOOL) {
        int have = 0;
        for (int i = 0; i < WPOOL; i++)
            have += wpool[i] != NULL;
        if (nwfree >= have) break;
        pthread_cond_wait(&wb_cv, &wb_mu);
    }
    for (int i = 0; i < WPOOL; i++) {
        bus_free(wpool[i]);
        wpool[i] = NULL;
    }
    nwfree = -1;
    pthread_cond_broadcast(&wb_cv);
    pthread_mutex_unlock(&wb_mu);
}

void consume_status(json_t *j) {
    pthread_mutex_lock(&w_mu);
    json_object_set_new(j, "bus_pos", json_string(applied_pos));
    pthread_mutex_unlock(&w_mu);
    json_object_set_new(j, "applied_entries", json_integer(atomic_load(&applied_entries)));
}

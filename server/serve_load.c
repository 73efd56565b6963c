/* Model loads: serve_reload_model (a checkpoint version into an inference model, swapped
 * in under the load lock, deleted items banned) and the loader thread that runs the loads a
 * SIGHUP asks for, so that the main thread's loop never waits for one. The swap is one
 * pointer exchange (serve_model_set): requests that hold the previous model finish with
 * it, none is refused. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "server/serve.h"
#include "server/serve_state.h"

serve_table_source g_table_source;

void serve_apply_deleted(infer_model *m) {
    uint32_t *del = NULL, n = 0;
    if (store_ix_deleted(g_srv.ix, &del, &n)) {
        log_event("error", "deleted_items_unreadable", "message=\"deleted items may be served\"");
        return;
    }
    for (uint32_t i = 0; i < n; i++) {
        int idx = infer_lookup_cat(m, del[i]);
        if (idx) infer_ban(m, idx, 1);
    }
    free(del);
}

/* the inference options of the current configuration */
static infer_options load_options(void) {
    const serve_config *cfg = serve_config_acquire();
    infer_options opt = {(int)cfg->infer_threads,
                         (int)cfg->max_k,
                         (int)(cfg->max_history + cfg->max_exclude),
                         (int)cfg->max_batch,
                         (int)cfg->item_headroom,
                         0,
                         NULL,
                         NULL,
                         0,
                         0};
    serve_config_release(cfg);
    if (!g_srv.be->caps.parallel_ops) opt.contexts = 1; /* one device stream: one context */
    return opt;
}

/* the version to load: version, else the pinned one, else the latest stored (0: none) */
static uint32_t load_target(uint32_t version) {
    uint32_t want = version ? version : atomic_load(&g_srv.pinned);
    if (want) return want;
    uint32_t *vs = NULL, n = 0;
    store_ix_rdlock(g_srv.ix);
    int rc = store_ckpt_list(store_ix_store(g_srv.ix), &vs, &n);
    store_ix_unlock(g_srv.ix);
    want = !rc && n ? vs[n - 1] : 0;
    free(vs);
    return want;
}

/* IISAN_TEST_LOAD_DELAY_MS: tests/test_serve_reload.sh slows the load down to watch the
 * loop answer meanwhile */
static void test_delay(void) {
    const char *d = getenv("IISAN_TEST_LOAD_DELAY_MS");
    long ms = d ? strtol(d, NULL, 10) : 0;
    if (ms <= 0) return;
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts))
        ;
}

/* loads version want and swaps it in; previous: the version it replaces. 0 or -1 (logged) */
static int load_and_swap(uint32_t want, uint32_t previous) {
    char err[600], b[700];
    infer_options opt = load_options();
    infer_model *m = NULL;
    double t0 = serve_now();
    log_event("info", "model_loading", "version=%u", want);
    metrics_model_load_begin();
    test_delay();
    /* cluster mode: the item table published with the version */
    void *tab = g_table_source.get ? g_table_source.get(want, &opt) : NULL;
    store_ix_rdlock(g_srv.ix);
    int rc = infer_load(store_ix_store(g_srv.ix), want, g_srv.be, &opt, &m, err, sizeof err);
    store_ix_unlock(g_srv.ix);
    if (tab) g_table_source.release(tab);
    metrics_model_load_end(serve_now() - t0, rc == 0);
    if (rc) {
        log_event("error", "model_load_failed", "version=%u error=%s kept=%u", want,
                  log_q(err, b, sizeof b), previous);
        return -1;
    }
    infer_info in;
    infer_get_info(m, &in);
    serve_apply_deleted(m);
    serve_model_set(m);
    serve_apply_deleted(m); /* deletions committed during the load */
    log_event("info", "model_loaded",
              "version=%u kind=%s items=%d added_items=%d params=%zu contexts=%d "
              "max_batch=%d previous=%u seconds=%.3f",
              in.version, in.kind == MODEL_IISAN ? "iisan" : "sasrec-id", in.n_items, in.n_extra,
              in.params, in.contexts, in.max_batch, previous, serve_now() - t0);
    return 0;
}

/* Under the load lock: POST /items stores and embeds its items either before a load starts
 * (the load reads them from the store) or after the new model is in (they go into it). */
int serve_reload_model(uint32_t version, int force) {
    pthread_mutex_lock(&g_srv.load_mu);
    infer_model *cur = serve_model_get();
    infer_info ci = {0};
    if (cur) infer_get_info(cur, &ci);
    uint32_t want = load_target(version);
    int ret;
    if (!want) {
        log_event("warn", "no_model",
                  "message=\"the store holds no checkpoint; /recommend answers 503 until one is "
                  "trained and loaded (SIGHUP)\"");
        ret = cur ? 1 : -1;
    } else if (cur && ci.version == want && !force) {
        ret = 1;
    } else {
        ret = load_and_swap(want, ci.version);
    }
    if (cur) infer_release(cur);
    pthread_mutex_unlock(&g_srv.load_mu);
    return ret;
}

/* ---------------- the loader thread ---------------- */

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    int started, quit;
    int draining;      /* loader_drain: jobs are refused from here on */
    int queued, force; /* a load asked for (forced when any request forced it) */
    int running;       /* a load or a job is under way */
    loader_job *head, *tail;
} L = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

/* a job's end: done, then its notify (which may free it) */
static void job_end(loader_job *j, int refused) {
    j->refused = refused;
    atomic_store(&j->done, 1);
    if (j->notify) j->notify(j);
}

/* Jobs first, in order, then the SIGHUP load (so that a rollback asked for before a SIGHUP
 * is in place when the SIGHUP's load looks at the pinned version). */
static void *loader_main(void *arg) {
    (void)arg;
    pthread_mutex_lock(&L.mu);
    for (;;) {
        while (!L.queued && !L.head && !L.quit)
            pthread_cond_wait(&L.cv, &L.mu);
        if (L.quit) break;
        L.running = 1;
        loader_job *j = L.head;
        if (j) {
            L.head = j->next;
            if (!L.head) L.tail = NULL;
            pthread_mutex_unlock(&L.mu);
            j->run(j);
            job_end(j, 0);
        } else {
            int force = L.force;
            L.queued = L.force = 0;
            pthread_mutex_unlock(&L.mu);
            serve_reload_model(0, force); /* requests made meanwhile queue one more */
        }
        pthread_mutex_lock(&L.mu);
        L.running = 0;
        pthread_cond_broadcast(&L.cv); /* loader_drain waits for the end of a run */
    }
    pthread_mutex_unlock(&L.mu);
    return NULL;
}

int loader_start(void) {
    pthread_mutex_lock(&L.mu);
    L.quit = L.draining = L.queued = L.force = 0;
    int rc = pthread_create(&L.thread, NULL, loader_main, NULL) ? -1 : 0;
    L.started = rc == 0;
    pthread_mutex_unlock(&L.mu);
    return rc;
}

void loader_request(int force) {
    pthread_mutex_lock(&L.mu);
    if (L.started && !L.quit && !L.draining) {
        if (L.running || L.queued) /* one load after the one under way serves them all */
            log_event("info", "reload_coalesced", "force=%d queued_already=%d", force, L.queued);
        L.queued = 1;
        L.force |= force;
        pthread_cond_signal(&L.cv);
    }
    pthread_mutex_unlock(&L.mu);
}

int loader_submit(loader_job *j) {
    j->next = NULL;
    j->refused = 0;
    atomic_store(&j->done, 0);
    pthread_mutex_lock(&L.mu);
    int ok = L.started && !L.quit && !L.draining;
    if (ok) {
        if (L.tail)
            L.tail->next = j;
        else
            L.head = j;
        L.tail = j;
        pthread_cond_signal(&L.cv);
    }
    pthread_mutex_unlock(&L.mu);
    return ok ? 0 : -1;
}

void loader_drain(void) {
    pthread_mutex_lock(&L.mu);
    L.draining = 1;
    L.queued = 0;
    loader_job *j = L.head;
    L.head = L.tail = NULL;
    while (L.running)
        pthread_cond_wait(&L.cv, &L.mu);
    pthread_mutex_unlock(&L.mu);
    while (j) { /* refused: their waiters answer at once */
        loader_job *next = j->next;
        job_end(j, 1);
        j = next;
    }
}

void loader_stop(void) {
    loader_drain();
    pthread_mutex_lock(&L.mu);
    int started = L.started;
    L.quit = 1;
    L.started = 0;
    pthread_cond_signal(&L.cv);
    pthread_mutex_unlock(&L.mu);
    if (started) pthread_join(L.thread, NULL);
}

/* iisan serve: the HTTP daemon. Configuration (defaults < file < environment
 * < flags), the store and its interaction log, the model (refcounted,
 * swapped atomically), the group-commit writer, the HTTP thread pool, and
 * the signals: SIGTERM / SIGINT stop gracefully, SIGHUP reloads the
 * configuration file and the latest checkpoint. */
#include <errno.h>
#include <microhttpd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cluster/cluster.h"
#include "server/cli.h"
#include "server/common.h"
#include "server/serve.h"
#include "store/lock.h"

serve_state g_srv = {.mu = PTHREAD_MUTEX_INITIALIZER, .load_mu = PTHREAD_MUTEX_INITIALIZER};

struct serve_cfg_ref {
    atomic_int refs;
    serve_config c;
};

/* ---------------- the refcounted model and configuration ---------------- */

infer_model *serve_model_get(void) {
    pthread_mutex_lock(&g_srv.mu);
    infer_model *m = g_srv.model;
    if (m) infer_retain(m);
    pthread_mutex_unlock(&g_srv.mu);
    return m;
}

void serve_model_set(infer_model *m) {
    pthread_mutex_lock(&g_srv.mu);
    infer_model *old = g_srv.model;
    g_srv.model = m;
    pthread_mutex_unlock(&g_srv.mu);
    if (old) infer_release(old); /* freed when the last request using it is done */
}

const serve_config *serve_config_acquire(void) {
    pthread_mutex_lock(&g_srv.mu);
    serve_cfg_ref *r = g_srv.cfg;
    atomic_fetch_add(&r->refs, 1);
    pthread_mutex_unlock(&g_srv.mu);
    return &r->c;
}

void serve_config_release(const serve_config *c) {
    serve_cfg_ref *r = (serve_cfg_ref *)((char *)c - offsetof(serve_cfg_ref, c));
    if (atomic_fetch_sub(&r->refs, 1) == 1) free(r);
}

int serve_config_set(const serve_config *c) {
    serve_cfg_ref *r = malloc(sizeof *r);
    if (!r) return -1;
    atomic_init(&r->refs, 1);
    r->c = *c;
    pthread_mutex_lock(&g_srv.mu);
    serve_cfg_ref *old = g_srv.cfg;
    g_srv.cfg = r;
    pthread_mutex_unlock(&g_srv.mu);
    log_set_level(c->log_level);
    if (old) serve_config_release(&old->c);
    return 0;
}

/* ---------------- model loading ---------------- */

serve_table_source g_table_source;

int serve_reload_model(uint32_t version, int force) {
    pthread_mutex_lock(&g_srv.load_mu);
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
    infer_model *cur = serve_model_get();
    infer_info ci = {0};
    if (cur) infer_get_info(cur, &ci);
    iisan_store *s = store_ix_store(g_srv.ix);
    uint32_t want = version ? version : atomic_load(&g_srv.pinned);
    if (!want) { /* the latest version, if any */
        uint32_t *vs = NULL, n = 0;
        store_ix_rdlock(g_srv.ix);
        int rc = store_ckpt_list(s, &vs, &n);
        store_ix_unlock(g_srv.ix);
        want = !rc && n ? vs[n - 1] : 0;
        free(vs);
    }
    int ret;
    if (!want) {
        log_event("warn", "no_model",
                  "message=\"the store holds no checkpoint; /recommend answers 503 until one is "
                  "trained and loaded (SIGHUP)\"");
        ret = cur ? 1 : -1;
    } else if (cur && ci.version == want && !force) {
        ret = 1;
    } else {
        char err[600], b[700];
        infer_model *m = NULL;
        double t0 = serve_now();
        log_event("info", "model_loading", "version=%u", want);
        metrics_model_load_begin();
        /* cluster mode: the item table published with the version */
        void *tab = g_table_source.get ? g_table_source.get(want, &opt) : NULL;
        store_ix_rdlock(g_srv.ix);
        int rc = infer_load(s, want, g_srv.be, &opt, &m, err, sizeof err);
        store_ix_unlock(g_srv.ix);
        if (tab) g_table_source.release(tab);
        metrics_model_load_end(serve_now() - t0, rc == 0);
        if (rc) {
            log_event("error", "model_load_failed", "version=%u error=%s", want,
                      log_q(err, b, sizeof b));
            ret = -1;
        } else {
            infer_info in;
            infer_get_info(m, &in);
            serve_apply_deleted(m);
            serve_model_set(m);
            serve_apply_deleted(m); /* deletions committed during the load */
            log_event("info", "model_loaded",
                      "version=%u kind=%s items=%d added_items=%d params=%zu contexts=%d "
                      "max_batch=%d previous=%u seconds=%.3f",
                      in.version, in.kind == MODEL_IISAN ? "iisan" : "sasrec-id", in.n_items,
                      in.n_extra, in.params, in.contexts, in.max_batch, ci.version,
                      serve_now() - t0);
            ret = 0;
        }
    }
    if (cur) infer_release(cur);
    pthread_mutex_unlock(&g_srv.load_mu);
    return ret;
}

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

/* ---------------- arguments ---------------- */

static void help(FILE *f) {
    fprintf(f, "usage: iisan serve --data DIR [--config FILE] [--port 8080] [--bind 127.0.0.1] "
               "[--SETTING VALUE ...]\n\n"
               "Serves recommendations from the store's latest checkpoint over HTTP\n"
               "(proto/openapi.yaml, docs/api.md). Settings come from the defaults, then the\n"
               "file, then the environment, then the flags (docs/operations.md):\n\n");
    for (int i = 0; i < serve_noptions; i++) {
        const serve_option *o = &serve_options[i];
        char flag[64];
        snprintf(flag, sizeof flag, "--%s", o->name);
        for (char *p = flag + 2; *p; p++)
            if (*p == '_') *p = '-';
        fprintf(f, "  %-24s %s (default '%s', env %s%s)\n", flag, o->help, o->def, o->env,
                o->reloadable ? ", reloaded on SIGHUP" : "");
    }
    fprintf(f, "\n  --config FILE            'name = value' lines, '#' comments\n"
               "Signals: SIGTERM / SIGINT stop gracefully; SIGHUP reloads the configuration\n"
               "file and loads the latest checkpoint when it is new (or the version a rollback\n"
               "pinned).\n");
}

typedef struct {
    const char *config;
    int n;
    const char **names, **values;
} args;

/* --name value or --name=value pairs; 0, 1 (help shown) or 2 (usage error) */
static int parse_args(int argc, char **argv, args *a) {
    a->config = NULL;
    a->n = 0;
    a->names = calloc((size_t)argc, sizeof *a->names);
    a->values = calloc((size_t)argc, sizeof *a->values);
    if (!a->names || !a->values) return 2;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        if (!strcmp(s, "--help") || !strcmp(s, "-h")) {
            help(stdout);
            return 1;
        }
        if (strncmp(s, "--", 2) || !s[2]) {
            fprintf(stderr, "iisan serve: unexpected argument '%s'\n", s);
            return 2;
        }
        char name[64];
        const char *eq = strchr(s, '='), *val;
        size_t nl = eq ? (size_t)(eq - s - 2) : strlen(s + 2);
        if (nl >= sizeof name) {
            fprintf(stderr, "iisan serve: unknown option '%s'\n", s);
            return 2;
        }
        memcpy(name, s + 2, nl);
        name[nl] = '\0';
        if (eq)
            val = eq + 1;
        else if (i + 1 < argc)
            val = argv[++i];
        else {
            fprintf(stderr, "iisan serve: --%s needs a value\n", name);
            return 2;
        }
        if (!strcmp(name, "config")) {
            a->config = val;
            continue;
        }
        const serve_option *o = serve_option_find(name);
        if (!o) {
            fprintf(stderr, "iisan serve: unknown option '--%s' (iisan serve --help lists them)\n",
                    name);
            return 2;
        }
        a->names[a->n] = o->name;
        a->values[a->n++] = val;
    }
    if (!a->config) a->config = getenv("IISAN_CONFIG");
    return 0;
}

/* ---------------- SIGHUP ---------------- */

static void reload(const args *a) {
    serve_config nc;
    char err[600], b[700];
    if (serve_config_build(&nc, a->config, a->n, a->names, a->values, err, sizeof err)) {
        log_event("error", "config_reload_failed", "error=%s kept=previous",
                  log_q(err, b, sizeof b));
    } else {
        if (nc.warning[0])
            log_event("warn", "config_insecure", "message=%s", log_q(nc.warning, b, sizeof b));
        const serve_config *old = serve_config_acquire();
        char ignored[512] = "";
        for (int i = 0; i < serve_noptions; i++) {
            const serve_option *o = &serve_options[i];
            size_t sz = o->type == CFG_STR ? o->size : sizeof(long);
            char *pn = (char *)&nc + o->off;
            const char *po = (const char *)old + o->off;
            if (!memcmp(pn, po, sz) || o->reloadable) continue;
            /* not reloadable: keep the running value, say so */
            if (strlen(ignored) + strlen(o->name) + 2 < sizeof ignored) {
                if (*ignored) strcat(ignored, ",");
                strcat(ignored, o->name);
            }
            memcpy(pn, po, sz);
        }
        int resize = nc.max_k != old->max_k || nc.max_history != old->max_history ||
                     nc.max_exclude != old->max_exclude || nc.max_batch != old->max_batch;
        serve_config_release(old);
        serve_config_set(&nc);
        writer_set_batch(g_srv.writer, nc.commit_batch);
        batcher_set(g_srv.batcher, (int)nc.max_batch, nc.batch_wait_us);
        scheduler_wake(); /* retrain_every_min / retrain_after may have changed */
        log_event("info", "config_reloaded", "file=%s ignored=%s",
                  log_q(a->config ? a->config : "", b, sizeof b), *ignored ? ignored : "-");
        if (resize) { /* the contexts are sized by the limits */
            serve_reload_model(0, 1);
            return;
        }
    }
    serve_reload_model(0, 0);
}

static void on_hup(void *arg) { reload(arg); }

/* ---------------- the stop ---------------- */

/* The HTTP side stops in an order in which no thread can reach freed state:
 * new requests are refused (503, Connection: close) while the admitted ones
 * finish; then the writer and the batch threads drain (every queued ticket is
 * committed or computed, and its connection resumed) but stay allocated, so
 * a request thread still calling writer_submit / writer_pending gets a clean
 * refusal; then MHD_stop_daemon joins every HTTP thread. The writer and the
 * batcher are freed only after that (cmd_serve's exit path). The listening
 * socket is never quiesced: MHD_quiesce_daemon races with the thread-pool
 * workers' epoll sets, and closing the socket with the daemon is enough.
 * Returns the requests still admitted at the deadline. */
static long serve_stop_http(struct MHD_Daemon **d) {
    atomic_store(&g_srv.stopping, 1);
    const serve_config *c2 = serve_config_acquire();
    double deadline = serve_now() + (double)c2->shutdown_timeout_s;
    serve_config_release(c2);
    while (http_busy() > 0 && serve_now() < deadline)
        usleep(2000);
    long left = http_busy();
    cluster_stop(); /* answers writes waiting on the bus; a trainer gives its lease up */
    writer_drain(g_srv.writer);
    batcher_drain(g_srv.batcher);
    deadline = serve_now() + 2.0;
    while (http_busy() > 0 && serve_now() < deadline)
        usleep(2000);
    MHD_stop_daemon(*d);
    *d = NULL;
    return left;
}

/* ---------------- main ---------------- */

int cmd_serve(int argc, char **argv) {
    args a;
    int prc = parse_args(argc, argv, &a);
    if (prc) {
        free(a.names);
        free(a.values);
        return prc == 1 ? 0 : 2;
    }
    serve_config cfg;
    char err[600], b[700];
    if (serve_config_build(&cfg, a.config, a.n, a.names, a.values, err, sizeof err)) {
        fprintf(stderr, "iisan serve: %s\n", err);
        free(a.names);
        free(a.values);
        return 2;
    }
    if (!cfg.data[0]) {
        fprintf(stderr, "iisan serve: --data DIR is required (or data = DIR in the file, or "
                        "IISAN_DATA)\n");
        free(a.names);
        free(a.values);
        return 2;
    }
    if (cfg.warning[0])
        log_event("warn", "config_insecure", "message=%s", log_q(cfg.warning, b, sizeof b));
    /* signals go to the main thread's libuv loop (serve_loop.c) from here on: one that
     * comes during the start-up is handled when the loop runs */
    signal(SIGPIPE, SIG_IGN);
    if (serve_loop_init()) {
        fprintf(stderr, "iisan serve: cannot set up the event loop\n");
        free(a.names);
        free(a.values);
        return 1;
    }

    int rc = 1, lockfd = -1;
    iisan_store *s = NULL;
    struct MHD_Daemon *d = NULL;
    g_srv.started = serve_now();
    serve_config_set(&cfg);
    log_event("info", "starting", "data=%s pid=%d threads=%ld device=%s",
              log_q(cfg.data, b, sizeof b), (int)getpid(), cfg.threads, cfg.device);
    /* one daemon per store: the lock first, before anything of the store is opened */
    lockfd = store_lock(cfg.data, 0, "serve", err, sizeof err);
    if (lockfd == -1) {
        log_event("error", "store_locked", "error=%s", log_q(err, b, sizeof b));
        goto out;
    }
    if (store_open(&s, cfg.data, 0, err, sizeof err)) {
        log_event("error", "store_open_failed", "error=%s", log_q(err, b, sizeof b));
        goto out;
    }
    if (store_ix_open(s, &g_srv.ix, err, sizeof err)) {
        log_event("error", "store_open_failed", "error=%s", log_q(err, b, sizeof b));
        goto out;
    }
    uint32_t pin = 0;
    store_ix_state_get(g_srv.ix, "pinned", &pin);
    atomic_store(&g_srv.pinned, pin);
    if (pin)
        log_event("info", "pinned", "version=%u message=\"a rollback chose this version\"", pin);
    if (!strcmp(cfg.device, "cpu"))
        g_srv.be = iisan_backend_cpu((int)cfg.blas_threads);
    else
        g_srv.be = backend_choose("serve", cfg.device, (int)cfg.blas_threads);
    if (!g_srv.be) {
        log_event("error", "backend_failed", "device=%s", cfg.device);
        goto out;
    }
    if (cluster_configure(err, sizeof err)) { /* the role, before the first load */
        log_event("error", "cluster_failed", "error=%s", log_q(err, b, sizeof b));
        goto out;
    }
    if (serve_encoder_open(&cfg, err, sizeof err)) {
        log_event("error", "encoder_load_failed", "error=%s", log_q(err, b, sizeof b));
        goto out;
    }
    if (serve_encoder_backbone())
        log_event("info", "text_model_loaded", "path=%s backbone=%s",
                  log_q(cfg.text_model, b, sizeof b), serve_encoder_backbone());
    if (serve_image_encoder_backbone())
        log_event("info", "image_model_loaded", "path=%s backbone=%s",
                  log_q(cfg.image_model, b, sizeof b), serve_image_encoder_backbone());
    if (serve_reload_model(0, 0) < 0 && g_srv.model == NULL) {
        /* a store without a checkpoint still serves /interactions and the rest;
         * a checkpoint that fails to load is fatal at startup */
        uint32_t *vs = NULL, n = 0;
        store_ckpt_list(s, &vs, &n);
        free(vs);
        if (n) goto out;
    }
    if (writer_start(&g_srv.writer, g_srv.ix, cfg.commit_batch)) {
        log_event("error", "writer_failed", "message=\"cannot start the writer thread\"");
        goto out;
    }
    {
        int nthreads = g_srv.be->caps.parallel_ops ? (int)cfg.infer_threads : 1;
        if (batcher_start(&g_srv.batcher, nthreads, (int)cfg.max_batch, cfg.batch_wait_us)) {
            log_event("error", "batcher_failed", "message=\"cannot start the batch threads\"");
            goto out;
        }
    }
    if (admin_jobs_restore())
        log_event("error", "jobs_unreadable", "message=\"earlier job records cannot be read\"");
    scheduler_start();                    /* the loop's timer runs it: no thread to start */
    if (cluster_start(err, sizeof err)) { /* cluster mode: bus, repository, lease */
        log_event("error", "cluster_failed", "error=%s", log_q(err, b, sizeof b));
        goto out;
    }
    d = http_start(&cfg, err, sizeof err);
    if (!d) {
        log_event("error", "listen_failed", "error=%s", log_q(err, b, sizeof b));
        goto out;
    }
    log_event("info", "listening", "bind=%s port=%d threads=%ld", cfg.bind, http_port(d),
              cfg.threads);
    serve_loop_run(on_hup, &a); /* until SIGTERM or SIGINT */
    long left = serve_stop_http(&d);
    scheduler_stop(); /* starts no job from here on */
    /* a running job stops after its current batch (or its validation pass) */
    const serve_config *c3 = serve_config_acquire();
    double job_wait = c3->shutdown_timeout_s > 5 ? (double)c3->shutdown_timeout_s : 5.0;
    serve_config_release(c3);
    if (admin_wait_trainer(job_wait)) {
        /* still inside a long step: everything acknowledged is committed already, and the
         * job stores nothing unless it completes; exit without running the library
         * destructors under its feet */
        log_event("warn", "stopped", "in_flight_at_deadline=%ld job_abandoned=true", left);
        _exit(0);
    }
    log_event("info", "stopped", "in_flight_at_deadline=%ld", left);
    rc = 0;
out:
    if (d) MHD_stop_daemon(d);
    scheduler_stop();
    cluster_stop();
    if (g_srv.writer) writer_stop(g_srv.writer);
    g_srv.writer = NULL;
    batcher_stop(g_srv.batcher);
    g_srv.batcher = NULL;
    serve_model_set(NULL);
    serve_encoder_close();
    store_ix_close(g_srv.ix);
    g_srv.ix = NULL;
    store_close(s);
    if (g_srv.be) g_srv.be->destroy(g_srv.be);
    g_srv.be = NULL;
    pthread_mutex_lock(&g_srv.mu);
    serve_cfg_ref *cr = g_srv.cfg;
    g_srv.cfg = NULL;
    pthread_mutex_unlock(&g_srv.mu);
    if (cr) serve_config_release(&cr->c);
    serve_loop_close();
    if (lockfd >= 0) close(lockfd);
    free(a.names);
    free(a.values);
    return rc;
}

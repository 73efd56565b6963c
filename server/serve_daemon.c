/* The daemon's life (`iisan serve` after its arguments are parsed, server/cmd_serve.c):
 * the store and its lock, the backend, the first model load, the writer, batch and loader
 * threads, the HTTP thread pool and the main thread's loop; a SIGHUP's configuration
 * applied; the graceful stop, in an order in which no thread reaches freed state. */
#include <microhttpd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cluster/cluster.h"
#include "server/common.h"
#include "server/serve.h"
#include "server/serve_state.h"
#include "store/lock.h"

/* ---------------- SIGHUP's configuration ---------------- */

/* keeps in nc the running value of every option that cannot change while running; the names
 * of those that would have changed go to ignored ("": none) */
static void keep_fixed(serve_config *nc, const serve_config *old, char *ignored, size_t cap) {
    ignored[0] = '\0';
    for (int i = 0; i < serve_noptions; i++) {
        const serve_option *o = &serve_options[i];
        size_t sz = o->type == CFG_STR ? o->size : sizeof(long);
        char *pn = (char *)nc + o->off;
        const char *po = (const char *)old + o->off;
        if (!memcmp(pn, po, sz) || o->reloadable) continue;
        if (strlen(ignored) + strlen(o->name) + 2 < cap) {
            if (*ignored) strcat(ignored, ",");
            strcat(ignored, o->name);
        }
        memcpy(pn, po, sz);
    }
}

void serve_config_reload(serve_config *nc, const char *file) {
    char b[700], ignored[512];
    if (nc->warning[0])
        log_event("warn", "config_insecure", "message=%s", log_q(nc->warning, b, sizeof b));
    const serve_config *old = serve_config_acquire();
    keep_fixed(nc, old, ignored, sizeof ignored);
    /* the inference contexts are sized by these limits: a forced load resizes them */
    int resize = nc->max_k != old->max_k || nc->max_history != old->max_history ||
                 nc->max_exclude != old->max_exclude || nc->max_batch != old->max_batch;
    serve_config_release(old);
    if (serve_config_set(nc)) {
        log_event("error", "config_reload_failed", "error=\"out of memory\" kept=previous");
        resize = 0;
    } else {
        writer_set_batch(g_srv.writer, nc->commit_batch);
        batcher_set(g_srv.batcher, (int)nc->max_batch, nc->batch_wait_us);
        scheduler_wake(); /* retrain_every_min / retrain_after may have changed */
        log_event("info", "config_reloaded", "file=%s ignored=%s",
                  log_q(file ? file : "", b, sizeof b), *ignored ? ignored : "-");
    }
    loader_request(resize);
}

/* ---------------- the start ---------------- */

/* the store's lock, the store, its interaction log and the pinned version: 0 or -1 (logged) */
static int open_store(const serve_config *c, int *lockfd, iisan_store **s) {
    char err[600], b[700];
    /* one daemon per store: the lock first, before anything of the store is opened */
    *lockfd = store_lock(c->data, 0, "serve", err, sizeof err);
    if (*lockfd == -1) {
        log_event("error", "store_locked", "error=%s", log_q(err, b, sizeof b));
        return -1;
    }
    if (store_open(s, c->data, 0, err, sizeof err) ||
        store_ix_open(*s, &g_srv.ix, err, sizeof err)) {
        log_event("error", "store_open_failed", "error=%s", log_q(err, b, sizeof b));
        return -1;
    }
    uint32_t pin = 0;
    store_ix_state_get(g_srv.ix, "pinned", &pin);
    atomic_store(&g_srv.pinned, pin);
    if (pin)
        log_event("info", "pinned", "version=%u message=\"a rollback chose this version\"", pin);
    return 0;
}

/* the backend, cluster mode's role and the encoders: 0 or -1 (logged) */
static int open_compute(const serve_config *c) {
    char err[600], b[700];
    if (!strcmp(c->device, "cpu"))
        g_srv.be = iisan_backend_cpu((int)c->blas_threads);
    else
        g_srv.be = backend_choose("serve", c->device, (int)c->blas_threads);
    if (!g_srv.be) {
        log_event("error", "backend_failed", "device=%s", c->device);
        return -1;
    }
    int prec = strcmp(c->precision, "bf16") ? IISAN_PREC_FP32 : IISAN_PREC_BF16;
    if (g_srv.be->set_precision(g_srv.be, prec, err, sizeof err)) {
        log_event("error", "precision_failed", "precision=%s error=%s", c->precision,
                  log_q(err, b, sizeof b));
        return -1;
    }
    serve_blas_probe();
    if (cluster_configure(err, sizeof err)) { /* the role, before the first load */
        log_event("error", "cluster_failed", "error=%s", log_q(err, b, sizeof b));
        return -1;
    }
    if (serve_encoder_open(c, err, sizeof err)) {
        log_event("error", "encoder_load_failed", "error=%s", log_q(err, b, sizeof b));
        return -1;
    }
    if (serve_encoder_backbone())
        log_event("info", "text_model_loaded", "path=%s backbone=%s",
                  log_q(c->text_model, b, sizeof b), serve_encoder_backbone());
    if (serve_image_encoder_backbone())
        log_event("info", "image_model_loaded", "path=%s backbone=%s",
                  log_q(c->image_model, b, sizeof b), serve_image_encoder_backbone());
    return 0;
}

/* the first load, on this thread before anything listens: -1 when a stored checkpoint fails
 * to load (fatal at start-up); a store without one still serves /interactions and the rest */
static int first_load(iisan_store *s) {
    if (serve_reload_model(0, 0) >= 0 || g_srv.model != NULL) return 0;
    uint32_t *vs = NULL, n = 0;
    store_ckpt_list(s, &vs, &n);
    free(vs);
    return n ? -1 : 0;
}

/* the writer, batch and loader threads, the jobs' records, the scheduler, cluster mode and
 * the HTTP thread pool (*d): 0 or -1 (logged) */
static int start_threads(const serve_config *c, struct MHD_Daemon **d) {
    char err[600], b[700];
    if (writer_start(&g_srv.writer, g_srv.ix, c->commit_batch)) {
        log_event("error", "writer_failed", "message=\"cannot start the writer thread\"");
        return -1;
    }
    int nthreads = g_srv.be->caps.parallel_ops ? (int)c->infer_threads : 1;
    if (batcher_start(&g_srv.batcher, nthreads, (int)c->max_batch, c->batch_wait_us)) {
        log_event("error", "batcher_failed", "message=\"cannot start the batch threads\"");
        return -1;
    }
    if (loader_start()) {
        log_event("error", "loader_failed", "message=\"cannot start the loader thread\"");
        return -1;
    }
    if (admin_jobs_restore())
        log_event("error", "jobs_unreadable", "message=\"earlier job records cannot be read\"");
    scheduler_start();                    /* the loop's timer runs it: no thread to start */
    if (cluster_start(err, sizeof err)) { /* cluster mode: bus, repository, lease */
        log_event("error", "cluster_failed", "error=%s", log_q(err, b, sizeof b));
        return -1;
    }
    *d = http_start(c, err, sizeof err);
    if (!*d) {
        log_event("error", "listen_failed", "error=%s", log_q(err, b, sizeof b));
        return -1;
    }
    log_event("info", "listening", "bind=%s port=%d threads=%ld", c->bind, http_port(*d),
              c->threads);
    return 0;
}

/* ---------------- the stop ---------------- */

/* The HTTP side stops in an order in which no thread can reach freed state:
 * new requests are refused (503, Connection: close) while the admitted ones
 * finish; then the writer and the batch threads drain (every queued ticket is
 * committed or computed, and its connection resumed) but stay allocated, so
 * a request thread still calling writer_submit / writer_pending gets a clean
 * refusal; the loader thread finishes its load (a rollback's request is then
 * answered) and refuses the queued ones; then MHD_stop_daemon joins every HTTP thread. The writer
 * and the batcher are freed only after that (teardown). The listening socket is never quiesced:
 * MHD_quiesce_daemon races with the thread-pool workers' epoll sets, and closing the socket with
 * the daemon is enough. Returns the requests still admitted at the deadline. */
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
    loader_drain(); /* a rollback's load under way ends and answers; queued ones are refused */
    deadline = serve_now() + 2.0;
    while (http_busy() > 0 && serve_now() < deadline)
        usleep(2000);
    MHD_stop_daemon(*d);
    *d = NULL;
    return left;
}

/* after the loop: the HTTP side, the loader, a running job. 0, or the process exits when the
 * job is still inside a long step at the deadline */
static int stop_gracefully(struct MHD_Daemon **d) {
    long left = serve_stop_http(d);
    loader_stop();    /* the load under way completes; none starts after it */
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
    return 0;
}

/* frees what the start made, whatever step it reached */
static void teardown(struct MHD_Daemon *d, iisan_store *s, int lockfd) {
    if (d) MHD_stop_daemon(d);
    loader_stop();
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
    serve_config_clear();
    serve_loop_close();
    if (lockfd >= 0) close(lockfd);
}

int serve_daemon_run(const serve_config *c, void (*on_hup)(void *), void *arg) {
    char b[700];
    /* signals go to the main thread's libuv loop (serve_loop.c) from here on: one that
     * comes during the start-up is handled when the loop runs */
    signal(SIGPIPE, SIG_IGN);
    if (serve_loop_init()) {
        fprintf(stderr, "iisan serve: cannot set up the event loop\n");
        return 1;
    }
    if (serve_config_set(c)) {
        fprintf(stderr, "iisan serve: out of memory\n");
        serve_loop_close();
        return 1;
    }
    int rc = 1, lockfd = -1;
    iisan_store *s = NULL;
    struct MHD_Daemon *d = NULL;
    g_srv.started = serve_now();
    log_event("info", "starting", "data=%s pid=%d threads=%ld device=%s",
              log_q(c->data, b, sizeof b), (int)getpid(), c->threads, c->device);
    if (!open_store(c, &lockfd, &s) && !open_compute(c) && !first_load(s) &&
        !start_threads(c, &d)) {
        serve_loop_run(on_hup, arg, scheduler_tick); /* until SIGTERM or SIGINT */
        rc = stop_gracefully(&d);
    }
    teardown(d, s, lockfd);
    return rc;
}

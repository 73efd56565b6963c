/* The daemon's state (serve_state.h): g_srv, and the served model and configuration
 * published as refcounted snapshots, so that a reader copies a pointer under g_srv.mu and
 * a swap never waits for the readers of the previous one. */
#include <stddef.h>
#include <stdlib.h>

#include "server/serve.h"
#include "server/serve_state.h"

serve_state g_srv = {.mu = PTHREAD_MUTEX_INITIALIZER, .load_mu = PTHREAD_MUTEX_INITIALIZER};

struct serve_cfg_ref {
    atomic_int refs;
    serve_config c;
};

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

void serve_committed(size_t n) {
    atomic_fetch_add(&g_srv.since_run, (long)n);
    scheduler_wake();
}

void serve_config_clear(void) {
    pthread_mutex_lock(&g_srv.mu);
    serve_cfg_ref *r = g_srv.cfg;
    g_srv.cfg = NULL;
    pthread_mutex_unlock(&g_srv.mu);
    if (r) serve_config_release(&r->c);
}

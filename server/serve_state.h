/* The daemon's state (server/serve_state.c), what the serve_* files share: the store and its
 * interaction log, the backend, the writer and batch threads, and the two published
 * snapshots every thread reads, the served model and the configuration, each refcounted and
 * swapped atomically. It depends on no other file of the daemon but the log level
 * (serve_log.c) and the loop's wake-up (serve_loop.c); the CLI (cmd_serve.c) only parses the
 * arguments and starts the daemon (serve_daemon.c). */
#ifndef IISAN_SERVER_SERVE_STATE_H
#define IISAN_SERVER_SERVE_STATE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "core/infer.h"
#include "kernels/backend.h"
#include "kernels/clock.h"
#include "store/interactions.h"

typedef struct serve_config serve_config;   /* server/serve.h */
typedef struct ix_writer ix_writer;         /* serve_writer.c */
typedef struct rec_batcher rec_batcher;     /* serve_batch.c */
typedef struct serve_cfg_ref serve_cfg_ref; /* a refcounted configuration snapshot */

typedef struct {
    pthread_mutex_t mu; /* guards the two pointers below (held only to copy + retain) */
    infer_model *model;
    serve_cfg_ref *cfg;
    store_ix *ix;
    ix_writer *writer;
    rec_batcher *batcher;
    iisan_backend *be;
    atomic_long in_flight;
    atomic_int stopping;
    double started;
    /* one model load at a time; POST /items holds it while it stores and publishes items */
    pthread_mutex_t load_mu;
    atomic_uint pinned; /* version chosen by a rollback (0: follow the latest) */
    /* interactions committed since the latest retraining job started (or since startup):
     * the scheduler's retrain_after (serve_admin.c) */
    atomic_long since_run;
} serve_state;

extern serve_state g_srv;

/* the current model, retained (NULL when none); release with infer_release */
infer_model *serve_model_get(void);
/* swaps in m (retained by the callee's reference), releasing the old one */
void serve_model_set(infer_model *m);
/* the current configuration, retained: read it through the pointer, then
 * serve_config_release it. serve_config_set publishes a copy of c and applies
 * its log level (-1: out of memory, nothing changed). serve_config_clear drops the
 * published one (the daemon's exit). */
const serve_config *serve_config_acquire(void);
void serve_config_release(const serve_config *c);
int serve_config_set(const serve_config *c);
void serve_config_clear(void);

/* n interactions were committed (the writer, cluster mode's consumer): counted in
 * g_srv.since_run, and the scheduler woken (serve_loop.c) */
void serve_committed(size_t n);

static inline double serve_now(void) { return iisan_now(); } /* monotonic seconds */

#endif

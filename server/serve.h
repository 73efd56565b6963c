/* The serving daemon (`iisan serve`), internal interfaces, one section per file:
 * configuration (serve_config.c), key=value logging (serve_log.c), Prometheus metrics
 * (serve_metrics.c), the group-commit writer (serve_writer.c), the /recommend batch
 * threads (serve_batch.c), POST /items (serve_items.c), model loads and the loader thread
 * (serve_load.c), the daemon's start and stop (serve_daemon.c), admin jobs
 * (serve_admin.c), the main thread's loop (serve_loop.c), the HTTP side (serve_http.c,
 * serve_edge.c). The state they share is serve_state.h; cmd_serve.c is only the CLI.
 * docs/operations.md describes the configuration, signals and logs; docs/api.md the API. */
#ifndef IISAN_SERVER_SERVE_H
#define IISAN_SERVER_SERVE_H

#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "core/infer.h"
#include "proto/request.h"
#include "server/serve_state.h"
#include "store/interactions.h"

/* ---------------- configuration ---------------- */

struct serve_config {
    char data[PATH_MAX];
    char bind[64];
    long port;
    long threads;
    long infer_threads; /* threads computing /recommend batches */
    long max_batch;
    long batch_wait_us;
    long item_headroom;
    long exhaustive_topk;
    char text_model[PATH_MAX];
    char text_backbone[128];
    char image_model[PATH_MAX];
    char image_backbone[128];
    long blas_threads;
    char device[16];
    char precision[8]; /* fp32 or bf16: the backend's set_precision (kernels/backend.h) */
    long max_body_bytes;
    long max_k;
    long max_history;
    long max_exclude;
    long max_interactions;
    long commit_batch;
    long connection_limit;
    long max_connections_per_client;
    long max_body_memory_bytes; /* all bodies still arriving together */
    char allowed_hosts[1024];   /* comma-separated Host names; empty: any */
    long reuse_port;
    long connection_timeout_s;
    long shutdown_timeout_s;
    long log_requests;
    char log_level[8]; /* debug, info, warn, error: the lowest logged */
    char admin_token[256];
    char admin_token_file[PATH_MAX];
    long retrain_every_min; /* 0 = no scheduled retraining */
    long retrain_after;     /* 0 = no retraining by logged interactions */
    /* cluster mode (cluster/cluster.h, docs/scaling.md) */
    char role[16];
    char redis[256];
    char bus_prefix[64];
    char repo[PATH_MAX];
    char node_id[128];
    long lease_ms;
    long repo_poll_ms;
    long bus_timeout_ms;
    long bus_wait_replicas;
    long bus_wait_ms;
    char warning[400]; /* not an option: what serve_config_build warns about ("": none) */
};

enum { CFG_INT, CFG_STR, CFG_BOOL };

typedef struct {
    const char *name; /* in files; --name-with-dashes as a flag */
    int type;
    size_t off;
    size_t size; /* CFG_STR: buffer size */
    const char *def;
    long lo, hi;     /* CFG_INT bounds */
    const char *env; /* environment variable */
    int reloadable;  /* SIGHUP applies it */
    const char *help;
} serve_option;

extern const serve_option serve_options[];
extern const int serve_noptions;

/* defaults, then the file (path may be NULL), then the environment, then the
 * flags (argv pairs "--name value" already split into names[] / values[]).
 * 0, or -1 with a message naming the source (file:line, variable, flag). */
int serve_config_build(serve_config *c, const char *path, int nflags, const char *const *names,
                       const char *const *values, char *err, size_t errlen);
const serve_option *serve_option_find(const char *name); /* '-' and '_' alike */

/* ---------------- logging ---------------- */

/* One line per event on stderr: ts=... level=... event=NAME then the
 * caller's key=value pairs (fmt). Values that may hold spaces or quotes go
 * through log_q. Written with one write(2), so lines never interleave. */
void log_event(const char *level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* quotes v for a log value when needed (into buf) */
const char *log_q(const char *v, char *buf, size_t cap);
/* logs the BLAS's kernels and sgemm rate at start (serve_metrics.c), kept for /metrics */
void serve_blas_probe(void);
/* a level's rank (debug 0 .. error 3), -1 for an unknown name */
int log_level_rank(const char *level);
/* events below level (a known name) are dropped from then on; any thread */
void log_set_level(const char *level);

/* ---------------- metrics ---------------- */

enum {
    ROUTE_RECOMMEND,
    ROUTE_INTERACTIONS,
    ROUTE_USER,
    ROUTE_HEALTHZ,
    ROUTE_METRICS,
    ROUTE_ADMIN_STATUS,
    ROUTE_ADMIN_RELOAD,
    ROUTE_ITEMS,
    ROUTE_ITEM,
    ROUTE_ADMIN_RETRAIN,
    ROUTE_ADMIN_JOB,
    ROUTE_ADMIN_ROLLBACK,
    ROUTE_LIVEZ,
    ROUTE_READYZ,
    ROUTE_OTHER,
    N_ROUTES
};
extern const char *const route_name[N_ROUTES];

void metrics_request(int route, int status, double seconds);
void metrics_fallback(void);
void metrics_batch(int requests); /* one /recommend batch of that many requests */
/* a batch of that many requests refused because the backend reports failures (its status) */
void metrics_backend_failed(int requests, int failures);
void metrics_commit(size_t interactions, double seconds, int ok);
/* a model load (serve_reload_model): begin, then end with its time and outcome */
void metrics_model_load_begin(void);
void metrics_model_load_end(double seconds, int ok);
int metrics_loading(void); /* a load is under way */
/* a retraining job ended in state ("promoted", "rejected", "failed") after seconds */
void metrics_job_end(const char *state, double seconds);
void metrics_job_start(void);
/* Prometheus text exposition (malloc'd) */
char *metrics_render(uint32_t model_version, long in_flight, long pending);

/* ---------------- group-commit writer ---------------- */

typedef struct ix_ticket {
    struct ix_ticket *next;
    const store_interaction *v;
    size_t n;
    int done;       /* set by the writer under its mutex */
    int rc;         /* 0 or a negative IISAN_E* */
    uint64_t first; /* ilog number of the first interaction */
    char err[256];
    void (*notify)(struct ix_ticket *t); /* called by the writer after done is set */
    void *arg;
} ix_ticket;

typedef struct ix_writer ix_writer;
int writer_start(ix_writer **out, store_ix *x, long batch_max);
/* queues t (0), or -1 when the writer is stopping */
int writer_submit(ix_writer *w, ix_ticket *t);
long writer_pending(ix_writer *w);
void writer_set_batch(ix_writer *w, long batch_max);
/* commits what is queued (notifying every ticket) and joins the thread; w stays
 * valid: later submits answer -1, pending reads 0. The stop sequence drains while
 * the HTTP threads still run and frees (writer_stop) once they are gone. */
void writer_drain(ix_writer *w);
/* drains (when not yet done) and frees w */
void writer_stop(ix_writer *w);

/* ---------------- /recommend batching ---------------- */

/* q.cnt of a ticket that got no results: */
enum {
    REC_REFUSED = -1,        /* inference refused the request */
    REC_STOPPING = -2,       /* the batcher is stopping */
    REC_BACKEND_FAILED = -3, /* the backend has failed: the results were garbage */
};

typedef struct rec_ticket {
    struct rec_ticket *next;
    infer_model *m; /* retained by the request */
    infer_query q;  /* q.cnt set by the batch thread */
    atomic_int done;
    void (*notify)(struct rec_ticket *t); /* called by the batch thread after done is set */
    void *arg;
} rec_ticket;

typedef struct rec_batcher rec_batcher;
int batcher_start(rec_batcher **out, int threads, int max_batch, long wait_us);
/* queues t (0), or -1 when the batcher is stopping */
int batcher_submit(rec_batcher *b, rec_ticket *t);
void batcher_set(rec_batcher *b, int max_batch, long wait_us);
/* runs what is queued (notifying every ticket) and joins the threads; b stays
 * valid and refuses later submits (as writer_drain) */
void batcher_drain(rec_batcher *b);
/* drains (when not yet done) and frees b */
void batcher_stop(rec_batcher *b);

/* ---------------- POST /items (serve_items.c) ---------------- */

/* loads the configured encoders (text_model, image_model; none when empty): 0 or an
 * IISAN_E* with err */
int serve_encoder_open(const serve_config *c, char *err, size_t errlen);
void serve_encoder_close(void);
const char *serve_encoder_backbone(void);       /* NULL without a text encoder */
const char *serve_image_encoder_backbone(void); /* NULL without an image encoder */
/* stores q's items (and states, sent or encoded), embeds them under the
 * current model; returns the HTTP status and sets *body (NULL: out of memory) */
int items_post(const items_request *q, json_t **body);

/* ---------------- model loads (serve_load.c) ---------------- */

/* loads checkpoint version (0 = the pinned one, else the latest) on the caller's thread and
 * swaps it in when it differs from the current one (or force). 0 loaded / 1 unchanged /
 * -1 failed (logged, the previous model still served). */
int serve_reload_model(uint32_t version, int force);
/* where serve_reload_model gets a version's precomputed item table (infer_options.table):
 * cluster mode sets it (the model repository's items.safetensors); get fills opt's table
 * fields and returns a handle for release, or NULL when there is none */
typedef struct {
    void *(*get)(uint32_t version, infer_options *opt);
    void (*release)(void *handle);
} serve_table_source;
extern serve_table_source g_table_source;
/* bans the store's deleted items in m */
void serve_apply_deleted(infer_model *m);
/* The loader thread: SIGHUP's loads (the loop only asks for them) and the jobs that load a
 * model for an HTTP request (a rollback: the request's connection sleeps meanwhile).
 * loader_request asks for serve_reload_model(0, force) there and returns at once; requests
 * made while a load runs coalesce into one more load after it (force if any asked).
 * loader_submit queues j: run(j) on the loader thread, then done is set and notify(j) called
 * (0), or -1 when the loader is stopping. loader_drain waits for the run under way, refuses
 * the queued jobs (refused = 1, notified) and every later one; loader_stop drains and joins
 * the thread. loader_start: 0 or -1. */
typedef struct loader_job {
    struct loader_job *next;
    void (*run)(struct loader_job *j);
    void (*notify)(struct loader_job *j); /* after done is set; may free j */
    atomic_int done;
    int refused; /* not run: the loader was stopping */
    void *arg;
} loader_job;
int loader_start(void);
void loader_request(int force);
int loader_submit(loader_job *j);
void loader_drain(void);
void loader_stop(void);
/* a test's hook: IISAN_TEST_LOAD_DELAY_MS=N makes every load sleep N ms inside the load */

/* ---------------- the daemon (serve_daemon.c) ---------------- */

/* runs the daemon with configuration c (which it publishes: serve_config_set) until
 * SIGTERM / SIGINT: opens the store, loads the model, starts the threads, serves, stops
 * gracefully. SIGHUP calls on_hup(arg) on the main thread. Returns the exit status. */
int serve_daemon_run(const serve_config *c, void (*on_hup)(void *), void *arg);
/* applies a configuration re-read on SIGHUP (its options that cannot change while running
 * are kept, and logged) and asks the loader thread for the model: the latest version, or a
 * forced load when the new limits resize the inference contexts */
void serve_config_reload(serve_config *nc, const char *file);

/* ---------------- admin: retraining and rollback (serve_admin.c) ---------------- */

/* starts a retraining job on a trainer thread: 0 with *job_id, or -1 when a
 * job is running (err says which) */
int admin_retrain_start(const retrain_request *p, const char *trigger, int *job_id, char *err,
                        size_t errlen);
/* the latest job's id (0: none yet) and the interactions committed since the
 * latest job started (or since startup) */
int admin_last_job(void);
/* at startup: job ids continue after the store's last; jobs a stop or crash
 * interrupted are recorded as failed. 0 or -1. */
int admin_jobs_restore(void);
long admin_interactions_since_run(void);

/* the retraining scheduler (serve_admin.c), driven by the main thread's loop
 * (serve_loop.c): a check starts a job (trigger "schedule" or "interactions")
 * when retrain_every_min minutes passed since the last job started, or
 * retrain_after interactions were committed since then, and no job is
 * running. serve_committed (serve_state.h) counts the commits and wakes it;
 * scheduler_wake (any thread) asks the loop for a check; scheduler_stop makes
 * later checks start nothing. */
void scheduler_start(void);
void scheduler_wake(void);
void scheduler_stop(void);
/* one check, on the loop's thread: seconds until the next one is due, or -1
 * when only a wake-up can make one useful */
double scheduler_tick(void);

/* the main thread's libuv loop (serve_loop.c): SIGHUP calls on_hup(arg),
 * SIGTERM / SIGINT end serve_loop_run (returning the signal), wake-ups and
 * the timer run tick (the scheduler's check: scheduler_tick), which returns the
 * seconds until the next one (-1: none until a wake-up). serve_loop_init before
 * anything can send a signal; serve_loop_close at the end (scheduler_wake is a
 * no-op from then on). */
int serve_loop_init(void);
int serve_loop_run(void (*on_hup)(void *), void *arg, double (*tick)(void));
void serve_loop_close(void);

/* the job's JSON (new reference), NULL for an unknown id */
json_t *admin_job_json(int id);
/* serves version (0: the highest stored version below the current one) and
 * pins it. 0, IISAN_ENOTFOUND (no such / no earlier version) or -1 (load
 * failed); *from / *to get the versions. */
int admin_rollback(uint32_t version, uint32_t *from, uint32_t *to, char *err, size_t errlen);
/* waits up to seconds for a running job; 1 when one is still running */
int admin_wait_trainer(double seconds);

struct MHD_Daemon;
struct MHD_Connection;
struct MHD_Daemon *http_start(const serve_config *c, char *err, size_t errlen);
int http_port(struct MHD_Daemon *d);
/* requests admitted (not refused for the stop) and not yet completed */
long http_busy(void);

/* ---------------- the HTTP edge (serve_edge.c) ---------------- */

#define REQUEST_ID_MAX 64
enum MHD_ConnectionNotificationCode;
/* MHD_OPTION_NOTIFY_CONNECTION: counts open connections, in total and per address */
void edge_on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                        enum MHD_ConnectionNotificationCode toe);
long edge_open_connections(void);
/* 0, or -1 with msg when the server or this client holds more connections than allowed */
int edge_admit(struct MHD_Connection *c, const serve_config *cfg, char *msg, size_t cap);
/* adds to the memory held by unfinished bodies: 0, or -1 (nothing added) past limit */
int edge_body_reserve(size_t add, long limit);
void edge_body_release(size_t n);
long edge_body_bytes(void);
int edge_host_ok(struct MHD_Connection *c, const char *allowed); /* 1 when allowed */
int edge_json_type(struct MHD_Connection *c); /* Content-Type is application/json */
int edge_has_body(struct MHD_Connection *c);  /* Content-Length > 0 or Transfer-Encoding */
/* 1 with msg when Content-Length headers disagree or come with Transfer-Encoding */
int edge_length_conflict(struct MHD_Connection *c, char *msg, size_t cap);
/* the request's X-Request-Id when it is a usable one, else a new one */
void edge_request_id(struct MHD_Connection *c, char *out, size_t cap);
/* the build's version and `git describe` (server/version.c, baked in by the Makefile) */
extern const char iisan_version[], iisan_git_describe[];

#endif

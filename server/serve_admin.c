/* POST /admin/retrain, GET /admin/jobs/{id}, POST /admin/rollback.
 *
 * A retraining job runs on its own thread, one job at a time: it rebuilds the
 * dataset from the store (the users' sequences, logged interactions
 * included), warm-starts a model from the served checkpoint, measures that
 * starting point's validation HR@10 on the new dataset, trains by the spec's
 * protocol (train_run: epochs, early stopping on validation HR@10, best epoch
 * kept), and promotes the result when its best validation HR@10 is not below
 * the starting point's by more than the tolerance: the checkpoint is stored as
 * a new version and swapped in. Otherwise nothing is stored. The last 64 jobs
 * live in memory; every job's record is also written to the store's "jobs"
 * database at each change of state (queued, running, its outcome), so GET
 * /admin/jobs/{id} answers across restarts, and a job that a restart or a
 * crash interrupted is recorded as failed when the daemon starts again. The
 * retraining scheduler (its check runs on the loop's timer, serve_loop.c) starts
 * the same jobs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster/cluster.h"
#include "core/checkpoint.h"
#include "core/dataset.h"
#include "core/eval.h"
#include "core/session.h"
#include "core/states.h"
#include "core/train.h"
#include "server/serve.h"
#include "server/serve_state.h"

#define MAX_JOBS 64

typedef struct {
    int id;
    const char *state;   /* queued, running, promoted, rejected, failed */
    const char *trigger; /* admin, schedule, interactions */
    retrain_request p;
    double created, started, finished; /* Unix seconds */
    uint32_t base_version, new_version;
    int epochs_run, best_epoch;
    double last_loss, base_hr10, best_hr10, best_ndcg10;
    int users, items;
    char message[400];
} job;

static pthread_mutex_t jobs_mu = PTHREAD_MUTEX_INITIALIZER;
static job jobs[MAX_JOBS];
static int next_id = 1, running;
static pthread_t trainer;
static int trainer_joinable;
static volatile int trainer_stop; /* set at the daemon's stop: the job ends after its batch */
static double last_run_mono = -1; /* serve_now() of the last job's start (-1: startup) */

static double wall(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static job *find(int id) {
    job *j = &jobs[id % MAX_JOBS];
    return j->id == id ? j : NULL;
}

json_t *admin_job_json(int id) {
    pthread_mutex_lock(&jobs_mu);
    job *j = id > 0 ? find(id) : NULL;
    json_t *o = NULL;
    if (j) {
        o = json_pack("{s:i,s:s,s:{s:i,s:i,s:f,s:I,s:i},s:I,s:i,s:i,s:i,s:f,s:f,s:s}", "job_id",
                      j->id, "state", j->state, "params", "epochs", (int)j->p.epochs, "patience",
                      (int)j->p.patience, "tolerance", j->p.tolerance, "max_steps",
                      (json_int_t)j->p.max_steps, "seed", (int)j->p.seed, "created",
                      (json_int_t)j->created, "base_version", (int)j->base_version, "epochs_run",
                      j->epochs_run, "best_epoch", j->best_epoch, "base_valid_hr10", j->base_hr10,
                      "best_valid_hr10", j->best_hr10, "message", j->message);
        json_object_set_new(o, "new_version",
                            j->new_version ? json_integer(j->new_version) : json_null());
        json_object_set_new(o, "started",
                            j->started ? json_integer((json_int_t)j->started) : json_null());
        json_object_set_new(o, "finished",
                            j->finished ? json_integer((json_int_t)j->finished) : json_null());
        json_object_set_new(o, "last_loss", json_real(j->last_loss));
        json_object_set_new(o, "best_valid_ndcg10", json_real(j->best_ndcg10));
        json_object_set_new(o, "users", json_integer(j->users));
        json_object_set_new(o, "items", json_integer(j->items));
        json_object_set_new(o, "trigger", json_string(j->trigger ? j->trigger : "admin"));
    }
    pthread_mutex_unlock(&jobs_mu);
    if (!o && id > 0 && g_srv.ix) { /* an older job, or one of a previous run */
        char *text = NULL;
        if (store_ix_job_get(g_srv.ix, (uint32_t)id, &text) == 0) o = json_loads(text, 0, NULL);
        free(text);
    }
    return o;
}

/* writes job id's record to the store (a failure is logged: the job goes on). The snapshot and
 * its write happen under one lock, so records land in the order they were taken: the request
 * thread's "queued" cannot overwrite the trainer thread's later "running" */
static pthread_mutex_t persist_mu = PTHREAD_MUTEX_INITIALIZER;
static void job_persist(int id) {
    pthread_mutex_lock(&persist_mu);
    json_t *o = admin_job_json(id);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    char err[300], b[400];
    if (!text || store_ix_job_put(g_srv.ix, (uint32_t)id, text, err, sizeof err))
        log_event("error", "job_record_failed", "job=%d error=%s", id,
                  log_q(text ? err : "out of memory", b, sizeof b));
    pthread_mutex_unlock(&persist_mu);
    free(text);
}

typedef struct {
    uint32_t max_id;
    uint32_t stale[MAX_JOBS];
    int nstale;
} restore_ctx;

static void restore_one(void *arg, uint32_t id, const char *text) {
    restore_ctx *c = arg;
    if (id > c->max_id) c->max_id = id;
    json_t *o = json_loads(text, 0, NULL);
    const char *st = json_string_value(json_object_get(o, "state"));
    if (st && (!strcmp(st, "queued") || !strcmp(st, "running")) && c->nstale < MAX_JOBS)
        c->stale[c->nstale++] = id;
    json_decref(o);
}

int admin_jobs_restore(void) {
    restore_ctx c = {0};
    if (store_ix_jobs_last(g_srv.ix, MAX_JOBS, restore_one, &c)) return -1;
    for (int i = 0; i < c.nstale; i++) { /* interrupted by the stop or crash before this start */
        char *text = NULL;
        if (store_ix_job_get(g_srv.ix, c.stale[i], &text)) continue;
        json_t *o = json_loads(text, 0, NULL);
        free(text);
        if (!o) continue;
        json_object_set_new(o, "state", json_string("failed"));
        json_object_set_new(o, "message",
                            json_string("interrupted: the daemon stopped before the job ended"));
        char *t2 = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        char err[300];
        if (t2) store_ix_job_put(g_srv.ix, c.stale[i], t2, err, sizeof err);
        free(t2);
        log_event("warn", "job_interrupted", "job=%u", c.stale[i]);
    }
    pthread_mutex_lock(&jobs_mu);
    if ((int)c.max_id >= next_id) next_id = (int)c.max_id + 1;
    pthread_mutex_unlock(&jobs_mu);
    return 0;
}

static void job_set(job *j, const char *state, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void job_set(job *j, const char *state, const char *fmt, ...) {
    pthread_mutex_lock(&jobs_mu);
    if (state) j->state = state;
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(j->message, sizeof j->message, fmt, ap);
        va_end(ap);
    }
    pthread_mutex_unlock(&jobs_mu);
}

static void on_epoch(void *arg, const epoch_report *r) {
    job *j = arg;
    pthread_mutex_lock(&jobs_mu);
    j->epochs_run = r->epoch;
    j->last_loss = r->loss;
    if (r->best) {
        j->best_epoch = r->epoch;
        j->best_hr10 = r->valid.hr10;
        j->best_ndcg10 = r->valid.ndcg10;
    }
    int id = j->id;
    pthread_mutex_unlock(&jobs_mu);
    log_event("info", "retrain_epoch", "job=%d epoch=%d loss=%.4f valid_hr10=%.4f best=%s", id,
              r->epoch, r->loss, r->valid.hr10, r->best ? "true" : "false");
}

/* One job's run: what its steps share; run_free releases it. Each step returns 0, or -1
 * after setting the job's end state (job_set). */
typedef struct {
    job *j;
    int id;
    retrain_request p;
    double t0;
    infer_info in;    /* the served version it warm-starts from */
    iisan_session ss; /* its checkpoint, today's dataset, the warm-started model, the states */
    iisan_train_config tc;
    eval_result base;
    train_summary sum;
} run_state;

/* the served version's checkpoint, today's dataset, the model of its config on today's
 * items warm-started from it, and the hidden states (core/session.h) */
static int run_load_base(run_state *r) {
    store_ix *x = g_srv.ix;
    char err[512];
    infer_model *cur = serve_model_get();
    if (!cur) {
        job_set(r->j, "failed",
                "no model is served: nothing to warm-start from (iisan train first)");
        return -1;
    }
    infer_get_info(cur, &r->in);
    infer_release(cur);
    pthread_mutex_lock(&jobs_mu);
    r->j->base_version = r->in.version;
    pthread_mutex_unlock(&jobs_mu);
    log_event("info", "retrain_started", "job=%d base_version=%u epochs=%ld", r->id, r->in.version,
              r->p.epochs);
    train_config_default(&r->tc);
    r->tc.epochs = (int)r->p.epochs;
    r->tc.patience = (int)r->p.patience;
    r->tc.max_steps = r->p.max_steps;
    r->tc.seed = (uint64_t)r->p.seed;
    session_options so = {.mode = SESSION_WARM,
                          .version = r->in.version,
                          .cap_users = r->tc.batch,
                          .seed = r->tc.seed,
                          .need_users = 1};
    /* the reader stays open for the whole run, so the map cannot grow meanwhile (commits that
     * need a larger map fail with 503 until the job ends); it holds a read transaction only
     * while a batch gathers its states */
    store_ix_rdlock(x);
    int rc = session_open(&r->ss, store_ix_store(x), g_srv.be, &so, err, sizeof err);
    store_ix_unlock(x);
    if (rc) {
        job_set(r->j, "failed", "%s", err);
        return -1;
    }
    r->tc.min_len = r->ss.ck.min_len;
    pthread_mutex_lock(&jobs_mu);
    r->j->users = r->ss.ds.n_users;
    r->j->items = r->ss.ds.n_items;
    pthread_mutex_unlock(&jobs_mu);
    return 0;
}

/* the starting point's validation, then training; any failure is the job's */
static int run_train(run_state *r) {
    iisan_backend *be = g_srv.be;
    if (model_evaluate(r->ss.m, &r->ss.ds, SPLIT_VALID, r->tc.eval_rule, &r->ss.st, &r->base)) {
        job_set(r->j, "failed", "out of memory evaluating the starting point");
        return -1;
    }
    pthread_mutex_lock(&jobs_mu);
    r->j->base_hr10 = r->base.hr10;
    pthread_mutex_unlock(&jobs_mu);
    r->tc.stop = &trainer_stop;
    int trc = train_run(r->ss.m, &r->ss.ds, &r->ss.st, &r->tc, 1, on_epoch, r->j, &r->sum);
    char bm[300];
    if (trc == TRAIN_ENOMEM) {
        job_set(r->j, "failed", "out of memory training; nothing stored");
        return -1;
    }
    if (trc == TRAIN_ESTATES && states_check(&r->ss.st, bm, sizeof bm)) {
        job_set(r->j, "failed", "%s; nothing stored", bm);
        return -1;
    }
    if (be->status(be, bm, sizeof bm)) { /* TRAIN_EBACKEND: what was trained is garbage */
        job_set(r->j, "failed", "the %s backend failed while training: %s; nothing stored",
                be->name, bm);
        return -1;
    }
    if (r->sum.interrupted) {
        job_set(r->j, "failed", "interrupted: the daemon stopped after %d epochs; nothing stored",
                r->sum.epochs_run);
        return -1;
    }
    session_release_states(&r->ss); /* storing the version may grow the map */
    return 0;
}

/* within the tolerance of the served version: stored, unpinned, loaded and served */
static int run_promote(run_state *r) {
    store_ix *x = g_srv.ix;
    const train_summary *sum = &r->sum;
    const double base = r->base.hr10;
    if (sum->best_valid.hr10 + r->p.tolerance < base) {
        job_set(r->j, "rejected",
                "validation HR@10 %.4f is below the served version's %.4f by more than the "
                "tolerance %.4f; nothing stored",
                sum->best_valid.hr10, base, r->p.tolerance);
        log_event("info", "retrain_rejected", "job=%d base_hr10=%.4f new_hr10=%.4f", r->id, base,
                  sum->best_valid.hr10);
        return -1;
    }
    size_t len = 0;
    void *blob =
        ckpt_encode_model(r->ss.m, r->ss.ds.item_cat, r->ss.ds.n_items, r->ss.ck.min_len, &len);
    char mj[800], err[512], rules[256];
    train_rules_json(&r->tc, &r->ss.c, rules, sizeof rules);
    snprintf(mj, sizeof mj,
             "{\"model\":\"%s\",\"best_epoch\":%d,\"epochs_run\":%d,\"valid_hr10\":%.6f,"
             "\"valid_ndcg10\":%.6f,\"seconds_per_epoch\":%.3f,\"created\":%lld,"
             "\"warm_start_from\":%u,\"job\":%d,\"base_valid_hr10\":%.6f,%s}",
             r->ss.c.kind == MODEL_IISAN ? "iisan" : "sasrec-id", sum->best_epoch, sum->epochs_run,
             sum->best_valid.hr10, sum->best_valid.ndcg10, sum->mean_epoch_seconds,
             (long long)time(NULL), r->in.version, r->id, base, rules);
    uint32_t ver = 0;
    store_ix_wrlock(x); /* store_ckpt_put may grow the map */
    int rc = blob ? store_ckpt_put(store_ix_store(x), blob, len, mj, &ver) : IISAN_ENOMEM;
    store_ix_unlock(x);
    free(blob);
    if (rc) {
        job_set(r->j, "failed", "storing the checkpoint: %s", iisan_strerror(rc));
        return -1;
    }
    pthread_mutex_lock(&jobs_mu);
    r->j->new_version = ver;
    pthread_mutex_unlock(&jobs_mu);
    atomic_store(&g_srv.pinned, 0);
    if (store_ix_state_put(x, "pinned", 0, err, sizeof err))
        log_event("error", "unpin_failed", "error=%s", log_q(err, (char[600]){0}, 600));
    if (serve_reload_model(ver, 0) < 0) {
        job_set(r->j, "failed", "stored as version %u, but loading it failed (see the log)", ver);
        return -1;
    }
    double secs = serve_now() - r->t0;
    if (r->ss.c.kind == MODEL_SASREC_ID)
        job_set(r->j, "promoted",
                "version %u (HR@10 %.4f; served version %u had %.4f) is served; %d of %d item "
                "embeddings warm-started, the rest new; %.1f s",
                ver, sum->best_valid.hr10, r->in.version, base, r->ss.reused, r->ss.ds.n_items + 1,
                secs);
    else
        job_set(r->j, "promoted",
                "version %u (HR@10 %.4f; served version %u had %.4f) is served; every "
                "parameter warm-started; %.1f s",
                ver, sum->best_valid.hr10, r->in.version, base, secs);
    log_event("info", "retrain_promoted",
              "job=%d version=%u base_version=%u hr10=%.4f "
              "base_hr10=%.4f seconds=%.1f",
              r->id, ver, r->in.version, sum->best_valid.hr10, base, secs);
    cluster_promoted(ver); /* cluster mode: to the model repository */
    return 0;
}

static void run_free(run_state *r) { session_close(&r->ss); }

static void *trainer_main(void *arg) {
    run_state r = {0};
    job *j = r.j = arg;
    pthread_mutex_lock(&jobs_mu);
    j->state = "running";
    j->started = wall();
    r.p = j->p;
    r.id = j->id;
    pthread_mutex_unlock(&jobs_mu);
    job_persist(r.id);
    r.t0 = serve_now();
    if (!run_load_base(&r) && !run_train(&r)) run_promote(&r);
    run_free(&r);
    pthread_mutex_lock(&jobs_mu);
    j->finished = wall();
    if (!strcmp(j->state, "failed"))
        log_event("error", "retrain_failed", "job=%d message=%s", r.id,
                  log_q(j->message, (char[500]){0}, 500));
    running = 0;
    metrics_job_end(j->state, j->finished - j->started);
    pthread_mutex_unlock(&jobs_mu);
    job_persist(r.id);
    return NULL;
}

int admin_retrain_start(const retrain_request *p, const char *trigger, int *job_id, char *err,
                        size_t errlen) {
    if (cluster_may_train(err, errlen)) return -1; /* a replica, or a standby trainer */
    pthread_mutex_lock(&jobs_mu);
    if (running) {
        int rid = next_id - 1;
        pthread_mutex_unlock(&jobs_mu);
        snprintf(err, errlen, "job %d is running; one job at a time", rid);
        return -1;
    }
    if (trainer_joinable) pthread_join(trainer, NULL); /* the previous one, finished */
    trainer_joinable = 0;
    int id = next_id++;
    job *j = &jobs[id % MAX_JOBS];
    memset(j, 0, sizeof *j);
    j->id = id;
    j->state = "queued";
    j->trigger = trigger;
    j->p = *p;
    j->created = wall();
    running = 1;
    metrics_job_start();
    if (pthread_create(&trainer, NULL, trainer_main, j)) {
        running = 0;
        metrics_job_end("failed", 0);
        j->state = "failed";
        snprintf(j->message, sizeof j->message, "cannot start the trainer thread");
        pthread_mutex_unlock(&jobs_mu);
        snprintf(err, errlen, "cannot start the trainer thread");
        return -1;
    }
    trainer_joinable = 1;
    atomic_store(&g_srv.since_run, 0);
    last_run_mono = serve_now();
    pthread_mutex_unlock(&jobs_mu);
    log_event("info", "retrain_queued", "job=%d trigger=%s", id, trigger);
    job_persist(id);
    *job_id = id;
    return 0;
}

int admin_last_job(void) {
    pthread_mutex_lock(&jobs_mu);
    int id = next_id - 1;
    pthread_mutex_unlock(&jobs_mu);
    return id;
}

long admin_interactions_since_run(void) { return atomic_load(&g_srv.since_run); }

/* ---------------- the retraining scheduler ---------------- */

static double sched_started_at = -1; /* serve_now() at scheduler_start */
static atomic_int sched_off;         /* scheduler_stop: no job from here on */

void scheduler_start(void) {
    sched_started_at = serve_now();
    atomic_store(&sched_off, 0);
}

void scheduler_stop(void) { atomic_store(&sched_off, 1); }

double scheduler_tick(void) {
    if (atomic_load(&sched_off) || atomic_load(&g_srv.stopping) || sched_started_at < 0) return -1;
    const serve_config *c = serve_config_acquire();
    long every = c->retrain_every_min, after = c->retrain_after;
    serve_config_release(c);
    pthread_mutex_lock(&jobs_mu);
    int busy = running;
    double last = last_run_mono >= 0 ? last_run_mono : sched_started_at;
    pthread_mutex_unlock(&jobs_mu);
    const double now = serve_now(), period = (double)every * 60.0;
    long since = atomic_load(&g_srv.since_run);
    const char *trigger = NULL;
    if (after > 0 && since >= after)
        trigger = "interactions";
    else if (every > 0 && now - last >= period)
        trigger = "schedule";
    if (trigger && busy) return 1.0; /* a job runs: look again when it may have ended */
    char why[200];
    if (trigger && cluster_may_train(why, sizeof why)) return 5.0; /* a replica or a standby */
    if (trigger) {
        retrain_request p;
        req_error e;
        int id = 0;
        char err[200];
        retrain_request_parse("", 0, &p, &e); /* the defaults */
        if (admin_retrain_start(&p, trigger, &id, err, sizeof err)) {
            log_event("warn", "retrain_not_started", "trigger=%s error=%s", trigger,
                      log_q(err, (char[300]){0}, 300));
            return 1.0;
        }
        log_event("info", "retrain_scheduled", "job=%d trigger=%s interactions_since_last_run=%ld",
                  id, trigger, since);
        return every > 0 ? period : -1;
    }
    if (every > 0) {
        double wait = last + period - now;
        return wait < 0.05 ? 0.05 : wait;
    }
    return -1;
}

int admin_wait_trainer(double seconds) {
    trainer_stop = 1; /* a running job stops after its current batch (or validation) */
    double end = serve_now() + seconds;
    for (;;) {
        pthread_mutex_lock(&jobs_mu);
        int r = running, jn = trainer_joinable;
        if (!r && jn) {
            trainer_joinable = 0;
            pthread_mutex_unlock(&jobs_mu);
            pthread_join(trainer, NULL);
            return 0;
        }
        pthread_mutex_unlock(&jobs_mu);
        if (!r) return 0;
        if (serve_now() >= end) return 1;
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

int admin_rollback(uint32_t version, uint32_t *from, uint32_t *to, char *err, size_t errlen) {
    infer_model *cur = serve_model_get();
    infer_info in = {0};
    if (cur) {
        infer_get_info(cur, &in);
        infer_release(cur);
    }
    *from = in.version;
    uint32_t *vs = NULL, n = 0;
    store_ix_rdlock(g_srv.ix);
    int rc = store_ckpt_list(store_ix_store(g_srv.ix), &vs, &n);
    store_ix_unlock(g_srv.ix);
    if (rc) {
        snprintf(err, errlen, "listing the checkpoints: %s", iisan_strerror(rc));
        return -1;
    }
    uint32_t want = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (version ? vs[i] == version : vs[i] < in.version) want = vs[i];
    }
    free(vs);
    if (!want) {
        if (version)
            snprintf(err, errlen, "the store holds no checkpoint version %u", version);
        else
            snprintf(err, errlen, "no stored version is older than the served version %u",
                     in.version);
        return IISAN_ENOTFOUND;
    }
    *to = want;
    uint32_t old_pin = atomic_exchange(&g_srv.pinned, want);
    if (serve_reload_model(want, 0) < 0) {
        atomic_store(&g_srv.pinned, old_pin);
        snprintf(err, errlen, "loading version %u failed (see the log)", want);
        return -1;
    }
    char e2[300];
    if (store_ix_state_put(g_srv.ix, "pinned", want, e2, sizeof e2))
        log_event("error", "pin_failed", "error=%s", log_q(e2, (char[400]){0}, 400));
    log_event("info", "rollback", "from=%u to=%u pinned=true", in.version, want);
    cluster_rolled_back(want); /* cluster mode: CURRENT points at it */
    return 0;
}

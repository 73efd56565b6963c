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
 * crash interrupted is recorded as failed when the daemon starts again. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster/cluster.h"
#include "core/checkpoint.h"
#include "core/dataset.h"
#include "core/eval.h"
#include "core/params.h"
#include "core/resident.h"
#include "core/states.h"
#include "core/train.h"
#include "server/serve.h"

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
static atomic_long since_run;     /* interactions committed since the last job started */
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

/* writes job id's record to the store (a failure is logged: the job goes on) */
static void job_persist(int id) {
    json_t *o = admin_job_json(id);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    char err[300], b[400];
    if (!text || store_ix_job_put(g_srv.ix, (uint32_t)id, text, err, sizeof err))
        log_event("error", "job_record_failed", "job=%d error=%s", id,
                  log_q(text ? err : "out of memory", b, sizeof b));
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

/* warm start: the checkpoint's parameters by name; SASRec-ID embedding rows
 * by catalogue index (items new to the dataset keep their initialisation) */
static int warm_params(const iisan_ckpt *ck, const iisan_model *m, const iisan_dataset *ds,
                       float *h, uint64_t seed, int *reused) {
    param_table old;
    if (params_build(&old, &ck->c)) return -1;
    params_init(&m->pt, h, seed);
    const int d = m->c.d;
    *reused = 0;
    for (int i = 0; i < m->pt.n; i++) {
        const param_info *p = &m->pt.t[i];
        const param_info *q = params_find(&old, p->name);
        if (!q) continue;
        if (!strcmp(p->name, "item_emb.weight")) {
            uint32_t maxcat = 0;
            for (uint32_t r = 0; r < ck->n_cat; r++)
                if (ck->item_cat[r] > maxcat) maxcat = ck->item_cat[r];
            int32_t *row = malloc(((size_t)maxcat + 1) * sizeof *row);
            if (!row) {
                params_free(&old);
                return -1;
            }
            for (uint32_t c = 0; c <= maxcat; c++)
                row[c] = -1;
            for (uint32_t r = 0; r < ck->n_cat; r++)
                row[ck->item_cat[r]] = (int32_t)r;
            for (int r = 0; r <= ds->n_items; r++) {
                uint32_t c = ds->item_cat[r];
                if (c > maxcat || row[c] < 0) continue;
                memcpy(h + p->offset + (size_t)r * d, ck->params + q->offset + (size_t)row[c] * d,
                       (size_t)d * sizeof *h);
                (*reused)++;
            }
            free(row);
        } else if (q->size == p->size) {
            memcpy(h + p->offset, ck->params + q->offset, p->size * sizeof *h);
        }
    }
    params_free(&old);
    return 0;
}

static void *trainer_main(void *arg) {
    job *j = arg;
    store_ix *x = g_srv.ix;
    iisan_store *s = store_ix_store(x);
    iisan_backend *be = g_srv.be;
    char err[512];
    iisan_ckpt ck = {0};
    iisan_dataset ds = {0};
    iisan_model *m = NULL;
    store_reader *rd = NULL;
    resident_states *rs = NULL;
    float *host = NULL;
    void *blob = NULL;
    pthread_mutex_lock(&jobs_mu);
    j->state = "running";
    j->started = wall();
    retrain_request p = j->p;
    int id = j->id;
    pthread_mutex_unlock(&jobs_mu);
    job_persist(id);
    double t0 = serve_now();

    infer_model *cur = serve_model_get();
    if (!cur) {
        job_set(j, "failed", "no model is served: nothing to warm-start from (iisan train first)");
        goto out;
    }
    infer_info in;
    infer_get_info(cur, &in);
    infer_release(cur);
    pthread_mutex_lock(&jobs_mu);
    j->base_version = in.version;
    pthread_mutex_unlock(&jobs_mu);
    log_event("info", "retrain_started", "job=%d base_version=%u epochs=%ld", id, in.version,
              p.epochs);
    size_t len = 0;
    char *meta = NULL;
    store_ix_rdlock(x);
    int rc = store_ckpt_get(s, in.version, &blob, &len, &meta, NULL);
    store_ix_unlock(x);
    free(meta);
    if (rc) {
        job_set(j, "failed", "reading checkpoint %u: %s", in.version, iisan_strerror(rc));
        goto out;
    }
    if (ckpt_decode(blob, len, &ck, err, sizeof err)) {
        job_set(j, "failed", "checkpoint %u: %s", in.version, err);
        goto out;
    }
    free(blob);
    blob = NULL;
    store_ix_rdlock(x);
    rc = dataset_build(&ds, s, ck.c.n, ck.min_len, err, sizeof err);
    store_ix_unlock(x);
    if (rc || ds.n_users == 0) {
        job_set(j, "failed", "%s", rc ? err : "no user has enough items to train on");
        goto out;
    }
    pthread_mutex_lock(&jobs_mu);
    j->users = ds.n_users;
    j->items = ds.n_items;
    pthread_mutex_unlock(&jobs_mu);
    iisan_config c = ck.c;
    if (c.kind == MODEL_SASREC_ID) c.n_items = ds.n_items;
    iisan_train_config tc;
    train_config_default(&tc);
    tc.epochs = (int)p.epochs;
    tc.patience = (int)p.patience;
    tc.max_steps = p.max_steps;
    tc.seed = (uint64_t)p.seed;
    tc.min_len = ck.min_len;
    m = model_create(&c, be, tc.batch, tc.seed, err, sizeof err);
    if (!m) {
        job_set(j, "failed", "%s", err);
        goto out;
    }
    host = malloc(m->pt.total * sizeof *host);
    int reused = 0;
    if (!host || warm_params(&ck, m, &ds, host, tc.seed, &reused)) {
        job_set(j, "failed", "out of memory");
        goto out;
    }
    be->upload(be, m->w, host, m->pt.total * sizeof *host);
    iisan_states st = {NULL, NULL, NULL};
    if (c.kind == MODEL_IISAN) {
        /* a reader for the whole run: the map cannot grow meanwhile (commits
         * that need a larger map fail with 503 until the job ends) */
        store_ix_rdlock(x);
        rc = store_reader_begin(s, &rd);
        store_ix_unlock(x);
        if (rc) {
            job_set(j, "failed", "cannot read the hidden states");
            goto out;
        }
        st = states_from_reader(rd);
        if (!be->caps.host_memory) {
            if (states_resident_create(be, &ds, &st, &c, &rs, err, sizeof err)) {
                job_set(j, "failed", "%s", err);
                goto out;
            }
            st = resident_states_source(rs);
        }
    }
    eval_result base;
    if (model_evaluate(m, &ds, SPLIT_VALID, &st, &base)) {
        job_set(j, "failed", "out of memory evaluating the starting point");
        goto out;
    }
    pthread_mutex_lock(&jobs_mu);
    j->base_hr10 = base.hr10;
    pthread_mutex_unlock(&jobs_mu);
    train_summary sum;
    tc.stop = &trainer_stop;
    int trc = train_run(m, &ds, &st, &tc, 1, on_epoch, j, &sum);
    char bm[300];
    if (trc == TRAIN_ENOMEM) {
        job_set(j, "failed", "out of memory training; nothing stored");
        goto out;
    }
    if (trc == TRAIN_ESTATES && states_check(&st, bm, sizeof bm)) {
        job_set(j, "failed", "%s; nothing stored", bm);
        goto out;
    }
    if (be->status(be, bm, sizeof bm)) { /* TRAIN_EBACKEND: what was trained is garbage */
        job_set(j, "failed", "the %s backend failed while training: %s; nothing stored", be->name,
                bm);
        goto out;
    }
    if (sum.interrupted) {
        job_set(j, "failed", "interrupted: the daemon stopped after %d epochs; nothing stored",
                sum.epochs_run);
        goto out;
    }
    if (rd) store_reader_end(rd);
    rd = NULL;
    if (sum.best_valid.hr10 + p.tolerance < base.hr10) {
        job_set(j, "rejected",
                "validation HR@10 %.4f is below the served version's %.4f by more than the "
                "tolerance %.4f; nothing stored",
                sum.best_valid.hr10, base.hr10, p.tolerance);
        log_event("info", "retrain_rejected", "job=%d base_hr10=%.4f new_hr10=%.4f", id, base.hr10,
                  sum.best_valid.hr10);
        goto out;
    }
    blob = ckpt_encode_model(m, ds.item_cat, ds.n_items, ck.min_len, &len);
    char mj[600];
    snprintf(mj, sizeof mj,
             "{\"model\":\"%s\",\"best_epoch\":%d,\"epochs_run\":%d,\"valid_hr10\":%.6f,"
             "\"valid_ndcg10\":%.6f,\"seconds_per_epoch\":%.3f,\"created\":%lld,"
             "\"warm_start_from\":%u,\"job\":%d,\"base_valid_hr10\":%.6f}",
             c.kind == MODEL_IISAN ? "iisan" : "sasrec-id", sum.best_epoch, sum.epochs_run,
             sum.best_valid.hr10, sum.best_valid.ndcg10, sum.mean_epoch_seconds,
             (long long)time(NULL), in.version, id, base.hr10);
    uint32_t ver = 0;
    store_ix_wrlock(x); /* store_ckpt_put may grow the map */
    rc = blob ? store_ckpt_put(s, blob, len, mj, &ver) : IISAN_ENOMEM;
    store_ix_unlock(x);
    if (rc) {
        job_set(j, "failed", "storing the checkpoint: %s", iisan_strerror(rc));
        goto out;
    }
    pthread_mutex_lock(&jobs_mu);
    j->new_version = ver;
    pthread_mutex_unlock(&jobs_mu);
    atomic_store(&g_srv.pinned, 0);
    if (store_ix_state_put(x, "pinned", 0, err, sizeof err))
        log_event("error", "unpin_failed", "error=%s", log_q(err, (char[600]){0}, 600));
    if (serve_reload_model(ver, 0) < 0) {
        job_set(j, "failed", "stored as version %u, but loading it failed (see the log)", ver);
        goto out;
    }
    if (c.kind == MODEL_SASREC_ID)
        job_set(j, "promoted",
                "version %u (HR@10 %.4f; served version %u had %.4f) is served; %d of %d item "
                "embeddings warm-started, the rest new; %.1f s",
                ver, sum.best_valid.hr10, in.version, base.hr10, reused, ds.n_items + 1,
                serve_now() - t0);
    else
        job_set(j, "promoted",
                "version %u (HR@10 %.4f; served version %u had %.4f) is served; every "
                "parameter warm-started; %.1f s",
                ver, sum.best_valid.hr10, in.version, base.hr10, serve_now() - t0);
    log_event("info", "retrain_promoted",
              "job=%d version=%u base_version=%u hr10=%.4f "
              "base_hr10=%.4f seconds=%.1f",
              id, ver, in.version, sum.best_valid.hr10, base.hr10, serve_now() - t0);
    cluster_promoted(ver); /* cluster mode: to the model repository */
out:
    if (rd) store_reader_end(rd);
    states_resident_free(rs);
    model_destroy(m);
    free(host);
    free(blob);
    ckpt_free(&ck);
    dataset_free(&ds);
    pthread_mutex_lock(&jobs_mu);
    j->finished = wall();
    if (!strcmp(j->state, "failed"))
        log_event("error", "retrain_failed", "job=%d message=%s", id,
                  log_q(j->message, (char[500]){0}, 500));
    running = 0;
    metrics_job_end(j->state, j->finished - j->started);
    pthread_mutex_unlock(&jobs_mu);
    job_persist(id);
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
    atomic_store(&since_run, 0);
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

long admin_interactions_since_run(void) { return atomic_load(&since_run); }

/* ---------------- the retraining scheduler ---------------- */

static double sched_started_at = -1; /* serve_now() at scheduler_start */
static atomic_int sched_off;         /* scheduler_stop: no job from here on */

void scheduler_notify(size_t committed) {
    atomic_fetch_add(&since_run, (long)committed);
    scheduler_wake();
}

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
    long since = atomic_load(&since_run);
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

/* Cluster mode (cluster/cluster.h): the settings, the trainer lease, the
 * repository follower, and publication of promoted versions. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cluster/cluster_internal.h"
#include "cluster/repo.h"
#include "server/ckpt_file.h"
#include "server/serve.h"
#include "server/serve_state.h"
#include "store/safetensors.h"

cluster_cfg g_cl;
atomic_int g_cl_stop;
static atomic_int lease_held;
static atomic_uint followed; /* the repository version this node loaded last */
static atomic_uint refused;  /* a version whose checksums failed (not retried) */
static pthread_t follower, leaser;
static int follower_started, leaser_started;

static const char *const role_names[] = {"standalone", "trainer", "replica"};

int cluster_role_parse(const char *name) {
    for (int i = 0; i < 3; i++)
        if (!strcmp(name, role_names[i])) return i;
    return -1;
}

int cluster_role(void) { return g_cl.role; }
const char *cluster_role_name(void) { return role_names[g_cl.role]; }

void cluster_sleep_ms(long ms) {
    for (long t = 0; t < ms && !atomic_load(&g_cl_stop); t += 20)
        usleep(20000);
}

static void cfg_read(const serve_config *c) {
    g_cl.role = cluster_role_parse(c->role);
    snprintf(g_cl.redis, sizeof g_cl.redis, "%s", c->redis);
    snprintf(g_cl.prefix, sizeof g_cl.prefix, "%s", c->bus_prefix);
    snprintf(g_cl.repo, sizeof g_cl.repo, "%s", c->repo);
    if (c->node_id[0]) {
        snprintf(g_cl.node, sizeof g_cl.node, "%s", c->node_id);
    } else {
        char host[64] = "node";
        gethostname(host, sizeof host - 1);
        snprintf(g_cl.node, sizeof g_cl.node, "%s-%d", host, (int)getpid());
    }
    g_cl.lease_ms = c->lease_ms;
    g_cl.poll_ms = c->repo_poll_ms;
    g_cl.timeout_ms = c->bus_timeout_ms;
    g_cl.wait_replicas = c->bus_wait_replicas;
    g_cl.wait_ms = c->bus_wait_ms;
}

/* ---------------- following the repository ---------------- */

static uint32_t served_version(void) {
    infer_model *m = serve_model_get();
    infer_info in = {0};
    if (m) {
        infer_get_info(m, &in);
        infer_release(m);
    }
    return in.version;
}

/* the manifest's figures as JSON text (malloc'd; "{}" when absent) */
static char *manifest_figures(uint32_t v) {
    char p[PATH_MAX + 64];
    repo_path(g_cl.repo, v, REPO_MANIFEST, p, sizeof p);
    json_t *m = json_load_file(p, 0, NULL);
    json_t *f = json_object_get(m, "figures");
    json_object_set_new(f, "from_repository", json_true());
    char *s = f ? json_dumps(f, JSON_COMPACT) : strdup("{}");
    json_decref(m);
    return s;
}

/* stores repository version v in the local store under its number (verified
 * first) unless it is there already. 0 or -1 (logged). */
static int import_version(uint32_t v) {
    char err[600], path[PATH_MAX + 64];
    iisan_store *s = store_ix_store(g_srv.ix);
    store_ix_rdlock(g_srv.ix);
    int have = store_ckpt_get(s, v, NULL, NULL, NULL, NULL) == 0;
    store_ix_unlock(g_srv.ix);
    if (have) return 0;
    if (repo_verify(g_cl.repo, v, err, sizeof err)) {
        log_event("error", "version_refused", "version=%u error=%s", v,
                  log_q(err, (char[700]){0}, 700));
        return -1;
    }
    repo_path(g_cl.repo, v, REPO_CKPT, path, sizeof path);
    void *blob = NULL;
    size_t len = 0;
    store_ix_rdlock(g_srv.ix);
    int rc = ckpt_file_read(s, path, &blob, &len, err, sizeof err);
    store_ix_unlock(g_srv.ix);
    if (!rc) {
        char *fig = manifest_figures(v);
        store_ix_wrlock(g_srv.ix); /* may grow the map */
        rc = store_ckpt_put_at(s, blob, len, fig, v, err, sizeof err);
        store_ix_unlock(g_srv.ix);
        free(fig);
    }
    free(blob);
    if (rc)
        log_event("error", "version_import_failed", "version=%u error=%s", v,
                  log_q(err, (char[700]){0}, 700));
    return rc ? -1 : 0;
}

/* serves the version CURRENT names when it is new to this node */
static void follow_once(void) {
    uint32_t v = 0;
    char err[600];
    int rc = repo_current(g_cl.repo, &v, err, sizeof err);
    if (rc) {
        if (rc < 0)
            log_event("warn", "repo_unreadable", "error=%s", log_q(err, (char[700]){0}, 700));
        return;
    }
    if (v == served_version() || v == atomic_load(&refused)) return;
    double t0 = serve_now();
    /* the checksums are checked on every switch, also to a version stored before */
    if (repo_verify(g_cl.repo, v, err, sizeof err)) {
        log_event("error", "version_refused", "version=%u error=%s serving=%u", v,
                  log_q(err, (char[700]){0}, 700), served_version());
        atomic_store(&refused, v);
        return;
    }
    if (import_version(v)) {
        atomic_store(&refused, v);
        return;
    }
    uint32_t old_pin = atomic_exchange(&g_srv.pinned, v);
    if (serve_reload_model(v, 0) < 0) {
        atomic_store(&g_srv.pinned, old_pin);
        atomic_store(&refused, v);
        return;
    }
    if (store_ix_state_put(g_srv.ix, "pinned", v, err, sizeof err))
        log_event("error", "pin_failed", "error=%s", log_q(err, (char[700]){0}, 700));
    atomic_store(&followed, v);
    log_event("info", "version_followed", "version=%u seconds=%.3f", v, serve_now() - t0);
}

static void *follow_main(void *arg) {
    bus *b = bus_new(g_cl.redis, g_cl.prefix, (int)g_cl.timeout_ms);
    while (b && !atomic_load(&g_cl_stop)) {
        if (!(g_cl.role == ROLE_TRAINER && atomic_load(&lease_held))) follow_once();
        long v = bus_wait_announce(b, (int)g_cl.poll_ms);
        if (v < 0) cluster_sleep_ms(g_cl.poll_ms); /* the bus is down: poll the directory */
    }
    bus_free(b);
    return NULL;
}

/* ---------------- the published item table, for loads ---------------- */

typedef struct {
    float *rows; /* aligned copy of the embeddings */
    char **ids;
    char *text;
} table_handle;

static void table_release(void *h) {
    table_handle *t = h;
    if (!t) return;
    free(t->rows);
    free(t->ids);
    free(t->text);
    free(t);
}

/* the repository's items.safetensors of version (checksums verified) into opt's table
 * fields; NULL (computed from the store's states instead) when it is absent or bad */
static void *table_get(uint32_t version, infer_options *opt) {
    char path[PATH_MAX + 64], err[600];
    repo_path(g_cl.repo, version, REPO_ITEMS, path, sizeof path);
    if (access(path, R_OK)) return NULL; /* a version this node trained and did not publish */
    if (repo_verify(g_cl.repo, version, err, sizeof err)) {
        log_event("warn", "item_table_refused", "version=%u error=%s", version,
                  log_q(err, (char[700]){0}, 700));
        return NULL;
    }
    table_handle *t = calloc(1, sizeof *t);
    st_file *f = NULL;
    if (!t || st_open(&f, path, err, sizeof err)) {
        table_release(t);
        return NULL;
    }
    const st_tensor *e = st_find(f, "embeddings"), *ti = st_find(f, "item_ids");
    int n = e && e->dtype == ST_F32 && e->ndim == 2 ? (int)e->shape[0] : -1;
    if (n < 0 || !ti || ti->dtype != ST_U8 || !(t->text = malloc(ti->nbytes + 1)) ||
        !(t->ids = calloc((size_t)n + 1, sizeof *t->ids)) || !(t->rows = malloc(e->nbytes + 1))) {
        log_event("warn", "item_table_refused", "version=%u error=\"malformed %s\"", version,
                  REPO_ITEMS);
        st_close(f);
        table_release(t);
        return NULL;
    }
    memcpy(t->rows, e->data, e->nbytes);
    const int width = (int)e->shape[1];
    memcpy(t->text, ti->data, ti->nbytes);
    t->text[ti->nbytes] = 0;
    st_close(f); /* e and ti point into it */
    int rows = 0;
    for (char *p = t->text, *q; p && rows < n; p = q ? q + 1 : NULL) {
        q = strchr(p, '\n');
        if (q) *q = 0;
        t->ids[rows++] = p;
    }
    if (rows != n) {
        log_event("warn", "item_table_refused", "version=%u error=\"%d ids for %d rows\"", version,
                  rows, n);
        table_release(t);
        return NULL;
    }
    opt->table = t->rows;
    opt->table_ids = (const char *const *)t->ids;
    opt->table_n = n;
    opt->table_d = width;
    return t;
}

/* ---------------- publishing ---------------- */

/* the served model's item embedding table and ids (version v) as safetensors */
static int write_items(const char *path, uint32_t v, char *err, size_t errlen) {
    infer_model *m = serve_model_get();
    infer_info in = {0};
    if (m) infer_get_info(m, &in);
    if (!m || in.version != v) {
        if (m) infer_release(m);
        snprintf(err, errlen, "version %u is not the served version", v);
        return -1;
    }
    int n = infer_n_items(m);
    float *e = malloc((size_t)n * in.d * sizeof *e + 1);
    size_t cap = 1, used = 0;
    for (int i = 1; i <= n; i++)
        cap += strlen(infer_item_id(m, i)) + 1;
    char *ids = malloc(cap);
    st_writer *w = st_writer_new();
    int rc = -1;
    if (e && ids && w && infer_embeddings(m, e, n) == n) {
        for (int i = 1; i <= n; i++)
            used += (size_t)sprintf(ids + used, i < n ? "%s\n" : "%s", infer_item_id(m, i));
        int64_t es[2] = {n, in.d}, is[1] = {(int64_t)used};
        char vs[16];
        snprintf(vs, sizeof vs, "%u", v);
        rc = st_writer_add(w, "embeddings", ST_F32, 2, es, e) ||
                     st_writer_add(w, "item_ids", ST_U8, 1, is, ids) ||
                     st_writer_meta(w, "format", "iisan-item-table") ||
                     st_writer_meta(w, "version", vs) || st_writer_write(w, path, err, errlen)
                 ? -1
                 : 0;
    }
    if (rc && !err[0]) snprintf(err, errlen, "out of memory");
    st_writer_free(w);
    free(ids);
    free(e);
    infer_release(m);
    return rc;
}

/* the rules a version was promoted by, for its manifest */
static const char *promotion_rules =
    "{\"promotion\":\"validation HR@10 of the retrained model >= the served version's - the "
    "job's tolerance (docs/api.md, /admin/retrain)\",\"protocol\":\"../shared/spec/model.md\"}";

static int publish(uint32_t v, char *err, size_t errlen) {
    char tmp[PATH_MAX], p[PATH_MAX + 64];
    err[0] = 0;
    if (repo_stage(g_cl.repo, v, tmp, sizeof tmp, err, errlen)) return -1;
    snprintf(p, sizeof p, "%s/%s", tmp, REPO_CKPT);
    char *meta = NULL;
    iisan_store *s = store_ix_store(g_srv.ix);
    store_ix_rdlock(g_srv.ix);
    int rc = ckpt_file_export(s, v, p, NULL, NULL, err, errlen);
    if (!rc) store_ckpt_get(s, v, NULL, NULL, &meta, NULL);
    store_ix_unlock(g_srv.ix);
    snprintf(p, sizeof p, "%s/%s", tmp, REPO_ITEMS);
    if (!rc) rc = write_items(p, v, err, errlen);
    if (!rc) rc = repo_commit(g_cl.repo, v, tmp, meta, promotion_rules, err, errlen);
    free(meta);
    if (rc == -2 && !repo_verify(g_cl.repo, v, err, errlen)) rc = 0; /* published before */
    if (rc) return -1;
    if (repo_set_current(g_cl.repo, v, err, errlen)) return -1;
    atomic_store(&followed, v);
    consume_announce(v);
    return 0;
}

void cluster_promoted(uint32_t version) {
    if (g_cl.role != ROLE_TRAINER) return;
    char err[600];
    if (!atomic_load(&lease_held)) {
        log_event("warn", "version_not_published", "version=%u message=\"the lease was lost\"",
                  version);
        return;
    }
    double t0 = serve_now();
    if (publish(version, err, sizeof err))
        log_event("error", "publish_failed", "version=%u error=%s", version,
                  log_q(err, (char[700]){0}, 700));
    else
        log_event("info", "version_published", "version=%u repo=%s seconds=%.3f", version,
                  log_q(g_cl.repo, (char[PATH_MAX + 8]){0}, PATH_MAX + 8), serve_now() - t0);
}

void cluster_rolled_back(uint32_t version) { cluster_promoted(version); }

int cluster_may_train(char *err, size_t errlen) {
    if (g_cl.role == ROLE_STANDALONE) return 0;
    if (g_cl.role == ROLE_REPLICA) {
        snprintf(err, errlen,
                 "this node is a replica: retraining and rollback are the trainer's "
                 "(docs/scaling.md)");
        return -1;
    }
    if (!atomic_load(&lease_held)) {
        snprintf(err, errlen, "this trainer is a standby: another trainer holds the lease");
        return -1;
    }
    return 0;
}

/* ---------------- the lease ---------------- */

/* a new lease holder first stores every repository version it lacks, so its
 * next version number follows the published ones, and serves CURRENT; an
 * empty repository gets the version this trainer serves (the first one) */
static void take_over(void) {
    uint32_t *vs = NULL, n = 0, cur = 0, served;
    char err[600];
    if (!repo_list(g_cl.repo, &vs, &n))
        for (uint32_t i = 0; i < n; i++)
            import_version(vs[i]);
    free(vs);
    if (repo_current(g_cl.repo, &cur, err, sizeof err) == 1 && (served = served_version())) {
        if (publish(served, err, sizeof err))
            log_event("error", "publish_failed", "version=%u error=%s", served,
                      log_q(err, (char[700]){0}, 700));
        else
            log_event("info", "version_published", "version=%u first=true", served);
        return;
    }
    follow_once();
}

static void *lease_main(void *arg) {
    bus *b = bus_new(g_cl.redis, g_cl.prefix, (int)g_cl.timeout_ms);
    char err[300];
    while (b && !atomic_load(&g_cl_stop)) {
        int r = bus_lease(b, g_cl.node, g_cl.lease_ms, err, sizeof err);
        if (r == 1 && !atomic_load(&lease_held)) {
            take_over();
            atomic_store(&lease_held, 1);
            log_event("info", "lease_acquired", "node=%s ttl_ms=%ld", g_cl.node, g_cl.lease_ms);
        } else if (r != 1 && atomic_load(&lease_held)) {
            atomic_store(&lease_held, 0);
            log_event("warn", "lease_lost", "node=%s error=%s", g_cl.node,
                      r < 0 ? log_q(err, (char[400]){0}, 400) : "held_by_another");
        }
        cluster_sleep_ms(g_cl.lease_ms / 3);
    }
    if (b && atomic_load(&lease_held)) bus_lease_release(b, g_cl.node);
    atomic_store(&lease_held, 0);
    bus_free(b);
    return NULL;
}

/* ---------------- start, stop, status ---------------- */

int cluster_configure(char *err, size_t errlen) {
    const serve_config *c = serve_config_acquire();
    cfg_read(c);
    serve_config_release(c);
    if (g_cl.role < 0) {
        snprintf(err, errlen, "role: must be standalone, trainer or replica");
        g_cl.role = ROLE_STANDALONE;
        return -1;
    }
    if (g_cl.role == ROLE_STANDALONE) return 0;
    if (!g_cl.repo[0]) {
        snprintf(err, errlen, "role %s: repo (the model repository directory) is required",
                 role_names[g_cl.role]);
        g_cl.role = ROLE_STANDALONE;
        return -1;
    }
    g_table_source.get = table_get; /* versions load with their published item table */
    g_table_source.release = table_release;
    return 0;
}

int cluster_start(char *err, size_t errlen) {
    if (g_cl.role == ROLE_STANDALONE) return 0;
    atomic_store(&g_cl_stop, 0);
    if (consume_start(err, errlen)) return -1;
    if (pthread_create(&follower, NULL, follow_main, NULL)) {
        snprintf(err, errlen, "cannot start the repository follower");
        return -1;
    }
    follower_started = 1;
    if (g_cl.role == ROLE_TRAINER) {
        if (pthread_create(&leaser, NULL, lease_main, NULL)) {
            snprintf(err, errlen, "cannot start the lease thread");
            return -1;
        }
        leaser_started = 1;
    }
    log_event("info", "cluster_started", "role=%s node=%s redis=%s", role_names[g_cl.role],
              g_cl.node, g_cl.redis);
    return 0;
}

void cluster_stop(void) {
    if (g_cl.role == ROLE_STANDALONE) return;
    atomic_store(&g_cl_stop, 1);
    if (leaser_started) pthread_join(leaser, NULL);
    if (follower_started) pthread_join(follower, NULL);
    leaser_started = follower_started = 0;
    consume_stop();
}

json_t *cluster_status_json(void) {
    json_t *j = json_pack("{s:s}", "role", role_names[g_cl.role]);
    if (!j || g_cl.role == ROLE_STANDALONE) return j;
    json_object_set_new(j, "node_id", json_string(g_cl.node));
    json_object_set_new(j, "lease_held", json_boolean(atomic_load(&lease_held)));
    json_object_set_new(j, "repository_version", json_integer(atomic_load(&followed)));
    consume_status(j);
    return j;
}

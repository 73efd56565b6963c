/* The HTTP API (proto/openapi.yaml, docs/api.md) on libmicrohttpd.
 *
 * Threading: MHD's thread-pool mode (MHD_OPTION_THREAD_POOL_SIZE), each
 * thread running its own epoll loop over its share of the connections: no
 * thread is created per connection, and a slow client costs a socket, not a
 * thread. The two waits do not hold a thread: a POST /interactions waiting
 * for its group commit's fsync (serve_writer.c) and a POST /recommend
 * waiting for its batch (serve_batch.c) suspend their connection
 * (MHD_suspend_connection), and so does a POST /admin/rollback while the
 * loader thread loads its version (serve_load.c); the writer, batch or loader
 * thread resumes it when its work is done, and the HTTP thread serves other
 * connections meanwhile. */
#include <arpa/inet.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cluster/cluster.h"
#include "server/serve.h"
#include "server/serve_state.h"
#include "store/store_ext.h"

enum { ST_NEW = 0, ST_BODY, ST_WAIT, ST_DONE };

typedef struct {
    struct MHD_Connection *conn;
    int route;
    int state;
    double t0;
    char method[12];
    char path[160];
    char *body;
    size_t len, cap;
    int status;
    char code[40]; /* error code of the response, for the log */
    /* POST /interactions while its commit is pending */
    ix_request ixr;
    store_interaction *ixv;
    ix_ticket ticket;
    /* POST /recommend while its batch is pending */
    struct rec_state *rec;
    /* POST /admin/rollback while its load runs on the loader thread */
    struct rb_state *rb;
    int admitted;               /* counted in http_busy */
    int close;                  /* answer with Connection: close (a refusal before the body) */
    int too_large, over_memory; /* the body was dropped: answered 413 / 503 once it ends */
    /* a refusal of a request without a body, answered on the last call so that the
     * connection stays open (libmicrohttpd closes it after an answer at the headers) */
    int pend_status;
    const char *pend_allow;
    char pend_code[40], pend_msg[300];
    size_t reserved;              /* bytes of body memory counted by edge_body_reserve */
    char rid[REQUEST_ID_MAX + 1]; /* X-Request-Id, taken or made */
} req_ctx;

static atomic_long busy; /* admitted requests not yet completed */

long http_busy(void) { return atomic_load(&busy); }

typedef struct rec_state {
    rec_request q;
    infer_model *m;
    uint32_t version;
    int kind; /* the model's MODEL_* */
    json_t *warnings;
    uint32_t *stored;
    int32_t *hist, *excl, *oidx;
    float *oscore;
    rec_ticket t;
} rec_state;

static void rec_free(rec_state *st) {
    if (!st) return;
    json_decref(st->warnings);
    free(st->stored);
    free(st->hist);
    free(st->excl);
    free(st->oidx);
    free(st->oscore);
    if (st->m) infer_release(st->m);
    rec_request_free(&st->q);
    free(st);
}

/* ---------------- responses ---------------- */

static enum MHD_Result send_body(req_ctx *r, int status, char *body, const char *ctype,
                                 const char *allow) {
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(body ? strlen(body) : 0, body ? body : (void *)"",
                                        body ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (r->rid[0]) MHD_add_response_header(resp, "X-Request-Id", r->rid);
    if (allow) MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
    if (status == 401) MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
    /* a 503 is temporary: stopping, the store full, cluster mode's bus unavailable */
    if (status == 503) MHD_add_response_header(resp, "Retry-After", "1");
    if (atomic_load(&g_srv.stopping) || r->close)
        MHD_add_response_header(resp, "Connection", "close");
    enum MHD_Result ok = MHD_queue_response(r->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    r->status = status;
    r->state = ST_DONE;
    return ok;
}

static enum MHD_Result send_json(req_ctx *r, int status, json_t *j) {
    char *s = json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(7));
    json_decref(j);
    if (!s) return MHD_NO;
    size_t n = strlen(s);
    char *t = realloc(s, n + 2); /* newline-terminated for curl users */
    if (t) {
        t[n] = '\n';
        t[n + 1] = '\0';
        s = t;
    }
    return send_body(r, status, s, "application/json", NULL);
}

static enum MHD_Result send_error(req_ctx *r, int status, const char *code, const char *allow,
                                  const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static enum MHD_Result send_error(req_ctx *r, int status, const char *code, const char *allow,
                                  const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(r->code, sizeof r->code, "%s", code);
    json_t *j = json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", msg);
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (!s) return MHD_NO;
    size_t n = strlen(s);
    char *t = realloc(s, n + 2);
    if (t) {
        t[n] = '\n';
        t[n + 1] = '\0';
        s = t;
    }
    return send_body(r, status, s, "application/json", allow);
}

static enum MHD_Result send_req_error(req_ctx *r, const req_error *e) {
    return send_error(r, e->status, e->code, NULL, "%s", e->message);
}

/* a status and body from cluster mode's write path (cluster/cluster.h) */
static enum MHD_Result send_status_body(req_ctx *r, int status, json_t *body) {
    if (!body) return send_error(r, 500, "internal", NULL, "out of memory");
    if (status >= 400) {
        json_t *code = json_object_get(json_object_get(body, "error"), "code");
        snprintf(r->code, sizeof r->code, "%s", code ? json_string_value(code) : "error");
    }
    return send_json(r, status, body);
}

/* ---------------- routing ---------------- */

typedef struct {
    const char *path;
    int prefix; /* path is a prefix: "/users/" + id */
    int route;
    const char *allow;
} route_def;

static const route_def routes[] = {
    {"/recommend", 0, ROUTE_RECOMMEND, "POST"},
    {"/interactions", 0, ROUTE_INTERACTIONS, "POST"},
    {"/users/", 1, ROUTE_USER, "GET, HEAD"},
    {"/healthz", 0, ROUTE_HEALTHZ, "GET, HEAD"},
    {"/metrics", 0, ROUTE_METRICS, "GET, HEAD"},
    {"/admin/status", 0, ROUTE_ADMIN_STATUS, "GET, HEAD"},
    {"/admin/reload", 0, ROUTE_ADMIN_RELOAD, "POST"},
    {"/items", 0, ROUTE_ITEMS, "POST"},
    {"/items/", 1, ROUTE_ITEM, "GET, HEAD, DELETE"},
    {"/admin/retrain", 0, ROUTE_ADMIN_RETRAIN, "POST"},
    {"/admin/jobs/", 1, ROUTE_ADMIN_JOB, "GET, HEAD"},
    {"/admin/rollback", 0, ROUTE_ADMIN_ROLLBACK, "POST"},
    {"/livez", 0, ROUTE_LIVEZ, "GET, HEAD"},
    {"/readyz", 0, ROUTE_READYZ, "GET, HEAD"},
};
#define NROUTES ((int)(sizeof routes / sizeof routes[0]))

static const route_def *find_route(const char *url) {
    for (int i = 0; i < NROUTES; i++) {
        size_t n = strlen(routes[i].path);
        if (routes[i].prefix ? !strncmp(url, routes[i].path, n) && url[n]
                             : !strcmp(url, routes[i].path))
            return &routes[i];
    }
    return NULL;
}

/* method is one of the route's comma-separated Allow list */
static int method_allowed(const route_def *rd, const char *method) {
    size_t n = strlen(method);
    for (const char *p = rd->allow; *p;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && !strncmp(p, method, n)) return 1;
        if (!e) break;
        p = e + 1;
        while (*p == ' ')
            p++;
    }
    return 0;
}

/* ---------------- admin ---------------- */

static int token_ok(struct MHD_Connection *c, const char *token) {
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncmp(h, "Bearer ", 7)) return 0;
    h += 7;
    size_t a = strlen(h), b = strlen(token);
    unsigned char diff = (unsigned char)(a != b);
    for (size_t i = 0; i < b; i++) /* constant time in the token's length */
        diff |= (unsigned char)((i < a ? (unsigned char)h[i] : 0) ^ (unsigned char)token[i]);
    return diff == 0;
}

static enum MHD_Result admin_gate(req_ctx *r, const serve_config *cfg) {
    if (!cfg->admin_token[0])
        return send_error(r, 403, "admin_disabled", NULL,
                          "the admin endpoints are disabled: set admin_token in the "
                          "configuration");
    if (!token_ok(r->conn, cfg->admin_token))
        return send_error(r, 401, "unauthorized", NULL,
                          "this endpoint needs 'Authorization: Bearer <admin_token>'");
    return MHD_YES;
}

static json_t *model_json(infer_model *m) {
    if (!m) return json_null();
    infer_info in;
    infer_get_info(m, &in);
    json_error_t je;
    json_t *meta = json_loads(in.meta, 0, &je);
    json_t *o =
        json_pack("{s:I,s:s,s:i,s:i,s:i,s:I,s:i,s:f,s:o}", "version", (json_int_t)in.version,
                  "kind", in.kind == MODEL_IISAN ? "iisan" : "sasrec-id", "items", in.n_items, "n",
                  in.n, "d", in.d, "params", (json_int_t)in.params, "contexts", in.contexts,
                  "load_seconds", in.load_seconds, "meta", meta ? meta : json_string(in.meta));
    json_object_set_new(o, "describe", json_string(in.describe));
    json_object_set_new(o, "added_items", json_integer(infer_n_items(m) - in.n_items));
    json_object_set_new(o, "max_batch", json_integer(in.max_batch));
    json_object_set_new(o, "ranked_requests", json_integer(in.queries));
    json_object_set_new(o, "mean_items_scored", json_real(in.mean_scored));
    return o;
}

static enum MHD_Result do_admin_status(req_ctx *r, const serve_config *cfg) {
    json_t *conf = json_object();
    for (int i = 0; i < serve_noptions; i++) {
        const serve_option *o = &serve_options[i];
        const char *p = (const char *)cfg + o->off;
        if (!strcmp(o->name, "admin_token")) continue;
        if (o->type == CFG_STR)
            json_object_set_new(conf, o->name, json_string(p));
        else {
            long v;
            memcpy(&v, p, sizeof v);
            json_object_set_new(conf, o->name,
                                o->type == CFG_BOOL ? json_boolean(v) : json_integer(v));
        }
    }
    uint64_t logged = 0;
    uint32_t items = 0, users = 0;
    store_ix_counts(g_srv.ix, &logged, &items, &users);
    store_usage u = {0};
    store_usage_get(store_ix_store(g_srv.ix), &u);
    infer_model *m = serve_model_get();
    json_t *j = json_pack("{s:o,s:o,s:{s:i,s:i,s:I,s:I,s:I},s:I,s:I,s:f,s:s}", "model",
                          model_json(m), "config", conf, "store", "items", (int)items, "users",
                          (int)users, "logged_interactions", (json_int_t)logged, "map_bytes",
                          (json_int_t)u.map_bytes, "used_bytes", (json_int_t)u.used_bytes,
                          "in_flight", (json_int_t)atomic_load(&g_srv.in_flight),
                          "pending_interactions", (json_int_t)writer_pending(g_srv.writer),
                          "uptime_s", serve_now() - g_srv.started, "backend", g_srv.be->name);
    json_object_set_new(j, "interactions_since_last_run",
                        json_integer((json_int_t)admin_interactions_since_run()));
    int last = admin_last_job();
    json_t *lj = last ? admin_job_json(last) : NULL;
    json_object_set_new(j, "last_job", lj ? lj : json_null());
    json_object_set_new(j, "cluster", cluster_status_json());
    if (m) infer_release(m);
    return send_json(r, 200, j);
}

/* ---------------- GET /healthz, /metrics ---------------- */

static enum MHD_Result do_healthz(req_ctx *r) {
    infer_model *m = serve_model_get();
    infer_info in = {0};
    if (m) infer_get_info(m, &in);
    json_t *j =
        json_pack("{s:s,s:b,s:o,s:f}", "status", atomic_load(&g_srv.stopping) ? "stopping" : "ok",
                  "ready", m != NULL, "model_version", m ? json_integer(in.version) : json_null(),
                  "uptime_s", serve_now() - g_srv.started);
    if (m) infer_release(m);
    return send_json(r, 200, j);
}

/* the process answers: 200 while the HTTP threads run (a stop included) */
static enum MHD_Result do_livez(req_ctx *r) {
    return send_json(
        r, 200, json_pack("{s:s,s:f}", "status", "alive", "uptime_s", serve_now() - g_srv.started));
}

/* ready for traffic: a model is served, none is loading in its place, no stop is under way */
static enum MHD_Result do_readyz(req_ctx *r) {
    infer_model *m = serve_model_get();
    infer_info in = {0};
    if (m) infer_get_info(m, &in);
    const char *reason = atomic_load(&g_srv.stopping) ? "stopping"
                         : m                          ? NULL
                         : metrics_loading()          ? "loading"
                                                      : "no_model";
    json_t *j = json_pack("{s:b,s:o}", "ready", reason == NULL, "model_version",
                          m ? json_integer(in.version) : json_null());
    if (m) infer_release(m);
    if (reason) json_object_set_new(j, "reason", json_string(reason));
    return send_json(r, reason ? 503 : 200, j);
}

static enum MHD_Result do_metrics(req_ctx *r) {
    infer_model *m = serve_model_get();
    infer_info in = {0};
    if (m) {
        infer_get_info(m, &in);
        infer_release(m);
    }
    char *s =
        metrics_render(in.version, atomic_load(&g_srv.in_flight), writer_pending(g_srv.writer));
    if (!s) return send_error(r, 500, "internal", NULL, "out of memory");
    return send_body(r, 200, s, "text/plain; version=0.0.4; charset=utf-8", NULL);
}

/* ---------------- GET /users/{id} ---------------- */

static enum MHD_Result do_user(req_ctx *r, const char *id) {
    if (!req_valid_id(id, strlen(id)))
        return send_error(r, 400, "invalid_id", NULL,
                          "not a valid user id: ids are 1..%d bytes without spaces or control "
                          "characters",
                          REQ_ID_MAX);
    uint32_t *items = NULL, n = 0;
    int rc = store_ix_user_get(g_srv.ix, id, &items, &n);
    if (rc == IISAN_ENOTFOUND)
        return send_error(r, 404, "unknown_user", NULL, "no stored interactions for user '%s'", id);
    if (rc) return send_error(r, 500, "store_error", NULL, "%s", iisan_strerror(rc));
    json_t *arr = json_array();
    char iid[600];
    store_ix_rdlock(g_srv.ix);
    for (uint32_t i = 0; i < n; i++) {
        if (store_item_get(store_ix_store(g_srv.ix), items[i], iid, sizeof iid, NULL, 0))
            snprintf(iid, sizeof iid, "#%u", items[i]);
        json_array_append_new(arr, json_string(iid));
    }
    store_ix_unlock(g_srv.ix);
    free(items);
    return send_json(
        r, 200, json_pack("{s:s,s:I,s:o}", "user_id", id, "length", (json_int_t)n, "items", arr));
}

/* ---------------- POST /recommend ---------------- */

static void warn(json_t *w, const char *code, const char *field, const char *id, const char *msg) {
    json_t *o = json_pack("{s:s,s:s,s:s}", "code", code, "field", field, "message", msg);
    if (id) json_object_set_new(o, "item_id", json_string(id));
    json_array_append_new(w, o);
}

static req_limits limits_of(const serve_config *cfg) {
    req_limits l = {cfg->max_k, cfg->max_history, cfg->max_exclude, cfg->max_interactions};
    return l;
}

static enum MHD_Result rec_respond(req_ctx *r, int cnt, int fallback) {
    rec_state *st = r->rec;
    json_t *items = json_array();
    for (int i = 0; i < cnt; i++)
        json_array_append_new(items,
                              json_pack("{s:s,s:f}", "item_id", infer_item_id(st->m, st->oidx[i]),
                                        "score", (double)st->oscore[i]));
    json_t *j = json_pack("{s:o,s:I,s:s}", "items", items, "model_version", (json_int_t)st->version,
                          "model", st->kind == MODEL_IISAN ? "iisan" : "sasrec-id");
    if (fallback) json_object_set_new(j, "fallback", json_string("popularity"));
    if (json_array_size(st->warnings)) json_object_set(j, "warnings", st->warnings);
    enum MHD_Result ret = send_json(r, 200, j);
    rec_free(st);
    r->rec = NULL;
    return ret;
}

static void rec_resume(rec_ticket *t) {
    req_ctx *r = t->arg;
    MHD_resume_connection(r->conn);
}

static enum MHD_Result do_recommend(req_ctx *r, const serve_config *cfg) {
    req_limits lim = limits_of(cfg);
    req_error e;
    rec_state *st = calloc(1, sizeof *st);
    if (!st) return send_error(r, 500, "internal", NULL, "out of memory");
    r->rec = st;
    if (rec_request_parse(r->body, r->len, &lim, &st->q, &e)) return send_req_error(r, &e);
    rec_request *q = &st->q;
    infer_model *m = st->m = serve_model_get();
    if (!m)
        return send_error(r, 503, "no_model", NULL,
                          "no model is loaded: train one (iisan train) and send SIGHUP or POST "
                          "/admin/reload");
    infer_info in;
    infer_get_info(m, &in);
    st->version = in.version;
    st->kind = in.kind;
    st->warnings = json_array();
    uint32_t ns = 0;
    char msg[700];
    if (q->k > in.max_k) /* the configuration grew past the loaded model's capacity */
        return send_error(r, 400, "k_too_large", NULL, "'k' is %ld; the limit is %d", q->k,
                          in.max_k);
    if (q->user_id) {
        int rc = store_ix_user_get(g_srv.ix, q->user_id, &st->stored, &ns);
        if (rc == IISAN_ENOTFOUND) {
            snprintf(msg, sizeof msg, "user '%s' has no stored interactions", q->user_id);
            warn(st->warnings, "unknown_user", "user_id", NULL, msg);
        } else if (rc) {
            return send_error(r, 500, "store_error", NULL, "reading user '%s': %s", q->user_id,
                              iisan_strerror(rc));
        }
    }
    int32_t *hist = st->hist = malloc(((size_t)ns + q->n_history + 1) * sizeof *hist);
    int32_t *excl = st->excl = malloc(((size_t)in.max_exclude + 1) * sizeof *excl);
    st->oidx = malloc((size_t)q->k * sizeof *st->oidx);
    st->oscore = malloc((size_t)q->k * sizeof *st->oscore);
    if (!hist || !excl || !st->oidx || !st->oscore)
        return send_error(r, 500, "internal", NULL, "out of memory");
    int nh = 0, not_in_model = 0;
    for (uint32_t i = 0; i < ns; i++) {
        int idx = infer_lookup_cat(m, st->stored[i]);
        if (idx)
            hist[nh++] = idx;
        else
            not_in_model++;
    }
    if (not_in_model) {
        snprintf(msg, sizeof msg,
                 "%d of user '%s''s %u stored interactions are with items that model version "
                 "%u does not know; they were skipped",
                 not_in_model, q->user_id, ns, in.version);
        warn(st->warnings, "not_in_model", "user_id", NULL, msg);
    }
    for (size_t i = 0; i < q->n_history; i++) {
        int idx = infer_lookup(m, q->history[i]);
        if (idx)
            hist[nh++] = idx;
        else {
            snprintf(msg, sizeof msg,
                     "history[%zu]: item id not known to model version %u; skipped", i, in.version);
            warn(st->warnings, "unknown_item", "history", q->history[i], msg);
        }
    }
    int ne = 0;
    for (size_t i = 0; i < q->n_exclude && ne < in.max_exclude; i++) {
        int idx = infer_lookup(m, q->exclude[i]);
        if (idx)
            excl[ne++] = idx;
        else {
            snprintf(msg, sizeof msg,
                     "exclude[%zu]: item id not known to model version %u; skipped", i, in.version);
            warn(st->warnings, "unknown_item", "exclude", q->exclude[i], msg);
        }
    }
    /* the most recent max_history items of the history are excluded as well */
    if (q->exclude_history)
        for (int i = nh - 1; i >= 0 && nh - i <= cfg->max_history && ne < in.max_exclude; i--)
            excl[ne++] = hist[i];
    if (nh == 0) {
        metrics_fallback();
        return rec_respond(r, infer_popular(m, excl, ne, (int)q->k, st->oidx, st->oscore), 1);
    }
    /* to a batch thread; the connection sleeps until its batch is done */
    st->t.m = m;
    st->t.q = (infer_query){hist, nh, excl, ne, (int)q->k, st->oidx, st->oscore, -1};
    st->t.notify = rec_resume;
    st->t.arg = r;
    r->state = ST_WAIT;
    MHD_suspend_connection(r->conn); /* first: the batch may finish as soon as it is queued */
    if (batcher_submit(g_srv.batcher, &st->t)) {
        st->t.q.cnt = REC_STOPPING;
        atomic_store(&st->t.done, 1);
        MHD_resume_connection(r->conn);
    }
    return MHD_YES;
}

static enum MHD_Result finish_recommend(req_ctx *r) {
    rec_state *st = r->rec;
    if (st->t.q.cnt == REC_STOPPING)
        return send_error(r, 503, "shutting_down", NULL, "the server is stopping; retry");
    if (st->t.q.cnt == REC_BACKEND_FAILED)
        return send_error(r, 503, "backend_failed", NULL,
                          "the compute backend has failed; the daemon needs a restart");
    if (st->t.q.cnt < 0)
        return send_error(r, 500, "internal", NULL, "inference refused the request");
    return rec_respond(r, st->t.q.cnt, 0);
}

/* ---------------- POST /interactions ---------------- */

static void ticket_resume(ix_ticket *t) {
    req_ctx *r = t->arg;
    MHD_resume_connection(r->conn);
}

static enum MHD_Result do_interactions(req_ctx *r, const serve_config *cfg) {
    req_limits lim = limits_of(cfg);
    req_error e;
    if (ix_request_parse(r->body, r->len, &lim, &r->ixr, &e)) return send_req_error(r, &e);
    r->ixv = malloc(r->ixr.n * sizeof *r->ixv);
    if (!r->ixv) return send_error(r, 500, "internal", NULL, "out of memory");
    int64_t now = (int64_t)time(NULL);
    for (size_t i = 0; i < r->ixr.n; i++) {
        const ix_entry *x = &r->ixr.v[i];
        uint32_t cat;
        int rc = store_ix_item_lookup(g_srv.ix, x->item_id, &cat);
        if (rc == IISAN_ENOTFOUND)
            return send_error(r, 422, "unknown_item", NULL,
                              "interaction %zu: item id '%s' is not in the catalogue; nothing "
                              "was stored",
                              i, x->item_id);
        if (rc) return send_error(r, 500, "store_error", NULL, "%s", iisan_strerror(rc));
        r->ixv[i].user_id = x->user_id;
        r->ixv[i].item = cat;
        r->ixv[i].timestamp = x->timestamp >= 0 ? x->timestamp : now;
    }
    if (cluster_role() != ROLE_STANDALONE) { /* to the bus, answered once durable there */
        json_t *body = NULL;
        int status = cluster_post_interactions(&r->ixr, r->ixv, &body);
        return send_status_body(r, status, body);
    }
    memset(&r->ticket, 0, sizeof r->ticket);
    r->ticket.v = r->ixv;
    r->ticket.n = r->ixr.n;
    r->ticket.notify = ticket_resume;
    r->ticket.arg = r;
    r->state = ST_WAIT;
    /* suspend first: the writer may resume as soon as the ticket is queued */
    MHD_suspend_connection(r->conn);
    if (writer_submit(g_srv.writer, &r->ticket)) {
        r->ticket.rc = IISAN_EIO;
        snprintf(r->ticket.err, sizeof r->ticket.err, "the server is stopping");
        r->ticket.done = 1;
        MHD_resume_connection(r->conn);
    }
    return MHD_YES;
}

static enum MHD_Result finish_interactions(req_ctx *r) {
    ix_ticket *t = &r->ticket;
    if (t->rc) {
        if (!strcmp(t->err, "the server is stopping"))
            return send_error(r, 503, "shutting_down", NULL, "the server is stopping; retry");
        if (t->rc == IISAN_ENOSPC)
            return send_error(r, 507, "insufficient_storage", NULL,
                              "the interactions were not stored (%s); free space and retry",
                              t->err);
        if (t->rc == IISAN_EFULL)
            return send_error(r, 503, "store_full", NULL,
                              "the interactions were not stored: %s; retry later", t->err);
        return send_error(r, 500, "commit_failed", NULL, "the interactions were not stored: %s",
                          t->err);
    }
    return send_json(r, 200,
                     json_pack("{s:I,s:b,s:I}", "accepted", (json_int_t)t->n, "durable", 1,
                               "first_seq", (json_int_t)t->first));
}

/* ---------------- /items ---------------- */

static enum MHD_Result do_items_post(req_ctx *r, const serve_config *cfg) {
    req_limits lim = limits_of(cfg);
    items_request q;
    req_error e;
    if (items_request_parse(r->body, r->len, &lim, &q, &e)) return send_req_error(r, &e);
    json_t *body = NULL;
    int status;
    if (cluster_role() != ROLE_STANDALONE) { /* every node applies it from the bus */
        items_request_free(&q);
        status = cluster_post_items(r->body, r->len, &body);
    } else {
        status = items_post(&q, &body);
        items_request_free(&q);
    }
    return send_status_body(r, status, body);
}

static enum MHD_Result do_item(req_ctx *r, const char *id) {
    if (!req_valid_id(id, strlen(id)))
        return send_error(r, 400, "invalid_id", NULL,
                          "not a valid item id: ids are 1..%d bytes without spaces or control "
                          "characters",
                          REQ_ID_MAX);
    if (!strcmp(r->method, "DELETE") && cluster_role() != ROLE_STANDALONE) {
        json_t *body = NULL;
        int status = cluster_delete_item(id, &body);
        return send_status_body(r, status, body);
    }
    if (!strcmp(r->method, "DELETE")) {
        char err[300];
        uint32_t cat;
        int rc = store_ix_item_delete(g_srv.ix, id, &cat, err, sizeof err);
        if (rc == IISAN_ENOTFOUND)
            return send_error(r, 404, "unknown_item", NULL, "item id '%s' is not in the catalogue",
                              id);
        if (rc == IISAN_ENOSPC) return send_error(r, 507, "insufficient_storage", NULL, "%s", err);
        if (rc) return send_error(r, rc == IISAN_EFULL ? 503 : 500, "store_error", NULL, "%s", err);
        infer_model *m = serve_model_get();
        if (m) {
            int midx = infer_lookup_cat(m, cat);
            if (midx) infer_ban(m, midx, 1);
            infer_release(m);
        }
        return send_json(r, 200,
                         json_pack("{s:s,s:I,s:b}", "item_id", id, "catalogue_index",
                                   (json_int_t)cat, "deleted", 1));
    }
    store_item_info *info = malloc(sizeof *info);
    if (!info) return send_error(r, 500, "internal", NULL, "out of memory");
    int rc = store_ix_item_info(g_srv.ix, id, info);
    if (rc) {
        free(info);
        if (rc == IISAN_ENOTFOUND)
            return send_error(r, 404, "unknown_item", NULL, "item id '%s' is not in the catalogue",
                              id);
        return send_error(r, 500, "store_error", NULL, "%s", iisan_strerror(rc));
    }
    infer_model *m = serve_model_get();
    int midx = m ? infer_lookup_cat(m, info->idx) : 0;
    json_t *j = json_pack("{s:s,s:s,s:I,s:b,s:b,s:{s:b,s:b}}", "item_id", id, "title", info->title,
                          "catalogue_index", (json_int_t)info->idx, "deleted", info->deleted,
                          "in_model", midx != 0, "states", "text", info->has_state[IISAN_TEXT],
                          "image", info->has_state[IISAN_IMAGE]);
    if (m) infer_release(m);
    free(info);
    return send_json(r, 200, j);
}

/* ---------------- /admin/retrain, /admin/jobs/{id}, /admin/rollback ---------------- */

static enum MHD_Result do_retrain(req_ctx *r) {
    retrain_request p;
    req_error e;
    if (retrain_request_parse(r->body ? r->body : "", r->len, &p, &e)) return send_req_error(r, &e);
    int id;
    char err[200];
    if (cluster_may_train(err, sizeof err))
        return send_error(r, 409, "not_trainer", NULL, "%s", err);
    if (admin_retrain_start(&p, "admin", &id, err, sizeof err))
        return send_error(r, 409, "job_running", NULL, "%s", err);
    return send_json(r, 202, json_pack("{s:i,s:s}", "job_id", id, "state", "queued"));
}

static enum MHD_Result do_job(req_ctx *r, const char *ids) {
    char *end;
    long id = strtol(ids, &end, 10);
    json_t *j = (*ids && !*end && id > 0 && id < 1000000000) ? admin_job_json((int)id) : NULL;
    if (!j)
        return send_error(r, 404, "unknown_job", NULL, "no job '%s' (jobs live in memory)", ids);
    return send_json(r, 200, j);
}

/* A rollback loads a model: on the loader thread (serve_load.c), the connection asleep
 * meanwhile, so that this HTTP thread keeps serving its other connections. */
typedef struct rb_state {
    loader_job job;
    req_ctx *r;
    uint32_t version, from, to;
    int rc;
    char err[300];
} rb_state;

static void rb_run(loader_job *j) {
    rb_state *b = j->arg;
    b->rc = admin_rollback(b->version, &b->from, &b->to, b->err, sizeof b->err);
}

static void rb_resume(loader_job *j) {
    rb_state *b = j->arg;
    MHD_resume_connection(b->r->conn);
}

static enum MHD_Result do_rollback(req_ctx *r) {
    rollback_request p;
    req_error e;
    if (rollback_request_parse(r->body ? r->body : "", r->len, &p, &e))
        return send_req_error(r, &e);
    char err[300];
    if (cluster_may_train(err, sizeof err))
        return send_error(r, 409, "not_trainer", NULL, "%s", err);
    rb_state *b = r->rb = calloc(1, sizeof *b);
    if (!b) return send_error(r, 500, "internal", NULL, "out of memory");
    *b = (rb_state){.job = {.run = rb_run, .notify = rb_resume, .arg = b},
                    .r = r,
                    .version = (uint32_t)p.version};
    r->state = ST_WAIT;
    MHD_suspend_connection(r->conn); /* first: the load may end as soon as it is queued */
    if (loader_submit(&b->job)) {
        b->job.refused = 1;
        atomic_store(&b->job.done, 1);
        MHD_resume_connection(r->conn);
    }
    return MHD_YES;
}

static enum MHD_Result finish_rollback(req_ctx *r) {
    rb_state *b = r->rb;
    if (b->job.refused)
        return send_error(r, 503, "shutting_down", NULL, "the server is stopping; retry");
    if (b->rc == IISAN_ENOTFOUND) return send_error(r, 404, "unknown_version", NULL, "%s", b->err);
    if (b->rc) return send_error(r, 500, "model_load_failed", NULL, "%s", b->err);
    return send_json(r, 200,
                     json_pack("{s:I,s:I,s:b}", "model_version", (json_int_t)b->to,
                               "previous_version", (json_int_t)b->from, "pinned", 1));
}

/* ---------------- MHD callbacks ---------------- */

static enum MHD_Result dispatch(req_ctx *r, const char *url) {
    const serve_config *cfg = serve_config_acquire();
    enum MHD_Result ret;
    switch (r->route) {
    case ROUTE_RECOMMEND: ret = do_recommend(r, cfg); break;
    case ROUTE_INTERACTIONS: ret = do_interactions(r, cfg); break;
    case ROUTE_USER: /* user histories are personal data: the admin token */
        ret = admin_gate(r, cfg);
        if (r->state != ST_DONE) ret = do_user(r, url + strlen("/users/"));
        break;
    case ROUTE_HEALTHZ: ret = do_healthz(r); break;
    case ROUTE_LIVEZ: ret = do_livez(r); break;
    case ROUTE_READYZ: ret = do_readyz(r); break;
    case ROUTE_METRICS: ret = do_metrics(r); break;
    case ROUTE_ADMIN_STATUS:
        ret = admin_gate(r, cfg);
        if (r->state != ST_DONE) ret = do_admin_status(r, cfg);
        break;
    case ROUTE_ADMIN_RELOAD:
        ret = admin_gate(r, cfg);
        if (r->state != ST_DONE) {
            kill(getpid(), SIGHUP); /* the main thread reloads (config and model) */
            ret = send_json(r, 202, json_pack("{s:s}", "status", "reloading"));
        }
        break;
    case ROUTE_ITEMS:
        ret = admin_gate(r, cfg);
        if (r->state != ST_DONE) ret = do_items_post(r, cfg);
        break;
    case ROUTE_ITEM:
        ret = strcmp(r->method, "DELETE") ? MHD_YES : admin_gate(r, cfg);
        if (r->state != ST_DONE) ret = do_item(r, url + strlen("/items/"));
        break;
    case ROUTE_ADMIN_RETRAIN:
        ret = admin_gate(r, cfg);
        if (r->state != ST_DONE) ret = do_retrain(r);
        break;
    case ROUTE_ADMIN_JOB:
        ret = admin_gate(r, cfg);
        if (r->state != ST_DONE) ret = do_job(r, url + strlen("/admin/jobs/"));
        break;
    case ROUTE_ADMIN_ROLLBACK:
        ret = admin_gate(r, cfg);
        if (r->state != ST_DONE) ret = do_rollback(r);
        break;
    default: ret = send_error(r, 404, "not_found", NULL, "no such route"); break;
    }
    serve_config_release(cfg);
    return ret;
}

/* refuses r: at once (closing) when a body comes, else on the last call (keep-alive) */
static enum MHD_Result refuse(req_ctx *r, int status, const char *code, const char *allow,
                              const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static enum MHD_Result refuse(req_ctx *r, int status, const char *code, const char *allow,
                              const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->pend_msg, sizeof r->pend_msg, fmt, ap);
    va_end(ap);
    if (edge_has_body(r->conn)) {
        r->close = 1;
        return send_error(r, status, code, allow, "%s", r->pend_msg);
    }
    r->close = 0;
    r->pend_status = status;
    r->pend_allow = allow;
    snprintf(r->pend_code, sizeof r->pend_code, "%s", code);
    r->state = ST_BODY;
    return MHD_YES;
}

static void drop_body(req_ctx *r) {
    free(r->body);
    r->body = NULL;
    r->len = r->cap = 0;
    edge_body_release(r->reserved);
    r->reserved = 0;
}

/* The checks a request passes before its route, on the first call (headers only).
 * A refusal here is answered at once with Connection: close (the body, if any, is never
 * read); otherwise the request waits for its body, and dispatch runs on the last call,
 * after the whole request is read, so that the connection stays open for the next. */
static enum MHD_Result begin_request(req_ctx *r, const char *url, const char *method) {
    struct MHD_Connection *conn = r->conn;
    char msg[300];
    const route_def *rd = find_route(url);
    r->route = rd ? rd->route : ROUTE_OTHER;
    r->close = 1; /* for the refusals below */
    /* admitted first, then the stop checked: the stop sets stopping, then waits for busy to
     * fall to 0, so no admitted request is missed */
    atomic_fetch_add(&busy, 1);
    r->admitted = 1;
    if (atomic_load(&g_srv.stopping) && r->route != ROUTE_HEALTHZ && r->route != ROUTE_METRICS &&
        r->route != ROUTE_LIVEZ && r->route != ROUTE_READYZ) {
        atomic_fetch_sub(&busy, 1);
        r->admitted = 0;
        return send_error(r, 503, "shutting_down", NULL, "the server is stopping; retry");
    }
    if (edge_length_conflict(conn, msg, sizeof msg))
        return send_error(r, 400, "bad_framing", NULL, "%s", msg);
    const serve_config *cfg = serve_config_acquire();
    int admit = edge_admit(conn, cfg, msg, sizeof msg);
    int host_ok = edge_host_ok(conn, cfg->allowed_hosts);
    long max = cfg->max_body_bytes, mem = cfg->max_body_memory_bytes;
    serve_config_release(cfg);
    if (admit) return send_error(r, 503, "overloaded", NULL, "%s", msg);
    if (!host_ok) {
        char hb[200];
        const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST);
        return refuse(r, 421, "host_not_allowed", NULL,
                      "Host %s is not one this server answers for (allowed_hosts)",
                      h ? log_q(h, hb, sizeof hb) : "(none)");
    }
    if (!rd) {
        char b[200];
        return refuse(r, 404, "not_found", NULL, "no route %s; see proto/openapi.yaml for the API",
                      log_q(url, b, sizeof b));
    }
    if (!method_allowed(rd, method))
        return refuse(r, 405, "method_not_allowed", rd->allow,
                      "%s does not accept %s (allowed: %s)", rd->path, method, rd->allow);
    if (!strcmp(method, "POST") && edge_has_body(conn) && !edge_json_type(conn))
        return send_error(r, 415, "unsupported_media_type", NULL,
                          "a POST body must be sent as 'Content-Type: application/json'");
    const char *cl =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    unsigned long long len = cl ? strtoull(cl, NULL, 10) : 0;
    if (len > (unsigned long long)max)
        return send_error(r, 413, "body_too_large", NULL,
                          "the request body is %s bytes; the limit is %ld", cl, max);
    if (len) { /* the body's memory, reserved before any of it is read */
        if (edge_body_reserve(len + 1, mem))
            return send_error(r, 503, "body_memory", NULL,
                              "the server holds too much unfinished request data "
                              "(max_body_memory_bytes); retry");
        r->reserved = len + 1;
    }
    r->close = 0;
    r->state = ST_BODY;
    return MHD_YES;
}

/* one piece of the body, kept under max_body_bytes (per request) and
 * max_body_memory_bytes (all requests together; a body of known length reserved its
 * share at the headers). Past either the body is dropped as it comes and the request
 * answered once it ends (libmicrohttpd cannot answer in the middle of a body). */
static enum MHD_Result body_piece(req_ctx *r, const char *data, size_t n) {
    if (r->too_large || r->over_memory) return MHD_YES;
    const serve_config *cfg = serve_config_acquire();
    size_t max = (size_t)cfg->max_body_bytes;
    long mem = cfg->max_body_memory_bytes;
    serve_config_release(cfg);
    size_t need = r->len + n + 1;
    if (need - 1 > max) { /* chunked, or more than its Content-Length said */
        drop_body(r);
        r->too_large = 1;
        return MHD_YES;
    }
    if (need > r->cap) {
        size_t nc = r->cap ? r->cap : 4096;
        while (nc < need)
            nc *= 2;
        if (r->reserved >= need && nc > r->reserved) nc = r->reserved; /* its Content-Length */
        if (nc > r->reserved) {
            if (edge_body_reserve(nc - r->reserved, mem)) {
                drop_body(r);
                r->over_memory = 1;
                return MHD_YES;
            }
            r->reserved = nc;
        }
        char *p = realloc(r->body, nc);
        if (!p) return MHD_NO;
        r->body = p;
        r->cap = nc;
    }
    memcpy(r->body + r->len, data, n);
    r->len += n;
    r->body[r->len] = '\0';
    return MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls) {
    (void)cls;
    (void)version;
    req_ctx *r = *con_cls;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r) return MHD_NO;
        *con_cls = r;
        atomic_fetch_add(&g_srv.in_flight, 1);
        r->conn = conn;
        r->t0 = serve_now();
        snprintf(r->method, sizeof r->method, "%s", method);
        snprintf(r->path, sizeof r->path, "%s", url);
        edge_request_id(conn, r->rid, sizeof r->rid);
        return begin_request(r, url, method);
    }
    if (r->state == ST_DONE) {
        *upload_data_size = 0; /* a refused request's body is dropped */
        return MHD_YES;
    }
    if (*upload_data_size) { /* a piece of the body */
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        return body_piece(r, upload_data, n);
    }
    if (r->state == ST_WAIT) { /* resumed by the writer, a batch thread or the loader */
        if (r->route == ROUTE_RECOMMEND)
            return atomic_load(&r->rec->t.done) ? finish_recommend(r) : MHD_YES;
        if (r->route == ROUTE_ADMIN_ROLLBACK)
            return atomic_load(&r->rb->job.done) ? finish_rollback(r) : MHD_YES;
        if (!r->ticket.done) return MHD_YES;
        return finish_interactions(r);
    }
    if (r->pend_status)
        return send_error(r, r->pend_status, r->pend_code, r->pend_allow, "%s", r->pend_msg);
    if (r->over_memory || r->too_large) {
        const serve_config *cfg = serve_config_acquire();
        long max = cfg->max_body_bytes;
        serve_config_release(cfg);
        r->close = 1;
        if (r->over_memory)
            return send_error(r, 503, "body_memory", NULL,
                              "the server holds too much unfinished request data "
                              "(max_body_memory_bytes); retry");
        return send_error(r, 413, "body_too_large", NULL,
                          "the request body is larger than the limit of %ld bytes", max);
    }
    return dispatch(r, url);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)cls;
    (void)conn;
    req_ctx *r = *con_cls;
    if (!r) return;
    double dt = serve_now() - r->t0;
    if (r->status) metrics_request(r->route, r->status, dt);
    const serve_config *cfg = serve_config_acquire();
    int log = cfg->log_requests;
    serve_config_release(cfg);
    if (log || r->status >= 500 || !r->status) {
        char pb[200];
        log_event(r->status >= 500 || !r->status ? "warn" : "info", "request",
                  "method=%s path=%s route=%s status=%d ms=%.3f bytes_in=%zu request_id=%s%s%s%s",
                  r->method, log_q(r->path, pb, sizeof pb), route_name[r->route], r->status,
                  dt * 1e3, r->len, r->rid, r->code[0] ? " error=" : "", r->code,
                  toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " aborted=true");
    }
    free(r->body);
    free(r->ixv);
    ix_request_free(&r->ixr);
    rec_free(r->rec);
    free(r->rb);
    if (r->admitted) atomic_fetch_sub(&busy, 1);
    edge_body_release(r->reserved);
    free(r);
    *con_cls = NULL;
    atomic_fetch_sub(&g_srv.in_flight, 1);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    char msg[512], b[600];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    log_event("warn", "http_library", "message=%s", log_q(msg, b, sizeof b));
}

struct MHD_Daemon *http_start(const serve_config *c, char *err, size_t errlen) {
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG;
    if (strchr(c->bind, ':')) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)c->port);
        if (inet_pton(AF_INET6, c->bind, &a->sin6_addr) != 1) {
            snprintf(err, errlen, "bind: '%s' is not an IPv6 address", c->bind);
            return NULL;
        }
        flags |= MHD_USE_IPv6;
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)c->port);
        if (inet_pton(AF_INET, c->bind, &a->sin_addr) != 1) {
            snprintf(err, errlen, "bind: '%s' is not an IPv4 address", c->bind);
            return NULL;
        }
    }
    /* the library's own limits sit a reserve above ours: the connections in between get an
     * early 503 (serve_edge.c) instead of a silent close */
    unsigned total = (unsigned)(c->connection_limit + c->connection_limit / 16 + 8);
    /* one descriptor per connection, plus the store's, the log's and the threads': raise the
     * soft limit towards the hard one when the default (often 1024) is too small */
    struct rlimit rl;
    if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur != RLIM_INFINITY &&
        rl.rlim_cur < (rlim_t)total + 64) {
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > (rlim_t)total + 64
                          ? (rlim_t)total + 64
                          : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    unsigned per_client = (unsigned)(c->max_connections_per_client + 4);
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, (uint16_t)c->port, NULL, NULL, on_request, NULL, MHD_OPTION_EXTERNAL_LOGGER,
        on_mhd_log, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss, MHD_OPTION_THREAD_POOL_SIZE,
        (unsigned)c->threads, MHD_OPTION_CONNECTION_LIMIT, total,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, per_client, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)c->connection_timeout_s, MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
        MHD_OPTION_NOTIFY_CONNECTION, edge_on_connection, NULL,
        /* SO_REUSEPORT only when asked: otherwise a second daemon on the port fails */
        c->reuse_port ? MHD_OPTION_LISTENING_ADDRESS_REUSE : MHD_OPTION_END, 1u, MHD_OPTION_END);
    if (!d) snprintf(err, errlen, "cannot listen on %s port %ld", c->bind, c->port);
    return d;
}

int http_port(struct MHD_Daemon *d) {
    const union MHD_DaemonInfo *i = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    return i ? i->port : -1;
}

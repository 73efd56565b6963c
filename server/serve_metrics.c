/* Prometheus counters and histograms (text exposition format 0.0.4). All
 * lock-free: relaxed atomic adds on fixed arrays. */
#include <dirent.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "kernels/blas_info.h"
#include "server/serve.h"
#include "server/serve_state.h"
#include "store/store_ext.h"

const char *const route_name[N_ROUTES] = {
    "recommend",    "interactions",   "user",  "healthz", "metrics",
    "admin_status", "admin_reload",   "items", "item",    "admin_retrain",
    "admin_job",    "admin_rollback", "livez", "readyz",  "other"};

static const int codes[] = {200, 202, 400, 401, 403, 404, 405, 409,
                            413, 415, 421, 422, 500, 503, 507};
#define NCODES ((int)(sizeof codes / sizeof codes[0]))
static const double bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                0.1,    0.25,  0.5,    1,     2.5,  5,     10};
#define NB ((int)(sizeof bounds / sizeof bounds[0]))

static atomic_ulong req_count[N_ROUTES][NCODES + 1]; /* last: any other code */
static atomic_ulong lat_bucket[N_ROUTES][NB + 1];    /* last: +Inf */
static atomic_ulong lat_sum_us[N_ROUTES];
static atomic_ulong err_count[N_ROUTES][2]; /* 4xx, 5xx */
static atomic_ulong fallback_count, backend_refused, backend_failures;
static atomic_ulong batch_count, batched_requests, batch_max_seen;
static atomic_ulong commit_batches, commit_failures, committed;
static atomic_ulong commit_bucket[NB + 1], commit_sum_us;

static const double batch_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256};
#define NBB ((int)(sizeof batch_bounds / sizeof batch_bounds[0]))
static atomic_ulong batch_bucket[NBB + 1], batch_sum;
static atomic_int jobs_running;
static atomic_ulong jobs_ended[3]; /* promoted, rejected, failed */
static atomic_ulong job_seconds_ms;

void metrics_job_start(void) { atomic_fetch_add(&jobs_running, 1); }

void metrics_job_end(const char *state, double seconds) {
    int k = !strcmp(state, "promoted") ? 0 : !strcmp(state, "rejected") ? 1 : 2;
    atomic_fetch_add(&jobs_ended[k], 1);
    atomic_fetch_add(&job_seconds_ms, (unsigned long)(seconds > 0 ? seconds * 1e3 : 0));
    atomic_fetch_sub(&jobs_running, 1);
}

static int code_slot(int status) {
    for (int i = 0; i < NCODES; i++)
        if (codes[i] == status) return i;
    return NCODES;
}

static void observe(atomic_ulong *bucket, atomic_ulong *sum_us, double s) {
    int b = 0;
    while (b < NB && s > bounds[b])
        b++;
    atomic_fetch_add_explicit(&bucket[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(sum_us, (unsigned long)(s * 1e6), memory_order_relaxed);
}

void metrics_request(int route, int status, double seconds) {
    if (route < 0 || route >= N_ROUTES) route = ROUTE_OTHER;
    atomic_fetch_add_explicit(&req_count[route][code_slot(status)], 1, memory_order_relaxed);
    observe(lat_bucket[route], &lat_sum_us[route], seconds);
    if (status >= 400)
        atomic_fetch_add_explicit(&err_count[route][status >= 500], 1, memory_order_relaxed);
}

void metrics_fallback(void) { atomic_fetch_add_explicit(&fallback_count, 1, memory_order_relaxed); }

void metrics_backend_failed(int requests, int failures) {
    atomic_fetch_add_explicit(&backend_refused, (unsigned long)requests, memory_order_relaxed);
    atomic_store_explicit(&backend_failures, (unsigned long)failures, memory_order_relaxed);
}

void metrics_batch(int requests) {
    int b = 0;
    while (b < NBB && requests > batch_bounds[b])
        b++;
    atomic_fetch_add_explicit(&batch_bucket[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&batch_sum, (unsigned long)requests, memory_order_relaxed);
    atomic_fetch_add_explicit(&batch_count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&batched_requests, (unsigned long)requests, memory_order_relaxed);
    unsigned long m = atomic_load_explicit(&batch_max_seen, memory_order_relaxed);
    while ((unsigned long)requests > m &&
           !atomic_compare_exchange_weak(&batch_max_seen, &m, (unsigned long)requests))
        ;
}

static atomic_int loading;
static atomic_ulong loads_ok, loads_failed, load_last_ms;

void metrics_model_load_begin(void) { atomic_fetch_add(&loading, 1); }

void metrics_model_load_end(double seconds, int ok) {
    atomic_fetch_add(ok ? &loads_ok : &loads_failed, 1);
    atomic_store(&load_last_ms, (unsigned long)(seconds * 1e3));
    atomic_fetch_sub(&loading, 1);
}

int metrics_loading(void) { return atomic_load(&loading) > 0; }

void metrics_commit(size_t n, double seconds, int ok) {
    atomic_fetch_add_explicit(&commit_batches, 1, memory_order_relaxed);
    if (ok)
        atomic_fetch_add_explicit(&committed, n, memory_order_relaxed);
    else
        atomic_fetch_add_explicit(&commit_failures, 1, memory_order_relaxed);
    observe(commit_bucket, &commit_sum_us, seconds);
}

typedef struct {
    char *p;
    size_t n, cap;
} sbuf;

static void put(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(sbuf *b, const char *fmt, ...) {
    if (!b->p) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int m = vsnprintf(b->p + b->n, b->cap - b->n, fmt, ap);
        va_end(ap);
        if (m < 0) return;
        if (b->n + (size_t)m < b->cap) {
            b->n += (size_t)m;
            return;
        }
        char *q = realloc(b->p, b->cap * 2 + (size_t)m);
        if (!q) {
            free(b->p);
            b->p = NULL;
            return;
        }
        b->p = q;
        b->cap = b->cap * 2 + (size_t)m;
    }
}

static void histogram(sbuf *b, const char *name, const char *labels, atomic_ulong *bucket,
                      atomic_ulong *sum_us) {
    unsigned long cum = 0;
    const char *sep = *labels ? "," : "";
    for (int i = 0; i <= NB; i++) {
        cum += atomic_load_explicit(&bucket[i], memory_order_relaxed);
        if (i < NB)
            put(b, "%s_bucket{%s%sle=\"%g\"} %lu\n", name, labels, sep, bounds[i], cum);
        else
            put(b, "%s_bucket{%s%sle=\"+Inf\"} %lu\n", name, labels, sep, cum);
    }
    put(b, "%s_sum%s%s%s %.6f\n", name, *labels ? "{" : "", labels, *labels ? "}" : "",
        atomic_load_explicit(sum_us, memory_order_relaxed) / 1e6);
    put(b, "%s_count%s%s%s %lu\n", name, *labels ? "{" : "", labels, *labels ? "}" : "", cum);
}

/* the process: CPU seconds, resident memory, open descriptors, start time */
static void render_process(sbuf *b) {
    struct rusage ru;
    double cpu = 0;
    if (!getrusage(RUSAGE_SELF, &ru))
        cpu = ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
              (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
    long pages = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &rss) != 2) rss = 0;
        fclose(f);
    }
    long fds = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        for (struct dirent *e; (e = readdir(d));)
            fds += e->d_name[0] != '.';
        closedir(d);
        fds--; /* the directory's own descriptor */
    }
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    double start = now.tv_sec + now.tv_nsec * 1e-9 - (serve_now() - g_srv.started);
    put(b,
        "# HELP process_cpu_seconds_total User and system CPU time.\n"
        "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total %.3f\n"
        "# HELP process_resident_memory_bytes Resident memory.\n"
        "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes %ld\n"
        "# HELP process_open_fds Open file descriptors.\n"
        "# TYPE process_open_fds gauge\nprocess_open_fds %ld\n"
        "# HELP process_start_time_seconds Start time, Unix seconds.\n"
        "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds %.3f\n",
        cpu, rss * sysconf(_SC_PAGESIZE), fds, start);
}

/* at start: which kernels the BLAS runs and its sgemm rate (about 0.15 s), logged and kept
 * for iisan_build_info's labels and the iisan_blas_sgemm_gflops gauge */
void serve_blas_probe(void) {
    blas_info bi;
    char q[256], w[700];
    blas_info_probe(&bi, 0.15);
    log_event("info", "blas",
              "library=%s core=%s core_level=%s cpu_level=%s threads=%d "
              "sgemm_san_gflops=%.1f guarded_from=%s",
              log_q(bi.library, q, sizeof q), bi.core, blas_tier_name(bi.core_tier),
              blas_tier_name(bi.cpu_tier), bi.threads, bi.sgemm_gflops,
              bi.guarded ? bi.fallback : "-");
    const char *warn = blas_generic_warning(&bi);
    if (warn)
        log_event("warn",
                  blas_info_generic(&bi) ? "blas_generic_kernels" : "blas_kernels_below_cpu",
                  "message=%s", log_q(warn, w, sizeof w));
}

/* build, model loads, retraining jobs, the store, the edge, batch sizes */
static void render_ops(sbuf *b) {
    const blas_info *bi = blas_info_last();
    put(b,
        "# HELP iisan_build_info The build: version, git describe, the BLAS and its kernels.\n"
        "# TYPE iisan_build_info gauge\niisan_build_info{version=\"%s\",git=\"%s\",blas=\"%s\","
        "blas_core=\"%s\"} 1\n",
        iisan_version, iisan_git_describe, bi ? bi->library : "", bi ? bi->core : "");
    if (bi)
        put(b,
            "# HELP iisan_blas_sgemm_gflops The BLAS's sgemm rate on the SAN shapes, measured "
            "at start.\n# TYPE iisan_blas_sgemm_gflops gauge\niisan_blas_sgemm_gflops %.2f\n",
            bi->sgemm_gflops);
    put(b,
        "# HELP iisan_model_loads_total Model loads (startup, reloads, jobs, rollbacks) by "
        "result.\n# TYPE iisan_model_loads_total counter\n"
        "iisan_model_loads_total{result=\"ok\"} %lu\niisan_model_loads_total{result=\"failed\"} "
        "%lu\n# HELP iisan_model_load_last_seconds How long the last load took.\n"
        "# TYPE iisan_model_load_last_seconds gauge\niisan_model_load_last_seconds %.3f\n"
        "# HELP iisan_model_loading A load is under way.\n"
        "# TYPE iisan_model_loading gauge\niisan_model_loading %d\n",
        atomic_load(&loads_ok), atomic_load(&loads_failed), atomic_load(&load_last_ms) / 1e3,
        metrics_loading());
    put(b,
        "# HELP iisan_retrain_jobs_total Retraining jobs ended, by state.\n"
        "# TYPE iisan_retrain_jobs_total counter\n"
        "iisan_retrain_jobs_total{state=\"promoted\"} %lu\n"
        "iisan_retrain_jobs_total{state=\"rejected\"} %lu\n"
        "iisan_retrain_jobs_total{state=\"failed\"} %lu\n"
        "# HELP iisan_retrain_job_seconds_total Time spent by ended jobs.\n"
        "# TYPE iisan_retrain_job_seconds_total counter\niisan_retrain_job_seconds_total %.3f\n"
        "# HELP iisan_retrain_jobs_running Jobs running (0 or 1).\n"
        "# TYPE iisan_retrain_jobs_running gauge\niisan_retrain_jobs_running %d\n",
        atomic_load(&jobs_ended[0]), atomic_load(&jobs_ended[1]), atomic_load(&jobs_ended[2]),
        atomic_load(&job_seconds_ms) / 1e3, atomic_load(&jobs_running));
    store_usage u = {0};
    if (g_srv.ix) store_usage_get(store_ix_store(g_srv.ix), &u);
    put(b,
        "# HELP iisan_store_map_bytes The store's LMDB map size (it grows by doubling).\n"
        "# TYPE iisan_store_map_bytes gauge\niisan_store_map_bytes %zu\n"
        "# HELP iisan_store_used_bytes Bytes of the map in use.\n"
        "# TYPE iisan_store_used_bytes gauge\niisan_store_used_bytes %zu\n"
        "# HELP iisan_http_connections_open Open client connections.\n"
        "# TYPE iisan_http_connections_open gauge\niisan_http_connections_open %ld\n"
        "# HELP iisan_http_body_bytes Memory held by request bodies being received or "
        "served.\n# TYPE iisan_http_body_bytes gauge\niisan_http_body_bytes %ld\n",
        (size_t)u.map_bytes, (size_t)u.used_bytes, edge_open_connections(), edge_body_bytes());
    put(b, "# HELP iisan_recommend_batch_size Requests per /recommend batch.\n"
           "# TYPE iisan_recommend_batch_size histogram\n");
    unsigned long cum = 0;
    for (int i = 0; i <= NBB; i++) {
        cum += atomic_load(&batch_bucket[i]);
        if (i < NBB)
            put(b, "iisan_recommend_batch_size_bucket{le=\"%g\"} %lu\n", batch_bounds[i], cum);
        else
            put(b, "iisan_recommend_batch_size_bucket{le=\"+Inf\"} %lu\n", cum);
    }
    put(b, "iisan_recommend_batch_size_sum %lu\niisan_recommend_batch_size_count %lu\n",
        atomic_load(&batch_sum), cum);
}

char *metrics_render(uint32_t model_version, long in_flight, long pending) {
    sbuf b = {malloc(16384), 0, 16384};
    put(&b, "# HELP iisan_http_requests_total HTTP requests by route and status code.\n"
            "# TYPE iisan_http_requests_total counter\n");
    for (int r = 0; r < N_ROUTES; r++)
        for (int c = 0; c <= NCODES; c++) {
            unsigned long v = atomic_load_explicit(&req_count[r][c], memory_order_relaxed);
            if (!v) continue;
            if (c < NCODES)
                put(&b, "iisan_http_requests_total{route=\"%s\",code=\"%d\"} %lu\n", route_name[r],
                    codes[c], v);
            else
                put(&b, "iisan_http_requests_total{route=\"%s\",code=\"other\"} %lu\n",
                    route_name[r], v);
        }
    put(&b, "# HELP iisan_http_errors_total HTTP responses with a 4xx or 5xx status, by route.\n"
            "# TYPE iisan_http_errors_total counter\n");
    for (int r = 0; r < N_ROUTES; r++)
        for (int k = 0; k < 2; k++)
            put(&b, "iisan_http_errors_total{route=\"%s\",class=\"%s\"} %lu\n", route_name[r],
                k ? "5xx" : "4xx", atomic_load_explicit(&err_count[r][k], memory_order_relaxed));
    put(&b, "# HELP iisan_http_request_duration_seconds Time from the request's headers to the "
            "end of its response.\n# TYPE iisan_http_request_duration_seconds histogram\n");
    for (int r = 0; r < N_ROUTES; r++) {
        char lab[64];
        snprintf(lab, sizeof lab, "route=\"%s\"", route_name[r]);
        histogram(&b, "iisan_http_request_duration_seconds", lab, lat_bucket[r], &lat_sum_us[r]);
    }
    put(&b,
        "# HELP iisan_recommend_fallback_total Recommendations answered by popularity (empty "
        "history).\n# TYPE iisan_recommend_fallback_total counter\n"
        "iisan_recommend_fallback_total %lu\n",
        atomic_load(&fallback_count));
    put(&b,
        "# HELP iisan_backend_failures Failures the compute backend recorded (sticky: once not "
        "0, /recommend answers 503 until a restart).\n# TYPE iisan_backend_failures gauge\n"
        "iisan_backend_failures %lu\n"
        "# HELP iisan_backend_failed_requests_total /recommend requests refused (503) because "
        "the backend had failed.\n# TYPE iisan_backend_failed_requests_total counter\n"
        "iisan_backend_failed_requests_total %lu\n",
        atomic_load(&backend_failures), atomic_load(&backend_refused));
    put(&b,
        "# HELP iisan_recommend_batches_total Batches of /recommend requests computed.\n"
        "# TYPE iisan_recommend_batches_total counter\n"
        "iisan_recommend_batches_total %lu\n"
        "# HELP iisan_recommend_batched_requests_total Requests computed in those batches.\n"
        "# TYPE iisan_recommend_batched_requests_total counter\n"
        "iisan_recommend_batched_requests_total %lu\n"
        "# HELP iisan_recommend_batch_max Largest batch so far.\n"
        "# TYPE iisan_recommend_batch_max gauge\n"
        "iisan_recommend_batch_max %lu\n",
        atomic_load(&batch_count), atomic_load(&batched_requests), atomic_load(&batch_max_seen));
    put(&b,
        "# HELP iisan_interactions_committed_total Interactions made durable.\n"
        "# TYPE iisan_interactions_committed_total counter\n"
        "iisan_interactions_committed_total %lu\n"
        "# HELP iisan_commit_batches_total Group-commit transactions (failed ones included).\n"
        "# TYPE iisan_commit_batches_total counter\n"
        "iisan_commit_batches_total %lu\n"
        "# HELP iisan_commit_failures_total Group-commit transactions that failed.\n"
        "# TYPE iisan_commit_failures_total counter\n"
        "iisan_commit_failures_total %lu\n",
        atomic_load(&committed), atomic_load(&commit_batches), atomic_load(&commit_failures));
    put(&b, "# HELP iisan_commit_duration_seconds One group-commit transaction, fsync "
            "included.\n# TYPE iisan_commit_duration_seconds histogram\n");
    histogram(&b, "iisan_commit_duration_seconds", "", commit_bucket, &commit_sum_us);
    put(&b,
        "# HELP iisan_model_version The checkpoint version being served (0: none).\n"
        "# TYPE iisan_model_version gauge\niisan_model_version %u\n"
        "# HELP iisan_http_in_flight Requests being handled.\n"
        "# TYPE iisan_http_in_flight gauge\niisan_http_in_flight %ld\n"
        "# HELP iisan_interactions_pending Interactions waiting for their commit.\n"
        "# TYPE iisan_interactions_pending gauge\niisan_interactions_pending %ld\n",
        model_version, in_flight, pending);
    render_ops(&b);
    render_process(&b);
    return b.p;
}

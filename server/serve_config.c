/* The daemon's configuration table and its sources: defaults < file <
 * environment < flags (docs/operations.md). */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "server/serve.h"

#define OPT(field) offsetof(serve_config, field)
#define SZ(field) sizeof(((serve_config *)0)->field)

const serve_option serve_options[] = {
    {"data", CFG_STR, OPT(data), SZ(data), "", 0, 0, "IISAN_DATA", 0,
     "data directory (the store; required)"},
    {"bind", CFG_STR, OPT(bind), SZ(bind), "127.0.0.1", 0, 0, "IISAN_BIND", 0,
     "address to listen on (IPv4 or IPv6 literal)"},
    {"port", CFG_INT, OPT(port), 0, "8080", 0, 65535, "IISAN_PORT", 0,
     "TCP port; 0 picks a free one (logged as event=listening)"},
    {"threads", CFG_INT, OPT(threads), 0, "4", 1, 256, "IISAN_THREADS", 0,
     "HTTP worker threads (libmicrohttpd thread pool)"},
    {"infer_threads", CFG_INT, OPT(infer_threads), 0, "1", 1, 64, "IISAN_INFER_THREADS", 0,
     "threads computing /recommend batches (one inference context each; 1 on a GPU)"},
    {"max_batch", CFG_INT, OPT(max_batch), 0, "32", 1, 256, "IISAN_MAX_BATCH", 1,
     "most /recommend requests computed together (1 = no batching)"},
    {"batch_wait_us", CFG_INT, OPT(batch_wait_us), 0, "0", 0, 100000, "IISAN_BATCH_WAIT_US", 1,
     "how long a batch waits to fill; 0 = it takes what is queued when a thread is free"},
    {"item_headroom", CFG_INT, OPT(item_headroom), 0, "4096", 0, 10000000, "IISAN_ITEM_HEADROOM", 0,
     "items that POST /items can add to a loaded IISAN model before a reload"},
    {"exhaustive_topk", CFG_BOOL, OPT(exhaustive_topk), 0, "false", 0, 1, "IISAN_EXHAUSTIVE_TOPK",
     0, "CPU: score every item for every request instead of pruning by norm (same results)"},
    {"text_model", CFG_STR, OPT(text_model), SZ(text_model), "", 0, 0, "IISAN_TEXT_MODEL", 0,
     "a BERT-family checkpoint directory (docs/encoders.md): POST /items encodes titles with "
     "it; empty = none"},
    {"text_backbone", CFG_STR, OPT(text_backbone), SZ(text_backbone), "", 0, 0,
     "IISAN_TEXT_BACKBONE", 0,
     "the name its states are stored under (default: the directory's name, as iisan encode)"},
    {"image_model", CFG_STR, OPT(image_model), SZ(image_model), "", 0, 0, "IISAN_IMAGE_MODEL", 0,
     "a ViT checkpoint directory (docs/encoders.md): POST /items encodes images with it; "
     "empty = none"},
    {"image_backbone", CFG_STR, OPT(image_backbone), SZ(image_backbone), "", 0, 0,
     "IISAN_IMAGE_BACKBONE", 0,
     "the name its states are stored under (default: the directory's name)"},
    {"blas_threads", CFG_INT, OPT(blas_threads), 0, "1", 0, 256, "IISAN_BLAS_THREADS", 0,
     "OpenBLAS threads per call (0 = all cores)"},
    {"device", CFG_STR, OPT(device), SZ(device), "cpu", 0, 0, "IISAN_DEVICE", 0,
     "compute backend: cpu, cuda or auto"},
    {"precision", CFG_STR, OPT(precision), SZ(precision), "fp32", 0, 0, "IISAN_PRECISION", 0,
     "the SAN and head GEMMs (retraining, item encoding): fp32 or bf16 (AVX512-BF16 CPUs)"},
    {"max_body_bytes", CFG_INT, OPT(max_body_bytes), 0, "1048576", 64, 1L << 30,
     "IISAN_MAX_BODY_BYTES", 1, "largest request body (413 beyond)"},
    {"max_k", CFG_INT, OPT(max_k), 0, "1000", 1, 100000, "IISAN_MAX_K", 1,
     "largest k of /recommend (contexts are sized at model load)"},
    {"max_history", CFG_INT, OPT(max_history), 0, "1000", 1, 100000, "IISAN_MAX_HISTORY", 1,
     "most ids in a request's history (and stored history used for exclusion)"},
    {"max_exclude", CFG_INT, OPT(max_exclude), 0, "1000", 0, 100000, "IISAN_MAX_EXCLUDE", 1,
     "most ids in a request's exclude list"},
    {"max_interactions", CFG_INT, OPT(max_interactions), 0, "1000", 1, 1000000,
     "IISAN_MAX_INTERACTIONS", 1, "most interactions in one POST /interactions"},
    {"commit_batch", CFG_INT, OPT(commit_batch), 0, "10000", 1, 10000000, "IISAN_COMMIT_BATCH", 1,
     "most interactions in one group-commit transaction"},
    {"connection_limit", CFG_INT, OPT(connection_limit), 0, "1024", 1, 1000000,
     "IISAN_CONNECTION_LIMIT", 0,
     "most open connections; a request beyond gets an early 503 (and the library closes the "
     "connections past a reserve of limit/16 + 8 at once)"},
    {"max_connections_per_client", CFG_INT, OPT(max_connections_per_client), 0, "256", 1, 1000000,
     "IISAN_MAX_CONNECTIONS_PER_CLIENT", 0,
     "most open connections from one client address (503 beyond, as connection_limit)"},
    {"max_body_memory_bytes", CFG_INT, OPT(max_body_memory_bytes), 0, "67108864", 4096, 1L << 40,
     "IISAN_MAX_BODY_MEMORY_BYTES", 1,
     "memory all request bodies still held may take together (503 body_memory beyond)"},
    {"allowed_hosts", CFG_STR, OPT(allowed_hosts), SZ(allowed_hosts), "", 0, 0,
     "IISAN_ALLOWED_HOSTS", 1,
     "comma-separated names a request's Host header may carry (port ignored); empty = any"},
    {"reuse_port", CFG_BOOL, OPT(reuse_port), 0, "false", 0, 1, "IISAN_REUSE_PORT", 0,
     "SO_REUSEPORT on the listening socket (several processes on one port; off: a second "
     "daemon on the port fails to start)"},
    {"connection_timeout_s", CFG_INT, OPT(connection_timeout_s), 0, "30", 0, 86400,
     "IISAN_CONNECTION_TIMEOUT_S", 0, "idle connection timeout (0 = none)"},
    {"shutdown_timeout_s", CFG_INT, OPT(shutdown_timeout_s), 0, "10", 0, 3600,
     "IISAN_SHUTDOWN_TIMEOUT_S", 1, "how long a stop waits for in-flight requests"},
    {"log_requests", CFG_BOOL, OPT(log_requests), 0, "true", 0, 1, "IISAN_LOG_REQUESTS", 1,
     "one log line per request"},
    {"log_level", CFG_STR, OPT(log_level), SZ(log_level), "info", 0, 0, "IISAN_LOG_LEVEL", 1,
     "the lowest level logged: debug, info, warn or error"},
    {"admin_token", CFG_STR, OPT(admin_token), SZ(admin_token), "", 0, 0, "IISAN_ADMIN_TOKEN", 1,
     "bearer token of /admin/*, /users/* and the catalogue changes; empty disables them (never "
     "logged)"},
    {"admin_token_file", CFG_STR, OPT(admin_token_file), SZ(admin_token_file), "", 0, 0,
     "IISAN_ADMIN_TOKEN_FILE", 1,
     "a file holding the admin token (its first line; read at start and on SIGHUP); overrides "
     "admin_token"},
    {"retrain_every_min", CFG_INT, OPT(retrain_every_min), 0, "0", 0, 525600,
     "IISAN_RETRAIN_EVERY_MIN", 1,
     "minutes between scheduled retraining jobs, counted from the last job's start (0 = off)"},
    {"retrain_after", CFG_INT, OPT(retrain_after), 0, "0", 0, 1000000000, "IISAN_RETRAIN_AFTER", 1,
     "start a retraining job once this many interactions were logged since the last (0 = off)"},
    /* cluster mode (docs/scaling.md) */
    {"role", CFG_STR, OPT(role), SZ(role), "standalone", 0, 0, "IISAN_ROLE", 0,
     "standalone (one daemon), trainer or replica (cluster mode over Redis and a model "
     "repository)"},
    {"redis", CFG_STR, OPT(redis), SZ(redis), "127.0.0.1:6379", 0, 0, "IISAN_REDIS", 0,
     "cluster mode: the Redis bus, host:port"},
    {"bus_prefix", CFG_STR, OPT(bus_prefix), SZ(bus_prefix), "iisan", 0, 0, "IISAN_BUS_PREFIX", 0,
     "cluster mode: prefix of the Redis keys (<prefix>:log, :lease, :versions)"},
    {"repo", CFG_STR, OPT(repo), SZ(repo), "", 0, 0, "IISAN_REPO", 0,
     "cluster mode: the model repository directory (shared by the trainer and the replicas)"},
    {"node_id", CFG_STR, OPT(node_id), SZ(node_id), "", 0, 0, "IISAN_NODE_ID", 0,
     "cluster mode: this node's name (lease owner, log); empty = hostname-pid"},
    {"lease_ms", CFG_INT, OPT(lease_ms), 0, "10000", 300, 600000, "IISAN_LEASE_MS", 0,
     "cluster mode: the trainer lease's time to live, renewed every third of it"},
    {"repo_poll_ms", CFG_INT, OPT(repo_poll_ms), 0, "2000", 50, 600000, "IISAN_REPO_POLL_MS", 0,
     "cluster mode: how often the repository is checked when no announcement came"},
    {"bus_timeout_ms", CFG_INT, OPT(bus_timeout_ms), 0, "2000", 50, 60000, "IISAN_BUS_TIMEOUT_MS",
     0, "cluster mode: connect and command timeout of the Redis connections"},
    {"bus_wait_replicas", CFG_INT, OPT(bus_wait_replicas), 0, "0", 0, 100,
     "IISAN_BUS_WAIT_REPLICAS", 0,
     "cluster mode: Redis replicas that must have a write (WAIT) before it is acknowledged"},
    {"bus_wait_ms", CFG_INT, OPT(bus_wait_ms), 0, "1000", 1, 60000, "IISAN_BUS_WAIT_MS", 0,
     "cluster mode: how long WAIT waits for them (then the write answers 503)"},
};
const int serve_noptions = (int)(sizeof serve_options / sizeof serve_options[0]);

static int same_name(const char *a, const char *b) {
    for (; *a && *b; a++, b++) {
        char x = *a == '-' ? '_' : *a, y = *b == '-' ? '_' : *b;
        if (x != y) return 0;
    }
    return *a == *b;
}

const serve_option *serve_option_find(const char *name) {
    for (int i = 0; i < serve_noptions; i++)
        if (same_name(serve_options[i].name, name)) return &serve_options[i];
    return NULL;
}

/* sets one option from text; msg gets the problem (without the source) */
static int set_value(serve_config *c, const serve_option *o, const char *v, char *msg, size_t cap) {
    char *p = (char *)c + o->off;
    if (o->type == CFG_STR) {
        size_t n = strlen(v);
        if (n >= o->size) {
            snprintf(msg, cap, "%s is longer than %zu bytes", o->name, o->size - 1);
            return -1;
        }
        memcpy(p, v, n + 1);
        return 0;
    }
    long x;
    if (o->type == CFG_BOOL) {
        if (!strcmp(v, "true") || !strcmp(v, "1") || !strcmp(v, "yes") || !strcmp(v, "on"))
            x = 1;
        else if (!strcmp(v, "false") || !strcmp(v, "0") || !strcmp(v, "no") || !strcmp(v, "off"))
            x = 0;
        else {
            snprintf(msg, cap, "%s wants true or false, got '%s'", o->name, v);
            return -1;
        }
    } else {
        char *end;
        errno = 0;
        x = strtol(v, &end, 10);
        if (errno || end == v || *end || x < o->lo || x > o->hi) {
            snprintf(msg, cap, "%s wants an integer in %ld..%ld, got '%s'", o->name, o->lo, o->hi,
                     v);
            return -1;
        }
    }
    memcpy(p, &x, sizeof x);
    return 0;
}

static char *trim(char *s) {
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

/* a value quoted "..." or '...' loses its quotes; an unclosed or stray quote is an error
 * (msg without the source) */
static int unquote(char **val, const char *name, char *msg, size_t cap) {
    char *v = *val;
    size_t n = strlen(v);
    if (n && (v[0] == '"' || v[0] == '\'')) {
        if (n < 2 || v[n - 1] != v[0] || memchr(v + 1, v[0], n - 2)) {
            snprintf(msg, cap,
                     "unclosed quote in the value of '%s' (a quoted value ends with its "
                     "quote, at the end of the line)",
                     name);
            return -1;
        }
        v[n - 1] = '\0';
        *val = v + 1;
    } else if (strchr(v, '"')) {
        snprintf(msg, cap, "stray quote in the value of '%s' (quote the whole value)", name);
        return -1;
    }
    return 0;
}

/* "name = value" lines; '#' starts a comment line; a value may be quoted "..." or '...'.
 * *had_token: the file sets admin_token */
static int read_file(serve_config *c, const char *path, int *had_token, char *err, size_t errlen) {
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    char line[4096], msg[256];
    int ln = 0, rc = 0;
    while (fgets(line, sizeof line, f)) {
        ln++;
        if (!strchr(line, '\n') && !feof(f)) {
            snprintf(err, errlen, "%s:%d: line longer than %zu bytes", path, ln, sizeof line - 2);
            rc = -1;
            break;
        }
        char *s = trim(line);
        if (!*s || *s == '#') continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            snprintf(err, errlen, "%s:%d: expected 'name = value'", path, ln);
            rc = -1;
            break;
        }
        *eq = '\0';
        char *name = trim(s), *val = trim(eq + 1);
        const serve_option *o = serve_option_find(name);
        if (!o) {
            snprintf(err, errlen, "%s:%d: unknown setting '%s'", path, ln, name);
            rc = -1;
            break;
        }
        if (unquote(&val, name, msg, sizeof msg)) {
            snprintf(err, errlen, "%s:%d: %s", path, ln, msg);
            rc = -1;
            break;
        }
        if (!strcmp(o->name, "admin_token") && *val) *had_token = 1;
        if (set_value(c, o, val, msg, sizeof msg)) {
            snprintf(err, errlen, "%s:%d: %s", path, ln, msg);
            rc = -1;
            break;
        }
    }
    fclose(f);
    return rc;
}

/* admin_token from the first line of admin_token_file (a warning when others can read it) */
static int read_token_file(serve_config *c, char *err, size_t errlen) {
    const char *path = c->admin_token_file;
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "admin_token_file %s: %s", path, strerror(errno));
        return -1;
    }
    char line[sizeof c->admin_token + 2];
    int got = fgets(line, sizeof line, f) != NULL;
    struct stat st;
    int others = !fstat(fileno(f), &st) && (st.st_mode & 077);
    fclose(f);
    line[got ? strcspn(line, "\r\n") : 0] = '\0';
    if (!*line) {
        snprintf(err, errlen, "admin_token_file %s: the first line is empty", path);
        return -1;
    }
    if (strlen(line) >= sizeof c->admin_token) {
        snprintf(err, errlen, "admin_token_file %s: the token is longer than %zu bytes", path,
                 sizeof c->admin_token - 1);
        return -1;
    }
    memcpy(c->admin_token, line, strlen(line) + 1);
    if (others)
        snprintf(c->warning, sizeof c->warning,
                 "admin_token_file %.300s is readable by others (mode %03o): chmod 600 it", path,
                 (unsigned)(st.st_mode & 0777));
    return 0;
}

int serve_config_build(serve_config *c, const char *path, int nflags, const char *const *names,
                       const char *const *values, char *err, size_t errlen) {
    char msg[256];
    memset(c, 0, sizeof *c);
    for (int i = 0; i < serve_noptions; i++)
        if (set_value(c, &serve_options[i], serve_options[i].def, msg, sizeof msg)) {
            snprintf(err, errlen, "default: %s", msg);
            return -1;
        }
    int had_token = 0;
    if (path && *path && read_file(c, path, &had_token, err, errlen)) return -1;
    for (int i = 0; i < serve_noptions; i++) {
        const char *v = getenv(serve_options[i].env);
        if (v && set_value(c, &serve_options[i], v, msg, sizeof msg)) {
            snprintf(err, errlen, "environment %s: %s", serve_options[i].env, msg);
            return -1;
        }
    }
    for (int i = 0; i < nflags; i++) {
        const serve_option *o = serve_option_find(names[i]);
        if (!o) {
            snprintf(err, errlen, "unknown option --%s", names[i]);
            return -1;
        }
        if (set_value(c, o, values[i], msg, sizeof msg)) {
            snprintf(err, errlen, "--%s: %s", names[i], msg);
            return -1;
        }
    }
    if (c->admin_token_file[0] && read_token_file(c, err, errlen)) return -1;
    struct stat st;
    if (had_token && !stat(path, &st) && (st.st_mode & 077))
        snprintf(c->warning, sizeof c->warning,
                 "%.250s sets admin_token and is readable by others (mode %03o): chmod 600 it, or "
                 "move the token to admin_token_file or IISAN_ADMIN_TOKEN",
                 path, (unsigned)(st.st_mode & 0777));
    if (strcmp(c->device, "cpu") && strcmp(c->device, "cuda") && strcmp(c->device, "auto")) {
        snprintf(err, errlen, "device wants cpu, cuda or auto, got '%s'", c->device);
        return -1;
    }
    if (strcmp(c->precision, "fp32") && strcmp(c->precision, "bf16")) {
        snprintf(err, errlen, "precision wants fp32 or bf16, got '%s'", c->precision);
        return -1;
    }
    if (log_level_rank(c->log_level) < 0) {
        snprintf(err, errlen, "log_level wants debug, info, warn or error, got '%s'", c->log_level);
        return -1;
    }
    return 0;
}

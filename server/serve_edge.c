/* The HTTP edge, checked by serve_http.c before a request reaches its route:
 * open connections counted in total and per client address (so that a
 * request beyond connection_limit or max_connections_per_client gets an
 * early 503 instead of a silent close), the memory held by request bodies
 * still arriving (max_body_memory_bytes), the Host allow-list, the content
 * type of POST bodies, conflicting Content-Length headers, and the request
 * id (X-Request-Id, taken or made). */
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>

#include "server/serve.h"
#include "server/serve_state.h"

/* ---------------- connections per client address ---------------- */

typedef struct client {
    struct client *next;
    unsigned char addr[16]; /* IPv4 as ::ffff:a.b.c.d */
    long n;
} client;

#define NBUCKETS 1024
static client *buckets[NBUCKETS];
static pthread_mutex_t clients_mu = PTHREAD_MUTEX_INITIALIZER;
static atomic_long open_conns;

static void addr_key(const struct sockaddr *sa, unsigned char key[16]) {
    memset(key, 0, 16);
    if (sa && sa->sa_family == AF_INET6) {
        memcpy(key, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
    } else if (sa && sa->sa_family == AF_INET) {
        key[10] = key[11] = 0xff;
        memcpy(key + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    }
}

static unsigned bucket_of(const unsigned char key[16]) {
    unsigned h = 2166136261u;
    for (int i = 0; i < 16; i++)
        h = (h ^ key[i]) * 16777619u;
    return h % NBUCKETS;
}

void edge_on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                        enum MHD_ConnectionNotificationCode toe) {
    (void)cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        unsigned char key[16];
        addr_key(ci ? ci->client_addr : NULL, key);
        unsigned b = bucket_of(key);
        pthread_mutex_lock(&clients_mu);
        client *p = buckets[b];
        while (p && memcmp(p->addr, key, 16))
            p = p->next;
        if (!p && (p = calloc(1, sizeof *p))) {
            memcpy(p->addr, key, 16);
            p->next = buckets[b];
            buckets[b] = p;
        }
        if (p) p->n++;
        pthread_mutex_unlock(&clients_mu);
        *socket_context = p; /* NULL: out of memory, counted in the total only */
        atomic_fetch_add(&open_conns, 1);
        return;
    }
    client *p = *socket_context;
    atomic_fetch_sub(&open_conns, 1);
    if (!p) return;
    pthread_mutex_lock(&clients_mu);
    if (--p->n == 0) { /* unlink and free */
        client **pp = &buckets[bucket_of(p->addr)];
        while (*pp != p)
            pp = &(*pp)->next;
        *pp = p->next;
        free(p);
    }
    pthread_mutex_unlock(&clients_mu);
    *socket_context = NULL;
}

long edge_open_connections(void) { return atomic_load(&open_conns); }

int edge_admit(struct MHD_Connection *c, const serve_config *cfg, char *msg, size_t cap) {
    long total = atomic_load(&open_conns);
    if (total > cfg->connection_limit) {
        snprintf(msg, cap, "the server holds %ld open connections, over its limit of %ld; retry",
                 total, cfg->connection_limit);
        return -1;
    }
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    client *p = ci ? ci->socket_context : NULL;
    if (!p) return 0;
    pthread_mutex_lock(&clients_mu);
    long n = p->n;
    pthread_mutex_unlock(&clients_mu);
    if (n > cfg->max_connections_per_client) {
        snprintf(msg, cap,
                 "this client holds %ld open connections, over the limit of %ld per client; close "
                 "some and retry",
                 n, cfg->max_connections_per_client);
        return -1;
    }
    return 0;
}

/* ---------------- memory held by request bodies ---------------- */

static atomic_long body_bytes;

int edge_body_reserve(size_t add, long limit) {
    long now = atomic_fetch_add(&body_bytes, (long)add) + (long)add;
    if (now > limit) {
        atomic_fetch_sub(&body_bytes, (long)add);
        return -1;
    }
    return 0;
}

void edge_body_release(size_t n) { atomic_fetch_sub(&body_bytes, (long)n); }

long edge_body_bytes(void) { return atomic_load(&body_bytes); }

/* ---------------- headers ---------------- */

int edge_host_ok(struct MHD_Connection *c, const char *allowed) {
    if (!*allowed) return 1;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST);
    if (!h) return 0;
    size_t hl;
    if (*h == '[') { /* [v6]:port */
        const char *e = strchr(h, ']');
        hl = e ? (size_t)(e - h + 1) : strlen(h);
    } else {
        const char *colon = strchr(h, ':');
        hl = colon ? (size_t)(colon - h) : strlen(h);
    }
    for (const char *p = allowed; *p;) {
        while (*p == ' ' || *p == ',')
            p++;
        size_t n = strcspn(p, ", ");
        if (n && n == hl && !strncasecmp(p, h, n)) return 1;
        p += n;
    }
    return 0;
}

int edge_json_type(struct MHD_Connection *c) {
    const char *t = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (!t) return 0;
    while (*t == ' ')
        t++;
    if (strncasecmp(t, "application/json", 16)) return 0;
    t += 16;
    while (*t == ' ')
        t++;
    return *t == '\0' || *t == ';';
}

typedef struct {
    int n_length, n_encoding;
    const char *first;
    int differ;
} length_scan;

static enum MHD_Result scan_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                   const char *value) {
    (void)kind;
    length_scan *s = cls;
    if (!strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH)) {
        if (s->n_length++ == 0)
            s->first = value;
        else if (strcmp(s->first, value ? value : ""))
            s->differ = 1;
    } else if (!strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING)) {
        s->n_encoding++;
    }
    return MHD_YES;
}

int edge_length_conflict(struct MHD_Connection *c, char *msg, size_t cap) {
    length_scan s = {0, 0, NULL, 0};
    MHD_get_connection_values(c, MHD_HEADER_KIND, scan_header, &s);
    if (s.differ) {
        snprintf(msg, cap, "the request carries Content-Length headers that disagree");
        return 1;
    }
    if (s.n_length && s.n_encoding) {
        snprintf(msg, cap, "the request carries both Content-Length and Transfer-Encoding");
        return 1;
    }
    return 0;
}

int edge_has_body(struct MHD_Connection *c) {
    const char *cl =
        MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl) return strtoull(cl, NULL, 10) > 0;
    return MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING) !=
           NULL;
}

/* ---------------- request ids ---------------- */

static atomic_ulong rid_counter;
static unsigned long rid_seed;
static pthread_once_t rid_once = PTHREAD_ONCE_INIT;

static void rid_init(void) {
    if (getrandom(&rid_seed, sizeof rid_seed, 0) != (ssize_t)sizeof rid_seed)
        rid_seed = (unsigned long)serve_now() * 2654435761u;
}

void edge_request_id(struct MHD_Connection *c, char *out, size_t cap) {
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Request-Id");
    if (h) {
        size_t n = strlen(h), i = 0;
        for (; i < n; i++) {
            char ch = h[i];
            if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' || ch == '.' || ch == ':'))
                break;
        }
        if (n && i == n && n < cap && n <= REQUEST_ID_MAX) {
            memcpy(out, h, n + 1);
            return;
        }
    }
    pthread_once(&rid_once, rid_init);
    /* splitmix64 of seed + counter: unique in the process, unpredictable across runs */
    unsigned long long z =
        rid_seed + 0x9e3779b97f4a7c15ull * (atomic_fetch_add(&rid_counter, 1) + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    snprintf(out, cap, "%016llx", z);
}

/* The bus over Redis (cluster/bus.h): hiredis's blocking API with timeouts,
 * one reconnect per failed command. */
#include "cluster/bus.h"

#include <hiredis/hiredis.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

struct bus {
    char host[256];
    int port;
    char prefix[64];
    char key_log[96], key_lease[96], key_chan[96];
    int timeout_ms;
    redisContext *c;   /* commands */
    redisContext *sub; /* subscribed to the versions channel */
};

static void seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

bus *bus_new(const char *addr, const char *prefix, int timeout_ms) {
    bus *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    const char *colon = strrchr(addr, ':');
    size_t hl = colon ? (size_t)(colon - addr) : strlen(addr);
    if (hl >= sizeof b->host) hl = sizeof b->host - 1;
    memcpy(b->host, addr, hl);
    b->host[hl] = 0;
    b->port = colon ? atoi(colon + 1) : 6379;
    snprintf(b->prefix, sizeof b->prefix, "%s", prefix && *prefix ? prefix : "iisan");
    snprintf(b->key_log, sizeof b->key_log, "%s:log", b->prefix);
    snprintf(b->key_lease, sizeof b->key_lease, "%s:lease", b->prefix);
    snprintf(b->key_chan, sizeof b->key_chan, "%s:versions", b->prefix);
    b->timeout_ms = timeout_ms > 0 ? timeout_ms : 2000;
    return b;
}

void bus_free(bus *b) {
    if (!b) return;
    if (b->c) redisFree(b->c);
    if (b->sub) redisFree(b->sub);
    free(b);
}

const char *bus_prefix(const bus *b) { return b->prefix; }

static struct timeval tv_of(int ms) {
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    return tv;
}

static redisContext *dial(bus *b, int timeout_ms, char *err, size_t errlen) {
    redisContext *c = redisConnectWithTimeout(b->host, b->port, tv_of(b->timeout_ms));
    if (!c || c->err) {
        seterr(err, errlen, "redis %s:%d: %s", b->host, b->port,
               c ? c->errstr : "cannot allocate a context");
        if (c) redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv_of(timeout_ms));
    redisEnableKeepAlive(c);
    return c;
}

/* runs argv on the command connection: a reply (caller frees) or NULL (err).
 * retry: reconnect and send once more when the connection was broken. */
static redisReply *cmd(bus *b, int argc, const char **argv, const size_t *lens, int extra_ms,
                       int retry, char *err, size_t errlen) {
    for (int attempt = 0; attempt < 2; attempt++) {
        if (!b->c && !(b->c = dial(b, b->timeout_ms, err, errlen))) return NULL;
        redisSetTimeout(b->c, tv_of(b->timeout_ms + extra_ms));
        redisReply *r = redisCommandArgv(b->c, argc, argv, lens);
        if (r) {
            if (r->type == REDIS_REPLY_ERROR) {
                seterr(err, errlen, "redis %s: %s", argv[0], r->str);
                freeReplyObject(r);
                return NULL;
            }
            return r;
        }
        seterr(err, errlen, "redis %s:%d: %s", b->host, b->port,
               b->c->errstr[0] ? b->c->errstr : "connection lost");
        redisFree(b->c); /* a context that failed is not reused */
        b->c = NULL;
        if (!retry) return NULL;
    }
    return NULL;
}

int bus_append(bus *b, const char *type, const char *origin, const char *payload, size_t len,
               long wait_replicas, int wait_ms, char id[64], char *err, size_t errlen) {
    const char *argv[] = {"XADD", b->key_log, "*", "t", type, "o", origin, "p", payload};
    size_t lens[] = {4, strlen(b->key_log), 1, 1, strlen(type), 1, strlen(origin), 1, len};
    /* not retried once sent: a retry could append the entry twice */
    redisReply *r = cmd(b, 9, argv, lens, 0, 0, err, errlen);
    if (!r) return -1;
    int ok = r->type == REDIS_REPLY_STRING && r->len < 64;
    if (ok) {
        memcpy(id, r->str, r->len);
        id[r->len] = 0;
    } else {
        seterr(err, errlen, "redis XADD: unexpected reply");
    }
    freeReplyObject(r);
    if (!ok) return -1;
    if (wait_replicas <= 0) return 0;
    char n[24], ms[24];
    snprintf(n, sizeof n, "%ld", wait_replicas);
    snprintf(ms, sizeof ms, "%d", wait_ms);
    const char *wv[] = {"WAIT", n, ms};
    r = cmd(b, 3, wv, NULL, wait_ms, 0, err, errlen);
    if (!r) return -1;
    long long got = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    freeReplyObject(r);
    if (got < wait_replicas) {
        seterr(err, errlen, "only %lld of %ld redis replicas acknowledged the write in %d ms", got,
               wait_replicas, wait_ms);
        return -1;
    }
    return 0;
}

/* one stream entry [id, [field, value, ...]] to fn */
static int entry(redisReply *e, bus_entry_fn fn, void *arg) {
    if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
        e->element[0]->type != REDIS_REPLY_STRING || e->element[1]->type != REDIS_REPLY_ARRAY)
        return -1;
    redisReply *kv = e->element[1];
    const char *type = "", *p = "", *origin = "";
    size_t plen = 0;
    for (size_t i = 0; i + 1 < kv->elements; i += 2) {
        redisReply *k = kv->element[i], *v = kv->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) continue;
        if (!strcmp(k->str, "t")) type = v->str;
        if (!strcmp(k->str, "o")) origin = v->str;
        if (!strcmp(k->str, "p")) {
            p = v->str;
            plen = v->len;
        }
    }
    return fn(arg, e->element[0]->str, type, origin, p, plen) ? 1 : 0;
}

int bus_read(bus *b, const char *after, int block_ms, int count, bus_entry_fn fn, void *arg,
             char *err, size_t errlen) {
    char cnt[24], blk[24];
    snprintf(cnt, sizeof cnt, "%d", count > 0 ? count : 1);
    snprintf(blk, sizeof blk, "%d", block_ms);
    const char *argv[] = {"XREAD", "COUNT", cnt, "BLOCK", blk, "STREAMS", b->key_log, after};
    redisReply *r = cmd(b, 8, argv, NULL, block_ms, 1, err, errlen);
    if (!r) return -1;
    int n = 0;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 1) { /* [[stream, [entries]]] */
        redisReply *s = r->element[0];
        redisReply *es = s->type == REDIS_REPLY_ARRAY && s->elements == 2 ? s->element[1] : NULL;
        for (size_t i = 0; es && es->type == REDIS_REPLY_ARRAY && i < es->elements; i++) {
            int rc = entry(es->element[i], fn, arg);
            if (rc < 0) {
                seterr(err, errlen, "redis XREAD: malformed entry");
                freeReplyObject(r);
                return -1;
            }
            n++;
            if (rc) break;
        }
    }
    freeReplyObject(r);
    return n;
}

/* take when free, extend when ours: one atomic script */
static const char *lease_lua =
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "redis.call('pexpire', KEYS[1], ARGV[2]) return 1 "
    "elseif redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 "
    "else return 0 end";

int bus_lease(bus *b, const char *owner, long ttl_ms, char *err, size_t errlen) {
    char ttl[24];
    snprintf(ttl, sizeof ttl, "%ld", ttl_ms);
    const char *argv[] = {"EVAL", lease_lua, "1", b->key_lease, owner, ttl};
    redisReply *r = cmd(b, 6, argv, NULL, 0, 1, err, errlen);
    if (!r) return -1;
    int held = r->type == REDIS_REPLY_INTEGER && r->integer == 1;
    freeReplyObject(r);
    return held;
}

void bus_lease_release(bus *b, const char *owner) {
    static const char *lua = "if redis.call('get', KEYS[1]) == ARGV[1] then "
                             "return redis.call('del', KEYS[1]) else return 0 end";
    const char *argv[] = {"EVAL", lua, "1", b->key_lease, owner};
    redisReply *r = cmd(b, 5, argv, NULL, 0, 0, NULL, 0);
    if (r) freeReplyObject(r);
}

int bus_announce(bus *b, uint32_t version, char *err, size_t errlen) {
    char v[16];
    snprintf(v, sizeof v, "%u", version);
    const char *argv[] = {"PUBLISH", b->key_chan, v};
    redisReply *r = cmd(b, 3, argv, NULL, 0, 1, err, errlen);
    if (!r) return -1;
    freeReplyObject(r);
    return 0;
}

long bus_wait_announce(bus *b, int ms) {
    if (!b->sub) {
        if (!(b->sub = dial(b, b->timeout_ms, NULL, 0))) return -1;
        redisReply *r = redisCommand(b->sub, "SUBSCRIBE %s", b->key_chan);
        if (!r) {
            redisFree(b->sub);
            b->sub = NULL;
            return -1;
        }
        freeReplyObject(r);
    }
    /* a message already read into hiredis's buffer, else wait on the socket */
    void *rep = NULL;
    if (redisGetReplyFromReader(b->sub, &rep) != REDIS_OK) goto broken;
    if (!rep) {
        struct pollfd p = {b->sub->fd, POLLIN, 0};
        int pr = poll(&p, 1, ms);
        if (pr == 0) return 0;
        if (pr < 0) return 0; /* EINTR: a spurious wake-up, the caller polls */
        if (redisGetReply(b->sub, &rep) != REDIS_OK || !rep) goto broken;
    }
    redisReply *r = rep;
    long v = 0;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
        r->element[2]->type == REDIS_REPLY_STRING)
        v = strtol(r->element[2]->str, NULL, 10);
    freeReplyObject(r);
    return v;
broken:
    redisFree(b->sub);
    b->sub = NULL;
    return -1;
}

int bus_id_cmp(const char *a, const char *b) {
    unsigned long long am = 0, as = 0, bm = 0, bs = 0;
    sscanf(a, "%llu-%llu", &am, &as);
    sscanf(b, "%llu-%llu", &bm, &bs);
    if (am != bm) return am < bm ? -1 : 1;
    return as < bs ? -1 : as > bs;
}

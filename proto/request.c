/* Parsing and checking of the API's request bodies (proto/request.h). */
#include "proto/request.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int req_fail(req_error *e, int status, const char *code, const char *fmt, ...) {
    e->status = status;
    snprintf(e->code, sizeof e->code, "%s", code);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return -1;
}

int req_valid_id(const char *s, size_t len) {
    if (!s || len == 0 || len > REQ_ID_MAX) return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c == 0x7f) return 0; /* NUL, controls, space */
    }
    return 1;
}

/* a JSON string's bytes for messages: at most 60 bytes, cut on a character boundary */
static const char *clip(const char *s, char *buf, size_t cap) {
    size_t n = strlen(s);
    if (n < cap) return s;
    n = cap - 4;
    while (n && ((unsigned char)s[n] & 0xC0) == 0x80)
        n--;
    memcpy(buf, s, n);
    memcpy(buf + n, "...", 4);
    return buf;
}

static json_t *load(const char *body, size_t len, req_error *e) {
    if (len == 0) {
        req_fail(e, 400, "malformed_json", "the request body is empty; send a JSON document");
        return NULL;
    }
    json_error_t je;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    if (!root)
        req_fail(e, 400, "malformed_json", "malformed JSON at line %d, column %d: %s", je.line,
                 je.column, je.text);
    return root;
}

static const char *type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

/* an array of strings into a malloc'd pointer array */
static int string_list(json_t *v, const char *field, long max, const char *limit_code,
                       const char ***out, size_t *n, req_error *e) {
    if (!json_is_array(v))
        return req_fail(e, 400, "wrong_type", "'%s' must be an array of item id strings, not %s",
                        field, type_name(v));
    size_t cnt = json_array_size(v);
    if ((long)cnt > max)
        return req_fail(e, 400, limit_code, "'%s' holds %zu ids; the limit is %ld", field, cnt,
                        max);
    const char **p = malloc((cnt ? cnt : 1) * sizeof *p);
    if (!p) return req_fail(e, 500, "internal", "out of memory");
    for (size_t i = 0; i < cnt; i++) {
        json_t *s = json_array_get(v, i);
        if (!json_is_string(s)) {
            free(p);
            return req_fail(e, 400, "wrong_type", "'%s[%zu]' must be a string, not %s", field, i,
                            type_name(s));
        }
        p[i] = json_string_value(s);
    }
    *out = p;
    *n = cnt;
    return 0;
}

static int id_field(json_t *v, const char *field, const char **out, req_error *e) {
    if (!json_is_string(v))
        return req_fail(e, 400, "wrong_type", "'%s' must be a string, not %s", field, type_name(v));
    const char *s = json_string_value(v);
    size_t len = json_string_length(v);
    if (!req_valid_id(s, len)) {
        char buf[64];
        return req_fail(e, 400, "invalid_id",
                        "'%s' is not a valid id ('%s'): ids are 1..%d bytes without spaces or "
                        "control characters",
                        field, strlen(s) == len ? clip(s, buf, sizeof buf) : "(holds NUL)",
                        REQ_ID_MAX);
    }
    *out = s;
    return 0;
}

void rec_request_free(rec_request *r) {
    if (!r) return;
    free(r->history);
    free(r->exclude);
    if (r->root) json_decref(r->root);
    memset(r, 0, sizeof *r);
}

int rec_request_parse(const char *body, size_t len, const req_limits *lim, rec_request *out,
                      req_error *e) {
    memset(out, 0, sizeof *out);
    out->k = 10;
    out->exclude_history = 1;
    json_t *root = load(body, len, e);
    if (!root) return -1;
    out->root = root;
    if (!json_is_object(root)) {
        req_fail(e, 400, "wrong_type", "the body must be a JSON object, not %s", type_name(root));
        goto bad;
    }
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (!strcmp(key, "user_id")) {
            if (!json_is_null(v) && id_field(v, "user_id", &out->user_id, e)) goto bad;
        } else if (!strcmp(key, "history")) {
            if (string_list(v, "history", lim->max_history, "history_too_large", &out->history,
                            &out->n_history, e))
                goto bad;
        } else if (!strcmp(key, "exclude")) {
            if (string_list(v, "exclude", lim->max_exclude, "exclude_too_large", &out->exclude,
                            &out->n_exclude, e))
                goto bad;
        } else if (!strcmp(key, "k")) {
            if (!json_is_integer(v)) {
                req_fail(e, 400, "wrong_type", "'k' must be an integer, not %s", type_name(v));
                goto bad;
            }
            json_int_t k = json_integer_value(v);
            if (k > lim->max_k) {
                req_fail(e, 400, "k_too_large", "'k' is %lld; the limit is %ld", (long long)k,
                         lim->max_k);
                goto bad;
            }
            if (k < 1) {
                req_fail(e, 400, "invalid_value", "'k' must be at least 1, got %lld", (long long)k);
                goto bad;
            }
            out->k = (long)k;
        } else if (!strcmp(key, "exclude_history")) {
            if (!json_is_boolean(v)) {
                req_fail(e, 400, "wrong_type", "'exclude_history' must be a boolean, not %s",
                         type_name(v));
                goto bad;
            }
            out->exclude_history = json_is_true(v);
        } else {
            char buf[64];
            req_fail(e, 400, "unknown_field",
                     "unknown field '%s' (known: user_id, history, k, exclude, exclude_history)",
                     clip(key, buf, sizeof buf));
            goto bad;
        }
    }
    return 0;
bad:
    rec_request_free(out);
    return -1;
}

void ix_request_free(ix_request *r) {
    if (!r) return;
    free(r->v);
    if (r->root) json_decref(r->root);
    memset(r, 0, sizeof *r);
}

static int ix_one(json_t *o, size_t i, int arr, ix_entry *x, req_error *e) {
    char where[48], f[64];
    if (arr)
        snprintf(where, sizeof where, "[%zu]", i);
    else
        where[0] = '\0';
    if (!json_is_object(o))
        return req_fail(e, 400, "wrong_type", "interaction%s must be an object, not %s", where,
                        type_name(o));
    x->user_id = x->item_id = NULL;
    x->timestamp = -1;
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v) {
        if (!strcmp(key, "user_id")) {
            snprintf(f, sizeof f, "%s%suser_id", where, arr ? "." : "");
            if (id_field(v, f, &x->user_id, e)) return -1;
        } else if (!strcmp(key, "item_id")) {
            snprintf(f, sizeof f, "%s%sitem_id", where, arr ? "." : "");
            if (id_field(v, f, &x->item_id, e)) return -1;
        } else if (!strcmp(key, "timestamp")) {
            if (!json_is_integer(v))
                return req_fail(e, 400, "wrong_type",
                                "interaction%s 'timestamp' must be an integer, not %s", where,
                                type_name(v));
            json_int_t t = json_integer_value(v);
            if (t < 0 || t > ((json_int_t)1 << 62))
                return req_fail(e, 400, "invalid_value",
                                "interaction%s 'timestamp' must be in 0..2^62, got %lld", where,
                                (long long)t);
            x->timestamp = t;
        } else {
            char buf[64];
            return req_fail(e, 400, "unknown_field",
                            "interaction%s has an unknown field '%s' (known: user_id, item_id, "
                            "timestamp)",
                            where, clip(key, buf, sizeof buf));
        }
    }
    if (!x->user_id)
        return req_fail(e, 400, "missing_field", "interaction%s lacks 'user_id'", where);
    if (!x->item_id)
        return req_fail(e, 400, "missing_field", "interaction%s lacks 'item_id'", where);
    return 0;
}

/* A body of one object or an array of them (at most max), each parsed by one() into the
 * next elem_size bytes of a malloc'd array: *root, *v and *n are set as far as it got (the
 * caller frees them). "what" names an element in messages, too_many is the code over max. */
typedef int (*one_fn)(json_t *o, size_t i, int arr, void *x, req_error *e);
static int one_or_many(const char *body, size_t len, const char *what, const char *what_plural,
                       const char *too_many, long max, size_t elem_size, one_fn one,
                       json_t **root_out, void **v_out, size_t *n_out, req_error *e) {
    json_t *root = load(body, len, e);
    if (!root) return -1;
    *root_out = root;
    int arr = json_is_array(root);
    if (!arr && !json_is_object(root))
        return req_fail(e, 400, "wrong_type",
                        "the body must be an %s object or an array of them, "
                        "not %s",
                        what, type_name(root));
    size_t n = arr ? json_array_size(root) : 1;
    if (n == 0) return req_fail(e, 400, "invalid_value", "the array of %s is empty", what_plural);
    if ((long)n > max)
        return req_fail(e, 400, too_many, "%zu %s in one request; the limit is %ld", n, what_plural,
                        max);
    char *v = malloc(n * elem_size);
    if (!v) return req_fail(e, 500, "internal", "out of memory");
    *v_out = v;
    for (size_t i = 0; i < n; i++)
        if (one(arr ? json_array_get(root, i) : root, i, arr, v + i * elem_size, e)) return -1;
    *n_out = n;
    return 0;
}

static int ix_one_fn(json_t *o, size_t i, int arr, void *x, req_error *e) {
    return ix_one(o, i, arr, x, e);
}

int ix_request_parse(const char *body, size_t len, const req_limits *lim, ix_request *out,
                     req_error *e) {
    memset(out, 0, sizeof *out);
    void *v = NULL;
    int rc =
        one_or_many(body, len, "interaction", "interactions", "too_many_interactions",
                    lim->max_interactions, sizeof *out->v, ix_one_fn, &out->root, &v, &out->n, e);
    out->v = v;
    if (rc) ix_request_free(out);
    return rc;
}

/* ---------------- POST /items ---------------- */

void items_request_free(items_request *r) {
    if (!r) return;
    free(r->v);
    if (r->root) json_decref(r->root);
    memset(r, 0, sizeof *r);
}

/* a states value: an array of numbers, or a non-empty array of equally long
 * non-empty arrays of numbers */
static int states_check(json_t *v, const char *where, const char *mod, req_error *e) {
    if (!json_is_array(v) || json_array_size(v) == 0)
        return req_fail(e, 400, "wrong_type",
                        "item%s 'states.%s' must be a non-empty array (of numbers, or of arrays "
                        "of numbers)",
                        where, mod);
    size_t n = json_array_size(v), w = 0;
    for (size_t r = 0; r < n; r++) {
        json_t *row = json_array_get(v, r);
        if (json_is_number(row)) {
            if (w) goto mixed;
            continue;
        }
        if (!json_is_array(row) || json_array_size(row) == 0 || (r && !w)) goto mixed;
        if (!w) w = json_array_size(row);
        if (json_array_size(row) != w)
            return req_fail(e, 400, "invalid_value",
                            "item%s 'states.%s' rows differ in length (%zu and %zu)", where, mod, w,
                            json_array_size(row));
        for (size_t j = 0; j < w; j++)
            if (!json_is_number(json_array_get(row, j)))
                return req_fail(e, 400, "wrong_type",
                                "item%s 'states.%s'[%zu][%zu] must be a number, not %s", where, mod,
                                r, j, type_name(json_array_get(row, j)));
    }
    return 0;
mixed:
    return req_fail(e, 400, "wrong_type",
                    "item%s 'states.%s' must be numbers or arrays of numbers, not a mix", where,
                    mod);
}

static int b64_value(unsigned char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

long req_base64_decode(const char *in, size_t len, unsigned char *out) {
    while (len && in[len - 1] == '=') /* at most two padding characters */
        len--;
    if (len % 4 == 1) return -1;
    for (size_t i = 0; i < len; i++)
        if (b64_value((unsigned char)in[i]) < 0) return -1;
    long n = 0;
    for (size_t i = 0; i < len; i += 4) {
        size_t m = len - i < 4 ? len - i : 4;
        uint32_t acc = 0;
        for (size_t j = 0; j < 4; j++)
            acc = acc << 6 | (uint32_t)(j < m ? b64_value((unsigned char)in[i + j]) : 0);
        for (size_t j = 0; j + 1 < m; j++, n++)
            if (out) out[n] = (unsigned char)(acc >> (16 - 8 * j));
    }
    return n;
}

size_t req_states_flatten(json_t *v, float *out, size_t cap) {
    size_t k = 0;
    for (size_t r = 0; r < json_array_size(v); r++) {
        json_t *row = json_array_get(v, r);
        if (json_is_number(row)) {
            if (k < cap) out[k] = (float)json_number_value(row);
            k++;
            continue;
        }
        for (size_t j = 0; j < json_array_size(row); j++, k++)
            if (k < cap) out[k] = (float)json_number_value(json_array_get(row, j));
    }
    return k;
}

static int item_one(json_t *o, size_t i, int arr, item_entry *x, req_error *e) {
    char where[48], f[64];
    if (arr)
        snprintf(where, sizeof where, "[%zu]", i);
    else
        where[0] = '\0';
    if (!json_is_object(o))
        return req_fail(e, 400, "wrong_type", "item%s must be an object, not %s", where,
                        type_name(o));
    x->item_id = NULL;
    x->title = "";
    x->title_len = 0;
    x->has_title = 0;
    x->states[0] = x->states[1] = NULL;
    x->image = NULL;
    x->image_len = 0;
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v) {
        if (!strcmp(key, "item_id")) {
            snprintf(f, sizeof f, "%s%sitem_id", where, arr ? "." : "");
            if (id_field(v, f, &x->item_id, e)) return -1;
        } else if (!strcmp(key, "title")) {
            if (!json_is_string(v))
                return req_fail(e, 400, "wrong_type", "item%s 'title' must be a string, not %s",
                                where, type_name(v));
            const char *t = json_string_value(v);
            size_t tl = json_string_length(v);
            if (tl > REQ_TITLE_MAX)
                return req_fail(e, 400, "invalid_value",
                                "item%s 'title' is %zu bytes; the limit is %d", where, tl,
                                REQ_TITLE_MAX);
            for (size_t j = 0; j < tl; j++)
                if (t[j] == '\0' || t[j] == '\t' || t[j] == '\n' || t[j] == '\r')
                    return req_fail(e, 400, "invalid_value",
                                    "item%s 'title' may not hold NUL, TAB, CR or LF", where);
            x->title = t;
            x->title_len = tl;
            x->has_title = 1;
        } else if (!strcmp(key, "image")) {
            if (!json_is_string(v) || json_string_length(v) == 0)
                return req_fail(e, 400, "wrong_type",
                                "item%s 'image' must be a non-empty string (the image file in "
                                "base64), not %s",
                                where, type_name(v));
            x->image = json_string_value(v);
            x->image_len = json_string_length(v);
            if (req_base64_decode(x->image, x->image_len, NULL) < 0)
                return req_fail(e, 400, "invalid_value", "item%s 'image' is not base64", where);
        } else if (!strcmp(key, "states")) {
            if (!json_is_object(v))
                return req_fail(e, 400, "wrong_type",
                                "item%s 'states' must be an object {\"text\"?, \"image\"?}, not %s",
                                where, type_name(v));
            const char *mk;
            json_t *mv;
            json_object_foreach(v, mk, mv) {
                int mod = !strcmp(mk, "text") ? 0 : !strcmp(mk, "image") ? 1 : -1;
                if (mod < 0) {
                    char buf[64];
                    return req_fail(e, 400, "unknown_field",
                                    "item%s 'states' has an unknown modality '%s' (known: text, "
                                    "image)",
                                    where, clip(mk, buf, sizeof buf));
                }
                if (states_check(mv, where, mk, e)) return -1;
                x->states[mod] = mv;
            }
        } else {
            char buf[64];
            return req_fail(
                e, 400, "unknown_field",
                "item%s has an unknown field '%s' (known: item_id, title, states, image)", where,
                clip(key, buf, sizeof buf));
        }
    }
    if (!x->item_id) return req_fail(e, 400, "missing_field", "item%s lacks 'item_id'", where);
    return 0;
}

static int item_one_fn(json_t *o, size_t i, int arr, void *x, req_error *e) {
    return item_one(o, i, arr, x, e);
}

int items_request_parse(const char *body, size_t len, const req_limits *lim, items_request *out,
                        req_error *e) {
    memset(out, 0, sizeof *out);
    void *v = NULL;
    int rc = one_or_many(body, len, "item", "items", "too_many_items", lim->max_interactions,
                         sizeof *out->v, item_one_fn, &out->root, &v, &out->n, e);
    out->v = v;
    if (rc) items_request_free(out);
    return rc;
}

/* ---------------- admin bodies ---------------- */

/* an optional body: empty or an object */
static json_t *load_optional(const char *body, size_t len, req_error *e) {
    size_t i = 0;
    while (i < len && (body[i] == ' ' || body[i] == '\n' || body[i] == '\r' || body[i] == '\t'))
        i++;
    if (i == len) return json_object();
    json_t *root = load(body, len, e);
    if (root && !json_is_object(root)) {
        req_fail(e, 400, "wrong_type", "the body must be a JSON object, not %s", type_name(root));
        json_decref(root);
        return NULL;
    }
    return root;
}

static int int_field(json_t *v, const char *name, long lo, long hi, long *out, req_error *e) {
    if (!json_is_integer(v))
        return req_fail(e, 400, "wrong_type", "'%s' must be an integer, not %s", name,
                        type_name(v));
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return req_fail(e, 400, "invalid_value", "'%s' must be in %ld..%ld, got %lld", name, lo, hi,
                        (long long)x);
    *out = (long)x;
    return 0;
}

int retrain_request_parse(const char *body, size_t len, retrain_request *out, req_error *e) {
    out->epochs = 5;
    out->patience = 3;
    out->tolerance = 0.005;
    out->max_steps = 0;
    out->seed = 42;
    json_t *root = load_optional(body, len, e);
    if (!root) return -1;
    const char *key;
    json_t *v;
    int rc = 0;
    json_object_foreach(root, key, v) {
        if (!strcmp(key, "epochs"))
            rc = int_field(v, key, 1, 1000, &out->epochs, e);
        else if (!strcmp(key, "patience"))
            rc = int_field(v, key, 0, 1000, &out->patience, e);
        else if (!strcmp(key, "max_steps"))
            rc = int_field(v, key, 0, 1L << 40, &out->max_steps, e);
        else if (!strcmp(key, "seed"))
            rc = int_field(v, key, 0, 0x7fffffffL, &out->seed, e);
        else if (!strcmp(key, "tolerance")) {
            if (!json_is_number(v))
                rc = req_fail(e, 400, "wrong_type", "'tolerance' must be a number, not %s",
                              type_name(v));
            else if (!(json_number_value(v) >= 0 && json_number_value(v) <= 1))
                rc = req_fail(e, 400, "invalid_value", "'tolerance' must be in 0..1, got %g",
                              json_number_value(v));
            else
                out->tolerance = json_number_value(v);
        } else {
            char buf[64];
            rc =
                req_fail(e, 400, "unknown_field",
                         "unknown field '%s' (known: epochs, patience, tolerance, max_steps, seed)",
                         clip(key, buf, sizeof buf));
        }
        if (rc) break;
    }
    json_decref(root);
    return rc;
}

int rollback_request_parse(const char *body, size_t len, rollback_request *out, req_error *e) {
    out->version = 0;
    json_t *root = load_optional(body, len, e);
    if (!root) return -1;
    const char *key;
    json_t *v;
    int rc = 0;
    json_object_foreach(root, key, v) {
        if (!strcmp(key, "version"))
            rc = int_field(v, key, 1, 0xffffffffL, &out->version, e);
        else {
            char buf[64];
            rc = req_fail(e, 400, "unknown_field", "unknown field '%s' (known: version)",
                          clip(key, buf, sizeof buf));
        }
        if (rc) break;
    }
    json_decref(root);
    return rc;
}

/* Request bodies of the HTTP API (proto/openapi.yaml), parsed and checked
 * without touching the model or the store: JSON syntax, field types, unknown
 * fields, id syntax and the configured limits. A failure fills a req_error
 * with the HTTP status, a machine-readable code and a message that names the
 * field (and, for JSON syntax errors, line and column). tests/fuzz_request.c
 * drives these functions with arbitrary bytes. */
#ifndef IISAN_PROTO_REQUEST_H
#define IISAN_PROTO_REQUEST_H

#include <stddef.h>
#include <stdint.h>

typedef struct json_t json_t;

typedef struct {
    int status;    /* HTTP status: 400, 413, ... */
    char code[40]; /* e.g. "malformed_json", "wrong_type", "k_too_large" */
    char message[320];
} req_error;

typedef struct {
    long max_k;            /* largest k (default 1000) */
    long max_history;      /* most history ids (1000) */
    long max_exclude;      /* most exclude ids (1000) */
    long max_interactions; /* most interactions in one POST /interactions (1000) */
} req_limits;

/* POST /recommend. Strings point into root and live until rec_request_free. */
typedef struct {
    json_t *root;
    const char *user_id;  /* NULL when absent */
    const char **history; /* n_history ids, oldest first (any strings: unknown ones are
                             reported by the caller as warnings) */
    size_t n_history;
    const char **exclude;
    size_t n_exclude;
    long k;              /* default 10 */
    int exclude_history; /* default 1 */
} rec_request;

/* POST /interactions: one object or an array of them */
typedef struct {
    const char *user_id;
    const char *item_id;
    int64_t timestamp; /* -1 when absent */
} ix_entry;

typedef struct {
    json_t *root;
    ix_entry *v;
    size_t n;
} ix_request;

/* POST /items: one object or an array of {"item_id", "title"?, "states"?, "image"?}.
 * "states" is {"text"?: S, "image"?: S}, S the [L+1, D] hidden states as an
 * array of L+1 arrays of D numbers or one flat array of (L+1)*D numbers
 * (checked here for type; the server checks the shape against the store). */
typedef struct {
    const char *item_id;
    const char *title; /* "" when absent */
    size_t title_len;
    int has_title;
    json_t *states[2]; /* borrowed from the request; NULL when absent (IISAN_TEXT, IISAN_IMAGE) */
    const char *image; /* "image": the JPEG / PNG file, base64 (RFC 4648); NULL when absent */
    size_t image_len;
} item_entry;

/* decodes base64 (RFC 4648, padding optional, no whitespace) of len chars into
 * out (room for len / 4 * 3 + 3 bytes); returns the byte count, or -1 when
 * the text is not base64 */
long req_base64_decode(const char *in, size_t len, unsigned char *out);

/* the numbers of a states value (see item_entry), flattened into out (room
 * for cap); returns how many there are (may exceed cap: nothing beyond cap is
 * written) */
size_t req_states_flatten(json_t *v, float *out, size_t cap);

typedef struct {
    json_t *root;
    item_entry *v;
    size_t n;
} items_request;

#define REQ_TITLE_MAX 8192

/* POST /admin/retrain (every field optional; an empty body takes the defaults) */
typedef struct {
    long epochs;      /* 1..1000, default 5 */
    long patience;    /* 0..1000, default 3 */
    double tolerance; /* 0..1, default 0.005: promote when HR@10 >= base - tolerance */
    long max_steps;   /* 0 = no limit */
    long seed;        /* default 42 */
} retrain_request;

/* POST /admin/rollback: {"version"?: V} (0 when absent: the version before the current) */
typedef struct {
    long version;
} rollback_request;

/* ids stored in the catalogue and the user database: 1..511 bytes of UTF-8
 * without NUL, whitespace (space, tab, CR, LF) or other control characters */
#define REQ_ID_MAX 511
int req_valid_id(const char *s, size_t len);

int rec_request_parse(const char *body, size_t len, const req_limits *lim, rec_request *out,
                      req_error *e);
void rec_request_free(rec_request *r);

int ix_request_parse(const char *body, size_t len, const req_limits *lim, ix_request *out,
                     req_error *e);
void ix_request_free(ix_request *r);

int items_request_parse(const char *body, size_t len, const req_limits *lim, items_request *out,
                        req_error *e);
void items_request_free(items_request *r);

int retrain_request_parse(const char *body, size_t len, retrain_request *out, req_error *e);
int rollback_request_parse(const char *body, size_t len, rollback_request *out, req_error *e);

/* sets e and returns -1 */
int req_fail(req_error *e, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif

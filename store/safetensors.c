/* safetensors reader (mmap + validated header) and atomic writer. */
#include "store/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kernels/half.h"
#include "store/store.h"

#define ST_MAX_HEADER ((uint64_t)100 << 20)

static const struct {
    const char *name;
    size_t size;
} dtypes[ST_NDTYPES] = {
    [ST_BOOL] = {"BOOL", 1}, [ST_U8] = {"U8", 1},   [ST_I8] = {"I8", 1},     [ST_I16] = {"I16", 2},
    [ST_U16] = {"U16", 2},   [ST_F16] = {"F16", 2}, [ST_BF16] = {"BF16", 2}, [ST_I32] = {"I32", 4},
    [ST_U32] = {"U32", 4},   [ST_F32] = {"F32", 4}, [ST_I64] = {"I64", 8},   [ST_U64] = {"U64", 8},
    [ST_F64] = {"F64", 8},
};

const char *st_dtype_name(st_dtype t) { return (unsigned)t < ST_NDTYPES ? dtypes[t].name : "?"; }
size_t st_dtype_size(st_dtype t) { return (unsigned)t < ST_NDTYPES ? dtypes[t].size : 0; }

int st_dtype_parse(const char *name) {
    for (int i = 0; i < ST_NDTYPES; i++)
        if (!strcmp(name, dtypes[i].name)) return i;
    return -1;
}

size_t st_numel(const st_tensor *t) {
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= (size_t)t->shape[i];
    return n;
}

int st_read_f32(const st_tensor *t, float *dst, const char *path, char *err, size_t errlen) {
    size_t n = st_numel(t);
    if (t->dtype == ST_F32) {
        memcpy(dst, t->data, n * 4);
    } else if (t->dtype == ST_F16 || t->dtype == ST_BF16) {
        const unsigned char *p = t->data;
        for (size_t i = 0; i < n; i++) {
            uint16_t u;
            memcpy(&u, p + 2 * i, 2);
            dst[i] = t->dtype == ST_F16 ? iisan_half_to_float(u)
                                        : iisan_f32_from_bits((uint32_t)u << 16);
        }
    } else {
        return iisan_fail(err, errlen, IISAN_EFORMAT, "%s: %s is %s (F32, F16 or BF16 wanted)",
                          path, t->name, st_dtype_name(t->dtype));
    }
    for (size_t i = 0; i < n; i++)
        if (!isfinite(dst[i]))
            return iisan_fail(err, errlen, IISAN_EFORMAT, "%s: %s holds a non-finite value", path,
                              t->name);
    return 0;
}

/* ---- reader ---- */

typedef struct {
    size_t idx;
    uint64_t begin, end;
} span;

static int cmp_span(const void *a, const void *b) {
    const span *x = a, *y = b;
    return x->begin < y->begin   ? -1
           : x->begin > y->begin ? 1
                                 : (x->end > y->end) - (x->end < y->end);
}
static int cmp_tensor(const void *a, const void *b) {
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}
static int cmp_meta(const void *a, const void *b) {
    return strcmp(((const st_meta_kv *)a)->key, ((const st_meta_kv *)b)->key);
}

static char *arena_put(char **p, const char *s) {
    size_t n = strlen(s) + 1;
    char *r = *p;
    memcpy(r, s, n);
    *p += n;
    return r;
}

static int parse_tensor(st_tensor *t, const char *name, json_t *v, size_t dlen, uint64_t *begin,
                        uint64_t *end, const char *path, char *err, size_t errlen) {
    if (!json_is_object(v))
        return iisan_fail(err, errlen, IISAN_EFORMAT, "%s: tensor '%s': entry is not a JSON object",
                          path, name);
    json_t *jd = json_object_get(v, "dtype"), *js = json_object_get(v, "shape"),
           *jo = json_object_get(v, "data_offsets");
    if (!json_is_string(jd) || !json_is_array(js) || !json_is_array(jo))
        return iisan_fail(
            err, errlen, IISAN_EFORMAT,
            "%s: tensor '%s': needs \"dtype\" (string), \"shape\" and \"data_offsets\" "
            "(arrays)",
            path, name);
    int dt = st_dtype_parse(json_string_value(jd));
    if (dt < 0)
        return iisan_fail(err, errlen, IISAN_EFORMAT, "%s: tensor '%s': unsupported dtype '%s'",
                          path, name, json_string_value(jd));
    t->dtype = (st_dtype)dt;
    size_t nd = json_array_size(js);
    if (nd > ST_MAX_DIMS)
        return iisan_fail(err, errlen, IISAN_EFORMAT,
                          "%s: tensor '%s': %zu dimensions (at most %d are supported)", path, name,
                          nd, ST_MAX_DIMS);
    t->ndim = (int)nd;
    uint64_t bytes = dtypes[dt].size;
    int overflow = 0;
    for (size_t i = 0; i < nd; i++) {
        json_t *e = json_array_get(js, i);
        if (!json_is_integer(e) || json_integer_value(e) < 0)
            return iisan_fail(err, errlen, IISAN_EFORMAT,
                              "%s: tensor '%s': shape[%zu] is not a non-negative integer", path,
                              name, i);
        t->shape[i] = json_integer_value(e);
        overflow |= __builtin_mul_overflow(bytes, (uint64_t)t->shape[i], &bytes);
    }
    if (overflow)
        return iisan_fail(err, errlen, IISAN_EFORMAT, "%s: tensor '%s': shape is impossibly large",
                          path, name);
    if (json_array_size(jo) != 2 || !json_is_integer(json_array_get(jo, 0)) ||
        !json_is_integer(json_array_get(jo, 1)) || json_integer_value(json_array_get(jo, 0)) < 0 ||
        json_integer_value(json_array_get(jo, 1)) < json_integer_value(json_array_get(jo, 0)))
        return iisan_fail(
            err, errlen, IISAN_EFORMAT,
            "%s: tensor '%s': data_offsets must be [begin, end] with 0 <= begin <= end", path,
            name);
    *begin = (uint64_t)json_integer_value(json_array_get(jo, 0));
    *end = (uint64_t)json_integer_value(json_array_get(jo, 1));
    if (*end > dlen)
        return iisan_fail(
            err, errlen, IISAN_EFORMAT,
            "%s: tensor '%s': data_offsets [%llu, %llu] run past the data (%zu bytes; "
            "truncated file?)",
            path, name, (unsigned long long)*begin, (unsigned long long)*end, dlen);
    if (*end - *begin != bytes) {
        char sh[160];
        size_t o = 0;
        for (size_t i = 0; i < nd && o < sizeof sh - 24; i++)
            o += (size_t)snprintf(sh + o, sizeof sh - o, "%s%lld", i ? ", " : "",
                                  (long long)t->shape[i]);
        sh[o] = '\0';
        return iisan_fail(err, errlen, IISAN_EFORMAT,
                          "%s: tensor '%s': %s [%s] needs %llu bytes, data_offsets give %llu", path,
                          name, dtypes[dt].name, sh, (unsigned long long)bytes,
                          (unsigned long long)(*end - *begin));
    }
    t->nbytes = (size_t)bytes;
    return 0;
}

static int parse_header(st_file *f, const unsigned char *b, size_t len, const char *path, char *err,
                        size_t errlen) {
    if (len < 8)
        return iisan_fail(err, errlen, IISAN_EFORMAT,
                          "%s: %zu bytes is too short for a safetensors file (truncated?)", path,
                          len);
    uint64_t n;
    memcpy(&n, b, 8); /* little-endian host (store_internal.h) */
    if (n < 2 || n > ST_MAX_HEADER || n > len - 8)
        return iisan_fail(
            err, errlen, IISAN_EFORMAT,
            "%s: header length %llu is impossible for a %zu-byte file (not safetensors, "
            "or truncated)",
            path, (unsigned long long)n, len);
    json_error_t je;
    json_t *root = json_loadb((const char *)b + 8, (size_t)n, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return iisan_fail(err, errlen, IISAN_EFORMAT, "%s: header is not valid JSON: %s (byte %d)",
                          path, je.text, je.position + 8);
    int rc = 0;
    span *spans = NULL;
    if (!json_is_object(root)) {
        rc = iisan_fail(err, errlen, IISAN_EFORMAT, "%s: header is not a JSON object", path);
        goto out;
    }
    const unsigned char *data = b + 8 + n;
    size_t dlen = len - 8 - (size_t)n;
    json_t *meta = json_object_get(root, "__metadata__");
    if (meta && !json_is_object(meta)) {
        rc = iisan_fail(err, errlen, IISAN_EFORMAT, "%s: __metadata__ is not a JSON object", path);
        goto out;
    }
    size_t nt = json_object_size(root) - (meta ? 1 : 0), nm = meta ? json_object_size(meta) : 0;
    size_t strbytes = 1;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) strbytes += strlen(key) + 1;
    if (meta) json_object_foreach(meta, key, v) {
            if (!json_is_string(v)) {
                rc = iisan_fail(err, errlen, IISAN_EFORMAT,
                                "%s: __metadata__ value of '%s' is not a string", path, key);
                goto out;
            }
            strbytes += strlen(key) + strlen(json_string_value(v)) + 2;
        }
    f->tensors = calloc(nt ? nt : 1, sizeof *f->tensors);
    f->meta = calloc(nm ? nm : 1, sizeof *f->meta);
    f->strings = malloc(strbytes);
    spans = malloc((nt ? nt : 1) * sizeof *spans);
    if (!f->tensors || !f->meta || !f->strings || !spans) {
        rc = iisan_fail(err, errlen, IISAN_ENOMEM, "%s: out of memory", path);
        goto out;
    }
    char *sp = f->strings;
    size_t i = 0;
    json_object_foreach(root, key, v) {
        if (!strcmp(key, "__metadata__")) continue;
        st_tensor *t = &f->tensors[i];
        if (!*key) {
            rc = iisan_fail(err, errlen, IISAN_EFORMAT, "%s: a tensor has an empty name", path);
            goto out;
        }
        if ((rc = parse_tensor(t, key, v, dlen, &spans[i].begin, &spans[i].end, path, err, errlen)))
            goto out;
        t->name = arena_put(&sp, key);
        t->data = data + spans[i].begin;
        spans[i].idx = i;
        i++;
    }
    f->n_tensors = nt;
    qsort(spans, nt, sizeof *spans, cmp_span);
    for (size_t j = 1, prev = 0; j < nt; j++) {
        if (spans[j].begin == spans[j].end) continue; /* empty tensors take no room */
        if (spans[prev].end > spans[j].begin && spans[prev].begin != spans[prev].end) {
            rc = iisan_fail(err, errlen, IISAN_EFORMAT, "%s: tensors '%s' and '%s' overlap", path,
                            f->tensors[spans[prev].idx].name, f->tensors[spans[j].idx].name);
            goto out;
        }
        prev = j;
    }
    i = 0;
    if (meta) json_object_foreach(meta, key, v) {
            f->meta[i].key = arena_put(&sp, key);
            f->meta[i].value = arena_put(&sp, json_string_value(v));
            i++;
        }
    f->n_meta = nm;
    qsort(f->tensors, nt, sizeof *f->tensors, cmp_tensor);
    qsort(f->meta, nm, sizeof *f->meta, cmp_meta);
out:
    free(spans);
    json_decref(root);
    return rc;
}

void st_close(st_file *f) {
    if (!f) return;
    if (f->map) munmap(f->map, f->map_len);
    free(f->tensors);
    free(f->meta);
    free(f->strings);
    free(f);
}

int st_parse(st_file **out, const void *bytes, size_t len, const char *name, char *err,
             size_t errlen) {
    *out = NULL;
    st_file *f = calloc(1, sizeof *f);
    if (!f) return iisan_fail(err, errlen, IISAN_ENOMEM, "%s: out of memory", name);
    int rc = parse_header(f, bytes, len, name, err, errlen);
    if (rc) {
        st_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

int st_open(st_file **out, const char *path, char *err, size_t errlen) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return iisan_fail(err, errlen, IISAN_EIO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st)) {
        int e = errno;
        close(fd);
        return iisan_fail(err, errlen, IISAN_EIO, "%s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return iisan_fail(err, errlen, IISAN_EIO, "%s: not a regular file", path);
    }
    size_t len = (size_t)st.st_size;
    if (len < 8) {
        close(fd);
        return iisan_fail(err, errlen, IISAN_EFORMAT,
                          "%s: %zu bytes is too short for a safetensors file (truncated?)", path,
                          len);
    }
    void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED)
        return iisan_fail(err, errlen, IISAN_EIO, "%s: mmap: %s", path, strerror(e));
    st_file *f = calloc(1, sizeof *f);
    if (!f) {
        munmap(map, len);
        return iisan_fail(err, errlen, IISAN_ENOMEM, "%s: out of memory", path);
    }
    f->map = map;
    f->map_len = len;
    int rc = parse_header(f, map, len, path, err, errlen);
    if (rc) {
        st_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

const st_tensor *st_find(const st_file *f, const char *name) {
    st_tensor key = {.name = name};
    return f->n_tensors ? bsearch(&key, f->tensors, f->n_tensors, sizeof key, cmp_tensor) : NULL;
}

const char *st_meta_get(const st_file *f, const char *key) {
    st_meta_kv k = {key, NULL};
    const st_meta_kv *m = f->n_meta ? bsearch(&k, f->meta, f->n_meta, sizeof k, cmp_meta) : NULL;
    return m ? m->value : NULL;
}

/* ---- writer ---- */

typedef struct {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;
    size_t nbytes;
    uint64_t off;
} wtensor;

struct st_writer {
    wtensor *t;
    size_t n, cap;
    char **mk, **mv;
    size_t nm, capm;
};

st_writer *st_writer_new(void) { return calloc(1, sizeof(st_writer)); }

void st_writer_free(st_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n; i++)
        free(w->t[i].name);
    for (size_t i = 0; i < w->nm; i++)
        free(w->mk[i]), free(w->mv[i]);
    free(w->t);
    free(w->mk);
    free(w->mv);
    free(w);
}

static int valid_utf8(const char *s) {
    json_t *j = json_string(s); /* jansson validates UTF-8 */
    json_decref(j);
    return j != NULL;
}

int st_writer_add(st_writer *w, const char *name, st_dtype dtype, int ndim, const int64_t *shape,
                  const void *data) {
    if (!name || !*name || !strcmp(name, "__metadata__") || !valid_utf8(name) ||
        (unsigned)dtype >= ST_NDTYPES || ndim < 0 || ndim > ST_MAX_DIMS || (ndim && !shape))
        return IISAN_EINVAL;
    for (size_t i = 0; i < w->n; i++)
        if (!strcmp(w->t[i].name, name)) return IISAN_EINVAL;
    uint64_t bytes = dtypes[dtype].size;
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0 || __builtin_mul_overflow(bytes, (uint64_t)shape[i], &bytes))
            return IISAN_EINVAL;
    if (bytes > SIZE_MAX / 2 || (bytes && !data)) return IISAN_EINVAL;
    if (w->n == w->cap) {
        size_t nc = w->cap ? 2 * w->cap : 16;
        wtensor *p = realloc(w->t, nc * sizeof *p);
        if (!p) return IISAN_ENOMEM;
        w->t = p;
        w->cap = nc;
    }
    wtensor *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) return IISAN_ENOMEM;
    t->dtype = dtype;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        t->shape[i] = shape[i];
    t->data = data;
    t->nbytes = (size_t)bytes;
    w->n++;
    return 0;
}

int st_writer_meta(st_writer *w, const char *key, const char *value) {
    if (!key || !value || !valid_utf8(key) || !valid_utf8(value)) return IISAN_EINVAL;
    char *v = strdup(value);
    if (!v) return IISAN_ENOMEM;
    for (size_t i = 0; i < w->nm; i++)
        if (!strcmp(w->mk[i], key)) {
            free(w->mv[i]);
            w->mv[i] = v;
            return 0;
        }
    if (w->nm == w->capm) {
        size_t nc = w->capm ? 2 * w->capm : 8;
        char **a = realloc(w->mk, nc * sizeof *a);
        if (a) w->mk = a;
        char **b = realloc(w->mv, nc * sizeof *b);
        if (b) w->mv = b;
        if (!a || !b) {
            free(v);
            return IISAN_ENOMEM;
        }
        w->capm = nc;
    }
    if (!(w->mk[w->nm] = strdup(key))) {
        free(v);
        return IISAN_ENOMEM;
    }
    w->mv[w->nm++] = v;
    return 0;
}

/* data order: larger dtypes first so that every tensor sits on its alignment */
static int cmp_layout(const void *a, const void *b) {
    const wtensor *x = *(wtensor *const *)a, *y = *(wtensor *const *)b;
    size_t sx = dtypes[x->dtype].size, sy = dtypes[y->dtype].size;
    if (sx != sy) return sx > sy ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int write_all(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n) {
        ssize_t k = write(fd, c, n > ((size_t)1 << 30) ? (size_t)1 << 30 : n);
        if (k < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        c += k;
        n -= (size_t)k;
    }
    return 0;
}

/* lays the data out (offsets into w->t, order[] = the write order) */
static char *header_json(st_writer *w, wtensor **order, size_t *len) {
    for (size_t i = 0; i < w->n; i++)
        order[i] = &w->t[i];
    qsort(order, w->n, sizeof *order, cmp_layout);
    uint64_t off = 0;
    for (size_t i = 0; i < w->n; i++) {
        order[i]->off = off;
        off += order[i]->nbytes;
    }
    json_t *root = json_object();
    int bad = !root;
    for (size_t i = 0; !bad && i < w->n; i++) {
        wtensor *t = &w->t[i];
        json_t *shape = json_array(), *offs = json_array();
        for (int d = 0; shape && d < t->ndim; d++)
            bad |= json_array_append_new(shape, json_integer(t->shape[d]));
        bad |= !offs || json_array_append_new(offs, json_integer((json_int_t)t->off)) ||
               json_array_append_new(offs, json_integer((json_int_t)(t->off + t->nbytes)));
        json_t *e = json_pack("{s:s, s:o, s:o}", "dtype", dtypes[t->dtype].name, "shape", shape,
                              "data_offsets", offs);
        bad |= !e || json_object_set_new(root, t->name, e);
    }
    if (!bad && w->nm) {
        json_t *m = json_object();
        for (size_t i = 0; m && i < w->nm; i++)
            bad |= json_object_set_new(m, w->mk[i], json_string(w->mv[i]));
        bad |= !m || json_object_set_new(root, "__metadata__", m);
    }
    char *s = bad ? NULL : json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(root);
    if (!s) return NULL;
    size_t n = strlen(s), padded = (8 + n + 7) / 8 * 8 - 8;
    char *p = realloc(s, padded + 1);
    if (!p) {
        free(s);
        return NULL;
    }
    memset(p + n, ' ', padded - n);
    p[padded] = '\0';
    *len = padded;
    return p;
}

static int fsync_dir_of(const char *path) {
    char dir[PATH_MAX];
    size_t n = strlen(path);
    if (n >= sizeof dir) return -1;
    memcpy(dir, path, n + 1);
    char *slash = strrchr(dir, '/');
    if (!slash)
        strcpy(dir, ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

int st_writer_write(st_writer *w, const char *path, char *err, size_t errlen) {
    size_t hlen;
    wtensor **order = malloc((w->n ? w->n : 1) * sizeof *order);
    char *hdr = order ? header_json(w, order, &hlen) : NULL;
    if (!hdr) {
        free(order);
        return iisan_fail(err, errlen, IISAN_ENOMEM, "%s: building the header failed", path);
    }
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
        free(hdr);
        free(order);
        return iisan_fail(err, errlen, IISAN_EINVAL, "%s: path too long", path);
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        free(hdr);
        free(order);
        return iisan_fail(err, errlen, IISAN_EIO, "%s: %s", tmp, strerror(e));
    }
    uint64_t n64 = hlen;
    int bad = write_all(fd, &n64, 8) || write_all(fd, hdr, hlen);
    for (size_t i = 0; !bad && i < w->n; i++)
        if (order[i]->nbytes) bad = write_all(fd, order[i]->data, order[i]->nbytes);
    int e = errno;
    free(hdr);
    free(order);
    if (!bad && fsync(fd)) bad = 1, e = errno;
    if (close(fd) && !bad) bad = 1, e = errno;
    if (!bad && rename(tmp, path)) bad = 1, e = errno;
    if (bad) {
        unlink(tmp);
        return iisan_fail(err, errlen, IISAN_EIO, "%s: writing: %s", path, strerror(e));
    }
    if (fsync_dir_of(path))
        return iisan_fail(err, errlen, IISAN_EIO, "%s: syncing its directory: %s", path,
                          strerror(errno));
    return 0;
}

/* safetensors files (https://github.com/huggingface/safetensors, format only):
 *
 *   u64 LE   N, the header's length
 *   N bytes  JSON object: "name": {"dtype": "F32", "shape": [2, 3],
 *            "data_offsets": [begin, end]}, ... and optionally
 *            "__metadata__": {"key": "value", ...} (strings only)
 *   ...      the data; offsets are relative to byte 8 + N, little-endian
 *
 * The reader maps the file and validates the whole header before anything is
 * exposed: header length within the file (and at most 100 MiB), valid JSON
 * without duplicate keys, known dtypes, at most 8 dimensions, offsets inside
 * the data area, sizes equal to dtype size x elements, no two tensors
 * overlapping. A malformed file is IISAN_EFORMAT with "path: problem".
 *
 * The writer sorts the header's keys by name (tensors and __metadata__), lays
 * the data out contiguously with every tensor on its dtype's alignment, pads
 * the header with spaces so the data starts 8-byte aligned, and writes
 * path.tmp, fsyncs it, renames it over path and fsyncs the directory. */
#ifndef IISAN_STORE_SAFETENSORS_H
#define IISAN_STORE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8

typedef enum {
    ST_BOOL,
    ST_U8,
    ST_I8,
    ST_I16,
    ST_U16,
    ST_F16,
    ST_BF16,
    ST_I32,
    ST_U32,
    ST_F32,
    ST_I64,
    ST_U64,
    ST_F64,
    ST_NDTYPES
} st_dtype;

const char *st_dtype_name(st_dtype t); /* "F32" */
size_t st_dtype_size(st_dtype t);      /* bytes per element */
int st_dtype_parse(const char *name);  /* st_dtype, or -1 */

typedef struct {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data; /* into the mapping: alignment is the file's business */
    size_t nbytes;
} st_tensor;

typedef struct {
    const char *key, *value;
} st_meta_kv;

typedef struct {
    size_t n_tensors;
    st_tensor *tensors; /* sorted by name */
    size_t n_meta;
    st_meta_kv *meta; /* __metadata__, sorted by key */
    /* private */
    void *map;
    size_t map_len;
    char *strings;
} st_file;

/* 0, or IISAN_EIO / IISAN_EFORMAT / IISAN_ENOMEM with "path: problem" */
int st_open(st_file **out, const char *path, char *err, size_t errlen);
/* the same over bytes in memory (not copied: they must outlive the file) */
int st_parse(st_file **out, const void *bytes, size_t len, const char *name, char *err,
             size_t errlen);
void st_close(st_file *f);
const st_tensor *st_find(const st_file *f, const char *name);
const char *st_meta_get(const st_file *f, const char *key); /* NULL when absent */
size_t st_numel(const st_tensor *t);
/* the tensor's st_numel(t) elements as fp32 into dst: F32, F16 or BF16; another
 * dtype or a non-finite value is IISAN_EFORMAT with "path: name ..." */
int st_read_f32(const st_tensor *t, float *dst, const char *path, char *err, size_t errlen);

typedef struct st_writer st_writer;
st_writer *st_writer_new(void);
void st_writer_free(st_writer *w);
/* data is not copied: it must stay valid until st_writer_write. Names must be
 * unique, non-empty, valid UTF-8 and not "__metadata__". 0 or IISAN_EINVAL /
 * IISAN_ENOMEM. */
int st_writer_add(st_writer *w, const char *name, st_dtype dtype, int ndim, const int64_t *shape,
                  const void *data);
int st_writer_meta(st_writer *w, const char *key, const char *value); /* replaces a key */
int st_writer_write(st_writer *w, const char *path, char *err, size_t errlen);

#endif

/* Line-oriented input for the TSV importers: a bounded line reader, a UTF-8
 * validator, and a small string -> u32 hash map (duplicate detection). */
#ifndef IISAN_STORE_TSV_H
#define IISAN_STORE_TSV_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define TSV_MAX_LINE (1u << 20) /* bytes per line, without the newline */

typedef struct {
    FILE *f;
    const char *path;
    char *buf; /* [TSV_MAX_LINE + 2 + read chunk] */
    size_t cap, beg, end;
    int eof;
    uint64_t lineno;   /* 1-based number of the line last returned */
    uint64_t consumed; /* bytes of the file consumed so far */
    uint64_t size;     /* file size when known (progress), else 0 */
} tsv_reader;

/* 0, or IISAN_EIO / IISAN_ENOMEM with "path: reason" in err */
int tsv_open(tsv_reader *r, const char *path, char *err, size_t errlen);
void tsv_close(tsv_reader *r);
/* back to the first line (an import restarted after the map grew) */
int tsv_rewind(tsv_reader *r, char *err, size_t errlen);

/* Next line, NUL-terminated in place, without its "\n" and one trailing
 * "\r"; a UTF-8 byte-order mark opening line 1 is skipped. Returns 1 with
 * *line / *len set, 0 at the end of the file, or a negative IISAN_E* code
 * with "path:line: problem" in err (line longer than TSV_MAX_LINE, a NUL
 * byte, invalid UTF-8, a read error). */
int tsv_next(tsv_reader *r, char **line, size_t *len, char *err, size_t errlen);

/* offset of the first byte that is not part of valid UTF-8 (overlong forms,
 * surrogates and code points above U+10FFFF are invalid), or n when all of
 * s[0..n) is valid */
size_t utf8_check(const void *s, size_t n);

/* copies s[0..n) into out[cap] for a message: at most max bytes, cut at a
 * character boundary, with "..." when cut */
void tsv_quote(char *out, size_t cap, const char *s, size_t n, size_t max);

/* string -> u32 map, open addressing; keys are copied */
typedef struct {
    char *key; /* NULL: empty slot */
    uint32_t hash, len, val;
} strmap_slot;

typedef struct {
    strmap_slot *slots;
    size_t cap, n;
} strmap;

void strmap_init(strmap *m);
void strmap_free(strmap *m);
void strmap_clear(strmap *m);
/* inserts key -> val when absent (returns 0); when present returns 1 and the
 * stored value in *old; IISAN_ENOMEM on allocation failure */
int strmap_put(strmap *m, const char *key, size_t len, uint32_t val, uint32_t *old);
/* 1 with the value in *val when present, else 0 */
int strmap_get(const strmap *m, const char *key, size_t len, uint32_t *val);

#endif

/* Extensions to store/store.h used by the CLI and the tests: import progress,
 * the LMDB map-size limits, and the store's figures for `iisan info`. */
#ifndef IISAN_STORE_STORE_EXT_H
#define IISAN_STORE_STORE_EXT_H

#include <stddef.h>
#include <stdint.h>

#include "store/store.h"

#define IISAN_STORE_FORMAT 1u /* meta "format" = "iisan-store 1" */

typedef struct {
    const char *path; /* the file being imported */
    const char *unit; /* "lines" (TSV) or "items" (hidden states) */
    uint64_t done;    /* units so far */
    double fraction;  /* of the file, 0..1 */
    int attempt;      /* 1, then 2, 3, ... when the map grew and the file is read again */
} store_progress;

/* fn is called every few thousand units of an import, and once at its end
 * with fraction 1 and done = the records imported (non-blank lines, or items
 * times modalities); NULL turns it off */
typedef void (*store_progress_fn)(void *arg, const store_progress *p);
void store_set_progress(iisan_store *s, store_progress_fn fn, void *arg);

/* Process-wide LMDB map sizes for stores opened afterwards: a store starts
 * with a map of `initial` bytes and doubles it whenever a write finds it full,
 * up to `max` (defaults 1 GiB and 1 TiB; tests use small ones). 0 keeps a
 * value. */
void store_set_map_limits(size_t initial, size_t max);

typedef struct {
    uint64_t map_bytes;  /* current map size */
    uint64_t used_bytes; /* pages in use */
    uint32_t format;     /* IISAN_STORE_FORMAT */
} store_usage;
int store_usage_get(iisan_store *s, store_usage *u);

#endif

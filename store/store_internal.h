/* Shared between store/store.c and store/import.c; not part of the API. */
#ifndef IISAN_STORE_STORE_INTERNAL_H
#define IISAN_STORE_STORE_INTERNAL_H

#include <lmdb.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "store/store.h"
#include "store/store_ext.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the store and safetensors code assume a little-endian host"
#endif

/* item record flags (docs/formats.md) */
#define ITEM_TITLED 1u     /* has a title from items.tsv */
#define ITEM_FROM_USERS 2u /* added by a users import (no catalogue entry) */
#define ITEM_HDR 6u        /* flags u32 | id length u16 */

struct iisan_store {
    MDB_env *env;
    MDB_dbi meta, item_by_id, item, state[2], user, ckpt, ckpt_meta;
    char *dir;
    size_t map_bytes, map_max;
    unsigned max_key;   /* LMDB's key size limit (511) */
    atomic_int readers; /* open store_readers: the map cannot move under them */
    store_progress_fn progress;
    void *progress_arg;
};

/* doubles the map up to its limit (IISAN_EFULL with a message when it cannot:
 * at the limit, or a reader of this process is open); the caller must be the
 * only thread using the environment (store/interactions.c: its exclusive lock) */
int store_grow_map(iisan_store *s, char *err, size_t errlen);
/* another process grew the map: adopt its size; MDB_MAP_RESIZED while a reader
 * of this process is open; same exclusivity as store_grow_map */
int store_adopt_map(iisan_store *s);

/* internal status: the map is full; grow it and run the transaction again */
#define ST_RETRY 1

void store_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* MDB_MAP_FULL -> ST_RETRY (no message); anything else -> IISAN_EIO or
 * IISAN_EFULL with "what: LMDB's message" */
int store_lmdb(int rc, const char *what, char *err, size_t errlen);
/* commits txn: 0, ST_RETRY (map full), or an IISAN_E* with err. LMDB reports a short write
 * as EIO, which is what a full disk gives it: with the store's filesystem (nearly) full,
 * that EIO is reported as IISAN_ENOSPC. */
int store_commit(iisan_store *s, MDB_txn *txn, char *err, size_t errlen);

/* Runs fn inside one write transaction and commits it. When fn (or the
 * commit) finds the map full, the transaction is aborted, the map doubled
 * and fn run again from the start with attempt + 1, so fn must reset its
 * state from ctx on every call. Any other non-zero result aborts. */
typedef int (*store_txn_fn)(iisan_store *s, MDB_txn *txn, void *ctx, int attempt, char *err,
                            size_t errlen);
int store_write(iisan_store *s, store_txn_fn fn, void *ctx, char *err, size_t errlen);

int store_read_begin(iisan_store *s, MDB_txn **txn);

/* highest u32 key of an MDB_INTEGERKEY database, 0 when empty; < 0 on error */
int64_t store_last_key(MDB_txn *txn, MDB_dbi dbi);

/* u32 counter in meta (0 when absent) */
int store_meta_u32(MDB_txn *txn, iisan_store *s, const char *key, uint32_t *v);
int store_meta_put_u32(MDB_txn *txn, iisan_store *s, const char *key, uint32_t v);

/* checks a modality's recorded backbone / shape against these, or records
 * them when the store has none: 0, IISAN_EMISMATCH ("src: ..."), ST_RETRY */
int store_states_check(iisan_store *s, MDB_txn *txn, int modality, const char *backbone,
                       int nstates, int width, const char *src, char *err, size_t errlen);

extern const char *const store_modality_name[2];

#endif

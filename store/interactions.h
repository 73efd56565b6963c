/* Logged interactions for the serving daemon: appends to users' sequences in
 * the store's user database, many interactions in one durable write
 * transaction (group commit), plus an append-only log of what was appended
 * (database "ilog", created on first use):
 *
 *   ilog   u64 sequence number (MDB_INTEGERKEY, 1, 2, ...)
 *          -> i64 timestamp | u32 catalogue index | user id (UTF-8, no NUL)
 *
 *   item_deleted  u32 catalogue index (MDB_INTEGERKEY) -> i64 time of the deletion
 *   serve         ASCII name -> u32 (the daemon's persistent state: "pinned",
 *                 the checkpoint version a rollback chose, 0 or absent = latest);
 *                 "bus_pos" -> the Redis stream id applied last (text, cluster mode)
 *   jobs          u32 job id (MDB_INTEGERKEY) -> the job's record, JSON text
 *                 (GET /admin/jobs/{id}), rewritten at each change of state
 *
 * Catalogue changes from the API (POST / DELETE /items) write the same item
 * records as `iisan import --items` (docs/formats.md). Catalogue indexes are
 * never reused, so a deleted item keeps its record and index; item_deleted
 * only marks it, and the daemon never recommends a marked item.
 *
 * Threads. A store_ix handle makes one store safe to use from many threads of
 * one process: LMDB's map may only be resized while no transaction of the
 * process is open, so every read here (and every caller that wraps its own
 * store calls in store_ix_rdlock / store_ix_unlock) holds a shared lock, and
 * growing the map takes it exclusively. Writes are serialised by LMDB. */
#ifndef IISAN_STORE_INTERACTIONS_H
#define IISAN_STORE_INTERACTIONS_H

#include <stddef.h>
#include <stdint.h>

#include "store/store.h"

typedef struct store_ix store_ix;

typedef struct {
    const char *user_id; /* 1..511 bytes, NUL-terminated */
    uint32_t item;       /* catalogue index (1..store_item_count) */
    int64_t timestamp;   /* caller's (Unix seconds by convention) */
} store_interaction;

/* Opens (creating when missing) the ilog database of an open store. */
int store_ix_open(iisan_store *s, store_ix **out, char *err, size_t errlen);
void store_ix_close(store_ix *x);
iisan_store *store_ix_store(store_ix *x);

/* Appends n interactions in order, in ONE write transaction committed with
 * fsync (LMDB's default durability): either all are durable or none is. An
 * item outside the catalogue is IISAN_EINVAL (nothing written). A full map is
 * grown (doubling, up to the store's limit) and the transaction run again.
 * *first_seq (may be NULL) gets the ilog number of the first one. */
int store_ix_append(store_ix *x, const store_interaction *v, size_t n, uint64_t *first_seq,
                    char *err, size_t errlen);

/* Cluster mode: store_ix_append (n may be 0) and, in the SAME transaction, a
 * consumer's read position pos (a string, e.g. a Redis stream id) under key
 * in the serve database: rows and position are durable together, so a
 * consumer that resumes from the stored position applies nothing twice. */
int store_ix_append_at(store_ix *x, const store_interaction *v, size_t n, const char *key,
                       const char *pos, uint64_t *first_seq, char *err, size_t errlen);
/* the position stored under key into buf: 0, IISAN_ENOTFOUND, IISAN_EIO */
int store_ix_pos_get(store_ix *x, const char *key, char *buf, size_t cap);

/* A user's stored sequence (catalogue indexes, oldest first) as a malloc'd
 * copy; IISAN_ENOTFOUND for an unknown user. */
int store_ix_user_get(store_ix *x, const char *user_id, uint32_t **items, uint32_t *n);

/* Catalogue lookup under the shared lock (store_item_lookup). */
int store_ix_item_lookup(store_ix *x, const char *item_id, uint32_t *idx);

/* entries in ilog (interactions logged so far) and the highest catalogue index */
int store_ix_counts(store_ix *x, uint64_t *logged, uint32_t *items, uint32_t *users);

/* Shared lock around other store.h calls made while other threads use x;
 * the exclusive one around store.h writes that may grow the map
 * (store_ckpt_put). */
void store_ix_rdlock(store_ix *x);
void store_ix_wrlock(store_ix *x);
void store_ix_unlock(store_ix *x);

/* ---- catalogue ---- */

#define STORE_TITLE_MAX 8192 /* bytes of a title set through the API */

typedef struct {
    const char *item_id; /* in */
    const char *title;   /* in, tlen bytes */
    size_t tlen;
    uint32_t idx; /* out: catalogue index */
    int created;  /* out: 1 for a new item */
} store_item_put;

/* In ONE transaction, for each entry: adds item_id (the next catalogue index)
 * with its title, or replaces a known item's title (clearing FROM_USERS, as
 * items.tsv does), and clears a deletion mark. A title holding NUL, TAB, CR or
 * LF, or longer than STORE_TITLE_MAX, is IISAN_EINVAL (nothing written). */
int store_ix_items_put(store_ix *x, store_item_put *v, size_t n, char *err, size_t errlen);

/* Marks a catalogue item deleted; IISAN_ENOTFOUND for an unknown id. */
int store_ix_item_delete(store_ix *x, const char *item_id, uint32_t *idx, char *err, size_t errlen);

typedef struct {
    uint32_t idx;
    int titled, from_users, deleted;
    int has_state[2]; /* IISAN_TEXT, IISAN_IMAGE */
    char title[STORE_TITLE_MAX + 1];
} store_item_info;
/* IISAN_ENOTFOUND for an unknown id */
int store_ix_item_info(store_ix *x, const char *item_id, store_item_info *out);

/* the daemon's u32 settings in "serve" (absent: 0) */
int store_ix_state_get(store_ix *x, const char *key, uint32_t *v);
int store_ix_state_put(store_ix *x, const char *key, uint32_t v, char *err, size_t errlen);

/* every deleted catalogue index, ascending (malloc'd; *n may be 0) */
int store_ix_deleted(store_ix *x, uint32_t **idx, uint32_t *n);

/* ---- retraining jobs ---- */

/* Stores (or replaces) job id's record, one durable transaction. */
int store_ix_job_put(store_ix *x, uint32_t id, const char *json, char *err, size_t errlen);
/* job id's record (malloc'd, NUL-terminated) or IISAN_ENOTFOUND */
int store_ix_job_get(store_ix *x, uint32_t id, char **json);
/* Calls fn for the last max jobs, newest first (json NUL-terminated, valid
 * during the call). 0 or IISAN_EIO. */
int store_ix_jobs_last(store_ix *x, int max, void (*fn)(void *arg, uint32_t id, const char *json),
                       void *arg);

#endif

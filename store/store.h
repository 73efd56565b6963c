/* store/: one LMDB environment per data directory.
 *
 * Named databases (see docs/formats.md for value layouts):
 *   meta        string key -> bytes   (format version, per-modality state info)
 *   item_by_id  item id (UTF-8)    -> u32 catalogue index (1-based, never reused)
 *   item        u32 index (native)  -> record: flags u32 | id len u16 | id | title
 *   state_text  u32 index -> fp16 [nstates * width]
 *   state_image u32 index -> fp16 [nstates * width]
 *   user        user id (UTF-8)    -> u32 catalogue indexes, oldest first
 *   ckpt        u32 version        -> checkpoint blob (core/checkpoint.h layout)
 *   ckpt_meta   u32 version        -> JSON text (model kind, figures, time)
 *
 * Every function returns 0 on success or a negative IISAN_E* code, and on
 * failure writes a one-line message (naming file and line where there is one)
 * into err[errlen] when err is not NULL. Imports are all-or-nothing: a bad
 * file aborts the write transaction, so the store never holds half a file.
 */
#ifndef IISAN_STORE_STORE_H
#define IISAN_STORE_STORE_H

#include <stddef.h>
#include <stdint.h>

enum {
    IISAN_OK = 0,
    IISAN_EIO = -1,       /* file or LMDB I/O failure */
    IISAN_EFORMAT = -2,   /* malformed input (message names file:line) */
    IISAN_ENOTFOUND = -3, /* key not present */
    IISAN_EMISMATCH = -4, /* e.g. hidden states from another backbone/shape */
    IISAN_ENOMEM = -5,
    IISAN_EINVAL = -6,   /* bad argument */
    IISAN_EFULL = -7,    /* LMDB map full even after growing */
    IISAN_EBACKEND = -8, /* the compute backend recorded a failure (kernels/backend.h status) */
    IISAN_ENOSPC = -9,   /* the device holding the store is full (ENOSPC, EDQUOT) */
};
const char *iisan_strerror(int code); /* "IISAN_EFORMAT: malformed input" */
/* formats the message into err[errlen] (when err is not NULL) and returns code */
int iisan_fail(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

enum { IISAN_TEXT = 0, IISAN_IMAGE = 1 }; /* modality */

typedef struct iisan_store iisan_store;

/* Opens (creating when create != 0) the store in directory dir. */
int store_open(iisan_store **out, const char *dir, int create, char *err, size_t errlen);
void store_close(iisan_store *s);

/* ---- catalogue ---- */
uint32_t store_item_count(iisan_store *s); /* highest catalogue index */
int store_item_lookup(iisan_store *s, const char *item_id, uint32_t *idx);
/* copies the id / title (NUL-terminated, truncated to cap) */
int store_item_get(iisan_store *s, uint32_t idx, char *id, size_t idcap, char *title,
                   size_t titlecap);
uint32_t store_items_with_title(iisan_store *s);

/* items.tsv: item_id<TAB>title per line. New ids get the next indexes, known
 * ids get their title updated. Empty ids, missing tab, duplicate ids within
 * the file, invalid UTF-8, and a truncated last line (no newline is fine; a
 * NUL byte is not) are IISAN_EFORMAT naming path:line. *n_added / *n_updated
 * may be NULL. */
int store_import_items(iisan_store *s, const char *path, uint32_t *n_added, uint32_t *n_updated,
                       char *err, size_t errlen);

/* users.tsv: user_id<TAB>item_id item_id ... (oldest first). A user line
 * replaces that user's sequence. An item id unknown to the catalogue is an
 * IISAN_EFORMAT error naming path:line and the id, unless add_unknown_items
 * is set (interactions-only catalogues), in which case it is added with no
 * title. */
int store_import_users(iisan_store *s, const char *path, int add_unknown_items, uint32_t *n_users,
                       uint64_t *n_interactions, char *err, size_t errlen);

/* Hidden states in safetensors (docs/formats.md): tensors "text" and/or
 * "image" [N, L+1, D] (F16 or F32), "item_ids" U8 [bytes] holding N
 * newline-separated ids, metadata "text_backbone" / "image_backbone".
 * Unknown item ids: IISAN_EFORMAT. A modality whose recorded backbone,
 * L+1 or D differs from what the store holds: IISAN_EMISMATCH with both
 * sides in the message. */
int store_import_states(iisan_store *s, const char *path, uint32_t *n_items, char *err,
                        size_t errlen);

typedef struct {
    char backbone[128];
    int nstates;    /* L + 1 */
    int width;      /* D */
    uint32_t count; /* items that have states of this modality */
} store_states_info;
/* IISAN_ENOTFOUND when the modality has no states */
int store_states_info_get(iisan_store *s, int modality, store_states_info *out);

/* Writes one item's states (fp16, nstates*width) for modality; the first
 * write of a modality records backbone/nstates/width, later ones must match
 * (IISAN_EMISMATCH). Used by importers and, later, encoders. */
int store_put_states(iisan_store *s, int modality, const char *backbone, int nstates, int width,
                     uint32_t n, const uint32_t *idx, const uint16_t *states, char *err,
                     size_t errlen);

/* ---- zero-copy reads for training and evaluation ----
 * A reader reads through one read transaction; pointers it returns point into the LMDB map
 * and stay valid until store_reader_release or store_reader_end. A release ends the
 * transaction's snapshot (mdb_txn_reset) and the next read takes a fresh one
 * (mdb_txn_renew): a reader kept for a whole training job is released after each batch, so
 * that LMDB can reuse the pages that writes free meanwhile. While a reader exists the
 * process cannot grow the map (store_grow_map refuses). */
typedef struct store_reader store_reader;
int store_reader_begin(iisan_store *s, store_reader **r);
void store_reader_release(store_reader *r);
/* fp16 [nstates*width], or NULL when the item has no state of that modality (the store may
 * hold none of it) or when reading failed: an LMDB error (renewing a released transaction
 * included) or a value of the wrong size is
 * recorded in the reader (store_reader_error), a missing one is not */
const uint16_t *store_reader_states(store_reader *r, int modality, uint32_t idx);
/* the shape of a modality's states in the reader's snapshot: 0, or IISAN_ENOTFOUND when the
 * store holds none of that modality */
int store_reader_shape(const store_reader *r, int modality, int *nstates, int *width);
/* 0 while every read succeeded; else the first failure's code (IISAN_EIO: LMDB,
 * IISAN_EFORMAT: a value of the wrong size) with its message (naming the item) in msg */
int store_reader_error(const store_reader *r, char *msg, size_t len);
void store_reader_end(store_reader *r);

/* ---- users ---- */
uint32_t store_user_count(iisan_store *s);
/* calls fn for every user in key order; stops early when fn returns non-zero
 * (and returns that value) */
int store_users_foreach(iisan_store *s,
                        int (*fn)(const char *user_id, const uint32_t *items, uint32_t n,
                                  void *arg),
                        void *arg);

/* ---- checkpoints ----
 * put: stores blob and meta JSON in one transaction under version
 * (last version + 1), returned in *version. */
int store_ckpt_put(iisan_store *s, const void *blob, size_t len, const char *meta_json,
                   uint32_t *version);
/* put as a given version (cluster mode: a version from the model repository
 * keeps its number); IISAN_EINVAL when that version exists */
int store_ckpt_put_at(iisan_store *s, const void *blob, size_t len, const char *meta_json,
                      uint32_t version, char *err, size_t errlen);
/* get: version 0 means the latest. *blob / *meta are malloc'd copies. */
int store_ckpt_get(iisan_store *s, uint32_t version, void **blob, size_t *len, char **meta,
                   uint32_t *version_out);
/* versions ascending, malloc'd array */
int store_ckpt_list(iisan_store *s, uint32_t **versions, uint32_t *n);

#endif

/* From a store to a ready model: the one path every user of a model takes (`iisan train`,
 * `iisan eval`, `iisan info`, the retraining job, the daemon's loads through core/infer.c).
 *
 * session_open, in order:
 *   1. the checkpoint (modes other than SESSION_NEW): version 0 = the latest; its meta kept;
 *   2. today's dataset from the store's users (dataset_build), cut by the config's n and the
 *      min_len it was trained with;
 *   3. the model's items: the dataset's (SESSION_NEW, _WARM, _EVAL), or the checkpoint's own
 *      (SESSION_SERVE, which maps them itself, core/infer.c); a SASRec-ID model gets one
 *      embedding row per item;
 *   4. the model (model_create) and its parameters: initialised from the seed, then every
 *      tensor of the checkpoint laid over them by name, and SASRec-ID's embedding rows by
 *      catalogue index (the one catalogue -> row remap): _WARM keeps the seed's rows for
 *      items the checkpoint never saw, _EVAL and _SERVE refuse them;
 *   5. IISAN's hidden states: a store reader read in place (backends with caps.host_memory),
 *      or every needed item's states made resident in backend memory (core/resident.h) for
 *      the dataset's items, or for the whole catalogue (SESSION_SERVE: items the checkpoint
 *      does not know are embedded at load too).
 * A popularity config stops after step 2 (no backend needed).
 *
 * The store reader holds an LMDB read transaction only while a batch gathers its states: the
 * towers call iisan_states.release after each gather (core/model.h), which ends the
 * transaction (store_reader_release), and the next read renews it; so a training job never
 * keeps the map from reusing the pages that writes free meanwhile (tests/test_session.c).
 */
#ifndef IISAN_CORE_SESSION_H
#define IISAN_CORE_SESSION_H

#include <stddef.h>
#include <stdint.h>

#include "core/checkpoint.h"
#include "core/dataset.h"
#include "core/model.h"
#include "core/resident.h"
#include "store/store.h"

typedef enum {
    SESSION_NEW,   /* config's model on today's dataset, initialised from the seed */
    SESSION_WARM,  /* the checkpoint's config on today's dataset, warm-started from it */
    SESSION_EVAL,  /* the checkpoint's parameters on today's dataset, every item known */
    SESSION_SERVE, /* the checkpoint as it was stored; states for the whole catalogue */
} session_mode;

typedef struct {
    session_mode mode;
    const iisan_config *config; /* SESSION_NEW: what to build (n_items is set here) */
    int min_len;                /* SESSION_NEW: users with fewer items are dropped */
    uint32_t version;           /* the checkpoint (0 = the latest) */
    int cap_users;              /* users per batch the model has room for (0 = 64) */
    uint64_t seed;              /* initialisation */
    int need_users;             /* a dataset without users is an error (training) */
} session_options;

typedef struct {
    iisan_ckpt ck;       /* the checkpoint (modes other than SESSION_NEW) */
    char *meta;          /* its meta JSON, NULL when none */
    uint32_t version;    /* its version */
    iisan_dataset ds;    /* today's dataset */
    iisan_config c;      /* the model's config (SASRec-ID: n_items of its items) */
    iisan_model *m;      /* NULL for popularity; the session frees it unless taken (NULLed) */
    iisan_states st;     /* IISAN: the states m reads, valid until session_close */
    store_reader *rd;    /* IISAN: the store reader (the states' source, or the resident's) */
    resident_states *rs; /* the states resident in backend memory, NULL when read in place */
    int reused;          /* SASRec-ID rows the checkpoint gave (padding included) */
    double dataset_seconds, states_seconds;
} iisan_session;

/* Fills ss (zeroed first). be may be NULL for a popularity config. Returns 0, or an IISAN_E*
 * code with a message in err (errlen bytes): IISAN_ENOTFOUND when the store holds no such
 * checkpoint; IISAN_EBACKEND when the backend failed; IISAN_EIO when a state read failed;
 * IISAN_EFORMAT when the store's states do not fit the model. ss is freed on failure. The
 * caller serialises store access around it (store/interactions.h's lock). */
int session_open(iisan_session *ss, iisan_store *s, iisan_backend *be, const session_options *o,
                 char *err, size_t errlen);
void session_close(iisan_session *ss);

/* Ends the states (reader, resident copy) once only the model is needed: the reader keeps the
 * store's map from growing (store.h), and storing a version may need to grow it. */
void session_release_states(iisan_session *ss);

/* The checkpoint's sequence encoder alone: a SASRec-ID-shaped model of one item with room
 * for cap_users sequences and the checkpoint's seq.* parameters (serving's contexts). NULL
 * with a message when out of memory or the checkpoint lacks one of them. */
iisan_model *session_seq_model(const iisan_ckpt *ck, iisan_backend *be, int cap_users, char *err,
                               size_t errlen);

#endif

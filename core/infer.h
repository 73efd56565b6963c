/* Serving a checkpoint: one loaded model version, shared by every request
 * thread, with a pool of inference contexts.
 *
 * infer_load reads a checkpoint from the store, computes every model item's
 * embedding e_i once (model_item_embeddings; IISAN reads the hidden states
 * from the store, or takes the rows of a precomputed table: infer_options),
 * keeps the checkpoint's item mapping (model index 1..N -> catalogue index ->
 * item id) and the popularity of the items in the training parts of today's
 * dataset, and creates `contexts` inference contexts.
 *
 * An inference context is a small model of the sequence encoder only (the
 * checkpoint's seq.* parameters copied into a SASRec-ID-shaped model with
 * room for max_batch users), with its own score and top-k buffers. A batch of
 * requests (infer_recommend_batch) runs the sequence encoder once for all of
 * them, then takes each one's top-k: on a GPU one GEMM against the whole
 * table and the backend's top-k; on the CPU an exact top-k that scores the
 * items in order of decreasing norm and stops when no later item can enter
 * (core/score_cpu.h). iisan_model's workspaces are not thread-safe, so a batch
 * checks one context out of the pool (waiting when all are busy) and returns
 * it.
 *
 * Items added while serving (infer_add_items, IISAN only): the item tower's
 * parameters are kept, so a new item's e_i is computed from its hidden states
 * on the spot and appended to the table (up to `headroom` rows beyond the
 * checkpoint's); requests that start afterwards can return it and take it in
 * histories. Everything a request reads is either immutable or published with
 * release/acquire ordering: requests never lock against an addition.
 *
 * Lifetime: a version is reference-counted (infer_retain / infer_release);
 * the last release frees it. Uses only the public core and store APIs. */
#ifndef IISAN_CORE_INFER_H
#define IISAN_CORE_INFER_H

#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "kernels/backend.h"
#include "store/store.h"

typedef struct infer_model infer_model;

typedef struct {
    int contexts;    /* inference contexts (>= 1): batches computed at once */
    int max_k;       /* top-k capacity of each request */
    int max_exclude; /* exclusion-list capacity of each request */
    int max_batch;   /* requests per batch (>= 1; 0 = 1) */
    int headroom;    /* rows for items added while serving (IISAN; 0 = none) */
    int exhaustive;  /* CPU: score every item instead of pruning by norm (core/score_cpu.h) */
    /* IISAN: a precomputed item table (a cluster node's copy of the one the trainer published,
     * docs/scaling.md), read only during infer_load: table_n rows of d floats (host), row j
     * the e_i of item table_ids[j]. Model rows found in it take its row instead of being
     * embedded from the store's states, and its items that are in the catalogue but not in
     * the checkpoint are served as extras, so a store without states can serve the version.
     * NULL = none. */
    const float *table;
    const char *const *table_ids;
    int table_n, table_d; /* rows, and their width (must be the checkpoint's d) */
} infer_options;

typedef struct {
    uint32_t version;
    int kind;    /* MODEL_IISAN / MODEL_SASREC_ID */
    int n_items; /* N of the checkpoint */
    int n_extra; /* catalogue items with states it did not know, embedded at load (IISAN) */
    int n;       /* sequence length */
    int d;       /* embedding size */
    int nstates[2], D[2]; /* hidden states per item and their width, per modality (IISAN) */
    size_t params;        /* parameters of the checkpoint */
    int contexts;
    int max_k, max_exclude; /* capacities of each request */
    int max_batch;          /* requests per batch */
    int headroom;           /* rows for added items (0 for SASRec-ID) */
    double load_seconds;    /* reading, embedding the catalogue, contexts */
    long queries;           /* CPU: requests ranked so far by this version */
    double mean_scored;     /* CPU: items scored per request (the rest were pruned) */
    char meta[512];         /* the checkpoint's meta JSON (truncated) */
    char describe[256];     /* config_describe of the checkpoint's config */
} infer_info;

/* version 0 = the latest. be must outlive the model. Returns 0, or
 * IISAN_ENOTFOUND when the store holds no such checkpoint, IISAN_EBACKEND
 * when the backend failed while loading, or another negative code; err names
 * the problem. The caller serialises store access
 * (store/interactions.h's lock) around this call. */
int infer_load(iisan_store *s, uint32_t version, iisan_backend *be, const infer_options *opt,
               infer_model **out, char *err, int errlen);

void infer_retain(infer_model *im);
void infer_release(infer_model *im); /* frees on the last release */
void infer_get_info(const infer_model *im, infer_info *info);

/* items served now: N of the checkpoint plus the items added since */
int infer_n_items(const infer_model *im);
/* items added since load (infer_add_items), updates included */
int infer_n_added(const infer_model *im);

/* model index of an item id, 0 when the model does not know it */
int infer_lookup(const infer_model *im, const char *item_id);
/* model index of a catalogue index, 0 when not in the model */
int infer_lookup_cat(const infer_model *im, uint32_t cat);
/* the item id of a model index */
const char *infer_item_id(const infer_model *im, int idx);

/* One request of a batch: hist (model indexes, oldest first, nh >= 1; the
 * last n feed the sequence encoder), excl (model indexes never returned, ne <=
 * max_exclude), k (<= max_k). The results go to out_idx / out_score (room
 * for k), best first; cnt gets how many (fewer when the catalogue runs out),
 * or -1 when k, ne or nh are out of range. */
typedef struct {
    const int32_t *hist;
    int nh;
    const int32_t *excl;
    int ne;
    int k;
    int32_t *out_idx;
    float *out_score;
    int cnt;
} infer_query;

/* Runs q[0..nq) as one batch (nq <= max_batch; more are run in several).
 * Thread-safe. Returns 0, -1 when nq < 1, or IISAN_EBACKEND when the backend
 * has failed (its status, kernels/backend.h): then every cnt is -1. */
int infer_recommend_batch(infer_model *im, infer_query *q, int nq);

/* Top-k for one user: a batch of one. Returns cnt. Thread-safe. */
int infer_recommend(infer_model *im, const int32_t *hist, int nh, const int32_t *excl, int ne,
                    int k, int32_t *out_idx, float *out_score);

/* An item to embed while serving: its catalogue index and id, and its hidden
 * states (host fp16 [nstates[mod], D[mod]] per modality, NULL when the item has none of
 * that modality: the model uses zeros, as in training). */
typedef struct {
    const char *item_id;
    uint32_t cat;
    const uint16_t *states[2]; /* IISAN_TEXT, IISAN_IMAGE */
} infer_new_item;

/* Computes e_i of v[0..n) with the version's item tower and publishes them:
 * an unknown id gets the next model index, a known one a fresh row that takes
 * its id and catalogue index over (the old row is never returned again).
 * out_idx (may be NULL) gets the model indexes. All or nothing. Returns 0;
 * IISAN_EINVAL for a SASRec-ID version (an ID embedding needs training) or
 * states of another shape; IISAN_EFULL when the headroom is used up (a
 * reload makes room: the next version load embeds every catalogue item with
 * states); IISAN_EBACKEND when the backend failed (nothing published); err
 * says which. Thread-safe; additions are serialised. */
int infer_add_items(infer_model *im, const infer_new_item *v, int n, int32_t *out_idx, char *err,
                    int errlen);

/* Items never returned (deleted from the catalogue): on != 0 bans model
 * index idx, 0 lifts the ban. Thread-safe; requests that start afterwards
 * see it. */
void infer_ban(infer_model *im, int idx, int on);
int infer_banned_count(const infer_model *im);

/* The e_i of the served rows 1..infer_n_items into out (row-major [n, d],
 * room for rows rows): the item embedding table a model repository publishes
 * (cluster/repo.h). Returns n, or -1 when rows is too small. */
int infer_embeddings(const infer_model *im, float *out, int rows);

/* The popularity ranking (count in the training parts of the store's
 * dataset at load time, ties by lower index), skipping excl. Returns the
 * count written. Thread-safe. */
int infer_popular(const infer_model *im, const int32_t *excl, int ne, int k, int32_t *out_idx,
                  float *out_score);

#endif

/* Serving a checkpoint: one loaded model version, immutable once loaded and
 * shared by every request thread, with a pool of inference contexts.
 *
 * infer_load reads a checkpoint from the store, computes every model item's
 * embedding e_i once (model_item_embeddings; IISAN reads the hidden states
 * from the store), keeps the checkpoint's item mapping (model index 1..N ->
 * catalogue index -> item id) and the popularity of the items in the training
 * parts of today's dataset, and creates `contexts` inference contexts.
 *
 * An inference context is a small model of the sequence encoder only (the
 * checkpoint's seq.* parameters copied into a SASRec-ID-shaped model with
 * one user of capacity), with its own score and top-k buffers. iisan_model's
 * workspaces are not thread-safe, so a request checks one context out of the
 * pool (waiting when all are busy) and returns it: with as many contexts as
 * request threads nobody waits; with one the pool is a mutex.
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
    int contexts;    /* inference contexts (>= 1) */
    int max_k;       /* top-k capacity of each context */
    int max_exclude; /* exclusion-list capacity of each context */
} infer_options;

typedef struct {
    uint32_t version;
    int kind;      /* MODEL_IISAN / MODEL_SASREC_ID */
    int n_items;   /* N */
    int n;         /* sequence length */
    int d;         /* embedding size */
    size_t params; /* parameters of the checkpoint */
    int contexts;
    int max_k, max_exclude; /* capacities of each context */
    double load_seconds;    /* reading, embedding the catalogue, contexts */
    char meta[512];         /* the checkpoint's meta JSON (truncated) */
} infer_info;

/* version 0 = the latest. be must outlive the model. Returns 0, or
 * IISAN_ENOTFOUND when the store holds no such checkpoint, or another
 * negative code; err names the problem. The caller serialises store access
 * (store/interactions.h's lock) around this call. */
int infer_load(iisan_store *s, uint32_t version, iisan_backend *be, const infer_options *opt,
               infer_model **out, char *err, int errlen);

void infer_retain(infer_model *im);
void infer_release(infer_model *im); /* frees on the last release */
void infer_get_info(const infer_model *im, infer_info *info);

/* model index 1..N of an item id, 0 when the model does not know it */
int infer_lookup(const infer_model *im, const char *item_id);
/* model index of a catalogue index, 0 when not in the model */
int infer_lookup_cat(const infer_model *im, uint32_t cat);
/* the item id of model index 1..N */
const char *infer_item_id(const infer_model *im, int idx);

/* Top-k for one user: hist (model indexes, oldest first, nh >= 1; the last n
 * feed the sequence encoder), excl (model indexes never returned, ne <=
 * max_exclude). Writes up to k (<= max_k) items, best first, into out_idx /
 * out_score and returns how many (fewer when the catalogue runs out), or -1
 * when k or ne exceed the context's capacity. Thread-safe. */
int infer_recommend(infer_model *im, const int32_t *hist, int nh, const int32_t *excl, int ne,
                    int k, int32_t *out_idx, float *out_score);

/* Items never returned (deleted from the catalogue): on != 0 bans model
 * index idx, 0 lifts the ban. Thread-safe; requests that start afterwards
 * see it. */
void infer_ban(infer_model *im, int idx, int on);
int infer_banned_count(const infer_model *im);

/* The popularity ranking (count in the training parts of the store's
 * dataset at load time, ties by lower index), skipping excl. Returns the
 * count written. Thread-safe. */
int infer_popular(const infer_model *im, const int32_t *excl, int ne, int k, int32_t *out_idx,
                  float *out_score);

#endif

/* Encoding catalogue items with the built-in text encoder and storing their
 * hidden states: what `iisan encode` runs for the whole catalogue, and what a
 * server calls for one new item. */
#ifndef IISAN_CORE_ENCODE_ITEMS_H
#define IISAN_CORE_ENCODE_ITEMS_H

#include <stddef.h>
#include <stdint.h>

#include "core/encoder_bert.h"
#include "store/store.h"

/* called after each stored batch: items stored so far and of how many, and the
 * same in tokens (the work: batches run shortest titles first, so tokens give
 * the better estimate of the time left) */
typedef void (*encode_progress_fn)(void *arg, uint32_t done, uint32_t total, uint64_t tokens_done,
                                   uint64_t tokens_total);

/* Encodes the titles of the catalogue items idx[0..n) with e and stores their
 * text states (fp16 [L+1, D], store_put_states) under the name backbone.
 * Items are tokenized first and encoded in order of token count, in batches of
 * bert_max_batch(e) padded to their longest title; every batch is one store
 * write, so an interrupted run keeps what it finished. Items without a title
 * are skipped. A store whose text states come from another backbone or have
 * another shape is refused before any work (IISAN_EMISMATCH naming both).
 * *n_done (may be NULL) gets the number of items stored. Returns 0 or a
 * negative IISAN_E* with a message in err. progress may be NULL. */
int encode_items_text(bert_encoder *e, iisan_store *s, const char *backbone, const uint32_t *idx,
                      uint32_t n, uint32_t *n_done, encode_progress_fn progress, void *arg,
                      char *err, size_t errlen);

#endif

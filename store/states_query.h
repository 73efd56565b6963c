/* Queries over the hidden states a store holds, built on store/store.h's public
 * API only (the encoders' resumability: which items still need states). */
#ifndef IISAN_STORE_STATES_QUERY_H
#define IISAN_STORE_STATES_QUERY_H

#include <stdint.h>

#include "store/store.h"

/* The catalogue indexes (ascending) of items that have no states of modality;
 * with titled_only, only items with a non-empty title count (the text encoder's
 * work). *idx is malloc'd (NULL when *n == 0). Returns 0, IISAN_ENOMEM, or the
 * error of opening a read transaction. */
int store_items_missing_states(iisan_store *s, int modality, int titled_only, uint32_t **idx,
                               uint32_t *n);

#endif

/* Hidden-state sources (iisan_states, core/model.h) read from the store: a store reader's
 * states in place in the LMDB map (zero copy; host memory, so for backends with
 * caps.host_memory), and the check of a source's read errors. core/resident.h makes the
 * device-resident source from one of these. */
#ifndef IISAN_CORE_STATES_H
#define IISAN_CORE_STATES_H

#include <stddef.h>

#include "core/model.h"
#include "store/store.h"

/* The source of r's states: get returns an item's block in the map, NULL when it has none of
 * that modality; a failed read (LMDB, a value of the wrong size) also returns NULL and is
 * recorded, for states_check. A block is valid until the next release (which ends the
 * reader's read transaction: store_reader_release; the next get starts a fresh one); the
 * source until store_reader_end(r). */
iisan_states states_from_reader(store_reader *r);

/* st's release, when it has one: every block got from st so far is no longer used */
void states_release(const iisan_states *st);

/* 0 when every state st was asked for was read (a missing modality is not a failure); else
 * the first failure's IISAN_E* code with its message in msg (len bytes; msg may be NULL).
 * Work done with a failed source read zeros where states were: throw it away. */
int states_check(const iisan_states *st, char *msg, size_t len);

/* 0 when every modality r's store holds has the shape config c reads (config_nstates x
 * config_width; a modality the store lacks reads as zeros and always fits); else
 * IISAN_EFORMAT with a message naming both shapes in msg (len bytes). A model trained
 * before the store got a modality in another shape must not read it. */
int states_fit(const store_reader *r, const iisan_config *c, char *msg, size_t len);

#endif

/* Hidden states resident in backend memory: a list of items' fp16 states (a dataset's, or a
 * served version's catalogue, core/session.h), both
 * modalities, uploaded once into one backend allocation, so that a backend whose gather_half
 * reads only its own memory (CUDA: device memory, see kernels/cuda/cuda_backend.h) can train
 * and evaluate IISAN. On the CPU backend the block is host memory and the source gives the
 * same rows, value for value, as the source it was filled from.
 *
 * Placement: one allocation of the backend's memory; when that fails, one of pinned host
 * memory mapped into the device (be->alloc_host), which the same kernels read over the bus.
 *
 * Layout: slot s (list entry 0..N, a dataset's model item index) holds the text states, fp16
 * [nstates_t * Dt], then the image states [nstates_v * Dv] (the config's shapes: one shared
 * shape for symmetric IISAN, one per modality for Versa). An item without states of a
 * modality keeps a zero block and a cleared presence flag, and get() returns NULL for it (the
 * model uses zeros, as with the direct source). */
#ifndef IISAN_CORE_RESIDENT_H
#define IISAN_CORE_RESIDENT_H

#include <stddef.h>
#include <stdint.h>

#include "core/model.h"
#include "kernels/backend.h"

typedef struct resident_states resident_states;

/* Reads every item (catalogue index item_cat[i], i = 0..n_items: a dataset's item_cat, or
 * any list of catalogue indexes) from src for both modalities, in the shapes config c reads
 * (config_nstates x config_width), and uploads them in chunks into one allocation on be.
 * Returns 0 with *out set, or -1 with a message in err (errlen bytes). */
int states_resident_create(iisan_backend *be, const uint32_t *item_cat, int n_items,
                           const iisan_states *src, const iisan_config *c, resident_states **out,
                           char *err, int errlen);

/* An empty block of n_slots items (none present), in the shapes config c reads: a stage for
 * states_resident_put (serving's items embedded on the spot). 0, or -1 with a message. */
int states_resident_empty(iisan_backend *be, int n_slots, const iisan_config *c,
                          resident_states **out, char *err, int errlen);

/* Slot `slot` now serves catalogue item cat, with its states uploaded from host fp16 blocks
 * states[mod] (NULL: the item has none of that modality); the item the slot served before
 * is no longer served. 0, or -1 (slot out of range, out of memory). */
int states_resident_put(resident_states *rs, int slot, uint32_t cat,
                        const uint16_t *const states[2]);

/* The source to hand to train_run / model_evaluate: get(ctx, mod, cat) takes a CATALOGUE
 * index (as core/tower.c passes) and returns the backend address of that item's block, or
 * NULL when the item has no states of that modality or is not in the list. Valid until
 * states_resident_free. */
iisan_states resident_states_source(resident_states *rs);

/* Where the block lives: 0 in the backend's own memory, 1 in pinned host memory (when the
 * device could not hold it, or IISAN_STATES_IN_HOST=1): a GPU then reads every state over
 * the bus, so it works for catalogues larger than the device, at the bus's speed. */
int resident_states_in_host(const resident_states *rs);

/* Backend bytes held, and how many (item, modality) blocks are present. */
size_t resident_states_bytes(const resident_states *rs);
long resident_states_present(const resident_states *rs);

void states_resident_free(resident_states *rs);

#endif

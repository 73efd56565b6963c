/* Hidden states resident in backend memory: every dataset item's fp16 states, both
 * modalities, uploaded once into one backend allocation, so that a backend whose gather_half
 * reads only its own memory (CUDA: device memory, see kernels/cuda/cuda_backend.h) can train
 * and evaluate IISAN. On the CPU backend the block is host memory and the source gives the
 * same rows, value for value, as the source it was filled from.
 *
 * Placement: one allocation of the backend's memory; when that fails, one of pinned host
 * memory mapped into the device (be->alloc_host), which the same kernels read over the bus.
 *
 * Layout: slot s (model item index 0..N of the dataset) holds the text states, fp16
 * [nstates_t * Dt], then the image states [nstates_v * Dv] (the config's shapes: one shared
 * shape for symmetric IISAN, one per modality for Versa). An item without states of a
 * modality keeps a zero block and a cleared presence flag, and get() returns NULL for it (the
 * model uses zeros, as with the direct source). */
#ifndef IISAN_CORE_RESIDENT_H
#define IISAN_CORE_RESIDENT_H

#include <stddef.h>
#include <stdint.h>

#include "core/dataset.h"
#include "core/model.h"
#include "kernels/backend.h"

typedef struct resident_states resident_states;

/* Reads every item of ds (catalogue index ds->item_cat[i], i = 0..N) from src for both
 * modalities, in the shapes config c reads (config_nstates x config_width), and uploads them in chunks into one allocation on be.
 * Returns 0 with *out set, or -1 with a message in err (errlen bytes). */
int states_resident_create(iisan_backend *be, const iisan_dataset *ds, const iisan_states *src,
                           const iisan_config *c, resident_states **out, char *err, int errlen);

/* The source to hand to train_run / model_evaluate: get(ctx, mod, cat) takes a CATALOGUE
 * index (as core/tower.c passes) and returns the backend address of that item's block, or
 * NULL when the item has no states of that modality or is not in the dataset. Valid until
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

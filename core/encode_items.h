/* Encoding catalogue items with the built-in text and image encoders and
 * storing their hidden states: what `iisan encode` runs for the whole
 * catalogue, and what a server calls for one new item. */
#ifndef IISAN_CORE_ENCODE_ITEMS_H
#define IISAN_CORE_ENCODE_ITEMS_H

#include <stddef.h>
#include <stdint.h>

#include "core/encoder_bert.h"
#include "core/encoder_vit.h"
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

/* ---- images ---- */

/* What encode_items_images did with the items it was given. */
typedef struct {
    uint32_t encoded; /* image states stored */
    uint32_t missing; /* no image file for the item */
    uint32_t corrupt; /* an image file that could not be read or decoded */
} encode_image_counts;

/* called for each item whose image file could not be read or decoded: its
 * catalogue index, id and the problem ("path: reason") */
typedef void (*encode_image_skip_fn)(void *arg, uint32_t idx, const char *item_id,
                                     const char *problem);

/* The image file of item_id in dir: dir/ID.jpg, .jpeg, .png, .JPG, .JPEG or
 * .PNG, the first that exists (the format is told by the file's contents, not
 * its name). 0 with the path, or IISAN_ENOTFOUND (also for ids that cannot be
 * file names: containing '/', "." or ".."). */
int encode_image_path(const char *dir, const char *item_id, char *path, size_t cap);

/* Encodes the images of the catalogue items idx[0..n) found in dir
 * (encode_image_path) with e and stores their image states (fp16 [L+1, D])
 * under backbone. Each image is decoded, resized to the model's image size
 * and normalised as ViTImageProcessor does (core/image.h); batches of
 * vit_max_batch(e) images are one forward pass and one store write each, so
 * an interrupted run keeps what it finished. Items without an image file are
 * counted and skipped; items whose file is unreadable or corrupt are counted,
 * reported to skip (may be NULL) and skipped: neither stops the run. A store
 * whose image states come from another backbone or have another shape is
 * refused before any work (IISAN_EMISMATCH naming both). progress (may be
 * NULL) gets the items done (encoded or skipped as corrupt) of those with an
 * image file, twice (no token counts for images). Returns 0 or a negative
 * IISAN_E* (a store or encoder failure) with a message in err; *counts (may
 * be NULL) holds what was done either way. */
int encode_items_images(vit_encoder *e, iisan_store *s, const char *backbone, const char *dir,
                        const uint32_t *idx, uint32_t n, encode_image_counts *counts,
                        encode_image_skip_fn skip, encode_progress_fn progress, void *arg,
                        char *err, size_t errlen);

/* For a server: encodes one item's image from its file's bytes in memory
 * (JPEG or PNG) and stores its image states, replacing any it had. 0;
 * IISAN_EFORMAT when the bytes are not a decodable image (nothing stored);
 * IISAN_EMISMATCH for a store of another backbone; other IISAN_E* from the
 * encoder or the store. A vit_encoder runs one forward pass at a time: callers
 * on several threads serialise their calls. */
int encode_item_image(vit_encoder *e, iisan_store *s, const char *backbone, uint32_t idx,
                      const void *data, size_t len, char *err, size_t errlen);

#endif

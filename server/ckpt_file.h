/* Checkpoints as safetensors files (`iisan export` / `iisan import-ckpt`, and
 * the model repository of cluster mode): one F32 tensor per parameter under
 * its params.h name ([out, in] for linear weights), "item_ids" (U8: the
 * catalogue ids of model rows 1..N joined by '\n'), and metadata "format" =
 * "iisan-checkpoint", "format_version" = "1", "config" (the model config
 * JSON) and, on export, "version" and "figures" (the stored training
 * figures). Item ids make a file independent of any store's catalogue
 * indexes. docs/formats.md lists the tensors. */
#ifndef IISAN_SERVER_CKPT_FILE_H
#define IISAN_SERVER_CKPT_FILE_H

#include <stddef.h>
#include <stdint.h>

#include "store/store.h"

#define CKPT_FORMAT "iisan-checkpoint"

/* writes checkpoint version (0 = the latest) of s to path; *ver (may be
 * NULL) gets the version, *summary (may be NULL, 160 bytes) a description.
 * 0, or an IISAN_E* code with err. The caller serialises store access. */
int ckpt_file_export(iisan_store *s, uint32_t version, const char *path, uint32_t *ver,
                     char *summary, char *err, size_t errlen);

/* reads a checkpoint file into a blob (core/checkpoint.h) on s's catalogue
 * (every item id must be in it); 0 or an IISAN_E* code with err. */
int ckpt_file_read(iisan_store *s, const char *path, void **blob, size_t *len, char *err,
                   size_t errlen);

#endif

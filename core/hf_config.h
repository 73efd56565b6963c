/* Reading a Hugging Face config.json (shared by the BERT and ViT encoders). */
#ifndef IISAN_CORE_HF_CONFIG_H
#define IISAN_CORE_HF_CONFIG_H

#include <jansson.h>
#include <stddef.h>

/* Loads path as a JSON object into *out (json_decref it). 0, or IISAN_EIO /
 * IISAN_EFORMAT with "path: problem" (JSON errors with their line). */
int hf_config_load(const char *path, json_t **out, char *err, size_t errlen);

/* o[key] as an int in lo..hi into *out; a missing key takes def, or is an
 * error when def < 0. 0 or IISAN_EFORMAT naming path and key. */
int hf_config_int(json_t *o, const char *key, int def, int lo, int hi, int *out, const char *path,
                  char *err, size_t errlen);

#endif

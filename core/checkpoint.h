/* Checkpoint blobs, as stored in the store's ckpt database:
 *
 *   offset  size        field
 *   0       8           magic "IISANCK\0"
 *   8       4           format version (u32 LE) = 1
 *   12      4           J: bytes of the config JSON
 *   16      J           config JSON (config_to_json), not NUL-terminated
 *   16+J    pad to 4
 *   ..      4           N + 1 (u32)
 *   ..      4*(N+1)     item_cat: model item index -> catalogue index (u32)
 *   ..      8           P: number of float parameters (u64)
 *   ..      4*P         parameters, params.h's layout, float32 LE
 *
 * The config JSON carries everything needed to rebuild the parameter table ("arch":
 * "iisan" or "versa"; a Versa config adds "modalities": each one's D, nstates, schedule
 * and remove_first; a config without "arch" is symmetric IISAN);
 * a blob whose P does not match that table is refused. */
#ifndef IISAN_CORE_CHECKPOINT_H
#define IISAN_CORE_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "core/config.h"

#define IISAN_CKPT_MAGIC "IISANCK"
#define IISAN_CKPT_VERSION 1u

typedef struct {
    iisan_config c;
    int min_len;
    uint32_t n_cat;     /* N + 1 */
    uint32_t *item_cat; /* [N+1] (malloc'd by decode) */
    uint64_t nparams;
    float *params; /* [nparams] (malloc'd by decode) */
} iisan_ckpt;

/* config <-> JSON text (malloc'd) */
char *config_to_json(const iisan_config *c, int min_len);
int config_from_json(const char *json, size_t len, iisan_config *c, int *min_len, char *err,
                     int errlen);

/* one line naming what a config builds, so that two models tell apart: kind, towers,
 * schedule, sizes and the model-side rules, e.g. "iisan: towers image+text+inter, schedule
 * 0,2,4,6,8,10,12, r 64, relu, 13 states x 768, d 64, n 10, P_v init v2". Truncated to cap. */
void config_describe(const iisan_config *c, char *out, size_t cap);

/* blob = malloc'd encoding of the checkpoint; returns NULL when out of memory */
void *ckpt_encode(const iisan_ckpt *ck, size_t *len);
/* a trained model's checkpoint: its config, the dataset's item mapping (item_cat
 * [n_items + 1]) and its parameters fetched from the backend; NULL when out of memory */
struct iisan_model;
void *ckpt_encode_model(const struct iisan_model *m, const uint32_t *item_cat, int n_items,
                        int min_len, size_t *len);
/* fills ck (caller frees with ckpt_free); 0 or -1 with a message */
int ckpt_decode(const void *blob, size_t len, iisan_ckpt *ck, char *err, int errlen);
void ckpt_free(iisan_ckpt *ck);

#endif

#include "store/states_query.h"

#include <stdlib.h>

int store_items_missing_states(iisan_store *s, int modality, int titled_only, uint32_t **idx,
                               uint32_t *n) {
    *idx = NULL;
    *n = 0;
    uint32_t count = store_item_count(s), k = 0;
    if (count == 0) return 0;
    uint32_t *out = malloc(sizeof *out * count);
    if (!out) return IISAN_ENOMEM;
    store_reader *r;
    int rc = store_reader_begin(s, &r);
    if (rc) {
        free(out);
        return rc;
    }
    for (uint32_t i = 1; i <= count; i++) {
        if (store_reader_states(r, modality, i)) continue;
        if (titled_only) {
            char title[2]; /* only whether it is empty */
            if (store_item_get(s, i, NULL, 0, title, sizeof title) || !title[0]) continue;
        }
        out[k++] = i;
    }
    store_reader_end(r);
    if (!k) {
        free(out);
        out = NULL;
    }
    *idx = out;
    *n = k;
    return 0;
}

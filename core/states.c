/* Hidden-state sources from the store (core/states.h). */
#include "core/states.h"

static const uint16_t *reader_get(void *ctx, int modality, uint32_t cat) {
    return store_reader_states(ctx, modality, cat);
}

static int reader_error(void *ctx, char *msg, size_t len) {
    return store_reader_error(ctx, msg, len);
}

iisan_states states_from_reader(store_reader *r) {
    iisan_states st = {reader_get, r, reader_error};
    return st;
}

int states_check(const iisan_states *st, char *msg, size_t len) {
    return st && st->error ? st->error(st->ctx, msg, len) : 0;
}

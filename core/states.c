/* Hidden-state sources from the store (core/states.h). */
#include "core/states.h"

#include <stdio.h>

static const uint16_t *reader_get(void *ctx, int modality, uint32_t cat) {
    return store_reader_states(ctx, modality, cat);
}

static int reader_error(void *ctx, char *msg, size_t len) {
    return store_reader_error(ctx, msg, len);
}

static void reader_release(void *ctx) { store_reader_release(ctx); }

iisan_states states_from_reader(store_reader *r) {
    iisan_states st = {reader_get, r, reader_error, reader_release};
    return st;
}

int states_check(const iisan_states *st, char *msg, size_t len) {
    return st && st->error ? st->error(st->ctx, msg, len) : 0;
}

void states_release(const iisan_states *st) {
    if (st && st->release) st->release(st->ctx);
}

int states_fit(const store_reader *r, const iisan_config *c, char *msg, size_t len) {
    static const char *const what[2] = {"text", "image"};
    if (c->kind != MODEL_IISAN) return 0;
    for (int mod = 0; mod < 2; mod++) {
        int ns, w;
        if (store_reader_shape(r, mod, &ns, &w)) continue;
        if (ns == config_nstates(c, mod) && w == config_width(c, mod)) continue;
        snprintf(msg, len,
                 "the model reads %s states of %d x %d but the store holds %d x %d: train a "
                 "model on them (iisan train%s)",
                 what[mod], config_nstates(c, mod), config_width(c, mod), ns, w,
                 c->arch == ARCH_VERSA ? " --arch versa" : ", --arch versa for two shapes");
        return IISAN_EFORMAT;
    }
    return 0;
}

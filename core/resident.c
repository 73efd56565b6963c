#include "core/resident.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/states.h"

#define MODS 2
#define STAGE_BYTES ((size_t)32 << 20) /* host staging per upload */

struct resident_states {
    iisan_backend *be;
    uint16_t *base; /* backend memory, nslots * MODS * per halves */
    size_t bytes;
    int in_host;            /* base came from alloc_host (pinned host memory on a GPU) */
    int nslots;             /* N + 1 */
    size_t per[MODS];       /* nstates * D of each modality */
    size_t slot;            /* per[0] + per[1] halves: one item's states */
    unsigned char *present; /* host [nslots * MODS] */
    long npresent;
    int32_t *slot_of; /* host [maxcat + 1]: catalogue index -> slot, -1 when none */
    uint32_t maxcat;
    uint32_t *cat_of; /* host [nslots]: the catalogue index each slot was filled with */
};

static const uint16_t *resident_get(void *ctx, int mod, uint32_t cat) {
    const resident_states *rs = ctx;
    if (mod < 0 || mod >= MODS || cat > rs->maxcat) return NULL;
    int32_t s = rs->slot_of[cat];
    if (s < 0 || !rs->present[(size_t)s * MODS + mod]) return NULL;
    return rs->base + (size_t)s * rs->slot + (mod ? rs->per[0] : 0);
}

/* a block of nslots items' states in the shapes c reads, none present, catalogue indexes
 * 0..maxcat mapped to no slot; NULL with a message */
static resident_states *rs_alloc(iisan_backend *be, int nslots, uint32_t maxcat,
                                 const iisan_config *c, char *err, int errlen) {
    size_t per[MODS];
    for (int mod = 0; mod < MODS; mod++) {
        int ns = config_nstates(c, mod), D = config_width(c, mod);
        per[mod] = ns > 0 && D > 0 ? (size_t)ns * D : 0;
        if (!per[mod] || per[mod] > SIZE_MAX / 4 / MODS / (size_t)nslots) {
            snprintf(err, errlen, "resident states: %d items x %d x %d states is %s", nslots, ns, D,
                     per[mod] ? "too large" : "empty");
            return NULL;
        }
    }
    resident_states *rs = calloc(1, sizeof *rs);
    if (!rs) goto oom;
    rs->be = be;
    rs->nslots = nslots;
    rs->per[0] = per[0];
    rs->per[1] = per[1];
    rs->slot = per[0] + per[1];
    rs->bytes = (size_t)nslots * rs->slot * sizeof(uint16_t);
    rs->maxcat = maxcat;
    rs->present = calloc((size_t)nslots * MODS, 1);
    rs->slot_of = malloc(((size_t)maxcat + 1) * sizeof *rs->slot_of);
    rs->cat_of = malloc((size_t)nslots * sizeof *rs->cat_of);
    if (!rs->present || !rs->slot_of || !rs->cat_of) goto oom;
    for (uint32_t k = 0; k <= maxcat; k++)
        rs->slot_of[k] = -1;
    /* device memory when they fit; pinned host memory, read over the bus, when they do not
     * (or when IISAN_STATES_IN_HOST=1 asks for it) */
    const char *force = getenv("IISAN_STATES_IN_HOST");
    if (!(force && !strcmp(force, "1"))) rs->base = be->alloc(be, rs->bytes);
    if (!rs->base && be->alloc_host) {
        rs->base = be->alloc_host(be, rs->bytes);
        rs->in_host = rs->base != NULL;
    }
    if (!rs->base) {
        snprintf(err, errlen,
                 "resident states: the %s backend could not allocate %.1f MiB for %d items' "
                 "hidden states, in its memory or in pinned host memory",
                 be->name, rs->bytes / 1048576.0, nslots);
        states_resident_free(rs);
        return NULL;
    }
    return rs;
oom:
    snprintf(err, errlen, "resident states: out of host memory");
    states_resident_free(rs);
    return NULL;
}

/* src's states of item_cat[s0 .. s0+nb) into stage, the presence flags set */
static void stage_chunk(resident_states *rs, const uint32_t *item_cat, size_t s0, size_t nb,
                        const iisan_states *src, uint16_t *stage) {
    for (size_t j = 0; j < nb; j++)
        for (int mod = 0; mod < MODS; mod++) {
            uint16_t *dst = stage + j * rs->slot + (mod ? rs->per[0] : 0);
            const uint16_t *p = src->get(src->ctx, mod, item_cat[s0 + j]);
            if (p) {
                memcpy(dst, p, rs->per[mod] * sizeof *dst);
                rs->present[(s0 + j) * MODS + mod] = 1;
                rs->npresent++;
            } else {
                memset(dst, 0, rs->per[mod] * sizeof *dst);
            }
        }
}

int states_resident_create(iisan_backend *be, const uint32_t *item_cat, int n_items,
                           const iisan_states *src, const iisan_config *c, resident_states **out,
                           char *err, int errlen) {
    *out = NULL;
    if (!be || !item_cat || !src || !src->get || !c || n_items < 0) {
        snprintf(err, errlen, "resident states: bad arguments");
        return -1;
    }
    const int nslots = n_items + 1;
    uint32_t maxcat = 0;
    for (int i = 0; i < nslots; i++)
        maxcat = item_cat[i] > maxcat ? item_cat[i] : maxcat;
    resident_states *rs = rs_alloc(be, nslots, maxcat, c, err, errlen);
    if (!rs) return -1;
    for (int i = 0; i < nslots; i++) { /* the first slot of a catalogue index serves it */
        rs->cat_of[i] = item_cat[i];
        if (rs->slot_of[item_cat[i]] < 0) rs->slot_of[item_cat[i]] = i;
    }
    size_t chunk = STAGE_BYTES / (rs->slot * sizeof(uint16_t));
    if (chunk < 1) chunk = 1;
    if (chunk > (size_t)nslots) chunk = (size_t)nslots;
    uint16_t *stage = malloc(chunk * rs->slot * sizeof *stage);
    if (!stage) {
        snprintf(err, errlen, "resident states: out of host memory");
        states_resident_free(rs);
        return -1;
    }
    for (size_t s0 = 0; s0 < (size_t)nslots; s0 += chunk) {
        size_t nb = (size_t)nslots - s0 < chunk ? (size_t)nslots - s0 : chunk;
        stage_chunk(rs, item_cat, s0, nb, src, stage);
        states_release(src); /* copied: a store reader may end its transaction */
        be->upload(be, rs->base + s0 * rs->slot, stage, nb * rs->slot * sizeof *stage);
    }
    be->sync(be); /* every upload done before the source is used */
    free(stage);
    if (states_check(src, err, (size_t)errlen)) { /* a block read as missing was not */
        states_resident_free(rs);
        return -1;
    }
    *out = rs;
    return 0;
}

int states_resident_empty(iisan_backend *be, int n_slots, const iisan_config *c,
                          resident_states **out, char *err, int errlen) {
    *out = n_slots > 0 ? rs_alloc(be, n_slots, 0, c, err, errlen) : NULL;
    if (n_slots <= 0) snprintf(err, errlen, "resident states: bad arguments");
    if (!*out) return -1;
    for (int i = 0; i < n_slots; i++)
        (*out)->cat_of[i] = 0;
    return 0;
}

int states_resident_put(resident_states *rs, int slot, uint32_t cat,
                        const uint16_t *const states[2]) {
    if (slot < 0 || slot >= rs->nslots) return -1;
    if (cat > rs->maxcat) {
        int32_t *p = realloc(rs->slot_of, ((size_t)cat + 1) * sizeof *p);
        if (!p) return -1;
        for (uint32_t k = rs->maxcat + 1; k <= cat; k++)
            p[k] = -1;
        rs->slot_of = p;
        rs->maxcat = cat;
    }
    uint32_t old = rs->cat_of[slot];
    if (rs->slot_of[old] == slot) rs->slot_of[old] = -1;
    rs->cat_of[slot] = cat;
    rs->slot_of[cat] = slot;
    for (int mod = 0; mod < MODS; mod++) {
        unsigned char *pr = &rs->present[(size_t)slot * MODS + mod];
        rs->npresent += (states[mod] != NULL) - *pr;
        *pr = states[mod] != NULL;
        if (states[mod])
            rs->be->upload(rs->be, rs->base + (size_t)slot * rs->slot + (mod ? rs->per[0] : 0),
                           states[mod], rs->per[mod] * sizeof(uint16_t));
    }
    return 0;
}

iisan_states resident_states_source(resident_states *rs) {
    iisan_states st = {resident_get, rs, NULL, NULL}; /* it cannot fail */
    return st;
}

size_t resident_states_bytes(const resident_states *rs) { return rs ? rs->bytes : 0; }

long resident_states_present(const resident_states *rs) { return rs ? rs->npresent : 0; }

int resident_states_in_host(const resident_states *rs) { return rs ? rs->in_host : 0; }

void states_resident_free(resident_states *rs) {
    if (!rs) return;
    if (rs->base) {
        if (rs->in_host)
            rs->be->free_host(rs->be, rs->base);
        else
            rs->be->free(rs->be, rs->base);
    }
    free(rs->present);
    free(rs->slot_of);
    free(rs->cat_of);
    free(rs);
}

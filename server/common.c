#include "server/common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <string.h>
#include <time.h>

int opt_int(const char *cmd, const char *opt, const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "iisan %s: --%s wants an integer in %ld..%ld, got '%s'\n", cmd, opt, lo,
                hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

int opt_float(const char *cmd, const char *opt, const char *s, double lo, double hi,
              double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "iisan %s: --%s wants a number in %g..%g, got '%s'\n", cmd, opt, lo, hi,
                s);
        return -1;
    }
    *out = v;
    return 0;
}

const uint16_t *store_states_get(void *ctx, int modality, uint32_t cat) {
    store_states *s = ctx;
    return store_reader_states(s->r, modality, cat);
}

double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

long peak_rss_kib(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

int load_checkpoint_model(const char *cmd, iisan_store *s, uint32_t version, iisan_backend *be,
                          iisan_ckpt *ck, iisan_dataset *ds, iisan_model **m,
                          uint32_t *version_out) {
    void *blob = NULL;
    size_t len = 0;
    char *meta = NULL, err[512];
    *m = NULL;
    int rc = store_ckpt_get(s, version, &blob, &len, &meta, version_out);
    if (rc) {
        if (rc == IISAN_ENOTFOUND)
            fprintf(stderr, "iisan %s: %s; train one with `iisan train`\n", cmd,
                    version ? "no such checkpoint version" : "the store holds no checkpoint");
        else
            fprintf(stderr, "iisan %s: reading the checkpoint: %s\n", cmd, iisan_strerror(rc));
        return 1;
    }
    free(meta);
    rc = ckpt_decode(blob, len, ck, err, sizeof err);
    free(blob);
    if (rc) {
        fprintf(stderr, "iisan %s: checkpoint %u: %s\n", cmd, *version_out, err);
        return 1;
    }
    if (dataset_build(ds, s, ck->c.n, ck->min_len, err, sizeof err)) {
        fprintf(stderr, "iisan %s: %s\n", cmd, err);
        ckpt_free(ck);
        return 1;
    }
    if ((uint32_t)ds->n_items + 1 != ck->n_cat ||
        memcmp(ds->item_cat, ck->item_cat, 4 * (size_t)ck->n_cat)) {
        fprintf(stderr,
                "iisan %s: the store's interactions changed since checkpoint %u was trained "
                "(%u items then, %d now): train a new version\n",
                cmd, *version_out, ck->n_cat - 1, ds->n_items);
        ckpt_free(ck);
        dataset_free(ds);
        return 1;
    }
    *m = model_create(&ck->c, be, 64, 0, err, sizeof err);
    if (!*m) {
        fprintf(stderr, "iisan %s: %s\n", cmd, err);
        ckpt_free(ck);
        dataset_free(ds);
        return 1;
    }
    be->upload(be, (*m)->w, ck->params, ck->nparams * sizeof(float));
    return 0;
}

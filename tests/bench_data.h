/* The benchmarks' shared pieces: a comparison for
 * medians, and bench_make_store. */
#ifndef IISAN_TESTS_BENCH_DATA_H
#define IISAN_TESTS_BENCH_DATA_H

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "core/dataset.h"
#include "core/states.h"
#include "kernels/clock.h"
#include "kernels/half.h"
#include "kernels/rng.h"
#include "store/store.h"

/* qsort order of doubles, ascending */
static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The users of a users.tsv imported into a new temporary store, and random
 * fp16 hidden states (NS[mod] x D[mod] per modality: text, image) stored for
 * every item of the spec's dataset. Timing does not depend on the states'
 * values. Returns 0, or -1 with a message printed. */
static int bench_make_store_shapes(const char *who, const char *users, char *dir, const int *NS,
                                   const int *D, iisan_store **s, iisan_dataset *ds) {
    char err[512];
    if (!mkdtemp(dir)) {
        perror(who);
        return -1;
    }
    if (store_open(s, dir, 1, err, sizeof err) ||
        store_import_users(*s, users, 1, NULL, NULL, err, sizeof err) ||
        dataset_build(ds, *s, 10, 5, err, sizeof err)) {
        fprintf(stderr, "%s: %s\n", who, err);
        return -1;
    }
    const int chunk = 512;
    size_t per = (size_t)(NS[0] * D[0] > NS[1] * D[1] ? NS[0] * D[0] : NS[1] * D[1]);
    uint16_t *buf = malloc((size_t)chunk * per * sizeof *buf);
    uint32_t *idx = malloc(chunk * sizeof *idx);
    int rc = buf && idx ? 0 : -1;
    for (int mod = 0; mod < 2 && !rc; mod++)
        for (int i0 = 1; i0 <= ds->n_items && !rc; i0 += chunk) {
            const size_t pm = (size_t)NS[mod] * D[mod];
            int nb = ds->n_items + 1 - i0 < chunk ? ds->n_items + 1 - i0 : chunk;
            for (int j = 0; j < nb; j++)
                idx[j] = ds->item_cat[i0 + j];
            for (size_t e = 0; e < (size_t)nb * pm; e++)
                buf[e] = iisan_float_to_half(iisan_rng_normal(mod * 7 + 1, (uint64_t)i0 * pm + e));
            if (store_put_states(*s, mod, "random", NS[mod], D[mod], nb, idx, buf, err,
                                 sizeof err)) {
                fprintf(stderr, "%s: %s\n", who, err);
                rc = -1;
            }
        }
    free(buf);
    free(idx);
    return rc;
}

/* the same with one shape, NS x D, for both modalities */
static inline int bench_make_store(const char *who, const char *users, char *dir, int NS, int D,
                                   iisan_store **s, iisan_dataset *ds) {
    const int ns[2] = {NS, NS}, d[2] = {D, D};
    return bench_make_store_shapes(who, users, dir, ns, d, s, ds);
}

#endif

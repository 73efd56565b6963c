/* End to end on real data: the Scientific catalogue and interactions are
 * imported into a temporary store, small random hidden states (5 states x 32,
 * text for every item, images for two thirds of them) are stored for every
 * item, and IISAN trains on a slice of 256 users through the store's
 * zero-copy reader for a few epochs: the loss must fall, the validation
 * figures must be sane, and a checkpoint must round-trip through the store. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/checkpoint.h"
#include "core/dataset.h"
#include "core/eval.h"
#include "core/model.h"
#include "core/states.h"
#include "kernels/half.h"
#include "kernels/rng.h"
#include "store/store.h"
#include "tests/test.h"

#define SCI "../shared/data/amazon/scientific/"

static void test_train_slice(void) {
    char dir[] = "/tmp/iisan-e2e-XXXXXX", err[512];
    CHECK(mkdtemp(dir) != NULL);
    iisan_store *s = NULL;
    CHECK(store_open(&s, dir, 1, err, sizeof err) == 0);
    CHECKF(store_import_items(s, SCI "items.tsv", NULL, NULL, err, sizeof err) == 0, "%s", err);
    CHECKF(store_import_users(s, SCI "users.tsv", 0, NULL, NULL, err, sizeof err) == 0, "%s", err);
    const int NS = 5, D = 32;
    uint32_t ncat = store_item_count(s);
    uint16_t *buf = malloc((size_t)ncat * NS * D * sizeof *buf);
    uint32_t *idx = malloc(ncat * sizeof *idx);
    for (int mod = 0; mod < 2; mod++) {
        uint32_t n = 0;
        for (uint32_t c = 1; c <= ncat; c++) {
            if (mod == 1 && c % 3 == 0) continue; /* a third of the items lack an image */
            for (int e = 0; e < NS * D; e++)
                buf[(size_t)n * NS * D + e] =
                    iisan_float_to_half(iisan_rng_normal(mod + 1, (uint64_t)c * NS * D + e));
            idx[n++] = c;
        }
        CHECKF(store_put_states(s, mod, "random-test", NS, D, n, idx, buf, err, sizeof err) == 0,
               "%s", err);
    }
    free(buf);
    free(idx);

    iisan_dataset ds;
    CHECKF(dataset_build(&ds, s, 10, 5, err, sizeof err) == 0, "%s", err);
    CHECK(ds.n_users == 12076 && ds.n_items == 20314);
    iisan_config c;
    config_default(&c);
    c.D = D;
    c.nstates = NS;
    c.r = 8;
    c.d = 16;
    CHECK(config_set_schedule(&c, "every2", err, sizeof err) == 0);
    iisan_backend *be = iisan_backend_cpu(1);
    iisan_model *m = model_create(&c, be, 64, 42, err, sizeof err);
    CHECKF(m != NULL, "%s", err);
    store_reader *r;
    CHECK(store_reader_begin(s, &r) == 0);
    iisan_states st = states_from_reader(r);
    int32_t seqs[64 * 11];
    double first = 0, last = 0;
    const int epochs = 20, batches = 4;
    for (int ep = 0; ep < epochs; ep++) {
        double sum = 0;
        for (int b = 0; b < batches; b++) {
            for (int u = 0; u < 64; u++)
                dataset_sequence(&ds, b * 64 + u, SPLIT_TRAIN, seqs + u * 11, NULL);
            float l = model_loss_grad(m, seqs, 64, ds.logpop, ds.item_cat, &st, 1,
                                      (uint64_t)ep * 100 + b);
            CHECK(isfinite(l));
            model_adam(m, T_LR_ALL(5e-3f), 0.9f, 0.999f, 1e-8f);
            sum += l;
        }
        if (ep == 0) first = sum / batches;
        last = sum / batches;
        fprintf(stderr, "  e2e epoch %d: mean loss %.4f\n", ep + 1, sum / batches);
    }
    CHECKF(last < first - 0.5, "loss %.4f -> %.4f", first, last);

    /* full-ranking validation on the whole dataset: sane figures */
    eval_result ev;
    CHECK(model_evaluate(m, &ds, SPLIT_VALID, EVAL_RULE_V2, &st, &ev) == 0);
    CHECK(ev.users == ds.n_users && ev.hr10 >= 0 && ev.hr10 <= 1 && ev.ndcg10 <= ev.hr10);

    /* checkpoint round trip through the store */
    iisan_ckpt ck = {0};
    ck.c = c;
    ck.min_len = 5;
    ck.n_cat = (uint32_t)ds.n_items + 1;
    ck.item_cat = ds.item_cat;
    ck.nparams = m->pt.total;
    ck.params = m->w;
    size_t len;
    void *blob = ckpt_encode(&ck, &len);
    uint32_t ver;
    CHECK(blob && store_ckpt_put(s, blob, len, "{}", &ver) == 0 && ver == 1);
    free(blob);
    void *b2;
    size_t l2;
    char *meta;
    uint32_t v2;
    CHECK(store_ckpt_get(s, 0, &b2, &l2, &meta, &v2) == 0 && v2 == 1);
    iisan_ckpt back;
    CHECKF(ckpt_decode(b2, l2, &back, err, sizeof err) == 0, "%s", err);
    CHECK(back.nparams == m->pt.total && !memcmp(back.params, m->w, back.nparams * 4));
    CHECK(back.c.D == D && back.c.K == c.K && back.n_cat == ck.n_cat);
    ckpt_free(&back);
    free(b2);
    free(meta);

    store_reader_end(r);
    model_destroy(m);
    be->destroy(be);
    dataset_free(&ds);
    store_close(s);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

int main(int argc, char **argv) {
    TEST_MAIN_BEGIN(argc, argv);
    RUN(test_train_slice);
    TEST_MAIN_END();
}

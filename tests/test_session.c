/* core/session: the one path from a store to a ready model.
 *
 * test_modes: a SASRec-ID model trained from a config (SESSION_NEW) and stored; read back for
 * evaluation (SESSION_EVAL: the same parameters, every row), for serving (SESSION_SERVE: the
 * checkpoint as stored) and for its sequence encoder alone; after users bring items the
 * checkpoint never saw, evaluation is refused naming the item, and a warm start
 * (SESSION_WARM) takes the checkpoint's rows by catalogue index and keeps the seed's for the
 * new ones. IISAN reads the store in place; a config whose shapes the store's states do not
 * have is refused; a dataset without users is refused where training needs them.
 *
 * test_short_reads: a training job (train_run through a session's states) while the items'
 * states are rewritten between its epochs: the reader holds a read transaction only while a
 * batch gathers, so LMDB reuses the pages the rewrites free and the store's used pages stay
 * near one copy of the states; the same rewrites while one read transaction stays open (what
 * a job-long transaction did) grow them by a copy per rewrite. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/session.h"
#include "core/states.h"
#include "core/train.h"
#include "kernels/half.h"
#include "kernels/rng.h"
#include "store/store_ext.h"
#include "tests/test.h"

enum { NITEMS = 200, NS = 5, D = 64 };

/* items item-0..item-(NITEMS-1); users u<first>.. with sequences of items below `items` */
static void write_users(iisan_store *s, const char *dir, int first, int n, int items) {
    char path[128], err[512];
    snprintf(path, sizeof path, "%s/users.tsv", dir);
    FILE *f = fopen(path, "w");
    for (int u = first; u < first + n; u++) {
        fprintf(f, "u%d\t", u);
        int len = 5 + (int)(iisan_rng_u64(9, (uint64_t)u) % 8);
        for (int j = 0; j < len; j++)
            fprintf(f, "%sitem-%d", j ? " " : "",
                    (int)(iisan_rng_u64(11, (uint64_t)u * 64 + j) % (uint64_t)items));
        fprintf(f, "\n");
    }
    fclose(f);
    CHECKF(store_import_users(s, path, 0, NULL, NULL, err, sizeof err) == 0, "%s", err);
}

/* every item's states of both modalities, from seed */
static void put_states(iisan_store *s, uint64_t seed) {
    char err[512];
    uint16_t *buf = malloc((size_t)NITEMS * NS * D * sizeof *buf);
    uint32_t idx[NITEMS];
    for (int mod = 0; mod < 2; mod++) {
        for (int i = 0; i < NITEMS; i++) {
            idx[i] = (uint32_t)i + 1;
            for (int e = 0; e < NS * D; e++)
                buf[(size_t)i * NS * D + e] =
                    iisan_float_to_half(iisan_rng_normal(seed + mod, (uint64_t)i * NS * D + e));
        }
        CHECKF(store_put_states(s, mod, "unit", NS, D, NITEMS, idx, buf, err, sizeof err) == 0,
               "%s", err);
    }
    free(buf);
}

static iisan_store *make_store(char *dir) {
    char path[128], err[512];
    CHECK(mkdtemp(dir) != NULL);
    store_set_map_limits((size_t)64 << 20, (size_t)1 << 30);
    iisan_store *s = NULL;
    CHECKF(store_open(&s, dir, 1, err, sizeof err) == 0, "%s", err);
    snprintf(path, sizeof path, "%s/items.tsv", dir);
    FILE *f = fopen(path, "w");
    for (int i = 0; i < NITEMS; i++)
        fprintf(f, "item-%d\tTitle %d\n", i, i);
    fclose(f);
    CHECK(store_import_items(s, path, NULL, NULL, err, sizeof err) == 0);
    write_users(s, dir, 0, 300, NITEMS / 2); /* the first users know half the catalogue */
    put_states(s, 3);
    return s;
}

static void drop_store(iisan_store *s, const char *dir) {
    store_close(s);
    store_set_map_limits((size_t)1 << 30, (size_t)1 << 40);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

static float *params_of(const iisan_model *m) {
    float *h = malloc(m->pt.total * sizeof *h);
    m->be->download(m->be, h, m->w, m->pt.total * sizeof *h);
    return h;
}

static void small_config(iisan_config *c, int kind) {
    config_default(c);
    c->kind = kind;
    c->d = 16;
    c->r = 8;
    c->nstates = NS;
    c->D = D;
    char err[256];
    CHECK(config_set_schedule(c, "every2", err, sizeof err) == 0);
}

/* SESSION_EVAL and SESSION_WARM after users brought items the checkpoint never saw */
static void check_new_items(iisan_store *s, iisan_backend *be, const float *trained) {
    char err[512];
    iisan_session ss;
    session_options eo = {.mode = SESSION_EVAL};
    CHECK(session_open(&ss, s, be, &eo, err, sizeof err) == IISAN_EFORMAT);
    CHECKF(strstr(err, "has no embedding for catalogue item") != NULL, "%s", err);
    CHECK(ss.m == NULL && ss.ds.item_cat == NULL); /* freed on failure */
    session_options wo = {.mode = SESSION_WARM, .cap_users = 32, .seed = 5, .need_users = 1};
    CHECKF(session_open(&ss, s, be, &wo, err, sizeof err) == 0, "%s", err);
    CHECK(ss.c.n_items == ss.ds.n_items && ss.ds.n_items > (int)ss.ck.n_cat - 1);
    CHECK(ss.reused == (int)ss.ck.n_cat); /* every old item is still in the dataset */
    float *h = params_of(ss.m);
    iisan_session fs; /* the seed's initialisation of the same model */
    session_options fo = {
        .mode = SESSION_NEW, .config = &ss.c, .min_len = 5, .cap_users = 32, .seed = 5};
    CHECKF(session_open(&fs, s, be, &fo, err, sizeof err) == 0, "%s", err);
    float *init = params_of(fs.m);
    session_close(&fs);
    const param_info *e = params_find(&ss.m->pt, "item_emb.weight");
    int same = 0, fresh = 0;
    for (int r = 1; r <= ss.ds.n_items; r++) {
        int old = 0;
        for (uint32_t k = 1; k < ss.ck.n_cat; k++)
            if (ss.ck.item_cat[k] == ss.ds.item_cat[r]) old = (int)k;
        const float *row = h + e->offset + (size_t)r * ss.c.d;
        if (old)
            same += !memcmp(row, trained + e->offset + (size_t)old * ss.c.d, ss.c.d * 4);
        else
            fresh += !memcmp(row, init + e->offset + (size_t)r * ss.c.d, ss.c.d * 4);
    }
    free(init);
    CHECK(same == (int)ss.ck.n_cat - 1 && fresh == ss.ds.n_items - same);
    param_table ot; /* the checkpoint's layout: its embedding table is smaller */
    CHECK(params_build(&ot, &ss.ck.c) == 0);
    const param_info *q = params_find(&ss.m->pt, "seq.pos"), *oq = params_find(&ot, "seq.pos");
    CHECK(q && oq && q->offset != oq->offset &&
          !memcmp(h + q->offset, trained + oq->offset, q->size * 4));
    params_free(&ot);
    free(h);
    session_close(&ss);
}

static void test_modes(void) {
    char dir[] = "/tmp/iisan-session-XXXXXX", err[512];
    iisan_store *s = make_store(dir);
    iisan_backend *be = iisan_backend_cpu(1);
    iisan_config c;
    small_config(&c, MODEL_SASREC_ID);
    iisan_session ss;
    session_options no = {
        .mode = SESSION_NEW, .config = &c, .min_len = 5, .cap_users = 32, .seed = 7};
    CHECKF(session_open(&ss, s, be, &no, err, sizeof err) == 0, "%s", err);
    CHECK(ss.ds.n_users == 300 && ss.c.n_items == ss.ds.n_items && ss.rd == NULL);
    iisan_train_config tc;
    train_config_default(&tc);
    tc.batch = 32;
    tc.max_steps = 6;
    train_summary sum;
    CHECK(train_run(ss.m, &ss.ds, &ss.st, &tc, 0, NULL, NULL, &sum) == 0);
    float *trained = params_of(ss.m);
    size_t len;
    void *blob = ckpt_encode_model(ss.m, ss.ds.item_cat, ss.ds.n_items, 5, &len);
    uint32_t ver = 0;
    CHECK(blob && store_ckpt_put(s, blob, len, "{}", &ver) == 0 && ver == 1);
    free(blob);
    const int N = ss.ds.n_items;
    session_close(&ss);

    session_options eo = {.mode = SESSION_EVAL};
    CHECKF(session_open(&ss, s, be, &eo, err, sizeof err) == 0, "%s", err);
    CHECK(ss.version == 1 && ss.meta && ss.c.n_items == N && ss.reused == N + 1);
    float *h = params_of(ss.m);
    CHECK(!memcmp(h, trained, ss.m->pt.total * sizeof *h));
    free(h);
    iisan_model *enc = session_seq_model(&ss.ck, be, 4, err, sizeof err);
    CHECKF(enc != NULL, "%s", err);
    h = params_of(enc);
    const param_info *p = params_find(&enc->pt, "seq.pos"), *q = params_find(&ss.m->pt, "seq.pos");
    CHECK(p && q && !memcmp(h + p->offset, trained + q->offset, p->size * sizeof *h));
    free(h);
    model_destroy(enc);
    session_close(&ss);

    write_users(s, dir, 300, 60, NITEMS); /* new users, items the checkpoint never saw */
    check_new_items(s, be, trained);
    session_options so = {.mode = SESSION_SERVE, .version = 1};
    CHECKF(session_open(&ss, s, be, &so, err, sizeof err) == 0, "%s", err);
    CHECK(ss.c.n_items == N && ss.ds.n_items > N); /* the checkpoint's own items */
    h = params_of(ss.m);
    CHECK(!memcmp(h, trained, ss.m->pt.total * sizeof *h));
    free(h);
    session_close(&ss);
    session_options missing = {.mode = SESSION_SERVE, .version = 9};
    CHECK(session_open(&ss, s, be, &missing, err, sizeof err) == IISAN_ENOTFOUND);
    free(trained);

    iisan_config ic;
    small_config(&ic, MODEL_IISAN);
    no.config = &ic;
    CHECKF(session_open(&ss, s, be, &no, err, sizeof err) == 0, "%s", err);
    CHECK(ss.rd != NULL && ss.rs == NULL && ss.st.get && ss.st.release);
    session_close(&ss);
    ic.D = 32; /* not the store's shape */
    CHECK(session_open(&ss, s, be, &no, err, sizeof err) == IISAN_EFORMAT);
    CHECKF(strstr(err, "64") && strstr(err, "32"), "%s", err);
    ic.D = D;
    no.min_len = 100;
    no.need_users = 1;
    CHECK(session_open(&ss, s, be, &no, err, sizeof err) == IISAN_ENOTFOUND);
    be->destroy(be);
    drop_store(s, dir);
}

/* the rewrites run on their own thread, as the daemon's writer does */
typedef struct {
    iisan_store *s;
    int rounds;
    uint64_t seed;
} rewriter;

static void *rewrite_main(void *arg) {
    rewriter *w = arg;
    for (int i = 0; i < w->rounds; i++)
        put_states(w->s, w->seed + 2 * (uint64_t)i);
    return NULL;
}

static void rewrite(iisan_store *s, int rounds, uint64_t seed) {
    rewriter w = {s, rounds, seed};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, rewrite_main, &w) == 0);
    pthread_join(t, NULL);
}

static void on_epoch(void *arg, const epoch_report *r) {
    (void)r;
    rewrite(arg, 6, 100 + 20 * (uint64_t)r->epoch);
}

static uint64_t used(iisan_store *s) {
    store_usage u;
    CHECK(store_usage_get(s, &u) == 0);
    return u.used_bytes;
}

static void test_short_reads(void) {
    char dir[] = "/tmp/iisan-reads-XXXXXX", err[512];
    iisan_store *s = make_store(dir);
    iisan_backend *be = iisan_backend_cpu(1);
    iisan_config c;
    small_config(&c, MODEL_IISAN);
    iisan_session ss;
    session_options no = {
        .mode = SESSION_NEW, .config = &c, .min_len = 5, .cap_users = 64, .seed = 7};
    CHECKF(session_open(&ss, s, be, &no, err, sizeof err) == 0, "%s", err);
    const double copy = 2.0 * NITEMS * NS * D * 2; /* bytes of one copy of the states */
    rewrite(s, 2, 50); /* the store's steady state: a free list to reuse */
    const uint64_t before = used(s);
    iisan_train_config tc;
    train_config_default(&tc);
    tc.epochs = 4;
    tc.patience = 100;
    train_summary sum;
    CHECK(train_run(ss.m, &ss.ds, &ss.st, &tc, 1, on_epoch, s, &sum) == 0);
    CHECK(sum.epochs_run == 4 && states_check(&ss.st, NULL, 0) == 0);
    const double grew = (double)(used(s) - before);
    fprintf(stderr, "  24 rewrites during the job: the store grew %.0f KiB (a copy: %.0f KiB)\n",
            grew / 1024, copy / 1024);
    CHECKF(grew < 3 * copy, "grew %.0f bytes", grew);

    /* the control: one read transaction open across the same rewrites */
    store_reader *held;
    CHECK(store_reader_begin(s, &held) == 0 && store_reader_states(held, 0, 1) != NULL);
    const uint64_t b2 = used(s);
    for (int ep = 1; ep <= 4; ep++)
        on_epoch(s, &(epoch_report){.epoch = 10 + ep});
    const double held_grew = (double)(used(s) - b2);
    store_reader_end(held);
    fprintf(stderr, "  the same with a read transaction held: %.0f KiB\n", held_grew / 1024);
    CHECKF(held_grew > 12 * copy && held_grew > 5 * grew, "held %.0f, short %.0f", held_grew, grew);
    session_close(&ss);
    be->destroy(be);
    drop_store(s, dir);
}

int main(int argc, char **argv) {
    TEST_MAIN_BEGIN(argc, argv);
    RUN(test_modes);
    RUN(test_short_reads);
    TEST_MAIN_END();
}

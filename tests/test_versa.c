/* IISAN-Versa (spec, last section): finite-difference checks of the whole in-batch loss
 * with respect to every parameter tensor (the projections Q_k and the asymmetric heads
 * included) in three shape pairs (wider text, wider image, equal widths with unequal
 * depths), dropout off and on; row chunks; the configuration's checks and its checkpoint
 * round trip. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/checkpoint.h"
#include "core/model.h"
#include "kernels/half.h"
#include "kernels/rng.h"
#include "tests/model_fd.h"
#include "tests/test.h"

#define NCAT 9 /* catalogue items 1..9 */

typedef struct {
    int nstates[N_MODS], D[N_MODS];
    uint16_t *data[N_MODS]; /* [NCAT+1][nstates*D] per modality */
    int missing[NCAT + 1][N_MODS];
} versa_states;

static const uint16_t *vs_get(void *ctx, int mod, uint32_t cat) {
    versa_states *s = ctx;
    if (cat == 0 || cat > NCAT || s->missing[cat][mod]) return NULL;
    return s->data[mod] + (size_t)cat * s->nstates[mod] * s->D[mod];
}

static void vs_init(versa_states *s, const iisan_config *c, uint64_t seed) {
    memset(s, 0, sizeof *s);
    for (int mod = 0; mod < N_MODS; mod++) {
        s->nstates[mod] = c->mods[mod].nstates;
        s->D[mod] = c->mods[mod].D;
        size_t n = (size_t)(NCAT + 1) * s->nstates[mod] * s->D[mod];
        s->data[mod] = malloc(n * sizeof(uint16_t));
        for (size_t i = 0; i < n; i++)
            s->data[mod][i] = iisan_float_to_half(iisan_rng_normal(seed + mod, i));
    }
    s->missing[3][MOD_IMAGE] = 1; /* item 3: no image */
    s->missing[5][MOD_TEXT] = 1;  /* item 5: no text */
}

static void vs_free(versa_states *s) {
    for (int mod = 0; mod < N_MODS; mod++)
        free(s->data[mod]);
}

/* a small Versa config: text Dt x (Lt + 1) with schedule st, image likewise */
static void versa_config(iisan_config *c, int Dt, int nt, const char *st, int Dv, int nv,
                         const char *sv) {
    config_default(c);
    c->arch = ARCH_VERSA;
    c->r = 4;
    c->d = 8;
    c->n = 4;
    c->heads = 2;
    c->mods[MOD_TEXT].D = Dt;
    c->mods[MOD_TEXT].nstates = nt;
    c->mods[MOD_IMAGE].D = Dv;
    c->mods[MOD_IMAGE].nstates = nv;
    char err[256];
    CHECKF(config_set_schedule_mod(c, MOD_TEXT, st, err, sizeof err) == 0, "%s", err);
    CHECKF(config_set_schedule_mod(c, MOD_IMAGE, sv, err, sizeof err) == 0, "%s", err);
}

/* every tensor (with item_only, the item side: the sequence encoder, which Versa leaves as
 * it is, has its own checks in test_model); returns how many Versa-only tensors (Q_k,
 * heads) were checked */
static int check_grads(iisan_model *m, const iisan_states *st, int train, int item_only,
                       const char *what) {
    size_t P = m->pt.total;
    float *g = malloc(P * sizeof *g);
    loss_at(m, st, train);
    memcpy(g, m->g, P * sizeof *g);
    int bad = 0, versa_only = 0;
    for (int i = 0; i < m->pt.n; i++) {
        const char *nm = m->pt.t[i].name;
        if (item_only && !strncmp(nm, "seq.", 4)) continue;
        /* the gates' sigmoid(p / 0.1) is sharply curved: a smaller step than test_model's */
        bad += fd_check_tensor(m, st, train, g, i, 3e-4f, 2, what);
        versa_only += !strncmp(nm, "inter.q.", 8) || strstr(nm, ".fc.") || strstr(nm, ".proj.");
    }
    if (bad) fprintf(stderr, "  %s: %d tensors off\n", what, bad);
    free(g);
    return versa_only;
}

static void run_pair(const iisan_config *c, const char *what, int want_q) {
    versa_states vs;
    vs_init(&vs, c, 99);
    iisan_states st = {vs_get, &vs, NULL, NULL};
    iisan_backend *be = iisan_backend_cpu(1);
    char err[256];
    iisan_model *m = model_create(c, be, 3, 7, err, sizeof err);
    CHECKF(m != NULL, "%s: %s", what, err);
    if (m) {
        int nq = 0;
        for (int i = 0; i < m->pt.n; i++)
            nq += strstr(m->pt.t[i].name, "inter.q.") != NULL;
        CHECKF(nq == want_q, "%s: %d projection tensors, want %d", what, nq, want_q);
        randomise(m, 11);
        float l = loss_at(m, &st, 0);
        CHECKF(isfinite(l) && l > 0, "%s: loss %g", what, l);
        int nv = check_grads(m, &st, 0, 0, what);
        CHECK(nv == want_q + 12); /* Q_k weights and biases, 3 towers x F, P weights, biases */
        char w2[128];
        snprintf(w2, sizeof w2, "%s+dropout", what);
        CHECK(check_grads(m, &st, 1, 1, w2) == nv);
        model_destroy(m);
    }
    be->destroy(be);
    vs_free(&vs);
}

/* text 24 wide, 7 states, 4 blocks; image 16 wide, 5 states, 3 blocks: Q_k project text */
static void test_wider_text(void) {
    iisan_config c;
    versa_config(&c, 24, 7, "every2", 16, 5, "every2");
    CHECK(config_versa_wide(&c) == MOD_TEXT && config_tower_width(&c, TOWER_INTER) == 16 &&
          config_tower_depth(&c, TOWER_INTER) == 3);
    run_pair(&c, "wider text", 2 * 3);
}

/* text 12 wide, 2 blocks (remove-first); image 20 wide, 3 blocks, GELU: Q_k project image */
static void test_wider_image(void) {
    iisan_config c;
    versa_config(&c, 12, 5, "rf:2,4", 20, 4, "all");
    c.mods[MOD_IMAGE].K = 3; /* states 0, 1, 2 of 0..3 */
    c.act = IISAN_ACT_GELU;
    CHECK(config_versa_wide(&c) == MOD_IMAGE && config_tower_depth(&c, TOWER_INTER) == 2);
    run_pair(&c, "wider image", 2 * 2);
}

/* equal widths, text 4 blocks and image 2: no projection, the text tower runs 2 blocks
 * alone first */
static void test_equal_width_unequal_depth(void) {
    iisan_config c;
    versa_config(&c, 16, 5, "1,2,3,4", 16, 5, "top");
    c.mods[MOD_IMAGE].K = 2;
    c.mods[MOD_IMAGE].sched[0] = 3;
    c.mods[MOD_IMAGE].sched[1] = 4;
    CHECK(config_versa_wide(&c) == -1 && config_tower_depth(&c, TOWER_INTER) == 2);
    run_pair(&c, "equal widths", 0);
}

/* processing the item towers in row chunks gives the gradients of one pass */
static void test_row_chunks(void) {
    iisan_config c;
    versa_config(&c, 12, 5, "every2", 20, 4, "rf:1,3");
    versa_states vs;
    vs_init(&vs, &c, 99);
    iisan_states st = {vs_get, &vs, NULL, NULL};
    iisan_backend *be = iisan_backend_cpu(1);
    char err[256];
    iisan_model *a = model_create(&c, be, 3, 7, err, sizeof err);
    iisan_model *b = model_create(&c, be, 3, 7, err, sizeof err);
    randomise(a, 11);
    randomise(b, 11);
    b->chunk_rows = 3; /* 8 distinct items: chunks of 3, 3, 2 */
    float la = loss_at(a, &st, 1), lb = loss_at(b, &st, 1);
    CHECK_CLOSE(lb, la, 1e-6, 1e-5);
    double num = 0, den = 0;
    for (size_t i = 0; i < a->pt.total; i++) {
        num = fmax(num, fabs(a->g[i] - b->g[i]));
        den = fmax(den, fabs(a->g[i]));
    }
    CHECKF(num / den < 1e-5, "chunked gradients differ: %.3g", num / den);
    model_destroy(a);
    model_destroy(b);
    be->destroy(be);
    vs_free(&vs);
}

/* model_train_step's early Adam steps: the same bits as the step's two halves, on whole
 * batches and on chunks of 3 rows */
static void test_train_step(void) {
    iisan_config c;
    versa_config(&c, 24, 7, "every2", 16, 5, "every2");
    versa_states vs;
    vs_init(&vs, &c, 99);
    iisan_states st = {vs_get, &vs, NULL, NULL};
    check_train_step(&c, &st, 0, "versa wider text");
    check_train_step(&c, &st, 3, "versa wider text, chunks of 3");
    vs_free(&vs);
}

/* parameter counts and the learning-rate groups (spec v2's table): Q_k with the rest, F_t
 * its own, the SAN blocks and each tower's gates theirs */
static void test_params(void) {
    iisan_config c;
    versa_config(&c, 24, 7, "every2", 16, 5, "every2");
    param_table pt;
    CHECK(params_build(&pt, &c) == 0);
    const param_info *q = params_find(&pt, "inter.q.2.weight");
    CHECK(q && q->shape[0] == 16 && q->shape[1] == 24 && q->group == LRG_OTHER);
    CHECK(!params_find(&pt, "inter.q.3.weight"));
    const param_info *f = params_find(&pt, "text.fc.weight");
    CHECK(f && f->shape[0] == 8 && f->shape[1] == 24 && f->group == LRG_FC_TEXT);
    const param_info *p = params_find(&pt, "text.proj.weight");
    CHECK(p && p->shape[0] == 8 && p->shape[1] == 8);
    const param_info *fx = params_find(&pt, "inter.fc.weight");
    CHECK(fx && fx->shape[0] == 16 && fx->shape[1] == 16);
    const param_info *px = params_find(&pt, "inter.proj.weight");
    CHECK(px && px->shape[0] == 8 && px->shape[1] == 16);
    const param_info *b = params_find(&pt, "text.block.3.down.weight");
    CHECK(b && b->shape[1] == 24 && b->group == LRG_SAN);
    CHECK(!params_find(&pt, "image.block.3.down.weight"));
    const param_info *gx = params_find(&pt, "inter.gate");
    CHECK(gx && gx->size == 3 && gx->group == LRG_GATE_INTER);
    params_free(&pt);
}

/* bad shapes are refused with a message; the checkpoint's JSON carries both shapes */
static void test_config_and_json(void) {
    iisan_config c;
    char err[256] = "";
    versa_config(&c, 24, 7, "1,3,5", 16, 5, "rf:2,4");
    c.act = IISAN_ACT_GELU;
    CHECK(config_check(&c, err, sizeof err) == 0);
    char *js = config_to_json(&c, 5);
    iisan_config b;
    int min_len = 0;
    CHECKF(config_from_json(js, strlen(js), &b, &min_len, err, sizeof err) == 0, "%s", err);
    CHECK(b.arch == ARCH_VERSA && min_len == 5 && b.act == IISAN_ACT_GELU);
    CHECK(!memcmp(b.mods, c.mods, sizeof c.mods));
    free(js);
    iisan_config e = c;
    e.mods[MOD_IMAGE].D = 0;
    CHECK(config_check(&e, err, sizeof err) == -1 && strstr(err, "image"));
    e = c;
    e.mods[MOD_TEXT].sched[1] = 9;
    CHECK(config_check(&e, err, sizeof err) == -1 && strstr(err, "text schedule"));
    CHECK(config_set_schedule_mod(&e, MOD_IMAGE, "0,7", err, sizeof err) == -1 &&
          strstr(err, "0..4"));
}

int main(int argc, char **argv) {
    TEST_MAIN_BEGIN(argc, argv);
    make_logpop();
    RUN(test_params);
    RUN(test_config_and_json);
    RUN(test_wider_text);
    RUN(test_wider_image);
    RUN(test_equal_width_unequal_depth);
    RUN(test_row_chunks);
    RUN(test_train_step);
    TEST_MAIN_END();
}

/* Finite-difference gradient checks of the model: each item tower block path,
 * the sequence encoder, and the whole in-batch loss with respect to every
 * parameter tensor, for several configurations (default schedule + ReLU,
 * remove-first + GELU under both inter starts, text-only, SASRec-ID), with
 * dropout off and on (a fixed seed makes the masks identical between
 * evaluations); the initialisation rules and learning-rate groups. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/model.h"
#include "kernels/half.h"
#include "kernels/rng.h"
#include "tests/model_fd.h"
#include "tests/test.h"

#define NCAT 9 /* catalogue items 1..9 */

typedef struct {
    int nstates, D;
    uint16_t *data; /* [NCAT+1][2][nstates*D] */
    int missing[NCAT + 1][2];
} mem_states;

static const uint16_t *mem_get(void *ctx, int mod, uint32_t cat) {
    mem_states *s = ctx;
    if (cat == 0 || cat > NCAT || s->missing[cat][mod]) return NULL;
    return s->data + ((size_t)cat * 2 + mod) * s->nstates * s->D;
}

static void mem_init(mem_states *s, int nstates, int D, uint64_t seed) {
    s->nstates = nstates;
    s->D = D;
    size_t per = (size_t)nstates * D;
    s->data = malloc((NCAT + 1) * 2 * per * sizeof(uint16_t));
    for (size_t i = 0; i < (NCAT + 1) * 2 * per; i++)
        s->data[i] = iisan_float_to_half(iisan_rng_normal(seed, i));
    memset(s->missing, 0, sizeof s->missing);
    s->missing[3][1] = 1; /* item 3: no image */
    s->missing[5][0] = 1; /* item 5: no text */
}

static void small_config(iisan_config *c) {
    config_default(c);
    c->D = 16;
    c->nstates = 5;
    c->r = 4;
    c->d = 8;
    c->n = 4;
    c->heads = 2;
    c->K = 3;
    c->sched[0] = 0;
    c->sched[1] = 2;
    c->sched[2] = 4;
}

/* every tensor: a directional derivative and three single elements */
static void check_grads(iisan_model *m, const iisan_states *st, int train, const char *what) {
    size_t P = m->pt.total;
    float *g = malloc(P * sizeof *g);
    loss_at(m, st, train);
    memcpy(g, m->g, P * sizeof *g);
    int bad = 0;
    for (int i = 0; i < m->pt.n; i++)
        bad += fd_check_tensor(m, st, train, g, i, 1e-3f, 3, what);
    if (bad) fprintf(stderr, "  %s: %d tensors off\n", what, bad);
    free(g);
}

static void run_config(const iisan_config *c, const char *what) {
    mem_states ms;
    mem_init(&ms, c->nstates, c->D, 99);
    iisan_states st = {mem_get, &ms, NULL, NULL};
    iisan_backend *be = iisan_backend_cpu(1);
    char err[256];
    iisan_model *m = model_create(c, be, 3, 7, err, sizeof err);
    CHECKF(m != NULL, "%s", err);
    if (m) {
        randomise(m, 11);
        float l = loss_at(m, &st, 0);
        CHECK(isfinite(l) && l > 0);
        check_grads(m, &st, 0, what);
        char w2[128];
        snprintf(w2, sizeof w2, "%s+dropout", what);
        check_grads(m, &st, 1, w2);
        model_destroy(m);
    }
    be->destroy(be);
    free(ms.data);
}

static void test_default_relu(void) {
    iisan_config c;
    small_config(&c);
    c.dropout = 0.1f;
    run_config(&c, "default");
}

static void test_remove_first_gelu(void) {
    iisan_config c;
    small_config(&c);
    c.remove_first = 1;
    c.K = 2;
    c.sched[0] = 2;
    c.sched[1] = 4;
    c.act = IISAN_ACT_GELU;
    run_config(&c, "remove-first");
    c.inter_start = IISAN_RULES_V1; /* u_0 = (T[0] + V[0]) / 2 */
    run_config(&c, "remove-first v1");
}

/* spec v2: P_v xavier-normal with a zero bias, the other heads nn.Linear's uniform; v1: P_v
 * uniform too. And every tensor's learning-rate group, by name. */
static void test_init_and_groups(void) {
    iisan_config c;
    config_default(&c);
    c.D = 256;
    for (int rules = IISAN_RULES_V1; rules <= IISAN_RULES_V2; rules++) {
        c.pv_init = rules;
        param_table pt;
        CHECK(params_build(&pt, &c) == 0);
        float *w = malloc(pt.total * sizeof *w);
        params_init(&pt, w, 5);
        const param_info *pw = params_find(&pt, "image.proj.weight"),
                         *pb = params_find(&pt, "image.proj.bias");
        double ss = 0, mx = 0, bmax = 0;
        for (size_t j = 0; j < pw->size; j++) {
            ss += (double)w[pw->offset + j] * w[pw->offset + j];
            mx = fmax(mx, fabs(w[pw->offset + j]));
        }
        for (size_t j = 0; j < pb->size; j++)
            bmax = fmax(bmax, fabs(w[pb->offset + j]));
        double sd = sqrt(ss / pw->size), bound = 1 / sqrt((double)c.D);
        if (rules == IISAN_RULES_V2) {
            double xs = sqrt(2.0 / (c.D + c.d)); /* 0.0833; uniform's sd would be 0.036 */
            CHECKF(fabs(sd - xs) < 0.03 * xs && mx > bound, "P_v sd %.4f, want %.4f", sd, xs);
            CHECK(bmax == 0);
        } else {
            CHECKF(mx <= bound && fabs(sd - bound / sqrt(3.0)) < 0.03 * bound, "P_v sd %.4f", sd);
            CHECK(bmax > 0 && bmax <= bound);
        }
        /* P_t stays uniform either way */
        const param_info *pt_w = params_find(&pt, "text.proj.weight");
        double tmx = 0;
        for (size_t j = 0; j < pt_w->size; j++)
            tmx = fmax(tmx, fabs(w[pt_w->offset + j]));
        CHECK(tmx <= bound && tmx > 0.9 * bound);
        free(w);
        static const struct {
            const char *name;
            int group;
        } want[] = {{"text.block.0.down.weight", LRG_SAN},
                    {"inter.block.6.up.bias", LRG_SAN},
                    {"image.gate", LRG_GATE_IMAGE},
                    {"text.gate", LRG_GATE_TEXT},
                    {"inter.gate", LRG_GATE_INTER},
                    {"text.fc.weight", LRG_FC_TEXT},
                    {"text.fc.bias", LRG_FC_TEXT},
                    {"image.fc.weight", LRG_FC_IMAGE},
                    {"image.fc.bias", LRG_FC_IMAGE},
                    {"inter.fc.weight", LRG_OTHER},
                    {"image.proj.weight", LRG_OTHER},
                    {"fuse.weight", LRG_OTHER},
                    {"seq.pos", LRG_OTHER},
                    {"seq.layer.1.ln2.bias", LRG_OTHER}};
        for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
            const param_info *p = params_find(&pt, want[i].name);
            CHECKF(p && p->group == want[i].group, "%s", want[i].name);
        }
        params_free(&pt);
    }
    /* the rates: the spec's table (v2) and version 1's two groups */
    iisan_train_config tc;
    train_config_default(&tc);
    float lr[LR_NGROUPS];
    train_lr_table(&tc, lr);
    static const float v2[LR_NGROUPS] = {1e-4f, 1e-4f, 2e-4f, 2e-4f, 5e-5f, 1e-4f, 2e-4f};
    CHECK(!memcmp(lr, v2, sizeof v2));
    tc.lr_groups = IISAN_RULES_V1;
    train_lr_table(&tc, lr);
    static const float v1[LR_NGROUPS] = {1e-4f, 1e-4f, 1e-4f, 1e-4f, 2e-4f, 2e-4f, 2e-4f};
    CHECK(!memcmp(lr, v1, sizeof v1));
}

static void test_text_only(void) {
    iisan_config c;
    small_config(&c);
    c.towers = 1 << TOWER_TEXT;
    run_config(&c, "text-only");
}

static void test_sasrec_id(void) {
    iisan_config c;
    small_config(&c);
    c.kind = MODEL_SASREC_ID;
    c.n_items = 7;
    run_config(&c, "sasrec-id");
}

/* the same seed gives the same run; Adam moves the loss down on a fixed batch */
static void test_determinism_and_descent(void) {
    iisan_config c;
    small_config(&c);
    mem_states ms;
    mem_init(&ms, c.nstates, c.D, 99);
    iisan_states st = {mem_get, &ms, NULL, NULL};
    iisan_backend *be = iisan_backend_cpu(1);
    char err[256];
    float first[2] = {0}, last[2] = {0};
    for (int run = 0; run < 2; run++) {
        iisan_model *m = model_create(&c, be, 3, 7, err, sizeof err);
        for (int s = 0; s < 30; s++) {
            float l = model_loss_grad(m, seqs, 3, logpop, item_cat, &st, 1, 100 + s);
            if (s == 0) first[run] = l;
            last[run] = l;
            model_adam(m, T_LR_ALL(1e-2f), 0.9f, 0.999f, 1e-8f);
        }
        model_destroy(m);
    }
    CHECK(first[0] == first[1] && last[0] == last[1]);
    CHECKF(last[0] < first[0] * 0.8f, "loss %g -> %g", first[0], last[0]);
    be->destroy(be);
    free(ms.data);
}

/* model_train_step's early Adam steps: the same bits as the step's two halves */
static void test_train_step(void) {
    iisan_config c;
    small_config(&c);
    mem_states ms;
    mem_init(&ms, c.nstates, c.D, 99);
    iisan_states st = {mem_get, &ms, NULL, NULL};
    check_train_step(&c, &st, 0, "default");
    check_train_step(&c, &st, 3, "chunks of 3");
    c.remove_first = 1;
    c.act = IISAN_ACT_GELU;
    check_train_step(&c, &st, 0, "remove-first gelu");
    free(ms.data);
}

static int32_t blk_items_all[8] = {0, 1, 2, 3, 4, 5, 6, 7};

/* the batch's states kept fp16 (the CPU backend's gate_bias_fwd_h / gate_bwd_mix_h) against
 * them converted to fp32 (IISAN_FP32_STATES, read by model_create): the same losses,
 * parameters and moments to the bit over 4 training steps and an item-embedding pass, in the
 * configurations whose gates read states differently (the inter tower's two, remove-first's
 * x0 as the intra towers' first running state and, under version 1, the inter tower's u_0) */
static void half_states_case(const iisan_config *c, const iisan_states *st, const char *what) {
    iisan_backend *be = iisan_backend_cpu(2);
    char err[256];
    iisan_model *h = model_create(c, be, 3, 7, err, sizeof err);
    setenv("IISAN_FP32_STATES", "1", 1);
    iisan_model *f = model_create(c, be, 3, 7, err, sizeof err);
    unsetenv("IISAN_FP32_STATES");
    CHECKF(h && f, "%s: %s", what, err);
    if (!h || !f) return;
    CHECKF(h->half_states && !f->half_states, "%s: half_states %d / %d", what, h->half_states,
           f->half_states);
    randomise(h, 31);
    randomise(f, 31);
    float lr[LR_NGROUPS];
    for (int i = 0; i < LR_NGROUPS; i++)
        lr[i] = 1e-3f;
    int same = 1;
    for (int s = 0; s < 4; s++) {
        float lh =
            model_train_step(h, seqs, 3, logpop, item_cat, st, 600 + s, lr, 0.9f, 0.999f, 1e-8f);
        float lf =
            model_train_step(f, seqs, 3, logpop, item_cat, st, 600 + s, lr, 0.9f, 0.999f, 1e-8f);
        same &= lh == lf;
    }
    const size_t bytes = h->pt.total * sizeof(float);
    CHECKF(same, "%s: losses differ", what);
    CHECKF(!memcmp(h->w, f->w, bytes) && !memcmp(h->m, f->m, bytes) && !memcmp(h->v, f->v, bytes),
           "%s: parameters or moments differ", what);
    tower_forward(h, blk_items_all, item_cat, 8, st);
    tower_forward(f, blk_items_all, item_cat, 8, st);
    CHECKF(!memcmp(h->emb, f->emb, (size_t)8 * c->d * sizeof(float)), "%s: item embeddings differ",
           what);
    model_destroy(h);
    model_destroy(f);
    be->destroy(be);
}

static void test_half_states(void) {
    iisan_config c;
    small_config(&c);
    mem_states ms;
    mem_init(&ms, c.nstates, c.D, 99);
    iisan_states st = {mem_get, &ms, NULL, NULL};
    half_states_case(&c, &st, "default");
    c.remove_first = 1;
    c.act = IISAN_ACT_GELU;
    for (int rules = IISAN_RULES_V1; rules <= IISAN_RULES_V2; rules++) {
        c.inter_start = rules;
        half_states_case(&c, &st,
                         rules == IISAN_RULES_V1 ? "remove-first, u_0 v1" : "remove-first, v2");
    }
    small_config(&c);
    c.towers = 1 << TOWER_TEXT;
    half_states_case(&c, &st, "text only");
    free(ms.data);
}

/* the largest difference between two models' gradients, over ref's largest gradient */
static double grad_gap(const iisan_model *ref, const iisan_model *x) {
    double num = 0, den = 0;
    for (size_t i = 0; i < ref->pt.total; i++) {
        num = fmax(num, fabs(ref->g[i] - x->g[i]));
        den = fmax(den, fabs(ref->g[i]));
    }
    return num / den;
}

/* gemm_mixed's calls counted by be (the CPU backend's op times) */
static unsigned long long gemm_mixed_calls(iisan_backend *be) {
    iisan_op_time t[64];
    int n = be->op_times(be, t, 64);
    for (int i = 0; i < n; i++)
        if (!strcmp(t[i].op, "gemm_mixed")) return t[i].calls;
    return 0;
}

/* an intra tower's first block from h_0 = 0 (input s X alone) takes no d in: its gate's
 * gradient through the down projection comes from <W_down, dW_down> (gate_dp_dot) and the
 * GEMM for d in is not run. Against a backend without gate_dp_dot (d in by the GEMM): one
 * gemm_mixed fewer per intra tower and chunk, the same loss and every gradient (the gates'
 * above all) to fp32 rounding; in row chunks, with the text tower alone, and not where
 * the first block's input has a running state (remove-first) */
static void first_block_case(const iisan_config *c, const iisan_states *st, int chunk, int skipped,
                             const char *what) {
    iisan_backend *ba = iisan_backend_cpu(1), *bb = iisan_backend_cpu(1);
    bb->gate_dp_dot = NULL;
    char err[256];
    iisan_model *a = model_create(c, ba, 3, 7, err, sizeof err);
    iisan_model *b = model_create(c, bb, 3, 7, err, sizeof err);
    CHECKF(a && b, "%s: %s", what, err);
    if (!a || !b) return;
    if (chunk) a->chunk_rows = b->chunk_rows = chunk;
    randomise(a, 17);
    randomise(b, 17);
    const unsigned long long ca0 = gemm_mixed_calls(ba), cb0 = gemm_mixed_calls(bb);
    float la = loss_at(a, st, 1), lb = loss_at(b, st, 1);
    const unsigned long long ca = gemm_mixed_calls(ba) - ca0, cb = gemm_mixed_calls(bb) - cb0;
    CHECKF(cb - ca == (unsigned long long)skipped, "%s: %llu gemm_mixed calls against %llu", what,
           ca, cb);
    CHECK_CLOSE(la, lb, 1e-6, 1e-6);
    const double gap = grad_gap(b, a);
    CHECKF(gap < 1e-5, "%s: gradients differ by %.3g of the largest", what, gap);
    for (int t = 0; t < N_TOWERS; t++) {
        if (!((c->towers >> t) & 1)) continue;
        const float ga = a->pg.tower[t].gate[0], gb = b->pg.tower[t].gate[0];
        CHECKF(fabs(ga - gb) <= 1e-6 + 1e-5 * fabs(gb), "%s: tower %d's first gate %.9g / %.9g",
               what, t, ga, gb);
        CHECKF(ga != 0.0f, "%s: tower %d's first gate has no gradient", what, t);
    }
    model_destroy(a);
    model_destroy(b);
    ba->destroy(ba);
    bb->destroy(bb);
}

static void test_first_block(void) {
    iisan_config c;
    small_config(&c);
    mem_states ms;
    mem_init(&ms, c.nstates, c.D, 99);
    iisan_states st = {mem_get, &ms, NULL, NULL};
    first_block_case(&c, &st, 0, 2, "three towers");
    first_block_case(&c, &st, 4, 4, "three towers, chunks of 4"); /* 8 distinct items */
    c.act = IISAN_ACT_GELU;
    c.towers = 1 << TOWER_TEXT;
    first_block_case(&c, &st, 0, 1, "text only");
    small_config(&c);
    c.remove_first = 1;
    c.K = 2;
    c.sched[0] = 2;
    c.sched[1] = 4;
    first_block_case(&c, &st, 0, 0, "remove-first");
    free(ms.data);
}

/* ---- block-level checks: the item encoder alone and the sequence encoder
 * alone, objective L = sum(out * R) for a fixed random R ---- */
static float R_[64 * 8];
static int32_t blk_items[8] = {0, 1, 2, 3, 4, 5, 6, 7};

static double tower_obj(iisan_model *m, const iisan_states *st) {
    tower_forward(m, blk_items, item_cat, 8, st);
    double L = 0;
    for (int i = 0; i < 8 * m->c.d; i++)
        L += (double)m->emb[i] * R_[i];
    return L;
}

static float *blk_emb; /* (8, d) input table of the sequence encoder */
static const int blk_idx[12] = {0, 0, 1, 2, 4, 5, 6, 7, 0, 3, 3, 6};
static const float blk_mask[12] = {0, 0, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1};

static double seq_obj(iisan_model *m, const iisan_states *st) {
    (void)st;
    seq_forward(m, blk_emb, blk_idx, blk_mask, 3, 1, 77);
    const float *o = seq_output(m);
    double L = 0;
    for (int i = 0; i < 12 * m->c.d; i++)
        if (blk_mask[i / m->c.d]) L += (double)o[i] * R_[i];
    return L;
}

/* directional finite difference of obj along a random unit direction of x[n] */
static void fd_dir(iisan_model *m, const iisan_states *st,
                   double (*obj)(iisan_model *, const iisan_states *), float *x, const float *g,
                   size_t n, const char *what) {
    const float eps = 1e-3f;
    float *dir = malloc(n * sizeof *dir);
    double nrm = 0, an = 0, gmax = 0;
    for (size_t j = 0; j < n; j++) {
        dir[j] = iisan_rng_normal(991, j);
        nrm += (double)dir[j] * dir[j];
    }
    for (size_t j = 0; j < n; j++) {
        dir[j] /= (float)sqrt(nrm);
        an += dir[j] * g[j];
        gmax = fmax(gmax, fabs(g[j]));
    }
    for (size_t j = 0; j < n; j++)
        x[j] += eps * dir[j];
    double lp = obj(m, st);
    for (size_t j = 0; j < n; j++)
        x[j] -= 2 * eps * dir[j];
    double lm = obj(m, st);
    for (size_t j = 0; j < n; j++)
        x[j] += eps * dir[j];
    double fd = (lp - lm) / (2 * eps);
    CHECKF(fabs(fd - an) <= 2e-3 + 3e-2 * fabs(an) + 1e-3 * gmax, "%s: fd %.6g analytic %.6g", what,
           fd, an);
    free(dir);
}

static void test_blocks(void) {
    iisan_config c;
    small_config(&c);
    c.act = IISAN_ACT_GELU;
    mem_states ms;
    mem_init(&ms, c.nstates, c.D, 99);
    iisan_states st = {mem_get, &ms, NULL, NULL};
    iisan_backend *be = iisan_backend_cpu(1);
    char err[256];
    iisan_model *m = model_create(&c, be, 3, 7, err, sizeof err);
    randomise(m, 11);
    for (int i = 0; i < 64 * 8; i++)
        R_[i] = iisan_rng_normal(5, i);
    size_t P = m->pt.total;
    float *g = malloc(P * sizeof *g);

    /* item encoder: every item-side tensor */
    tower_obj(m, &st);
    memset(m->g, 0, P * sizeof *g);
    memcpy(m->demb, R_, 8 * c.d * sizeof(float));
    tower_backward(m, 8);
    memcpy(g, m->g, P * sizeof *g);
    for (int i = 0; i < m->pt.n; i++) {
        const param_info *p = &m->pt.t[i];
        if (!strncmp(p->name, "seq.", 4)) continue;
        char what[96];
        snprintf(what, sizeof what, "item encoder %s", p->name);
        fd_dir(m, &st, tower_obj, m->w + p->offset, g + p->offset, p->size, what);
    }

    /* sequence encoder: every seq tensor and the input embeddings (dropout on,
     * fixed seed) */
    blk_emb = malloc(8 * c.d * sizeof *blk_emb);
    for (int i = 0; i < 8 * c.d; i++)
        blk_emb[i] = iisan_rng_normal(8, i);
    seq_obj(m, &st);
    memset(m->g, 0, P * sizeof *g);
    memset(m->demb, 0, 8 * c.d * sizeof(float));
    memset(m->dO, 0, 12 * c.d * sizeof(float));
    for (int i = 0; i < 12 * c.d; i++)
        if (blk_mask[i / c.d]) m->dO[i] = R_[i];
    seq_backward(m, 3, 77);
    memcpy(g, m->g, P * sizeof *g);
    float *gemb = malloc(8 * c.d * sizeof *gemb);
    memcpy(gemb, m->demb, 8 * c.d * sizeof *gemb);
    for (int i = 0; i < m->pt.n; i++) {
        const param_info *p = &m->pt.t[i];
        if (strncmp(p->name, "seq.", 4)) continue;
        char what[96];
        snprintf(what, sizeof what, "sequence encoder %s", p->name);
        fd_dir(m, &st, seq_obj, m->w + p->offset, g + p->offset, p->size, what);
    }
    fd_dir(m, &st, seq_obj, blk_emb, gemb, 8 * (size_t)c.d, "sequence encoder input");
    free(gemb);
    free(blk_emb);
    free(g);
    model_destroy(m);
    be->destroy(be);
    free(ms.data);
}

/* processing the item tower in row chunks gives the gradients of one pass */
static void test_row_chunks(void) {
    iisan_config c;
    small_config(&c);
    c.remove_first = 1;
    c.K = 2;
    c.sched[0] = 2;
    c.sched[1] = 4;
    mem_states ms;
    mem_init(&ms, c.nstates, c.D, 99);
    iisan_states st = {mem_get, &ms, NULL, NULL};
    iisan_backend *be = iisan_backend_cpu(1);
    char err[256];
    iisan_model *a = model_create(&c, be, 3, 7, err, sizeof err);
    iisan_model *b = model_create(&c, be, 3, 7, err, sizeof err);
    randomise(a, 11);
    randomise(b, 11);
    b->chunk_rows = 4; /* 15 slots, 8 distinct items: chunks of 4, 4 */
    float la = loss_at(a, &st, 1), lb = loss_at(b, &st, 1);
    CHECK_CLOSE(lb, la, 1e-6, 1e-5);
    const double gap = grad_gap(a, b);
    CHECKF(gap < 1e-5, "chunked gradients differ: %.3g", gap);
    model_destroy(a);
    model_destroy(b);
    be->destroy(be);
    free(ms.data);
}

int main(int argc, char **argv) {
    TEST_MAIN_BEGIN(argc, argv);
    make_logpop();
    RUN(test_default_relu);
    RUN(test_remove_first_gelu);
    RUN(test_init_and_groups);
    RUN(test_text_only);
    RUN(test_sasrec_id);
    RUN(test_determinism_and_descent);
    RUN(test_row_chunks);
    RUN(test_first_block);
    RUN(test_train_step);
    RUN(test_half_states);
    RUN(test_blocks);
    TEST_MAIN_END();
}

/* The whole model on the CUDA backend against the CPU backend, with hidden states held in
 * backend memory (core/resident.h), on a small configuration (D = 16, 5 states, r = 4, d = 8,
 * n = 4) and a small dataset of 50 users over 36 catalogue items, some without text or image
 * states, so that model and catalogue indexes differ and missing modalities are exercised.
 *
 * Always (no GPU needed): resident states on the CPU backend (IISAN-Versa's two shapes
 * included) give exactly what the direct source gives: the same rows, bit for bit the same loss,
 * gradients, parameters after Adam steps, item embeddings and evaluation.
 *
 * With a CUDA device (built with CUDA=1), for each of: default schedule + ReLU + dropout,
 * remove-first + GELU, text-only, SASRec-ID, IISAN-Versa with wider text (remove-first image)
 * and with wider image (GELU); the same random parameters on both backends:
 *   resident blocks on the GPU      bit for bit the source's halves
 *   one training step's loss        relative 1e-4 (dropout on: both draw the same masks)
 *   every gradient tensor           normalised max error max|g_cuda - g_cpu| / max|g_cpu| 1e-3
 *   parameters after 3 Adam steps   normalised max error per tensor 1e-4. Adam's first steps
 *                                   are nearly sign(g) * lr, so a gradient element at the
 *                                   level of summation-order noise could flip a whole step;
 *                                   eps = 1e-6 (not 1e-8) damps such elements.
 *   item embeddings of all items    normalised max error 1e-4
 *   HR@10 / NDCG@10 of a whole evaluation (test split): equal up to ties: a near-tie may move
 *                                   one user's target across rank 10, so each may differ by
 *                                   at most 1/users.
 *   top-10 of the last users' scores: the same items in the same order, except that two items
 *                                   whose CPU scores are within 1e-5 (relative to the row's
 *                                   largest score) may swap.
 * and no CUDA error recorded. Without a device (or built without CUDA=1) this part prints
 * "skipped: ..." and passes.
 *
 * `build/test/test_cuda_model NAME` runs only the tests whose name contains NAME. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/dataset.h"
#include "core/eval.h"
#include "core/model.h"
#include "core/resident.h"
#include "kernels/backend.h"
#include "kernels/half.h"
#include "kernels/rng.h"
#include "tests/test.h"

#ifdef IISAN_CUDA
#include "kernels/cuda/cuda_backend.h"

#include "tests/cuda_asan.h"
#endif

#define NCAT 40   /* catalogue items 1..40; 37..40 belong to no user */
#define NUSED 36  /* users draw from 1..36 */
#define NUSERS 50 /* users, each 5..10 items */
#define CAP 16    /* users per batch (evaluation batches too: 16, 16, 16, 2) */
#define TOPK 10

static iisan_backend *cpu;

/* ---- host hidden states: the "direct" source ---- */

typedef struct {
    size_t per[2];  /* nstates * D of each modality (IISAN-Versa: different) */
    uint16_t *data; /* [NCAT + 1][per[0] + per[1]] */
} host_states;

static int missing(int mod, uint32_t cat) {
    if (cat == 13) return 1;           /* neither modality */
    if (mod == 1) return cat % 7 == 3; /* no image: 3, 10, 17, 24, 31, 38 */
    return cat % 11 == 5;              /* no text: 5, 16, 27, 38 */
}

static const uint16_t *host_get(void *ctx, int mod, uint32_t cat) {
    host_states *h = ctx;
    if (cat == 0 || cat > NCAT || missing(mod, cat)) return NULL;
    return h->data + (size_t)cat * (h->per[0] + h->per[1]) + (mod ? h->per[0] : 0);
}

static void host_states_init(host_states *h, const iisan_config *c) {
    for (int mod = 0; mod < 2; mod++)
        h->per[mod] = (size_t)config_nstates(c, mod) * config_width(c, mod);
    size_t n = (size_t)(NCAT + 1) * (h->per[0] + h->per[1]);
    h->data = malloc(n * sizeof *h->data);
    for (size_t i = 0; i < n; i++)
        h->data[i] = iisan_float_to_half(iisan_rng_normal(31, i));
}

/* ---- the dataset: NUSERS users of 5..10 catalogue items from 1..NUSED ---- */

static int make_dataset(iisan_dataset *ds, int n) {
    uint32_t *seqs[NUSERS], lens[NUSERS];
    for (int u = 0; u < NUSERS; u++) {
        lens[u] = 5 + (uint32_t)(u % 6);
        seqs[u] = malloc(lens[u] * sizeof **seqs);
        for (uint32_t j = 0; j < lens[u]; j++) {
            /* a skewed draw, so popularity (logpop) varies */
            uint64_t a = iisan_rng_u64(17, (uint64_t)u * 64 + j) % NUSED;
            uint64_t b = iisan_rng_u64(18, (uint64_t)u * 64 + j) % NUSED;
            seqs[u][j] = 1 + (uint32_t)(a < b ? a : b);
        }
    }
    int rc = dataset_from_sequences(ds, (const uint32_t *const *)seqs, lens, NUSERS, n, 5);
    for (int u = 0; u < NUSERS; u++)
        free(seqs[u]);
    return rc;
}

/* ---- configurations ---- */

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
    c->dropout = 0.1f;
}

enum {
    CFG_DEFAULT,
    CFG_REMOVE_FIRST,
    CFG_TEXT,
    CFG_SASREC,
    CFG_VERSA_TEXT,
    CFG_VERSA_IMAGE,
    N_CFG
};
static const char *cfg_name[N_CFG] = {"default",   "remove-first+gelu", "text-only",
                                      "sasrec-id", "versa-wider-text",  "versa-wider-image"};

/* IISAN-Versa: text Dt x nt states with schedule st, image likewise */
static void versa_config(iisan_config *c, int Dt, int nt, const char *st, int Dv, int nv,
                         const char *sv) {
    char err[256];
    c->arch = ARCH_VERSA;
    c->mods[MOD_TEXT].D = Dt;
    c->mods[MOD_TEXT].nstates = nt;
    c->mods[MOD_IMAGE].D = Dv;
    c->mods[MOD_IMAGE].nstates = nv;
    CHECKF(config_set_schedule_mod(c, MOD_TEXT, st, err, sizeof err) == 0, "%s", err);
    CHECKF(config_set_schedule_mod(c, MOD_IMAGE, sv, err, sizeof err) == 0, "%s", err);
}

static void config_for(iisan_config *c, int which, int n_items) {
    small_config(c);
    switch (which) {
    case CFG_REMOVE_FIRST:
        c->remove_first = 1;
        c->K = 2;
        c->sched[0] = 2;
        c->sched[1] = 4;
        c->act = IISAN_ACT_GELU;
        break;
    case CFG_TEXT: c->towers = 1 << TOWER_TEXT; break;
    case CFG_VERSA_TEXT: versa_config(c, 24, 7, "all", 16, 5, "rf:2,4"); break;
    case CFG_VERSA_IMAGE:
        versa_config(c, 12, 5, "1,3", 20, 4, "every2");
        c->act = IISAN_ACT_GELU;
        break;
    case CFG_SASREC:
        c->kind = MODEL_SASREC_ID;
        c->n_items = n_items;
        break;
    default: break;
    }
}

/* random parameters away from the near-identity initialisation, so every path matters */
static float *random_params(const param_table *pt, uint64_t seed) {
    float *h = malloc(pt->total * sizeof *h);
    for (int i = 0; i < pt->n; i++) {
        const param_info *p = &pt->t[i];
        float sd = strstr(p->name, "gate") ? 0.05f : 0.3f;
        if (p->ndim == 2 && !strstr(p->name, "block") && !strstr(p->name, "seq"))
            sd = 1.0f / sqrtf((float)p->shape[1]);
        for (size_t j = 0; j < p->size; j++) {
            float z = sd * iisan_rng_normal(seed + (uint64_t)i, j);
            int ln_w = strstr(p->name, "ln") && strstr(p->name, "weight");
            h[p->offset + j] = ln_w ? 1.0f + z : z;
        }
    }
    return h;
}

/* the first B users' training sequences (B * (n + 1)) */
static int32_t *train_batch(const iisan_dataset *ds, int n, int B) {
    int32_t *s = malloc((size_t)B * (n + 1) * sizeof *s);
    for (int b = 0; b < B; b++)
        dataset_sequence(ds, b, SPLIT_TRAIN, s + (size_t)b * (n + 1), NULL);
    return s;
}

/* ---- CPU only: the resident source against the direct source ---- */

static void test_resident_rows(void) {
    iisan_config c;
    small_config(&c);
    host_states hs;
    host_states_init(&hs, &c);
    iisan_states direct = {host_get, &hs, NULL, NULL};
    iisan_dataset ds;
    CHECK(make_dataset(&ds, c.n) == 0);
    CHECKF(ds.n_items > 20 && ds.n_items <= NUSED, "%d items", ds.n_items);
    int moved = 0;
    for (int i = 1; i <= ds.n_items; i++)
        moved += ds.item_cat[i] != (uint32_t)i;
    CHECK(moved > 0); /* model and catalogue indexes differ */
    resident_states *rs = NULL;
    char err[256] = "";
    for (int in_host = 0; in_host < 2; in_host++) {
        /* both placements: the backend's memory, and pinned host memory (forced here; on a GPU
         * it is the fallback for catalogues larger than the device) */
        setenv("IISAN_STATES_IN_HOST", in_host ? "1" : "0", 1);
        int rc =
            states_resident_create(cpu, ds.item_cat, ds.n_items, &direct, &c, &rs, err, sizeof err);
        unsetenv("IISAN_STATES_IN_HOST");
        CHECKF(rc == 0 && rs, "%s", err);
        CHECK(resident_states_in_host(rs) == in_host);
        if (rs) {
            iisan_states res = resident_states_source(rs);
            const size_t slot = hs.per[0] + hs.per[1];
            CHECK(resident_states_bytes(rs) == (size_t)(ds.n_items + 1) * slot * 2);
            long present = 0, same = 0, blocks = 0;
            for (int i = 0; i <= ds.n_items; i++)
                for (int mod = 0; mod < 2; mod++) {
                    uint32_t cat = ds.item_cat[i];
                    const uint16_t *a = direct.get(direct.ctx, mod, cat);
                    const uint16_t *b = res.get(res.ctx, mod, cat);
                    blocks++;
                    if (a) present++;
                    if (!a ? !b : b && b != a && !memcmp(a, b, hs.per[mod] * sizeof *a)) same++;
                }
            CHECKF(same == blocks, "%ld of %ld blocks as the direct source", same, blocks);
            CHECK(resident_states_present(rs) == present);
            CHECK(present < blocks); /* the missing modalities are really exercised */
            /* catalogue items outside the dataset, the padding, bad modalities: none */
            for (uint32_t cat = NUSED + 1; cat <= NCAT + 5; cat++)
                CHECK(!res.get(res.ctx, 0, cat) && !res.get(res.ctx, 1, cat));
            CHECK(!res.get(res.ctx, 0, 0) && !res.get(res.ctx, 1, 0));
            CHECK(!res.get(res.ctx, 2, ds.item_cat[1]) && !res.get(res.ctx, -1, ds.item_cat[1]));
        }
        states_resident_free(rs);
        rs = NULL;
    }
    states_resident_free(NULL);
    /* bad arguments fail with a message */
    rs = NULL;
    err[0] = 0;
    iisan_config bad = c;
    bad.nstates = 0;
    CHECK(states_resident_create(cpu, ds.item_cat, ds.n_items, &direct, &bad, &rs, err,
                                 sizeof err) == -1);
    CHECK(rs == NULL && err[0]);
    dataset_free(&ds);
    free(hs.data);
}

/* bitwise: loss, gradients, 3 Adam steps, embeddings, evaluation */
static void resident_exact(int which) {
    iisan_dataset ds;
    CHECK(make_dataset(&ds, 4) == 0);
    iisan_config c;
    config_for(&c, which, ds.n_items);
    host_states hs;
    host_states_init(&hs, &c);
    iisan_states direct = {host_get, &hs, NULL, NULL};
    resident_states *rs = NULL;
    char err[256] = "";
    CHECKF(states_resident_create(cpu, ds.item_cat, ds.n_items, &direct, &c, &rs, err,
                                  sizeof err) == 0,
           "%s", err);
    iisan_model *m[2];
    m[0] = model_create(&c, cpu, CAP, 7, err, sizeof err);
    m[1] = model_create(&c, cpu, CAP, 7, err, sizeof err);
    CHECKF(m[0] && m[1], "%s", err);
    if (!rs || !m[0] || !m[1]) goto out;
    iisan_states src[2] = {direct, resident_states_source(rs)};
    const size_t P = m[0]->pt.total;
    float *h = random_params(&m[0]->pt, 11);
    int32_t *seqs = train_batch(&ds, c.n, CAP);
    for (int k = 0; k < 2; k++)
        cpu->upload(cpu, m[k]->w, h, P * sizeof *h);
    float l[2];
    for (int k = 0; k < 2; k++)
        l[k] = model_loss_grad(m[k], seqs, CAP, ds.logpop, ds.item_cat, &src[k], 1, 5);
    CHECKF(l[0] == l[1] && l[0] > 0, "%s: loss %.9g direct, %.9g resident", cfg_name[which], l[0],
           l[1]);
    CHECKF(!memcmp(m[0]->g, m[1]->g, P * sizeof(float)), "%s: gradients differ", cfg_name[which]);
    for (int s = 0; s < 3; s++)
        for (int k = 0; k < 2; k++) {
            model_loss_grad(m[k], seqs, CAP, ds.logpop, ds.item_cat, &src[k], 1, 100 + s);
            model_adam(m[k], T_LR_ALL(1e-3f), 0.9f, 0.999f, 1e-8f);
        }
    CHECKF(!memcmp(m[0]->w, m[1]->w, P * sizeof(float)), "%s: parameters differ after Adam",
           cfg_name[which]);
    size_t E = (size_t)(ds.n_items + 1) * c.d;
    float *emb[2];
    eval_result r[2];
    for (int k = 0; k < 2; k++) {
        emb[k] = cpu->alloc(cpu, E * sizeof(float));
        model_item_embeddings(m[k], ds.n_items, ds.item_cat, &src[k], emb[k]);
        CHECK(model_evaluate(m[k], &ds, SPLIT_TEST, EVAL_RULE_V2, &src[k], &r[k]) == 0);
    }
    CHECKF(!memcmp(emb[0], emb[1], E * sizeof(float)), "%s: item embeddings differ",
           cfg_name[which]);
    CHECKF(r[0].hr10 == r[1].hr10 && r[0].ndcg10 == r[1].ndcg10 && r[0].users == NUSERS,
           "%s: HR@10 %.6f / %.6f, NDCG@10 %.6f / %.6f", cfg_name[which], r[0].hr10, r[1].hr10,
           r[0].ndcg10, r[1].ndcg10);
    for (int k = 0; k < 2; k++)
        cpu->free(cpu, emb[k]);
    free(h);
    free(seqs);
out:
    model_destroy(m[0]);
    model_destroy(m[1]);
    states_resident_free(rs);
    dataset_free(&ds);
    free(hs.data);
}

static void test_resident_cpu_default(void) { resident_exact(CFG_DEFAULT); }
static void test_resident_cpu_remove_first(void) { resident_exact(CFG_REMOVE_FIRST); }
static void test_resident_cpu_text_only(void) { resident_exact(CFG_TEXT); }
static void test_resident_cpu_versa(void) {
    resident_exact(CFG_VERSA_TEXT);
    resident_exact(CFG_VERSA_IMAGE);
}

/* ---- CUDA against CPU ---- */

#ifdef IISAN_CUDA
static iisan_backend *gpu;

/* copies of a backend buffer on the host */
static float *fetch_f(iisan_backend *be, const float *p, size_t n) {
    float *h = malloc(n * sizeof *h);
    be->download(be, h, p, n * sizeof *h);
    return h;
}

/* max|a - b| / max|b| over n elements (0 when both are all zeros) */
static double norm_err(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]);
        if (!(e <= num)) num = e; /* NaN wins */
        if (fabs(b[i]) > den) den = fabs(b[i]);
    }
    if (num == 0) return 0;
    return den > 0 ? num / den : INFINITY;
}

/* every tensor of the table: normalised error of a (cuda) against b (cpu) within tol */
static void cmp_tensors(const param_table *pt, const float *a, const float *b, double tol,
                        const char *what) {
    for (int i = 0; i < pt->n; i++) {
        const param_info *p = &pt->t[i];
        double e = norm_err(a + p->offset, b + p->offset, p->size);
        CHECKF(e <= tol, "%s %s: normalised max error %.3g > %.3g", what, p->name, e, tol);
    }
}

/* the last evaluation batch's user states (test split) scored against all embeddings `all`
 * (backend memory, (N+1) x d), and their top-k: host idx / score [nb * k]; returns nb */
static int last_topk(iisan_model *m, const iisan_dataset *ds, const float *all, int *idx,
                     float *score, float **scores_host) {
    iisan_backend *be = m->be;
    const int n = m->c.n, d = m->c.d, N = ds->n_items, ne = n + 2;
    const int u0 = (ds->n_users - 1) / CAP * CAP, nb = ds->n_users - u0;
    int in_idx[CAP * 8], excl[CAP * 10], sel[CAP];
    float mask[CAP * 8];
    int32_t seq[16], tgt;
    memset(excl, 0, sizeof excl);
    for (int b = 0; b < nb; b++) {
        dataset_sequence(ds, u0 + b, SPLIT_TEST, seq, &tgt);
        for (int j = 0; j < n; j++) {
            in_idx[b * n + j] = seq[j];
            mask[b * n + j] = seq[j] != 0;
        }
        int nh = dataset_history(ds, u0 + b, SPLIT_TEST, seq);
        for (int j = 0; j < nh && j < ne; j++)
            excl[b * ne + j] = seq[j];
        sel[b] = b * n + n - 1;
    }
    int *dsel = be->alloc(be, sizeof sel), *dexcl = be->alloc(be, sizeof excl);
    int *didx = be->alloc(be, (size_t)nb * TOPK * sizeof(int));
    float *dsc = be->alloc(be, (size_t)nb * TOPK * sizeof(float));
    float *scores = be->alloc(be, (size_t)nb * (N + 1) * sizeof(float));
    be->upload(be, dsel, sel, sizeof sel);
    be->upload(be, dexcl, excl, sizeof excl);
    seq_forward(m, all, in_idx, mask, nb, 0, 0);
    be->gather_rows(be, m->Oq, seq_output(m), dsel, nb, d);
    be->gemm(be, 0, 1, nb, N + 1, d, 1, m->Oq, d, all, d, 0, scores, N + 1);
    be->topk(be, didx, dsc, scores, nb, N + 1, TOPK, dexcl, ne);
    be->download(be, idx, didx, (size_t)nb * TOPK * sizeof(int));
    be->download(be, score, dsc, (size_t)nb * TOPK * sizeof(float));
    *scores_host = fetch_f(be, scores, (size_t)nb * (N + 1));
    be->free(be, dsel);
    be->free(be, dexcl);
    be->free(be, didx);
    be->free(be, dsc);
    be->free(be, scores);
    return nb;
}

static void cuda_vs_cpu_at(int which, int in_host);
static void cuda_vs_cpu(int which) { cuda_vs_cpu_at(which, 0); }
/* the GPU reading the hidden states from pinned host memory over the bus: the same results */
static void test_cuda_states_in_host(void) { cuda_vs_cpu_at(CFG_DEFAULT, 1); }

static void cuda_vs_cpu_at(int which, int in_host) {
    const char *what = cfg_name[which];
    iisan_dataset ds;
    CHECK(make_dataset(&ds, 4) == 0);
    iisan_config c;
    config_for(&c, which, ds.n_items);
    host_states hs;
    host_states_init(&hs, &c);
    iisan_states direct = {host_get, &hs, NULL, NULL};
    iisan_backend *be[2] = {cpu, gpu};
    resident_states *rs[2] = {NULL, NULL};
    iisan_model *m[2] = {NULL, NULL};
    iisan_states src[2] = {direct, direct};
    char err[256] = "";
    for (int k = 0; k < 2; k++) {
        if (c.kind == MODEL_IISAN) {
            setenv("IISAN_STATES_IN_HOST", in_host ? "1" : "0", 1);
            int rc = states_resident_create(be[k], ds.item_cat, ds.n_items, &direct, &c, &rs[k],
                                            err, sizeof err);
            unsetenv("IISAN_STATES_IN_HOST");
            CHECK(rc || resident_states_in_host(rs[k]) == in_host);
            CHECKF(rc == 0, "%s on %s: %s", what, be[k]->name, err);
            if (rc) goto out;
            src[k] = resident_states_source(rs[k]);
        }
        m[k] = model_create(&c, be[k], CAP, 7, err, sizeof err);
        CHECKF(m[k] != NULL, "%s on %s: %s", what, be[k]->name, err);
        if (!m[k]) goto out;
    }
    const param_table *pt = &m[0]->pt;
    const size_t P = pt->total;

    /* the GPU's resident blocks hold the source's halves */
    if (rs[1]) {
        uint16_t *blk = malloc((hs.per[0] + hs.per[1]) * sizeof *blk);
        long same = 0, blocks = 0;
        for (int i = 0; i <= ds.n_items; i++)
            for (int mod = 0; mod < 2; mod++) {
                const uint16_t *a = direct.get(direct.ctx, mod, ds.item_cat[i]);
                const uint16_t *g = src[1].get(src[1].ctx, mod, ds.item_cat[i]);
                blocks++;
                if (!a || !g) {
                    same += !a && !g;
                    continue;
                }
                gpu->download(gpu, blk, g, hs.per[mod] * sizeof *blk);
                same += !memcmp(blk, a, hs.per[mod] * sizeof *blk);
            }
        CHECKF(same == blocks, "%s: %ld of %ld GPU blocks as the source", what, same, blocks);
        free(blk);
    }

    float *h = random_params(pt, 11);
    int32_t *seqs = train_batch(&ds, c.n, CAP);
    for (int k = 0; k < 2; k++)
        be[k]->upload(be[k], m[k]->w, h, P * sizeof *h);

    /* one training step: loss and every gradient */
    float l[2];
    for (int k = 0; k < 2; k++)
        l[k] = model_loss_grad(m[k], seqs, CAP, ds.logpop, ds.item_cat, &src[k], 1, 5);
    CHECKF(l[0] > 0 && fabs(l[1] - l[0]) <= 1e-4 * fabs(l[0]), "%s: loss cpu %.9g cuda %.9g", what,
           l[0], l[1]);
    float *g1 = fetch_f(gpu, m[1]->g, P);
    cmp_tensors(pt, g1, m[0]->g, 1e-3, "gradient");
    free(g1);

    /* three Adam steps from there (eps 1e-6: see the header), the spec's learning rates */
    iisan_train_config tc;
    train_config_default(&tc);
    float lr[LR_NGROUPS];
    train_lr_table(&tc, lr);
    for (int s = 0; s < 3; s++)
        for (int k = 0; k < 2; k++) {
            if (s) model_loss_grad(m[k], seqs, CAP, ds.logpop, ds.item_cat, &src[k], 1, 100 + s);
            model_adam(m[k], lr, 0.9f, 0.999f, 1e-6f);
        }
    float *w1 = fetch_f(gpu, m[1]->w, P);
    cmp_tensors(pt, w1, m[0]->w, 1e-4, "after 3 Adam steps:");
    free(w1);

    /* the same parameters again for the forward-only comparisons */
    for (int k = 0; k < 2; k++)
        be[k]->upload(be[k], m[k]->w, h, P * sizeof *h);
    const size_t E = (size_t)(ds.n_items + 1) * c.d;
    float *all[2];
    for (int k = 0; k < 2; k++) {
        all[k] = be[k]->alloc(be[k], E * sizeof(float));
        model_item_embeddings(m[k], ds.n_items, ds.item_cat, &src[k], all[k]);
    }
    float *e1 = fetch_f(gpu, all[1], E);
    double ee = norm_err(e1, all[0], E);
    CHECKF(ee <= 1e-4, "%s: item embeddings normalised max error %.3g", what, ee);
    free(e1);

    eval_result r[2];
    for (int k = 0; k < 2; k++)
        CHECK(model_evaluate(m[k], &ds, SPLIT_TEST, EVAL_RULE_V2, &src[k], &r[k]) == 0);
    CHECK(r[0].users == NUSERS && r[1].users == NUSERS);
    const double one = 1.0 / NUSERS + 1e-12;
    CHECKF(fabs(r[1].hr10 - r[0].hr10) <= one && fabs(r[1].ndcg10 - r[0].ndcg10) <= one,
           "%s: HR@10 cpu %.6f cuda %.6f, NDCG@10 cpu %.6f cuda %.6f", what, r[0].hr10, r[1].hr10,
           r[0].ndcg10, r[1].ndcg10);
    if (r[0].hr10 != r[1].hr10 || r[0].ndcg10 != r[1].ndcg10)
        fprintf(stderr, "  %s: evaluation differs by a tie: HR@10 %.6f / %.6f\n", what, r[0].hr10,
                r[1].hr10);

    /* top-10 of the last users */
    int idx[2][CAP * TOPK];
    float sc[2][CAP * TOPK], *rows[2];
    int nb = 0;
    for (int k = 0; k < 2; k++)
        nb = last_topk(m[k], &ds, all[k], idx[k], sc[k], &rows[k]);
    const int N1 = ds.n_items + 1;
    int bad = 0;
    for (int b = 0; b < nb; b++) {
        const float *row = rows[0] + (size_t)b * N1;
        double top = 0;
        for (int i = 1; i < N1; i++)
            top = fmax(top, fabs(row[i]));
        double tie = 1e-5 * (top > 0 ? top : 1);
        for (int j = 0; j < TOPK; j++) {
            int a = idx[0][b * TOPK + j], g = idx[1][b * TOPK + j];
            if (a == g) continue;
            /* a swap is allowed only between near-equal CPU scores */
            if (g < 1 || g >= N1 || fabs(row[g] - row[a]) > tie) bad++;
        }
        for (int j = 0; j < TOPK; j++)
            if (fabs(sc[1][b * TOPK + j] - sc[0][b * TOPK + j]) > 1e-4 * (top > 0 ? top : 1)) bad++;
    }
    CHECKF(bad == 0 && nb == NUSERS - (NUSERS - 1) / CAP * CAP,
           "%s: top-%d of the last %d users: %d entries differ beyond ties", what, TOPK, nb, bad);
    for (int k = 0; k < 2; k++) {
        free(rows[k]);
        be[k]->free(be[k], all[k]);
    }
    free(h);
    free(seqs);
out:
    for (int k = 0; k < 2; k++) {
        model_destroy(m[k]);
        states_resident_free(rs[k]);
    }
    dataset_free(&ds);
    free(hs.data);
    char msg[512] = "";
    int ne = iisan_cuda_errors(msg, sizeof msg);
    CHECKF(ne == 0, "%s: %d CUDA errors, the first: %s", what, ne, msg);
}

static void test_cuda_default(void) { cuda_vs_cpu(CFG_DEFAULT); }
static void test_cuda_remove_first(void) { cuda_vs_cpu(CFG_REMOVE_FIRST); }
static void test_cuda_text_only(void) { cuda_vs_cpu(CFG_TEXT); }
static void test_cuda_sasrec_id(void) { cuda_vs_cpu(CFG_SASREC); }
static void test_cuda_versa_wider_text(void) { cuda_vs_cpu(CFG_VERSA_TEXT); }
static void test_cuda_versa_wider_image(void) { cuda_vs_cpu(CFG_VERSA_IMAGE); }
#endif /* IISAN_CUDA */

int main(int argc, char **argv) {
    TEST_MAIN_BEGIN(argc, argv);
    cpu = iisan_backend_cpu(1);
    if (!cpu) {
        fprintf(stderr, "iisan_backend_cpu failed\n");
        return 2;
    }
    RUN(test_resident_rows);
    RUN(test_resident_cpu_default);
    RUN(test_resident_cpu_remove_first);
    RUN(test_resident_cpu_text_only);
    RUN(test_resident_cpu_versa);
#ifdef IISAN_CUDA
    char err[512];
    gpu = iisan_backend_cuda(0, err, sizeof err);
    if (gpu) {
        RUN(test_cuda_default);
        RUN(test_cuda_remove_first);
        RUN(test_cuda_text_only);
        RUN(test_cuda_sasrec_id);
        RUN(test_cuda_versa_wider_text);
        RUN(test_cuda_versa_wider_image);
        RUN(test_cuda_states_in_host);
        gpu->destroy(gpu);
    } else if (iisan_cuda_available()) { /* a device is there: failing to use it fails */
        CHECKF(gpu != NULL, "iisan_backend_cuda: %s", err);
    } else {
        fprintf(stderr, "skipped: the CUDA comparison: %s\n", err);
    }
#else
    fprintf(stderr, "skipped: the CUDA comparison: built without CUDA=1\n");
#endif
    cpu->destroy(cpu);
    TEST_MAIN_END();
}

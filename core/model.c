/* Model construction: one backend allocation (the arena) holds parameters,
 * gradients, Adam moments and every workspace; layout() walks the buffers
 * twice, once to measure and once to carve. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/model.h"

typedef struct {
    char *base;
    size_t off;
} carver;

static void *carve(carver *cv, size_t bytes) {
    size_t off = (cv->off + 63) & ~(size_t)63;
    cv->off = off + bytes;
    return cv->base ? cv->base + off : NULL;
}

#define F(n) carve(cv, (size_t)(n) * sizeof(float))
#define I(n) carve(cv, (size_t)(n) * sizeof(int))

static void layout(iisan_model *m, carver *cv) {
    const iisan_config *c = &m->c;
    const size_t P = m->pt.total;
    m->w = F(P);
    m->g = F(P);
    m->m = F(P);
    m->v = F(P);
    const int U = m->cap_items, d = c->d, n = c->n;
    if (c->kind == MODEL_IISAN) {
        const size_t r = c->r;
        const int versa = c->arch == ARCH_VERSA;
        size_t Dmax = 0;
        for (int mod = 0; mod < N_MODS; mod++) {
            const size_t D = config_width(c, mod);
            const int K = versa ? c->mods[mod].K : c->K;
            const int rf = versa ? c->mods[mod].remove_first : c->remove_first;
            if (versa) {
                for (int k = 0; k < K; k++)
                    m->xs[mod][k] = F(U * D);
                m->x0[mod] = rf ? F(U * D) : NULL;
            }
            Dmax = D > Dmax ? D : Dmax;
        }
        /* IISAN: every modality's K (+ 1) gathered states in one block, which gather_states
         * carves per batch so that one gather_half fills them all */
        if (!versa && m->half_states) {
            m->xs_block = F((size_t)N_MODS * c->remove_first * U * c->D);
            m->xs16_block = carve(cv, (size_t)N_MODS * c->K * U * c->D * sizeof(uint16_t));
        } else if (!versa)
            m->xs_block = F((size_t)N_MODS * (c->K + c->remove_first) * U * c->D);
        for (int t = 0; t < N_TOWERS; t++) {
            tower_ws *ws = &m->tw[t];
            memset(ws, 0, sizeof *ws);
            if (!((c->towers >> t) & 1)) continue;
            const size_t D = config_tower_width(c, t);
            int fo, di;
            params_head_dims(c, t, &fo, &di);
            for (int k = 0; k < config_tower_depth(c, t); k++) {
                ws->a[k] = F(U * r);
                ws->act[k] = F(U * r);
                ws->h[k] = F(U * D);
            }
            ws->h0 =
                !versa && t == TOWER_INTER && c->remove_first && c->inter_start == IISAN_RULES_V1
                    ? F(U * D)
                    : NULL;
            ws->M = F(d * di);
            ws->c = F(d);
            ws->dM = F(d * di);
            ws->dc = F(d);
        }
        const size_t ch = m->chunk_rows;
        if (versa && ((c->towers >> TOWER_INTER) & 1) && config_versa_wide(c) >= 0) {
            const size_t Dx = config_tower_width(c, TOWER_INTER);
            for (int k = 0; k < config_tower_depth(c, TOWER_INTER); k++)
                m->xp[k] = F(U * Dx);
            m->dq = F(ch * Dx);
        }
        const int ntd = config_ntowers(c) * d;
        m->zcat = F(U * ntd);
        m->dzcat = F(U * ntd);
        m->dh[0] = F(ch * Dmax);
        m->dh[1] = F(ch * Dmax);
        m->gin = F(ch * Dmax);
        m->dact = F(ch * r);
        m->dpre = F(ch * r);
    }
    m->emb = F(U * d);
    m->demb = F(U * d);
    m->items_dev = I(U);

    const int B = m->cap_users, Bn = B * n, C = B * (n + 1), H = c->heads;
    m->x0s = F(Bn * d);
    m->mu0 = F(Bn);
    m->rs0 = F(Bn);
    m->xe = F(Bn * d);
    m->mask = F(Bn);
    m->in_idx = I(Bn);
    for (int l = 0; l < IISAN_SEQ_LAYERS; l++) {
        seq_layer_ws *s = &m->sl[l];
        s->qkv = F(Bn * 3 * d);
        s->probs = F((size_t)B * H * n * n);
        s->att = F(Bn * d);
        s->r1 = F(Bn * d);
        s->mu1 = F(Bn);
        s->rs1 = F(Bn);
        s->A = F(Bn * d);
        s->f1 = F(Bn * 4 * d);
        s->g1 = F(Bn * 4 * d);
        s->r2 = F(Bn * d);
        s->mu2 = F(Bn);
        s->rs2 = F(Bn);
        s->out = F(Bn * d);
    }
    m->dX = F(Bn * d);
    m->dA = F(Bn * d);
    m->dT = F(Bn * d);
    m->dqkv = F(Bn * 3 * d);
    m->dG = F(Bn * 4 * d);
    m->dO = F(Bn * d);
    m->Oq = F(Bn * d);
    m->dOq = F(Bn * d);
    m->Ec = F(C * d);
    m->dEc = F(C * d);
    m->logits = F((size_t)Bn * C);
    m->logpop_c = F(C);
    m->qrow = I(Bn);
    m->quser = I(Bn);
    m->qtarget = I(Bn);
    m->cand_idx = I(C);
    m->cand_item = I(C);
    m->umask = carve(cv, (size_t)B * C);
    m->loss = F(1);
}

iisan_model *model_create(const iisan_config *c, iisan_backend *be, int cap_users, uint64_t seed,
                          char *err, int errlen) {
    if (config_check(c, err, errlen)) return NULL;
    iisan_model *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    m->c = *c;
    m->be = be;
    m->cap_users = cap_users;
    m->cap_items = cap_users * (c->n + 1);
    /* the towers run on chunks of rows (the backward's scratch is sized by one): a training
     * batch's distinct items (at most 64 x 11) fit in one, so every GEMM sees all of them */
    m->chunk_rows = m->cap_items < 1024 ? m->cap_items : 1024;
    /* the K states of a batch kept as fp16 where the backend's gates read them so (half the
     * bytes to gather, and to read again in the forward and the backward) */
    m->half_states = c->kind == MODEL_IISAN && c->arch != ARCH_VERSA && be->gate_bias_fwd_h &&
                     be->gate_bwd_mix_h && be->gather_half16 && !getenv("IISAN_FP32_STATES");
    if (params_build(&m->pt, c)) {
        snprintf(err, errlen, "cannot build the parameter table");
        free(m);
        return NULL;
    }
    carver cv = {0};
    layout(m, &cv);
    m->arena_bytes = cv.off;
    m->arena = be->alloc(be, m->arena_bytes);
    m->rows = calloc((size_t)m->cap_items * (1 + N_MODS * (IISAN_MAX_SCHED + 1)), sizeof *m->rows);
    m->adam_done = calloc((size_t)m->pt.n + 1, 1);
    if (!m->arena || !m->rows || !m->adam_done) {
        snprintf(err, errlen, "out of memory allocating %.1f MiB of model workspace",
                 m->arena_bytes / 1048576.0);
        model_destroy(m);
        return NULL;
    }
    cv.base = m->arena;
    cv.off = 0;
    layout(m, &cv);
    params_views(&m->pt, c, m->w, &m->pw);
    params_views(&m->pt, c, m->g, &m->pg);
    float *host = malloc(m->pt.total * sizeof(float));
    if (!host) {
        snprintf(err, errlen, "out of memory");
        model_destroy(m);
        return NULL;
    }
    params_init(&m->pt, host, seed);
    be->upload(be, m->w, host, m->pt.total * sizeof(float));
    free(host);
    return m;
}

void model_destroy(iisan_model *m) {
    if (!m) return;
    if (m->arena) m->be->free(m->be, m->arena);
    free(m->rows);
    free(m->adam_done);
    params_free(&m->pt);
    free(m);
}

size_t model_param_count(const iisan_model *m) { return m->pt.total; }

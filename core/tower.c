/* The item encoder: intra-modal SANs (text, image), the inter-modal SAN, the
 * F.P heads applied through M = P_w F_w formed once per batch, and the fusion
 * layer. Hidden states are read as fp16 and converted per batch; no gradient
 * is ever taken with respect to them. */
#include <string.h>

#include "core/model.h"
#include "core/states.h"

static int tower_mod(int t) { return t == TOWER_TEXT ? MOD_TEXT : MOD_IMAGE; }

static int need_mod(const iisan_config *c, int mod) {
    if ((c->towers >> TOWER_INTER) & 1) return 1;
    return (c->towers >> (mod == MOD_TEXT ? TOWER_TEXT : TOWER_IMAGE)) & 1;
}

/* every state the towers read, each modality's x0 (remove-first) and xs[k] carved in turn
 * from m->xs_block at this batch's U rows apiece, in one gather_half (one hand-off to the
 * pool, or one launch); with half_states the xs[k] are fp16, carved from m->xs16_block and
 * filled by one gather_half16, and x0 alone is converted */
static void gather_states(iisan_model *m, const uint32_t *cat, int U, const iisan_states *st) {
    const iisan_config *c = &m->c;
    iisan_backend *be = m->be;
    const size_t D = (size_t)c->D;
    const int half = m->half_states;
    const uint16_t **base = m->rows, **rows = m->rows + U;
    /* rows converted (n of them, from rows[0]) and copied as fp16 (n16, from rows[first16],
     * past the at most N_MODS x0's U rows) */
    int n = 0, n16 = 0;
    const int first16 = N_MODS * U;
    for (int mod = 0; mod < 2; mod++) {
        if (!need_mod(c, mod)) continue;
        for (int u = 0; u < U; u++)
            base[u] = st->get(st->ctx, mod, cat[u]);
        /* base[] now holds each item's block; step it to each scheduled state */
        for (int k = -1; k < c->K; k++) {
            if (k < 0 && !c->remove_first) continue;
            const size_t s = k < 0 ? 0 : (size_t)c->sched[k] * D;
            const uint16_t **r;
            if (k >= 0 && half) {
                m->xs16[mod][k] = m->xs16_block + (size_t)n16 * D;
                r = rows + first16 + n16;
                n16 += U;
            } else {
                float *dst = m->xs_block + (size_t)n * D;
                *(k < 0 ? &m->x0[mod] : &m->xs[mod][k]) = dst;
                r = rows + n;
                n += U;
            }
            for (int u = 0; u < U; u++)
                r[u] = base[u] ? base[u] + s : NULL;
        }
    }
    if (n) be->gather_half(be, m->xs_block, rows, n, c->D);
    if (n16) be->gather_half16(be, m->xs16_block, rows + first16, n16, c->D);
    if (st->release) { /* the blocks are copied: a store reader may end its transaction */
        be->sync(be);
        states_release(st);
    }
}

void tower_block_forward(iisan_model *m, const san_block_v *w, tower_ws *ws, int k, int r0, int R,
                         int D, const tower_gate_in *g) {
    iisan_backend *be = m->be;
    const int r = m->c.r;
    const size_t o = (size_t)r0 * D, orr = (size_t)r0 * r;
    /* in, and h = in + b_up, in one pass */
    if (g->ha)
        be->gate_bias_fwd_h(be, m->gin, ws->h[k] + o, g->c, g->ha, g->hb, g->b, g->gate,
                            m->c.gate_temp, w->up_b, R, D);
    else
        be->gate_bias_fwd(be, m->gin, ws->h[k] + o, g->c, g->a, g->b, g->gate, m->c.gate_temp,
                          w->up_b, R, D);
    be->gemm_mixed(be, 0, 1, R, r, D, 1, m->gin, D, w->down_w, D, 0, ws->a[k] + orr, r);
    be->add_bias(be, ws->a[k] + orr, r, w->down_b, R, r);
    be->act_fwd(be, m->c.act, ws->act[k] + orr, ws->a[k] + orr, (size_t)R * r);
    be->gemm_mixed(be, 0, 1, R, D, r, 1, ws->act[k] + orr, r, w->up_w, r, 1, ws->h[k] + o, D);
}

/* block k's gate operands in tower t, rows from offset o (r0 * D): the inter tower's
 * in = u_{k-1} + g V[s_k] + (1 - g) T[s_k], an intra tower's in = g X[s_k] + (1 - g) h_{k-1};
 * the running state before the first block is zeros, or (remove-first) X[0] in an intra
 * tower and (T[0] + V[0]) / 2 (ws->h0) in the inter tower under version 1's rule */
static tower_gate_in tower_gate_operands(const iisan_model *m, int t, int k, size_t o) {
    const iisan_config *c = &m->c;
    const tower_ws *ws = &m->tw[t];
    const float *gate = m->pw.tower[t].gate + k, *prev = NULL;
    if (k > 0)
        prev = ws->h[k - 1] + o;
    else if (t == TOWER_INTER && ws->h0)
        prev = ws->h0 + o;
    else if (t != TOWER_INTER && c->remove_first)
        prev = m->x0[tower_mod(t)] + o;
    if (m->half_states) {
        if (t == TOWER_INTER)
            return (tower_gate_in){.c = prev,
                                   .gate = gate,
                                   .ha = m->xs16[MOD_IMAGE][k] + o,
                                   .hb = m->xs16[MOD_TEXT][k] + o};
        return (tower_gate_in){.b = prev, .gate = gate, .ha = m->xs16[tower_mod(t)][k] + o};
    }
    if (t == TOWER_INTER)
        return (tower_gate_in){
            .c = prev, .a = m->xs[MOD_IMAGE][k] + o, .b = m->xs[MOD_TEXT][k] + o, .gate = gate};
    return (tower_gate_in){.a = m->xs[tower_mod(t)][k] + o, .b = prev, .gate = gate};
}

/* tower t on rows r0 .. r0+R-1, its z into columns off .. off+d-1 of zcat */
static void rows_forward(iisan_model *m, int t, int r0, int R, int off) {
    const iisan_config *c = &m->c;
    iisan_backend *be = m->be;
    const int D = c->D, d = c->d, ntd = config_ntowers(c) * d;
    const size_t o = (size_t)r0 * D, RD = (size_t)R * D;
    tower_ws *ws = &m->tw[t];
    if (ws->h0) { /* u_0 = (T[0] + V[0]) / 2 */
        be->copy(be, ws->h0 + o, m->x0[MOD_TEXT] + o, RD * sizeof(float));
        be->axpby(be, RD, 0.5f, m->x0[MOD_IMAGE] + o, 0.5f, ws->h0 + o);
    }
    for (int k = 0; k < c->K; k++) {
        tower_gate_in g = tower_gate_operands(m, t, k, o);
        tower_block_forward(m, &m->pw.tower[t].blk[k], ws, k, r0, R, D, &g);
    }
    /* z = P(F h_K) = h_K M^T + c */
    float *z = m->zcat + (size_t)r0 * ntd + off;
    be->gemm_mixed(be, 0, 1, R, d, D, 1, ws->h[c->K - 1] + o, D, ws->M, D, 0, z, ntd);
    be->add_bias(be, z, ntd, ws->c, R, d);
}

/* the heads' products, once per batch: M = P_w F_w, c = P_w F_b + P_b */
void tower_heads_forward(iisan_model *m) {
    const iisan_config *c = &m->c;
    iisan_backend *be = m->be;
    const int d = c->d;
    for (int t = 0; t < N_TOWERS; t++) {
        if (!((c->towers >> t) & 1)) continue;
        const tower_v *w = &m->pw.tower[t];
        tower_ws *ws = &m->tw[t];
        int fo, di;
        params_head_dims(c, t, &fo, &di);
        be->gemm_mixed(be, 0, 0, d, di, fo, 1, w->proj_w, fo, w->fc_w, di, 0, ws->M, di);
        be->gemm(be, 0, 0, d, 1, fo, 1, w->proj_w, fo, w->fc_b, 1, 0, ws->c, 1);
        be->axpby(be, d, 1, w->proj_b, 1, ws->c);
    }
}

void tower_forward(iisan_model *m, const int32_t *items, const uint32_t *cat, int U,
                   const iisan_states *st) {
    const iisan_config *c = &m->c;
    iisan_backend *be = m->be;
    const int d = c->d;
    if (c->kind == MODEL_SASREC_ID) {
        be->upload(be, m->items_dev, items, (size_t)U * sizeof(int));
        be->gather_rows(be, m->emb, m->pw.item_emb, m->items_dev, U, d);
        return;
    }
    if (c->arch == ARCH_VERSA) {
        versa_forward(m, cat, U, st);
        return;
    }
    gather_states(m, cat, U, st);
    tower_heads_forward(m);
    for (int r0 = 0; r0 < U; r0 += m->chunk_rows) {
        int R = U - r0 < m->chunk_rows ? U - r0 : m->chunk_rows, off = 0;
        for (int t = 0; t < N_TOWERS; t++) {
            if (!((c->towers >> t) & 1)) continue;
            rows_forward(m, t, r0, R, off);
            off += d;
        }
    }
    tower_fuse_forward(m, U);
}

void tower_fuse_forward(iisan_model *m, int U) {
    iisan_backend *be = m->be;
    const int d = m->c.d, ntd = config_ntowers(&m->c) * d;
    be->gemm(be, 0, 1, U, d, ntd, 1, m->zcat, ntd, m->pw.fuse_w, ntd, 0, m->emb, d);
    be->add_bias(be, m->emb, d, m->pw.fuse_b, U, d);
}

void tower_block_backward(iisan_model *m, const san_block_v *bw, const san_block_v *bg,
                          const tower_ws *ws, int k, int r0, int R, int D, const tower_gate_in *gi,
                          float *dgate, float *da, float *db, float *cur, int last) {
    iisan_backend *be = m->be;
    const int r = m->c.r;
    const size_t orr = (size_t)r0 * r;
    /* an input s X alone (an intra tower's first block, h_0 = 0) takes no gradient: d in
     * serves the gate's alone, sum(d in X) s (1 - s) / temp with d in = d h + dpre W_down. Its
     * down-projection part sum((dpre W_down) X) = <W_down, dpre^T X>, and dpre^T (s X) is this
     * block's dW_down: so that part is (1 - s) / temp <W_down, dW_down> (gate_dp_dot), taken
     * once dW_down is whole, and the R x D x r GEMM for d in is not run. */
    const int x_only = be->gate_dp_dot && !gi->b && !gi->hb && !gi->c && !da && !db;
    /* h = in + up(act(down(in))) */
    be->bias_grad(be, bg->up_b, cur, D, R, D);
    be->gemm_mixed(be, 1, 0, D, r, R, 1, cur, D, ws->act[k] + orr, r, 1, bg->up_w, r);
    be->gemm_mixed(be, 0, 0, R, r, D, 1, cur, D, bw->up_w, r, 0, m->dact, r);
    be->act_bwd(be, m->c.act, m->dpre, m->dact, ws->a[k] + orr, (size_t)R * r);
    be->bias_grad(be, bg->down_b, m->dpre, r, R, r);
    if (!x_only) /* d in */
        be->gemm_mixed(be, 0, 0, R, D, r, 1, m->dpre, r, bw->down_w, D, 1, cur, D);
    /* the gate's gradients from d in and, in the same pass, the block's input again as the
     * forward mixed it (not kept), for dW_down */
    if (gi->ha) /* the states take no gradient: no da (nor db of fp16 states) */
        be->gate_bwd_mix_h(be, m->gin, gi->hb ? NULL : db, dgate, cur, gi->c, gi->ha, gi->hb, gi->b,
                           gi->gate, m->c.gate_temp, (size_t)R * D);
    else
        be->gate_bwd_mix(be, m->gin, da, db, dgate, cur, gi->c, gi->a, gi->b, gi->gate,
                         m->c.gate_temp, (size_t)R * D);
    be->gemm_mixed(be, 1, 0, r, D, R, 1, m->dpre, r, m->gin, D, 1, bg->down_w, D);
    if (x_only && last)
        be->gate_dp_dot(be, dgate, bw->down_w, bg->down_w, gi->gate, m->c.gate_temp, (size_t)r * D);
}

void tower_block_done(iisan_model *m, const san_block_v *w, int D) {
    model_adam_now(m, w->down_w, w->up_b + D);
}

/* tower t's backward on rows r0 .. r0+R-1 from dz (columns off.. of dzcat):
 * accumulates dM, dc and every SAN block and gate gradient (final on the last chunk) */
static void rows_backward(iisan_model *m, int t, int r0, int R, int off, int last) {
    const iisan_config *c = &m->c;
    iisan_backend *be = m->be;
    const int D = c->D, d = c->d, ntd = config_ntowers(c) * d;
    const size_t o = (size_t)r0 * D;
    const tower_v *w = &m->pw.tower[t];
    const tower_v *g = &m->pg.tower[t];
    tower_ws *ws = &m->tw[t];
    const float *dz = m->dzcat + (size_t)r0 * ntd + off;
    /* heads: dM += dz^T h_K, dc += colsum dz, dh_K = dz M */
    be->gemm_mixed(be, 1, 0, d, D, R, 1, dz, ntd, ws->h[c->K - 1] + o, D, 1, ws->dM, D);
    be->bias_grad(be, ws->dc, dz, ntd, R, d);
    float *cur = m->dh[0], *other = m->dh[1];
    be->gemm_mixed(be, 0, 0, R, D, d, 1, dz, ntd, ws->M, D, 0, cur, D);
    for (int k = c->K - 1; k >= 0; k--) {
        tower_gate_in gi = tower_gate_operands(m, t, k, o);
        /* inter: in = u_{k-1} + s V + (1-s) T, so d u_{k-1} = d in (cur, kept);
         * intra: in = s X + (1-s) h_{k-1}, so d h_{k-1} = (1-s) d in, into the other buffer */
        float *dprev = t != TOWER_INTER && k > 0 ? other : NULL;
        tower_block_backward(m, &w->blk[k], &g->blk[k], ws, k, r0, R, D, &gi, g->gate + k, NULL,
                             dprev, cur, last);
        if (last) tower_block_done(m, &w->blk[k], D);
        if (t != TOWER_INTER) {
            float *tmp = cur;
            cur = other;
            other = tmp;
        }
    }
}

void tower_fuse_backward(iisan_model *m, int U) {
    const iisan_config *c = &m->c;
    iisan_backend *be = m->be;
    const int d = c->d, ntd = config_ntowers(c) * d;
    be->bias_grad(be, m->pg.fuse_b, m->demb, d, U, d);
    be->gemm(be, 1, 0, d, ntd, U, 1, m->demb, d, m->zcat, ntd, 1, m->pg.fuse_w, ntd);
    be->gemm(be, 0, 0, U, ntd, d, 1, m->demb, d, m->pw.fuse_w, ntd, 0, m->dzcat, ntd);
    for (int t = 0; t < N_TOWERS; t++) {
        if (!((c->towers >> t) & 1)) continue;
        int fo, di;
        params_head_dims(c, t, &fo, &di);
        be->zero(be, m->tw[t].dM, (size_t)d * di * sizeof(float));
        be->zero(be, m->tw[t].dc, (size_t)d * sizeof(float));
    }
}

void tower_backward(iisan_model *m, int U) {
    const iisan_config *c = &m->c;
    iisan_backend *be = m->be;
    const int d = c->d;
    if (c->kind == MODEL_SASREC_ID) {
        be->scatter_add_rows(be, m->pg.item_emb, m->demb, m->items_dev, U, d);
        return;
    }
    if (c->arch == ARCH_VERSA) {
        versa_backward(m, U);
        return;
    }
    tower_fuse_backward(m, U);
    for (int r0 = 0; r0 < U; r0 += m->chunk_rows) {
        int R = U - r0 < m->chunk_rows ? U - r0 : m->chunk_rows, off = 0;
        for (int t = 0; t < N_TOWERS; t++) {
            if (!((c->towers >> t) & 1)) continue;
            rows_backward(m, t, r0, R, off, r0 + R == U);
            off += d;
        }
    }
    tower_heads_backward(m);
}

/* the heads' parameters from dM and dc:
 * dP_w += dM F_w^T + dc F_b^T; dF_w += P_w^T dM; dF_b += P_w^T dc; dP_b += dc */
void tower_heads_backward(iisan_model *m) {
    const iisan_config *c = &m->c;
    iisan_backend *be = m->be;
    const int d = c->d;
    for (int t = 0; t < N_TOWERS; t++) {
        if (!((c->towers >> t) & 1)) continue;
        const tower_v *w = &m->pw.tower[t];
        const tower_v *g = &m->pg.tower[t];
        const tower_ws *ws = &m->tw[t];
        int fo, di;
        params_head_dims(c, t, &fo, &di);
        be->gemm_mixed(be, 0, 1, d, fo, di, 1, ws->dM, di, w->fc_w, di, 1, g->proj_w, fo);
        be->ger(be, d, fo, 1, ws->dc, w->fc_b, g->proj_w);
        be->gemm_mixed(be, 1, 0, fo, di, d, 1, w->proj_w, fo, ws->dM, di, 1, g->fc_w, di);
        be->gemm(be, 1, 0, fo, 1, d, 1, w->proj_w, fo, ws->dc, 1, 1, g->fc_b, 1);
        be->axpby(be, d, 1, ws->dc, 1, g->proj_b);
        /* this tower's F and P are final (and not read again in this step) */
        model_adam_now(m, w->fc_w, w->fc_w + (size_t)fo * di);
        model_adam_now(m, w->fc_b, w->fc_b + fo);
        model_adam_now(m, w->proj_w, w->proj_w + (size_t)d * fo);
        model_adam_now(m, w->proj_b, w->proj_b + d);
    }
}

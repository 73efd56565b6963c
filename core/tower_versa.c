/* IISAN-Versa's item encoder (spec, last section): text and image intra towers each in
 * their own width Dt, Dv and schedule St, Sv; the inter tower Dx = min(Dt, Dv) wide and
 * K = min(Kt, Kv) deep, reading at step k the states of the last K schedule entries of each
 * modality, the wider one projected to Dx by its own Q_k; heads F: width -> d (intra) or
 * Dx -> Dx (inter), then P -> d. The SAN blocks, heads and fusion are tower.c's. */
#include "core/model.h"
#include "core/states.h"

static int versa_need_mod(const iisan_config *c, int mod) {
    if ((c->towers >> TOWER_INTER) & 1) return 1;
    return (c->towers >> (mod == MOD_TEXT ? TOWER_TEXT : TOWER_IMAGE)) & 1;
}

/* every scheduled state of each modality (and state 0 for remove-first) as floats */
static void versa_gather(iisan_model *m, const uint32_t *cat, int U, const iisan_states *st) {
    const iisan_config *c = &m->c;
    iisan_backend *be = m->be;
    for (int mod = 0; mod < N_MODS; mod++) {
        if (!versa_need_mod(c, mod)) continue;
        const iisan_modality *v = &c->mods[mod];
        for (int u = 0; u < U; u++)
            m->rows[u] = st->get(st->ctx, mod, cat[u]);
        for (int k = -1; k < v->K; k++) {
            if (k < 0 && !v->remove_first) continue;
            int s = k < 0 ? 0 : v->sched[k];
            const uint16_t **rows = m->rows + U;
            for (int u = 0; u < U; u++)
                rows[u] = m->rows[u] ? m->rows[u] + (size_t)s * v->D : NULL;
            be->gather_half(be, k < 0 ? m->x0[mod] : m->xs[mod][k], rows, U, v->D);
        }
    }
    if (st->release) { /* the blocks are copied: a store reader may end its transaction */
        be->sync(be);
        states_release(st);
    }
}

/* the inter tower's inputs at step k on rows from r0: t_k and v_k, the wider one projected
 * (forward: computed into xp[k]) */
static void inter_inputs(iisan_model *m, int k, int r0, int R, int project, const float **tk,
                         const float **vk) {
    const iisan_config *c = &m->c;
    const int Kx = config_tower_depth(c, TOWER_INTER), Dx = config_tower_width(c, TOWER_INTER);
    const int wide = config_versa_wide(c);
    const float *x[N_MODS];
    for (int mod = 0; mod < N_MODS; mod++) {
        const iisan_modality *v = &c->mods[mod];
        x[mod] = m->xs[mod][v->K - Kx + k] + (size_t)r0 * v->D;
    }
    if (wide >= 0) {
        const int Dw = c->mods[wide].D;
        float *p = m->xp[k] + (size_t)r0 * Dx;
        if (project) {
            const tower_v *w = &m->pw.tower[TOWER_INTER];
            m->be->gemm(m->be, 0, 1, R, Dx, Dw, 1, x[wide], Dw, w->q_w[k], Dw, 0, p, Dx);
            m->be->add_bias(m->be, p, Dx, w->q_b[k], R, Dx);
        }
        x[wide] = p;
    }
    *tk = x[MOD_TEXT];
    *vk = x[MOD_IMAGE];
}

/* block k's gate operands in tower t, rows r0.. (the inter tower's inputs projected first when
 * project): the inter tower's in = u_{k-1} + g v_k + (1 - g) t_k, an intra tower's
 * in = g X[s_k] + (1 - g) h_{k-1}; before the first block u_0 = 0, h_0 = X[0] (remove-first)
 * or 0 */
static tower_gate_in versa_gate_operands(iisan_model *m, int t, int k, int r0, int R, int project) {
    const iisan_config *c = &m->c;
    const size_t o = (size_t)r0 * config_tower_width(c, t);
    const int mod = t == TOWER_TEXT ? MOD_TEXT : MOD_IMAGE;
    const float *gate = m->pw.tower[t].gate + k, *prev = NULL;
    if (k > 0)
        prev = m->tw[t].h[k - 1] + o;
    else if (t != TOWER_INTER && c->mods[mod].remove_first)
        prev = m->x0[mod] + o;
    if (t != TOWER_INTER) return (tower_gate_in){.a = m->xs[mod][k] + o, .b = prev, .gate = gate};
    const float *tk, *vk;
    inter_inputs(m, k, r0, R, project, &tk, &vk);
    return (tower_gate_in){.c = prev, .a = vk, .b = tk, .gate = gate};
}

/* tower t on rows r0 .. r0+R-1, its z into columns off .. off+d-1 of zcat */
static void versa_rows_forward(iisan_model *m, int t, int r0, int R, int off) {
    const iisan_config *c = &m->c;
    iisan_backend *be = m->be;
    const int D = config_tower_width(c, t), K = config_tower_depth(c, t), d = c->d;
    const int ntd = config_ntowers(c) * d;
    const size_t o = (size_t)r0 * D;
    const tower_v *w = &m->pw.tower[t];
    tower_ws *ws = &m->tw[t];
    for (int k = 0; k < K; k++) {
        tower_gate_in g = versa_gate_operands(m, t, k, r0, R, 1);
        tower_block_forward(m, &w->blk[k], ws, k, r0, R, D, &g);
    }
    /* z = P(F h_K) = h_K M^T + c */
    float *z = m->zcat + (size_t)r0 * ntd + off;
    be->gemm_mixed(be, 0, 1, R, d, D, 1, ws->h[K - 1] + o, D, ws->M, D, 0, z, ntd);
    be->add_bias(be, z, ntd, ws->c, R, d);
}

void versa_forward(iisan_model *m, const uint32_t *cat, int U, const iisan_states *st) {
    const iisan_config *c = &m->c;
    versa_gather(m, cat, U, st);
    tower_heads_forward(m);
    for (int r0 = 0; r0 < U; r0 += m->chunk_rows) {
        int R = U - r0 < m->chunk_rows ? U - r0 : m->chunk_rows, off = 0;
        for (int t = 0; t < N_TOWERS; t++) {
            if (!((c->towers >> t) & 1)) continue;
            versa_rows_forward(m, t, r0, R, off);
            off += c->d;
        }
    }
    tower_fuse_forward(m, U);
}

/* after the inter tower's block k (whose gate left the projected modality's gradient in
 * m->dq): that gradient on into Q_k */
static void inter_proj_backward(iisan_model *m, int k, int r0, int R) {
    const iisan_config *c = &m->c;
    iisan_backend *be = m->be;
    const int Dx = config_tower_width(c, TOWER_INTER), wide = config_versa_wide(c);
    const tower_v *g = &m->pg.tower[TOWER_INTER];
    if (wide < 0) return;
    /* p = x_w Q_k^T + b_k: dQ_k += dp^T x_w, db_k += colsum dp */
    const iisan_modality *v = &c->mods[wide];
    const int Kx = config_tower_depth(c, TOWER_INTER), Dw = v->D;
    const float *xw = m->xs[wide][v->K - Kx + k] + (size_t)r0 * Dw;
    be->gemm(be, 1, 0, Dx, Dw, R, 1, m->dq, Dx, xw, Dw, 1, g->q_w[k], Dw);
    be->bias_grad(be, g->q_b[k], m->dq, Dx, R, Dx);
}

/* tower t's backward on rows r0 .. r0+R-1 from dz (columns off.. of dzcat) */
static void versa_rows_backward(iisan_model *m, int t, int r0, int R, int off, int last) {
    const iisan_config *c = &m->c;
    iisan_backend *be = m->be;
    const int D = config_tower_width(c, t), K = config_tower_depth(c, t), d = c->d;
    const int ntd = config_ntowers(c) * d;
    const size_t o = (size_t)r0 * D;
    const tower_v *w = &m->pw.tower[t], *g = &m->pg.tower[t];
    tower_ws *ws = &m->tw[t];
    const float *dz = m->dzcat + (size_t)r0 * ntd + off;
    /* heads: dM += dz^T h_K, dc += colsum dz, dh_K = dz M */
    be->gemm_mixed(be, 1, 0, d, D, R, 1, dz, ntd, ws->h[K - 1] + o, D, 1, ws->dM, D);
    be->bias_grad(be, ws->dc, dz, ntd, R, d);
    float *cur = m->dh[0], *other = m->dh[1];
    be->gemm_mixed(be, 0, 0, R, D, d, 1, dz, ntd, ws->M, D, 0, cur, D);
    for (int k = K - 1; k >= 0; k--) {
        tower_gate_in gi = versa_gate_operands(m, t, k, r0, R, 0);
        /* inter: d u_{k-1} = d in (cur, kept), d p_k into m->dq; intra: d h_{k-1} into other */
        float *da = NULL, *db = t != TOWER_INTER && k > 0 ? other : NULL;
        if (t == TOWER_INTER) {
            const int wide = config_versa_wide(c);
            da = wide == MOD_IMAGE ? m->dq : NULL, db = wide == MOD_TEXT ? m->dq : NULL;
        }
        tower_block_backward(m, &w->blk[k], &g->blk[k], ws, k, r0, R, D, &gi, g->gate + k, da, db,
                             cur, last);
        if (last) tower_block_done(m, &w->blk[k], D);
        if (t == TOWER_INTER) {
            inter_proj_backward(m, k, r0, R);
            continue;
        }
        float *tmp = cur;
        cur = other;
        other = tmp;
    }
}

void versa_backward(iisan_model *m, int U) {
    const iisan_config *c = &m->c;
    tower_fuse_backward(m, U);
    for (int r0 = 0; r0 < U; r0 += m->chunk_rows) {
        int R = U - r0 < m->chunk_rows ? U - r0 : m->chunk_rows, off = 0;
        for (int t = 0; t < N_TOWERS; t++) {
            if (!((c->towers >> t) & 1)) continue;
            versa_rows_backward(m, t, r0, R, off, r0 + R == U);
            off += c->d;
        }
    }
    tower_heads_backward(m);
}

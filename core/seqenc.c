/* The SASRec-style sequence encoder (post-LayerNorm, 2 blocks, 2 heads),
 * forward and backward. Dropout masks come from per-site seeds derived from
 * the step seed, so backward redraws exactly the forward's masks. */
#include "core/model.h"
#include "kernels/rng.h"

/* dropout sites: 0 embedding, then 3 per layer (attention probs, attention
 * output, FFN output) */
static uint64_t site(uint64_t seed, int s) { return iisan_rng_u64(seed, 0x5EED0000ull + s); }

float *seq_output(iisan_model *m) { return m->sl[IISAN_SEQ_LAYERS - 1].out; }

void seq_forward(iisan_model *m, const float *emb_src, const int *in_idx, const float *mask, int B,
                 int train, uint64_t seed) {
    const iisan_config *c = &m->c;
    iisan_backend *be = m->be;
    const int d = c->d, n = c->n, Bn = B * n, H = c->heads;
    const float p = train ? c->dropout : 0.0f;
    m->seq_p = p;
    be->upload(be, m->in_idx, in_idx, (size_t)Bn * sizeof(int));
    be->upload(be, m->mask, mask, (size_t)Bn * sizeof(float));
    be->gather_rows(be, m->x0s, emb_src ? emb_src : m->emb, m->in_idx, Bn, d);
    be->add_bias(be, m->x0s, n * d, m->pw.pos, B, n * d);
    be->layernorm_fwd(be, m->xe, m->mu0, m->rs0, m->x0s, m->pw.ln_g, m->pw.ln_b, Bn, d, c->ln_eps);
    be->dropout_fwd(be, m->xe, m->xe, (size_t)Bn * d, p, site(seed, 0));
    const float *X = m->xe;
    for (int l = 0; l < IISAN_SEQ_LAYERS; l++) {
        const seq_layer_v *w = &m->pw.layer[l];
        seq_layer_ws *s = &m->sl[l];
        be->gemm(be, 0, 1, Bn, 3 * d, d, 1, X, d, w->qkv_w, d, 0, s->qkv, 3 * d);
        be->attention_fwd(be, s->att, s->probs, s->qkv, m->mask, B, n, H, d / H, p,
                          site(seed, 1 + 3 * l));
        be->gemm(be, 0, 1, Bn, d, d, 1, s->att, d, w->o_w, d, 0, s->r1, d);
        be->dropout_fwd(be, s->r1, s->r1, (size_t)Bn * d, p, site(seed, 2 + 3 * l));
        be->axpby(be, (size_t)Bn * d, 1, X, 1, s->r1);
        be->layernorm_fwd(be, s->A, s->mu1, s->rs1, s->r1, w->ln1_g, w->ln1_b, Bn, d, c->ln_eps);
        be->gemm(be, 0, 1, Bn, 4 * d, d, 1, s->A, d, w->w1, d, 0, s->f1, 4 * d);
        be->add_bias(be, s->f1, 4 * d, w->b1, Bn, 4 * d);
        be->act_fwd(be, IISAN_ACT_RELU, s->g1, s->f1, (size_t)Bn * 4 * d);
        be->gemm(be, 0, 1, Bn, d, 4 * d, 1, s->g1, 4 * d, w->w2, 4 * d, 0, s->r2, d);
        be->add_bias(be, s->r2, d, w->b2, Bn, d);
        be->dropout_fwd(be, s->r2, s->r2, (size_t)Bn * d, p, site(seed, 3 + 3 * l));
        be->axpby(be, (size_t)Bn * d, 1, s->A, 1, s->r2);
        be->layernorm_fwd(be, s->out, s->mu2, s->rs2, s->r2, w->ln2_g, w->ln2_b, Bn, d, c->ln_eps);
        X = s->out;
    }
}

void seq_backward(iisan_model *m, int B, uint64_t seed) {
    const iisan_config *c = &m->c;
    iisan_backend *be = m->be;
    const int d = c->d, n = c->n, Bn = B * n, H = c->heads;
    const float p = m->seq_p;
    const size_t Bnd = (size_t)Bn * d;
    be->copy(be, m->dX, m->dO, Bnd * sizeof(float));
    for (int l = IISAN_SEQ_LAYERS - 1; l >= 0; l--) {
        const seq_layer_v *w = &m->pw.layer[l];
        const seq_layer_v *g = &m->pg.layer[l];
        seq_layer_ws *s = &m->sl[l];
        const float *X = l ? m->sl[l - 1].out : m->xe;
        /* out = LN2(r2), r2 = A + drop(W2 relu(W1 A + b1) + b2) */
        be->layernorm_bwd(be, m->dX, g->ln2_g, g->ln2_b, m->dX, s->r2, s->mu2, s->rs2, w->ln2_g, Bn,
                          d);
        be->dropout_bwd(be, m->dT, m->dX, Bnd, p, site(seed, 3 + 3 * l));
        be->bias_grad(be, g->b2, m->dT, d, Bn, d);
        be->gemm(be, 1, 0, d, 4 * d, Bn, 1, m->dT, d, s->g1, 4 * d, 1, g->w2, 4 * d);
        be->gemm(be, 0, 0, Bn, 4 * d, d, 1, m->dT, d, w->w2, 4 * d, 0, m->dG, 4 * d);
        be->act_bwd(be, IISAN_ACT_RELU, m->dG, m->dG, s->f1, (size_t)Bn * 4 * d);
        be->bias_grad(be, g->b1, m->dG, 4 * d, Bn, 4 * d);
        be->gemm(be, 1, 0, 4 * d, d, Bn, 1, m->dG, 4 * d, s->A, d, 1, g->w1, d);
        be->copy(be, m->dA, m->dX, Bnd * sizeof(float));
        be->gemm(be, 0, 0, Bn, d, 4 * d, 1, m->dG, 4 * d, w->w1, d, 1, m->dA, d);
        /* A = LN1(r1), r1 = X + drop(att W_o^T) */
        be->layernorm_bwd(be, m->dA, g->ln1_g, g->ln1_b, m->dA, s->r1, s->mu1, s->rs1, w->ln1_g, Bn,
                          d);
        be->dropout_bwd(be, m->dT, m->dA, Bnd, p, site(seed, 2 + 3 * l));
        be->gemm(be, 1, 0, d, d, Bn, 1, m->dT, d, s->att, d, 1, g->o_w, d);
        be->gemm(be, 0, 0, Bn, d, d, 1, m->dT, d, w->o_w, d, 0, m->dX, d); /* d att */
        be->attention_bwd(be, m->dqkv, m->dX, s->qkv, s->probs, B, n, H, d / H, p,
                          site(seed, 1 + 3 * l));
        be->gemm(be, 1, 0, 3 * d, d, Bn, 1, m->dqkv, 3 * d, X, d, 1, g->qkv_w, d);
        be->copy(be, m->dX, m->dA, Bnd * sizeof(float));
        be->gemm(be, 0, 0, Bn, d, 3 * d, 1, m->dqkv, 3 * d, w->qkv_w, d, 1, m->dX, d);
    }
    /* xe = drop(LN(E + Pos)) */
    be->dropout_bwd(be, m->dX, m->dX, Bnd, p, site(seed, 0));
    be->layernorm_bwd(be, m->dX, m->pg.ln_g, m->pg.ln_b, m->dX, m->x0s, m->mu0, m->rs0, m->pw.ln_g,
                      Bn, d);
    be->bias_grad(be, m->pg.pos, m->dX, n * d, B, n * d);
    be->scatter_add_rows(be, m->demb, m->dX, m->in_idx, Bn, d);
}

#include "core/params.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/rng.h"

static const char *tower_name[N_TOWERS] = {"image", "text", "inter"};
static const int gate_group[N_TOWERS] = {LRG_GATE_IMAGE, LRG_GATE_TEXT, LRG_GATE_INTER};
static const int fc_group[N_TOWERS] = {LRG_FC_IMAGE, LRG_FC_TEXT, LRG_OTHER};

static int add(param_table *pt, int *cap, int group, int init, float a, int d0, int d1,
               const char *fmt, ...) {
    if (pt->n == *cap) {
        *cap = *cap ? 2 * *cap : 64;
        param_info *t = realloc(pt->t, (size_t)*cap * sizeof *t);
        if (!t) return -1;
        pt->t = t;
    }
    param_info *p = &pt->t[pt->n++];
    memset(p, 0, sizeof *p);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->name, sizeof p->name, fmt, ap);
    va_end(ap);
    p->ndim = d1 ? 2 : 1;
    p->shape[0] = d0;
    p->shape[1] = d1;
    p->size = (size_t)d0 * (d1 ? (size_t)d1 : 1);
    p->offset = pt->total;
    p->group = group;
    p->init = init;
    p->a = a;
    pt->total += p->size;
    return 0;
}

void params_head_dims(const iisan_config *c, int t, int *fo, int *di) {
    *di = config_tower_width(c, t);
    *fo = c->arch == ARCH_VERSA && t != TOWER_INTER ? c->d : *di;
}

/* IISAN-Versa's item side: each tower in its own width and depth, the projections Q_k of
 * the wider modality into the inter tower, heads F: width -> fo, P: fo -> d */
static int versa_build(param_table *pt, int *cap, const iisan_config *c) {
    const int r = c->r, d = c->d;
    int rc = 0;
    for (int t = 0; t < N_TOWERS; t++) {
        if (!((c->towers >> t) & 1)) continue;
        const int D = config_tower_width(c, t), K = config_tower_depth(c, t);
        for (int k = 0; k < K; k++) {
            rc |= add(pt, cap, LRG_SAN, INIT_NORMAL, 0.01f, r, D, "%s.block.%d.down.weight",
                      tower_name[t], k);
            rc |= add(pt, cap, LRG_SAN, INIT_ZERO, 0, r, 0, "%s.block.%d.down.bias", tower_name[t],
                      k);
            rc |= add(pt, cap, LRG_SAN, INIT_NORMAL, 0.01f, D, r, "%s.block.%d.up.weight",
                      tower_name[t], k);
            rc |=
                add(pt, cap, LRG_SAN, INIT_ZERO, 0, D, 0, "%s.block.%d.up.bias", tower_name[t], k);
        }
        rc |= add(pt, cap, gate_group[t], INIT_ZERO, 0, K, 0, "%s.gate", tower_name[t]);
    }
    const int wide = config_versa_wide(c);
    if (((c->towers >> TOWER_INTER) & 1) && wide >= 0) {
        const int Dw = c->mods[wide].D, Dx = config_tower_width(c, TOWER_INTER);
        const float b = 1.0f / sqrtf((float)Dw);
        for (int k = 0; k < config_tower_depth(c, TOWER_INTER); k++) {
            rc |= add(pt, cap, LRG_OTHER, INIT_UNIFORM, b, Dx, Dw, "inter.q.%d.weight", k);
            rc |= add(pt, cap, LRG_OTHER, INIT_UNIFORM, b, Dx, 0, "inter.q.%d.bias", k);
        }
    }
    for (int t = 0; t < N_TOWERS; t++) {
        if (!((c->towers >> t) & 1)) continue;
        int fo, di;
        params_head_dims(c, t, &fo, &di);
        float bf = 1.0f / sqrtf((float)di), bp = 1.0f / sqrtf((float)fo);
        rc |= add(pt, cap, fc_group[t], INIT_UNIFORM, bf, fo, di, "%s.fc.weight", tower_name[t]);
        rc |= add(pt, cap, fc_group[t], INIT_UNIFORM, bf, fo, 0, "%s.fc.bias", tower_name[t]);
        rc |= add(pt, cap, LRG_OTHER, INIT_UNIFORM, bp, d, fo, "%s.proj.weight", tower_name[t]);
        rc |= add(pt, cap, LRG_OTHER, INIT_UNIFORM, bp, d, 0, "%s.proj.bias", tower_name[t]);
    }
    return rc;
}

int params_build(param_table *pt, const iisan_config *c) {
    memset(pt, 0, sizeof *pt);
    int cap = 0, rc = 0;
    const int D = c->D, r = c->r, d = c->d;
    if (c->kind == MODEL_IISAN && c->arch == ARCH_VERSA) {
        rc |= versa_build(pt, &cap, c);
        int fin = config_ntowers(c) * d;
        float bf = 1.0f / sqrtf((float)fin);
        rc |= add(pt, &cap, LRG_OTHER, INIT_UNIFORM, bf, d, fin, "fuse.weight");
        rc |= add(pt, &cap, LRG_OTHER, INIT_UNIFORM, bf, d, 0, "fuse.bias");
    } else if (c->kind == MODEL_IISAN) {
        /* SAN blocks and gates of every tower first, then the heads and fusion */
        for (int t = 0; t < N_TOWERS; t++) {
            if (!((c->towers >> t) & 1)) continue;
            for (int k = 0; k < c->K; k++) {
                rc |= add(pt, &cap, LRG_SAN, INIT_NORMAL, 0.01f, r, D, "%s.block.%d.down.weight",
                          tower_name[t], k);
                rc |= add(pt, &cap, LRG_SAN, INIT_ZERO, 0, r, 0, "%s.block.%d.down.bias",
                          tower_name[t], k);
                rc |= add(pt, &cap, LRG_SAN, INIT_NORMAL, 0.01f, D, r, "%s.block.%d.up.weight",
                          tower_name[t], k);
                rc |= add(pt, &cap, LRG_SAN, INIT_ZERO, 0, D, 0, "%s.block.%d.up.bias",
                          tower_name[t], k);
            }
            rc |= add(pt, &cap, gate_group[t], INIT_ZERO, 0, c->K, 0, "%s.gate", tower_name[t]);
        }
        for (int t = 0; t < N_TOWERS; t++) {
            if (!((c->towers >> t) & 1)) continue;
            float bD = 1.0f / sqrtf((float)D);
            int fg = fc_group[t];
            /* (v2) P_v is the image backbone's re-initialised classifier head */
            int pv = t == TOWER_IMAGE && c->pv_init != IISAN_RULES_V1;
            rc |= add(pt, &cap, fg, INIT_UNIFORM, bD, D, D, "%s.fc.weight", tower_name[t]);
            rc |= add(pt, &cap, fg, INIT_UNIFORM, bD, D, 0, "%s.fc.bias", tower_name[t]);
            rc |= add(pt, &cap, LRG_OTHER, pv ? INIT_XAVIER : INIT_UNIFORM, pv ? 0 : bD, d, D,
                      "%s.proj.weight", tower_name[t]);
            rc |= add(pt, &cap, LRG_OTHER, pv ? INIT_ZERO : INIT_UNIFORM, pv ? 0 : bD, d, 0,
                      "%s.proj.bias", tower_name[t]);
        }
        int fin = config_ntowers(c) * d;
        float bf = 1.0f / sqrtf((float)fin);
        rc |= add(pt, &cap, LRG_OTHER, INIT_UNIFORM, bf, d, fin, "fuse.weight");
        rc |= add(pt, &cap, LRG_OTHER, INIT_UNIFORM, bf, d, 0, "fuse.bias");
    } else if (c->kind == MODEL_SASREC_ID) {
        rc |= add(pt, &cap, LRG_OTHER, INIT_XAVIER, 0, c->n_items + 1, d, "item_emb.weight");
    } else {
        return -1; /* popularity has no parameters */
    }
    rc |= add(pt, &cap, LRG_OTHER, INIT_XAVIER, 0, c->n, d, "seq.pos");
    rc |= add(pt, &cap, LRG_OTHER, INIT_ONE, 0, d, 0, "seq.ln.weight");
    rc |= add(pt, &cap, LRG_OTHER, INIT_ZERO, 0, d, 0, "seq.ln.bias");
    for (int b = 0; b < IISAN_SEQ_LAYERS; b++) {
        rc |= add(pt, &cap, LRG_OTHER, INIT_XAVIER, 0, d, d, "seq.layer.%d.attn.q.weight", b);
        rc |= add(pt, &cap, LRG_OTHER, INIT_XAVIER, 0, d, d, "seq.layer.%d.attn.k.weight", b);
        rc |= add(pt, &cap, LRG_OTHER, INIT_XAVIER, 0, d, d, "seq.layer.%d.attn.v.weight", b);
        rc |= add(pt, &cap, LRG_OTHER, INIT_XAVIER, 0, d, d, "seq.layer.%d.attn.o.weight", b);
        rc |= add(pt, &cap, LRG_OTHER, INIT_ONE, 0, d, 0, "seq.layer.%d.ln1.weight", b);
        rc |= add(pt, &cap, LRG_OTHER, INIT_ZERO, 0, d, 0, "seq.layer.%d.ln1.bias", b);
        rc |= add(pt, &cap, LRG_OTHER, INIT_XAVIER, 0, 4 * d, d, "seq.layer.%d.ffn.w1.weight", b);
        rc |= add(pt, &cap, LRG_OTHER, INIT_ZERO, 0, 4 * d, 0, "seq.layer.%d.ffn.w1.bias", b);
        rc |= add(pt, &cap, LRG_OTHER, INIT_XAVIER, 0, d, 4 * d, "seq.layer.%d.ffn.w2.weight", b);
        rc |= add(pt, &cap, LRG_OTHER, INIT_ZERO, 0, d, 0, "seq.layer.%d.ffn.w2.bias", b);
        rc |= add(pt, &cap, LRG_OTHER, INIT_ONE, 0, d, 0, "seq.layer.%d.ln2.weight", b);
        rc |= add(pt, &cap, LRG_OTHER, INIT_ZERO, 0, d, 0, "seq.layer.%d.ln2.bias", b);
    }
    if (rc) {
        params_free(pt);
        return -1;
    }
    return 0;
}

void params_free(param_table *pt) {
    free(pt->t);
    memset(pt, 0, sizeof *pt);
}

const param_info *params_find(const param_table *pt, const char *name) {
    for (int i = 0; i < pt->n; i++)
        if (!strcmp(pt->t[i].name, name)) return &pt->t[i];
    return NULL;
}

static float *at(const param_table *pt, float *base, const char *fmt, ...) {
    char name[64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    const param_info *p = params_find(pt, name);
    return p ? base + p->offset : NULL;
}

void params_views(const param_table *pt, const iisan_config *c, float *base, model_views *v) {
    memset(v, 0, sizeof *v);
    for (int t = 0; t < N_TOWERS; t++) {
        if (c->kind != MODEL_IISAN || !((c->towers >> t) & 1)) continue;
        tower_v *tv = &v->tower[t];
        const char *tn = tower_name[t];
        for (int k = 0; k < config_tower_depth(c, t); k++) {
            tv->q_w[k] = at(pt, base, "%s.q.%d.weight", tn, k);
            tv->q_b[k] = at(pt, base, "%s.q.%d.bias", tn, k);
            tv->blk[k].down_w = at(pt, base, "%s.block.%d.down.weight", tn, k);
            tv->blk[k].down_b = at(pt, base, "%s.block.%d.down.bias", tn, k);
            tv->blk[k].up_w = at(pt, base, "%s.block.%d.up.weight", tn, k);
            tv->blk[k].up_b = at(pt, base, "%s.block.%d.up.bias", tn, k);
        }
        tv->gate = at(pt, base, "%s.gate", tn);
        tv->fc_w = at(pt, base, "%s.fc.weight", tn);
        tv->fc_b = at(pt, base, "%s.fc.bias", tn);
        tv->proj_w = at(pt, base, "%s.proj.weight", tn);
        tv->proj_b = at(pt, base, "%s.proj.bias", tn);
    }
    v->fuse_w = at(pt, base, "fuse.weight");
    v->fuse_b = at(pt, base, "fuse.bias");
    v->item_emb = at(pt, base, "item_emb.weight");
    v->pos = at(pt, base, "seq.pos");
    v->ln_g = at(pt, base, "seq.ln.weight");
    v->ln_b = at(pt, base, "seq.ln.bias");
    for (int b = 0; b < IISAN_SEQ_LAYERS; b++) {
        seq_layer_v *l = &v->layer[b];
        l->qkv_w = at(pt, base, "seq.layer.%d.attn.q.weight", b);
        l->o_w = at(pt, base, "seq.layer.%d.attn.o.weight", b);
        l->ln1_g = at(pt, base, "seq.layer.%d.ln1.weight", b);
        l->ln1_b = at(pt, base, "seq.layer.%d.ln1.bias", b);
        l->w1 = at(pt, base, "seq.layer.%d.ffn.w1.weight", b);
        l->b1 = at(pt, base, "seq.layer.%d.ffn.w1.bias", b);
        l->w2 = at(pt, base, "seq.layer.%d.ffn.w2.weight", b);
        l->b2 = at(pt, base, "seq.layer.%d.ffn.w2.bias", b);
        l->ln2_g = at(pt, base, "seq.layer.%d.ln2.weight", b);
        l->ln2_b = at(pt, base, "seq.layer.%d.ln2.bias", b);
    }
}

void params_init(const param_table *pt, float *host, uint64_t seed) {
    for (int i = 0; i < pt->n; i++) {
        const param_info *p = &pt->t[i];
        float *w = host + p->offset;
        /* every tensor draws from its own stream: the same seed gives the same
         * values whatever else the table holds */
        uint64_t s = iisan_rng_u64(seed, (uint64_t)i * 0x9E3779B97F4A7C15ull);
        float xstd = 0;
        if (p->init == INIT_XAVIER) {
            int fan_out = p->shape[0], fan_in = p->ndim == 2 ? p->shape[1] : 1;
            xstd = sqrtf(2.0f / (float)(fan_in + fan_out));
        }
        for (size_t j = 0; j < p->size; j++) {
            switch (p->init) {
            case INIT_ZERO: w[j] = 0; break;
            case INIT_ONE: w[j] = 1; break;
            case INIT_NORMAL: w[j] = p->a * iisan_rng_normal(s, j); break;
            case INIT_XAVIER: w[j] = xstd * iisan_rng_normal(s, j); break;
            case INIT_UNIFORM: w[j] = p->a * (2 * iisan_rng_uniform(s, j) - 1); break;
            }
        }
    }
}

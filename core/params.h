/* All trainable parameters live in one contiguous float buffer. A table,
 * built by walking the config, names every tensor (PyTorch-style names,
 * nn.Linear layout [out, in]) with its shape, offset, learning-rate group
 * and initialiser; gradients and Adam's moments use the same layout, so the
 * optimiser, checkpoints and parameter counts are single loops.
 *
 * SAN blocks and gates come first, then the heads, fusion and the sequence
 * encoder; each tensor carries its learning-rate group (LRG_* of config.h), and
 * the optimiser runs once per stretch of tensors that share a learning rate. */
#ifndef IISAN_CORE_PARAMS_H
#define IISAN_CORE_PARAMS_H

#include <stddef.h>
#include <stdint.h>

#include "core/config.h"

enum { INIT_ZERO, INIT_ONE, INIT_NORMAL, INIT_UNIFORM, INIT_XAVIER };

typedef struct {
    char name[64];
    int ndim;
    int shape[2];
    size_t offset; /* in floats */
    size_t size;   /* in floats */
    int group;     /* learning-rate group, LRG_* */
    int init;
    float a; /* std (NORMAL) or bound (UNIFORM) */
} param_info;

typedef struct {
    int n;
    param_info *t;
    size_t total; /* floats */
} param_table;

typedef struct {
    float *down_w; /* (r, D) */
    float *down_b; /* (r) */
    float *up_w;   /* (D, r) */
    float *up_b;   /* (D) */
} san_block_v;

/* A tower's head F (fo x di) then P (d x fo): symmetric IISAN has fo = di = D; Versa's
 * intra heads map di = Dt or Dv to fo = d, its inter head keeps fo = di = Dx. */
void params_head_dims(const iisan_config *c, int t, int *fo, int *di);

typedef struct {
    san_block_v blk[IISAN_MAX_SCHED];
    float *gate;   /* (K) gate parameters p_k; g = sigmoid(p / temp) */
    float *fc_w;   /* (D, D) F */
    float *fc_b;   /* (D) */
    float *proj_w; /* (d, D) P */
    float *proj_b; /* (d) */
    /* Versa's inter tower: Q_k projecting the wider modality's state at step k to Dx */
    float *q_w[IISAN_MAX_SCHED]; /* (Dx, Dwide) */
    float *q_b[IISAN_MAX_SCHED]; /* (Dx) */
} tower_v;

typedef struct {
    float *qkv_w;         /* (3d, d): q.weight, k.weight, v.weight stacked */
    float *o_w;           /* (d, d) */
    float *ln1_g, *ln1_b; /* (d) */
    float *w1;            /* (4d, d) */
    float *b1;            /* (4d) */
    float *w2;            /* (d, 4d) */
    float *b2;            /* (d) */
    float *ln2_g, *ln2_b; /* (d) */
} seq_layer_v;

typedef struct {
    tower_v tower[N_TOWERS]; /* NULL pointers for disabled towers */
    float *fuse_w;           /* (d, ntowers*d) */
    float *fuse_b;           /* (d) */
    float *item_emb;         /* (N+1, d) SASRec-ID only */
    float *pos;              /* (n, d) */
    float *ln_g, *ln_b;      /* (d) embedding LayerNorm */
    seq_layer_v layer[IISAN_SEQ_LAYERS];
} model_views;

int params_build(param_table *pt, const iisan_config *c);
void params_free(param_table *pt);
const param_info *params_find(const param_table *pt, const char *name);
/* fills v with pointers into base (a params, grads or moments buffer) */
void params_views(const param_table *pt, const iisan_config *c, float *base, model_views *v);
/* seeded initialisation of a host buffer of pt->total floats */
void params_init(const param_table *pt, float *host, uint64_t seed);

#endif

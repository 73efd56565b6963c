/* The model: parameters (one buffer, see params.h), gradients, Adam state and
 * the activation workspaces, all in backend memory, plus the forward and
 * backward passes of the item encoder (tower.c), the sequence encoder
 * (seqenc.c) and the in-batch loss (step.c). */
#ifndef IISAN_CORE_MODEL_H
#define IISAN_CORE_MODEL_H

#include <stdint.h>

#include "core/config.h"
#include "core/params.h"
#include "kernels/backend.h"

/* Where the cached hidden states come from: get returns the fp16
 * [nstates * D] block of catalogue item cat for a modality, or NULL when the
 * item has none (zeros are used). error (NULL for a source that cannot fail)
 * reports a read that failed (core/states.h: states_check). release (NULL when
 * there is nothing to release) says that no block got so far is used any more:
 * the towers call it after each batch's gather, and a store reader then ends its
 * read transaction until the next get (core/states.h). */
typedef struct {
    const uint16_t *(*get)(void *ctx, int modality, uint32_t cat);
    void *ctx;
    int (*error)(void *ctx, char *msg, size_t len);
    void (*release)(void *ctx);
} iisan_states;

typedef struct {
    float *a[IISAN_MAX_SCHED];   /* (U, r) pre-activation */
    float *act[IISAN_MAX_SCHED]; /* (U, r) post-activation */
    float *h[IISAN_MAX_SCHED];   /* (U, D) block outputs */
    float *h0;                   /* (U, D) initial running state (remove-first) */
    float *M;                    /* (d, D) P.F formed once per batch */
    float *c;                    /* (d) P.F_b + P_b */
    float *dM;                   /* (d, D) dz^T h_K, accumulated over row chunks */
    float *dc;                   /* (d) column sums of dz */
} tower_ws;

typedef struct {
    float *qkv;       /* (Bn, 3d) */
    float *probs;     /* (B, H, n, n) */
    float *att;       /* (Bn, d) attention output (heads concatenated) */
    float *r1;        /* (Bn, d) X + dropout(att W_o^T), LN1 input */
    float *mu1, *rs1; /* (Bn) */
    float *A;         /* (Bn, d) LN1 output */
    float *f1;        /* (Bn, 4d) pre-ReLU */
    float *g1;        /* (Bn, 4d) post-ReLU */
    float *r2;        /* (Bn, d) LN2 input */
    float *mu2, *rs2; /* (Bn) */
    float *out;       /* (Bn, d) LN2 output = next layer input */
} seq_layer_ws;

typedef struct iisan_model {
    iisan_config c;
    iisan_backend *be;
    param_table pt;
    float *w, *g, *m, *v; /* params, grads, Adam moments (pt.total floats) */
    model_views pw, pg;   /* views into w and g */
    int step;             /* Adam steps taken */
    /* model_train_step's Adam, run on each tensor as soon as the backward has its gradient
     * (model_adam_now), while the tensor and its gradient are still in cache; the flags mark
     * the tensors done in this step, which model_adam then leaves */
    struct {
        int on;
        float lr[LR_NGROUPS], b1, b2, eps;
    } opt;
    unsigned char *adam_done; /* pt.n */
    int g_clean;              /* m->g is all zeros (model_train_step's Adam zeroed it) */

    /* item encoder workspace, capacity cap_items rows, processed in row chunks
     * of chunk_rows so that a chunk's activations stay in cache across the
     * K blocks of every tower */
    int cap_items;
    int chunk_rows;
    float *xs[2][IISAN_MAX_SCHED]; /* (U, D) gathered states [modality][k] */
    float *x0[2];                  /* (U, D) state 0 (remove-first) */
    float *xs_block;               /* IISAN: where xs and x0 are carved, per batch */
    /* IISAN on a backend with the fp16 gates (gate_bias_fwd_h, ...): the K states of each
     * modality stay fp16, (U, D) halves each, carved from xs16_block per batch (x0, the
     * running state's start, is still fp32 in xs_block); xs is then unused */
    int half_states;
    uint16_t *xs16[2][IISAN_MAX_SCHED];
    uint16_t *xs16_block;
    tower_ws tw[N_TOWERS];
    float *zcat;                /* (U, nt*d) */
    float *emb;                 /* (U, d) item embeddings of the batch's distinct items */
    float *xp[IISAN_MAX_SCHED]; /* Versa: (U, Dx) the wider modality projected, per step */
    float *dq;                  /* Versa: (chunk, Dx) gradient of a projected state */
    float *dh[2];               /* (chunk, D) */
    float *gin;                 /* (chunk, D) the block input being used (in = the gate's mix):
                                 * not kept per block; the backward recomputes it */
    float *dact, *dpre;         /* (U, r) */
    float *dzcat;               /* (U, nt*d) */
    float *demb;                /* (U, d) */
    int *items_dev;             /* (U) model item indexes (SASRec-ID gather) */
    const uint16_t **rows;      /* host row pointers for gather_half: (U) item blocks, then
                                 * (U) rows per gathered state */

    /* sequence encoder workspace, capacity cap_users sequences of n */
    int cap_users;
    float *x0s;       /* (Bn, d) E + Pos */
    float *mu0, *rs0; /* (Bn) */
    float *xe;        /* (Bn, d) dropout(LN(E + Pos)) */
    float *mask;      /* (Bn) 1 = real position */
    int *in_idx;      /* (Bn) row of emb for each input position */
    seq_layer_ws sl[IISAN_SEQ_LAYERS];
    float *dX, *dA, *dT; /* (Bn, d) */
    float *dqkv;         /* (Bn, 3d) */
    float *dG;           /* (Bn, 4d) */

    /* loss workspace (C = cap_users * (n+1) candidates, Q <= cap_users * n) */
    float *Oq, *dOq;                                    /* (Q, d) */
    float *Ec, *dEc;                                    /* (C, d) */
    float *logits;                                      /* (Q, C) */
    float *logpop_c;                                    /* (C) */
    int *qrow, *quser, *qtarget, *cand_idx, *cand_item; /* (Q), (Q), (Q), (C), (C) */
    unsigned char *umask;                               /* (B, C) */
    float *loss;                                        /* (1) */
    float *dO;                                          /* (Bn, d) */
    float seq_p;                                        /* dropout used by the last seq_forward */

    char *arena; /* every buffer above is carved from this one block */
    size_t arena_bytes;
} iisan_model;

/* Allocates everything for batches of up to cap_users users. Parameters are
 * initialised from seed. Returns NULL with a message on failure. */
iisan_model *model_create(const iisan_config *c, iisan_backend *be, int cap_users, uint64_t seed,
                          char *err, int errlen);
void model_destroy(iisan_model *m);
size_t model_param_count(const iisan_model *m);

/* ---- item encoder (tower.c) ----
 * Embeddings e_i of U <= cap_items items (model indexes items[], catalogue
 * indexes cat[]) into m->emb (U, d). train != 0 keeps what backward needs. */
void tower_forward(iisan_model *m, const int32_t *items, const uint32_t *cat, int U,
                   const iisan_states *st);
/* from m->demb (U, d) accumulate every item-side parameter gradient */
void tower_backward(iisan_model *m, int U);

/* pieces tower.c shares with IISAN-Versa's towers (tower_versa.c), on rows r0..r0+R-1 of
 * a D-wide tower: one SAN block forward (its gate's operands -> in -> ws->h[k]); one
 * block backward, from cur = dL/dh[k] to cur = dL/din[k] (overwritten in place) with its
 * parameter gradients. The block's input in is not kept: the forward mixes it into m->gin
 * and the backward mixes it again from the same operands (the same op order, so the same
 * bits), which keeps 21 (U, D) matrices of a batch out of memory */
/* a SAN block's gate operands (gate_fwd's c, a, b and its scalar p): in = c + s a + (1-s) b */
typedef struct {
    const float *c, *a, *b, *gate;
    const uint16_t *ha, *hb; /* fp16 states in place of a (and of b), when ha is set */
} tower_gate_in;
/* one SAN block on rows r0 .. r0+R-1: in = the gate's mix of g (into m->gin), then
 * h = in + W_up act(W_down in + b_down) + b_up into ws->h[k] */
void tower_block_forward(iisan_model *m, const san_block_v *w, tower_ws *ws, int k, int r0, int R,
                         int D, const tower_gate_in *g);
/* its backward from cur (d h, which becomes d in), the gate's included: gi holds the gate
 * operands the forward had (rows r0.. as there); *dgate += the gate's gradient, da / db (when
 * not NULL) = the gradients of gi->a and gi->b (gate_bwd's); gi->c's is cur itself. last: the
 * batch's last chunk. An input that is the gate's s X alone, with no da or db asked, takes no
 * d in (cur is then left d h): part of the gate's gradient comes from g->down_w on the last
 * chunk, which must then hold this batch's gradient alone (the backward starts from zeros) */
void tower_block_backward(iisan_model *m, const san_block_v *w, const san_block_v *g,
                          const tower_ws *ws, int k, int r0, int R, int D, const tower_gate_in *gi,
                          float *dgate, float *da, float *db, float *cur, int last);
/* the batch's heads: M = P_w F_w and c = P_w F_b + P_b per tower (forward); the heads'
 * parameter gradients from dM and dc (backward) */
void tower_heads_forward(iisan_model *m);
void tower_heads_backward(iisan_model *m);
/* block w's gradients are final (its last chunk's backward is done): its Adam step now, in a
 * training step (model_adam_now); D its tower's width */
void tower_block_done(iisan_model *m, const san_block_v *w, int D);
/* e = W_fuse zcat + b_fuse into m->emb; its backward from m->demb into the fusion's
 * gradients and m->dzcat, clearing every tower's dM and dc */
void tower_fuse_forward(iisan_model *m, int U);
void tower_fuse_backward(iisan_model *m, int U);
/* IISAN-Versa (tower_versa.c): tower_forward and tower_backward dispatch here */
void versa_forward(iisan_model *m, const uint32_t *cat, int U, const iisan_states *st);
void versa_backward(iisan_model *m, int U);

/* ---- sequence encoder (seqenc.c) ----
 * B sequences of n input positions; in_idx (host, B*n) selects rows of m->emb
 * (or of emb_src when not NULL, e.g. the whole catalogue at evaluation),
 * mask (host, B*n). Output in m->sl[last].out (B*n, d). seed drives dropout;
 * train == 0 disables it. */
void seq_forward(iisan_model *m, const float *emb_src, const int *in_idx, const float *mask, int B,
                 int train, uint64_t seed);
/* from m->dO (B*n, d): accumulates sequence-encoder grads and writes the
 * input-embedding grads into m->demb (rows of in_idx, accumulated) */
void seq_backward(iisan_model *m, int B, uint64_t seed);
float *seq_output(iisan_model *m);

/* ---- training step (step.c) ----
 * A batch of B <= cap_users training sequences (host, B*(n+1), left-padded
 * with 0, model item indexes). logpop: host (N+1). item_cat: host (N+1)
 * model index -> catalogue index (IISAN). Forward, in-batch loss and
 * backward: m->g holds the gradient (overwritten) and the loss is returned.
 * train != 0 enables dropout (seeded by seed). */
float model_loss_grad(iisan_model *m, const int32_t *seqs, int B, const float *logpop,
                      const uint32_t *item_cat, const iisan_states *st, int train, uint64_t seed);
/* one Adam step on m->g, each parameter at its group's learning rate (lr[LRG_*],
 * train_lr_table) */
void model_adam(iisan_model *m, const float lr[LR_NGROUPS], float b1, float b2, float eps);
/* model_loss_grad(train = 1) then model_adam, with the same parameters and moments to the bit:
 * each of most tensors (the SAN blocks, the heads) takes its Adam step as soon as the backward
 * has made its gradient, the rest at the end, and each zeroes its gradient as it goes (m->g is
 * zeros afterwards, and the next step skips its zero-fill). Returns the loss, or < 0 (no step
 * taken) as model_loss_grad. */
float model_train_step(iisan_model *m, const int32_t *seqs, int B, const float *logpop,
                       const uint32_t *item_cat, const iisan_states *st, uint64_t seed,
                       const float lr[LR_NGROUPS], float b1, float b2, float eps);
/* inside model_train_step's backward: Adam now on the whole tensors in [w0, w1) of m->w, whose
 * gradients are final; nothing outside a training step */
void model_adam_now(iisan_model *m, const float *w0, const float *w1);

#endif

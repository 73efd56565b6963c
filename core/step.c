/* One training step: the batch's distinct items (padding included, once),
 * their embeddings, the sequence encoder over the input positions, the
 * in-batch debiased cross-entropy over all B*(n+1) slots, and the backward
 * pass through all of it. */
#include <stdlib.h>
#include <string.h>

#include "core/model.h"

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* position of v in the sorted array u[0..nu) */
static int find(const int32_t *u, int nu, int32_t v) {
    int lo = 0, hi = nu - 1;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (u[mid] < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

typedef struct {
    int32_t *uniq;  /* distinct items, ascending */
    uint32_t *ucat; /* their catalogue indexes */
    int nu;
    int *cand_idx, *cand_item, *in_idx, *qrow, *quser, *qtarget;
    float *logpop_c, *mask;
    unsigned char *umask;
    int Q;
} batch_host;

static int batch_build(batch_host *b, const iisan_model *m, const int32_t *seqs, int B,
                       const float *logpop, const uint32_t *item_cat) {
    const int n = m->c.n, L = n + 1, C = B * L, Bn = B * n;
    memset(b, 0, sizeof *b);
    b->uniq = malloc(C * sizeof *b->uniq);
    b->ucat = malloc(C * sizeof *b->ucat);
    b->cand_idx = malloc(C * sizeof(int));
    b->cand_item = malloc(C * sizeof(int));
    b->in_idx = malloc(Bn * sizeof(int));
    b->qrow = malloc(Bn * sizeof(int));
    b->quser = malloc(Bn * sizeof(int));
    b->qtarget = malloc(Bn * sizeof(int));
    b->logpop_c = malloc(C * sizeof(float));
    b->mask = malloc(Bn * sizeof(float));
    b->umask = calloc((size_t)B * C, 1);
    if (!b->uniq || !b->ucat || !b->cand_idx || !b->cand_item || !b->in_idx || !b->qrow ||
        !b->quser || !b->qtarget || !b->logpop_c || !b->mask || !b->umask)
        return -1;
    memcpy(b->uniq, seqs, C * sizeof *b->uniq);
    qsort(b->uniq, C, sizeof *b->uniq, cmp_i32);
    int nu = 0;
    for (int i = 0; i < C; i++)
        if (!nu || b->uniq[i] != b->uniq[nu - 1]) b->uniq[nu++] = b->uniq[i];
    b->nu = nu;
    for (int i = 0; i < nu; i++)
        b->ucat[i] = item_cat ? item_cat[b->uniq[i]] : 0;
    for (int c = 0; c < C; c++) {
        b->cand_item[c] = seqs[c];
        b->cand_idx[c] = find(b->uniq, nu, seqs[c]);
        b->logpop_c[c] = logpop[seqs[c]];
    }
    int Q = 0;
    for (int u = 0; u < B; u++) {
        const int32_t *s = seqs + (size_t)u * L;
        for (int j = 0; j < n; j++) {
            b->in_idx[u * n + j] = b->cand_idx[u * L + j];
            b->mask[u * n + j] = s[j] != 0;
            if (s[j] != 0) {
                b->qrow[Q] = u * n + j;
                b->quser[Q] = u;
                b->qtarget[Q] = u * L + j + 1;
                Q++;
            }
        }
    }
    b->Q = Q;
    /* umask[u, c]: candidate c's item occurs in user u's sequence. The slots of each distinct
     * item, grouped by a counting sort of cand_idx (slots[first[q] .. first[q+1]) hold item
     * q's), then per user the slots of each of its items: O(C) where a scan of every slot
     * against every position was O(B C L) */
    int *first = calloc((size_t)2 * nu + 1 + C, sizeof *first);
    if (!first) return -1;
    int *fill = first + nu + 1, *slots = fill + nu;
    for (int c = 0; c < C; c++)
        first[b->cand_idx[c] + 1]++;
    for (int q = 0; q < nu; q++)
        fill[q] = first[q + 1] += first[q];
    for (int c = C - 1; c >= 0; c--) /* fill[q] counts down from the end of q's group */
        slots[--fill[b->cand_idx[c]]] = c;
    for (int u = 0; u < B; u++) {
        const int32_t *s = seqs + (size_t)u * L;
        unsigned char *um = b->umask + (size_t)u * C;
        for (int j = 0; j < L; j++) {
            if (!s[j]) continue; /* padding is never masked */
            const int q = b->cand_idx[u * L + j];
            for (int k = first[q]; k < first[q + 1]; k++)
                um[slots[k]] = 1;
        }
    }
    free(first);
    return 0;
}

static void batch_free(batch_host *b) {
    free(b->uniq);
    free(b->ucat);
    free(b->cand_idx);
    free(b->cand_item);
    free(b->in_idx);
    free(b->qrow);
    free(b->quser);
    free(b->qtarget);
    free(b->logpop_c);
    free(b->mask);
    free(b->umask);
}

float model_loss_grad(iisan_model *m, const int32_t *seqs, int B, const float *logpop,
                      const uint32_t *item_cat, const iisan_states *st, int train, uint64_t seed) {
    iisan_backend *be = m->be;
    const int n = m->c.n, d = m->c.d, C = B * (n + 1);
    batch_host b = {0};
    if (B > m->cap_users || batch_build(&b, m, seqs, B, logpop, item_cat)) {
        batch_free(&b);
        return -1.0f;
    }
    const int Q = b.Q, U = b.nu;
    be->upload(be, m->cand_idx, b.cand_idx, C * sizeof(int));
    be->upload(be, m->cand_item, b.cand_item, C * sizeof(int));
    be->upload(be, m->logpop_c, b.logpop_c, C * sizeof(float));
    be->upload(be, m->qrow, b.qrow, Q * sizeof(int));
    be->upload(be, m->quser, b.quser, Q * sizeof(int));
    be->upload(be, m->qtarget, b.qtarget, Q * sizeof(int));
    be->upload(be, m->umask, b.umask, (size_t)B * C);

    /* forward */
    tower_forward(m, b.uniq, b.ucat, U, st);
    seq_forward(m, NULL, b.in_idx, b.mask, B, train, seed);
    be->gather_rows(be, m->Oq, seq_output(m), m->qrow, Q, d);
    be->gather_rows(be, m->Ec, m->emb, m->cand_idx, C, d);
    be->gemm(be, 0, 1, Q, C, d, 1, m->Oq, d, m->Ec, d, 0, m->logits, C);
    be->inbatch_ce(be, m->logits, m->loss, m->logpop_c, m->cand_item, m->umask, m->quser,
                   m->qtarget, Q, C);

    /* backward */
    if (!m->g_clean) be->zero(be, m->g, m->pt.total * sizeof(float));
    m->g_clean = 0;
    be->gemm(be, 0, 0, Q, d, C, 1, m->logits, C, m->Ec, d, 0, m->dOq, d);
    be->gemm(be, 1, 0, C, d, Q, 1, m->logits, C, m->Oq, d, 0, m->dEc, d);
    be->zero(be, m->demb, (size_t)U * d * sizeof(float));
    be->scatter_add_rows(be, m->demb, m->dEc, m->cand_idx, C, d);
    be->zero(be, m->dO, (size_t)B * n * d * sizeof(float));
    be->scatter_add_rows(be, m->dO, m->dOq, m->qrow, Q, d);
    seq_backward(m, B, seed);
    tower_backward(m, U);

    float loss;
    be->download(be, &loss, m->loss, sizeof loss);
    batch_free(&b);
    return loss;
}

/* be->adam over tensors [i, j) of the table at step t, one call per stretch of consecutive
 * tensors that share a learning rate and are not done yet; marks them done when mark */
static void adam_tensors(iisan_model *m, int i, int j, const float lr[LR_NGROUPS], float b1,
                         float b2, float eps, int t, int mark, int zero_g) {
    const param_table *pt = &m->pt;
    while (i < j) {
        if (m->adam_done[i]) {
            i++;
            continue;
        }
        float rate = lr[pt->t[i].group];
        size_t off = pt->t[i].offset, len = 0;
        for (; i < j && !m->adam_done[i] && lr[pt->t[i].group] == rate; i++) {
            len += pt->t[i].size;
            if (mark) m->adam_done[i] = 1;
        }
        m->be->adam(m->be, m->w + off, m->g + off, m->m + off, m->v + off, len, rate, b1, b2, eps,
                    t, zero_g);
    }
}

/* the step's Adam on every tensor not done yet, then a new step begins */
static void adam_rest(iisan_model *m, const float lr[LR_NGROUPS], float b1, float b2, float eps,
                      int zero_g) {
    m->step++;
    adam_tensors(m, 0, m->pt.n, lr, b1, b2, eps, m->step, 0, zero_g);
    memset(m->adam_done, 0, (size_t)m->pt.n);
}

void model_adam(iisan_model *m, const float lr[LR_NGROUPS], float b1, float b2, float eps) {
    adam_rest(m, lr, b1, b2, eps, 0);
}

void model_adam_now(iisan_model *m, const float *w0, const float *w1) {
    if (!m->opt.on) return;
    const param_table *pt = &m->pt;
    const size_t o0 = (size_t)(w0 - m->w), o1 = (size_t)(w1 - m->w);
    int i = 0, j;
    while (i < pt->n && pt->t[i].offset < o0) /* the first tensor at or after w0 */
        i++;
    for (j = i; j < pt->n && pt->t[j].offset + pt->t[j].size <= o1; j++)
        ;
    adam_tensors(m, i, j, m->opt.lr, m->opt.b1, m->opt.b2, m->opt.eps, m->step + 1, 1, 1);
}

float model_train_step(iisan_model *m, const int32_t *seqs, int B, const float *logpop,
                       const uint32_t *item_cat, const iisan_states *st, uint64_t seed,
                       const float lr[LR_NGROUPS], float b1, float b2, float eps) {
    m->opt.on = 1;
    memcpy(m->opt.lr, lr, sizeof m->opt.lr);
    m->opt.b1 = b1, m->opt.b2 = b2, m->opt.eps = eps;
    float loss = model_loss_grad(m, seqs, B, logpop, item_cat, st, 1, seed);
    m->opt.on = 0;
    if (loss < 0) return loss; /* the batch was refused before any backward: nothing updated */
    adam_rest(m, lr, b1, b2, eps, 1); /* every tensor's gradient zeroed by its Adam step */
    m->g_clean = 1;
    return loss;
}

/* In-batch debiased cross-entropy (see backend.h for the masking rule). The
 * gradient written back is with respect to the INPUT logits: a masked candidate
 * has a constant logit, so its gradient is exactly 0; an unmasked one gets
 * (softmax - onehot(target)) / Q. */
#include <math.h>

#include "kernels/cpu/cpu.h"

#define MASKED_LOGIT (-1e4f)

typedef struct {
    float *logits;
    const float *logpop;
    const int *cand_item, *quser, *qtarget;
    const unsigned char *umask;
    int Q, C;
    double *qloss; /* each query's loss, added in query order by the caller */
} ce_args;

/* candidate c is masked for query target t: padding, or an item of the user's (not the target) */
static inline int masked(const int *cand_item, const unsigned char *um, int c, int t) {
    return cand_item[c] == 0 || (um[c] != 0 && c != t);
}

/* the row's masked logits in place, and their maximum: the maximum of each of 16 lanes, then
 * of the lanes (a maximum is the same in any order, so this is the one a single running
 * maximum finds, without its chain of dependent comparisons) */
static CPU_VEC float mask_max(float *row, const float *logpop, const int *cand_item,
                              const unsigned char *um, int t, int C) {
    enum { LANES = 16 };
    float mx[LANES];
    for (int l = 0; l < LANES; l++)
        mx[l] = -INFINITY;
    int c = 0;
    for (; c + LANES <= C; c += LANES)
        for (int l = 0; l < LANES; l++) {
            float x = masked(cand_item, um, c + l, t) ? MASKED_LOGIT : row[c + l] - logpop[c + l];
            row[c + l] = x;
            mx[l] = x > mx[l] ? x : mx[l];
        }
    for (int l = 0; c < C; c++, l++) {
        float x = masked(cand_item, um, c, t) ? MASKED_LOGIT : row[c] - logpop[c];
        row[c] = x;
        mx[l] = x > mx[l] ? x : mx[l];
    }
    float m = -INFINITY;
    for (int l = 0; l < LANES; l++)
        if (mx[l] > m) m = mx[l];
    return m;
}

/* row[c] = exp(row[c] - mx), then their sum in 8 double lanes added pairwise (a fixed order:
 * one running sum made every addition wait on the one before). Below -104 expf is +0 in fp32
 * (e^-104 < 2^-150); taking its underflow path for every masked candidate cost more than the
 * rest of the loss. */
static CPU_VEC double exp_sum(float *restrict row, float mx, int C) {
    enum { LANES = 8 };
    double acc[LANES] = {0};
    for (int c = 0; c < C; c++) {
        float x = row[c] - mx;
        row[c] = x < -104.0f ? 0.0f : expf(x);
    }
    int c = 0;
    for (; c + LANES <= C; c += LANES)
        for (int l = 0; l < LANES; l++)
            acc[l] += row[c + l];
    for (int l = 0; c < C; c++, l++)
        acc[l] += row[c];
    for (int w = LANES / 2; w > 0; w /= 2)
        for (int l = 0; l < w; l++)
            acc[l] += acc[l + w];
    return acc[0];
}

/* the gradient of the row's loss: softmax / Q at the unmasked candidates, 0 at the masked */
static CPU_VEC void scale_unmasked(float *restrict row, const int *restrict cand_item,
                                   const unsigned char *restrict um, int t, float scale, int C) {
    for (int c = 0; c < C; c++)
        row[c] = masked(cand_item, um, c, t) ? 0.0f : row[c] * scale;
}

static void ce_range(void *va, size_t lo, size_t hi) {
    const ce_args *a = va;
    const int C = a->C;
    const float invq = 1.0f / (float)a->Q, *logpop = a->logpop;
    const int *cand_item = a->cand_item;
    for (size_t q = lo; q < hi; q++) {
        float *row = a->logits + q * C;
        const unsigned char *um = a->umask + (size_t)a->quser[q] * C;
        const int t = a->qtarget[q];
        const float mx = mask_max(row, logpop, cand_item, um, t, C), zt = row[t];
        const double sum = exp_sum(row, mx, C);
        a->qloss[q] = (double)mx + log(sum) - (double)zt; /* log-sum-exp minus the target logit */
        const float scale = (float)(1.0 / sum) * invq;
        scale_unmasked(row, cand_item, um, t, scale, C);
        if (cand_item[t] != 0) row[t] -= invq; /* a padding target stays constant */
    }
}

/* queries at a time, each query's loss kept on the stack until they are added */
enum { CE_CHUNK = 1024 };

void cpu_inbatch_ce(iisan_backend *be, float *logits, float *loss, const float *logpop,
                    const int *cand_item, const unsigned char *umask, const int *quser,
                    const int *qtarget, int Q, int C) {
    if (Q <= 0) {
        *loss = 0.0f;
        return;
    }
    double qloss[CE_CHUNK], total = 0.0;
    for (int q0 = 0; q0 < Q; q0 += CE_CHUNK) {
        int nq = Q - q0 < CE_CHUNK ? Q - q0 : CE_CHUNK;
        ce_args a = {logits + (size_t)q0 * C,
                     logpop,
                     cand_item,
                     quser + q0,
                     qtarget + q0,
                     umask,
                     Q,
                     C,
                     qloss};
        cpu_par(be, (size_t)nq, 16, ce_range, &a);
        for (int q = 0; q < nq; q++)
            total += qloss[q];
    }
    *loss = (float)(total / Q);
}

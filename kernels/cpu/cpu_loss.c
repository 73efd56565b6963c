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

static void ce_range(void *va, size_t lo, size_t hi) {
    const ce_args *a = va;
    const int C = a->C;
    const float invq = 1.0f / (float)a->Q, *logpop = a->logpop;
    const int *cand_item = a->cand_item;
    for (size_t q = lo; q < hi; q++) {
        float *row = a->logits + q * C;
        const unsigned char *um = a->umask + (size_t)a->quser[q] * C;
        const int t = a->qtarget[q];
        /* masked logits and their maximum */
        float mx = -INFINITY;
        for (int c = 0; c < C; c++) {
            int masked = cand_item[c] == 0 || (um[c] != 0 && c != t);
            row[c] = masked ? MASKED_LOGIT : row[c] - logpop[c];
            if (row[c] > mx) mx = row[c];
        }
        const float zt = row[t];
        double sum = 0.0;
        for (int c = 0; c < C; c++) {
            /* below -104 expf is +0 in fp32 (e^-104 < 2^-150); taking its underflow path for
             * every masked candidate cost more than the rest of the loss */
            float x = row[c] - mx;
            row[c] = x < -104.0f ? 0.0f : expf(x);
            sum += row[c];
        }
        a->qloss[q] = (double)mx + log(sum) - (double)zt; /* log-sum-exp minus the target logit */
        const float scale = (float)(1.0 / sum) * invq;
        for (int c = 0; c < C; c++) {
            int masked = cand_item[c] == 0 || (um[c] != 0 && c != t);
            row[c] = masked ? 0.0f : row[c] * scale;
        }
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

/* In-batch debiased cross-entropy (see backend.h for the masking rule). The
 * gradient written back is with respect to the INPUT logits: a masked candidate
 * has a constant logit, so its gradient is exactly 0; an unmasked one gets
 * (softmax - onehot(target)) / Q. */
#include <math.h>

#include "kernels/cpu/cpu.h"

#define MASKED_LOGIT (-1e4f)

void cpu_inbatch_ce(iisan_backend *be, float *logits, float *loss, const float *logpop,
                    const int *cand_item, const unsigned char *umask, const int *quser,
                    const int *qtarget, int Q, int C) {
    if (Q <= 0) {
        *loss = 0.0f;
        return;
    }
    double total = 0.0;
    const float invq = 1.0f / (float)Q;
    for (int q = 0; q < Q; q++) {
        float *row = logits + (size_t)q * C;
        const unsigned char *um = umask + (size_t)quser[q] * C;
        const int t = qtarget[q];
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
            row[c] = expf(row[c] - mx);
            sum += row[c];
        }
        total += (double)mx + log(sum) - (double)zt; /* log-sum-exp minus the target logit */
        const float scale = (float)(1.0 / sum) * invq;
        for (int c = 0; c < C; c++) {
            int masked = cand_item[c] == 0 || (um[c] != 0 && c != t);
            row[c] = masked ? 0.0f : row[c] * scale;
        }
        if (cand_item[t] != 0) row[t] -= invq; /* a padding target stays constant */
    }
    *loss = (float)(total / Q);
}

/* Multi-head self-attention for short sequences (n ~ 10): plain loops per
 * (batch, head, query).
 *
 * Masking. The contract adds -1e9 to score(i, j) unless j <= i and mask[j]. In
 * exact arithmetic that makes P_ij exactly 0 (exp(-1e9) underflows in any
 * format) wherever row i has at least one allowed j, and, for a row with no
 * allowed j at all (a left-padded query position), shifts every score of the row
 * by the same amount, which softmax ignores: that row is the softmax of the raw
 * scores over all n positions. We compute exactly that rather than adding -1e9
 * in float (which would round the raw scores away and make such rows uniform and
 * insensitive to q, k). So the forward matches a float64 evaluation of the
 * formula and the backward is the true derivative of the forward.
 *
 * Dropout on the probabilities uses element index ((b*H + h)*n + i)*n + j, the
 * flat index into probs. */
#include <math.h>
#include <string.h>

#include "kernels/cpu/cpu.h"
#include "kernels/rng.h"

/* dropout multiplier of probs element idx: 0 or 1/(1-p) (1 when p <= 0) */
static inline float keep_scale(uint64_t key, size_t idx, float p, float inv_keep) {
    if (p <= 0.0f) return 1.0f;
    return iisan_rng_uniform_key(key, idx) >= p ? inv_keep : 0.0f;
}

/* a . b in 16 lanes, the lanes then added pairwise (8 + 8, 4 + 4, ..): a fixed order, so
 * the same sum every call, which the compiler can keep in vector registers where a single
 * running sum would make the score's 32 products wait on each other */
static CPU_VEC float dot(const float *restrict a, const float *restrict b, int n) {
    enum { LANES = 16 };
    float acc[LANES] = {0};
    int k = 0;
    for (; k + LANES <= n; k += LANES)
        for (int l = 0; l < LANES; l++)
            acc[l] += a[k + l] * b[k + l];
    for (int l = 0; k < n; k++, l++) /* the tail, one product per lane */
        acc[l] += a[k] * b[k];
    for (int w = LANES / 2; w > 0; w /= 2)
        for (int l = 0; l < w; l++)
            acc[l] += acc[l + w];
    return acc[0];
}

/* y += a x over n (distinct rows of the attention's operands) */
static CPU_VEC void axpy(float *restrict y, float a, const float *restrict x, int n) {
    for (int k = 0; k < n; k++)
        y[k] += a * x[k];
}

/* the operands of an attention op; the pool cuts the batch into ranges of
 * sequences, each sequence's rows of out / dqkv written by one thread */
typedef struct {
    float *out;
    const float *probs_in, *qkv, *mask, *dout;
    float *probs;
    int n, H, dh;
    float p;
    uint64_t seed;
} att_args;

static void att_fwd_range(void *va, size_t b0, size_t b1) {
    const att_args *a = va;
    const int n = a->n, H = a->H, dh = a->dh, d = H * dh;
    const float p = a->p, *mask = a->mask, *qkv = a->qkv;
    float *out = a->out, *probs = a->probs;
    const size_t ld = (size_t)3 * d;
    const float sc = 1.0f / sqrtf((float)dh);
    const float inv_keep = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    const uint64_t key = iisan_rng_key(a->seed);
    for (size_t b = b0; b < b1; b++) {
        const float *mk = mask + (size_t)b * n;
        const float *base = qkv + (size_t)b * n * ld;
        for (int h = 0; h < H; h++) {
            for (int i = 0; i < n; i++) {
                const float *q = base + (size_t)i * ld + (size_t)h * dh;
                size_t prow = (((size_t)b * H + h) * n + i) * n;
                float *P = probs + prow;
                int any = 0;
                for (int j = 0; j <= i; j++)
                    any |= mk[j] != 0.0f;
                float mx = -INFINITY;
                for (int j = 0; j < n; j++) {
                    int allowed = !any || (j <= i && mk[j] != 0.0f);
                    if (allowed) {
                        const float *k = base + (size_t)j * ld + d + (size_t)h * dh;
                        P[j] = dot(q, k, dh) * sc;
                        if (P[j] > mx) mx = P[j];
                    } else {
                        P[j] = -INFINITY;
                    }
                }
                float sum = 0.0f;
                for (int j = 0; j < n; j++) {
                    P[j] = P[j] == -INFINITY ? 0.0f : expf(P[j] - mx);
                    sum += P[j];
                }
                float inv = 1.0f / sum;
                for (int j = 0; j < n; j++)
                    P[j] *= inv;

                float *o = out + ((size_t)b * n + i) * d + (size_t)h * dh;
                memset(o, 0, (size_t)dh * sizeof *o);
                for (int j = 0; j < n; j++) {
                    if (P[j] == 0.0f) continue; /* masked: no draw, no product */
                    float w = P[j] * keep_scale(key, prow + j, p, inv_keep);
                    if (w == 0.0f) continue;
                    axpy(o, w, base + (size_t)j * ld + 2 * d + (size_t)h * dh, dh);
                }
            }
        }
    }
}

void cpu_attention_fwd(iisan_backend *be, float *out, float *probs, const float *qkv,
                       const float *mask, int B, int n, int H, int dh, float p, uint64_t seed) {
    att_args a = {.out = out,
                  .probs = probs,
                  .qkv = qkv,
                  .mask = mask,
                  .n = n,
                  .H = H,
                  .dh = dh,
                  .p = p,
                  .seed = seed};
    if (B > 0) cpu_par(be, (size_t)B, 2, att_fwd_range, &a);
}

/* With Pd = dropout(P): dV_j = sum_i Pd_ij dout_i; dP_ij = keep_ij (dout_i . v_j);
 * dS_ij = P_ij (dP_ij - sum_j' P_ij' dP_ij'); dq_i = sc sum_j dS_ij k_j;
 * dk_j = sc sum_i dS_ij q_i. Masked entries have P_ij = 0, hence dS_ij = 0. */
static void att_bwd_range(void *va, size_t b0, size_t b1) {
    const att_args *a = va;
    const int n = a->n, H = a->H, dh = a->dh, d = H * dh;
    const float p = a->p, *qkv = a->qkv, *probs = a->probs_in, *dout = a->dout;
    float *dqkv = a->out;
    const size_t ld = (size_t)3 * d;
    const float sc = 1.0f / sqrtf((float)dh);
    const float inv_keep = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    const uint64_t key = iisan_rng_key(a->seed);
    memset(dqkv + b0 * n * ld, 0, (b1 - b0) * n * ld * sizeof *dqkv);
    float dP[n > 0 ? n : 1];
    for (size_t b = b0; b < b1; b++) {
        const float *base = qkv + (size_t)b * n * ld;
        float *dbase = dqkv + (size_t)b * n * ld;
        for (int h = 0; h < H; h++) {
            for (int i = 0; i < n; i++) {
                size_t prow = (((size_t)b * H + h) * n + i) * n;
                const float *P = probs + prow;
                const float *go = dout + ((size_t)b * n + i) * d + (size_t)h * dh;
                double pdp = 0.0;
                for (int j = 0; j < n; j++) {
                    if (P[j] == 0.0f) { /* masked (or exp underflowed): adds nothing below */
                        dP[j] = 0.0f;
                        continue;
                    }
                    float ks = keep_scale(key, prow + j, p, inv_keep);
                    const float *v = base + (size_t)j * ld + 2 * d + (size_t)h * dh;
                    float *dv = dbase + (size_t)j * ld + 2 * d + (size_t)h * dh;
                    float w = P[j] * ks;
                    if (w != 0.0f) axpy(dv, w, go, dh);
                    dP[j] = ks == 0.0f ? 0.0f : ks * dot(go, v, dh);
                    pdp += (double)P[j] * dP[j];
                }
                const float *q = base + (size_t)i * ld + (size_t)h * dh;
                float *dq = dbase + (size_t)i * ld + (size_t)h * dh;
                for (int j = 0; j < n; j++) {
                    float ds = P[j] * (dP[j] - (float)pdp) * sc;
                    if (ds == 0.0f) continue;
                    axpy(dq, ds, base + (size_t)j * ld + d + (size_t)h * dh, dh);
                    axpy(dbase + (size_t)j * ld + d + (size_t)h * dh, ds, q, dh);
                }
            }
        }
    }
}

void cpu_attention_bwd(iisan_backend *be, float *dqkv, const float *dout, const float *qkv,
                       const float *probs, int B, int n, int H, int dh, float p, uint64_t seed) {
    att_args a = {.out = dqkv,
                  .probs_in = probs,
                  .qkv = qkv,
                  .dout = dout,
                  .n = n,
                  .H = H,
                  .dh = dh,
                  .p = p,
                  .seed = seed};
    if (B > 0 && n > 0) cpu_par(be, (size_t)B, 2, att_bwd_range, &a);
}

typedef struct {
    float *s;
    const int *keymask;
    int len, rows_per_mask;
} softmax_args;

static void softmax_range(void *va, size_t lo, size_t hi) {
    const softmax_args *a = va;
    const int len = a->len;
    for (size_t r = lo; r < hi; r++) {
        float *row = a->s + r * len;
        const int *mk = a->keymask ? a->keymask + (r / a->rows_per_mask) * len : NULL;
        float mx = -INFINITY;
        for (int j = 0; j < len; j++)
            if ((!mk || mk[j]) && row[j] > mx) mx = row[j];
        float sum = 0.0f;
        for (int j = 0; j < len; j++) {
            float p = !mk || mk[j] ? expf(row[j] - mx) : 0.0f;
            row[j] = p;
            sum += p;
        }
        float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
        for (int j = 0; j < len; j++)
            row[j] *= inv;
    }
}

void cpu_softmax_rows(iisan_backend *be, float *s, int R, int len, const int *keymask,
                      int rows_per_mask) {
    softmax_args a = {s, keymask, len, rows_per_mask};
    if (R > 0 && len > 0) cpu_par(be, (size_t)R, 16, softmax_range, &a);
}

/* Shared encoder layer parts (core/encoder_layer.h). */
#include "core/encoder_layer.h"

#include <math.h>
#include <stddef.h>

void encoder_attention(iisan_backend *be, const float *qkv, float *scores, float *ctx,
                       const int *keymask, int n, int len, int D, int H, int cls_only) {
    const int dh = D / H, M = cls_only ? 1 : len;
    const size_t D3 = 3 * (size_t)D, per = (size_t)H * M * len;
    const float scale = 1.0f / sqrtf((float)dh);
    for (int b = 0; b < n; b++) { /* scores[b, h] = Q_bh K_bh^T / sqrt(dh) */
        const float *q = qkv + (size_t)b * len * D3;
        be->gemm_batched(be, 0, 1, M, len, dh, scale, q, 3 * D, dh, q + D, 3 * D, dh, 0.0f,
                         scores + b * per, len, (long)M * len, H);
    }
    /* over the keys of each row, padding keys at probability 0 */
    be->softmax_rows(be, scores, n * H * M, len, keymask, H * M);
    for (int b = 0; b < n; b++) { /* ctx[b, :, h] = P_bh V_bh */
        const float *v = qkv + (size_t)b * len * D3 + 2 * D;
        be->gemm_batched(be, 0, 0, M, dh, len, 1.0f, scores + b * per, len, (long)M * len, v, 3 * D,
                         dh, 0.0f, ctx + (size_t)b * M * D, D, dh, H);
    }
}

void encoder_ffn(iisan_backend *be, const float *x, float *inter, float *out, const float *wi,
                 const float *bi, const float *wo, const float *bo, int Q, int D, int I, int act) {
    be->gemm(be, 0, 1, Q, I, D, 1.0f, x, D, wi, D, 0.0f, inter, I);
    be->add_bias(be, inter, I, bi, Q, I);
    be->act_fwd(be, act, inter, inter, (size_t)Q * I);
    be->gemm(be, 0, 1, Q, D, I, 1.0f, inter, I, wo, I, 0.0f, out, D);
    be->add_bias(be, out, D, bo, Q, D);
}

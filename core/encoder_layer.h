/* The parts of a transformer encoder layer that the BERT (post-LayerNorm) and
 * ViT (pre-LayerNorm) encoders share, on the compute interface. */
#ifndef IISAN_CORE_ENCODER_LAYER_H
#define IISAN_CORE_ENCODER_LAYER_H

#include "kernels/backend.h"

/* Scaled dot-product self-attention of H heads over n sequences of len
 * positions: qkv [n*len, 3D] (projections, biases added) -> ctx [n*M, D],
 * M = 1 with cls_only (the first position's query only) or len. scores
 * [n, H, M, len] is scratch. keymask (backend int [n, len], 1 real, 0
 * padding; NULL: every key) keeps padding keys out. */
void encoder_attention(iisan_backend *be, const float *qkv, float *scores, float *ctx,
                       const int *keymask, int n, int len, int D, int H, int cls_only);

/* The feed-forward block: out [Q, D] = act(x wi^T + bi) wo^T + bo, with inter
 * [Q, I] as scratch. */
void encoder_ffn(iisan_backend *be, const float *x, float *inter, float *out, const float *wi,
                 const float *bi, const float *wo, const float *bo, int Q, int D, int I, int act);

#endif

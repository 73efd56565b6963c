/* A frozen ViT image encoder on the compute interface (kernels/backend.h): the
 * first token's ([CLS]) vector of every hidden state, [L+1, D], from pixels that
 * are already decoded, resized and normalised (core/image.h does that;
 * core/encode_items.h runs both and stores the states).
 *
 * A model directory is a Hugging Face checkpoint of a ViTModel (or a ViTFor*
 * model: only its "vit." part is read):
 *   config.json        num_hidden_layers, hidden_size, num_attention_heads,
 *                      intermediate_size, image_size (224), patch_size (16),
 *                      num_channels (3), layer_norm_eps (1e-12), hidden_act
 *                      ("gelu" or "relu"), qkv_bias (true); model_type "vit"
 *                      when given
 *   model.safetensors  F32, F16 or BF16: embeddings.{cls_token,
 *                      position_embeddings, patch_embeddings.projection.*},
 *                      encoder.layer.N.{layernorm_before, attention.attention.
 *                      {query,key,value}, attention.output.dense,
 *                      layernorm_after, intermediate.dense, output.dense}.*,
 *                      with or without "vit."; others (final layernorm,
 *                      pooler, heads) are ignored
 *
 * The forward pass is ViTModel's in eval mode: 16x16 patches (a host im2col
 * then one GEMM), [CLS] prepended, position embeddings added, L pre-LayerNorm
 * layers. State l is layer l's output before the model's final LayerNorm, as
 * in Hugging Face's hidden_states. As in core/encoder_bert.c, the attention
 * softmax is the backend's softmax_rows and the last layer runs for the
 * [CLS] rows only. */
#ifndef IISAN_CORE_ENCODER_VIT_H
#define IISAN_CORE_ENCODER_VIT_H

#include <stddef.h>

#include "kernels/backend.h"

typedef struct {
    int layers, hidden, heads, intermediate;
    int image_size, patch_size, channels;
    float ln_eps;
    int act; /* IISAN_ACT_GELU or IISAN_ACT_RELU */
    int qkv_bias;
    char weights_dtype[8];
} vit_config;

typedef struct vit_encoder vit_encoder;

/* 0 or IISAN_EIO / IISAN_EFORMAT / IISAN_ENOMEM / IISAN_EINVAL, "path: problem" in err */
int vit_load(vit_encoder **out, iisan_backend *be, const char *model_dir, int max_batch, char *err,
             size_t errlen);
void vit_free(vit_encoder *e);
const vit_config *vit_get_config(const vit_encoder *e);
int vit_nstates(const vit_encoder *e); /* L + 1 */
int vit_width(const vit_encoder *e);   /* D */
int vit_max_batch(const vit_encoder *e);

/* pixels (host) [n, C, S, S] (S = image_size), normalised as the model wants
 * (IISAN: (x / 255 - 0.5) / 0.5); out (host) [n, L+1, D]. 0 or IISAN_EINVAL. */
int vit_forward(vit_encoder *e, const float *pixels, int n, float *out);

#endif

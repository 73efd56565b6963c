/* A frozen BERT-family text encoder on the compute interface (kernels/backend.h):
 * what IISAN caches per item is the first token's ([CLS]) vector of every hidden
 * state, the embedding output and each layer's output, [L+1, D].
 *
 * A model directory is a Hugging Face checkpoint of a BertModel (or a
 * BertFor* model; only its "bert." part is read):
 *   config.json        num_hidden_layers, hidden_size, num_attention_heads,
 *                      intermediate_size, layer_norm_eps (1e-12), hidden_act
 *                      ("gelu" = exact erf, or "relu"), max_position_embeddings,
 *                      type_vocab_size, vocab_size; model_type "bert" and
 *                      position_embedding_type "absolute" when given
 *   model.safetensors  F32, F16 or BF16 tensors named embeddings.* and
 *                      encoder.layer.N.*, with or without a "bert." prefix
 *                      (LayerNorm weight/bias or the old gamma/beta); others
 *                      (pooler, heads, position_ids) are ignored
 *   vocab.txt          the WordPiece vocabulary (core/wordpiece.h)
 *
 * The forward pass is BertModel's in eval mode: word + absolute position +
 * token-type-0 embeddings, LayerNorm, then L post-LN layers of bidirectional
 * self-attention (padding keys masked out: the backend's softmax_rows) and a
 * GELU feed-forward. Every op goes through the backend, so nothing leaves the
 * device until the states are done. The last layer is computed for the [CLS] rows only (its other
 * rows feed nothing). Batches are padded to their longest text only: the [CLS] vectors do not
 * depend on padding. */
#ifndef IISAN_CORE_ENCODER_BERT_H
#define IISAN_CORE_ENCODER_BERT_H

#include <stddef.h>
#include <stdint.h>

#include "core/wordpiece.h"
#include "kernels/backend.h"

typedef struct {
    int layers;       /* L */
    int hidden;       /* D */
    int heads;        /* H (D % H == 0) */
    int intermediate; /* I */
    int max_pos;      /* max_position_embeddings */
    int type_vocab;   /* type_vocab_size */
    int vocab;        /* vocab_size (rows of the word embeddings) */
    float ln_eps;
    int act;                /* IISAN_ACT_GELU or IISAN_ACT_RELU */
    char name_or_path[256]; /* config's _name_or_path, "" when absent */
    char weights_dtype[8];  /* "F32", "F16", "BF16": as stored */
} bert_config;

typedef struct bert_encoder bert_encoder;

enum { BERT_DEFAULT_MAX_LEN = 30 }; /* the spec's text length, [CLS] and [SEP] included */

/* Loads model_dir onto be, with room for batches of up to max_batch texts of
 * up to max_len tokens ([CLS] and [SEP] included; max_len <= the model's
 * max_position_embeddings). Returns 0 or IISAN_EIO / IISAN_EFORMAT /
 * IISAN_ENOMEM / IISAN_EINVAL with "path: problem" in err. */
int bert_load(bert_encoder **out, iisan_backend *be, const char *model_dir, int max_batch,
              int max_len, char *err, size_t errlen);
void bert_free(bert_encoder *e);

const bert_config *bert_get_config(const bert_encoder *e);
const wp_vocab *bert_vocab(const bert_encoder *e);
int bert_nstates(const bert_encoder *e); /* L + 1 */
int bert_width(const bert_encoder *e);   /* D */
int bert_max_batch(const bert_encoder *e);
int bert_max_len(const bert_encoder *e);
size_t bert_param_count(const bert_encoder *e);

/* n <= max_batch sequences of len <= max_len token ids (row-major [n, len])
 * with their attention masks (1 real, 0 padding; position 0 must be real);
 * out (host) [n, L+1, D]: the [CLS] vector of every hidden state. 0 or
 * IISAN_EINVAL (bad sizes or an id outside the vocabulary). */
int bert_forward(bert_encoder *e, const int32_t *ids, const int32_t *mask, int n, int len,
                 float *out);

/* Tokenizes (wp_encode with max_len) and encodes n texts of any number (in
 * chunks of max_batch, each padded to its longest text); out (host)
 * [n, L+1, D]. texts[i] is NUL-terminated UTF-8. 0 or a negative IISAN_E*. */
int bert_encode_texts(bert_encoder *e, const char *const *texts, int n, float *out);

#endif

/* BERT text encoder: loading a Hugging Face checkpoint and the forward pass
 * to the [CLS] vectors of every hidden state (see core/encoder_bert.h). */
#include "core/encoder_bert.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/encoder_layer.h"
#include "core/hf_config.h"
#include "kernels/half.h"
#include "store/safetensors.h"
#include "store/store.h"

typedef struct {
    float *wqkv;        /* [3D, D]: query | key | value rows (nn.Linear [out, in]) */
    float *bqkv;        /* [3D] */
    float *wo;          /* [D, D] attention output dense */
    float *bo;          /* [D] */
    float *ln1g, *ln1b; /* [D] attention output LayerNorm */
    float *wi;          /* [I, D] intermediate dense */
    float *bi;          /* [I] */
    float *wo2;         /* [D, I] output dense */
    float *bo2;         /* [D] */
    float *ln2g, *ln2b; /* [D] output LayerNorm */
} bert_layer;

struct bert_encoder {
    iisan_backend *be;
    bert_config cfg;
    wp_vocab *vocab;
    int max_batch, max_len;

    /* parameters: one backend allocation */
    float *params;
    size_t n_params;
    float *word;        /* [V, D] */
    float *postype;     /* [P, D] position embeddings + token type 0 */
    float *embg, *embb; /* [D] embedding LayerNorm */
    bert_layer *layer;  /* [L] */

    /* activations: one backend allocation (R = max_batch * max_len rows) */
    void *act;
    float *x, *h, *tmp, *ctx; /* [R, D] */
    float *qkv;               /* [R, 3D] */
    float *inter;             /* [R, I] */
    float *scores;            /* [B, H, len, len] */
    float *mean, *rstd;       /* [R] */
    float *states;            /* [L+1, B, D] */
    int *ids, *pos, *cls;     /* [R], [R], [B] */
    int *keymask;             /* [R]: the attention mask of the batch (1 real, 0 padding) */

    /* host scratch */
    float *states_host; /* [L+1, B, D] */
    int *idx_host;      /* [R] */
};

/* ---- config.json ---- */

static int read_config(bert_config *c, const char *path, char *err, size_t errlen) {
    json_t *o;
    int rc = hf_config_load(path, &o, err, errlen);
    if (rc) return rc;
    rc = IISAN_EFORMAT;
    memset(c, 0, sizeof *c);
    if (hf_config_int(o, "num_hidden_layers", -1, 1, 256, &c->layers, path, err, errlen) ||
        hf_config_int(o, "hidden_size", -1, 1, 65536, &c->hidden, path, err, errlen) ||
        hf_config_int(o, "num_attention_heads", -1, 1, 1024, &c->heads, path, err, errlen) ||
        hf_config_int(o, "intermediate_size", -1, 1, 1 << 20, &c->intermediate, path, err,
                      errlen) ||
        hf_config_int(o, "max_position_embeddings", 512, 2, 1 << 20, &c->max_pos, path, err,
                      errlen) ||
        hf_config_int(o, "type_vocab_size", 2, 1, 1 << 20, &c->type_vocab, path, err, errlen) ||
        hf_config_int(o, "vocab_size", -1, 1, 1 << 24, &c->vocab, path, err, errlen))
        goto out;
    if (c->hidden % c->heads) {
        iisan_fail(err, errlen, rc,
                   "%s: hidden_size %d is not a multiple of num_attention_heads %d", path,
                   c->hidden, c->heads);
        goto out;
    }
    json_t *v = json_object_get(o, "layer_norm_eps");
    c->ln_eps = 1e-12f;
    if (v) {
        if (!json_is_number(v) || !(json_number_value(v) > 0)) {
            iisan_fail(err, errlen, rc, "%s: \"layer_norm_eps\" must be a positive number", path);
            goto out;
        }
        c->ln_eps = (float)json_number_value(v);
    }
    v = json_object_get(o, "hidden_act");
    const char *act = v && json_is_string(v) ? json_string_value(v) : v ? NULL : "gelu";
    if (act && !strcmp(act, "gelu"))
        c->act = IISAN_ACT_GELU;
    else if (act && !strcmp(act, "relu"))
        c->act = IISAN_ACT_RELU;
    else {
        iisan_fail(err, errlen, rc, "%s: hidden_act %s is not supported (\"gelu\" or \"relu\")",
                   path, act ? act : "(not a string)");
        goto out;
    }
    v = json_object_get(o, "model_type");
    if (v && (!json_is_string(v) || strcmp(json_string_value(v), "bert"))) {
        iisan_fail(err, errlen, rc, "%s: model_type %s is not supported (only \"bert\")", path,
                   json_is_string(v) ? json_string_value(v) : "(not a string)");
        goto out;
    }
    v = json_object_get(o, "position_embedding_type");
    if (v && (!json_is_string(v) || strcmp(json_string_value(v), "absolute"))) {
        iisan_fail(err, errlen, rc,
                   "%s: position_embedding_type %s is not supported (only "
                   "\"absolute\")",
                   path, json_is_string(v) ? json_string_value(v) : "(not a string)");
        goto out;
    }
    v = json_object_get(o, "_name_or_path");
    if (v && json_is_string(v))
        snprintf(c->name_or_path, sizeof c->name_or_path, "%s", json_string_value(v));
    rc = 0;
out:
    json_decref(o);
    return rc;
}

/* ---- weights ---- */

typedef struct {
    const st_file *f;
    const char *prefix; /* "bert." or "" */
    const char *path;
    float *host; /* staging, as large as the largest tensor */
    char dtype[8];
} loader;

/* finds prefix + name, trying LayerNorm's old gamma / beta names too */
static const st_tensor *find_tensor(loader *ld, const char *name) {
    char full[256];
    snprintf(full, sizeof full, "%s%s", ld->prefix, name);
    const st_tensor *t = st_find(ld->f, full);
    if (t) return t;
    size_t n = strlen(full);
    if (strstr(full, "LayerNorm.") && n > 7 && !strcmp(full + n - 7, ".weight")) {
        strcpy(full + n - 7, ".gamma");
        return st_find(ld->f, full);
    }
    if (strstr(full, "LayerNorm.") && n > 5 && !strcmp(full + n - 5, ".bias")) {
        strcpy(full + n - 5, ".beta");
        return st_find(ld->f, full);
    }
    return NULL;
}

/* converts the tensor to fp32 in ld->host after checking its shape
 * ([rows, cols], or [cols] when rows == 0); uploads rows_keep * cols floats
 * (all when rows_keep < 0) to dst */
static int load_tensor(loader *ld, iisan_backend *be, float *dst, const char *name, int rows,
                       int cols, int rows_keep, char *err, size_t errlen) {
    const st_tensor *t = find_tensor(ld, name);
    if (!t)
        return iisan_fail(err, errlen, IISAN_EFORMAT, "%s: no tensor %s%s", ld->path, ld->prefix,
                          name);
    int ok = rows ? (t->ndim == 2 && t->shape[0] == rows && t->shape[1] == cols)
                  : (t->ndim == 1 && t->shape[0] == cols);
    if (!ok) {
        char shape[96] = "";
        size_t o = 0;
        for (int d = 0; d < t->ndim && o < sizeof shape - 24; d++)
            o += (size_t)snprintf(shape + o, sizeof shape - o, "%s%lld", d ? ", " : "",
                                  (long long)t->shape[d]);
        if (rows)
            return iisan_fail(err, errlen, IISAN_EFORMAT,
                              "%s: %s has shape [%s], config wants [%d, %d]", ld->path, t->name,
                              shape, rows, cols);
        return iisan_fail(err, errlen, IISAN_EFORMAT, "%s: %s has shape [%s], config wants [%d]",
                          ld->path, t->name, shape, cols);
    }
    size_t n = (size_t)(rows ? rows : 1) * (size_t)cols;
    int rc = st_read_f32(t, ld->host, ld->path, err, errlen);
    if (rc) return rc;
    snprintf(ld->dtype, sizeof ld->dtype, "%s", st_dtype_name(t->dtype));
    size_t keep = rows_keep < 0 ? n : (size_t)rows_keep * (size_t)cols;
    if (dst) be->upload(be, dst, ld->host, keep * sizeof(float));
    return 0;
}

/* carves the parameter buffer: every tensor's pointer, and the total */
static size_t layout_params(bert_encoder *e, float *base) {
    const bert_config *c = &e->cfg;
    size_t D = c->hidden, I = c->intermediate, o = 0;
#define TAKE(p, n)                                                                                 \
    do {                                                                                           \
        (p) = base ? base + o : NULL;                                                              \
        o += (n);                                                                                  \
    } while (0)
    TAKE(e->word, (size_t)c->vocab * D);
    TAKE(e->postype, (size_t)c->max_pos * D);
    TAKE(e->embg, D);
    TAKE(e->embb, D);
    for (int l = 0; l < c->layers; l++) {
        bert_layer *y = &e->layer[l];
        TAKE(y->wqkv, 3 * D * D);
        TAKE(y->bqkv, 3 * D);
        TAKE(y->wo, D * D);
        TAKE(y->bo, D);
        TAKE(y->ln1g, D);
        TAKE(y->ln1b, D);
        TAKE(y->wi, I * D);
        TAKE(y->bi, I);
        TAKE(y->wo2, D * I);
        TAKE(y->bo2, D);
        TAKE(y->ln2g, D);
        TAKE(y->ln2b, D);
    }
#undef TAKE
    return o;
}

static int load_weights(bert_encoder *e, const char *path, char *err, size_t errlen) {
    iisan_backend *be = e->be;
    const bert_config *c = &e->cfg;
    int D = c->hidden, I = c->intermediate;
    st_file *f;
    int rc = st_open(&f, path, err, errlen);
    if (rc) return rc;
    loader ld = {.f = f, .path = path, .prefix = ""};
    if (st_find(f, "bert.embeddings.word_embeddings.weight")) ld.prefix = "bert.";
    size_t big = (size_t)c->vocab * D;
    if ((size_t)c->max_pos * D > big) big = (size_t)c->max_pos * D;
    if ((size_t)I * D > big) big = (size_t)I * D;
    if ((size_t)3 * D * D > big) big = (size_t)3 * D * D;
    if ((size_t)c->type_vocab * D > big) big = (size_t)c->type_vocab * D;
    ld.host = malloc(big * sizeof(float));
    float *pos = malloc((size_t)c->max_pos * D * sizeof(float));
    e->n_params = layout_params(e, NULL);
    e->params = be->alloc(be, e->n_params * sizeof(float));
    if (!ld.host || !pos || !e->params) {
        rc = iisan_fail(err, errlen, IISAN_ENOMEM, "%s: out of memory for %zu parameters", path,
                        e->n_params);
        goto out;
    }
    layout_params(e, e->params);
    if ((rc = load_tensor(&ld, be, e->word, "embeddings.word_embeddings.weight", c->vocab, D, -1,
                          err, errlen)) ||
        (rc = load_tensor(&ld, be, NULL, "embeddings.position_embeddings.weight", c->max_pos, D, -1,
                          err, errlen)))
        goto out;
    memcpy(pos, ld.host, (size_t)c->max_pos * D * sizeof(float));
    if ((rc = load_tensor(&ld, be, NULL, "embeddings.token_type_embeddings.weight", c->type_vocab,
                          D, -1, err, errlen)))
        goto out;
    for (int p = 0; p < c->max_pos; p++) /* position + token type 0, once */
        for (int j = 0; j < D; j++)
            pos[(size_t)p * D + j] += ld.host[j];
    be->upload(be, e->postype, pos, (size_t)c->max_pos * D * sizeof(float));
    if ((rc =
             load_tensor(&ld, be, e->embg, "embeddings.LayerNorm.weight", 0, D, -1, err, errlen)) ||
        (rc = load_tensor(&ld, be, e->embb, "embeddings.LayerNorm.bias", 0, D, -1, err, errlen)))
        goto out;
    for (int l = 0; l < c->layers; l++) {
        bert_layer *y = &e->layer[l];
        char n[128];
        static const char *qkv[3] = {"query", "key", "value"};
        for (int k = 0; k < 3; k++) {
            snprintf(n, sizeof n, "encoder.layer.%d.attention.self.%s.weight", l, qkv[k]);
            if ((rc = load_tensor(&ld, be, y->wqkv + (size_t)k * D * D, n, D, D, -1, err, errlen)))
                goto out;
            snprintf(n, sizeof n, "encoder.layer.%d.attention.self.%s.bias", l, qkv[k]);
            if ((rc = load_tensor(&ld, be, y->bqkv + (size_t)k * D, n, 0, D, -1, err, errlen)))
                goto out;
        }
        struct {
            float *dst;
            const char *name;
            int rows, cols;
        } t[] = {
            {y->wo, "attention.output.dense.weight", D, D},
            {y->bo, "attention.output.dense.bias", 0, D},
            {y->ln1g, "attention.output.LayerNorm.weight", 0, D},
            {y->ln1b, "attention.output.LayerNorm.bias", 0, D},
            {y->wi, "intermediate.dense.weight", I, D},
            {y->bi, "intermediate.dense.bias", 0, I},
            {y->wo2, "output.dense.weight", D, I},
            {y->bo2, "output.dense.bias", 0, D},
            {y->ln2g, "output.LayerNorm.weight", 0, D},
            {y->ln2b, "output.LayerNorm.bias", 0, D},
        };
        for (size_t k = 0; k < sizeof t / sizeof t[0]; k++) {
            snprintf(n, sizeof n, "encoder.layer.%d.%s", l, t[k].name);
            if ((rc = load_tensor(&ld, be, t[k].dst, n, t[k].rows, t[k].cols, -1, err, errlen)))
                goto out;
        }
    }
    snprintf(e->cfg.weights_dtype, sizeof e->cfg.weights_dtype, "%s", ld.dtype);
out:
    free(ld.host);
    free(pos);
    st_close(f);
    return rc;
}

/* ---- activations ---- */

static int alloc_activations(bert_encoder *e) {
    iisan_backend *be = e->be;
    const bert_config *c = &e->cfg;
    size_t B = e->max_batch, R = B * e->max_len, D = c->hidden, I = c->intermediate;
    size_t S = B * c->heads * e->max_len * e->max_len, ST = (size_t)(c->layers + 1) * B * D;
    size_t floats = 4 * R * D + 3 * R * D + R * I + S + 2 * R + ST;
    size_t ints = 3 * R + B;
    e->act = be->alloc(be, floats * sizeof(float) + ints * sizeof(int));
    e->states_host = malloc(ST * sizeof(float));
    e->idx_host = malloc(R * sizeof(int));
    if (!e->act || !e->states_host || !e->idx_host) return IISAN_ENOMEM;
    float *p = e->act;
    e->x = p, p += R * D;
    e->h = p, p += R * D;
    e->tmp = p, p += R * D;
    e->ctx = p, p += R * D;
    e->qkv = p, p += 3 * R * D;
    e->inter = p, p += R * I;
    e->scores = p, p += S;
    e->mean = p, p += R;
    e->rstd = p, p += R;
    e->states = p, p += ST;
    int *q = (int *)p;
    e->ids = q, q += R;
    e->pos = q, q += R;
    e->keymask = q, q += R;
    e->cls = q;
    return 0;
}

int bert_load(bert_encoder **out, iisan_backend *be, const char *model_dir, int max_batch,
              int max_len, char *err, size_t errlen) {
    *out = NULL;
    if (max_batch < 1 || max_batch > 65536 || max_len < 2)
        return iisan_fail(err, errlen, IISAN_EINVAL,
                          "bert_load: max_batch %d / max_len %d out of range", max_batch, max_len);
    bert_encoder *e = calloc(1, sizeof *e);
    if (!e) return iisan_fail(err, errlen, IISAN_ENOMEM, "%s: out of memory", model_dir);
    e->be = be;
    e->max_batch = max_batch;
    e->max_len = max_len;
    size_t plen = strlen(model_dir) + 32;
    char *path = malloc(plen);
    int rc = IISAN_ENOMEM;
    if (!path) {
        iisan_fail(err, errlen, rc, "%s: out of memory", model_dir);
        goto bad;
    }
    snprintf(path, plen, "%s/config.json", model_dir);
    if ((rc = read_config(&e->cfg, path, err, errlen))) goto bad;
    if (max_len > e->cfg.max_pos) {
        rc = iisan_fail(err, errlen, IISAN_EINVAL,
                        "%s: max length %d exceeds max_position_embeddings %d", path, max_len,
                        e->cfg.max_pos);
        goto bad;
    }
    snprintf(path, plen, "%s/vocab.txt", model_dir);
    if ((rc = wp_load(&e->vocab, path, err, errlen))) goto bad;
    if (wp_size(e->vocab) > e->cfg.vocab) {
        rc = iisan_fail(err, errlen, IISAN_EFORMAT,
                        "%s: %d tokens, but the model's vocab_size is %d", path, wp_size(e->vocab),
                        e->cfg.vocab);
        goto bad;
    }
    e->layer = calloc((size_t)e->cfg.layers, sizeof *e->layer);
    if (!e->layer) {
        rc = iisan_fail(err, errlen, IISAN_ENOMEM, "%s: out of memory", model_dir);
        goto bad;
    }
    snprintf(path, plen, "%s/model.safetensors", model_dir);
    FILE *f = fopen(path, "rb");
    if (!f) {
        char bin[4096];
        snprintf(bin, sizeof bin, "%s/pytorch_model.bin", model_dir);
        FILE *g = fopen(bin, "rb");
        if (g) {
            fclose(g);
            rc =
                iisan_fail(err, errlen, IISAN_EIO,
                           "%s: missing; the directory has only pytorch_model.bin: convert it with "
                           "deploy/convert-to-safetensors.py (docs/encoders.md)",
                           path);
        } else {
            rc = iisan_fail(err, errlen, IISAN_EIO, "%s: %s", path, strerror(errno));
        }
        goto bad;
    }
    fclose(f);
    if ((rc = load_weights(e, path, err, errlen))) goto bad;
    if (alloc_activations(e)) {
        rc = iisan_fail(err, errlen, IISAN_ENOMEM, "%s: out of memory for batches of %d x %d",
                        model_dir, max_batch, max_len);
        goto bad;
    }
    free(path);
    *out = e;
    return 0;
bad:
    free(path);
    bert_free(e);
    return rc;
}

void bert_free(bert_encoder *e) {
    if (!e) return;
    if (e->params) e->be->free(e->be, e->params);
    if (e->act) e->be->free(e->be, e->act);
    wp_free(e->vocab);
    free(e->layer);
    free(e->states_host);
    free(e->idx_host);
    free(e);
}

const bert_config *bert_get_config(const bert_encoder *e) { return &e->cfg; }
const wp_vocab *bert_vocab(const bert_encoder *e) { return e->vocab; }
int bert_nstates(const bert_encoder *e) { return e->cfg.layers + 1; }
int bert_width(const bert_encoder *e) { return e->cfg.hidden; }
int bert_max_batch(const bert_encoder *e) { return e->max_batch; }
int bert_max_len(const bert_encoder *e) { return e->max_len; }
size_t bert_param_count(const bert_encoder *e) { return e->n_params; }

/* ---- forward ---- */

/* one encoder layer on x [n*len, D]; with cls_only only the [CLS] rows are
 * computed and x becomes [n, D] */
static void layer_fwd(bert_encoder *e, const bert_layer *y, int n, int len, int cls_only) {
    iisan_backend *be = e->be;
    const bert_config *c = &e->cfg;
    int D = c->hidden, I = c->intermediate, H = c->heads;
    int R = n * len, Q = cls_only ? n : R;

    be->gemm(be, 0, 1, R, 3 * D, D, 1.0f, e->x, D, y->wqkv, D, 0.0f, e->qkv, 3 * D);
    be->add_bias(be, e->qkv, 3 * D, y->bqkv, R, 3 * D);
    encoder_attention(be, e->qkv, e->scores, e->ctx, e->keymask, n, len, D, H, cls_only);
    be->gemm(be, 0, 1, Q, D, D, 1.0f, e->ctx, D, y->wo, D, 0.0f, e->tmp, D);
    be->add_bias(be, e->tmp, D, y->bo, Q, D);
    const float *res = e->x;
    if (cls_only) {
        be->gather_rows(be, e->h, e->x, e->cls, n, D);
        res = e->h;
    }
    be->axpby(be, (size_t)Q * D, 1.0f, res, 1.0f, e->tmp);
    be->layernorm_fwd(be, e->h, e->mean, e->rstd, e->tmp, y->ln1g, y->ln1b, Q, D, c->ln_eps);
    encoder_ffn(be, e->h, e->inter, e->tmp, y->wi, y->bi, y->wo2, y->bo2, Q, D, I, c->act);
    be->axpby(be, (size_t)Q * D, 1.0f, e->h, 1.0f, e->tmp);
    be->layernorm_fwd(be, e->x, e->mean, e->rstd, e->tmp, y->ln2g, y->ln2b, Q, D, c->ln_eps);
}

int bert_forward(bert_encoder *e, const int32_t *ids, const int32_t *mask, int n, int len,
                 float *out) {
    iisan_backend *be = e->be;
    const bert_config *c = &e->cfg;
    if (n < 1 || n > e->max_batch || len < 1 || len > e->max_len) return IISAN_EINVAL;
    int D = c->hidden, L = c->layers, R = n * len;
    for (int i = 0; i < R; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab) return IISAN_EINVAL;
    for (int b = 0; b < n; b++)
        if (!mask[(size_t)b * len]) return IISAN_EINVAL;

    /* token ids, positions and the [CLS] rows */
    for (int i = 0; i < R; i++)
        e->idx_host[i] = ids[i];
    be->upload(be, e->ids, e->idx_host, (size_t)R * sizeof(int));
    for (int i = 0; i < R; i++)
        e->idx_host[i] = i % len;
    be->upload(be, e->pos, e->idx_host, (size_t)R * sizeof(int));
    for (int b = 0; b < n; b++)
        e->idx_host[b] = b * len;
    be->upload(be, e->cls, e->idx_host, (size_t)n * sizeof(int));
    for (int i = 0; i < R; i++)
        e->idx_host[i] = mask[i] != 0;
    be->upload(be, e->keymask, e->idx_host, (size_t)R * sizeof(int));

    /* embeddings: word + (position + type 0), LayerNorm */
    be->gather_rows(be, e->tmp, e->word, e->ids, R, D);
    be->gather_rows(be, e->h, e->postype, e->pos, R, D);
    be->axpby(be, (size_t)R * D, 1.0f, e->h, 1.0f, e->tmp);
    be->layernorm_fwd(be, e->x, e->mean, e->rstd, e->tmp, e->embg, e->embb, R, D, c->ln_eps);
    be->gather_rows(be, e->states, e->x, e->cls, n, D);

    for (int l = 0; l < L; l++) {
        int last = l == L - 1;
        layer_fwd(e, &e->layer[l], n, len, last);
        float *dst = e->states + (size_t)(l + 1) * n * D;
        if (last)
            be->copy(be, dst, e->x, (size_t)n * D * sizeof(float));
        else
            be->gather_rows(be, dst, e->x, e->cls, n, D);
    }
    be->download(be, e->states_host, e->states, (size_t)(L + 1) * n * D * sizeof(float));
    for (int b = 0; b < n; b++) /* [L+1, n, D] -> [n, L+1, D] */
        for (int l = 0; l <= L; l++)
            memcpy(out + ((size_t)b * (L + 1) + l) * D, e->states_host + ((size_t)l * n + b) * D,
                   (size_t)D * sizeof(float));
    return 0;
}

int bert_encode_texts(bert_encoder *e, const char *const *texts, int n, float *out) {
    int B = e->max_batch, T = e->max_len, S = bert_nstates(e), D = bert_width(e);
    int32_t *ids = malloc(sizeof *ids * (size_t)B * T),
            *mask = malloc(sizeof *mask * (size_t)B * T);
    int32_t *all = malloc(sizeof *all * (size_t)B * T),
            *allm = malloc(sizeof *allm * (size_t)B * T);
    int rc = 0;
    if (!ids || !mask || !all || !allm) {
        rc = IISAN_ENOMEM;
        goto out;
    }
    for (int s = 0; s < n && !rc; s += B) {
        int nb = n - s < B ? n - s : B, len = 2;
        for (int i = 0; i < nb; i++) {
            int r = wp_encode(e->vocab, texts[s + i], strlen(texts[s + i]), T, all + (size_t)i * T,
                              allm + (size_t)i * T);
            if (r < 0) {
                rc = r;
                goto out;
            }
            if (r > len) len = r;
        }
        for (int i = 0; i < nb; i++) { /* pad to the batch's longest */
            memcpy(ids + (size_t)i * len, all + (size_t)i * T, sizeof *ids * (size_t)len);
            memcpy(mask + (size_t)i * len, allm + (size_t)i * T, sizeof *mask * (size_t)len);
        }
        rc = bert_forward(e, ids, mask, nb, len, out + (size_t)s * S * D);
    }
out:
    free(ids);
    free(mask);
    free(all);
    free(allm);
    return rc;
}

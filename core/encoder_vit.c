/* ViT image encoder: loading a Hugging Face checkpoint and the forward pass to
 * the [CLS] vectors of every hidden state (see core/encoder_vit.h). */
#include "core/encoder_vit.h"

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
    float *ln1g, *ln1b; /* [D] layernorm_before */
    float *wqkv, *bqkv; /* [3D, D], [3D] */
    float *wo, *bo;     /* [D, D], [D] */
    float *ln2g, *ln2b; /* [D] layernorm_after */
    float *wi, *bi;     /* [I, D], [I] */
    float *wo2, *bo2;   /* [D, I], [D] */
} vit_layer;

struct vit_encoder {
    iisan_backend *be;
    vit_config cfg;
    int max_batch, np, T; /* patches per image, tokens (np + 1) */

    float *params;
    size_t n_params;
    float *patch_w, *patch_b; /* [D, C*P*P], [D] */
    float *cls;               /* [D] */
    float *pos;               /* [T, D] */
    vit_layer *layer;

    void *act;
    float *x, *h, *tmp, *ctx, *qkv, *inter, *scores, *mean, *rstd, *states, *cols; /* see alloc */
    int *tok_idx, *pos_idx, *cls_idx;
    float *states_host, *cols_host;
    int *idx_host;
};

static int read_config(vit_config *c, const char *path, char *err, size_t errlen) {
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
        hf_config_int(o, "image_size", 224, 1, 4096, &c->image_size, path, err, errlen) ||
        hf_config_int(o, "patch_size", 16, 1, 4096, &c->patch_size, path, err, errlen) ||
        hf_config_int(o, "num_channels", 3, 1, 64, &c->channels, path, err, errlen))
        goto out;
    if (c->hidden % c->heads || c->image_size % c->patch_size) {
        iisan_fail(err, errlen, rc,
                   "%s: hidden_size %% num_attention_heads or image_size %% patch_size "
                   "is not 0",
                   path);
        goto out;
    }
    json_t *v = json_object_get(o, "layer_norm_eps");
    c->ln_eps = v && json_is_number(v) ? (float)json_number_value(v) : 1e-12f;
    v = json_object_get(o, "hidden_act");
    const char *act = v && json_is_string(v) ? json_string_value(v) : v ? "?" : "gelu";
    if (!strcmp(act, "gelu"))
        c->act = IISAN_ACT_GELU;
    else if (!strcmp(act, "relu"))
        c->act = IISAN_ACT_RELU;
    else {
        iisan_fail(err, errlen, rc, "%s: hidden_act %s is not supported (\"gelu\" or \"relu\")",
                   path, act);
        goto out;
    }
    v = json_object_get(o, "qkv_bias");
    c->qkv_bias = !v || json_is_true(v);
    v = json_object_get(o, "model_type");
    if (v && (!json_is_string(v) || strcmp(json_string_value(v), "vit"))) {
        iisan_fail(err, errlen, rc, "%s: model_type %s is not supported (only \"vit\")", path,
                   json_is_string(v) ? json_string_value(v) : "(not a string)");
        goto out;
    }
    rc = 0;
out:
    json_decref(o);
    return rc;
}

typedef struct {
    const st_file *f;
    const char *prefix, *path;
    float *host;
    char dtype[8];
} loader;

/* loads prefix+name, whose shape must be dims[0..nd) (or, with flat, any shape
 * of that many elements), into ld->host and uploads it to dst when not NULL */
static int load(loader *ld, iisan_backend *be, float *dst, const char *name, int nd,
                const int *dims, char *err, size_t errlen) {
    char full[256];
    snprintf(full, sizeof full, "%s%s", ld->prefix, name);
    const st_tensor *t = st_find(ld->f, full);
    if (!t) return iisan_fail(err, errlen, IISAN_EFORMAT, "%s: no tensor %s", ld->path, full);
    size_t n = 1;
    int ok = t->ndim == nd;
    for (int d = 0; d < nd; d++) {
        n *= (size_t)dims[d];
        if (ok && t->shape[d] != dims[d]) ok = 0;
    }
    if (!ok) {
        char want[96] = "";
        size_t o = 0;
        for (int d = 0; d < nd && o < sizeof want - 24; d++)
            o += (size_t)snprintf(want + o, sizeof want - o, "%s%d", d ? ", " : "", dims[d]);
        return iisan_fail(err, errlen, IISAN_EFORMAT,
                          "%s: %s does not have the shape [%s] of the config", ld->path, full,
                          want);
    }
    int rc = st_read_f32(t, ld->host, ld->path, err, errlen);
    if (rc) return rc;
    snprintf(ld->dtype, sizeof ld->dtype, "%s", st_dtype_name(t->dtype));
    if (dst) be->upload(be, dst, ld->host, n * sizeof(float));
    return 0;
}

static size_t layout(vit_encoder *e, float *base) {
    const vit_config *c = &e->cfg;
    size_t D = c->hidden, I = c->intermediate,
           K = (size_t)c->channels * c->patch_size * c->patch_size, o = 0;
#define TAKE(p, n)                                                                                 \
    do {                                                                                           \
        (p) = base ? base + o : NULL;                                                              \
        o += (n);                                                                                  \
    } while (0)
    TAKE(e->patch_w, D * K);
    TAKE(e->patch_b, D);
    TAKE(e->cls, D);
    TAKE(e->pos, (size_t)e->T * D);
    for (int l = 0; l < c->layers; l++) {
        vit_layer *y = &e->layer[l];
        TAKE(y->ln1g, D);
        TAKE(y->ln1b, D);
        TAKE(y->wqkv, 3 * D * D);
        TAKE(y->bqkv, 3 * D);
        TAKE(y->wo, D * D);
        TAKE(y->bo, D);
        TAKE(y->ln2g, D);
        TAKE(y->ln2b, D);
        TAKE(y->wi, I * D);
        TAKE(y->bi, I);
        TAKE(y->wo2, D * I);
        TAKE(y->bo2, D);
    }
#undef TAKE
    return o;
}

static int load_weights(vit_encoder *e, const char *path, char *err, size_t errlen) {
    iisan_backend *be = e->be;
    const vit_config *c = &e->cfg;
    int D = c->hidden, I = c->intermediate, P = c->patch_size, C = c->channels;
    st_file *f;
    int rc = st_open(&f, path, err, errlen);
    if (rc) return rc;
    loader ld = {.f = f, .path = path, .prefix = ""};
    if (st_find(f, "vit.embeddings.cls_token")) ld.prefix = "vit.";
    size_t big = (size_t)D * C * P * P;
    if ((size_t)e->T * D > big) big = (size_t)e->T * D;
    if ((size_t)I * D > big) big = (size_t)I * D;
    if ((size_t)3 * D * D > big) big = (size_t)3 * D * D;
    ld.host = malloc(big * sizeof(float));
    e->n_params = layout(e, NULL);
    e->params = be->alloc(be, e->n_params * sizeof(float));
    if (!ld.host || !e->params) {
        rc = iisan_fail(err, errlen, IISAN_ENOMEM, "%s: out of memory", path);
        goto out;
    }
    layout(e, e->params);
    int dw[4] = {D, C, P, P}, dD[1] = {D}, dcls[3] = {1, 1, D}, dpos[3] = {1, e->T, D};
    if ((rc = load(&ld, be, e->patch_w, "embeddings.patch_embeddings.projection.weight", 4, dw, err,
                   errlen)) ||
        (rc = load(&ld, be, e->patch_b, "embeddings.patch_embeddings.projection.bias", 1, dD, err,
                   errlen)) ||
        (rc = load(&ld, be, e->cls, "embeddings.cls_token", 3, dcls, err, errlen)) ||
        (rc = load(&ld, be, e->pos, "embeddings.position_embeddings", 3, dpos, err, errlen)))
        goto out;
    for (int l = 0; l < c->layers; l++) {
        vit_layer *y = &e->layer[l];
        char n[160];
        static const char *qkv[3] = {"query", "key", "value"};
        int dDD[2] = {D, D}, dID[2] = {I, D}, dDI[2] = {D, I}, dI[1] = {I};
        for (int k = 0; k < 3; k++) {
            snprintf(n, sizeof n, "encoder.layer.%d.attention.attention.%s.weight", l, qkv[k]);
            if ((rc = load(&ld, be, y->wqkv + (size_t)k * D * D, n, 2, dDD, err, errlen))) goto out;
            if (!c->qkv_bias) continue; /* zeros (the buffer is zero-filled) */
            snprintf(n, sizeof n, "encoder.layer.%d.attention.attention.%s.bias", l, qkv[k]);
            if ((rc = load(&ld, be, y->bqkv + (size_t)k * D, n, 1, dD, err, errlen))) goto out;
        }
        struct {
            float *dst;
            const char *name;
            int nd;
            const int *dims;
        } t[] = {
            {y->ln1g, "layernorm_before.weight", 1, dD},
            {y->ln1b, "layernorm_before.bias", 1, dD},
            {y->wo, "attention.output.dense.weight", 2, dDD},
            {y->bo, "attention.output.dense.bias", 1, dD},
            {y->ln2g, "layernorm_after.weight", 1, dD},
            {y->ln2b, "layernorm_after.bias", 1, dD},
            {y->wi, "intermediate.dense.weight", 2, dID},
            {y->bi, "intermediate.dense.bias", 1, dI},
            {y->wo2, "output.dense.weight", 2, dDI},
            {y->bo2, "output.dense.bias", 1, dD},
        };
        for (size_t k = 0; k < sizeof t / sizeof t[0]; k++) {
            snprintf(n, sizeof n, "encoder.layer.%d.%s", l, t[k].name);
            if ((rc = load(&ld, be, t[k].dst, n, t[k].nd, t[k].dims, err, errlen))) goto out;
        }
    }
    snprintf(e->cfg.weights_dtype, sizeof e->cfg.weights_dtype, "%s", ld.dtype);
out:
    free(ld.host);
    st_close(f);
    return rc;
}

static int alloc_activations(vit_encoder *e) {
    iisan_backend *be = e->be;
    const vit_config *c = &e->cfg;
    size_t B = e->max_batch, T = e->T, R = B * T, D = c->hidden, I = c->intermediate;
    size_t K = (size_t)c->channels * c->patch_size * c->patch_size, NP = B * e->np;
    size_t S = B * c->heads * T * T, ST = (size_t)(c->layers + 1) * B * D;
    size_t floats = 4 * R * D + 3 * R * D + R * I + S + 2 * R + ST + NP * K;
    e->act = be->alloc(be, floats * sizeof(float) + (2 * R + B) * sizeof(int));
    e->states_host = malloc(ST * sizeof(float));
    e->cols_host = malloc(NP * K * sizeof(float));
    e->idx_host = malloc(R * sizeof(int));
    if (!e->act || !e->states_host || !e->cols_host || !e->idx_host) return IISAN_ENOMEM;
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
    e->cols = p, p += NP * K;
    int *q = (int *)p;
    e->tok_idx = q, q += R;
    e->pos_idx = q, q += R;
    e->cls_idx = q;
    return 0;
}

int vit_load(vit_encoder **out, iisan_backend *be, const char *model_dir, int max_batch, char *err,
             size_t errlen) {
    *out = NULL;
    if (max_batch < 1 || max_batch > 65536)
        return iisan_fail(err, errlen, IISAN_EINVAL, "vit_load: max_batch %d out of range",
                          max_batch);
    vit_encoder *e = calloc(1, sizeof *e);
    size_t plen = strlen(model_dir) + 32;
    char *path = malloc(plen);
    int rc = IISAN_ENOMEM;
    if (!e || !path) {
        free(path);
        free(e);
        return iisan_fail(err, errlen, rc, "%s: out of memory", model_dir);
    }
    e->be = be;
    e->max_batch = max_batch;
    snprintf(path, plen, "%s/config.json", model_dir);
    if ((rc = read_config(&e->cfg, path, err, errlen))) goto bad;
    int g = e->cfg.image_size / e->cfg.patch_size;
    e->np = g * g;
    e->T = e->np + 1;
    e->layer = calloc((size_t)e->cfg.layers, sizeof *e->layer);
    if (!e->layer) {
        rc = iisan_fail(err, errlen, IISAN_ENOMEM, "%s: out of memory", model_dir);
        goto bad;
    }
    snprintf(path, plen, "%s/model.safetensors", model_dir);
    if ((rc = load_weights(e, path, err, errlen))) goto bad;
    if (alloc_activations(e)) {
        rc = iisan_fail(err, errlen, IISAN_ENOMEM, "%s: out of memory for batches of %d", model_dir,
                        max_batch);
        goto bad;
    }
    free(path);
    *out = e;
    return 0;
bad:
    free(path);
    vit_free(e);
    return rc;
}

void vit_free(vit_encoder *e) {
    if (!e) return;
    if (e->params) e->be->free(e->be, e->params);
    if (e->act) e->be->free(e->be, e->act);
    free(e->layer);
    free(e->states_host);
    free(e->cols_host);
    free(e->idx_host);
    free(e);
}

const vit_config *vit_get_config(const vit_encoder *e) { return &e->cfg; }
int vit_nstates(const vit_encoder *e) { return e->cfg.layers + 1; }
int vit_width(const vit_encoder *e) { return e->cfg.hidden; }
int vit_max_batch(const vit_encoder *e) { return e->max_batch; }

/* one pre-LN layer on x [n*T, D]; with cls_only, x becomes [n, D] */
static void layer_fwd(vit_encoder *e, const vit_layer *y, int n, int cls_only) {
    iisan_backend *be = e->be;
    const vit_config *c = &e->cfg;
    int D = c->hidden, I = c->intermediate, H = c->heads, T = e->T;
    int R = n * T, Q = cls_only ? n : R;

    be->layernorm_fwd(be, e->h, e->mean, e->rstd, e->x, y->ln1g, y->ln1b, R, D, c->ln_eps);
    be->gemm(be, 0, 1, R, 3 * D, D, 1.0f, e->h, D, y->wqkv, D, 0.0f, e->qkv, 3 * D);
    be->add_bias(be, e->qkv, 3 * D, y->bqkv, R, 3 * D);
    encoder_attention(be, e->qkv, e->scores, e->ctx, NULL, n, T, D, H, cls_only);
    be->gemm(be, 0, 1, Q, D, D, 1.0f, e->ctx, D, y->wo, D, 0.0f, e->tmp, D);
    be->add_bias(be, e->tmp, D, y->bo, Q, D);
    if (cls_only) { /* the residual: the [CLS] rows of x */
        be->gather_rows(be, e->h, e->x, e->cls_idx, n, D);
        be->axpby(be, (size_t)Q * D, 1.0f, e->h, 1.0f, e->tmp);
    } else {
        be->axpby(be, (size_t)Q * D, 1.0f, e->x, 1.0f, e->tmp);
    }
    /* tmp = hidden after attention; x <- tmp + MLP(LN(tmp)) */
    be->layernorm_fwd(be, e->h, e->mean, e->rstd, e->tmp, y->ln2g, y->ln2b, Q, D, c->ln_eps);
    encoder_ffn(be, e->h, e->inter, e->x, y->wi, y->bi, y->wo2, y->bo2, Q, D, I, c->act);
    be->axpby(be, (size_t)Q * D, 1.0f, e->tmp, 1.0f, e->x);
}

int vit_forward(vit_encoder *e, const float *pixels, int n, float *out) {
    iisan_backend *be = e->be;
    const vit_config *c = &e->cfg;
    if (n < 1 || n > e->max_batch) return IISAN_EINVAL;
    int D = c->hidden, L = c->layers, T = e->T, P = c->patch_size, C = c->channels;
    int S = c->image_size, g = S / P, K = C * P * P, NP = n * e->np;

    /* im2col: row (b, py*g + px) = pixels of that patch in (c, ky, kx) order,
     * the order of the convolution's weight [D, C, P, P] */
    for (int b = 0; b < n; b++)
        for (int py = 0; py < g; py++)
            for (int px = 0; px < g; px++) {
                float *row = e->cols_host + ((size_t)b * e->np + py * g + px) * K;
                for (int ch = 0; ch < C; ch++)
                    for (int ky = 0; ky < P; ky++)
                        memcpy(row + (ch * P + ky) * P,
                               pixels + (((size_t)b * C + ch) * S + py * P + ky) * S + px * P,
                               sizeof(float) * P);
            }
    be->upload(be, e->cols, e->cols_host, (size_t)NP * K * sizeof(float));
    /* patch embeddings into tmp rows 0..NP-1, the [CLS] token as row NP */
    be->gemm(be, 0, 1, NP, D, K, 1.0f, e->cols, K, e->patch_w, K, 0.0f, e->tmp, D);
    be->add_bias(be, e->tmp, D, e->patch_b, NP, D);
    be->copy(be, e->tmp + (size_t)NP * D, e->cls, (size_t)D * sizeof(float));
    for (int b = 0; b < n; b++)
        for (int t = 0; t < T; t++)
            e->idx_host[b * T + t] = t == 0 ? NP : b * e->np + t - 1;
    be->upload(be, e->tok_idx, e->idx_host, (size_t)n * T * sizeof(int));
    for (int i = 0; i < n * T; i++)
        e->idx_host[i] = i % T;
    be->upload(be, e->pos_idx, e->idx_host, (size_t)n * T * sizeof(int));
    for (int b = 0; b < n; b++)
        e->idx_host[b] = b * T;
    be->upload(be, e->cls_idx, e->idx_host, (size_t)n * sizeof(int));
    be->gather_rows(be, e->x, e->tmp, e->tok_idx, n * T, D);
    be->gather_rows(be, e->h, e->pos, e->pos_idx, n * T, D);
    be->axpby(be, (size_t)n * T * D, 1.0f, e->h, 1.0f, e->x);
    be->gather_rows(be, e->states, e->x, e->cls_idx, n, D);
    for (int l = 0; l < L; l++) {
        int last = l == L - 1;
        layer_fwd(e, &e->layer[l], n, last);
        float *dst = e->states + (size_t)(l + 1) * n * D;
        if (last)
            be->copy(be, dst, e->x, (size_t)n * D * sizeof(float));
        else
            be->gather_rows(be, dst, e->x, e->cls_idx, n, D);
    }
    be->download(be, e->states_host, e->states, (size_t)(L + 1) * n * D * sizeof(float));
    for (int b = 0; b < n; b++)
        for (int l = 0; l <= L; l++)
            memcpy(out + ((size_t)b * (L + 1) + l) * D, e->states_host + ((size_t)l * n + b) * D,
                   (size_t)D * sizeof(float));
    return 0;
}

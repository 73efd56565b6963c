/* POST /items: catalogue records, hidden states (sent, or computed from the
 * title by the configured text encoder) and, for an IISAN model, the items'
 * embeddings computed on the spot (infer_add_items) so that they are
 * recommendable at once. Everything is stored before the answer: an
 * acknowledged item survives kill -9, and the next model load embeds it from
 * the store again (core/infer.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/encoder_bert.h"
#include "core/encoder_vit.h"
#include "core/image.h"
#include "kernels/half.h"
#include "server/common.h"
#include "server/serve.h"

/* ---------------- the text encoder ---------------- */

static struct {
    pthread_mutex_t mu; /* one encoding at a time (the encoders' workspaces) */
    iisan_backend *be;  /* their own CPU backend: never shares a device stream with serving */
    bert_encoder *e;
    char backbone[128];
    vit_encoder *v;
    char vbackbone[128];
} g_enc = {PTHREAD_MUTEX_INITIALIZER, NULL, NULL, "", NULL, ""};

int serve_encoder_open(const serve_config *c, char *err, size_t errlen) {
    if (!c->text_model[0] && !c->image_model[0]) return 0;
    g_enc.be = iisan_backend_cpu(1);
    if (!g_enc.be) return iisan_fail(err, errlen, IISAN_ENOMEM, "out of memory");
    int rc = 0;
    if (c->text_model[0]) {
        rc = bert_load(&g_enc.e, g_enc.be, c->text_model, 8, 30, err, errlen);
        if (!rc && c->text_backbone[0])
            snprintf(g_enc.backbone, sizeof g_enc.backbone, "%s", c->text_backbone);
        else if (!rc)
            backbone_dir_name(c->text_model, g_enc.backbone, sizeof g_enc.backbone);
        if (!rc && !g_enc.backbone[0]) /* as iisan encode: the config's name, or "bert" */
            snprintf(g_enc.backbone, sizeof g_enc.backbone, "%.127s",
                     bert_get_config(g_enc.e)->name_or_path[0]
                         ? bert_get_config(g_enc.e)->name_or_path
                         : "bert");
    }
    if (!rc && c->image_model[0]) {
        rc = vit_load(&g_enc.v, g_enc.be, c->image_model, 1, err, errlen);
        if (!rc && c->image_backbone[0])
            snprintf(g_enc.vbackbone, sizeof g_enc.vbackbone, "%s", c->image_backbone);
        else if (!rc)
            backbone_dir_name(c->image_model, g_enc.vbackbone, sizeof g_enc.vbackbone);
        if (!rc && !g_enc.vbackbone[0]) snprintf(g_enc.vbackbone, sizeof g_enc.vbackbone, "vit");
    }
    if (rc) serve_encoder_close();
    return rc;
}

void serve_encoder_close(void) {
    bert_free(g_enc.e);
    g_enc.e = NULL;
    vit_free(g_enc.v);
    g_enc.v = NULL;
    if (g_enc.be) g_enc.be->destroy(g_enc.be);
    g_enc.be = NULL;
}

const char *serve_encoder_backbone(void) { return g_enc.e ? g_enc.backbone : NULL; }
const char *serve_image_encoder_backbone(void) { return g_enc.v ? g_enc.vbackbone : NULL; }

/* the states an encoder gives, [nstates, width] */
static void encoder_shape(int mod, int *nstates, int *width) {
    *nstates = mod ? vit_nstates(g_enc.v) : bert_nstates(g_enc.e);
    *width = mod ? vit_width(g_enc.v) : bert_width(g_enc.e);
}

/* encodes item x's title (mod 0) or image (mod 1) into out (floats, [nstates, width]) */
static int encode_one(int mod, const item_entry *x, float *out, char *err, size_t errlen) {
    if (mod == IISAN_TEXT) {
        char *t = strndup(x->title, x->title_len);
        if (!t) return iisan_fail(err, errlen, IISAN_ENOMEM, "out of memory");
        const char *tt = t;
        int rc = bert_encode_texts(g_enc.e, &tt, 1, out);
        free(t);
        if (rc) return iisan_fail(err, errlen, rc, "encoding the title: %s", iisan_strerror(rc));
        char bm[300];
        if (g_enc.be->status(g_enc.be, bm, sizeof bm))
            return iisan_fail(err, errlen, IISAN_EBACKEND, "the %s backend failed: %s",
                              g_enc.be->name, bm);
        return 0;
    }
    unsigned char *bytes = malloc(x->image_len / 4 * 3 + 3);
    const vit_config *vc = vit_get_config(g_enc.v);
    float *pix = malloc((size_t)3 * vc->image_size * vc->image_size * sizeof *pix);
    int rc = bytes && pix ? 0 : iisan_fail(err, errlen, IISAN_ENOMEM, "out of memory");
    long nb = rc ? 0 : req_base64_decode(x->image, x->image_len, bytes);
    if (!rc) rc = image_preprocess(bytes, (size_t)nb, vc->image_size, pix, err, errlen);
    if (!rc) {
        rc = vit_forward(g_enc.v, pix, 1, out);
        if (rc) iisan_fail(err, errlen, rc, "encoding the image: %s", iisan_strerror(rc));
    }
    free(bytes);
    free(pix);
    char bm[300];
    if (!rc && g_enc.be->status(g_enc.be, bm, sizeof bm))
        rc = iisan_fail(err, errlen, IISAN_EBACKEND, "the %s backend failed: %s", g_enc.be->name,
                        bm);
    return rc;
}

/* ---------------- POST /items ---------------- */

typedef struct {
    int nstates, width;
    char backbone[128];
    int known; /* the store or the model fixes the shape */
} shape;

static json_t *fail_json(const char *code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static json_t *fail_json(const char *code, const char *fmt, ...) {
    char msg[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", msg);
}

static int items_post_locked(const items_request *q, json_t **body) {
    const size_t n = q->n;
    iisan_store *s = store_ix_store(g_srv.ix);
    infer_model *m = serve_model_get();
    infer_info in = {0};
    if (m) infer_get_info(m, &in);
    int status = 200;
    json_t *warnings = json_array();
    store_item_put *v = calloc(n, sizeof *v);
    uint16_t *st[2] = {NULL, NULL};
    float *tmp = NULL;
    char **old_titles = calloc(n, sizeof *old_titles);
    int *has[2] = {calloc(n, sizeof(int)), calloc(n, sizeof(int))};
    shape sh[2];
    char err[400];
    *body = NULL;
    if (!v || !old_titles || !has[0] || !has[1]) goto oom;
    /* the shape each modality must have: the store's, else the model's */
    for (int mod = 0; mod < 2; mod++) {
        store_states_info si;
        memset(&sh[mod], 0, sizeof sh[mod]);
        store_ix_rdlock(g_srv.ix);
        int rc = store_states_info_get(s, mod, &si);
        store_ix_unlock(g_srv.ix);
        if (!rc) {
            sh[mod] = (shape){si.nstates, si.width, "", 1};
            snprintf(sh[mod].backbone, sizeof sh[mod].backbone, "%s", si.backbone);
        } else if (m && in.kind == MODEL_IISAN) {
            sh[mod] = (shape){in.nstates[mod], in.D[mod], "api", 1};
        }
    }
    /* the configured encoders, unless the store's states of that modality are another's */
    const char *enc[2] = {serve_encoder_backbone(), serve_image_encoder_backbone()};
    static const char *const what[2] = {"text", "image"};
    for (int mod = 0; mod < 2; mod++)
        if (enc[mod] && sh[mod].known && strcmp(sh[mod].backbone, enc[mod]) &&
            strcmp(sh[mod].backbone, "api")) {
            enc[mod] = NULL;
            char msg[300];
            snprintf(msg, sizeof msg,
                     "the store's %s states come from backbone '%s', not the configured "
                     "%s_model's; nothing is encoded for that modality",
                     what[mod], sh[mod].backbone, what[mod]);
            json_array_append_new(
                warnings, json_pack("{s:s,s:s}", "code", "encoder_mismatch", "message", msg));
        }
    /* shapes of the states sent; the first item fixes an unknown shape */
    for (size_t i = 0; i < n; i++)
        for (int mod = 0; mod < 2; mod++) {
            json_t *js = q->v[i].states[mod];
            if (!js) continue;
            size_t rows = json_array_size(js), cnt = req_states_flatten(js, NULL, 0);
            json_t *r0 = json_array_get(js, 0);
            int nested = json_is_array(r0);
            if (!sh[mod].known) {
                if (!nested) {
                    *body = fail_json("unknown_shape",
                                      "item %zu: the store holds no %s states yet and no model "
                                      "fixes their shape: send them as [L+1][D] rows",
                                      i, what[mod]);
                    status = 422;
                    goto out;
                }
                sh[mod] = (shape){(int)rows, (int)json_array_size(r0), "api", 1};
            }
            size_t want = (size_t)sh[mod].nstates * sh[mod].width;
            if (cnt != want || (nested && rows != (size_t)sh[mod].nstates)) {
                *body = fail_json("wrong_shape",
                                  "item %zu ('%s'): %s states must be %d x %d numbers, got %s%zu",
                                  i, q->v[i].item_id, what[mod], sh[mod].nstates, sh[mod].width,
                                  nested ? "rows: " : "", nested ? rows : cnt);
                status = 422;
                goto out;
            }
            has[mod][i] = 1;
        }
    /* what to encode: a title without text states, an image without image states */
    int nenc[2] = {0, 0};
    for (size_t i = 0; i < n; i++) {
        const item_entry *x = &q->v[i];
        if (enc[0] && x->has_title && x->title_len && !has[IISAN_TEXT][i]) nenc[0]++;
        if (x->image && !has[IISAN_IMAGE][i]) {
            if (!enc[1]) {
                *body = fail_json(g_enc.v ? "encoder_mismatch" : "no_image_model",
                                  "item %zu ('%s') has an image, but %s", i, x->item_id,
                                  g_enc.v ? "the store's image states come from another backbone"
                                          : "no image_model is configured to encode it");
                status = 422;
                goto out;
            }
            nenc[1]++;
        }
    }
    for (int mod = 0; mod < 2; mod++) {
        if (!nenc[mod]) continue;
        int ns, w;
        encoder_shape(mod, &ns, &w);
        if (sh[mod].known && (ns != sh[mod].nstates || w != sh[mod].width)) {
            *body = fail_json("encoder_mismatch",
                              "the %s encoder gives %d x %d states; the store holds %d x %d",
                              what[mod], ns, w, sh[mod].nstates, sh[mod].width);
            status = 409;
            goto out;
        }
        if (!sh[mod].known || !strcmp(sh[mod].backbone, "api")) sh[mod] = (shape){ns, w, "", 1};
        snprintf(sh[mod].backbone, sizeof sh[mod].backbone, "%s", enc[mod]);
    }
    for (int mod = 0; mod < 2; mod++)
        if (sh[mod].known) {
            st[mod] = malloc(n * sh[mod].nstates * sh[mod].width * sizeof(uint16_t));
            if (!st[mod]) goto oom;
        }
    {
        size_t cap = 0;
        for (int mod = 0; mod < 2; mod++)
            if (sh[mod].known && (size_t)sh[mod].nstates * sh[mod].width > cap)
                cap = (size_t)sh[mod].nstates * sh[mod].width;
        tmp = malloc((cap ? cap : 1) * sizeof *tmp);
        if (!tmp) goto oom;
    }
    for (size_t i = 0; i < n; i++)
        for (int mod = 0; mod < 2; mod++)
            if (has[mod][i]) {
                size_t blk = (size_t)sh[mod].nstates * sh[mod].width;
                req_states_flatten(q->v[i].states[mod], tmp, blk);
                iisan_cpu_float_to_half(st[mod] + i * blk, tmp, blk);
            }
    if (nenc[0] || nenc[1]) {
        pthread_mutex_lock(&g_enc.mu);
        int rc = 0;
        char eerr[300] = "";
        size_t bad = 0;
        for (size_t i = 0; !rc && i < n; i++)
            for (int mod = 0; !rc && mod < 2; mod++) {
                const item_entry *x = &q->v[i];
                int want = mod ? x->image != NULL : x->has_title && x->title_len;
                if (!nenc[mod] || !want || has[mod][i]) continue;
                size_t blk = (size_t)sh[mod].nstates * sh[mod].width;
                rc = encode_one(mod, x, tmp, eerr, sizeof eerr);
                if (!rc) {
                    iisan_cpu_float_to_half(st[mod] + i * blk, tmp, blk);
                    has[mod][i] = 2; /* encoded here */
                }
                bad = i;
            }
        pthread_mutex_unlock(&g_enc.mu);
        if (rc) {
            *body =
                fail_json(rc == IISAN_EFORMAT    ? "bad_image"
                          : rc == IISAN_EBACKEND ? "backend_failed"
                                                 : "encode_failed",
                          "item %zu ('%s'): %s; nothing was stored", bad, q->v[bad].item_id, eerr);
            status = rc == IISAN_EFORMAT ? 422 : rc == IISAN_EBACKEND ? 503 : 500;
            goto out;
        }
    }
    /* the catalogue records: an item sent without a title keeps the one it has */
    for (size_t i = 0; i < n; i++) {
        v[i].item_id = q->v[i].item_id;
        v[i].title = q->v[i].title;
        v[i].tlen = q->v[i].title_len;
        if (!q->v[i].has_title) {
            store_item_info *inf = malloc(sizeof *inf);
            if (!inf) goto oom;
            if (store_ix_item_info(g_srv.ix, q->v[i].item_id, inf) == 0 && inf->titled) {
                old_titles[i] = strdup(inf->title);
                if (old_titles[i]) {
                    v[i].title = old_titles[i];
                    v[i].tlen = strlen(old_titles[i]);
                }
            }
            free(inf);
        }
    }
    int rc = store_ix_items_put(g_srv.ix, v, n, err, sizeof err);
    if (rc) {
        *body = fail_json(rc == IISAN_EINVAL   ? "invalid_value"
                          : rc == IISAN_ENOSPC ? "insufficient_storage"
                                               : "store_error",
                          "nothing was stored: %s", err);
        status = rc == IISAN_EINVAL   ? 400
                 : rc == IISAN_EFULL  ? 503
                 : rc == IISAN_ENOSPC ? 507
                                      : 500;
        goto out;
    }
    /* the states, one transaction per modality */
    for (int mod = 0; mod < 2; mod++) {
        uint32_t cnt = 0;
        size_t blk = sh[mod].known ? (size_t)sh[mod].nstates * sh[mod].width : 0;
        uint32_t *idx = malloc((n ? n : 1) * sizeof *idx);
        uint16_t *packed = blk ? malloc((n ? n : 1) * blk * sizeof *packed) : NULL;
        if (!idx || (blk && !packed)) {
            free(idx);
            free(packed);
            goto oom;
        }
        for (size_t i = 0; i < n; i++)
            if (has[mod][i]) {
                idx[cnt] = v[i].idx;
                memcpy(packed + (size_t)cnt * blk, st[mod] + i * blk, blk * sizeof *packed);
                cnt++;
            }
        rc = 0;
        if (cnt) {
            store_ix_wrlock(g_srv.ix);
            rc = store_put_states(s, mod, sh[mod].backbone, sh[mod].nstates, sh[mod].width, cnt,
                                  idx, packed, err, sizeof err);
            store_ix_unlock(g_srv.ix);
        }
        free(idx);
        free(packed);
        if (rc) {
            *body = fail_json(rc == IISAN_EMISMATCH ? "states_mismatch"
                              : rc == IISAN_ENOSPC  ? "insufficient_storage"
                                                    : "store_error",
                              "the items were stored, their %s states were not: %s",
                              mod ? "image" : "text", err);
            status = rc == IISAN_EMISMATCH ? 409
                     : rc == IISAN_EFULL   ? 503
                     : rc == IISAN_ENOSPC  ? 507
                                           : 500;
            goto out;
        }
    }
    /* the model: items with states get their embedding now (IISAN); others are served again
     * when they were deleted and the model knows them */
    int32_t *rows = calloc(n, sizeof *rows);
    infer_new_item *add = calloc(n, sizeof *add);
    int nadd = 0;
    if (!rows || !add) {
        free(rows);
        free(add);
        goto oom;
    }
    const int fits = m && in.kind == MODEL_IISAN;
    for (size_t i = 0; i < n; i++) {
        int with = has[0][i] || has[1][i];
        int dup = 0; /* the same id twice in one request: the last one counts */
        for (size_t j = i + 1; j < n; j++)
            dup |= !strcmp(v[j].item_id, v[i].item_id);
        if (!with || dup || !fits) continue;
        int shape_ok = 1; /* the store's states of either modality must fit the model */
        for (int mod = 0; mod < 2; mod++)
            if (sh[mod].known)
                shape_ok &= sh[mod].nstates == in.nstates[mod] && sh[mod].width == in.D[mod];
        if (!shape_ok) continue;
        add[nadd++] = (infer_new_item){v[i].item_id, v[i].idx, {NULL, NULL}};
        rows[i] = -1; /* to be filled */
    }
    /* both modalities' states from the store, where they now are (a request may update one
     * modality of an item that has both): the reader's pointers stay valid during the call */
    int32_t *got = calloc((size_t)(nadd ? nadd : 1), sizeof *got);
    int arc = 0;
    if (nadd && got) {
        store_reader *rd = NULL;
        store_ix_rdlock(g_srv.ix);
        if (store_reader_begin(s, &rd) == 0) {
            for (int a = 0; a < nadd; a++)
                for (int mod = 0; mod < 2; mod++)
                    add[a].states[mod] = store_reader_states(rd, mod, add[a].cat);
            /* a state that could not be read back is an error, not a missing modality */
            arc = store_reader_error(rd, err, sizeof err);
            if (!arc) arc = infer_add_items(m, add, nadd, got, err, sizeof err);
            store_reader_end(rd);
        } else {
            arc = iisan_fail(err, sizeof err, IISAN_EIO, "cannot read the hidden states back");
        }
        store_ix_unlock(g_srv.ix);
    }
    if (arc)
        json_array_append_new(warnings,
                              json_pack("{s:s,s:s}", "code",
                                        arc == IISAN_EFULL ? "model_full" : "not_embedded",
                                        "message", err));
    json_t *arr = json_array();
    for (size_t i = 0, a = 0; i < n; i++) {
        int midx = 0, embedded = 0;
        if (rows[i] == -1) {
            if (!arc) {
                midx = got[a];
                embedded = 1;
            }
            a++;
        }
        if (!midx && m) {
            midx = infer_lookup_cat(m, v[i].idx);
            if (midx) infer_ban(m, midx, 0); /* an undeleted item is served again */
        }
        json_t *sts = json_array();
        if (has[0][i]) json_array_append_new(sts, json_string("text"));
        if (has[1][i]) json_array_append_new(sts, json_string("image"));
        json_t *o = json_pack("{s:s,s:I,s:b,s:b,s:b,s:o}", "item_id", v[i].item_id,
                              "catalogue_index", (json_int_t)v[i].idx, "created", v[i].created,
                              "in_model", midx != 0, "embedded", embedded, "states_stored", sts);
        json_t *encd = json_array();
        for (int mod = 0; mod < 2; mod++)
            if (has[mod][i] == 2) json_array_append_new(encd, json_string(what[mod]));
        json_object_set_new(o, "encoded", encd);
        json_array_append_new(arr, o);
    }
    int any_states = 0;
    for (size_t i = 0; i < n; i++)
        any_states |= has[0][i] || has[1][i];
    if (m && in.kind != MODEL_IISAN && any_states)
        json_array_append_new(
            warnings, json_pack("{s:s,s:s}", "code", "not_embedded", "message",
                                "the model is SASRec-ID: new items are recommended after the "
                                "next retrain"));
    free(got);
    free(rows);
    free(add);
    *body = json_pack("{s:o}", "items", arr);
    if (json_array_size(warnings)) json_object_set(*body, "warnings", warnings);
    goto out;
oom:
    *body = fail_json("internal", "out of memory");
    status = 500;
out:
    json_decref(warnings);
    for (size_t i = 0; old_titles && i < n; i++)
        free(old_titles[i]);
    free(old_titles);
    free(has[0]);
    free(has[1]);
    free(st[0]);
    free(st[1]);
    free(tmp);
    free(v);
    if (m) infer_release(m);
    return status;
}

/* Under the model-load lock: a version loaded after this returns reads these items' states
 * from the store, and none is loaded while they are stored and embedded into the current one,
 * so no version misses them. */
int items_post(const items_request *q, json_t **body) {
    pthread_mutex_lock(&g_srv.load_mu);
    int status = items_post_locked(q, body);
    pthread_mutex_unlock(&g_srv.load_mu);
    return status;
}

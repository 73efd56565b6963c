/* POST /items: catalogue records, hidden states (sent, or computed from the
 * title by the configured text encoder) and, for an IISAN model, the items'
 * embeddings computed on the spot (infer_add_items) so that they are
 * recommendable at once. Everything is stored before the answer: an
 * acknowledged item survives kill -9, and the next model load embeds it from
 * the store again (core/infer.h). The encoders run outside the model-load lock;
 * the lock covers only storing and publishing (job_publish). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/encoder_bert.h"
#include "core/encoder_vit.h"
#include "core/image.h"
#include "kernels/half.h"
#include "server/common.h"
#include "server/serve.h"
#include "server/serve_state.h"

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

static const char *const what[2] = {"text", "image"};

/* one request's work, filled step by step */
typedef struct {
    const items_request *q;
    size_t n;
    shape sh[2];
    const char *enc[2]; /* the encoder of each modality (NULL: none) */
    int nenc[2];        /* items to encode, per modality */
    int *has[2];        /* per item: 0 no states, 1 sent, 2 encoded here */
    uint16_t *st[2];    /* per item, fp16 [nstates, width] */
    float *tmp;         /* one item's states as floats */
    store_item_put *v;  /* the catalogue records (v[i].idx once stored) */
    char **old_titles;  /* kept titles of items sent without one */
    int32_t *emb;       /* per item: its model row when embedded here, else 0 */
    json_t *warnings;
    json_t *body; /* the answer once a step failed */
    int status;
} items_job;

/* a step failed: the error answer. Returns -1 */
static int job_fail(items_job *j, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int job_fail(items_job *j, int status, const char *code, const char *fmt, ...) {
    char msg[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    j->body = json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", msg);
    j->status = status;
    return -1;
}

static int job_oom(items_job *j) { return job_fail(j, 500, "internal", "out of memory"); }

static void job_warn(items_job *j, const char *code, const char *msg) {
    json_array_append_new(j->warnings, json_pack("{s:s,s:s}", "code", code, "message", msg));
}

/* the shape each modality must have (the store's, else model m's), and the configured
 * encoders, unless the store's states of that modality are another backbone's */
static void job_shapes(items_job *j, infer_model *m) {
    infer_info in = {0};
    if (m) infer_get_info(m, &in);
    for (int mod = 0; mod < 2; mod++) {
        store_states_info si;
        memset(&j->sh[mod], 0, sizeof j->sh[mod]);
        store_ix_rdlock(g_srv.ix);
        int rc = store_states_info_get(store_ix_store(g_srv.ix), mod, &si);
        store_ix_unlock(g_srv.ix);
        if (!rc) {
            j->sh[mod] = (shape){si.nstates, si.width, "", 1};
            snprintf(j->sh[mod].backbone, sizeof j->sh[mod].backbone, "%s", si.backbone);
        } else if (m && in.kind == MODEL_IISAN) {
            j->sh[mod] = (shape){in.nstates[mod], in.D[mod], "api", 1};
        }
    }
    j->enc[0] = serve_encoder_backbone();
    j->enc[1] = serve_image_encoder_backbone();
    for (int mod = 0; mod < 2; mod++) {
        const shape *sh = &j->sh[mod];
        if (!j->enc[mod] || !sh->known || !strcmp(sh->backbone, j->enc[mod]) ||
            !strcmp(sh->backbone, "api"))
            continue;
        j->enc[mod] = NULL;
        char msg[300];
        snprintf(msg, sizeof msg,
                 "the store's %s states come from backbone '%s', not the configured "
                 "%s_model's; nothing is encoded for that modality",
                 what[mod], sh->backbone, what[mod]);
        job_warn(j, "encoder_mismatch", msg);
    }
}

/* the shapes of the states sent (the first item fixes an unknown shape): 0 or -1 (422) */
static int job_check_sent(items_job *j) {
    for (size_t i = 0; i < j->n; i++)
        for (int mod = 0; mod < 2; mod++) {
            json_t *js = j->q->v[i].states[mod];
            if (!js) continue;
            shape *sh = &j->sh[mod];
            size_t rows = json_array_size(js), cnt = req_states_flatten(js, NULL, 0);
            json_t *r0 = json_array_get(js, 0);
            int nested = json_is_array(r0);
            if (!sh->known) {
                if (!nested)
                    return job_fail(j, 422, "unknown_shape",
                                    "item %zu: the store holds no %s states yet and no model "
                                    "fixes their shape: send them as [L+1][D] rows",
                                    i, what[mod]);
                *sh = (shape){(int)rows, (int)json_array_size(r0), "api", 1};
            }
            size_t want = (size_t)sh->nstates * sh->width;
            if (cnt != want || (nested && rows != (size_t)sh->nstates))
                return job_fail(j, 422, "wrong_shape",
                                "item %zu ('%s'): %s states must be %d x %d numbers, got %s%zu", i,
                                j->q->v[i].item_id, what[mod], sh->nstates, sh->width,
                                nested ? "rows: " : "", nested ? rows : cnt);
            j->has[mod][i] = 1;
        }
    return 0;
}

/* item i has modality mod to encode (a title without text states, an image without image
 * states) */
static int wants_encoding(const items_job *j, size_t i, int mod) {
    const item_entry *x = &j->q->v[i];
    int there = mod ? x->image != NULL : x->has_title && x->title_len;
    return there && !j->has[mod][i];
}

/* what to encode, and the encoders' shapes against the store's: 0 or -1 (422, 409) */
static int job_plan_encoding(items_job *j) {
    for (size_t i = 0; i < j->n; i++) {
        if (j->enc[0] && wants_encoding(j, i, IISAN_TEXT)) j->nenc[0]++;
        if (!wants_encoding(j, i, IISAN_IMAGE)) continue;
        if (!j->enc[1])
            return job_fail(j, 422, g_enc.v ? "encoder_mismatch" : "no_image_model",
                            "item %zu ('%s') has an image, but %s", i, j->q->v[i].item_id,
                            g_enc.v ? "the store's image states come from another backbone"
                                    : "no image_model is configured to encode it");
        j->nenc[1]++;
    }
    for (int mod = 0; mod < 2; mod++) {
        if (!j->nenc[mod]) continue;
        shape *sh = &j->sh[mod];
        int ns, w;
        encoder_shape(mod, &ns, &w);
        if (sh->known && (ns != sh->nstates || w != sh->width))
            return job_fail(j, 409, "encoder_mismatch",
                            "the %s encoder gives %d x %d states; the store holds %d x %d",
                            what[mod], ns, w, sh->nstates, sh->width);
        if (!sh->known || !strcmp(sh->backbone, "api")) *sh = (shape){ns, w, "", 1};
        snprintf(sh->backbone, sizeof sh->backbone, "%s", j->enc[mod]);
    }
    return 0;
}

/* the states' buffers, the sent ones converted to fp16: 0 or -1 (out of memory) */
static int job_sent_states(items_job *j) {
    size_t cap = 1;
    for (int mod = 0; mod < 2; mod++) {
        if (!j->sh[mod].known) continue;
        size_t blk = (size_t)j->sh[mod].nstates * j->sh[mod].width;
        j->st[mod] = malloc((j->n ? j->n : 1) * blk * sizeof(uint16_t));
        if (!j->st[mod]) return job_oom(j);
        if (blk > cap) cap = blk;
    }
    j->tmp = malloc(cap * sizeof *j->tmp);
    if (!j->tmp) return job_oom(j);
    for (size_t i = 0; i < j->n; i++)
        for (int mod = 0; mod < 2; mod++)
            if (j->has[mod][i]) {
                size_t blk = (size_t)j->sh[mod].nstates * j->sh[mod].width;
                req_states_flatten(j->q->v[i].states[mod], j->tmp, blk);
                iisan_cpu_float_to_half(j->st[mod] + i * blk, j->tmp, blk);
            }
    return 0;
}

/* BERT / ViT over what job_plan_encoding chose, one encoding at a time (the encoders'
 * workspaces), without the model-load lock: 0 or -1 (422, 503, 500; nothing stored) */
static int job_encode(items_job *j) {
    if (!j->nenc[0] && !j->nenc[1]) return 0;
    double t0 = serve_now();
    pthread_mutex_lock(&g_enc.mu);
    int rc = 0;
    char eerr[300] = "";
    size_t bad = 0;
    for (size_t i = 0; !rc && i < j->n; i++)
        for (int mod = 0; !rc && mod < 2; mod++) {
            if (!j->nenc[mod] || !wants_encoding(j, i, mod)) continue;
            size_t blk = (size_t)j->sh[mod].nstates * j->sh[mod].width;
            rc = encode_one(mod, &j->q->v[i], j->tmp, eerr, sizeof eerr);
            if (!rc) {
                iisan_cpu_float_to_half(j->st[mod] + i * blk, j->tmp, blk);
                j->has[mod][i] = 2; /* encoded here */
            }
            bad = i;
        }
    pthread_mutex_unlock(&g_enc.mu);
    if (!rc) {
        log_event("debug", "items_encoded", "text=%d image=%d seconds=%.3f", j->nenc[0], j->nenc[1],
                  serve_now() - t0);
        return 0;
    }
    return job_fail(j,
                    rc == IISAN_EFORMAT    ? 422
                    : rc == IISAN_EBACKEND ? 503
                                           : 500,
                    rc == IISAN_EFORMAT    ? "bad_image"
                    : rc == IISAN_EBACKEND ? "backend_failed"
                                           : "encode_failed",
                    "item %zu ('%s'): %s; nothing was stored", bad, j->q->v[bad].item_id, eerr);
}

/* under the load lock, before anything is stored: the store's shape of each modality to be
 * stored is still the one the states were checked or encoded against (another request may
 * have stored the first states meanwhile): 0 or -1 (409) */
static int job_recheck(items_job *j) {
    for (int mod = 0; mod < 2; mod++) {
        int any = 0;
        for (size_t i = 0; i < j->n; i++)
            any |= j->has[mod][i] != 0;
        store_states_info si;
        store_ix_rdlock(g_srv.ix);
        int rc = any ? store_states_info_get(store_ix_store(g_srv.ix), mod, &si) : -1;
        store_ix_unlock(g_srv.ix);
        if (!rc && (si.nstates != j->sh[mod].nstates || si.width != j->sh[mod].width))
            return job_fail(j, 409, "states_mismatch",
                            "nothing was stored: the store's %s states became %d x %d while "
                            "this request's %d x %d were prepared",
                            what[mod], si.nstates, si.width, j->sh[mod].nstates, j->sh[mod].width);
    }
    return 0;
}

/* the catalogue records (an item sent without a title keeps the one it has): 0 or -1 */
static int job_store_records(items_job *j) {
    for (size_t i = 0; i < j->n; i++) {
        const item_entry *x = &j->q->v[i];
        j->v[i] = (store_item_put){.item_id = x->item_id, .title = x->title, .tlen = x->title_len};
        if (x->has_title) continue;
        store_item_info *inf = malloc(sizeof *inf);
        if (!inf) return job_oom(j);
        if (store_ix_item_info(g_srv.ix, x->item_id, inf) == 0 && inf->titled) {
            j->old_titles[i] = strdup(inf->title);
            if (j->old_titles[i]) {
                j->v[i].title = j->old_titles[i];
                j->v[i].tlen = strlen(j->old_titles[i]);
            }
        }
        free(inf);
    }
    char err[400];
    int rc = store_ix_items_put(g_srv.ix, j->v, j->n, err, sizeof err);
    if (!rc) return 0;
    return job_fail(j,
                    rc == IISAN_EINVAL   ? 400
                    : rc == IISAN_EFULL  ? 503
                    : rc == IISAN_ENOSPC ? 507
                                         : 500,
                    rc == IISAN_EINVAL   ? "invalid_value"
                    : rc == IISAN_ENOSPC ? "insufficient_storage"
                                         : "store_error",
                    "nothing was stored: %s", err);
}

/* modality mod's states, one transaction: 0 or -1 */
static int job_store_states_of(items_job *j, int mod) {
    const shape *sh = &j->sh[mod];
    size_t n = j->n ? j->n : 1, blk = sh->known ? (size_t)sh->nstates * sh->width : 0;
    uint32_t cnt = 0, *idx = malloc(n * sizeof *idx);
    uint16_t *packed = blk ? malloc(n * blk * sizeof *packed) : NULL;
    if (!idx || (blk && !packed)) {
        free(idx);
        free(packed);
        return job_oom(j);
    }
    for (size_t i = 0; i < j->n; i++)
        if (j->has[mod][i]) {
            idx[cnt] = j->v[i].idx;
            memcpy(packed + (size_t)cnt * blk, j->st[mod] + i * blk, blk * sizeof *packed);
            cnt++;
        }
    int rc = 0;
    char err[400];
    if (cnt) {
        store_ix_wrlock(g_srv.ix);
        rc = store_put_states(store_ix_store(g_srv.ix), mod, sh->backbone, sh->nstates, sh->width,
                              cnt, idx, packed, err, sizeof err);
        store_ix_unlock(g_srv.ix);
    }
    free(idx);
    free(packed);
    if (!rc) return 0;
    return job_fail(j,
                    rc == IISAN_EMISMATCH ? 409
                    : rc == IISAN_EFULL   ? 503
                    : rc == IISAN_ENOSPC  ? 507
                                          : 500,
                    rc == IISAN_EMISMATCH ? "states_mismatch"
                    : rc == IISAN_ENOSPC  ? "insufficient_storage"
                                          : "store_error",
                    "the items were stored, their %s states were not: %s", what[mod], err);
}

/* the items model m can embed now: IISAN, with states of the model's shape, the last of
 * each id (the same id twice in one request: the last one counts). Their count */
static int job_embeddable(const items_job *j, const infer_info *in, infer_new_item *add) {
    int nadd = 0, shape_ok = 1; /* the store's states of either modality must fit the model */
    for (int mod = 0; mod < 2; mod++)
        if (j->sh[mod].known)
            shape_ok &= j->sh[mod].nstates == in->nstates[mod] && j->sh[mod].width == in->D[mod];
    if (in->kind != MODEL_IISAN || !shape_ok) return 0;
    for (size_t i = 0; i < j->n; i++) {
        int dup = 0;
        for (size_t k = i + 1; k < j->n; k++)
            dup |= !strcmp(j->v[k].item_id, j->v[i].item_id);
        if ((j->has[0][i] || j->has[1][i]) && !dup)
            add[nadd++] = (infer_new_item){j->v[i].item_id, j->v[i].idx, {NULL, NULL}};
    }
    return nadd;
}

/* embeds add[0..nadd) into m from both modalities' states in the store (got: their rows):
 * 0 or an IISAN_E* with err */
static int embed_stored(infer_model *m, infer_new_item *add, int nadd, int32_t *got, char *err,
                        size_t errlen) {
    store_reader *rd = NULL;
    int rc;
    store_ix_rdlock(g_srv.ix);
    if (store_reader_begin(store_ix_store(g_srv.ix), &rd) == 0) {
        /* the reader's pointers stay valid during the call */
        for (int a = 0; a < nadd; a++)
            for (int mod = 0; mod < 2; mod++)
                add[a].states[mod] = store_reader_states(rd, mod, add[a].cat);
        /* a state that could not be read back is an error, not a missing modality */
        rc = store_reader_error(rd, err, errlen);
        if (!rc) rc = infer_add_items(m, add, nadd, got, err, errlen);
        store_reader_end(rd);
    } else {
        rc = iisan_fail(err, errlen, IISAN_EIO, "cannot read the hidden states back");
    }
    store_ix_unlock(g_srv.ix);
    return rc;
}

/* the embeddings into m (j->emb), from the states where they now are in the store (a request
 * may update one modality of an item that has both); a failure is a warning: the items are
 * stored and the next load embeds them. 0 or -1 (out of memory) */
static int job_embed(items_job *j, infer_model *m) {
    infer_info in;
    infer_get_info(m, &in);
    infer_new_item *add = calloc(j->n ? j->n : 1, sizeof *add);
    int32_t *got = calloc(j->n ? j->n : 1, sizeof *got);
    if (!add || !got) {
        free(add);
        free(got);
        return job_oom(j);
    }
    int nadd = job_embeddable(j, &in, add);
    char err[400];
    int rc = nadd ? embed_stored(m, add, nadd, got, err, sizeof err) : 0;
    if (rc) job_warn(j, rc == IISAN_EFULL ? "model_full" : "not_embedded", err);
    /* add[] follows the items' order */
    for (size_t i = 0, a = 0; !rc && i < j->n && (int)a < nadd; i++)
        if (j->v[i].item_id == add[a].item_id) j->emb[i] = got[a++];
    free(add);
    free(got);
    return 0;
}

/* the answer: each item's record, whether m serves it (an undeleted item is served again) */
static void job_answer(items_job *j, infer_model *m) {
    json_t *arr = json_array();
    int any_states = 0;
    for (size_t i = 0; i < j->n; i++) {
        int midx = j->emb[i];
        if (!midx && m) {
            midx = infer_lookup_cat(m, j->v[i].idx);
            if (midx) infer_ban(m, midx, 0);
        }
        json_t *sts = json_array(), *encd = json_array();
        for (int mod = 0; mod < 2; mod++) {
            if (j->has[mod][i]) json_array_append_new(sts, json_string(what[mod]));
            if (j->has[mod][i] == 2) json_array_append_new(encd, json_string(what[mod]));
        }
        any_states |= j->has[0][i] || j->has[1][i];
        json_array_append_new(arr,
                              json_pack("{s:s,s:I,s:b,s:b,s:b,s:o,s:o}", "item_id", j->v[i].item_id,
                                        "catalogue_index", (json_int_t)j->v[i].idx, "created",
                                        j->v[i].created, "in_model", midx != 0, "embedded",
                                        j->emb[i] != 0, "states_stored", sts, "encoded", encd));
    }
    infer_info in = {0};
    if (m) infer_get_info(m, &in);
    if (m && in.kind != MODEL_IISAN && any_states)
        job_warn(j, "not_embedded",
                 "the model is SASRec-ID: new items are recommended after the next retrain");
    j->body = json_pack("{s:o}", "items", arr);
    if (json_array_size(j->warnings)) json_object_set(j->body, "warnings", j->warnings);
}

/* validated, and states converted or encoded: nothing stored yet, no lock held */
static int job_prepare(items_job *j) {
    j->v = calloc(j->n ? j->n : 1, sizeof *j->v);
    j->old_titles = calloc(j->n ? j->n : 1, sizeof *j->old_titles);
    j->emb = calloc(j->n ? j->n : 1, sizeof *j->emb);
    for (int mod = 0; mod < 2; mod++)
        j->has[mod] = calloc(j->n ? j->n : 1, sizeof(int));
    if (!j->warnings || !j->v || !j->old_titles || !j->emb || !j->has[0] || !j->has[1])
        return job_oom(j);
    infer_model *m0 = serve_model_get(); /* the shapes it fixes; re-checked at publication */
    job_shapes(j, m0);
    if (m0) infer_release(m0);
    if (job_check_sent(j) || job_plan_encoding(j) || job_sent_states(j)) return -1;
    return job_encode(j);
}

/* Under the model-load lock: a version loaded after this returns reads these items' states
 * from the store, and none is loaded while they are stored and embedded into the current one,
 * so no version misses them. The model is the one served now, whatever served while the
 * states were encoded. */
static void job_publish(items_job *j) {
    pthread_mutex_lock(&g_srv.load_mu);
    infer_model *m = serve_model_get();
    int rc = job_recheck(j) || job_store_records(j);
    for (int mod = 0; !rc && mod < 2; mod++)
        rc = job_store_states_of(j, mod);
    if (!rc && m) rc = job_embed(j, m);
    if (!rc) job_answer(j, m);
    if (m) infer_release(m);
    pthread_mutex_unlock(&g_srv.load_mu);
}

/* The expensive part, BERT / ViT, runs before the load lock is taken; the lock is held only
 * to store the items and publish their embeddings (job_publish). */
int items_post(const items_request *q, json_t **body) {
    items_job j = {.q = q, .n = q->n, .warnings = json_array(), .status = 200};
    if (!job_prepare(&j)) job_publish(&j);
    *body = j.body;
    json_decref(j.warnings);
    for (size_t i = 0; j.old_titles && i < j.n; i++)
        free(j.old_titles[i]);
    free(j.old_titles);
    for (int mod = 0; mod < 2; mod++) {
        free(j.has[mod]);
        free(j.st[mod]);
    }
    free(j.tmp);
    free(j.v);
    free(j.emb);
    return j.status;
}

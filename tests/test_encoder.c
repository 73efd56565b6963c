/* The built-in text encoder against Hugging Face (fixtures written by
 * tests/golden_encoder/gen.py):
 *  - the WordPiece tokenizer: hand-made cases, the golden titles and 1000
 *    "torture" strings with the tiny vocabulary (always), and every title of
 *    the Scientific catalogue plus the torture strings with all-MiniLM-L6-v2's
 *    vocabulary (where deploy/install-minilm.sh has installed it);
 *  - the encoder: the tiny random BertModel's [CLS] states of 20 titles within
 *    1e-4, the same model saved with a "bert." prefix, old LayerNorm names and
 *    F16 weights, load errors, and MiniLM's states where installed;
 *  - encode_items_text and store_items_missing_states on a temporary store. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/encode_items.h"
#include "core/encoder_bert.h"
#include "core/encoder_vit.h"
#include "core/wordpiece.h"
#include "kernels/backend.h"
#include "kernels/half.h"
#include "store/safetensors.h"
#include "store/states_query.h"
#include "store/store.h"
#include "tests/test.h"

#define GOLD "tests/golden_encoder/"
#define TINY GOLD "tiny-bert"
#define SCI_ITEMS "../shared/data/amazon/scientific/items.tsv"

static iisan_backend *be;

/* ---- fixture helpers ---- */

static const st_tensor *need(const st_file *f, const char *name) {
    const st_tensor *t = st_find(f, name);
    CHECKF(t != NULL, "fixture tensor %s missing", name);
    return t;
}

/* text i of a U8 blob + I64 offsets pair: pointer and length */
static const char *blob_at(const st_file *f, const char *name, int i, size_t *len) {
    char offname[64];
    snprintf(offname, sizeof offname, "%s.off", name);
    const st_tensor *b = st_find(f, name), *o = st_find(f, offname);
    int64_t a, z;
    memcpy(&a, (const int64_t *)o->data + i, 8);
    memcpy(&z, (const int64_t *)o->data + i + 1, 8);
    *len = (size_t)(z - a);
    return (const char *)b->data + a;
}

static char *dup_n(const char *s, size_t n) {
    char *d = malloc(n + 1);
    memcpy(d, s, n);
    d[n] = 0;
    return d;
}

static int32_t i32_at(const st_tensor *t, size_t i) {
    int32_t v;
    memcpy(&v, (const char *)t->data + 4 * i, 4);
    return v;
}

static float f32_at(const st_tensor *t, size_t i) {
    float v;
    memcpy(&v, (const char *)t->data + 4 * i, 4);
    return v;
}

/* max over elements of |a - b| / (1e-4 + 1e-4 |b|): <= 1 passes */
static double close_ratio(const float *a, const st_tensor *ref, size_t off, size_t n,
                          double *maxabs) {
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double b = f32_at(ref, off + i), d = fabs(a[i] - b);
        double r = d / (1e-4 + 1e-4 * fabs(b));
        if (r > worst) worst = r;
        if (maxabs && d > *maxabs) *maxabs = d;
    }
    return worst;
}

/* ---- tokenizer on hand-made cases ---- */

static const char small_vocab[] = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n" /* 0..4 */
                                  "un\n##aff\n##able\n&\namp\n;\n"       /* 5..10 */
                                  "cafe\nresume\na\n##a\n-\nlab\n"       /* 11..16 */
                                  "显\n微\n3\n.\n5\n##mm\n"              /* 17..22 */
                                  "i\nistanbul\n";                       /* 23..24 */

static int tok(const wp_vocab *v, const char *s, int32_t *ids, int cap) {
    return wp_tokenize(v, s, strlen(s), ids, cap);
}

#define IDS_EQ(v, text, ...)                                                                       \
    do {                                                                                           \
        int32_t want_[] = {__VA_ARGS__}, got_[256];                                                \
        int nw_ = (int)(sizeof want_ / sizeof want_[0]), ng_ = tok(v, text, got_, 256);            \
        int same_ = ng_ == nw_;                                                                    \
        for (int i_ = 0; same_ && i_ < nw_; i_++)                                                  \
            same_ = got_[i_] == want_[i_];                                                         \
        CHECKF(same_, "tokenize(\"%s\"): %d ids, first %d", text, ng_, ng_ > 0 ? got_[0] : -1);    \
    } while (0)

static void test_tokenizer_cases(void) {
    wp_vocab *v;
    char err[256];
    CHECKF(wp_parse(&v, small_vocab, sizeof small_vocab - 1, "small", err, sizeof err) == 0, "%s",
           err);
    CHECK(wp_size(v) == 25);
    CHECK(wp_id_unk(v) == 1 && wp_id_cls(v) == 2 && wp_id_sep(v) == 3 && wp_id_pad(v) == 0);
    CHECK(wp_lookup(v, "##aff") == 6 && wp_lookup(v, "nope") == -1);
    CHECK(!strcmp(wp_token(v, 7), "##able") && wp_token(v, 25) == NULL);
    IDS_EQ(v, "unaffable", 5, 6, 7);
    IDS_EQ(v, "UnAffABLE", 5, 6, 7);   /* lower-cased */
    IDS_EQ(v, "&amp;", 8, 9, 10);      /* entities are not decoded */
    IDS_EQ(v, "Café  RÉSUMÉ", 11, 12); /* accents stripped */
    IDS_EQ(v, "lab-lab", 16, 15, 16);  /* punctuation split */
    IDS_EQ(v, "unaffablex", 1);        /* no match: the word is [UNK] */
    IDS_EQ(v, "显微", 17, 18);         /* CJK characters split */
    IDS_EQ(v, "3.5mm", 19, 20, 21, 22);
    IDS_EQ(v, "[CLS]lab[SEP] [MASK]", 2, 16, 3, 4); /* specials as written */
    IDS_EQ(v, "[cls]", 1, 1, 1);                    /* "[" "cls" "]", none in the vocab */
    IDS_EQ(v, "İstanbul", 24);                      /* U+0130 -> i + U+0307 -> i */
    IDS_EQ(v, "lab\tlab\nlab\u3000lab\u2028lab", 16, 16, 16, 16, 16);
    IDS_EQ(v,
           "l\x01"
           "ab\xc2\xad",
           16); /* controls and soft hyphen dropped */
    IDS_EQ(v, "");
    IDS_EQ(v, "  \t ");
    IDS_EQ(v, "lab \xff lab", 16, 16); /* an invalid byte is U+FFFD, dropped */

    /* words of 100 code points are wordpieced, 101 are [UNK] */
    char w[128];
    memset(w, 'a', 100);
    w[100] = 0;
    int32_t ids[128];
    CHECK(tok(v, w, ids, 128) == 100 && ids[0] == 13 && ids[99] == 14);
    w[100] = 'a';
    w[101] = 0;
    CHECK(tok(v, w, ids, 128) == 1 && ids[0] == 1);
    /* cap: the whole count is returned, only cap ids are written */
    ids[2] = -7;
    CHECK(tok(v, "lab lab lab lab", ids, 2) == 4 && ids[2] == -7);

    /* the model input: [CLS] ... [SEP] [PAD]..., truncated to max_len */
    int32_t in[8], mask[8];
    CHECK(wp_encode(v, "lab lab", 7, 6, in, mask) == 4);
    int32_t want[6] = {2, 16, 16, 3, 0, 0}, wm[6] = {1, 1, 1, 1, 0, 0};
    CHECK(!memcmp(in, want, sizeof want) && !memcmp(mask, wm, sizeof wm));
    CHECK(wp_encode(v, "lab lab lab lab lab lab lab", 27, 5, in, mask) == 5);
    CHECK(in[0] == 2 && in[3] == 16 && in[4] == 3 && mask[4] == 1);
    CHECK(wp_encode(v, "", 0, 4, in, mask) == 2 && in[1] == 3 && in[2] == 0 && mask[2] == 0);
    CHECK(wp_encode(v, "lab", 3, 1, in, mask) == IISAN_EINVAL);
    wp_free(v);

    /* vocabulary files: CRLF lines, a later duplicate wins, specials required */
    const char crlf[] = "[PAD]\r\n[UNK]\r\n[CLS]\r\n[SEP]\r\nx\r\nx\r\ny";
    CHECK(wp_parse(&v, crlf, sizeof crlf - 1, "crlf", err, sizeof err) == 0);
    CHECK(wp_size(v) == 7 && wp_lookup(v, "x") == 5 && wp_lookup(v, "y") == 6);
    wp_free(v);
    const char nocls[] = "[PAD]\n[UNK]\n[SEP]\n";
    CHECK(wp_parse(&v, nocls, sizeof nocls - 1, "nocls", err, sizeof err) == IISAN_EFORMAT);
    CHECKF(strstr(err, "nocls") && strstr(err, "[CLS]"), "%s", err);
    CHECK(wp_load(&v, "/nonexistent/vocab.txt", err, sizeof err) == IISAN_EIO);
    CHECKF(strstr(err, "/nonexistent/vocab.txt") != NULL, "%s", err);
}

/* ids of texts against a fixture's flat ids + counts */
static void check_ids(const wp_vocab *v, const char *what, int n,
                      const char *(*text)(void *, int, size_t *), void *arg, const st_tensor *ids,
                      const st_tensor *count, int u16) {
    size_t off = 0;
    int bad = 0, first_bad = -1;
    int32_t *buf = malloc(sizeof *buf * 4096);
    for (int i = 0; i < n; i++) {
        size_t len;
        const char *t = text(arg, i, &len);
        int k = wp_tokenize(v, t, len, buf, 4096);
        int want_n;
        if (u16) {
            uint16_t c;
            memcpy(&c, (const uint16_t *)count->data + i, 2);
            want_n = c;
        } else {
            want_n = i32_at(count, (size_t)i);
        }
        int same = k == want_n;
        for (int j = 0; same && j < k; j++) {
            int32_t w;
            if (u16) {
                uint16_t c;
                memcpy(&c, (const uint16_t *)ids->data + off + j, 2);
                w = c;
            } else {
                w = i32_at(ids, off + j);
            }
            same = buf[j] == w;
        }
        if (!same && bad++ == 0) first_bad = i;
        off += (size_t)want_n;
    }
    free(buf);
    CHECKF(bad == 0, "%s: %d of %d texts tokenized differently (first: #%d)", what, bad, n,
           first_bad);
    CHECKF(off == st_numel(ids), "%s: fixture ids %zu, counted %zu", what, st_numel(ids), off);
}

static const char *fixture_text(void *arg, int i, size_t *len) {
    return blob_at(arg, "torture", i, len);
}

static void test_tiny_tokenizer(void) {
    st_file *f = NULL;
    char err[512];
    wp_vocab *v = NULL;
    CHECKF(st_open(&f, GOLD "tiny.safetensors", err, sizeof err) == 0, "%s", err);
    CHECKF(wp_load(&v, TINY "/vocab.txt", err, sizeof err) == 0, "%s", err);
    if (!f || !v) goto out;
    const st_tensor *ids = need(f, "ids"), *mask = need(f, "mask");
    int n = (int)ids->shape[0], T = (int)ids->shape[1], bad = 0;
    for (int i = 0; i < n; i++) {
        size_t len;
        const char *t = blob_at(f, "titles", i, &len);
        int32_t got[64], gm[64];
        int r = wp_encode(v, t, len, T, got, gm);
        int same = r >= 2;
        for (int j = 0; same && j < T; j++)
            same = got[j] == i32_at(ids, (size_t)i * T + j) &&
                   gm[j] == i32_at(mask, (size_t)i * T + j);
        if (!same) {
            bad++;
            fprintf(stderr, "  golden title %d tokenized differently: %.*s\n", i, (int)len, t);
        }
    }
    CHECKF(bad == 0, "%d of %d golden titles", bad, n);
    const st_tensor *tid = need(f, "torture.ids"), *tcount = need(f, "torture.count");
    check_ids(v, "torture strings, tiny vocabulary", (int)tcount->shape[0], fixture_text, f, tid,
              tcount, 0);
out:
    wp_free(v);
    st_close(f);
}

/* ---- the tiny model ---- */

static void compare_states(const char *what, const float *got, const st_tensor *ref, int n, int S,
                           int D, double tol_ratio) {
    double worst = 0, maxabs = 0;
    for (int i = 0; i < n; i++) {
        double r =
            close_ratio(got + (size_t)i * S * D, ref, (size_t)i * S * D, (size_t)S * D, &maxabs);
        if (r > worst) worst = r;
    }
    CHECKF(worst <= tol_ratio, "%s: worst |diff| / (1e-4 + 1e-4 |ref|) = %.3g, max |diff| %.3g",
           what, worst, maxabs);
    fprintf(stderr, "  %s: max |diff| %.2e\n", what, maxabs);
}

static void test_tiny_states(void) {
    st_file *f = NULL;
    char err[512];
    bert_encoder *e = NULL;
    CHECKF(st_open(&f, GOLD "tiny.safetensors", err, sizeof err) == 0, "%s", err);
    CHECKF(bert_load(&e, be, TINY, 8, 30, err, sizeof err) == 0, "%s", err);
    if (!f || !e) goto out;
    const bert_config *c = bert_get_config(e);
    CHECK(c->layers == 2 && c->hidden == 32 && c->heads == 4 && c->intermediate == 37);
    CHECK(c->act == IISAN_ACT_GELU && c->ln_eps == 1e-12f && !strcmp(c->weights_dtype, "F32"));
    CHECK(c->name_or_path[0] == 0); /* save_pretrained drops _name_or_path */
    CHECK(bert_nstates(e) == 3 && bert_width(e) == 32);
    const st_tensor *ref = need(f, "states"), *ids = need(f, "ids"), *mask = need(f, "mask");
    int n = (int)ref->shape[0], S = (int)ref->shape[1], D = (int)ref->shape[2];
    CHECK(S == 3 && D == 32);
    char **texts = malloc(sizeof *texts * n);
    for (int i = 0; i < n; i++) {
        size_t len;
        const char *t = blob_at(f, "titles", i, &len);
        texts[i] = dup_n(t, len);
    }
    float *out = malloc(sizeof *out * (size_t)n * S * D);
    /* 20 texts in batches of 8, each padded to its longest */
    CHECK(bert_encode_texts(e, (const char *const *)texts, n, out) == 0);
    compare_states("tiny model, tokenized here", out, ref, n, S, D, 1.0);
    /* the fixture's own ids, padded to 30, one batch of 4 at a time */
    int T = (int)ids->shape[1];
    int32_t *bi = malloc(sizeof *bi * 4 * T), *bm = malloc(sizeof *bm * 4 * T);
    for (int s = 0; s < n; s += 4) {
        for (int k = 0; k < 4 * T; k++) {
            bi[k] = i32_at(ids, (size_t)s * T + k);
            bm[k] = i32_at(mask, (size_t)s * T + k);
        }
        CHECK(bert_forward(e, bi, bm, 4, T, out + (size_t)s * S * D) == 0);
    }
    compare_states("tiny model, fixture ids, padded to 30", out, ref, n, S, D, 1.0);
    /* bad input */
    bi[3] = 100000;
    CHECK(bert_forward(e, bi, bm, 1, T, out) == IISAN_EINVAL);
    bi[3] = 5;
    bm[0] = 0;
    CHECK(bert_forward(e, bi, bm, 1, T, out) == IISAN_EINVAL);
    CHECK(bert_forward(e, bi, bm, 9, T, out) == IISAN_EINVAL);
    CHECK(bert_forward(e, bi, bm, 1, 31, out) == IISAN_EINVAL);
    free(bi);
    free(bm);
    for (int i = 0; i < n; i++)
        free(texts[i]);
    free(texts);
    free(out);
out:
    bert_free(e);
    st_close(f);
}

static int copy_file(const char *from, const char *to) {
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    if (!a || !b) {
        if (a) fclose(a);
        if (b) fclose(b);
        return -1;
    }
    char buf[4096];
    size_t k;
    while ((k = fread(buf, 1, sizeof buf, a)) > 0)
        fwrite(buf, 1, k, b);
    fclose(a);
    return fclose(b);
}

static int write_text(const char *path, const char *s) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    fputs(s, f);
    return fclose(f);
}

/* the tiny checkpoint re-saved: "bert." prefix, LayerNorm gamma / beta, and
 * dtype (F32 or F16) */
static int write_variant(const char *dir, st_dtype dtype) {
    st_file *f;
    char err[512], path[512];
    if (st_open(&f, TINY "/model.safetensors", err, sizeof err)) return -1;
    st_writer *w = st_writer_new();
    void **bufs = calloc(f->n_tensors, sizeof *bufs);
    char **names = calloc(f->n_tensors, sizeof *names);
    for (size_t i = 0; i < f->n_tensors; i++) {
        const st_tensor *t = &f->tensors[i];
        char name[256];
        snprintf(name, sizeof name, "bert.%s", t->name);
        size_t n = strlen(name);
        if (strstr(name, "LayerNorm.weight")) strcpy(name + n - 6, "gamma");
        if (strstr(name, "LayerNorm.bias")) strcpy(name + n - 4, "beta");
        names[i] = strdup(name);
        size_t k = st_numel(t);
        if (dtype == ST_F16) {
            uint16_t *h = malloc(2 * k);
            for (size_t j = 0; j < k; j++)
                h[j] = iisan_float_to_half(f32_at(t, j));
            bufs[i] = h;
        } else {
            bufs[i] = malloc(4 * k);
            memcpy(bufs[i], t->data, 4 * k);
        }
        st_writer_add(w, names[i], dtype, t->ndim, t->shape, bufs[i]);
    }
    /* an extra head tensor must be ignored */
    static const float cls_w[2] = {1, 2};
    int64_t shp[1] = {2};
    st_writer_add(w, "cls.predictions.bias", ST_F32, 1, shp, cls_w);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    int rc = st_writer_write(w, path, err, sizeof err);
    st_writer_free(w);
    for (size_t i = 0; i < f->n_tensors; i++) {
        free(bufs[i]);
        free(names[i]);
    }
    free(bufs);
    free(names);
    st_close(f);
    snprintf(path, sizeof path, "%s/config.json", dir);
    rc |= copy_file(TINY "/config.json", path);
    snprintf(path, sizeof path, "%s/vocab.txt", dir);
    rc |= copy_file(TINY "/vocab.txt", path);
    return rc;
}

static void rm_dir(const char *dir) {
    static const char *files[] = {"model.safetensors", "config.json", "vocab.txt",
                                  "pytorch_model.bin"};
    char p[512];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        unlink(p);
    }
    rmdir(dir);
}

static void test_tiny_variants(void) {
    st_file *f;
    char err[512], dir[] = "/tmp/iisan-enc-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    CHECKF(st_open(&f, GOLD "tiny.safetensors", err, sizeof err) == 0, "%s", err);
    if (!f) return;
    const st_tensor *ref = need(f, "states");
    int n = (int)ref->shape[0], S = (int)ref->shape[1], D = (int)ref->shape[2];
    char **texts = malloc(sizeof *texts * n);
    for (int i = 0; i < n; i++) {
        size_t len;
        const char *t = blob_at(f, "titles", i, &len);
        texts[i] = dup_n(t, len);
    }
    float *out = malloc(sizeof *out * (size_t)n * S * D);
    bert_encoder *e;
    CHECK(write_variant(dir, ST_F32) == 0);
    CHECKF(bert_load(&e, be, dir, 32, 30, err, sizeof err) == 0, "%s", err);
    if (e) {
        CHECK(bert_encode_texts(e, (const char *const *)texts, n, out) == 0);
        compare_states("\"bert.\" prefix, gamma/beta", out, ref, n, S, D, 1.0);
        bert_free(e);
    }
    CHECK(write_variant(dir, ST_F16) == 0);
    CHECKF(bert_load(&e, be, dir, 32, 30, err, sizeof err) == 0, "%s", err);
    if (e) {
        CHECK(!strcmp(bert_get_config(e)->weights_dtype, "F16"));
        CHECK(bert_encode_texts(e, (const char *const *)texts, n, out) == 0);
        /* fp16 weights: within 3e-2 of the fp32 model's states (measured 3.4e-3) */
        compare_states("F16 weights", out, ref, n, S, D, 300.0);
        bert_free(e);
    }

    /* load errors name the file and the problem */
    char path[600];
    snprintf(path, sizeof path, "%s/config.json", dir);
    write_text(path, "{\"num_hidden_layers\": 2, \"hidden_size\": 32, \"num_attention_heads\": 4,"
                     " \"intermediate_size\": 37, \"vocab_size\": 347, \"hidden_act\": "
                     "\"gelu_new\", \"max_position_embeddings\": 40}");
    CHECK(bert_load(&e, be, dir, 4, 30, err, sizeof err) == IISAN_EFORMAT);
    CHECKF(strstr(err, "config.json") && strstr(err, "gelu_new"), "%s", err);
    write_text(path, "{\"num_hidden_layers\": 2, \"hidden_size\": 32, \"num_attention_heads\": 4,"
                     " \"intermediate_size\": 36, \"vocab_size\": 347, "
                     "\"max_position_embeddings\": 40}");
    CHECK(bert_load(&e, be, dir, 4, 30, err, sizeof err) == IISAN_EFORMAT);
    CHECKF(strstr(err, "intermediate.dense.weight") && strstr(err, "[37, 32]") &&
               strstr(err, "[36, 32]"),
           "%s", err);
    write_text(path, "{\"num_hidden_layers\": 3, \"hidden_size\": 32, \"num_attention_heads\": 4,"
                     " \"intermediate_size\": 37, \"vocab_size\": 347, "
                     "\"max_position_embeddings\": 40}");
    CHECK(bert_load(&e, be, dir, 4, 30, err, sizeof err) == IISAN_EFORMAT);
    CHECKF(strstr(err, "no tensor bert.encoder.layer.2.") != NULL, "%s", err);
    write_text(path, "{\"num_hidden_layers\": 2, \"hidden_size\": 32, \"num_attention_heads\": 5,"
                     " \"intermediate_size\": 37, \"vocab_size\": 347}");
    CHECK(bert_load(&e, be, dir, 4, 30, err, sizeof err) == IISAN_EFORMAT);
    CHECKF(strstr(err, "num_attention_heads") != NULL, "%s", err);
    write_text(path, "{\"num_hidden_layers\": 2, \"hidden_size\": 32, \"num_attention_heads\": 4,"
                     " \"intermediate_size\": 37, \"vocab_size\": 347, "
                     "\"max_position_embeddings\": 20}");
    CHECK(bert_load(&e, be, dir, 4, 30, err, sizeof err) == IISAN_EINVAL);
    CHECKF(strstr(err, "max_position_embeddings") != NULL, "%s", err);
    write_text(path, "{\"hidden_size\": 32,");
    CHECK(bert_load(&e, be, dir, 4, 30, err, sizeof err) == IISAN_EFORMAT);
    CHECKF(strstr(err, "config.json:") != NULL, "%s", err);
    copy_file(TINY "/config.json", path);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/pytorch_model.bin", dir);
    write_text(path, "not really");
    CHECK(bert_load(&e, be, dir, 4, 30, err, sizeof err) == IISAN_EIO);
    CHECKF(strstr(err, "pytorch_model.bin") && strstr(err, "convert"), "%s", err);
    CHECK(bert_load(&e, be, "/nonexistent-model", 4, 30, err, sizeof err) == IISAN_EIO);
    CHECKF(strstr(err, "/nonexistent-model/config.json") != NULL, "%s", err);

    for (int i = 0; i < n; i++)
        free(texts[i]);
    free(texts);
    free(out);
    st_close(f);
    rm_dir(dir);
}

/* ---- the tiny ViT ---- */

static void test_tiny_vit(void) {
    st_file *f = NULL;
    char err[512];
    vit_encoder *e = NULL;
    CHECKF(st_open(&f, GOLD "tiny_vit.safetensors", err, sizeof err) == 0, "%s", err);
    CHECKF(vit_load(&e, be, GOLD "tiny-vit", 2, err, sizeof err) == 0, "%s", err);
    if (!f || !e) goto out;
    const vit_config *c = vit_get_config(e);
    CHECK(c->layers == 2 && c->hidden == 32 && c->heads == 4 && c->intermediate == 37);
    CHECK(c->image_size == 32 && c->patch_size == 8 && c->channels == 3 && c->qkv_bias);
    CHECK(vit_nstates(e) == 3 && vit_width(e) == 32);
    const st_tensor *px = need(f, "pixels"), *ref = need(f, "states");
    int n = (int)px->shape[0], S = vit_nstates(e), D = vit_width(e);
    size_t per = (size_t)3 * 32 * 32;
    float *pixels = malloc(sizeof *pixels * n * per), *out = malloc(sizeof *out * n * S * D);
    memcpy(pixels, px->data, sizeof *pixels * n * per);
    /* 3 images in batches of 2 and 1 */
    CHECK(vit_forward(e, pixels, 2, out) == 0);
    CHECK(vit_forward(e, pixels + 2 * per, 1, out + (size_t)2 * S * D) == 0);
    compare_states("tiny ViT", out, ref, n, S, D, 1.0);
    CHECK(vit_forward(e, pixels, 3, out) == IISAN_EINVAL);
    free(pixels);
    free(out);
out:
    vit_free(e);
    st_close(f);
}

/* ---- encode_items_text on a store ---- */

typedef struct {
    int calls;
    uint32_t done, total;
    uint64_t tok_done, tok_total;
} progress_log;

static void log_progress(void *arg, uint32_t done, uint32_t total, uint64_t tok_done,
                         uint64_t tok_total) {
    progress_log *p = arg;
    p->calls++;
    p->done = done;
    p->total = total;
    p->tok_done = tok_done;
    p->tok_total = tok_total;
}

static void test_encode_items(void) {
    char dir[] = "/tmp/iisan-enc-store-XXXXXX", err[512], path[600];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(path, sizeof path, "%s/items.tsv", dir);
    write_text(path, "A1\tMicroscope slides &amp; covers, 100 pack\n"
                     "A2\t\n"
                     "A3\tLab-grade borosilicate beaker 250ml\n"
                     "A4\tNaïve café thermometer\n"
                     "A5\tDigital caliper 0-150mm\n");
    iisan_store *s;
    CHECKF(store_open(&s, dir, 1, err, sizeof err) == 0, "%s", err);
    if (!s) return;
    CHECKF(store_import_items(s, path, NULL, NULL, err, sizeof err) == 0, "%s", err);
    uint32_t *idx, n;
    CHECK(store_items_missing_states(s, IISAN_TEXT, 1, &idx, &n) == 0 && n == 4);
    CHECK(n == 4 && idx[0] == 1 && idx[1] == 3 && idx[3] == 5);
    free(idx);
    CHECK(store_items_missing_states(s, IISAN_TEXT, 0, &idx, &n) == 0 && n == 5);
    free(idx);

    bert_encoder *e;
    CHECKF(bert_load(&e, be, TINY, 2, 30, err, sizeof err) == 0, "%s", err);
    if (!e) return;
    uint32_t first[2] = {3, 2}, done = 0; /* item 2 has no title: skipped */
    CHECKF(encode_items_text(e, s, "tiny", first, 2, &done, NULL, NULL, err, sizeof err) == 0, "%s",
           err);
    CHECK(done == 1);
    CHECK(store_items_missing_states(s, IISAN_TEXT, 1, &idx, &n) == 0 && n == 3);
    progress_log pl = {0};
    CHECKF(encode_items_text(e, s, "tiny", idx, n, &done, log_progress, &pl, err, sizeof err) == 0,
           "%s", err);
    CHECK(done == 3);
    /* batches of 2: two calls, the last one complete */
    CHECK(pl.calls == 2 && pl.done == 3 && pl.total == 3);
    CHECK(pl.tok_done == pl.tok_total && pl.tok_total > 6);
    free(idx);
    CHECK(store_items_missing_states(s, IISAN_TEXT, 1, &idx, &n) == 0 && n == 0 && !idx);
    store_states_info info;
    CHECK(store_states_info_get(s, IISAN_TEXT, &info) == 0);
    CHECK(!strcmp(info.backbone, "tiny") && info.nstates == 3 && info.width == 32 &&
          info.count == 4);

    /* what is stored is the encoder's output rounded to fp16 */
    const char *titles[4] = {"Microscope slides &amp; covers, 100 pack",
                             "Lab-grade borosilicate beaker 250ml", "Naïve café thermometer",
                             "Digital caliper 0-150mm"};
    uint32_t cats[4] = {1, 3, 4, 5};
    float out[4 * 3 * 32];
    CHECK(bert_encode_texts(e, titles, 4, out) == 0);
    store_reader *r;
    CHECK(store_reader_begin(s, &r) == 0);
    int bad = 0;
    for (int i = 0; i < 4; i++) {
        const uint16_t *h = store_reader_states(r, IISAN_TEXT, cats[i]);
        if (!h) {
            bad++;
            continue;
        }
        for (int k = 0; k < 3 * 32; k++)
            if (h[k] != iisan_float_to_half(out[i * 96 + k])) bad++;
    }
    CHECK(store_reader_states(r, IISAN_TEXT, 2) == NULL);
    store_reader_end(r);
    CHECKF(bad == 0, "%d stored values differ", bad);

    /* another backbone name is refused before any work */
    uint32_t one = 1;
    CHECK(encode_items_text(e, s, "other", &one, 1, &done, NULL, NULL, err, sizeof err) ==
          IISAN_EMISMATCH);
    CHECKF(strstr(err, "tiny") && strstr(err, "other"), "%s", err);
    bert_free(e);
    store_close(s);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0);
}

/* ---- all-MiniLM-L6-v2, where installed ---- */

static const char *minilm_dir(void) {
    const char *d = getenv("IISAN_MINILM_DIR");
    return d && *d ? d : "build/models/all-MiniLM-L6-v2";
}

static int minilm_installed(void) {
    char p[512];
    snprintf(p, sizeof p, "%s/vocab.txt", minilm_dir());
    if (access(p, R_OK)) {
        fprintf(stderr,
                "  skip: all-MiniLM-L6-v2 is not installed at %s (deploy/install-minilm.sh"
                "); its tokenizer and states are not checked\n",
                minilm_dir());
        return 0;
    }
    return 1;
}

typedef struct {
    char **titles;
    size_t *lens;
    int n;
} titles_t;

static const char *title_text(void *arg, int i, size_t *len) {
    titles_t *t = arg;
    *len = t->lens[i];
    return t->titles[i];
}

static uint64_t fnv1a64(const unsigned char *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static void test_minilm_tokenizer(void) {
    if (!minilm_installed()) return;
    st_file *f = NULL;
    char err[512], p[512];
    wp_vocab *v = NULL;
    CHECKF(st_open(&f, GOLD "minilm.safetensors", err, sizeof err) == 0, "%s", err);
    snprintf(p, sizeof p, "%s/vocab.txt", minilm_dir());
    CHECKF(wp_load(&v, p, err, sizeof err) == 0, "%s", err);
    if (!f || !v) goto out;
    CHECK(wp_size(v) == 30522);
    /* items.tsv read as the store and gen.py read it */
    FILE *in = fopen(SCI_ITEMS, "rb");
    CHECKF(in != NULL, "%s missing", SCI_ITEMS);
    if (!in) return;
    fseek(in, 0, SEEK_END);
    long sz = ftell(in);
    fseek(in, 0, SEEK_SET);
    unsigned char *data = malloc((size_t)sz + 1);
    CHECK(fread(data, 1, (size_t)sz, in) == (size_t)sz);
    fclose(in);
    char want_hash[32];
    snprintf(want_hash, sizeof want_hash, "%016llx", (unsigned long long)fnv1a64(data, (size_t)sz));
    const char *fix_hash = st_meta_get(f, "items_fnv1a64");
    CHECKF(fix_hash && !strcmp(fix_hash, want_hash),
           "%s changed since minilm.safetensors was made (%s vs %s): run "
           "tests/golden_encoder/gen.sh",
           SCI_ITEMS, want_hash, fix_hash ? fix_hash : "none");
    titles_t t = {malloc(sizeof(char *) * 30000), malloc(sizeof(size_t) * 30000), 0};
    size_t i = (sz >= 3 && !memcmp(data, "\xef\xbb\xbf", 3)) ? 3 : 0;
    while (i < (size_t)sz && t.n < 30000) {
        size_t e = i;
        while (e < (size_t)sz && data[e] != '\n')
            e++;
        size_t end = e;
        if (end > i && data[end - 1] == '\r') end--;
        if (end > i) {
            char *tab = memchr(data + i, '\t', end - i);
            char *title = tab ? tab + 1 : (char *)data + end;
            t.titles[t.n] = title;
            t.lens[t.n] = (size_t)((char *)data + end - title);
            t.n++;
        }
        i = e + 1;
    }
    const st_tensor *ids = need(f, "sci.ids"), *count = need(f, "sci.count");
    CHECKF(t.n == (int)count->shape[0], "%d titles, fixture %lld", t.n, (long long)count->shape[0]);
    if (t.n == (int)count->shape[0])
        check_ids(v, "Scientific titles, MiniLM vocabulary", t.n, title_text, &t, ids, count, 1);
    fprintf(stderr, "  tokenized %d Scientific titles (%zu ids)\n", t.n, st_numel(ids));
    st_file *tf;
    CHECK(st_open(&tf, GOLD "tiny.safetensors", err, sizeof err) == 0);
    check_ids(v, "torture strings, MiniLM vocabulary", 1000, fixture_text, tf,
              need(f, "torture.ids"), need(f, "torture.count"), 0);
    st_close(tf);
    free(t.titles);
    free(t.lens);
    free(data);
out:
    wp_free(v);
    st_close(f);
}

static void test_minilm_states(void) {
    if (!minilm_installed()) return;
    st_file *f = NULL;
    char err[512];
    bert_encoder *e = NULL;
    CHECKF(st_open(&f, GOLD "minilm.safetensors", err, sizeof err) == 0, "%s", err);
    CHECKF(bert_load(&e, be, minilm_dir(), 16, 30, err, sizeof err) == 0, "%s", err);
    if (!f || !e) goto out;
    const bert_config *c = bert_get_config(e);
    CHECK(c->layers == 6 && c->hidden == 384 && c->heads == 12 && c->vocab == 30522);
    CHECK(!strcmp(c->name_or_path, "nreimers/MiniLM-L6-H384-uncased"));
    const st_tensor *ref = need(f, "states");
    int n = (int)ref->shape[0], S = (int)ref->shape[1], D = (int)ref->shape[2];
    CHECK(S == 7 && D == 384);
    char **texts = malloc(sizeof *texts * n);
    for (int i = 0; i < n; i++) {
        size_t len;
        const char *t = blob_at(f, "titles", i, &len);
        texts[i] = dup_n(t, len);
    }
    float *out = malloc(sizeof *out * (size_t)n * S * D);
    CHECK(bert_encode_texts(e, (const char *const *)texts, n, out) == 0);
    compare_states("all-MiniLM-L6-v2", out, ref, n, S, D, 1.0);
    for (int i = 0; i < n; i++)
        free(texts[i]);
    free(texts);
    free(out);
out:
    bert_free(e);
    st_close(f);
}

int main(int argc, char **argv) {
    TEST_MAIN_BEGIN(argc, argv);
    be = iisan_backend_cpu(2);
    RUN(test_tokenizer_cases);
    RUN(test_tiny_tokenizer);
    RUN(test_tiny_states);
    RUN(test_tiny_variants);
    RUN(test_tiny_vit);
    RUN(test_encode_items);
    RUN(test_minilm_tokenizer);
    RUN(test_minilm_states);
    be->destroy(be);
    TEST_MAIN_END();
}

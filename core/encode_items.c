#include "core/encode_items.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/image.h"
#include "kernels/half.h"

#define TITLE_CAP ((1u << 20) + 1) /* items.tsv lines are at most 1 MiB */

typedef struct {
    uint32_t cat; /* catalogue index */
    int len;      /* tokens, [CLS] and [SEP] included */
    uint32_t row; /* into the token table */
} job;

static int by_len(const void *a, const void *b) {
    const job *x = a, *y = b;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    return x->cat < y->cat ? -1 : x->cat > y->cat;
}

/* IISAN_EMISMATCH when the store holds states of modality from another
 * backbone or of another shape; 0 when they match or there are none */
static int check_backbone(iisan_store *s, int modality, const char *backbone, int S, int D,
                          char *err, size_t errlen) {
    const char *what = modality == IISAN_TEXT ? "text" : "image";
    store_states_info info;
    int rc = store_states_info_get(s, modality, &info);
    if (rc == 0 && (strcmp(info.backbone, backbone) || info.nstates != S || info.width != D))
        return iisan_fail(err, errlen, IISAN_EMISMATCH,
                          "the store holds %s states of %s (%d states x %d), not of %s (%d x %d): "
                          "encode into another data directory, or name the same backbone",
                          what, info.backbone, info.nstates, info.width, backbone, S, D);
    if (rc && rc != IISAN_ENOTFOUND)
        return iisan_fail(err, errlen, rc, "reading the store's %s states: %s", what,
                          iisan_strerror(rc));
    return 0;
}

int encode_items_text(bert_encoder *e, iisan_store *s, const char *backbone, const uint32_t *idx,
                      uint32_t n, uint32_t *n_done, encode_progress_fn progress, void *arg,
                      char *err, size_t errlen) {
    if (n_done) *n_done = 0;
    int S = bert_nstates(e), D = bert_width(e), B = bert_max_batch(e), T = bert_max_len(e);
    int rc = check_backbone(s, IISAN_TEXT, backbone, S, D, err, errlen);
    if (rc) return rc;
    if (n == 0) return 0;

    char *title = malloc(TITLE_CAP);
    job *jobs = malloc(sizeof *jobs * n);
    int32_t *tok = malloc(sizeof *tok * (size_t)n * T), *msk = malloc(sizeof *msk * (size_t)n * T);
    int32_t *ids = malloc(sizeof *ids * (size_t)B * T),
            *mask = malloc(sizeof *mask * (size_t)B * T);
    float *out = malloc(sizeof *out * (size_t)B * S * D);
    uint16_t *half = malloc(sizeof *half * (size_t)B * S * D);
    uint32_t *bidx = malloc(sizeof *bidx * (size_t)B);
    rc = IISAN_ENOMEM;
    if (!title || !jobs || !tok || !msk || !ids || !mask || !out || !half || !bidx) {
        if (err) snprintf(err, errlen, "out of memory for %u items", n);
        goto out;
    }
    /* tokenize everything, then encode in order of length */
    uint32_t nj = 0;
    for (uint32_t i = 0; i < n; i++) {
        rc = store_item_get(s, idx[i], NULL, 0, title, TITLE_CAP);
        if (rc) {
            if (err) snprintf(err, errlen, "catalogue item %u: %s", idx[i], iisan_strerror(rc));
            goto out;
        }
        if (!title[0]) continue;
        int r = wp_encode(bert_vocab(e), title, strlen(title), T, tok + (size_t)nj * T,
                          msk + (size_t)nj * T);
        if (r < 0) {
            rc = r;
            if (err) snprintf(err, errlen, "tokenizing item %u: %s", idx[i], iisan_strerror(r));
            goto out;
        }
        jobs[nj] = (job){idx[i], r, nj};
        nj++;
    }
    qsort(jobs, nj, sizeof *jobs, by_len);
    uint64_t tok_total = 0, tok_done = 0;
    for (uint32_t i = 0; i < nj; i++)
        tok_total += (uint64_t)jobs[i].len;
    uint32_t done = 0;
    for (uint32_t b0 = 0; b0 < nj; b0 += (uint32_t)B) {
        int nb = nj - b0 < (uint32_t)B ? (int)(nj - b0) : B, len = 0;
        for (int i = 0; i < nb; i++)
            if (jobs[b0 + i].len > len) len = jobs[b0 + i].len;
        for (int i = 0; i < nb; i++) {
            const job *j = &jobs[b0 + i];
            memcpy(ids + (size_t)i * len, tok + (size_t)j->row * T, sizeof *ids * (size_t)len);
            memcpy(mask + (size_t)i * len, msk + (size_t)j->row * T, sizeof *mask * (size_t)len);
            bidx[i] = j->cat;
            tok_done += (uint64_t)j->len;
        }
        rc = bert_forward(e, ids, mask, nb, len, out);
        if (rc) {
            if (err) snprintf(err, errlen, "encoder forward pass: %s", iisan_strerror(rc));
            goto out;
        }
        iisan_cpu_float_to_half(half, out, (size_t)nb * S * D);
        rc = store_put_states(s, IISAN_TEXT, backbone, S, D, (uint32_t)nb, bidx, half, err, errlen);
        if (rc) goto out;
        done += (uint32_t)nb;
        if (n_done) *n_done = done;
        if (progress) progress(arg, done, nj, tok_done, tok_total);
    }
    rc = 0;
out:
    free(title);
    free(jobs);
    free(tok);
    free(msk);
    free(ids);
    free(mask);
    free(out);
    free(half);
    free(bidx);
    return rc;
}

/* ---- images ---- */

int encode_image_path(const char *dir, const char *item_id, char *path, size_t cap) {
    static const char *const ext[] = {".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG"};
    if (!item_id[0] || strchr(item_id, '/') || !strcmp(item_id, ".") || !strcmp(item_id, ".."))
        return IISAN_ENOTFOUND;
    for (size_t i = 0; i < sizeof ext / sizeof ext[0]; i++) {
        struct stat st;
        int k = snprintf(path, cap, "%s/%s%s", dir, item_id, ext[i]);
        if (k < 0 || (size_t)k >= cap) return IISAN_ENOTFOUND;
        if (stat(path, &st) == 0 && !S_ISDIR(st.st_mode)) return 0;
    }
    return IISAN_ENOTFOUND;
}

/* the pixels of one image file into px [3, S, S]; 0 or an error in err */
static int load_pixels(const char *path, int S, uint8_t *sq, float *px, char *err, size_t errlen) {
    static const float half[3] = {0.5f, 0.5f, 0.5f};
    iisan_image im;
    int rc = image_decode_file(path, &im, err, errlen);
    if (rc) return rc;
    rc = image_resize_bilinear(im.rgb, im.w, im.h, sq, S, S);
    if (rc)
        iisan_fail(err, errlen, rc, "%s: resizing: %s", path, iisan_strerror(rc));
    else
        image_normalize(sq, S, S, half, half, px);
    image_free(&im);
    return rc;
}

static int vit_shape_ok(vit_encoder *e, char *err, size_t errlen) {
    const vit_config *c = vit_get_config(e);
    if (c->channels != 3)
        return iisan_fail(err, errlen, IISAN_EINVAL,
                          "the image model takes %d channels; images are RGB (3)", c->channels);
    return 0;
}

int encode_items_images(vit_encoder *e, iisan_store *s, const char *backbone, const char *dir,
                        const uint32_t *idx, uint32_t n, encode_image_counts *counts,
                        encode_image_skip_fn skip, encode_progress_fn progress, void *arg,
                        char *err, size_t errlen) {
    encode_image_counts cnt = {0};
    if (counts) *counts = cnt;
    int S = vit_nstates(e), D = vit_width(e), B = vit_max_batch(e);
    int size = vit_get_config(e)->image_size;
    int rc = vit_shape_ok(e, err, errlen);
    if (!rc) rc = check_backbone(s, IISAN_IMAGE, backbone, S, D, err, errlen);
    if (rc || n == 0) return rc;

    size_t plane = (size_t)3 * size * size, pathcap = strlen(dir) + 600;
    char id[512], why[1024];
    char *path = malloc(pathcap);
    uint32_t *found = malloc(sizeof *found * n); /* items with an image file */
    uint32_t *bidx = malloc(sizeof *bidx * B);   /* the batch's items */
    float *px = malloc(sizeof *px * plane * B);  /* [B, 3, size, size] */
    float *out = malloc(sizeof *out * (size_t)B * S * D);
    uint16_t *half = malloc(sizeof *half * (size_t)B * S * D);
    uint8_t *sq = malloc((size_t)size * size * 3);
    rc = IISAN_ENOMEM;
    if (!path || !found || !bidx || !px || !out || !half || !sq) {
        iisan_fail(err, errlen, rc, "out of memory for %u items", n);
        goto out;
    }
    /* which items have a file: the total of the progress bar */
    uint32_t nf = 0;
    for (uint32_t i = 0; i < n; i++) {
        rc = store_item_get(s, idx[i], id, sizeof id, NULL, 0);
        if (rc) {
            iisan_fail(err, errlen, rc, "catalogue item %u: %s", idx[i], iisan_strerror(rc));
            goto out;
        }
        if (encode_image_path(dir, id, path, pathcap))
            cnt.missing++;
        else
            found[nf++] = idx[i];
    }
    uint32_t done = 0, next = 0;
    while (next < nf) {
        int nb = 0;
        for (; next < nf && nb < B; next++) {
            rc = store_item_get(s, found[next], id, sizeof id, NULL, 0);
            if (rc) {
                iisan_fail(err, errlen, rc, "catalogue item %u: %s", found[next],
                           iisan_strerror(rc));
                goto out;
            }
            /* found before; a file removed since is a read error below */
            if (encode_image_path(dir, id, path, pathcap))
                snprintf(path, pathcap, "%s/%s.jpg", dir, id);
            int r = load_pixels(path, size, sq, px + plane * nb, why, sizeof why);
            if (r == IISAN_ENOMEM) {
                rc = iisan_fail(err, errlen, r, "%s", why);
                goto out;
            }
            if (r) {
                cnt.corrupt++;
                done++;
                if (skip) skip(arg, found[next], id, why);
                continue;
            }
            bidx[nb++] = found[next];
        }
        if (nb > 0) {
            rc = vit_forward(e, px, nb, out);
            if (rc) {
                iisan_fail(err, errlen, rc, "image encoder forward pass: %s", iisan_strerror(rc));
                goto out;
            }
            iisan_cpu_float_to_half(half, out, (size_t)nb * S * D);
            rc = store_put_states(s, IISAN_IMAGE, backbone, S, D, (uint32_t)nb, bidx, half, err,
                                  errlen);
            if (rc) goto out;
            cnt.encoded += (uint32_t)nb;
            done += (uint32_t)nb;
        }
        if (counts) *counts = cnt;
        if (progress) progress(arg, done, nf, done, nf);
    }
    rc = 0;
out:
    if (counts) *counts = cnt;
    free(path);
    free(found);
    free(bidx);
    free(px);
    free(out);
    free(half);
    free(sq);
    return rc;
}

int encode_item_image(vit_encoder *e, iisan_store *s, const char *backbone, uint32_t idx,
                      const void *data, size_t len, char *err, size_t errlen) {
    int S = vit_nstates(e), D = vit_width(e), size = vit_get_config(e)->image_size;
    int rc = vit_shape_ok(e, err, errlen);
    if (!rc) rc = check_backbone(s, IISAN_IMAGE, backbone, S, D, err, errlen);
    if (rc) return rc;
    float *px = malloc(sizeof *px * 3 * size * size), *out = malloc(sizeof *out * S * D);
    uint16_t *half = malloc(sizeof *half * S * D);
    rc = IISAN_ENOMEM;
    if (!px || !out || !half) {
        iisan_fail(err, errlen, rc, "out of memory encoding item %u's image", idx);
        goto out;
    }
    char why[512];
    rc = image_preprocess(data, len, size, px, why, sizeof why);
    if (rc) {
        iisan_fail(err, errlen, rc, "item %u's image: %s", idx, why);
        goto out;
    }
    rc = vit_forward(e, px, 1, out);
    if (rc) {
        iisan_fail(err, errlen, rc, "image encoder forward pass: %s", iisan_strerror(rc));
        goto out;
    }
    iisan_cpu_float_to_half(half, out, (size_t)S * D);
    rc = store_put_states(s, IISAN_IMAGE, backbone, S, D, 1, &idx, half, err, errlen);
out:
    free(px);
    free(out);
    free(half);
    return rc;
}

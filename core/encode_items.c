#include "core/encode_items.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

int encode_items_text(bert_encoder *e, iisan_store *s, const char *backbone, const uint32_t *idx,
                      uint32_t n, uint32_t *n_done, encode_progress_fn progress, void *arg,
                      char *err, size_t errlen) {
    if (n_done) *n_done = 0;
    int S = bert_nstates(e), D = bert_width(e), B = bert_max_batch(e), T = bert_max_len(e);
    store_states_info info;
    int rc = store_states_info_get(s, IISAN_TEXT, &info);
    if (rc == 0 && (strcmp(info.backbone, backbone) || info.nstates != S || info.width != D)) {
        if (err)
            snprintf(err, errlen,
                     "the store holds text states of %s (%d states x %d), not of %s (%d x %d): "
                     "encode into another data directory, or name the same backbone",
                     info.backbone, info.nstates, info.width, backbone, S, D);
        return IISAN_EMISMATCH;
    }
    if (rc && rc != IISAN_ENOTFOUND) {
        if (err) snprintf(err, errlen, "reading the store's text states: %s", iisan_strerror(rc));
        return rc;
    }
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
        for (size_t k = 0; k < (size_t)nb * S * D; k++)
            half[k] = iisan_float_to_half(out[k]);
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

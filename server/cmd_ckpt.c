/* iisan export / iisan import-ckpt: checkpoints as safetensors, so PyTorch
 * users can read and write our models (docs/formats.md lists the tensors).
 *
 * A file holds one F32 tensor per parameter under its params.h name
 * ([out, in] for linear weights), "item_ids" (U8: the catalogue ids of model
 * rows 1..N joined by '\n'), and metadata "format" = "iisan-checkpoint",
 * "format_version" = "1", "config" (the model config JSON) and, on export,
 * "version" and "figures" (the stored training figures). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/checkpoint.h"
#include "core/params.h"
#include "server/cli.h"
#include "server/common.h"
#include "store/safetensors.h"

#define CKPT_FORMAT "iisan-checkpoint"

static int parse(int argc, char **argv, const char *cmd, const char *fileopt, const char **dir,
                 const char **file, long *version) {
    static struct option opts[] = {{"data", 1, 0, 'D'}, {"version", 1, 0, 'v'}, {"out", 1, 0, 'o'},
                                   {"in", 1, 0, 'i'},   {"help", 0, 0, 'h'},    {0, 0, 0, 0}};
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'D': *dir = optarg; break;
        case 'v':
            if (!version || opt_int(cmd, "version", optarg, 1, 0xffffffffL, version)) return 2;
            break;
        case 'o':
        case 'i':
            if (strcmp(fileopt, ch == 'o' ? "out" : "in")) return 2;
            *file = optarg;
            break;
        case 'h': return -1;
        default: return 2;
        }
    }
    if (optind < argc || !*dir || !*file) return 2;
    return 0;
}

int cmd_export(int argc, char **argv) {
    const char *dir = NULL, *out = NULL;
    long version = 0;
    int prc = parse(argc, argv, "export", "out", &dir, &out, &version);
    if (prc) {
        fprintf(prc < 0 ? stdout : stderr,
                "usage: iisan export --data DIR [--version V] --out FILE.safetensors\n\n"
                "Writes checkpoint V (default: the latest) as safetensors: one F32 tensor per\n"
                "parameter, item_ids, and the config in the metadata (docs/formats.md).\n");
        return prc < 0 ? 0 : 2;
    }
    char err[512];
    iisan_store *s = NULL;
    if (store_open(&s, dir, 0, err, sizeof err)) {
        fprintf(stderr, "iisan export: %s\n", err);
        return 1;
    }
    int rc = 1;
    void *blob = NULL;
    char *meta = NULL, *cfg = NULL, *ids = NULL;
    size_t len;
    uint32_t ver;
    iisan_ckpt ck = {0};
    param_table pt = {0};
    st_writer *w = NULL;
    int r = store_ckpt_get(s, (uint32_t)version, &blob, &len, &meta, &ver);
    if (r) {
        fprintf(stderr, "iisan export: %s\n",
                r == IISAN_ENOTFOUND ? "no such checkpoint" : iisan_strerror(r));
        goto out;
    }
    if (ckpt_decode(blob, len, &ck, err, sizeof err)) {
        fprintf(stderr, "iisan export: checkpoint %u: %s\n", ver, err);
        goto out;
    }
    if (params_build(&pt, &ck.c)) goto out;
    w = st_writer_new();
    if (!w) goto out;
    for (int i = 0; i < pt.n; i++) {
        const param_info *p = &pt.t[i];
        int64_t shape[2] = {p->shape[0], p->shape[1]};
        if (st_writer_add(w, p->name, ST_F32, p->ndim, shape, ck.params + p->offset)) goto out;
    }
    /* item ids of rows 1..N */
    size_t cap = 64 * (size_t)ck.n_cat + 1, used = 0;
    ids = malloc(cap);
    if (!ids) goto out;
    for (uint32_t i = 1; i < ck.n_cat; i++) {
        char id[1024];
        if (store_item_get(s, ck.item_cat[i], id, sizeof id, NULL, 0)) {
            fprintf(stderr, "iisan export: catalogue item %u of the checkpoint is missing\n",
                    ck.item_cat[i]);
            goto out;
        }
        size_t l = strlen(id);
        if (used + l + 2 > cap) {
            cap = 2 * cap + l;
            char *t = realloc(ids, cap);
            if (!t) goto out;
            ids = t;
        }
        memcpy(ids + used, id, l);
        used += l;
        if (i + 1 < ck.n_cat) ids[used++] = '\n';
    }
    int64_t ishape[1] = {(int64_t)used};
    cfg = config_to_json(&ck.c, ck.min_len);
    char vs[16];
    snprintf(vs, sizeof vs, "%u", ver);
    if ((used && st_writer_add(w, "item_ids", ST_U8, 1, ishape, ids)) ||
        st_writer_meta(w, "format", CKPT_FORMAT) || st_writer_meta(w, "format_version", "1") ||
        st_writer_meta(w, "config", cfg) || st_writer_meta(w, "version", vs) ||
        st_writer_meta(w, "figures", meta ? meta : "{}"))
        goto out;
    if (st_writer_write(w, out, err, sizeof err)) {
        fprintf(stderr, "iisan export: %s\n", err);
        goto out;
    }
    fprintf(stderr, "exported checkpoint %u (%s, %zu parameters, %u items) to %s\n", ver,
            ck.c.kind == MODEL_IISAN ? "iisan" : "sasrec-id", pt.total, ck.n_cat - 1, out);
    rc = 0;
out:
    if (rc && !err[0]) fprintf(stderr, "iisan export: out of memory\n");
    st_writer_free(w);
    params_free(&pt);
    ckpt_free(&ck);
    free(blob);
    free(meta);
    free(cfg);
    free(ids);
    store_close(s);
    return rc;
}

int cmd_import_ckpt(int argc, char **argv) {
    const char *dir = NULL, *in = NULL;
    int prc = parse(argc, argv, "import-ckpt", "in", &dir, &in, NULL);
    if (prc) {
        fprintf(prc < 0 ? stdout : stderr,
                "usage: iisan import-ckpt --data DIR --in FILE.safetensors\n\n"
                "Stores a safetensors checkpoint (as written by iisan export, or by PyTorch\n"
                "with the same tensor names) as a new checkpoint version.\n");
        return prc < 0 ? 0 : 2;
    }
    char err[512] = "";
    st_file *f = NULL;
    if (st_open(&f, in, err, sizeof err)) {
        fprintf(stderr, "iisan import-ckpt: %s\n", err);
        return 1;
    }
    iisan_store *s = NULL;
    int rc = 1;
    iisan_ckpt ck = {0};
    param_table pt = {0};
    void *blob = NULL;
    const char *fmt = st_meta_get(f, "format"), *cfg = st_meta_get(f, "config");
    if (!fmt || strcmp(fmt, CKPT_FORMAT) || !cfg) {
        fprintf(stderr,
                "iisan import-ckpt: %s: not an iisan checkpoint (metadata 'format' "
                "must be '" CKPT_FORMAT "' and 'config' present)\n",
                in);
        goto out;
    }
    if (config_from_json(cfg, strlen(cfg), &ck.c, &ck.min_len, err, sizeof err)) {
        fprintf(stderr, "iisan import-ckpt: %s: %s\n", in, err);
        goto out;
    }
    if (ck.c.kind == MODEL_POPULARITY || params_build(&pt, &ck.c)) {
        fprintf(stderr, "iisan import-ckpt: %s: the config names no trainable model\n", in);
        goto out;
    }
    if (cli_lock_store("import-ckpt", dir, 0)) goto out;
    if (store_open(&s, dir, 0, err, sizeof err)) {
        fprintf(stderr, "iisan import-ckpt: %s\n", err);
        goto out;
    }
    ck.nparams = pt.total;
    ck.params = malloc(pt.total * sizeof(float));
    if (!ck.params) goto out;
    for (int i = 0; i < pt.n; i++) {
        const param_info *p = &pt.t[i];
        const st_tensor *t = st_find(f, p->name);
        int ok = t && t->dtype == ST_F32 && t->ndim == p->ndim && t->shape[0] == p->shape[0] &&
                 (p->ndim == 1 || t->shape[1] == p->shape[1]);
        if (!ok) {
            if (p->ndim == 2)
                fprintf(stderr, "iisan import-ckpt: %s: tensor %s must be F32 [%d, %d]\n", in,
                        p->name, p->shape[0], p->shape[1]);
            else
                fprintf(stderr, "iisan import-ckpt: %s: tensor %s must be F32 [%d]\n", in, p->name,
                        p->shape[0]);
            goto out;
        }
        memcpy(ck.params + p->offset, t->data, p->size * sizeof(float));
    }
    /* item rows: ids -> catalogue indexes */
    const st_tensor *ti = st_find(f, "item_ids");
    uint32_t n = 0;
    const char *ids = ti ? ti->data : "";
    size_t ilen = ti ? ti->nbytes : 0;
    if (ti && ti->dtype != ST_U8) {
        fprintf(stderr, "iisan import-ckpt: %s: item_ids must be U8\n", in);
        goto out;
    }
    for (size_t i = 0; i < ilen; i++)
        n += ids[i] == '\n';
    if (ilen) n++;
    ck.n_cat = n + 1;
    ck.item_cat = calloc(ck.n_cat, sizeof *ck.item_cat);
    if (!ck.item_cat) goto out;
    for (uint32_t row = 1, at = 0; row <= n; row++) {
        size_t e = at;
        while (e < ilen && ids[e] != '\n')
            e++;
        char id[1024];
        size_t l = e - at < sizeof id - 1 ? e - at : sizeof id - 1;
        memcpy(id, ids + at, l);
        id[l] = 0;
        if (store_item_lookup(s, id, &ck.item_cat[row])) {
            fprintf(stderr,
                    "iisan import-ckpt: %s: item_ids row %u: '%s' is not in the catalogue\n", in,
                    row, id);
            goto out;
        }
        at = (uint32_t)e + 1;
    }
    if (ck.c.kind == MODEL_SASREC_ID && ck.c.n_items != (int)n) {
        fprintf(stderr, "iisan import-ckpt: %s: %d embedding rows but %u item ids\n", in,
                ck.c.n_items, n);
        goto out;
    }
    size_t len;
    blob = ckpt_encode(&ck, &len);
    uint32_t ver;
    if (!blob || store_ckpt_put(s, blob, len, "{\"imported\":true}", &ver)) {
        fprintf(stderr, "iisan import-ckpt: storing the checkpoint failed\n");
        goto out;
    }
    fprintf(stderr, "imported %s as checkpoint version %u\n", in, ver);
    rc = 0;
out:
    free(blob);
    ckpt_free(&ck);
    params_free(&pt);
    store_close(s);
    st_close(f);
    return rc;
}

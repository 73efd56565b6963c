#include "server/common.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#ifdef IISAN_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif
#include "kernels/blas_info.h"
#include "kernels/clock.h"
#include "store/lock.h"

int opt_int(const char *cmd, const char *opt, const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "iisan %s: --%s wants an integer in %ld..%ld, got '%s'\n", cmd, opt, lo, hi,
                s);
        return -1;
    }
    *out = v;
    return 0;
}

int opt_float(const char *cmd, const char *opt, const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "iisan %s: --%s wants a number in %g..%g, got '%s'\n", cmd, opt, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

double now_seconds(void) { return iisan_now(); }

long peak_rss_kib(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

double peak_device_mib(const iisan_backend *be) {
#ifdef IISAN_CUDA
    if (be && !strcmp(be->name, "cuda")) return iisan_cuda_peak_bytes() / 1048576.0;
#else
    (void)be;
#endif
    return -1;
}

int opt_device(const char *cmd, const char *s) {
    if (!strcmp(s, "cpu") || !strcmp(s, "cuda") || !strcmp(s, "auto")) return 0;
    fprintf(stderr, "iisan %s: --device wants cpu, cuda or auto, got '%s'\n", cmd, s);
    return -1;
}

int opt_precision(const char *cmd, const char *s, int *out) {
    if (!strcmp(s, "fp32") || !strcmp(s, "bf16")) {
        *out = !strcmp(s, "bf16") ? IISAN_PREC_BF16 : IISAN_PREC_FP32;
        return 0;
    }
    fprintf(stderr, "iisan %s: --precision wants fp32 or bf16, got '%s'\n", cmd, s);
    return -1;
}

const char *precision_name(int precision) { return precision == IISAN_PREC_BF16 ? "bf16" : "fp32"; }

int backend_set_precision(const char *cmd, iisan_backend *be, int precision) {
    char err[256];
    if (be->set_precision(be, precision, err, sizeof err)) {
        fprintf(stderr, "iisan %s: --precision %s: %s\n", cmd, precision_name(precision), err);
        return -1;
    }
    if (precision == IISAN_PREC_BF16)
        fprintf(stderr, "precision: bf16 SAN and head GEMMs (fp32 accumulation, fp32 weights)\n");
    return 0;
}

static iisan_backend *cpu_backend(const char *cmd, int threads, const char *why) {
    iisan_backend *be = iisan_backend_cpu(threads);
    if (!be) {
        fprintf(stderr, "iisan %s: out of memory creating the CPU backend\n", cmd);
        return NULL;
    }
    if (threads > 0)
        fprintf(stderr, "backend: cpu, %d BLAS thread%s%s\n", threads, threads == 1 ? "" : "s",
                why);
    else
        fprintf(stderr, "backend: cpu, BLAS threads for all cores%s\n", why);
    blas_info bi; /* which kernels the GEMMs run, and how fast (about 0.15 s) */
    char line[640];
    blas_info_probe(&bi, 0.15);
    blas_info_line(&bi, line, sizeof line);
    fprintf(stderr, "%s\n", line);
    const char *warn = blas_generic_warning(&bi);
    if (warn) fprintf(stderr, "\n*** iisan %s: %s ***\n\n", cmd, warn);
    return be;
}

iisan_backend *backend_choose(const char *cmd, const char *device, int threads) {
    int aut = !device || !strcmp(device, "auto");
    if (!aut && strcmp(device, "cpu") && strcmp(device, "cuda")) {
        opt_device(cmd, device);
        return NULL;
    }
    if (!aut && !strcmp(device, "cpu")) return cpu_backend(cmd, threads, "");
#ifdef IISAN_CUDA
    if (aut && !iisan_cuda_available()) return cpu_backend(cmd, threads, " (auto: no CUDA device)");
    char err[512];
    iisan_backend *be = iisan_backend_cuda(0, err, sizeof err);
    if (!be) {
        if (!aut) {
            fprintf(stderr, "iisan %s: --device cuda: %s\n", cmd, err);
            return NULL;
        }
        char why[600];
        snprintf(why, sizeof why, " (auto: the CUDA device is unusable: %s)", err);
        return cpu_backend(cmd, threads, why);
    }
    fprintf(stderr, "backend: cuda, device 0%s\n", aut ? " (auto)" : "");
    return be;
#else
    if (aut) return cpu_backend(cmd, threads, " (auto: this build has no CUDA backend)");
    fprintf(stderr,
            "iisan %s: --device cuda: this build has no CUDA backend: build with make "
            "CUDA=1\n",
            cmd);
    return NULL;
#endif
}

int backend_check(const char *cmd, iisan_backend *be) {
    char msg[512];
    int n = be ? be->status(be, msg, sizeof msg) : 0;
    if (!n) return 0;
    fprintf(stderr, "iisan %s: %d %s backend failure%s, the first: %s\n", cmd, n, be->name,
            n == 1 ? "" : "s", msg);
    return -1;
}

/* SASRec-ID rows are model item indexes of the dataset the checkpoint was
 * trained on; map them onto today's dataset through the catalogue indexes
 * (IISAN needs nothing: its item side reads states by catalogue index). */
static int remap_item_rows(const char *cmd, iisan_ckpt *ck, const iisan_dataset *ds,
                           uint32_t version) {
    const int d = ck->c.d, N = ds->n_items;
    if ((uint32_t)N + 1 == ck->n_cat && !memcmp(ds->item_cat, ck->item_cat, 4 * (size_t)ck->n_cat))
        return 0;
    param_table old, neu;
    iisan_config c2 = ck->c;
    c2.n_items = N;
    if (params_build(&old, &ck->c)) return -1;
    if (params_build(&neu, &c2)) {
        params_free(&old);
        return -1;
    }
    uint32_t maxcat = 0;
    for (uint32_t i = 0; i < ck->n_cat; i++)
        maxcat = ck->item_cat[i] > maxcat ? ck->item_cat[i] : maxcat;
    for (int i = 0; i <= N; i++)
        maxcat = ds->item_cat[i] > maxcat ? ds->item_cat[i] : maxcat;
    int32_t *row_of = malloc(((size_t)maxcat + 1) * sizeof *row_of);
    float *p = malloc(neu.total * sizeof *p);
    int rc = -1;
    if (!row_of || !p) goto out;
    for (uint32_t c = 0; c <= maxcat; c++)
        row_of[c] = -1;
    for (uint32_t i = 1; i < ck->n_cat; i++)
        row_of[ck->item_cat[i]] = (int32_t)i;
    row_of[0] = 0;
    const param_info *oe = params_find(&old, "item_emb.weight"),
                     *ne = params_find(&neu, "item_emb.weight");
    for (int i = 0; i <= N; i++) {
        int32_t r = row_of[ds->item_cat[i]];
        if (r < 0) {
            fprintf(stderr,
                    "iisan %s: checkpoint %u has no embedding for catalogue item %u, which the "
                    "store's users now hold: train a new version\n",
                    cmd, version, ds->item_cat[i]);
            goto out;
        }
        memcpy(p + ne->offset + (size_t)i * d, ck->params + oe->offset + (size_t)r * d,
               (size_t)d * sizeof *p);
    }
    /* everything after the embedding table keeps its order */
    memcpy(p + ne->offset + ne->size, ck->params + oe->offset + oe->size,
           (neu.total - ne->offset - ne->size) * sizeof *p);
    memcpy(p, ck->params, ne->offset * sizeof *p);
    free(ck->params);
    ck->params = p;
    p = NULL;
    ck->nparams = neu.total;
    ck->c = c2;
    free(ck->item_cat);
    ck->item_cat = malloc(((size_t)N + 1) * sizeof *ck->item_cat);
    if (!ck->item_cat) goto out;
    memcpy(ck->item_cat, ds->item_cat, ((size_t)N + 1) * sizeof *ck->item_cat);
    ck->n_cat = (uint32_t)N + 1;
    rc = 0;
out:
    free(row_of);
    free(p);
    params_free(&old);
    params_free(&neu);
    return rc;
}

int load_checkpoint_model(const char *cmd, iisan_store *s, uint32_t version, iisan_backend *be,
                          iisan_ckpt *ck, iisan_dataset *ds, iisan_model **m,
                          uint32_t *version_out) {
    void *blob = NULL;
    size_t len = 0;
    char *meta = NULL, err[512];
    *m = NULL;
    int rc = store_ckpt_get(s, version, &blob, &len, &meta, version_out);
    if (rc) {
        if (rc == IISAN_ENOTFOUND)
            fprintf(stderr, "iisan %s: %s; train one with `iisan train`\n", cmd,
                    version ? "no such checkpoint version" : "the store holds no checkpoint");
        else
            fprintf(stderr, "iisan %s: reading the checkpoint: %s\n", cmd, iisan_strerror(rc));
        return 1;
    }
    free(meta);
    rc = ckpt_decode(blob, len, ck, err, sizeof err);
    free(blob);
    if (rc) {
        fprintf(stderr, "iisan %s: checkpoint %u: %s\n", cmd, *version_out, err);
        return 1;
    }
    if (dataset_build(ds, s, ck->c.n, ck->min_len, err, sizeof err)) {
        fprintf(stderr, "iisan %s: %s\n", cmd, err);
        ckpt_free(ck);
        return 1;
    }
    if (ck->c.kind == MODEL_SASREC_ID && remap_item_rows(cmd, ck, ds, *version_out)) {
        ckpt_free(ck);
        dataset_free(ds);
        return 1;
    }
    *m = model_create(&ck->c, be, 64, 0, err, sizeof err);
    if (!*m) {
        fprintf(stderr, "iisan %s: %s\n", cmd, err);
        ckpt_free(ck);
        dataset_free(ds);
        return 1;
    }
    be->upload(be, (*m)->w, ck->params, ck->nparams * sizeof(float));
    return 0;
}

void backbone_dir_name(const char *path, char *out, size_t cap) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    size_t n = strlen(buf);
    while (n > 1 && buf[n - 1] == '/')
        buf[--n] = 0;
    const char *b = strrchr(buf, '/');
    b = b ? b + 1 : buf;
    size_t k = strlen(b);
    if (!strcmp(b, ".") || !strcmp(b, "..") || k >= cap) k = 0; /* no usable name */
    memcpy(out, b, k);
    out[k] = 0;
}

int cli_lock_store(const char *cmd, const char *dir, int create) {
    char err[PATH_MAX + 200];
    if (!dir || !*dir) return 0; /* the command reports the missing --data */
    int fd = store_lock(dir, create, cmd, err, sizeof err);
    if (fd == -1) {
        fprintf(stderr, "iisan %s: %s\n", cmd, err);
        return -1;
    }
    return 0; /* fd (or -2: no such directory, which opening the store reports) stays open */
}

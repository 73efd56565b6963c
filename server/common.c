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

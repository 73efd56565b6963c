/* Helpers shared by the subcommands: reading numbers from options, the compute backend, the
 * store's lock. (A ready model comes from core/session.h.) */
#ifndef IISAN_SERVER_COMMON_H
#define IISAN_SERVER_COMMON_H

#include <stdint.h>

#include "core/checkpoint.h"
#include "core/dataset.h"
#include "core/model.h"
#include "store/store.h"

/* parse a whole string as a number within [lo, hi]; 0 or -1 (message printed) */
int opt_int(const char *cmd, const char *opt, const char *s, long lo, long hi, long *out);
int opt_float(const char *cmd, const char *opt, const char *s, double lo, double hi, double *out);

double now_seconds(void);
/* the name states are stored under by default: a model directory's last component ("" when
 * it has none that can serve: ".", "..", or longer than cap - 1) */
void backbone_dir_name(const char *path, char *out, size_t cap);
long peak_rss_kib(void);
/* the device's peak memory in MiB for a GPU backend (iisan_cuda_peak_bytes), -1 for the CPU */
double peak_device_mib(const iisan_backend *be);

/* the data directory's lock for a command that writes the store (store/lock.h), held
 * until the process exits: 0, or -1 with the holder printed for cmd ("iisan cmd: ...") */
int cli_lock_store(const char *cmd, const char *dir, int create);

/* --device: 0 when s is cpu, cuda or auto, else -1 (message printed for cmd) */
int opt_device(const char *cmd, const char *s);

/* The compute backend for --device: "cpu" -> the CPU backend (threads BLAS threads, 0 = all
 * cores); "cuda" -> GPU 0 (builds with CUDA=1 only); NULL or "auto" -> cuda when this build
 * has it and a device is usable, else cpu. Prints one line naming the choice to stderr.
 * NULL with a message printed for cmd when the asked-for backend cannot be had. */
iisan_backend *backend_choose(const char *cmd, const char *device, int threads);

/* --precision: 0 with *out = IISAN_PREC_FP32 or IISAN_PREC_BF16 for "fp32" / "bf16", else -1
 * (message printed for cmd) */
int opt_precision(const char *cmd, const char *s, int *out);
const char *precision_name(int precision); /* "fp32", "bf16" */

/* sets be's GEMM precision (IISAN_PREC_*): 0, or -1 with the reason printed for cmd (bf16 on a
 * CPU without AVX512-BF16, or on the cuda backend); one line says when bf16 is on */
int backend_set_precision(const char *cmd, iisan_backend *be, int precision);

/* 0 when the backend recorded no failure (be->status); else -1 with the first failure
 * printed for cmd (ops return nothing, so callers ask after a run). */
int backend_check(const char *cmd, iisan_backend *be);

#endif

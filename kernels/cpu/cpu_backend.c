/* The CPU backend's table and its memory: backend memory is host memory, so
 * upload / download / copy are memcpy and sync has nothing to wait for. Its
 * status is 0 unless the fault hook fired (kernels/backend.h). */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cblas.h>

#include "kernels/cpu/cpu.h"
#include "kernels/cpu/cpu_bf16.h"

#define CPU_ALIGN 64

/* zero-filled, 64-byte aligned; a zero-byte request still gets a valid block */
static void *cpu_alloc(iisan_backend *be, size_t bytes) {
    if (bytes > SIZE_MAX - CPU_ALIGN) return NULL;
    size_t size = bytes ? (bytes + CPU_ALIGN - 1) / CPU_ALIGN * CPU_ALIGN : CPU_ALIGN;
    void *p = aligned_alloc(CPU_ALIGN, size);
    if (p) memset(p, 0, size);
    return p;
}

static void cpu_free(iisan_backend *be, void *p) { free(p); }

/* memcpy with the degenerate cases (nothing to copy, copy onto itself) made legal */
static void cpu_memcpy(void *dst, const void *src, size_t bytes) {
    if (bytes && dst != src) memcpy(dst, src, bytes);
}

/* large copies and zero-fills (the gradient buffer every step) split over the pool, in
 * pieces of whole 64 KiB; smaller ones on the caller's thread */
typedef struct {
    char *dst;
    const char *src; /* NULL: zero-fill */
} bytes_args;

enum { BYTES_GRAIN = 1 << 16 };

static void bytes_range(void *va, size_t lo, size_t hi) {
    const bytes_args *a = va;
    if (a->src)
        memcpy(a->dst + lo, a->src + lo, hi - lo);
    else
        memset(a->dst + lo, 0, hi - lo);
}

static void bytes_par(iisan_backend *be, void *dst, const void *src, size_t bytes) {
    bytes_args a = {dst, src};
    cpu_par(be, bytes, BYTES_GRAIN, bytes_range, &a);
}

static void cpu_upload(iisan_backend *be, void *dst, const void *src_host, size_t bytes) {
    cpu_memcpy(dst, src_host, bytes);
}

static void cpu_download(iisan_backend *be, void *dst_host, const void *src, size_t bytes) {
    cpu_memcpy(dst_host, src, bytes);
}

static void cpu_copy(iisan_backend *be, void *dst, const void *src, size_t bytes) {
    if (bytes && dst != src) bytes_par(be, dst, src, bytes);
}

static void cpu_zero(iisan_backend *be, void *p, size_t bytes) {
    if (bytes) bytes_par(be, p, NULL, bytes);
}

static void cpu_sync(iisan_backend *be) {}

int cpu_fault(iisan_backend *be) {
    cpu_ctx *cx = be->ctx;
    if (!cx->fault_file) return 0;
    if (!atomic_load(&cx->failures) && access(cx->fault_file, F_OK)) return 0;
    atomic_fetch_add(&cx->failures, 1);
    return 1;
}

void cpu_par(iisan_backend *be, size_t n, size_t grain, cpu_range_fn fn, void *arg) {
    cpu_ctx *cx = be->ctx;
    cpu_pool_for(cx->pool, n, grain, fn, arg);
}

int iisan_backend_cpu_threads(const iisan_backend *be) {
    const cpu_ctx *cx = be->ctx;
    return cpu_pool_threads(cx->pool);
}

static int cpu_status(iisan_backend *be, char *msg, size_t len) {
    cpu_ctx *cx = be->ctx;
    int n = atomic_load(&cx->failures);
    if (n && msg && len)
        snprintf(msg, len, "injected fault: %s exists (IISAN_CPU_FAULT_FILE)", cx->fault_file);
    return n;
}

static void cpu_destroy(iisan_backend *be) {
    cpu_ctx *cx = be->ctx;
    cpu_pool_destroy(cx->pool);
    free(cx->fault_file);
    free(cx);
    free(be);
}

const iisan_backend cpu_plain = {
    .name = "cpu",
    .ctx = NULL,
    .caps = {.host_memory = 1, .parallel_ops = 1},
    .status = cpu_status,
    .alloc = cpu_alloc,
    .alloc_host = cpu_alloc,
    .free = cpu_free,
    .free_host = cpu_free,
    .upload = cpu_upload,
    .download = cpu_download,
    .copy = cpu_copy,
    .zero = cpu_zero,
    .sync = cpu_sync,
    .gemm = cpu_gemm,
    .gemm_mixed = cpu_gemm_mixed,
    .set_precision = cpu_set_precision,
    .gemm_batched = cpu_gemm_batched,
    .axpby = cpu_axpby,
    .add_bias = cpu_add_bias,
    .bias_grad = cpu_bias_grad,
    .ger = cpu_ger,
    .act_fwd = cpu_act_fwd,
    .act_bwd = cpu_act_bwd,
    .dropout_fwd = cpu_dropout_fwd,
    .dropout_bwd = cpu_dropout_bwd,
    .gate_fwd = cpu_gate_fwd,
    .gate_bias_fwd = cpu_gate_bias_fwd,
    .gate_bwd = cpu_gate_bwd,
    .gate_bwd_mix = cpu_gate_bwd_mix,
    .gate_bias_fwd_h = cpu_gate_bias_fwd_h,
    .gate_bwd_mix_h = cpu_gate_bwd_mix_h,
    .gate_dp_dot = cpu_gate_dp_dot,
    .layernorm_fwd = cpu_layernorm_fwd,
    .layernorm_bwd = cpu_layernorm_bwd,
    .attention_fwd = cpu_attention_fwd,
    .softmax_rows = cpu_softmax_rows,
    .attention_bwd = cpu_attention_bwd,
    .inbatch_ce = cpu_inbatch_ce,
    .adam = cpu_adam,
    .gather_half = cpu_gather_half,
    .gather_half16 = cpu_gather_half16,
    .gather_rows = cpu_gather_rows,
    .scatter_add_rows = cpu_scatter_add_rows,
    .rank_targets = cpu_rank_targets,
    .topk = cpu_topk,
    .destroy = cpu_destroy,
};

static _Atomic int threads_last, split_last = 1;
int iisan_cpu_threads_last(void) {
    int t = atomic_load(&threads_last);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    return t > 0 ? t : cores > 0 ? (int)cores : 1;
}
int iisan_cpu_split_last(void) { return atomic_load(&split_last); }

iisan_backend *iisan_backend_cpu(int nthreads) {
    iisan_backend *be = malloc(sizeof *be);
    cpu_ctx *cx = calloc(1, sizeof *cx);
    const char *ff = getenv("IISAN_CPU_FAULT_FILE");
    if (!be || !cx || (ff && *ff && !(cx->fault_file = strdup(ff)))) {
        free(be);
        free(cx);
        return NULL;
    }
    *be = cpu_plain;
    be->ctx = cx;
    be->caps.bf16 = bf16_supported();
    /* OpenBLAS runs one thread per call and the pool cuts large GEMMs (cpu_blas.c), unless
     * IISAN_BLAS_OWN_THREADS=1 asks for OpenBLAS's own threads (for comparison) */
    const char *own = getenv("IISAN_BLAS_OWN_THREADS");
    cx->split_gemm = !(own && !strcmp(own, "1"));
    if (cx->split_gemm)
        openblas_set_num_threads(1);
    else if (nthreads > 0)
        openblas_set_num_threads(nthreads);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (!(cx->pool = cpu_pool_create(nthreads > 0 ? nthreads : cores > 0 ? (int)cores : 1))) {
        cpu_destroy(be);
        return NULL;
    }
    cpu_profile_install(be);
    atomic_store(&threads_last, cpu_pool_threads(cx->pool));
    atomic_store(&split_last, cx->split_gemm);
    return be;
}

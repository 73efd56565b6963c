/* The CUDA backend's table, memory ops, error recording and set-up. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/common.cuh"

/* ---- error recording ---- */

static pthread_mutex_t err_lock = PTHREAD_MUTEX_INITIALIZER;
static int err_count;
static char err_first[512], err_last[512];

static void record(const char *what, const char *stmt, const char *file, int line) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s:%d: %s: %s", file, line, stmt, what);
    fprintf(stderr, "iisan cuda: %s\n", msg);
    pthread_mutex_lock(&err_lock);
    if (err_count++ == 0) snprintf(err_first, sizeof err_first, "%s", msg);
    snprintf(err_last, sizeof err_last, "%s", msg);
    pthread_mutex_unlock(&err_lock);
}

bool iisan_cuda_check(cudaError_t e, const char *stmt, const char *file, int line) {
    if (e == cudaSuccess) return true;
    record(cudaGetErrorString(e), stmt, file, line);
    (void)cudaGetLastError(); /* clear a non-sticky error so the next launch check is clean */
    return false;
}

bool iisan_cuda_check(cublasStatus_t e, const char *stmt, const char *file, int line) {
    if (e == CUBLAS_STATUS_SUCCESS) return true;
    record(cublasGetStatusString(e), stmt, file, line);
    return false;
}

extern "C" int iisan_cuda_errors(char *msg, size_t len) {
    pthread_mutex_lock(&err_lock);
    int n = err_count;
    if (msg && len) snprintf(msg, len, "%s", err_first);
    pthread_mutex_unlock(&err_lock);
    return n;
}

/* the CUDA context is the process's: its failures are every backend's */
static int cuda_status(iisan_backend *be, char *msg, size_t len) {
    (void)be;
    return iisan_cuda_errors(msg, len);
}

/* ---- shared helpers ---- */

static void sample_used(void);

cuda_ctx *cuda_enter(iisan_backend *be) {
    cuda_ctx *cx = (cuda_ctx *)be->ctx;
    CK(cudaSetDevice(cx->device));
    return cx;
}

void *cuda_scratch(void **buf, size_t *have, size_t bytes) {
    if (bytes <= *have) return *buf;
    if (*buf) CK(cudaFree(*buf)); /* cudaFree waits for the kernels still using it */
    *buf = NULL;
    *have = 0;
    if (!CK(cudaMalloc(buf, bytes))) {
        *buf = NULL;
        return NULL;
    }
    sample_used();
    *have = bytes;
    return *buf;
}

/* ---- memory ---- */

/* the device's memory in use (total - free), sampled after every allocation: memory only
 * grows at an allocation, so the largest sample is the peak (this process's buffers, the
 * context and cuBLAS's workspace; on a shared GPU, other processes' too) */
static pthread_mutex_t peak_lock = PTHREAD_MUTEX_INITIALIZER;
static size_t peak_used;

static void sample_used(void) {
    size_t fr = 0, tot = 0;
    if (cudaMemGetInfo(&fr, &tot) != cudaSuccess) {
        (void)cudaGetLastError();
        return;
    }
    pthread_mutex_lock(&peak_lock);
    if (tot - fr > peak_used) peak_used = tot - fr;
    pthread_mutex_unlock(&peak_lock);
}

extern "C" size_t iisan_cuda_peak_bytes(void) {
    pthread_mutex_lock(&peak_lock);
    size_t v = peak_used;
    pthread_mutex_unlock(&peak_lock);
    return v;
}

static void *cuda_alloc(iisan_backend *be, size_t bytes) {
    CUDA_OP(be);
    cuda_enter(be);
    void *p = NULL;
    if (!CK(cudaMalloc(&p, bytes ? bytes : 1))) return NULL;
    sample_used();
    if (!CK(cudaMemset(p, 0, bytes))) {
        CK(cudaFree(p));
        return NULL;
    }
    return p;
}

static void cuda_free(iisan_backend *be, void *p) {
    if (!p) return;
    CUDA_OP(be);
    cuda_enter(be);
    CK(cudaFree(p));
}

/* pinned host memory mapped into the device's address space: with unified addressing the
 * host pointer is the device pointer, and kernels read it over the bus */
static void *cuda_alloc_host(iisan_backend *be, size_t bytes) {
    CUDA_OP(be);
    cuda_enter(be);
    void *p = NULL;
    if (!CK(cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocMapped | cudaHostAllocPortable)))
        return NULL;
    memset(p, 0, bytes);
    void *dp = NULL;
    if (!CK(cudaHostGetDevicePointer(&dp, p, 0)) || dp != p) { /* no unified addressing */
        CK(cudaFreeHost(p));
        return NULL;
    }
    return p;
}

static void cuda_free_host(iisan_backend *be, void *p) {
    if (!p) return;
    CUDA_OP(be);
    cuda_enter(be);
    CK(cudaFreeHost(p));
}

static void cuda_upload(iisan_backend *be, void *dst, const void *src_host, size_t bytes) {
    if (!bytes) return;
    CUDA_OP(be);
    cuda_enter(be);
    CK(cudaMemcpy(dst, src_host, bytes, cudaMemcpyDefault)); /* device or mapped host memory */
}

static void cuda_download(iisan_backend *be, void *dst_host, const void *src, size_t bytes) {
    if (!bytes) return;
    CUDA_OP(be);
    cuda_enter(be);
    CK(cudaMemcpy(dst_host, src, bytes, cudaMemcpyDefault));
}

static void cuda_copy(iisan_backend *be, void *dst, const void *src, size_t bytes) {
    if (!bytes || dst == src) return;
    CUDA_OP(be);
    cuda_enter(be);
    CK(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault));
}

static void cuda_zero(iisan_backend *be, void *p, size_t bytes) {
    if (!bytes) return;
    CUDA_OP(be);
    cuda_enter(be);
    CK(cudaMemset(p, 0, bytes));
}

static void cuda_sync(iisan_backend *be) {
    CUDA_OP(be);
    cuda_enter(be);
    CK(cudaDeviceSynchronize());
}

/* bf16 is CPU-only for now: cuBLAS would need bf16 copies of the operands (cublasGemmEx,
 * CUDA_R_16BF, CUBLAS_COMPUTE_32F) that no op keeps yet */
static int cuda_set_precision(iisan_backend *be, int precision, char *err, size_t len) {
    if (precision == IISAN_PREC_FP32) return 0;
    if (err && len)
        snprintf(err, len,
                 "bf16 is CPU-only for now: the cuda backend runs fp32 (--precision fp32)");
    return -1;
}

static void cuda_destroy(iisan_backend *be) {
    if (!be) return;
    cuda_ctx *cx = (cuda_ctx *)be->ctx;
    if (cx) {
        CK(cudaSetDevice(cx->device));
        CK(cudaDeviceSynchronize());
        if (cx->blas) CK(cublasDestroy(cx->blas));
        if (cx->red) CK(cudaFree(cx->red));
        if (cx->ptrs) CK(cudaFree(cx->ptrs));
        pthread_mutex_destroy(&cx->op_mu);
        free(cx);
    }
    free(be);
}

/* ---- set-up ---- */

static int env_flag(const char *name) {
    const char *s = getenv(name);
    return s && strcmp(s, "1") == 0;
}

extern "C" int iisan_cuda_available(void) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n); /* failure here just means "no device" */
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n > 0;
}

extern "C" iisan_backend *iisan_backend_cuda(int device, char *err, size_t errlen) {
    char dummy[1];
    if (!err || !errlen) {
        err = dummy;
        errlen = sizeof dummy;
    }
    err[0] = 0;
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        snprintf(err, errlen, "no CUDA device (cudaGetDeviceCount: %s)",
                 e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
        (void)cudaGetLastError();
        return NULL;
    }
    if (device < 0 || device >= n) {
        snprintf(err, errlen, "CUDA device %d does not exist (%d found)", device, n);
        return NULL;
    }

    iisan_backend *be = (iisan_backend *)calloc(1, sizeof *be);
    cuda_ctx *cx = (cuda_ctx *)calloc(1, sizeof *cx);
    if (!be || !cx) {
        free(be);
        free(cx);
        snprintf(err, errlen, "out of host memory");
        return NULL;
    }
    be->name = "cuda";
    be->ctx = cx;
    be->caps.host_memory = 0;
    be->caps.parallel_ops = 0; /* one stream: ops queue, whatever thread calls them */
    be->status = cuda_status;
    cx->device = device;
    cx->sync_each = env_flag("IISAN_CUDA_SYNC");
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&cx->op_mu, &ma);
    pthread_mutexattr_destroy(&ma);

    bool ok =
        CK(cudaSetDevice(device)) && CK(cublasCreate(&cx->blas)) &&
        CK(cublasSetMathMode(cx->blas, env_flag("IISAN_CUDA_TF32") ? CUBLAS_TF32_TENSOR_OP_MATH
                                                                   : CUBLAS_DEFAULT_MATH)) &&
        cuda_scratch(&cx->red, &cx->red_bytes, 4096) != NULL;
    if (!ok) {
        pthread_mutex_lock(&err_lock);
        snprintf(err, errlen, "CUDA set-up failed on device %d: %s", device, err_last);
        pthread_mutex_unlock(&err_lock);
        cuda_destroy(be);
        return NULL;
    }

    be->alloc = cuda_alloc;
    be->alloc_host = cuda_alloc_host;
    be->free_host = cuda_free_host;
    be->free = cuda_free;
    be->upload = cuda_upload;
    be->download = cuda_download;
    be->copy = cuda_copy;
    be->zero = cuda_zero;
    be->sync = cuda_sync;
    be->gemm = cuda_gemm;
    be->gemm_mixed = cuda_gemm; /* fp32 only: set_precision refuses bf16 */
    be->set_precision = cuda_set_precision;
    be->gemm_batched = cuda_gemm_batched;
    be->axpby = cuda_axpby;
    be->add_bias = cuda_add_bias;
    be->bias_grad = cuda_bias_grad;
    be->ger = cuda_ger;
    be->act_fwd = cuda_act_fwd;
    be->act_bwd = cuda_act_bwd;
    be->dropout_fwd = cuda_dropout_fwd;
    be->dropout_bwd = cuda_dropout_bwd;
    be->gate_fwd = cuda_gate_fwd;
    be->gate_bias_fwd = cuda_gate_bias_fwd;
    be->gate_bwd = cuda_gate_bwd;
    be->gate_bwd_mix = cuda_gate_bwd_mix;
    be->layernorm_fwd = cuda_layernorm_fwd;
    be->layernorm_bwd = cuda_layernorm_bwd;
    be->attention_fwd = cuda_attention_fwd;
    be->softmax_rows = cuda_softmax_rows;
    be->attention_bwd = cuda_attention_bwd;
    be->inbatch_ce = cuda_inbatch_ce;
    be->adam = cuda_adam;
    be->gather_half = cuda_gather_half;
    be->gather_rows = cuda_gather_rows;
    be->scatter_add_rows = cuda_scatter_add_rows;
    be->rank_targets = cuda_rank_targets;
    be->topk = cuda_topk;
    be->destroy = cuda_destroy;
    return be;
}

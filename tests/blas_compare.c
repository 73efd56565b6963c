/* tests/blas_compare.sh's measuring program: one BLAS library, loaded with dlopen, timed on
 * the GEMM shapes the model calls (docs/benchmarks.md, "Choosing the BLAS").
 *
 *   blas_compare KIND LIBRARY [PREFIX]
 *
 * KIND is cblas (cblas_sgemm, row-major; PREFIX for the symbol, e.g. scipy_ for the
 * scipy-openblas wheels) or dnnl (dnnl_sgemm, row-major by definition). Prints one line per
 * shape (GFLOP/s, best of 5 timed repetitions, each at least 30 ms of work) and a last line,
 * the SAN pair's rate as tests/bench_train.c measures it. Threads come from the library's own
 * environment variables (OPENBLAS_NUM_THREADS, BLIS_NUM_THREADS, MKL_NUM_THREADS,
 * OMP_NUM_THREADS): the script sets them all. */
#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef void (*cblas_sgemm_fn)(int, int, int, int, int, int, float, const float *, int,
                               const float *, int, float, float *, int);
typedef int (*dnnl_sgemm_fn)(char, char, int64_t, int64_t, int64_t, float, const float *, int64_t,
                             const float *, int64_t, float, float *, int64_t);

static cblas_sgemm_fn cblas;
static dnnl_sgemm_fn dnnl;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* C[M x N] = op(A) op(B) (+ beta C), row-major, packed leading dimensions */
static void gemm(int ta, int tb, int M, int N, int K, const float *A, const float *B, float beta,
                 float *C) {
    int lda = ta ? M : K, ldb = tb ? K : N;
    if (cblas)
        cblas(101, ta ? 112 : 111, tb ? 112 : 111, M, N, K, 1.0f, A, lda, B, ldb, beta, C, N);
    else
        dnnl(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, 1.0f, A, lda, B, ldb, beta, C, N);
}

static float *randf(size_t n) {
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++)
        p[i] = (float)rand() / RAND_MAX - 0.5f;
    return p;
}

/* GFLOP/s of one shape: best of 5 repetitions of `it` calls */
static double rate(int ta, int tb, int M, int N, int K) {
    float *A = randf((size_t)M * K), *B = randf((size_t)K * N), *C = randf((size_t)M * N);
    double flop = 2.0 * M * N * K, best = 1e9;
    int it = (int)(3e9 / flop) + 1; /* about 30 ms at 100 GFLOP/s */
    gemm(ta, tb, M, N, K, A, B, 0, C);
    for (int rep = 0; rep < 5; rep++) {
        double t = now();
        for (int i = 0; i < it; i++)
            gemm(ta, tb, M, N, K, A, B, 0, C);
        t = now() - t;
        if (t < best) best = t;
    }
    free(A), free(B), free(C);
    return it * flop / best / 1e9;
}

/* the SAN block's pair as tests/bench_train.c times it: NT 640x64x768, then NT 640x768x64
 * accumulating into the block's output */
static double san_pair(void) {
    int U = 640, D = 768;
    float *a = randf((size_t)U * D), *w = randf((size_t)64 * D), *o = randf((size_t)U * 64),
          *h = randf((size_t)U * D);
    double best = 1e9;
    for (int rep = 0; rep < 5; rep++) {
        double t = now();
        for (int it = 0; it < 20; it++) {
            gemm(0, 1, U, 64, D, a, w, 0, o);
            gemm(0, 1, U, D, 64, o, w, 1, h);
        }
        t = now() - t;
        if (t < best) best = t;
    }
    free(a), free(w), free(o), free(h);
    return 20 * 2 * 2.0 * U * 64 * D / best / 1e9;
}

static const struct {
    const char *what;
    int ta, tb, M, N, K;
} shapes[] = {
    {"SAN down, forward (X W1^T)", 0, 1, 640, 64, 768},
    {"SAN up, forward (H W2^T)", 0, 1, 640, 768, 64},
    {"SAN down, dX (dH W1)", 0, 0, 640, 768, 64},
    {"SAN down, dW (dH^T X)", 1, 0, 64, 768, 640},
    {"SAN up, dH (dY W2)", 0, 0, 640, 64, 768},
    {"SAN up, dW (dY^T H)", 1, 0, 768, 64, 640},
    {"head M = P F (64 x 64 x 768)", 0, 0, 64, 768, 64},
    {"encoder QKV (640 x 1152 x 384)", 0, 1, 640, 1152, 384},
    {"encoder FFN up (640 x 1536 x 384)", 0, 1, 640, 1536, 384},
    {"encoder FFN down (640 x 384 x 1536)", 0, 1, 640, 384, 1536},
};

/* what the library says of itself: version and the kernels it chose, where it tells */
static void describe(void *lib, const char *prefix) {
    char sym[128];
    snprintf(sym, sizeof sym, "%sopenblas_get_config", prefix);
    const char *(*cfg)(void) = (const char *(*)(void))(uintptr_t)dlsym(lib, sym);
    if (cfg) printf("library: %s\n", cfg());
    int (*arch_id)(void) = (int (*)(void))(uintptr_t)dlsym(lib, "bli_arch_query_id");
    const char *(*arch_str)(int) = (const char *(*)(int))(uintptr_t)dlsym(lib, "bli_arch_string");
    const char *(*blis_ver)(void) =
        (const char *(*)(void))(uintptr_t)dlsym(lib, "bli_info_get_version_str");
    if (arch_id && arch_str)
        printf("library: BLIS %s, configuration %s\n", blis_ver ? blis_ver() : "?",
               arch_str(arch_id()));
    void (*mkl_ver)(char *, int) =
        (void (*)(char *, int))(uintptr_t)dlsym(lib, "mkl_get_version_string");
    if (mkl_ver) {
        char v[256];
        mkl_ver(v, sizeof v);
        printf("library: %s\n", v);
    }
    typedef struct {
        int major, minor, patch;
        const char *hash;
        unsigned cpu_runtime, gpu_runtime;
    } dnnl_version_t;
    const dnnl_version_t *(*dver)(void) =
        (const dnnl_version_t *(*)(void))(uintptr_t)dlsym(lib, "dnnl_version");
    int (*isa)(void) = (int (*)(void))(uintptr_t)dlsym(lib, "dnnl_get_effective_cpu_isa");
    if (dver)
        printf("library: oneDNN %d.%d.%d, effective ISA 0x%x\n", dver()->major, dver()->minor,
               dver()->patch, isa ? (unsigned)isa() : 0u);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: blas_compare cblas|dnnl LIBRARY [PREFIX]\n");
        return 2;
    }
    void *lib = dlopen(argv[2], RTLD_NOW | RTLD_GLOBAL);
    if (!lib) {
        fprintf(stderr, "blas_compare: %s\n", dlerror());
        return 1;
    }
    char sym[128];
    if (!strcmp(argv[1], "dnnl")) {
        dnnl = (dnnl_sgemm_fn)(uintptr_t)dlsym(lib, "dnnl_sgemm");
    } else {
        snprintf(sym, sizeof sym, "%scblas_sgemm", argc > 3 ? argv[3] : "");
        cblas = (cblas_sgemm_fn)(uintptr_t)dlsym(lib, sym);
    }
    if (!cblas && !dnnl) {
        fprintf(stderr, "blas_compare: no sgemm in %s\n", argv[2]);
        return 1;
    }
    describe(lib, argc > 3 ? argv[3] : "");
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        printf("%-40s %7.1f GFLOP/s\n", shapes[i].what,
               rate(shapes[i].ta, shapes[i].tb, shapes[i].M, shapes[i].N, shapes[i].K));
    printf("SAN pair (bench_train's sgemm_rate) %.1f GFLOP/s\n", san_pair());
    return 0;
}

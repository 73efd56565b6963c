/* What the BLAS runs on this CPU (kernels/blas_info.h): OpenBLAS's own report (version,
 * build configuration, the core type its dynamic dispatch picked), the vector level of that
 * core against this CPU's (cpuid through the compiler's __builtin_cpu_supports), the sgemm
 * rate on the SAN shapes, and the guard against OpenBLAS picking kernels below the CPU's
 * vector level on a CPU its release does not know (its dispatch goes by vendor, family and
 * model numbers): SSE kernels on a newer Intel model, AVX2 kernels on an AVX-512 CPU it
 * takes for an older one. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "kernels/backend.h"
#include "kernels/blas_info.h"

static double wall(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* OpenBLAS's core names (driver/others/dynamic.c's list, and its TARGET names in builds
 * without DYNAMIC_ARCH) by the widest vectors their sgemm kernels use */
static const struct {
    const char *name;
    int tier;
} cores[] = {
    {"Katmai", BLAS_TIER_SSE},
    {"Coppermine", BLAS_TIER_SSE},
    {"Northwood", BLAS_TIER_SSE},
    {"Prescott", BLAS_TIER_SSE},
    {"Banias", BLAS_TIER_SSE},
    {"Atom", BLAS_TIER_SSE},
    {"Core2", BLAS_TIER_SSE},
    {"Penryn", BLAS_TIER_SSE},
    {"Dunnington", BLAS_TIER_SSE},
    {"Nehalem", BLAS_TIER_SSE},
    {"Athlon", BLAS_TIER_SSE},
    {"Opteron", BLAS_TIER_SSE},
    {"Opteron_SSE3", BLAS_TIER_SSE},
    {"Opteron(SSE3)", BLAS_TIER_SSE},
    {"Barcelona", BLAS_TIER_SSE},
    {"Nano", BLAS_TIER_SSE},
    {"Bobcat", BLAS_TIER_SSE},
    {"Generic", BLAS_TIER_SSE},
    {"Unknown", BLAS_TIER_SSE},
    {"Sandybridge", BLAS_TIER_AVX},
    {"Bulldozer", BLAS_TIER_AVX},
    {"Piledriver", BLAS_TIER_AVX},
    {"Steamroller", BLAS_TIER_AVX},
    {"Haswell", BLAS_TIER_AVX2},
    {"Excavator", BLAS_TIER_AVX2},
    {"Zen", BLAS_TIER_AVX2},
    {"SkylakeX", BLAS_TIER_AVX512},
    {"Cooperlake", BLAS_TIER_AVX512},
    {"SapphireRapids", BLAS_TIER_AVX512},
};

static int core_tier(const char *core) {
    for (size_t i = 0; i < sizeof cores / sizeof cores[0]; i++)
        if (!strcasecmp(core, cores[i].name)) return cores[i].tier;
    return BLAS_TIER_UNKNOWN;
}

/* this CPU's level, as the OS enables it (__builtin_cpu_supports checks XCR0) */
static int cpu_tier(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
        return BLAS_TIER_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return BLAS_TIER_AVX2;
    if (__builtin_cpu_supports("avx")) return BLAS_TIER_AVX;
    return BLAS_TIER_SSE;
}

const char *blas_tier_name(int tier) {
    switch (tier) {
    case BLAS_TIER_SSE: return "SSE";
    case BLAS_TIER_AVX: return "AVX";
    case BLAS_TIER_AVX2: return "AVX2";
    case BLAS_TIER_AVX512: return "AVX-512";
    default: return "unknown";
    }
}

/* measured through a CPU backend with the threads of the last one created, so through the
 * same path as the model's GEMMs (cut across its pool, or OpenBLAS's own threads) */
double blas_sgemm_rate(int D, double budget_s) {
    const int U = 640, R = 64, iters = 5;
    iisan_backend *be = iisan_backend_cpu(iisan_cpu_threads_last());
    float *a = calloc((size_t)U * D, sizeof *a), *w = calloc((size_t)R * D, sizeof *w),
          *o = calloc((size_t)U * R, sizeof *o), *h = calloc((size_t)U * D, sizeof *h);
    double best = 1e30, start = wall();
    if (!be || !a || !w || !o || !h) goto out;
    for (size_t i = 0; i < (size_t)U * D; i++)
        a[i] = (float)(i % 13) * 0.01f;
    for (size_t i = 0; i < (size_t)R * D; i++)
        w[i] = (float)(i % 7) * 0.01f;
    for (int rep = 0; rep < 40; rep++) {
        double t = wall();
        for (int it = 0; it < iters; it++) {
            be->gemm(be, 0, 1, U, R, D, 1, a, D, w, D, 0, o, R);
            be->gemm(be, 0, 1, U, D, R, 1, o, R, w, R, 1, h, D);
        }
        t = wall() - t;
        if (rep > 0 && t < best) best = t; /* the first one warms caches and threads */
        if (rep >= 2 && wall() - start >= budget_s) break;
    }
out:
    if (be) be->destroy(be);
    free(a), free(w), free(o), free(h);
    return best < 1e30 ? iters * 2 * 2.0 * U * R * D / best / 1e9 : 0;
}

static blas_info last;
static int have_last;

void blas_info_probe(blas_info *bi, double measure_s) {
    memset(bi, 0, sizeof *bi);
    const char *cfg = openblas_get_config(), *core = openblas_get_corename();
    snprintf(bi->config, sizeof bi->config, "%s", cfg ? cfg : "");
    char ver[32] = "";
    if (cfg && sscanf(cfg, "OpenBLAS %31s", ver) == 1)
        snprintf(bi->library, sizeof bi->library, "OpenBLAS %s", ver);
    else
        snprintf(bi->library, sizeof bi->library, "OpenBLAS");
    snprintf(bi->core, sizeof bi->core, "%s", core ? core : "unknown");
    bi->core_tier = core_tier(bi->core);
    bi->cpu_tier = cpu_tier();
    bi->threads = iisan_cpu_threads_last();
    bi->split = iisan_cpu_split_last();
    const char *g = getenv("IISAN_BLAS_GUARDED");
    if (g && *g) {
        bi->guarded = 1;
        snprintf(bi->fallback, sizeof bi->fallback, "%s", g);
    }
    if (measure_s > 0) {
        bi->sgemm_gflops = blas_sgemm_rate(768, measure_s);
        last = *bi;
        have_last = 1;
    }
}

const blas_info *blas_info_last(void) { return have_last ? &last : NULL; }

int blas_info_generic(const blas_info *bi) {
    return bi->cpu_tier >= BLAS_TIER_AVX2 && bi->core_tier != BLAS_TIER_UNKNOWN &&
           bi->core_tier < BLAS_TIER_AVX2;
}

int blas_info_below(const blas_info *bi) {
    return bi->cpu_tier >= BLAS_TIER_AVX2 && bi->core_tier != BLAS_TIER_UNKNOWN &&
           bi->core_tier < bi->cpu_tier;
}

void blas_info_line(const blas_info *bi, char *buf, size_t n) {
    char rate[96] = "", guard[128] = "";
    if (bi->sgemm_gflops > 0)
        snprintf(rate, sizeof rate, "; sgemm %.1f GFLOP/s on the SAN shapes", bi->sgemm_gflops);
    if (bi->guarded)
        snprintf(guard, sizeof guard, " (chosen by iisan: OpenBLAS had picked %s, %s)",
                 bi->fallback, blas_tier_name(core_tier(bi->fallback)));
    snprintf(buf, n, "BLAS: %s, kernels %s (%s)%s on an %s CPU, %d thread%s (%s)%s [%s]",
             bi->library, bi->core, blas_tier_name(bi->core_tier), guard,
             blas_tier_name(bi->cpu_tier), bi->threads, bi->threads == 1 ? "" : "s",
             bi->split ? "GEMMs cut across iisan's pool, OpenBLAS one per call" : "OpenBLAS's own",
             rate, bi->config);
}

void blas_info_json(const blas_info *bi, char *buf, size_t n) {
    snprintf(buf, n,
             "\"blas\":\"%s\",\"blas_core\":\"%s\",\"blas_core_level\":\"%s\",\"cpu_level\":\"%s\","
             "\"blas_threads\":%d,\"blas_guarded\":%s,\"blas_below_cpu\":%s,"
             "\"sgemm_san_gflops\":%.2f",
             bi->library, bi->core, blas_tier_name(bi->core_tier), blas_tier_name(bi->cpu_tier),
             bi->threads, bi->guarded ? "true" : "false", blas_info_below(bi) ? "true" : "false",
             bi->sgemm_gflops);
}

/* the best OpenBLAS core type this CPU's features allow */
static const char *core_for_cpu(void) {
    int t = cpu_tier();
    if (t == BLAS_TIER_AVX512)
        return __builtin_cpu_supports("avx512bf16") ? "Cooperlake" : "SkylakeX";
    if (t == BLAS_TIER_AVX2) return "Haswell";
    return NULL;
}

int blas_refuse_generic(const blas_info *bi, const char *who) {
    if (!blas_info_generic(bi)) return 0;
    const char *want = core_for_cpu();
    fprintf(stderr,
            "%s: refusing to report figures: the BLAS (%s) runs its %s kernels (%s) on a CPU "
            "with %s; every GEMM would run at a fraction of this machine's rate. Unset "
            "OPENBLAS_CORETYPE if it is set (iisan then picks the core type from the CPU's "
            "features), or set it to %s, the core type for this CPU.\n",
            who, bi->library, bi->core, blas_tier_name(bi->core_tier), blas_tier_name(bi->cpu_tier),
            want ? want : "one this CPU can run");
    return 1;
}

const char *blas_generic_warning(const blas_info *bi) {
    static char msg[512];
    if (!blas_info_below(bi)) return NULL; /* generic kernels, or AVX2 ones on AVX-512 */
    const char *want = core_for_cpu();
    snprintf(msg, sizeof msg,
             "WARNING: the BLAS (%s) runs its %s kernels (%s) on a CPU with %s: every GEMM "
             "runs at %s of this machine's rate. Unset OPENBLAS_CORETYPE, or set it to %s.",
             bi->library, bi->core, blas_tier_name(bi->core_tier), blas_tier_name(bi->cpu_tier),
             blas_info_generic(bi) ? "a fraction" : "about half", want ? want : "this CPU's");
    return msg;
}

void blas_guard(char **argv) {
    const char *set = getenv("OPENBLAS_CORETYPE");
    if (set && *set) return; /* the user's (or an earlier guard's) choice */
    const char *core = openblas_get_corename();
    /* IISAN_BLAS_GUARD_TEST=NAME: the test hook, acts as if OpenBLAS had picked NAME */
    const char *test = getenv("IISAN_BLAS_GUARD_TEST");
    if (test && *test) core = test;
    const char *want = core_for_cpu();
    if (!core || !want || core_tier(core) == BLAS_TIER_UNKNOWN || core_tier(core) >= cpu_tier())
        return;
    setenv("OPENBLAS_CORETYPE", want, 1);
    setenv("IISAN_BLAS_GUARDED", core, 1);
    execv("/proc/self/exe", argv);
    fprintf(stderr,
            "WARNING: OpenBLAS picked its %s kernels on a CPU with %s, and restarting with "
            "OPENBLAS_CORETYPE=%s failed: run with OPENBLAS_CORETYPE=%s set\n",
            core, blas_tier_name(cpu_tier()), want, want);
    unsetenv("OPENBLAS_CORETYPE");
    unsetenv("IISAN_BLAS_GUARDED");
}

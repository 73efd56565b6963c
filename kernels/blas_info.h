/* Which kernels the CPU backend's BLAS runs, and how fast (kernels/cpu/cpu_blas_info.c).
 *
 * Every benchmark, `iisan train`, `iisan serve` and `iisan blas` report the library, its
 * build configuration, the core type (kernel set) it picked, the vector level of those
 * kernels against this CPU's (our own cpuid check), and the sgemm rate on a SAN block's
 * shapes. A benchmark refuses to report figures when the kernels are generic (below AVX2) on
 * a CPU that has AVX2 or AVX-512 (blas_info_generic); `iisan train`, `iisan serve` and the
 * benchmarks warn loudly whenever the kernels are below the CPU's level (blas_info_below: AVX2
 * kernels on an AVX-512 CPU too, about half its rate). blas_guard, called first thing in main,
 * keeps that from happening unasked: when OPENBLAS_CORETYPE is unset and OpenBLAS did not
 * recognise the CPU and picked kernels below its level (SSE on a newer Intel model; AVX2 on an
 * AVX-512 CPU it takes for an older one), it restarts the process with the core type this
 * CPU's features allow. A core type the environment sets is kept, with the warning. */
#ifndef IISAN_KERNELS_BLAS_INFO_H
#define IISAN_KERNELS_BLAS_INFO_H

#include <stddef.h>

/* vector levels, of a kernel set and of a CPU; BLAS_TIER_UNKNOWN for a core name not known */
enum { BLAS_TIER_UNKNOWN = -1, BLAS_TIER_SSE, BLAS_TIER_AVX, BLAS_TIER_AVX2, BLAS_TIER_AVX512 };

typedef struct {
    char library[64];    /* "OpenBLAS 0.3.21" */
    char config[192];    /* the library's build configuration string */
    char core[32];       /* the kernel set it runs ("Cooperlake", "Haswell", "Prescott"...) */
    int core_tier;       /* BLAS_TIER_* of those kernels */
    int cpu_tier;        /* BLAS_TIER_* of this CPU (cpuid) */
    int threads;         /* the library's threads */
    int split;           /* 1: GEMMs cut across the backend's pool (OpenBLAS one per call) */
    int guarded;         /* 1: blas_guard chose the core (the library's was below the CPU) */
    char fallback[32];   /* what the library had picked by itself when guarded */
    double sgemm_gflops; /* on the SAN shapes; 0 when not measured */
} blas_info;

/* Fills *bi; measures the sgemm rate when measure_s > 0 (about that many seconds, at least
 * two repetitions) and keeps the result for blas_info_last. Call after the backend is
 * created (its thread count). */
void blas_info_probe(blas_info *bi, double measure_s);
/* the last measured probe, or NULL */
const blas_info *blas_info_last(void);
/* sgemm GFLOP/s on a SAN block's shapes (640 rows, width D, r = 64: X W1^T then H W2^T
 * accumulated), best repetition within about budget_s seconds */
double blas_sgemm_rate(int D, double budget_s);
/* 1 when the kernels are below AVX2 (generic) on a CPU with AVX2 or AVX-512 */
int blas_info_generic(const blas_info *bi);
/* 1 when the kernels are below this CPU's level on a CPU with AVX2 or AVX-512 (generic ones,
 * or AVX2 ones on an AVX-512 CPU) */
int blas_info_below(const blas_info *bi);
/* one line, no newline: library, kernels, CPU level, threads, rate */
void blas_info_line(const blas_info *bi, char *buf, size_t n);
/* the same as JSON object members (no braces): "blas":..,"blas_core":..,... */
void blas_info_json(const blas_info *bi, char *buf, size_t n);
/* A benchmark's check: when blas_info_generic, prints why and what to do to stderr, naming
 * `who`, and returns 1 (the caller exits non-zero); else 0. */
int blas_refuse_generic(const blas_info *bi, const char *who);
/* the warning when blas_info_below (generic kernels, or AVX2 ones on an AVX-512 CPU), or NULL
 * when the kernels are this CPU's */
const char *blas_generic_warning(const blas_info *bi);
const char *blas_tier_name(int tier);
/* Called first in main: when OPENBLAS_CORETYPE is unset and OpenBLAS picked kernels below the
 * level of a CPU with AVX2 or AVX-512, sets OPENBLAS_CORETYPE to the core type the CPU allows
 * and re-executes the program (OpenBLAS chooses its kernels once, when it is loaded). Returns
 * only when nothing is to be done or the re-execution failed (then with a warning). */
void blas_guard(char **argv);

#endif

/* The CPU backend's bf16 GEMM (kernels/cpu/cpu_bf16.c): op(A) and op(B) rounded to bf16
 * (round to nearest even) as they are packed, products summed in fp32, on CPUs with
 * AVX512-BF16 (vdpbf16ps), chosen at run time: the binary still runs on CPUs without it,
 * where bf16_supported() is 0 and nothing here may be called. */
#ifndef IISAN_KERNELS_CPU_CPU_BF16_H
#define IISAN_KERNELS_CPU_CPU_BF16_H

#include "kernels/cpu/cpu.h"

/* 1 when this CPU has AVX512-BF16 (and the test hook IISAN_CPU_NO_BF16 is not set) */
int bf16_supported(void);

/* C[M,N] = alpha op(A) op(B) + beta C as iisan_backend.gemm, with bf16 inputs; M, N, K > 0.
 * The packing and the tiles run on pool. Returns 0, or -1 when out of memory (C untouched). */
int cpu_gemm_bf16(cpu_pool *pool, int ta, int tb, int M, int N, int K, float alpha, const float *A,
                  int lda, const float *B, int ldb, float beta, float *C, int ldc);

#endif

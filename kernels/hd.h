/* IISAN_HD marks per-element functions that the CPU backend and the CUDA
 * backend share: __host__ __device__ under nvcc, nothing in C. */
#ifndef IISAN_KERNELS_HD_H
#define IISAN_KERNELS_HD_H

#ifdef __CUDACC__
#define IISAN_HD __host__ __device__
#else
#define IISAN_HD
#endif

#endif

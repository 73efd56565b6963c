/* The CUDA backend: the same table as kernels/backend.h, run on one GPU.
 *
 * - GEMMs go through cuBLAS in full fp32; IISAN_CUDA_TF32=1 in the environment lets cuBLAS use
 *   TF32 tensor cores instead (faster, ~1e-3 relative error).
 * - Every CUDA / cuBLAS call is checked: a failure is printed to stderr with the statement,
 *   file and line, and recorded: be->status (kernels/backend.h) counts them, and callers ask
 *   it after a batch, a load or a training run.
 * - IISAN_CUDA_SYNC=1 synchronises after every kernel launch so that a failing kernel is
 *   reported at its own launch (debugging).
 * - Ops run on the legacy default stream, in call order. Memory from be->alloc is device
 *   memory; download and sync wait for the work before them.
 * - gather_half: rows[] itself is a host array, but every non-NULL rows[i] must be an address
 *   the GPU can read: device memory (be->alloc), managed memory, or host memory registered
 *   with cudaHostRegister(..., cudaHostRegisterMapped) (with unified addressing its host
 *   address is usable on the device). Plain pageable host pointers (malloc, an mmap'ed LMDB
 *   map) are NOT readable unless the system supports pageable-memory access (HMM / ATS).
 * - scatter_add_rows adds with atomics: with repeated indexes the order of the additions,
 *   hence the last bits of the result, may vary between runs. Every other reduction
 *   (bias_grad, layernorm dg/db, gate dp, the loss) is deterministic.
 * - Ops from several threads are serialised (one cuBLAS handle, one stream: caps.parallel_ops
 *   is 0); each op makes the backend's device current on the calling thread first.
 */
#ifndef IISAN_KERNELS_CUDA_BACKEND_H
#define IISAN_KERNELS_CUDA_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "kernels/backend.h"

/* The backend on GPU `device` (0 = the first). NULL with a message in err (errlen bytes, may
 * be 0) when there is no usable device or setting it up failed. */
iisan_backend *iisan_backend_cuda(int device, char *err, size_t errlen);

/* 1 when at least one CUDA device is usable, else 0 (never prints). */
int iisan_cuda_available(void);

/* How many CUDA / cuBLAS errors were recorded since the process started; the first one's
 * message is copied into msg (len bytes, may be 0). */
int iisan_cuda_errors(char *msg, size_t len);

/* The most device memory seen in use (total - free, sampled after each of the backend's
 * allocations) since the process started, in bytes: a run's device peak. */
size_t iisan_cuda_peak_bytes(void);

#ifdef __cplusplus
}
#endif

#endif

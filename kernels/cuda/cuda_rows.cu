/* Row-wise ops: LayerNorm, attention for short sequences, the in-batch cross-entropy. Each
 * follows the CPU backend's formulation (kernels/cpu/cpu_norm.c, cpu_attention.c,
 * cpu_loss.c): the same per-element expressions, row sums added in double where the CPU
 * does, and the attention's masking and dropout exactly as there. */
#include <math.h>

#include "kernels/cuda/common.cuh"
#include "kernels/rng.h"

/* threads for a one-block-per-row kernel over `cols` columns: a multiple of 32, <= 256 */
static unsigned row_threads(int cols) {
    unsigned t = ((unsigned)cols + 31u) / 32u * 32u;
    return t < 32u ? 32u : t > 256u ? 256u : t;
}

/* ---- LayerNorm (biased variance, as PyTorch) ---- */

static __global__ void k_ln_fwd(float *y, float *mean, float *rstd, const float *x, const float *g,
                                const float *b, int cols, float eps) {
    size_t r = blockIdx.x;
    const float *xr = x + r * cols;
    float *yr = y + r * cols;
    float s = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        s += xr[c];
    float mu = (float)(block_sum_d(s) / cols);
    float sq = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        sq += (xr[c] - mu) * (xr[c] - mu);
    float rs = (float)(1.0 / sqrt(block_sum_d(sq) / cols + (double)eps));
    /* every read of xr is done (block_sum_d synchronised), so y may equal x */
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        yr[c] = (xr[c] - mu) * rs * g[c] + b[c];
    if (threadIdx.x == 0) {
        mean[r] = mu;
        rstd[r] = rs;
    }
}

void cuda_layernorm_fwd(iisan_backend *be, float *y, float *mean, float *rstd, const float *x,
                        const float *g, const float *b, int rows, int cols, float eps) {
    if (rows <= 0 || cols <= 0) return;
    CUDA_OP(be);
    cuda_ctx *cx = cuda_enter(be);
    LAUNCH(cx, k_ln_fwd, rows, row_threads(cols), 0, y, mean, rstd, x, g, b, cols, eps);
}

/* dg[c] += sum_r dy xhat, db[c] += sum_r dy: column sums as bias_grad's (COLS_X columns x
 * COLS_Y row lanes per block, lanes added in a fixed order). */
#define COLS_X 32
#define COLS_Y 16

static __global__ void k_ln_bwd_params(float *dg, float *db, const float *dy, const float *x,
                                       const float *mean, const float *rstd, int rows, int cols) {
    __shared__ float pg[COLS_Y][COLS_X + 1], pb[COLS_Y][COLS_X + 1];
    int c = blockIdx.x * COLS_X + threadIdx.x;
    float sg = 0.0f, sb = 0.0f;
    if (c < cols)
        for (int r = threadIdx.y; r < rows; r += COLS_Y) {
            size_t e = (size_t)r * cols + c;
            sg += dy[e] * ((x[e] - mean[r]) * rstd[r]);
            sb += dy[e];
        }
    pg[threadIdx.y][threadIdx.x] = sg;
    pb[threadIdx.y][threadIdx.x] = sb;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
        float tg = 0.0f, tb = 0.0f;
        for (int k = 0; k < COLS_Y; k++) {
            tg += pg[k][threadIdx.x];
            tb += pb[k][threadIdx.x];
        }
        dg[c] += tg;
        db[c] += tb;
    }
}

/* dx = rstd (dy g - mean(dy g) - xhat mean(dy g xhat)), one block per row */
static __global__ void k_ln_bwd_dx(float *dx, const float *dy, const float *x, const float *mean,
                                   const float *rstd, const float *g, int cols) {
    size_t r = blockIdx.x;
    const float *xr = x + r * cols, *dyr = dy + r * cols;
    float *dxr = dx + r * cols;
    float mu = mean[r], rs = rstd[r];
    float a1 = 0.0f, a2 = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float xh = (xr[c] - mu) * rs, dxh = dyr[c] * g[c];
        a1 += dxh;
        a2 += dxh * xh;
    }
    float m1 = (float)(block_sum_d(a1) / cols);
    float m2 = (float)(block_sum_d(a2) / cols);
    /* each thread rewrites only the columns it read, after the sums: dx may equal dy */
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float xh = (xr[c] - mu) * rs;
        dxr[c] = rs * (dyr[c] * g[c] - m1 - xh * m2);
    }
}

void cuda_layernorm_bwd(iisan_backend *be, float *dx, float *dg, float *db, const float *dy,
                        const float *x, const float *mean, const float *rstd, const float *g,
                        int rows, int cols) {
    if (rows <= 0 || cols <= 0) return;
    CUDA_OP(be);
    cuda_ctx *cx = cuda_enter(be);
    /* the parameter gradients first: dx may overwrite dy */
    dim3 block(COLS_X, COLS_Y);
    LAUNCH(cx, k_ln_bwd_params, (cols + COLS_X - 1) / COLS_X, block, 0, dg, db, dy, x, mean, rstd,
           rows, cols);
    LAUNCH(cx, k_ln_bwd_dx, rows, row_threads(cols), 0, dx, dy, x, mean, rstd, g, cols);
}

/* ---- attention for short sequences: one block per (batch, head) ----
 *
 * As the CPU backend: where row i has at least one allowed key (j <= i, mask[j] != 0) the
 * other keys get probability exactly 0; a row with no allowed key (left padding) is the
 * softmax of its raw scores over all n keys (what adding -1e9 everywhere means exactly).
 * Dropout on the probabilities uses the flat index into probs [B, H, n, n]. */
#define ATT_MAX_N 64
#define ATT_THREADS 128

/* dropout multiplier of probs element idx: 0 or 1/(1-p) (1 when p <= 0) */
__device__ inline float keep_scale(uint64_t key, size_t idx, float p, float inv_keep) {
    if (p <= 0.0f) return 1.0f;
    return iisan_rng_uniform_key(key, idx) >= p ? inv_keep : 0.0f;
}

__device__ inline float dot(const float *a, const float *b, int n) {
    float s = 0.0f;
    for (int k = 0; k < n; k++)
        s += a[k] * b[k];
    return s;
}

static __global__ void k_attn_fwd(float *out, float *probs, const float *qkv, const float *mask,
                                  int n, int H, int dh, float p, float inv_keep, uint64_t key) {
    extern __shared__ float sm[];
    float *P = sm, *W = sm + n * n; /* probabilities; after dropout */
    __shared__ int first_real;      /* the first j with mask[j] != 0, n if none */
    const int bh = blockIdx.x, b = bh / H, h = bh % H, d = H * dh;
    const size_t ld = (size_t)3 * d;
    const float *mk = mask + (size_t)b * n;
    const float *base = qkv + (size_t)b * n * ld;
    const float sc = 1.0f / sqrtf((float)dh);
    const size_t pbase = (size_t)bh * n * n;

    if (threadIdx.x == 0) {
        int f = n;
        for (int j = n - 1; j >= 0; j--)
            if (mk[j] != 0.0f) f = j;
        first_real = f;
    }
    __syncthreads();

    for (int e = threadIdx.x; e < n * n; e += blockDim.x) {
        int i = e / n, j = e % n;
        int any = first_real <= i;
        int allowed = !any || (j <= i && mk[j] != 0.0f);
        P[e] = allowed ? dot(base + (size_t)i * ld + (size_t)h * dh,
                             base + (size_t)j * ld + d + (size_t)h * dh, dh) *
                             sc
                       : -INFINITY;
    }
    __syncthreads();

    for (int i = threadIdx.x; i < n; i += blockDim.x) { /* softmax of row i, in j order */
        float *Pi = P + i * n;
        float mx = -INFINITY;
        for (int j = 0; j < n; j++)
            if (Pi[j] > mx) mx = Pi[j];
        float sum = 0.0f;
        for (int j = 0; j < n; j++) {
            Pi[j] = Pi[j] == -INFINITY ? 0.0f : expf(Pi[j] - mx);
            sum += Pi[j];
        }
        float inv = 1.0f / sum;
        for (int j = 0; j < n; j++)
            Pi[j] *= inv;
    }
    __syncthreads();

    for (int e = threadIdx.x; e < n * n; e += blockDim.x) {
        probs[pbase + e] = P[e];
        W[e] = P[e] * keep_scale(key, pbase + e, p, inv_keep);
    }
    __syncthreads();

    for (int e = threadIdx.x; e < n * dh; e += blockDim.x) { /* out_i = sum_j W_ij v_j */
        int i = e / dh, k = e % dh;
        float o = 0.0f;
        for (int j = 0; j < n; j++) {
            float w = W[i * n + j];
            if (w == 0.0f) continue;
            o += w * base[(size_t)j * ld + 2 * d + (size_t)h * dh + k];
        }
        out[((size_t)b * n + i) * d + (size_t)h * dh + k] = o;
    }
}

/* the kernels keep n x n scores in shared memory: n <= ATT_MAX_N (reported otherwise) */
static bool attn_check(int n) {
    if (n <= ATT_MAX_N) return true;
    iisan_cuda_check(cudaErrorInvalidValue, "attention: sequence length n > 64", __FILE__,
                     __LINE__);
    return false;
}

void cuda_attention_fwd(iisan_backend *be, float *out, float *probs, const float *qkv,
                        const float *mask, int B, int n, int H, int dh, float p, uint64_t seed) {
    if (B <= 0 || n <= 0 || H <= 0 || dh <= 0 || !attn_check(n)) return;
    CUDA_OP(be);
    cuda_ctx *cx = cuda_enter(be);
    const float inv_keep = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    size_t shm = (size_t)2 * n * n * sizeof(float);
    LAUNCH(cx, k_attn_fwd, B * H, ATT_THREADS, shm, out, probs, qkv, mask, n, H, dh, p, inv_keep,
           iisan_rng_key(seed));
}

/* With Pd = dropout(P): dV_j = sum_i Pd_ij dout_i; dP_ij = keep_ij (dout_i . v_j);
 * dS_ij = P_ij (dP_ij - sum_j' P_ij' dP_ij') sc; dq_i = sum_j dS_ij k_j;
 * dk_j = sum_i dS_ij q_i. Every sum runs in the CPU's order (i or j ascending, zero terms
 * skipped), and every element of this (batch, head)'s part of dqkv is written. */
static __global__ void k_attn_bwd(float *dqkv, const float *dout, const float *qkv,
                                  const float *probs, int n, int H, int dh, float p, float inv_keep,
                                  uint64_t key) {
    extern __shared__ float sm[];
    float *P = sm, *G = sm + n * n; /* G: first Pd, then dP, then dS */
    const int bh = blockIdx.x, b = bh / H, h = bh % H, d = H * dh;
    const size_t ld = (size_t)3 * d;
    const float *base = qkv + (size_t)b * n * ld;
    float *dbase = dqkv + (size_t)b * n * ld;
    const float *gout = dout + (size_t)b * n * d + (size_t)h * dh; /* row i at i * d */
    const float sc = 1.0f / sqrtf((float)dh);
    const size_t pbase = (size_t)bh * n * n;
    const size_t qo = (size_t)h * dh, ko = (size_t)d + qo, vo = (size_t)2 * d + qo;

    for (int e = threadIdx.x; e < n * n; e += blockDim.x) {
        P[e] = probs[pbase + e];
        G[e] = P[e] * keep_scale(key, pbase + e, p, inv_keep);
    }
    __syncthreads();

    for (int e = threadIdx.x; e < n * dh; e += blockDim.x) { /* dV */
        int j = e / dh, k = e % dh;
        float acc = 0.0f;
        for (int i = 0; i < n; i++) {
            float w = G[i * n + j];
            if (w != 0.0f) acc += w * gout[(size_t)i * d + k];
        }
        dbase[(size_t)j * ld + vo + k] = acc;
    }
    __syncthreads(); /* G is reused */

    for (int e = threadIdx.x; e < n * n; e += blockDim.x) { /* dP */
        int i = e / n, j = e % n;
        float ks = keep_scale(key, pbase + e, p, inv_keep);
        G[e] = ks == 0.0f ? 0.0f : ks * dot(gout + (size_t)i * d, base + (size_t)j * ld + vo, dh);
    }
    __syncthreads();

    for (int i = threadIdx.x; i < n; i += blockDim.x) { /* dS, row i */
        const float *Pi = P + i * n;
        float *Gi = G + i * n;
        double pdp = 0.0;
        for (int j = 0; j < n; j++)
            pdp += (double)Pi[j] * Gi[j];
        for (int j = 0; j < n; j++)
            Gi[j] = Pi[j] * (Gi[j] - (float)pdp) * sc;
    }
    __syncthreads();

    for (int e = threadIdx.x; e < n * dh; e += blockDim.x) { /* dQ and dK */
        int r = e / dh, k = e % dh;
        float aq = 0.0f, ak = 0.0f;
        for (int t = 0; t < n; t++) {
            float dsq = G[r * n + t]; /* dS_rt: q_r against key t */
            if (dsq != 0.0f) aq += dsq * base[(size_t)t * ld + ko + k];
            float dsk = G[t * n + r]; /* dS_tr: key r against query t */
            if (dsk != 0.0f) ak += dsk * base[(size_t)t * ld + qo + k];
        }
        dbase[(size_t)r * ld + qo + k] = aq;
        dbase[(size_t)r * ld + ko + k] = ak;
    }
}

void cuda_attention_bwd(iisan_backend *be, float *dqkv, const float *dout, const float *qkv,
                        const float *probs, int B, int n, int H, int dh, float p, uint64_t seed) {
    if (B <= 0 || n <= 0 || H <= 0 || dh <= 0 || !attn_check(n)) return;
    CUDA_OP(be);
    cuda_ctx *cx = cuda_enter(be);
    const float inv_keep = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    size_t shm = (size_t)2 * n * n * sizeof(float);
    LAUNCH(cx, k_attn_bwd, B * H, ATT_THREADS, shm, dqkv, dout, qkv, probs, n, H, dh, p, inv_keep,
           iisan_rng_key(seed));
}

/* ---- in-batch debiased cross-entropy: one block per query row ---- */

#define CE_THREADS 256
#define MASKED_LOGIT (-1e4f)

__device__ inline bool ce_masked(const int *cand_item, const unsigned char *um, int c, int t) {
    return cand_item[c] == 0 || (um[c] != 0 && c != t);
}

/* logits row q := gradient; lossq[q] = log-sum-exp - target logit (double) */
static __global__ void k_ce_row(float *logits, double *lossq, const float *logpop,
                                const int *cand_item, const unsigned char *umask, const int *quser,
                                const int *qtarget, int C, float invq) {
    const int q = blockIdx.x;
    float *row = logits + (size_t)q * C;
    const unsigned char *um = umask + (size_t)quser[q] * C;
    const int t = qtarget[q];

    float mx = -INFINITY;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float l = ce_masked(cand_item, um, c, t) ? MASKED_LOGIT : row[c] - logpop[c];
        row[c] = l;
        if (l > mx) mx = l;
    }
    mx = block_max(mx); /* synchronises: the masked logits are visible to the whole block */
    const float zt = row[t];
    double s = 0.0;
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        s += (double)expf(row[c] - mx);
    const double sum = block_sum_d(s); /* synchronises: row[t] was read by everyone */
    if (threadIdx.x == 0) lossq[q] = (double)mx + log(sum) - (double)zt;
    const float scale = (float)(1.0 / sum) * invq;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float gr = ce_masked(cand_item, um, c, t) ? 0.0f : expf(row[c] - mx) * scale;
        if (c == t && cand_item[t] != 0) gr -= invq; /* a padding target stays constant */
        row[c] = gr;
    }
}

static __global__ void k_ce_mean(float *loss, const double *lossq, int Q) {
    double acc = 0.0;
    for (int k = threadIdx.x; k < Q; k += blockDim.x)
        acc += lossq[k];
    double total = block_sum_d(acc);
    if (threadIdx.x == 0) *loss = (float)(total / Q);
}

void cuda_inbatch_ce(iisan_backend *be, float *logits, float *loss, const float *logpop,
                     const int *cand_item, const unsigned char *umask, const int *quser,
                     const int *qtarget, int Q, int C) {
    CUDA_OP(be);
    cuda_ctx *cx = cuda_enter(be);
    if (Q <= 0) {
        CK(cudaMemset(loss, 0, sizeof(float)));
        return;
    }
    double *lossq = (double *)cuda_scratch(&cx->red, &cx->red_bytes, (size_t)Q * sizeof(double));
    if (!lossq) return;
    const float invq = 1.0f / (float)Q;
    LAUNCH(cx, k_ce_row, Q, CE_THREADS, 0, logits, lossq, logpop, cand_item, umask, quser, qtarget,
           C, invq);
    LAUNCH(cx, k_ce_mean, 1, 256, 0, loss, lossq, Q);
}

/* one block of SM_THREADS per row: the maximum, the sum of exponentials (each thread over a
 * stride of the row, then a tree in shared memory), then the scaling. Masked entries are 0. */
#define SM_THREADS 64
static __global__ void k_softmax_rows(float *s, int len, const int *keymask, int rows_per_mask) {
    __shared__ float red[SM_THREADS];
    const int r = blockIdx.x, t = threadIdx.x;
    float *row = s + (size_t)r * len;
    const int *mk = keymask ? keymask + (size_t)(r / rows_per_mask) * len : NULL;
    float mx = -INFINITY;
    for (int j = t; j < len; j += SM_THREADS)
        if ((!mk || mk[j]) && row[j] > mx) mx = row[j];
    red[t] = mx;
    __syncthreads();
    for (int w = SM_THREADS / 2; w > 0; w /= 2) {
        if (t < w && red[t + w] > red[t]) red[t] = red[t + w];
        __syncthreads();
    }
    mx = red[0];
    __syncthreads();
    float sum = 0.0f;
    for (int j = t; j < len; j += SM_THREADS) {
        float p = !mk || mk[j] ? expf(row[j] - mx) : 0.0f;
        row[j] = p;
        sum += p;
    }
    red[t] = sum;
    __syncthreads();
    for (int w = SM_THREADS / 2; w > 0; w /= 2) {
        if (t < w) red[t] += red[t + w];
        __syncthreads();
    }
    const float inv = red[0] > 0.0f ? 1.0f / red[0] : 0.0f;
    for (int j = t; j < len; j += SM_THREADS)
        row[j] *= inv;
}

void cuda_softmax_rows(iisan_backend *be, float *s, int R, int len, const int *keymask,
                       int rows_per_mask) {
    if (R <= 0 || len <= 0) return;
    CUDA_OP(be);
    cuda_ctx *cx = cuda_enter(be);
    LAUNCH(cx, k_softmax_rows, R, SM_THREADS, 0, s, len, keymask,
           rows_per_mask > 0 ? rows_per_mask : 1);
}

/* Elementwise ops: activations, dropout, the IISAN gates. In-place use (y == x,
 * dx == dy, out == c) is allowed by the contract, so the in/out pointers are not
 * restrict; GCC's runtime overlap check still takes the vector path when they
 * are equal, since each element is read before it is written. */
#include <string.h>

#include "kernels/act.h"
#include "kernels/cpu/cpu.h"
#include "kernels/rng.h"

/* the operands of one elementwise op, cut into ranges by the pool */
typedef struct {
    int act;
    float *y;
    const float *x, *dy, *c, *b;
    float p, sx, sy;
    uint64_t seed;
} ew_args;

enum { EW_GRAIN = 8192 }; /* elements: a piece's work well above the pool's hand-off */

static CPU_VEC void act_fwd_range(void *va, size_t lo, size_t hi) {
    const ew_args *a = va;
    float *y = a->y;
    const float *x = a->x;
    if (a->act == IISAN_ACT_GELU)
        for (size_t i = lo; i < hi; i++)
            y[i] = iisan_gelu(x[i]);
    else
        for (size_t i = lo; i < hi; i++)
            y[i] = iisan_relu(x[i]);
}

void cpu_act_fwd(iisan_backend *be, int act, float *y, const float *x, size_t n) {
    ew_args a = {.act = act, .y = y, .x = x};
    cpu_par(be, n, EW_GRAIN, act_fwd_range, &a);
}

static CPU_VEC void act_bwd_range(void *va, size_t lo, size_t hi) {
    const ew_args *a = va;
    float *dx = a->y;
    const float *dy = a->dy, *x = a->x;
    if (a->act == IISAN_ACT_GELU)
        for (size_t i = lo; i < hi; i++)
            dx[i] = dy[i] * iisan_gelu_grad(x[i]);
    else
        for (size_t i = lo; i < hi; i++)
            dx[i] = x[i] > 0.0f ? dy[i] : 0.0f;
}

void cpu_act_bwd(iisan_backend *be, int act, float *dx, const float *dy, const float *x, size_t n) {
    ew_args a = {.act = act, .y = dx, .dy = dy, .x = x};
    cpu_par(be, n, EW_GRAIN, act_bwd_range, &a);
}

/* y = x * keep / (1 - p), keep = uniform(seed, i) >= p, over [lo, hi). Forward
 * and backward are the same linear map, so both slots share it. */
static CPU_VEC void dropout_range(void *va, size_t lo, size_t hi) {
    const ew_args *a = va;
    float *y = a->y;
    const float *x = a->x;
    const float p = a->p;
    if (p <= 0.0f) {
        if (y != x) memcpy(y + lo, x + lo, (hi - lo) * sizeof *y);
        return;
    }
    if (p >= 1.0f) { /* nothing is kept */
        memset(y + lo, 0, (hi - lo) * sizeof *y);
        return;
    }
    float scale = 1.0f / (1.0f - p);
    uint64_t key = iisan_rng_key(a->seed);
    for (size_t i = lo; i < hi; i++) {
        float m = iisan_rng_uniform_key(key, i) >= p ? scale : 0.0f; /* as x * mask / (1-p) */
        y[i] = x[i] * m;
    }
}

void cpu_dropout_fwd(iisan_backend *be, float *y, const float *x, size_t n, float p,
                     uint64_t seed) {
    ew_args a = {.y = y, .x = x, .p = p, .seed = seed};
    cpu_par(be, n, EW_GRAIN, dropout_range, &a);
}

void cpu_dropout_bwd(iisan_backend *be, float *dx, const float *dy, size_t n, float p,
                     uint64_t seed) {
    ew_args a = {.y = dx, .x = dy, .p = p, .seed = seed};
    cpu_par(be, n, EW_GRAIN, dropout_range, &a);
}

/* out = c + sx * x + sy * y, where c, x or y may be NULL (= zeros) and out may
 * equal c. One pass over memory whichever operands are present. */
static CPU_VEC void lin3(float *out, const float *c, const float *x, float sx, const float *y,
                         float sy, size_t n) {
    if (!x) { /* move the one present operand to x */
        x = y, sx = sy;
        y = NULL;
    }
    if (c && x && y)
        for (size_t i = 0; i < n; i++)
            out[i] = c[i] + sx * x[i] + sy * y[i];
    else if (c && x)
        for (size_t i = 0; i < n; i++)
            out[i] = c[i] + sx * x[i];
    else if (x && y)
        for (size_t i = 0; i < n; i++)
            out[i] = sx * x[i] + sy * y[i];
    else if (x)
        for (size_t i = 0; i < n; i++)
            out[i] = sx * x[i];
    else if (c) {
        if (n && out != c) memcpy(out, c, n * sizeof *out);
    } else if (n)
        memset(out, 0, n * sizeof *out);
}

static void lin3_range(void *va, size_t lo, size_t hi) {
    const ew_args *a = va;
    lin3(a->y + lo, a->c ? a->c + lo : NULL, a->x ? a->x + lo : NULL, a->sx,
         a->b ? a->b + lo : NULL, a->sy, hi - lo);
}

void cpu_gate_fwd(iisan_backend *be, float *out, const float *c, const float *a, const float *b,
                  const float *p, float temp, size_t n) {
    float s = iisan_sigmoid(*p / temp);
    ew_args g = {.y = out, .c = c, .x = a, .sx = s, .b = b, .sy = 1.0f - s};
    cpu_par(be, n, EW_GRAIN, lin3_range, &g);
}

typedef struct {
    float *out, *h;
    const float *c, *a, *b, *bias;
    const uint16_t *ha, *hb; /* gate_bias_fwd_h: a (and b) as fp16, in place of a (b) */
    float s;
    int cols;
} gate_bias_args;

static CPU_VEC void add_row(float *restrict h, const float *restrict x, const float *restrict bias,
                            int cols) {
    for (int j = 0; j < cols; j++)
        h[j] = x[j] + bias[j];
}

/* one row, the gate's usual operands, out and h in one loop (the order of lin3's float
 * operations, so the same bits): a and b (an intra-modal tower), c, a and b (the inter-modal
 * one). out may equal c: each element is read before it is written. */
static CPU_VEC void mix_bias_row(float *out, float *restrict h, const float *c,
                                 const float *restrict a, float sa, const float *restrict b,
                                 float sb, const float *restrict bias, int cols) {
    if (c)
        for (int j = 0; j < cols; j++) {
            float v = c[j] + sa * a[j] + sb * b[j];
            out[j] = v;
            h[j] = v + bias[j];
        }
    else
        for (int j = 0; j < cols; j++) {
            float v = sa * a[j] + sb * b[j];
            out[j] = v;
            h[j] = v + bias[j];
        }
}

/* Stretches of fp16 states converted at a time (gate_bias_fwd_h) into buffers on the stack:
 * a half's float is exact, so the fp32 functions below give the same bits on them. */
enum { HALF_SEG = 512 };

/* row by row, in stretches of HALF_SEG: the usual operands in one loop; any other combination
 * as lin3 (as gate_fwd) then, while the stretch is in cache, h */
static void gate_bias_range(void *va, size_t lo, size_t hi) {
    const gate_bias_args *g = va;
    const size_t cols = (size_t)g->cols;
    float abuf[HALF_SEG], bbuf[HALF_SEG];
    for (size_t r = lo; r < hi; r++)
        for (size_t j = 0; j < cols; j += HALF_SEG) {
            const size_t len = cols - j < HALF_SEG ? cols - j : HALF_SEG, o = r * cols + j;
            const float *a = g->a ? g->a + o : NULL, *b = g->b ? g->b + o : NULL;
            const float *c = g->c ? g->c + o : NULL;
            if (g->ha) iisan_cpu_half_to_float(abuf, g->ha + o, len), a = abuf;
            if (g->hb) iisan_cpu_half_to_float(bbuf, g->hb + o, len), b = bbuf;
            if (a && b) {
                mix_bias_row(g->out + o, g->h + o, c, a, g->s, b, 1.0f - g->s, g->bias + j,
                             (int)len);
                continue;
            }
            lin3(g->out + o, c, a, g->s, b, 1.0f - g->s, len);
            add_row(g->h + o, g->out + o, g->bias + j, (int)len);
        }
}

void cpu_gate_bias_fwd(iisan_backend *be, float *out, float *h, const float *c, const float *a,
                       const float *b, const float *p, float temp, const float *bias, int rows,
                       int cols) {
    gate_bias_args g = {
        .out = out, .h = h, .c = c, .a = a, .b = b, .bias = bias, .s = iisan_sigmoid(*p / temp)};
    g.cols = cols;
    if (rows > 0 && cols > 0) cpu_par(be, (size_t)rows, 8, gate_bias_range, &g);
}

/* sum_i dout[i] * (x[i] - y[i]) (x or y NULL = zeros) over one block, in 16
 * float lanes; the caller adds the blocks in double so that millions of terms
 * keep their precision */
static CPU_VEC double dot_diff(const float *restrict dout, const float *restrict x,
                               const float *restrict y, size_t n) {
    enum { LANES = 16 };
    float acc[LANES] = {0};
    size_t i = 0;
    if (x && y) {
        for (; i + LANES <= n; i += LANES)
            for (int l = 0; l < LANES; l++)
                acc[l] += dout[i + l] * (x[i + l] - y[i + l]);
        for (; i < n; i++)
            acc[0] += dout[i] * (x[i] - y[i]);
    } else if (x) {
        for (; i + LANES <= n; i += LANES)
            for (int l = 0; l < LANES; l++)
                acc[l] += dout[i + l] * x[i + l];
        for (; i < n; i++)
            acc[0] += dout[i] * x[i];
    } else if (y) {
        for (; i + LANES <= n; i += LANES)
            for (int l = 0; l < LANES; l++)
                acc[l] -= dout[i + l] * y[i + l];
        for (; i < n; i++)
            acc[0] -= dout[i] * y[i];
    }
    double total = 0.0;
    for (int l = 0; l < LANES; l++)
        total += acc[l];
    return total;
}

static CPU_VEC void scale_into(float *y, const float *x, float s, size_t n) {
    for (size_t i = 0; i < n; i++)
        y[i] = s * x[i];
}

/* Block by block (so dout is still in cache for the second use): the block's
 * share of the dp sum, then da and db. a and b are read before da / db are
 * written in each block. The blocks' sums are added in block order, whichever
 * thread computed each: up to MAX_BLOCKS blocks at a time go to the pool. */
enum { GATE_BLOCK = 2048, MAX_BLOCKS = 1024 };

typedef struct {
    float *da, *db, *out;
    const float *dout, *a, *b, *c;
    const uint16_t *ha, *hb; /* gate_bwd_mix_h: a (and b) as fp16 */
    float s;
    size_t n;     /* elements */
    double *part; /* one sum per block */
} gate_bwd_args;

static const float *at_or_null(const float *x, size_t i) { return x ? x + i : NULL; }
static float *at_or_null_w(float *x, size_t i) { return x ? x + i : NULL; }
static const uint16_t *half_at(const uint16_t *x, size_t i) { return x ? x + i : NULL; }

static void gate_bwd_range(void *va, size_t lo, size_t hi) {
    const gate_bwd_args *g = va;
    float abuf[GATE_BLOCK], bbuf[GATE_BLOCK]; /* fp16 a / b converted (gate_bwd_mix_h) */
    for (size_t blk = lo; blk < hi; blk++) {
        size_t i = blk * GATE_BLOCK, len = g->n - i < GATE_BLOCK ? g->n - i : GATE_BLOCK;
        const float *a = at_or_null(g->a, i), *b = at_or_null(g->b, i);
        if (g->ha) iisan_cpu_half_to_float(abuf, g->ha + i, len), a = abuf;
        if (g->hb) iisan_cpu_half_to_float(bbuf, g->hb + i, len), b = bbuf;
        g->part[blk] = dot_diff(g->dout + i, a, b, len);
        /* the forward's mix, by the function gate_fwd uses (so its bits), while a and b are in
         * cache and before da / db (which may alias them) are written */
        if (g->out) lin3(g->out + i, at_or_null(g->c, i), a, g->s, b, 1.0f - g->s, len);
        if (g->da) scale_into(g->da + i, g->dout + i, g->s, len);
        if (g->db) scale_into(g->db + i, g->dout + i, 1.0f - g->s, len);
    }
}

/* the op in rounds of up to MAX_BLOCKS blocks: g0's operands (the whole op's) offset to each
 * round and its blocks run across the pool; then *dp += the blocks' sums, added in block
 * order, times the sigmoid's derivative s (1 - s) / temp (over_s: (1 - s) / temp, gate_dp_dot) */
static void gate_bwd_rounds(iisan_backend *be, const gate_bwd_args *g0, float *dp, float temp,
                            int over_s) {
    double part[MAX_BLOCKS], sum = 0.0;
    const size_t n = g0->n, round = (size_t)MAX_BLOCKS * GATE_BLOCK;
    for (size_t at = 0; at < n; at += round) {
        const size_t len = n - at < round ? n - at : round;
        const size_t nblk = (len + GATE_BLOCK - 1) / GATE_BLOCK;
        gate_bwd_args g = *g0;
        g.da = at_or_null_w(g0->da, at), g.db = at_or_null_w(g0->db, at);
        g.out = at_or_null_w(g0->out, at), g.dout = g0->dout + at;
        g.a = at_or_null(g0->a, at), g.b = at_or_null(g0->b, at), g.c = at_or_null(g0->c, at);
        g.ha = half_at(g0->ha, at), g.hb = half_at(g0->hb, at);
        g.n = len, g.part = part;
        cpu_par(be, nblk, 4, gate_bwd_range, &g);
        for (size_t k = 0; k < nblk; k++)
            sum += part[k];
    }
    const double s = g0->s;
    *dp += (float)(sum * (over_s ? 1.0 : s) * (1.0 - s) / (double)temp);
}

void cpu_gate_bwd_mix(iisan_backend *be, float *out, float *da, float *db, float *dp,
                      const float *dout, const float *c, const float *a, const float *b,
                      const float *p, float temp, size_t n) {
    gate_bwd_args g = {.da = da, .db = db, .out = out, .dout = dout, .a = a, .b = b, .c = c};
    g.s = iisan_sigmoid(*p / temp), g.n = n;
    gate_bwd_rounds(be, &g, dp, temp, 0);
}

/* gate_bwd_mix without the mix */
void cpu_gate_bwd(iisan_backend *be, float *da, float *db, float *dp, const float *dout,
                  const float *a, const float *b, const float *p, float temp, size_t n) {
    cpu_gate_bwd_mix(be, NULL, da, db, dp, dout, NULL, a, b, p, temp, n);
}

/* ---- the gates with fp16 states: gate_bias_range and gate_bwd_range on ha / hb ---- */
void cpu_gate_bias_fwd_h(iisan_backend *be, float *out, float *h, const float *c,
                         const uint16_t *ha, const uint16_t *hb, const float *b, const float *p,
                         float temp, const float *bias, int rows, int cols) {
    gate_bias_args g = {.out = out, .h = h, .c = c, .b = b, .bias = bias, .ha = ha, .hb = hb};
    g.s = iisan_sigmoid(*p / temp), g.cols = cols;
    if (rows > 0 && cols > 0) cpu_par(be, (size_t)rows, 8, gate_bias_range, &g);
}

void cpu_gate_bwd_mix_h(iisan_backend *be, float *out, float *db, float *dp, const float *dout,
                        const float *c, const uint16_t *ha, const uint16_t *hb, const float *b,
                        const float *p, float temp, size_t n) {
    gate_bwd_args g = {.db = db, .out = out, .dout = dout, .b = b, .c = c, .ha = ha, .hb = hb};
    g.s = iisan_sigmoid(*p / temp), g.n = n;
    gate_bwd_rounds(be, &g, dp, temp, 0);
}

/* the blocks' sums of x y as gate_bwd's of dout (a - 0), times (1 - s) / temp */
void cpu_gate_dp_dot(iisan_backend *be, float *dp, const float *x, const float *y, const float *p,
                     float temp, size_t n) {
    gate_bwd_args g = {.dout = x, .a = y};
    g.s = iisan_sigmoid(*p / temp), g.n = n;
    gate_bwd_rounds(be, &g, dp, temp, 1);
}

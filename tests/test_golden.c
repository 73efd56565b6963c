/* Golden test: a whole forward pass (item embeddings, sequence-encoder
 * outputs, masked debiased logits), the loss and every parameter gradient
 * against the independent PyTorch float64 reference of the spec
 * (tests/golden/gen_golden.py writes tests/golden/golden.safetensors).
 * Case a: default schedule + ReLU; b: remove-first + GELU; c: SASRec-ID;
 * d: b's parameters under spec version 1's remove-first inter start (b's old
 * figures). Case a also holds the parameters after one Adam step under each
 * learning-rate rule, the rates assigned by name in the reference. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/model.h"
#include "store/safetensors.h"
#include "tests/test.h"

#define FIXTURE "tests/golden/golden.safetensors"

static st_file *F;
static const uint16_t *st_text, *st_image;
static int g_ns, g_D;

static const uint16_t *get(void *ctx, int mod, uint32_t cat) {
    (void)ctx;
    const uint16_t *base = mod == 0 ? st_text : st_image;
    return base + (size_t)cat * g_ns * g_D;
}

static const st_tensor *T(const char *cs, const char *name) {
    char full[160];
    snprintf(full, sizeof full, "%s.%s", cs, name);
    const st_tensor *t = st_find(F, full);
    if (!t) fprintf(stderr, "fixture lacks %s\n", full);
    return t;
}

/* max |a - b| relative to max |b| (a normalised error, as ggml's tests do) */
static double rel_err(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num = fmax(num, fabs((double)a[i] - b[i]));
        den = fmax(den, fabs((double)b[i]));
    }
    return num / fmax(den, 1e-30);
}

/* One Adam step from the fixture's parameters with its gradients, each tensor at its group's
 * rate under a learning-rate rule, against the reference's step (rates assigned by name from
 * the spec's table there). Each tensor's step, |w1 - w0| ~ lr, must match to 1e-3 of the
 * rate plus the fp32 rounding of w. */
static void check_adam(iisan_model *m, const char *cs, int rules) {
    iisan_train_config tc;
    train_config_default(&tc);
    tc.lr_groups = rules;
    float lr[LR_NGROUPS];
    train_lr_table(&tc, lr);
    const size_t P = m->pt.total;
    float *w0 = malloc(P * sizeof *w0);
    memcpy(w0, m->w, P * sizeof *w0);
    memset(m->m, 0, P * sizeof(float));
    memset(m->v, 0, P * sizeof(float));
    m->step = 0;
    model_adam(m, lr, 0.9f, 0.999f, 1e-8f);
    int bad = 0;
    for (int i = 0; i < m->pt.n; i++) {
        const param_info *p = &m->pt.t[i];
        char nm[128];
        snprintf(nm, sizeof nm, "adam%d.%s", rules, p->name);
        const st_tensor *t = T(cs, nm);
        if (!t || st_numel(t) != p->size) {
            bad++;
            continue;
        }
        const float *ref = t->data, *w = m->w + p->offset;
        double worst = 0, moved = 0;
        for (size_t j = 0; j < p->size; j++) {
            double tol = 1e-3 * lr[p->group] + 2 * fabs(ref[j]) * 1.2e-7;
            worst = fmax(worst, fabs((double)w[j] - ref[j]) / tol);
            moved = fmax(moved, fabs((double)ref[j] - w0[p->offset + j]));
        }
        /* the reference moved this tensor by its own rate (|step| <= lr, ~lr where |g| >> eps) */
        if (worst > 1 || moved > 1.01 * lr[p->group] || moved < 0.5 * lr[p->group]) {
            bad++;
            fprintf(stderr, "  %s adam%d %s: error %.3g of tolerance, moved %.3g at lr %.3g\n", cs,
                    rules, p->name, worst, moved, lr[p->group]);
        }
    }
    CHECKF(bad == 0, "%s: %d tensors off after one Adam step under rules %d", cs, bad, rules);
    memcpy(m->w, w0, P * sizeof *w0);
    free(w0);
}

/* every parameter gradient against the reference's */
static void check_gradients(iisan_model *m, const char *cs) {
    int bad = 0;
    for (int i = 0; i < m->pt.n; i++) {
        const param_info *p = &m->pt.t[i];
        char nm[128];
        snprintf(nm, sizeof nm, "grad.%s", p->name);
        const st_tensor *t = T(cs, nm);
        if (!t || st_numel(t) != p->size) {
            bad++;
            continue;
        }
        double e = rel_err(m->g + p->offset, t->data, p->size);
        if (e >= 1e-4) {
            bad++;
            fprintf(stderr, "  %s grad %s: normalised error %.3g\n", cs, p->name, e);
        }
    }
    CHECKF(bad == 0, "%s: %d gradients off", cs, bad);
}

static void run_case(const char *cs) {
    char key[32];
    snprintf(key, sizeof key, "%s.config", cs);
    const char *cfg = st_meta_get(F, key);
    CHECKF(cfg != NULL, "no %s", key);
    if (!cfg) return;
    json_t *o = json_loads(cfg, 0, NULL);
    CHECK(o != NULL);
    if (!o) return;
    iisan_config c;
    config_default(&c);
    c.d = (int)json_integer_value(json_object_get(o, "d"));
    c.n = (int)json_integer_value(json_object_get(o, "n"));
    c.heads = (int)json_integer_value(json_object_get(o, "heads"));
    c.dropout = 0;
    int B = (int)json_integer_value(json_object_get(o, "B"));
    int NI = (int)json_integer_value(json_object_get(o, "n_items"));
    if (!strcmp(cs, "c")) {
        c.kind = MODEL_SASREC_ID;
        c.n_items = NI;
    } else {
        c.D = (int)json_integer_value(json_object_get(o, "D"));
        c.r = (int)json_integer_value(json_object_get(o, "r"));
        c.nstates = (int)json_integer_value(json_object_get(o, "nstates"));
        json_t *s = json_object_get(o, "schedule");
        c.K = (int)json_array_size(s);
        for (int k = 0; k < c.K; k++)
            c.sched[k] = (int)json_integer_value(json_array_get(s, k));
        c.remove_first = json_is_true(json_object_get(o, "remove_first"));
        c.inter_start = (int)json_integer_value(json_object_get(o, "inter_start"));
        CHECKF(c.inter_start == IISAN_RULES_V1 || c.inter_start == IISAN_RULES_V2,
               "%s: inter_start %d", cs, c.inter_start);
        const char *act = json_string_value(json_object_get(o, "act"));
        c.act = act && !strcmp(act, "gelu") ? IISAN_ACT_GELU : IISAN_ACT_RELU;
        c.gate_temp = (float)json_number_value(json_object_get(o, "gate_temp"));
    }
    c.ln_eps = 1e-6f;
    json_decref(o);

    iisan_backend *be = iisan_backend_cpu(1);
    char err[256];
    iisan_model *m = model_create(&c, be, B, 1, err, sizeof err);
    CHECKF(m != NULL, "%s", err);
    if (!m) {
        be->destroy(be);
        return;
    }
    /* parameters by name, shapes checked */
    for (int i = 0; i < m->pt.n; i++) {
        const param_info *p = &m->pt.t[i];
        char nm[128];
        snprintf(nm, sizeof nm, "p.%s", p->name);
        const st_tensor *t = T(cs, nm);
        CHECKF(t && t->dtype == ST_F32 && st_numel(t) == p->size, "%s", p->name);
        if (t && st_numel(t) == p->size) memcpy(m->w + p->offset, t->data, p->size * 4);
    }
    const st_tensor *ts = T(cs, "in.seqs"), *tl = T(cs, "in.logpop");
    CHECK(ts && tl && ts->dtype == ST_I32);
    if (!ts || !tl) goto done;
    if (c.kind == MODEL_IISAN) {
        const st_tensor *tt = T(cs, "in.text"), *ti = T(cs, "in.image");
        CHECK(tt && ti && tt->dtype == ST_F16 && tt->shape[1] == c.nstates);
        if (!tt || !ti) goto done;
        st_text = tt->data;
        st_image = ti->data;
        g_ns = c.nstates;
        g_D = c.D;
    }
    iisan_states st = {get, NULL, NULL, NULL};
    uint32_t cat[64];
    int32_t items[64];
    for (int i = 0; i <= NI; i++)
        cat[i] = (uint32_t)i, items[i] = i;
    const int32_t *seqs = ts->data;
    const float *logpop = tl->data;

    /* item embeddings of every item, padding included */
    if (c.kind == MODEL_IISAN) {
        const st_tensor *te = T(cs, "out.item_emb");
        tower_forward(m, items, cat, NI + 1, &st);
        double e = te ? rel_err(m->emb, te->data, (size_t)(NI + 1) * c.d) : 1;
        CHECKF(e < 1e-5, "%s item embeddings: normalised error %.3g", cs, e);
    }

    float loss = model_loss_grad(m, seqs, B, logpop, cat, &st, 0, 0);
    const st_tensor *tlo = T(cs, "out.loss");
    if (tlo) CHECK_CLOSE(loss, ((const float *)tlo->data)[0], 1e-6, 1e-5);

    /* sequence-encoder outputs at real input positions */
    const st_tensor *tso = T(cs, "out.seq_out");
    if (tso) {
        const float *ref = tso->data, *out = seq_output(m);
        double num = 0, den = 0;
        for (int u = 0; u < B; u++)
            for (int j = 0; j < c.n; j++) {
                if (!seqs[u * (c.n + 1) + j]) continue;
                for (int k = 0; k < c.d; k++) {
                    size_t at = ((size_t)u * c.n + j) * c.d + k;
                    num = fmax(num, fabs(out[at] - ref[at]));
                    den = fmax(den, fabs(ref[at]));
                }
            }
        CHECKF(num / den < 1e-5, "%s seq_out: normalised error %.3g", cs, num / den);
    }
    /* debiased logits at unmasked entries; the reference's -1e4 marks masks */
    const st_tensor *tlg = T(cs, "out.logits");
    if (tlg) {
        int Q = (int)tlg->shape[0], C = (int)tlg->shape[1];
        float *raw = malloc((size_t)Q * C * sizeof *raw);
        be->gemm(be, 0, 1, Q, C, c.d, 1, m->Oq, c.d, m->Ec, c.d, 0, raw, C);
        const float *ref = tlg->data;
        double num = 0, den = 0;
        int masked = 0;
        for (int q = 0; q < Q; q++)
            for (int k = 0; k < C; k++) {
                float r = ref[q * C + k];
                if (r == -1e4f) {
                    masked++;
                    continue;
                }
                float mine = raw[q * C + k] - logpop[seqs[k]];
                num = fmax(num, fabs(mine - r));
                den = fmax(den, fabs(r));
            }
        CHECKF(num / den < 1e-5, "%s logits: normalised error %.3g", cs, num / den);
        CHECK(masked > 0 && masked < Q * C);
        free(raw);
    }
    check_gradients(m, cs);
    if (!strcmp(cs, "a")) {
        check_adam(m, cs, IISAN_RULES_V1);
        check_adam(m, cs, IISAN_RULES_V2);
    }
done:
    model_destroy(m);
    be->destroy(be);
}

static void test_case_a(void) { run_case("a"); }
static void test_case_b(void) { run_case("b"); }
static void test_case_c(void) { run_case("c"); }
static void test_case_d(void) { run_case("d"); }

int main(int argc, char **argv) {
    TEST_MAIN_BEGIN(argc, argv);
    char err[256];
    if (st_open(&F, FIXTURE, err, sizeof err)) {
        fprintf(stderr, "cannot open %s: %s\n", FIXTURE, err);
        CHECK(0);
        TEST_MAIN_END();
    }
    RUN(test_case_a);
    RUN(test_case_b);
    RUN(test_case_c);
    RUN(test_case_d);
    st_close(F);
    TEST_MAIN_END();
}

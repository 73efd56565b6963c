/* Golden test of IISAN-Versa: item embeddings, sequence-encoder outputs, the loss and every
 * parameter gradient against the independent PyTorch float64 reference
 * (tests/golden/gen_golden_versa.py writes tests/golden/golden_versa.safetensors). Each
 * case's config is the checkpoint's JSON, read by config_from_json. Cases: va wider text
 * (Q_k project text), vb wider and deeper image, remove-first text, GELU; vc equal widths,
 * text deeper, remove-first image. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/checkpoint.h"
#include "core/model.h"
#include "store/safetensors.h"
#include "tests/test.h"

#define FIXTURE "tests/golden/golden_versa.safetensors"

static st_file *F;
static const uint16_t *st_mod[N_MODS];
static size_t st_per[N_MODS];

static const uint16_t *get(void *ctx, int mod, uint32_t cat) {
    (void)ctx;
    return st_mod[mod] + (size_t)cat * st_per[mod];
}

static const st_tensor *T(const char *cs, const char *name) {
    char full[160];
    snprintf(full, sizeof full, "%s.%s", cs, name);
    const st_tensor *t = st_find(F, full);
    if (!t) fprintf(stderr, "fixture lacks %s\n", full);
    return t;
}

/* max |a - b| relative to max |b| */
static double rel_err(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num = fmax(num, fabs((double)a[i] - b[i]));
        den = fmax(den, fabs((double)b[i]));
    }
    return num / fmax(den, 1e-30);
}

/* the case's model with the fixture's parameters and states; NULL after a failed check */
static iisan_model *load_case(const char *cs, iisan_backend *be, int *B) {
    char key[32], err[256];
    snprintf(key, sizeof key, "%s.config", cs);
    const char *js = st_meta_get(F, key);
    CHECKF(js != NULL, "no %s", key);
    if (!js) return NULL;
    iisan_config c;
    int min_len;
    CHECKF(config_from_json(js, strlen(js), &c, &min_len, err, sizeof err) == 0, "%s", err);
    CHECK(c.arch == ARCH_VERSA);
    const char *bp = strstr(js, "\"B\":");
    *B = bp ? atoi(bp + 4) : 0;
    iisan_model *m = model_create(&c, be, *B, 1, err, sizeof err);
    CHECKF(m != NULL, "%s", err);
    if (!m) return NULL;
    int bad = 0;
    for (int i = 0; i < m->pt.n; i++) {
        const param_info *p = &m->pt.t[i];
        char nm[128];
        snprintf(nm, sizeof nm, "p.%s", p->name);
        const st_tensor *t = T(cs, nm);
        int fits = t && t->dtype == ST_F32 && st_numel(t) == p->size &&
                   t->shape[0] == p->shape[0] && (p->ndim == 1 || t->shape[1] == p->shape[1]);
        CHECKF(fits, "%s: %s", cs, p->name);
        if (fits)
            memcpy(m->w + p->offset, t->data, p->size * 4);
        else
            bad++;
    }
    static const char *in[N_MODS] = {"in.text", "in.image"};
    for (int mod = 0; mod < N_MODS; mod++) {
        const st_tensor *t = T(cs, in[mod]);
        int fits = t && t->dtype == ST_F16 && t->shape[1] == c.mods[mod].nstates &&
                   t->shape[2] == c.mods[mod].D;
        CHECKF(fits, "%s: %s shape", cs, in[mod]);
        if (!fits) bad++;
        st_mod[mod] = fits ? t->data : NULL;
        st_per[mod] = (size_t)c.mods[mod].nstates * c.mods[mod].D;
    }
    if (bad) {
        model_destroy(m);
        return NULL;
    }
    return m;
}

static void run_case(const char *cs) {
    iisan_backend *be = iisan_backend_cpu(1);
    int B = 0;
    iisan_model *m = load_case(cs, be, &B);
    const st_tensor *ts = T(cs, "in.seqs"), *tl = T(cs, "in.logpop");
    CHECK(ts && tl && ts->dtype == ST_I32);
    if (!m || !ts || !tl) {
        model_destroy(m);
        be->destroy(be);
        return;
    }
    const iisan_config *c = &m->c;
    const int NI = (int)T(cs, "in.text")->shape[0] - 1;
    iisan_states st = {get, NULL, NULL, NULL};
    uint32_t cat[64];
    int32_t items[64];
    for (int i = 0; i <= NI; i++)
        cat[i] = (uint32_t)i, items[i] = i;
    const int32_t *seqs = ts->data;

    tower_forward(m, items, cat, NI + 1, &st);
    const st_tensor *te = T(cs, "out.item_emb");
    double e = te ? rel_err(m->emb, te->data, (size_t)(NI + 1) * c->d) : 1;
    CHECKF(e < 1e-5, "%s item embeddings: normalised error %.3g", cs, e);

    float loss = model_loss_grad(m, seqs, B, tl->data, cat, &st, 0, 0);
    const st_tensor *tlo = T(cs, "out.loss");
    if (tlo) CHECK_CLOSE(loss, ((const float *)tlo->data)[0], 1e-6, 1e-5);
    const st_tensor *tso = T(cs, "out.seq_out");
    if (tso) { /* real input positions only (tests/golden/README.md) */
        const float *ref = tso->data, *out = seq_output(m);
        double num = 0, den = 0;
        for (int u = 0; u < B; u++)
            for (int j = 0; j < c->n; j++) {
                if (!seqs[u * (c->n + 1) + j]) continue;
                for (int k = 0; k < c->d; k++) {
                    size_t at = ((size_t)u * c->n + j) * c->d + k;
                    num = fmax(num, fabs(out[at] - ref[at]));
                    den = fmax(den, fabs(ref[at]));
                }
            }
        CHECKF(num / den < 1e-5, "%s seq_out: normalised error %.3g", cs, num / den);
    }
    int bad = 0, projections = 0;
    for (int i = 0; i < m->pt.n; i++) {
        const param_info *p = &m->pt.t[i];
        char nm[128];
        snprintf(nm, sizeof nm, "grad.%s", p->name);
        const st_tensor *t = T(cs, nm);
        projections += !strncmp(p->name, "inter.q.", 8);
        double er = t && st_numel(t) == p->size ? rel_err(m->g + p->offset, t->data, p->size) : 1;
        if (er >= 1e-4) {
            bad++;
            fprintf(stderr, "  %s grad %s: normalised error %.3g\n", cs, p->name, er);
        }
    }
    CHECKF(bad == 0, "%s: %d gradients off", cs, bad);
    int wide = config_versa_wide(c);
    CHECK(projections == (wide < 0 ? 0 : 2 * config_tower_depth(c, TOWER_INTER)));
    model_destroy(m);
    be->destroy(be);
}

static void test_wider_text(void) { run_case("va"); }
static void test_wider_image(void) { run_case("vb"); }
static void test_equal_widths(void) { run_case("vc"); }

int main(int argc, char **argv) {
    TEST_MAIN_BEGIN(argc, argv);
    char err[256];
    if (st_open(&F, FIXTURE, err, sizeof err)) {
        fprintf(stderr, "cannot open %s: %s\n", FIXTURE, err);
        CHECK(0);
        TEST_MAIN_END();
    }
    RUN(test_wider_text);
    RUN(test_wider_image);
    RUN(test_equal_widths);
    st_close(F);
    TEST_MAIN_END();
}

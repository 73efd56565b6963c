/* The store: open/create and the format check, items.tsv and users.tsv
 * imports with every error case (exact path:line in the message, the store
 * unchanged afterwards), hidden-state imports (F16/F32, mismatch refusal,
 * unknown ids), the zero-copy reader, checkpoints, persistence across
 * reopening, and the map growing (and refusing to grow past its limit or
 * under an open reader). */
#include <lmdb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kernels/half.h"
#include "store/safetensors.h"
#include "store/store.h"
#include "store/store_ext.h"
#include "store/store_internal.h"
#include "tests/test.h"

static char tmpdir[64];
static char err[2048];

static const char *tpath(const char *name) {
    static char bufs[32][256];
    static int k;
    char *p = bufs[k++ % 32];
    snprintf(p, 256, "%s/%s", tmpdir, name);
    return p;
}

static const char *write_file(const char *name, const char *content, size_t len) {
    const char *p = tpath(name);
    FILE *f = fopen(p, "wb");
    fwrite(content, 1, len, f);
    fclose(f);
    return p;
}
#define WRITE(name, lit) write_file(name, lit, sizeof(lit) - 1)

static iisan_store *open_new(const char *name) {
    iisan_store *s = NULL;
    int rc = store_open(&s, tpath(name), 1, err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    return s;
}

static int has(const char *needle) {
    if (strstr(err, needle)) return 1;
    fprintf(stderr, "  message was: %s\n  expected:    %s\n", err, needle);
    return 0;
}

/* ---- open / format ---- */

static void test_open(void) {
    iisan_store *s = NULL;
    CHECK(store_open(&s, tpath("nostore"), 0, err, sizeof err) == IISAN_ENOTFOUND);
    CHECK(s == NULL && has("holds no store") && has("iisan import"));
    CHECK(access(tpath("nostore"), F_OK) != 0); /* nothing created */
    s = open_new("a/b/c");                      /* nested directories are made */
    if (!s) return;
    CHECK(store_item_count(s) == 0 && store_user_count(s) == 0 && store_items_with_title(s) == 0);
    store_states_info si;
    CHECK(store_states_info_get(s, IISAN_TEXT, &si) == IISAN_ENOTFOUND);
    CHECK(store_states_info_get(s, 7, &si) == IISAN_EINVAL);
    uint32_t idx;
    CHECK(store_item_lookup(s, "x", &idx) == IISAN_ENOTFOUND);
    CHECK(store_item_lookup(s, "", &idx) == IISAN_ENOTFOUND);
    char id[8], title[8];
    CHECK(store_item_get(s, 1, id, sizeof id, title, sizeof title) == IISAN_ENOTFOUND);
    store_usage u;
    CHECK(store_usage_get(s, &u) == 0 && u.map_bytes == (1u << 30) && u.format == 1);
    store_close(s);
    CHECK(store_open(&s, tpath("a/b/c"), 0, err, sizeof err) == 0);
    store_close(s);
    store_close(NULL);
    CHECK(strstr(iisan_strerror(IISAN_EFORMAT), "IISAN_EFORMAT") != NULL);
}

/* rewrites the meta "format" value of a closed store */
static void set_format(const char *dir, const char *value) {
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    mdb_env_create(&env);
    mdb_env_set_maxdbs(env, 16);
    mdb_env_open(env, dir, 0, 0664);
    mdb_txn_begin(env, NULL, 0, &txn);
    mdb_dbi_open(txn, "meta", 0, &dbi);
    MDB_val k = {6, "format"}, v = {strlen(value), (void *)value};
    mdb_put(txn, dbi, &k, &v, 0);
    mdb_txn_commit(txn);
    mdb_env_close(env);
}

static void test_format(void) {
    iisan_store *s = open_new("fmt");
    store_close(s);
    set_format(tpath("fmt"), "iisan-store 2");
    CHECK(store_open(&s, tpath("fmt"), 1, err, sizeof err) == IISAN_EFORMAT && s == NULL);
    CHECK(has("format 2") && has("reads format 1") && has("new directory"));
    set_format(tpath("fmt"), "iisan-store 1");
    CHECK(store_open(&s, tpath("fmt"), 0, err, sizeof err) == 0);
    store_close(s);
    /* an LMDB environment of something else */
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    const char *other = tpath("other");
    mkdir(other, 0775);
    mdb_env_create(&env);
    mdb_env_set_maxdbs(env, 4);
    mdb_env_open(env, other, 0, 0664);
    mdb_txn_begin(env, NULL, 0, &txn);
    mdb_dbi_open(txn, "stuff", MDB_CREATE, &dbi);
    mdb_txn_commit(txn);
    mdb_env_close(env);
    CHECK(store_open(&s, other, 1, err, sizeof err) == IISAN_EFORMAT);
    CHECK(has("not an iisand store"));
}

/* ---- items.tsv ---- */

static void check_item(iisan_store *s, const char *id, uint32_t want_idx, const char *title) {
    uint32_t idx = 0;
    char gid[64], gt[256];
    int rc = store_item_lookup(s, id, &idx);
    CHECKF(rc == 0 && idx == want_idx, "%s: rc %d idx %u, want %u", id, rc, idx, want_idx);
    rc = store_item_get(s, idx, gid, sizeof gid, gt, sizeof gt);
    CHECKF(rc == 0 && !strcmp(gid, id) && !strcmp(gt, title), "%s: '%s' '%s'", id, gid, gt);
}

static void test_items(void) {
    iisan_store *s = open_new("items");
    if (!s) return;
    uint32_t added = 99, updated = 99;
    const char *p = WRITE("items1.tsv", "\xEF\xBB\xBF"
                                        "A1\tAlpha &amp; Co \xE2\x80\x94 caf\xC3\xA9\n"
                                        "B2\tBeta\r\n"
                                        "\n"
                                        "C3\t\n"
                                        "D\xC3\xA9"
                                        "4\tDelta \"quoted\"  spaced"); /* no newline */
    int rc = store_import_items(s, p, &added, &updated, err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    CHECK(added == 4 && updated == 0);
    CHECK(store_item_count(s) == 4 && store_items_with_title(s) == 3);
    check_item(s, "A1", 1, "Alpha &amp; Co \xE2\x80\x94 caf\xC3\xA9");
    check_item(s, "B2", 2, "Beta");
    check_item(s, "C3", 3, "");
    check_item(s,
               "D\xC3\xA9"
               "4",
               4, "Delta \"quoted\"  spaced");
    /* truncation keeps whole characters and NUL-terminates */
    char id[3], t[9];
    CHECK(store_item_get(s, 1, id, sizeof id, t, sizeof t) == 0);
    CHECK(!strcmp(id, "A1") && !strcmp(t, "Alpha &a"));
    CHECK(store_item_get(s, 1, NULL, 0, NULL, 0) == 0);
    char t2[17]; /* would cut the dash in half: it is left out */
    CHECK(store_item_get(s, 1, NULL, 0, t2, sizeof t2) == 0 && !strcmp(t2, "Alpha &amp; Co "));
    /* again: known ids get titles updated, new ids the next indexes */
    p = WRITE("items2.tsv",
              "B2\tBeta v2\nE5\tEpsilon\nA1\tAlpha &amp; Co \xE2\x80\x94 caf\xC3\xA9\n"
              "C3\tNow titled\n");
    rc = store_import_items(s, p, &added, &updated, err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    CHECK(added == 1 && updated == 2);
    CHECK(store_item_count(s) == 5 && store_items_with_title(s) == 5);
    check_item(s, "B2", 2, "Beta v2");
    check_item(s, "E5", 5, "Epsilon");
    check_item(s, "C3", 3, "Now titled");
    store_close(s);
}

typedef struct {
    const char *name, *content;
    size_t len;
    const char *msg;
} bad_case;

static void test_items_errors(void) {
    iisan_store *s = open_new("items_err");
    if (!s) return;
    const char *good = WRITE("good.tsv", "G1\tGood one\nG2\tGood two\n");
    CHECK(store_import_items(s, good, NULL, NULL, err, sizeof err) == 0);
    char longline[(1 << 20) + 16];
    memcpy(longline, "X1\tok\nX2\t", 9);
    memset(longline + 9, 'a', (1 << 20) - 2); /* line 2: 3 + 1048574 = 1 MiB + 1 bytes */
    memcpy(longline + 9 + (1 << 20) - 2, "\nX3\tz\n", 6);
    char bigid[600];
    memset(bigid, 'k', 512);
    memcpy(bigid + 512, "\tt\n", 3);
#define C(n, lit, m) {n, lit, sizeof(lit) - 1, m}
    bad_case cases[] = {
        C("tab.tsv", "X1\tone\nX2 no tab here\n", "tab.tsv:2: missing tab"),
        C("empty.tsv", "X1\tone\nX2\ttwo\n\tTitle\n", "empty.tsv:3: empty item id"),
        C("dup.tsv", "X1\ta\nX2\tb\nX1\tc\n",
          "dup.tsv:3: duplicate item id 'X1' (first on line 1)"),
        C("dupknown.tsv", "G1\ta\nG1\tb\n",
          "dupknown.tsv:2: duplicate item id 'G1' (first on line 1)"),
        C("utf8.tsv", "X1\tok\nX2\tab\xff\n", "utf8.tsv:2: invalid UTF-8 at column 6"),
        C("overlong.tsv", "X1\t\xc0\xaf\n", "overlong.tsv:1: invalid UTF-8 at column 4"),
        C("surrogate.tsv", "X1\tok\n\nX3\t\xed\xa0\x80\n",
          "surrogate.tsv:3: invalid UTF-8 at column 4"),
        C("cut.tsv", "X1\tok\nX2\tcaf\xc3", "cut.tsv:2: invalid UTF-8 at column 7"),
        C("nul.tsv", "X1\tab\0cd\n", "nul.tsv:1: NUL byte at column 6"),
        C("cols.tsv", "X1\ta\tb\n", "cols.tsv:1: more than two columns"),
        C("space.tsv", "X1\ta\nX 2\tb\n", "space.tsv:2: item id 'X 2' contains a space"),
        C("crlf.tsv", "X1\ta\r\nX2\r\n", "crlf.tsv:2: missing tab"),
        {"long.tsv", longline, 9 + (1 << 20) - 2 + 6, "long.tsv:2: line longer than 1 MiB"},
        {"bigid.tsv", bigid, 515, "bigid.tsv:1: item id 'kkkkkkkkkk"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *p = write_file(cases[i].name, cases[i].content, cases[i].len);
        err[0] = '\0';
        int rc = store_import_items(s, p, NULL, NULL, err, sizeof err);
        CHECKF(rc == IISAN_EFORMAT, "%s: rc %d", cases[i].name, rc);
        CHECKF(strstr(err, p) == err, "%s: '%s'", cases[i].name, err); /* full path first */
        CHECK(has(cases[i].msg));
        /* unchanged: nothing of the file's earlier lines is in the store */
        uint32_t idx;
        CHECK(store_item_count(s) == 2 && store_items_with_title(s) == 2);
        CHECK(store_item_lookup(s, "X1", &idx) == IISAN_ENOTFOUND);
        check_item(s, "G1", 1, "Good one");
    }
    /* a line of exactly 1 MiB is fine */
    memcpy(longline, "X1\t", 3);
    memset(longline + 3, 'b', (1 << 20) - 3);
    longline[1 << 20] = '\n';
    const char *p = write_file("max.tsv", longline, (1 << 20) + 1);
    CHECKF(store_import_items(s, p, NULL, NULL, err, sizeof err) == 0, "%s", err);
    /* a missing file */
    CHECK(store_import_items(s, tpath("missing.tsv"), NULL, NULL, err, sizeof err) == IISAN_EIO);
    CHECK(has("missing.tsv: No such file"));
    CHECK(store_import_items(s, tmpdir, NULL, NULL, err, sizeof err) == IISAN_EIO);
    store_close(s);
#undef C
}

/* ---- users.tsv ---- */

typedef struct {
    char ids[8][16];
    uint32_t seq[8][8], len[8];
    int n, stop_at;
} seen_users;

static int collect(const char *id, const uint32_t *items, uint32_t n, void *arg) {
    seen_users *u = arg;
    if (u->n == u->stop_at) return 42;
    if (u->n < 8) {
        snprintf(u->ids[u->n], 16, "%s", id);
        for (uint32_t i = 0; i < n && i < 8; i++)
            u->seq[u->n][i] = items[i];
        u->len[u->n] = n;
    }
    u->n++;
    return 0;
}

static void test_users(void) {
    iisan_store *s = open_new("users");
    if (!s) return;
    const char *items = WRITE("cat.tsv", "I1\tone\nI2\ttwo\nI3\tthree\nI4\tfour\n");
    CHECK(store_import_items(s, items, NULL, NULL, err, sizeof err) == 0);
    const char *p = WRITE("users1.tsv", "ub\tI1 I2  I3 \r\n"
                                        "\n"
                                        "UA\t  I4\n"
                                        "ua\tI3 I3 I1"); /* repeats kept, no final newline */
    uint32_t nu = 0;
    uint64_t ni = 0;
    int rc = store_import_users(s, p, 0, &nu, &ni, err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    CHECK(nu == 3 && ni == 7 && store_user_count(s) == 3);
    seen_users u = {.stop_at = -1};
    CHECK(store_users_foreach(s, collect, &u) == 0);
    CHECK(u.n == 3); /* byte order: "UA" < "ua" < "ub" */
    CHECK(!strcmp(u.ids[0], "UA") && u.len[0] == 1 && u.seq[0][0] == 4);
    CHECK(!strcmp(u.ids[1], "ua") && u.len[1] == 3 && u.seq[1][0] == 3 && u.seq[1][1] == 3 &&
          u.seq[1][2] == 1);
    CHECK(!strcmp(u.ids[2], "ub") && u.len[2] == 3 && u.seq[2][0] == 1 && u.seq[2][2] == 3);
    seen_users u2 = {.stop_at = 1};
    CHECK(store_users_foreach(s, collect, &u2) == 42 && u2.n == 1);

    /* a user's line replaces the sequence */
    p = WRITE("users2.tsv", "ua\tI2\n");
    CHECK(store_import_users(s, p, 0, &nu, &ni, err, sizeof err) == 0 && nu == 1 && ni == 1);
    seen_users u3 = {.stop_at = -1};
    store_users_foreach(s, collect, &u3);
    CHECK(u3.n == 3 && u3.len[1] == 1 && u3.seq[1][0] == 2);

    /* errors: exact line, store unchanged */
#define C(n, lit, m) {n, lit, sizeof(lit) - 1, m}
    bad_case cases[] = {
        C("unk.tsv", "x1\tI1 I2\nx2\tI1 ZZ9 I2\n", "unk.tsv:2: unknown item id 'ZZ9'"),
        C("notab.tsv", "x1\tI1\nx2 I1 I2\n", "notab.tsv:2: missing tab"),
        C("dupu.tsv", "x1\tI1\nx2\tI2\n\nx1\tI3\n",
          "dupu.tsv:4: duplicate user id 'x1' (first on line 1)"),
        C("noitems.tsv", "x1\tI1\nx2\t   \n", "noitems.tsv:2: user 'x2' has no item ids"),
        C("tabs.tsv", "x1\tI1\tI2\n", "tabs.tsv:1: more than two columns"),
        C("emptyu.tsv", "x1\tI1\n\tI2\n", "emptyu.tsv:2: empty user id"),
        C("badu.tsv", "x1\tI1\nx2\tI2 \xe2\x82\n", "badu.tsv:2: invalid UTF-8 at column 7"),
        C("nulu.tsv", "x1\tI1\0\n", "nulu.tsv:1: NUL byte at column 6"),
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *f = write_file(cases[i].name, cases[i].content, cases[i].len);
        err[0] = '\0';
        rc = store_import_users(s, f, 0, NULL, NULL, err, sizeof err);
        CHECKF(rc == IISAN_EFORMAT, "%s: rc %d", cases[i].name, rc);
        CHECK(strstr(err, f) == err);
        CHECK(has(cases[i].msg));
        CHECK(store_user_count(s) == 3 && store_item_count(s) == 4);
    }
#undef C
    /* add_unknown_items: new items without titles */
    p = WRITE("users3.tsv", "x1\tI1 N1 N2 N1\n");
    CHECK(store_import_users(s, p, 1, &nu, &ni, err, sizeof err) == 0 && nu == 1 && ni == 4);
    CHECK(store_item_count(s) == 6 && store_items_with_title(s) == 4);
    check_item(s, "N1", 5, "");
    check_item(s, "N2", 6, "");
    /* a later catalogue import gives them titles */
    p = WRITE("cat2.tsv", "N2\tnow known\n");
    CHECK(store_import_items(s, p, NULL, NULL, err, sizeof err) == 0);
    CHECK(store_items_with_title(s) == 5);
    check_item(s, "N2", 6, "now known");
    store_close(s);
}

/* ---- hidden states ---- */

static float tval(int item, int st, int d) { return (float)(item * 100 + st * 10 + d) / 64.0f; }

/* text F32 [n, ns, D] and image F16 [n, 2, 3] for ids (newline-separated) */
static const char *write_states(const char *name, const char *ids, int n, int ns, int D,
                                const char *tb, int with_image, int trailing_nl,
                                const char *extra) {
    float *text = malloc(sizeof(float) * n * ns * D);
    uint16_t *img = malloc(sizeof(uint16_t) * n * 6);
    for (int i = 0; i < n; i++)
        for (int s = 0; s < ns; s++)
            for (int d = 0; d < D; d++)
                text[(i * ns + s) * D + d] = tval(i, s, d);
    for (int i = 0; i < n * 6; i++)
        img[i] = iisan_float_to_half(-(float)i);
    char idbuf[512];
    snprintf(idbuf, sizeof idbuf, "%s%s", ids, trailing_nl ? "\n" : "");
    st_writer *w = st_writer_new();
    int64_t ts[3] = {n, ns, D}, is[3] = {n, 2, 3}, ids_shape[1] = {(int64_t)strlen(idbuf)};
    st_writer_add(w, "text", ST_F32, 3, ts, text);
    if (with_image) st_writer_add(w, "image", ST_F16, 3, is, img);
    st_writer_add(w, "item_ids", ST_U8, 1, ids_shape, idbuf);
    if (extra) st_writer_add(w, extra, ST_U8, 1, ids_shape, idbuf);
    if (tb) st_writer_meta(w, "text_backbone", tb);
    st_writer_meta(w, "image_backbone", "vit-test");
    const char *p = tpath(name);
    int rc = st_writer_write(w, p, NULL, 0);
    CHECK(rc == 0);
    st_writer_free(w);
    free(text);
    free(img);
    return p;
}

static void test_states(void) {
    iisan_store *s = open_new("states");
    if (!s) return;
    const char *cat = WRITE("scat.tsv", "S1\ta\nS2\tb\nS3\tc\n");
    CHECK(store_import_items(s, cat, NULL, NULL, err, sizeof err) == 0);
    uint32_t n = 0;
    const char *p = write_states("st1.safetensors", "S2\nS1", 2, 3, 4, "bert-test", 1, 1, NULL);
    int rc = store_import_states(s, p, &n, err, sizeof err);
    CHECKF(rc == 0 && n == 2, "%s", err);
    store_states_info si;
    CHECK(store_states_info_get(s, IISAN_TEXT, &si) == 0 && !strcmp(si.backbone, "bert-test") &&
          si.nstates == 3 && si.width == 4 && si.count == 2);
    CHECK(store_states_info_get(s, IISAN_IMAGE, &si) == 0 && !strcmp(si.backbone, "vit-test") &&
          si.nstates == 2 && si.width == 3 && si.count == 2);

    /* zero-copy reader */
    store_reader *r;
    CHECK(store_reader_begin(s, &r) == 0);
    const uint16_t *t2 = store_reader_states(r, IISAN_TEXT, 2); /* S2 = entry 0 */
    const uint16_t *t1 = store_reader_states(r, IISAN_TEXT, 1);
    CHECK(t1 && t2 && (uintptr_t)t1 % 2 == 0);
    int ok = 1;
    for (int st = 0; t1 && t2 && st < 3; st++)
        for (int d = 0; d < 4; d++)
            ok &= t2[st * 4 + d] == iisan_float_to_half(tval(0, st, d)) &&
                  t1[st * 4 + d] == iisan_float_to_half(tval(1, st, d));
    CHECK(ok);
    const uint16_t *i1 = store_reader_states(r, IISAN_IMAGE, 1);
    CHECK(i1 && iisan_half_to_float(i1[0]) == -6.0f && iisan_half_to_float(i1[5]) == -11.0f);
    CHECK(store_reader_states(r, IISAN_TEXT, 3) == NULL);  /* no states */
    CHECK(store_reader_states(r, IISAN_TEXT, 99) == NULL); /* no such item */
    CHECK(store_reader_states(r, 5, 1) == NULL);
    CHECK(store_reader_states(r, IISAN_TEXT, 1) == t1); /* same bytes, not a copy */
    {
        /* the pointer is LMDB's own: a raw read of the same snapshot gives it too */
        MDB_txn *txn;
        uint32_t k1 = 1;
        MDB_val k = {4, &k1}, v;
        mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
        CHECK(mdb_get(txn, s->state[IISAN_TEXT], &k, &v) == 0 && v.mv_data == (void *)t1 &&
              v.mv_size == 24);
        mdb_txn_abort(txn);
    }
    /* the reader keeps its snapshot while a write commits */
    uint16_t zeros[12] = {0};
    uint32_t one = 1;
    CHECK(store_put_states(s, IISAN_TEXT, "bert-test", 3, 4, 1, &one, zeros, err, sizeof err) == 0);
    CHECK(t1[0] == iisan_float_to_half(tval(1, 0, 0)));
    store_reader_end(r);
    CHECK(store_reader_begin(s, &r) == 0);
    CHECK(store_reader_states(r, IISAN_TEXT, 1)[0] == 0);
    CHECK(store_reader_error(r, NULL, 0) == 0); /* missing states are not an error */
    store_reader_end(r);
    { /* a value of the wrong size is a read error, recorded in the reader; not "no states" */
        MDB_txn *txn;
        uint32_t k2 = 2;
        uint16_t half[6] = {0};
        MDB_val k = {4, &k2}, v = {sizeof half, half};
        CHECK(mdb_txn_begin(s->env, NULL, 0, &txn) == 0);
        CHECK(mdb_put(txn, s->state[IISAN_TEXT], &k, &v, 0) == 0 && mdb_txn_commit(txn) == 0);
        char m[300] = "";
        CHECK(store_reader_begin(s, &r) == 0);
        CHECK(store_reader_states(r, IISAN_TEXT, 3) == NULL && store_reader_error(r, m, 9) == 0);
        CHECK(store_reader_states(r, IISAN_TEXT, 2) == NULL);
        CHECK(store_reader_states(r, IISAN_TEXT, 1) != NULL); /* the others still read */
        CHECKF(store_reader_error(r, m, sizeof m) == IISAN_EFORMAT &&
                   strstr(m, "text states of catalogue item 2 are 12 bytes") != NULL,
               "%s", m);
        store_reader_end(r);
        uint16_t back[12]; /* S2's states again, for test_reopen */
        for (int i = 0; i < 12; i++)
            back[i] = iisan_float_to_half(tval(0, i / 4, i % 4));
        CHECK(store_put_states(s, IISAN_TEXT, "bert-test", 3, 4, 1, &k2, back, err, sizeof err) ==
              0);
    }

    /* refusals: the store is unchanged after each */
    struct {
        const char *name;
        const char *path;
        int code;
        const char *msg[3];
    } bad[] = {
        {"D",
         write_states("d.safetensors", "S3", 1, 3, 8, "bert-test", 0, 0, NULL),
         IISAN_EMISMATCH,
         {"3 states x 8", "3 states x 4", "new data directory"}},
        {"L",
         write_states("l.safetensors", "S3", 1, 5, 4, "bert-test", 0, 0, NULL),
         IISAN_EMISMATCH,
         {"5 states x 4", "'bert-test' with 3 states x 4", ""}},
        {"backbone",
         write_states("b.safetensors", "S3", 1, 3, 4, "roberta", 0, 0, NULL),
         IISAN_EMISMATCH,
         {"text states from backbone 'roberta'", "'bert-test'", ""}},
        {"unknown",
         write_states("u.safetensors", "S3\nQQ", 2, 3, 4, "bert-test", 0, 0, NULL),
         IISAN_EFORMAT,
         {"item_ids entry 2: unknown item id 'QQ'", "", ""}},
        {"dup",
         write_states("dup.safetensors", "S3\nS3", 2, 3, 4, "bert-test", 0, 0, NULL),
         IISAN_EFORMAT,
         {"entry 2: duplicate item id 'S3' (first as entry 1)", "", ""}},
        {"count",
         write_states("c.safetensors", "S3\nS1\nS2", 2, 3, 4, "bert-test", 0, 0, NULL),
         IISAN_EFORMAT,
         {"\"text\" holds 2 items but item_ids lists 3", "", ""}},
        {"meta",
         write_states("m.safetensors", "S3", 1, 3, 4, NULL, 0, 0, NULL),
         IISAN_EFORMAT,
         {"metadata \"text_backbone\"", "missing", ""}},
        {"extra",
         write_states("e.safetensors", "S3", 1, 3, 4, "bert-test", 0, 0, "other"),
         IISAN_EFORMAT,
         {"unexpected tensor 'other'", "", ""}},
        {"garbage",
         WRITE("g.safetensors", "this is not a safetensors file at all"),
         IISAN_EFORMAT,
         {"g.safetensors: header length", "", ""}},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        rc = store_import_states(s, bad[i].path, &n, err, sizeof err);
        CHECKF(rc == bad[i].code, "%s: rc %d: %s", bad[i].name, rc, err);
        CHECK(strstr(err, bad[i].path) == err);
        for (int m = 0; m < 3; m++)
            CHECK(has(bad[i].msg[m]));
        CHECK(store_states_info_get(s, IISAN_TEXT, &si) == 0 && si.count == 2 && si.nstates == 3 &&
              si.width == 4 && !strcmp(si.backbone, "bert-test"));
    }
    /* text only, no trailing newline: adds S3 */
    p = write_states("st2.safetensors", "S3", 1, 3, 4, "bert-test", 0, 0, NULL);
    CHECKF(store_import_states(s, p, &n, err, sizeof err) == 0 && n == 1, "%s", err);
    CHECK(store_states_info_get(s, IISAN_TEXT, &si) == 0 && si.count == 3);
    CHECK(store_states_info_get(s, IISAN_IMAGE, &si) == 0 && si.count == 2);

    /* store_put_states */
    uint32_t bad_idx = 9;
    CHECK(store_put_states(s, IISAN_TEXT, "bert-test", 3, 5, 1, &one, zeros, err, sizeof err) ==
          IISAN_EMISMATCH);
    CHECK(store_put_states(s, IISAN_TEXT, "bert-test", 3, 4, 1, &bad_idx, zeros, err, sizeof err) ==
          IISAN_EINVAL);
    CHECK(has("catalogue index 9"));
    CHECK(store_put_states(s, IISAN_TEXT, "", 3, 4, 1, &one, zeros, err, sizeof err) ==
          IISAN_EINVAL);
    store_close(s);
}

/* ---- checkpoints ---- */

static void test_ckpt(void) {
    iisan_store *s = open_new("ckpt");
    if (!s) return;
    uint32_t *vs, nv, ver;
    void *blob;
    size_t len;
    char *meta;
    CHECK(store_ckpt_list(s, &vs, &nv) == 0 && nv == 0);
    free(vs);
    CHECK(store_ckpt_get(s, 0, &blob, &len, &meta, &ver) == IISAN_ENOTFOUND);
    size_t big = 5u << 20;
    unsigned char *b = malloc(big);
    for (size_t i = 0; i < big; i++)
        b[i] = (unsigned char)(i * 7 + 3);
    CHECK(store_ckpt_put(s, "abc", 3, "{\"model\":\"a\"}", &ver) == 0 && ver == 1);
    CHECK(store_ckpt_put(s, b, big, "{\"model\":\"big\"}", &ver) == 0 && ver == 2);
    CHECK(store_ckpt_put(s, "", 0, NULL, &ver) == 0 && ver == 3);
    CHECK(store_ckpt_get(s, 0, &blob, &len, &meta, &ver) == 0 && ver == 3 && len == 0 &&
          !strcmp(meta, "{}"));
    free(blob);
    free(meta);
    CHECK(store_ckpt_get(s, 2, &blob, &len, &meta, &ver) == 0 && ver == 2 && len == big &&
          !memcmp(blob, b, big) && !strcmp(meta, "{\"model\":\"big\"}"));
    free(blob);
    free(meta);
    CHECK(store_ckpt_get(s, 1, NULL, &len, &meta, &ver) == 0 && len == 3 &&
          !strcmp(meta, "{\"model\":\"a\"}"));
    free(meta);
    CHECK(store_ckpt_get(s, 7, &blob, &len, &meta, &ver) == IISAN_ENOTFOUND && !blob && !meta);
    CHECK(store_ckpt_list(s, &vs, &nv) == 0 && nv == 3 && vs[0] == 1 && vs[1] == 2 && vs[2] == 3);
    free(vs);
    store_close(s);
    free(b);
}

/* ---- persistence ---- */

static void test_reopen(void) {
    iisan_store *s = NULL;
    /* what the earlier tests left */
    CHECK(store_open(&s, tpath("states"), 0, err, sizeof err) == 0);
    if (s) {
        store_states_info si;
        CHECK(store_states_info_get(s, IISAN_TEXT, &si) == 0 && si.count == 3);
        check_item(s, "S2", 2, "b");
        store_reader *r;
        CHECK(store_reader_begin(s, &r) == 0);
        const uint16_t *t = store_reader_states(r, IISAN_TEXT, 2);
        CHECK(t && t[5] == iisan_float_to_half(tval(0, 1, 1)));
        store_reader_end(r);
        store_close(s);
    }
    CHECK(store_open(&s, tpath("users"), 0, err, sizeof err) == 0);
    if (s) {
        CHECK(store_user_count(s) == 4 && store_item_count(s) == 6);
        store_close(s);
    }
    CHECK(store_open(&s, tpath("ckpt"), 0, err, sizeof err) == 0);
    if (s) {
        uint32_t ver;
        char *meta;
        CHECK(store_ckpt_get(s, 0, NULL, NULL, &meta, &ver) == 0 && ver == 3);
        free(meta);
        CHECK(store_ckpt_put(s, "x", 1, "{}", &ver) == 0 && ver == 4);
        store_close(s);
    }
}

/* ---- map growth ---- */

static void on_progress(void *arg, const store_progress *p) {
    int *max_attempt = arg;
    if (p->attempt > *max_attempt) *max_attempt = p->attempt;
}

static void test_growth(void) {
    store_set_map_limits(256u << 10, 64u << 20); /* 256 KiB, growing to 64 MiB */
    iisan_store *s = open_new("grow");
    if (!s) goto out;
    int max_attempt = 0;
    store_set_progress(s, on_progress, &max_attempt);
    store_usage u;
    CHECK(store_usage_get(s, &u) == 0 && u.map_bytes == (256u << 10));
    /* 3000 users x 30 items, then 16 MiB of states: several doublings; the
     * users file is read again after each */
    FILE *f = fopen(tpath("gusers.tsv"), "w");
    for (int i = 0; i < 3000; i++) {
        fprintf(f, "user%04d\t", i);
        for (int j = 0; j < 30; j++)
            fprintf(f, "%sitem%05d", j ? " " : "", (i * 7 + j) % 2000);
        fputc('\n', f);
    }
    fclose(f);
    uint32_t nu;
    CHECKF(store_import_users(s, tpath("gusers.tsv"), 1, &nu, NULL, err, sizeof err) == 0, "%s",
           err);
    CHECK(nu == 3000 && store_item_count(s) == 2000 && store_user_count(s) == 3000);
    CHECK(max_attempt >= 2);
    CHECK(store_usage_get(s, &u) == 0 && u.map_bytes >= (512u << 10));
    const int N = 2000, per = 2048; /* 4 KiB per item */
    uint16_t *st = calloc((size_t)N * per, 2);
    uint32_t *idx = malloc(N * sizeof *idx);
    for (int i = 0; i < N; i++) {
        idx[i] = (uint32_t)i + 1;
        st[(size_t)i * per] = (uint16_t)i;
    }
    /* under an open reader the map cannot move: refused, nothing written */
    store_reader *r;
    CHECK(store_reader_begin(s, &r) == 0);
    CHECK(store_put_states(s, IISAN_TEXT, "g", 16, 128, N, idx, st, err, sizeof err) ==
          IISAN_EFULL);
    CHECK(has("reader"));
    store_reader_end(r);
    store_states_info si;
    CHECK(store_states_info_get(s, IISAN_TEXT, &si) == IISAN_ENOTFOUND);
    CHECKF(store_put_states(s, IISAN_TEXT, "g", 16, 128, N, idx, st, err, sizeof err) == 0, "%s",
           err);
    CHECK(store_states_info_get(s, IISAN_TEXT, &si) == 0 && si.count == (uint32_t)N);
    CHECK(store_usage_get(s, &u) == 0 && u.map_bytes >= (8u << 20) && u.map_bytes <= (64u << 20));
    CHECK(store_reader_begin(s, &r) == 0);
    const uint16_t *p = store_reader_states(r, IISAN_TEXT, 1234);
    CHECK(p && p[0] == 1233);
    store_reader_end(r);
    /* past the limit: EFULL and the store keeps what it had */
    CHECK(store_put_states(s, IISAN_IMAGE, "g", 16, 128 * 8, N, idx, NULL, err, sizeof err) ==
          IISAN_EINVAL);
    uint16_t *huge = calloc((size_t)N * per * 8, 2);
    CHECK(store_put_states(s, IISAN_IMAGE, "g", 16, 128 * 8, N, idx, huge, err, sizeof err) ==
          IISAN_EFULL);
    CHECK(has("full"));
    CHECK(store_states_info_get(s, IISAN_IMAGE, &si) == IISAN_ENOTFOUND);
    free(huge);
    store_close(s);
    /* reopening keeps the grown size */
    CHECK(store_open(&s, tpath("grow"), 0, err, sizeof err) == 0);
    if (s) {
        CHECK(store_usage_get(s, &u) == 0 && u.map_bytes >= (8u << 20));
        CHECK(store_states_info_get(s, IISAN_TEXT, &si) == 0 && si.count == (uint32_t)N);
        store_close(s);
    }
    free(st);
    free(idx);
out:
    store_set_map_limits((size_t)1 << 30, (size_t)1 << 40);
}

int main(int argc, char **argv) {
    TEST_MAIN_BEGIN(argc, argv);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/iisan-store-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_open);
    RUN(test_format);
    RUN(test_items);
    RUN(test_items_errors);
    RUN(test_users);
    RUN(test_states);
    RUN(test_ckpt);
    RUN(test_reopen); /* after test_users, test_states, test_ckpt */
    RUN(test_growth);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", tmpdir);
    TEST_MAIN_END();
}

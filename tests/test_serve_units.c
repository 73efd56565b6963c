/* The serving daemon's parts below HTTP: request parsing (proto/request.c),
 * the configuration sources (server/serve_config.c), group-committed
 * interactions with map growth (store/interactions.c), and inference
 * (core/infer.c) agreeing with the full model's ranking. The daemon itself
 * is tests/test_serve.sh. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/checkpoint.h"
#include "core/dataset.h"
#include "core/eval.h"
#include "core/infer.h"
#include "core/model.h"
#include "core/score_cpu.h"
#include "core/states.h"
#include "kernels/half.h"
#include "kernels/rng.h"
#include "proto/request.h"
#include "server/serve.h"
#include "store/interactions.h"
#include "store/store_ext.h"
#include "tests/test.h"

static const req_limits LIM = {100, 5, 4, 3};

static const char *rec_code(const char *body) {
    static req_error e;
    rec_request r;
    if (rec_request_parse(body, strlen(body), &LIM, &r, &e) == 0) {
        rec_request_free(&r);
        return "ok";
    }
    return e.code;
}

static const char *ix_code(const char *body) {
    static req_error e;
    ix_request r;
    if (ix_request_parse(body, strlen(body), &LIM, &r, &e) == 0) {
        ix_request_free(&r);
        return "ok";
    }
    return e.code;
}

static void test_base64(void) {
    unsigned char b[16];
    CHECK(req_base64_decode("TWFu", 4, b) == 3 && !memcmp(b, "Man", 3));
    CHECK(req_base64_decode("TWE=", 4, b) == 2 && !memcmp(b, "Ma", 2));
    CHECK(req_base64_decode("TQ==", 4, b) == 1 && b[0] == 'M');
    CHECK(req_base64_decode("TQ", 2, b) == 1 && b[0] == 'M'); /* padding optional */
    CHECK(req_base64_decode("+/+/", 4, b) == 3 && b[0] == 0xfb && b[1] == 0xff && b[2] == 0xbf);
    CHECK(req_base64_decode("", 0, b) == 0);
    CHECK(req_base64_decode("TWF", 3, NULL) == 2); /* counting only */
    CHECK(req_base64_decode("T", 1, b) == -1);
    CHECK(req_base64_decode("TW u", 4, b) == -1);
    CHECK(req_base64_decode("TWFu=a==", 8, b) == -1);
}

static void test_request_parse(void) {
    rec_request r;
    req_error e;
    const char *b = "{\"user_id\":\"U1\",\"history\":[\"a\",\"b\"],\"k\":7,\"exclude\":[\"c\"],"
                    "\"exclude_history\":false}";
    CHECK(rec_request_parse(b, strlen(b), &LIM, &r, &e) == 0);
    CHECK(!strcmp(r.user_id, "U1") && r.n_history == 2 && !strcmp(r.history[1], "b"));
    CHECK(r.k == 7 && r.n_exclude == 1 && r.exclude_history == 0);
    rec_request_free(&r);
    CHECK(rec_request_parse("{}", 2, &LIM, &r, &e) == 0);
    CHECK(r.k == 10 && r.exclude_history == 1 && !r.user_id && r.n_history == 0);
    rec_request_free(&r);
    CHECK(!strcmp(rec_code("{\"user_id\":null}"), "ok"));
    CHECK(!strcmp(rec_code(""), "malformed_json"));
    CHECK(!strcmp(rec_code("{\"k\":1,}"), "malformed_json"));
    CHECK(!strcmp(rec_code("{\"k\":1} x"), "malformed_json"));
    CHECK(!strcmp(rec_code("{\"k\":1,\"k\":2}"), "malformed_json")); /* duplicate key */
    CHECK(!strcmp(rec_code("3"), "wrong_type"));
    CHECK(!strcmp(rec_code("{\"k\":true}"), "wrong_type"));
    CHECK(!strcmp(rec_code("{\"k\":101}"), "k_too_large"));
    CHECK(!strcmp(rec_code("{\"k\":-1}"), "invalid_value"));
    CHECK(!strcmp(rec_code("{\"history\":[\"a\",\"a\",\"a\",\"a\",\"a\",\"a\"]}"),
                  "history_too_large"));
    CHECK(!strcmp(rec_code("{\"exclude\":[\"a\",\"a\",\"a\",\"a\",\"a\"]}"), "exclude_too_large"));
    CHECK(!strcmp(rec_code("{\"history\":[null]}"), "wrong_type"));
    CHECK(!strcmp(rec_code("{\"user_id\":\"a\\u0000b\"}"), "malformed_json")); /* NUL refused */
    CHECK(!strcmp(rec_code("{\"user_id\":\"tab\\there\"}"), "invalid_id"));
    CHECK(!strcmp(rec_code("{\"user\":1}"), "unknown_field"));
    CHECK(rec_request_parse("{\"k\":\"x\"}", 9, &LIM, &r, &e) == -1 && e.status == 400 &&
          strstr(e.message, "'k'"));
    CHECK(rec_request_parse("{\"k\":", 5, &LIM, &r, &e) == -1 && strstr(e.message, "column"));

    ix_request x;
    b = "[{\"user_id\":\"u\",\"item_id\":\"i\",\"timestamp\":5},{\"item_id\":\"j\",\"user_id\":"
        "\"v\"}]";
    CHECK(ix_request_parse(b, strlen(b), &LIM, &x, &e) == 0);
    CHECK(x.n == 2 && !strcmp(x.v[0].user_id, "u") && x.v[0].timestamp == 5 &&
          !strcmp(x.v[1].item_id, "j") && x.v[1].timestamp == -1);
    ix_request_free(&x);
    CHECK(!strcmp(ix_code("{\"user_id\":\"u\",\"item_id\":\"i\"}"), "ok"));
    CHECK(!strcmp(ix_code("[]"), "invalid_value"));
    CHECK(!strcmp(ix_code("[{\"user_id\":\"u\",\"item_id\":\"i\"},{\"user_id\":\"u\",\"item_id\":"
                          "\"i\"},{\"user_id\":\"u\",\"item_id\":\"i\"},{\"user_id\":\"u\","
                          "\"item_id\":\"i\"}]"),
                  "too_many_interactions"));
    CHECK(!strcmp(ix_code("{\"user_id\":\"u\"}"), "missing_field"));
    CHECK(!strcmp(ix_code("{\"item_id\":\"u\"}"), "missing_field"));
    CHECK(!strcmp(ix_code("{\"user_id\":\"u\",\"item_id\":\"\"}"), "invalid_id"));
    CHECK(
        !strcmp(ix_code("{\"user_id\":\"u\",\"item_id\":\"i\",\"timestamp\":1.5}"), "wrong_type"));
    CHECK(!strcmp(ix_code("[{\"user_id\":\"u\",\"item_id\":\"i\"},null]"), "wrong_type"));
    b = "[{\"user_id\":1,\"item_id\":\"i\"}]";
    CHECK(ix_request_parse(b, strlen(b), &LIM, &x, &e) == -1 && strstr(e.message, "[0].user_id"));
    char id[600];
    memset(id, 'x', 511);
    id[511] = '\0';
    CHECK(req_valid_id(id, 511) && !req_valid_id(id, 512) && !req_valid_id("", 0) &&
          !req_valid_id("a b", 3) && req_valid_id("caf\xc3\xa9", 5));
}

static void test_config(void) {
    char dir[] = "/tmp/iisan-cfg-XXXXXX", path[64], err[512];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(path, sizeof path, "%s/s.conf", dir);
    FILE *f = fopen(path, "w");
    fprintf(f, "# comment\n\nport = 9000\nthreads=2\nadmin_token = \"a b\"\nlog-requests = off\n");
    fclose(f);
    serve_config c;
    CHECK(serve_config_build(&c, NULL, 0, NULL, NULL, err, sizeof err) == 0);
    CHECK(c.port == 8080 && c.threads == 4 && c.max_body_bytes == 1048576 && c.max_k == 1000 &&
          c.max_history == 1000 && c.log_requests == 1 && !strcmp(c.bind, "127.0.0.1") &&
          !c.admin_token[0]);
    setenv("IISAN_THREADS", "6", 1);
    setenv("IISAN_MAX_K", "50", 1);
    const char *names[] = {"max-k"}, *vals[] = {"70"};
    CHECK(serve_config_build(&c, path, 1, names, vals, err, sizeof err) == 0);
    CHECK(c.port == 9000); /* file */
    CHECK(c.threads == 6); /* environment over file */
    CHECK(c.max_k == 70);  /* flag over environment */
    CHECK(!strcmp(c.admin_token, "a b") && c.log_requests == 0);
    unsetenv("IISAN_THREADS");
    unsetenv("IISAN_MAX_K");
    f = fopen(path, "a");
    fprintf(f, "max_k = 0\n");
    fclose(f);
    CHECK(serve_config_build(&c, path, 0, NULL, NULL, err, sizeof err) == -1 &&
          strstr(err, "s.conf:7") && strstr(err, "1..100000"));
    f = fopen(path, "w");
    fprintf(f, "colour = blue\n");
    fclose(f);
    CHECK(serve_config_build(&c, path, 0, NULL, NULL, err, sizeof err) == -1 &&
          strstr(err, "s.conf:1") && strstr(err, "colour"));
    setenv("IISAN_PORT", "x", 1);
    CHECK(serve_config_build(&c, NULL, 0, NULL, NULL, err, sizeof err) == -1 &&
          strstr(err, "IISAN_PORT"));
    unsetenv("IISAN_PORT");
    CHECK(serve_option_find("max_body_bytes") == serve_option_find("max-body-bytes"));
    /* the retraining scheduler's settings: off by default, reloadable, bounded */
    CHECK(serve_config_build(&c, NULL, 0, NULL, NULL, err, sizeof err) == 0 &&
          c.retrain_every_min == 0 && c.retrain_after == 0);
    CHECK(serve_option_find("retrain-every-min") &&
          serve_option_find("retrain-every-min")->reloadable &&
          serve_option_find("retrain-after") && serve_option_find("retrain-after")->reloadable);
    const char *rn[] = {"retrain-every-min", "retrain-after"}, *rv[] = {"15", "500"};
    CHECK(serve_config_build(&c, NULL, 2, rn, rv, err, sizeof err) == 0 &&
          c.retrain_every_min == 15 && c.retrain_after == 500);
    const char *rbad[] = {"-1"};
    CHECK(serve_config_build(&c, NULL, 1, rn + 1, rbad, err, sizeof err) == -1 &&
          strstr(err, "retrain_after"));
    /* quotes: either kind, whole values only; the file's line on an error */
    f = fopen(path, "w");
    fprintf(f, "admin_token = 'x \"y'\n");
    fclose(f);
    chmod(path, 0600);
    CHECK(serve_config_build(&c, path, 0, NULL, NULL, err, sizeof err) == 0 &&
          !strcmp(c.admin_token, "x \"y") && !c.warning[0]);
    chmod(path, 0644); /* a token others can read: a warning */
    CHECK(serve_config_build(&c, path, 0, NULL, NULL, err, sizeof err) == 0 &&
          strstr(c.warning, "readable by others (mode 644)"));
    const char *bad[] = {"bind = \"127.0.0.1\n", "bind = 127.0.0.1\"\n", "bind = \"\n",
                         "bind = \"a\" \"b\"\n"};
    for (int i = 0; i < 4; i++) {
        f = fopen(path, "w");
        fprintf(f, "# line 1\n%s", bad[i]);
        fclose(f);
        CHECK(serve_config_build(&c, path, 0, NULL, NULL, err, sizeof err) == -1 &&
              strstr(err, "s.conf:2") && strstr(err, "quote"));
    }
    /* the token from a file: its first line, over admin_token */
    char tpath[80];
    snprintf(tpath, sizeof tpath, "%s/token", dir);
    f = fopen(tpath, "w");
    fprintf(f, "s3cret\nsecond line\n");
    fclose(f);
    chmod(tpath, 0600);
    const char *tn[] = {"admin-token", "admin-token-file"}, *tv[] = {"flag", tpath};
    CHECK(serve_config_build(&c, NULL, 2, tn, tv, err, sizeof err) == 0 &&
          !strcmp(c.admin_token, "s3cret") && !c.warning[0]);
    chmod(tpath, 0640);
    CHECK(serve_config_build(&c, NULL, 2, tn, tv, err, sizeof err) == 0 &&
          strstr(c.warning, "admin_token_file") && strstr(c.warning, "mode 640"));
    f = fopen(tpath, "w");
    fclose(f);
    CHECK(serve_config_build(&c, NULL, 2, tn, tv, err, sizeof err) == -1 &&
          strstr(err, "first line is empty"));
    remove(tpath);
    remove(path);
    remove(dir);
}

static void test_interactions(void) {
    char dir[] = "/tmp/iisan-ix-XXXXXX", path[64], err[512];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(path, sizeof path, "%s/items.tsv", dir);
    FILE *f = fopen(path, "w");
    for (int i = 0; i < 20; i++)
        fprintf(f, "I%d\tt\n", i);
    fclose(f);
    store_set_map_limits(128u << 10, 64u << 20); /* a tiny map that must grow */
    iisan_store *s = NULL;
    CHECKF(store_open(&s, dir, 1, err, sizeof err) == 0, "%s", err);
    CHECK(store_import_items(s, path, NULL, NULL, err, sizeof err) == 0);
    store_ix *x = NULL;
    CHECKF(store_ix_open(s, &x, err, sizeof err) == 0, "%s", err);
    store_usage u0;
    store_usage_get(s, &u0);
    /* 3000 batches of 20 interactions over 300 users with long ids */
    static char uid[300][200];
    for (int u = 0; u < 300; u++) {
        memset(uid[u], 'a' + u % 26, 150);
        snprintf(uid[u] + 150, 50, "-%d", u);
    }
    store_interaction v[20];
    int rc = 0;
    uint64_t first = 0;
    for (int b = 0; b < 300 && !rc; b++) {
        for (int i = 0; i < 20; i++) {
            v[i].user_id = uid[(b * 7 + i) % 300];
            v[i].item = (uint32_t)(1 + (b + i) % 20);
            v[i].timestamp = b * 100 + i;
        }
        rc = store_ix_append(x, v, 20, &first, err, sizeof err);
    }
    CHECKF(rc == 0, "%s", err);
    CHECK(first == 299 * 20 + 1);
    store_usage u1;
    store_usage_get(s, &u1);
    CHECKF(u1.map_bytes > u0.map_bytes, "map %llu -> %llu", (unsigned long long)u0.map_bytes,
           (unsigned long long)u1.map_bytes);
    uint64_t logged = 0;
    uint32_t items = 0, users = 0;
    CHECK(store_ix_counts(x, &logged, &items, &users) == 0);
    CHECK(logged == 6000 && items == 20 && users == 300);
    uint32_t *seq = NULL, n = 0;
    CHECK(store_ix_user_get(x, uid[0], &seq, &n) == 0 && n == 20);
    /* user 0 appears at b*7+i = 0 mod 300: its items in order of arrival */
    int okseq = 1, k = 0;
    for (int b = 0; b < 300; b++)
        for (int i = 0; i < 20; i++)
            if ((b * 7 + i) % 300 == 0) okseq &= seq[k++] == (uint32_t)(1 + (b + i) % 20);
    CHECK(okseq && k == 20);
    free(seq);
    CHECK(store_ix_user_get(x, "nobody", &seq, &n) == IISAN_ENOTFOUND);
    /* an item outside the catalogue: nothing of the batch is written */
    v[0].user_id = "solo";
    v[0].item = 3;
    v[1].user_id = "solo";
    v[1].item = 21;
    CHECK(store_ix_append(x, v, 2, NULL, err, sizeof err) == IISAN_EINVAL);
    CHECK(store_ix_user_get(x, "solo", &seq, &n) == IISAN_ENOTFOUND);
    uint32_t idx;
    CHECK(store_ix_item_lookup(x, "I7", &idx) == 0 && idx == 8);
    /* catalogue changes: add, retitle, refuse, delete, undelete */
    store_item_put ip[2] = {{"NEW", "a title", 7, 0, 0}, {"I7", "", 0, 0, 0}};
    CHECKF(store_ix_items_put(x, ip, 2, err, sizeof err) == 0, "%s", err);
    CHECK(ip[0].created && ip[0].idx == 21 && !ip[1].created && ip[1].idx == 8);
    CHECK(store_items_with_title(s) == 20); /* +1 for NEW, -1 for I7's emptied title */
    store_item_info *info = malloc(sizeof *info);
    CHECK(store_ix_item_info(x, "NEW", info) == 0 && info->idx == 21 && info->titled &&
          !strcmp(info->title, "a title") && !info->deleted && !info->has_state[0]);
    CHECK(store_ix_item_info(x, "I7", info) == 0 && !info->titled && info->title[0] == 0);
    store_item_put bad[2] = {{"OK2", "fine", 4, 0, 0}, {"BAD", "a\tb", 3, 0, 0}};
    CHECK(store_ix_items_put(x, bad, 2, err, sizeof err) == IISAN_EINVAL);
    CHECK(store_ix_item_lookup(x, "OK2", &idx) == IISAN_ENOTFOUND); /* all or nothing */
    CHECK(store_ix_item_delete(x, "I3", &idx, err, sizeof err) == 0 && idx == 4);
    CHECK(store_ix_item_delete(x, "nope", &idx, err, sizeof err) == IISAN_ENOTFOUND);
    uint32_t *del = NULL, nd = 0;
    CHECK(store_ix_deleted(x, &del, &nd) == 0 && nd == 1 && del[0] == 4);
    free(del);
    CHECK(store_ix_item_info(x, "I3", info) == 0 && info->deleted);
    store_item_put again = {"I3", "back", 4, 0, 0};
    CHECK(store_ix_items_put(x, &again, 1, err, sizeof err) == 0);
    CHECK(store_ix_deleted(x, &del, &nd) == 0 && nd == 0);
    free(del);
    CHECK(store_ix_item_delete(x, "I5", &idx, err, sizeof err) == 0);
    free(info);
    uint32_t pin = 9;
    CHECK(store_ix_state_get(x, "pinned", &pin) == 0 && pin == 0);
    CHECK(store_ix_state_put(x, "pinned", 3, err, sizeof err) == 0);
    store_ix_close(x);
    store_close(s);
    /* reopened: everything is there, and the users feed the dataset */
    CHECK(store_open(&s, dir, 0, err, sizeof err) == 0);
    CHECK(store_user_count(s) == 300);
    CHECK(store_ix_open(s, &x, err, sizeof err) == 0);
    CHECK(store_ix_counts(x, &logged, NULL, NULL) == 0 && logged == 6000);
    CHECK(store_ix_state_get(x, "pinned", &pin) == 0 && pin == 3);
    CHECK(store_ix_deleted(x, &del, &nd) == 0 && nd == 1 && del[0] == 6);
    free(del);
    store_ix_close(x);
    iisan_dataset ds;
    CHECK(dataset_build(&ds, s, 10, 5, err, sizeof err) == 0 && ds.n_users == 300);
    dataset_free(&ds);
    store_close(s);
    store_set_map_limits((size_t)1 << 30, (size_t)1 << 40);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

/* the group-commit writer on a store whose map cannot grow: the ticket that does not fit
 * is answered IISAN_EFULL (503 store_full over HTTP), nothing of it is stored, and the
 * writer goes on with the next one */
static void test_writer_full(void) {
    char dir[] = "/tmp/iisan-full-XXXXXX", path[64], err[512];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(path, sizeof path, "%s/items.tsv", dir);
    FILE *f = fopen(path, "w");
    fprintf(f, "I1\tt\n");
    fclose(f);
    store_set_map_limits(256u << 10, 256u << 10); /* 256 KiB, never more */
    iisan_store *s = NULL;
    CHECKF(store_open(&s, dir, 1, err, sizeof err) == 0, "%s", err);
    CHECK(store_import_items(s, path, NULL, NULL, err, sizeof err) == 0);
    store_ix *x = NULL;
    CHECKF(store_ix_open(s, &x, err, sizeof err) == 0, "%s", err);
    ix_writer *w = NULL;
    CHECK(writer_start(&w, x, 1000) == 0);
    static char uid[200][64];
    store_interaction v[200];
    for (int i = 0; i < 200; i++) {
        snprintf(uid[i], sizeof uid[i], "user-%d-%040d", i, i);
        v[i] = (store_interaction){uid[i], 1, i};
    }
    int full = 0, stored = 0;
    for (int b = 0; b < 400 && !full; b++) {
        ix_ticket t = {0};
        t.v = v;
        t.n = 200;
        CHECK(writer_submit(w, &t) == 0);
        for (int spin = 0; spin < 20000 && !__atomic_load_n(&t.done, __ATOMIC_ACQUIRE); spin++)
            usleep(100);
        CHECK(t.done);
        if (t.rc == IISAN_EFULL) {
            full = 1;
            CHECKF(strstr(t.err, "full") != NULL, "%s", t.err);
        } else {
            CHECKF(t.rc == 0, "%s", t.err);
            stored++;
        }
    }
    CHECKF(full && stored > 0, "stored %d batches, full %d", stored, full);
    uint64_t logged = 0;
    CHECK(store_ix_counts(x, &logged, NULL, NULL) == 0 && logged == (uint64_t)stored * 200);
    writer_drain(w);
    ix_ticket late = {0};
    late.v = v;
    late.n = 1;
    CHECK(writer_submit(w, &late) == -1 && writer_pending(w) == 0); /* drained, still valid */
    writer_stop(w);
    store_ix_close(x);
    store_close(s);
    store_set_map_limits((size_t)1 << 30, (size_t)1 << 40);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

/* a batch answers each of its requests as a batch of one does, whatever the
 * mix of k, exclusions and invalid requests in it */
static void check_batch(infer_model *im, const iisan_dataset *ds) {
    enum { NQ = 7, K = 12 };
    int32_t hist[NQ][12], bi[NQ][K], si[K];
    float bs[NQ][K], ss[K];
    infer_query q[NQ];
    for (int b = 0; b < NQ; b++) {
        int32_t seq[16], tgt;
        int nh = dataset_sequence(ds, b % ds->n_users, SPLIT_TEST, seq, &tgt);
        int n = ds->n_items > 0 ? 10 : 0; /* dataset_sequence left-pads to n */
        for (int j = 0; j < nh; j++)
            hist[b][j] = seq[n - nh + j];
        q[b] = (infer_query){hist[b], nh, hist[b], b % 3 ? nh : 0, 3 + b, bi[b], bs[b], 0};
    }
    q[5].k = 0;  /* invalid: refused alone */
    q[6].nh = 0; /* invalid */
    CHECK(infer_recommend_batch(im, q, NQ) == 0);
    CHECK(q[5].cnt == -1 && q[6].cnt == -1);
    /* the sequence encoder's GEMMs may round differently with more rows: scores agree to
     * 1e-5, ids where the scores are apart */
    int same = 1;
    float maxd = 0;
    for (int b = 0; b < 5; b++) {
        int cnt = infer_recommend(im, q[b].hist, q[b].nh, q[b].excl, q[b].ne, q[b].k, si, ss);
        same &= cnt == q[b].cnt && cnt == q[b].k;
        for (int t = 0; t < cnt && t < q[b].cnt; t++) {
            float dd = fabsf(ss[t] - bs[b][t]);
            if (dd > maxd) maxd = dd;
            if (si[t] != bi[b][t] && (t + 1 >= cnt || ss[t] - ss[t + 1] > 1e-4f)) same = 0;
        }
    }
    CHECKF(same && maxd < 1e-5f, "batch differs from one at a time (max score diff %g)", maxd);
}

/* Items added while serving (IISAN): e_i from their states on the spot. A copy
 * of an item's states under a new id and catalogue index scores as that
 * item does (to the GEMM tolerance); an update moves the id to a new row and retires the old;
 * SASRec-ID refuses; the headroom is a hard limit. */
static void check_add_items(infer_model *im, iisan_store *s, const iisan_config *c, int N) {
    char err[300];
    int32_t out[2];
    uint32_t newcat = store_item_count(s) + 100;
    infer_new_item v = {"new-item", newcat, {NULL, NULL}};
    if (c->kind != MODEL_IISAN) {
        CHECK(infer_add_items(im, &v, 1, out, err, sizeof err) == IISAN_EINVAL);
        CHECK(strstr(err, "SASRec-ID") != NULL);
        return;
    }
    store_reader *r;
    CHECK(store_reader_begin(s, &r) == 0);
    const uint32_t src_cat = 3;
    int src = infer_lookup_cat(im, src_cat);
    CHECK(src > 0);
    v.states[IISAN_TEXT] = store_reader_states(r, IISAN_TEXT, src_cat);
    v.states[IISAN_IMAGE] = store_reader_states(r, IISAN_IMAGE, src_cat);
    CHECK(infer_add_items(im, &v, 1, out, err, sizeof err) == 0);
    CHECK(out[0] == N + 1 && infer_n_items(im) == N + 1 && infer_n_added(im) == 1);
    CHECK(infer_lookup(im, "new-item") == N + 1 && infer_lookup_cat(im, newcat) == N + 1);
    CHECK(infer_item_id(im, N + 1) && !strcmp(infer_item_id(im, N + 1), "new-item"));
    CHECK(infer_lookup_cat(im, src_cat) == src); /* the original keeps its row */
    /* ranked, and with the score of the item whose states it copies */
    int32_t h[2] = {1, 2}, oi[60];
    float os[60];
    int cnt = infer_recommend(im, h, 2, NULL, 0, 60, oi, os);
    float s_new = NAN, s_src = NAN;
    for (int t = 0; t < cnt; t++) {
        if (oi[t] == N + 1) s_new = os[t];
        if (oi[t] == src) s_src = os[t];
    }
    /* embedded alone (a one-row GEMM) against in the load's batch: BLAS may pick other
     * kernels for other shapes, so equal to the GEMM tolerance (docs/gpu.md), not bit for bit */
    CHECKF(cnt == (N + 1 < 60 ? N + 1 : 60) && !isnan(s_new) &&
               fabsf(s_new - s_src) <= 1e-5f + 1e-5f * fabsf(s_src),
           "cnt %d new %.9g source %.9g", cnt, s_new, s_src);
    /* it can be a history item, like any other */
    int32_t h2[2] = {1, N + 1};
    CHECK(infer_recommend(im, h2, 2, NULL, 0, 5, oi, os) == 5);
    /* an update: new states, a new row; the old one is never returned again */
    v.states[IISAN_TEXT] = store_reader_states(r, IISAN_TEXT, 4);
    v.states[IISAN_IMAGE] = NULL;
    CHECK(infer_add_items(im, &v, 1, out, err, sizeof err) == 0);
    CHECK(out[0] == N + 2 && infer_lookup(im, "new-item") == N + 2);
    CHECK(infer_lookup_cat(im, newcat) == N + 2 && infer_banned_count(im) == 1);
    cnt = infer_recommend(im, h, 2, NULL, 0, 60, oi, os);
    int old_seen = 0, new_seen = 0;
    for (int t = 0; t < cnt; t++) {
        old_seen |= oi[t] == N + 1;
        new_seen |= oi[t] == N + 2;
    }
    CHECK(!old_seen && (new_seen || cnt == 60));
    /* headroom 3: one row left, two sent: nothing is added */
    infer_new_item two[2] = {{"a", newcat + 1, {NULL, NULL}}, {"b", newcat + 2, {NULL, NULL}}};
    CHECK(infer_add_items(im, two, 2, out, err, sizeof err) == IISAN_EFULL);
    CHECK(infer_n_items(im) == N + 2 && infer_lookup(im, "a") == 0);
    CHECK(infer_add_items(im, two, 1, out, err, sizeof err) == 0 && out[0] == N + 3);
    store_reader_end(r);
}

/* infer_recommend must rank as the full model does (model_item_embeddings +
 * seq_forward of a 64-user model + a full score row) */
/* the pruned CPU top-k equals scoring every item (the same scoring code, so bit for bit),
 * for real histories */
static void check_pruned(infer_model *im, iisan_store *s, iisan_backend *be,
                         const infer_options *opt, const iisan_dataset *ds, const iisan_config *c) {
    char err[512];
    infer_options ox = *opt;
    ox.exhaustive = 1;
    infer_model *full = NULL;
    CHECK(infer_load(s, 0, be, &ox, &full, err, sizeof err) == 0);
    int same = full != NULL;
    for (int u = 0; full && u < ds->n_users && u < 30; u++) {
        int32_t seq[16], tgt, oa[20], ob[20];
        float sa[20], sb[20];
        int nh = dataset_sequence(ds, u, SPLIT_TEST, seq, &tgt);
        const int32_t *h = seq + c->n - nh;
        int ca = infer_recommend(im, h, nh, h, u % 2 ? nh : 0, 20, oa, sa);
        int cb = infer_recommend(full, h, nh, h, u % 2 ? nh : 0, 20, ob, sb);
        same &= ca == cb && !memcmp(oa, ob, ca * sizeof *oa) && !memcmp(sa, sb, ca * sizeof *sa);
    }
    CHECKF(same, "kind %d: pruned top-k differs from the exhaustive one", c->kind);
    if (full) infer_release(full);
}

/* a banned item is never returned, by the model or by popularity */
static void check_bans(infer_model *im, int N) {
    int32_t oi[60];
    float os[60];
    int32_t h1[1] = {1};
    int full = infer_recommend(im, h1, 1, NULL, 0, N, oi, os);
    CHECK(full == N);
    int victim = oi[0];
    infer_ban(im, victim, 1);
    infer_ban(im, victim, 1); /* idempotent */
    CHECK(infer_banned_count(im) == 1);
    int after = infer_recommend(im, h1, 1, NULL, 0, N, oi, os);
    int seen = 0;
    for (int t = 0; t < after; t++)
        seen |= oi[t] == victim;
    CHECK(after == N - 1 && !seen);
    after = infer_popular(im, NULL, 0, N, oi, os);
    seen = 0;
    for (int t = 0; t < after; t++)
        seen |= oi[t] == victim;
    CHECK(after == N - 1 && !seen);
    infer_ban(im, victim, 0);
    CHECK(infer_banned_count(im) == 0 && infer_recommend(im, h1, 1, NULL, 0, N, oi, os) == N);
}

static void check_infer(iisan_store *s, const iisan_config *c, int min_len) {
    char err[512];
    iisan_backend *be = iisan_backend_cpu(1);
    iisan_dataset ds;
    CHECK(dataset_build(&ds, s, c->n, min_len, err, sizeof err) == 0);
    iisan_config cc = *c;
    if (cc.kind == MODEL_SASREC_ID) cc.n_items = ds.n_items;
    iisan_model *m = model_create(&cc, be, 64, 7, err, sizeof err);
    CHECKF(m != NULL, "%s", err);
    if (!m) return;
    store_reader *r;
    CHECK(store_reader_begin(s, &r) == 0);
    iisan_states st = states_from_reader(r);
    iisan_train_config tc;
    train_config_default(&tc);
    int32_t seqs[64 * 11];
    for (int step = 0; step < 5; step++) { /* a few steps so that nothing is at its init */
        for (int u = 0; u < 64; u++)
            dataset_sequence(&ds, u % ds.n_users, SPLIT_TRAIN, seqs + u * (c->n + 1), NULL);
        model_loss_grad(m, seqs, 64, ds.logpop, ds.item_cat, &st, 1, (uint64_t)step);
        model_adam(m, T_LR_ALL(1e-2f), 0.9f, 0.999f, 1e-8f);
    }
    iisan_ckpt ck = {0};
    ck.c = cc;
    ck.min_len = min_len;
    ck.n_cat = (uint32_t)ds.n_items + 1;
    ck.item_cat = ds.item_cat;
    ck.nparams = m->pt.total;
    ck.params = m->w;
    size_t len;
    void *blob = ckpt_encode(&ck, &len);
    uint32_t ver = 0;
    CHECK(blob && store_ckpt_put(s, blob, len, "{\"model\":\"test\"}", &ver) == 0);
    free(blob);
    /* the reference: full model, every item */
    const int N = ds.n_items, d = c->d, n = c->n;
    float *all = malloc((size_t)(N + 1) * d * sizeof *all);
    model_item_embeddings(m, N, ds.item_cat, &st, all);
    store_reader_end(r);
    infer_options opt = {2, 60, 60, 4, 3, 0, NULL, NULL, 0, 0};
    infer_model *im = NULL;
    int rc = infer_load(s, 0, be, &opt, &im, err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    if (rc) {
        free(all);
        model_destroy(m);
        dataset_free(&ds);
        be->destroy(be);
        return;
    }
    infer_info in;
    infer_get_info(im, &in);
    CHECK(in.version == ver && in.n_items == N && in.contexts == 2 && in.max_k == 60);
    CHECK(in.max_batch == 4 && in.headroom == (c->kind == MODEL_IISAN ? 3 : 0));
    /* every catalogue item with states is served by IISAN: the checkpoint's and the extras */
    CHECK(in.n_extra == (c->kind == MODEL_IISAN ? (int)store_item_count(s) - N : 0));
    CHECK(infer_n_items(im) == N + in.n_extra);
    int agree = 1, tested = 0;
    float maxdiff = 0;
    for (int u = 0; u < ds.n_users && u < 30; u++) {
        int32_t in_seq[16], tgt, hist[16];
        int nh = dataset_sequence(&ds, u, SPLIT_TEST, in_seq, &tgt);
        for (int j = 0; j < nh; j++)
            hist[j] = in_seq[n - nh + j];
        int in_idx[16];
        float mask[16];
        for (int j = 0; j < n; j++) {
            in_idx[j] = in_seq[j];
            mask[j] = in_seq[j] != 0;
        }
        seq_forward(m, all, in_idx, mask, 1, 0, 0);
        const float *o = seq_output(m) + (size_t)(n - 1) * d;
        /* reference top-10 excluding the history */
        int ref[10];
        float refs[10];
        for (int t = 0; t < 10; t++) {
            ref[t] = -1;
            refs[t] = -INFINITY;
        }
        for (int i = 1; i <= N; i++) {
            int excluded = 0;
            for (int j = 0; j < nh; j++)
                excluded |= hist[j] == i;
            if (excluded) continue;
            float sc = 0;
            for (int q = 0; q < d; q++)
                sc += o[q] * all[(size_t)i * d + q];
            for (int t = 0; t < 10; t++)
                if (sc > refs[t]) {
                    memmove(ref + t + 1, ref + t, (size_t)(9 - t) * sizeof *ref);
                    memmove(refs + t + 1, refs + t, (size_t)(9 - t) * sizeof *refs);
                    ref[t] = i;
                    refs[t] = sc;
                    break;
                }
        }
        int32_t oi[10];
        float os[10];
        /* the model's indexes of the checkpoint are those of the dataset */
        int cnt = infer_recommend(im, hist, nh, hist, nh, 10, oi, os);
        CHECK(cnt == (N - nh < 10 ? N - nh : 10) || cnt == 10);
        for (int t = 0; t < cnt && t < 10; t++) {
            float diff = fabsf(os[t] - refs[t]);
            if (diff > maxdiff) maxdiff = diff;
            /* near-ties may swap order: compare scores, and ids where the gap is clear */
            if (oi[t] != ref[t] && (t + 1 >= 10 || fabsf(refs[t] - refs[t + 1]) > 1e-4f)) agree = 0;
        }
        tested++;
    }
    CHECKF(agree && maxdiff < 1e-4f, "kind %d: top-10 differs (max score diff %g)", c->kind,
           maxdiff);
    CHECK(tested > 0);
    /* id maps */
    CHECK(infer_lookup(im, infer_item_id(im, 1)) == 1);
    CHECK(infer_lookup(im, "no-such-id") == 0);
    CHECK(infer_lookup_cat(im, ds.item_cat[N]) == N);
    /* popularity: counts of the training parts, descending, excluded skipped */
    int32_t pi[5];
    float ps[5];
    int pc = infer_popular(im, NULL, 0, 5, pi, ps);
    CHECK(pc == 5 && ps[0] >= ps[1] && ps[1] >= ps[4]);
    CHECK(ps[0] == (float)ds.pop_count[pi[0]]);
    int32_t ex[1] = {pi[0]};
    int32_t pj[5];
    CHECK(infer_popular(im, ex, 1, 5, pj, ps) == 5 && pj[0] == pi[1]);
    check_bans(im, N);
    /* capacity limits */
    CHECK(infer_recommend(im, pi, 1, NULL, 0, 61, pj, ps) == -1);
    check_batch(im, &ds);
    check_pruned(im, s, be, &opt, &ds, c);
    check_add_items(im, s, c, N + in.n_extra);
    infer_release(im);
    free(all);
    model_destroy(m);
    dataset_free(&ds);
    be->destroy(be);
}

/* score_topk: the pruned scan returns exactly what scoring every item returns,
 * and both what a plain reference loop returns (ties to the lower index), on
 * tables with unequal norms, exact ties (duplicated rows), exclusions, bans,
 * rows added after the table was built, k beyond the catalogue; and it prunes */
static void test_score_table(void) {
    const int d = 24, N0 = 1201, NA = 7, N1 = N0 + NA + 1;
    float *all = calloc((size_t)N1 * d, sizeof *all);
    for (int i = 1; i < N1; i++) {
        /* a few large norms and a long tail of small ones, as learned embeddings have */
        float u = (float)iisan_rng_uniform(21, (uint64_t)i);
        float scale = 0.05f + 3.0f * u * u * u * u;
        for (int j = 0; j < d; j++)
            all[(size_t)i * d + j] = scale * iisan_rng_normal(23, (uint64_t)i * d + j);
    }
    for (int j = 0; j < d; j++) { /* exact ties: rows 10 = 200 and 50 = 300 */
        all[200 * d + j] = all[10 * d + j];
        all[300 * d + j] = all[50 * d + j];
    }
    score_table *t = score_table_build(all, N0, d);
    CHECK(t != NULL);
    atomic_uchar *banned = calloc((size_t)N1, sizeof *banned);
    banned[7] = banned[123] = 1;
    static int32_t heap[2 * 1300], ia[1300], ib[1300], ref_i[1300];
    static float sa[1300], sb[1300], ref_s[1300];
    float o[24];
    long pruned_total = 0, full_total = 0;
    int same = 1, exact = 1;
    for (int qi = 0; qi < 40; qi++) {
        for (int j = 0; j < d; j++)
            o[j] = iisan_rng_normal(24, (uint64_t)qi * d + j);
        if (qi % 7 == 3) memcpy(o, all + 10 * d, sizeof o); /* the tied rows on top */
        int k = qi % 5 == 4 ? 1250 : 1 + qi % 12;           /* 1250: more than the catalogue */
        int32_t ex[3] = {(int32_t)(1 + qi % 300), 200, (int32_t)(N0 + 2)};
        int ne = qi % 2 ? 3 : 0;
        score_query q = {o, k, ex, ne, banned, 1};
        long sp = 0, sf = 0;
        int ca = score_topk(t, all, N1, &q, ia, sa, heap, &sp);
        q.prune = 0;
        int cb = score_topk(t, all, N1, &q, ib, sb, heap, &sf);
        if (k <= 12) { /* a top-k of the whole catalogue cannot prune */
            pruned_total += sp;
            full_total += sf;
        }
        same &= ca == cb && !memcmp(ia, ib, ca * sizeof *ia) && !memcmp(sa, sb, ca * sizeof *sa);
        /* reference: every eligible row, best first, ties by index (scores from the kernel) */
        int n = 0;
        for (int i = 1; i < N1; i++) {
            int skip = banned[i];
            for (int e = 0; e < ne; e++)
                skip |= ex[e] == i;
            if (skip) continue;
            float sc = NAN;
            for (int r = 0; r < cb; r++)
                if (ib[r] == i) sc = sb[r];
            if (isnan(sc)) { /* not returned: recompute in double to place it */
                double acc = 0;
                for (int j = 0; j < d; j++)
                    acc += (double)all[(size_t)i * d + j] * o[j];
                sc = (float)acc;
            }
            ref_i[n] = i;
            ref_s[n++] = sc;
        }
        for (int a = 1; a < n; a++) /* insertion sort: score desc, index asc */
            for (int b = a; b > 0 && (ref_s[b] > ref_s[b - 1] ||
                                      (ref_s[b] == ref_s[b - 1] && ref_i[b] < ref_i[b - 1]));
                 b--) {
                float ts = ref_s[b];
                ref_s[b] = ref_s[b - 1];
                ref_s[b - 1] = ts;
                int32_t ti = ref_i[b];
                ref_i[b] = ref_i[b - 1];
                ref_i[b - 1] = ti;
            }
        int want = n < k ? n : k;
        exact &= cb == want;
        for (int r = 0; r < cb && r < want; r++) /* ids where the gap exceeds the rounding */
            if (ib[r] != ref_i[r] && (r + 1 >= n || fabsf(ref_s[r] - ref_s[r + 1]) > 1e-4f))
                exact = 0;
    }
    CHECKF(same, "pruned and exhaustive top-k differ");
    CHECKF(exact, "top-k differs from the reference ranking");
    CHECKF(pruned_total < full_total / 2, "pruning scored %ld of %ld", pruned_total, full_total);
    score_table_free(t);
    free(banned);
    free(all);
}

static void test_infer(void) {
    char dir[] = "/tmp/iisan-inf-XXXXXX", path[96], err[512];
    CHECK(mkdtemp(dir) != NULL);
    iisan_store *s = NULL;
    CHECK(store_open(&s, dir, 1, err, sizeof err) == 0);
    snprintf(path, sizeof path, "%s/items.tsv", dir);
    FILE *f = fopen(path, "w");
    for (int i = 0; i < 60; i++)
        fprintf(f, "item-%d\tTitle %d\n", i, i);
    fclose(f);
    snprintf(path, sizeof path, "%s/users.tsv", dir);
    f = fopen(path, "w");
    for (int u = 0; u < 80; u++) {
        fprintf(f, "user%d\t", u);
        int len = 5 + (int)(iisan_rng_u64(9, (uint64_t)u) % 8);
        for (int j = 0; j < len; j++)
            fprintf(f, "%sitem-%d", j ? " " : "",
                    (int)(iisan_rng_u64(11, (uint64_t)u * 64 + j) % 60));
        fprintf(f, "\n");
    }
    fclose(f);
    snprintf(path, sizeof path, "%s/items.tsv", dir);
    CHECK(store_import_items(s, path, NULL, NULL, err, sizeof err) == 0);
    snprintf(path, sizeof path, "%s/users.tsv", dir);
    CHECKF(store_import_users(s, path, 0, NULL, NULL, err, sizeof err) == 0, "%s", err);
    const int NS = 5, D = 16;
    uint16_t *buf = malloc(60 * NS * D * sizeof *buf);
    uint32_t idx[60];
    for (int mod = 0; mod < 2; mod++) {
        for (int i = 0; i < 60; i++) {
            idx[i] = (uint32_t)i + 1;
            for (int e = 0; e < NS * D; e++)
                buf[i * NS * D + e] =
                    iisan_float_to_half(iisan_rng_normal(mod + 3, (uint64_t)i * NS * D + e));
        }
        CHECK(store_put_states(s, mod, "unit", NS, D, 60, idx, buf, err, sizeof err) == 0);
    }
    free(buf);
    CHECK(infer_load(s, 0, NULL, &(infer_options){1, 10, 10, 1, 0, 0, NULL, NULL, 0, 0},
                     &(infer_model *){NULL}, err, sizeof err) == IISAN_ENOTFOUND);
    iisan_config c;
    config_default(&c);
    c.D = D;
    c.nstates = NS;
    c.r = 4;
    c.d = 8;
    CHECK(config_set_schedule(&c, "0,2,4", err, sizeof err) == 0);
    check_infer(s, &c, 5);
    config_default(&c);
    c.kind = MODEL_SASREC_ID;
    c.d = 16;
    check_infer(s, &c, 5);
    store_close(s);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

int main(int argc, char **argv) {
    TEST_MAIN_BEGIN(argc, argv);
    RUN(test_base64);
    RUN(test_request_parse);
    RUN(test_config);
    RUN(test_interactions);
    RUN(test_writer_full);
    RUN(test_score_table);
    RUN(test_infer);
    TEST_MAIN_END();
}

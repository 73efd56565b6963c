/* The spec's data protocol: a handmade case worked out by hand (drop, cut,
 * re-index by first appearance, splits, history, popularity), padding of
 * short sequences, user-id order through a store, argument checks, and the
 * real Amazon figures (Scientific 12,076 / 20,314 / 81,711 and Office
 * 10,000 / 22,785 / 71,276 users / items / interactions). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/dataset.h"
#include "store/store.h"
#include "tests/test.h"

static char tmpdir[64];

static int same(const int32_t *a, const int32_t *b, int n) {
    for (int i = 0; i < n; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

/* n = 2 (cut to the last 5), min_len = 4, catalogue indexes:
 *   u0 [10 20 30]             3 < 4: dropped
 *   u1 [5 6 7 8 9 10 11]      cut to [7 8 9 10 11]
 *   u2 [8 12 7 8]             kept
 *   u3 [12 13 5 5 14]         kept
 * first appearance over the cut sequences: 7->1 8->2 9->3 10->4 11->5 12->6
 * 13->7 5->8 14->9 (5 was cut from u1, so it comes late; 6, 20, 30 vanish)
 *   u1 [1 2 3 4 5]   u2 [2 6 1 2]   u3 [6 7 8 8 9]
 * training parts seq[:-2]: [1 2 3], [2 6], [6 7 8]: counts 1:1 2:2 3:1 6:2
 * 7:1 8:1, total 8; 4, 5, 9 occur only as targets. */
static void test_handmade(void) {
    static const uint32_t u0[] = {10, 20, 30}, u1[] = {5, 6, 7, 8, 9, 10, 11}, u2[] = {8, 12, 7, 8},
                          u3[] = {12, 13, 5, 5, 14};
    const uint32_t *seqs[] = {u0, u1, u2, u3};
    const uint32_t lens[] = {3, 7, 4, 5};
    iisan_dataset ds;
    CHECK(dataset_from_sequences(&ds, seqs, lens, 4, 2, 4) == 0);
    CHECK(ds.max_len == 2 && ds.n_users == 3 && ds.n_items == 9 && ds.n_interactions == 14);
    static const uint32_t cat[] = {0, 7, 8, 9, 10, 11, 12, 13, 5, 14};
    CHECK(!memcmp(ds.item_cat, cat, sizeof cat));
    static const int64_t off[] = {0, 5, 9, 14};
    CHECK(!memcmp(ds.seq_off, off, sizeof off));
    static const int32_t seq[] = {1, 2, 3, 4, 5, 2, 6, 1, 2, 6, 7, 8, 8, 9};
    CHECK(same(ds.seq, seq, 14));
    static const double cnt[] = {0, 1, 2, 1, 0, 0, 2, 1, 1, 0};
    int ok = 1;
    for (int i = 0; i <= 9; i++)
        ok &= ds.pop_count[i] == cnt[i];
    CHECK(ok);
    CHECK(ds.logpop[0] == 0.0f);
    CHECK_CLOSE(ds.logpop[2], log(2.0 / 8), 1e-6, 0);
    CHECK_CLOSE(ds.logpop[1], log(1.0 / 8), 1e-6, 0);
    CHECK(isinf(ds.logpop[4]) && ds.logpop[4] < 0); /* only a target */

    int32_t out[8], tgt = -1;
    /* TRAIN: the last n+1 = 3 of seq[:-2], left-padded */
    CHECK(dataset_sequence(&ds, 0, SPLIT_TRAIN, out, &tgt) == 3 &&
          same(out, (int32_t[]){1, 2, 3}, 3));
    CHECK(dataset_sequence(&ds, 1, SPLIT_TRAIN, out, NULL) == 2 &&
          same(out, (int32_t[]){0, 2, 6}, 3));
    CHECK(dataset_sequence(&ds, 2, SPLIT_TRAIN, out, NULL) == 3 &&
          same(out, (int32_t[]){6, 7, 8}, 3));
    /* VALID: up to n = 2 items before seq[-2] */
    CHECK(dataset_sequence(&ds, 0, SPLIT_VALID, out, &tgt) == 2 && tgt == 4 &&
          same(out, (int32_t[]){2, 3}, 2));
    CHECK(dataset_sequence(&ds, 1, SPLIT_VALID, out, &tgt) == 2 && tgt == 1 &&
          same(out, (int32_t[]){2, 6}, 2));
    CHECK(dataset_sequence(&ds, 2, SPLIT_VALID, out, &tgt) == 2 && tgt == 8 &&
          same(out, (int32_t[]){7, 8}, 2));
    /* TEST: before seq[-1] */
    CHECK(dataset_sequence(&ds, 0, SPLIT_TEST, out, &tgt) == 2 && tgt == 5 &&
          same(out, (int32_t[]){3, 4}, 2));
    CHECK(dataset_sequence(&ds, 1, SPLIT_TEST, out, &tgt) == 2 && tgt == 2 &&
          same(out, (int32_t[]){6, 1}, 2));
    CHECK(dataset_sequence(&ds, 2, SPLIT_TEST, out, &tgt) == 2 && tgt == 9 &&
          same(out, (int32_t[]){8, 8}, 2));
    /* history: everything before the target */
    CHECK(dataset_history(&ds, 0, SPLIT_VALID, out) == 3 && same(out, (int32_t[]){1, 2, 3}, 3));
    CHECK(dataset_history(&ds, 0, SPLIT_TEST, out) == 4 && same(out, (int32_t[]){1, 2, 3, 4}, 4));
    CHECK(dataset_history(&ds, 1, SPLIT_TEST, out) == 3 && same(out, (int32_t[]){2, 6, 1}, 3));
    CHECK(dataset_history(&ds, 2, SPLIT_VALID, out) == 3 && same(out, (int32_t[]){6, 7, 8}, 3));
    /* out of range */
    CHECK(dataset_sequence(&ds, 3, SPLIT_TEST, out, &tgt) < 0);
    CHECK(dataset_sequence(&ds, -1, SPLIT_TEST, out, &tgt) < 0);
    CHECK(dataset_sequence(&ds, 0, 7, out, &tgt) < 0);
    CHECK(dataset_history(&ds, 3, SPLIT_TEST, out) < 0);
    dataset_free(&ds);
    CHECK(ds.seq == NULL && ds.n_users == 0);
    dataset_free(&ds); /* twice is fine */
}

/* short sequences with a long n: left padding everywhere */
static void test_padding(void) {
    static const uint32_t a[] = {4, 9, 4};
    const uint32_t *seqs[] = {a};
    const uint32_t lens[] = {3};
    iisan_dataset ds;
    CHECK(dataset_from_sequences(&ds, seqs, lens, 1, 4, 3) == 0);
    CHECK(ds.n_users == 1 && ds.n_items == 2 && ds.n_interactions == 3);
    CHECK(ds.item_cat[1] == 4 && ds.item_cat[2] == 9);
    int32_t out[8], tgt;
    CHECK(dataset_sequence(&ds, 0, SPLIT_TRAIN, out, &tgt) == 1 &&
          same(out, (int32_t[]){0, 0, 0, 0, 1}, 5));
    CHECK(dataset_sequence(&ds, 0, SPLIT_VALID, out, &tgt) == 1 && tgt == 2 &&
          same(out, (int32_t[]){0, 0, 0, 1}, 4));
    CHECK(dataset_sequence(&ds, 0, SPLIT_TEST, out, &tgt) == 2 && tgt == 1 &&
          same(out, (int32_t[]){0, 0, 1, 2}, 4));
    CHECK(ds.pop_count[1] == 1 && ds.pop_count[2] == 0 && ds.logpop[1] == 0.0f);
    dataset_free(&ds);
    /* nothing kept */
    CHECK(dataset_from_sequences(&ds, seqs, lens, 1, 4, 5) == 0);
    CHECK(ds.n_users == 0 && ds.n_items == 0 && ds.n_interactions == 0 && ds.item_cat[0] == 0);
    dataset_free(&ds);
    CHECK(dataset_from_sequences(&ds, NULL, NULL, 0, 10, 5) == 0 && ds.n_users == 0);
    dataset_free(&ds);
    /* bad arguments */
    CHECK(dataset_from_sequences(&ds, seqs, lens, 1, 4, 2) == IISAN_EINVAL); /* min_len < 3 */
    CHECK(dataset_from_sequences(&ds, seqs, lens, 1, 0, 3) == IISAN_EINVAL);
    static const uint32_t z[] = {1, 0, 2};
    const uint32_t *zs[] = {z};
    CHECK(dataset_from_sequences(&ds, zs, lens, 1, 4, 3) == IISAN_EINVAL); /* 0 is padding */
}

static const char *write_tmp(const char *name, const char *text) {
    static char p[256];
    snprintf(p, sizeof p, "%s/%s", tmpdir, name);
    FILE *f = fopen(p, "w");
    fputs(text, f);
    fclose(f);
    return p;
}

/* users are visited in user-id byte order, whatever the file's order */
static void test_store_order(void) {
    char dir[300], err[512];
    snprintf(dir, sizeof dir, "%s/order", tmpdir);
    iisan_store *s;
    CHECK(store_open(&s, dir, 1, err, sizeof err) == 0);
    if (!s) return;
    /* catalogue: c1=1 c2=2 c3=3 c4=4 c5=5 */
    CHECK(store_import_items(s, write_tmp("i.tsv", "c1\t1\nc2\t2\nc3\t3\nc4\t4\nc5\t5\n"), NULL,
                             NULL, err, sizeof err) == 0);
    CHECK(store_import_users(s, write_tmp("u.tsv", "b\tc1 c2 c3\nB\tc5 c4 c3\na\tc2 c2\n"), 0, NULL,
                             NULL, err, sizeof err) == 0);
    iisan_dataset ds;
    CHECK(dataset_build(&ds, s, 10, 3, err, sizeof err) == 0);
    /* "B" < "b" ("a" has 2 items: dropped): B first, so c5 -> 1, c4 -> 2, c3 -> 3 */
    CHECK(ds.n_users == 2 && ds.n_items == 5 && ds.n_interactions == 6);
    static const uint32_t cat[] = {0, 5, 4, 3, 1, 2};
    CHECK(ds.item_cat && !memcmp(ds.item_cat, cat, sizeof cat));
    static const int32_t seq[] = {1, 2, 3, 4, 5, 3};
    CHECK(same(ds.seq, seq, 6));
    dataset_free(&ds);
    CHECK(dataset_build(&ds, s, 10, 2, err, sizeof err) == IISAN_EINVAL);
    CHECK(strstr(err, "min_len") != NULL);
    store_close(s);
}

static void check_real(const char *users, int want_users, int want_items, uint64_t want_inter) {
    char dir[300], err[512];
    snprintf(dir, sizeof dir, "%s/real%d", tmpdir, want_users);
    if (access(users, R_OK)) {
        fprintf(stderr, "FAIL: %s is not readable (tests run from the repository root)\n", users);
        CHECK(0);
        return;
    }
    iisan_store *s;
    CHECK(store_open(&s, dir, 1, err, sizeof err) == 0);
    if (!s) return;
    int rc = store_import_users(s, users, 1, NULL, NULL, err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    iisan_dataset ds;
    rc = dataset_build(&ds, s, 10, 5, err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    CHECKF(ds.n_users == want_users && ds.n_items == want_items && ds.n_interactions == want_inter,
           "%d users, %d items, %llu interactions", ds.n_users, ds.n_items,
           (unsigned long long)ds.n_interactions);
    /* the mapping is a bijection onto distinct catalogue items; popularity sums
     * to the training parts; every training item has a finite log-popularity */
    uint32_t nc = store_item_count(s);
    char *seen = calloc(nc + 1, 1);
    int ok = ds.item_cat[0] == 0;
    for (int i = 1; i <= ds.n_items; i++) {
        uint32_t c = ds.item_cat[i];
        ok &= c >= 1 && c <= nc && !seen[c];
        if (c <= nc) seen[c] = 1;
    }
    CHECK(ok);
    free(seen);
    double total = 0;
    for (int i = 0; i <= ds.n_items; i++)
        total += ds.pop_count[i];
    CHECK(total == (double)(want_inter - 2 * (uint64_t)want_users));
    int finite = 1, lens_ok = 1;
    int32_t out[16];
    for (int u = 0; u < ds.n_users; u++) {
        int64_t L = ds.seq_off[u + 1] - ds.seq_off[u];
        lens_ok &= L >= 5 && L <= 13;
        int k = dataset_sequence(&ds, u, SPLIT_TRAIN, out, NULL);
        for (int j = 11 - k; j < 11; j++)
            finite &= isfinite(ds.logpop[out[j]]);
    }
    CHECK(finite && lens_ok);
    dataset_free(&ds);
    store_close(s);
}

static void test_scientific(void) {
    check_real("../shared/data/amazon/scientific/users.tsv", 12076, 20314, 81711);
}

static void test_office(void) {
    check_real("../shared/data/amazon/office/users.tsv", 10000, 22785, 71276);
}

int main(int argc, char **argv) {
    TEST_MAIN_BEGIN(argc, argv);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/iisan-ds-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_handmade);
    RUN(test_padding);
    RUN(test_store_order);
    RUN(test_scientific);
    RUN(test_office);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", tmpdir);
    TEST_MAIN_END();
}

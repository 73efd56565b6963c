/* The model repository (cluster/repo.c): a version staged, committed with a
 * manifest of SHA-256 checksums and renamed into place; CURRENT replaced by
 * rename (promotion, rollback); a corrupted, truncated, or incomplete version
 * refused by repo_verify; versions never rewritten. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cluster/repo.h"
#include "tests/test.h"

static char root[64];

static void write_file(const char *dir, const char *name, const char *text) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    fputs(text, f);
    fclose(f);
}

/* stages and commits version v with two small files */
static int publish(uint32_t v, const char *ckpt_text) {
    char tmp[4096], err[512];
    if (repo_stage(root, v, tmp, sizeof tmp, err, sizeof err)) return -1;
    write_file(tmp, REPO_CKPT, ckpt_text);
    write_file(tmp, REPO_ITEMS, "items");
    return repo_commit(root, v, tmp, "{\"hr10\": 0.5}", "{\"promote\": \"not worse\"}", err,
                       sizeof err);
}

static void test_sha256(void) {
    char p[256], hex[65];
    snprintf(p, sizeof p, "%s/abc", root);
    FILE *f = fopen(p, "w");
    fputs("abc", f);
    fclose(f);
    uint64_t n = 0;
    CHECK(repo_sha256_file(p, hex, &n) == 0);
    CHECK(n == 3);
    /* FIPS 180-2's example */
    CHECK(!strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
    unlink(p);
    CHECK(repo_sha256_file(p, hex, &n) == -1);
}

static void test_publish_current_rollback(void) {
    char err[512];
    uint32_t v = 0;
    CHECK(repo_current(root, &v, err, sizeof err) == 1);     /* no CURRENT yet */
    CHECK(repo_set_current(root, 1, err, sizeof err) == -1); /* no such version */
    CHECK(publish(1, "one") == 0);
    CHECK(publish(2, "two") == 0);
    CHECK(publish(2, "again") == -2); /* never rewritten */
    CHECK(repo_verify(root, 1, err, sizeof err) == 0);
    CHECKF(repo_verify(root, 2, err, sizeof err) == 0, "%s", err);
    CHECK(repo_set_current(root, 2, err, sizeof err) == 0);
    CHECK(repo_current(root, &v, err, sizeof err) == 0 && v == 2);
    CHECK(repo_set_current(root, 1, err, sizeof err) == 0); /* rollback */
    CHECK(repo_current(root, &v, err, sizeof err) == 0 && v == 1);
    uint32_t *vs = NULL, n = 0;
    CHECK(repo_list(root, &vs, &n) == 0 && n == 2 && vs[0] == 1 && vs[1] == 2);
    free(vs);
    /* no staging directory left behind */
    char tmp[256];
    snprintf(tmp, sizeof tmp, "%s/.tmp-2-%d", root, (int)getpid());
    struct stat st;
    CHECK(stat(tmp, &st) == -1);
    /* the manifest holds the figures */
    char mp[256];
    repo_path(root, 2, REPO_MANIFEST, mp, sizeof mp);
    FILE *f = fopen(mp, "r");
    char buf[2048];
    size_t got = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    buf[got] = 0;
    CHECK(got > 0);
    if (f) fclose(f);
    CHECK(strstr(buf, "\"hr10\"") && strstr(buf, REPO_CKPT) && strstr(buf, "sha256"));
}

static void test_corruption_refused(void) {
    char err[512], p[256];
    CHECK(publish(3, "three") == 0);
    repo_path(root, 3, REPO_CKPT, p, sizeof p);
    write_file(root, "3/" REPO_CKPT, "thrEe"); /* same size, other bytes */
    CHECK(repo_verify(root, 3, err, sizeof err) == -1);
    CHECKF(strstr(err, "sha256 mismatch") != NULL, "%s", err);
    write_file(root, "3/" REPO_CKPT, "th"); /* truncated */
    CHECK(repo_verify(root, 3, err, sizeof err) == -1);
    CHECKF(strstr(err, "bytes") != NULL, "%s", err);
    unlink(p); /* missing */
    CHECK(repo_verify(root, 3, err, sizeof err) == -1);
    /* a manifest naming no item table, or of another version */
    CHECK(publish(4, "four") == 0);
    write_file(root, "4/" REPO_MANIFEST, "{\"version\": 5, \"files\": {}}");
    CHECK(repo_verify(root, 4, err, sizeof err) == -1);
    write_file(root, "4/" REPO_MANIFEST, "{\"version\": 4, \"files\": {}}");
    CHECK(repo_verify(root, 4, err, sizeof err) == -1);
    write_file(root, "4/" REPO_MANIFEST, "not json");
    CHECK(repo_verify(root, 4, err, sizeof err) == -1);
    CHECK(repo_verify(root, 9, err, sizeof err) == -1); /* absent */
    /* a malformed CURRENT */
    write_file(root, "CURRENT", "x\n");
    uint32_t v;
    CHECK(repo_current(root, &v, err, sizeof err) == -1);
}

int main(int argc, char **argv) {
    TEST_MAIN_BEGIN(argc, argv);
    snprintf(root, sizeof root, "/tmp/iisan-repo-XXXXXX");
    if (!mkdtemp(root)) return 1;
    RUN(test_sha256);
    RUN(test_publish_current_rollback);
    RUN(test_corruption_refused);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", root);
    if (system(cmd)) fprintf(stderr, "cannot remove %s\n", root);
    TEST_MAIN_END();
}

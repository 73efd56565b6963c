/* safetensors reader and writer: round trip (names, dtypes, shapes, bytes,
 * metadata, alignment, sorted header), writer argument checks, and
 * malformed input: truncated at every length, bad headers of every kind,
 * random garbage and random byte flips, all rejected without a crash. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store/safetensors.h"
#include "store/store.h"
#include "tests/test.h"

static char tmpdir[64];

static void path_in(char *out, size_t cap, const char *name) {
    snprintf(out, cap, "%s/%s", tmpdir, name);
}

static void write_bytes(const char *path, const void *b, size_t n) {
    FILE *f = fopen(path, "wb");
    if (n) fwrite(b, 1, n, f);
    fclose(f);
}

static unsigned char *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc(len ? (size_t)len : 1);
    *n = fread(b, 1, (size_t)len, f);
    fclose(f);
    return b;
}

/* a file from a header text (data bytes appended) */
static int parse_with_header(const char *hdr, size_t data_len, char *err, size_t errlen) {
    size_t hl = strlen(hdr), n = 8 + hl + data_len;
    unsigned char *b = calloc(1, n);
    uint64_t h = hl;
    memcpy(b, &h, 8);
    memcpy(b + 8, hdr, hl);
    st_file *f = NULL;
    int rc = st_parse(&f, b, n, "mem", err, errlen);
    st_close(f);
    free(b);
    return rc;
}

static float f32v[2][3] = {{1, 2, 3}, {4, 5, 6.5f}};
static uint16_t f16v[4] = {0x3c00, 0x4000, 0xc000, 0x7bff};
static uint8_t u8v[5] = {'a', 'b', '\n', 'c', 'd'};
static int64_t i64v[2] = {-1, 1LL << 40};
static uint16_t bf16v[1] = {0x3f80};
static double f64v[1];

static int write_sample(const char *path) {
    st_writer *w = st_writer_new();
    int64_t s23[2] = {2, 3}, s4[1] = {4}, s5[1] = {5}, s12[2] = {1, 2}, s0[1] = {0};
    int rc = 0;
    /* added out of name order on purpose */
    rc |= st_writer_add(w, "zeta", ST_U8, 1, s5, u8v);
    rc |= st_writer_add(w, "alpha", ST_F32, 2, s23, f32v);
    rc |= st_writer_add(w, "half", ST_F16, 1, s4, f16v);
    rc |= st_writer_add(w, "big", ST_I64, 2, s12, i64v);
    rc |= st_writer_add(w, "scalar", ST_BF16, 0, NULL, bf16v);
    rc |= st_writer_add(w, "empty", ST_F64, 1, s0, f64v);
    rc |= st_writer_meta(w, "text_backbone", "bert-base-uncased");
    rc |= st_writer_meta(w, "note", "caf\xc3\xa9 &amp; \"quotes\"");
    rc |= st_writer_meta(w, "note", "replaced");
    rc |= st_writer_write(w, path, NULL, 0);
    st_writer_free(w);
    return rc;
}

static void test_round_trip(void) {
    char path[128], tmp[140];
    path_in(path, sizeof path, "rt.safetensors");
    CHECK(write_sample(path) == 0);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    CHECK(access(tmp, F_OK) != 0); /* renamed away */
    char err[256] = "";
    st_file *f;
    int rc = st_open(&f, path, err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    if (rc) return;
    CHECK(f->n_tensors == 6);
    const char *order[6] = {"alpha", "big", "empty", "half", "scalar", "zeta"};
    for (int i = 0; i < 6 && i < (int)f->n_tensors; i++)
        CHECK(!strcmp(f->tensors[i].name, order[i]));
    const st_tensor *t = st_find(f, "alpha");
    CHECK(t && t->dtype == ST_F32 && t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 3 &&
          t->nbytes == 24 && !memcmp(t->data, f32v, 24) && (uintptr_t)t->data % 4 == 0);
    t = st_find(f, "half");
    CHECK(t && t->dtype == ST_F16 && t->nbytes == 8 && !memcmp(t->data, f16v, 8) &&
          (uintptr_t)t->data % 2 == 0);
    t = st_find(f, "big");
    CHECK(t && t->dtype == ST_I64 && !memcmp(t->data, i64v, 16) && (uintptr_t)t->data % 8 == 0);
    t = st_find(f, "zeta");
    CHECK(t && t->dtype == ST_U8 && t->nbytes == 5 && !memcmp(t->data, u8v, 5));
    t = st_find(f, "scalar");
    CHECK(t && t->dtype == ST_BF16 && t->ndim == 0 && t->nbytes == 2 && st_numel(t) == 1 &&
          !memcmp(t->data, bf16v, 2));
    t = st_find(f, "empty");
    CHECK(t && t->ndim == 1 && t->shape[0] == 0 && t->nbytes == 0);
    CHECK(st_find(f, "nope") == NULL);
    CHECK(f->n_meta == 2);
    CHECK(st_meta_get(f, "text_backbone") &&
          !strcmp(st_meta_get(f, "text_backbone"), "bert-base-uncased"));
    CHECK(st_meta_get(f, "note") && !strcmp(st_meta_get(f, "note"), "replaced"));
    CHECK(st_meta_get(f, "absent") == NULL);
    st_close(f);

    /* the raw layout: data 8-aligned, keys in name order, padded with spaces */
    size_t n;
    unsigned char *b = read_all(path, &n);
    uint64_t hl;
    memcpy(&hl, b, 8);
    CHECK((8 + hl) % 8 == 0 && 8 + hl <= n);
    char *hdr = strndup((char *)b + 8, hl);
    const char *pa = strstr(hdr, "\"alpha\""), *pb = strstr(hdr, "\"big\""),
               *pm = strstr(hdr, "\"__metadata__\""), *pz = strstr(hdr, "\"zeta\"");
    CHECK(pa && pb && pm && pz && pb < pz && pm < pa); /* '_' sorts before lowercase */
    CHECK(hdr[0] == '{');
    free(hdr);
    /* every tensor's bytes end exactly at the end of the file (contiguous data) */
    CHECK(n == 8 + hl + 24 + 8 + 16 + 2 + 5);
    free(b);
}

static void test_writer_args(void) {
    st_writer *w = st_writer_new();
    int64_t s1[1] = {1}, neg[1] = {-1};
    float x = 1;
    CHECK(st_writer_add(w, "a", ST_F32, 1, s1, &x) == 0);
    CHECK(st_writer_add(w, "a", ST_F32, 1, s1, &x) == IISAN_EINVAL);            /* duplicate */
    CHECK(st_writer_add(w, "", ST_F32, 1, s1, &x) == IISAN_EINVAL);             /* empty */
    CHECK(st_writer_add(w, "__metadata__", ST_F32, 1, s1, &x) == IISAN_EINVAL); /* reserved */
    CHECK(st_writer_add(w, "bad\xff", ST_F32, 1, s1, &x) == IISAN_EINVAL);      /* not UTF-8 */
    CHECK(st_writer_add(w, "b", ST_F32, 1, neg, &x) == IISAN_EINVAL);
    CHECK(st_writer_add(w, "c", ST_F32, 9, s1, &x) == IISAN_EINVAL);
    CHECK(st_writer_add(w, "d", ST_F32, 1, s1, NULL) == IISAN_EINVAL);
    CHECK(st_writer_add(w, "e", ST_NDTYPES, 1, s1, &x) == IISAN_EINVAL);
    CHECK(st_writer_meta(w, "k", "\xc3") == IISAN_EINVAL);
    char err[256] = "";
    CHECK(st_writer_write(w, "/nonexistent-dir/x.safetensors", err, sizeof err) == IISAN_EIO);
    CHECK(strstr(err, "/nonexistent-dir/x.safetensors.tmp") != NULL);
    /* no metadata: no __metadata__ key */
    char path[128];
    path_in(path, sizeof path, "nometa.safetensors");
    CHECK(st_writer_write(w, path, err, sizeof err) == 0);
    st_file *f;
    CHECK(st_open(&f, path, err, sizeof err) == 0);
    if (f) CHECK(f->n_meta == 0 && f->n_tensors == 1);
    st_close(f);
    st_writer_free(w);
    CHECK(st_dtype_parse("F16") == ST_F16 && st_dtype_parse("f16") == -1);
    CHECK(st_dtype_size(ST_BF16) == 2 && !strcmp(st_dtype_name(ST_I32), "I32"));
}

static void test_truncated(void) {
    char path[128], cut[128];
    path_in(path, sizeof path, "full.safetensors");
    path_in(cut, sizeof cut, "cut.safetensors");
    CHECK(write_sample(path) == 0);
    size_t n;
    unsigned char *b = read_all(path, &n);
    int all_rejected = 1, bad_code = 0;
    for (size_t len = 0; len < n; len++) {
        write_bytes(cut, b, len);
        st_file *f = NULL;
        char err[256] = "";
        int rc = st_open(&f, cut, err, sizeof err);
        if (rc == 0) all_rejected = 0, st_close(f);
        if (rc != IISAN_EFORMAT || !strstr(err, cut)) bad_code = 1;
    }
    CHECK(all_rejected);
    CHECK(!bad_code);
    /* the message for a truncated data area */
    write_bytes(cut, b, n - 1);
    st_file *f = NULL;
    char err[256] = "";
    CHECK(st_open(&f, cut, err, sizeof err) == IISAN_EFORMAT);
    CHECKF(strstr(err, "truncated") != NULL, "%s", err);
    free(b);
}

static void test_bad_headers(void) {
    char err[256];
    struct {
        const char *hdr;
        size_t data;
        const char *msg;
    } cases[] = {
        {"[1, 2]", 0, "not a JSON object"},
        {"{\"a\": 1}", 0, "not a JSON object"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1]}}", 4, "data_offsets"},
        {"{\"a\": {\"dtype\": \"Q4\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 4, "Q4"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}", 4, "shape"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1.5], \"data_offsets\": [0, 4]}}", 4, "shape"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 4]}}", 8, "needs 8"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 0]}}", 8, "begin"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0]}}", 8, "begin"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}", 6, "past"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
         " \"b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}",
         8, "overlap"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
         " \"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}",
         4, "JSON"},
        {"{\"__metadata__\": {\"k\": 3}}", 0, "not a string"},
        {"{\"__metadata__\": [\"k\"]}", 0, "__metadata__"},
        {"{\"a\": {\"dtype\": \"U8\", \"shape\": [1,1,1,1,1,1,1,1,1], \"data_offsets\": [0, 1]}}",
         1, "dimensions"},
        {"{\"a\": {\"dtype\": \"U8\", \"shape\": [4294967296, 4294967296, 4294967296], "
         "\"data_offsets\": [0, 1]}}",
         1, "large"},
        {"{\"\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0, 1]}}", 1, "empty"},
        {"{\"a\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0, 1]}", 1, "JSON"},
        {"{\"a\": \"\xff\"}", 0, "JSON"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        err[0] = '\0';
        int rc = parse_with_header(cases[i].hdr, cases[i].data, err, sizeof err);
        CHECKF(rc == IISAN_EFORMAT && strstr(err, cases[i].msg), "case %zu: rc %d, '%s'", i, rc,
               err);
    }
    /* valid: adjacent tensors, an empty one at the boundary, trailing spaces */
    CHECK(parse_with_header("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, "
                            "4]}, \"b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": "
                            "[4, 8]}, \"c\": {\"dtype\": \"F32\", \"shape\": [0], "
                            "\"data_offsets\": [4, 4]}}    ",
                            8, err, sizeof err) == 0);
    CHECK(parse_with_header("{}", 0, err, sizeof err) == 0);
    /* header lengths */
    unsigned char b[32] = {0};
    uint64_t h;
    st_file *f = NULL;
    for (uint64_t hl = 0; hl < 2; hl++) {
        memcpy(b, &hl, 8);
        CHECK(st_parse(&f, b, sizeof b, "mem", err, sizeof err) == IISAN_EFORMAT);
    }
    h = 25; /* one past the end */
    memcpy(b, &h, 8);
    CHECK(st_parse(&f, b, sizeof b, "mem", err, sizeof err) == IISAN_EFORMAT);
    CHECK(strstr(err, "header length 25") != NULL);
    h = UINT64_MAX;
    memcpy(b, &h, 8);
    CHECK(st_parse(&f, b, sizeof b, "mem", err, sizeof err) == IISAN_EFORMAT);
    CHECK(st_parse(&f, b, 7, "mem", err, sizeof err) == IISAN_EFORMAT);
    CHECK(f == NULL);
    /* files that are not there or not files */
    CHECK(st_open(&f, "/nonexistent/x.safetensors", err, sizeof err) == IISAN_EIO);
    CHECK(strstr(err, "/nonexistent/x.safetensors") != NULL);
    CHECK(st_open(&f, tmpdir, err, sizeof err) == IISAN_EIO);
    char empty[128];
    path_in(empty, sizeof empty, "empty.safetensors");
    write_bytes(empty, "", 0);
    CHECK(st_open(&f, empty, err, sizeof err) == IISAN_EFORMAT);
    CHECK(strstr(err, "too short") != NULL);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void test_garbage(void) {
    char path[128];
    path_in(path, sizeof path, "fuzz.safetensors");
    CHECK(write_sample(path) == 0);
    size_t n;
    unsigned char *good = read_all(path, &n);
    unsigned char *b = malloc(n + 4096);
    int ok_invariants = 1, bad_code = 0;
    char err[256];
    /* random byte flips in a valid file: header and data */
    for (int it = 0; it < 3000; it++) {
        memcpy(b, good, n);
        int flips = 1 + (int)(rnd() % 4);
        for (int k = 0; k < flips; k++)
            b[rnd() % n] = (unsigned char)rnd();
        st_file *f = NULL;
        int rc = st_parse(&f, b, n, "mem", err, sizeof err);
        if (rc && rc != IISAN_EFORMAT) bad_code = 1;
        if (!rc) {
            for (size_t i = 0; i < f->n_tensors; i++) {
                const st_tensor *t = &f->tensors[i];
                const unsigned char *d = t->data;
                if (d < b || d + t->nbytes > b + n ||
                    t->nbytes != st_numel(t) * st_dtype_size(t->dtype))
                    ok_invariants = 0;
            }
            st_close(f);
        }
    }
    /* random garbage of random lengths, with plausible and implausible length words */
    for (int it = 0; it < 3000; it++) {
        size_t len = rnd() % 300;
        for (size_t i = 0; i < len; i++)
            b[i] = (unsigned char)rnd();
        if (len >= 8 && it % 2) {
            uint64_t hl = rnd() % (len - 7);
            memcpy(b, &hl, 8);
            if (len > 8 && it % 4 == 1) b[8] = '{';
        }
        st_file *f = NULL;
        int rc = st_parse(&f, b, len, "mem", err, sizeof err);
        if (rc && rc != IISAN_EFORMAT) bad_code = 1;
        st_close(f);
    }
    CHECK(ok_invariants);
    CHECK(!bad_code);
    free(b);
    free(good);
}

int main(int argc, char **argv) {
    TEST_MAIN_BEGIN(argc, argv);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/iisan-st-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_round_trip);
    RUN(test_writer_args);
    RUN(test_truncated);
    RUN(test_bad_headers);
    RUN(test_garbage);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", tmpdir);
    TEST_MAIN_END();
}

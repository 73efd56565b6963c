/* The model repository: versions written aside and renamed into place, a
 * CURRENT pointer replaced by rename, SHA-256 manifests (cluster/repo.h). */
#include "cluster/repo.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

void repo_path(const char *repo, uint32_t version, const char *file, char *out, size_t cap) {
    if (file)
        snprintf(out, cap, "%s/%u/%s", repo, version, file);
    else
        snprintf(out, cap, "%s/%u", repo, version);
}

/* fsync of a file or directory by path */
static int fsync_path(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

int repo_sha256_file(const char *path, char hex[65], uint64_t *bytes) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1;
    unsigned char buf[1 << 16], md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    uint64_t total = 0;
    size_t n;
    while (ok && (n = fread(buf, 1, sizeof buf, f)) > 0) {
        ok = EVP_DigestUpdate(ctx, buf, n) == 1;
        total += n;
    }
    if (ferror(f)) ok = 0;
    if (ok) ok = EVP_DigestFinal_ex(ctx, md, &mdlen) == 1 && mdlen == 32;
    EVP_MD_CTX_free(ctx);
    fclose(f);
    if (!ok) return -1;
    for (unsigned i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    if (bytes) *bytes = total;
    return 0;
}

/* removes a directory and the regular files directly in it */
static void rm_flat_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[PATH_MAX + 256];
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
    closedir(d);
    rmdir(dir);
}

int repo_stage(const char *repo, uint32_t version, char *tmp, size_t tmpcap, char *err,
               size_t errlen) {
    if (mkdir(repo, 0755) && errno != EEXIST)
        return fail(err, errlen, "%s: cannot create the repository: %s", repo, strerror(errno));
    snprintf(tmp, tmpcap, "%s/.tmp-%u-%d", repo, version, (int)getpid());
    rm_flat_dir(tmp);
    if (mkdir(tmp, 0755)) return fail(err, errlen, "%s: cannot create: %s", tmp, strerror(errno));
    return 0;
}

/* the files of tmp with their checksums, as the manifest's "files" object */
static json_t *files_json(const char *tmp, char *err, size_t errlen) {
    DIR *d = opendir(tmp);
    if (!d) {
        fail(err, errlen, "%s: %s", tmp, strerror(errno));
        return NULL;
    }
    json_t *files = json_object();
    struct dirent *e;
    char p[PATH_MAX + 256], hex[65];
    int bad = !files;
    while (!bad && (e = readdir(d))) {
        if (e->d_name[0] == '.' || !strcmp(e->d_name, REPO_MANIFEST)) continue;
        snprintf(p, sizeof p, "%s/%s", tmp, e->d_name);
        uint64_t bytes = 0;
        if (repo_sha256_file(p, hex, &bytes) || fsync_path(p)) {
            fail(err, errlen, "%s: cannot checksum and sync: %s", p, strerror(errno));
            bad = 1;
        } else if (json_object_set_new(
                       files, e->d_name,
                       json_pack("{s:s,s:I}", "sha256", hex, "bytes", (json_int_t)bytes))) {
            bad = fail(err, errlen, "out of memory");
        }
    }
    closedir(d);
    if (bad) {
        json_decref(files);
        return NULL;
    }
    return files;
}

static json_t *object_or_empty(const char *text) {
    json_t *j = text ? json_loads(text, 0, NULL) : NULL;
    if (j && json_is_object(j)) return j;
    json_decref(j);
    return json_object();
}

int repo_commit(const char *repo, uint32_t version, const char *tmp, const char *figures_json,
                const char *rules_json, char *err, size_t errlen) {
    char dst[PATH_MAX], mpath[PATH_MAX + 32], when[32];
    repo_path(repo, version, NULL, dst, sizeof dst);
    struct stat st;
    if (!stat(dst, &st)) {
        fail(err, errlen, "%s exists already: versions are never rewritten", dst);
        rm_flat_dir(tmp);
        return -2;
    }
    json_t *files = files_json(tmp, err, errlen);
    if (!files) {
        rm_flat_dir(tmp);
        return -1;
    }
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    json_t *m =
        json_pack("{s:s,s:i,s:I,s:s,s:o,s:o,s:o}", "format", "iisan-repo", "format_version", 1,
                  "version", (json_int_t)version, "created", when, "files", files, "figures",
                  object_or_empty(figures_json), "rules", object_or_empty(rules_json));
    snprintf(mpath, sizeof mpath, "%s/%s", tmp, REPO_MANIFEST);
    if (!m || json_dump_file(m, mpath, JSON_INDENT(1) | JSON_SORT_KEYS)) {
        json_decref(m);
        return fail(err, errlen, "%s: cannot write the manifest", mpath);
    }
    json_decref(m);
    if (fsync_path(mpath) || fsync_path(tmp))
        return fail(err, errlen, "%s: cannot sync: %s", tmp, strerror(errno));
    if (rename(tmp, dst))
        return fail(err, errlen, "renaming %s to %s: %s", tmp, dst, strerror(errno));
    if (fsync_path(repo)) return fail(err, errlen, "%s: cannot sync: %s", repo, strerror(errno));
    return 0;
}

int repo_set_current(const char *repo, uint32_t version, char *err, size_t errlen) {
    char dir[PATH_MAX], tmp[PATH_MAX + 16], cur[PATH_MAX + 16];
    repo_path(repo, version, NULL, dir, sizeof dir);
    struct stat st;
    if (stat(dir, &st) || !S_ISDIR(st.st_mode))
        return fail(err, errlen, "%s: no such version in the repository", dir);
    snprintf(tmp, sizeof tmp, "%s/CURRENT.tmp", repo);
    snprintf(cur, sizeof cur, "%s/CURRENT", repo);
    FILE *f = fopen(tmp, "w");
    if (!f) return fail(err, errlen, "%s: %s", tmp, strerror(errno));
    int bad = fprintf(f, "%u\n", version) < 0;
    bad |= fflush(f) != 0 || fsync(fileno(f)) != 0;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, cur) || fsync_path(repo))
        return fail(err, errlen, "%s: cannot replace: %s", cur, strerror(errno));
    return 0;
}

int repo_current(const char *repo, uint32_t *version, char *err, size_t errlen) {
    char cur[PATH_MAX + 16], buf[32];
    snprintf(cur, sizeof cur, "%s/CURRENT", repo);
    FILE *f = fopen(cur, "r");
    if (!f) {
        if (errno == ENOENT) return 1;
        return fail(err, errlen, "%s: %s", cur, strerror(errno));
    }
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *end;
    unsigned long v = strtoul(buf, &end, 10);
    if (end == buf || (*end && *end != '\n') || v == 0 || v > UINT32_MAX)
        return fail(err, errlen, "%s: not a version number", cur);
    *version = (uint32_t)v;
    return 0;
}

static int verify_file(const char *repo, uint32_t version, const char *name, json_t *entry,
                       char *err, size_t errlen) {
    char p[PATH_MAX + 256], hex[65];
    const char *want = json_string_value(json_object_get(entry, "sha256"));
    json_t *jb = json_object_get(entry, "bytes");
    if (!want || !json_is_integer(jb) || strchr(name, '/'))
        return fail(err, errlen, "version %u: manifest entry '%s' is malformed", version, name);
    repo_path(repo, version, name, p, sizeof p);
    uint64_t bytes = 0;
    if (repo_sha256_file(p, hex, &bytes))
        return fail(err, errlen, "%s: cannot read: %s", p, strerror(errno));
    if (bytes != (uint64_t)json_integer_value(jb))
        return fail(err, errlen, "%s: %llu bytes, the manifest says %lld", p,
                    (unsigned long long)bytes, (long long)json_integer_value(jb));
    if (strcmp(hex, want)) return fail(err, errlen, "%s: sha256 mismatch", p);
    return 0;
}

int repo_verify(const char *repo, uint32_t version, char *err, size_t errlen) {
    char mpath[PATH_MAX + 32];
    repo_path(repo, version, REPO_MANIFEST, mpath, sizeof mpath);
    json_error_t je;
    json_t *m = json_load_file(mpath, 0, &je);
    if (!m) return fail(err, errlen, "%s: %s", mpath, je.text);
    json_t *files = json_object_get(m, "files");
    json_t *jv = json_object_get(m, "version");
    int rc = 0;
    if (!json_is_object(files) || !json_is_integer(jv) ||
        json_integer_value(jv) != (json_int_t)version)
        rc = fail(err, errlen, "%s: not a manifest of version %u", mpath, version);
    else if (!json_object_get(files, REPO_CKPT) || !json_object_get(files, REPO_ITEMS))
        rc = fail(err, errlen, "%s: lists no %s or no %s", mpath, REPO_CKPT, REPO_ITEMS);
    const char *name;
    json_t *entry;
    if (!rc) json_object_foreach(files, name, entry) {
            if ((rc = verify_file(repo, version, name, entry, err, errlen))) break;
        }
    json_decref(m);
    return rc;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

int repo_list(const char *repo, uint32_t **versions, uint32_t *n) {
    *versions = NULL;
    *n = 0;
    DIR *d = opendir(repo);
    if (!d) return errno == ENOENT ? 0 : -1;
    struct dirent *e;
    uint32_t *v = NULL, cnt = 0;
    while ((e = readdir(d))) {
        char *end;
        unsigned long x = strtoul(e->d_name, &end, 10);
        if (e->d_name[0] < '1' || e->d_name[0] > '9' || *end || x > UINT32_MAX) continue;
        uint32_t *t = realloc(v, (cnt + 1) * sizeof *v);
        if (!t) {
            free(v);
            closedir(d);
            return -1;
        }
        v = t;
        v[cnt++] = (uint32_t)x;
    }
    closedir(d);
    if (cnt) qsort(v, cnt, sizeof *v, cmp_u32);
    *versions = v;
    *n = cnt;
    return 0;
}

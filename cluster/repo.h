/* The model repository (cluster mode, docs/scaling.md): a directory laid out
 * like TF-Serving's, shared by the trainer (writer) and the replicas (readers):
 *
 *   <repo>/<version>/ckpt.safetensors   the checkpoint, as `iisan export` writes it
 *   <repo>/<version>/items.safetensors  the item embedding table ("embeddings" F32
 *                                        [N, d]) and its item ids ("item_ids" U8,
 *                                        newline-separated, row i+1 = line i)
 *   <repo>/<version>/manifest.json      sha256 and size of every file, the figures
 *                                        that promoted the version, its rules, time
 *   <repo>/CURRENT                      the serving version, "V\n"
 *
 * A version is written into <repo>/.tmp-<version>-<pid>/, every file and the
 * directory fsync'd, then renamed into place (a reader never sees half a
 * version); CURRENT is replaced by writing CURRENT.tmp, fsync and rename, so
 * promotion and rollback are each one atomic rename. Readers verify the
 * manifest's checksums (OpenSSL's SHA-256) before using a version. */
#ifndef IISAN_CLUSTER_REPO_H
#define IISAN_CLUSTER_REPO_H

#include <stddef.h>
#include <stdint.h>

#define REPO_CKPT "ckpt.safetensors"
#define REPO_ITEMS "items.safetensors"
#define REPO_MANIFEST "manifest.json"

/* creates <repo>/.tmp-<version>-<pid>/ (removing a stale one) into tmp
 * (PATH_MAX): the caller writes the version's files there. 0 or -1 (err). */
int repo_stage(const char *repo, uint32_t version, char *tmp, size_t tmpcap, char *err,
               size_t errlen);

/* checksums every regular file of tmp into manifest.json (with figures_json and
 * rules_json, JSON objects or NULL), fsyncs them, renames tmp to
 * <repo>/<version>. -2 when the version exists already, -1 on other failures
 * (the staging directory is removed in both cases). */
int repo_commit(const char *repo, uint32_t version, const char *tmp, const char *figures_json,
                const char *rules_json, char *err, size_t errlen);

/* points CURRENT at version (which must exist): write aside, fsync, rename */
int repo_set_current(const char *repo, uint32_t version, char *err, size_t errlen);

/* the version CURRENT names: 0 with *version, 1 when there is no CURRENT yet,
 * -1 when it cannot be read or is malformed (err) */
int repo_current(const char *repo, uint32_t *version, char *err, size_t errlen);

/* checks <repo>/<version>: the manifest parses, names ckpt and items, and
 * every file it lists has its size and sha256. 0, or -1 with err naming the
 * file at fault. */
int repo_verify(const char *repo, uint32_t version, char *err, size_t errlen);

/* the versions present (numeric directory names), ascending; malloc'd */
int repo_list(const char *repo, uint32_t **versions, uint32_t *n);

/* <repo>/<version>/<file> into out */
void repo_path(const char *repo, uint32_t version, const char *file, char *out, size_t cap);

/* sha256 of a file as 64 hex characters (+ NUL) and its size; 0 or -1 */
int repo_sha256_file(const char *path, char hex[65], uint64_t *bytes);

#endif

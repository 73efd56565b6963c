/* iisan export / iisan import-ckpt: checkpoints as safetensors, so PyTorch
 * users can read and write our models (server/ckpt_file.h has the layout,
 * docs/formats.md lists the tensors). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/ckpt_file.h"
#include "server/cli.h"
#include "server/common.h"

static int parse(int argc, char **argv, const char *cmd, const char *fileopt, const char **dir,
                 const char **file, long *version) {
    static struct option opts[] = {{"data", 1, 0, 'D'}, {"version", 1, 0, 'v'}, {"out", 1, 0, 'o'},
                                   {"in", 1, 0, 'i'},   {"help", 0, 0, 'h'},    {0, 0, 0, 0}};
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'D': *dir = optarg; break;
        case 'v':
            if (!version || opt_int(cmd, "version", optarg, 1, 0xffffffffL, version)) return 2;
            break;
        case 'o':
        case 'i':
            if (strcmp(fileopt, ch == 'o' ? "out" : "in")) return 2;
            *file = optarg;
            break;
        case 'h': return -1;
        default: return 2;
        }
    }
    if (optind < argc || !*dir || !*file) return 2;
    return 0;
}

int cmd_export(int argc, char **argv) {
    const char *dir = NULL, *out = NULL;
    long version = 0;
    int prc = parse(argc, argv, "export", "out", &dir, &out, &version);
    if (prc) {
        fprintf(prc < 0 ? stdout : stderr,
                "usage: iisan export --data DIR [--version V] --out FILE.safetensors\n\n"
                "Writes checkpoint V (default: the latest) as safetensors: one F32 tensor per\n"
                "parameter, item_ids, and the config in the metadata (docs/formats.md).\n");
        return prc < 0 ? 0 : 2;
    }
    char err[512] = "", summary[160];
    iisan_store *s = NULL;
    if (store_open(&s, dir, 0, err, sizeof err)) {
        fprintf(stderr, "iisan export: %s\n", err);
        return 1;
    }
    uint32_t ver = 0;
    int rc = ckpt_file_export(s, (uint32_t)version, out, &ver, summary, err, sizeof err);
    store_close(s);
    if (rc) {
        fprintf(stderr, "iisan export: %s\n", err);
        return 1;
    }
    fprintf(stderr, "exported checkpoint %u (%s) to %s\n", ver, summary, out);
    return 0;
}

int cmd_import_ckpt(int argc, char **argv) {
    const char *dir = NULL, *in = NULL;
    int prc = parse(argc, argv, "import-ckpt", "in", &dir, &in, NULL);
    if (prc) {
        fprintf(prc < 0 ? stdout : stderr,
                "usage: iisan import-ckpt --data DIR --in FILE.safetensors\n\n"
                "Stores a safetensors checkpoint (as written by iisan export, or by PyTorch\n"
                "with the same tensor names) as a new checkpoint version.\n");
        return prc < 0 ? 0 : 2;
    }
    char err[512] = "";
    iisan_store *s = NULL;
    if (cli_lock_store("import-ckpt", dir, 0)) return 1;
    if (store_open(&s, dir, 0, err, sizeof err)) {
        fprintf(stderr, "iisan import-ckpt: %s\n", err);
        return 1;
    }
    void *blob = NULL;
    size_t len = 0;
    uint32_t ver = 0;
    int rc = ckpt_file_read(s, in, &blob, &len, err, sizeof err);
    if (!rc && store_ckpt_put(s, blob, len, "{\"imported\":true}", &ver)) {
        snprintf(err, sizeof err, "storing the checkpoint failed");
        rc = -1;
    }
    free(blob);
    store_close(s);
    if (rc) {
        fprintf(stderr, "iisan import-ckpt: %s\n", err);
        return 1;
    }
    fprintf(stderr, "imported %s as checkpoint version %u\n", in, ver);
    return 0;
}

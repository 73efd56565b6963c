/* build/iisan: one binary, one subcommand per offline job. */
#include <stdio.h>
#include <string.h>

#include "kernels/blas_info.h"
#include "server/cli.h"
#include "server/serve.h"

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} cmds[] = {
    {"import", cmd_import, "import a catalogue, users' interactions and hidden states"},
    {"info", cmd_info, "what a data directory holds"},
    {"train", cmd_train, "train a model (iisan, sasrec-id, popularity) and checkpoint it"},
    {"eval", cmd_eval, "HR@10 and NDCG@10 of a checkpoint on the test split"},
    {"export", cmd_export, "write a checkpoint as safetensors"},
    {"import-ckpt", cmd_import_ckpt, "store a safetensors checkpoint as a new version"},
    {"encode", cmd_encode, "text states of the catalogue's titles from a BERT checkpoint"},
    {"serve", cmd_serve, "the HTTP daemon: recommendations, interactions, metrics"},
    {"blas", cmd_blas, "the BLAS's kernels on this CPU and its sgemm rate"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: iisan <command> [options]   (iisan <command> --help for each; iisan "
               "--version)\n\n");
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        fprintf(f, "  %-12s %s\n", cmds[i].name, cmds[i].help);
}

int main(int argc, char **argv) {
    blas_guard(argv); /* OpenBLAS on SSE kernels on an AVX2 / AVX-512 CPU: restart on the right */
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
        printf("iisan %s (%s)\n", iisan_version, iisan_git_describe);
        return 0;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (!strcmp(argv[1], cmds[i].name)) return cmds[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "iisan: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}

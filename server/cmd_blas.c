/* iisan blas: which kernels the BLAS runs on this machine and its sgemm rate on the SAN
 * shapes (kernels/blas_info.h). The benchmark scripts run `iisan blas --check` first: it
 * exits 3 when the BLAS runs generic (SSE) kernels on a CPU with AVX2 or AVX-512, and warns
 * when its kernels are below the CPU's level otherwise (AVX2 ones on an AVX-512 CPU). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "kernels/backend.h"
#include "kernels/blas_info.h"
#include "server/cli.h"

static void help(FILE *f) {
    fprintf(f, "usage: iisan blas [--threads N] [--check] [--json]\n\n"
               "Prints the BLAS library, its build configuration, the kernel set (core type)\n"
               "it runs, this CPU's vector level and the sgemm rate on the SAN block's shapes\n"
               "(640 x 64 x 768 and back; about 0.2 s).\n\n"
               "  --threads N  BLAS threads (0, the default, takes every core)\n"
               "  --check      exit 3, saying why, when the BLAS runs generic (SSE) kernels\n"
               "               on a CPU with AVX2 or AVX-512 (what every benchmark checks);\n"
               "               kernels below the CPU's level otherwise (AVX2 on AVX-512) warn\n"
               "  --json       print the figures as one JSON object as the last line\n");
}

int cmd_blas(int argc, char **argv) {
    static const struct option opts[] = {{"threads", 1, 0, 't'},
                                         {"check", 0, 0, 'c'},
                                         {"json", 0, 0, 'j'},
                                         {"help", 0, 0, 'h'},
                                         {0, 0, 0, 0}};
    int threads = 0, check = 0, json = 0, ch;
    char *end;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 't':
            threads = (int)strtol(optarg, &end, 10);
            if (*end || threads < 0 || threads > 1024) {
                fprintf(stderr, "iisan blas: --threads wants a count 0-1024, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'c': check = 1; break;
        case 'j': json = 1; break;
        case 'h': help(stdout); return 0;
        default: help(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "iisan blas: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    iisan_backend *be = iisan_backend_cpu(threads); /* sets the library's threads */
    if (!be) {
        fprintf(stderr, "iisan blas: out of memory creating the CPU backend\n");
        return 1;
    }
    be->destroy(be);
    blas_info bi;
    char line[640];
    blas_info_probe(&bi, 0.2);
    blas_info_line(&bi, line, sizeof line);
    fprintf(json ? stderr : stdout, "%s\n", line);
    if (check && blas_refuse_generic(&bi, "iisan blas")) return 3;
    const char *warn = blas_generic_warning(&bi);
    if (warn) fprintf(stderr, "%s\n", warn);
    if (json) {
        blas_info_json(&bi, line, sizeof line);
        printf("{%s}\n", line);
    }
    return 0;
}

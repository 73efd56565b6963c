/* iisan eval: HR@10 and NDCG@10 of a stored checkpoint (or of popularity)
 * on the test split, by full ranking. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/eval.h"
#include "core/session.h"
#include "core/states.h"
#include "server/cli.h"
#include "server/common.h"

static void help(FILE *f) {
    fprintf(f, "usage: iisan eval --data DIR [options]\n\n"
               "Scores every user's held-out item against all items (full ranking).\n\n"
               "  --data DIR       data directory (required)\n"
               "  --version V      checkpoint version (default: the latest)\n"
               "  --model popularity   evaluate the popularity baseline (no checkpoint)\n"
               "  --split S        test (default) or valid\n"
               "  --eval-exclude R what the ranking leaves out of the user's history:\n"
               "                   history (default, spec v2: a target the user had before is\n"
               "                   never ranked and counts as a miss) or history-but-target\n"
               "                   (spec v1: such a target is ranked)\n"
               "  --max-len N      n for --model popularity (10)\n"
               "  --min-len N      min items per user for --model popularity (5)\n"
               "  --threads N      BLAS threads (0, the default, takes every core: give a\n"
               "                   share when other jobs run on the machine)\n"
               "  --device D       cpu, cuda or auto (default: cuda when this build has it\n"
               "                   and a GPU is usable, else cpu)\n"
               "  --json           print one JSON object with the figures as the last line\n");
}

int cmd_eval(int argc, char **argv) {
    static const struct option opts[] = {
        {"data", 1, 0, 'D'},    {"version", 1, 0, 'v'},      {"model", 1, 0, 'm'},
        {"split", 1, 0, 's'},   {"max-len", 1, 0, 'n'},      {"min-len", 1, 0, 'N'},
        {"threads", 1, 0, 'T'}, {"json", 0, 0, 'j'},         {"help", 0, 0, 'h'},
        {"device", 1, 0, 'G'},  {"eval-exclude", 1, 0, 'X'}, {0, 0, 0, 0}};
    const char *dir = NULL, *model = NULL, *device = NULL;
    long version = 0, threads = 0, max_len = 10, min_len = 5;
    int json = 0, split = SPLIT_TEST, ch, rule = EVAL_RULE_V2;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'D': dir = optarg; break;
        case 'v':
            if (opt_int("eval", "version", optarg, 1, 0xffffffffL, &version)) return 2;
            break;
        case 'm': model = optarg; break;
        case 's':
            if (!strcmp(optarg, "test"))
                split = SPLIT_TEST;
            else if (!strcmp(optarg, "valid"))
                split = SPLIT_VALID;
            else {
                fprintf(stderr, "iisan eval: --split wants test or valid, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'n':
            if (opt_int("eval", "max-len", optarg, 1, 200, &max_len)) return 2;
            break;
        case 'N':
            if (opt_int("eval", "min-len", optarg, 3, 1000, &min_len)) return 2;
            break;
        case 'T':
            if (opt_int("eval", "threads", optarg, 0, 1024, &threads)) return 2;
            break;
        case 'G':
            if (opt_device("eval", optarg)) return 2;
            device = optarg;
            break;
        case 'X':
            if ((rule = eval_rule_parse(optarg)) < 0) {
                fprintf(stderr,
                        "iisan eval: --eval-exclude wants history or history-but-target, got "
                        "'%s'\n",
                        optarg);
                return 2;
            }
            break;
        case 'j': json = 1; break;
        case 'h': help(stdout); return 0;
        default: help(stderr); return 2;
        }
    }
    if (optind < argc || !dir) {
        fprintf(stderr, "iisan eval: %s\n",
                !dir ? "--data DIR is required" : "unexpected argument");
        help(stderr);
        return 2;
    }
    if (model && strcmp(model, "popularity")) {
        fprintf(stderr, "iisan eval: --model takes only popularity; trained models are chosen with "
                        "--version\n");
        return 2;
    }
    char err[512];
    iisan_store *s = NULL;
    if (store_open(&s, dir, 0, err, sizeof err)) {
        fprintf(stderr, "iisan eval: %s\n", err);
        return 1;
    }
    int rc = 1;
    iisan_session ss = {0};
    iisan_backend *be = NULL;
    eval_result r;
    const char *name = "popularity";
    iisan_config pc;
    config_default(&pc);
    pc.kind = MODEL_POPULARITY;
    pc.n = (int)max_len;
    session_options so = {.mode = model ? SESSION_NEW : SESSION_EVAL,
                          .config = &pc,
                          .min_len = (int)min_len,
                          .version = (uint32_t)version};
    if (!model && !(be = backend_choose("eval", device, (int)threads))) goto out;
    int orc = session_open(&ss, s, be, &so, err, sizeof err);
    if (orc) {
        fprintf(stderr, "iisan eval: %s%s\n", err,
                orc == IISAN_ENOTFOUND && !model ? "; train one with `iisan train`" : "");
        goto out;
    }
    if (model) {
        popularity_evaluate(&ss.ds, split, rule, &r);
    } else {
        name = ss.c.kind != MODEL_IISAN  ? "sasrec-id"
               : ss.c.arch == ARCH_VERSA ? "iisan-versa"
                                         : "iisan";
        if (model_evaluate(ss.m, &ss.ds, split, rule, &ss.st, &r)) {
            fprintf(stderr, "iisan eval: out of memory\n");
            goto out;
        }
        if (backend_check("eval", be)) goto out;
        if (states_check(&ss.st, err, sizeof err)) {
            fprintf(stderr, "iisan eval: %s\n", err);
            goto out;
        }
    }
    const uint32_t ver = ss.version;
    const char *sp = split == SPLIT_TEST ? "test" : "valid";
    fprintf(stderr,
            "%s%s%.0u: %s HR@10 %.4f NDCG@10 %.4f over %d users (%.2f s; excluded: %s; %d "
            "users' target was in their history)\n",
            name, ver ? " version " : "", ver, sp, r.hr10, r.ndcg10, r.users, r.seconds,
            eval_rule_name(rule), r.repeated);
    if (json)
        printf("{\"model\":\"%s\",\"version\":%u,\"split\":\"%s\",\"hr10\":%.6f,"
               "\"ndcg10\":%.6f,\"users\":%d,\"items\":%d,\"seconds\":%.3f,"
               "\"eval_exclude\":\"%s\",\"repeated_targets\":%d}\n",
               name, ver, sp, r.hr10, r.ndcg10, r.users, ss.ds.n_items, r.seconds,
               eval_rule_name(rule), r.repeated);
    rc = 0;
out:
    session_close(&ss);
    if (be) be->destroy(be);
    store_close(s);
    return rc;
}

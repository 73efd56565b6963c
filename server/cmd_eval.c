/* iisan eval: HR@10 and NDCG@10 of a stored checkpoint (or of popularity)
 * on the test split, by full ranking. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/eval.h"
#include "core/resident.h"
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
    iisan_dataset ds = {0};
    iisan_ckpt ck = {0};
    iisan_model *m = NULL;
    iisan_backend *be = NULL;
    store_reader *rd = NULL;
    resident_states *rs = NULL;
    eval_result r;
    uint32_t ver = 0;
    const char *name = "popularity";
    if (model) {
        if (dataset_build(&ds, s, (int)max_len, (int)min_len, err, sizeof err)) {
            fprintf(stderr, "iisan eval: %s\n", err);
            goto out;
        }
        popularity_evaluate(&ds, split, rule, &r);
    } else {
        be = backend_choose("eval", device, (int)threads);
        if (!be) goto out;
        if (load_checkpoint_model("eval", s, (uint32_t)version, be, &ck, &ds, &m, &ver)) goto out;
        name = ck.c.kind != MODEL_IISAN  ? "sasrec-id"
               : ck.c.arch == ARCH_VERSA ? "iisan-versa"
                                         : "iisan";
        if (store_reader_begin(s, &rd)) {
            fprintf(stderr, "iisan eval: cannot read the store\n");
            goto out;
        }
        iisan_states st = states_from_reader(rd);
        if (states_fit(rd, &ck.c, err, sizeof err)) {
            fprintf(stderr, "iisan eval: version %u: %s\n", ver, err);
            goto out;
        }
        if (ck.c.kind == MODEL_IISAN && !be->caps.host_memory) {
            /* the GPU reads states from its own memory: every item's, uploaded once */
            if (states_resident_create(be, &ds, &st, &ck.c, &rs, err, sizeof err)) {
                fprintf(stderr, "iisan eval: %s\n", err);
                goto out;
            }
            if (backend_check("eval", be)) goto out;
            st = resident_states_source(rs);
        }
        if (model_evaluate(m, &ds, split, rule, &st, &r)) {
            fprintf(stderr, "iisan eval: out of memory\n");
            goto out;
        }
        if (backend_check("eval", be)) goto out;
        if (states_check(&st, err, sizeof err)) {
            fprintf(stderr, "iisan eval: %s\n", err);
            goto out;
        }
    }
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
               name, ver, sp, r.hr10, r.ndcg10, r.users, ds.n_items, r.seconds,
               eval_rule_name(rule), r.repeated);
    rc = 0;
out:
    if (rd) store_reader_end(rd);
    states_resident_free(rs);
    model_destroy(m);
    if (be) be->destroy(be);
    ckpt_free(&ck);
    dataset_free(&ds);
    store_close(s);
    return rc;
}

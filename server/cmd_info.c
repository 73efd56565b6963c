/* iisan info: what a data directory's store holds, and the dataset the
 * spec's preprocessing makes of it. */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/session.h"
#include "server/cli.h"
#include "server/common.h"
#include "store/store.h"
#include "store/store_ext.h"

static void help(FILE *f) {
    fprintf(f, "usage: iisan info --data DIR [--max-len N] [--min-len N] [--json]\n\n"
               "Prints the store's catalogue, users, hidden states and checkpoints, and the\n"
               "dataset after the spec's preprocessing (users with fewer than --min-len items\n"
               "dropped, sequences cut to their last --max-len + 3 items).\n\n"
               "  --data DIR     data directory (required)\n"
               "  --max-len N    n, the model's sequence length (10)\n"
               "  --min-len N    fewest items a user needs to be kept (5)\n"
               "  --json         print one JSON object with the figures as the last line\n");
}

static int count_interactions(const char *id, const uint32_t *items, uint32_t n, void *arg) {
    *(uint64_t *)arg += n;
    return 0;
}

static int fail(const char *msg) {
    fprintf(stderr, "iisan info: %s\n", msg);
    return 1;
}

/* one stored version: its size, what it is (config_describe) and its meta, printed and
 * appended to jck. 0, or -1 (message printed) when it cannot be read. */
static int show_checkpoint(iisan_store *s, uint32_t version, json_t *jck) {
    char *meta = NULL, desc[256] = "";
    void *blob = NULL;
    size_t len = 0;
    uint32_t v;
    if (store_ckpt_get(s, version, &blob, &len, &meta, &v)) {
        fail("reading a checkpoint failed");
        return -1;
    }
    /* what the version is (towers, schedule, rules), so that two models tell apart */
    iisan_ckpt ck;
    char cerr[256];
    json_t *jc = NULL;
    if (ckpt_decode(blob, len, &ck, cerr, sizeof cerr) == 0) {
        config_describe(&ck.c, desc, sizeof desc);
        char *cj = config_to_json(&ck.c, ck.min_len);
        jc = cj ? json_loads(cj, 0, NULL) : NULL;
        free(cj);
        ckpt_free(&ck);
    } else {
        snprintf(desc, sizeof desc, "unreadable: %.200s", cerr);
    }
    free(blob);
    printf("  version %u (%.1f MiB): %s\n    %s\n", v, len / 1048576.0, desc, meta);
    json_t *jm = json_loads(meta, 0, NULL);
    json_array_append_new(jck,
                          json_pack("{s:I, s:I, s:s, s:o, s:o}", "version", (json_int_t)v, "bytes",
                                    (json_int_t)len, "describe", desc, "config",
                                    jc ? jc : json_null(), "meta", jm ? jm : json_string(meta)));
    free(meta);
    return 0;
}

int cmd_info(int argc, char **argv) {
    static const struct option opts[] = {{"data", 1, 0, 'D'},    {"max-len", 1, 0, 'n'},
                                         {"min-len", 1, 0, 'N'}, {"json", 0, 0, 'j'},
                                         {"help", 0, 0, 'h'},    {0, 0, 0, 0}};
    const char *dir = NULL;
    long max_len = 10, min_len = 5;
    int json = 0, ch;
    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (ch) {
        case 'D': dir = optarg; break;
        case 'n':
            if (opt_int("info", "max-len", optarg, 1, 200, &max_len)) return 2;
            break;
        case 'N':
            if (opt_int("info", "min-len", optarg, 3, 1000, &min_len)) return 2;
            break;
        case 'j': json = 1; break;
        case 'h': help(stdout); return 0;
        case ':': fprintf(stderr, "iisan info: %s needs a value\n", argv[optind - 1]); return 2;
        default:
            fprintf(stderr, "iisan info: unknown option '%s' (see iisan info --help)\n",
                    argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "iisan info: unexpected argument '%s' (see iisan info --help)\n",
                argv[optind]);
        return 2;
    }
    if (!dir) {
        fprintf(stderr, "iisan info: --data DIR is required (see iisan info --help)\n");
        return 2;
    }
    char err[1024];
    iisan_store *s;
    if (store_open(&s, dir, 0, err, sizeof err)) return fail(err);
    int rc = 1;
    json_t *j = json_object(), *jstates = json_object(), *jck = json_array();
    uint32_t *versions = NULL, nver = 0;
    iisan_session ss = {0};
    const iisan_dataset *ds = &ss.ds;

    store_usage us = {0};
    store_usage_get(s, &us);
    uint32_t items = store_item_count(s), titled = store_items_with_title(s),
             users = store_user_count(s);
    uint64_t inter = 0;
    if (store_users_foreach(s, count_interactions, &inter)) {
        fail("reading the users failed");
        goto out;
    }
    printf("store: %s (format %u, %.1f MiB used of a %.0f MiB map)\n", dir, us.format,
           us.used_bytes / 1048576.0, us.map_bytes / 1048576.0);
    printf("catalogue: %u items, %u with titles\n", items, titled);
    printf("users: %u users, %llu interactions\n", users, (unsigned long long)inter);
    json_object_set_new(j, "data", json_string(dir));
    json_object_set_new(j, "format", json_integer(us.format));
    json_object_set_new(j, "used_bytes", json_integer((json_int_t)us.used_bytes));
    json_object_set_new(j, "items", json_integer(items));
    json_object_set_new(j, "items_with_title", json_integer(titled));
    json_object_set_new(j, "users", json_integer(users));
    json_object_set_new(j, "interactions", json_integer((json_int_t)inter));

    printf("hidden states:\n");
    const char *names[2] = {"text", "image"};
    for (int m = 0; m < 2; m++) {
        store_states_info si;
        int r = store_states_info_get(s, m, &si);
        if (r == IISAN_ENOTFOUND) {
            printf("  %-6s none\n", names[m]);
            json_object_set_new(jstates, names[m], json_null());
        } else if (r) {
            fail("reading the hidden-state records failed");
            goto out;
        } else {
            printf("  %-6s backbone %s, %d states x %d, %u items\n", names[m], si.backbone,
                   si.nstates, si.width, si.count);
            json_object_set_new(jstates, names[m],
                                json_pack("{s:s, s:i, s:i, s:I}", "backbone", si.backbone,
                                          "nstates", si.nstates, "width", si.width, "count",
                                          (json_int_t)si.count));
        }
    }
    json_object_set(j, "states", jstates);

    if (store_ckpt_list(s, &versions, &nver)) {
        fail("reading the checkpoints failed");
        goto out;
    }
    printf("checkpoints:%s\n", nver ? "" : " none");
    for (uint32_t i = 0; i < nver; i++)
        if (show_checkpoint(s, versions[i], jck)) goto out;
    json_object_set(j, "checkpoints", jck);

    iisan_config pc; /* the dataset alone: a popularity session */
    config_default(&pc);
    pc.kind = MODEL_POPULARITY;
    pc.n = (int)max_len;
    session_options so = {.mode = SESSION_NEW, .config = &pc, .min_len = (int)min_len};
    if (session_open(&ss, s, NULL, &so, err, sizeof err)) {
        fail(err);
        goto out;
    }
    printf("dataset (n = %ld, users with >= %ld items, cut to the last %ld): %d users, %d items, "
           "%llu interactions\n",
           max_len, min_len, max_len + 3, ds->n_users, ds->n_items,
           (unsigned long long)ds->n_interactions);
    json_object_set_new(j, "dataset",
                        json_pack("{s:i, s:i, s:i, s:i, s:I}", "max_len", (int)max_len, "min_len",
                                  (int)min_len, "users", ds->n_users, "items", ds->n_items,
                                  "interactions", (json_int_t)ds->n_interactions));
    if (json) {
        char *txt = json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(15));
        if (!txt) {
            fail("out of memory");
            goto out;
        }
        printf("%s\n", txt);
        free(txt);
    }
    fflush(stdout);
    rc = 0;
out:
    session_close(&ss);
    free(versions);
    json_decref(jstates);
    json_decref(jck);
    json_decref(j);
    store_close(s);
    return rc;
}

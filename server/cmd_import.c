/* iisan import: a catalogue (items.tsv), users' interactions (users.tsv) and
 * hidden states (safetensors) into a data directory's store. Each file is
 * imported all-or-nothing, in that order. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server/cli.h"
#include "server/common.h"
#include "store/store.h"
#include "store/store_ext.h"

static void help(FILE *f) {
    fprintf(f, "usage: iisan import --data DIR [--items items.tsv] [--users users.tsv]\n"
               "                    [--states states.safetensors] [--add-unknown-items] [--quiet]\n"
               "\n"
               "Imports into the store of DIR (created when missing), each file all-or-nothing:\n"
               "\n"
               "  --data DIR           data directory (required)\n"
               "  --items FILE         item_id<TAB>title per line; new ids are added, known ids\n"
               "                       get their title updated\n"
               "  --users FILE         user_id<TAB>item ids (space-separated, oldest first); a\n"
               "                       user's line replaces that user's sequence\n"
               "  --states FILE        hidden states in safetensors (docs/formats.md)\n"
               "  --add-unknown-items  add item ids of --users that the catalogue lacks (the\n"
               "                       default when the store has no titles at all, i.e. an\n"
               "                       interactions-only catalogue)\n"
               "  --quiet              no progress or summary lines\n");
}

typedef struct {
    double t0, last;
    int attempt;
    uint64_t final; /* units of the finished import */
} progress_state;

static void on_progress(void *arg, const store_progress *p) {
    progress_state *g = arg;
    double now = now_seconds();
    if (p->attempt != g->attempt) { /* the map grew: the file is read again */
        g->attempt = p->attempt;
        g->t0 = g->last = now;
        fprintf(stderr, "  %s: the store grew; reading the file again\n", p->path);
    }
    if (p->fraction >= 1.0) {
        g->final = p->done;
        return;
    }
    if (now - g->last < 1.0) return;
    g->last = now;
    double dt = now - g->t0;
    fprintf(stderr, "  %s: %llu %s (%.0f%%), %.0f %s/s\n", p->path, (unsigned long long)p->done,
            p->unit, 100.0 * p->fraction, dt > 0 ? p->done / dt : 0.0, p->unit);
}

static int fail(const char *err) {
    fprintf(stderr, "iisan import: %s\n", err);
    return 1;
}

int cmd_import(int argc, char **argv) {
    static const struct option opts[] = {{"data", 1, 0, 'D'},
                                         {"items", 1, 0, 'i'},
                                         {"users", 1, 0, 'u'},
                                         {"states", 1, 0, 's'},
                                         {"quiet", 0, 0, 'q'},
                                         {"help", 0, 0, 'h'},
                                         {"add-unknown-items", 0, 0, 'a'},
                                         {0, 0, 0, 0}};
    const char *dir = NULL, *items = NULL, *users = NULL, *states = NULL;
    int quiet = 0, add_unknown = 0, ch;
    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (ch) {
        case 'D': dir = optarg; break;
        case 'i': items = optarg; break;
        case 'u': users = optarg; break;
        case 's': states = optarg; break;
        case 'q': quiet = 1; break;
        case 'a': add_unknown = 1; break;
        case 'h': help(stdout); return 0;
        case ':': fprintf(stderr, "iisan import: %s needs a value\n", argv[optind - 1]); return 2;
        default:
            fprintf(stderr, "iisan import: unknown option '%s' (see iisan import --help)\n",
                    argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "iisan import: unexpected argument '%s' (see iisan import --help)\n",
                argv[optind]);
        return 2;
    }
    if (!dir) {
        fprintf(stderr, "iisan import: --data DIR is required (see iisan import --help)\n");
        return 2;
    }
    if (!items && !users && !states) {
        fprintf(stderr, "iisan import: nothing to import: give --items, --users and/or "
                        "--states\n");
        return 2;
    }
    const char *files[3] = {items, users, states};
    for (int i = 0; i < 3; i++)
        if (files[i] && access(files[i], R_OK)) {
            char e[1024];
            snprintf(e, sizeof e, "%s: %s", files[i], strerror(errno));
            return fail(e);
        }

    char err[1024];
    iisan_store *s;
    if (cli_lock_store("import", dir, 1)) return 1;
    if (store_open(&s, dir, 1, err, sizeof err)) return fail(err);
    progress_state ps = {0};
    if (!quiet) store_set_progress(s, on_progress, &ps);
    int rc = 0;
    if (items) {
        uint32_t added = 0, updated = 0;
        ps.t0 = ps.last = now_seconds();
        ps.attempt = 1;
        if (store_import_items(s, items, &added, &updated, err, sizeof err)) {
            rc = fail(err);
            goto out;
        }
        if (!quiet)
            fprintf(stderr,
                    "imported %llu items (%u new, %u titles changed) from %s in %.2f s; the "
                    "catalogue holds %u\n",
                    (unsigned long long)ps.final, added, updated, items, now_seconds() - ps.t0,
                    store_item_count(s));
    }
    if (users) {
        uint32_t n_users = 0, before = store_item_count(s);
        uint64_t n_inter = 0;
        int auto_add = !add_unknown && store_items_with_title(s) == 0;
        ps.t0 = ps.last = now_seconds();
        ps.attempt = 1;
        if (store_import_users(s, users, add_unknown || auto_add, &n_users, &n_inter, err,
                               sizeof err)) {
            rc = fail(err);
            if (strstr(err, "unknown item id"))
                fprintf(stderr, "iisan import: import the catalogue first (--items), or pass "
                                "--add-unknown-items to add such items without titles\n");
            goto out;
        }
        if (!quiet) {
            uint32_t after = store_item_count(s);
            fprintf(stderr, "imported %u users with %llu interactions from %s in %.2f s", n_users,
                    (unsigned long long)n_inter, users, now_seconds() - ps.t0);
            if (after > before)
                fprintf(stderr, "; %u items added to the catalogue without titles%s",
                        after - before, auto_add ? " (the store has no titles)" : "");
            fputc('\n', stderr);
        }
    }
    if (states) {
        uint32_t n = 0;
        ps.t0 = ps.last = now_seconds();
        ps.attempt = 1;
        if (store_import_states(s, states, &n, err, sizeof err)) {
            rc = fail(err);
            goto out;
        }
        if (!quiet) {
            fprintf(stderr, "imported hidden states of %u items from %s in %.2f s", n, states,
                    now_seconds() - ps.t0);
            const char *names[2] = {"text", "image"};
            for (int m = 0; m < 2; m++) {
                store_states_info si;
                if (store_states_info_get(s, m, &si) == 0)
                    fprintf(stderr, "; %s: %s, %d x %d, %u items", names[m], si.backbone,
                            si.nstates, si.width, si.count);
            }
            fputc('\n', stderr);
        }
    }
out:
    store_close(s);
    return rc;
}

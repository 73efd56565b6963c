/* iisan serve: the command line of the HTTP daemon. The settings come from the defaults,
 * then the file, then the environment, then the flags (server/serve_config.c); this file
 * parses the arguments, builds the configuration and starts the daemon (serve_daemon.c),
 * and rebuilds the configuration from the same sources on SIGHUP. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/cli.h"
#include "server/serve.h"

/* ---------------- arguments ---------------- */

static void help(FILE *f) {
    fprintf(f, "usage: iisan serve --data DIR [--config FILE] [--port 8080] [--bind 127.0.0.1] "
               "[--SETTING VALUE ...]\n\n"
               "Serves recommendations from the store's latest checkpoint over HTTP\n"
               "(proto/openapi.yaml, docs/api.md). Settings come from the defaults, then the\n"
               "file, then the environment, then the flags (docs/operations.md):\n\n");
    for (int i = 0; i < serve_noptions; i++) {
        const serve_option *o = &serve_options[i];
        char flag[64];
        snprintf(flag, sizeof flag, "--%s", o->name);
        for (char *p = flag + 2; *p; p++)
            if (*p == '_') *p = '-';
        fprintf(f, "  %-24s %s (default '%s', env %s%s)\n", flag, o->help, o->def, o->env,
                o->reloadable ? ", reloaded on SIGHUP" : "");
    }
    fprintf(f, "\n  --config FILE            'name = value' lines, '#' comments\n"
               "Signals: SIGTERM / SIGINT stop gracefully; SIGHUP reloads the configuration\n"
               "file and loads the latest checkpoint when it is new (or the version a rollback\n"
               "pinned).\n");
}

typedef struct {
    const char *config;
    int n;
    const char **names, **values;
} args;

/* --name value or --name=value pairs; 0, 1 (help shown) or 2 (usage error) */
static int parse_args(int argc, char **argv, args *a) {
    a->config = NULL;
    a->n = 0;
    a->names = calloc((size_t)argc, sizeof *a->names);
    a->values = calloc((size_t)argc, sizeof *a->values);
    if (!a->names || !a->values) return 2;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        if (!strcmp(s, "--help") || !strcmp(s, "-h")) {
            help(stdout);
            return 1;
        }
        if (strncmp(s, "--", 2) || !s[2]) {
            fprintf(stderr, "iisan serve: unexpected argument '%s'\n", s);
            return 2;
        }
        char name[64];
        const char *eq = strchr(s, '='), *val;
        size_t nl = eq ? (size_t)(eq - s - 2) : strlen(s + 2);
        if (nl >= sizeof name) {
            fprintf(stderr, "iisan serve: unknown option '%s'\n", s);
            return 2;
        }
        memcpy(name, s + 2, nl);
        name[nl] = '\0';
        if (eq)
            val = eq + 1;
        else if (i + 1 < argc)
            val = argv[++i];
        else {
            fprintf(stderr, "iisan serve: --%s needs a value\n", name);
            return 2;
        }
        if (!strcmp(name, "config")) {
            a->config = val;
            continue;
        }
        const serve_option *o = serve_option_find(name);
        if (!o) {
            fprintf(stderr, "iisan serve: unknown option '--%s' (iisan serve --help lists them)\n",
                    name);
            return 2;
        }
        a->names[a->n] = o->name;
        a->values[a->n++] = val;
    }
    if (!a->config) a->config = getenv("IISAN_CONFIG");
    return 0;
}

/* ---------------- SIGHUP ---------------- */

/* the configuration again from the same sources, then the model (serve_config_reload); a
 * configuration that no longer builds keeps the previous one, the model is still looked at */
static void on_hup(void *arg) {
    const args *a = arg;
    serve_config nc;
    char err[600], b[700];
    if (serve_config_build(&nc, a->config, a->n, a->names, a->values, err, sizeof err)) {
        log_event("error", "config_reload_failed", "error=%s kept=previous",
                  log_q(err, b, sizeof b));
        loader_request(0);
        return;
    }
    serve_config_reload(&nc, a->config);
}

/* ---------------- main ---------------- */

int cmd_serve(int argc, char **argv) {
    args a;
    int rc = parse_args(argc, argv, &a);
    if (rc) {
        rc = rc == 1 ? 0 : 2;
        goto out;
    }
    serve_config cfg;
    char err[600], b[700];
    if (serve_config_build(&cfg, a.config, a.n, a.names, a.values, err, sizeof err)) {
        fprintf(stderr, "iisan serve: %s\n", err);
        rc = 2;
        goto out;
    }
    if (!cfg.data[0]) {
        fprintf(stderr, "iisan serve: --data DIR is required (or data = DIR in the file, or "
                        "IISAN_DATA)\n");
        rc = 2;
        goto out;
    }
    if (cfg.warning[0])
        log_event("warn", "config_insecure", "message=%s", log_q(cfg.warning, b, sizeof b));
    rc = serve_daemon_run(&cfg, on_hup, &a);
out:
    free(a.names);
    free(a.values);
    return rc;
}

/* iisan train: the spec's training protocol on a data directory, the best
 * epoch saved as a checkpoint version. */
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/checkpoint.h"
#include "core/dataset.h"
#include "core/eval.h"
#include "core/resident.h"
#include "core/session.h"
#include "core/states.h"
#include "core/train.h"
#include "server/cli.h"
#include "server/common.h"

static void help(FILE *f) {
    fprintf(f, "usage: iisan train --data DIR [options]\n\n"
               "Trains on the users in DIR by the spec's protocol (leave-one-out, in-batch\n"
               "debiased loss, Adam, early stopping on validation HR@10) and stores the best\n"
               "epoch as a new checkpoint version.\n\n"
               "  --data DIR         data directory (required)\n"
               "  --model M          iisan (default), sasrec-id, popularity\n"
               "  --epochs N         at most N epochs (100)\n"
               "  --patience N       stop when more than N epochs in a row brought no better\n"
               "                     validation HR@10 (10; spec v2)\n"
               "  --batch N          users per batch (64)\n"
               "  --lr X             learning rate of the heads, fusion and sequence encoder\n"
               "                     (2e-4), and of the text and inter gates\n"
               "  --lr-san X         learning rate of the SAN blocks (1e-4), the image gates and\n"
               "                     F_v; F_t takes half of it\n"
               "  --lr-groups G      v2 (default): the spec's per-group table above; v1: SAN\n"
               "                     blocks and every gate at --lr-san, the rest at --lr\n"
               "  --eval-exclude R   validation ranking: history (default, spec v2: a repeated\n"
               "                     target counts as a miss) or history-but-target (spec v1)\n"
               "  --rules V          every rule of spec version V: v2 (default) or v1 (learning\n"
               "                     rates, P_v init, remove-first u_0, early stopping after N\n"
               "                     flat epochs, evaluation), to reproduce earlier figures\n"
               "  --seed N           initialisation, order and dropout seed (42)\n"
               "  --max-len N        n, the sequence length (10)\n"
               "  --min-len N        users with fewer items are dropped (5)\n"
               "  --dropout X        sequence-encoder dropout (0.1)\n"
               "  --d N              embedding size (64)\n"
               "  --r N              SAN bottleneck (64)\n"
               "  --schedule S       every2 (default), all, top, remove-first, or a list 0,4,8\n"
               "  --arch A           iisan (symmetric, default) or versa (IISAN-Versa: text and\n"
               "                     image states of different widths or depths)\n"
               "  --schedule-text S  versa: the text tower's schedule (default: --schedule)\n"
               "  --schedule-image S versa: the image tower's schedule (default: --schedule)\n"
               "  --act A            SAN activation: relu (default) or gelu\n"
               "  --towers LIST      item towers, from image,text,inter (all three)\n"
               "  --max-steps N      stop after N optimiser steps (0 = no limit)\n"
               "  --threads N        BLAS threads (0, the default, takes every core: two jobs\n"
               "                     side by side each slow down several times; give each a\n"
               "                     share)\n"
               "  --device D         cpu, cuda or auto (default: cuda when this build has it\n"
               "                     and a GPU is usable, else cpu)\n"
               "  --precision P      fp32 (default) or bf16: the SAN and head GEMMs with bf16\n"
               "                     inputs, fp32 sums and weights (CPUs with AVX512-BF16)\n"
               "  --no-save          do not store a checkpoint\n"
               "  --json             print one JSON object with the figures as the last line\n");
}

/* SIGINT / SIGTERM: stop after the current batch and keep the best epoch so far; a second
 * signal ends the process at once (SA_RESETHAND) */
static volatile int g_stop;
static void on_stop_signal(int sig) {
    (void)sig;
    g_stop = 1;
    static const char msg[] =
        "\niisan train: stopping after this batch, keeping the best epoch so far (again to "
        "quit at once)\n";
    ssize_t w = write(2, msg, sizeof msg - 1);
    (void)w;
}

static void catch_stop_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sa.sa_flags = SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

static void on_epoch(void *arg, const epoch_report *r) {
    (void)arg;
    fprintf(stderr,
            "epoch %3d  loss %.4f  %.2f s  valid HR@10 %.4f  NDCG@10 %.4f  (eval %.2f s)%s\n",
            r->epoch, r->loss, r->seconds, r->valid.hr10, r->valid.ndcg10, r->eval_seconds,
            r->best ? "  best" : "");
}

static int rules_version(const char *s) {
    if (!strcmp(s, "v1") || !strcmp(s, "1")) return IISAN_RULES_V1;
    if (!strcmp(s, "v2") || !strcmp(s, "2")) return IISAN_RULES_V2;
    return -1;
}

/* --rules (ch 'R'), --lr-groups ('g'), --eval-exclude ('E') into opt[0], [1], [2]; applied
 * after the whole line is read, --rules first. 0, or -1 with a message. */
static int parse_rule_opt(int ch, const char *arg, int opt[3]) {
    int v = ch == 'E' ? eval_rule_parse(arg) : rules_version(arg);
    if (v < 0) {
        fprintf(stderr, "iisan train: %s wants %s, got '%s'\n",
                ch == 'R'   ? "--rules"
                : ch == 'g' ? "--lr-groups"
                            : "--eval-exclude",
                ch == 'E' ? "history or history-but-target" : "v1 or v2", arg);
        return -1;
    }
    opt[ch == 'R' ? 0 : ch == 'g' ? 1 : 2] = v;
    return 0;
}

static int parse_towers(const char *s, int *mask) {
    *mask = 0;
    char buf[64];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *t = strtok(buf, ","); t; t = strtok(NULL, ",")) {
        if (!strcmp(t, "image"))
            *mask |= 1 << TOWER_IMAGE;
        else if (!strcmp(t, "text"))
            *mask |= 1 << TOWER_TEXT;
        else if (!strcmp(t, "inter"))
            *mask |= 1 << TOWER_INTER;
        else
            return -1;
    }
    return *mask ? 0 : -1;
}

/* the item side's shapes from the store's states and the schedules: symmetric IISAN needs
 * both modalities alike, Versa takes each as it is (a modality the store lacks gets the
 * other's shape: zeros). 0, or the exit code after a message. */
static int item_shapes(iisan_store *s, const char *dir, iisan_config *c, const char *schedule,
                       const char *const *sched_mod) {
    store_states_info si[N_MODS];
    int has[N_MODS];
    for (int mod = 0; mod < N_MODS; mod++)
        has[mod] =
            store_states_info_get(s, mod == MOD_TEXT ? IISAN_TEXT : IISAN_IMAGE, &si[mod]) == 0;
    if (!has[MOD_TEXT] && !has[MOD_IMAGE]) {
        fprintf(stderr,
                "iisan train: %s holds no hidden states; import them with `iisan import "
                "--states FILE` (docs/formats.md) or train --model sasrec-id\n",
                dir);
        return 1;
    }
    for (int mod = 0; mod < N_MODS; mod++)
        if (!has[mod]) si[mod] = si[!mod];
    const store_states_info *ti = &si[MOD_TEXT], *vi = &si[MOD_IMAGE];
    char err[512];
    if (c->arch == ARCH_IISAN) {
        if (sched_mod[MOD_TEXT] || sched_mod[MOD_IMAGE]) {
            fprintf(stderr, "iisan train: --schedule-text and --schedule-image need --arch versa "
                            "(symmetric IISAN has one --schedule)\n");
            return 2;
        }
        if (ti->nstates != vi->nstates || ti->width != vi->width) {
            fprintf(stderr,
                    "iisan train: text states are %d x %d but image states %d x %d; symmetric "
                    "IISAN needs both the same: train IISAN-Versa (--arch versa)\n",
                    ti->nstates, ti->width, vi->nstates, vi->width);
            return 1;
        }
        c->nstates = ti->nstates;
        c->D = ti->width;
        if (config_set_schedule(c, schedule, err, sizeof err)) {
            fprintf(stderr, "iisan train: %s\n", err);
            return 2;
        }
        fprintf(stderr, "hidden states: text %s, image %s; %d states x %d\n",
                has[MOD_TEXT] ? ti->backbone : "(none: zeros)",
                has[MOD_IMAGE] ? vi->backbone : "(none: zeros)", c->nstates, c->D);
        return 0;
    }
    static const char *const what[N_MODS] = {"text", "image"};
    c->nstates = c->D = c->K = 0; /* Versa's shapes are per modality */
    for (int mod = 0; mod < N_MODS; mod++) {
        c->mods[mod].nstates = si[mod].nstates;
        c->mods[mod].D = si[mod].width;
        const char *sp = sched_mod[mod] ? sched_mod[mod] : schedule;
        if (config_set_schedule_mod(c, mod, sp, err, sizeof err)) {
            fprintf(stderr, "iisan train: %s schedule: %s\n", what[mod], err);
            return 2;
        }
    }
    fprintf(stderr,
            "IISAN-Versa: text %s %d states x %d (%d blocks), image %s %d states x %d (%d "
            "blocks); inter tower %d wide, %d blocks\n",
            has[MOD_TEXT] ? ti->backbone : "(none: zeros)", ti->nstates, ti->width,
            c->mods[MOD_TEXT].K, has[MOD_IMAGE] ? vi->backbone : "(none: zeros)", vi->nstates,
            vi->width, c->mods[MOD_IMAGE].K, config_tower_width(c, TOWER_INTER),
            config_tower_depth(c, TOWER_INTER));
    return 0;
}

/* after training: the interrupted run's message, the version stored (unless --no-save) with
 * its meta (figures and rules), the summary line and --json's object. 0, or -1 (message
 * printed) when nothing could be kept or storing failed. */
static int store_and_report(const char *model, iisan_store *s, iisan_model *m,
                            const iisan_dataset *ds, const iisan_config *c,
                            const iisan_train_config *tc, const train_summary *sum, int save,
                            int json) {
    if (sum->interrupted && !sum->best_epoch) {
        fprintf(stderr, "iisan train: interrupted during epoch 1, before any epoch was validated: "
                        "nothing to keep\n");
        return -1;
    }
    if (sum->interrupted)
        fprintf(stderr,
                "iisan train: interrupted after %d whole epochs; keeping the best, epoch %d "
                "(valid HR@10 %.4f)%s\n",
                sum->epochs_run, sum->best_epoch, sum->best_valid.hr10,
                save ? "" : " (--no-save: not stored)");
    uint32_t version = 0;
    if (save) {
        size_t len;
        void *blob = ckpt_encode_model(m, ds->item_cat, ds->n_items, tc->min_len, &len);
        char meta[768], rules[256];
        train_rules_json(tc, c, rules, sizeof rules);
        snprintf(meta, sizeof meta,
                 "{\"model\":\"%s\",\"best_epoch\":%d,\"epochs_run\":%d,\"valid_hr10\":%.6f,"
                 "\"valid_ndcg10\":%.6f,\"seconds_per_epoch\":%.3f,\"created\":%lld,%s%s%s}",
                 model, sum->best_epoch, sum->epochs_run, sum->best_valid.hr10,
                 sum->best_valid.ndcg10, sum->mean_epoch_seconds, (long long)time(NULL), rules,
                 sum->interrupted ? ",\"interrupted\":true" : "",
                 tc->precision == IISAN_PREC_BF16 ? ",\"precision\":\"bf16\"" : "");
        int prc = blob ? store_ckpt_put(s, blob, len, meta, &version) : IISAN_ENOMEM;
        free(blob);
        if (prc) {
            fprintf(stderr, "iisan train: saving the checkpoint failed: %s\n", iisan_strerror(prc));
            return -1;
        }
    }
    fprintf(stderr,
            "trained %s: best epoch %d of %d, valid HR@10 %.4f NDCG@10 %.4f, %.2f s/epoch, "
            "%zu parameters%s",
            model, sum->best_epoch, sum->epochs_run, sum->best_valid.hr10, sum->best_valid.ndcg10,
            sum->mean_epoch_seconds, model_param_count(m), save ? "" : ", not saved\n");
    if (save) fprintf(stderr, ", saved as version %u\n", version);
    if (json)
        printf("{\"model\":\"%s\",\"version\":%u,\"best_epoch\":%d,\"epochs_run\":%d,"
               "\"steps\":%ld,\"valid_hr10\":%.6f,\"valid_ndcg10\":%.6f,"
               "\"seconds_per_epoch\":%.3f,\"first_loss\":%.6f,\"last_loss\":%.6f,"
               "\"params\":%zu,\"peak_rss_mib\":%.1f,\"peak_device_mib\":%.1f,\"device\":\"%s\","
               "\"interrupted\":%s,\"precision\":\"%s\"}\n",
               model, version, sum->best_epoch, sum->epochs_run, sum->steps, sum->best_valid.hr10,
               sum->best_valid.ndcg10, sum->mean_epoch_seconds, sum->first_loss, sum->last_loss,
               model_param_count(m), peak_rss_kib() / 1024.0, peak_device_mib(m->be), m->be->name,
               sum->interrupted ? "true" : "false", precision_name(tc->precision));
    return 0;
}

/* --model into c->kind: 0, or -1 (message printed) */
static int model_kind(const char *model, iisan_config *c) {
    if (!strcmp(model, "iisan"))
        c->kind = MODEL_IISAN;
    else if (!strcmp(model, "sasrec-id"))
        c->kind = MODEL_SASREC_ID;
    else if (!strcmp(model, "popularity"))
        c->kind = MODEL_POPULARITY;
    else {
        fprintf(stderr, "iisan train: --model wants iisan, sasrec-id or popularity, got '%s'\n",
                model);
        return -1;
    }
    return 0;
}

/* what the command line asks for */
typedef struct {
    const char *dir, *model, *schedule, *device;
    const char *sched_mod[N_MODS];
    iisan_config c;
    iisan_train_config tc;
    int json, save, towers, rule_opt[3];
    long threads;
} train_args;

/* --arch and --act; 0, or 2 after a message */
static int parse_choice(int ch, const char *arg, iisan_config *c) {
    const char *a = ch == 'A' ? "iisan" : "relu", *b = ch == 'A' ? "versa" : "gelu";
    int *dst = ch == 'A' ? &c->arch : &c->act;
    if (!strcmp(arg, a) || !strcmp(arg, b)) {
        int first = !strcmp(arg, a);
        *dst = ch == 'A' ? (first ? ARCH_IISAN : ARCH_VERSA)
                         : (first ? IISAN_ACT_RELU : IISAN_ACT_GELU);
        return 0;
    }
    fprintf(stderr, "iisan train: --%s wants %s or %s, got '%s'\n", ch == 'A' ? "arch" : "act", a,
            b, arg);
    return 2;
}

/* one option's value into a; 0, or the exit code after a message */
static int parse_opt(int ch, const char *arg, train_args *a) {
    iisan_config *c = &a->c;
    iisan_train_config *tc = &a->tc;
    long v = 0;
    double x = 0;
#define INT(name, lo, hi, dst)                                                                     \
    if (opt_int("train", name, arg, lo, hi, &v)) return 2;                                         \
    dst = (int)v;                                                                                  \
    break
#define FLT(name, lo, hi, dst)                                                                     \
    if (opt_float("train", name, arg, lo, hi, &x)) return 2;                                       \
    dst = (float)x;                                                                                \
    break
    switch (ch) {
    case 'D': a->dir = arg; break;
    case 'm': a->model = arg; break;
    case 'e': INT("epochs", 1, 100000, tc->epochs);
    case 'p': INT("patience", 0, 100000, tc->patience);
    case 'b': INT("batch", 1, 4096, tc->batch);
    case 'l': FLT("lr", 0, 1, tc->lr);
    case 'L': FLT("lr-san", 0, 1, tc->lr_san);
    case 's':
        if (opt_int("train", "seed", arg, 0, 0x7fffffffL, &v)) return 2;
        tc->seed = (uint64_t)v;
        break;
    case 'n': INT("max-len", 1, 200, c->n);
    case 'N': INT("min-len", 3, 1000, tc->min_len);
    case 'o': FLT("dropout", 0, 0.9, c->dropout);
    case 'd': INT("d", 2, 4096, c->d);
    case 'r': INT("r", 1, 4096, c->r);
    case 'S': a->schedule = arg; break;
    case 'X': a->sched_mod[MOD_TEXT] = arg; break;
    case 'Y': a->sched_mod[MOD_IMAGE] = arg; break;
    case 'A':
    case 'a': return parse_choice(ch, arg, c);
    case 't':
        if (parse_towers(arg, &a->towers)) {
            fprintf(stderr, "iisan train: --towers wants a list from image,text,inter, got '%s'\n",
                    arg);
            return 2;
        }
        break;
    case 'x':
        if (opt_int("train", "max-steps", arg, 0, 1L << 40, &v)) return 2;
        tc->max_steps = v;
        break;
    case 'T':
        if (opt_int("train", "threads", arg, 0, 1024, &a->threads)) return 2;
        break;
    case 'G':
        if (opt_device("train", arg)) return 2;
        a->device = arg;
        break;
    case 'g':
    case 'E':
    case 'R':
        if (parse_rule_opt(ch, arg, a->rule_opt)) return 2;
        break;
    case 'P':
        if (opt_precision("train", arg, &tc->precision)) return 2;
        break;
    case 'z': a->save = 0; break;
    case 'j': a->json = 1; break;
    default: return 2;
    }
#undef INT
#undef FLT
    return 0;
}

/* the whole command line into a; -1 to go on, else the exit code (0 after --help) */
static int parse_args(int argc, char **argv, train_args *a) {
    static const struct option opts[] = {{"data", 1, 0, 'D'},
                                         {"model", 1, 0, 'm'},
                                         {"epochs", 1, 0, 'e'},
                                         {"patience", 1, 0, 'p'},
                                         {"batch", 1, 0, 'b'},
                                         {"lr", 1, 0, 'l'},
                                         {"lr-san", 1, 0, 'L'},
                                         {"seed", 1, 0, 's'},
                                         {"max-len", 1, 0, 'n'},
                                         {"min-len", 1, 0, 'N'},
                                         {"dropout", 1, 0, 'o'},
                                         {"d", 1, 0, 'd'},
                                         {"r", 1, 0, 'r'},
                                         {"schedule", 1, 0, 'S'},
                                         {"arch", 1, 0, 'A'},
                                         {"schedule-text", 1, 0, 'X'},
                                         {"schedule-image", 1, 0, 'Y'},
                                         {"act", 1, 0, 'a'},
                                         {"towers", 1, 0, 't'},
                                         {"max-steps", 1, 0, 'x'},
                                         {"threads", 1, 0, 'T'},
                                         {"no-save", 0, 0, 'z'},
                                         {"json", 0, 0, 'j'},
                                         {"help", 0, 0, 'h'},
                                         {"device", 1, 0, 'G'},
                                         {"lr-groups", 1, 0, 'g'},
                                         {"eval-exclude", 1, 0, 'E'},
                                         {"rules", 1, 0, 'R'},
                                         {"precision", 1, 0, 'P'},
                                         {0, 0, 0, 0}};
    memset(a, 0, sizeof *a);
    a->model = "iisan";
    a->schedule = "every2";
    config_default(&a->c);
    train_config_default(&a->tc);
    a->save = 1;
    a->towers = a->c.towers;
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (ch == 'h') {
            help(stdout);
            return 0;
        }
        int rc = parse_opt(ch, optarg, a);
        if (rc) {
            if (ch == '?' || ch == ':') help(stderr);
            return rc;
        }
    }
    if (optind < argc || !a->dir) {
        fprintf(stderr, "iisan train: %s\n",
                !a->dir ? "--data DIR is required" : "unexpected argument");
        help(stderr);
        return 2;
    }
    if (model_kind(a->model, &a->c)) return 2;
    a->c.towers = a->towers;
    /* --rules first, the single rules over it, whatever their order on the line */
    if (a->rule_opt[0]) config_set_rules(&a->c, &a->tc, a->rule_opt[0]);
    if (a->rule_opt[1]) a->tc.lr_groups = a->rule_opt[1];
    if (a->rule_opt[2]) a->tc.eval_rule = a->rule_opt[2];
    return -1;
}

/* the popularity baseline's validation figures */
static void report_popularity(const train_args *a, const iisan_dataset *ds) {
    eval_result r;
    popularity_evaluate(ds, SPLIT_VALID, a->tc.eval_rule, &r);
    fprintf(stderr, "popularity: valid HR@10 %.4f NDCG@10 %.4f (%d users)\n", r.hr10, r.ndcg10,
            r.users);
    if (a->json)
        printf("{\"model\":\"popularity\",\"valid_hr10\":%.6f,\"valid_ndcg10\":%.6f,"
               "\"users\":%d}\n",
               r.hr10, r.ndcg10, r.users);
}

/* the ready model's lines: dataset, states, model */
static void report_session(const train_args *a, const iisan_session *ss, const char *model) {
    fprintf(stderr, "dataset: %d users, %d items, %llu interactions (%.2f s)\n", ss->ds.n_users,
            ss->ds.n_items, (unsigned long long)ss->ds.n_interactions, ss->dataset_seconds);
    if (!ss->m) return;
    if (ss->rs)
        fprintf(stderr, "hidden states resident %s: %.1f MiB (%.2f s)\n",
                resident_states_in_host(ss->rs) ? "in pinned host memory (too large for the device)"
                                                : "on the device",
                resident_states_bytes(ss->rs) / 1048576.0, ss->states_seconds);
    fprintf(stderr, "model: %s, %zu trainable parameters, batch %d, up to %d epochs\n", model,
            model_param_count(ss->m), a->tc.batch, a->tc.epochs);
}

/* training on the open session, then the version stored and the report; the exit code */
static int train_session(train_args *a, iisan_store *s, iisan_session *ss, const char *model) {
    char err[512];
    train_summary sum;
    g_stop = 0;
    a->tc.stop = &g_stop;
    catch_stop_signals();
    int trc = train_run(ss->m, &ss->ds, &ss->st, &a->tc, 1, on_epoch, NULL, &sum);
    if (trc == TRAIN_ENOMEM) fprintf(stderr, "iisan train: out of memory; nothing stored\n");
    if (trc == TRAIN_ESTATES && states_check(&ss->st, err, sizeof err))
        fprintf(stderr, "iisan train: %s; nothing stored\n", err);
    if (backend_check("train", ss->m->be) || trc) return 1;
    session_release_states(ss); /* storing the version may grow the map */
    if (store_and_report(model, s, ss->m, &ss->ds, &ss->c, &a->tc, &sum, a->save, a->json))
        return sum.interrupted && !sum.best_epoch ? 130 : 1;
    return sum.interrupted ? 130 : 0;
}

/* the store open: the item side's shapes, the backend, the ready model, training */
static int train_store(train_args *a, iisan_store *s) {
    const char *model = a->model;
    if (a->c.kind == MODEL_IISAN) {
        int src = item_shapes(s, a->dir, &a->c, a->schedule, a->sched_mod);
        if (src) return src;
        if (a->c.arch == ARCH_VERSA) model = "iisan-versa";
    }
    iisan_backend *be = NULL;
    if (a->c.kind != MODEL_POPULARITY) {
        if (!(be = backend_choose("train", a->device, (int)a->threads))) return 1;
        if (backend_set_precision("train", be, a->tc.precision)) {
            be->destroy(be);
            return 1;
        }
    }
    session_options so = {.mode = SESSION_NEW,
                          .config = &a->c,
                          .min_len = a->tc.min_len,
                          .cap_users = a->tc.batch,
                          .seed = a->tc.seed,
                          .need_users = 1};
    iisan_session ss;
    char err[512];
    int rc = 1, orc = session_open(&ss, s, be, &so, err, sizeof err);
    if (orc == IISAN_ENOTFOUND)
        fprintf(stderr, "iisan train: %s has %s: import users.tsv\n", a->dir, err);
    else if (orc)
        fprintf(stderr, "iisan train: %s\n", err);
    else if (!backend_check("train", be)) {
        report_session(a, &ss, model);
        if (!ss.m) {
            report_popularity(a, &ss.ds);
            rc = 0;
        } else {
            rc = train_session(a, s, &ss, model);
        }
    }
    session_close(&ss);
    if (be) be->destroy(be);
    return rc;
}

int cmd_train(int argc, char **argv) {
    train_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc >= 0) return rc;
    char err[512];
    iisan_store *s = NULL;
    if (cli_lock_store("train", a.dir, 0)) return 1;
    if (store_open(&s, a.dir, 0, err, sizeof err)) {
        fprintf(stderr, "iisan train: %s\n", err);
        return 1;
    }
    rc = train_store(&a, s);
    store_close(s);
    return rc;
}

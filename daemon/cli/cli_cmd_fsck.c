/*
 * cli_cmd_fsck.c - `keygate fsck [--config FILE]`: a read-only check of
 * every invariant docs/redis-schema.md promises, straight against Redis.
 *
 * Pass 1 walks every key of the database with SCAN (never KEYS), reads
 * every string, hash field and value, list element, set and zset member
 * and stream entry, and looks in each (and in every key name) for a plain
 * token (anything kgc_token_wellformed accepts) and for the pepper (raw,
 * lower- or upper-case hex). On the way it takes an inventory of the
 * model's keys under key_prefix.
 *
 * Pass 2 checks the model, one object at a time:
 *   team    one owner, roles known, free_key_id names an existing free key
 *           and the team has exactly one free key; the keys and wallets
 *           zsets agree with the documents; each key's users are members,
 *           its token entries name live records that point back, each
 *           payg binding names an existing wallet of the team;
 *   token   each P tok:<hash> record points to an existing key of its
 *           team_id that lists the user as assigned and whose tokens entry
 *           for that user has this hash as "hash" (no expiry) or
 *           "old_hash" (a grace-period token: expires_ms and a TTL);
 *   wallet  balance_micros = sum of credits - sum of debits of its ledger,
 *           never below zero, each entry's balance_micros the running
 *           balance, no request id charged twice within the 24 h replay
 *           window among the last 524,288 debits with a request id read
 *           (a fixed-size window: memory does not grow with the ledger);
 *   user    user and email records agree.
 *
 * The daemon writes each admin command in one MULTI/EXEC and the gateway
 * moves money in scripts, so a consistent view of an object is enough to
 * judge it on a live system: the reads of one object check run after a
 * WATCH of each key read, and an empty MULTI/EXEC then tells whether any
 * of them changed meanwhile (the check is then run again). A wallet's
 * balance and ledger length are read in one MULTI; its ledger entries are
 * then read newest first, a page at a time from the head, each page by
 * its position counted from the oldest entry in one script (LLEN and
 * LRANGE together), so later debits (LPUSHed at the head) move nothing.
 *
 * On a Redis Cluster, commits across slots that a killed keygated left
 * open (an intent older than XC_STALE_MS, a lock whose commit is over) are
 * problems too (cli_fsck_xc.c), checked before the model.
 *
 * Nothing is written, except with --repair: then those commits are
 * settled as keygated settles them (rolled forward once decided, else
 * rolled back), before the model's checks. Nothing else is ever repaired.
 * A plain token found is shown by its hint only.
 *
 * The parts (cli_fsck.h): this file runs the passes and reports;
 * cli_fsck_redis.c reads Redis, cli_fsck_scan.c is pass 1,
 * cli_fsck_secrets.c finds and hides secrets, cli_fsck_checks.c is pass 2.
 */
#include "cli.h"
#include "cli_fsck.h"
#include "arch_engine.h"
#include "kgc_sentinel.h"

#include <sodium.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kgc_keys.h"
#include "xcommit_plan.h"        /* XC_STALE_MS */

#define FSCK_DEFAULT_CONFIG "/etc/keygate/keygate.conf"
#define FSCK_SAFE_MAX       600
#define FSCK_CLUSTER_PASSES 5        /* starts on a fresh slot map after a cluster change */

/* --- output ----------------------------------------------------------------- */

static void problem_v(fsck *f, const char *kind, const char *key, size_t keylen,
                      const char *fmt, va_list ap)
{
    char name[FSCK_SAFE_MAX], msg[1024], safe[1400];
    int p = kind ? snprintf(msg, sizeof msg, "%s: ", kind) : 0;
    json_t *o;

    vsnprintf(msg + p, sizeof msg - (size_t)p, fmt, ap);
    fsck_safe_text(f, key, keylen, name, sizeof name);
    fsck_safe_text(f, msg, strlen(msg), safe, sizeof safe);
    o = json_pack("{s:s,s:s}", "key", name, "problem", safe);
    if (kind)
        json_object_set_new(o, "kind", json_string(kind));
    json_array_append_new(f->pending, o);
}

/* Notes a problem of the object being checked: kept in f->pending until
 * the object's reads are known to be consistent (fsck_flush). */
void fsck_problem(fsck *f, const char *key, size_t keylen, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    problem_v(f, NULL, key, keylen, fmt, ap);
    va_end(ap);
}

void fsck_problem_kind(fsck *f, const char *kind, const char *key, size_t keylen,
                       const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    problem_v(f, kind, key, keylen, fmt, ap);
    va_end(ap);
}

/* Publishes the pending problems (the object's view was consistent). */
void fsck_flush(fsck *f)
{
    size_t i;
    json_t *p;

    json_array_foreach(f->pending, i, p) {
        if (!f->json)
            printf("problem: %s: %s\n", json_string_value(json_object_get(p, "key")),
                   json_string_value(json_object_get(p, "problem")));
        json_array_append(f->problems, p);
    }
    json_array_clear(f->pending);
}

/* --- running the checks ---------------------------------------------------------- */

static void pass_model(fsck *f)
{
    const char *id, *team;
    json_t *v, *set;

    /* Model keys of a team that has no team document. SCAN may have
     * returned a key of a team made during the scan without its team
     * document: look again before reporting, and check such a team too. */
    json_object_foreach(f->tagged, team, v)
        if (json_object_get(f->teams, team) == NULL) {
            char tk[KGC_RKEY_MAX];
            redisReply *r = fsck_rcmd2(f, "EXISTS", fsck_rk(f, tk, KGC_RK_TEAM, team));
            if (r != NULL && r->type == REDIS_REPLY_INTEGER && r->integer == 1)
                json_object_set_new(f->teams, team, json_true());
            else if (r != NULL)
                fsck_problem(f, json_string_value(v), json_string_length(v),
                        "belongs to team %s, which has no team document", team);
            if (r)
                freeReplyObject(r);
            fsck_flush(f);
        }
    json_object_foreach(f->teams, team, v)
        fsck_run_check(f, fsck_check_team, team, NULL);
    json_object_foreach(f->toks, id, v)
        fsck_run_check(f, fsck_check_token, id, json_string_value(v));
    json_object_foreach(f->wallets, team, set)
        json_object_foreach(set, id, v)
            fsck_check_wallet(f, team, id);
    json_object_foreach(f->ledgers, team, set)
        json_object_foreach(set, id, v)
            if (json_object_get(json_object_get(f->wallets, team), id) == NULL)
                fsck_check_wallet(f, team, id);   /* reports the ledger without a wallet */
    json_object_foreach(f->users, id, v)
        fsck_run_check(f, fsck_check_user, id, NULL);
    json_object_foreach(f->emails, id, v)
        fsck_run_check(f, fsck_check_email, id, NULL);
    fsck_check_catalog(f);
}

static void fsck_free(fsck *f)
{
    fsck_checks_cleanup();
    if (f->arch)
        f->arch->close(f->arch);
    if (f->rc)
        redisFree(f->rc);
    fsck_cluster_close(f);
    if (f->sec) {
        if (f->sec->pepper)
            sodium_free(f->sec->pepper);
        sodium_free(f->sec);
    }
    json_decref(f->pending);
    json_decref(f->problems);
    json_decref(f->teams);
    json_decref(f->tagged);
    json_decref(f->keydocs);
    json_decref(f->wallets);
    json_decref(f->ledgers);
    json_decref(f->toks);
    json_decref(f->users);
    json_decref(f->emails);
    json_decref(f->xc_intents);
    json_decref(f->xc_locks);
    json_decref(f->xc_pending);
    json_decref(f->xc_repairs);
    json_decref(f->repaired);
    json_decref(f->unrepaired);
}

int cli_cmd_fsck(cli_ctx *ctx, int argc, char **argv);

/* A pass on a cluster stopped by a change of the cluster: everything
 * found so far is dropped, the slot map loaded again. */
static int restart_cluster(fsck *f, const kgc_config *cfg, int timeout_ms, char *err,
                           size_t errlen)
{
    json_t *objs[] = {f->teams, f->tagged, f->keydocs, f->wallets, f->ledgers,
                      f->toks, f->users, f->emails, f->xc_intents, f->xc_locks};

    json_array_clear(f->pending);
    json_array_clear(f->xc_pending);
    json_array_clear(f->xc_repairs);
    json_array_clear(f->problems);
    for (size_t i = 0; i < sizeof objs / sizeof objs[0]; i++)
        json_object_clear(objs[i]);
    f->catalog_seen = 0;
    memset(&f->n, 0, sizeof f->n);
    f->broken = 0;
    f->broken_why[0] = '\0';
    fsck_cluster_close(f);
    return fsck_cluster_open(f, cfg, timeout_ms, err, errlen);
}

static int fsck_run(cli_ctx *ctx, kgc_config *cfg, int repair);

int cli_cmd_fsck(cli_ctx *ctx, int argc, char **argv)
{
    cli_strlist pos;
    kgc_config cfg;
    const char *path;
    char err[600];
    int rc, repair = 0;
    const cli_opt opts[] = {
        {"--repair", CLI_OPT_FLAG, &repair},
        {NULL, 0, NULL},
    };

    if (cli_args(ctx, argc, argv, opts, &pos, 0, 0) < 0)
        return ctx->status;
    path = ctx->config_path ? ctx->config_path : FSCK_DEFAULT_CONFIG;
    if (kgc_config_load(path, &cfg, err, sizeof err) != 0) {
        fprintf(stderr, "error: usage: %s\n", err);
        return CLI_EXIT_USAGE;
    }
    rc = fsck_run(ctx, &cfg, repair);
    kgc_config_wipe(&cfg);              /* the Redis password */
    return rc;
}

/* The check itself, on a loaded config (*cfg, whose Redis address it
 * may point at the primary the sentinels name). Returns the exit code. */
static int fsck_run(cli_ctx *ctx, kgc_config *cfg, int repair)
{
    char err[600];
    fsck f;
    long nprob;
    int rc, fixed;

    memset(&f, 0, sizeof f);
    f.json = ctx->json;
    f.repair = repair;
    f.prefix = cfg->key_prefix;
    f.plen = strlen(cfg->key_prefix);
    f.sec = sodium_malloc(sizeof *f.sec);
    if (f.sec == NULL) {
        fputs("error: internal: out of memory\n", stderr);
        return CLI_EXIT_REFUSED;
    }
    memset(f.sec, 0, sizeof *f.sec);
    if (kgc_pepper_load(cfg->pepper_file, &f.sec->pepper, err, sizeof err) != 0) {
        fprintf(stderr, "error: usage: %s\n", err);
        fsck_free(&f);
        return CLI_EXIT_USAGE;
    }
    sodium_bin2hex(f.sec->hex, sizeof f.sec->hex, f.sec->pepper, KGC_PEPPER_LEN);
    for (size_t i = 0; i < sizeof f.sec->HEX; i++)
        f.sec->HEX[i] = (char)(f.sec->hex[i] >= 'a' && f.sec->hex[i] <= 'f' ? f.sec->hex[i] - 32
                                                                             : f.sec->hex[i]);
    f.pending = json_array();
    f.problems = json_array();
    f.teams = json_object();
    f.tagged = json_object();
    f.keydocs = json_object();
    f.wallets = json_object();
    f.ledgers = json_object();
    f.toks = json_object();
    f.users = json_object();
    f.emails = json_object();
    f.xc_intents = json_object();
    f.xc_locks = json_object();
    f.xc_pending = json_array();
    f.xc_repairs = json_array();
    f.repaired = json_array();
    f.unrepaired = json_array();

    if (cfg->nsentinels > 0) {
        /* Check the primary (the replicas may lag): the sentinels say where. */
        kgc_hostport hp;
        int first = 0;
        if (kgc_sentinel_resolve(cfg, ctx->timeout_ms, &first, &hp, err, sizeof err) != 0) {
            fprintf(stderr, "error: unreachable: %s\n", err);
            fsck_free(&f);
            return CLI_EXIT_UNREACHABLE;
        }
        snprintf(cfg->redis_host, sizeof cfg->redis_host, "%s", hp.host);
        cfg->redis_port = hp.port;
        cfg->redis_unix[0] = '\0';
    }
    if (cfg->ncluster > 0) {
        if (fsck_cluster_open(&f, cfg, ctx->timeout_ms, err, sizeof err) != 0) {
            fprintf(stderr, "error: unreachable: redis cluster: %s\n", err);
            fsck_free(&f);
            return CLI_EXIT_UNREACHABLE;
        }
    } else if ((f.rc = fsck_connect(cfg, ctx->timeout_ms, err, sizeof err)) == NULL) {
        fprintf(stderr, "error: unreachable: redis %s%s: %s\n", cfg->redis_unix[0] ? "unix:" : "",
                cfg->redis_unix[0] ? cfg->redis_unix : cfg->redis_host, err);
        fsck_free(&f);
        return CLI_EXIT_UNREACHABLE;
    }
    if (cfg->archive_engine != KGC_ARCHIVE_NONE &&
        (f.arch = arch_open(cfg->archive_engine, cfg->archive_target, err, sizeof err)) == NULL) {
        fprintf(stderr, "error: unreachable: archive: %s\n", err);
        fsck_free(&f);
        return CLI_EXIT_UNREACHABLE;
    }
    for (int attempt = 1;; attempt++) {
        fsck_pass_scan(&f);
        if (!f.broken)
            fsck_pass_xc(&f);
        if (!f.broken && f.repair)
            fsck_repair_xc(&f);
        if (!f.broken)
            pass_model(&f);
        if (!f.broken || f.cl == NULL || !f.cl->changed || attempt == FSCK_CLUSTER_PASSES)
            break;
        /* A reshard or a failover under way: again, on the map after it. */
        fprintf(f.json ? stderr : stdout, "fsck: %s; starting again on a fresh slot map\n",
                f.broken_why);
        sleep(1);
        if (restart_cluster(&f, cfg, ctx->timeout_ms, err, sizeof err) != 0) {
            fprintf(stderr, "error: unreachable: redis cluster: %s\n", err);
            fsck_free(&f);
            return CLI_EXIT_UNREACHABLE;
        }
    }
    if (f.broken) {
        fprintf(stderr, "error: unreachable: redis: %s (the check is incomplete)\n", f.broken_why);
        fsck_free(&f);
        return CLI_EXIT_UNREACHABLE;
    }
    nprob = (long)json_array_size(f.problems);
    /* --repair: every problem found was settled (only commits across
     * slots are ever repaired; see cli_fsck_xc.c) */
    fixed = f.repair && nprob > 0 && f.n.repaired == nprob;
    if (f.json) {
        json_t *out = json_pack("{s:b,s:O,s:{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}}",
                                "clean", nprob == 0, "problems", f.problems, "counts",
                                "redis_keys", (json_int_t)f.n.keys, "values", (json_int_t)f.n.values,
                                "teams", (json_int_t)f.n.teams, "keys", (json_int_t)f.n.apikeys,
                                "token_records", (json_int_t)f.n.tokens, "wallets",
                                (json_int_t)f.n.wallets, "ledger_entries", (json_int_t)f.n.entries,
                                "users", (json_int_t)f.n.users, "rechecks", (json_int_t)f.n.retries,
                                "archived_entries", (json_int_t)f.n.archived,
                                "xcommits_in_progress", (json_int_t)f.n.xc_young);
        if (f.repair) {
            json_object_set(out, "repaired", f.repaired);
            json_object_set(out, "unrepaired", f.unrepaired);
        }
        char *text = json_dumps(out, JSON_COMPACT);
        puts(text ? text : "{}");
        free(text);
        json_decref(out);
    } else {
        printf("fsck: %ld Redis keys, %ld values scanned; %ld teams, %ld keys, %ld token records, "
               "%ld wallets (%ld ledger entries in Redis, %lld archived), %ld users checked\n",
               f.n.keys, f.n.values, f.n.teams, f.n.apikeys, f.n.tokens, f.n.wallets, f.n.entries,
               f.n.archived, f.n.users);
        if (f.n.xc_young > 0)
            printf("fsck: %ld commit%s across slots in progress (younger than %d ms: not judged)\n",
                   f.n.xc_young, f.n.xc_young == 1 ? "" : "s", XC_STALE_MS);
        if (nprob == 0)
            printf("fsck: clean\n");
        else if (f.repair)
            printf("fsck: %ld problem%s found, %ld repaired\n", nprob, nprob == 1 ? "" : "s",
                   f.n.repaired);
        else
            printf("fsck: %ld problem%s found\n", nprob, nprob == 1 ? "" : "s");
    }
    rc = nprob == 0 || fixed ? CLI_EXIT_OK : CLI_EXIT_REFUSED;
    fsck_free(&f);
    return rc;
}

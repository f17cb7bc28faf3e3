/*
 * cli_fsck.h - private interface between the files of `keygate fsck`
 * (what it checks, and how it stays read-only on a live system, is told
 * at the top of cli_cmd_fsck.c):
 *
 *   cli_cmd_fsck.c      the command: options, setup, running the checks,
 *                       problems and the report
 *   cli_fsck_redis.c    the blocking hiredis calls, watched reads and the
 *                       re-run of a check until its view was consistent
 *   cli_fsck_scan.c     pass 1: every key with SCAN, every value read,
 *                       the inventory of the model's keys
 *   cli_fsck_secrets.c  plain tokens and the pepper: found in values,
 *                       kept out of report lines
 *   cli_fsck_checks.c   pass 2: the invariants of teams and their keys,
 *                       token records, wallets and ledgers, users, catalog
 *   cli_fsck_xc.c       commits across slots left open (Redis Cluster):
 *                       found in passes 1 and 2, settled by --repair
 *
 * Every function takes the run's state (fsck *). Once the connection broke
 * (f->broken), the Redis calls return NULL or -1 at once and a check
 * gives up; the command then exits 3.
 */
#ifndef KG_CLI_FSCK_H
#define KG_CLI_FSCK_H

#include <hiredis/hiredis.h>
#include <jansson.h>
#include <stddef.h>
#include <string.h>

#include "kgc_cluster.h"
#include "kgc_config.h"
#include "kgc_token.h"

#define FSCK_CHUNK          1000     /* list elements per LRANGE */

typedef struct fsck_secrets {
    unsigned char *pepper;           /* KGC_PEPPER_LEN bytes, from kgc_pepper_load */
    char hex[KGC_PEPPER_LEN * 2 + 1];
    char HEX[KGC_PEPPER_LEN * 2 + 1];
} fsck_secrets;

/* Redis Cluster (config `redis cluster`): one connection per master and
 * each command sent to the master of its key's slot (cli_fsck_redis.c). */
typedef struct fsck_cluster {
    struct kgc_cluster_map *map;     /* loaded once: a moved slot stops the check */
    redisContext *node[KGC_CLUSTER_NODES_MAX]; /* opened on first use */
    unsigned char watched[KGC_CLUSTER_NODES_MAX]; /* a WATCH is open on that node */
    int masters[KGC_CLUSTER_NODES_MAX]; /* the nodes serving slots, from the map */
    int nmasters;
    int scan_node;                   /* where a SCAN goes */
    int tx_node;                     /* the open MULTI's node; -1 none */
    int tx_pending;                  /* MULTI asked, sent with the next keyed command */
    int *fifo;                       /* the node of each reply still to read */
    size_t fifo_cap, fifo_head, fifo_len;
    int timeout_ms;
    const kgc_config *cfg;           /* borrowed: the credentials each node is sent */
    int changed;                     /* stopped by a redirect or a lost node:
                                        worth a new start on a fresh map */
} fsck_cluster;

typedef struct fsck {
    redisContext *rc;                /* one node (NULL on a cluster: cl) */
    fsck_cluster *cl;
    const char *prefix;              /* key_prefix, borrowed from cfg */
    size_t plen;
    fsck_secrets *sec;               /* sodium_malloc'ed */
    int broken;                      /* Redis went away: exit 3 */
    char broken_why[256];
    int json;                        /* --json output */
    json_t *pending;                 /* problems of the object being checked */
    json_t *problems;                /* every confirmed problem: [{"key","problem"}] */
    /* inventory of pass 1 (sets as JSON objects) */
    json_t *teams;                   /* team_id -> true: P {t:T}:team exists */
    json_t *tagged;                  /* team_id -> first model key of that team */
    json_t *keydocs;                 /* team_id -> {key_id: true} */
    json_t *wallets;                 /* team_id -> {wallet_id: true} */
    json_t *ledgers;                 /* team_id -> {wallet_id: true} */
    json_t *toks;                    /* hash -> the team of its {t:T} tag ("": none) */
    json_t *users;                   /* user_id -> true */
    json_t *emails;                  /* email -> true */
    int catalog_seen;
    /* commits across slots (cli_fsck_xc.c) */
    int repair;                      /* --repair: settle what pass 2 found */
    json_t *xc_intents;              /* txid -> true: intents not done, from pass 1 */
    json_t *xc_locks;                /* redis key -> txid: values that are locks */
    json_t *xc_pending;              /* repairs the object being checked asks for */
    int xc_young_pending;            /* it is a commit in progress */
    json_t *xc_repairs;              /* [{"kind","key","txid"}] asked, not yet run */
    json_t *repaired;                /* [{"key","kind","action"}] done (whole run) */
    json_t *unrepaired;              /* the same, for repairs that failed */
    struct arch_engine *arch;        /* the archive (config `archive`), or NULL */
    struct {
        long keys, values, teams, apikeys, tokens, wallets, entries, users, retries;
        long xc_young;               /* commits across slots in progress (not stale) */
        long repaired;               /* problems of this pass settled by --repair */
        long long archived;          /* archive rows below the wallets' checkpoints */
    } n;
} fsck;

/* --- problems and output (cli_cmd_fsck.c) ---------------------------------- */

/* Notes a problem of key[0..keylen) in f->pending (copied, made safe to
 * print by safe_text); fsck_flush publishes it. */
void fsck_problem(fsck *f, const char *key, size_t keylen, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define PROBLEM(f, key, ...) fsck_problem((f), (key), strlen(key), __VA_ARGS__)

/* The same, with a kind name (JSON "kind", and the message starts with
 * it): for problems scripts act on, such as "xcommit_open". */
void fsck_problem_kind(fsck *f, const char *kind, const char *key, size_t keylen,
                       const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Prints (unless --json) and keeps in f->problems every pending problem,
 * then empties f->pending. */
void fsck_flush(fsck *f);

/* --- Redis (cli_fsck_redis.c) ---------------------------------------------- */

/* Connects to the Redis of cfg, every call bounded by timeout_ms, and
 * sends cfg's AUTH (kgc_auth.h). Returns a context the caller frees with
 * redisFree, or NULL with the reason in err. */
redisContext *fsck_connect(const kgc_config *cfg, int timeout_ms, char *err, size_t errlen);

/* One command. Returns the reply (caller frees with freeReplyObject), or
 * NULL with f->broken set. rcmd2 is `verb key`. */
redisReply *fsck_rcmd(fsck *f, int argc, const char **argv, const size_t *lens);
redisReply *fsck_rcmd2(fsck *f, const char *verb, const char *key);
/* One command to the node of route's slot (on one node: that node), for
 * keyless commands (TIME, PUBLISH) and scripts (EVAL: argv[1] is no key).
 * Not inside a MULTI. Same reply and failure as fsck_rcmd. */
redisReply *fsck_rcmd_at(fsck *f, const char *route, int argc, const char **argv,
                         const size_t *lens);

/* Pipelining: rpush queues a command, rget reads the next reply (caller
 * frees; NULL with f->broken set). */
void fsck_rpush(fsck *f, int argc, const char **argv, const size_t *lens);
redisReply *fsck_rget(fsck *f);

/* Watched reads: WATCH each key, then `verb key [extra]`. wread returns n
 * replies in an array the caller frees with fsck_free_replies (which accepts
 * NULL); wread1 returns the one reply (caller frees with freeReplyObject).
 * NULL when the connection broke. keys are only read. */
redisReply **fsck_wread(fsck *f, size_t n, char **keys, const char *verb, const char *extra);
redisReply *fsck_wread1(fsck *f, const char *key, const char *verb, const char *extra);
void fsck_free_replies(redisReply **r, size_t n);

/* Cluster mode: loads the slot map from the config's seed nodes. 0, or
 * -1 with err (the cluster is unreachable or does not serve every slot). */
int fsck_cluster_open(fsck *f, const kgc_config *cfg, int timeout_ms, char *err, size_t errlen);
void fsck_cluster_close(fsck *f);
/* The masters a scan visits, one after another: their count, and
 * fsck_scan_target(f, i) points SCAN at the i-th. */
int fsck_scan_targets(fsck *f);
void fsck_scan_target(fsck *f, int i);

/* After an object's watched reads: 1 consistent, 0 changed, -1 broken. */
int fsck_watch_commit(fsck *f);

/* One object's check: returns what watch_commit returned (or 1 when it
 * judged without Redis, -1 when the connection broke). */
typedef int (*fsck_check)(fsck *f, const char *a, const char *b);

/* Runs check(f, a, b) until its view is consistent, then publishes its
 * problems (fsck_flush). */
void fsck_run_check(fsck *f, fsck_check check, const char *a, const char *b);

/* The Redis key name prefix + printf(fmt, ...) into buf[KGC_RKEY_MAX];
 * returns buf. */
const char *fsck_rk(const fsck *f, char *buf, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Reading replies. reply_json: the string reply as JSON (new reference,
 * caller json_decref's it), or NULL. is_str: 1 for a string reply.
 * hfield: the value of field name in an HGETALL reply (borrowed from r),
 * or NULL. All accept a NULL reply. */
json_t *fsck_reply_json(const redisReply *r);
int fsck_is_str(const redisReply *r);
const char *fsck_hfield(const redisReply *r, const char *name);

/* --- secrets (cli_fsck_secrets.c) ------------------------------------------ */

/* A printable copy of s[0..len) in out[cap] (returns out): no token and no
 * pepper in it. f->sec may be NULL (then only tokens are hidden). */
const char *fsck_safe_text(const fsck *f, const char *s, size_t len, char *out, size_t cap);

/* Notes a problem of key for every plain token and every copy of the
 * pepper (raw or hex) in s[0..len), resp. in every string of reply r
 * (which may be NULL). */
void fsck_scan_value(fsck *f, const char *key, size_t keylen, const char *s, size_t len);
void fsck_scan_reply(fsck *f, const char *key, size_t keylen, const redisReply *r);

/* --- pass 1 (cli_fsck_scan.c) ---------------------------------------------- */

/* Walks every key with SCAN: scans key names and values for secrets and
 * fills the inventory (f->teams, f->toks, ...). Stops when f->broken. */
void fsck_pass_scan(fsck *f);

/* --- pass 2 (cli_fsck_checks.c) -------------------------------------------- */

/* fsck_check's, for run_check: team T (b unused), token record of hash
 * in team tag_team's slot ("": a record of the old untagged layout), user
 * uid, email record. */
int fsck_check_team(fsck *f, const char *T, const char *unused);
int fsck_check_token(fsck *f, const char *hash, const char *tag_team);
int fsck_check_user(fsck *f, const char *uid, const char *unused);
int fsck_check_email(fsck *f, const char *email, const char *unused);

/* Wallet W of team T and its ledger; a consistent view without retries
 * (see cli_cmd_fsck.c). Publishes its problems itself. */
void fsck_check_wallet(fsck *f, const char *T, const char *W);

/* --- commits across slots (cli_fsck_xc.c) ------------------------------------ */

/* Pass 1 hands it every string and hash value read (r: GET / HGETALL's
 * reply of key, of that type): notes open intents and lock values. */
void fsck_xc_seen(fsck *f, const char *key, size_t keylen, const char *type, const redisReply *r);

/* Pass 2, before the model's checks: xcommit_open (older than
 * XC_STALE_MS), xcommit_lock_orphan; notes what --repair would settle. */
void fsck_pass_xc(fsck *f);

/* --repair: settles what fsck_pass_xc noted, as keygated would, and says
 * so ("repaired: ..." lines, f->repaired / f->unrepaired). */
void fsck_repair_xc(fsck *f);

/* Frees what the wallet checks keep for the whole run (accepts a run
 * that checked none). */
void fsck_checks_cleanup(void);

/* The published catalog parses (and exists once there are teams).
 * Publishes its problems itself. */
void fsck_check_catalog(fsck *f);

#endif

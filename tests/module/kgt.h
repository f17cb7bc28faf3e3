/*
 * kgt.h - shared helper of the libkeygate tests: a private redis-server on
 * a Unix socket in a mkdtemp() directory, a config and pepper file for
 * kg_open(), and fixtures written exactly as docs/redis-schema.md says the
 * daemon writes them (the tests play the daemon's part).
 */
#ifndef KGT_H
#define KGT_H

#include <hiredis/hiredis.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "keygate.h"
#include "kgc_keys.h"
#include "kgc_token.h"

#define KGT_PREFIX "kg:"

#define KGT_NODES 6               /* a cluster: 3 masters, a replica each */

typedef struct kgt_env {
    char dir[256];                /* the temp dir; removed by kgt_teardown */
    char sock[320];               /* redis Unix socket */
    char conf[320];               /* default config file for kg_open */
    char pepper_file[320];
    unsigned char pepper[KGC_PEPPER_LEN];
    pid_t redis_pid;              /* 0 when stopped */
    redisContext *rc;             /* the "daemon"'s synchronous connection */
    /* KEYGATE_TOPOLOGY=cluster: a Redis Cluster on loopback TCP instead of
     * the one server; rc is a connection to node 0, and kgt_cmd follows
     * MOVED to the node of a command's key (one connection each). */
    int cluster;
    int port[KGT_NODES], bus[KGT_NODES];
    pid_t pid[KGT_NODES];
    redisContext *nc[KGT_NODES];
    /* KEYGATE_TOPOLOGY=sentinel: a primary (port[0]) and its replica
     * (port[1]) on loopback TCP, 3 sentinels naming the primary; rc is a
     * connection to the primary. Stop, pause and start act on the primary
     * and the replica (the sentinels stay, and fail nothing over: their
     * down-after is 60 s). */
    int sentinel;
    int sport[3];
    pid_t spid[3];
} kgt_env;

/* Fails the test: prints where, stops Redis, removes the temp dir, exit(1). */
void kgt_fail(void) __attribute__((noreturn));

#define KGT_CHECK(cond, ...)                                                     \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "%s:%d: check failed: %s\n  ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                        \
            fputc('\n', stderr);                                                 \
            kgt_fail();                                                          \
        }                                                                        \
    } while (0)

#define KGT_EQ_STATUS(got, want)                                                 \
    KGT_CHECK((got) == (want), "status %s, expected %s", kg_status_code(got),   \
              kg_status_code(want))

/* Starts Redis, writes pepper and config (conf_extra is appended to the
 * config: e.g. "cache_ttl_ms 0\n"). Exits the test on failure. */
void kgt_setup(kgt_env *e, const char *conf_extra);
void kgt_teardown(kgt_env *e);
/* Writes another config file in the temp dir; returns its path (static). */
const char *kgt_write_conf(kgt_env *e, const char *name, const char *extra);

/* On a cluster each acts on every node: start brings them back on their
 * ports with their cluster config (empty, as the one server comes back)
 * and waits for cluster_state:ok. Behind sentinels: on the primary and
 * its replica. */
void kgt_redis_start(kgt_env *e);      /* (re)starts on the same socket */
void kgt_redis_stop(kgt_env *e);       /* SIGTERM and wait */
void kgt_redis_pause(kgt_env *e, int paused); /* SIGSTOP / SIGCONT */
/* A new connection to the server holding key (the one server, or the
 * master of key's slot on a cluster); the caller frees it. */
redisContext *kgt_connect_for(kgt_env *e, const char *key);
/* A new connection to the one server or the primary (a cluster's node 0);
 * NULL or one with err set on failure; the caller frees it. */
redisContext *kgt_connect(kgt_env *e);
/* New connections for a forked child (the parent's stay the parent's);
 * 0, or -1 with errno's story in e->rc->errstr when e->rc is not NULL. */
int kgt_reconnect(kgt_env *e);
/* The servers a command can be sent to one by one (SLOWLOG, CONFIG SET):
 * 1 on a single server, KGT_NODES on a cluster; kgt_node_cmd sends to the
 * i-th and fails the test on an error, as kgt_cmd does. */
int kgt_nodes(kgt_env *e);
redisReply *kgt_node_cmd(kgt_env *e, int i, const char *fmt, ...);
/* The port of the node that holds the team's keys (0: the one server). */
int kgt_team_node(kgt_env *e, const char *team);

/* A command on the daemon connection; fails the test on a NULL reply.
 * The caller frees the reply. */
redisReply *kgt_cmd(kgt_env *e, const char *fmt, ...);
void kgt_do(kgt_env *e, const char *fmt, ...);   /* same, reply dropped */
long long kgt_int(kgt_env *e, const char *fmt, ...); /* integer or numeric string reply */

/* Fixtures, as the daemon writes them. */
void kgt_catalog(kgt_env *e, const char *json);  /* NULL: tests/data/catalog.json */
void kgt_team(kgt_env *e, char *team_out);       /* [KGC_ID_MAX] */
void kgt_wallet(kgt_env *e, const char *team, int64_t balance, char *wallet_out);
void kgt_credit(kgt_env *e, const char *team, const char *wallet, int64_t amount);
/* services: JSON object text as in the key document, e.g.
 * {"text-generation":{"policy":"payg","models":["small"],"wallet":"w_..."}} */
void kgt_key(kgt_env *e, const char *team, const char *kind, const char *services,
             char *key_out);
json_t *kgt_key_doc(kgt_env *e, const char *team, const char *key);  /* caller decrefs */
void kgt_key_save(kgt_env *e, const char *team, const char *key, json_t *doc);
/* Assigns user (if not yet) and issues a token: writes P {t:T}:tok:<hash> and the
 * key document's tokens.<user>. tok_out[KGC_TOKEN_LEN + 1]. */
void kgt_token(kgt_env *e, const char *team, const char *key, const char *user,
               int64_t expires_ms, char *tok_out);
void kgt_hash(kgt_env *e, const char *tok, char *hex_out);
void kgt_publish_key(kgt_env *e, const char *key);
/* Sets one member of the key document as key.update does (expires_at,
 * budget_day_micros, budget_month_micros, rate_limits), then PUBLISH
 * "key <id>". Takes value's reference; NULL removes the member. */
void kgt_key_field(kgt_env *e, const char *team, const char *key, const char *name,
                   json_t *value);

/* Daemon-style changes, each followed by PUBLISH "key <id>". */
void kgt_revoke(kgt_env *e, const char *team, const char *key);
void kgt_unassign(kgt_env *e, const char *team, const char *key, const char *user,
                  const char *tok);
/* New token for user; the old one dies now (grace_ms 0) or later. */
void kgt_rotate(kgt_env *e, const char *team, const char *key, const char *user,
                const char *old_tok, int64_t grace_ms, char *new_tok);

/* A standard world: a team, a wallet with `balance`, a paid key with
 * text-generation (payg, model "small", that wallet) and speech-to-text
 * (free), one assigned user and their token. */
typedef struct kgt_world {
    char team[KGC_ID_MAX], wallet[KGC_ID_MAX], key[KGC_ID_MAX], user[KGC_ID_MAX];
    char tok[KGC_TOKEN_LEN + 1];
} kgt_world;
void kgt_world_make(kgt_env *e, kgt_world *w, int64_t balance);
/* Sets free_quota.requests_per_day of a service in the catalog of
 * tests/data/catalog.json and stores it (n = 0: no quota). */
void kgt_catalog_quota(kgt_env *e, const char *service, int64_t n);
/* Sets field of a service in the catalog of tests/data/catalog.json (value
 * NULL: removes it; the reference is taken) and stores it. */
void kgt_catalog_field(kgt_env *e, const char *service, const char *field, json_t *value);
long long kgt_balance(kgt_env *e, const kgt_world *w);
long long kgt_ledger_len(kgt_env *e, const kgt_world *w);

/* A request with up to 4 params given as name/value pairs (NULL-ended). */
typedef struct kgt_req {
    kg_request req;
    kg_param params[4];
} kgt_req;
#define KGT_P(name, v) (name), (int64_t)(v)   /* one param for kgt_request */
void kgt_request(kgt_req *r, const char *tok, const char *service, const char *model,
                 const char *request_id, ...);

/* Calls of a Redis command so far (INFO commandstats), e.g. "hgetall". */
long long kgt_calls(kgt_env *e, const char *cmd);
void kgt_today(char *out);   /* yyyymmdd, UTC, into out[16] */
int64_t kgt_now_ms(void);   /* monotonic */
int64_t kgt_wall_ms(void);
void kgt_sleep_ms(int ms);

#endif

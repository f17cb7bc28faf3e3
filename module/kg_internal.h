/*
 * kg_internal.h - libkeygate's private types, shared by the module's files.
 *
 *   kg_api.c     the kg_* entry points (blocking and non-blocking)
 *   kg_flow.c    one request's state machine: resolve, decide, charge
 *   kg_link.c    the Redis connections (commands, invalidations; in cluster
 *                mode one command link per master and the slot map)
 *   kg_cache.c   the token cache and the key document parser
 *   kg_scripts.c the Lua scripts that count and charge
 *
 * Everything here is single-threaded: a kg_ctx belongs to one thread.
 */
#ifndef KG_INTERNAL_H
#define KG_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "keygate.h"
#include "kgc_cluster.h"
#include "kgc_config.h"
#include "kgc_keys.h"
#include "kgc_price.h"
#include "kgc_sentinel.h"
#include "kgc_token.h"

#define KG_ID_LEN      64      /* sizeof kg_result.key_id and friends */
#define KG_RID_MAX     128     /* request_id: 1..128 printable, no space */
#define KG_MAX_PARAMS  64      /* more params than this is a bad request */
#define KG_FP_HEX      32      /* request fingerprint: BLAKE2b-128, in hex */
#define KG_SUB_RETRY_MS 100    /* reconnect the subscriber at most this often */
#define KG_SUB_GRACE_MS 1000   /* a subscription not confirmed by then is dropped */
#define KG_POLL_EVERY_MS 2     /* blocking mode: read invalidations this often */

/* ------------------------------------------------------------------ */
/* Token cache (kg_cache.c)                                             */

typedef struct kg_svcpol {
    char *id;                     /* service id, owned */
    int payg;                     /* 0: policy "free", 1: "payg" */
    char wallet[KG_ID_LEN];       /* payg: the paying wallet */
    char **models;                /* payg: allowed model ids, owned */
    size_t nmodels;
    int64_t per_second;           /* rate_limits.<id>: 0 = no limit */
    int64_t per_minute;
} kg_svcpol;

enum kg_entry_state {
    KG_ENT_ACTIVE = 0,            /* usable: decide by policy */
    KG_ENT_REVOKED,               /* key status "revoked" */
    KG_ENT_UNASSIGNED             /* user no longer among the key's users, or the
                                     token is not the user's current one */
};

/* What one token resolves to: the tok record joined with its key document.
 * Reference-counted: the cache holds one reference, a request that is
 * deciding holds another, so an invalidation never frees it under a user. */
typedef struct kg_entry {
    int refs;
    char hash[KGC_HASH_HEX_LEN + 1]; /* keyed hash of the token (the cache key) */
    char key_id[KG_ID_LEN], team_id[KG_ID_LEN], user_id[KG_ID_LEN];
    int state;                    /* enum kg_entry_state */
    int64_t expires_ms;           /* wall clock; 0 = the token does not expire */
    int64_t key_expires_ms;       /* the key's expires_at (wall clock); 0 = never */
    int64_t budget_day;           /* budget_day_micros; 0 = no cap */
    int64_t budget_month;         /* budget_month_micros; 0 = no cap */
    int64_t stale_at;             /* monotonic ms after which the entry is dropped */
    kg_svcpol *svcs;              /* owned, nsvcs entries */
    size_t nsvcs;
    struct kg_entry *next;        /* bucket chain */
} kg_entry;

typedef struct kg_tokmemo kg_tokmemo;

typedef struct kg_cache {
    kg_entry **buckets;           /* owned, nbuckets (a power of two) */
    size_t nbuckets, count, max;
    kg_tokmemo *memo;             /* owned: token -> its keyed hash (kg_cache.c) */
} kg_cache;

int  kg_cache_init(kg_cache *c, size_t max);
void kg_cache_free(kg_cache *c);
/* Returns a new reference (release with kg_entry_unref), or NULL. */
kg_entry *kg_cache_get(kg_cache *c, const char *hash, int64_t now_mono);
/* Takes a new reference on e for the cache; replaces an entry of the same hash. */
void kg_cache_put(kg_cache *c, kg_entry *e, int64_t now_mono);
void kg_cache_drop_key(kg_cache *c, const char *key_id);
void kg_cache_clear(kg_cache *c);

void kg_entry_unref(kg_entry *e);   /* accepts NULL */

/* The token memo: a token seen lately (and found well-formed) gives its
 * keyed hash without BLAKE2b and the CRC check, from a SipHash-128 of it
 * under a key drawn at kg_cache_init. 1 and hash_out (KGC_HASH_HEX_LEN + 1)
 * filled, or 0: compute it, then kg_tokmemo_put. */
int  kg_tokmemo_get(kg_cache *c, const char *tok, size_t len, char *hash_out);
void kg_tokmemo_put(kg_cache *c, const char *tok, size_t len, const char *hash);
/* Builds an entry (refs = 1) from a tok record's fields and the key document
 * text. Returns NULL with a reason in err when the document is not usable. */
kg_entry *kg_entry_build(const char *hash, const char *key_id, const char *team_id,
                         const char *user_id, int64_t expires_ms,
                         const char *doc, size_t doclen, char *err, size_t errlen);
const kg_svcpol *kg_entry_policy(const kg_entry *e, const char *service);

/* ------------------------------------------------------------------ */
/* Scripts (kg_scripts.c)                                               */

enum kg_script { KG_SCRIPT_DEBIT = 0, KG_SCRIPT_QUOTA, KG_SCRIPT_HOLD, KG_SCRIPT_SETTLE,
                 KG_SCRIPT_COLD,  /* resolve + check + one of the four (a cache miss) */
                 KG_NSCRIPTS };
extern const char *const kg_script_text[KG_NSCRIPTS];
extern const char kg_capture_lua[];   /* keygated's hold sweep (daemon/holds.c) */

/* ------------------------------------------------------------------ */
/* Connections (kg_link.c)                                              */

typedef struct kg_link {
    kg_ctx *ctx;
    redisAsyncContext *ac;        /* NULL once hiredis freed it */
    int fd;
    int want;                     /* KG_EV_* that hiredis asked for */
    int told;                     /* KG_EV_* last passed to hooks->watch */
    int is_sub;                   /* the invalidation subscriber */
    int node;                     /* cluster mode: index in ctx->cmap->nodes; -1 otherwise */
    int auth_refused;             /* the AUTH sent first was refused: no reply on
                                     this link is trusted (kg_link_trusted); it is
                                     dropped at the top level */
} kg_link;

#define KG_NLINKS 4               /* main, sub, watch, probe */
#define KG_LINKS_MAX (KG_NLINKS + 1 + KGC_CLUSTER_NODES_MAX) /* + clq + cluster nodes */
#define KG_CL_REDIRECTS 5         /* cluster: MOVED/ASK followed per command */
#define KG_CL_RETRY_MS 10         /* cluster: pause before resending after TRYAGAIN & co */
#define KG_CL_REFRESH_MS 100      /* cluster: CLUSTER SLOTS asked at most this often */

/* Host mode's non-blocking look-up of the primary (kg_link.c, "probe"). */
enum kg_probe {
    KG_PR_IDLE = 0,               /* nothing to do */
    KG_PR_NEXT,                   /* ask the next sentinel (or give up) */
    KG_PR_ASK,                    /* SENTINEL get-master-addr-by-name on the wire */
    KG_PR_GOT,                    /* a sentinel named ctx->cand: ask it ROLE */
    KG_PR_ROLE,                   /* ROLE on the wire */
    KG_PR_MASTER                  /* ctx->cand is a master: it is the primary */
};

/* ------------------------------------------------------------------ */
/* Requests (kg_flow.c)                                                 */

enum kg_step {
    KG_ST_IDLE = 0,               /* nothing on the wire */
    KG_ST_CATALOG,                /* GET P catalog */
    KG_ST_LOAD,                   /* SCRIPT LOAD */
    KG_ST_EVAL,                   /* EVALSHA cold (a cache miss) | debit / quota / hold / settle */
    KG_ST_SYNC,                   /* PUBLISH P durable: a replay's WAIT must cover the store */
    KG_ST_WAIT                    /* WAIT min_replicas_ack (a debit made, to be confirmed) */
};

enum kg_plist { KG_L_NONE = 0, KG_L_INFLIGHT, KG_L_DONE };

struct kg_pending {
    kg_ctx *ctx;
    struct kg_pending *prev, *next; /* on ctx->inflight or ctx->doneq */
    int list;                     /* enum kg_plist */
    int step;                     /* enum kg_step */
    int outstanding;              /* commands on the wire for us: 0 or 1 */
    int finished;                 /* r holds the answer */
    int cancelled;                /* the host gave up: never call done */
    int blocking;                 /* driven by kg_authorize, not the host */
    int settle;                   /* kg_settle: charge a hold, not authorize */
    int64_t deadline;             /* monotonic ms: end of the current round trip */

    /* the request, copied (the token itself is never kept: only its hash) */
    char hash[KGC_HASH_HEX_LEN + 1];
    char tok_team[KGC_ID_MAX];    /* the team the token names: its slot */
    char service[KG_ID_LEN];
    char model[KG_ID_LEN];        /* resolved model id once decided */
    int has_model;                /* the caller named a model */
    char request_id[KG_RID_MAX + 1]; /* "" = none */
    kg_param *params;             /* owned copy of the array; names borrowed */
    size_t nparams, params_cap;   /* params_cap: room in params (kept on reuse) */

    /* progress */
    int inval_gen;                /* ctx->inval_gen when resolution began */
    int sub_ok_at_start;          /* the subscription was live then */
    kg_entry *ent;                /* a reference while deciding */
    int script;                   /* enum kg_script once decided */
    int64_t cost;
    int64_t quota_limit;
    int64_t budget_day, budget_month; /* from the entry, for the script */
    int64_t per_second, per_minute;   /* the service's rate limits, for the script */
    int cold_bad, cold_free, cold_settle, cold_hold_bad; /* catalog facts, for the cold script */
    char fp[KG_FP_HEX + 1];       /* the request's fingerprint, for its record */
    int loads;                    /* NOSCRIPT retries (loop guard) */
    int catalog_fetches;          /* guard against a catalog reload storm */
    int catalog_gen_at;           /* ctx->catalog_gen when GET catalog was sent */
    int catalog_sub_ok;           /* the subscription was live then */
    int delivering;               /* inside its done(): cancel must not free */
    int wallet_moves;             /* settle: "wallet" redirects followed (guard) */
    int synced;                   /* a replay's PUBLISH P durable was sent */

    kg_hold h;                    /* the hold's side of the answer */
    kg_hold *hout;                /* host's kg_hold or NULL, touched only at delivery */
    size_t hsize;                 /* its size as the host knows it */

    int64_t outage;               /* debit leased: > 0, the entry was kept over a
                                     subscription loss (kg_lease_outage) */

    /* cluster mode only (ctx->cmap != NULL): the command on the wire, kept
     * formatted for a resend after MOVED, ASK, TRYAGAIN, CLUSTERDOWN... */
    char *cmd;                    /* owned; NULL in single-node mode */
    size_t cmdlen;
    unsigned slot;                /* the slot of the command's first key */
    int node;                     /* the node it was sent to */
    int asking;                   /* send ASKING first (an ASK redirect) */
    int load_here;                /* the next SCRIPT LOAD goes to `node`: it
                                     answered NOSCRIPT, maybe reached by ASK */
    int redirects;                /* MOVED/ASK followed for this command */
    int64_t retry_at;             /* > 0: waiting to resend (not on the wire) */

    kg_result r;                  /* our answer; copied to *out when delivered */
    kg_result *out;               /* host's result, touched only at delivery */
    kg_done_fn done;
    void *arg;
};

/* ------------------------------------------------------------------ */
/* The context                                                          */

struct kg_ctx {
    kgc_config cfg;
    unsigned char *pepper;        /* KGC_PEPPER_LEN bytes, sodium_malloc()ed */
    char channel[KGC_RKEY_MAX];   /* P inval */

    kg_link *main;                /* commands; NULL = not connected */
    kg_link *sub;                 /* SUBSCRIBE P inval; NULL = not connected */
    int sub_ok;                   /* subscription confirmed: the cache may be used */
    int64_t sub_started;          /* monotonic ms of the last subscriber connect */
    int64_t last_poll;            /* blocking mode: last non-blocking read */
    int inval_gen;                /* bumped by every invalidation and subscription loss */

    kg_cache cache;
    kgc_catalog *catalog;         /* NULL = fetch on next need */
    int catalog_gen;              /* bumped by every "catalog" message */
    int catalog_trusted;          /* read under a live subscription: keep it */
    char sha[KG_NSCRIPTS][41];    /* SCRIPT LOAD answers; "" = unknown */

    const kg_loop_hooks *hooks;   /* host mode: &hooks_copy; NULL = blocking only */
    kg_loop_hooks hooks_copy;
    void *host;

    struct kg_pending *inflight;  /* requests with a command on the wire */
    struct kg_pending *spare;     /* one freed request kept for the next
                                     (kg_flow.c): no malloc per request */
    struct kg_pending *doneq, *doneq_tail; /* answers not yet handed to done */
    int closing;
    int parked;                   /* a command may wait on ctx->inflight for the
                                     primary's look-up (kg_route_unpark) */

    kg_stats stats;               /* kg_stats_get */

    /* Sentinel mode (cfg.nsentinels > 0), kg_link.c: */
    kgc_hostport primary;         /* port 0 = look it up at the next connect */
    int sentinel_first;           /* the sentinel that answered last */
    int64_t resolve_failed;       /* monotonic ms of the last failed look-up */
    int relink;                   /* READONLY, a short WAIT or +switch-master seen:
                                     drop the links at the top level */
    kg_link *watch;               /* SUBSCRIBE +switch-master on one sentinel */
    int watch_idx;                /* which one */
    int64_t watch_started;        /* monotonic ms of its last connect */
    kg_link *probe;               /* host mode: the look-up's connection */
    int probe_state;              /* enum kg_probe; callbacks only move it on */
    int probe_tried;              /* sentinels asked in this look-up */
    int probe_at;                 /* the sentinel asked now */
    int64_t probe_deadline;       /* monotonic ms: the current step gives up */
    kgc_hostport cand;            /* the address a sentinel gave */

    int64_t pipe_checked;         /* monotonic ms of the last SIGPIPE look */
    int pipe_ignored;             /* the process ignores SIGPIPE already */

    struct kg_leases *leases;     /* debit leased (kg_lease.c); NULL: exact */

    /* Redis Cluster mode (cfg.ncluster > 0), kg_link.c: */
    kgc_cluster_map *cmap;        /* the slot map; NULL: not cluster mode */
    kg_link *nodes[KGC_CLUSTER_NODES_MAX]; /* command links, by map index */
    kg_link *clq;                 /* the link CLUSTER SLOTS is asked on */
    kgc_hostport clq_addr;        /* its address */
    int clq_idx;                  /* which candidate it is (rotates on failure) */
    int clq_bad;                  /* its answer was unusable: drop it (top level) */
    int cl_inflight;              /* CLUSTER SLOTS on the wire */
    int cl_stale;                 /* the map may be wrong: refresh it */
    int64_t cl_asked;             /* monotonic ms of the last CLUSTER SLOTS */
    int sub_seed;                 /* the seed the subscriber uses (pub/sub is
                                     broadcast to every node of a cluster) */
    int auth_refused;             /* some link's AUTH was refused: drop it (top level) */
};

/* kg_link.c */
int64_t kg_mono_ms(void);
int64_t kg_wall_ms(void);
int  kg_link_main(kg_ctx *ctx);                 /* connect if needed: 0 / -1 */
int  kg_link_resolving(const kg_ctx *ctx);     /* host mode, Sentinel: primary being looked up */
/* Queues the formatted command cmd on ac, its reply for fn(priv) (fn NULL:
 * nobody waits for it). hiredis 0.14.1 does not report every allocation
 * failure of an async command: it can queue the command without its reply
 * callback, whose reply would then trip an assert or, with other commands
 * in flight, reach the wrong request. Such a command is taken back out of
 * the output buffer before anything is written. 0, or -1: none of it
 * queued (what was queued before stays as it was). */
int  kg_link_put(redisAsyncContext *ac, redisCallbackFn *fn, void *priv, const char *cmd,
                 size_t len);
void kg_link_sub_maintain(kg_ctx *ctx, int64_t now);
void kg_link_drop(kg_ctx *ctx, kg_link *l);     /* frees hiredis' side now */
void kg_link_drop_all(kg_ctx *ctx);
void kg_link_handle(kg_ctx *ctx, int fd, int events);
void kg_link_poll(kg_ctx *ctx, int timeout_ms); /* one poll() over both links */
void kg_link_write_now(kg_ctx *ctx);            /* flush main if it is connected */
void kg_link_notify_all(kg_ctx *ctx);           /* re-tell the host every fd */
void kg_link_relink(kg_ctx *ctx);               /* top level: act on ctx->relink */
/* 0 when ac's link had its AUTH refused (config redis_user /
 * redis_password_file, kgc_auth.h): every reply callback on a data link
 * takes its reply as the NULL of a lost connection then, since commands
 * queued behind a refused AUTH run unauthenticated (or as "default"). */
int  kg_link_trusted(const redisAsyncContext *ac);
void kg_link_drop_refused(kg_ctx *ctx);         /* top level: drop those links */
/* Every live link (at most max) into ls; returns how many. */
int kg_link_list(kg_ctx *ctx, kg_link **ls, int max);
/* Cluster mode: the command link of map node i, connected if needed; NULL. */
kg_link *kg_link_node(kg_ctx *ctx, int i);
/* Cluster mode, top level: asks CLUSTER SLOTS when the map is stale. */
void kg_link_cluster_maintain(kg_ctx *ctx, int64_t now);
void kg_link_probe_maintain(kg_ctx *ctx, int64_t now); /* top level: host mode's look-up */
int64_t kg_link_probe_deadline(const kg_ctx *ctx); /* -1: no look-up step pending */

/* kg_flow.c */
/* Starts one request. Returns 0 (answered now, *r filled), 1 (in flight:
 * *pp set), or -1 (not started, *r says why). */
int  kg_flow_start(kg_ctx *ctx, const kg_request *req, kg_result *r,
                   int blocking, int settle, struct kg_pending **pp);
/* Copies a kg_hold into a host's struct of hsize bytes (NULL: nothing). */
void kg_hold_out(kg_hold *dst, size_t hsize, const kg_hold *src);
void kg_hold_init(kg_hold *h);
/* Monotonic ms at which p needs kg_route_timeouts: its deadline, or
 * sooner a resend it waits for (cluster mode). */
int64_t kg_flow_due(const struct kg_pending *p);
/* For kg_route.c: ends p with status s (queued for delivery); puts p on
 * ctx->inflight; the reply callback of every request command. */
void kg_flow_finish(struct kg_pending *p, kg_status s);
void kg_flow_inflight(struct kg_pending *p);
void kg_flow_on_reply(redisAsyncContext *ac, void *reply, void *priv);
void kg_flow_deliver(kg_ctx *ctx);
void kg_flow_cancel(kg_ctx *ctx, struct kg_pending *p);
void kg_pending_free(struct kg_pending *p);
void kg_flow_free_spare(kg_ctx *ctx);  /* kg_close: the spare request */
void kg_result_init(kg_result *r);
/* The subscriber's message handler. */
void kg_flow_inval(kg_ctx *ctx, const char *msg, size_t len);
void kg_flow_sub_lost(kg_ctx *ctx);

/* kg_route.c */
/* Puts p's command (step, argv) on the wire: ctx->main, or the node of its
 * first key's slot on a cluster; fails p when it cannot. */
void kg_route_issue(struct kg_pending *p, int step, int argc, const char **argv);
/* Cluster mode: p's slot is the team's (every key of a request carries
 * its tag); a script just loaded on node loaded_on goes to the others. */
void kg_route_team_slot(struct kg_pending *p, const char *team);
void kg_route_load_everywhere(kg_ctx *ctx, int script, int loaded_on);
/* Cluster mode: an error reply about routing is followed here: 1 (p
 * resent, waiting to be, or finished), 0 (the step sees the error). */
int  kg_route_reply(struct kg_pending *p, int step, const redisReply *r);
/* Resends what waited, fails what overran its deadline (dropping the
 * connection a late reply holds up). */
void kg_route_timeouts(kg_ctx *ctx, int64_t now);
/* Sends the commands that waited for the primary's look-up (host mode,
 * Sentinel), or fails those overdue, or all once the look-up failed or
 * the context closes. */
void kg_route_unpark(kg_ctx *ctx, int64_t now);

/* ------------------------------------------------------------------ */
/* Leased funds (kg_lease.c, kg_journal.c; docs/module.md "Leased funds") */

extern const char kg_lease_lua[];     /* kg_scripts.c: flush and renew */
extern const char kg_reclaim_lua[];   /* kg_scripts.c: keygated's lease sweep */

#define KG_LEASE_EXACT (-1)           /* kg_lease_decide: use the exact path */

/* kg_open/kg_close: a context in debit leased mode claims a journal file
 * and queues its unflushed entries for replay. 0, or -1 with err. */
int  kg_lease_open(kg_ctx *ctx, char *err, size_t errlen);
/* Flushes every entry and returns every lease, waiting at most about
 * 2 s (blocking), then unmaps the journal. Accepts ctx->leases NULL. */
void kg_lease_close(kg_ctx *ctx);
/* Decides p (a payg debit of service svc whose checks all passed) against
 * the lease of its wallet: a kg_status (p->r filled) or KG_LEASE_EXACT
 * (the service is not leased here, or the lease cannot decide it). */
int  kg_lease_decide(kg_ctx *ctx, struct kg_pending *p, const kgc_service *svc);
/* Sends a due flush or renewal, syncs the journal; top level only. */
void kg_lease_tick(kg_ctx *ctx, int64_t now);
/* Subscription lost: 1 when the cache and catalog are kept for local
 * decisions (a lease is valid), 0 to clear them as in exact mode. */
int  kg_lease_sub_lost(kg_ctx *ctx);
/* Subscription back: clears what kg_lease_sub_lost kept. */
void kg_lease_sub_back(kg_ctx *ctx);
/* > 0 while kept: the monotonic ms of the loss (cache entries are used as
 * fresh as they were then); 0 otherwise. */
int64_t kg_lease_outage(kg_ctx *ctx);
/* Monotonic ms of the next kg_lease_tick needed; -1: none. */
int64_t kg_lease_next(const kg_ctx *ctx);

#endif

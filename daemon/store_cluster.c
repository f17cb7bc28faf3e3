/*
 * store_cluster.c - the daemon's store on a Redis Cluster (issue 11).
 *
 * The slot map and the meaning of redirections come from the routing layer
 * libkeygate uses (module/core/kgc_cluster.h); this file is its async form
 * on libevent: one hiredis async connection per node, made when a command
 * first goes there.
 *
 * A batch (store_exec) is cut into units, each sent whole to one node:
 *   - a command of one key, or of several keys in one slot, is one unit;
 *   - MGET, DEL, EXISTS and UNLINK whose keys span slots are split into one
 *     unit per slot, and their replies merged (MGET in key order, the
 *     others summed), so a caller never sees CROSSSLOT for them;
 *   - a transaction becomes one MULTI/EXEC unit per slot, in the order of
 *     their first commands: atomic within a slot only (docs/operations.md
 *     says which daemon work that touches; the commits of commands do not
 *     use it: job.c runs them as ordered steps, docs/redis-schema.md);
 *   - SCAN walks the masters one after the other: its cursor is
 *     "<master>.<node cursor>" between calls, "0" at both ends;
 *   - SCRIPT LOAD goes to every master (the first answer is the batch's),
 *     and the script is remembered by its SHA: a node that answers NOSCRIPT
 *     to an EVALSHA (a promoted replica, a node added later) gets it loaded
 *     and the EVALSHA again;
 *   - keyless commands (PUBLISH, PING, WAIT) go to the node of slot 0.
 * A unit's routing errors are handled inside the batch, bounded by
 * STORE_CL_TRIES and STORE_CL_DEADLINE_MS: MOVED points the slot at the
 * new node (and asks for a fresh map) and resends, ASK resends once behind
 * ASKING on the target, TRYAGAIN / CLUSTERDOWN / LOADING / MASTERDOWN and
 * READONLY resend after a short pause (READONLY refreshes the map). Each
 * is an answer that nothing was done, so resending is safe. A connection
 * lost with a unit in flight fails the batch (ok = 0), as on one node.
 *
 * With min_replicas_ack, every unit that reaches a node is followed there
 * by PUBLISH + WAIT, as store_exec_acked does on one node.
 */
#include "log.h"
#include "metrics.h"
#include "store_int.h"
#include "kgc_auth.h"
#include "kgc_cluster.h"

#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <stdlib.h>
#include <string.h>

#define STORE_CL_TRIES 12
#define STORE_CL_DEADLINE_MS 3000
#define STORE_CL_STALL_MS 3000
#define STORE_CL_TICK_MS 250
#define STORE_CL_REFRESH_MIN_MS 100    /* between two map refreshes */

typedef struct cnode {
    redisAsyncContext *ac;         /* NULL while not connected */
    int up;
    int was_up;                    /* connected before: a reconnect may find it empty */
    long inflight;                 /* replies still expected */
    long long last_ms;             /* last reply or first send while idle */
    struct cstore *cs;
} cnode;

struct cstore {
    struct event_base *base;
    const kgc_config *cfg;
    store *owner;
    kgc_cluster_map map;
    int loaded;
    cnode node[KGC_CLUSTER_NODES_MAX];
    struct event *tick;
    int refresh_wanted, refreshing;
    long long refreshed_ms;
    json_t *scripts;               /* sha -> script text */
    struct cunit *units;           /* all live units (for cstore_free) */
};

typedef struct cbatch {
    store_done_fn done;
    void *arg;
    json_t *out;                   /* one reply per command of the caller */
    size_t pending;                /* units not finished */
    int failed, tx, acks, unacked;
} cbatch;

enum merge { M_NONE = 0, M_MGET, M_SUM, M_SCAN, M_LOAD };

typedef struct cunit {
    cbatch *b;
    struct cstore *cs;
    struct cunit *next, *prev;
    json_t *cmds;                  /* the unit's commands (MULTI/EXEC not included) */
    json_t *pos;                   /* out index of each command */
    int tx;
    unsigned slot;
    int node;                      /* where it goes; -1: by slot */
    int ask;                       /* 1: send ASKING first (to node) */
    int load;                      /* 1: send SCRIPT LOAD of the EVALSHA first */
    enum merge merge;
    json_t *keyidx;                /* M_MGET: the caller's key index of each key */
    int scan_master;               /* M_SCAN: the master's ordinal */
    int tries;
    long long deadline;
    json_t *replies;               /* this round's replies */
    size_t expect, got;
    int lost;
    int timer_fail;                /* the timer fails the unit (no node for it) */
    struct event *timer;
} cunit;

typedef struct cslot { cunit *u; size_t i; } cslot;

static void unit_send(cunit *u);
static void unit_finish(cunit *u);

/* --- nodes and the map ------------------------------------------------- */

static void node_forget(cnode *n)
{
    n->ac = NULL;
    n->up = 0;
    n->inflight = 0;
}

static void on_node_connect(const redisAsyncContext *ac, int status)
{
    cnode *n = ac->data;

    if (n == NULL)
        return;
    if (status != REDIS_OK) {
        metrics_count(MX_REDIS_CONNECT_FAILURES);
        log_warn("redis cluster node: connect failed: %s", ac->errstr);
        node_forget(n);             /* hiredis frees the context */
        n->cs->refresh_wanted = 1;
        return;
    }
    n->up = 1;
    n->last_ms = store_mono_ms();
    if (n->was_up && n->cs->map.complete) {
        /* A node back after a loss (restarted, maybe empty): the daemon
         * publishes its state again, as on one node. */
        store_fire_connect(n->cs->owner);
    }
    n->was_up = 1;
}

static void on_node_disconnect(const redisAsyncContext *ac, int status)
{
    cnode *n = ac->data;

    if (n == NULL)
        return;
    metrics_count(MX_REDIS_DISCONNECTS);
    if (status != REDIS_OK)
        log_warn("redis cluster node: connection lost: %s", ac->errstr);
    node_forget(n);
    n->cs->refresh_wanted = 1;      /* a master may have failed over */
}

/* AUTH's reply on a node connection: a refusal drops it (the commands
 * queued behind it were refused too: NOAUTH). */
static void on_node_auth(redisAsyncContext *ac, void *reply, void *priv)
{
    redisReply *r = reply;

    (void)priv;
    if (r == NULL || r->type == REDIS_REPLY_STATUS)
        return;
    metrics_count(MX_REDIS_CONNECT_FAILURES);
    log_warn("redis cluster node: AUTH refused: %.200s",
             r->type == REDIS_REPLY_ERROR ? r->str : "?");
    if (!(ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING)))
        redisAsyncDisconnect(ac);
}

/* The connection to node idx, made now if there is none (commands queued
 * before it is up are sent once it is). NULL when it cannot be made. */
static redisAsyncContext *node_ac(cstore *cs, int idx)
{
    cnode *n;
    redisAsyncContext *ac;

    if (idx < 0 || idx >= cs->map.nnodes)
        return NULL;
    n = &cs->node[idx];
    if (n->ac != NULL)
        return (n->ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING)) ? NULL : n->ac;
    ac = redisAsyncConnect(cs->map.nodes[idx].host, cs->map.nodes[idx].port);
    if (ac == NULL)
        oom("redisAsyncConnect");
    if (ac->err) {
        metrics_count(MX_REDIS_CONNECT_FAILURES);
        log_warn("redis cluster node %s:%d: %s", cs->map.nodes[idx].host,
                 cs->map.nodes[idx].port, ac->errstr);
        redisAsyncFree(ac);
        return NULL;
    }
    n->cs = cs;
    ac->data = n;
    redisLibeventAttach(ac, cs->base);
    redisAsyncSetConnectCallback(ac, on_node_connect);
    redisAsyncSetDisconnectCallback(ac, on_node_disconnect);
    {
        const char *argv[3];
        size_t argvlen[3];
        int na = kgc_auth_argv(cs->cfg, argv, argvlen);
        if (na > 0 && redisAsyncCommandArgv(ac, on_node_auth, n, na, argv, argvlen) != REDIS_OK) {
            redisAsyncFree(ac);
            return NULL;
        }
    }
    n->ac = ac;
    n->last_ms = store_mono_ms();
    return ac;
}

/* The masters, in node order: SCAN's walk and SCRIPT LOAD's targets. */
static int masters(const cstore *cs, int out[KGC_CLUSTER_NODES_MAX])
{
    int seen[KGC_CLUSTER_NODES_MAX] = {0}, n = 0;

    for (unsigned s = 0; s < KGC_CLUSTER_SLOTS; s++) {
        int i = cs->map.slot_node[s];
        if (i != KGC_CLUSTER_NONE && !seen[i])
            seen[i] = 1;
    }
    for (int i = 0; i < cs->map.nnodes; i++)
        if (seen[i])
            out[n++] = i;
    return n;
}

static void on_slots(redisAsyncContext *ac, void *reply, void *priv)
{
    cstore *cs = priv;
    cnode *n = ac->data;
    char err[256];
    int was;

    if (n != NULL && n->inflight > 0)
        n->inflight--;
    cs->refreshing = 0;
    if (reply == NULL || ((redisReply *)reply)->type != REDIS_REPLY_ARRAY)
        return;
    if (n != NULL)
        n->last_ms = store_mono_ms();
    was = cs->map.complete;
    if (kgc_cluster_map_apply(&cs->map, reply, n ? cs->map.nodes[n - cs->node].host : "",
                              err, sizeof err) != 0) {
        log_warn("redis cluster: a bad slot map was not applied: %s", err);
        return;
    }
    cs->refresh_wanted = !cs->map.complete;
    if (cs->map.complete && !was) {
        log_info("redis cluster: every slot has a master (%d nodes)", cs->map.nnodes);
        store_fire_connect(cs->owner);
    }
}

/* Asks one connected node for CLUSTER SLOTS (at most one at a time, and
 * not more often than every STORE_CL_REFRESH_MIN_MS). */
static void refresh(cstore *cs)
{
    long long now = store_mono_ms();

    if (cs->refreshing || now - cs->refreshed_ms < STORE_CL_REFRESH_MIN_MS)
        return;
    for (int i = 0; i < cs->map.nnodes; i++) {
        cnode *n = &cs->node[i];
        if (n->ac == NULL || !n->up || (n->ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING)))
            continue;
        if (redisAsyncCommand(n->ac, on_slots, cs, "CLUSTER SLOTS") == REDIS_OK) {
            n->inflight++;
            cs->refreshing = 1;
            cs->refreshed_ms = now;
        }
        return;
    }
    /* No connection up: connect to the master of slot 0 (or any node),
     * the next tick asks it. */
    if (cs->map.nnodes > 0)
        (void)node_ac(cs, cs->map.slot_node[0] != KGC_CLUSTER_NONE ? cs->map.slot_node[0] : 0);
}

/* Blocking, bounded: the first map, at start and until one is had. */
static void load_map(cstore *cs)
{
    char err[300];

    if (kgc_cluster_load(&cs->map, cs->cfg, 500, err,
                         sizeof err) != 0) {
        metrics_count(MX_REDIS_CONNECT_FAILURES);
        log_warn("redis cluster: no slot map yet: %s", err);
        return;
    }
    cs->loaded = 1;
    log_info("redis cluster: slot map loaded (%d nodes%s)", cs->map.nnodes,
             cs->map.complete ? "" : ", some slots without a master yet");
    if (cs->map.complete)
        store_fire_connect(cs->owner);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    cstore *cs = arg;
    long long now = store_mono_ms();

    (void)fd;
    (void)what;
    if (!cs->loaded) {
        load_map(cs);
        return;
    }
    if (cs->refresh_wanted || !cs->map.complete)
        refresh(cs);
    for (int i = 0; i < cs->map.nnodes; i++) {
        cnode *n = &cs->node[i];
        if (n->ac != NULL && n->inflight > 0 && now - n->last_ms > STORE_CL_STALL_MS &&
            !(n->ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING))) {
            redisAsyncContext *ac = n->ac;
            log_warn("redis cluster node %s:%d did not answer for %d ms; dropping it",
                     cs->map.nodes[i].host, cs->map.nodes[i].port, STORE_CL_STALL_MS);
            node_forget(n);
            ac->data = NULL;
            cs->refresh_wanted = 1;
            redisAsyncFree(ac);     /* fails the units in flight there */
        }
    }
}

cstore *cstore_new(struct event_base *base, const kgc_config *cfg, store *owner)
{
    cstore *cs = xcalloc(1, sizeof *cs);
    struct timeval tv = {0, STORE_CL_TICK_MS * 1000};

    cs->base = base;
    cs->cfg = cfg;
    cs->owner = owner;
    cs->scripts = json_object();
    kgc_cluster_map_init(&cs->map);
    cs->tick = event_new(base, -1, EV_PERSIST, on_tick, cs);
    if (cs->tick == NULL || cs->scripts == NULL)
        oom("cstore_new");
    evtimer_add(cs->tick, &tv);
    load_map(cs);
    return cs;
}

void cstore_free(cstore *cs)
{
    if (cs == NULL)
        return;
    for (int i = 0; i < KGC_CLUSTER_NODES_MAX; i++)
        if (cs->node[i].ac != NULL) {
            redisAsyncContext *ac = cs->node[i].ac;
            node_forget(&cs->node[i]);
            ac->data = NULL;
            redisAsyncFree(ac);     /* units in flight there fail */
        }
    /* Units waiting on a timer: fail them. */
    while (cs->units != NULL) {
        cunit *u = cs->units;
        u->lost = 1;
        unit_finish(u);
    }
    event_free(cs->tick);
    json_decref(cs->scripts);
    free(cs);
}

int cstore_connected(const cstore *cs)
{
    return cs->loaded && cs->map.complete;
}

/* --- routing ----------------------------------------------------------- */

static int is(const char *a, const char *b)
{
    return a != NULL && strcasecmp(a, b) == 0;
}

static unsigned key_slot(json_t *k)
{
    return kgc_cluster_slot(json_string_value(k) ?: "", json_string_length(k));
}

/* The slot of a command: its first key's; 0 for a keyless one. */
static unsigned cmd_slot(json_t *c)
{
    const char *name = json_string_value(json_array_get(c, 0));

    if (is(name, "EVAL") || is(name, "EVALSHA")) {
        long nk = strtol(json_string_value(json_array_get(c, 2)) ?: "0", NULL, 10);
        return nk > 0 ? key_slot(json_array_get(c, 3)) : 0;
    }
    if (is(name, "PUBLISH") || is(name, "PING") || is(name, "WAIT") || is(name, "SCRIPT") ||
        is(name, "SCAN") || json_array_size(c) < 2)
        return 0;
    return key_slot(json_array_get(c, 1));
}

static void unit_link(cstore *cs, cunit *u)
{
    u->next = cs->units;
    if (cs->units)
        cs->units->prev = u;
    cs->units = u;
}

static cunit *unit_new(cstore *cs, cbatch *b, int tx, unsigned slot)
{
    cunit *u = xcalloc(1, sizeof *u);

    u->b = b;
    u->cs = cs;
    u->cmds = json_array();
    u->pos = json_array();
    u->tx = tx;
    u->slot = slot;
    u->node = -1;
    u->deadline = store_mono_ms() + STORE_CL_DEADLINE_MS;
    b->pending++;
    unit_link(cs, u);
    return u;
}

static void unit_add(cunit *u, json_t *cmd, size_t pos)
{
    json_array_append(u->cmds, cmd);
    json_array_append_new(u->pos, json_integer((json_int_t)pos));
}

static void batch_finish(cbatch *b)
{
    int ok = b->failed ? 0 : b->unacked ? STORE_UNACKED : 1;

    if (b->failed) {
        json_decref(b->out);
        b->out = NULL;
    }
    b->done(b->arg, ok, b->out);
    free(b);
}

static void unit_free(cunit *u)
{
    cstore *cs = u->cs;

    if (u->prev)
        u->prev->next = u->next;
    else if (cs->units == u)
        cs->units = u->next;
    if (u->next)
        u->next->prev = u->prev;
    if (u->timer)
        event_free(u->timer);
    json_decref(u->cmds);
    json_decref(u->pos);
    json_decref(u->keyidx);
    json_decref(u->replies);
    free(u);
}

/* --- replies ----------------------------------------------------------- */

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    cunit *u = arg;

    (void)fd;
    (void)what;
    if (u->timer_fail)
        unit_finish(u);
    else
        unit_send(u);
}

static void later(cunit *u, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};

    if (u->timer == NULL && (u->timer = evtimer_new(u->cs->base, on_timer, u)) == NULL)
        oom("evtimer_new");
    evtimer_add(u->timer, &tv);
}

static const char *err_text(json_t *r)
{
    return json_string_value(json_object_get(r, "$err"));
}

/* The reply that tells whether the unit was routed right: the command's,
 * or for a transaction the first queued command's error (EXEC then says
 * EXECABORT), else EXEC's. */
static json_t *routing_reply(cunit *u)
{
    size_t first = (size_t)(u->ask + u->load);

    if (!u->tx)
        return json_array_get(u->replies, first);
    for (size_t i = first; i < first + json_array_size(u->cmds) + 2; i++) {
        json_t *r = json_array_get(u->replies, i);
        if (err_text(r) != NULL)
            return r;
    }
    return NULL;
}

/* 1 when the unit was sent again (or will be). */
static int rerouted(cunit *u)
{
    cstore *cs = u->cs;
    json_t *r = routing_reply(u);
    const char *e = err_text(r);
    unsigned slot;
    kgc_hostport to;
    int kind, idx;

    if (e == NULL)
        return 0;
    if (!u->tx && !u->load && strncmp(e, "NOSCRIPT", 8) == 0 &&
        is(json_string_value(json_array_get(json_array_get(u->cmds, 0), 0)), "EVALSHA") &&
        json_object_get(cs->scripts,
                        json_string_value(json_array_get(json_array_get(u->cmds, 0), 1))) != NULL) {
        u->load = 1;                /* load it there, then the EVALSHA again */
        unit_send(u);
        return 1;
    }
    kind = kgc_cluster_classify(e, strlen(e), &slot, &to);
    if (kind == KGC_CE_OTHER || ++u->tries > STORE_CL_TRIES || store_mono_ms() > u->deadline)
        return 0;
    metrics_count(MX_REDIS_ERROR_REPLIES);
    switch (kind) {
    case KGC_CE_MOVED:
        if (kgc_cluster_map_move(&cs->map, slot, to.host, to.port) != 0)
            return 0;
        cs->refresh_wanted = 1;
        u->node = -1;
        u->ask = 0;
        unit_send(u);
        return 1;
    case KGC_CE_ASK:
        if (!u->tx && (idx = kgc_cluster_node(&cs->map, to.host, to.port)) >= 0) {
            u->node = idx;          /* once, on the importing node */
            u->ask = 1;
            unit_send(u);
            return 1;
        }
        u->node = -1;
        u->ask = 0;
        later(u, 20 * u->tries);    /* a transaction waits for the move to end */
        return 1;
    case KGC_CE_READONLY:
        cs->refresh_wanted = 1;
        /* fall through */
    default:
        u->node = -1;
        u->ask = 0;
        later(u, 20 * u->tries);
        return 1;
    }
}

static void merge_into(cunit *u, json_t *out, size_t p, json_t *r)
{
    json_t *cur = json_array_get(out, p);

    switch (u->merge) {
    case M_MGET:
        if (!json_is_array(r)) {
            json_array_set(out, p, r);      /* an error: the command's answer */
            return;
        }
        if (!json_is_array(cur) && !store_is_error(cur)) {
            json_array_set_new(out, p, json_array());
            cur = json_array_get(out, p);
        }
        if (!json_is_array(cur))
            return;
        for (size_t i = 0; i < json_array_size(u->keyidx); i++) {
            size_t at = (size_t)json_integer_value(json_array_get(u->keyidx, i));
            while (json_array_size(cur) <= at)
                json_array_append_new(cur, json_null());
            json_array_set(cur, at, json_array_get(r, i));
        }
        return;
    case M_SUM:
        if (!json_is_integer(r) || (!json_is_integer(cur) && !json_is_null(cur))) {
            if (!store_is_error(cur))
                json_array_set(out, p, r);
            return;
        }
        json_array_set_new(out, p, json_integer(json_integer_value(cur) + json_integer_value(r)));
        return;
    case M_SCAN: {
        /* [cursor, keys]: the cursor names the master it continues on. */
        int ms[KGC_CLUSTER_NODES_MAX], nm = masters(u->cs, ms);
        const char *c = json_string_value(json_array_get(r, 0));
        char next[48];
        if (!json_is_array(r) || c == NULL) {
            json_array_set(out, p, r);
            return;
        }
        if (strcmp(c, "0") != 0)
            snprintf(next, sizeof next, "%d.%s", u->scan_master, c);
        else if (u->scan_master + 1 < nm)
            snprintf(next, sizeof next, "%d.0", u->scan_master + 1);
        else
            snprintf(next, sizeof next, "0");
        json_array_set_new(out, p, json_pack("[s,O]", next, json_array_get(r, 1)));
        return;
    }
    case M_LOAD:
        if (json_is_string(r))      /* remembered for a node that lacks it later */
            json_object_set(u->cs->scripts, json_string_value(r),
                            json_array_get(json_array_get(u->cmds, 0), 2));
        if (json_is_null(cur) || store_is_error(r))
            json_array_set(out, p, r);
        return;
    default:
        json_array_set(out, p, r);
    }
}

static void unit_finish(cunit *u)
{
    cbatch *b = u->b;
    size_t first = (size_t)(u->ask + u->load), n = json_array_size(u->cmds);

    if (u->lost) {
        b->failed = 1;
    } else if (u->tx) {
        json_t *ex = json_array_get(u->replies, first + n + 1);
        if (!json_is_array(ex)) {
            log_err("transaction aborted: %.200s", err_text(routing_reply(u)) ?: "EXEC nil");
            b->failed = 1;
        } else {
            for (size_t i = 0; i < n; i++)
                json_array_set(b->out, (size_t)json_integer_value(json_array_get(u->pos, i)),
                               json_array_get(ex, i));
        }
    } else {
        for (size_t i = 0; i < n; i++)
            merge_into(u, b->out, (size_t)json_integer_value(json_array_get(u->pos, i)),
                       json_array_get(u->replies, first + i));
    }
    if (!u->lost && b->acks > 0) {
        json_t *w = json_array_get(u->replies, json_array_size(u->replies) - 1);
        if (!json_is_integer(w) || json_integer_value(w) < b->acks) {
            log_warn("WAIT %d: %s", b->acks, json_is_integer(w) ? "too few replicas confirmed"
                                                                  : "refused");
            b->unacked = 1;
        }
    }
    unit_free(u);
    if (--b->pending == 0)
        batch_finish(b);
}

static void on_unit_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    cslot *sl = priv;
    cunit *u = sl->u;
    cnode *n = ac->data;

    if (n != NULL) {
        n->last_ms = store_mono_ms();
        if (n->inflight > 0)
            n->inflight--;
    }
    if (reply == NULL)
        u->lost = 1;
    else
        json_array_set_new(u->replies, sl->i, store_reply_json(reply));
    free(sl);
    if (++u->got < u->expect)
        return;
    if (!u->lost && rerouted(u))
        return;
    unit_finish(u);
}

/* --- sending ----------------------------------------------------------- */

static int send_argv(redisAsyncContext *ac, cunit *u, size_t i, json_t *cmd)
{
    size_t n = json_array_size(cmd);
    const char **argv = xcalloc(n, sizeof *argv);
    size_t *argvlen = xcalloc(n, sizeof *argvlen);
    char (*nums)[24] = xcalloc(n, sizeof *nums);
    cslot *sl = xmalloc(sizeof *sl);
    int rc;

    for (size_t k = 0; k < n; k++) {
        json_t *a = json_array_get(cmd, k);
        if (json_is_string(a)) {
            argv[k] = json_string_value(a);
            argvlen[k] = json_string_length(a);
        } else {
            argvlen[k] = (size_t)snprintf(nums[k], sizeof nums[k], "%" JSON_INTEGER_FORMAT,
                                          json_integer_value(a));
            argv[k] = nums[k];
        }
    }
    sl->u = u;
    sl->i = i;
    rc = redisAsyncCommandArgv(ac, on_unit_reply, sl, (int)n, argv, argvlen);
    if (rc != REDIS_OK)
        free(sl);
    else
        ((cnode *)ac->data)->inflight++;
    free(argv);
    free(argvlen);
    free(nums);
    return rc == REDIS_OK ? 0 : -1;
}

/* Sends the unit (again): its round's commands, all to one node. */
static void unit_send(cunit *u)
{
    cstore *cs = u->cs;
    json_t *all = json_array();
    redisAsyncContext *ac;
    int idx = u->node;
    size_t sent = 0;

    if (idx < 0) {
        idx = cs->map.slot_node[u->slot];
        if (idx == KGC_CLUSTER_NONE)
            idx = -1;
    }
    ac = idx >= 0 ? node_ac(cs, idx) : NULL;
    if (ac == NULL) {
        /* No node for it now: try again after a pause, within the bound. */
        cs->refresh_wanted = 1;
        if (++u->tries > STORE_CL_TRIES || store_mono_ms() > u->deadline) {
            u->lost = 1;
            u->timer_fail = 1;
            later(u, 0);            /* unit_send never finishes a unit itself */
            goto out;
        }
        later(u, 50);
        goto out;
    }
    if (u->ask)
        json_array_append_new(all, json_pack("[s]", "ASKING"));
    if (u->load) {
        const char *sha = json_string_value(json_array_get(json_array_get(u->cmds, 0), 1));
        json_array_append_new(all, json_pack("[s,s,O]", "SCRIPT", "LOAD",
                                             json_object_get(cs->scripts, sha)));
    }
    if (u->tx)
        json_array_append_new(all, json_pack("[s]", "MULTI"));
    json_array_extend(all, u->cmds);
    if (u->tx)
        json_array_append_new(all, json_pack("[s]", "EXEC"));
    if (u->b->acks > 0) {
        char ch[KGC_PATH_MAX];
        snprintf(ch, sizeof ch, "%sdurable", cs->cfg->key_prefix);
        json_array_append_new(all, json_pack("[s,s,s]", "PUBLISH", ch, "1"));
        json_array_append_new(all, json_pack("[s,i,i]", "WAIT", u->b->acks,
                                             cs->cfg->replica_ack_timeout_ms));
    }
    json_decref(u->replies);
    u->replies = json_array();
    for (size_t i = 0; i < json_array_size(all); i++)
        json_array_append_new(u->replies, json_null());
    u->got = 0;
    u->expect = json_array_size(all);
    if (cs->node[idx].inflight == 0)
        cs->node[idx].last_ms = store_mono_ms();
    for (size_t i = 0; i < json_array_size(all); i++)
        if (send_argv(ac, u, i, json_array_get(all, i)) == 0)
            sent++;
        else
            break;
    if (sent < u->expect) {
        /* hiredis refused (out of memory): what was queued is answered;
         * drop the node so that it is, and fail the unit. */
        log_err("could not queue a command; dropping a redis cluster connection");
        u->lost = 1;
        u->expect = sent;
        if (sent == 0) {
            u->timer_fail = 1;
            later(u, 0);
        }
        redisAsyncDisconnect(ac);
    }
out:
    json_decref(all);
}

/* --- batches ----------------------------------------------------------- */

static int multikey(const char *name, enum merge *m)
{
    if (is(name, "MGET"))
        *m = M_MGET;
    else if (is(name, "DEL") || is(name, "EXISTS") || is(name, "UNLINK"))
        *m = M_SUM;
    else
        return 0;
    return 1;
}

/* The units of one batch being planned. */
typedef struct plan { cunit **u; size_t n, cap; } plan;

static void plan_add(plan *p, cunit *u)
{
    if (p->n == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 8;
        p->u = realloc(p->u, p->cap * sizeof *p->u);
        if (p->u == NULL)
            oom("realloc");
    }
    p->u[p->n++] = u;
}

/* The unit of this plan for slot (and kind), or NULL. from: the first
 * unit of the command being split (units of earlier commands stay theirs). */
static cunit *plan_find(const plan *p, size_t from, unsigned slot)
{
    for (size_t i = from; i < p->n; i++)
        if (p->u[i]->slot == slot && p->u[i]->node < 0)
            return p->u[i];
    return NULL;
}

/* A multi-key command whose keys span slots: one unit per slot. */
static void split_keys(cstore *cs, cbatch *b, json_t *c, size_t pos, enum merge m, plan *p)
{
    const char *name = json_string_value(json_array_get(c, 0));
    size_t from = p->n;

    for (size_t k = 1; k < json_array_size(c); k++) {
        unsigned slot = key_slot(json_array_get(c, k));
        cunit *cu = plan_find(p, from, slot);
        if (cu == NULL) {
            cu = unit_new(cs, b, 0, slot);
            cu->merge = m;
            cu->keyidx = json_array();
            json_array_append_new(cu->cmds, json_pack("[s]", name));
            json_array_append_new(cu->pos, json_integer((json_int_t)pos));
            plan_add(p, cu);
        }
        json_array_append(json_array_get(cu->cmds, 0), json_array_get(c, k));
        json_array_append_new(cu->keyidx, json_integer((json_int_t)(k - 1)));
    }
}

static int single_slot(json_t *c)
{
    unsigned s0 = key_slot(json_array_get(c, 1));

    for (size_t k = 2; k < json_array_size(c); k++)
        if (key_slot(json_array_get(c, k)) != s0)
            return 0;
    return 1;
}

static void plan_scan(cstore *cs, cbatch *b, json_t *c, size_t pos, plan *p)
{
    int ms[KGC_CLUSTER_NODES_MAX], nm = masters(cs, ms), m = 0;
    const char *cur = json_string_value(json_array_get(c, 1)) ?: "0";
    const char *dot = strchr(cur, '.');
    json_t *cmd = json_deep_copy(c);
    cunit *u;

    if (dot != NULL) {
        m = atoi(cur);
        json_array_set_new(cmd, 1, json_string(dot + 1));
    }
    if (m < 0 || m >= nm)           /* the masters changed under a walk: start over */
        m = 0;
    u = unit_new(cs, b, 0, 0);
    u->node = nm > 0 ? ms[m] : -1;
    u->merge = M_SCAN;
    u->scan_master = m;
    unit_add(u, cmd, pos);
    json_decref(cmd);
    plan_add(p, u);
}

int cstore_exec(cstore *cs, json_t *cmds, int transaction, int acks, store_done_fn done,
                void *arg)
{
    size_t n = json_array_size(cmds), i;
    plan p = {NULL, 0, 0};
    json_t *c;
    cbatch *b;
    enum merge m;

    if (!cstore_connected(cs) || n == 0)
        return -1;
    if (!store_cmds_ok(cmds)) {
        log_err("refusing a malformed command batch (a bug)");
        return -1;
    }
    b = xcalloc(1, sizeof *b);
    b->done = done;
    b->arg = arg;
    b->tx = transaction;
    b->acks = acks;
    b->out = json_array();
    for (i = 0; i < n; i++)
        json_array_append_new(b->out, json_null());
    json_array_foreach(cmds, i, c) {
        const char *name = json_string_value(json_array_get(c, 0));
        cunit *u;
        if (transaction) {
            /* One MULTI/EXEC per slot, in the order of their first commands. */
            unsigned slot = cmd_slot(c);
            if ((u = plan_find(&p, 0, slot)) == NULL) {
                u = unit_new(cs, b, 1, slot);
                plan_add(&p, u);
            }
            unit_add(u, c, i);
        } else if (is(name, "SCAN")) {
            plan_scan(cs, b, c, i, &p);
        } else if (is(name, "SCRIPT") && is(json_string_value(json_array_get(c, 1)), "LOAD")) {
            int ms[KGC_CLUSTER_NODES_MAX], nm = masters(cs, ms);
            for (int k = 0; k < nm; k++) {
                u = unit_new(cs, b, 0, 0);
                u->node = ms[k];
                u->merge = M_LOAD;
                unit_add(u, c, i);
                plan_add(&p, u);
            }
        } else if (multikey(name, &m) && json_array_size(c) > 2 && !single_slot(c)) {
            split_keys(cs, b, c, i, m, &p);
        } else {
            u = unit_new(cs, b, 0, cmd_slot(c));
            unit_add(u, c, i);
            plan_add(&p, u);
        }
    }
    metrics_count(MX_REDIS_BATCHES);
    if (b->pending == 0) {          /* SCRIPT LOAD with no master known */
        json_decref(b->out);
        free(b);
        free(p.u);
        return -1;
    }
    /* Nothing is answered before this returns: replies and timers run
     * from the loop. */
    for (i = 0; i < p.n; i++)
        unit_send(p.u[i]);
    free(p.u);
    return 0;
}

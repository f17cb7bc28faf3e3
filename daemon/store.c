/*
 * store.c - async Redis for the daemon (hiredis + its libevent adapter).
 */
#include "metrics.h"
#include "store_int.h"
#include "log.h"
#include "kgc_auth.h"
#include "kgc_sentinel.h"

#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define STORE_RETRY_MS 200
#define STORE_STALL_MS 3000
#define STORE_SENTINEL_MS 200      /* per sentinel connect and per reply, at reconnect */

struct store {
    struct event_base *base;
    const kgc_config *cfg;         /* borrowed, outlives the store */
    redisAsyncContext *ac;         /* NULL while disconnected */
    int up;                        /* connect callback said yes */
    struct event *retry;           /* reconnect timer */
    struct event *watchdog;        /* stall detector */
    long inflight;                 /* replies still expected */
    long long last_progress_ms;
    void (*connect_hook)(void *);
    void *connect_arg;
    /* Sentinel mode (cfg->nsentinels > 0): */
    kgc_hostport primary;          /* where ac points */
    int first;                     /* the sentinel that answered last */
    redisAsyncContext *watch;      /* SUBSCRIBE +switch-master on one sentinel */
    int watch_idx;                 /* which one */
    int authing;                   /* AUTH sent, not answered yet */
    cstore *cl;                    /* Redis Cluster: all of the above unused */
};

typedef struct batch {
    store_done_fn done;
    void *arg;
    json_t *replies;               /* one slot per command */
    size_t ncmds, pending;
    int failed, transaction;
    int acks;                      /* > 0: the last two commands are PUBLISH, WAIT acks */
    int unacked;                   /* WAIT answered fewer than acks */
} batch;

typedef struct slot { batch *b; size_t idx; } slot;

long long store_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int store_is_error(const json_t *j)
{
    return json_is_object(j) && json_object_get(j, "$err") != NULL;
}

json_t *store_reply_json(const redisReply *r)
{
    json_t *a;

    switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
        return json_stringn_nocheck(r->str, r->len);
    case REDIS_REPLY_INTEGER:
        return json_integer(r->integer);
    case REDIS_REPLY_ARRAY:
        a = json_array();
        for (size_t i = 0; i < r->elements; i++)
            json_array_append_new(a, store_reply_json(r->element[i]));
        return a;
    case REDIS_REPLY_ERROR:
        metrics_count(MX_REDIS_ERROR_REPLIES);
        return json_pack("{s:s%}", "$err", r->str, r->len);
    default:
        return json_null();
    }
}

static void schedule_retry(store *s)
{
    struct timeval tv = {0, STORE_RETRY_MS * 1000};
    evtimer_add(s->retry, &tv);
}

static void mark_up(store *s);
static void reconnect(store *s);

static void on_connect(const redisAsyncContext *ac, int status)
{
    store *s = ac->data;

    if (status != REDIS_OK) {
        metrics_count(MX_REDIS_CONNECT_FAILURES);
        log_warn("redis connect failed: %s", ac->errstr);
        s->ac = NULL;              /* hiredis frees the context */
        s->up = 0;
        schedule_retry(s);
        return;
    }
    if (s->authing)
        return;                     /* up once AUTH said yes (on_auth) */
    mark_up(s);
}

/* AUTH's reply (redis_user / redis_password_file): the server's text on a
 * refusal holds no secret; the password is never logged. */
static void on_auth(redisAsyncContext *ac, void *reply, void *priv)
{
    store *s = priv;
    redisReply *r = reply;

    if (r == NULL || s->ac != ac)
        return;                     /* the connection went first */
    s->authing = 0;
    if (r->type != REDIS_REPLY_STATUS) {
        metrics_count(MX_REDIS_CONNECT_FAILURES);
        log_warn("redis: AUTH refused: %.200s", r->type == REDIS_REPLY_ERROR ? r->str : "?");
        reconnect(s);
        return;
    }
    if (ac->c.flags & REDIS_CONNECTED)
        mark_up(s);
}

static void mark_up(store *s)
{
    s->up = 1;
    s->last_progress_ms = store_mono_ms();
    if (s->cfg->nsentinels > 0)
        log_info("redis connected to the primary %s:%d (from the sentinels)", s->primary.host,
                 s->primary.port);
    else
        log_info("redis connected");
    if (s->connect_hook != NULL)
        s->connect_hook(s->connect_arg);
}

void store_on_connect(store *s, void (*fn)(void *), void *arg)
{
    s->connect_hook = fn;
    s->connect_arg = arg;
    if (s->cl != NULL && cstore_connected(s->cl))
        fn(arg);                    /* the map was loaded in store_new */
}

void store_fire_connect(store *s)
{
    if (s->connect_hook != NULL)
        s->connect_hook(s->connect_arg);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    store *s = ac->data;

    if (s == NULL)
        return;
    metrics_count(MX_REDIS_DISCONNECTS);
    if (status != REDIS_OK)
        log_warn("redis connection lost: %s", ac->errstr);
    s->ac = NULL;
    s->up = 0;
    s->inflight = 0;
    schedule_retry(s);
}

/* --- Sentinel ----------------------------------------------------------
 *
 * The primary is looked up (kgc_sentinel_resolve: each sentinel in turn,
 * then ROLE on the answer) every time the connection is made, so a drop,
 * a READONLY reply (on_reply) and a +switch-master message (on_watch) all
 * lead to the same place: the connection is closed, on_disconnect
 * schedules a retry, the retry asks the sentinels again.
 *
 * The look-up is a bounded blocking call (STORE_SENTINEL_MS per connect
 * and per reply; at most (sentinels + 1) * 2 * 200 ms, in practice one
 * round trip to one sentinel and one to the primary, under 2 ms on a LAN).
 * It runs only when there is no store connection: every command is being
 * answered `unavailable` at that moment anyway, so blocking costs those
 * answers (and the console) at most that bound, and keeps one code path
 * shared with libkeygate and fsck instead of a second, async state
 * machine for a look-up made once per failover. */

/* Closes the store connection; the next one looks the primary up again.
 * hiredis calls on_disconnect only for a connection that was up: a context
 * still connecting (made after a first +switch-master, when the sentinels
 * send another) is freed without it, so the store forgets it and schedules
 * the retry here. (Without this, s->ac was left pointing at the freed
 * context: ASan, sentinel.failover, one run in about ten.) */
static void reconnect(store *s)
{
    redisAsyncContext *ac = s->ac;

    if (ac == NULL || (ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING)))
        return;
    if (!(ac->c.flags & REDIS_CONNECTED)) {
        s->ac = NULL;
        s->up = 0;
        s->inflight = 0;
        redisAsyncFree(ac);
        schedule_retry(s);
        return;
    }
    redisAsyncDisconnect(ac);           /* on_disconnect schedules the look-up */
}

static void on_watch(redisAsyncContext *ac, void *reply, void *priv)
{
    store *s = priv;
    redisReply *r = reply, *payload;
    char name[128];
    size_t n;

    (void)ac;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 3)
        return;
    payload = r->element[2];
    if (r->element[0]->type != REDIS_REPLY_STRING || strcmp(r->element[0]->str, "message") != 0 ||
        payload->type != REDIS_REPLY_STRING)
        return;
    /* "<master-name> <old-ip> <old-port> <new-ip> <new-port>" */
    n = strcspn(payload->str, " ");
    if (n >= sizeof name)
        return;
    memcpy(name, payload->str, n);
    name[n] = '\0';
    if (strcmp(name, s->cfg->sentinel_master) != 0)
        return;
    metrics_count(MX_REDIS_DISCONNECTS);
    log_warn("sentinel: +switch-master %.*s; re-resolving the primary", (int)payload->len,
             payload->str);
    reconnect(s);
}

static void on_watch_gone(const redisAsyncContext *ac, int status)
{
    store *s = ac->data;

    (void)status;
    if (s == NULL)
        return;
    s->watch = NULL;
    s->watch_idx = (s->watch_idx + 1) % s->cfg->nsentinels;   /* the next one next time */
}

static void on_watch_up(const redisAsyncContext *ac, int status)
{
    if (status != REDIS_OK)
        on_watch_gone(ac, status);      /* hiredis frees it */
}

/* Keeps one sentinel connection SUBSCRIBEd to +switch-master (called from
 * the watchdog tick, so a lost one is replaced within 250 ms). A switch
 * missed while it was down is still caught by the primary dropping us or
 * answering READONLY. */
static void watch_maintain(store *s)
{
    const kgc_hostport *hp;
    redisAsyncContext *ac;

    if (s->cfg->nsentinels == 0 || s->watch != NULL)
        return;
    hp = &s->cfg->sentinels[s->watch_idx];
    ac = redisAsyncConnect(hp->host, hp->port);
    if (ac == NULL)
        oom("redisAsyncConnect");
    if (ac->err) {
        redisAsyncFree(ac);
        s->watch_idx = (s->watch_idx + 1) % s->cfg->nsentinels;
        return;
    }
    ac->data = s;
    redisLibeventAttach(ac, s->base);
    redisAsyncSetConnectCallback(ac, on_watch_up);
    redisAsyncSetDisconnectCallback(ac, on_watch_gone);
    if (redisAsyncCommand(ac, on_watch, s, "SUBSCRIBE +switch-master") != REDIS_OK) {
        redisAsyncFree(ac);
        return;
    }
    s->watch = ac;
}

static void connect_now(store *s)
{
    redisAsyncContext *ac;

    if (s->cfg->nsentinels > 0) {
        char err[300];
        if (kgc_sentinel_resolve(s->cfg, STORE_SENTINEL_MS, &s->first, &s->primary, err,
                                 sizeof err) != 0) {
            metrics_count(MX_REDIS_CONNECT_FAILURES);
            log_warn("redis connect failed: %s", err);
            schedule_retry(s);
            return;
        }
        ac = redisAsyncConnect(s->primary.host, s->primary.port);
    } else if (s->cfg->redis_unix[0])
        ac = redisAsyncConnectUnix(s->cfg->redis_unix);
    else
        ac = redisAsyncConnect(s->cfg->redis_host, s->cfg->redis_port);
    if (ac == NULL)
        oom("redisAsyncConnect");
    if (ac->err) {
        metrics_count(MX_REDIS_CONNECT_FAILURES);
        log_warn("redis connect failed: %s", ac->errstr);
        redisAsyncFree(ac);
        schedule_retry(s);
        return;
    }
    ac->data = s;
    redisLibeventAttach(ac, s->base);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    s->ac = ac;
    s->authing = 0;
    {
        const char *argv[3];
        size_t argvlen[3];
        int n = kgc_auth_argv(s->cfg, argv, argvlen);
        if (n > 0 && redisAsyncCommandArgv(ac, on_auth, s, n, argv, argvlen) == REDIS_OK)
            s->authing = 1;
    }
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    connect_now(arg);
}

/* Drops a connection that stopped answering: redisAsyncFree calls every
 * pending callback with a NULL reply, which fails their batches. */
static void on_watchdog(evutil_socket_t fd, short what, void *arg)
{
    store *s = arg;

    (void)fd;
    (void)what;
    watch_maintain(s);
    if (s->ac != NULL && s->inflight > 0 &&
        store_mono_ms() - s->last_progress_ms > STORE_STALL_MS) {
        redisAsyncContext *ac = s->ac;
        log_warn("redis did not answer for %d ms; dropping the connection", STORE_STALL_MS);
        redisAsyncFree(ac);        /* on_disconnect schedules the retry */
    }
}

store *store_new(struct event_base *base, const kgc_config *cfg)
{
    store *s = xcalloc(1, sizeof *s);
    struct timeval tick = {0, 250 * 1000};

    s->base = base;
    s->cfg = cfg;
    if (cfg->ncluster > 0) {
        s->cl = cstore_new(base, cfg, s);
        return s;
    }
    s->retry = evtimer_new(base, on_retry, s);
    s->watchdog = event_new(base, -1, EV_PERSIST, on_watchdog, s);
    if (s->retry == NULL || s->watchdog == NULL)
        oom("event_new");
    evtimer_add(s->watchdog, &tick);
    connect_now(s);
    watch_maintain(s);
    return s;
}

void store_free(store *s)
{
    if (s == NULL)
        return;
    if (s->cl != NULL) {
        cstore_free(s->cl);
        free(s);
        return;
    }
    if (s->ac != NULL) {
        redisAsyncContext *ac = s->ac;
        s->ac = NULL;
        ac->data = NULL;
        redisAsyncFree(ac);
    }
    if (s->watch != NULL) {
        redisAsyncContext *ac = s->watch;
        s->watch = NULL;
        ac->data = NULL;
        redisAsyncFree(ac);
    }
    event_free(s->retry);
    event_free(s->watchdog);
    free(s);
}

int store_connected(const store *s)
{
    /* A context hiredis is tearing down (its callbacks may be running us)
     * accepts no more commands. */
    if (s->cl != NULL)
        return cstore_connected(s->cl);
    return s->ac != NULL && s->up &&
           !(s->ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING));
}

static void batch_finish(batch *b)
{
    json_t *out = NULL;
    int ok;

    if (b->acks > 0 && !b->failed) {
        /* WAIT's reply: how many replicas had the writes when it answered. */
        json_t *w = json_array_get(b->replies, b->ncmds - 1);
        b->unacked = !json_is_integer(w) || json_integer_value(w) < b->acks;
        if (b->unacked)
            log_warn("WAIT %d: %s", b->acks, json_is_integer(w) ? "too few replicas confirmed"
                                                                  : "refused");
        json_array_remove(b->replies, b->ncmds - 1);   /* WAIT */
        json_array_remove(b->replies, b->ncmds - 2);   /* PUBLISH */
        b->ncmds -= 2;
    }
    if (!b->failed) {
        if (b->transaction) {
            out = json_incref(json_array_get(b->replies, b->ncmds - 1));
            if (!json_is_array(out)) {   /* EXECABORT or nil: nothing ran */
                log_err("transaction aborted");
                json_decref(out);
                out = NULL;
                b->failed = 1;
            }
        } else {
            out = json_incref(b->replies);
        }
    }
    ok = b->failed ? 0 : b->unacked ? STORE_UNACKED : 1;
    b->done(b->arg, ok, out);
    json_decref(b->replies);
    free(b);
}

static void on_reply(redisAsyncContext *ac, void *r, void *priv)
{
    slot *sl = priv;
    batch *b = sl->b;
    store *s = ac->data;

    if (s != NULL) {
        s->last_progress_ms = store_mono_ms();
        if (s->inflight > 0)
            s->inflight--;
    }
    if (r == NULL)
        b->failed = 1;
    else
        json_array_set_new(b->replies, sl->idx, store_reply_json(r));
    if (r != NULL && ((redisReply *)r)->type == REDIS_REPLY_ERROR &&
        kgc_sentinel_demoted(((redisReply *)r)->str) && s != NULL && s->ac == ac &&
        !(ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING))) {
        /* A demoted primary: reconnect, which looks the primary up again.
         * Allowed from a callback: hiredis closes once the replies already
         * owed have been read. */
        log_warn("redis answered READONLY: the primary moved; reconnecting");
        reconnect(s);
    }
    free(sl);
    if (--b->pending == 0)
        batch_finish(b);
}

static int send_one(store *s, batch *b, size_t idx, json_t *cmd)
{
    size_t n = json_array_size(cmd);
    const char **argv;
    size_t *argvlen;
    char (*nums)[24];
    slot *sl;
    int rc = -1;

    if (n == 0 || n > 1u << 20)
        return -1;
    argv = xcalloc(n, sizeof *argv);
    argvlen = xcalloc(n, sizeof *argvlen);
    nums = xcalloc(n, sizeof *nums);
    for (size_t i = 0; i < n; i++) {
        json_t *a = json_array_get(cmd, i);
        if (json_is_string(a)) {
            argv[i] = json_string_value(a);
            argvlen[i] = json_string_length(a);
        } else if (json_is_integer(a)) {
            argvlen[i] = (size_t)snprintf(nums[i], sizeof nums[i], "%" JSON_INTEGER_FORMAT,
                                          json_integer_value(a));
            argv[i] = nums[i];
        } else {
            goto out;
        }
    }
    sl = xmalloc(sizeof *sl);
    sl->b = b;
    sl->idx = idx;
    if (redisAsyncCommandArgv(s->ac, on_reply, sl, (int)n, argv, argvlen) != REDIS_OK) {
        free(sl);
        goto out;
    }
    s->inflight++;
    rc = 0;
out:
    free(argv);
    free(argvlen);
    free(nums);
    return rc;
}

/* 1 if every command is a non-empty array of strings and integers. */
int store_cmds_ok(json_t *cmds)
{
    size_t i, k;
    json_t *c, *a;

    json_array_foreach(cmds, i, c) {
        if (!json_is_array(c) || json_array_size(c) == 0)
            return 0;
        json_array_foreach(c, k, a)
            if (!json_is_string(a) && !json_is_integer(a))
                return 0;
    }
    return 1;
}

static int exec_batch(store *s, json_t *cmds, int transaction, int acks, store_done_fn done,
                      void *arg)
{
    size_t n = json_array_size(cmds), total = n + (transaction ? 2 : 0) + (acks > 0 ? 2 : 0);
    size_t sent = 0;
    batch *b;
    json_t *multi = NULL, *exec = NULL, *sync = NULL, *wait = NULL;
    char ch[KGC_PATH_MAX];

    if (s->cl != NULL)
        return cstore_exec(s->cl, cmds, transaction, acks, done, arg);
    if (!store_connected(s) || n == 0)
        return -1;
    if (!store_cmds_ok(cmds)) {
        log_err("refusing a malformed command batch (a bug)");
        return -1;
    }
    if (s->inflight == 0)
        s->last_progress_ms = store_mono_ms();
    b = xcalloc(1, sizeof *b);
    b->done = done;
    b->arg = arg;
    b->ncmds = total;
    b->transaction = transaction;
    b->acks = acks;
    b->replies = json_array();
    for (size_t i = 0; i < total; i++)
        json_array_append_new(b->replies, json_null());
    /* Every command is queued before the first reply can be processed (we
     * are not inside hiredis' read handler's loop for this batch), so
     * pending only reaches 0 once all replies arrived. */
    b->pending = total;
    if (transaction) {
        multi = json_pack("[s]", "MULTI");
        exec = json_pack("[s]", "EXEC");
    }
    if (acks > 0) {
        /* WAIT covers this connection's own writes only; a batch that
         * wrote nothing (an idempotent replay: a credit's reference seen
         * before) must still not be acknowledged before the first try
         * reached the replicas, so a write comes first. */
        snprintf(ch, sizeof ch, "%sdurable", s->cfg->key_prefix);
        sync = json_pack("[s,s,s]", "PUBLISH", ch, "1");
        wait = json_pack("[s,i,i]", "WAIT", acks, s->cfg->replica_ack_timeout_ms);
    }
    if (transaction && send_one(s, b, sent, multi) == 0)
        sent++;
    for (size_t i = 0; i < n && sent == i + (transaction ? 1 : 0); i++)
        if (send_one(s, b, sent, json_array_get(cmds, i)) == 0)
            sent++;
    if (transaction && sent == n + 1 && send_one(s, b, sent, exec) == 0)
        sent++;
    if (acks > 0 && sent == total - 2 && send_one(s, b, sent, sync) == 0)
        sent++;
    if (acks > 0 && sent == total - 1 && send_one(s, b, sent, wait) == 0)
        sent++;
    json_decref(multi);
    json_decref(exec);
    json_decref(sync);
    json_decref(wait);
    metrics_count(MX_REDIS_BATCHES);
    if (sent == total)
        return 0;
    /* hiredis refused a command (out of memory): the commands queued are
     * still answered; a transaction left without its EXEC is discarded by
     * Redis when the connection is dropped, which we do now. */
    log_err("could not queue a command; dropping the redis connection");
    b->failed = 1;
    b->pending -= total - sent;
    if (b->pending == 0) {
        json_decref(b->replies);
        free(b);
        return -1;
    }
    redisAsyncDisconnect(s->ac);
    return 0;
}

int store_exec(store *s, json_t *cmds, int transaction, store_done_fn done, void *arg)
{
    return exec_batch(s, cmds, transaction, 0, done, arg);
}

int store_exec_acked(store *s, json_t *cmds, int transaction, store_done_fn done, void *arg)
{
    return exec_batch(s, cmds, transaction, s->cfg->min_replicas_ack, done, arg);
}

void store_script_sha(int ok, json_t *replies, char *sha, size_t n, const char *what)
{
    json_t *r = json_array_get(replies, 0);

    if (ok && json_is_string(r))
        snprintf(sha, n, "%s", json_string_value(r));
    else if (ok)
        log_err("%s script refused by redis: %.200s", what,
                json_string_value(json_object_get(r, "$err")) ?: "?");
    json_decref(replies);
}

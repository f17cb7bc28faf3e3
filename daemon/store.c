/*
 * store.c - async Redis for the daemon (hiredis + its libevent adapter).
 */
#include "metrics.h"
#include "store.h"
#include "log.h"

#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define STORE_RETRY_MS 200
#define STORE_STALL_MS 3000

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
};

typedef struct batch {
    store_done_fn done;
    void *arg;
    json_t *replies;               /* one slot per command */
    size_t ncmds, pending;
    int failed, transaction;
} batch;

typedef struct slot { batch *b; size_t idx; } slot;

static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int store_is_error(const json_t *j)
{
    return json_is_object(j) && json_object_get(j, "$err") != NULL;
}

static json_t *reply_to_json(const redisReply *r)
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
            json_array_append_new(a, reply_to_json(r->element[i]));
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
    s->up = 1;
    s->last_progress_ms = mono_ms();
    log_info("redis connected");
    if (s->connect_hook != NULL)
        s->connect_hook(s->connect_arg);
}

void store_on_connect(store *s, void (*fn)(void *), void *arg)
{
    s->connect_hook = fn;
    s->connect_arg = arg;
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

static void connect_now(store *s)
{
    redisAsyncContext *ac;

    if (s->cfg->redis_unix[0])
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
    if (s->ac != NULL && s->inflight > 0 &&
        mono_ms() - s->last_progress_ms > STORE_STALL_MS) {
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
    s->retry = evtimer_new(base, on_retry, s);
    s->watchdog = event_new(base, -1, EV_PERSIST, on_watchdog, s);
    if (s->retry == NULL || s->watchdog == NULL)
        oom("event_new");
    evtimer_add(s->watchdog, &tick);
    connect_now(s);
    return s;
}

void store_free(store *s)
{
    if (s == NULL)
        return;
    if (s->ac != NULL) {
        redisAsyncContext *ac = s->ac;
        s->ac = NULL;
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
    return s->ac != NULL && s->up &&
           !(s->ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING));
}

static void batch_finish(batch *b)
{
    json_t *out = NULL;

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
    b->done(b->arg, !b->failed, out);
    json_decref(b->replies);
    free(b);
}

static void on_reply(redisAsyncContext *ac, void *r, void *priv)
{
    slot *sl = priv;
    batch *b = sl->b;
    store *s = ac->data;

    if (s != NULL) {
        s->last_progress_ms = mono_ms();
        if (s->inflight > 0)
            s->inflight--;
    }
    if (r == NULL)
        b->failed = 1;
    else
        json_array_set_new(b->replies, sl->idx, reply_to_json(r));
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
static int cmds_ok(json_t *cmds)
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

int store_exec(store *s, json_t *cmds, int transaction, store_done_fn done, void *arg)
{
    size_t n = json_array_size(cmds), total = n + (transaction ? 2 : 0), sent = 0;
    batch *b;
    json_t *multi = NULL, *exec = NULL;

    if (!store_connected(s) || n == 0)
        return -1;
    if (!cmds_ok(cmds)) {
        log_err("refusing a malformed command batch (a bug)");
        return -1;
    }
    if (s->inflight == 0)
        s->last_progress_ms = mono_ms();
    b = xcalloc(1, sizeof *b);
    b->done = done;
    b->arg = arg;
    b->ncmds = total;
    b->transaction = transaction;
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
    if (transaction && send_one(s, b, sent, multi) == 0)
        sent++;
    for (size_t i = 0; i < n && sent == i + (transaction ? 1 : 0); i++)
        if (send_one(s, b, sent, json_array_get(cmds, i)) == 0)
            sent++;
    if (transaction && sent == total - 1 && send_one(s, b, sent, exec) == 0)
        sent++;
    json_decref(multi);
    json_decref(exec);
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

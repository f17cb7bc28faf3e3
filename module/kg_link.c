/*
 * kg_link.c - libkeygate's two Redis connections, on hiredis' async API.
 *
 * "main" carries the commands of requests; "sub" is SUBSCRIBEd to P inval.
 * hiredis asks for read/write interest through its ev hooks; we record it
 * in the link and, in host mode, forward it to hooks->watch(). The blocking
 * kg_authorize drives the very same contexts with poll(). Either way a
 * dropped connection is freed at once (hiredis runs every pending callback
 * with a NULL reply, which fails those requests with KG_BACKEND_ERROR) and
 * a new one is made on the next request.
 *
 * Sentinel (cfg.nsentinels > 0): the primary's address is looked up
 * (kgc_sentinel_resolve: the sentinels in turn, then ROLE) whenever a link
 * is opened after the primary was forgotten, which happens when the main
 * link is lost (dropped, timed out, closed by Redis: Sentinel closes the
 * clients of a primary it demotes) and when a write answers READONLY
 * or a money write is not confirmed by min_replicas_ack replicas, or a
 * sentinel announces +switch-master (the "watch" link, SUBSCRIBEd on one
 * sentinel: a demoted primary keeps accepting writes until the sentinels
 * reconfigure it, 10 s after a manual failover with Redis 7.0)
 * (ctx->relink, acted on at the top of the next request). The look-up is
 * a bounded blocking call in the blocking form (kgc_sentinel_resolve: at
 * most (sentinels + 1) * 2 * min(timeout_ms, KG_SENTINEL_MS), in practice
 * two LAN round trips once per failover). In host mode it never blocks:
 * the "probe" below asks the same questions on async connections driven
 * by the host's loop, and requests made before it has an answer wait
 * for it within their timeout_ms (kg_route.c, kg_route_unpark); once a
 * look-up has failed they fail at once with KG_BACKEND_ERROR, as they do
 * with Redis down. Either way a failed look-up is not repeated before
 * KG_RESOLVE_RETRY_MS.
 *
 * Redis Cluster (cfg.ncluster > 0, ctx->cmap): one command link per master,
 * opened when a request's slot first leads to it (kg_link_node), indexed
 * like the slot map's nodes; the map is loaded at kg_open (blocking,
 * bounded) and refreshed on "clq", one more link on which CLUSTER SLOTS is
 * asked (kg_link_cluster_maintain, top level, at most every
 * KG_CL_REFRESH_MS) whenever it may be wrong: a MOVED, a node's link
 * lost, CLUSTERDOWN, READONLY. The subscriber sits on one seed (Redis
 * Cluster broadcasts PUBLISH to every node) and moves to the next when
 * lost. Redirects themselves are followed per request in kg_flow.c.
 *
 * Redis ACL credentials (cfg.redis_password set, kgc_auth.h): every link
 * to a data node (not watch, not the probe's question to a sentinel) has
 * AUTH queued as its first command by link_open, so it goes out first once
 * connected. A refused AUTH marks the link (on_auth): the replies behind it
 * are then taken as a lost connection's (kg_link_trusted: KG_BACKEND_ERROR)
 * and the link is dropped at the top level (kg_link_drop_refused).
 *
 * Rule: a link is only dropped from the top level, never from inside a
 * hiredis callback, so hiredis never defers the free behind our back.
 */
#include "kg_internal.h"
#include "kgc_auth.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define KG_SENTINEL_MS 100          /* cap of one sentinel connect or reply */
#define KG_RESOLVE_RETRY_MS 100     /* a failed look-up is not repeated sooner */

int64_t kg_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t kg_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- interest: hiredis ev hooks ------------------------------------ */

static void tell_host(kg_link *l)
{
    kg_ctx *ctx = l->ctx;
    if (ctx->hooks != NULL && l->fd >= 0 && l->told != l->want) {
        l->told = l->want;
        ctx->hooks->watch(ctx->host, l->fd, l->want);
    }
}

static void ev_add_read(void *d)  { kg_link *l = d; l->want |= KG_EV_READ;   tell_host(l); }
static void ev_del_read(void *d)  { kg_link *l = d; l->want &= ~KG_EV_READ;  tell_host(l); }
static void ev_add_write(void *d) { kg_link *l = d; l->want |= KG_EV_WRITE;  tell_host(l); }
static void ev_del_write(void *d) { kg_link *l = d; l->want &= ~KG_EV_WRITE; tell_host(l); }

/* hiredis is freeing the connection (its fd is closed right after): forget
 * the link. For the subscriber this means messages may have been missed. */
static void ev_cleanup(void *d)
{
    kg_link *l = d;
    kg_ctx *ctx = l->ctx;

    if (ctx->hooks != NULL && l->fd >= 0 && l->told != 0)
        ctx->hooks->watch(ctx->host, l->fd, 0);
    l->ac = NULL;
    if (ctx->main == l) {
        ctx->main = NULL;
        ctx->primary.port = 0;          /* sentinel mode: ask again */
    }
    if (ctx->sub == l) {
        ctx->sub = NULL;
        kg_flow_sub_lost(ctx);
    }
    if (ctx->watch == l) {
        ctx->watch = NULL;
        ctx->watch_idx = (ctx->watch_idx + 1) % ctx->cfg.nsentinels;
    }
    if (l->node >= 0 && ctx->nodes[l->node] == l) {
        ctx->nodes[l->node] = NULL;
        ctx->cl_stale = 1;              /* a master gone? ask who serves its slots */
    }
    if (ctx->clq == l) {
        ctx->clq = NULL;
        ctx->clq_idx++;
        ctx->cl_inflight = 0;
        ctx->clq_bad = 0;
    }
    if (ctx->sub == l && ctx->cmap != NULL)
        ctx->sub_seed = (ctx->sub_seed + 1) % ctx->cfg.ncluster;
    if (ctx->probe == l) {
        ctx->probe = NULL;
        if (ctx->probe_state == KG_PR_ASK || ctx->probe_state == KG_PR_ROLE)
            ctx->probe_state = KG_PR_NEXT;
    }
    free(l);
}

/* AUTH's answer: anything but +OK marks the link (its fate is decided at
 * the top level, kg_link_drop_refused). */
static void on_auth(redisAsyncContext *ac, void *reply, void *priv)
{
    redisReply *r = reply;
    kg_link *l = ac->ev.data;

    (void)priv;
    if (r == NULL || l == NULL)
        return;                         /* going away: nothing to trust anyway */
    if (r->type != REDIS_REPLY_STATUS) {
        l->auth_refused = 1;
        l->ctx->auth_refused = 1;
    }
}

/* Queues AUTH with the config's credentials as l's first command (nothing
 * when there are none). Formatted and checked here as issue() does in
 * kg_flow.c, so that a failed allocation never leaves a command without
 * its callback; our copy of the password is wiped. 0 or -1. */
static int link_auth(kg_link *l)
{
    redisAsyncContext *ac = l->ac;
    const char *argv[3];
    size_t argvlen[3];
    char *cmd = NULL;
    int argc = kgc_auth_argv(&l->ctx->cfg, argv, argvlen), len, rc;

    if (argc == 0)
        return 0;
    if ((len = redisFormatCommandArgv(&cmd, argc, argv, argvlen)) < 0)
        return -1;
    rc = kg_link_put(ac, on_auth, NULL, cmd, (size_t)len);
    sodium_memzero(cmd, (size_t)len);
    redisFreeCommand(cmd);
    return rc;
}

int kg_link_trusted(const redisAsyncContext *ac)
{
    const kg_link *l = ac != NULL ? ac->ev.data : NULL;
    return l == NULL || !l->auth_refused;
}

void kg_link_drop_refused(kg_ctx *ctx)
{
    kg_link *ls[KG_LINKS_MAX];
    int n;

    if (!ctx->auth_refused)
        return;
    ctx->auth_refused = 0;
    n = kg_link_list(ctx, ls, KG_LINKS_MAX);
    for (int i = 0; i < n; i++)
        if (ls[i]->auth_refused)
            kg_link_drop(ctx, ls[i]);   /* ev_cleanup clears its place in ctx */
}

/* A new link: to a data node (auth: AUTH goes first) or to a sentinel
 * (auth 0: sentinels usually run without ACL users; kgc_auth.h). to NULL:
 * the store itself (the single node, the cluster's subscriber seed, or the
 * primary the sentinels name). */
static kg_link *link_open(kg_ctx *ctx, int is_sub, const kgc_hostport *to, int auth)
{
    redisAsyncContext *ac;
    kg_link *l;

    if (to != NULL) {
        ac = redisAsyncConnect(to->host, to->port);
    } else if (ctx->cmap != NULL) {
        const kgc_hostport *seed = &ctx->cfg.cluster[ctx->sub_seed % ctx->cfg.ncluster];
        ac = redisAsyncConnect(seed->host, seed->port);
    } else if (ctx->cfg.nsentinels > 0) {
        int64_t now = kg_mono_ms();
        char err[300];
        int t = ctx->cfg.timeout_ms < KG_SENTINEL_MS ? ctx->cfg.timeout_ms : KG_SENTINEL_MS;

        if (ctx->primary.port == 0) {
            if (ctx->resolve_failed != 0 && now - ctx->resolve_failed < KG_RESOLVE_RETRY_MS)
                return NULL;
            if (ctx->hooks != NULL) {   /* host mode: never block its loop */
                if (ctx->probe_state == KG_PR_IDLE) {
                    ctx->probe_state = KG_PR_NEXT;
                    ctx->probe_tried = 0;
                }
                return NULL;            /* kg_link_probe_maintain runs it */
            }
            if (kgc_sentinel_resolve(&ctx->cfg, t, &ctx->sentinel_first, &ctx->primary, err,
                                     sizeof err) != 0) {
                ctx->resolve_failed = now;
                ctx->primary.port = 0;
                return NULL;
            }
            ctx->resolve_failed = 0;
        }
        ac = redisAsyncConnect(ctx->primary.host, ctx->primary.port);
    } else if (ctx->cfg.redis_unix[0] != '\0')
        ac = redisAsyncConnectUnix(ctx->cfg.redis_unix);
    else
        ac = redisAsyncConnect(ctx->cfg.redis_host, ctx->cfg.redis_port);
    if (ac == NULL)
        return NULL;
    if (ac->err || (l = calloc(1, sizeof *l)) == NULL) {
        redisAsyncFree(ac);             /* no hooks set yet: nothing to undo */
        return NULL;
    }
    l->ctx = ctx;
    l->ac = ac;
    l->fd = ac->c.fd;
    l->is_sub = is_sub;
    l->node = -1;
    ac->ev.data = l;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    if (auth && link_auth(l) != 0) {
        redisAsyncFree(ac);             /* runs ev_cleanup, which frees l */
        return NULL;
    }
    return l;
}

int kg_link_resolving(const kg_ctx *ctx)
{
    return ctx->hooks != NULL && ctx->cfg.nsentinels > 0 && ctx->primary.port == 0 &&
           ctx->probe_state != KG_PR_IDLE;
}

int kg_link_main(kg_ctx *ctx)
{
    if (ctx->main != NULL)
        return 0;
    ctx->main = link_open(ctx, 0, NULL, 1);
    return ctx->main != NULL ? 0 : -1;
}

void kg_link_drop(kg_ctx *ctx, kg_link *l)
{
    (void)ctx;
    if (l != NULL && l->ac != NULL)
        redisAsyncFree(l->ac);          /* runs ev_cleanup, which frees l */
}

void kg_link_drop_all(kg_ctx *ctx)
{
    if (ctx->cmap != NULL) {
        for (int i = 0; i < KGC_CLUSTER_NODES_MAX; i++)
            kg_link_drop(ctx, ctx->nodes[i]);
        kg_link_drop(ctx, ctx->clq);
    }
    kg_link_drop(ctx, ctx->main);
    kg_link_drop(ctx, ctx->sub);
    kg_link_drop(ctx, ctx->watch);
    kg_link_drop(ctx, ctx->probe);
    ctx->probe_state = KG_PR_IDLE;
}

/* ---- cluster mode -------------------------------------------------- */

kg_link *kg_link_node(kg_ctx *ctx, int i)
{
    kg_link *l;

    if (i < 0 || i >= ctx->cmap->nnodes)
        return NULL;
    if (ctx->nodes[i] != NULL)
        return ctx->nodes[i];
    if ((l = link_open(ctx, 0, &ctx->cmap->nodes[i], 1)) == NULL) {
        ctx->cl_stale = 1;
        return NULL;
    }
    l->node = i;
    ctx->nodes[i] = l;
    if (ctx->hooks != NULL)
        tell_host(l);
    return l;
}

int kg_link_put(redisAsyncContext *ac, redisCallbackFn *fn, void *priv, const char *cmd,
                size_t len)
{
    size_t queued = sdslen((sds)ac->c.obuf);
    redisCallback *before = ac->replies.tail;

    if (redisAsyncFormattedCommand(ac, fn, priv, cmd, len) != REDIS_OK)
        return -1;
    if (ac->replies.tail == before || ac->replies.tail->fn != fn ||
        ac->replies.tail->privdata != priv) {
        sdssetlen((sds)ac->c.obuf, queued);     /* its bytes only: what was */
        ac->c.obuf[queued] = '\0';              /* queued before stays whole */
        return -1;
    }
    return 0;
}

/* kg_link_put with printf-style formatting (one checked allocation). */
static int put_fmt(redisAsyncContext *ac, redisCallbackFn *fn, void *priv, const char *fmt, ...)
{
    char *cmd = NULL;
    va_list ap;
    int len, rc;

    va_start(ap, fmt);
    len = redisvFormatCommand(&cmd, fmt, ap);
    va_end(ap);
    if (len < 0)
        return -1;
    rc = kg_link_put(ac, fn, priv, cmd, (size_t)len);
    redisFreeCommand(cmd);
    return rc;
}

static void on_slots(redisAsyncContext *ac, void *reply, void *priv)
{
    kg_ctx *ctx = priv;
    char err[200];

    if (reply == NULL || ctx->clq == NULL || ctx->clq->ac != ac || !kg_link_trusted(ac))
        return;                         /* going away: ev_cleanup moves on */
    ctx->cl_inflight = 0;
    if (kgc_cluster_map_apply(ctx->cmap, reply, ctx->clq_addr.host, err, sizeof err) != 0 ||
        !ctx->cmap->complete) {
        ctx->cl_stale = 1;              /* ask another node next time */
        ctx->clq_bad = 1;
    }
}

void kg_link_cluster_maintain(kg_ctx *ctx, int64_t now)
{
    int total, i;

    if (ctx->cmap == NULL)
        return;
    if (ctx->clq_bad || (ctx->cl_inflight && now - ctx->cl_asked > 2 * ctx->cfg.timeout_ms)) {
        kg_link_drop(ctx, ctx->clq);    /* unusable or too slow: the next candidate */
        if (ctx->clq != NULL)
            return;
    }
    if (ctx->cl_inflight || (!ctx->cl_stale && ctx->cmap->complete) ||
        (ctx->cl_asked != 0 && now - ctx->cl_asked < KG_CL_REFRESH_MS))
        return;
    ctx->cl_asked = now;
    if (ctx->clq == NULL) {
        /* The masters we know, then the seeds of the config, in turn. */
        total = ctx->cmap->nnodes + ctx->cfg.ncluster;
        i = ctx->clq_idx % total;
        ctx->clq_addr = i < ctx->cmap->nnodes ? ctx->cmap->nodes[i]
                                              : ctx->cfg.cluster[i - ctx->cmap->nnodes];
        if ((ctx->clq = link_open(ctx, 0, &ctx->clq_addr, 1)) == NULL) {
            ctx->clq_idx++;
            return;
        }
        if (ctx->hooks != NULL)
            tell_host(ctx->clq);
    }
    if (put_fmt(ctx->clq->ac, on_slots, ctx, "CLUSTER SLOTS") != 0) {
        kg_link_drop(ctx, ctx->clq);
        return;
    }
    ctx->cl_inflight = 1;
    ctx->cl_stale = 0;
}

/* ---- host mode's look-up of the primary ---------------------------- */

static void on_probe(redisAsyncContext *ac, void *reply, void *priv)
{
    kg_ctx *ctx = priv;
    redisReply *r = reply;

    if (r == NULL || ctx->probe == NULL || ctx->probe->ac != ac)
        return;                         /* going away: ev_cleanup moves on */
    if (!kg_link_trusted(ac)) {
        ctx->probe_state = KG_PR_NEXT;  /* the primary refused our AUTH */
        return;
    }
    if (ctx->probe_state == KG_PR_ASK) {
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
            r->element[0]->type == REDIS_REPLY_STRING && r->element[1]->type == REDIS_REPLY_STRING &&
            r->element[0]->len < sizeof ctx->cand.host) {
            memcpy(ctx->cand.host, r->element[0]->str, r->element[0]->len + 1);
            ctx->cand.port = atoi(r->element[1]->str);
            ctx->probe_state = ctx->cand.port > 0 && ctx->cand.port <= 65535 ? KG_PR_GOT
                                                                             : KG_PR_NEXT;
        } else {
            ctx->probe_state = KG_PR_NEXT;
        }
    } else if (ctx->probe_state == KG_PR_ROLE) {
        ctx->probe_state = r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
                                   r->element[0]->type == REDIS_REPLY_STRING &&
                                   strcmp(r->element[0]->str, "master") == 0
                               ? KG_PR_MASTER
                               : KG_PR_NEXT;
    }
}

/* Sends one step's command on a new probe link; 0 or -1. auth: to is the
 * data node asked ROLE (AUTH first), not a sentinel. */
static int probe_send(kg_ctx *ctx, const kgc_hostport *to, int auth, int64_t now,
                      const char *fmt, const char *arg)
{
    int t = ctx->cfg.timeout_ms < KG_SENTINEL_MS ? ctx->cfg.timeout_ms : KG_SENTINEL_MS;

    ctx->probe = link_open(ctx, 0, to, auth);
    if (ctx->probe == NULL)
        return -1;
    if (put_fmt(ctx->probe->ac, on_probe, ctx, fmt, arg) != 0) {
        kg_link_drop(ctx, ctx->probe);
        return -1;
    }
    ctx->probe_deadline = now + 2 * t;  /* connect + reply */
    return 0;
}

/* The look-up's state machine, run only from the top level (a callback
 * only moves probe_state on): each sentinel in turn from the one that
 * answered last, then ROLE on the address it gave, as kgc_sentinel.c does
 * with blocking calls. */
void kg_link_probe_maintain(kg_ctx *ctx, int64_t now)
{
    for (int guard = 0; guard < 2 * KGC_SENTINELS_MAX + 2; guard++) {
        switch (ctx->probe_state) {
        case KG_PR_IDLE:
            return;
        case KG_PR_ASK:
        case KG_PR_ROLE:
            if (now < ctx->probe_deadline)
                return;
            ctx->probe_state = KG_PR_NEXT;      /* too slow: the next one */
            break;
        case KG_PR_GOT:
            kg_link_drop(ctx, ctx->probe);
            ctx->probe_state = KG_PR_ROLE;
            if (probe_send(ctx, &ctx->cand, 1, now, "ROLE", NULL) != 0)
                ctx->probe_state = KG_PR_NEXT;
            break;
        case KG_PR_MASTER:
            kg_link_drop(ctx, ctx->probe);
            ctx->primary = ctx->cand;
            ctx->sentinel_first = ctx->probe_at;
            ctx->resolve_failed = 0;
            ctx->probe_state = KG_PR_IDLE;
            if (ctx->sub == NULL)
                ctx->sub_started = 0;   /* subscribe now, not after KG_SUB_RETRY_MS */
            return;
        case KG_PR_NEXT:
            kg_link_drop(ctx, ctx->probe);
            if (ctx->probe_tried >= ctx->cfg.nsentinels) {
                ctx->resolve_failed = now;
                ctx->probe_state = KG_PR_IDLE;
                return;
            }
            ctx->probe_at = (ctx->sentinel_first + ctx->probe_tried++) % ctx->cfg.nsentinels;
            ctx->probe_state = KG_PR_ASK;
            if (probe_send(ctx, &ctx->cfg.sentinels[ctx->probe_at], 0, now,
                           "SENTINEL get-master-addr-by-name %s", ctx->cfg.sentinel_master) != 0)
                ctx->probe_state = KG_PR_NEXT;
            break;
        }
    }
}

int64_t kg_link_probe_deadline(const kg_ctx *ctx)
{
    switch (ctx->probe_state) {
    case KG_PR_ASK:
    case KG_PR_ROLE:
        return ctx->probe_deadline;
    case KG_PR_IDLE:
        return -1;
    default:
        return 0;                       /* a step to take now */
    }
}

void kg_link_relink(kg_ctx *ctx)
{
    if (!ctx->relink)
        return;
    ctx->relink = 0;
    kg_link_drop(ctx, ctx->main);
    kg_link_drop(ctx, ctx->sub);        /* the subscriber follows the primary too */
    ctx->primary.port = 0;
}

/* ---- the subscriber ------------------------------------------------ */

static void on_sub(redisAsyncContext *ac, void *reply, void *priv)
{
    kg_ctx *ctx = priv;
    redisReply *r = reply, *kind, *payload;

    if (r == NULL || ctx->sub == NULL || ctx->sub->ac != ac || !kg_link_trusted(ac))
        return;                         /* going away: ev_cleanup does the rest */
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 3)
        return;
    kind = r->element[0];
    payload = r->element[2];
    if (kind->type != REDIS_REPLY_STRING)
        return;
    if (strcmp(kind->str, "subscribe") == 0) {
        ctx->sub_ok = 1;
        kg_lease_sub_back(ctx);         /* debit leased: drop what an outage kept */
    }
    else if (strcmp(kind->str, "message") == 0 && payload->type == REDIS_REPLY_STRING)
        kg_flow_inval(ctx, payload->str, payload->len);
}

static void on_watch(redisAsyncContext *ac, void *reply, void *priv)
{
    kg_ctx *ctx = priv;
    redisReply *r = reply, *payload;
    size_t n;

    if (r == NULL || ctx->watch == NULL || ctx->watch->ac != ac)
        return;
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 3 ||
        r->element[0]->type != REDIS_REPLY_STRING || strcmp(r->element[0]->str, "message") != 0)
        return;
    payload = r->element[2];            /* "<name> <old-ip> <old-port> <new-ip> <new-port>" */
    if (payload->type != REDIS_REPLY_STRING)
        return;
    n = strlen(ctx->cfg.sentinel_master);
    if (payload->len > n && payload->str[n] == ' ' &&
        memcmp(payload->str, ctx->cfg.sentinel_master, n) == 0)
        ctx->relink = 1;
}

/* Sentinel mode: keeps one sentinel connection SUBSCRIBEd to
 * +switch-master, trying the next sentinel after a failure. */
static void watch_maintain(kg_ctx *ctx, int64_t now)
{
    if (ctx->cfg.nsentinels == 0 || ctx->watch != NULL ||
        (ctx->watch_started != 0 && now - ctx->watch_started < KG_SUB_RETRY_MS))
        return;
    ctx->watch_started = now;
    /* A sentinel: no AUTH (sentinels usually run without ACL users). */
    ctx->watch = link_open(ctx, 0, &ctx->cfg.sentinels[ctx->watch_idx], 0);
    if (ctx->watch == NULL) {
        ctx->watch_idx = (ctx->watch_idx + 1) % ctx->cfg.nsentinels;
        return;
    }
    if (redisAsyncCommand(ctx->watch->ac, on_watch, ctx, "SUBSCRIBE +switch-master") != REDIS_OK)
        kg_link_drop(ctx, ctx->watch);
}

/* Keeps the subscription alive: reconnects it (at most every
 * KG_SUB_RETRY_MS) and drops one that was not confirmed in time. */
void kg_link_sub_maintain(kg_ctx *ctx, int64_t now)
{
    kg_link_drop_refused(ctx);
    kg_link_cluster_maintain(ctx, now);
    watch_maintain(ctx, now);
    kg_link_probe_maintain(ctx, now);
    if (ctx->sub != NULL) {
        if (!ctx->sub_ok && now - ctx->sub_started > KG_SUB_GRACE_MS)
            kg_link_drop(ctx, ctx->sub);
        return;
    }
    if (ctx->sub_started != 0 && now - ctx->sub_started < KG_SUB_RETRY_MS)
        return;
    ctx->sub_started = now;
    ctx->sub_ok = 0;
    ctx->sub = link_open(ctx, 1, NULL, 1);
    if (ctx->sub == NULL)
        return;
    if (redisAsyncCommand(ctx->sub->ac, on_sub, ctx, "SUBSCRIBE %b",
                          ctx->channel, strlen(ctx->channel)) != REDIS_OK)
        kg_link_drop(ctx, ctx->sub);
}

/* ---- I/O ----------------------------------------------------------- */

/* A write to a connection Redis has closed raises SIGPIPE, which would
 * kill a host that did not ignore it. Unless the process ignores SIGPIPE
 * (nginx does; looked up once a second), block it in this thread around
 * the write and swallow one we caused. */
static void guarded_write(kg_ctx *ctx, redisAsyncContext *ac)
{
    int64_t now = kg_mono_ms();
    sigset_t pipe_set, old, pend;
    int was_pending;

    if (ctx->pipe_checked == 0 || now - ctx->pipe_checked >= 1000) {
        struct sigaction sa;
        ctx->pipe_ignored = sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_IGN;
        ctx->pipe_checked = now;
    }
    if (ctx->pipe_ignored) {
        redisAsyncHandleWrite(ac);
        return;
    }
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    sigemptyset(&pend);
    sigpending(&pend);
    was_pending = sigismember(&pend, SIGPIPE);
    redisAsyncHandleWrite(ac);
    if (!was_pending) {
        sigemptyset(&pend);
        sigpending(&pend);
        if (sigismember(&pend, SIGPIPE)) {
            struct timespec zero = {0, 0};
            while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR)
                ;
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

static kg_link *link_by_fd(kg_ctx *ctx, int fd)
{
    if (ctx->main != NULL && ctx->main->fd == fd)
        return ctx->main;
    if (ctx->sub != NULL && ctx->sub->fd == fd)
        return ctx->sub;
    if (ctx->watch != NULL && ctx->watch->fd == fd)
        return ctx->watch;
    if (ctx->probe != NULL && ctx->probe->fd == fd)
        return ctx->probe;
    if (ctx->cmap != NULL) {
        if (ctx->clq != NULL && ctx->clq->fd == fd)
            return ctx->clq;
        for (int i = 0; i < ctx->cmap->nnodes; i++)
            if (ctx->nodes[i] != NULL && ctx->nodes[i]->fd == fd)
                return ctx->nodes[i];
    }
    return NULL;
}

void kg_link_handle(kg_ctx *ctx, int fd, int events)
{
    kg_link *l = link_by_fd(ctx, fd);

    if (l != NULL && (events & KG_EV_WRITE))
        guarded_write(ctx, l->ac);
    l = link_by_fd(ctx, fd);            /* the write may have dropped it */
    if (l != NULL && (events & KG_EV_READ))
        redisAsyncHandleRead(l->ac);
}

void kg_link_write_now(kg_ctx *ctx)
{
    kg_link *l = ctx->main;
    if (l != NULL && (l->want & KG_EV_WRITE) && (l->ac->c.flags & REDIS_CONNECTED))
        guarded_write(ctx, l->ac);
    if (ctx->cmap == NULL)
        return;
    for (int i = 0; i < ctx->cmap->nnodes; i++) {
        l = ctx->nodes[i];
        if (l != NULL && (l->want & KG_EV_WRITE) && (l->ac->c.flags & REDIS_CONNECTED))
            guarded_write(ctx, l->ac);  /* may drop it: ev_cleanup clears nodes[i] */
    }
}

/* Every link there is: the four fixed ones, then (cluster mode) clq and
 * the node links. Returns how many were put in ls (at most max). */
static int all_links(kg_ctx *ctx, kg_link **ls, int max)
{
    kg_link *fixed[KG_NLINKS + 1] = {ctx->main, ctx->sub, ctx->watch, ctx->probe, ctx->clq};
    int n = 0;

    for (int i = 0; i < KG_NLINKS + 1 && n < max; i++)
        if (fixed[i] != NULL)
            ls[n++] = fixed[i];
    if (ctx->cmap != NULL)
        for (int i = 0; i < ctx->cmap->nnodes && n < max; i++)
            if (ctx->nodes[i] != NULL)
                ls[n++] = ctx->nodes[i];
    return n;
}

int kg_link_list(kg_ctx *ctx, kg_link **ls, int max)
{
    return all_links(ctx, ls, max);
}

void kg_link_poll(kg_ctx *ctx, int timeout_ms)
{
    struct pollfd pf[KG_LINKS_MAX];
    int want[KG_LINKS_MAX], n = 0;
    kg_link *ls[KG_LINKS_MAX];
    int nls = all_links(ctx, ls, KG_LINKS_MAX);

    for (int i = 0; i < nls; i++) {
        kg_link *l = ls[i];
        if (l == NULL || l->fd < 0 || l->want == 0)
            continue;
        pf[n].fd = l->fd;
        pf[n].events = (short)(((l->want & KG_EV_READ) ? POLLIN : 0) |
                               ((l->want & KG_EV_WRITE) ? POLLOUT : 0));
        pf[n].revents = 0;
        want[n] = l->want;
        n++;
    }
    if (n == 0) {
        if (timeout_ms > 0)
            poll(NULL, 0, timeout_ms);
        return;
    }
    if (poll(pf, (nfds_t)n, timeout_ms) <= 0)
        return;
    for (int i = 0; i < n; i++) {
        int ev = 0;
        if (pf[i].revents & (POLLERR | POLLHUP | POLLNVAL))
            ev = want[i];               /* let hiredis find out what broke */
        if (pf[i].revents & POLLIN)
            ev |= KG_EV_READ;
        if (pf[i].revents & POLLOUT)
            ev |= KG_EV_WRITE;
        if (ev != 0)
            kg_link_handle(ctx, pf[i].fd, ev);
    }
}

void kg_link_notify_all(kg_ctx *ctx)
{
    kg_link *ls[KG_LINKS_MAX];
    int n = all_links(ctx, ls, KG_LINKS_MAX);
    for (int i = 0; i < n; i++)
        tell_host(ls[i]);
}

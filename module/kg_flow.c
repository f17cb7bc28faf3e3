/*
 * kg_flow.c - one request's way through libkeygate.
 *
 *   start ──► token well-formed? ──no──► KG_TOKEN_MALFORMED (no store, no malloc)
 *     │
 *   GET P catalog (only when the ctx has none)
 *     │
 *     ├─ cache hit (warm) ─► key revoked / user unassigned / expired? ──► refuse
 *     │                      service, model, params, policy ──► refuse, or
 *     │                      EVALSHA quota | debit | hold | settle
 *     │
 *     └─ cache miss (cold) ─► EVALSHA cold on the token's team slot: resolves
 *                             P {t:T}:tok:<hash>, reads the key document,
 *                             checks as the warm path does, runs the same
 *                             money body; returns the document (cache put)
 *        [SCRIPT LOAD first / on NOSCRIPT]
 *
 *   [WAIT min_replicas_ack, after a money write, when configured]
 *
 * Redis Cluster (ctx->cmap): each command goes to the master of its first
 * key's slot (every key of a request is in the team's slot; the catalog in
 * its own), formatted once and kept so that MOVED (patch the slot, refresh
 * the map, resend), ASK (ASKING + resend on the target), TRYAGAIN,
 * CLUSTERDOWN, LOADING and READONLY (resend after KG_CL_RETRY_MS) are
 * followed up to KG_CL_REDIRECTS times, never past the deadline the first
 * send set. A command whose connection drops is not resent: whether it ran
 * is unknown (the caller's retry with its request id is what is safe).
 *
 * The catalog checks (service, model, price) are made in C either way: the
 * cold script gets their outcome and the price as arguments.
 *
 * Each step puts at most one command on the wire for the request and
 * continues from that command's reply callback. The blocking kg_authorize
 * and the host-driven form run exactly this code; only who waits differs.
 * A request that finishes here is queued on ctx->doneq (host mode) or
 * picked up by the blocking driver; the host's done() is called only from
 * kg_flow_deliver, never from inside a hiredis callback.
 */
#include "kg_internal.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void kg_result_init(kg_result *r)
{
    memset(r, 0, sizeof *r);
    r->status = KG_BACKEND_ERROR;
    r->balance_micros = -1;
}

void kg_hold_init(kg_hold *h)
{
    memset(h, 0, sizeof *h);
    h->available_micros = -1;
}

void kg_hold_out(kg_hold *dst, size_t hsize, const kg_hold *src)
{
    if (dst == NULL || hsize == 0)
        return;
    memset(dst, 0, hsize);
    memcpy(dst, src, hsize < sizeof *src ? hsize : sizeof *src);
}

static void copy_id(char *dst, const char *src)
{
    size_t n = strnlen(src, KG_ID_LEN - 1);     /* snprintf's truncation, without its cost */

    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* ---- lists ---------------------------------------------------------- */

static void list_unlink(kg_pending *p)
{
    kg_ctx *ctx = p->ctx;

    if (p->list == KG_L_INFLIGHT) {
        if (p->prev != NULL)
            p->prev->next = p->next;
        else
            ctx->inflight = p->next;
        if (p->next != NULL)
            p->next->prev = p->prev;
    } else if (p->list == KG_L_DONE) {
        if (p->prev != NULL)
            p->prev->next = p->next;
        else
            ctx->doneq = p->next;
        if (p->next != NULL)
            p->next->prev = p->prev;
        else
            ctx->doneq_tail = p->prev;
    }
    p->prev = p->next = NULL;
    p->list = KG_L_NONE;
}

static void list_inflight(kg_pending *p)
{
    kg_ctx *ctx = p->ctx;

    if (p->list == KG_L_INFLIGHT)
        return;
    list_unlink(p);
    p->next = ctx->inflight;
    if (p->next != NULL)
        p->next->prev = p;
    ctx->inflight = p;
    p->list = KG_L_INFLIGHT;
}

static void list_done(kg_pending *p)
{
    kg_ctx *ctx = p->ctx;

    list_unlink(p);
    p->prev = ctx->doneq_tail;
    if (ctx->doneq_tail != NULL)
        ctx->doneq_tail->next = p;
    else
        ctx->doneq = p;
    ctx->doneq_tail = p;
    p->list = KG_L_DONE;
}

void kg_pending_free(kg_pending *p)
{
    if (p == NULL)
        return;
    list_unlink(p);
    kg_entry_unref(p->ent);
    free(p->cmd);                       /* the command kept for a cluster resend */
    p->cmd = NULL;
    if (p->ctx->spare == NULL && !p->ctx->closing) {
        p->ctx->spare = p;              /* reused by the next kg_flow_start */
        return;
    }
    free(p->params);
    free(p);
}

/* A zeroed request, the context's spare one when there is one (its params
 * array kept), else a new one; NULL on OOM. */
static kg_pending *pending_new(kg_ctx *ctx)
{
    kg_pending *p = ctx->spare;
    kg_param *params;
    size_t cap;

    if (p == NULL)
        return calloc(1, sizeof *p);
    ctx->spare = NULL;
    params = p->params;
    cap = p->params_cap;
    memset(p, 0, sizeof *p);
    p->params = params;
    p->params_cap = cap;
    return p;
}

void kg_flow_free_spare(kg_ctx *ctx)
{
    if (ctx->spare != NULL) {
        free(ctx->spare->params);
        free(ctx->spare);
        ctx->spare = NULL;
    }
}

static void finish(kg_pending *p, kg_status s)
{
    if (s == KG_BACKEND_ERROR)
        p->ctx->stats.backend_errors++;
    p->r.status = s;
    if (s != KG_OK)
        p->r.cost_micros = 0;
    p->finished = 1;
    kg_entry_unref(p->ent);
    p->ent = NULL;
    if (p->blocking)
        list_unlink(p);
    else
        list_done(p);
}

/* ---- commands ------------------------------------------------------- */

static void on_reply(redisAsyncContext *ac, void *reply, void *priv);

/* Puts a command whose reply nobody waits for (it goes to no callback) on
 * ac. hiredis 0.14.1 can queue a command without its reply slot when an
 * allocation fails (see issue()); such a command is taken back out of the
 * output buffer. 0 or -1 (nothing queued). */
static int fire(redisAsyncContext *ac, int argc, const char **argv)
{
    size_t queued = sdslen((sds)ac->c.obuf);
    redisCallback *before = ac->replies.tail;
    char *cmd = NULL;
    int len = redisFormatCommandArgv(&cmd, argc, argv, NULL), rc;

    if (len < 0)
        return -1;
    rc = redisAsyncFormattedCommand(ac, NULL, NULL, cmd, (size_t)len);
    free(cmd);
    if (rc != REDIS_OK)
        return -1;
    if (ac->replies.tail == before || ac->replies.tail->fn != NULL) {
        sdssetlen((sds)ac->c.obuf, queued);
        ac->c.obuf[queued] = '\0';
        return -1;
    }
    return 0;
}

/* Cluster mode: a script just loaded on one node is sent to every other
 * node of the map as well, answers unawaited, so that the first request
 * each of them serves does not meet NOSCRIPT (two more round trips). A
 * node that comes later, or restarts, still answers NOSCRIPT once, which
 * loads it there (on_eval). */
static void load_everywhere(kg_ctx *ctx, int script, int loaded_on)
{
    const char *argv[3] = {"SCRIPT", "LOAD", kg_script_text[script]};

    for (int i = 0; i < ctx->cmap->nnodes; i++) {
        kg_link *l;
        if (i != loaded_on && (l = kg_link_node(ctx, i)) != NULL)
            (void)fire(l->ac, 3, argv);   /* best effort: NOSCRIPT still loads it */
    }
}

/* Cluster mode: puts p's formatted command on node's link (node < 0: the
 * master of p->slot by the map), after ASKING when p->asking. 0 or -1. */
static int cluster_send(kg_pending *p, int node)
{
    kg_ctx *ctx = p->ctx;
    redisAsyncContext *ac;
    size_t queued;
    kg_link *l;
    int rc;

    if (node < 0 && (node = ctx->cmap->slot_node[p->slot]) == KGC_CLUSTER_NONE) {
        ctx->cl_stale = 1;
        return -1;
    }
    if ((l = kg_link_node(ctx, node)) == NULL)
        return -1;
    ac = l->ac;
    queued = sdslen((sds)ac->c.obuf);
    if (p->asking) {
        static const char *asking[1] = {"ASKING"};
        if (fire(ac, 1, asking) != 0)
            return -1;
    }
    rc = redisAsyncFormattedCommand(ac, on_reply, p, p->cmd, p->cmdlen);
    if (rc == REDIS_OK && (ac->replies.tail == NULL || ac->replies.tail->privdata != p)) {
        sdssetlen((sds)ac->c.obuf, queued);   /* ASKING too: its reply slot is then */
        ac->c.obuf[queued] = '\0';            /* a NULL-callback one with no command */
        rc = REDIS_ERR;
    }
    if (rc != REDIS_OK)
        return -1;
    p->node = node;
    p->outstanding = 1;
    p->retry_at = 0;
    list_inflight(p);
    return 0;
}

/* Cluster mode: the slot of the team's keys (all of them share its tag). */
static void team_slot(kg_pending *p, const char *team)
{
    char tag[KGC_ID_MAX + 8];
    int n;

    /* every key of the team carries the tag {t:<team>}: its slot is the tag's */
    if (p->ctx->cmap != NULL && (n = snprintf(tag, sizeof tag, "{t:%s}", team)) > 0 &&
        (size_t)n < sizeof tag)
        p->slot = kgc_cluster_slot(tag, (size_t)n);
}

/* Cluster mode: issue()'s second half. The command's slot is its first
 * key's (EVALSHA with keys, GET); a command without a key (SCRIPT LOAD,
 * WAIT, PUBLISH) goes where p's last one went. */
static void cluster_issue(kg_pending *p, int step, int argc, const char **argv)
{
    int len, node;
    char *cmd = NULL;

    if ((len = redisFormatCommandArgv(&cmd, argc, argv, NULL)) < 0) {
        finish(p, KG_BACKEND_ERROR);
        return;
    }
    free(p->cmd);
    p->cmd = cmd;
    p->cmdlen = (size_t)len;
    if (strcmp(argv[0], "EVALSHA") == 0 && argc > 3 && strcmp(argv[2], "0") != 0)
        p->slot = kgc_cluster_slot(argv[3], strlen(argv[3]));
    else if (strcmp(argv[0], "GET") == 0 && argc == 2)
        p->slot = kgc_cluster_slot(argv[1], strlen(argv[1]));
    p->asking = 0;
    p->redirects = 0;
    p->step = step;
    p->deadline = kg_mono_ms() + p->ctx->cfg.timeout_ms;
    /* WAIT counts the replicas that have this connection's writes: the
     * node the write went to, whatever the map says since. A SCRIPT LOAD
     * after NOSCRIPT goes to the node that lacked the script: during a
     * slot move that is the importing node an ASK led to, not the one the
     * map names (which has the script: the load there would change nothing
     * and the resend meet NOSCRIPT again). */
    node = step == KG_ST_WAIT || step == KG_ST_SYNC || (step == KG_ST_LOAD && p->load_here)
               ? p->node : -1;
    p->load_here = 0;
    if (cluster_send(p, node) != 0)
        finish(p, KG_BACKEND_ERROR);
}

/* Puts one command on the main connection for p (connecting first if
 * needed) and starts its round-trip deadline; fails p if it cannot.
 *
 * hiredis 0.14.1 does not report every allocation failure of an async
 * command: redisAsyncCommandArgv leaks its buffer when formatting fails
 * half-way, and __redisAsyncCommand ignores a failed allocation of the
 * reply callback and queues the command anyway, whose reply would then
 * trip an assert (or, with other commands in flight, be handed to the
 * wrong request). So the command is formatted here in one checked
 * allocation, and one queued without our callback is taken back out of
 * the output buffer before anything is written. */
static int main_send(kg_pending *p, const char *cmd, size_t len)
{
    redisAsyncContext *ac = p->ctx->main->ac;
    size_t queued = sdslen((sds)ac->c.obuf);
    int rc = redisAsyncFormattedCommand(ac, on_reply, p, cmd, len);

    if (rc == REDIS_OK && (ac->replies.tail == NULL || ac->replies.tail->privdata != p)) {
        sdssetlen((sds)ac->c.obuf, queued);
        ac->c.obuf[queued] = '\0';
        rc = REDIS_ERR;
    }
    if (rc != REDIS_OK)
        return -1;
    p->outstanding = 1;
    list_inflight(p);
    return 0;
}

static void issue(kg_pending *p, int step, int argc, const char **argv)
{
    kg_ctx *ctx = p->ctx;
    char *cmd = NULL;
    int len, rc;

    if (ctx->cmap != NULL) {
        cluster_issue(p, step, argc, argv);
        return;
    }
    if ((len = redisFormatCommandArgv(&cmd, argc, argv, NULL)) < 0) {
        finish(p, KG_BACKEND_ERROR);
        return;
    }
    p->step = step;
    p->deadline = kg_mono_ms() + ctx->cfg.timeout_ms;
    if (kg_link_main(ctx) != 0) {
        /* Host mode behind Sentinel, the primary being looked up on the
         * host's loop (kg_link.c "probe"): the command waits, formatted,
         * for the answer or its deadline (kg_flow_unpark) rather than
         * failing at once, so the first requests after kg_open or a
         * failover are served. */
        if (kg_link_resolving(ctx)) {
            free(p->cmd);
            p->cmd = cmd;
            p->cmdlen = (size_t)len;
            p->outstanding = 0;
            list_inflight(p);
            return;
        }
        redisFreeCommand(cmd);
        finish(p, KG_BACKEND_ERROR);
        return;
    }
    rc = main_send(p, cmd, (size_t)len);
    redisFreeCommand(cmd);
    if (rc != 0)
        finish(p, KG_BACKEND_ERROR);
}

/* Today's, this month's and this hour's UTC tags, for the quota, spend
 * and usage keys. */
static void utc_tags(char *day, char *month, char *hour)
{
    time_t now = time(NULL);
    struct tm tm;

    gmtime_r(&now, &tm);
    strftime(day, 16, "%Y%m%d", &tm);
    strftime(month, 16, "%Y%m", &tm);
    strftime(hour, 16, "%Y%m%d%H", &tm);
}

/* Appends the request's params to a money script's argv as name, value
 * pairs (the usage counters, kg_scripts.c "Usage"). vals holds the
 * formatted values: KG_MAX_PARAMS of them. Returns the new argc. */
static int param_args(const kg_pending *p, const char **argv, int argc, char (*vals)[24])
{
    for (size_t i = 0; i < p->nparams && i < KG_MAX_PARAMS; i++) {
        snprintf(vals[i], 24, "%lld", (long long)p->params[i].value);
        argv[argc++] = p->params[i].name;
        argv[argc++] = vals[i];
    }
    return argc;
}

/* The cold script (kg_scripts.c KG_LUA_COLD): one EVALSHA on the token's
 * team slot, declaring the token record only. */
static void issue_cold(kg_pending *p)
{
    kg_ctx *ctx = p->ctx;
    char tk[KGC_RKEY_MAX], now[24], amt[24], lim[24], ttl[24], day[16], month[16], hour[16];
    char vals[KG_MAX_PARAMS][24];
    const char *argv[25 + 2 * KG_MAX_PARAMS];
    /* The document is returned only when it will be cached. */
    int want_doc = ctx->cfg.cache_ttl_ms > 0 && ctx->sub_ok;
    int argc;

    if (kgc_rkey(tk, ctx->cfg.key_prefix, KGC_RK_TOKEN, p->tok_team, p->hash) < 0) {
        finish(p, KG_BACKEND_ERROR);
        return;
    }
    utc_tags(day, month, hour);
    snprintf(now, sizeof now, "%lld", (long long)kg_wall_ms());
    snprintf(amt, sizeof amt, "%lld", (long long)p->cost);
    snprintf(lim, sizeof lim, "%lld", (long long)p->quota_limit);
    snprintf(ttl, sizeof ttl, "%d", ctx->cfg.hold_ttl_ms);
    const char *a[25] = {"EVALSHA", ctx->sha[KG_SCRIPT_COLD], "1", tk,
                         ctx->cfg.key_prefix, p->tok_team, p->hash, now, p->settle ? "s" : "a",
                         p->service, p->model, p->request_id, p->fp,
                         p->cold_bad ? "1" : "0", p->cold_free ? "1" : "0",
                         p->cold_settle ? "1" : "0", p->cold_hold_bad ? "1" : "0",
                         amt, lim, ttl, ctx->cfg.usage_counters ? "1" : "0", day, month, hour,
                         want_doc ? "1" : "0"};
    memcpy(argv, a, sizeof a);
    argc = ctx->cfg.usage_counters ? param_args(p, argv, 25, vals) : 25;
    issue(p, KG_ST_EVAL, argc, argv);
}

static void issue_script(kg_pending *p)
{
    kg_ctx *ctx = p->ctx;
    const char *P = ctx->cfg.key_prefix, *T = p->r.team_id, *K = p->r.key_id;
    char k1[KGC_RKEY_MAX], k2[KGC_RKEY_MAX], k3[KGC_RKEY_MAX], num[24];
    char rl[KGC_RKEY_MAX], ps[24], pm[24], day[16], month[16], hour[16];

    team_slot(p, p->script == KG_SCRIPT_COLD ? p->tok_team : T);  /* cluster: the node */
    if (ctx->sha[p->script][0] == '\0') {
        const char *argv[3] = {"SCRIPT", "LOAD", kg_script_text[p->script]};
        issue(p, KG_ST_LOAD, 3, argv);
        return;
    }
    if (p->script == KG_SCRIPT_COLD) {
        issue_cold(p);
        return;
    }
    utc_tags(day, month, hour);
    snprintf(ps, sizeof ps, "%lld", (long long)p->per_second);
    snprintf(pm, sizeof pm, "%lld", (long long)p->per_minute);
    if (kgc_rkey(rl, P, KGC_RK_RATE, T, K, p->service) < 0) {
        finish(p, KG_BACKEND_ERROR);
        return;
    }
    if (p->script != KG_SCRIPT_QUOTA) {
        /* The wallet's five keys (kg_scripts.c "Holds"): every money
         * script may capture the wallet's expired holds; then the key's
         * spend and rate keys (kg_scripts.c "Budgets and rate limits"). */
        char k4[KGC_RKEY_MAX], k5[KGC_RKEY_MAX], sd[KGC_RKEY_MAX], sm[KGC_RKEY_MAX], ttl[24];
        char bd[24], bm[24], ud[KGC_RKEY_MAX], uh[KGC_RKEY_MAX], vals[KG_MAX_PARAMS][24];
        const char *argv[28 + 2 * KG_MAX_PARAMS];
        int argc;
        const char *W = p->r.wallet_id;
        if (kgc_rkey(k1, P, KGC_RK_WALLET, T, W) < 0 || kgc_rkey(k2, P, KGC_RK_LEDGER, T, W) < 0 ||
            kgc_rkey(k3, P, KGC_RK_REQ, T, K, p->request_id) < 0 ||
            kgc_rkey(k4, P, KGC_RK_HOLDS, T, W) < 0 || kgc_rkey(k5, P, KGC_RK_HOLDEXP, T, W) < 0 ||
            kgc_rkey(sd, P, KGC_RK_SPEND_DAY, T, K, day) < 0 ||
            kgc_rkey(sm, P, KGC_RK_SPEND_MONTH, T, K, month) < 0 ||
            kgc_rkey(ud, P, KGC_RK_USAGE_DAY, T, day) < 0 ||
            kgc_rkey(uh, P, KGC_RK_USAGE_HOUR, T, hour) < 0) {
            finish(p, KG_BACKEND_ERROR);
            return;
        }
        if (!ctx->cfg.usage_counters)
            ud[0] = uh[0] = '\0';      /* the scripts count nothing */
        snprintf(num, sizeof num, "%lld", (long long)p->cost);
        snprintf(ttl, sizeof ttl, "%d", ctx->cfg.hold_ttl_ms);
        if (p->script == KG_SCRIPT_SETTLE) {
            const char *a[18] = {"EVALSHA", ctx->sha[p->script], "9", k1, k2, k3, k4, k5,
                                 sd, sm, ud, uh, num, K, p->request_id, W, day, month};
            memcpy(argv, a, sizeof a);
            argc = ctx->cfg.usage_counters ? param_args(p, argv, 18, vals) : 18;
            issue(p, KG_ST_EVAL, argc, argv);
            return;
        }
        snprintf(bd, sizeof bd, "%lld", (long long)p->budget_day);
        snprintf(bm, sizeof bm, "%lld", (long long)p->budget_month);
        const char *a[28] = {"EVALSHA", ctx->sha[p->script], "10", k1, k2, k3, k4, k5,
                             sd, sm, rl, ud, uh, num, K, p->r.user_id, p->service, p->model,
                             p->request_id, W, p->fp, ttl, bd, bm, ps, pm, day, month};
        memcpy(argv, a, sizeof a);
        /* the hold counts nothing: its settle or capture does */
        argc = p->script == KG_SCRIPT_DEBIT && ctx->cfg.usage_counters
                   ? param_args(p, argv, 28, vals) : 28;
        issue(p, KG_ST_EVAL, argc, argv);
    } else {
        if (kgc_rkey(k1, P, KGC_RK_QUOTA, T, p->service, day) < 0 ||
            kgc_rkey(k2, P, KGC_RK_REQ, T, K, p->request_id) < 0) {
            finish(p, KG_BACKEND_ERROR);
            return;
        }
        snprintf(num, sizeof num, "%lld", (long long)p->quota_limit);
        const char *argv[14] = {"EVALSHA", ctx->sha[p->script], "3", k1, k2, rl, num,
                                p->request_id, p->r.user_id, p->service, p->model, p->fp,
                                ps, pm};
        issue(p, KG_ST_EVAL, 14, argv);
    }
}

/* ---- deciding ------------------------------------------------------- */

/* The fingerprint a request id's record keeps (issue 10): what was asked,
 * so that the same id with another request is refused, not replayed.
 * BLAKE2b-128 over "keygate-req-2", service, resolved model and the params
 * sorted by name, each field NUL-terminated (names are plain catalog ids,
 * so NUL cannot occur in them). A param of 0 is left out: it prices like a
 * missing one, so {} and {x: 0} are the same request. Neither the key nor
 * the user is in it: the record's name holds the key, and its user_id is
 * compared by the scripts (a cold request does not know the user before
 * its script resolves the token: issue 11). */
static void fingerprint(kg_pending *p)
{
    crypto_generichash_state st;
    unsigned char out[KG_FP_HEX / 2];
    size_t order[KG_MAX_PARAMS], n = 0;
    char num[24];

    for (size_t i = 0; i < p->nparams; i++) {
        size_t j;
        if (p->params[i].value == 0)
            continue;
        for (j = n; j > 0 && strcmp(p->params[order[j - 1]].name, p->params[i].name) > 0; j--)
            order[j] = order[j - 1];
        order[j] = i;
        n++;
    }
    crypto_generichash_init(&st, NULL, 0, sizeof out);
    crypto_generichash_update(&st, (const unsigned char *)"keygate-req-2", 14);
    crypto_generichash_update(&st, (const unsigned char *)p->service, strlen(p->service) + 1);
    crypto_generichash_update(&st, (const unsigned char *)p->model, strlen(p->model) + 1);
    for (size_t i = 0; i < n; i++) {
        const kg_param *q = &p->params[order[i]];
        int len = snprintf(num, sizeof num, "%lld", (long long)q->value);
        crypto_generichash_update(&st, (const unsigned char *)q->name, strlen(q->name) + 1);
        crypto_generichash_update(&st, (const unsigned char *)num, (size_t)len + 1);
    }
    crypto_generichash_final(&st, out, sizeof out);
    sodium_bin2hex(p->fp, sizeof p->fp, out, sizeof out);
}

/* The token-level verdict of a resolved entry: KG_OK to go on. */
static kg_status token_verdict(kg_pending *p)
{
    const kg_entry *e = p->ent;

    copy_id(p->r.key_id, e->key_id);
    copy_id(p->r.team_id, e->team_id);
    copy_id(p->r.user_id, e->user_id);
    if (e->state == KG_ENT_REVOKED)
        return KG_KEY_REVOKED;
    if (e->state == KG_ENT_UNASSIGNED)
        return KG_TOKEN_UNKNOWN;
    if (e->expires_ms != 0 && e->expires_ms <= kg_wall_ms())
        return KG_TOKEN_UNKNOWN;        /* a rotated token whose grace is over */
    /* Decided here, from the cached document, on every request: a warm
     * cache refuses from expires_at on, with no message needed. */
    if (e->key_expires_ms != 0 && e->key_expires_ms <= kg_wall_ms())
        return KG_KEY_EXPIRED;
    return KG_OK;
}

static int model_allowed(const kg_svcpol *pol, const char *model)
{
    for (size_t i = 0; i < pol->nmodels; i++)
        if (strcmp(pol->models[i], model) == 0)
            return 1;
    return 0;
}

/* 1 if the model has a measured param that params leave out. */
static int measured_missing(const kgc_model *m, const kg_param *params, size_t n)
{
    for (size_t k = 0; k < m->nper; k++) {
        size_t i;
        if (!m->per[k].measured)
            continue;
        for (i = 0; i < n && strcmp(params[i].name, m->per[k].param) != 0; i++)
            ;
        if (i == n)
            return 1;
    }
    return 0;
}

/* What the catalog alone says of a request, with no key document: the
 * same for the warm path (decide) and the cold script's arguments, so both
 * price and refuse alike.
 * Authorize: an unknown service or model, or params kgc_price refuses, is
 * KG_BAD_REQUEST; on a settle service the amount is the hold (its worst
 * case price), and hold_bad says it cannot be held (no request id names
 * the hold, or a measured param has no maximum), which refuses a payg
 * request only. Otherwise the amount is the price.
 * Settle (kg_settle): a settle service, a request id, a model, the actual
 * params priced (the same kgc_price as every charge). A measured param the
 * settle leaves out (the upstream reported no usage) counts at its catalog
 * max; without one the amount is -1: the script then charges the whole
 * hold. */
typedef struct cat_facts {
    kg_status st;                 /* KG_OK or KG_BAD_REQUEST */
    const kgc_service *svc;       /* NULL when unknown */
    const kgc_model *m;           /* NULL when st != KG_OK */
    int hold_bad;
    int64_t amount;
} cat_facts;

static void catalog_facts(kg_pending *p, cat_facts *f)
{
    const kgc_model *m = NULL;
    char err[160];
    int64_t plain = 0;

    memset(f, 0, sizeof *f);
    f->st = KG_BAD_REQUEST;
    f->svc = kgc_catalog_service(p->ctx->catalog, p->service);
    if (f->svc == NULL || (p->settle && (!f->svc->settle || p->request_id[0] == '\0')))
        return;
    if ((m = kgc_service_model(f->svc, p->has_model ? p->model : NULL)) == NULL)
        return;
    if (p->settle) {
        if (kgc_price(m, p->params, p->nparams, &f->amount, NULL, err, sizeof err) != 0)
            return;
        if (measured_missing(m, p->params, p->nparams) &&
            kgc_price_hold(m, p->params, p->nparams, &f->amount, err, sizeof err) != 0)
            f->amount = -1;             /* a measured param with no max: the hold */
    } else {
        if (f->svc->settle)
            f->hold_bad = p->request_id[0] == '\0' ||
                          kgc_price_hold(m, p->params, p->nparams, &f->amount, err, sizeof err) != 0;
        if (kgc_price(m, p->params, p->nparams, f->svc->settle ? &plain : &f->amount, NULL,
                      err, sizeof err) != 0)
            return;                     /* unknown param, negative, overflow */
    }
    f->m = m;
    f->st = KG_OK;
    copy_id(p->model, m->id);
    if (!p->settle && p->request_id[0] != '\0')
        fingerprint(p);                 /* only an id's record keeps it */
    else
        p->fp[0] = '\0';
}

/* The catalog is not used after a request's decision: one fetched
 * without a live subscription is not kept. */
static void catalog_done(kg_ctx *ctx)
{
    if (!ctx->catalog_trusted) {
        kgc_catalog_free(ctx->catalog);
        ctx->catalog = NULL;
    }
}

/* kg_settle's policy step (warm): the wallet is the one the key's policy
 * names now; the script answers "wallet" when the hold sits on another
 * (the policy changed since), and the settle is sent again there. A
 * request under the free policy holds nothing: KG_OK, nothing to do. */
static void decide_settle(kg_pending *p, const cat_facts *f)
{
    const kg_svcpol *pol = kg_entry_policy(p->ent, p->service);

    if (f->st != KG_OK || (pol != NULL && !pol->payg)) {
        finish(p, f->st);
        return;
    }
    p->cost = f->amount;
    p->script = KG_SCRIPT_SETTLE;
    if (pol != NULL)
        copy_id(p->r.wallet_id, pol->wallet);
    issue_script(p);
}

/* The warm path's decision, all local: the catalog's facts, then the
 * key's policy. Either finishes p or sends its script. The order of the
 * checks is the cold script's too (kg_scripts.c KG_LUA_COLD). */
static void decide(kg_pending *p, const cat_facts *f)
{
    kg_ctx *ctx = p->ctx;
    const kg_svcpol *pol = kg_entry_policy(p->ent, p->service);
    char team[KGC_ID_MAX];
    kg_status st = f->st;
    int rc;

    if (p->settle) {
        decide_settle(p, f);
        return;
    }
    if (pol != NULL && pol->payg)
        copy_id(p->r.wallet_id, pol->wallet);
    if (st == KG_OK && f->svc->settle && pol != NULL && pol->payg && f->hold_bad)
        st = KG_BAD_REQUEST;                          /* no id; a measured param without maximum */
    else if (st == KG_OK && (pol == NULL || (!pol->payg && !f->svc->free)))
        st = KG_SERVICE_DISABLED;
    else if (st == KG_OK && pol->payg && !model_allowed(pol, f->m->id))
        st = KG_MODEL_DENIED;
    /* A wallet of another team would put the script on two slots. */
    else if (st == KG_OK && pol->payg && (kgc_id_team_of(pol->wallet, 'w', team) != 0 ||
                                          strcmp(team, p->r.team_id) != 0))
        st = KG_BACKEND_ERROR;
    if (st != KG_OK) {
        finish(p, st);
        return;
    }
    p->cost = pol->payg ? f->amount : 0;
    p->script = !pol->payg ? KG_SCRIPT_QUOTA : f->svc->settle ? KG_SCRIPT_HOLD : KG_SCRIPT_DEBIT;
    p->quota_limit = f->svc->requests_per_day;
    p->budget_day = p->ent->budget_day;
    p->budget_month = p->ent->budget_month;
    p->per_second = pol->per_second;
    p->per_minute = pol->per_minute;
    /* debit leased (kg_lease.c): decided against the wallet's lease, in memory */
    if ((rc = kg_lease_decide(ctx, p, f->svc)) != KG_LEASE_EXACT || p->outage > 0) {
        finish(p, rc == KG_LEASE_EXACT ? KG_BACKEND_ERROR : (kg_status)rc);
        return;             /* an entry kept over an outage serves only leases */
    }
    issue_script(p);
}

/* A cache miss: the cold script with the catalog's facts. Its reply
 * (on_cold) says which body ran. */
static void decide_cold(kg_pending *p, const cat_facts *f)
{
    p->cold_bad = f->st != KG_OK;
    p->cold_free = f->svc != NULL && f->svc->free;
    p->cold_settle = f->svc != NULL && f->svc->settle;
    p->cold_hold_bad = f->hold_bad;
    p->cost = f->amount;
    p->quota_limit = f->svc != NULL ? f->svc->requests_per_day : 0;
    p->script = KG_SCRIPT_COLD;
    p->inval_gen = p->ctx->inval_gen;
    p->sub_ok_at_start = p->ctx->sub_ok;
    issue_script(p);
}

/* Moves p on from wherever it stands: catalog, then the warm decision or
 * the cold script. */
static void advance(kg_pending *p)
{
    kg_ctx *ctx = p->ctx;
    char k[KGC_RKEY_MAX];
    cat_facts f;
    kg_status st;

    /* A settle bills a request already served: a key revoked or a user
     * unassigned since does not cancel it (the token must still resolve). */
    if (p->ent != NULL && (st = token_verdict(p)) != KG_OK && !p->settle) {
        finish(p, st);
        return;
    }
    if (ctx->catalog == NULL) {
        const char *argv[2] = {"GET", k};
        if (++p->catalog_fetches > 3 ||
            kgc_rkey(k, ctx->cfg.key_prefix, "%s", KGC_RK_CATALOG) < 0) {
            finish(p, KG_BACKEND_ERROR);
            return;
        }
        p->catalog_gen_at = ctx->catalog_gen;
        p->catalog_sub_ok = ctx->sub_ok;
        issue(p, KG_ST_CATALOG, 2, argv);
        return;
    }
    catalog_facts(p, &f);
    if (p->ent != NULL)
        decide(p, &f);
    else
        decide_cold(p, &f);
    catalog_done(ctx);                  /* f's pointers are not used after this */
}

/* ---- replies -------------------------------------------------------- */

static int reply_int(const redisReply *r, long long *out)
{
    char *end;

    if (r->type == REDIS_REPLY_INTEGER) {
        *out = r->integer;
        return 0;
    }
    if (r->type == REDIS_REPLY_STRING && r->len > 0) {
        *out = strtoll(r->str, &end, 10);
        return *end == '\0' ? 0 : -1;
    }
    return -1;
}

static void on_catalog(kg_pending *p, redisReply *r)
{
    kg_ctx *ctx = p->ctx;
    char err[256];
    kgc_catalog *cat;

    if (r->type != REDIS_REPLY_STRING ||
        (cat = kgc_catalog_parse(r->str, r->len, "catalog", err, sizeof err)) == NULL) {
        finish(p, KG_BACKEND_ERROR);    /* none published yet, or not valid */
        return;
    }
    kgc_catalog_free(ctx->catalog);
    ctx->catalog = cat;
    ctx->catalog_trusted = ctx->sub_ok && p->catalog_sub_ok &&
                           ctx->catalog_gen == p->catalog_gen_at;
    advance(p);
}

static void on_load(kg_pending *p, redisReply *r)
{
    kg_ctx *ctx = p->ctx;

    if (r->type != REDIS_REPLY_STRING || r->len != 40) {
        finish(p, KG_BACKEND_ERROR);
        return;
    }
    memcpy(ctx->sha[p->script], r->str, 41);
    if (ctx->cmap != NULL)
        load_everywhere(ctx, p->script, p->node);
    issue_script(p);
}

/* A money write was made (debit, hold, settle). With min_replicas_ack N
 * > 0 it is confirmed by `WAIT N replica_ack_timeout_ms` before KG_OK:
 * fewer than N replicas in time is KG_BACKEND_ERROR (fail closed). The
 * write stands on the primary; a retry with the same request id replays it
 * if it survived or makes it again if a failover undid it, never twice. */
static void confirm(kg_pending *p)
{
    kg_ctx *ctx = p->ctx;
    char n[16], t[16];
    const char *argv[3] = {"WAIT", n, t};

    if (ctx->cfg.min_replicas_ack <= 0) {
        finish(p, KG_OK);
        return;
    }
    if (p->r.replayed && !p->synced) {
        /* A replay wrote nothing, and WAIT only covers this connection's
         * own writes: the first try may have been made through another
         * connection (before a reconnect) and never reached a replica.
         * A write first makes this connection's WAIT cover the store. */
        char ch[KGC_RKEY_MAX];
        const char *pub[3] = {"PUBLISH", ch, "1"};
        snprintf(ch, sizeof ch, "%sdurable", ctx->cfg.key_prefix);
        p->synced = 1;
        issue(p, KG_ST_SYNC, 3, pub);
        return;
    }
    snprintf(n, sizeof n, "%d", ctx->cfg.min_replicas_ack);
    snprintf(t, sizeof t, "%d", ctx->cfg.replica_ack_timeout_ms);
    issue(p, KG_ST_WAIT, 3, argv);
    if (!p->finished)
        p->deadline += ctx->cfg.replica_ack_timeout_ms;   /* WAIT may take that long */
}

static void on_wait(kg_pending *p, redisReply *r)
{
    if (r->type == REDIS_REPLY_INTEGER && r->integer >= p->ctx->cfg.min_replicas_ack) {
        finish(p, KG_OK);
        return;
    }
    if (p->ctx->cfg.nsentinels > 0)
        p->ctx->relink = 1;             /* is this still the primary? ask the sentinels */
    finish(p, KG_BACKEND_ERROR);
}

/* The settle script's answer (kg_scripts.c). */
static void on_settle(kg_pending *p, redisReply *r, const char *tag)
{
    long long a = 0, b = 0, h = 0;
    char team[KGC_ID_MAX];

    if (strcmp(tag, "ok") == 0 || strcmp(tag, "replay") == 0) {
        if (r->elements < 4 || reply_int(r->element[1], &a) != 0 ||
            reply_int(r->element[2], &b) != 0 || reply_int(r->element[3], &h) != 0) {
            finish(p, KG_BACKEND_ERROR);
            return;
        }
        p->r.replayed = tag[0] == 'r';
        p->r.cost_micros = p->r.replayed ? 0 : a;
        p->r.balance_micros = b;
        p->h.hold_micros = h;
        confirm(p);
    } else if (strcmp(tag, "captured") == 0) {
        if (r->elements >= 3 && reply_int(r->element[1], &h) == 0 &&
            reply_int(r->element[2], &b) == 0) {
            p->h.hold_micros = h;
            p->r.balance_micros = b;
        }
        p->h.captured = 1;
        p->r.replayed = 1;
        finish(p, KG_OK);
    } else if (strcmp(tag, "wallet") == 0) {
        /* The hold is on another wallet of the team (the policy changed
         * since): settle there. Checked like any wallet id we put in a key. */
        if (r->elements < 2 || r->element[1]->type != REDIS_REPLY_STRING ||
            kgc_id_team_of(r->element[1]->str, 'w', team) != 0 ||
            strcmp(team, p->r.team_id) != 0 || strcmp(r->element[1]->str, p->r.wallet_id) == 0 ||
            ++p->wallet_moves > 1) {
            finish(p, KG_BACKEND_ERROR);
            return;
        }
        copy_id(p->r.wallet_id, r->element[1]->str);
        issue_script(p);
    } else if (strcmp(tag, "nohold") == 0) {
        p->r.wallet_id[0] = '\0';
        finish(p, KG_BAD_REQUEST);      /* no hold of this key under that id */
    } else {                            /* "nowallet": a data error, fail closed */
        finish(p, KG_BACKEND_ERROR);
    }
}

static void on_cold(kg_pending *p, redisReply *r);

static void on_eval(kg_pending *p, redisReply *r)
{
    kg_ctx *ctx = p->ctx;
    const char *tag;
    long long a = 0, b = 0;

    if (r->type == REDIS_REPLY_ERROR) {
        /* Redis restarted or flushed its scripts: load again, retry. The
         * script did not run, so retrying cannot charge twice. */
        if (strncmp(r->str, "NOSCRIPT", 8) == 0 && ++p->loads <= 2) {
            ctx->sha[p->script][0] = '\0';
            p->load_here = 1;
            issue_script(p);
            return;
        }
        if (kgc_sentinel_demoted(r->str))
            ctx->relink = 1;            /* a demoted primary: find the new one */
        finish(p, KG_BACKEND_ERROR);
        return;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
        r->element[0]->type != REDIS_REPLY_STRING) {
        finish(p, KG_BACKEND_ERROR);
        return;
    }
    tag = r->element[0]->str;
    if (p->script == KG_SCRIPT_COLD) {
        on_cold(p, r);
        return;
    }
    if (p->script == KG_SCRIPT_SETTLE) {
        on_settle(p, r, tag);
        return;
    }
    if (strcmp(tag, "held") == 0) {
        long long avail = 0, exp = 0;
        if (r->elements < 4 || reply_int(r->element[1], &a) != 0 ||
            reply_int(r->element[2], &avail) != 0 || reply_int(r->element[3], &exp) != 0) {
            finish(p, KG_BACKEND_ERROR);
            return;
        }
        p->r.balance_micros = a;
        p->h.hold_micros = p->cost;
        p->h.available_micros = avail;
        p->h.expires_ms = exp;
        confirm(p);
        return;
    }
    if (strcmp(tag, "ok") == 0) {
        if (p->script == KG_SCRIPT_DEBIT) {
            if (r->elements < 2 || reply_int(r->element[1], &a) != 0) {
                finish(p, KG_BACKEND_ERROR);
                return;
            }
            p->r.cost_micros = p->cost;
            p->r.balance_micros = a;
            confirm(p);
            return;
        }
        finish(p, KG_OK);
    } else if (strcmp(tag, "replay") == 0) {
        p->r.replayed = 1;
        p->r.cost_micros = 0;
        if (p->script == KG_SCRIPT_DEBIT && r->elements >= 4 &&
            reply_int(r->element[2], &b) == 0) {
            p->r.balance_micros = b;
            if (r->element[3]->type == REDIS_REPLY_STRING && r->element[3]->len > 0)
                copy_id(p->r.wallet_id, r->element[3]->str);
        }
        if (p->script == KG_SCRIPT_HOLD && r->elements >= 5 && reply_int(r->element[4], &b) == 0)
            p->h.hold_micros = b;       /* the hold the first call placed */
        if (p->script == KG_SCRIPT_QUOTA)
            finish(p, KG_OK);
        else
            confirm(p);                 /* the first try may not have reached a replica */
    } else if (strcmp(tag, "funds") == 0) {
        if (r->elements >= 2 && reply_int(r->element[1], &a) == 0)
            p->r.balance_micros = a;
        finish(p, KG_INSUFFICIENT_FUNDS);
    } else if (strcmp(tag, "quota") == 0) {
        finish(p, KG_QUOTA_EXCEEDED);
    } else if (strcmp(tag, "budget") == 0) {
        finish(p, KG_BUDGET_EXCEEDED);
    } else if (strcmp(tag, "rate") == 0) {
        if (r->elements < 2 || reply_int(r->element[1], &a) != 0 || a < 1)
            a = 1000;                   /* a window's worth: never "retry now" */
        p->h.retry_after_ms = a;
        finish(p, KG_RATE_LIMITED);
    } else if (strcmp(tag, "conflict") == 0) {
        finish(p, KG_REQUEST_ID_CONFLICT);  /* the id names another request */
    } else {                            /* "nowallet": a data error, fail closed */
        p->r.balance_micros = -1;
        finish(p, KG_BACKEND_ERROR);
    }
}

/* The cold script's answer: the token record's ids and the key document
 * (the warm cache is filled from them, under the same rule as ever: only
 * what was read under a live subscription with no invalidation since),
 * then the verdict, and the money body's reply when one ran. */
static void on_cold(kg_pending *p, redisReply *r)
{
    static const struct { const char *v; kg_status st; } refusals[] = {
        {"revoked", KG_KEY_REVOKED},     {"unknown", KG_TOKEN_UNKNOWN},
        {"expired", KG_KEY_EXPIRED},     {"bad", KG_BAD_REQUEST},
        {"disabled", KG_SERVICE_DISABLED}, {"denied", KG_MODEL_DENIED},
        {"damaged", KG_BACKEND_ERROR},   {"none", KG_OK},
    };
    static const struct { const char *v; int script; } bodies[] = {
        {"debit", KG_SCRIPT_DEBIT}, {"hold", KG_SCRIPT_HOLD},
        {"quota", KG_SCRIPT_QUOTA}, {"settle", KG_SCRIPT_SETTLE},
    };
    kg_ctx *ctx = p->ctx;
    const char *tag = r->element[0]->str, *v;
    char err[160], *end;
    long long exp;

    if (strcmp(tag, "unknown") == 0) {
        finish(p, KG_TOKEN_UNKNOWN);    /* never issued, rotated away, unassigned */
        return;
    }
    if (strcmp(tag, "k") != 0 || r->elements < 7) {
        finish(p, KG_BACKEND_ERROR);    /* a damaged record or document: fail closed */
        return;
    }
    for (size_t i = 1; i < 7; i++)
        if (r->element[i]->type != REDIS_REPLY_STRING) {
            finish(p, KG_BACKEND_ERROR);
            return;
        }
    exp = strtoll(r->element[3]->str, &end, 10);
    if (!kgc_id_plausible(r->element[1]->str) || !kgc_id_plausible(r->element[2]->str) ||
        *end != '\0' || exp < 0 || r->element[5]->len >= KG_ID_LEN) {
        finish(p, KG_BACKEND_ERROR);
        return;
    }
    copy_id(p->r.key_id, r->element[1]->str);
    snprintf(p->r.team_id, sizeof p->r.team_id, "%s", p->tok_team);
    copy_id(p->r.user_id, r->element[2]->str);
    copy_id(p->r.wallet_id, r->element[5]->str);
    /* The script checked the document as kg_entry_build does; an entry C
     * cannot build is only not cached (the verdict stands). No document:
     * none was asked for (nothing to cache). */
    if (r->element[4]->len > 0)
        p->ent = kg_entry_build(p->hash, p->r.key_id, p->r.team_id, p->r.user_id, exp,
                                r->element[4]->str, r->element[4]->len, err, sizeof err);
    if (p->ent != NULL && ctx->cfg.cache_ttl_ms > 0 && ctx->sub_ok && p->sub_ok_at_start &&
        p->inval_gen == ctx->inval_gen) {
        int64_t now = kg_mono_ms();
        p->ent->stale_at = now + ctx->cfg.cache_ttl_ms;
        kg_cache_put(&ctx->cache, p->ent, now);
    }
    v = r->element[6]->str;
    for (size_t i = 0; i < sizeof refusals / sizeof *refusals; i++)
        if (strcmp(v, refusals[i].v) == 0) {
            finish(p, refusals[i].st);
            return;
        }
    for (size_t i = 0; i < sizeof bodies / sizeof *bodies; i++)
        if (strcmp(v, bodies[i].v) == 0 && r->elements >= 8) {
            p->script = bodies[i].script;
            if (p->script == KG_SCRIPT_QUOTA)
                p->cost = 0;
            p->wallet_moves = 1;        /* the script followed a "wallet" answer already */
            if (r->element[7]->type == REDIS_REPLY_ERROR) {
                finish(p, KG_BACKEND_ERROR);
                return;
            }
            on_eval(p, r->element[7]);
            return;
        }
    finish(p, KG_BACKEND_ERROR);
}

/* Cluster mode: an error reply that is about routing. Returns 1 when it
 * was (p resent, waiting to be, or finished), 0 to let the step see it. */
static int cluster_reply(kg_pending *p, int step, const redisReply *r)
{
    kg_ctx *ctx = p->ctx;
    kgc_hostport to;
    unsigned slot;
    int kind = kgc_cluster_classify(r->str, r->len, &slot, &to), node = -1;

    if (kind == KGC_CE_OTHER)
        return 0;
    p->step = step;
    /* Redirects are capped (a loop between two confused nodes); waits for
     * TRYAGAIN & co only by the deadline: a migration takes what it takes. */
    if (((kind == KGC_CE_MOVED || kind == KGC_CE_ASK) && ++p->redirects > KG_CL_REDIRECTS) ||
        kg_mono_ms() >= p->deadline) {
        finish(p, KG_BACKEND_ERROR);
        return 1;
    }
    switch (kind) {
    case KGC_CE_MOVED:
        /* The slot lives elsewhere for good: point it there, refresh the
         * rest of the map (more slots probably moved), resend. */
        ctx->cl_stale = 1;
        if (kgc_cluster_map_move(ctx->cmap, slot, to.host, to.port) != 0) {
            finish(p, KG_BACKEND_ERROR);
            return 1;
        }
        break;
    case KGC_CE_ASK:
        /* This key only, this once: the map stays. */
        if ((node = kgc_cluster_node(ctx->cmap, to.host, to.port)) < 0) {
            finish(p, KG_BACKEND_ERROR);
            return 1;
        }
        p->asking = 1;
        break;
    default:                            /* TRYAGAIN, CLUSTERDOWN, LOADING, READONLY */
        ctx->cl_stale = 1;
        p->retry_at = kg_mono_ms() + KG_CL_RETRY_MS;
        list_inflight(p);               /* kg_flow_timeouts resends it */
        return 1;
    }
    if (cluster_send(p, node) != 0)
        finish(p, KG_BACKEND_ERROR);
    p->asking = 0;
    return 1;
}

static void on_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    kg_pending *p = priv;
    redisReply *r = reply;
    int step = p->step;

    p->outstanding = 0;
    p->step = KG_ST_IDLE;
    if (p->cancelled) {
        kg_pending_free(p);
        return;
    }
    /* connection dropped or timed out; or its AUTH was refused, so this
     * command ran without our credentials (kg_link.c) */
    if (r == NULL || !kg_link_trusted(ac)) {
        finish(p, KG_BACKEND_ERROR);
        return;
    }
    if (p->ctx->cmap != NULL && r->type == REDIS_REPLY_ERROR && cluster_reply(p, step, r))
        return;
    switch (step) {
    case KG_ST_CATALOG: on_catalog(p, r); break;
    case KG_ST_LOAD:    on_load(p, r);    break;
    case KG_ST_EVAL:    on_eval(p, r);    break;
    case KG_ST_SYNC:    confirm(p);       break;
    case KG_ST_WAIT:    on_wait(p, r);    break;
    default:            finish(p, KG_BACKEND_ERROR); break;
    }
}

/* ---- entry points ---------------------------------------------------- */

static int request_id_ok(const char *s)
{
    size_t n = 0;
    for (; s[n] != '\0'; n++)
        if (n >= KG_RID_MAX || s[n] <= ' ' || s[n] > '~')
            return 0;
    return n > 0;
}

static int name_ok(const char *s)
{
    size_t n = s != NULL ? strlen(s) : 0;
    return n > 0 && n < KG_ID_LEN;
}

int kg_flow_start(kg_ctx *ctx, const kg_request *req, kg_result *out,
                  int blocking, int settle, kg_pending **pp)
{
    kg_pending *p;
    int64_t now;
    int rc, memo;
    char hash[KGC_HASH_HEX_LEN + 1];

    if (pp != NULL)
        *pp = NULL;
    kg_result_init(out);
    if (req == NULL) {
        out->status = KG_BAD_REQUEST;
        return 0;
    }
    memo = kg_tokmemo_get(&ctx->cache, req->token, req->token_len, hash);
    if (!memo && !kgc_token_wellformed(req->token, req->token_len)) {
        out->status = KG_TOKEN_MALFORMED;
        return 0;
    }
    if (!name_ok(req->service) || (req->model != NULL && !name_ok(req->model)) ||
        req->nparams > KG_MAX_PARAMS || (req->nparams > 0 && req->params == NULL) ||
        (req->request_id != NULL && !request_id_ok(req->request_id))) {
        out->status = KG_BAD_REQUEST;
        return 0;
    }
    if (ctx->closing)
        return -1;
    now = kg_mono_ms();
    if (blocking && now - ctx->last_poll >= KG_POLL_EVERY_MS) {
        ctx->last_poll = now;
        kg_link_poll(ctx, 0);           /* invalidations, and a dead main link */
    }
    kg_link_relink(ctx);                /* after a READONLY: re-resolve the primary */
    kg_link_sub_maintain(ctx, now);
    kg_lease_tick(ctx, now);            /* debit leased: flush, renew */

    if ((p = pending_new(ctx)) == NULL)
        return -1;
    p->ctx = ctx;
    p->blocking = blocking;
    p->settle = settle;
    kg_result_init(&p->r);
    kg_hold_init(&p->h);
    kgc_token_team(req->token, p->tok_team);
    if (memo)                           /* seen lately: no BLAKE2b (kg_cache.c) */
        memcpy(p->hash, hash, sizeof p->hash);
    else if (kgc_token_hash_hex(ctx->pepper, req->token, req->token_len, p->hash) != 0) {
        free(p->params);
        free(p);
        return -1;
    } else
        kg_tokmemo_put(&ctx->cache, req->token, req->token_len, p->hash);
    copy_id(p->service, req->service);
    if (req->model != NULL) {
        copy_id(p->model, req->model);
        p->has_model = 1;
    }
    if (req->request_id != NULL)
        snprintf(p->request_id, sizeof p->request_id, "%s", req->request_id);
    if (req->nparams > 0) {
        if (req->nparams > p->params_cap) {
            kg_param *np = realloc(p->params, req->nparams * sizeof *p->params);
            if (np == NULL) {
                free(p->params);
                free(p);
                return -1;
            }
            p->params = np;
            p->params_cap = req->nparams;
        }
        memcpy(p->params, req->params, req->nparams * sizeof *p->params);
        p->nparams = req->nparams;
    }
    if (ctx->cfg.cache_ttl_ms > 0 && ctx->sub_ok)
        p->ent = kg_cache_get(&ctx->cache, p->hash, now);
    else if (ctx->cfg.cache_ttl_ms > 0 && (p->outage = kg_lease_outage(ctx)) > 0)
        p->ent = kg_cache_get(&ctx->cache, p->hash, p->outage);  /* as fresh as at the loss */
    if (p->ent != NULL)
        ctx->stats.cache_hits++;
    else
        ctx->stats.cache_misses++;
    advance(p);
    if (p->finished) {
        *out = p->r;
        rc = p->r.status == KG_BACKEND_ERROR ? -1 : 0;
        kg_pending_free(p);
        return rc;
    }
    if (pp != NULL)
        *pp = p;
    return 1;
}

int64_t kg_flow_due(const kg_pending *p)
{
    return p->retry_at > 0 && p->retry_at < p->deadline ? p->retry_at : p->deadline;
}

/* Cluster mode: resends what waited (TRYAGAIN & co), fails what waited
 * too long, drops the link of a command that overran its deadline. Each
 * action may change the list: start again (each takes p off it or sets
 * it back on the wire with a later due time). */
static void cluster_timeouts(kg_ctx *ctx, int64_t now)
{
    for (int guard = 0; guard < 1000; guard++) {
        kg_pending *p;
        for (p = ctx->inflight; p != NULL; p = p->next)
            if (kg_flow_due(p) <= now)
                break;
        if (p == NULL)
            return;
        if (!p->outstanding && now >= p->deadline) {
            finish(p, KG_BACKEND_ERROR);
        } else if (!p->outstanding) {
            if (cluster_send(p, -1) != 0)
                finish(p, KG_BACKEND_ERROR);
        } else if (p->node >= 0 && ctx->nodes[p->node] != NULL) {
            kg_link_drop(ctx, ctx->nodes[p->node]);   /* fails everything on it */
        } else {
            return;                     /* cannot happen: on the wire, no link */
        }
    }
}

void kg_flow_unpark(kg_ctx *ctx, int64_t now)
{
    int sent = 0;

    if (ctx->cmap != NULL)
        return;
    /* Each pass sends or fails one waiting command, or stops. */
    for (int guard = 0; guard < 100000; guard++) {
        kg_pending *p = ctx->inflight, *late;

        while (p != NULL && p->outstanding)
            p = p->next;
        if (p == NULL)
            break;
        if (!ctx->closing && (kg_link_resolving(ctx) ||
                              (kg_link_main(ctx) != 0 && kg_link_resolving(ctx)))) {
            for (late = p; late != NULL && (late->outstanding || late->deadline > now);
                 late = late->next)
                ;
            if (late == NULL)
                break;                  /* still looking, none overdue */
            finish(late, KG_BACKEND_ERROR);
            continue;
        }
        if (ctx->closing || ctx->main == NULL || main_send(p, p->cmd, p->cmdlen) != 0)
            finish(p, KG_BACKEND_ERROR);
        else
            sent++;
    }
    /* The primary is known now: subscribe to invalidations at once (the
     * warm cache serves only while subscribed), not at the next request. */
    if (sent > 0 && !ctx->closing)
        kg_link_sub_maintain(ctx, now);
}

void kg_flow_timeouts(kg_ctx *ctx, int64_t now)
{
    if (ctx->cmap != NULL) {
        cluster_timeouts(ctx, now);
        return;
    }
    kg_flow_unpark(ctx, now);
    for (kg_pending *p = ctx->inflight; p != NULL; p = p->next)
        if (p->outstanding && p->deadline <= now) {
            /* Replies come in order: one late reply stalls the connection
             * for everyone. Drop it; every request on it fails now. */
            kg_link_drop(ctx, ctx->main);
            return;
        }
}

void kg_flow_deliver(kg_ctx *ctx)
{
    kg_pending *p;

    while ((p = ctx->doneq) != NULL) {
        list_unlink(p);
        if (!p->cancelled && p->done != NULL) {
            p->delivering = 1;
            *p->out = p->r;
            kg_hold_out(p->hout, p->hsize, &p->h);
            p->done(p->arg, p->out);
        }
        kg_pending_free(p);
    }
}

void kg_flow_cancel(kg_ctx *ctx, kg_pending *p)
{
    if (p == NULL || p->ctx != ctx || p->cancelled)
        return;
    p->cancelled = 1;
    if (p->delivering)
        return;                         /* inside its own done(): freed after */
    if (p->outstanding) {
        kg_entry_unref(p->ent);         /* freed by on_reply when the reply comes */
        p->ent = NULL;
        return;
    }
    kg_pending_free(p);
}

void kg_flow_inval(kg_ctx *ctx, const char *msg, size_t len)
{
    char id[KG_ID_LEN];

    ctx->stats.invalidations++;
    if (len == 7 && memcmp(msg, "catalog", 7) == 0) {
        ctx->catalog_gen++;
        kgc_catalog_free(ctx->catalog);
        ctx->catalog = NULL;
        return;
    }
    ctx->inval_gen++;
    if (len > 4 && len - 4 < sizeof id && memcmp(msg, "key ", 4) == 0) {
        memcpy(id, msg + 4, len - 4);
        id[len - 4] = '\0';
        kg_cache_drop_key(&ctx->cache, id);
        return;
    }
    kg_cache_clear(&ctx->cache);        /* a message we do not know: be safe */
}

void kg_flow_sub_lost(kg_ctx *ctx)
{
    ctx->sub_ok = 0;
    ctx->inval_gen++;
    if (kg_lease_sub_lost(ctx))
        return;     /* debit leased: kept for local decisions, dropped when it is back */
    ctx->catalog_trusted = 0;
    kg_cache_clear(&ctx->cache);
}

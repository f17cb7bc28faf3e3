/*
 * kg_api.c - the exported kg_* functions of libkeygate (include/keygate.h).
 *
 * Blocking and host-driven requests share one state machine (kg_flow.c);
 * this file opens and closes contexts, drives a blocking request with
 * poll(), and forwards the host's loop events.
 */
#include "kg_internal.h"

#include <limits.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KG_CACHE_MAX 8192          /* tokens cached per context */

/* kgc_crc32 fills its table on first use without a lock; run that first
 * use once, here, so contexts on different threads never race on it. */
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;
static void crc_warm(void) { (void)kgc_crc32("", 0); }

KG_EXPORT kg_ctx *kg_open(const char *config_path, char *err, size_t errlen)
{
    char scratch[256], cerr[256];
    kg_ctx *ctx;

    if (err == NULL || errlen == 0) {
        err = scratch;
        errlen = sizeof scratch;
    }
    err[0] = '\0';
    if (config_path == NULL) {
        snprintf(err, errlen, "kg_open: no config file given");
        return NULL;
    }
    pthread_once(&crc_once, crc_warm);
    if (sodium_init() < 0) {
        snprintf(err, errlen, "kg_open: libsodium failed to initialise");
        return NULL;
    }
    if ((ctx = calloc(1, sizeof *ctx)) == NULL) {
        snprintf(err, errlen, "kg_open: out of memory");
        return NULL;
    }
    if (kgc_config_load(config_path, &ctx->cfg, err, errlen) != 0)
        goto err;
    if (kgc_pepper_load(ctx->cfg.pepper_file, &ctx->pepper, err, errlen) != 0)
        goto err;
    if (kgc_rkey(ctx->channel, ctx->cfg.key_prefix, "%s", KGC_RK_CHANNEL) < 0) {
        snprintf(err, errlen, "%s: key_prefix is too long", config_path);
        goto err;
    }
    if (kg_cache_init(&ctx->cache, KG_CACHE_MAX) != 0) {
        snprintf(err, errlen, "kg_open: out of memory");
        goto err;
    }
    if (ctx->cfg.ncluster > 0) {
        if (ctx->cfg.debit_mode == KGC_DEBIT_LEASED || ctx->cfg.lease_journal[0] != '\0') {
            snprintf(err, errlen, "%s: debit leased (and lease_journal) is not supported with "
                     "'redis cluster' yet", config_path);
            kg_cache_free(&ctx->cache);
            goto err;
        }
        if ((ctx->cmap = malloc(sizeof *ctx->cmap)) == NULL) {
            snprintf(err, errlen, "kg_open: out of memory");
            kg_cache_free(&ctx->cache);
            goto err;
        }
        kgc_cluster_map_init(ctx->cmap);
        /* Bounded (timeout_ms per seed); no node up is not an error here,
         * as Redis down is not in single-node mode: asked again later. */
        if (kgc_cluster_load(ctx->cmap, &ctx->cfg, ctx->cfg.timeout_ms, cerr, sizeof cerr) != 0 ||
            !ctx->cmap->complete)
            ctx->cl_stale = 1;
    }
    if (kg_lease_open(ctx, err, errlen) != 0) {    /* debit leased: journal, replay */
        kg_cache_free(&ctx->cache);
        goto err;
    }
    return ctx;
err:
    free(ctx->cmap);
    if (ctx->pepper != NULL)
        sodium_free(ctx->pepper);
    kgc_config_wipe(&ctx->cfg);         /* the Redis password */
    free(ctx);
    return NULL;
}

KG_EXPORT void kg_close(kg_ctx *ctx)
{
    if (ctx == NULL)
        return;
    kg_lease_close(ctx);        /* debit leased: flush, return the leases */
    ctx->closing = 1;
    kg_link_drop_all(ctx);      /* pending requests fail with KG_BACKEND_ERROR... */
    kg_route_unpark(ctx, kg_mono_ms());  /* (those waiting for a primary too) */
    kg_flow_deliver(ctx);       /* ...and their done() is called here */
    while (ctx->inflight != NULL)   /* none expected: no connection holds them now */
        kg_pending_free(ctx->inflight);
    kg_flow_free_spare(ctx);
    kg_cache_free(&ctx->cache);
    kgc_catalog_free(ctx->catalog);
    if (ctx->pepper != NULL)
        sodium_free(ctx->pepper);
    free(ctx->cmap);
    kgc_config_wipe(&ctx->cfg);         /* the Redis password */
    free(ctx);
}

/* Blocking form: the request's state machine, driven by poll() on the
 * connections until it answers or a round trip overruns timeout_ms.
 * settle: kg_settle rather than an authorization. */
static kg_status run_blocking(kg_ctx *ctx, const kg_request *req, kg_result *res,
                              kg_hold *hold, size_t hold_size, int settle)
{
    kg_result scratch;
    kg_hold none;
    kg_pending *p;

    kg_hold_init(&none);
    kg_hold_out(hold, hold_size, &none);
    if (res == NULL)
        res = &scratch;
    if (ctx == NULL) {
        kg_result_init(res);
        res->status = KG_BAD_REQUEST;
        return res->status;
    }
    if (kg_flow_start(ctx, req, res, 1, settle, &p) != 1)
        return res->status;
    while (!p->finished) {
        int64_t now = kg_mono_ms();
        if (ctx->cmap != NULL) {
            /* Cluster: resends after TRYAGAIN & co are due, or a node's
             * link overran the deadline (dropped: fails what is on it). */
            kg_route_timeouts(ctx, now);
            if (p->finished)
                break;
        } else if (now >= p->deadline) {
            kg_link_drop(ctx, ctx->main);   /* fails p (and anything else on it) */
            break;
        }
        kg_link_write_now(ctx);
        if (!p->finished) {
            int64_t due = kg_flow_due(p) - now;
            kg_link_poll(ctx, due < 0 ? 0 : (int)due);
        }
    }
    if (!p->finished) {
        /* Cannot happen: the dropped connection ran p's callback. Leak p
         * rather than free what hiredis might still hold. */
        p->cancelled = 1;
        kg_result_init(res);
        return res->status;
    }
    *res = p->r;
    kg_hold_out(hold, hold_size, &p->h);
    kg_pending_free(p);
    return res->status;
}

KG_EXPORT kg_status kg_authorize(kg_ctx *ctx, const kg_request *req, kg_result *res)
{
    return run_blocking(ctx, req, res, NULL, 0, 0);
}

KG_EXPORT kg_status kg_authorize_hold(kg_ctx *ctx, const kg_request *req, kg_result *res,
                                      kg_hold *hold, size_t hold_size)
{
    return run_blocking(ctx, req, res, hold, hold_size, 0);
}

KG_EXPORT kg_status kg_settle(kg_ctx *ctx, const kg_request *req, kg_result *res,
                              kg_hold *hold, size_t hold_size)
{
    return run_blocking(ctx, req, res, hold, hold_size, 1);
}

KG_EXPORT const char *kg_strerror(kg_status s)
{
    switch (s) {
    case KG_OK:                 return "authorized";
    case KG_TOKEN_MALFORMED:    return "token malformed (bad format or checksum)";
    case KG_TOKEN_UNKNOWN:      return "token unknown, rotated away or unassigned";
    case KG_KEY_REVOKED:        return "key revoked";
    case KG_SERVICE_DISABLED:   return "service not enabled on this key";
    case KG_MODEL_DENIED:       return "model not allowed by this key's policy";
    case KG_QUOTA_EXCEEDED:     return "free-tier quota used up for today";
    case KG_INSUFFICIENT_FUNDS: return "wallet balance below the request's cost";
    case KG_BAD_REQUEST:        return "bad request (unknown service, model or parameter, or bad arguments)";
    case KG_BACKEND_ERROR:      return "key store unreachable or too slow";
    case KG_REQUEST_ID_CONFLICT: return "request id already used for a different request";
    case KG_KEY_EXPIRED:        return "key expired";
    case KG_BUDGET_EXCEEDED:    return "the key's daily or monthly spend budget would be exceeded";
    case KG_RATE_LIMITED:       return "rate limit of this key and service reached";
    }
    return "unknown status";
}

KG_EXPORT const char *kg_status_code(kg_status s)
{
    switch (s) {
    case KG_OK:                 return "ok";
    case KG_TOKEN_MALFORMED:    return "token_malformed";
    case KG_TOKEN_UNKNOWN:      return "token_unknown";
    case KG_KEY_REVOKED:        return "key_revoked";
    case KG_SERVICE_DISABLED:   return "service_disabled";
    case KG_MODEL_DENIED:       return "model_denied";
    case KG_QUOTA_EXCEEDED:     return "quota_exceeded";
    case KG_INSUFFICIENT_FUNDS: return "insufficient_funds";
    case KG_BAD_REQUEST:        return "bad_request";
    case KG_BACKEND_ERROR:      return "backend_error";
    case KG_REQUEST_ID_CONFLICT: return "request_id_conflict";
    case KG_KEY_EXPIRED:        return "key_expired";
    case KG_BUDGET_EXCEEDED:    return "budget_exceeded";
    case KG_RATE_LIMITED:       return "rate_limited";
    }
    return "unknown";
}

KG_EXPORT int kg_http_status(kg_status s)
{
    switch (s) {
    case KG_OK:                 return 200;
    case KG_TOKEN_MALFORMED:
    case KG_TOKEN_UNKNOWN:
    case KG_KEY_REVOKED:        return 401;
    case KG_SERVICE_DISABLED:
    case KG_MODEL_DENIED:       return 403;
    case KG_QUOTA_EXCEEDED:     return 429;
    case KG_INSUFFICIENT_FUNDS: return 402;
    case KG_BAD_REQUEST:        return 400;
    case KG_BACKEND_ERROR:      return 503;
    case KG_REQUEST_ID_CONFLICT: return 409;
    case KG_KEY_EXPIRED:        return 401;
    case KG_BUDGET_EXCEEDED:    return 402;
    case KG_RATE_LIMITED:       return 429;
    }
    return 500;
}

KG_EXPORT kg_status kg_estimate(kg_ctx *ctx, const kg_request *req, int64_t *cost_micros)
{
    char err[160];
    const kgc_model *m;

    if (cost_micros == NULL)
        return KG_BAD_REQUEST;
    *cost_micros = 0;
    if (ctx == NULL || req == NULL || req->service == NULL ||
        (req->nparams > 0 && req->params == NULL))
        return KG_BAD_REQUEST;
    if (ctx->catalog == NULL)
        return KG_BACKEND_ERROR;
    m = kgc_service_model(kgc_catalog_service(ctx->catalog, req->service), req->model);
    if (m == NULL)
        return KG_BAD_REQUEST;
    if (kgc_price(m, req->params, req->nparams, cost_micros, NULL, err, sizeof err) != 0) {
        *cost_micros = 0;
        return KG_BAD_REQUEST;
    }
    return KG_OK;
}

KG_EXPORT int kg_abi_version(void)
{
    return KG_ABI_VERSION;
}

KG_EXPORT void kg_stats_get(kg_ctx *ctx, kg_stats *st, size_t size)
{
    kg_stats zero;

    if (st == NULL)
        return;
    memset(&zero, 0, sizeof zero);
    memset(st, 0, size);
    memcpy(st, ctx != NULL ? &ctx->stats : &zero, size < sizeof zero ? size : sizeof zero);
}

/* ---- non-blocking form ---------------------------------------------- */

KG_EXPORT int kg_loop_attach(kg_ctx *ctx, const kg_loop_hooks *hooks, void *host)
{
    kg_link *ls[KG_LINKS_MAX];
    int n;

    if (ctx == NULL || (hooks != NULL && (hooks->version != KG_ABI_VERSION || hooks->watch == NULL)))
        return -1;
    n = kg_link_list(ctx, ls, KG_LINKS_MAX);
    for (int i = 0; i < n; i++)                /* the previous host forgets our fds */
        if (ls[i] != NULL) {
            if (ctx->hooks != NULL && ls[i]->told != 0)
                ctx->hooks->watch(ctx->host, ls[i]->fd, 0);
            ls[i]->told = 0;
        }
    if (hooks != NULL) {
        ctx->hooks_copy = *hooks;
        ctx->hooks = &ctx->hooks_copy;
    } else {
        ctx->hooks = NULL;
    }
    ctx->host = host;
    kg_link_notify_all(ctx);
    return 0;
}

KG_EXPORT void kg_loop_ready(kg_ctx *ctx, int fd, int events)
{
    if (ctx == NULL)
        return;
    kg_link_handle(ctx, fd, events);
    kg_link_drop_refused(ctx);                   /* a link whose AUTH was refused */
    kg_link_probe_maintain(ctx, kg_mono_ms());   /* a look-up's reply may have come */
    kg_route_unpark(ctx, kg_mono_ms());           /* and the commands waiting for it go */
    kg_flow_deliver(ctx);
}

KG_EXPORT int kg_loop_next_timeout_ms(kg_ctx *ctx)
{
    int64_t first = -1, d;

    if (ctx == NULL)
        return -1;
    if (ctx->doneq != NULL)
        return 0;                       /* answers waiting for kg_loop_timeout */
    for (kg_pending *p = ctx->inflight; p != NULL; p = p->next)
        if (first < 0 || kg_flow_due(p) < first)
            first = kg_flow_due(p);
    d = kg_link_probe_deadline(ctx);
    if (d >= 0 && (first < 0 || d < first))
        first = d;
    d = kg_lease_next(ctx);                 /* debit leased: flush, renew */
    if (d >= 0 && (first < 0 || d < first))
        first = d;
    if (first < 0)
        return -1;
    d = first - kg_mono_ms();
    return d < 0 ? 0 : d > INT_MAX ? INT_MAX : (int)d;
}

KG_EXPORT void kg_loop_timeout(kg_ctx *ctx)
{
    if (ctx == NULL)
        return;
    kg_route_timeouts(ctx, kg_mono_ms());
    kg_lease_tick(ctx, kg_mono_ms());       /* debit leased: flush, renew */
    kg_link_probe_maintain(ctx, kg_mono_ms());
    kg_route_unpark(ctx, kg_mono_ms());
    kg_flow_deliver(ctx);
}

static int start(kg_ctx *ctx, const kg_request *req, kg_result *res, kg_hold *hold,
                 size_t hold_size, int settle, kg_done_fn done, void *arg, kg_pending **handle)
{
    kg_result now;
    kg_hold none;
    kg_pending *p;
    int rc;

    kg_hold_init(&none);
    if (handle != NULL)
        *handle = NULL;
    if (res == NULL)
        return -1;
    if (ctx == NULL || done == NULL) {
        kg_result_init(res);
        res->status = KG_BAD_REQUEST;
        kg_hold_out(hold, hold_size, &none);
        return -1;
    }
    /* *res and *hold are written once: now for an answer known at once,
     * else at done. */
    rc = kg_flow_start(ctx, req, &now, 0, settle, &p);
    if (rc != 1) {
        *res = now;
        kg_hold_out(hold, hold_size, &none);
    }
    if (rc == 1) {
        p->out = res;
        p->hout = hold;
        p->hsize = hold != NULL ? hold_size : 0;
        p->done = done;
        p->arg = arg;
        if (handle != NULL)
            *handle = p;
    }
    return rc;
}

KG_EXPORT int kg_authorize_start(kg_ctx *ctx, const kg_request *req, kg_result *res,
                                 kg_done_fn done, void *arg, kg_pending **handle)
{
    return start(ctx, req, res, NULL, 0, 0, done, arg, handle);
}

KG_EXPORT int kg_authorize_hold_start(kg_ctx *ctx, const kg_request *req, kg_result *res,
                                      kg_hold *hold, size_t hold_size,
                                      kg_done_fn done, void *arg, kg_pending **handle)
{
    return start(ctx, req, res, hold, hold_size, 0, done, arg, handle);
}

KG_EXPORT int kg_settle_start(kg_ctx *ctx, const kg_request *req, kg_result *res,
                              kg_hold *hold, size_t hold_size,
                              kg_done_fn done, void *arg, kg_pending **handle)
{
    return start(ctx, req, res, hold, hold_size, 1, done, arg, handle);
}

KG_EXPORT void kg_authorize_cancel(kg_ctx *ctx, kg_pending *handle)
{
    if (ctx != NULL)
        kg_flow_cancel(ctx, handle);
}

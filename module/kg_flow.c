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
 * How each command reaches Redis (one connection, or the node of its slot
 * on a cluster, with redirects followed) is kg_route.c.
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

void kg_flow_inflight(kg_pending *p)
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

void kg_flow_finish(kg_pending *p, kg_status s)
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
    const char *argv[26 + 2 * KG_MAX_PARAMS];
    /* The document is returned only when it will be cached. */
    int want_doc = ctx->cfg.cache_ttl_ms > 0 && ctx->sub_ok;
    int argc;

    if (kgc_rkey(tk, ctx->cfg.key_prefix, KGC_RK_TOKEN, p->tok_team, p->hash) < 0) {
        kg_flow_finish(p, KG_BACKEND_ERROR);
        return;
    }
    utc_tags(day, month, hour);
    snprintf(now, sizeof now, "%lld", (long long)kg_wall_ms());
    snprintf(amt, sizeof amt, "%lld", (long long)p->cost);
    snprintf(lim, sizeof lim, "%lld", (long long)p->quota_limit);
    snprintf(ttl, sizeof ttl, "%d", ctx->cfg.hold_ttl_ms);
    const char *a[26] = {"EVALSHA", ctx->sha[KG_SCRIPT_COLD], "1", tk,
                         ctx->cfg.key_prefix, p->tok_team, p->hash, now, p->settle ? "s" : "a",
                         p->service, p->model, p->request_id, p->fp,
                         p->cold_bad ? "1" : "0", p->cold_free ? "1" : "0",
                         p->cold_settle ? "1" : "0", p->cold_hold_bad ? "1" : "0",
                         amt, lim, ttl, ctx->cfg.usage_counters ? "1" : "0", day, month, hour,
                         want_doc ? "1" : "0", ctx->cmap != NULL ? "1" : "0"};
    memcpy(argv, a, sizeof a);
    argc = ctx->cfg.usage_counters ? param_args(p, argv, 26, vals) : 26;
    kg_route_issue(p, KG_ST_EVAL, argc, argv);
}

static void issue_script(kg_pending *p)
{
    kg_ctx *ctx = p->ctx;
    const char *P = ctx->cfg.key_prefix, *T = p->r.team_id, *K = p->r.key_id;
    char k1[KGC_RKEY_MAX], k2[KGC_RKEY_MAX], k3[KGC_RKEY_MAX], num[24];
    char rl[KGC_RKEY_MAX], ps[24], pm[24], day[16], month[16], hour[16];

    kg_route_team_slot(p, p->script == KG_SCRIPT_COLD ? p->tok_team : T);  /* cluster: the node */
    if (ctx->sha[p->script][0] == '\0') {
        const char *argv[3] = {"SCRIPT", "LOAD", kg_script_text[p->script]};
        kg_route_issue(p, KG_ST_LOAD, 3, argv);
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
        kg_flow_finish(p, KG_BACKEND_ERROR);
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
            kg_flow_finish(p, KG_BACKEND_ERROR);
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
            kg_route_issue(p, KG_ST_EVAL, argc, argv);
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
        kg_route_issue(p, KG_ST_EVAL, argc, argv);
    } else {
        if (kgc_rkey(k1, P, KGC_RK_QUOTA, T, p->service, day) < 0 ||
            kgc_rkey(k2, P, KGC_RK_REQ, T, K, p->request_id) < 0) {
            kg_flow_finish(p, KG_BACKEND_ERROR);
            return;
        }
        snprintf(num, sizeof num, "%lld", (long long)p->quota_limit);
        const char *argv[14] = {"EVALSHA", ctx->sha[p->script], "3", k1, k2, rl, num,
                                p->request_id, p->r.user_id, p->service, p->model, p->fp,
                                ps, pm};
        kg_route_issue(p, KG_ST_EVAL, 14, argv);
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
        kg_flow_finish(p, f->st);
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
        kg_flow_finish(p, st);
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
        kg_flow_finish(p, rc == KG_LEASE_EXACT ? KG_BACKEND_ERROR : (kg_status)rc);
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
        kg_flow_finish(p, st);
        return;
    }
    if (ctx->catalog == NULL) {
        const char *argv[2] = {"GET", k};
        if (++p->catalog_fetches > 3 ||
            kgc_rkey(k, ctx->cfg.key_prefix, "%s", KGC_RK_CATALOG) < 0) {
            kg_flow_finish(p, KG_BACKEND_ERROR);
            return;
        }
        p->catalog_gen_at = ctx->catalog_gen;
        p->catalog_sub_ok = ctx->sub_ok;
        kg_route_issue(p, KG_ST_CATALOG, 2, argv);
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
        kg_flow_finish(p, KG_BACKEND_ERROR);    /* none published yet, or not valid */
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
        kg_flow_finish(p, KG_BACKEND_ERROR);
        return;
    }
    memcpy(ctx->sha[p->script], r->str, 41);
    kg_route_load_everywhere(ctx, p->script, p->node);   /* cluster: the other nodes */
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
        kg_flow_finish(p, KG_OK);
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
        kg_route_issue(p, KG_ST_SYNC, 3, pub);
        return;
    }
    snprintf(n, sizeof n, "%d", ctx->cfg.min_replicas_ack);
    snprintf(t, sizeof t, "%d", ctx->cfg.replica_ack_timeout_ms);
    kg_route_issue(p, KG_ST_WAIT, 3, argv);
    if (!p->finished)
        p->deadline += ctx->cfg.replica_ack_timeout_ms;   /* WAIT may take that long */
}

static void on_wait(kg_pending *p, redisReply *r)
{
    if (r->type == REDIS_REPLY_INTEGER && r->integer >= p->ctx->cfg.min_replicas_ack) {
        kg_flow_finish(p, KG_OK);
        return;
    }
    if (p->ctx->cfg.nsentinels > 0)
        p->ctx->relink = 1;             /* is this still the primary? ask the sentinels */
    kg_flow_finish(p, KG_BACKEND_ERROR);
}

/* The settle script's answer (kg_scripts.c). */
static void on_settle(kg_pending *p, redisReply *r, const char *tag)
{
    long long a = 0, b = 0, h = 0;
    char team[KGC_ID_MAX];

    if (strcmp(tag, "ok") == 0 || strcmp(tag, "replay") == 0) {
        if (r->elements < 4 || reply_int(r->element[1], &a) != 0 ||
            reply_int(r->element[2], &b) != 0 || reply_int(r->element[3], &h) != 0) {
            kg_flow_finish(p, KG_BACKEND_ERROR);
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
        kg_flow_finish(p, KG_OK);
    } else if (strcmp(tag, "wallet") == 0) {
        /* The hold is on another wallet of the team (the policy changed
         * since): settle there. Checked like any wallet id we put in a key. */
        if (r->elements < 2 || r->element[1]->type != REDIS_REPLY_STRING ||
            kgc_id_team_of(r->element[1]->str, 'w', team) != 0 ||
            strcmp(team, p->r.team_id) != 0 || strcmp(r->element[1]->str, p->r.wallet_id) == 0 ||
            ++p->wallet_moves > 1) {
            kg_flow_finish(p, KG_BACKEND_ERROR);
            return;
        }
        copy_id(p->r.wallet_id, r->element[1]->str);
        issue_script(p);
    } else if (strcmp(tag, "nohold") == 0) {
        p->r.wallet_id[0] = '\0';
        kg_flow_finish(p, KG_BAD_REQUEST);      /* no hold of this key under that id */
    } else {                            /* "nowallet": a data error, fail closed */
        kg_flow_finish(p, KG_BACKEND_ERROR);
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
        kg_flow_finish(p, KG_BACKEND_ERROR);
        return;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
        r->element[0]->type != REDIS_REPLY_STRING) {
        kg_flow_finish(p, KG_BACKEND_ERROR);
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
            kg_flow_finish(p, KG_BACKEND_ERROR);
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
                kg_flow_finish(p, KG_BACKEND_ERROR);
                return;
            }
            p->r.cost_micros = p->cost;
            p->r.balance_micros = a;
            confirm(p);
            return;
        }
        kg_flow_finish(p, KG_OK);
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
            kg_flow_finish(p, KG_OK);
        else
            confirm(p);                 /* the first try may not have reached a replica */
    } else if (strcmp(tag, "funds") == 0) {
        if (r->elements >= 2 && reply_int(r->element[1], &a) == 0)
            p->r.balance_micros = a;
        kg_flow_finish(p, KG_INSUFFICIENT_FUNDS);
    } else if (strcmp(tag, "quota") == 0) {
        kg_flow_finish(p, KG_QUOTA_EXCEEDED);
    } else if (strcmp(tag, "budget") == 0) {
        kg_flow_finish(p, KG_BUDGET_EXCEEDED);
    } else if (strcmp(tag, "rate") == 0) {
        if (r->elements < 2 || reply_int(r->element[1], &a) != 0 || a < 1)
            a = 1000;                   /* a window's worth: never "retry now" */
        p->h.retry_after_ms = a;
        kg_flow_finish(p, KG_RATE_LIMITED);
    } else if (strcmp(tag, "conflict") == 0) {
        kg_flow_finish(p, KG_REQUEST_ID_CONFLICT);  /* the id names another request */
    } else {                            /* "nowallet": a data error, fail closed */
        p->r.balance_micros = -1;
        kg_flow_finish(p, KG_BACKEND_ERROR);
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
        kg_flow_finish(p, KG_TOKEN_UNKNOWN);    /* never issued, rotated away, unassigned */
        return;
    }
    if (strcmp(tag, "k") != 0 || r->elements < 7) {
        kg_flow_finish(p, KG_BACKEND_ERROR);    /* a damaged record or document: fail closed */
        return;
    }
    for (size_t i = 1; i < 7; i++)
        if (r->element[i]->type != REDIS_REPLY_STRING) {
            kg_flow_finish(p, KG_BACKEND_ERROR);
            return;
        }
    exp = strtoll(r->element[3]->str, &end, 10);
    if (!kgc_id_plausible(r->element[1]->str) || !kgc_id_plausible(r->element[2]->str) ||
        *end != '\0' || exp < 0 || r->element[5]->len >= KG_ID_LEN) {
        kg_flow_finish(p, KG_BACKEND_ERROR);
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
            kg_flow_finish(p, refusals[i].st);
            return;
        }
    for (size_t i = 0; i < sizeof bodies / sizeof *bodies; i++)
        if (strcmp(v, bodies[i].v) == 0 && r->elements >= 8) {
            p->script = bodies[i].script;
            if (p->script == KG_SCRIPT_QUOTA)
                p->cost = 0;
            p->wallet_moves = 1;        /* the script followed a "wallet" answer already */
            if (r->element[7]->type == REDIS_REPLY_ERROR) {
                kg_flow_finish(p, KG_BACKEND_ERROR);
                return;
            }
            on_eval(p, r->element[7]);
            return;
        }
    kg_flow_finish(p, KG_BACKEND_ERROR);
}

void kg_flow_on_reply(redisAsyncContext *ac, void *reply, void *priv)
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
        kg_flow_finish(p, KG_BACKEND_ERROR);
        return;
    }
    if (p->ctx->cmap != NULL && r->type == REDIS_REPLY_ERROR && kg_route_reply(p, step, r))
        return;
    switch (step) {
    case KG_ST_CATALOG: on_catalog(p, r); break;
    case KG_ST_LOAD:    on_load(p, r);    break;
    case KG_ST_EVAL:    on_eval(p, r);    break;
    case KG_ST_SYNC:    confirm(p);       break;
    case KG_ST_WAIT:    on_wait(p, r);    break;
    default:            kg_flow_finish(p, KG_BACKEND_ERROR); break;
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
        kg_entry_unref(p->ent);         /* freed by kg_flow_on_reply when the reply comes */
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

/*
 * ngx_http_keygate_access.c - a request through keygate: the access-phase
 * handler, its per-request state, the wait for libkeygate's answer, and
 * the $keygate_* variables that show the answer.
 *
 * The handler evaluates the location's values, finds the client's token
 * and starts one non-blocking authorization; it returns NGX_AGAIN until a
 * posted event, sent from libkeygate's callback, re-runs the phases. The
 * state lives in r->pool and outlives an internal redirect.
 */

#include "ngx_http_keygate.h"


typedef enum {
    NGX_HTTP_KEYGATE_WAITING = 1,             /* kg_authorize_start returned 1 */
    NGX_HTTP_KEYGATE_DONE                     /* res holds the decision */
} ngx_http_keygate_state_e;


/*
 * Per-request state, allocated from r->pool. A pool cleanup points at it
 * so that it survives an internal redirect (which clears module contexts)
 * and so that a request freed while waiting cancels its pending call.
 */
typedef struct {
    ngx_http_request_t            *request;
    ngx_http_keygate_loc_conf_t   *lcf;       /* location that was authorized */
    ngx_http_keygate_state_e       state;
    kg_pending                    *pending;   /* non-NULL while WAITING */
    kg_request                     req;       /* strings live in r->pool */
    kg_result                      res;       /* written by libkeygate */
    kg_hold                        hold;      /* written by libkeygate: a settle
                                                 service's hold */
    const char                    *message;   /* refusal text; NULL = kg_strerror */
    uint64_t                       started_us; /* for the latency histogram */
    ngx_uint_t                     counted;   /* this decision is in the metrics */
    ngx_event_t                    resume;    /* posted when libkeygate answers */
} ngx_http_keygate_ctx_t;


static ngx_int_t ngx_http_keygate_start(ngx_http_request_t *r,
    ngx_http_keygate_loc_conf_t *lcf, ngx_http_keygate_ctx_t *ctx);
static ngx_int_t ngx_http_keygate_eval_params(ngx_http_request_t *r,
    ngx_http_keygate_loc_conf_t *lcf, ngx_http_keygate_ctx_t *ctx);
static ngx_int_t ngx_http_keygate_decide(ngx_http_request_t *r,
    ngx_http_keygate_ctx_t *ctx);
static ngx_int_t ngx_http_keygate_same(ngx_http_request_t *r,
    ngx_http_complex_value_t *cv, const char *s);
static ngx_int_t ngx_http_keygate_eval_str(ngx_http_request_t *r,
    ngx_http_complex_value_t *cv, ngx_uint_t keep_empty, const char **out);
static ngx_int_t ngx_http_keygate_find_token(ngx_http_request_t *r,
    ngx_str_t *token);
static ngx_http_keygate_ctx_t *ngx_http_keygate_get_ctx(ngx_http_request_t *r);
static void ngx_http_keygate_cleanup(void *data);
static void ngx_http_keygate_done(void *arg, kg_result *res);
static void ngx_http_keygate_resume(ngx_event_t *ev);

static ngx_int_t ngx_http_keygate_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);


enum {
    NGX_HTTP_KEYGATE_VAR_KEY_ID,
    NGX_HTTP_KEYGATE_VAR_USER_ID,
    NGX_HTTP_KEYGATE_VAR_TEAM_ID,
    NGX_HTTP_KEYGATE_VAR_COST,
    NGX_HTTP_KEYGATE_VAR_BALANCE,
    NGX_HTTP_KEYGATE_VAR_STATUS
};


static ngx_http_variable_t  ngx_http_keygate_vars[] = {

    { ngx_string("keygate_key_id"), NULL, ngx_http_keygate_variable,
      NGX_HTTP_KEYGATE_VAR_KEY_ID, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("keygate_user_id"), NULL, ngx_http_keygate_variable,
      NGX_HTTP_KEYGATE_VAR_USER_ID, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("keygate_team_id"), NULL, ngx_http_keygate_variable,
      NGX_HTTP_KEYGATE_VAR_TEAM_ID, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("keygate_cost_micros"), NULL, ngx_http_keygate_variable,
      NGX_HTTP_KEYGATE_VAR_COST, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("keygate_balance_micros"), NULL, ngx_http_keygate_variable,
      NGX_HTTP_KEYGATE_VAR_BALANCE, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("keygate_status"), NULL, ngx_http_keygate_variable,
      NGX_HTTP_KEYGATE_VAR_STATUS, NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


/* ------------------------------------------------------------------ */
/* The access phase                                                    */
/* ------------------------------------------------------------------ */

/*
 * Access-phase handler. Called once to start, then again after the posted
 * resume event (and possibly on stray write events while waiting, which
 * it answers NGX_AGAIN). A request that passed keygate and is internally
 * redirected to a location with the same service and model is not
 * authorized (nor charged) a second time.
 */
ngx_int_t
ngx_http_keygate_handler(ngx_http_request_t *r)
{
    ngx_int_t                     rc;
    ngx_pool_cleanup_t           *cln;
    ngx_http_keygate_ctx_t       *ctx;
    ngx_http_keygate_loc_conf_t  *lcf;

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_keygate_module);

    if (lcf->service == NULL) {
        return NGX_DECLINED;
    }

    ctx = ngx_http_keygate_get_ctx(r);

    if (ctx != NULL) {
        if (ctx->state == NGX_HTTP_KEYGATE_WAITING) {
            return NGX_AGAIN;
        }

        if (ctx->lcf == lcf) {
            return ngx_http_keygate_decide(r, ctx);
        }

        /*
         * an internal redirect into another keygate location: the request
         * was let through for this service and model already
         */

        if (ctx->res.status == KG_OK) {
            rc = ngx_http_keygate_same(r, lcf->service, ctx->req.service);
            if (rc == NGX_OK) {
                rc = ngx_http_keygate_same(r, lcf->model, ctx->req.model);
            }

            if (rc == NGX_ERROR) {
                return NGX_ERROR;
            }

            if (rc == NGX_OK) {
                ctx->lcf = lcf;
                return NGX_OK;
            }
        }

    } else {
        ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_keygate_ctx_t));
        if (ctx == NULL) {
            return NGX_ERROR;
        }

        cln = ngx_pool_cleanup_add(r->pool, 0);
        if (cln == NULL) {
            return NGX_ERROR;
        }

        cln->handler = ngx_http_keygate_cleanup;
        cln->data = ctx;

        ctx->request = r;
        ctx->resume.handler = ngx_http_keygate_resume;
        ctx->resume.data = ctx;
        ctx->resume.log = r->connection->log;

        ngx_http_set_ctx(r, ctx, ngx_http_keygate_module);
    }

    return ngx_http_keygate_start(r, lcf, ctx);
}


/*
 * Evaluates the location's values, reads the token and starts one
 * non-blocking authorization. Returns NGX_AGAIN while libkeygate waits
 * for Redis, else the decision (see ngx_http_keygate_decide).
 */
static ngx_int_t
ngx_http_keygate_start(ngx_http_request_t *r, ngx_http_keygate_loc_conf_t *lcf,
    ngx_http_keygate_ctx_t *ctx)
{
    ngx_int_t   rc;
    ngx_str_t   token;

    ngx_memzero(&ctx->req, sizeof(kg_request));
    ngx_memzero(&ctx->res, sizeof(kg_result));
    ngx_memzero(&ctx->hold, sizeof(kg_hold));
    ctx->res.balance_micros = -1;
    ctx->lcf = lcf;
    ctx->state = NGX_HTTP_KEYGATE_DONE;
    ctx->message = NULL;
    ctx->started_us = ngx_http_keygate_now_us();
    ctx->counted = 0;

    if (ngx_http_keygate_eval_str(r, lcf->service, 1, &ctx->req.service)
            != NGX_OK
        || ngx_http_keygate_eval_str(r, lcf->model, 0, &ctx->req.model)
            != NGX_OK
        || ngx_http_keygate_eval_str(r, lcf->request_id, 0,
                                     &ctx->req.request_id)
            != NGX_OK)
    {
        return NGX_ERROR;
    }

    rc = ngx_http_keygate_eval_params(r, lcf, ctx);

    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (rc == NGX_DECLINED) {
        return ngx_http_keygate_decide(r, ctx);
    }

    if (ngx_http_keygate_find_token(r, &token) != NGX_OK) {
        ctx->res.status = KG_TOKEN_MALFORMED;
        ctx->message = "no API token: send \"Authorization: Bearer <token>\""
                       " or \"X-API-Key: <token>\"";
        return ngx_http_keygate_decide(r, ctx);
    }

    if (ngx_http_keygate_kg == NULL) {
        ctx->res.status = KG_BACKEND_ERROR;
        ctx->message = "keygate is not available in this worker";
        return ngx_http_keygate_decide(r, ctx);
    }

    ctx->req.token = (const char *) token.data;
    ctx->req.token_len = token.len;

    rc = kg_authorize_hold_start(ngx_http_keygate_kg, &ctx->req, &ctx->res,
                                 &ctx->hold, sizeof(kg_hold),
                                 ngx_http_keygate_done, ctx, &ctx->pending);

    ngx_http_keygate_loop_sync();

    if (rc == 1) {
        ctx->state = NGX_HTTP_KEYGATE_WAITING;
        ngx_http_keygate_loop_waiting(1);

        /* notice a client that goes away, so its cleanup cancels the call */
        r->read_event_handler = ngx_http_test_reading;

        return NGX_AGAIN;
    }

    ctx->pending = NULL;

    if (rc < 0 && ctx->res.status == KG_OK) {
        ctx->res.status = KG_BACKEND_ERROR;     /* never fail open */
    }

    return ngx_http_keygate_decide(r, ctx);
}


/*
 * Evaluates the location's keygate_param values into ctx->req.params.
 * Returns NGX_OK; NGX_DECLINED for a value that is not an integer (the
 * refusal is then set in ctx); or NGX_ERROR.
 */
static ngx_int_t
ngx_http_keygate_eval_params(ngx_http_request_t *r,
    ngx_http_keygate_loc_conf_t *lcf, ngx_http_keygate_ctx_t *ctx)
{
    u_char                    *p, *last, *msg;
    int64_t                    value, digit;
    ngx_str_t                  s;
    ngx_uint_t                 i, n, negative;
    kg_param                  *params;
    ngx_http_keygate_param_t  *hp;

    if (lcf->params == NULL || lcf->params->nelts == 0) {
        return NGX_OK;
    }

    params = ngx_pcalloc(r->pool, lcf->params->nelts * sizeof(kg_param));
    if (params == NULL) {
        return NGX_ERROR;
    }

    hp = lcf->params->elts;
    n = 0;

    for (i = 0; i < lcf->params->nelts; i++) {

        if (ngx_http_complex_value(r, &hp[i].value, &s) != NGX_OK) {
            return NGX_ERROR;
        }

        if (s.len == 0) {
            continue;              /* a missing quantity counts 0 */
        }

        /* a signed decimal int64; libkeygate refuses negatives */

        p = s.data;
        last = s.data + s.len;
        negative = (*p == '-');

        if (negative || *p == '+') {
            p++;
        }

        value = 0;

        if (p == last) {
            goto bad_param;
        }

        for ( /* void */ ; p < last; p++) {
            if (*p < '0' || *p > '9') {
                goto bad_param;
            }

            digit = *p - '0';

            if (value > (INT64_MAX - digit) / 10) {
                goto bad_param;
            }

            value = value * 10 + digit;
        }

        params[n].name = (const char *) hp[i].name.data;
        params[n].value = negative ? -value : value;
        n++;
    }

    ctx->req.params = params;
    ctx->req.nparams = n;

    return NGX_OK;

bad_param:

    ctx->res.status = KG_BAD_REQUEST;

    msg = ngx_pnalloc(r->pool, hp[i].name.len + 64);
    if (msg == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(msg, "parameter %V is not an integer%Z", &hp[i].name);
    ctx->message = (const char *) msg;

    return NGX_DECLINED;
}


/*
 * Turns a finished authorization into the access phase's answer: NGX_OK
 * lets the request through; a refusal is sent here, as JSON, and the
 * request finalized, so the phase engine is told NGX_DONE.
 */
static ngx_int_t
ngx_http_keygate_decide(ngx_http_request_t *r, ngx_http_keygate_ctx_t *ctx)
{
    ngx_int_t  rc;

    /* decide() runs again when an internal redirect comes back to the same
     * location: one authorization, counted once */
    if (!ctx->counted) {
        ctx->counted = 1;
        ngx_http_keygate_metrics_decision(&ctx->res, ctx->started_us);
    }

    if (ctx->res.status == KG_OK) {
        return NGX_OK;
    }

    r->write_event_handler = ngx_http_request_empty_handler;

    rc = ngx_http_keygate_send_refusal(r, &ctx->req, &ctx->res, ctx->message,
                                       ctx->hold.retry_after_ms);

    ngx_http_finalize_request(r, rc);

    return NGX_DONE;
}


/*
 * Whether complex value cv (NULL or empty: none) evaluates to s (NULL:
 * none). NGX_OK: the same, NGX_DECLINED: not, NGX_ERROR.
 */
static ngx_int_t
ngx_http_keygate_same(ngx_http_request_t *r, ngx_http_complex_value_t *cv,
    const char *s)
{
    ngx_str_t  v;

    ngx_str_null(&v);

    if (cv != NULL && ngx_http_complex_value(r, cv, &v) != NGX_OK) {
        return NGX_ERROR;
    }

    if (s == NULL) {
        return v.len == 0 ? NGX_OK : NGX_DECLINED;
    }

    return (v.len == ngx_strlen(s) && ngx_strncmp(v.data, s, v.len) == 0)
           ? NGX_OK : NGX_DECLINED;
}


/*
 * Evaluates a directive's value (cv may be NULL: not configured) into a
 * NUL-terminated string from the request pool. An empty value leaves *out
 * NULL, unless keep_empty. NGX_OK, or NGX_ERROR.
 */
static ngx_int_t
ngx_http_keygate_eval_str(ngx_http_request_t *r, ngx_http_complex_value_t *cv,
    ngx_uint_t keep_empty, const char **out)
{
    u_char     *p;
    ngx_str_t   v;

    *out = NULL;

    if (cv == NULL) {
        return NGX_OK;
    }

    if (ngx_http_complex_value(r, cv, &v) != NGX_OK) {
        return NGX_ERROR;
    }

    if (v.len == 0 && !keep_empty) {
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, v.len + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    *ngx_cpymem(p, v.data, v.len) = '\0';
    *out = (const char *) p;

    return NGX_OK;
}

/* out = [p, last) without leading and trailing spaces. */
static void
ngx_http_keygate_trim(u_char *p, u_char *last, ngx_str_t *out)
{
    while (p < last && *p == ' ') {
        p++;
    }

    while (last > p && last[-1] == ' ') {
        last--;
    }

    out->data = p;
    out->len = last - p;
}


/*
 * Finds the client's token: "Authorization: Bearer <token>" first, else
 * "X-API-Key: <token>". token points into the request's header memory.
 * Returns NGX_OK or NGX_DECLINED (no token offered).
 */
static ngx_int_t
ngx_http_keygate_find_token(ngx_http_request_t *r, ngx_str_t *token)
{
    u_char           *p, *last;
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    h = r->headers_in.authorization;

    if (h != NULL
        && h->value.len >= sizeof("Bearer ") - 1
        && ngx_strncasecmp(h->value.data, (u_char *) "Bearer ",
                           sizeof("Bearer ") - 1) == 0)
    {
        p = h->value.data + sizeof("Bearer ") - 1;
        last = h->value.data + h->value.len;

        ngx_http_keygate_trim(p, last, token);
        return NGX_OK;
    }

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == sizeof("X-API-Key") - 1
            && ngx_strncasecmp(h[i].key.data, (u_char *) "X-API-Key",
                               sizeof("X-API-Key") - 1) == 0)
        {
            p = h[i].value.data;
            last = p + h[i].value.len;

            ngx_http_keygate_trim(p, last, token);
            return NGX_OK;
        }
    }

    return NGX_DECLINED;
}


/*
 * The request's keygate context, also after an internal redirect (which
 * clears module contexts): then it is found again through the pool cleanup
 * that owns it, as ngx_http_realip_module does. Subrequests share the
 * main request's pool, so they see its result too.
 */
static ngx_http_keygate_ctx_t *
ngx_http_keygate_get_ctx(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t      *cln;
    ngx_http_keygate_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_keygate_module);

    if (ctx != NULL) {
        return ctx;
    }

    for (cln = r->pool->cleanup; cln; cln = cln->next) {
        if (cln->handler == ngx_http_keygate_cleanup) {
            ctx = cln->data;
            ngx_http_set_ctx(r, ctx, ngx_http_keygate_module);
            return ctx;
        }
    }

    return NULL;
}


/*
 * Pool cleanup: the request is going away. If libkeygate still works on
 * it (client gone, worker shutting down), cancel, so done is never called
 * with freed memory.
 */
static void
ngx_http_keygate_cleanup(void *data)
{
    ngx_http_keygate_ctx_t  *ctx = data;

    if (ctx->pending != NULL) {
        if (ngx_http_keygate_kg != NULL) {
            kg_authorize_cancel(ngx_http_keygate_kg, ctx->pending);
        }

        ctx->pending = NULL;
        ngx_http_keygate_loop_waiting(-1);
        ngx_http_keygate_loop_sync();
    }

    if (ctx->resume.posted) {
        ngx_delete_posted_event(&ctx->resume);
    }
}


/*
 * libkeygate's completion callback. It runs inside kg_loop_ready/
 * kg_loop_timeout/kg_close, so it only records the answer and posts an
 * event: the request continues after libkeygate has returned, never
 * re-entering it.
 */
static void
ngx_http_keygate_done(void *arg, kg_result *res)
{
    ngx_http_keygate_ctx_t  *ctx = arg;

    (void) res;                 /* == &ctx->res */

    ctx->pending = NULL;
    ctx->state = NGX_HTTP_KEYGATE_DONE;
    ngx_http_keygate_loop_waiting(-1);

    if (ngx_http_keygate_loop_exiting()) {
        return;
    }

    ngx_post_event(&ctx->resume, &ngx_posted_events);
}


/* The posted event: carry on with the request's phases. */
static void
ngx_http_keygate_resume(ngx_event_t *ev)
{
    ngx_connection_t        *c;
    ngx_http_request_t      *r;
    ngx_http_keygate_ctx_t  *ctx;

    ctx = ev->data;
    r = ctx->request;
    c = r->connection;

    ngx_http_set_log_request(c->log, r);

    r->read_event_handler = ngx_http_block_reading;
    r->write_event_handler(r);

    ngx_http_run_posted_requests(c);
}


/* ------------------------------------------------------------------ */
/* Variables                                                           */
/* ------------------------------------------------------------------ */

static ngx_int_t
ngx_http_keygate_variable(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    uintptr_t data)
{
    u_char                  *p;
    int64_t                  n;
    const char              *s;
    ngx_http_keygate_ctx_t  *ctx;

    ctx = ngx_http_keygate_get_ctx(r);

    if (ctx == NULL || ctx->state != NGX_HTTP_KEYGATE_DONE) {
        v->not_found = 1;
        return NGX_OK;
    }

    switch (data) {

    case NGX_HTTP_KEYGATE_VAR_KEY_ID:
        s = ctx->res.key_id;
        break;

    case NGX_HTTP_KEYGATE_VAR_USER_ID:
        s = ctx->res.user_id;
        break;

    case NGX_HTTP_KEYGATE_VAR_TEAM_ID:
        s = ctx->res.team_id;
        break;

    case NGX_HTTP_KEYGATE_VAR_STATUS:
        s = kg_status_code(ctx->res.status);
        break;

    default: /* cost, balance */
        n = (data == NGX_HTTP_KEYGATE_VAR_COST) ? ctx->res.cost_micros
                                                : ctx->res.balance_micros;

        if (n < 0) {            /* balance -1: no wallet */
            v->not_found = 1;
            return NGX_OK;
        }

        p = ngx_pnalloc(r->pool, NGX_INT64_LEN);
        if (p == NULL) {
            return NGX_ERROR;
        }

        v->len = ngx_sprintf(p, "%L", n) - p;
        v->data = p;
        v->valid = 1;
        v->no_cacheable = 1;
        v->not_found = 0;
        return NGX_OK;
    }

    /* the id fields are NUL-terminated arrays inside kg_result */

    if (s == NULL || s[0] == '\0') {
        v->not_found = 1;
        return NGX_OK;
    }

    v->data = (u_char *) s;
    v->len = ngx_strlen(s);
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}


ngx_int_t
ngx_http_keygate_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_keygate_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_keygate_get_held(ngx_http_request_t *r, ngx_http_keygate_held_t *out)
{
    ngx_http_keygate_ctx_t  *ctx;

    ctx = ngx_http_keygate_get_ctx(r);

    /*
     * The client went away while the authorization was in flight (the
     * pool cleanup cancels it after the log phase): its hold script may
     * have run. A settle sent now follows it on the same connection, so
     * it either settles that hold or finds none.
     */
    if (ctx != NULL && ctx->state == NGX_HTTP_KEYGATE_WAITING
        && ctx->lcf->settle_params != NULL && ctx->req.request_id != NULL)
    {
        out->lcf = ctx->lcf;
        out->req = &ctx->req;
        out->hold = &ctx->hold;
        out->maybe = 1;
        return NGX_OK;
    }

    /* a replayed authorization holds nothing of its own: the first one's
     * request settles it */
    if (ctx == NULL || ctx->state != NGX_HTTP_KEYGATE_DONE
        || ctx->res.status != KG_OK || ctx->res.replayed
        || ctx->hold.hold_micros <= 0 || ctx->req.request_id == NULL)
    {
        return NGX_DECLINED;
    }

    out->lcf = ctx->lcf;
    out->req = &ctx->req;
    out->hold = &ctx->hold;
    out->maybe = 0;

    return NGX_OK;
}

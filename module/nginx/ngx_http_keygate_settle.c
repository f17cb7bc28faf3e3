/*
 * ngx_http_keygate_settle.c - the log phase of a request that a settle
 * service held (docs/module.md "Reserve and settle"): one non-blocking
 * kg_settle_start with the actual quantities, which outlives the request.
 *
 *   access phase: kg_authorize_hold_start ──► hold (worst-case price)
 *   upstream answers, response sent
 *   log phase:    keygate_settle_param values (e.g. a usage header of the
 *                 upstream) replace the request's params ──► a settle job,
 *                 malloc()ed, copied out of r->pool ──► kg_settle_start
 *   later:        libkeygate's done ──► logged when refused, wiped, freed
 *
 * A client that leaves while the authorization is still pending may have
 * been held already: the settle is sent anyway (measured params 0), after
 * the hold on the same connection; "no hold" is then a normal answer.
 * A keygate_settle_param whose value is empty (the upstream sent no usage)
 * is left out: the library then charges the hold (capped at it). A client
 * that closed the connection before the upstream answered (status 499,
 * no upstream status) settles with every keygate_settle_param at 0: the
 * measured part of the hold is released, the rest of the price charged.
 * While a settle is pending the worker counts it as waiting, so a
 * gracefully exiting worker finishes it; kg_close completes any left with
 * KG_BACKEND_ERROR (the hold is then captured at expiry).
 */

#include "ngx_http_keygate.h"

#include <stdlib.h>
#include <string.h>


#define NGX_HTTP_KEYGATE_SETTLE_MAX  64         /* params of one settle */


typedef struct {
    kg_request   req;
    kg_result    res;
    kg_hold      hold;
    kg_param     params[NGX_HTTP_KEYGATE_SETTLE_MAX];
    kg_pending  *pending;
    ngx_uint_t   maybe;                         /* no hold known: "none" is fine */
    size_t       len;                           /* of buf */
    u_char       buf[1];                        /* the strings, token first */
} ngx_http_keygate_settle_job_t;


static void ngx_http_keygate_settle_done(void *arg, kg_result *res);
static void ngx_http_keygate_settle_free(ngx_http_keygate_settle_job_t *job);


/* Copies s (len bytes) to *p as a NUL-terminated string; returns it. */
static const char *
ngx_http_keygate_settle_copy(u_char **p, const char *s, size_t len)
{
    u_char  *d = *p;

    ngx_memcpy(d, s, len);
    d[len] = '\0';
    *p = d + len + 1;

    return (const char *) d;
}


/* An unsigned decimal int64 (a usage count), or -1. */
static int64_t
ngx_http_keygate_settle_int(ngx_str_t *s)
{
    int64_t     v = 0, digit;
    ngx_uint_t  i;

    if (s->len == 0) {
        return -1;
    }

    for (i = 0; i < s->len; i++) {
        if (s->data[i] < '0' || s->data[i] > '9') {
            return -1;
        }

        digit = s->data[i] - '0';

        if (v > (INT64_MAX - digit) / 10) {
            return -1;
        }

        v = v * 10 + digit;
    }

    return v;
}


ngx_int_t
ngx_http_keygate_settle_handler(ngx_http_request_t *r)
{
    int                             rc;
    size_t                          len, n, i, j;
    int64_t                         v;
    u_char                         *p;
    ngx_str_t                       s;
    ngx_uint_t                      aborted, skip;
    const kg_request               *q;
    ngx_array_t                    *sp;
    ngx_http_keygate_held_t         held;
    ngx_http_keygate_param_t       *hp;
    ngx_http_keygate_settle_job_t  *job;

    if (ngx_http_keygate_get_held(r, &held) != NGX_OK
        || ngx_http_keygate_kg == NULL)
    {
        return NGX_OK;
    }

    q = held.req;
    sp = held.lcf->settle_params;
    hp = sp != NULL ? sp->elts : NULL;

    /* the client went away before the upstream said anything (or even
     * before the authorization answered) */
    aborted = held.maybe
              || (r->headers_out.status == NGX_HTTP_CLIENT_CLOSED_REQUEST
                  && (r->upstream == NULL
                      || r->upstream->headers_in.status_n == 0));

    len = q->token_len + 1 + ngx_strlen(q->service) + 1
          + (q->model != NULL ? ngx_strlen(q->model) + 1 : 0)
          + ngx_strlen(q->request_id) + 1;

    for (i = 0; i < q->nparams; i++) {
        len += ngx_strlen(q->params[i].name) + 1;
    }

    for (i = 0; sp != NULL && i < sp->nelts; i++) {
        len += hp[i].name.len + 1;
    }

    job = calloc(1, sizeof(ngx_http_keygate_settle_job_t) + len);
    if (job == NULL) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "keygate: no memory to settle request \"%s\": "
                      "its hold is captured at expiry", q->request_id);
        return NGX_OK;
    }

    job->len = len;
    job->maybe = held.maybe;
    p = job->buf;
    job->req.token = ngx_http_keygate_settle_copy(&p, q->token, q->token_len);
    job->req.token_len = q->token_len;
    job->req.service = ngx_http_keygate_settle_copy(&p, q->service,
                                                    ngx_strlen(q->service));
    if (q->model != NULL) {
        job->req.model = ngx_http_keygate_settle_copy(&p, q->model,
                                                      ngx_strlen(q->model));
    }
    job->req.request_id = ngx_http_keygate_settle_copy(&p, q->request_id,
                                                    ngx_strlen(q->request_id));

    /* the request's params, but those a keygate_settle_param names */
    n = 0;

    for (i = 0; i < q->nparams && n < NGX_HTTP_KEYGATE_SETTLE_MAX; i++) {
        skip = 0;

        for (j = 0; sp != NULL && j < sp->nelts; j++) {
            if (ngx_strcmp(hp[j].name.data, q->params[i].name) == 0) {
                skip = 1;
            }
        }

        if (skip) {
            continue;
        }

        job->params[n].name = ngx_http_keygate_settle_copy(&p,
                                  q->params[i].name,
                                  ngx_strlen(q->params[i].name));
        job->params[n++].value = q->params[i].value;
    }

    /* the measured quantities; an empty or unusable value is left out */
    for (i = 0; sp != NULL && i < sp->nelts && n < NGX_HTTP_KEYGATE_SETTLE_MAX;
         i++)
    {
        if (aborted) {
            v = 0;

        } else {
            if (ngx_http_complex_value(r, &hp[i].value, &s) != NGX_OK) {
                ngx_http_keygate_settle_free(job);
                return NGX_OK;
            }

            v = ngx_http_keygate_settle_int(&s);

            if (v < 0) {
                if (s.len > 0) {
                    ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                                  "keygate: settle param %V is \"%V\", not a "
                                  "count: settled at the hold",
                                  &hp[i].name, &s);
                }
                continue;
            }
        }

        job->params[n].name = ngx_http_keygate_settle_copy(&p,
                                  (const char *) hp[i].name.data,
                                  hp[i].name.len);
        job->params[n++].value = v;
    }

    job->req.params = n > 0 ? job->params : NULL;
    job->req.nparams = n;

    rc = kg_settle_start(ngx_http_keygate_kg, &job->req, &job->res,
                         &job->hold, sizeof(kg_hold),
                         ngx_http_keygate_settle_done, job, &job->pending);

    ngx_http_keygate_loop_sync();

    if (rc == 1) {
        ngx_http_keygate_loop_waiting(1);
        return NGX_OK;
    }

    if (job->res.status != KG_OK && !job->maybe) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "keygate: settle of request \"%s\": %s: its hold is "
                      "captured at expiry", job->req.request_id,
                      kg_status_code(job->res.status));
    }

    ngx_http_keygate_settle_free(job);

    return NGX_OK;
}


/* libkeygate's answer to a settle, from inside its loop calls. */
static void
ngx_http_keygate_settle_done(void *arg, kg_result *res)
{
    ngx_http_keygate_settle_job_t  *job = arg;

    ngx_http_keygate_loop_waiting(-1);

    if (res->status == KG_BAD_REQUEST && job->maybe) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "keygate: request \"%s\" left before its hold",
                       job->req.request_id);

    } else if (res->status != KG_OK) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "keygate: settle of request \"%s\": %s: its hold is "
                      "captured at expiry", job->req.request_id,
                      kg_status_code(res->status));

    } else {
        ngx_log_debug3(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "keygate: settled \"%s\": %L of a %L hold",
                       job->req.request_id, res->cost_micros,
                       job->hold.hold_micros);
    }

    ngx_http_keygate_settle_free(job);
}


static void
ngx_http_keygate_settle_free(ngx_http_keygate_settle_job_t *job)
{
    /* the token was copied here: wipe it */
    explicit_bzero(job->buf, job->len);
    free(job);
}

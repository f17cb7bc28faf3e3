/*
 * ngx_http_keygate_refusal.c - what a refused client reads.
 *
 * Status from kg_http_status(), a JSON body
 *     {"error": "<kg_status_code>", "message": "<text>"}
 * and, for 402, the request's cost, plus the wallet's balance only where
 * keygate_refusal_balance is on (any holder of a token of the key reads
 * the body, and the balance is the team's business):
 *     {"error": "insufficient_funds", "message": "...",
 *      "cost_micros": 150, "balance_micros": 100}
 * and, for 429 rate_limited, a Retry-After header (seconds, rounded up:
 * a client that waits that long is admitted, if nothing else came first)
 * and "retry_after_ms" in the body, both from the script's answer.
 *
 * libkeygate reports cost_micros 0 for a refused request (keygate.h:
 * "charged by this call"), so the request's cost comes from kg_estimate(),
 * which prices it with the catalog the worker's context charges by.
 */

#include "ngx_http_keygate.h"



static u_char *ngx_http_keygate_json_escape(u_char *dst, const char *src);
static ngx_int_t ngx_http_keygate_refused_cost(const kg_request *req,
    const kg_result *res, int64_t *cost);


static u_char *
ngx_http_keygate_json_escape(u_char *dst, const char *src)
{
    static const u_char  hex[] = "0123456789abcdef";
    u_char               ch;

    while ((ch = (u_char) *src++) != '\0') {
        if (ch == '"' || ch == '\\') {
            *dst++ = '\\';
            *dst++ = ch;

        } else if (ch < 0x20) {
            *dst++ = '\\';
            *dst++ = 'u';
            *dst++ = '0';
            *dst++ = '0';
            *dst++ = hex[ch >> 4];
            *dst++ = hex[ch & 0xf];

        } else {
            *dst++ = ch;
        }
    }

    return dst;
}


ngx_int_t
ngx_http_keygate_send_refusal(ngx_http_request_t *r, const kg_request *req,
    const kg_result *res, const char *message, int64_t retry_after_ms)
{
    size_t            len;
    u_char           *p;
    int64_t           cost;
    ngx_int_t         have_cost;
    ngx_buf_t        *b;
    kg_status         st;
    const char       *code;
    ngx_table_elt_t  *h;

    ngx_http_keygate_loc_conf_t  *klcf;

    klcf = ngx_http_get_module_loc_conf(r, ngx_http_keygate_module);

    st = res->status;
    code = kg_status_code(st);

    if (message == NULL) {
        message = kg_strerror(st);
    }

    cost = 0;
    have_cost = (st == KG_INSUFFICIENT_FUNDS)
                && ngx_http_keygate_refused_cost(req, res, &cost) == NGX_OK;

    if (ngx_http_discard_request_body(r) != NGX_OK) {
        r->keepalive = 0;
    }

    len = sizeof("{\"error\": \"\", \"message\": \"\"}\n") - 1
          + ngx_strlen(code) * 6 + ngx_strlen(message) * 6;

    if (st == KG_INSUFFICIENT_FUNDS) {
        len += sizeof(", \"balance_micros\": , \"cost_micros\": ") - 1
               + 2 * NGX_INT64_LEN;
    }

    if (st != KG_RATE_LIMITED || retry_after_ms < 1) {
        retry_after_ms = 0;
    }

    if (retry_after_ms > 0) {
        len += sizeof(", \"retry_after_ms\": ") - 1 + NGX_INT64_LEN;
    }

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(b->last, "{\"error\": \"", sizeof("{\"error\": \"") - 1);
    p = ngx_http_keygate_json_escape(p, code);
    p = ngx_cpymem(p, "\", \"message\": \"", sizeof("\", \"message\": \"") - 1);
    p = ngx_http_keygate_json_escape(p, message);
    *p++ = '"';

    if (have_cost) {
        p = ngx_sprintf(p, ", \"cost_micros\": %L", cost);
    }

    if (st == KG_INSUFFICIENT_FUNDS && klcf->refusal_balance) {
        p = ngx_sprintf(p, ", \"balance_micros\": %L",
                        (int64_t) res->balance_micros);
    }

    if (retry_after_ms > 0) {
        p = ngx_sprintf(p, ", \"retry_after_ms\": %L", retry_after_ms);
    }

    p = ngx_cpymem(p, "}\n", 2);
    b->last = p;

    if (kg_http_status(st) == NGX_HTTP_UNAUTHORIZED) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "WWW-Authenticate");
        ngx_str_set(&h->value, "Bearer realm=\"keygate\"");
        r->headers_out.www_authenticate = h;
    }

    if (retry_after_ms > 0) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_ERROR;
        }

        h->value.data = ngx_pnalloc(r->pool, NGX_INT64_LEN);
        if (h->value.data == NULL) {
            return NGX_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "Retry-After");
        h->value.len = ngx_sprintf(h->value.data, "%L",
                                   (retry_after_ms + 999) / 1000)
                       - h->value.data;
    }

    return ngx_http_keygate_send_buf(r, b, kg_http_status(st), "application/json");
}


/* Sends b, whole, as the answer with this status and content type. */
ngx_int_t
ngx_http_keygate_send_buf(ngx_http_request_t *r, ngx_buf_t *b,
    ngx_uint_t status, const char *type)
{
    ngx_int_t    rc;
    ngx_chain_t  out;

    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = status;
    r->headers_out.content_length_n = b->last - b->pos;
    r->headers_out.content_type.data = (u_char *) type;
    r->headers_out.content_type.len = ngx_strlen(type);
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/*
 * The cost of a request refused for funds: what libkeygate says if it
 * says anything, else the price from the catalog file. Returns NGX_OK, or
 * NGX_DECLINED when it cannot be known.
 */
static ngx_int_t
ngx_http_keygate_refused_cost(const kg_request *req, const kg_result *res,
    int64_t *cost)
{
    if (res->cost_micros > 0) {
        *cost = res->cost_micros;
        return NGX_OK;
    }

    if (ngx_http_keygate_kg == NULL
        || kg_estimate(ngx_http_keygate_kg, req, cost) != KG_OK)
    {
        return NGX_DECLINED;
    }

    return NGX_OK;
}

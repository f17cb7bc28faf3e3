/*
 * spoa_req.c - one NOTIFY frame through keygate.
 *
 * The "keygate" message's arguments (docs/haproxy.md):
 *
 *   token           the token itself, or
 *   authorization   the Authorization header ("Bearer <token>"), or
 *   api_key         the X-API-Key header          (first non-empty wins)
 *   service         required
 *   model           optional (empty: none)
 *   request_id      optional (empty: none)
 *   param.<NAME>    a priced input: an integer, or a string holding a
 *                   decimal integer; NULL or empty counts 0
 *
 * become a kg_request whose strings are copied into one block owned by the
 * request (the frame's buffer is gone by the time libkeygate answers). The
 * answer becomes an ACK of set-var actions in the txn scope (haproxy adds
 * the agent's var-prefix):
 *
 *   status          "ok" or kg_status_code()
 *   http_status     200, or kg_http_status()
 *   message         (refused) the human text
 *   body            (refused) the JSON body the nginx module sends
 *   key_id user_id team_id   when known
 *   cost_micros     charged by this request
 *   balance_micros  the wallet's balance, when a wallet is involved
 *   retry_after     (rate_limited) whole seconds until a request would be
 *                   admitted, rounded up: for a Retry-After header
 *
 * The actions go in that order and each only if it fits in the negotiated
 * frame size, so that status and http_status always reach haproxy.
 */
#include "spoa.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct spoa_req {
    TAILQ_ENTRY(spoa_req) link;         /* in its connection's list, while waiting */
    struct spoa_conn *conn;
    uint64_t stream_id, frame_id;
    kg_pending *pending;
    kg_request req;
    kg_result res;
    kg_hold hold;                       /* the rest of the answer (retry_after_ms) */
    const char *message;                /* refusal text; NULL: kg_strerror */
    char message_buf[96];
    kg_param params[SPOA_MAX_PARAMS];
    size_t strings_len;
    char strings[];                     /* the request's strings, NUL-terminated */
};

/* The arguments of a "keygate" message, pointing into the frame. */
typedef struct spoa_args {
    const char *token; size_t token_len;
    const char *service; size_t service_len;
    const char *model; size_t model_len;
    const char *request_id; size_t request_id_len;
    struct { const char *name; size_t name_len; int64_t value; } params[SPOA_MAX_PARAMS];
    size_t nparams;
    kg_status bad;                      /* KG_OK, or a refusal decided from the args */
    const char *bad_message;
    char bad_buf[96];
} spoa_args;

static int name_is(const char *s, size_t len, const char *lit)
{
    return strlen(lit) == len && memcmp(s, lit, len) == 0;
}

/* [s, s+len) without spaces at both ends. */
static void trim(const char **s, size_t *len)
{
    while (*len > 0 && **s == ' ') {
        (*s)++;
        (*len)--;
    }
    while (*len > 0 && (*s)[*len - 1] == ' ')
        (*len)--;
}

/* A signed decimal int64, as the nginx module reads keygate_param. */
static int parse_int64(const char *s, size_t len, int64_t *out)
{
    size_t i = 0;
    int neg = 0;
    int64_t v = 0;

    if (len > 0 && (s[0] == '-' || s[0] == '+')) {
        neg = s[0] == '-';
        i = 1;
    }
    if (i == len)
        return -1;
    for (; i < len; i++) {
        int64_t d;
        if (s[i] < '0' || s[i] > '9')
            return -1;
        d = s[i] - '0';
        if (v > (INT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = neg ? -v : v;
    return 0;
}

static void set_bad(spoa_args *a, const char *fmt, const char *name, size_t len)
{
    if (a->bad != KG_OK)
        return;                         /* the first problem is reported */
    a->bad = KG_BAD_REQUEST;
    snprintf(a->bad_buf, sizeof a->bad_buf, fmt, (int)(len > 40 ? 40 : len), name);
    a->bad_message = a->bad_buf;
}

/* A string argument: NULL and empty are "absent"; another type is refused. */
static int take_string(spoa_args *a, const spop_data *d, const char *name, size_t nlen,
                       const char **s, size_t *len)
{
    if (d->type == SPOP_DATA_NULL)
        return 0;
    if (d->type != SPOP_DATA_STRING && d->type != SPOP_DATA_BINARY) {
        set_bad(a, "argument %.*s is not a string", name, nlen);
        return 0;
    }
    if (memchr(d->ptr, '\0', d->len) != NULL) {
        set_bad(a, "argument %.*s holds a NUL byte", name, nlen);
        return 0;
    }
    *s = d->ptr;
    *len = d->len;
    return 0;
}

static void take_param(spoa_args *a, const char *name, size_t nlen, const spop_data *d)
{
    const char *pname = name + 6;                   /* after "param." */
    size_t plen = nlen - 6;
    int64_t v;

    if (d->type == SPOP_DATA_NULL)
        return;                                     /* a missing quantity counts 0 */
    if (d->type == SPOP_DATA_STRING) {
        const char *s = d->ptr;
        size_t len = d->len;
        trim(&s, &len);
        if (len == 0)
            return;
        if (parse_int64(s, len, &v) != 0) {
            set_bad(a, "parameter %.*s is not an integer", pname, plen);
            return;
        }
    } else if (spop_data_int64(d, &v) != 0) {
        set_bad(a, "parameter %.*s is not an integer", pname, plen);
        return;
    }
    if (plen == 0 || memchr(pname, '\0', plen) != NULL) {
        set_bad(a, "bad parameter name %.*s", pname, plen);
        return;
    }
    for (size_t i = 0; i < a->nparams; i++)
        if (a->params[i].name_len == plen && memcmp(a->params[i].name, pname, plen) == 0) {
            set_bad(a, "duplicate parameter %.*s", pname, plen);
            return;
        }
    if (a->nparams == SPOA_MAX_PARAMS) {
        set_bad(a, "too many parameters (at %.*s)", pname, plen);
        return;
    }
    a->params[a->nparams].name = pname;
    a->params[a->nparams].name_len = plen;
    a->params[a->nparams].value = v;
    a->nparams++;
}

/* Reads nargs KV items at *p into a. 0, or -1 for a malformed list. */
static int read_args(const char **p, const char *end, unsigned nargs, spoa_args *a)
{
    const char *auth = NULL, *api_key = NULL;
    size_t auth_len = 0, api_key_len = 0;

    for (unsigned i = 0; i < nargs; i++) {
        const char *name;
        size_t nlen;
        spop_data d;

        if (spop_get_string(p, end, &name, &nlen) != 0 || spop_get_data(p, end, &d) != 0)
            return -1;
        if (name_is(name, nlen, "token"))
            take_string(a, &d, name, nlen, &a->token, &a->token_len);
        else if (name_is(name, nlen, "authorization"))
            take_string(a, &d, name, nlen, &auth, &auth_len);
        else if (name_is(name, nlen, "api_key"))
            take_string(a, &d, name, nlen, &api_key, &api_key_len);
        else if (name_is(name, nlen, "service"))
            take_string(a, &d, name, nlen, &a->service, &a->service_len);
        else if (name_is(name, nlen, "model"))
            take_string(a, &d, name, nlen, &a->model, &a->model_len);
        else if (name_is(name, nlen, "request_id"))
            take_string(a, &d, name, nlen, &a->request_id, &a->request_id_len);
        else if (nlen > 6 && memcmp(name, "param.", 6) == 0)
            take_param(a, name, nlen, &d);
        /* other arguments: ignored (haproxy may send more than we use) */
    }

    if (a->token != NULL)
        trim(&a->token, &a->token_len);
    if ((a->token == NULL || a->token_len == 0) && auth != NULL && auth_len >= 7 &&
        strncasecmp(auth, "Bearer ", 7) == 0) {
        a->token = auth + 7;
        a->token_len = auth_len - 7;
        trim(&a->token, &a->token_len);
    }
    if ((a->token == NULL || a->token_len == 0) && api_key != NULL) {
        a->token = api_key;
        a->token_len = api_key_len;
        trim(&a->token, &a->token_len);
    }
    if (a->model != NULL && a->model_len == 0)
        a->model = NULL;
    if (a->request_id != NULL && a->request_id_len == 0)
        a->request_id = NULL;
    return 0;
}

/* ---- the answer --------------------------------------------------------- */

static char *json_escape(char *dst, const char *src)
{
    static const char hex[] = "0123456789abcdef";

    for (; *src != '\0'; src++) {
        unsigned char ch = (unsigned char)*src;
        if (ch == '"' || ch == '\\') {
            *dst++ = '\\';
            *dst++ = (char)ch;
        } else if (ch < 0x20) {
            memcpy(dst, "\\u00", 4);
            dst[4] = hex[ch >> 4];
            dst[5] = hex[ch & 0xf];
            dst += 6;
        } else {
            *dst++ = (char)ch;
        }
    }
    return dst;
}

/* The refusal body, as module/nginx/ngx_http_keygate_refusal.c writes it
 * (without its final newline). */
static size_t refusal_body(char *buf, size_t size, const kg_request *req, const kg_result *res,
                           const kg_hold *hold, const char *message)
{
    const char *code = kg_status_code(res->status);
    int64_t cost = res->cost_micros;
    char *p = buf;

    if (size < 6 * (strlen(code) + strlen(message)) + 128)
        return 0;
    p += sprintf(p, "{\"error\": \"");
    p = json_escape(p, code);
    p += sprintf(p, "\", \"message\": \"");
    p = json_escape(p, message);
    *p++ = '"';
    if (res->status == KG_INSUFFICIENT_FUNDS) {
        p += sprintf(p, ", \"balance_micros\": %" PRId64, res->balance_micros);
        /* nothing was charged, so libkeygate reports 0: the price comes
         * from the catalog the context charges by */
        if (cost > 0 || (spoa.kg != NULL && kg_estimate(spoa.kg, req, &cost) == KG_OK))
            p += sprintf(p, ", \"cost_micros\": %" PRId64, cost);
    }
    if (res->status == KG_RATE_LIMITED && hold != NULL && hold->retry_after_ms > 0)
        p += sprintf(p, ", \"retry_after_ms\": %" PRId64, hold->retry_after_ms);
    *p++ = '}';              /* no newline: lf-string would escape it */
    *p = '\0';
    return (size_t)(p - buf);
}

/* Appends one action if it fits; else leaves *p where it was. */
#define TRY_PUT(call)                                                         \
    do {                                                                      \
        char *mark_ = *p;                                                     \
        if ((call) != 0)                                                      \
            *p = mark_;                                                       \
    } while (0)

static void put_actions(char **p, char *end, const kg_request *req, const kg_result *res,
                        const kg_hold *hold, const char *message)
{
    const int txn = SPOP_SCOPE_TXN;
    kg_status st = res->status;
    char body[1024];
    size_t blen;

    TRY_PUT(spop_put_setvar_string(p, end, txn, "status", st == KG_OK ? "ok" : kg_status_code(st),
                                   strlen(st == KG_OK ? "ok" : kg_status_code(st))));
    TRY_PUT(spop_put_setvar_int64(p, end, txn, "http_status", kg_http_status(st)));
    if (st != KG_OK) {
        if (message == NULL)
            message = kg_strerror(st);
        blen = refusal_body(body, sizeof body, req, res, hold, message);
        if (blen > 0)
            TRY_PUT(spop_put_setvar_string(p, end, txn, "body", body, blen));
        TRY_PUT(spop_put_setvar_string(p, end, txn, "message", message, strlen(message)));
    }
    if (res->key_id[0] != '\0')
        TRY_PUT(spop_put_setvar_string(p, end, txn, "key_id", res->key_id, strlen(res->key_id)));
    if (res->user_id[0] != '\0')
        TRY_PUT(spop_put_setvar_string(p, end, txn, "user_id", res->user_id, strlen(res->user_id)));
    if (res->team_id[0] != '\0')
        TRY_PUT(spop_put_setvar_string(p, end, txn, "team_id", res->team_id, strlen(res->team_id)));
    TRY_PUT(spop_put_setvar_int64(p, end, txn, "cost_micros", res->cost_micros));
    if (res->balance_micros >= 0)
        TRY_PUT(spop_put_setvar_int64(p, end, txn, "balance_micros", res->balance_micros));
    if (st == KG_RATE_LIMITED && hold != NULL && hold->retry_after_ms > 0)
        TRY_PUT(spop_put_setvar_int64(p, end, txn, "retry_after",
                                      (hold->retry_after_ms + 999) / 1000));
}

/* Queues the ACK of (stream_id, frame_id): the answer res, or, with res
 * NULL, no action at all. 0 or -1 (out of memory). */
static int send_ack(struct spoa_conn *c, uint64_t stream_id, uint64_t frame_id,
                    const kg_request *req, const kg_result *res, const kg_hold *hold,
                    const char *message)
{
    uint32_t fs = spoa_conn_frame_size(c);
    char buf[4096];                                 /* an ACK is far smaller */
    char *p = buf, *end = buf + (fs + 4 < sizeof buf ? fs + 4 : sizeof buf);
    long n;

    if (spop_put_head(&p, end, SPOP_FRAME_ACK, SPOP_FLAG_FIN, stream_id, frame_id) != 0)
        return -1;
    if (res != NULL)
        put_actions(&p, end, req, res, hold, message);
    n = spop_finish(buf, p, fs);
    if (n < 0)
        return -1;
    return spoa_conn_send(c, buf, (size_t)n);
}

static void wipe_free(struct spoa_req *r)
{
    if (r == NULL)
        return;
    explicit_bzero(r->strings, r->strings_len);     /* the token */
    free(r);
}

/* libkeygate's answer (kg_done_fn): from inside kg_loop_ready/kg_loop_timeout. */
static void on_done(void *arg, kg_result *res)
{
    struct spoa_req *r = arg;
    struct spoa_conn *c = r->conn;

    (void)res;                                      /* == &r->res */
    TAILQ_REMOVE(spoa_conn_reqs(c), r, link);
    r->pending = NULL;
    if (kg_http_status(r->res.status) == 500)
        r->res.status = KG_BACKEND_ERROR;           /* a status this library cannot map: closed */
    if (send_ack(c, r->stream_id, r->frame_id, &r->req, &r->res, &r->hold, r->message) != 0)
        spoa_log("error", "cannot queue an ACK (stream %" PRIu64 ")", r->stream_id);
    wipe_free(r);
    spoa_conn_req_done(c);
}

void spoa_req_cancel(struct spoa_req *r)
{
    TAILQ_REMOVE(spoa_conn_reqs(r->conn), r, link);
    if (r->pending != NULL)
        kg_authorize_cancel(spoa.kg, r->pending);
    wipe_free(r);
}

/* Copies [s, s+len) into the request's block at *at. */
static const char *keep(struct spoa_req *r, size_t *at, const char *s, size_t len)
{
    char *d = r->strings + *at;

    memcpy(d, s, len);
    d[len] = '\0';
    *at += len + 1;
    return d;
}

int spoa_req_notify(struct spoa_conn *c, const spop_frame *f, struct spoa_req **started)
{
    const char *p = f->payload, *end = f->end;
    spoa_args a;
    int found = 0, rc;
    struct spoa_req *r;
    size_t at = 0;

    *started = NULL;
    memset(&a, 0, sizeof a);
    a.bad = KG_OK;

    /* LIST-OF-MESSAGES: the whole payload must be well-formed */
    while (p < end) {
        const char *name;
        size_t nlen;
        unsigned nargs;

        if (spop_get_string(&p, end, &name, &nlen) != 0 || p >= end)
            return SPOP_ERR_INVALID;
        nargs = (unsigned char)*p++;
        if (!found && name_is(name, nlen, SPOA_MESSAGE)) {
            found = 1;
            if (read_args(&p, end, nargs, &a) != 0)
                return SPOP_ERR_INVALID;
        } else {
            for (unsigned i = 0; i < nargs; i++) {
                const char *an;
                size_t alen;
                if (spop_get_string(&p, end, &an, &alen) != 0 || spop_skip_data(&p, end) != 0)
                    return SPOP_ERR_INVALID;
            }
        }
    }

    if (!found)                                     /* not ours: nothing to say */
        return send_ack(c, f->stream_id, f->frame_id, NULL, NULL, NULL, NULL) == 0 ? 0 : SPOP_ERR_RES;

    /* every string and its NUL fit in the frame's size plus one byte each */
    r = calloc(1, sizeof *r + (size_t)(end - f->payload) + 8 + SPOA_MAX_PARAMS);
    if (r == NULL)
        return SPOP_ERR_RES;
    r->strings_len = (size_t)(end - f->payload) + 8 + SPOA_MAX_PARAMS;
    r->conn = c;
    r->stream_id = f->stream_id;
    r->frame_id = f->frame_id;
    r->res.balance_micros = -1;
    if (a.token != NULL) {
        r->req.token = keep(r, &at, a.token, a.token_len);
        r->req.token_len = a.token_len;
    }
    if (a.service != NULL)
        r->req.service = keep(r, &at, a.service, a.service_len);
    if (a.model != NULL)
        r->req.model = keep(r, &at, a.model, a.model_len);
    if (a.request_id != NULL)
        r->req.request_id = keep(r, &at, a.request_id, a.request_id_len);
    for (size_t i = 0; i < a.nparams; i++) {
        r->params[i].name = keep(r, &at, a.params[i].name, a.params[i].name_len);
        r->params[i].value = a.params[i].value;
    }
    r->req.params = r->params;
    r->req.nparams = a.nparams;

    if (a.bad != KG_OK) {
        r->res.status = a.bad;
        snprintf(r->message_buf, sizeof r->message_buf, "%s", a.bad_message);
        r->message = r->message_buf;
    } else if (r->req.service == NULL || r->req.service[0] == '\0') {
        r->res.status = KG_BAD_REQUEST;
        r->message = "no service: the keygate message needs a service argument";
    } else if (r->req.token == NULL || r->req.token_len == 0) {
        r->res.status = KG_TOKEN_MALFORMED;
        r->message = "no API token: send \"Authorization: Bearer <token>\" or \"X-API-Key: <token>\"";
    } else {
        rc = kg_authorize_hold_start(spoa.kg, &r->req, &r->res, &r->hold, sizeof r->hold,
                                     on_done, r, &r->pending);
        spoa_loop_sync();
        if (rc == 1) {
            TAILQ_INSERT_TAIL(spoa_conn_reqs(c), r, link);
            *started = r;
            return 0;
        }
        r->pending = NULL;
        if (rc < 0 && r->res.status == KG_OK)
            r->res.status = KG_BACKEND_ERROR;       /* never fail open */
    }

    rc = send_ack(c, r->stream_id, r->frame_id, &r->req, &r->res, &r->hold, r->message);
    wipe_free(r);
    return rc == 0 ? 0 : SPOP_ERR_RES;
}

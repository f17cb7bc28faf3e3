/*
 * webhook.c - delivers queued webhooks (map in webhook.h).
 *
 * A pass takes the due members of P whpending (at most WEBHOOK_INFLIGHT
 * in flight, members already in flight here skipped), reads each one's
 * delivery record and its team's webhook, and POSTs the stored body with
 * libevent's HTTP client: connect, send and read are all events on the
 * daemon's loop, names are resolved by evdns. The outcome is one MULTI on
 * the record and the pending set: delivered, failed for good, or due
 * again after a backoff.
 *
 * Only http:// URLs: keygated links no TLS library (libevent's OpenSSL
 * glue is a dependency the project does not take); a receiver behind a
 * TLS-terminating proxy on the same host works.
 *
 * The team's secret is read from Redis for each attempt, used to sign,
 * and wiped from the reply's memory at once; it is never logged.
 */
#include "webhook.h"
#include "expiry.h"
#include "holds.h"
#include "reclaim.h"

#include <event2/buffer.h>
#include <event2/dns.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kgc_keys.h"
#include "lease.h"
#include "log.h"

long long now_ms(void);           /* job.c: realtime ms */

typedef struct delivery {
    app *a;
    char member[2 * KGC_ID_MAX + 64];    /* "<team> <delivery id>" in P whpending */
    char team[KGC_ID_MAX], id[64];
    long long attempts;                  /* before this one */
    struct evhttp_connection *conn;
    struct evhttp_request *req;
    char error[64];                      /* what the error callback said */
    struct delivery *next;
} delivery;

struct webhook {
    app *a;
    struct event *tick;
    struct evdns_base *dns;
    delivery *live;                      /* reading its record, or its request in flight */
    int n_live;
    int scanning;                        /* a ZRANGEBYSCORE in flight */
    int kicked;                          /* a pass asked for while one was running */
    int stopping;
};

static void deliver_pass(app *a);

/* --- signing and URLs ------------------------------------------------- */

void webhook_sign(const char *secret, const char *ts, const char *body, size_t body_len, char *out)
{
    crypto_auth_hmacsha256_state st;
    unsigned char mac[crypto_auth_hmacsha256_BYTES];

    crypto_auth_hmacsha256_init(&st, (const unsigned char *)secret, strlen(secret));
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)ts, strlen(ts));
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)".", 1);
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)body, body_len);
    crypto_auth_hmacsha256_final(&st, mac);
    memcpy(out, "v1=", 3);
    sodium_bin2hex(out + 3, WEBHOOK_SIG_MAX - 3, mac, sizeof mac);
    sodium_memzero(&st, sizeof st);
}

int webhook_url_check(const char *url, char *err, size_t errlen)
{
    struct evhttp_uri *u;
    const char *scheme, *host;
    int rc = -1;

    if (url == NULL || strlen(url) > WEBHOOK_URL_MAX) {
        snprintf(err, errlen, "'url' must be an http:// URL of at most %d characters", WEBHOOK_URL_MAX);
        return -1;
    }
    for (const char *p = url; *p; p++)
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f) {
            snprintf(err, errlen, "'url' must not contain spaces, control or non-ASCII characters");
            return -1;
        }
    u = evhttp_uri_parse_with_flags(url, 0);
    scheme = u ? evhttp_uri_get_scheme(u) : NULL;
    host = u ? evhttp_uri_get_host(u) : NULL;
    if (u == NULL || scheme == NULL)
        snprintf(err, errlen, "'url' is not a URL");
    else if (strcasecmp(scheme, "https") == 0)
        snprintf(err, errlen, "https:// webhooks are not supported by keygated (no TLS library); "
                              "use http://, for instance to a local TLS-terminating proxy");
    else if (strcasecmp(scheme, "http") != 0)
        snprintf(err, errlen, "'url' must start with http://");
    else if (host == NULL || host[0] == '\0')
        snprintf(err, errlen, "'url' has no host");
    else if (evhttp_uri_get_userinfo(u) != NULL)
        snprintf(err, errlen, "'url' must not carry a user or password");
    else if (evhttp_uri_get_fragment(u) != NULL)
        snprintf(err, errlen, "'url' must not have a #fragment");
    else
        rc = 0;
    evhttp_uri_free(u);
    return rc;
}

/* --- one delivery ------------------------------------------------------ */

static void live_remove(struct webhook *w, delivery *d)
{
    for (delivery **p = &w->live; *p != NULL; p = &(*p)->next)
        if (*p == d) {
            *p = d->next;
            w->n_live--;
            return;
        }
}

static void conn_free_later(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    evhttp_connection_free(arg);
}

static void delivery_free(delivery *d)
{
    struct webhook *w = d->a->wh;
    struct timeval zero = {0, 0};

    live_remove(w, d);
    /* Not from inside the request's callback: libevent still uses the
     * connection until it returns. */
    if (d->conn != NULL && !w->stopping &&
        event_base_once(d->a->base, -1, EV_TIMEOUT, conn_free_later, d->conn, &zero) != 0)
        oom("event_base_once");
    else if (d->conn != NULL && w->stopping)
        evhttp_connection_free(d->conn);
    free(d);
}

static void on_recorded(void *arg, int ok, json_t *replies)
{
    app *a = arg;

    (void)ok;
    json_decref(replies);
    if (a->wh != NULL && !a->wh->stopping && ok)
        deliver_pass(a);          /* a slot is free */
}

/* Records the outcome of an attempt (code: HTTP status, 0: none) and frees d.
 * gone: the record or the webhook no longer exists, stop trying. */
static void finish(delivery *d, int code, const char *why, int gone)
{
    app *a = d->a;
    char key[KGC_RKEY_MAX], pend[KGC_RKEY_MAX], att[24], now[24], next[24], result[96];
    long long attempts = d->attempts + 1, t = now_ms(), wait;
    json_t *cmds = json_array();

    kgc_rkey(key, a->cfg.key_prefix, WH_RK_DELIVERY, d->team, d->id);
    kgc_rkey(pend, a->cfg.key_prefix, WH_RK_PENDING);
    snprintf(att, sizeof att, "%lld", attempts);
    snprintf(now, sizeof now, "%lld", t);
    if (code > 0)
        snprintf(result, sizeof result, "%d", code);
    else
        snprintf(result, sizeof result, "%s", why);
    if (gone) {
        json_array_append_new(cmds, json_pack("[s,s,s]", "ZREM", pend, d->member));
        if (why != NULL && strcmp(why, "no delivery record") != 0)
            json_array_append_new(cmds, json_pack("[s,s,s,s,s,s]", "HSET", key, "status", "failed",
                                                  "last_result", result));
        log_warn("webhook delivery %s of team %s dropped: %s", d->id, d->team, why);
    } else if (code >= 200 && code < 300) {
        json_array_append_new(cmds, json_pack("[s,s,s,s,s,s,s,s,s,s]", "HSET", key, "status",
                                              "delivered", "attempts", att, "last_at", now,
                                              "last_result", result));
        json_array_append_new(cmds, json_pack("[s,s,s]", "HDEL", key, "next_at"));
        json_array_append_new(cmds, json_pack("[s,s,s]", "ZREM", pend, d->member));
        log_info("webhook delivery %s of team %s delivered (attempt %lld, HTTP %d)", d->id,
                 d->team, attempts, code);
    } else if (attempts >= WEBHOOK_MAX_ATTEMPTS) {
        json_array_append_new(cmds, json_pack("[s,s,s,s,s,s,s,s,s,s]", "HSET", key, "status",
                                              "failed", "attempts", att, "last_at", now,
                                              "last_result", result));
        json_array_append_new(cmds, json_pack("[s,s,s]", "HDEL", key, "next_at"));
        json_array_append_new(cmds, json_pack("[s,s,s]", "ZREM", pend, d->member));
        log_warn("webhook delivery %s of team %s failed for good after %lld attempts (last: %s)",
                 d->id, d->team, attempts, result);
    } else {
        wait = 1000LL << (attempts - 1 < 20 ? attempts - 1 : 20);
        if (wait > WEBHOOK_BACKOFF_MAX_MS)
            wait = WEBHOOK_BACKOFF_MAX_MS;
        snprintf(next, sizeof next, "%lld", t + wait);
        json_array_append_new(cmds, json_pack("[s,s,s,s,s,s,s,s,s,s,s,s]", "HSET", key, "status",
                                              "pending", "attempts", att, "last_at", now,
                                              "last_result", result, "next_at", next));
        json_array_append_new(cmds, json_pack("[s,s,s,s,s]", "ZADD", pend, "XX", next, d->member));
        log_info("webhook delivery %s of team %s: attempt %lld failed (%s), next in %lld ms",
                 d->id, d->team, attempts, result, wait);
    }
    if (store_exec(a->st, cmds, 1, on_recorded, a) != 0)
        log_warn("webhook delivery %s: outcome not recorded (store away); it will be sent again",
                 d->id);
    json_decref(cmds);
    delivery_free(d);
}

static void on_error(enum evhttp_request_error e, void *arg)
{
    delivery *d = arg;
    const char *s = "error";

    switch (e) {
    case EVREQ_HTTP_TIMEOUT: s = "timeout"; break;
    case EVREQ_HTTP_EOF: s = "connection closed"; break;
    case EVREQ_HTTP_INVALID_HEADER: s = "invalid response"; break;
    case EVREQ_HTTP_BUFFER_ERROR: s = "connection failed"; break;
    case EVREQ_HTTP_REQUEST_CANCEL: s = "cancelled"; break;
    case EVREQ_HTTP_DATA_TOO_LONG: s = "response too long"; break;
    }
    snprintf(d->error, sizeof d->error, "%s", s);
}

static void on_response(struct evhttp_request *req, void *arg)
{
    delivery *d = arg;
    int code = req != NULL ? evhttp_request_get_response_code(req) : 0;

    d->req = NULL;
    if (d->a->wh->stopping)
        return;
    finish(d, code, d->error[0] ? d->error : "connection failed", 0);
}

/* Sends the POST; 0, or -1 with the reason in why. */
static int send_post(delivery *d, const char *url, const char *secret, const char *body,
                     char *why, size_t whylen)
{
    struct webhook *w = d->a->wh;
    struct evhttp_uri *u = evhttp_uri_parse_with_flags(url, 0);
    const char *host, *path, *query;
    struct evkeyvalq *h;
    char target[WEBHOOK_URL_MAX + 8], hosthdr[300], ts[24], sig[WEBHOOK_SIG_MAX];
    int port;

    if (u == NULL || (host = evhttp_uri_get_host(u)) == NULL) {
        snprintf(why, whylen, "bad url");
        evhttp_uri_free(u);
        return -1;
    }
    port = evhttp_uri_get_port(u) > 0 ? evhttp_uri_get_port(u) : 80;
    path = evhttp_uri_get_path(u);
    query = evhttp_uri_get_query(u);
    snprintf(target, sizeof target, "%s%s%s", path && path[0] ? path : "/", query ? "?" : "",
             query ? query : "");
    if (port == 80)
        snprintf(hosthdr, sizeof hosthdr, "%.255s", host);
    else
        snprintf(hosthdr, sizeof hosthdr, "%.255s:%d", host, port);
    if (w->dns == NULL &&
        (w->dns = evdns_base_new(d->a->base, EVDNS_BASE_INITIALIZE_NAMESERVERS)) == NULL &&
        (w->dns = evdns_base_new(d->a->base, 0)) == NULL)
        oom("evdns_base_new");
    d->conn = evhttp_connection_base_new(d->a->base, w->dns, host, (unsigned short)port);
    evhttp_uri_free(u);
    if (d->conn == NULL) {
        snprintf(why, whylen, "connection failed");
        return -1;
    }
    evhttp_connection_set_timeout(d->conn, WEBHOOK_TIMEOUT_S);
    evhttp_connection_set_retries(d->conn, 0);
    evhttp_connection_set_max_body_size(d->conn, 65536);
    d->req = evhttp_request_new(on_response, d);
    if (d->req == NULL)
        oom("evhttp_request_new");
    evhttp_request_set_error_cb(d->req, on_error);
    snprintf(ts, sizeof ts, "%lld", now_ms() / 1000);
    webhook_sign(secret, ts, body, strlen(body), sig);
    h = evhttp_request_get_output_headers(d->req);
    evhttp_add_header(h, "Host", hosthdr);
    evhttp_add_header(h, "Content-Type", "application/json");
    evhttp_add_header(h, "User-Agent", "keygate-webhook/1");
    evhttp_add_header(h, "Connection", "close");
    evhttp_add_header(h, "X-Keygate-Delivery", d->id);
    evhttp_add_header(h, "X-Keygate-Timestamp", ts);
    evhttp_add_header(h, "X-Keygate-Signature", sig);
    evbuffer_add(evhttp_request_get_output_buffer(d->req), body, strlen(body));
    if (evhttp_make_request(d->conn, d->req, EVHTTP_REQ_POST, target) != 0) {
        d->req = NULL;            /* freed by libevent */
        snprintf(why, whylen, "connection failed");
        return -1;
    }
    return 0;
}

/* Value of field f in an HGETALL reply (flat array), or NULL. */
static json_t *hfield(json_t *flat, const char *f)
{
    for (size_t i = 0; i + 1 < json_array_size(flat); i += 2)
        if (json_is_string(json_array_get(flat, i)) &&
            strcmp(json_string_value(json_array_get(flat, i)), f) == 0)
            return json_array_get(flat, i + 1);
    return NULL;
}

static void wipe_string(json_t *s)
{
    if (json_is_string(s))
        sodium_memzero((char *)json_string_value(s), json_string_length(s));
}

static void on_record(void *arg, int ok, json_t *replies)
{
    delivery *d = arg;
    struct webhook *w = d->a->wh;
    json_t *rec = json_array_get(replies, 0), *hook = json_array_get(replies, 1);
    json_t *secret = hfield(hook, "secret");
    const char *status = json_string_value(hfield(rec, "status"));
    const char *body = json_string_value(hfield(rec, "body"));
    const char *url = json_string_value(hfield(hook, "url"));
    char why[64];

    if (!ok || w->stopping) {
        wipe_string(secret);
        json_decref(replies);     /* NULL when !ok */
        delivery_free(d);
        return;
    }
    if (store_is_error(rec) || store_is_error(hook)) {
        /* Refused (LOADING, a key of the wrong type), not "no record": it
         * stays pending, and the next pass asks again. */
        log_err("webhook delivery %s: redis refused a read: %.200s", d->id,
                json_string_value(json_object_get(store_is_error(rec) ? rec : hook, "$err")));
        wipe_string(secret);
        json_decref(replies);
        delivery_free(d);
        return;
    }
    d->attempts = strtoll(json_string_value(hfield(rec, "attempts")) ?: "0", NULL, 10);
    if (!json_is_array(rec) || json_array_size(rec) == 0 || body == NULL)
        finish(d, 0, "no delivery record", 1);
    else if (status != NULL && strcmp(status, "pending") != 0)
        finish(d, 0, "no longer pending", 1);
    else if (url == NULL || !json_is_string(secret))
        finish(d, 0, "no webhook configured", 1);
    else if (send_post(d, url, json_string_value(secret), body, why, sizeof why) != 0)
        finish(d, 0, why, 0);
    wipe_string(secret);
    json_decref(replies);
}

static void on_due(void *arg, int ok, json_t *replies)
{
    app *a = arg;
    struct webhook *w = a->wh;
    json_t *due = json_array_get(replies, 0), *m;
    size_t i;

    if (w == NULL)
        return;
    w->scanning = 0;
    if (!ok || w->stopping) {
        json_decref(replies);
        return;
    }
    json_array_foreach(due, i, m) {
        const char *mem = json_string_value(m), *sp;
        delivery *d, *x;
        char k1[KGC_RKEY_MAX], k2[KGC_RKEY_MAX];
        json_t *cmds;

        if (w->n_live >= WEBHOOK_INFLIGHT)
            break;
        if (mem == NULL || (sp = strchr(mem, ' ')) == NULL || (size_t)(sp - mem) >= KGC_ID_MAX ||
            strlen(sp + 1) >= sizeof d->id)
            continue;
        for (x = w->live; x != NULL; x = x->next)
            if (strcmp(x->member, mem) == 0)
                break;
        if (x != NULL)
            continue;             /* in flight here */
        d = xcalloc(1, sizeof *d);
        d->a = a;
        snprintf(d->member, sizeof d->member, "%s", mem);
        snprintf(d->team, sizeof d->team, "%.*s", (int)(sp - mem), mem);
        snprintf(d->id, sizeof d->id, "%s", sp + 1);
        kgc_rkey(k1, a->cfg.key_prefix, WH_RK_DELIVERY, d->team, d->id);
        kgc_rkey(k2, a->cfg.key_prefix, WH_RK_HOOK, d->team);
        cmds = json_pack("[[s,s],[s,s]]", "HGETALL", k1, "HGETALL", k2);
        d->next = w->live;
        w->live = d;
        w->n_live++;
        if (store_exec(a->st, cmds, 0, on_record, d) != 0)
            delivery_free(d);
        json_decref(cmds);
    }
    json_decref(replies);
    if (w->kicked) {
        w->kicked = 0;
        deliver_pass(a);
    }
}

static void deliver_pass(app *a)
{
    struct webhook *w = a->wh;
    char key[KGC_RKEY_MAX], now[24], room[16];
    json_t *cmds;

    if (w->scanning) {
        w->kicked = 1;
        return;
    }
    if (w->n_live >= WEBHOOK_INFLIGHT || !store_connected(a->st) || !lease_held(a))
        return;
    kgc_rkey(key, a->cfg.key_prefix, WH_RK_PENDING);
    snprintf(now, sizeof now, "%lld", now_ms());
    /* Members in flight here are due too: ask for enough to fill the room. */
    snprintf(room, sizeof room, "%d", WEBHOOK_INFLIGHT + w->n_live);
    cmds = json_pack("[[s,s,s,s,s,s,s]]", "ZRANGEBYSCORE", key, "-inf", now, "LIMIT", "0", room);
    w->scanning = store_exec(a->st, cmds, 0, on_due, a) == 0;
    json_decref(cmds);
}

/* --- the timer --------------------------------------------------------- */

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    app *a = arg;

    (void)fd;
    (void)what;
    alert_tick(a);
    expiry_tick(a);
    holds_tick(a);
    reclaim_tick(a);
    deliver_pass(a);
}

void webhook_kick(app *a)
{
    if (a->wh != NULL && !a->wh->stopping)
        deliver_pass(a);
}

void webhook_start(app *a)
{
    struct webhook *w = xcalloc(1, sizeof *w);
    struct timeval every = {ALERT_TICK_MS / 1000, (ALERT_TICK_MS % 1000) * 1000};

    w->a = a;
    w->tick = event_new(a->base, -1, EV_PERSIST, on_tick, a);
    if (w->tick == NULL)
        oom("webhook timer");
    event_add(w->tick, &every);
    a->wh = w;
}

void webhook_stop(app *a)
{
    struct webhook *w = a->wh;

    if (w == NULL)
        return;
    w->stopping = 1;
    event_free(w->tick);
    while (w->live != NULL) {
        delivery *d = w->live;
        if (d->conn != NULL) {
            /* Frees its request without calling back (2.1); the pending
             * record makes a restart send it again. */
            evhttp_connection_free(d->conn);
            d->conn = NULL;
        }
        live_remove(w, d);
        free(d);
    }
    if (w->dns != NULL)
        evdns_base_free(w->dns, 0);
    alert_free(a);
    expiry_free(a);
    holds_free(a);
    reclaim_free(a);
    free(w);
    a->wh = NULL;
}

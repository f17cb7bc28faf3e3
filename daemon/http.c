/*
 * http.c - the console's HTTP listener: static files and POST /api/<cmd>.
 *
 * An API call, top-down: method, content type and origin checks; the JSON
 * body; the session cookie looked up in Redis; the CSRF header checked
 * against the session's token; `actor` set to the session's user (any
 * actor in the body is dropped); job_submit; the answer envelope as the
 * body, with the status of its error code (http_status_of).
 *
 * Lifetime: evhttp keeps a request alive until it is answered, even when
 * its client went away meanwhile (it is then freed by the answer), so an
 * api_call may outlive its connection. The listener must outlive every
 * job: main frees it last.
 *
 * Connections: evhttp makes each connection's bufferevent through our
 * bevcb (make_bev), which keeps a reference to it; a sweep every SWEEP_MS
 * finds those evhttp has freed. So we count connections (at
 * http_max_clients, or half the fd limit, the listener is disabled and
 * new ones wait in the kernel's backlog: the admin socket keeps its
 * descriptors), and each has a deadline: a whole request, headers and
 * body, must arrive within http_deadline seconds of the connection or of
 * the previous request, however slowly it trickles (evhttp's own timeout
 * restarts on every byte).
 */
#include "http.h"
#include "cmd.h"
#include "log.h"
#include "metrics.h"
#include "proto.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <event2/bufferevent.h>
#include <sys/queue.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define COOKIE_NAME  "kg_session"
#define CSRF_HEADER  "X-CSRF-Token"
#define API_PREFIX   "/api/"
#define CMD_NAME_MAX 64
#define HEADERS_MAX  16384
#define ACCEPT_PAUSE_MS 100
#define SWEEP_MS 100

#ifndef KG_CONSOLE_INSTALL_DIR
#define KG_CONSOLE_INSTALL_DIR "/usr/local/share/keygate/console"
#endif
#ifndef KG_CONSOLE_SOURCE_DIR
#define KG_CONSOLE_SOURCE_DIR ""
#endif

typedef struct http_conn {
    struct http_srv *h;
    struct bufferevent *bev;      /* evhttp's, plus our reference (make_bev) */
    struct event *deadline;
    TAILQ_ENTRY(http_conn) link;
} http_conn;

struct http_srv {
    app *a;
    struct evhttp *http;
    struct evconnlistener *lis;
    char root[KGC_PATH_MAX];      /* folder of the static files, "" = none */
    int inflight;                 /* API calls not answered yet */
    int nconns, max_conns;        /* connections open, and the cap */
    int capped;                   /* nconns reached max_conns (logged once) */
    int paused;                   /* 1: listener off for an accept error */
    int metrics_only;             /* the `metrics` listener: /metrics and nothing else */
    TAILQ_HEAD(, http_conn) conns;
    struct event *sweeper;        /* finds closed connections while any is open */
};

/* The one listener of the process: accept_error_cb's argument is
 * evhttp's, so the pause finds the server here. */
static http_srv *the_srv;

typedef struct api_call {
    http_srv *h;
    struct evhttp_request *req;   /* borrowed from evhttp until answered */
    json_t *body;                 /* the request object until submitted (owned) */
    const cmd_def *def;           /* NULL: no such command (job_submit says so) */
    char sid[SESSION_ID_LEN + 1]; /* session id from the cookie, "" if none */
    char csrf[SESSION_ID_LEN + 1];/* X-CSRF-Token, "" if none or malformed */
} api_call;

int http_status_of(const char *code)
{
    static const struct { const char *code; int status; } map[] = {
        {"bad_request", 400},        {"unauthenticated", 401},   {"forbidden", 403},
        {"not_found", 404},          {"unknown_command", 404},   {"conflict", 409},
        {"free_key_immutable", 409}, {"invalid_state", 409},     {"rate_limited", 429},
        {"internal", 500},           {"unavailable", 503},
    };

    if (code == NULL)
        return 200;
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (strcmp(map[i].code, code) == 0)
            return map[i].status;
    return 500;
}

static const char *in_header(struct evhttp_request *req, const char *name)
{
    return evhttp_find_header(evhttp_request_get_input_headers(req), name);
}

/* Headers of every answer: the page runs only its own files, in no frame. */
static void common_headers(struct evhttp_request *req)
{
    struct evkeyvalq *oh = evhttp_request_get_output_headers(req);

    evhttp_add_header(oh, "Content-Security-Policy",
                      "default-src 'self'; script-src 'self'; style-src 'self'; "
                      "img-src 'self' data:; connect-src 'self'; object-src 'none'; "
                      "frame-ancestors 'none'; base-uri 'none'; form-action 'self'");
    evhttp_add_header(oh, "X-Content-Type-Options", "nosniff");
    evhttp_add_header(oh, "X-Frame-Options", "DENY");
    evhttp_add_header(oh, "Referrer-Policy", "no-referrer");
}

static void send_reply(struct evhttp_request *req, int status, struct evbuffer *buf)
{
    evhttp_send_reply(req, status, NULL, buf);
}

/* evbuffer cleanup of an answer's text: it may hold a token. */
static void wipe_free(const void *data, size_t len, void *extra)
{
    (void)extra;
    sodium_memzero((void *)data, len);
    free((void *)data);
}

/* Sends an envelope (stolen) as the answer, with the status of its error
 * code unless status is not 0. secret: result.token is a token; every
 * copy this process makes is wiped. set_cookie may be NULL. */
static void send_envelope(struct evhttp_request *req, json_t *env, int secret,
                          const char *set_cookie, int status)
{
    struct evkeyvalq *oh = evhttp_request_get_output_headers(req);
    json_t *err = json_object_get(env, "error");
    struct evbuffer *buf = evbuffer_new();
    char *text = json_dumps(env, JSON_COMPACT);

    if (status == 0)
        status = json_is_true(json_object_get(env, "ok"))
                     ? 200 : http_status_of(json_string_value(json_object_get(err, "code")));
    if (text == NULL || buf == NULL)
        oom("http answer");
    if (secret)
        proto_wipe_secrets(env);
    json_decref(env);
    common_headers(req);
    evhttp_add_header(oh, "Content-Type", "application/json; charset=utf-8");
    evhttp_add_header(oh, "Cache-Control", "no-store");
    if (set_cookie != NULL)
        evhttp_add_header(oh, "Set-Cookie", set_cookie);
    if (status == 405)
        evhttp_add_header(oh, "Allow", "POST");
    evbuffer_add_reference(buf, text, strlen(text), wipe_free, NULL);
    send_reply(req, status, buf);
    evbuffer_free(buf);
}

static const char CLEAR_COOKIE[] = COOKIE_NAME "=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0";

/* Answers an API call refused before it reached a command. */
static void refuse(struct evhttp_request *req, const char *code, const char *set_cookie,
                   const char *fmt, const char *arg)
{
    send_envelope(req, proto_error(NULL, code, fmt, arg), 0, set_cookie, 0);
}

static void call_free(api_call *c)
{
    c->h->inflight--;
    json_decref(c->body);
    sodium_memzero(c->sid, sizeof c->sid);
    free(c);
}

/* The answer of a command: the envelope as it is, but a new session goes
 * into the cookie and never into the body. */
static void api_reply(void *ctx, json_t *env, int secret)
{
    api_call *c = ctx;
    const char *name = c->def ? c->def->name : "";
    char cookie[SESSION_ID_LEN + 100];
    const char *set_cookie = NULL;

    if (strcmp(name, "session.login") == 0 && json_is_true(json_object_get(env, "ok"))) {
        json_t *res = json_object_get(env, "result"), *sid = json_object_get(res, "session");
        if (json_is_string(sid)) {
            snprintf(cookie, sizeof cookie, "%s=%s; HttpOnly; SameSite=Strict; Path=/; Max-Age=%d",
                     COOKIE_NAME, json_string_value(sid), SESSION_TTL_S);
            set_cookie = cookie;
            sodium_memzero((char *)json_string_value(sid), json_string_length(sid));
            json_object_del(res, "session");
        }
    } else if (strcmp(name, "session.logout") == 0) {
        set_cookie = CLEAR_COOKIE;
    }
    send_envelope(c->req, env, secret, set_cookie, 0);
    sodium_memzero(cookie, sizeof cookie);
    call_free(c);
}

static void submit(api_call *c)
{
    peer_info peer = {-1, -1, ""};  /* not a Unix peer: the audit shows -1 */
    json_t *body = c->body;
    struct evhttp_connection *evcon = evhttp_request_get_connection(c->req);
    char *host = NULL;
    ev_uint16_t port = 0;

    if (evcon != NULL) {
        evhttp_connection_get_peer(evcon, &host, &port);
        if (host != NULL)
            snprintf(peer.addr, sizeof peer.addr, "%s", host);
    }
    c->body = NULL;
    job_submit(c->h->a, body, &peer, api_reply, c);
}

static int csrf_ok(const api_call *c, const char *want)
{
    size_t n = want ? strlen(want) : 0;
    return n > 0 && strlen(c->csrf) == n && sodium_memcmp(c->csrf, want, n) == 0;
}

/* The session's document has arrived: check it, set the actor, run. */
static void on_session(void *arg, int ok, json_t *replies)
{
    api_call *c = arg;
    json_t *r = json_array_get(replies, 0), *doc = NULL;
    const char *uid;

    if (!ok) {
        refuse(c->req, "unavailable", NULL, "%s", "the store is unreachable; nothing was changed");
        call_free(c);
        return;
    }
    if (json_is_string(r))
        doc = json_loadb(json_string_value(r), json_string_length(r), 0, NULL);
    json_decref(replies);
    uid = json_string_value(json_object_get(doc, "user_id"));
    if (uid == NULL || !kgc_id_plausible(uid)) {
        refuse(c->req, "unauthenticated", CLEAR_COOKIE, "%s",
               "your session has ended: sign in again");
        goto done;
    }
    /* session.whoami only reads, and is how a reloaded page gets the
     * token back: another site cannot read its answer. */
    if (strcmp(c->def->name, "session.whoami") != 0 &&
        !csrf_ok(c, json_string_value(json_object_get(doc, "csrf")))) {
        refuse(c->req, "forbidden", NULL, "%s",
               "missing or wrong CSRF token (header " CSRF_HEADER "): reload the page");
        goto done;
    }
    json_object_set_new(c->body, "actor", json_string(uid));
    if (strcmp(c->def->name, "session.whoami") == 0 || strcmp(c->def->name, "session.logout") == 0)
        json_object_set_new(c->body, "session", json_string(c->sid));
    json_decref(doc);
    submit(c);
    return;
done:
    json_decref(doc);
    call_free(c);
}

/* The session id of the request's cookie into out, or "". */
static void cookie_session(struct evhttp_request *req, char *out)
{
    const char *p = in_header(req, "Cookie");
    size_t nl = strlen(COOKIE_NAME);

    out[0] = '\0';
    while (p != NULL && *p) {
        while (*p == ' ' || *p == ';')
            p++;
        size_t n = strcspn(p, ";");
        if (n > nl && strncmp(p, COOKIE_NAME, nl) == 0 && p[nl] == '=' &&
            n - nl - 1 == SESSION_ID_LEN) {
            memcpy(out, p + nl + 1, SESSION_ID_LEN);
            out[SESSION_ID_LEN] = '\0';
            if (!session_id_ok(out))
                out[0] = '\0';
            return;
        }
        p += n;
    }
}

static int content_is_json(struct evhttp_request *req)
{
    const char *t = in_header(req, "Content-Type");
    size_t n = strlen("application/json");

    return t != NULL && strncasecmp(t, "application/json", n) == 0 &&
           (t[n] == '\0' || t[n] == ';' || t[n] == ' ');
}

/* A browser sends Origin with every POST; it must be this server. A
 * client that sends none (curl, scripts) is not a browser on another
 * site. */
static int origin_ok(struct evhttp_request *req)
{
    const char *o = in_header(req, "Origin"), *host = in_header(req, "Host");

    if (o == NULL)
        return 1;
    if (host == NULL)
        return 0;
    if (strncmp(o, "http://", 7) == 0)
        o += 7;
    else if (strncmp(o, "https://", 8) == 0)
        o += 8;
    else
        return 0;
    return strcasecmp(o, host) == 0;
}

static int cmd_name_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > CMD_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || s[i] == '.' || s[i] == '_'))
            return 0;
    return 1;
}

/* Parses the body (wiped from the input buffer: it may hold a password).
 * Returns the object, or NULL after answering. */
static json_t *read_body(struct evhttp_request *req)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    unsigned char *text;
    json_error_t je;
    json_t *body;

    if (len == 0)
        return json_object();
    text = evbuffer_pullup(in, -1);
    body = json_loadb((const char *)text, len, JSON_REJECT_DUPLICATES, &je);
    sodium_memzero(text, len);
    evbuffer_drain(in, len);
    if (body == NULL) {
        refuse(req, "bad_request", NULL, "malformed JSON: %s", je.text);
        return NULL;
    }
    if (!json_is_object(body)) {
        json_decref(body);
        refuse(req, "bad_request", NULL, "%s", "the body must be a JSON object");
        return NULL;
    }
    return body;
}

static void api_request(http_srv *h, struct evhttp_request *req, const char *name)
{
    char key[KGC_RKEY_MAX];
    const char *csrf = in_header(req, CSRF_HEADER);
    json_t *body, *cmds;
    api_call *c;

    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
        send_envelope(req, proto_error(NULL, "bad_request", "the API answers POST only"), 0,
                      NULL, 405);
        return;
    }
    if (!content_is_json(req)) {
        refuse(req, "bad_request", NULL, "%s", "send the arguments as Content-Type: application/json");
        return;
    }
    if (!origin_ok(req)) {
        refuse(req, "forbidden", NULL, "%s", "cross-origin request refused");
        return;
    }
    if (!cmd_name_ok(name)) {
        refuse(req, "unknown_command", NULL, "no command '%s'", "(malformed name)");
        return;
    }
    if ((body = read_body(req)) == NULL)
        return;
    json_object_del(body, "actor");     /* the session says who acts, never the body */
    json_object_del(body, "session");
    json_object_set_new(body, "cmd", json_string(name));
    c = xcalloc(1, sizeof *c);
    c->h = h;
    c->req = req;
    c->body = body;
    c->def = cmd_find(name);
    h->inflight++;
    if (csrf != NULL && strlen(csrf) <= SESSION_ID_LEN)
        snprintf(c->csrf, sizeof c->csrf, "%s", csrf);
    if (c->def == NULL || c->def->role == NEED_NOBODY) {
        submit(c);
        return;
    }
    cookie_session(req, c->sid);
    if (c->sid[0] == '\0' || session_rkey(h->a, c->sid, key) != 0) {
        refuse(req, "unauthenticated", NULL, "%s", "sign in first");
        call_free(c);
        return;
    }
    cmds = json_pack("[[s,s]]", "GET", key);
    if (store_exec(h->a->st, cmds, 0, on_session, c) != 0) {
        refuse(req, "unavailable", NULL, "%s", "the store is unreachable; nothing was changed");
        call_free(c);
    }
    json_decref(cmds);
}

/* --- static files ------------------------------------------------------ */

static const char *content_type(const char *path)
{
    static const struct { const char *ext, *type; } types[] = {
        {".html", "text/html; charset=utf-8"}, {".css", "text/css; charset=utf-8"},
        {".js", "text/javascript; charset=utf-8"}, {".svg", "image/svg+xml"},
        {".png", "image/png"}, {".ico", "image/x-icon"}, {".json", "application/json"},
        {".txt", "text/plain; charset=utf-8"},
    };
    const char *dot = strrchr(path, '.');

    for (size_t i = 0; dot != NULL && i < sizeof types / sizeof types[0]; i++)
        if (strcmp(dot, types[i].ext) == 0)
            return types[i].type;
    return "application/octet-stream";
}

/* 1 if a decoded path may name a file under the root: absolute, and no
 * segment empty or starting with a dot (no "..", no hidden files). */
static int path_ok(const char *p, size_t len)
{
    if (len == 0 || p[0] != '/' || strlen(p) != len || strchr(p, '\\') != NULL)
        return 0;
    for (const char *s = p; s != NULL; s = strchr(s + 1, '/'))
        if (s[1] == '.' || (s[1] == '/' ))
            return 0;
    return 1;
}

static void send_text(struct evhttp_request *req, int status, const char *text)
{
    struct evbuffer *buf = evbuffer_new();

    if (buf == NULL)
        oom("evbuffer_new");
    common_headers(req);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain; charset=utf-8");
    evbuffer_add_printf(buf, "%s\n", text);
    send_reply(req, status, buf);
    evbuffer_free(buf);
}

static void static_request(http_srv *h, struct evhttp_request *req, const char *path)
{
    enum evhttp_cmd_type m = evhttp_request_get_command(req);
    char full[KGC_PATH_MAX + 64];
    struct evbuffer *buf;
    struct stat st;
    size_t len = 0;
    char *p;
    int fd;

    if (m != EVHTTP_REQ_GET && m != EVHTTP_REQ_HEAD) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
        send_text(req, 405, "method not allowed");
        return;
    }
    if (h->root[0] == '\0' || path == NULL) {
        send_text(req, 404, "not found");
        return;
    }
    p = evhttp_uridecode(path, 0, &len);
    if (p == NULL || !path_ok(p, len) ||
        snprintf(full, sizeof full, "%s%s%s", h->root, p,
                 p[len - 1] == '/' ? "index.html" : "") >= (int)sizeof full) {
        free(p);
        send_text(req, 404, "not found");
        return;
    }
    free(p);
    fd = open(full, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        if (fd >= 0)
            close(fd);
        send_text(req, 404, "not found");
        return;
    }
    buf = evbuffer_new();
    if (buf == NULL)
        oom("evbuffer_new");
    if (evbuffer_add_file(buf, fd, 0, st.st_size) != 0) {   /* owns fd from here */
        evbuffer_free(buf);
        send_text(req, 500, "cannot read the file");
        return;
    }
    common_headers(req);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", content_type(full));
    evhttp_add_header(evhttp_request_get_output_headers(req), "Cache-Control", "no-cache");
    send_reply(req, 200, buf);
    evbuffer_free(buf);
}

/* --- connections: count, cap, deadline --------------------------------- */

/* The listener accepts while under the cap and not paused. */
static void listener_update(http_srv *h)
{
    if (h->lis == NULL)
        return;
    if (h->nconns >= h->max_conns && !h->capped)
        log_warn("console: %d connections open, the cap: not accepting until one closes",
                 h->nconns);
    h->capped = h->nconns >= h->max_conns;
    if (!h->capped && !h->paused)
        evconnlistener_enable(h->lis);
    else
        evconnlistener_disable(h->lis);
}

static void deadline_arm(http_conn *c)
{
    struct timeval tv = {c->h->a->cfg.http_deadline_s, 0};
    evtimer_add(c->deadline, &tv);
}

/* A request did not arrive whole in time: shut the socket down; evhttp
 * sees the end of the stream and frees the connection (sweep_cb). */
static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    http_conn *c = arg;
    evutil_socket_t s = bufferevent_getfd(c->bev);

    (void)fd;
    (void)what;
    if (s >= 0)
        shutdown(s, SHUT_RDWR);
}

static void conn_drop(http_conn *c)
{
    http_srv *h = c->h;

    TAILQ_REMOVE(&h->conns, c, link);
    h->nconns--;
    event_free(c->deadline);
    bufferevent_decref(c->bev);   /* the last reference: the socket closes now */
    free(c);
}

/* Finds the connections evhttp is done with: bufferevent_free clears a
 * bufferevent's callbacks, and evhttp keeps its error callback set on a
 * live one. Our reference kept the memory (and the descriptor: evhttp has
 * already shut it down for writing) until now. */
static void sweep(http_srv *h)
{
    http_conn *c, *next;

    for (c = TAILQ_FIRST(&h->conns); c != NULL; c = next) {
        bufferevent_event_cb ecb = NULL;

        next = TAILQ_NEXT(c, link);
        bufferevent_getcb(c->bev, NULL, NULL, &ecb, NULL);
        if (ecb == NULL)
            conn_drop(c);
    }
    listener_update(h);
    if (h->nconns > 0) {
        struct timeval tv = {0, SWEEP_MS * 1000};
        evtimer_add(h->sweeper, &tv);
    }
}

static void sweep_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sweep(arg);
}

/* evhttp's bevcb: each connection's bufferevent, made here so that we can
 * count it, time it and learn when it is gone (sweep). */
static struct bufferevent *make_bev(struct event_base *base, void *arg)
{
    http_srv *h = arg;
    http_conn *c = xcalloc(1, sizeof *c);

    c->h = h;
    c->deadline = evtimer_new(base, deadline_cb, c);
    c->bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (c->bev == NULL || c->deadline == NULL)
        oom("http connection");
    bufferevent_incref(c->bev);
    TAILQ_INSERT_TAIL(&h->conns, c, link);
    h->nconns++;
    deadline_arm(c);
    if (!evtimer_pending(h->sweeper, NULL)) {
        struct timeval tv = {0, SWEEP_MS * 1000};
        evtimer_add(h->sweeper, &tv);
    }
    listener_update(h);
    return c->bev;
}

/* GET /metrics: every counter, in Prometheus' text format. */
static void metrics_request(struct evhttp_request *req)
{
    struct evbuffer *buf = evbuffer_new();

    if (buf == NULL)
        oom("evbuffer_new");
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET &&
        evhttp_request_get_command(req) != EVHTTP_REQ_HEAD) {
        evhttp_send_error(req, 405, NULL);
        evbuffer_free(buf);
        return;
    }
    metrics_render(buf);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain; version=0.0.4; charset=utf-8");
    evhttp_add_header(evhttp_request_get_output_headers(req), "Cache-Control", "no-store");
    send_reply(req, 200, buf);
    evbuffer_free(buf);
}

static http_conn *conn_of(http_srv *h, struct evhttp_request *req)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
    http_conn *c;

    TAILQ_FOREACH(c, &h->conns, link)
        if (c->bev == bev)
            return c;
    return NULL;
}

/* The answer went out: the clock starts again for the next request. */
static void conn_request_done(struct evhttp_request *req, void *arg)
{
    http_conn *c = conn_of(arg, req);

    if (c != NULL)
        deadline_arm(c);
}

/* A whole request arrived: the deadline covers receiving a request, not
 * the work it asks for (a sign-up waits for its password hash, longer on a
 * busy machine), so it stops until the answer is sent. */
static void conn_request_in(http_srv *h, struct evhttp_request *req)
{
    http_conn *c = conn_of(h, req);

    if (c != NULL) {
        evtimer_del(c->deadline);
        evhttp_request_set_on_complete_cb(req, conn_request_done, h);
    }
}

static void on_request(struct evhttp_request *req, void *arg)
{
    http_srv *h = arg;
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));

    conn_request_in(h, req);
    metrics_count(MX_HTTP_REQUESTS);
    if (path != NULL && strcmp(path, "/metrics") == 0) {
        metrics_request(req);
        return;
    }
    if (h->metrics_only) {
        evhttp_send_error(req, HTTP_NOTFOUND, NULL);
        return;
    }
    if (path != NULL && strncmp(path, API_PREFIX, strlen(API_PREFIX)) == 0)
        api_request(h, req, path + strlen(API_PREFIX));
    else
        static_request(h, req, path);
}

/* --- setup ------------------------------------------------------------- */

static void resume_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    if (the_srv != NULL) {
        the_srv->paused = 0;
        listener_update(the_srv);
    }
}

/* On EMFILE/ENFILE stop accepting for a moment instead of spinning (as
 * the admin socket does). The callback's argument belongs to evhttp, so
 * the pause is a one-shot timer on the listener itself; it cannot fire
 * after http_free, which runs once the loop has stopped. */
static void accept_error_cb(struct evconnlistener *lis, void *unused)
{
    int e = EVUTIL_SOCKET_ERROR();

    (void)unused;
    if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
        struct timeval tv = {0, ACCEPT_PAUSE_MS * 1000};
        log_warn("accept: %s; pausing %d ms", strerror(e), ACCEPT_PAUSE_MS);
        evconnlistener_disable(lis);
        if (the_srv != NULL)
            the_srv->paused = 1;
        if (event_base_once(evconnlistener_get_base(lis), -1, EV_TIMEOUT, resume_cb, NULL, &tv) != 0)
            resume_cb(-1, 0, NULL);
    } else {
        log_warn("accept: %s", strerror(e));
    }
}

static int has_index(const char *dir)
{
    char p[KGC_PATH_MAX + 16];
    snprintf(p, sizeof p, "%s/index.html", dir);
    return dir[0] != '\0' && access(p, R_OK) == 0;
}

/* http_root, else the installed console, else the source tree's. */
static void pick_root(http_srv *h)
{
    const char *cands[] = {h->a->cfg.http_root, KG_CONSOLE_INSTALL_DIR, KG_CONSOLE_SOURCE_DIR};
    size_t n;

    for (size_t i = 0; i < sizeof cands / sizeof cands[0]; i++) {
        if (cands[i][0] == '\0')
            continue;
        snprintf(h->root, sizeof h->root, "%s", cands[i]);
        n = strlen(h->root);
        while (n > 1 && h->root[n - 1] == '/')
            h->root[--n] = '\0';
        if (has_index(h->root))
            return;
        if (i == 0) {
            log_warn("http_root %s has no index.html: the console page is missing", h->root);
            return;
        }
    }
    h->root[0] = '\0';
    log_warn("no console files found (tried %s, %s): serving the API only",
             KG_CONSOLE_INSTALL_DIR, KG_CONSOLE_SOURCE_DIR);
}

/* The listener on addr ("HOST:PORT"), serving everything, or only
 * /metrics when metrics_only. */
static http_srv *listen_on(app *a, const char *addr, int metrics_only, char *err, size_t errlen)
{
    char host[sizeof a->cfg.http_listen];
    const char *what = metrics_only ? "metrics" : "http";
    char *colon, *end;
    long port;
    http_srv *h;
    struct evhttp_bound_socket *bs;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;

    snprintf(host, sizeof host, "%s", addr);
    colon = strrchr(host, ':');
    if (colon == NULL || colon == host) {
        snprintf(err, errlen, "%s: '%s' is not HOST:PORT", what, addr);
        return NULL;
    }
    *colon = '\0';
    errno = 0;
    port = strtol(colon + 1, &end, 10);
    if (errno != 0 || *end != '\0' || end == colon + 1 || port < 0 || port > 65535) {
        snprintf(err, errlen, "%s: bad port in '%s'", what, addr);
        return NULL;
    }
    if (host[0] == '[' && colon[-1] == ']') {     /* [::1]:8080 */
        colon[-1] = '\0';
        memmove(host, host + 1, strlen(host));
    }
    h = xcalloc(1, sizeof *h);
    h->a = a;
    h->metrics_only = metrics_only;
    h->sweeper = evtimer_new(a->base, sweep_cb, h);
    if (h->sweeper == NULL)
        oom("evtimer_new");
    TAILQ_INIT(&h->conns);
    h->max_conns = a->cfg.http_max_clients;
    {
        struct rlimit rl;       /* keep half the descriptors for the admin socket and Redis */
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
            (rlim_t)h->max_conns > rl.rlim_cur / 2)
            h->max_conns = rl.rlim_cur / 2 > 1 ? (int)(rl.rlim_cur / 2) : 1;
    }
    h->http = evhttp_new(a->base);
    if (h->http == NULL)
        oom("evhttp_new");
    evhttp_set_allowed_methods(h->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST);
    evhttp_set_max_body_size(h->http, (ev_ssize_t)a->cfg.max_line);
    evhttp_set_max_headers_size(h->http, HEADERS_MAX);
    evhttp_set_timeout(h->http, a->cfg.idle_timeout_s);
    evhttp_set_gencb(h->http, on_request, h);
    evhttp_set_bevcb(h->http, make_bev, h);
    bs = evhttp_bind_socket_with_handle(h->http, host, (ev_uint16_t)port);
    if (bs == NULL) {
        snprintf(err, errlen, "%s: cannot listen on %s: %s", what, addr,
                 errno ? strerror(errno) : "bad address");
        evhttp_free(h->http);
        event_free(h->sweeper);
        free(h);
        return NULL;
    }
    h->lis = evhttp_bound_socket_get_listener(bs);
    evconnlistener_set_error_cb(h->lis, accept_error_cb);
    if (!metrics_only)
        the_srv = h;
    if (getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&ss, &sl) == 0)
        port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                              : ((struct sockaddr_in *)&ss)->sin_port);
    if (metrics_only) {
        log_info("metrics on http://%s:%ld/metrics", host, port);
        return h;
    }
    pick_root(h);
    log_info("console on http://%s:%ld/ (files from %s)", host, port,
             h->root[0] ? h->root : "nowhere");
    return h;
}

http_srv *http_new(app *a, char *err, size_t errlen)
{
    return listen_on(a, a->cfg.http_listen, 0, err, errlen);
}

http_srv *http_metrics_new(app *a, char *err, size_t errlen)
{
    return listen_on(a, a->cfg.metrics_listen, 1, err, errlen);
}


void http_free(http_srv *h)
{
    if (h == NULL)
        return;
    if (h->inflight != 0)
        log_warn("%d console calls unanswered at shutdown", h->inflight);
    evhttp_free(h->http);     /* frees every connection ... */
    while (!TAILQ_EMPTY(&h->conns))
        conn_drop(TAILQ_FIRST(&h->conns));   /* ... whose last reference is ours */
    event_free(h->sweeper);
    if (the_srv == h)
        the_srv = NULL;
    free(h);
}

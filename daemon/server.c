/*
 * server.c - admin socket, connections and framing.
 *
 * Each connection keeps a FIFO of request slots; a slot is answered when its
 * command finishes, and answers leave strictly in request order. A
 * connection whose client went away stays allocated (closed) until its last
 * slot is answered, so commands in flight never touch freed memory.
 */
#include "metrics.h"
#include "server.h"
#include "log.h"
#include "proto.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/listener.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_UNANSWERED 1024       /* pipelined requests before reading pauses */
#define ACCEPT_PAUSE_MS 100

typedef struct conn conn;

struct reqslot {
    conn *c;
    reqslot *next;
    char *out;                    /* serialized answer once ready */
    size_t outlen;
    int ready, secret;
};

struct conn {
    server *srv;
    struct bufferevent *bev;      /* NULL once closed */
    struct event *idle;           /* partial-line timer */
    peer_info peer;
    reqslot *head, *tail;
    int unanswered;
    int read_paused;
    int closing;                  /* close once every answer is out */
    conn *prev, *next;
};

struct server {
    struct event_base *base;
    const kgc_config *cfg;
    struct evconnlistener *lis;
    struct event *resume;         /* re-enables accepting after EMFILE */
    server_line_fn fn;
    void *app;
    conn *conns;
    int nconns;
    char path[108];
};

static void conn_maybe_free(conn *c);

static void conn_close(conn *c)
{
    if (c->bev != NULL) {
        bufferevent_free(c->bev);
        c->bev = NULL;
        c->srv->nconns--;
        metrics_clients(-1);
        if (c->srv->lis != NULL && c->srv->nconns < c->srv->cfg->max_clients)
            evconnlistener_enable(c->srv->lis);
    }
    if (c->idle != NULL) {
        event_free(c->idle);
        c->idle = NULL;
    }
    conn_maybe_free(c);
}

static void conn_maybe_free(conn *c)
{
    server *srv = c->srv;

    if (c->bev != NULL || c->unanswered > 0)
        return;
    while (c->head != NULL) {       /* answered but never sent */
        reqslot *rs = c->head;
        c->head = rs->next;
        if (rs->out != NULL) {
            if (rs->secret)
                sodium_memzero(rs->out, rs->outlen);
            free(rs->out);
        }
        free(rs);
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    free(c);
}

/* Writes every answered slot at the head of the FIFO. */
static void conn_flush(conn *c)
{
    while (c->head != NULL && c->head->ready) {
        reqslot *rs = c->head;
        c->head = rs->next;
        if (c->head == NULL)
            c->tail = NULL;
        if (c->bev != NULL)
            bufferevent_write(c->bev, rs->out, rs->outlen);
        if (rs->secret)
            sodium_memzero(rs->out, rs->outlen);
        free(rs->out);
        free(rs);
    }
}

static reqslot *slot_new(conn *c)
{
    reqslot *rs = xcalloc(1, sizeof *rs);
    rs->c = c;
    if (c->tail)
        c->tail->next = rs;
    else
        c->head = rs;
    c->tail = rs;
    c->unanswered++;
    return rs;
}

static void read_cb(struct bufferevent *bev, void *arg);

void reqslot_respond(reqslot *rs, json_t *response, int secret)
{
    conn *c = rs->c;
    char *text = json_dumps(response, JSON_COMPACT);

    if (text == NULL)
        oom("json_dumps");
    if (secret)
        proto_wipe_secrets(response);   /* before the values are freed */
    json_decref(response);
    rs->outlen = strlen(text) + 1;
    rs->out = text;
    rs->out[rs->outlen - 1] = '\n';
    rs->ready = 1;
    rs->secret = secret;
    c->unanswered--;
    conn_flush(c);
    if (c->bev == NULL) {
        conn_maybe_free(c);
        return;
    }
    if (c->read_paused && c->unanswered < MAX_UNANSWERED / 2) {
        c->read_paused = 0;
        bufferevent_enable(c->bev, EV_READ);
        read_cb(c->bev, c);       /* lines may already be buffered */
    }
}

static void answer_now(conn *c, const char *code, const char *msg)
{
    reqslot_respond(slot_new(c), proto_error(NULL, code, "%s", msg), 0);
}

static void idle_cb(evutil_socket_t fd, short what, void *arg)
{
    conn *c = arg;
    (void)fd;
    (void)what;
    log_info("dropping client pid %ld: partial line idle for %d s", c->peer.pid,
             c->srv->cfg->idle_timeout_s);
    conn_close(c);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
    conn *c = arg;
    (void)bev;
    if (c->closing && c->unanswered == 0 && c->head == NULL)
        conn_close(c);
}

static void read_cb(struct bufferevent *bev, void *arg)
{
    conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t max = c->srv->cfg->max_line;

    while (!c->closing) {
        struct evbuffer_ptr eol;
        size_t eol_len = 0, avail = evbuffer_get_length(in);
        char *line;

        if (c->unanswered >= MAX_UNANSWERED) {
            c->read_paused = 1;
            bufferevent_disable(bev, EV_READ);
            break;
        }
        eol = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);
        if (eol.pos < 0 ? avail > max : (size_t)eol.pos > max) {
            /* Answer, then close once earlier answers are out. */
            c->closing = 1;
            bufferevent_disable(bev, EV_READ);
            answer_now(c, "bad_request", "line too long");
            if (c->bev != NULL && c->unanswered == 0 && c->head == NULL &&
                evbuffer_get_length(bufferevent_get_output(bev)) == 0)
                conn_close(c);
            return;
        }
        if (eol.pos < 0) {
            /* The clock starts when a line starts, not at each byte: a
             * client trickling one line forever is dropped all the same. */
            if (avail > 0 && !evtimer_pending(c->idle, NULL)) {
                struct timeval tv = {c->srv->cfg->idle_timeout_s, 0};
                evtimer_add(c->idle, &tv);
            }
            break;
        }
        evtimer_del(c->idle);
        line = xmalloc((size_t)eol.pos + 1);
        evbuffer_remove(in, line, (size_t)eol.pos);
        evbuffer_drain(in, eol_len);
        line[eol.pos] = '\0';
        c->srv->fn(c->srv->app, slot_new(c), line, (size_t)eol.pos, &c->peer);
        sodium_memzero(line, (size_t)eol.pos);
        free(line);
        if (c->bev == NULL)
            return;
    }
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    conn *c = arg;
    (void)bev;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        conn_close(c);
}

static void accept_cb(struct evconnlistener *lis, evutil_socket_t fd,
                      struct sockaddr *sa, int socklen, void *arg)
{
    server *srv = arg;
    conn *c;
    struct ucred cred;
    socklen_t len = sizeof cred;

    (void)lis;
    (void)sa;
    (void)socklen;
    c = xcalloc(1, sizeof *c);
    c->srv = srv;
    c->peer.uid = c->peer.pid = -1;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
        c->peer.uid = (long)cred.uid;
        c->peer.pid = (long)cred.pid;
    }
    c->bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
    c->idle = evtimer_new(srv->base, idle_cb, c);
    if (c->bev == NULL || c->idle == NULL)
        oom("bufferevent");
    bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    metrics_clients(1);
    if (++srv->nconns >= srv->cfg->max_clients) {
        log_warn("%d clients connected: pausing accept", srv->nconns);
        evconnlistener_disable(srv->lis);
    }
}

static void resume_cb(evutil_socket_t fd, short what, void *arg)
{
    server *srv = arg;
    (void)fd;
    (void)what;
    evconnlistener_enable(srv->lis);
}

/* On EMFILE/ENFILE stop accepting for a moment instead of spinning. */
static void accept_error_cb(struct evconnlistener *lis, void *arg)
{
    server *srv = arg;
    int e = EVUTIL_SOCKET_ERROR();

    if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
        struct timeval tv = {0, ACCEPT_PAUSE_MS * 1000};
        log_warn("accept: %s; pausing %d ms", strerror(e), ACCEPT_PAUSE_MS);
        evconnlistener_disable(lis);
        evtimer_add(srv->resume, &tv);
    } else {
        log_warn("accept: %s", strerror(e));
    }
}

/* Binds the socket under a tight umask, replacing a stale socket file but
 * never a live daemon's. */
static int bind_socket(server *srv, char *err, size_t errlen)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd, probe;
    mode_t old;

    if (strlen(srv->cfg->socket_path) >= sizeof sa.sun_path) {
        snprintf(err, errlen, "socket path too long");
        return -1;
    }
    memcpy(sa.sun_path, srv->cfg->socket_path, strlen(srv->cfg->socket_path) + 1);
    probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof sa) == 0) {
        close(probe);
        snprintf(err, errlen, "%s: another daemon is listening there", sa.sun_path);
        return -1;
    }
    if (probe >= 0)
        close(probe);
    unlink(sa.sun_path);          /* stale, or absent */
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    old = umask(0177);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        umask(old);
        snprintf(err, errlen, "bind %s: %s", sa.sun_path, strerror(errno));
        close(fd);
        return -1;
    }
    umask(old);
    if (chmod(sa.sun_path, srv->cfg->socket_mode) != 0 || listen(fd, 512) != 0) {
        snprintf(err, errlen, "%s: %s", sa.sun_path, strerror(errno));
        close(fd);
        unlink(sa.sun_path);
        return -1;
    }
    snprintf(srv->path, sizeof srv->path, "%s", sa.sun_path);
    return fd;
}

server *server_new(struct event_base *base, const kgc_config *cfg, server_line_fn fn,
                   void *app, char *err, size_t errlen)
{
    server *srv = xcalloc(1, sizeof *srv);
    int fd;

    srv->base = base;
    srv->cfg = cfg;
    srv->fn = fn;
    srv->app = app;
    if (cfg->socket_path[0] == '\0') {
        snprintf(err, errlen, "no 'socket' in the config");
        free(srv);
        return NULL;
    }
    fd = bind_socket(srv, err, errlen);
    if (fd < 0) {
        free(srv);
        return NULL;
    }
    srv->lis = evconnlistener_new(base, accept_cb, srv, LEV_OPT_CLOSE_ON_FREE, 0, fd); /* 0: listen() done, backlog 512 */
    srv->resume = evtimer_new(base, resume_cb, srv);
    if (srv->lis == NULL || srv->resume == NULL)
        oom("evconnlistener");
    evconnlistener_set_error_cb(srv->lis, accept_error_cb);
    return srv;
}

void server_free(server *srv)
{
    if (srv == NULL)
        return;
    evconnlistener_free(srv->lis);
    srv->lis = NULL;
    event_free(srv->resume);
    while (srv->conns != NULL) {
        conn *c = srv->conns;
        c->unanswered = 0;        /* the store is gone: nothing will answer */
        conn_close(c);
    }
    if (srv->path[0])
        unlink(srv->path);
    free(srv);
}

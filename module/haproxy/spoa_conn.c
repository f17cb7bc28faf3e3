/*
 * spoa_conn.c - one connection from haproxy (SPOE.txt §3.2).
 *
 *   CONNECTING ──HAPROXY-HELLO ok──► PROCESSING ──HAPROXY-DISCONNECT, an
 *       │ bad hello                     │          error, or our stop──┐
 *       ▼                               ▼                              ▼
 *   DISCONNECTING: AGENT-DISCONNECT queued, reading off, the connection
 *   is freed once the output is flushed (or the peer goes away).
 *
 * A frame is read whole before it is handled; a length above the
 * negotiated max-frame-size is refused from its 4-byte prefix, before any
 * of it is read. NOTIFYs are answered in any order (pipelining): each
 * ACK repeats its NOTIFY's stream and frame ids. While SPOA_MAX_WAITING
 * requests wait for libkeygate, or SPOA_MAX_OUTBUF bytes of ACKs wait for
 * haproxy, the connection is not read (back pressure, not an error).
 *
 * Freeing: only from the bufferevent's own callbacks, the `kill` timer,
 * or the agent's final stop; never from inside a libkeygate call (see
 * spoa.h). spoa_conn_free cancels every waiting request first.
 */
#include "spoa.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>

enum spoa_conn_state { ST_CONNECTING, ST_PROCESSING, ST_DISCONNECTING };

struct spoa_conn {
    TAILQ_ENTRY(spoa_conn) link;        /* in spoa.conns */
    struct bufferevent *bev;
    struct event *kill;                 /* a zero timer that frees the connection */
    enum spoa_conn_state state;
    uint32_t frame_size;                /* ours until the HELLO, then negotiated */
    unsigned nwaiting;                  /* requests in reqs */
    int reading;                        /* EV_READ enabled */
    struct spoa_req_list reqs;
    char peer[64];
};

static void on_read(struct bufferevent *bev, void *arg);
static void on_write(struct bufferevent *bev, void *arg);
static void on_event(struct bufferevent *bev, short what, void *arg);
static void on_kill(evutil_socket_t fd, short what, void *arg);
static void disconnect(struct spoa_conn *c, int code, const char *message);
static void flow(struct spoa_conn *c);

struct spoa_req_list *spoa_conn_reqs(struct spoa_conn *c)
{
    return &c->reqs;
}

uint32_t spoa_conn_frame_size(const struct spoa_conn *c)
{
    return c->frame_size;
}

int spoa_conn_new(int fd, const char *peer)
{
    struct spoa_conn *c = calloc(1, sizeof *c);

    if (c == NULL) {
        evutil_closesocket(fd);
        return -1;
    }
    TAILQ_INIT(&c->reqs);
    snprintf(c->peer, sizeof c->peer, "%s", peer);
    c->state = ST_CONNECTING;
    c->frame_size = spoa.max_frame_size;
    c->bev = bufferevent_socket_new(spoa.base, fd, BEV_OPT_CLOSE_ON_FREE);
    c->kill = evtimer_new(spoa.base, on_kill, c);
    if (c->bev == NULL || c->kill == NULL) {
        if (c->bev != NULL)
            bufferevent_free(c->bev);
        else
            evutil_closesocket(fd);
        if (c->kill != NULL)
            event_free(c->kill);
        free(c);
        return -1;
    }
    bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
    TAILQ_INSERT_TAIL(&spoa.conns, c, link);
    spoa.nconns++;
    flow(c);
    spoa_debug("%s: connected", c->peer);
    return 0;
}

void spoa_conn_free(struct spoa_conn *c)
{
    struct spoa_req *r;

    if (c == NULL)
        return;
    while ((r = TAILQ_FIRST(&c->reqs)) != NULL)
        spoa_req_cancel(r);
    spoa_loop_sync();
    TAILQ_REMOVE(&spoa.conns, c, link);
    bufferevent_free(c->bev);
    event_free(c->kill);
    spoa_debug("%s: closed", c->peer);
    free(c);
    spoa.nconns--;
    spoa_conn_gone();
}

int spoa_conn_send(struct spoa_conn *c, const char *buf, size_t len)
{
    static const struct timeval now = {0, 0};

    if (bufferevent_write(c->bev, buf, len) == 0) {
        flow(c);
        return 0;
    }
    /* out of memory: close from the loop, not from inside our caller */
    c->state = ST_DISCONNECTING;
    flow(c);
    evtimer_add(c->kill, &now);
    return -1;
}

void spoa_conn_req_done(struct spoa_conn *c)
{
    c->nwaiting--;
    if (spoa.stopping && c->nwaiting == 0 && c->state == ST_PROCESSING)
        disconnect(c, SPOP_ERR_NONE, "keygate-spoa is stopping");
    flow(c);
}

/* Frees nothing (a connection to close gets its kill timer), so the list
 * stays walkable. */
void spoa_conn_stop_all(void)
{
    static const struct timeval now = {0, 0};
    struct spoa_conn *c;

    TAILQ_FOREACH(c, &spoa.conns, link) {
        if (c->state == ST_CONNECTING)
            evtimer_add(c->kill, &now);
        else if (c->state == ST_PROCESSING && c->nwaiting == 0)
            disconnect(c, SPOP_ERR_NONE, "keygate-spoa is stopping");
        flow(c);
    }
}

/*
 * Reads as long as there is room: enables EV_READ while the connection
 * may take more frames, disables it otherwise. When reading resumes with
 * whole frames already buffered, a deferred read callback handles them
 * (never from inside done(), which may be our caller).
 */
static void flow(struct spoa_conn *c)
{
    size_t out = evbuffer_get_length(bufferevent_get_output(c->bev));
    int want = c->state != ST_DISCONNECTING && !spoa.stopping &&
               c->nwaiting < SPOA_MAX_WAITING && out < SPOA_MAX_OUTBUF;

    if (want == c->reading)
        return;
    c->reading = want;
    if (want) {
        bufferevent_enable(c->bev, EV_READ);
        if (evbuffer_get_length(bufferevent_get_input(c->bev)) >= 4)
            bufferevent_trigger(c->bev, EV_READ, BEV_OPT_DEFER_CALLBACKS);
    } else {
        bufferevent_disable(c->bev, EV_READ);
    }
}

/* Queues AGENT-DISCONNECT and closes once it is sent; cancels what waits. */
static void disconnect(struct spoa_conn *c, int code, const char *message)
{
    static const struct timeval now = {0, 0};
    char buf[512], *p = buf, *end = buf + sizeof buf;
    struct spoa_req *r;
    long n;

    if (c->state == ST_DISCONNECTING)
        return;
    if (code != SPOP_ERR_NONE)
        spoa_log("warning", "%s: disconnecting: %s (status %d)", c->peer, message, code);
    else
        spoa_debug("%s: disconnecting: %s", c->peer, message);
    c->state = ST_DISCONNECTING;
    while ((r = TAILQ_FIRST(&c->reqs)) != NULL) {
        spoa_req_cancel(r);
        c->nwaiting--;
    }
    evbuffer_drain(bufferevent_get_input(c->bev), evbuffer_get_length(bufferevent_get_input(c->bev)));
    if (spop_put_head(&p, end, SPOP_FRAME_AGENT_DISCONNECT, SPOP_FLAG_FIN, 0, 0) != 0 ||
        spop_put_kv_uint32(&p, end, "status-code", (uint32_t)code) != 0 ||
        spop_put_kv_string(&p, end, "message", message, strlen(message)) != 0 ||
        (n = spop_finish(buf, p, c->frame_size)) < 0 ||
        bufferevent_write(c->bev, buf, (size_t)n) != 0)
        evtimer_add(c->kill, &now);             /* cannot say goodbye: just close */
    flow(c);
}

static void on_kill(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    spoa_conn_free(arg);
}

/* HAPROXY-HELLO: version, frame size and capabilities; AGENT-HELLO back. */
static void hello(struct spoa_conn *c, const spop_frame *f)
{
    char buf[256], *p = buf, *end = buf + sizeof buf;
    spop_hello h;
    int err;
    long n;

    if (f->type != SPOP_FRAME_HAPROXY_HELLO) {
        disconnect(c, SPOP_ERR_INVALID, "expected HAPROXY-HELLO");
        return;
    }
    if (!(f->flags & SPOP_FLAG_FIN)) {
        disconnect(c, SPOP_ERR_FRAG_NOT_SUPPORTED, "a fragmented HELLO");
        return;
    }
    if (f->stream_id != 0 || f->frame_id != 0) {
        disconnect(c, SPOP_ERR_INVALID, "HELLO with a stream or frame id");
        return;
    }
    err = spop_get_hello(f, &h);
    if (err == SPOP_ERR_NONE && !spop_has_major(h.versions, h.versions_len, 2))
        err = SPOP_ERR_BAD_VSN;
    if (err == SPOP_ERR_NONE && h.max_frame_size < SPOP_MIN_FRAME_SIZE)
        err = SPOP_ERR_BAD_FRAME_SIZE;
    if (err != SPOP_ERR_NONE) {
        disconnect(c, err, spop_strerror(err));
        return;
    }
    if (h.max_frame_size < c->frame_size)
        c->frame_size = (uint32_t)h.max_frame_size;
    if (spop_put_head(&p, end, SPOP_FRAME_AGENT_HELLO, SPOP_FLAG_FIN, 0, 0) != 0 ||
        spop_put_kv_string(&p, end, "version", SPOP_VERSION, strlen(SPOP_VERSION)) != 0 ||
        spop_put_kv_uint32(&p, end, "max-frame-size", c->frame_size) != 0 ||
        spop_put_kv_string(&p, end, "capabilities", "pipelining", strlen("pipelining")) != 0 ||
        (n = spop_finish(buf, p, c->frame_size)) < 0 ||
        spoa_conn_send(c, buf, (size_t)n) != 0)
        return;
    if (h.healthcheck) {
        /* SPOE.txt: after a health check's HELLO the agent may just close */
        c->state = ST_DISCONNECTING;
        spoa_debug("%s: health check", c->peer);
        return;
    }
    c->state = ST_PROCESSING;
    spoa_debug("%s: HELLO done, max-frame-size %u", c->peer, (unsigned)c->frame_size);
}

static void frame(struct spoa_conn *c, const char *data, size_t len)
{
    spop_frame f;
    struct spoa_req *started;
    int err;

    if (spop_get_frame(data, len, &f) != 0) {
        disconnect(c, SPOP_ERR_INVALID, "malformed frame header");
        return;
    }
    if (c->state == ST_CONNECTING) {
        hello(c, &f);
        return;
    }
    switch (f.type) {
    case SPOP_FRAME_NOTIFY:
        if (!(f.flags & SPOP_FLAG_FIN)) {
            disconnect(c, SPOP_ERR_FRAG_NOT_SUPPORTED, "fragmented NOTIFY");
            return;
        }
        if (f.flags & SPOP_FLAG_ABORT)
            return;                             /* nothing to process, nothing to ACK */
        err = spoa_req_notify(c, &f, &started);
        if (err != 0) {
            disconnect(c, err, err == SPOP_ERR_INVALID ? "malformed NOTIFY" : spop_strerror(err));
            return;
        }
        if (started != NULL)
            c->nwaiting++;
        return;
    case SPOP_FRAME_HAPROXY_DISCONNECT:
        disconnect(c, SPOP_ERR_NONE, "haproxy disconnects");
        return;
    case SPOP_FRAME_UNSET:
        disconnect(c, SPOP_ERR_FRAG_NOT_SUPPORTED, "payload fragment");
        return;
    case SPOP_FRAME_HAPROXY_HELLO:
        disconnect(c, SPOP_ERR_INVALID, "a second HELLO");
        return;
    default:
        return;                                 /* "unknown frames may be silently skipped" */
    }
}

static void on_read(struct bufferevent *bev, void *arg)
{
    struct spoa_conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    unsigned char head[4];
    unsigned char *data;
    uint32_t flen;

    while (c->state != ST_DISCONNECTING && c->reading) {
        if (evbuffer_get_length(in) < 4)
            break;
        evbuffer_copyout(in, head, 4);
        flen = (uint32_t)head[0] << 24 | (uint32_t)head[1] << 16 | (uint32_t)head[2] << 8 | head[3];
        if (flen > c->frame_size) {
            disconnect(c, SPOP_ERR_TOO_BIG, "frame is too big");
            break;
        }
        if (evbuffer_get_length(in) < 4 + (size_t)flen)
            break;
        data = evbuffer_pullup(in, 4 + (ssize_t)flen);
        if (data == NULL) {
            disconnect(c, SPOP_ERR_RES, "out of memory");
            break;
        }
        frame(c, (const char *)data + 4, flen);
        if (c->state != ST_DISCONNECTING)
            evbuffer_drain(in, 4 + (size_t)flen);
        flow(c);
    }
}

static void on_write(struct bufferevent *bev, void *arg)
{
    struct spoa_conn *c = arg;

    if (c->state == ST_DISCONNECTING) {
        if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
            spoa_conn_free(c);
        return;
    }
    flow(c);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        spoa_conn_free(arg);
}

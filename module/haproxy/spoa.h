/*
 * spoa.h - private interface between the files of keygate-spoa, the
 * HAProxy SPOE agent (docs/haproxy.md, docs/man/keygate-spoa.8):
 *
 *   spop.c        the SPOP wire format (spop.h), no I/O
 *   spoa_main.c   options, the listener, signals, the graceful stop
 *   spoa_conn.c   one haproxy connection: frames in, frames out, the
 *                 CONNECTING -> PROCESSING -> DISCONNECTING states
 *   spoa_req.c    one NOTIFY: its "keygate" message's arguments turned
 *                 into a kg_request, the answer into set-var actions
 *   spoa_loop.c   libkeygate's sockets and timer in the libevent loop
 *                 (the twin of module/nginx/ngx_http_keygate_loop.c)
 *
 *   haproxy ──SPOP/TCP or Unix──► spoa_conn ──► spoa_req ──kg_authorize_start──►
 *   libkeygate ──(its fds, via spoa_loop)──► Redis
 *
 * The agent is one thread running one libevent loop with one kg_ctx. Every
 * callback runs from that loop. A request's done() callback runs only from
 * inside kg_loop_ready/kg_loop_timeout (spoa_loop.c) or kg_close; it only
 * queues an ACK on its connection and frees the request: a connection is
 * freed only from its own bufferevent callbacks or from spoa_main's stop,
 * never from inside a libkeygate call, and freeing it cancels its pending
 * requests first (so done never sees a freed connection).
 */
#ifndef KEYGATE_SPOA_H
#define KEYGATE_SPOA_H

#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include <event2/event.h>

#include <keygate.h>

#include "spop.h"

#define SPOA_MESSAGE         "keygate"   /* the spoe-message the agent answers */
#define SPOA_MAX_PARAMS      16
#define SPOA_DEFAULT_FRAME   16380       /* haproxy's default: tune.bufsize - 4 */
#define SPOA_MAX_WAITING     256         /* NOTIFYs in flight per connection, then
                                            the agent stops reading it */
#define SPOA_MAX_OUTBUF      (1u << 20)  /* unsent ACK bytes before the same */

struct spoa_conn;
struct spoa_req;
TAILQ_HEAD(spoa_req_list, spoa_req);

/* ---- spoa_main.c ---- */

/* The process-wide state (one per agent). */
typedef struct spoa_agent {
    struct event_base *base;
    kg_ctx *kg;
    uint32_t max_frame_size;            /* ours, offered in AGENT-HELLO */
    unsigned max_conns;
    int verbose;
    int stopping;                       /* SIGTERM seen: drain and exit */
    unsigned nconns;
    TAILQ_HEAD(, spoa_conn) conns;
    struct evconnlistener *listener;
} spoa_agent;

extern spoa_agent spoa;

/* Logs one line to stderr: "keygate-spoa: <level>: <text>". Never give it
 * a token. */
void spoa_log(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define spoa_debug(...) do { if (spoa.verbose) spoa_log("debug", __VA_ARGS__); } while (0)

/* A connection went away (called from spoa_conn_free): lets the listener
 * accept again and, while stopping, ends the loop after the last one. */
void spoa_conn_gone(void);

/* ---- spoa_conn.c ---- */

/* Takes an accepted socket (non-blocking). 0, or -1 (the fd is closed). */
int spoa_conn_new(int fd, const char *peer);

/* Cancels the connection's pending requests and closes it at once. */
void spoa_conn_free(struct spoa_conn *c);

/* While stopping, for every connection: one with nothing pending says AGENT-DISCONNECT
 * and closes; one with requests waits for their ACKs first. */
void spoa_conn_stop_all(void);

/* Queues one encoded frame (buf[0..len), length prefix included). 0 or -1
 * (out of memory: the connection is then closed from the loop). Safe from
 * inside a done() callback. */
int spoa_conn_send(struct spoa_conn *c, const char *buf, size_t len);

/* A request of c finished (its ACK is queued): c may read again, or, while
 * stopping, say goodbye. Safe from inside done(). */
void spoa_conn_req_done(struct spoa_conn *c);

/* The negotiated max-frame-size of c. */
uint32_t spoa_conn_frame_size(const struct spoa_conn *c);

/* ---- spoa_req.c ---- */

/*
 * Handles one NOTIFY frame of c: decodes its messages and, for the
 * "keygate" one, starts an authorization; the ACK is queued now (answer
 * known at once, or no keygate message) or from done() later. Returns 0,
 * or the SPOP status code to disconnect with (a malformed payload:
 * SPOP_ERR_INVALID; out of memory: SPOP_ERR_RES). *started is set to the
 * request waiting for libkeygate, or NULL.
 */
int spoa_req_notify(struct spoa_conn *c, const spop_frame *f, struct spoa_req **started);

/* Cancels a waiting request and frees it: its done() is never called. */
void spoa_req_cancel(struct spoa_req *r);

/* A connection's waiting requests: spoa_req_notify inserts, done() and
 * spoa_req_cancel remove. */
struct spoa_req_list *spoa_conn_reqs(struct spoa_conn *c);

/* ---- spoa_loop.c ---- */

/* Attaches spoa.kg to spoa.base. 0 or -1. */
int spoa_loop_attach(void);

/* After every call into libkeygate: re-arms the one timer. */
void spoa_loop_sync(void);

/* Frees the loop's events (after kg_close). */
void spoa_loop_free(void);

#endif /* KEYGATE_SPOA_H */

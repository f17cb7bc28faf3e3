/*
 * server.h - the admin Unix socket: listening, connections, line framing
 * and in-order responses (docs/protocol.md, "Framing").
 */
#ifndef KG_SERVER_H
#define KG_SERVER_H

#include <event2/event.h>
#include <jansson.h>
#include <sys/types.h>

#include "kgc_config.h"

typedef struct server server;
typedef struct reqslot reqslot;

typedef struct peer_info {
    long uid, pid;                /* from SO_PEERCRED; -1 when unknown */
    char addr[48];                /* console: the client's address; "" on the socket */
} peer_info;

/* Called for each complete line (without its '\n'). The callee must answer
 * every slot exactly once with reqslot_respond, now or later. */
typedef void (*server_line_fn)(void *app, reqslot *rs, const char *line, size_t len,
                               const peer_info *peer);

server *server_new(struct event_base *base, const kgc_config *cfg, server_line_fn fn,
                   void *app, char *err, size_t errlen);
void server_free(server *srv);   /* accepts NULL; closes every connection */

/* Answers a request. Steals response. secret: the response holds a token;
 * its serialized form is wiped from memory once written. Responses reach
 * the client in request order. Safe after the client went away. */
void reqslot_respond(reqslot *rs, json_t *response, int secret);

#endif

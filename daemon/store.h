/*
 * store.h - the daemon's Redis connection: hiredis' async API on libevent.
 *
 * The daemon never blocks on Redis (but for the bounded Sentinel look-up
 * at reconnect, store.c). A command batch is sent pipelined and
 * answered once, with every reply converted to JSON (string, integer, null,
 * array; a Redis error becomes {"$err": "<message>"}). With `sentinel` in
 * the config the primary is looked up at every (re)connect, and the store
 * reconnects on READONLY and on the sentinels' +switch-master (store.c,
 * "Sentinel"). When Redis is away the
 * store says so at once (store_exec returns -1) and reconnects by itself; a
 * Redis that stops answering for store_stall_ms is dropped, which fails the
 * batches in flight.
 */
#ifndef KG_STORE_H
#define KG_STORE_H

#include <event2/event.h>
#include <jansson.h>

#include "kgc_config.h"

typedef struct store store;

/* Called once per batch. ok = 0: Redis was lost, the batch's outcome is
 * unknown for a transaction that reached EXEC, else nothing was done.
 * replies (owned by the callee, NULL when !ok) holds one reply per command;
 * for a transaction, the replies of EXEC. */
typedef void (*store_done_fn)(void *arg, int ok, json_t *replies);

store *store_new(struct event_base *base, const kgc_config *cfg);
void store_free(store *s);                 /* accepts NULL; fails batches in flight */
int store_connected(const store *s);

/* Sends cmds, a JSON array of commands, each an array of strings and
 * integers. transaction: wrap in MULTI/EXEC. Borrows cmds. Returns 0 (done
 * will be called later, never from inside this call) or -1 when Redis is
 * not connected (done is never called). */
int store_exec(store *s, json_t *cmds, int transaction, store_done_fn done, void *arg);

/* As store_exec, for writes that must reach replicas: with
 * min_replicas_ack N > 0 the batch is followed by `WAIT N
 * replica_ack_timeout_ms`, and done gets ok = STORE_UNACKED (with the
 * replies) when fewer than N replicas confirmed in time: the writes were
 * made on the primary, but a failover now could undo them. With N = 0 it
 * is store_exec. The WAIT holds the daemon's one connection: every command
 * behind it waits for it (at most replica_ack_timeout_ms). */
#define STORE_UNACKED 2
int store_exec_acked(store *s, json_t *cmds, int transaction, store_done_fn done, void *arg);

/* fn(arg) runs after every successful (re)connect: a Redis that restarted
 * empty gets the daemon's published state again. */
void store_on_connect(store *s, void (*fn)(void *), void *arg);

/* 1 if j is a Redis error reply converted by the store. */
int store_is_error(const json_t *j);

/* For the done of a one-command SCRIPT LOAD batch: its SHA into sha
 * (n bytes; left as it was when !ok), a refusal logged naming what.
 * Takes replies. */
void store_script_sha(int ok, json_t *replies, char *sha, size_t n, const char *what);

#endif

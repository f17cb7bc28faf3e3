/*
 * lease.h - one keygated runs the store's background work at a time.
 *
 * Any number of keygated may serve one store: their commits check what
 * they read (job.c), so commands need no lease. The background work does:
 * the low-balance alert pass (alert.c) and webhook deliveries (webhook.c)
 * would alert and deliver twice if two daemons ran them. The daemon that
 * holds the store's lease (P "writer", a string naming host, socket and
 * pid, with a TTL) runs them; the others serve commands and keep asking,
 * so one of them takes over within the TTL once the holder is gone. A
 * restart on the same host and socket path takes the lease over at once
 * (the socket proves the predecessor is gone).
 */
#ifndef KG_LEASE_H
#define KG_LEASE_H

#include "app.h"

enum {
    WRITER_UNCHECKED = 0,         /* no lease in use (tests of the handlers) */
    WRITER_PENDING,               /* asked, no answer yet */
    WRITER_HELD,                  /* renewed within the TTL: background work runs here */
    WRITER_UNKNOWN,               /* could not renew in time: it runs nowhere here */
    WRITER_OTHER                  /* another daemon holds it */
};

/* Starts renewing (now if the store is connected, then every few seconds). */
void lease_start(app *a);
void lease_renew(app *a);         /* on (re)connect */
void lease_stop(app *a);          /* stops renewing; a restart here takes it over */
/* May the background work (alerts, webhook deliveries) run here now? */
int lease_held(const app *a);

#endif

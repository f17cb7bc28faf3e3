/*
 * lease.h - one keygated writes to a store at a time.
 *
 * Two daemons on one Redis would lose updates (each reads a document,
 * changes it and writes it back). The daemon that holds the store's writer
 * lease (P "writer", a string naming host, socket and pid, with a TTL) may
 * commit; a second daemon that finds the lease held by someone else stops
 * at once with a clear message. A restart on the same host and socket path
 * takes the lease over (the socket proves the predecessor is gone).
 */
#ifndef KG_LEASE_H
#define KG_LEASE_H

#include "app.h"

enum {
    WRITER_UNCHECKED = 0,         /* no lease in use (tests of the handlers) */
    WRITER_PENDING,               /* asked, no answer yet: mutations wait */
    WRITER_HELD,                  /* renewed within the TTL: commits may go */
    WRITER_UNKNOWN                /* could not renew in time: commits refused */
};

/* Starts renewing (now if the store is connected, then every few seconds).
 * On finding another daemon's lease it logs why and breaks the loop with
 * *exit_rc = 1. */
void lease_start(app *a, int *exit_rc);
void lease_renew(app *a);         /* on (re)connect */
void lease_stop(app *a);          /* stops renewing; a restart here takes it over */
/* May a commit go now? */
int lease_may_write(const app *a);

#endif

/*
 * expiry.h - notices before a paid key expires (expiry.c has the map).
 */
#ifndef KG_EXPIRY_H
#define KG_EXPIRY_H

#include "cmd.h"

#define EXPIRY_RK_DUE "keyexpiring"   /* zset: key ids by when their next notice is due (ms) */

/* Queues in j's commit the key's place in P keyexpiring after doc is
 * written: its first notice, or none (no expiry, revoked, expired). Called
 * where expires_at or the status is set. */
void expiry_track(job *j, const json_t *doc);

/* When the first notice of a key expiring at expires_at is due: 7 days
 * before, or now when that has passed; -1 when already expired. */
long long expiry_next_notice(long long expires_at, long long now);

/* One pass step (the alert timer calls it, webhook.c); expiry_free at stop. */
void expiry_tick(app *a);
void expiry_free(app *a);

#endif

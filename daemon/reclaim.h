/*
 * reclaim.h - keygated's sweep of expired leases (reclaim.c has the map).
 */
#ifndef KG_RECLAIM_H
#define KG_RECLAIM_H

#include "cmd.h"

/* One sweep step, if due (the alert timer calls it, webhook.c); reclaim_free at stop. */
void reclaim_tick(app *a);
void reclaim_free(app *a);

#endif

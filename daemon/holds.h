/*
 * holds.h - keygated's sweep of expired holds (holds.c has the map).
 */
#ifndef KG_HOLDS_H
#define KG_HOLDS_H

#include "cmd.h"

/* One sweep step, if due (the alert timer calls it, webhook.c); holds_free at stop. */
void holds_tick(app *a);
void holds_free(app *a);

#endif

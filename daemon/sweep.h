/*
 * sweep.h - keygated's sweeps of a wallet's expired things (sweep.c):
 * holds of settle services (holds.c) and leases of `debit leased`
 * gateways (reclaim.c). Each is what the first money script on the wallet
 * would do anyway; a sweep does it for wallets no request touches.
 *
 * Every SWEEP_TICK_MS one SCAN step (SWEEP_SCAN_COUNT keys) over
 * `<prefix>{t:*}:<suffix>:*` zsets; the kind's script (libkeygate's own,
 * module/kg_scripts.c) runs on each wallet found, again while it handles a
 * full batch (SWEEP_FULL). The scripts act once whoever runs first, so any
 * number of keygated may sweep at once and gateways may race them.
 * Bound: an expired item is handled within one full SCAN cycle (keys /
 * SWEEP_SCAN_COUNT ticks) of its expiry, or at once by the next request
 * on its wallet.
 */
#ifndef KG_SWEEP_H
#define KG_SWEEP_H

#include "cmd.h"

#define SWEEP_TICK_MS 1000
#define SWEEP_SCAN_COUNT "1000"
#define SWEEP_FULL 16                 /* handled by one script call at most */

typedef struct sweep_kind {
    const char *name;                 /* for logs: "hold capture" */
    const char *done;                 /* for logs: "expired hold(s) captured at ..." */
    const char *suffix;               /* the zset: "holdexp" */
    const char *script;               /* Lua text; returns how many it handled, -1 no wallet */
    /* The script's command for one wallet (EVALSHA sha ...). */
    json_t *(*cmd)(app *a, const char *sha, const char *team, const char *wid);
} sweep_kind;

typedef struct sweep sweep;

sweep *sweep_new(app *a, const sweep_kind *k);
void sweep_tick(sweep *s);            /* one step, if due */
void sweep_free(sweep *s);            /* accepts NULL */

#endif

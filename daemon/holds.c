/*
 * holds.c - keygated's sweep of expired holds (issue 13, docs/module.md
 * "Reserve and settle").
 *
 * A hold that its gateway never settles (the gateway crashed, the client
 * went away before the log phase) is captured at its reserved amount by
 * the first money script that runs on its wallet after it expired. A
 * wallet that no request touches any more would keep such a hold — its
 * funds held, its revenue not taken — forever; this sweep is the other
 * "whoever finds it first": every HOLDS_TICK_MS it walks the keyspace with
 * SCAN (HOLDS_SCAN_COUNT keys a step, only `<prefix>{t:*}:holdexp:*`
 * zsets) and runs libkeygate's capture script (module/kg_scripts.c
 * kg_capture_lua: the same sweep() as the gateways' scripts) on each
 * wallet found, again while it captures a full batch. A hold is captured
 * exactly once whoever runs first, so any number of keygated may sweep at
 * once (the writer lease does not matter here) and gateways may race them.
 *
 * Bound: an unsettled hold is captured within hold_ttl_ms plus one full
 * SCAN cycle (sweep.h), or at once by the next request on its wallet.
 * The walk itself is sweep.c's, shared with reclaim.c.
 */
#include "holds.h"

#include <stdio.h>
#include <time.h>

#include "kgc_keys.h"
#include "sweep.h"

extern const char kg_capture_lua[];   /* module/kg_scripts.c */

static void utc_tags(char *day, size_t dl, char *hour, size_t hl)
{
    time_t t = time(NULL);
    struct tm tm;

    gmtime_r(&t, &tm);
    strftime(day, dl, "%Y%m%d", &tm);
    strftime(hour, hl, "%Y%m%d%H", &tm);
}

/* The capture of one wallet's expired holds, as a command. */
static json_t *capture_cmd(app *a, const char *sha, const char *team, const char *wid)
{
    const char *P = a->cfg.key_prefix;
    char kw[KGC_RKEY_MAX], kl[KGC_RKEY_MAX], kh[KGC_RKEY_MAX], kx[KGC_RKEY_MAX];
    char ud[KGC_RKEY_MAX] = "", uh[KGC_RKEY_MAX] = "", day[16], hour[16];

    kgc_rkey(kw, P, KGC_RK_WALLET, team, wid);
    kgc_rkey(kl, P, KGC_RK_LEDGER, team, wid);
    kgc_rkey(kh, P, KGC_RK_HOLDS, team, wid);
    kgc_rkey(kx, P, KGC_RK_HOLDEXP, team, wid);
    if (a->cfg.usage_counters) {
        utc_tags(day, sizeof day, hour, sizeof hour);
        kgc_rkey(ud, P, KGC_RK_USAGE_DAY, team, day);
        kgc_rkey(uh, P, KGC_RK_USAGE_HOUR, team, hour);
    }
    return json_pack("[s,s,s,s,s,s,s,s,s,s,s]", "EVALSHA", sha, "7", kw, kl, kw, kh, kx,
                     ud, uh, wid);
}

static const sweep_kind HOLDS = {
    "hold capture", "expired hold(s) captured at their reserved amount", "holdexp",
    kg_capture_lua, capture_cmd};

void holds_tick(app *a)
{
    if (a->holds == NULL)
        a->holds = sweep_new(a, &HOLDS);
    sweep_tick(a->holds);
}

void holds_free(app *a)
{
    sweep_free(a->holds);
    a->holds = NULL;
}

/*
 * reclaim.c - keygated's sweep of expired leases (issue 14, docs/module.md
 * "Leased funds").
 *
 * A gateway context in `debit leased` mode holds funds of a wallet in a
 * lease and renews it every lease_ttl_ms / 3 while it lives. A lease whose
 * holder stopped renewing (crashed, stopped, cut off) goes back to the
 * wallet's balance when the first flush of any gateway on that wallet runs
 * after its expiry (kg_scripts.c reclaim()); a wallet no gateway flushes
 * any more would keep it: this sweep is the other "whoever finds it
 * first", the shape of holds.c: every RECLAIM_TICK_MS one SCAN step over
 * `<prefix>{t:*}:leaseexp:*` zsets, libkeygate's reclaim script (module/
 * kg_scripts.c kg_reclaim_lua) on each wallet found, again while it
 * reclaims a full batch. A lease is reclaimed exactly once whoever runs
 * first. Entries its holder decided and flushes later are still charged
 * (from the balance, "lease_late_micros" in the ledger).
 *
 * Bound: a lease not renewed is reclaimed within lease_ttl_ms plus one full
 * SCAN cycle (sweep.h), or at once by the next flush on its wallet. The
 * walk itself is sweep.c's, shared with holds.c.
 */
#include "reclaim.h"

#include "kgc_keys.h"
#include "sweep.h"

extern const char kg_reclaim_lua[];   /* module/kg_scripts.c */

/* The reclaim of one wallet's expired leases, as a command. */
static json_t *reclaim_cmd(app *a, const char *sha, const char *team, const char *wid)
{
    const char *P = a->cfg.key_prefix;
    char kw[KGC_RKEY_MAX], kl[KGC_RKEY_MAX], kx[KGC_RKEY_MAX];

    kgc_rkey(kw, P, KGC_RK_WALLET, team, wid);
    kgc_rkey(kl, P, KGC_RK_LEASE, team, wid);
    kgc_rkey(kx, P, KGC_RK_LEASEEXP, team, wid);
    return json_pack("[s,s,s,s,s,s,s,s,s]", "EVALSHA", sha, "6", kw, kw, kl, kw, kw, kx);
}

static const sweep_kind LEASES = {
    "lease reclaim", "expired lease(s) reclaimed into its balance", "leaseexp",
    kg_reclaim_lua, reclaim_cmd};

void reclaim_tick(app *a)
{
    if (a->reclaim == NULL)
        a->reclaim = sweep_new(a, &LEASES);
    sweep_tick(a->reclaim);
}

void reclaim_free(app *a)
{
    sweep_free(a->reclaim);
    a->reclaim = NULL;
}

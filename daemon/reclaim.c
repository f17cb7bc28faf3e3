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
 * SCAN cycle (keys / RECLAIM_SCAN_COUNT ticks), or at once by the next
 * flush on its wallet.
 */
#include "reclaim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kgc_keys.h"
#include "log.h"

extern const char kg_reclaim_lua[];   /* module/kg_scripts.c */

#define RECLAIM_SCAN_COUNT "1000"
#define RECLAIM_FULL 16               /* reclaimed by one call at most (reclaim()) */

struct reclaim {
    char sha[48];                     /* kg_reclaim_lua loaded, "" until then */
    char cursor[32];                  /* SCAN cursor, "0" between cycles */
    int busy;
    long long last_ms;                /* when the last step started (monotonic) */
    json_t *keys;                     /* [[team, wallet], ...] of the step */
    long long reclaimed;              /* this run's reclaims, for the log */
};

static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct reclaim *state(app *a)
{
    if (a->reclaim == NULL) {
        a->reclaim = xcalloc(1, sizeof *a->reclaim);
        snprintf(a->reclaim->cursor, sizeof a->reclaim->cursor, "0");
    }
    return a->reclaim;
}

/* The reclaim of one wallet's expired leases, as a command. */
static json_t *reclaim_cmd(app *a, const char *team, const char *wid)
{
    const char *P = a->cfg.key_prefix;
    char kw[KGC_RKEY_MAX], kl[KGC_RKEY_MAX], kx[KGC_RKEY_MAX];

    kgc_rkey(kw, P, KGC_RK_WALLET, team, wid);
    kgc_rkey(kl, P, KGC_RK_LEASE, team, wid);
    kgc_rkey(kx, P, KGC_RK_LEASEEXP, team, wid);
    return json_pack("[s,s,s,s,s,s,s,s,s]", "EVALSHA", a->reclaim->sha, "6", kw, kw, kl, kw, kw, kx);
}

static void step_done(app *a)
{
    struct reclaim *h = a->reclaim;

    json_decref(h->keys);
    h->keys = NULL;
    h->busy = 0;
}

static void run_reclaims(app *a);

static void on_reclaimed(void *arg, int ok, json_t *replies)
{
    app *a = arg;
    struct reclaim *h = a->reclaim;
    json_t *r, *again;
    size_t i;

    if (!ok) {
        step_done(a);
        return;
    }
    again = json_array();
    json_array_foreach(replies, i, r) {
        json_t *k = json_array_get(h->keys, i);
        if (store_is_error(r)) {
            const char *m = json_string_value(json_object_get(r, "$err"));
            if (m != NULL && strncmp(m, "NOSCRIPT", 8) == 0)
                h->sha[0] = '\0';
            else
                log_err("lease reclaim on wallet %s refused: %.200s",
                        json_string_value(json_array_get(k, 1)) ?: "?", m ? m : "?");
            continue;
        }
        if (json_integer_value(r) > 0) {
            h->reclaimed += json_integer_value(r);
            log_info("wallet %s: %lld expired lease(s) reclaimed into its balance",
                     json_string_value(json_array_get(k, 1)) ?: "?",
                     (long long)json_integer_value(r));
        }
        if (json_integer_value(r) >= RECLAIM_FULL)
            json_array_append(again, k);
    }
    json_decref(replies);
    json_decref(h->keys);
    h->keys = again;
    if (json_array_size(again) > 0 && h->sha[0] != '\0') {
        run_reclaims(a);
        return;
    }
    step_done(a);
}

static void run_reclaims(app *a)
{
    struct reclaim *h = a->reclaim;
    json_t *cmds = json_array(), *k;
    size_t i;

    json_array_foreach(h->keys, i, k)
        json_array_append_new(cmds, reclaim_cmd(a, json_string_value(json_array_get(k, 0)),
                                               json_string_value(json_array_get(k, 1))));
    if (store_exec(a->st, cmds, 0, on_reclaimed, a) != 0)
        step_done(a);
    json_decref(cmds);
}

/* "<P>{t:<team>}:leaseexp:<wallet>" -> team, wallet; 0, or -1 if another shape. */
static int parse_key(const char *P, const char *key, char *team, char *wid)
{
    size_t pl = strlen(P);
    const char *t, *e, *w;

    if (strncmp(key, P, pl) != 0 || strncmp(key + pl, "{t:", 3) != 0)
        return -1;
    t = key + pl + 3;
    if ((e = strchr(t, '}')) == NULL || (size_t)(e - t) >= KGC_ID_MAX ||
        strncmp(e, "}:leaseexp:", 11) != 0)
        return -1;
    w = e + 11;
    if (strlen(w) == 0 || strlen(w) >= KGC_ID_MAX)
        return -1;
    memcpy(team, t, (size_t)(e - t));
    team[e - t] = '\0';
    strcpy(wid, w);
    return 0;
}

static void on_scan(void *arg, int ok, json_t *replies)
{
    app *a = arg;
    struct reclaim *h = a->reclaim;
    json_t *r = json_array_get(replies, 0), *k;
    size_t i;

    if (!ok) {
        h->busy = 0;
        return;
    }
    if (!json_is_array(r) || !json_is_string(json_array_get(r, 0))) {
        log_err("lease sweep: scan refused by redis: %.200s",
                json_string_value(json_object_get(r, "$err")) ?: "?");
        snprintf(h->cursor, sizeof h->cursor, "0");
        json_decref(replies);
        h->busy = 0;
        return;
    }
    snprintf(h->cursor, sizeof h->cursor, "%s", json_string_value(json_array_get(r, 0)));
    h->keys = json_array();
    json_array_foreach(json_array_get(r, 1), i, k) {
        char team[KGC_ID_MAX], wid[KGC_ID_MAX];
        if (json_is_string(k) && parse_key(a->cfg.key_prefix, json_string_value(k), team, wid) == 0)
            json_array_append_new(h->keys, json_pack("[s,s]", team, wid));
    }
    json_decref(replies);
    if (json_array_size(h->keys) == 0) {
        step_done(a);
        return;
    }
    run_reclaims(a);
}

static void on_load(void *arg, int ok, json_t *replies)
{
    app *a = arg;
    struct reclaim *h = a->reclaim;
    json_t *r = json_array_get(replies, 0);

    h->busy = 0;
    if (!ok)
        return;
    if (json_is_string(r))
        snprintf(h->sha, sizeof h->sha, "%s", json_string_value(r));
    else
        log_err("lease reclaim script refused by redis: %.200s",
                json_string_value(json_object_get(r, "$err")) ?: "?");
    json_decref(replies);
}

void reclaim_tick(app *a)
{
    struct reclaim *h = state(a);
    char match[KGC_RKEY_MAX + 16];
    json_t *cmds;
    long long now = mono_ms();

    if (h->busy || a->st == NULL || !store_connected(a->st))
        return;
    if (h->sha[0] == '\0') {
        cmds = json_pack("[[s,s,s]]", "SCRIPT", "LOAD", kg_reclaim_lua);
        h->busy = store_exec(a->st, cmds, 0, on_load, a) == 0;
        json_decref(cmds);
        return;
    }
    if (now - h->last_ms < RECLAIM_TICK_MS)
        return;
    h->last_ms = now;
    snprintf(match, sizeof match, "%s{t:*}:leaseexp:*", a->cfg.key_prefix);
    cmds = json_pack("[[s,s,s,s,s,s,s,s]]", "SCAN", h->cursor, "MATCH", match, "COUNT",
                     RECLAIM_SCAN_COUNT, "TYPE", "zset");
    h->busy = store_exec(a->st, cmds, 0, on_scan, a) == 0;
    json_decref(cmds);
}

void reclaim_free(app *a)
{
    if (a->reclaim == NULL)
        return;
    json_decref(a->reclaim->keys);
    free(a->reclaim);
    a->reclaim = NULL;
}

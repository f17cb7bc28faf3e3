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
 * SCAN cycle (keys / HOLDS_SCAN_COUNT ticks), or at once by the next
 * request on its wallet.
 */
#include "holds.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kgc_keys.h"
#include "log.h"

extern const char kg_capture_lua[];   /* module/kg_scripts.c */

#define HOLDS_SCAN_COUNT "1000"
#define HOLDS_FULL 16                 /* captured by one call at most (sweep()) */

struct holds {
    char sha[48];                     /* kg_capture_lua loaded, "" until then */
    char cursor[32];                  /* SCAN cursor, "0" between cycles */
    int busy;
    long long last_ms;                /* when the last step started (monotonic) */
    json_t *keys;                     /* [[team, wallet], ...] of the step */
    long long captured;               /* this run's captures, for the log */
};

static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct holds *state(app *a)
{
    if (a->holds == NULL) {
        a->holds = xcalloc(1, sizeof *a->holds);
        snprintf(a->holds->cursor, sizeof a->holds->cursor, "0");
    }
    return a->holds;
}

static void utc_tags(char *day, size_t dl, char *hour, size_t hl)
{
    time_t t = time(NULL);
    struct tm tm;

    gmtime_r(&t, &tm);
    strftime(day, dl, "%Y%m%d", &tm);
    strftime(hour, hl, "%Y%m%d%H", &tm);
}

/* The capture of one wallet's expired holds, as a command. */
static json_t *capture_cmd(app *a, const char *team, const char *wid)
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
    return json_pack("[s,s,s,s,s,s,s,s,s,s,s]", "EVALSHA", a->holds->sha, "7", kw, kl, kw, kh, kx,
                     ud, uh, wid);
}

static void step_done(app *a)
{
    struct holds *h = a->holds;

    json_decref(h->keys);
    h->keys = NULL;
    h->busy = 0;
}

static void run_captures(app *a);

static void on_captured(void *arg, int ok, json_t *replies)
{
    app *a = arg;
    struct holds *h = a->holds;
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
                log_err("hold capture on wallet %s refused: %.200s",
                        json_string_value(json_array_get(k, 1)) ?: "?", m ? m : "?");
            continue;
        }
        if (json_integer_value(r) > 0) {
            h->captured += json_integer_value(r);
            log_info("wallet %s: %lld expired hold(s) captured at their reserved amount",
                     json_string_value(json_array_get(k, 1)) ?: "?",
                     (long long)json_integer_value(r));
        }
        if (json_integer_value(r) >= HOLDS_FULL)
            json_array_append(again, k);
    }
    json_decref(replies);
    json_decref(h->keys);
    h->keys = again;
    if (json_array_size(again) > 0 && h->sha[0] != '\0') {
        run_captures(a);
        return;
    }
    step_done(a);
}

static void run_captures(app *a)
{
    struct holds *h = a->holds;
    json_t *cmds = json_array(), *k;
    size_t i;

    json_array_foreach(h->keys, i, k)
        json_array_append_new(cmds, capture_cmd(a, json_string_value(json_array_get(k, 0)),
                                               json_string_value(json_array_get(k, 1))));
    if (store_exec(a->st, cmds, 0, on_captured, a) != 0)
        step_done(a);
    json_decref(cmds);
}

/* "<P>{t:<team>}:holdexp:<wallet>" -> team, wallet; 0, or -1 if another shape. */
static int parse_key(const char *P, const char *key, char *team, char *wid)
{
    size_t pl = strlen(P);
    const char *t, *e, *w;

    if (strncmp(key, P, pl) != 0 || strncmp(key + pl, "{t:", 3) != 0)
        return -1;
    t = key + pl + 3;
    if ((e = strchr(t, '}')) == NULL || (size_t)(e - t) >= KGC_ID_MAX ||
        strncmp(e, "}:holdexp:", 10) != 0)
        return -1;
    w = e + 10;
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
    struct holds *h = a->holds;
    json_t *r = json_array_get(replies, 0), *k;
    size_t i;

    if (!ok) {
        h->busy = 0;
        return;
    }
    if (!json_is_array(r) || !json_is_string(json_array_get(r, 0))) {
        log_err("hold sweep: scan refused by redis: %.200s",
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
    run_captures(a);
}

static void on_load(void *arg, int ok, json_t *replies)
{
    app *a = arg;
    struct holds *h = a->holds;
    json_t *r = json_array_get(replies, 0);

    h->busy = 0;
    if (!ok)
        return;
    if (json_is_string(r))
        snprintf(h->sha, sizeof h->sha, "%s", json_string_value(r));
    else
        log_err("hold capture script refused by redis: %.200s",
                json_string_value(json_object_get(r, "$err")) ?: "?");
    json_decref(replies);
}

void holds_tick(app *a)
{
    struct holds *h = state(a);
    char match[KGC_RKEY_MAX + 16];
    json_t *cmds;
    long long now = mono_ms();

    if (h->busy || a->st == NULL || !store_connected(a->st))
        return;
    if (h->sha[0] == '\0') {
        cmds = json_pack("[[s,s,s]]", "SCRIPT", "LOAD", kg_capture_lua);
        h->busy = store_exec(a->st, cmds, 0, on_load, a) == 0;
        json_decref(cmds);
        return;
    }
    if (now - h->last_ms < HOLDS_TICK_MS)
        return;
    h->last_ms = now;
    snprintf(match, sizeof match, "%s{t:*}:holdexp:*", a->cfg.key_prefix);
    cmds = json_pack("[[s,s,s,s,s,s,s,s]]", "SCAN", h->cursor, "MATCH", match, "COUNT",
                     HOLDS_SCAN_COUNT, "TYPE", "zset");
    h->busy = store_exec(a->st, cmds, 0, on_scan, a) == 0;
    json_decref(cmds);
}

void holds_free(app *a)
{
    if (a->holds == NULL)
        return;
    json_decref(a->holds->keys);
    free(a->holds);
    a->holds = NULL;
}

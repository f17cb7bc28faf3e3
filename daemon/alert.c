/*
 * alert.c - low-balance detection (map in webhook.h).
 *
 * A pass walks P alertwallets with SSCAN, ALERT_BATCH ids per round trip,
 * and runs ALERT_LUA on each wallet in its team's slot. The script alone
 * decides a crossing (it reads and flips alert_below in one step), so an
 * alert is raised once per crossing whatever the timing of passes; the
 * fan-out of an event the script returns is one MULTI that also removes
 * the event from the wallet, so it happens exactly once. One pass step is
 * in flight at a time: a pass never overlaps the next.
 */
#include "webhook.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kgc_cluster.h"
#include "kgc_keys.h"
#include "kgc_token.h"
#include "lease.h"
#include "log.h"
#include "once_lua.h"

long long now_ms(void);           /* job.c: realtime ms */

/* KEYS: wallet hash, team document, the team's webhook hash, its members.
 * ARGV: a fresh event id, now (ms).
 * Two events: wallet.low_balance when available (balance − held) falls
 * under the threshold (once per crossing, re-armed when it is back above),
 * and wallet.funds_refused when a gateway refused a request for funds
 * since the last such alert (the money scripts stamp refused_at on a
 * wallet with a threshold), at most one an hour (Redis' clock for both).
 * Returns {0} no wallet or no threshold; {1} nothing to do; {2, event JSON,
 * team document, webhook exists 0/1, wallet name}: an event to fan out,
 * raised now or left by an earlier pass whose fan-out did not happen,
 * members (HGETALL; empty for a team whose document still holds them)}. */
static const char ALERT_LUA[] =
    "local w = redis.call('HMGET', KEYS[1], 'balance_micros', 'held_micros',\n"
    "  'alert_threshold_micros', 'alert_below', 'alert_event', 'wallet_id', 'team_id', 'name',\n"
    "  'refused_at', 'refusal_alerted_at')\n"
    "if not w[1] or not w[3] then return {0} end\n"
    "local function out(e)\n"
    "  return {2, e, redis.call('GET', KEYS[2]) or '', redis.call('EXISTS', KEYS[3]), w[8] or '',\n"
    "          redis.call('HGETALL', KEYS[4])}\n"
    "end\n"
    "if w[5] then return out(w[5]) end\n"
    "local bal = tonumber(w[1])\n"
    "local held = tonumber(w[2] or '0')\n"
    "local th = tonumber(w[3])\n"
    "local avail = bal - held\n"
    "local function event(kind, extra)\n"
    "  return '{\"id\":' .. cjson.encode(ARGV[1]) .. ',\"type\":\"' .. kind .. '\"' ..\n"
    "    ',\"team_id\":' .. cjson.encode(w[7]) .. ',\"wallet_id\":' .. cjson.encode(w[6]) ..\n"
    "    ',\"balance_micros\":' .. string.format('%d', bal) ..\n"
    "    ',\"held_micros\":' .. string.format('%d', held) ..\n"
    "    ',\"available_micros\":' .. string.format('%d', avail) ..\n"
    "    ',\"threshold_micros\":' .. string.format('%d', th) .. extra ..\n"
    "    ',\"at\":' .. ARGV[2] .. '}'\n"
    "end\n"
    "if avail >= th then\n"
    "  if w[4] == '1' then redis.call('HSET', KEYS[1], 'alert_below', '0') end\n"
    "elseif w[4] ~= '1' then\n"
    "  local e = event('wallet.low_balance', '')\n"
    "  redis.call('HSET', KEYS[1], 'alert_below', '1', 'alert_event', e)\n"
    "  return out(e)\n"
    "end\n"
    "local ra, aa = tonumber(w[9] or ''), tonumber(w[10] or '0') or 0\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "if ra and ra > aa and now - aa >= 3600000 then\n"
    "  local e = event('wallet.funds_refused', ',\"refused_at\":' .. string.format('%d', ra))\n"
    "  redis.call('HSET', KEYS[1], 'refusal_alerted_at', string.format('%d', now), 'alert_event', e)\n"
    "  return out(e)\n"
    "end\n"
    "return {1}\n";

struct alerts {
    char sha[48];                 /* ALERT_LUA loaded, "" until then */
    char cursor[32];              /* SSCAN cursor of the pass, "0" between passes */
    int busy;                     /* a step in flight */
    json_t *ids;                  /* wallet ids of the step checked now */
    json_t *last;                 /* cluster: the events' removals, after their fan-out */
};

static void step(app *a);

static struct alerts *state(app *a)
{
    if (a->alerts == NULL) {
        a->alerts = xcalloc(1, sizeof *a->alerts);
        snprintf(a->alerts->cursor, sizeof a->alerts->cursor, "0");
    }
    return a->alerts;
}

static void rkey(app *a, char *out, const char *fmt, const char *x, const char *y)
{
    kgc_rkey(out, a->cfg.key_prefix, fmt, x, y);
}

static void done_step(app *a)
{
    struct alerts *s = a->alerts;

    json_decref(s->ids);
    s->ids = NULL;
    if (strcmp(s->cursor, "0") != 0 && lease_held(a))
        step(a);                  /* the pass goes on at once */
    else
        s->busy = 0;
}

static void on_fanout(void *arg, int ok, json_t *replies)
{
    app *a = arg;

    if (!ok) {
        a->alerts->busy = 0;      /* events stay on their wallets for the next pass */
        return;
    }
    if (!json_is_array(replies))
        log_err("alert fan-out refused by redis; retried at the next pass");
    json_decref(replies);
    webhook_kick(a);
    done_step(a);
}

/* Cluster: the fan-out's writes answered; if every one did, the events
 * leave their wallets (else they stay, and the next pass repeats the
 * fan-out, which adds nothing already made). */
static void on_fanned(void *arg, int ok, json_t *replies)
{
    app *a = arg;
    struct alerts *s = a->alerts;
    json_t *r, *last = s->last;
    size_t i;

    s->last = NULL;
    if (ok)
        json_array_foreach(replies, i, r)
            if (store_is_error(r)) {
                log_err("alert fan-out refused by redis: %.200s; retried at the next pass",
                        json_string_value(json_object_get(r, "$err")) ?: "?");
                ok = 0;
                break;
            }
    json_decref(replies);
    if (!ok || json_array_size(last) == 0 || store_exec(a->st, last, 0, on_fanout, a) != 0) {
        json_decref(last);
        s->busy = 0;
        return;
    }
    json_decref(last);
}

/* On a Redis Cluster the fan-out's writes lie in several slots: each is
 * made once by a guard (once_lua.h) or, for the delivery record, by its
 * own existence (RECORD_LUA), and the event leaves the wallet only once
 * all of them answered (on_fanned). KEYS: the delivery, the team's
 * delivery list. ARGV: its TTL (ms), created_at, id, then field, value... */
static const char RECORD_LUA[] =
    "if redis.call('EXISTS', KEYS[1]) == 0 then\n"
    "  redis.call('HSET', KEYS[1], unpack(ARGV, 4))\n"
    "  redis.call('PEXPIRE', KEYS[1], ARGV[1])\n"
    "  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])\n"
    "  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -1001)\n"
    "end\n"
    "return 1\n";

/* Appends to cmds the fan-out of one event (reply r of ALERT_LUA). On a
 * cluster (last != NULL) the removal of the event goes to last, to be
 * sent once cmds all answered. */
static void fanout(app *a, json_t *cmds, json_t *last, const char *wallet_key, json_t *r)
{
    const char *ev = json_string_value(json_array_get(r, 1));
    const char *teamdoc = json_string_value(json_array_get(r, 2));
    int hook = json_integer_value(json_array_get(r, 3)) == 1;
    json_t *e = ev ? json_loads(ev, 0, NULL) : NULL, *team = NULL, *members, *role;
    const char *id, *tid, *uid, *wid;
    char key[KGC_RKEY_MAX], member[2 * KGC_ID_MAX + 64], at[32];
    char *text;

    if (e == NULL || (id = json_string_value(json_object_get(e, "id"))) == NULL ||
        (tid = json_string_value(json_object_get(e, "team_id"))) == NULL) {
        log_err("wallet %s: unreadable alert event; dropped", wallet_key);
        json_array_append_new(cmds, json_pack("[s,s,s]", "HDEL", wallet_key, "alert_event"));
        json_decref(e);
        return;
    }
    wid = json_string_value(json_object_get(e, "wallet_id"));
    if (wid == NULL)
        wid = "";
    snprintf(at, sizeof at, "%lld", (long long)json_integer_value(json_object_get(e, "at")));
    if (teamdoc != NULL && teamdoc[0] != '\0')
        team = json_loads(teamdoc, 0, NULL);
    members = json_object_get(team, "members");     /* a document of before members.hash */
    if (!json_is_object(members)) {
        json_t *flat = json_array_get(r, 5);
        members = json_object();
        for (size_t i = 0; i + 1 < json_array_size(flat); i += 2)
            if (json_is_string(json_array_get(flat, i)))
                json_object_set(members, json_string_value(json_array_get(flat, i)),
                                json_array_get(flat, i + 1));
        if (team == NULL)
            team = json_object();
        json_object_set_new(team, "members", members);
    }
    const char *wname = json_string_value(json_array_get(r, 4));
    const char *type = json_string_value(json_object_get(e, "type"));
    /* The notification is the event, its id named alert_id, plus the
     * wallet's name. */
    json_t *n = json_deep_copy(e);
    json_object_set(n, "alert_id", json_object_get(e, "id"));
    json_object_del(n, "id");
    json_object_set_new(n, "wallet_name", json_string(wname ? wname : ""));
    if (type == NULL || json_object_get(e, "available_micros") == NULL ||
        json_object_get(e, "at") == NULL) {  /* our script wrote it: a field is missing */
        log_err("wallet %s: alert event %s lacks a field; dropped", wallet_key, id);
        json_array_append_new(cmds, json_pack("[s,s,s]", "HDEL", wallet_key, "alert_event"));
        json_decref(n);
        json_decref(team);
        json_decref(e);
        return;
    }
    text = json_dumps(n, JSON_COMPACT);
    json_object_foreach(members, uid, role) {
        const char *rl = json_string_value(role);
        if (rl == NULL || (strcmp(rl, "owner") != 0 && strcmp(rl, "admin") != 0))
            continue;
        rkey(a, key, KGC_RK_NOTIF, uid, NULL);
        if (last != NULL) {
            char gk[KGC_RKEY_MAX], gid[2 * KGC_ID_MAX + 64];
            snprintf(gid, sizeof gid, "%s:%s", id, uid);
            once_key(a->cfg.key_prefix, gk, key, "alert", gid);
            json_array_append_new(cmds, json_pack("[s,s,s,s,s,s]", "EVAL", PUSH_ONCE_LUA, "2", key,
                                                  gk, text));
            continue;
        }
        json_array_append_new(cmds, json_pack("[s,s,s]", "LPUSH", key, text));
        json_array_append_new(cmds, json_pack("[s,s,s,s]", "LTRIM", key, "0", "999"));
    }
    free(text);
    json_decref(n);
    if (hook && last != NULL) {
        char lk[KGC_RKEY_MAX], gk[KGC_RKEY_MAX];
        rkey(a, key, WH_RK_DELIVERY, tid, id);
        rkey(a, lk, WH_RK_DELIVERIES, tid, NULL);
        json_t *rec = json_pack("[s,s,s,s,s,s,s,s]", "EVAL", RECORD_LUA, "2", key, lk,
                                WEBHOOK_RECORD_TTL_MS, at, id);
        json_t *fields = json_pack("[s,s,s,s,s,s,s,s,s,s,s,s,s,s,s,s,s,s]", "id", id, "team_id",
                                   tid, "type", type, "wallet_id", wid, "body", ev, "status",
                                   "pending", "attempts", "0", "next_at", at, "created_at", at);
        json_array_extend(rec, fields);
        json_decref(fields);
        json_array_append_new(cmds, rec);
        kgc_rkey(key, a->cfg.key_prefix, WH_RK_PENDING);
        snprintf(member, sizeof member, "%s %s", tid, id);
        once_key(a->cfg.key_prefix, gk, key, "whq", member);
        json_array_append_new(cmds, json_pack("[s,s,s,s,s,s,s]", "EVAL", ZADD_ONCE_LUA, "2", key,
                                              gk, at, member));
    } else if (hook) {
        rkey(a, key, WH_RK_DELIVERY, tid, id);
        json_array_append_new(cmds, json_pack("[s,s,s,s,s,s,s,s,s,s,s,s,s,s,s,s,s,s,s,s]", "HSET", key,
                                              "id", id, "team_id", tid, "type", type,
                                              "wallet_id", wid,
                                              "body", ev, "status", "pending", "attempts", "0",
                                              "next_at", at, "created_at", at));
        json_array_append_new(cmds, json_pack("[s,s,s]", "PEXPIRE", key, WEBHOOK_RECORD_TTL_MS));
        rkey(a, key, WH_RK_DELIVERIES, tid, NULL);
        json_array_append_new(cmds, json_pack("[s,s,s,s]", "ZADD", key, at, id));
        json_array_append_new(cmds, json_pack("[s,s,s,s]", "ZREMRANGEBYRANK", key, "0",
                                              "-" "1001"));
        kgc_rkey(key, a->cfg.key_prefix, WH_RK_PENDING);
        snprintf(member, sizeof member, "%s %s", tid, id);
        json_array_append_new(cmds, json_pack("[s,s,s,s]", "ZADD", key, at, member));
    }
    json_array_append_new(last != NULL ? last : cmds,
                          json_pack("[s,s,s]", "HDEL", wallet_key, "alert_event"));
    log_info("wallet %s: %s (available %lld, threshold %lld): alert %s%s", wid, type,
             (long long)json_integer_value(json_object_get(e, "available_micros")),
             (long long)json_integer_value(json_object_get(e, "threshold_micros")), id,
             hook ? ", webhook queued" : "");
    json_decref(team);
    json_decref(e);
}

static void on_checks(void *arg, int ok, json_t *replies)
{
    app *a = arg;
    struct alerts *s = a->alerts;
    json_t *fan, *r;
    size_t i;
    char team[KGC_ID_MAX], key[KGC_RKEY_MAX];

    if (!ok) {
        s->busy = 0;
        return;
    }
    fan = json_array();
    json_decref(s->last);
    s->last = a->cfg.ncluster > 0 ? json_array() : NULL;
    json_array_foreach(replies, i, r) {
        const char *wid = json_string_value(json_array_get(s->ids, i));
        if (store_is_error(r)) {
            const char *m = json_string_value(json_object_get(r, "$err"));
            if (m != NULL && strncmp(m, "NOSCRIPT", 8) == 0)
                s->sha[0] = '\0';     /* Redis restarted: loaded again next pass */
            else
                log_err("alert check of %s refused: %.200s", wid, m ? m : "?");
            continue;
        }
        if (json_integer_value(json_array_get(r, 0)) != 2 || wid == NULL ||
            kgc_id_team_of(wid, 'w', team) != 0)
            continue;
        rkey(a, key, KGC_RK_WALLET, team, wid);
        fanout(a, fan, s->last, key, r);
    }
    json_decref(replies);
    if (json_array_size(fan) > 0 && lease_held(a) &&
        store_exec(a->st, fan, s->last == NULL, s->last ? on_fanned : on_fanout, a) == 0) {
        json_decref(fan);
        return;
    }
    json_decref(fan);
    done_step(a);
}

static void on_scan(void *arg, int ok, json_t *replies)
{
    app *a = arg;
    struct alerts *s = a->alerts;
    json_t *r = json_array_get(replies, 0), *id, *cmds;
    size_t i;
    char team[KGC_ID_MAX], kw[KGC_RKEY_MAX], kt[KGC_RKEY_MAX], kh[KGC_RKEY_MAX], km[KGC_RKEY_MAX];
    char evid[40], now[32];

    if (!ok) {
        s->busy = 0;
        return;
    }
    if (!json_is_array(r) || !json_is_string(json_array_get(r, 0))) {
        log_err("alert scan refused by redis: %.200s",
                json_string_value(json_object_get(r, "$err")) ?: "?");
        json_decref(replies);
        snprintf(s->cursor, sizeof s->cursor, "0");
        s->busy = 0;
        return;
    }
    snprintf(s->cursor, sizeof s->cursor, "%s", json_string_value(json_array_get(r, 0)));
    s->ids = json_array();
    cmds = json_array();
    snprintf(now, sizeof now, "%lld", now_ms());
    json_array_foreach(json_array_get(r, 1), i, id) {
        const char *wid = json_string_value(id);
        if (wid == NULL || kgc_id_team_of(wid, 'w', team) != 0)
            continue;
        rkey(a, kw, KGC_RK_WALLET, team, wid);
        rkey(a, kt, KGC_RK_TEAM, team, NULL);
        rkey(a, kh, WH_RK_HOOK, team, NULL);
        rkey(a, km, KGC_RK_MEMBERS, team, NULL);
        kgc_random_id("alrt_", 20, evid);
        json_array_append_new(cmds, json_pack("[s,s,s,s,s,s,s,s,s]", "EVALSHA", s->sha, "4", kw,
                                              kt, kh, km, evid, now));
        json_array_append(s->ids, id);
    }
    json_decref(replies);
    if (json_array_size(cmds) > 0 && store_exec(a->st, cmds, 0, on_checks, a) == 0) {
        json_decref(cmds);
        return;
    }
    json_decref(cmds);
    done_step(a);
}

static void on_load(void *arg, int ok, json_t *replies)
{
    app *a = arg;
    struct alerts *s = a->alerts;

    s->busy = 0;
    store_script_sha(ok, replies, s->sha, sizeof s->sha, "alert");
    if (ok && s->sha[0] != '\0')
        alert_tick(a);
}

static void step(app *a)
{
    struct alerts *s = a->alerts;
    char key[KGC_RKEY_MAX], count[16];
    json_t *cmds;

    kgc_rkey(key, a->cfg.key_prefix, WH_RK_ALERTWALLETS);
    snprintf(count, sizeof count, "%d", ALERT_BATCH);
    cmds = json_pack("[[s,s,s,s,s]]", "SSCAN", key, s->cursor, "COUNT", count);
    s->busy = store_exec(a->st, cmds, 0, on_scan, a) == 0;
    json_decref(cmds);
}

void alert_tick(app *a)
{
    struct alerts *s = state(a);
    json_t *cmds;

    if (s->busy || a->st == NULL || !store_connected(a->st) || !lease_held(a))
        return;
    if (s->sha[0] == '\0') {
        cmds = json_pack("[[s,s,s]]", "SCRIPT", "LOAD", ALERT_LUA);
        s->busy = store_exec(a->st, cmds, 0, on_load, a) == 0;
        json_decref(cmds);
        return;
    }
    step(a);
}

void alert_free(app *a)
{
    if (a->alerts == NULL)
        return;
    json_decref(a->alerts->ids);
    json_decref(a->alerts->last);
    free(a->alerts);
    a->alerts = NULL;
}

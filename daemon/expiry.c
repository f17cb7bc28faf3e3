/*
 * expiry.c - notices to a paid key's users before the key expires (issue
 * 13): one 7 days before `expires_at` and one 1 day before.
 *
 *   key.create / key.update with expires_at ──► P keyexpiring (zset)
 *       member <key_id>, score = when its next notice is due (ms):
 *       expires_at − 7 d (or now, when that has passed already)
 *
 *   every ALERT_TICK_MS (writer lease held)
 *     ZRANGEBYSCORE P keyexpiring -inf now: due keys, EXPIRY_BATCH at most
 *       └► GET each key document
 *       └► NOTICE_LUA per key: still due at the score read, document
 *          unchanged since it was read? then, in one atomic step, a
 *          notification per user of the key, and the member moved to its
 *          next notice (expires_at − 1 d) or removed (the last notice sent,
 *          the key expired, revoked, or no longer expiring).
 *
 * Exactly once per notice: the script checks the score it was given, so a
 * pass that lost the race to another (a lease handover) sends nothing, and
 * a crash before the script leaves the member due for the next pass. A key
 * whose expiry is set less than 7 days ahead gets the first notice at once
 * (saying how many days are left), and the 1-day one when it is due; one
 * set less than a day ahead gets one notice.
 */
#include "expiry.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kgc_cluster.h"
#include "kgc_keys.h"
#include "lease.h"
#include "log.h"
#include "once_lua.h"

long long now_ms(void);           /* job.c: realtime ms */

#define DAY_MS 86400000LL
#define EXPIRY_BATCH 100          /* due keys handled per pass step */

/* KEYS: P keyexpiring, the key document, then one notification list per
 * user. ARGV: key id, the score read, the document as read ('' = none), the next score ('' = remove), the notification JSON ('' = none).
 * Returns 1 done, 0 not due at that score any more (another pass did it),
 * -1 the document changed since it was read (left due: the next pass
 * decides on the new one). */
static const char NOTICE_LUA[] =
    "local s = redis.call('ZSCORE', KEYS[1], ARGV[1])\n"
    "if not s or tonumber(s) ~= tonumber(ARGV[2]) then return 0 end\n"
    "local d = redis.call('GET', KEYS[2])\n"
    "if (d or '') ~= ARGV[3] then return -1 end\n"
    "if ARGV[5] ~= '' then\n"
    "  for i = 3, #KEYS do\n"
    "    redis.call('LPUSH', KEYS[i], ARGV[5])\n"
    "    redis.call('LTRIM', KEYS[i], 0, 999)\n"
    "  end\n"
    "end\n"
    "if ARGV[4] == '' then\n"
    "  redis.call('ZREM', KEYS[1], ARGV[1])\n"
    "else\n"
    "  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])\n"
    "end\n"
    "return 1\n";

/* On a Redis Cluster the key document, P keyexpiring and each user's
 * notifications lie in different slots: the notice goes in two steps.
 * CLAIM_LUA, on P keyexpiring's slot: still due at the score read? then
 * the member moves on (or goes) and the notice is parked in P {~n}exppending
 * (same slot), in one atomic step. Then, each pass first: every parked
 * notice is pushed to each user with PUSH_ONCE_LUA, once (a guard key per
 * notice and user, in that user's slot: once_lua.h), and only once every
 * push answered is it taken off the parking hash. A crash anywhere leaves
 * it parked, and pushing again adds nothing. Unlike NOTICE_LUA it does not
 * check that the document is still the one read: a notice raced by a
 * change of the key's expiry in the same milliseconds may be sent for the
 * old one (the next notice follows the new document).
 * KEYS: P keyexpiring, the parking hash. ARGV: key id, the score read,
 * the next score ('' = remove), the parked notice ('' = none). */
static const char CLAIM_LUA[] =
    "local s = redis.call('ZSCORE', KEYS[1], ARGV[1])\n"
    "if not s or tonumber(s) ~= tonumber(ARGV[2]) then return 0 end\n"
    "if ARGV[4] ~= '' then redis.call('HSET', KEYS[2], ARGV[1] .. ' ' .. ARGV[2], ARGV[4]) end\n"
    "if ARGV[3] == '' then\n"
    "  redis.call('ZREM', KEYS[1], ARGV[1])\n"
    "else\n"
    "  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])\n"
    "end\n"
    "return 1\n";

struct expiry {
    json_t *parked;               /* cluster: the fields being pushed */
    char sha[48];                 /* NOTICE_LUA loaded, "" until then */
    int busy;                     /* a step in flight */
    json_t *due;                  /* [[key_id, score], ...] of the step */
};

/* P {~n}exppending: in P keyexpiring's slot. */
static void parking_key(app *a, char out[KGC_RKEY_MAX])
{
    char zk[KGC_RKEY_MAX];

    kgc_rkey(zk, a->cfg.key_prefix, EXPIRY_RK_DUE);
    kgc_rkey(out, a->cfg.key_prefix, "{%s}exppending",
             kgc_cluster_tag(kgc_cluster_slot(zk, strlen(zk))));
}

static struct expiry *state(app *a)
{
    if (a->expiry == NULL)
        a->expiry = xcalloc(1, sizeof *a->expiry);
    return a->expiry;
}

long long expiry_next_notice(long long expires_at, long long now)
{
    if (expires_at <= now)
        return -1;
    return expires_at - 7 * DAY_MS > now ? expires_at - 7 * DAY_MS : now;
}

void expiry_track(job *j, const json_t *doc)
{
    const char *kid = json_string_value(json_object_get(doc, "key_id"));
    const char *st = json_string_value(json_object_get(doc, "status"));
    json_t *e = json_object_get(doc, "expires_at");
    char key[KGC_RKEY_MAX], score[32];
    long long next;

    if (kid == NULL)
        return;
    kgc_rkey(key, j->app->cfg.key_prefix, EXPIRY_RK_DUE);
    next = json_is_integer(e) && st != NULL && strcmp(st, "active") == 0
               ? expiry_next_notice(json_integer_value(e), now_ms()) : -1;
    if (next < 0) {
        job_write(j, "ZREM", key, kid, NULL);
        return;
    }
    snprintf(score, sizeof score, "%lld", next);
    job_write(j, "ZADD", key, score, kid, NULL);
}

/* The notice due now for doc, into *note (NULL: none) and *next_out (the
 * following notice's time, -1: none). */
static void decide(const json_t *doc, long long now, json_t **note, long long *next_out)
{
    const char *st = json_string_value(json_object_get(doc, "status"));
    json_t *e = json_object_get(doc, "expires_at");
    long long exp, left;

    *note = NULL;
    *next_out = -1;
    if (!json_is_integer(e) || st == NULL || strcmp(st, "active") != 0)
        return;
    exp = json_integer_value(e);
    if ((left = exp - now) <= 0)
        return;                   /* expired: gateways refuse it; nothing to announce */
    if (left > DAY_MS)
        *next_out = exp - DAY_MS; /* this is the 7-day notice; the 1-day one follows */
    *note = json_pack("{s:I,s:s,s:O,s:O,s:O,s:I,s:I,s:s}", "at", (json_int_t)now,
                      "type", "key.expiring", "key_id", json_object_get(doc, "key_id"),
                      "key_name", json_object_get(doc, "name"),
                      "team_id", json_object_get(doc, "team_id"), "expires_at", (json_int_t)exp,
                      "days_left", (json_int_t)((left + DAY_MS - 1) / DAY_MS),
                      "notice", left > DAY_MS ? "7d" : "1d");
}

/* The step's next round: cmds sent (when may and not empty) with next as
 * its callback, or the step ends here. Takes cmds. */
static void send_or_end(app *a, json_t *cmds, int may, store_done_fn next)
{
    struct expiry *x = a->expiry;

    if (may && json_array_size(cmds) > 0 && store_exec(a->st, cmds, 0, next, a) == 0) {
        json_decref(cmds);
        return;
    }
    json_decref(cmds);
    json_decref(x->due);
    x->due = NULL;
    x->busy = 0;
}

static void on_notices(void *arg, int ok, json_t *replies)
{
    app *a = arg;
    struct expiry *x = a->expiry;
    json_t *r;
    size_t i;

    x->busy = 0;
    if (!ok)
        return;
    json_array_foreach(replies, i, r) {
        const char *kid = json_string_value(json_array_get(json_array_get(x->due, i), 0));
        if (store_is_error(r)) {
            const char *m = json_string_value(json_object_get(r, "$err"));
            if (m != NULL && strncmp(m, "NOSCRIPT", 8) == 0)
                x->sha[0] = '\0';
            else
                log_err("expiry notice of %s refused: %.200s", kid ? kid : "?", m ? m : "?");
        } else if (json_integer_value(r) == 1) {
            log_info("key %s: expiry notice handled", kid ? kid : "?");
        }
    }
    json_decref(replies);
    json_decref(x->due);
    x->due = NULL;
}

static void on_docs(void *arg, int ok, json_t *replies)
{
    app *a = arg;
    struct expiry *x = a->expiry;
    json_t *cmds, *r;
    size_t i;
    long long now = now_ms();

    if (!ok) {
        x->busy = 0;
        return;
    }
    cmds = json_array();
    json_array_foreach(replies, i, r) {
        json_t *d = json_array_get(x->due, i), *doc = NULL, *note = NULL, *users, *u, *c;
        const char *kid = json_string_value(json_array_get(d, 0));
        const char *text = json_string_value(r);
        char team[KGC_ID_MAX], zk[KGC_RKEY_MAX], dk[KGC_RKEY_MAX], nk[KGC_RKEY_MAX];
        char next[32] = "", *body = NULL;
        long long nx = -1;
        size_t k;

        if (store_is_error(r) || kid == NULL || kgc_id_team_of(kid, 'k', team) != 0)
            continue;
        kgc_rkey(zk, a->cfg.key_prefix, EXPIRY_RK_DUE);
        kgc_rkey(dk, a->cfg.key_prefix, KGC_RK_KEY, team, kid);
        if (text != NULL)
            doc = json_loads(text, 0, NULL);
        if (doc != NULL)
            decide(doc, now, &note, &nx);
        if (nx >= 0)
            snprintf(next, sizeof next, "%lld", nx);
        if (a->cfg.ncluster > 0) {
            char pk[KGC_RKEY_MAX];
            char *parked = NULL;
            if (note != NULL) {
                json_t *pn = json_pack("{s:O,s:o}", "users", json_object_get(doc, "users"),
                                       "note", note);
                note = NULL;
                parked = json_dumps(pn, JSON_COMPACT);
                json_decref(pn);
            }
            parking_key(a, pk);
            json_array_append_new(cmds, json_pack("[s,s,s,s,s,s,O,s,s]", "EVAL", CLAIM_LUA, "2",
                                                  zk, pk, kid, json_array_get(d, 1), next,
                                                  parked ? parked : ""));
            free(parked);
            json_decref(doc);
            continue;
        }
        c = json_pack("[s,s,s,s,s]", "EVALSHA", x->sha, "0", zk, dk);
        users = note != NULL ? json_object_get(doc, "users") : NULL;
        json_array_foreach(users, k, u) {
            if (!json_is_string(u))
                continue;
            kgc_rkey(nk, a->cfg.key_prefix, KGC_RK_NOTIF, json_string_value(u));
            json_array_append_new(c, json_string(nk));
        }
        json_array_set_new(c, 2, json_integer((json_int_t)json_array_size(c) - 3));
        body = note != NULL ? json_dumps(note, JSON_COMPACT) : NULL;
        json_t *argv = json_pack("[s,O,s,s,s]", kid, json_array_get(d, 1), text ? text : "",
                                 next, body ? body : "");
        json_array_extend(c, argv);
        json_decref(argv);
        json_array_append_new(cmds, c);
        free(body);
        json_decref(note);
        json_decref(doc);
    }
    json_decref(replies);
    send_or_end(a, cmds, json_array_size(cmds) == json_array_size(x->due) && lease_held(a),
                on_notices);
}

static void on_due(void *arg, int ok, json_t *replies)
{
    app *a = arg;
    struct expiry *x = a->expiry;
    json_t *r = json_array_get(replies, 0), *cmds;
    size_t i;

    if (!ok) {
        x->busy = 0;
        return;
    }
    if (!json_is_array(r) || json_array_size(r) == 0) {
        if (store_is_error(r))
            log_err("expiry scan refused by redis: %.200s",
                    json_string_value(json_object_get(r, "$err")) ?: "?");
        json_decref(replies);
        x->busy = 0;
        return;
    }
    x->due = json_array();
    cmds = json_array();
    for (i = 0; i + 1 < json_array_size(r); i += 2) {
        const char *kid = json_string_value(json_array_get(r, i));
        const char *score = json_string_value(json_array_get(r, i + 1));
        char team[KGC_ID_MAX], dk[KGC_RKEY_MAX];

        if (kid == NULL || score == NULL || kgc_id_team_of(kid, 'k', team) != 0) {
            log_err("keyexpiring holds a member that is not a key id; ignored");
            continue;
        }
        kgc_rkey(dk, a->cfg.key_prefix, KGC_RK_KEY, team, kid);
        json_array_append_new(cmds, json_pack("[s,s]", "GET", dk));
        json_array_append_new(x->due, json_pack("[s,s]", kid, score));
    }
    json_decref(replies);
    send_or_end(a, cmds, 1, on_docs);
}

static void on_load(void *arg, int ok, json_t *replies)
{
    app *a = arg;
    struct expiry *x = a->expiry;

    x->busy = 0;
    store_script_sha(ok, replies, x->sha, sizeof x->sha, "expiry");
}

static void scan_due(app *a);

static void on_unparked(void *arg, int ok, json_t *replies)
{
    app *a = arg;

    (void)ok;
    json_decref(replies);
    json_decref(a->expiry->parked);
    a->expiry->parked = NULL;
    scan_due(a);
}

/* Every push of the parked notices answered: they leave the parking hash
 * (a push refused leaves its notice parked for the next pass). */
static void on_pushed(void *arg, int ok, json_t *replies)
{
    app *a = arg;
    struct expiry *x = a->expiry;
    json_t *cmds, *r, *f;
    char pk[KGC_RKEY_MAX];
    size_t i;

    if (!ok) {
        json_decref(x->parked);
        x->parked = NULL;
        x->busy = 0;
        return;
    }
    json_array_foreach(replies, i, r)
        if (store_is_error(r)) {
            log_err("expiry notice push refused: %.200s",
                    json_string_value(json_object_get(r, "$err")) ?: "?");
            json_decref(replies);
            json_decref(x->parked);
            x->parked = NULL;
            x->busy = 0;
            return;
        }
    json_decref(replies);
    parking_key(a, pk);
    cmds = json_array();
    json_array_foreach(x->parked, i, f) {
        log_info("key %s: expiry notice handled", json_string_value(f));
        json_array_append_new(cmds, json_pack("[s,s,O]", "HDEL", pk, f));
    }
    if (store_exec(a->st, cmds, 0, on_unparked, a) != 0) {
        json_decref(x->parked);
        x->parked = NULL;
        x->busy = 0;
    }
    json_decref(cmds);
}

static void on_parked(void *arg, int ok, json_t *replies)
{
    app *a = arg;
    struct expiry *x = a->expiry;
    json_t *h = json_array_get(replies, 0), *cmds;

    if (!ok || !json_is_array(h)) {
        json_decref(replies);
        x->busy = 0;
        return;
    }
    if (json_array_size(h) == 0) {
        json_decref(replies);
        scan_due(a);
        return;
    }
    cmds = json_array();
    x->parked = json_array();
    for (size_t i = 0; i + 1 < json_array_size(h); i += 2) {
        json_t *f = json_array_get(h, i), *pn, *u;
        const char *text = json_string_value(json_array_get(h, i + 1));
        char *body;
        size_t k;

        json_array_append(x->parked, f);
        if (text == NULL || (pn = json_loads(text, 0, NULL)) == NULL) {
            log_err("a parked expiry notice is not JSON; dropped");
            continue;
        }
        body = json_dumps(json_object_get(pn, "note"), JSON_COMPACT);
        json_array_foreach(json_object_get(pn, "users"), k, u) {
            char nk[KGC_RKEY_MAX], gk[KGC_RKEY_MAX];
            if (!json_is_string(u) || body == NULL)
                continue;
            kgc_rkey(nk, a->cfg.key_prefix, KGC_RK_NOTIF, json_string_value(u));
            char id[KGC_RKEY_MAX];
            /* One guard per notice and user. */
            snprintf(id, sizeof id, "%s:%s", json_string_value(f), json_string_value(u));
            once_key(a->cfg.key_prefix, gk, nk, "notice", id);
            json_array_append_new(cmds, json_pack("[s,s,s,s,s,s]", "EVAL", PUSH_ONCE_LUA, "2", nk,
                                                  gk, body));
        }
        free(body);
        json_decref(pn);
    }
    json_decref(replies);
    if (json_array_size(cmds) == 0) {
        /* Nothing to push (notices without users): just unpark them. */
        json_decref(cmds);
        on_pushed(a, 1, json_array());
        return;
    }
    if (store_exec(a->st, cmds, 0, on_pushed, a) != 0) {
        json_decref(x->parked);
        x->parked = NULL;
        x->busy = 0;
    }
    json_decref(cmds);
}

void expiry_tick(app *a)
{
    struct expiry *x = state(a);
    json_t *cmds;

    if (x->busy || a->st == NULL || !store_connected(a->st) || !lease_held(a))
        return;
    if (a->cfg.ncluster > 0) {
        /* Notices parked by an earlier pass go out first. */
        char pk[KGC_RKEY_MAX];
        parking_key(a, pk);
        cmds = json_pack("[[s,s]]", "HGETALL", pk);
        x->busy = store_exec(a->st, cmds, 0, on_parked, a) == 0;
        json_decref(cmds);
        return;
    }
    if (x->sha[0] == '\0') {
        cmds = json_pack("[[s,s,s]]", "SCRIPT", "LOAD", NOTICE_LUA);
        x->busy = store_exec(a->st, cmds, 0, on_load, a) == 0;
        json_decref(cmds);
        return;
    }
    x->busy = 1;
    scan_due(a);
}

/* The keys due now (x->busy set; cleared when the step ends). */
static void scan_due(app *a)
{
    struct expiry *x = a->expiry;
    char key[KGC_RKEY_MAX], now[32], batch[16];
    json_t *cmds;

    kgc_rkey(key, a->cfg.key_prefix, EXPIRY_RK_DUE);
    snprintf(now, sizeof now, "%lld", now_ms());
    snprintf(batch, sizeof batch, "%d", EXPIRY_BATCH);
    cmds = json_pack("[[s,s,s,s,s,s,s,s]]", "ZRANGEBYSCORE", key, "-inf", now, "WITHSCORES",
                     "LIMIT", "0", batch);
    x->busy = store_exec(a->st, cmds, 0, on_due, a) == 0;
    json_decref(cmds);
}

void expiry_free(app *a)
{
    if (a->expiry == NULL)
        return;
    json_decref(a->expiry->due);
    json_decref(a->expiry->parked);
    free(a->expiry);
    a->expiry = NULL;
}

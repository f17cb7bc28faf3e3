/*
 * cmd_key.c - key.create, key.list, key.get, key.update, key.users.set,
 * key.services.set, key.revoke.
 */
#include "cmd.h"
#include "expiry.h"
#include "log.h"
#include "model.h"
#include "paging.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>


/* For key-scoped commands: stage 0 reads the key document (reply 0); at
 * stage 1 it is parsed and checked visible to the actor. Returns the doc
 * (new ref) or NULL after job_fail. */
static json_t *load_key(job *j)
{
    json_t *doc = job_reply_json(j, 0);

    if (doc == NULL) {
        job_fail(j, "not_found", "no such key");
        return NULL;
    }
    if (!role_is_admin(j->role) && !key_has_user(doc, j->actor_id)) {
        json_decref(doc);
        job_fail(j, "not_found", "no such key");
        return NULL;
    }
    return doc;
}

static void read_key(job *j)
{
    job_read(j, "GET", rk(j, KGC_RK_KEY, j->team_id, arg_str(j, "key")), NULL);
}

static void write_key(job *j, json_t *doc)
{
    json_object_set_new(doc, "updated_at", json_integer(now_ms()));
    job_write_json(j, rk(j, KGC_RK_KEY, j->team_id,
                         json_string_value(json_object_get(doc, "key_id"))), doc);
}

static int text_args(job *j, json_t *doc)
{
    const char *name = arg_str(j, "name"), *desc = arg_str(j, "description");

    if (name != NULL) {
        if (!name_ok(name, 200)) {
            job_fail(j, "bad_request", "'name' must be 1-200 printable characters");
            return -1;
        }
        json_object_set_new(doc, "name", json_string(name));
    }
    if (desc != NULL) {
        if (strlen(desc) > 2000) {
            job_fail(j, "bad_request", "'description' is longer than 2000 bytes");
            return -1;
        }
        json_object_set_new(doc, "description", json_string(desc));
    }
    return 0;
}

/* Limits of the key document (issue 13; docs/protocol.md "Expiry, budgets,
 * rate limits"). Money and times stay below 2^53: the gateway's Lua
 * scripts count in doubles. */
#define EXPIRES_MAX   253402300799999LL    /* 9999-12-31T23:59:59.999Z */
#define BUDGET_MAX    9007199254740991LL   /* 2^53 - 1 micros */
#define RATE_SEC_MAX  1000                 /* the window keeps one entry per */
#define RATE_MIN_MAX  10000                /* request admitted: memory bound */

/* 1 when v is a JSON integer in [lo, hi]. */
static int int_in(const json_t *v, long long lo, long long hi)
{
    return json_is_integer(v) && json_integer_value(v) >= lo && json_integer_value(v) <= hi;
}

/* One rate_limits object: {service: {"per_second": N, "per_minute": M}}.
 * Returns the normalised copy (limits of 0 and services with none left
 * out), or NULL after job_fail. */
static json_t *rates_check(job *j, json_t *in)
{
    json_t *out, *lim, *v;
    const char *sid, *field;

    if (!json_is_object(in)) {
        job_fail(j, "bad_request", "'rate_limits' must be an object of services");
        return NULL;
    }
    out = json_object();
    json_object_foreach(in, sid, lim) {
        json_t *one = json_object();
        if (kgc_catalog_service(j->app->cat, sid) == NULL) {
            job_fail(j, "bad_request", "rate_limits: unknown service '%.64s'", sid);
            goto bad;
        }
        if (!json_is_object(lim)) {
            job_fail(j, "bad_request", "rate_limits.%.64s must be an object", sid);
            goto bad;
        }
        json_object_foreach(lim, field, v) {
            long long max = strcmp(field, "per_second") == 0 ? RATE_SEC_MAX :
                            strcmp(field, "per_minute") == 0 ? RATE_MIN_MAX : -1;
            if (max < 0) {
                job_fail(j, "bad_request", "rate_limits.%.64s: unknown field '%.32s'", sid, field);
                goto bad;
            }
            if (!int_in(v, 0, max)) {
                job_fail(j, "bad_request", "rate_limits.%.64s.%s must be an integer 0-%lld",
                         sid, field, max);
                goto bad;
            }
            if (json_integer_value(v) > 0)
                json_object_set(one, field, v);
        }
        if (json_object_size(one) > 0)
            json_object_set(out, sid, one);
        json_decref(one);
        continue;
bad:
        json_decref(one);
        json_decref(out);
        return NULL;
    }
    return out;
}

/* expires_at, budget_day_micros, budget_month_micros, rate_limits: each
 * optional; null (or 0 for a budget) removes it. Sets *changed when one
 * was given, so that key.update tells the gateways. 0, or -1 after
 * job_fail (doc then half-edited: the caller drops it). */
static int limit_args(job *j, json_t *doc, int *changed)
{
    static const char *const budgets[] = {"budget_day_micros", "budget_month_micros"};
    json_t *v = arg(j, "expires_at"), *r;

    *changed = 0;
    if (v != NULL) {
        const char *kind = json_string_value(json_object_get(doc, "kind"));
        *changed = 1;
        if (kind != NULL && strcmp(kind, "free") == 0) {
            job_fail(j, "free_key_immutable", "the free key cannot expire");
            return -1;
        }
        if (json_is_null(v)) {
            json_object_del(doc, "expires_at");
        } else if (!int_in(v, now_ms() + 1, EXPIRES_MAX)) {
            job_fail(j, "bad_request",
                     "'expires_at' must be an integer in the future (ms since the epoch, UTC)");
            return -1;
        } else {
            json_object_set(doc, "expires_at", v);
        }
    }
    for (size_t i = 0; i < 2; i++) {
        if ((v = arg(j, budgets[i])) == NULL)
            continue;
        *changed = 1;
        if (!json_is_null(v) && !int_in(v, 0, BUDGET_MAX)) {
            job_fail(j, "bad_request", "'%s' must be an integer of micros, 0 or more", budgets[i]);
            return -1;
        }
        if (json_is_null(v) || json_integer_value(v) == 0)
            json_object_del(doc, budgets[i]);
        else
            json_object_set(doc, budgets[i], v);
    }
    if ((v = arg(j, "rate_limits")) != NULL) {
        *changed = 1;
        if (json_is_null(v)) {
            json_object_del(doc, "rate_limits");
        } else {
            if ((r = rates_check(j, v)) == NULL)
                return -1;
            json_object_set_new(doc, "rate_limits", r);
        }
    }
    return 0;
}

job_step cmd_key_create(job *j)
{
    json_t *users = arg(j, "users"), *services = arg(j, "services"), *doc, *u = NULL, *s = NULL;
    char kid[KGC_ID_MAX], score[32];
    long long now = now_ms();

    if (j->stage == 0) {
        if (json_is_object(services))
            services_prefetch(j, services);
        return J_READ;
    }
    if (!name_ok(arg_str(j, "name"), 200))
        return job_fail(j, "bad_request", "'name' must be 1-200 printable characters");
    if (users != NULL && !json_is_null(users) && (u = users_check(j, users)) == NULL)
        return J_FAIL;
    if (services != NULL && !json_is_null(services) && (s = services_check(j, services, 0)) == NULL) {
        json_decref(u);
        return J_FAIL;
    }
    kgc_id_key(j->team_id, kid);
    doc = json_pack("{s:s,s:s,s:s,s:s,s:s,s:o,s:o,s:{},s:I,s:I}", "key_id", kid, "team_id",
                    j->team_id, "description", "", "kind", "paid", "status", "active",
                    "users", u ? u : json_array(), "services", s ? s : json_object(),
                    "tokens", "created_at", (json_int_t)now, "updated_at", (json_int_t)now);
    int changed;
    if (text_args(j, doc) != 0 || limit_args(j, doc, &changed) != 0) {
        json_decref(doc);
        return J_FAIL;
    }
    snprintf(j->target, sizeof j->target, "%s", kid);
    job_write_json(j, rk(j, KGC_RK_KEY, j->team_id, kid), doc);
    snprintf(score, sizeof score, "%lld", now);
    job_write(j, "ZADD", rk(j, KGC_RK_KEYS, j->team_id), score, kid, NULL);
    for (size_t i = 0; i < json_array_size(json_object_get(doc, "users")); i++)
        ukeys_add(j, doc, json_string_value(json_array_get(json_object_get(doc, "users"), i)));
    if (json_object_get(doc, "expires_at") != NULL)
        expiry_track(j, doc);
    j->result = key_public(doc);
    json_decref(doc);
    return J_WRITE;
}

/* key.list pages (docs/protocol.md, "Paging"): keys in the order of the
 * team's keys zset, (created_at, key_id) ascending; keys are never removed
 * from it (a revoked key stays listed), so a cursor naming the last key
 * examined stays valid, and keys created meanwhile come after it. Key
 * documents are read PAGE_BATCH_MAX at most per MGET; for a user-role
 * member, who sees only the keys assigned to them, up to KEY_SCAN_MAX per
 * call, then the page may come back short with a next_cursor. */
#define KEY_SCAN_MAX 5000
/* Without a limit, a page as large as allowed: callers from before paging
 * still get every key of a team of up to 1000 keys in one answer. */
#define KEY_LIST_DEFAULT 1000

typedef struct key_scan {
    long long score;              /* last key examined, when have */
    char id[KGC_ID_MAX];
    int have;
    int phase;                    /* what the replies are: KS_IDS, KS_DOCS, KS_NAMES */
    int more;                     /* keys after the batch being read */
    long long scanned;
} key_scan;

enum { KS_IDS = 1, KS_DOCS, KS_NAMES };

/* A user-role member of an indexed team walks their own key index
 * (model.h ukeys_*): only their keys are read. Otherwise the team's keys,
 * a user-role member's filtered by document. */
static int key_own_index(job *j)
{
    return !role_is_admin(j->role) && ukeys_indexed(j);
}

static long long key_batch(job *j, long long limit)
{
    return role_is_admin(j->role) || key_own_index(j) ? limit : PAGE_BATCH_MAX;
}

static void key_ids_read(job *j, key_scan *sc, long long batch)
{
    char stop[24], sc_s[32], after[34], cnt[24];
    const char *zk = key_own_index(j) ? rk(j, KGC_RK_USERKEYS, j->team_id, j->actor_id)
                                       : rk(j, KGC_RK_KEYS, j->team_id);
    char key[KGC_RKEY_MAX];

    snprintf(key, sizeof key, "%s", zk);
    if (!sc->have) {
        snprintf(stop, sizeof stop, "%lld", batch);          /* batch + 1 ids */
        job_read(j, "ZRANGE", key, "0", stop, "WITHSCORES", NULL);
    } else {
        snprintf(sc_s, sizeof sc_s, "%lld", sc->score);
        snprintf(after, sizeof after, "(%lld", sc->score);
        snprintf(cnt, sizeof cnt, "%lld", batch + 1);
        /* The keys created in the cursor's millisecond (a handful), then
         * the ones after it. */
        job_read(j, "ZRANGEBYSCORE", key, sc_s, sc_s, NULL);
        job_read(j, "ZRANGEBYSCORE", key, after, "+inf", "WITHSCORES", "LIMIT", "0", cnt, NULL);
    }
    sc->phase = KS_IDS;
}

/* The [id, score] pairs of the next batch, in order (new array). */
static json_t *key_ids_next(job *j, key_scan *sc, long long batch)
{
    json_t *out = json_array(), *flat, *m;
    size_t i, r = 0;

    if (sc->have) {
        json_array_foreach(job_reply(j, 0), i, m)
            if (json_is_string(m) && strcmp(json_string_value(m), sc->id) > 0)
                json_array_append_new(out, json_pack("[O,I]", m, (json_int_t)sc->score));
        r = 1;
    }
    flat = job_reply(j, r);
    for (i = 0; i + 1 < json_array_size(flat); i += 2) {
        const char *score = json_string_value(json_array_get(flat, i + 1));
        json_array_append_new(out, json_pack("[O,I]", json_array_get(flat, i),
                                             (json_int_t)(score ? strtoll(score, NULL, 10) : 0)));
    }
    sc->more = (long long)json_array_size(out) > batch;
    while ((long long)json_array_size(out) > batch)
        json_array_remove(out, json_array_size(out) - 1);
    return out;
}

/* key.list with summary: what a list of keys shows, not the documents:
 * no users list, no tokens, no models per service (docs/protocol.md). */
static json_t *key_summary(job *j, const json_t *d)
{
    json_t *out = json_object(), *svcs = json_array(), *sp;
    static const char *const keep[] = {"key_id", "team_id", "name", "kind", "status",
                                       "created_at", "updated_at", "expires_at"};
    const char *sid;

    for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++)
        if (json_object_get(d, keep[i]) != NULL)
            json_object_set(out, keep[i], json_object_get(d, keep[i]));
    json_object_foreach(json_object_get(d, "services"), sid, sp)
        json_array_append_new(svcs, json_pack("{s:s,s:O*}", "service", sid, "policy",
                                              json_object_get(sp, "policy")));
    json_object_set_new(out, "services", svcs);
    json_object_set_new(out, "user_count", json_integer((json_int_t)json_array_size(
                                               json_object_get(d, "users"))));
    json_object_set_new(out, "has_token", json_boolean(
        json_object_get(json_object_get(d, "tokens"), j->actor_id) != NULL));
    return out;
}

static job_step key_list_finish(job *j, key_scan *sc)
{
    json_object_del(j->result, "_ids");
    if (json_is_true(arg(j, "summary")))
        return J_DONE;                  /* no wallet names in a summary */
    sc->phase = KS_NAMES;
    /* The answer waits in j->result while the wallets' names are read. */
    return key_wallet_names_read(j, json_object_get(j->result, "keys")) > 0 ? J_READ : J_DONE;
}

job_step cmd_key_list(job *j)
{
    key_scan *sc = job_scratch(j, sizeof *sc);
    long long limit = read_limit(j, KEY_LIST_DEFAULT), batch;
    const char *cur = arg_str(j, "cursor");
    json_t *jc = arg(j, "cursor"), *ids, *docs, *keys, *pair;
    size_t i;
    char next[PAGE_CURSOR_MAX];

    if (limit < 0)
        return J_FAIL;
    batch = key_batch(j, limit);
    if (j->stage == 0) {
        if (jc != NULL && !json_is_null(jc) &&
            (cur == NULL || page_key_parse(cur, &sc->score, sc->id) != 0))
            return job_fail(j, "bad_request", "'cursor' is not a key.list cursor");
        sc->have = cur != NULL;
        return J_READ;                  /* the engine reads the team: the role decides the batch */
    }
    if (j->stage == 1) {
        j->result = json_pack("{s:[]}", "keys");
        key_ids_read(j, sc, batch);
        return J_READ;
    }
    if (sc->phase == KS_NAMES) {
        key_wallet_names_fill(j, json_object_get(j->result, "keys"));
        return J_DONE;
    }
    if (sc->phase == KS_IDS) {
        ids = key_ids_next(j, sc, batch);
        json_object_set_new(j->result, "_ids", ids);
        if (json_array_size(ids) == 0)
            return key_list_finish(j, sc);
        read_keys_pairs(j, ids);
        sc->phase = KS_DOCS;
        return J_READ;
    }
    /* KS_DOCS: one reply per id, in order (missing documents are null). */
    ids = json_object_get(j->result, "_ids");
    keys = json_object_get(j->result, "keys");
    docs = job_reply(j, 0);
    json_array_foreach(ids, i, pair) {
        json_t *raw = json_array_get(docs, i), *d;

        if ((long long)json_array_size(keys) == limit) {
            /* Full, with this key unexamined: the cursor is the last one examined. */
            page_key_cursor(next, sc->score, sc->id);
            json_object_set_new(j->result, "next_cursor", json_string(next));
            return key_list_finish(j, sc);
        }
        sc->have = 1;
        sc->score = json_integer_value(json_array_get(pair, 1));
        snprintf(sc->id, sizeof sc->id, "%s", json_string_value(json_array_get(pair, 0)));
        sc->scanned++;
        d = json_is_string(raw) ? json_loadb(json_string_value(raw), json_string_length(raw), 0,
                                             NULL) : NULL;
        if (d != NULL && (role_is_admin(j->role) || key_has_user(d, j->actor_id)))
            json_array_append_new(keys, json_is_true(arg(j, "summary")) ? key_summary(j, d)
                                                                         : key_public(d));
        json_decref(d);
    }
    if (!sc->more)
        return key_list_finish(j, sc);
    if ((long long)json_array_size(keys) == limit || sc->scanned >= KEY_SCAN_MAX) {
        page_key_cursor(next, sc->score, sc->id);
        json_object_set_new(j->result, "next_cursor", json_string(next));
        return key_list_finish(j, sc);
    }
    key_ids_read(j, sc, batch);
    return J_READ;
}

/* Stage 1 checks the key and keeps the answer in j->result while the
 * names of its payg wallets are read; stage 2 adds them. */
job_step cmd_key_get(job *j)
{
    json_t *doc, *one;
    size_t n = 0;

    if (j->stage == 0) {
        read_key(j);
        return J_READ;
    }
    if (j->stage == 1) {
        if ((doc = load_key(j)) == NULL)
            return J_FAIL;
        j->result = key_public(doc);
        json_decref(doc);
    }
    one = json_pack("[O]", j->result);
    if (j->stage == 1)
        n = key_wallet_names_read(j, one);
    else
        key_wallet_names_fill(j, one);
    json_decref(one);
    return n > 0 ? J_READ : J_DONE;
}

static int is_free_key(const json_t *doc)
{
    return strcmp(json_string_value(json_object_get(doc, "kind")), "free") == 0;
}

static int is_active(const json_t *doc)
{
    return strcmp(json_string_value(json_object_get(doc, "status")), "active") == 0;
}

/* An edit of one key document: checks and changes doc, queues any extra
 * writes, may add members to `extra` for the answer. 0, or -1 after
 * job_fail. */
typedef int (*key_edit_fn)(job *j, json_t *doc, json_t *extra);

/* Every command that edits one key has this shape: stage 0 reads the key
 * (and whatever prefetch queues), stage 1 checks it is visible and active,
 * applies edit, writes the key back and answers with it. */
static job_step edit_key(job *j, key_edit_fn edit, void (*prefetch)(job *j))
{
    json_t *doc, *extra;

    if (j->stage == 0) {
        read_key(j);
        if (prefetch != NULL)
            prefetch(j);
        return J_READ;
    }
    if ((doc = load_key(j)) == NULL)
        return J_FAIL;
    if (!is_active(doc)) {
        json_decref(doc);
        return job_fail(j, "invalid_state", "the key is revoked");
    }
    extra = json_object();
    if (edit(j, doc, extra) != 0) {
        json_decref(extra);
        json_decref(doc);
        return J_FAIL;
    }
    write_key(j, doc);
    j->result = key_public(doc);
    json_object_update(j->result, extra);
    json_decref(extra);
    json_decref(doc);
    return J_WRITE;
}

static int edit_text(job *j, json_t *doc, json_t *extra)
{
    int changed = 0;

    (void)extra;
    if (text_args(j, doc) != 0 || limit_args(j, doc, &changed) != 0)
        return -1;
    if (arg(j, "expires_at") != NULL)   /* set, moved or removed: notices anew */
        expiry_track(j, doc);
    if (changed)                        /* the gateways decide by these */
        job_publish(j, "key %s", arg_str(j, "key"));
    return 0;
}

job_step cmd_key_update(job *j)
{
    return edit_key(j, edit_text, NULL);
}

/* Replaces the assigned users. An unassigned user's token dies at once;
 * with notify, each user whose assignment changed gets a notification. */
static int edit_users(job *j, json_t *doc, json_t *extra)
{
    json_t *want, *u, *notified;
    size_t i;
    int notify = json_is_true(arg(j, "notify")), dropped = 0;

    if ((want = users_check(j, arg(j, "users"))) == NULL)
        return -1;
    notified = json_array();
    json_array_foreach(json_object_get(doc, "users"), i, u) {
        const char *uid = json_string_value(u);
        size_t k;
        json_t *w;
        int kept = 0;

        json_array_foreach(want, k, w)
            kept |= strcmp(json_string_value(w), uid) == 0;
        if (kept)
            continue;
        dropped |= key_drop_tokens(j, doc, uid);
        ukeys_del(j, doc, uid);
        if (notify) {
            notify_user(j, uid, "key.unassigned", doc);
            json_array_append(notified, u);
        }
    }
    json_array_foreach(want, i, u) {
        if (key_has_user(doc, json_string_value(u)))
            continue;
        ukeys_add(j, doc, json_string_value(u));
        if (notify) {
            notify_user(j, json_string_value(u), "key.assigned", doc);
            json_array_append(notified, u);
        }
    }
    json_object_set_new(doc, "users", want);
    if (dropped)
        job_publish(j, "key %s", arg_str(j, "key"));
    json_object_set_new(extra, "notified", notified);
    return 0;
}

job_step cmd_key_users_set(job *j)
{
    return edit_key(j, edit_users, NULL);
}

static void prefetch_services(job *j)
{
    services_prefetch(j, arg(j, "services"));
}

static int edit_services(job *j, json_t *doc, json_t *extra)
{
    json_t *s;

    (void)extra;
    if (is_free_key(doc)) {
        job_fail(j, "free_key_immutable", "the free key's services cannot be edited");
        return -1;
    }
    if ((s = services_check(j, arg(j, "services"), 1)) == NULL)
        return -1;
    json_object_set_new(doc, "services", s);
    job_publish(j, "key %s", arg_str(j, "key"));
    return 0;
}

job_step cmd_key_services_set(job *j)
{
    return edit_key(j, edit_services, prefetch_services);
}

static int edit_revoke(job *j, json_t *doc, json_t *extra)
{
    (void)extra;
    if (is_free_key(doc)) {
        job_fail(j, "free_key_immutable", "the free key cannot be revoked");
        return -1;
    }
    json_object_set_new(doc, "status", json_string("revoked"));
    if (json_object_get(doc, "expires_at") != NULL)
        expiry_track(j, doc);         /* no notices for a revoked key */
    job_publish(j, "key %s", arg_str(j, "key"));
    return 0;
}

job_step cmd_key_revoke(job *j)
{
    return edit_key(j, edit_revoke, NULL);
}

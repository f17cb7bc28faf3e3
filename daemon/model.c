/*
 * model.c - key rules shared by the key, token and team commands.
 */
#include "model.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

json_t *key_public(const json_t *doc)
{
    json_t *out = json_deep_copy(doc), *toks = json_object(), *t;
    const char *uid;

    json_object_foreach(json_object_get(doc, "tokens"), uid, t)
        json_object_set_new(toks, uid, json_pack("{s:O,s:O,s:O}",
                                                 "token_id", json_object_get(t, "token_id"),
                                                 "hint", json_object_get(t, "hint"),
                                                 "created_at", json_object_get(t, "created_at")));
    json_object_set_new(out, "tokens", toks);
    return out;
}

int key_has_user(const json_t *doc, const char *user_id)
{
    size_t i;
    json_t *u;

    json_array_foreach(json_object_get(doc, "users"), i, u)
        if (strcmp(json_string_value(u), user_id) == 0)
            return 1;
    return 0;
}

int name_ok(const char *s, size_t max)
{
    size_t n = s ? strlen(s) : 0, chars = 0;

    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            return 0;
        chars += (c & 0xC0) != 0x80;      /* characters, not bytes (jansson checked UTF-8) */
    }
    return chars <= max;
}

/* The ids whose roles the engine reads: actor, `user`, each of `users`
 * (plausible ids only; at most PAGE_BATCH_MAX in all). */
static json_t *member_ids(job *j)
{
    json_t *ids = json_array(), *users = arg(j, "users"), *u;
    const char *user = arg_str(j, "user");
    size_t i;

    if (j->actor_id != NULL)
        json_array_append_new(ids, json_string(j->actor_id));
    if (user != NULL && kgc_id_plausible(user))
        json_array_append_new(ids, json_string(user));
    json_array_foreach(users, i, u)
        if (json_is_string(u) && kgc_id_plausible(json_string_value(u)) &&
            json_array_size(ids) < MEMBERS_PREFETCH_MAX)
            json_array_append(ids, u);
    return ids;
}

void members_prefetch(job *j)
{
    json_t *cmd = json_pack("[s,s]", "HMGET", rk(j, KGC_RK_MEMBERS, j->team_id));
    json_t *ids = member_ids(j);

    json_array_extend(cmd, ids);
    json_decref(ids);
    if (json_array_size(cmd) == 2)             /* HMGET wants a field: ask for none */
        json_array_append_new(cmd, json_string(""));
    job_read_cmd(j, cmd);
}

void members_loaded(job *j, json_t *reply)
{
    json_t *legacy, *ids, *m, *id;
    size_t i;

    if (j->team == NULL)
        return;
    legacy = json_object_get(j->team, "members");
    if (json_is_object(legacy)) {
        j->legacy_members = 1;                 /* all of them, in the document */
        return;
    }
    m = json_object();
    ids = member_ids(j);
    json_array_foreach(ids, i, id) {
        json_t *r = json_array_get(reply, i);
        if (json_is_string(r))
            json_object_set(m, json_string_value(id), r);
    }
    json_decref(ids);
    json_object_set_new(j->team, "members", m);
}

void members_read_all(job *j)
{
    if (!j->legacy_members)
        job_read(j, "HGETALL", rk(j, KGC_RK_MEMBERS, j->team_id), NULL);
}

void members_all_loaded(job *j, json_t *reply)
{
    json_t *m;

    if (j->legacy_members)
        return;
    m = json_object();
    for (size_t i = 0; i + 1 < json_array_size(reply); i += 2) {
        const char *uid = json_string_value(json_array_get(reply, i));
        json_t *role = json_array_get(reply, i + 1);
        if (uid != NULL && json_is_string(role))
            json_object_set(m, uid, role);
    }
    json_object_set_new(j->team, "members", m);
}

void member_set(job *j, const char *uid, const char *role)
{
    json_t *members = json_object_get(j->team, "members");
    const char *key = rk(j, KGC_RK_MEMBERS, j->team_id);
    char mkey[KGC_RKEY_MAX];

    if (role != NULL)
        json_object_set_new(members, uid, json_string(role));
    else
        json_object_del(members, uid);
    if (!j->legacy_members) {
        if (role != NULL)
            job_write(j, "HSET", key, uid, role, NULL);
        else
            job_write(j, "HDEL", key, uid, NULL);
        return;
    }
    /* The first member change of a team written before members had their
     * own hash: all of them move there, in this commit. */
    snprintf(mkey, sizeof mkey, "%s", key);
    json_t *cmd = json_pack("[s,s]", "HSET", mkey), *doc = json_deep_copy(j->team), *r;
    const char *id;
    json_object_foreach(members, id, r) {
        json_array_append_new(cmd, json_string(id));
        json_array_append(cmd, r);
    }
    job_write(j, "DEL", mkey, NULL);
    if (json_array_size(cmd) > 2)
        job_write_cmd(j, cmd);
    else
        json_decref(cmd);
    json_object_del(doc, "members");
    job_write_json(j, rk(j, KGC_RK_TEAM, j->team_id), doc);
    json_decref(doc);
    j->legacy_members = 0;
}

void ukeys_add(job *j, const json_t *keydoc, const char *user_id)
{
    char score[32], key[KGC_RKEY_MAX];
    const char *kid = json_string_value(json_object_get(keydoc, "key_id"));
    const char *tid = json_string_value(json_object_get(keydoc, "team_id"));

    if (kid == NULL || tid == NULL)
        return;
    snprintf(key, sizeof key, "%s", rk(j, KGC_RK_USERKEYS, tid, user_id));
    snprintf(score, sizeof score, "%lld",
             (long long)json_integer_value(json_object_get(keydoc, "created_at")));
    job_write(j, "ZADD", key, score, kid, NULL);
}

void ukeys_del(job *j, const json_t *keydoc, const char *user_id)
{
    const char *kid = json_string_value(json_object_get(keydoc, "key_id"));
    const char *tid = json_string_value(json_object_get(keydoc, "team_id"));

    if (kid != NULL && tid != NULL)
        job_write(j, "ZREM", rk(j, KGC_RK_USERKEYS, tid, user_id), kid, NULL);
}

int ukeys_indexed(const job *j)
{
    return json_is_true(json_object_get(j->team, "ukeys"));
}

json_t *users_check(job *j, json_t *users)
{
    json_t *members = json_object_get(j->team, "members"), *out = json_array(), *u;
    size_t i;

    json_array_foreach(users, i, u) {
        const char *id = json_string_value(u);
        size_t k;
        json_t *seen;
        int dup = 0;

        if (json_object_get(members, id) == NULL) {
            json_decref(out);
            job_fail(j, "bad_request", "user '%.40s' is not a member of the team", id);
            return NULL;
        }
        json_array_foreach(out, k, seen)
            dup |= strcmp(json_string_value(seen), id) == 0;
        if (!dup)
            json_array_append(out, u);
    }
    return out;
}

/* The wallet of a payg entry whose existence services_check reads, or
 * NULL: one rule for both sides, so each prefetched reply is consumed by
 * the entry that queued it (a free entry may carry a "wallet" too). */
static const char *payg_wallet(job *j, json_t *policy)
{
    const char *w = json_string_value(json_object_get(policy, "wallet"));
    const char *kind = json_string_value(json_object_get(policy, "policy"));
    char team[KGC_ID_MAX];

    if (w == NULL || kind == NULL || strcmp(kind, "payg") != 0)
        return NULL;
    if (kgc_id_team_of(w, 'w', team) != 0 || strcmp(team, j->team_id) != 0)
        return NULL;
    return w;
}

size_t key_wallet_names_read(job *j, json_t *keys)
{
    json_t *k, *p;
    const char *sid, *w;
    size_t i, n = 0;

    json_array_foreach(keys, i, k)
        json_object_foreach(json_object_get(k, "services"), sid, p)
            if ((w = payg_wallet(j, p)) != NULL) {
                job_read(j, "HGET", rk(j, KGC_RK_WALLET, j->team_id, w), "name", NULL);
                n++;
            }
    return n;
}

void key_wallet_names_fill(job *j, json_t *keys)
{
    json_t *k, *p, *names, *name;
    const char *sid, *w;
    size_t i, reply = 0;

    json_array_foreach(keys, i, k) {
        names = NULL;
        json_object_foreach(json_object_get(k, "services"), sid, p) {
            if ((w = payg_wallet(j, p)) == NULL)
                continue;
            name = job_reply(j, reply++);
            if (!json_is_string(name))
                continue;                 /* wallet gone: the id alone */
            if (names == NULL)
                names = json_object();
            json_object_set(names, w, name);
        }
        if (names != NULL)
            json_object_set_new(k, "wallet_names", names);
    }
}

size_t services_prefetch(job *j, json_t *services)
{
    const char *sid, *w;
    json_t *p;
    size_t n = 0;

    if (!json_is_object(services))
        return 0;
    json_object_foreach(services, sid, p)
        if ((w = payg_wallet(j, p)) != NULL) {
            job_read(j, "EXISTS", rk(j, KGC_RK_WALLET, j->team_id, w), NULL);
            n++;
        }
    return n;
}

json_t *services_check(job *j, json_t *services, size_t first)
{
    const kgc_catalog *cat = j->app->cat;
    json_t *out = json_object(), *p;
    const char *sid;
    size_t reply = first;

    if (!json_is_object(services)) {
        json_decref(out);
        job_fail(j, "bad_request", "'services' must be an object");
        return NULL;
    }
    json_object_foreach(services, sid, p) {
        const kgc_service *svc = kgc_catalog_service(cat, sid);
        const char *policy = json_string_value(json_object_get(p, "policy"));
        json_t *models, *m, *norm;
        const char *w;
        size_t i;

        if (svc == NULL) {
            job_fail(j, "bad_request", "unknown service '%.64s'", sid);
            goto fail;
        }
        if (!json_is_object(p) || policy == NULL) {
            job_fail(j, "bad_request", "service '%s': 'policy' must be \"free\" or \"payg\"", sid);
            goto fail;
        }
        if (strcmp(policy, "free") == 0) {
            if (!svc->free) {
                job_fail(j, "bad_request", "service '%s' is not free: only policy \"payg\"", sid);
                goto fail;
            }
            json_object_set_new(out, sid, json_pack("{s:s}", "policy", "free"));
            continue;
        }
        if (strcmp(policy, "payg") != 0) {
            job_fail(j, "bad_request", "service '%s': 'policy' must be \"free\" or \"payg\"", sid);
            goto fail;
        }
        models = json_object_get(p, "models");
        if (!json_is_array(models) || json_array_size(models) == 0) {
            job_fail(j, "bad_request", "service '%s': payg needs a non-empty 'models' array", sid);
            goto fail;
        }
        norm = json_array();
        json_array_foreach(models, i, m) {
            const char *mid = json_string_value(m);
            size_t k;
            json_t *seen;
            int dup = 0;

            if (mid == NULL || kgc_service_model(svc, mid) == NULL) {
                json_decref(norm);
                job_fail(j, "bad_request", "service '%s' has no model '%.64s'", sid,
                         mid ? mid : "(not a string)");
                goto fail;
            }
            json_array_foreach(norm, k, seen)
                dup |= strcmp(json_string_value(seen), mid) == 0;
            if (!dup)
                json_array_append(norm, m);
        }
        w = json_string_value(json_object_get(p, "wallet"));
        if (w == NULL) {
            json_decref(norm);
            job_fail(j, "bad_request", "service '%s': payg needs a 'wallet'", sid);
            goto fail;
        }
        if (payg_wallet(j, p) == NULL || json_integer_value(job_reply(j, reply++)) != 1) {
            json_decref(norm);
            job_fail(j, "not_found", "service '%s': no wallet '%.40s' in the key's team", sid, w);
            goto fail;
        }
        json_object_set_new(out, sid, json_pack("{s:s,s:o,s:s}", "policy", "payg",
                                                "models", norm, "wallet", w));
    }
    return out;
fail:
    json_decref(out);
    return NULL;
}

int key_drop_tokens(job *j, json_t *doc, const char *user_id)
{
    json_t *toks = json_object_get(doc, "tokens");
    json_t *t = json_object_get(toks, user_id);
    const char *h;

    if (t == NULL)
        return 0;
    if ((h = json_string_value(json_object_get(t, "hash"))) != NULL)
        job_write(j, "DEL", rk(j, KGC_RK_TOKEN, j->team_id, h), NULL);
    if ((h = json_string_value(json_object_get(t, "old_hash"))) != NULL)
        job_write(j, "DEL", rk(j, KGC_RK_TOKEN, j->team_id, h), NULL);
    json_object_del(toks, user_id);
    return 1;
}

void notify_user(job *j, const char *user_id, const char *type, const json_t *keydoc)
{
    json_t *n = json_pack("{s:I,s:s,s:O,s:O,s:O,s:s}", "at", (json_int_t)now_ms(),
                          "type", type, "key_id", json_object_get(keydoc, "key_id"),
                          "key_name", json_object_get(keydoc, "name"),
                          "team_id", json_object_get(keydoc, "team_id"), "by", j->actor_id);
    char *text = json_dumps(n, JSON_COMPACT);
    const char *key = rk(j, KGC_RK_NOTIF, user_id);

    job_write(j, "LPUSH", key, text, NULL);
    job_write(j, "LTRIM", rk(j, KGC_RK_NOTIF, user_id), "0", "999", NULL);
    free(text);
    json_decref(n);
}

long long read_limit(job *j, long long dflt)
{
    json_t *l = arg(j, "limit");

    if (l == NULL || json_is_null(l))
        return dflt;
    if (json_integer_value(l) < 1 || json_integer_value(l) > 1000) {
        job_fail(j, "bad_request", "'limit' must be 1-1000");
        return -1;
    }
    return json_integer_value(l);
}

json_t *parse_list(json_t *reply)
{
    json_t *out = json_array(), *e;
    size_t i;

    json_array_foreach(reply, i, e) {
        json_t *doc = json_is_string(e)
                          ? json_loadb(json_string_value(e), json_string_length(e), 0, NULL)
                          : NULL;
        if (doc != NULL)
            json_array_append_new(out, doc);
    }
    return out;
}

void read_keys(job *j, json_t *ids)
{
    json_t *cmd = json_pack("[s]", "MGET"), *id;
    size_t i;

    json_array_foreach(ids, i, id)
        json_array_append_new(cmd, json_string(rk(j, KGC_RK_KEY, j->team_id,
                                                  json_string_value(id))));
    job_read_cmd(j, cmd);
}

void read_keys_pairs(job *j, json_t *pairs)
{
    json_t *cmd = json_pack("[s]", "MGET"), *p;
    size_t i;

    json_array_foreach(pairs, i, p)
        json_array_append_new(cmd, json_string(rk(j, KGC_RK_KEY, j->team_id,
                                                  json_string_value(json_array_get(p, 0)))));
    job_read_cmd(j, cmd);
}

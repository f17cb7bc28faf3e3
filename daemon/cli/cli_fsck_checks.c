/*
 * cli_fsck_checks.c - pass 2 of `keygate fsck`: the invariants of
 * docs/redis-schema.md, one object at a time, from the inventory of pass 1
 * (what each check asks is listed at the top of cli_cmd_fsck.c). The
 * reads of one object are watched; a check returns what watch_commit
 * says, and run_check runs it again when the object changed meanwhile.
 */
#include "cli_fsck.h"
#include "arch_engine.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kgc_keys.h"
#include "kgc_price.h"

#define FSCK_CHAIN_REPORTS  5        /* ledger chain breaks reported per wallet */
#define FSCK_REPLAY_MS      (24LL * 3600 * 1000)

/* --- small helpers ------------------------------------------------------------- */

static char *xstrdup(const char *s)
{
    char *d = strdup(s);
    if (d == NULL) {
        fputs("error: internal: out of memory\n", stderr);
        abort();
    }
    return d;
}

/* Strict decimal integer (the whole string). 0 or -1. */
static int parse_ll(const char *s, long long *out)
{
    char *end;
    if (s == NULL || *s == '\0')
        return -1;
    *out = strtoll(s, &end, 10);
    return *end == '\0' ? 0 : -1;
}

static int is_hash_hex(const char *s, size_t len)
{
    if (len != KGC_HASH_HEX_LEN)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return 1;
}

static int str_in_array(const json_t *arr, const char *s)
{
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v)
        if (json_is_string(v) && strcmp(json_string_value(v), s) == 0)
            return 1;
    return 0;
}

/* --- pass 2: teams and their keys ------------------------------------------ */

/* The checks of one key document of team T (watched reads of the token
 * records and wallets it names). */
static void check_keydoc(fsck *f, const char *T, const char *kid, const char *kname, json_t *doc,
                         json_t *members, json_t *team_wallets)
{
    json_t *users = json_object_get(doc, "users"), *services = json_object_get(doc, "services");
    json_t *tokens = json_object_get(doc, "tokens"), *v, *t;
    const char *kind = json_string_value(json_object_get(doc, "kind"));
    const char *status = json_string_value(json_object_get(doc, "status"));
    const char *uid, *sid;
    size_t i;

    if (!json_is_string(json_object_get(doc, "key_id")) ||
        strcmp(json_string_value(json_object_get(doc, "key_id")), kid) != 0)
        PROBLEM(f, kname, "key_id is not %s", kid);
    if (!json_is_string(json_object_get(doc, "team_id")) ||
        strcmp(json_string_value(json_object_get(doc, "team_id")), T) != 0)
        PROBLEM(f, kname, "team_id is not %s", T);
    if (kind == NULL || (strcmp(kind, "free") != 0 && strcmp(kind, "paid") != 0))
        PROBLEM(f, kname, "kind is neither \"free\" nor \"paid\"");
    if (status == NULL || (strcmp(status, "active") != 0 && strcmp(status, "revoked") != 0))
        PROBLEM(f, kname, "status is neither \"active\" nor \"revoked\"");
    if (!json_is_array(users) || !json_is_object(services) || !json_is_object(tokens)) {
        PROBLEM(f, kname, "users, services or tokens missing or ill-typed");
        return;
    }
    json_array_foreach(users, i, v) {
        if (!json_is_string(v))
            PROBLEM(f, kname, "users holds a non-string");
        else if (json_object_get(members, json_string_value(v)) == NULL)
            PROBLEM(f, kname, "user %s is assigned but not a member of team %s",
                    json_string_value(v), T);
    }
    json_object_foreach(services, sid, v) {
        const char *policy = json_string_value(json_object_get(v, "policy"));
        const char *w = json_string_value(json_object_get(v, "wallet"));
        json_t *models = json_object_get(v, "models");
        char wt[KGC_ID_MAX];

        if (policy != NULL && strcmp(policy, "free") == 0)
            continue;
        if (policy == NULL || strcmp(policy, "payg") != 0) {
            PROBLEM(f, kname, "service %s: policy is neither \"free\" nor \"payg\"", sid);
            continue;
        }
        if (!json_is_array(models) || json_array_size(models) == 0)
            PROBLEM(f, kname, "service %s: payg without models", sid);
        if (w == NULL)
            PROBLEM(f, kname, "service %s: payg without a wallet", sid);
        else if (kgc_id_team_of(w, 'w', wt) != 0 || strcmp(wt, T) != 0)
            PROBLEM(f, kname, "service %s: wallet %s is not a wallet of team %s", sid, w, T);
        else if (!json_is_true(json_object_get(team_wallets, w)))
            PROBLEM(f, kname, "service %s: payg wallet %s does not exist", sid, w);
    }

    /* Token entries: each names a live record that points back. */
    {
        size_t n = json_object_size(tokens), k = 0;
        char **keys = calloc(n ? n : 1, sizeof *keys);
        const char **who = calloc(n ? n : 1, sizeof *who);
        redisReply **recs, **ttls;

        if (keys == NULL || who == NULL)
            abort();
        json_object_foreach(tokens, uid, t) {
            const char *h = json_string_value(json_object_get(t, "hash"));
            char name[KGC_RKEY_MAX];

            if (!str_in_array(users, uid))
                PROBLEM(f, kname, "has a token entry for %s, who is not assigned", uid);
            if (h == NULL || !is_hash_hex(h, strlen(h))) {
                PROBLEM(f, kname, "token entry of %s has no valid hash", uid);
                continue;
            }
            keys[k] = xstrdup(fsck_rk(f, name, KGC_RK_TOKEN, T, h));
            who[k++] = uid;
        }
        recs = fsck_wread(f, k, keys, "HGETALL", NULL);
        ttls = recs ? fsck_wread(f, k, keys, "PTTL", NULL) : NULL;
        for (size_t q = 0; recs && ttls && q < k; q++) {
            json_t *entry = json_object_get(tokens, who[q]);
            const char *rk_id = fsck_hfield(recs[q], "key_id"), *ru = fsck_hfield(recs[q], "user_id");
            const char *rt = fsck_hfield(recs[q], "team_id"), *rtid = fsck_hfield(recs[q], "token_id");
            const char *rexp = fsck_hfield(recs[q], "expires_ms");

            if (recs[q]->type != REDIS_REPLY_ARRAY || recs[q]->elements == 0) {
                PROBLEM(f, kname, "token of %s: its record %s is missing", who[q], keys[q]);
                continue;
            }
            if (rk_id == NULL || strcmp(rk_id, kid) != 0 || ru == NULL || strcmp(ru, who[q]) != 0 ||
                rt == NULL || strcmp(rt, T) != 0)
                PROBLEM(f, kname, "token of %s: its record names another key, user or team",
                        who[q]);
            if (rtid == NULL || !json_is_string(json_object_get(entry, "token_id")) ||
                strcmp(rtid, json_string_value(json_object_get(entry, "token_id"))) != 0)
                PROBLEM(f, kname, "token of %s: token_id differs from its record's", who[q]);
            if (rexp == NULL || strcmp(rexp, "0") != 0 ||
                ttls[q]->type != REDIS_REPLY_INTEGER || ttls[q]->integer != -1)
                PROBLEM(f, kname, "token of %s: the current token's record expires", who[q]);
        }
        fsck_free_replies(recs, k);
        fsck_free_replies(ttls, k);
        for (size_t q = 0; q < k; q++)
            free(keys[q]);
        free(keys);
        free(who);
    }
}


/* A team with the per-member key index (model.h ukeys_*): each member's
 * P {t:T}:ukeys:<user> holds exactly the keys whose documents list that
 * user (want: user -> {key_id: true}). */
static void check_user_keys(fsck *f, const char *T, json_t *members, json_t *want)
{
    const char *uid, *kid;
    json_t *v, *k;
    char uk[KGC_RKEY_MAX];

    json_object_foreach(members, uid, v) {
        const char *z[4] = {"ZRANGE", uk, "0", "-1"};
        json_t *mine = json_object_get(want, uid), *seen = json_object();
        redisReply *r;

        fsck_rk(f, uk, KGC_RK_USERKEYS, T, uid);
        r = fsck_rcmd(f, 4, z, NULL);
        if (r == NULL) {
            json_decref(seen);
            return;
        }
        for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
            if (!fsck_is_str(r->element[i]))
                continue;
            json_object_set_new(seen, r->element[i]->str, json_true());
            if (json_object_get(mine, r->element[i]->str) == NULL)
                PROBLEM(f, uk, "lists key %s, whose users do not include %s", r->element[i]->str, uid);
        }
        json_object_foreach(mine, kid, k)
            if (json_object_get(seen, kid) == NULL)
                PROBLEM(f, uk, "misses key %s, whose users include %s", kid, uid);
        freeReplyObject(r);
        json_decref(seen);
    }
}

int fsck_check_team(fsck *f, const char *T, const char *unused)
{
    char kt[KGC_RKEY_MAX], kk[KGC_RKEY_MAX], kw[KGC_RKEY_MAX], km[KGC_RKEY_MAX], name[KGC_RKEY_MAX];
    redisReply *rt, *rkeys, *rwal, *rm, **docs = NULL, **wex = NULL;
    json_t *team, *members, *kids, *wids, *team_wallets, *v, *hashed = NULL, *ukeys;
    const char *fk, *uid, *id;
    char **dkeys = NULL, **wkeys = NULL;
    size_t nk = 0, nw = 0, i;
    int owners = 0, frees = 0, rc;

    (void)unused;
    fsck_rk(f, kt, KGC_RK_TEAM, T);
    fsck_rk(f, kk, KGC_RK_KEYS, T);
    fsck_rk(f, kw, KGC_RK_WALLETS, T);
    fsck_rk(f, km, KGC_RK_MEMBERS, T);
    {
        const char *w[5] = {"WATCH", kt, kk, kw, km}, *g[2] = {"GET", kt};
        const char *z[4] = {"ZRANGE", kk, "0", "-1"}, *zw[4] = {"ZRANGE", kw, "0", "-1"};
        const char *hm[2] = {"HGETALL", km};
        redisReply *wr = fsck_rcmd(f, 5, w, NULL);
        if (wr)
            freeReplyObject(wr);
        rt = fsck_rcmd(f, 2, g, NULL);
        rkeys = fsck_rcmd(f, 4, z, NULL);
        rwal = fsck_rcmd(f, 4, zw, NULL);
        rm = fsck_rcmd(f, 2, hm, NULL);
    }
    if (f->broken) {
        if (rt) freeReplyObject(rt);
        if (rkeys) freeReplyObject(rkeys);
        if (rwal) freeReplyObject(rwal);
        if (rm) freeReplyObject(rm);
        return -1;
    }
    team = fsck_reply_json(rt);
    /* Members: the hash P {t:T}:members, or still the document's own
     * "members" for a team no member change has touched since (both at
     * once is a half-done move). */
    members = json_object_get(team, "members");
    if (rm->type == REDIS_REPLY_ARRAY && rm->elements > 0) {
        if (json_is_object(members))
            PROBLEM(f, kt, "members both in the document and in %s", km);
        hashed = json_object();
        for (i = 0; i + 1 < rm->elements; i += 2)
            if (fsck_is_str(rm->element[i]) && fsck_is_str(rm->element[i + 1]))
                json_object_set_new(hashed, rm->element[i]->str,
                                    json_string(rm->element[i + 1]->str));
        members = hashed;
    }
    freeReplyObject(rm);
    fk = json_string_value(json_object_get(team, "free_key_id"));
    /* user -> {key: true} from the documents, when the team's key index is on */
    ukeys = json_is_true(json_object_get(team, "ukeys")) ? json_object() : NULL;
    if (team == NULL || !json_is_object(members)) {
        PROBLEM(f, kt, "not a team document, or a team without members");
        members = NULL;
    } else {
        if (!json_is_string(json_object_get(team, "team_id")) ||
            strcmp(json_string_value(json_object_get(team, "team_id")), T) != 0)
            PROBLEM(f, kt, "team_id is not %s", T);
        json_object_foreach(members, uid, v) {
            const char *role = json_string_value(v);
            if (role != NULL && strcmp(role, "owner") == 0)
                owners++;
            else if (role == NULL || (strcmp(role, "admin") != 0 && strcmp(role, "user") != 0))
                PROBLEM(f, kt, "member %s has an unknown role", uid);
        }
        if (owners != 1)
            PROBLEM(f, kt, "has %d owners, not exactly one", owners);
        if (fk == NULL)
            PROBLEM(f, kt, "has no free_key_id");
    }

    /* Every key listed, and every key document found by SCAN. */
    kids = json_object();
    if (rkeys->type == REDIS_REPLY_ARRAY)
        for (i = 0; i < rkeys->elements; i++)
            if (fsck_is_str(rkeys->element[i]))
                json_object_set_new(kids, rkeys->element[i]->str, json_true());
    json_object_foreach(json_object_get(f->keydocs, T), id, v)
        if (json_object_get(kids, id) == NULL)
            json_object_set_new(kids, id, json_false());   /* not in the zset */
    if (fk != NULL && json_object_get(kids, fk) == NULL)
        json_object_set_new(kids, fk, json_null());        /* named only by the team */
    nk = json_object_size(kids);
    dkeys = calloc(nk ? nk : 1, sizeof *dkeys);
    if (dkeys == NULL)
        abort();
    i = 0;
    json_object_foreach(kids, id, v)
        dkeys[i++] = xstrdup(fsck_rk(f, name, KGC_RK_KEY, T, id));
    docs = fsck_wread(f, nk, dkeys, "GET", NULL);

    /* Wallets: the zset's and the ones SCAN found. */
    wids = json_object();
    if (rwal->type == REDIS_REPLY_ARRAY)
        for (i = 0; i < rwal->elements; i++)
            if (fsck_is_str(rwal->element[i]))
                json_object_set_new(wids, rwal->element[i]->str, json_true());
    json_object_foreach(json_object_get(f->wallets, T), id, v)
        if (json_object_get(wids, id) == NULL)
            json_object_set_new(wids, id, json_false());
    nw = json_object_size(wids);
    wkeys = calloc(nw ? nw : 1, sizeof *wkeys);
    if (wkeys == NULL)
        abort();
    i = 0;
    json_object_foreach(wids, id, v)
        wkeys[i++] = xstrdup(fsck_rk(f, name, KGC_RK_WALLET, T, id));
    wex = docs ? fsck_wread(f, nw, wkeys, "EXISTS", NULL) : NULL;
    team_wallets = json_object();
    i = 0;
    json_object_foreach(wids, id, v) {
        int exists = wex && wex[i]->type == REDIS_REPLY_INTEGER && wex[i]->integer == 1;
        if (exists && json_is_true(v))
            json_object_set_new(team_wallets, id, json_true());
        else if (exists)
            PROBLEM(f, wkeys[i], "wallet is not listed in %s", kw);
        else if (json_is_true(v))
            PROBLEM(f, kw, "lists wallet %s, whose hash does not exist", id);
        i++;
    }

    i = 0;
    json_object_foreach(kids, id, v) {
        redisReply *d = docs ? docs[i] : NULL;
        const char *kname = dkeys[i++];
        json_t *doc;

        if (d == NULL)
            break;
        if (d->type == REDIS_REPLY_NIL) {
            if (json_is_true(v))
                PROBLEM(f, kk, "lists key %s, whose document does not exist", id);
            if (fk != NULL && strcmp(fk, id) == 0)
                PROBLEM(f, kt, "free_key_id %s names no key", id);
            continue;
        }
        if (json_is_false(v))
            PROBLEM(f, kname, "key is not listed in %s", kk);
        if (json_is_null(v))
            PROBLEM(f, kname, "the team's free key is not listed in %s", kk);
        if ((doc = fsck_reply_json(d)) == NULL || !json_is_object(doc)) {
            PROBLEM(f, kname, "not a key document (JSON object)");
            json_decref(doc);
            continue;
        }
        f->n.apikeys++;
        if (json_is_string(json_object_get(doc, "kind")) &&
            strcmp(json_string_value(json_object_get(doc, "kind")), "free") == 0) {
            frees++;
            if (fk != NULL && strcmp(fk, id) != 0)
                PROBLEM(f, kname, "a free key that is not the team's free_key_id %s", fk);
            if (!json_is_string(json_object_get(doc, "status")) ||
                strcmp(json_string_value(json_object_get(doc, "status")), "active") != 0)
                PROBLEM(f, kname, "the free key is not active");
        } else if (fk != NULL && strcmp(fk, id) == 0) {
            PROBLEM(f, kt, "free_key_id %s names a key whose kind is not free", id);
        }
        check_keydoc(f, T, id, kname, doc, members, team_wallets);
        if (ukeys != NULL) {
            json_t *u;
            size_t k;
            json_array_foreach(json_object_get(doc, "users"), k, u) {
                if (!json_is_string(u))
                    continue;
                if (json_object_get(ukeys, json_string_value(u)) == NULL)
                    json_object_set_new(ukeys, json_string_value(u), json_object());
                json_object_set_new(json_object_get(ukeys, json_string_value(u)), id, json_true());
            }
        }
        json_decref(doc);
    }
    if (ukeys != NULL)
        check_user_keys(f, T, members, ukeys);
    json_decref(ukeys);
    if (team != NULL && frees != 1)
        PROBLEM(f, kt, "has %d keys of kind free, not exactly one", frees);

    fsck_free_replies(docs, nk);
    fsck_free_replies(wex, nw);
    for (i = 0; i < nk; i++)
        free(dkeys[i]);
    for (i = 0; i < nw; i++)
        free(wkeys[i]);
    free(dkeys);
    free(wkeys);
    json_decref(kids);
    json_decref(wids);
    json_decref(team_wallets);
    json_decref(team);
    json_decref(hashed);
    freeReplyObject(rt);
    freeReplyObject(rkeys);
    freeReplyObject(rwal);
    if (f->broken)
        return -1;
    rc = fsck_watch_commit(f);
    if (rc == 1)
        f->n.teams++;
    return rc;
}

/* --- pass 2: token records --------------------------------------------------- */

int fsck_check_token(fsck *f, const char *hash, const char *tag_team)
{
    char tk[KGC_RKEY_MAX], kk[KGC_RKEY_MAX], kt[KGC_ID_MAX];
    redisReply *rec, *ttl, *kd;
    const char *kid, *team, *user, *tid, *exp;
    json_t *doc, *entry;
    long long expires = -1;
    int rc;

    if (tag_team == NULL || tag_team[0] == '\0') {
        /* A record of the layout before tokens named their team: no gateway
         * reads it any more (docs/redis-schema.md "Tokens"). */
        fsck_rk(f, tk, "tok:%s", hash);
        PROBLEM(f, tk, "a token record outside its team's slot (the old token format): "
                       "rotate the token, then delete this record");
        return 1;
    }
    fsck_rk(f, tk, KGC_RK_TOKEN, tag_team, hash);
    if (!is_hash_hex(hash, strlen(hash))) {
        PROBLEM(f, tk, "the name is not {t:<team>}:tok:<64 lowercase hex>");
        return 1;
    }
    rec = fsck_wread1(f, tk, "HGETALL", NULL);
    ttl = rec ? fsck_wread1(f, tk, "PTTL", NULL) : NULL;
    if (ttl == NULL) {
        if (rec)
            freeReplyObject(rec);
        return -1;
    }
    if (rec->type == REDIS_REPLY_ARRAY && rec->elements == 0) {
        freeReplyObject(rec);          /* gone since pass 1: rotated or expired */
        freeReplyObject(ttl);
        return fsck_watch_commit(f);
    }
    kid = fsck_hfield(rec, "key_id");
    team = fsck_hfield(rec, "team_id");
    user = fsck_hfield(rec, "user_id");
    tid = fsck_hfield(rec, "token_id");
    exp = fsck_hfield(rec, "expires_ms");
    if (rec->type != REDIS_REPLY_ARRAY || kid == NULL || team == NULL || user == NULL ||
        tid == NULL || exp == NULL || parse_ll(exp, &expires) != 0) {
        PROBLEM(f, tk, "not a token record (hash of key_id, team_id, user_id, token_id, expires_ms)");
        freeReplyObject(rec);
        freeReplyObject(ttl);
        return fsck_watch_commit(f);
    }
    if (kgc_id_team_of(kid, 'k', kt) != 0 || strcmp(kt, team) != 0 || strcmp(team, tag_team) != 0) {
        PROBLEM(f, tk, "key %s is not a key of its team_id %s, or that is not the team of "
                       "the record's slot", kid, team);
        freeReplyObject(rec);
        freeReplyObject(ttl);
        return fsck_watch_commit(f);
    }
    fsck_rk(f, kk, KGC_RK_KEY, team, kid);
    kd = fsck_wread1(f, kk, "GET", NULL);
    if (kd == NULL) {
        freeReplyObject(rec);
        freeReplyObject(ttl);
        return -1;
    }
    doc = fsck_reply_json(kd);
    entry = json_object_get(json_object_get(doc, "tokens"), user);
    if (kd->type == REDIS_REPLY_NIL) {
        PROBLEM(f, tk, "points to key %s, which does not exist (a dangling token)", kid);
    } else if (doc == NULL) {
        PROBLEM(f, tk, "points to key %s, whose document is not JSON", kid);
    } else if (!str_in_array(json_object_get(doc, "users"), user)) {
        PROBLEM(f, tk, "user %s is not assigned to key %s (a dangling token)", user, kid);
    } else if (entry == NULL) {
        PROBLEM(f, tk, "key %s has no token entry for user %s (a dangling token)", kid, user);
    } else {
        const char *h = json_string_value(json_object_get(entry, "hash"));
        const char *oh = json_string_value(json_object_get(entry, "old_hash"));
        if (h != NULL && strcmp(h, hash) == 0) {
            if (expires != 0 || ttl->type != REDIS_REPLY_INTEGER || ttl->integer != -1)
                PROBLEM(f, tk, "the current token of %s on %s has an expiry", user, kid);
        } else if (oh != NULL && strcmp(oh, hash) == 0) {
            /* A grace-period token: dies at expires_ms, by Redis' own expiry. */
            if (expires <= 0 || ttl->type != REDIS_REPLY_INTEGER || ttl->integer < 0)
                PROBLEM(f, tk, "grace-period token of %s on %s never expires", user, kid);
        } else {
            PROBLEM(f, tk, "key %s's token entry for %s names another hash (a dangling token)",
                    kid, user);
        }
    }
    json_decref(doc);
    freeReplyObject(kd);
    freeReplyObject(rec);
    freeReplyObject(ttl);
    rc = fsck_watch_commit(f);
    if (rc == 1)
        f->n.tokens++;
    return rc;
}

/* --- pass 2: wallets and their ledgers ---------------------------------------- */

/* Request ids of one wallet's debits, for "charged twice": a window of
 * the last FSCK_RID_WINDOW debits with a request id (a ring, in reading
 * order) and an open-addressing table of their 64-bit hashes. Memory is
 * fixed (about 28 MB, allocated once per run) whatever the ledger's size;
 * the price is that two charges of one id more than FSCK_RID_WINDOW
 * debits apart are not compared (docs/redis-schema.md says so), and that
 * a 64-bit hash collision could report a false "charged twice" (odds
 * about n^2 / 2^65). */
#define FSCK_RID_WINDOW (1u << 19)
#define FSCK_RID_SLOTS  (FSCK_RID_WINDOW * 2u)

typedef struct rid_slot { uint64_t h; long long at; uint32_t refs; } rid_slot;

typedef struct rid_window {
    rid_slot *slot;                  /* FSCK_RID_SLOTS; refs == 0: empty */
    uint64_t *ring;                  /* FSCK_RID_WINDOW hashes, oldest read first */
    size_t head, n;
} rid_window;

static rid_window rids;

static void rid_init(void)
{
    if (rids.slot != NULL)
        return;
    rids.slot = calloc(FSCK_RID_SLOTS, sizeof *rids.slot);
    rids.ring = calloc(FSCK_RID_WINDOW, sizeof *rids.ring);
    if (rids.slot == NULL || rids.ring == NULL) {
        fputs("error: internal: out of memory\n", stderr);
        abort();
    }
}

static size_t rid_find(uint64_t h)
{
    size_t i = (size_t)(h ^ (h >> 29)) & (FSCK_RID_SLOTS - 1);

    while (rids.slot[i].refs != 0 && rids.slot[i].h != h)
        i = (i + 1) & (FSCK_RID_SLOTS - 1);
    return i;
}

/* Drops one reference of h; an emptied slot is filled again by shifting
 * back the entries after it that probed past it (no tombstones). */
static void rid_release(uint64_t h)
{
    size_t i = rid_find(h), j = i;

    if (rids.slot[i].refs == 0 || --rids.slot[i].refs > 0)
        return;
    for (;;) {
        size_t home;
        j = (j + 1) & (FSCK_RID_SLOTS - 1);
        if (rids.slot[j].refs == 0)
            break;
        home = (size_t)(rids.slot[j].h ^ (rids.slot[j].h >> 29)) & (FSCK_RID_SLOTS - 1);
        /* Move j to i unless its home lies cyclically in (i, j]. */
        if ((i < j) ? (home <= i || home > j) : (home <= i && home > j)) {
            rids.slot[i] = rids.slot[j];
            rids.slot[j].refs = 0;
            i = j;
        }
    }
    rids.slot[i].refs = 0;
}

void fsck_checks_cleanup(void)
{
    free(rids.slot);
    free(rids.ring);
    memset(&rids, 0, sizeof rids);
}

static void rid_reset(void)
{
    while (rids.n > 0) {
        rid_release(rids.ring[rids.head]);
        rids.head = (rids.head + 1) % FSCK_RID_WINDOW;
        rids.n--;
    }
    rids.head = 0;
}

/* Notes debit (key id + request id hash h) at time at; returns the time of
 * another debit of the same id in the window, or -1. */
static long long rid_note(uint64_t h, long long at)
{
    size_t i;
    long long prev = -1;

    if (rids.n == FSCK_RID_WINDOW) {        /* full: forget the first read */
        rid_release(rids.ring[rids.head]);
        rids.head = (rids.head + 1) % FSCK_RID_WINDOW;
        rids.n--;
    }
    i = rid_find(h);
    if (rids.slot[i].refs > 0)
        prev = rids.slot[i].at;
    rids.slot[i].h = h;
    rids.slot[i].at = at;
    rids.slot[i].refs++;
    rids.ring[(rids.head + rids.n) % FSCK_RID_WINDOW] = h;
    rids.n++;
    return prev;
}

static uint64_t rid_hash(const char *kid, const char *rid)
{
    uint64_t h = 1469598103934665603ULL;

    for (const char *p = kid; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    h = (h ^ 0xffu) * 1099511628211ULL;     /* a separator no id holds */
    for (const char *p = rid; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    return h;
}

/* The ledger is read newest first (below); the chain is checked pair by
 * pair, as it would be oldest first: entry n's balance_micros must be the
 * balance after the entry before it (the next one read) plus n's amount. */
typedef struct chain {
    long long sum;                   /* credits - debits */
    int breaks;
    int have_newer;                  /* the entry read before (newer) is waiting */
    long long newer_index, newer_bal, newer_effect;
} chain;

/* Compares the waiting newer entry with the balance before it (b). */
static void chain_pair(fsck *f, const char *lk, chain *c, long long b)
{
    if (c->have_newer && c->newer_bal != b + c->newer_effect &&
        ++c->breaks <= FSCK_CHAIN_REPORTS)
        PROBLEM(f, lk, "entry %lld: balance_micros %lld, but the entries before it give %lld",
                c->newer_index, c->newer_bal, b + c->newer_effect);
}

/* One entry; index counts from the oldest (1). */
static void ledger_entry(fsck *f, const char *lk, const char *T, chain *c, const redisReply *e,
                         long long index)
{
    json_t *doc = fsck_reply_json(e), *amt, *bal, *at;
    const char *type, *kid, *rid;
    long long a, b;
    char kt[KGC_ID_MAX];

    f->n.entries++;
    type = json_string_value(json_object_get(doc, "type"));
    amt = json_object_get(doc, "amount_micros");
    bal = json_object_get(doc, "balance_micros");
    if (doc == NULL || type == NULL || !json_is_integer(amt) || !json_is_integer(bal) ||
        (strcmp(type, "credit") != 0 && strcmp(type, "debit") != 0)) {
        PROBLEM(f, lk, "entry %lld (from the oldest) is not a ledger entry", index);
        c->have_newer = 0;
        json_decref(doc);
        return;
    }
    a = json_integer_value(amt);
    b = json_integer_value(bal);
    if (a < 0 || (a == 0 && strcmp(type, "credit") == 0))
        PROBLEM(f, lk, "entry %lld: %s of %lld micros", index, type, a);
    chain_pair(f, lk, c, b);
    c->have_newer = 1;
    c->newer_index = index;
    c->newer_bal = b;
    c->newer_effect = type[0] == 'c' ? a : -a;
    c->sum += c->newer_effect;
    if (type[0] == 'd') {
        kid = json_string_value(json_object_get(doc, "key_id"));
        rid = json_string_value(json_object_get(doc, "request_id"));
        at = json_object_get(doc, "at");
        if (kid == NULL || kgc_id_team_of(kid, 'k', kt) != 0 || strcmp(kt, T) != 0) {
            PROBLEM(f, lk, "entry %lld: debit by a key not of team %s", index, T);
        } else if (rid != NULL) {
            long long prev = rid_note(rid_hash(kid, rid), json_integer_value(at));
            if (prev >= 0 && llabs(prev - json_integer_value(at)) < FSCK_REPLAY_MS)
                PROBLEM(f, lk, "entry %lld: request id %s of key %s charged twice", index, rid,
                        kid);
        }
    }
    /* A late lease charge (docs/module.md "Leased funds") may push it
     * below zero: the entry says so ("lease_late_micros"). */
    if (b < 0 && json_object_get(doc, "lease_late_micros") == NULL)
        PROBLEM(f, lk, "entry %lld: the balance went below zero (%lld)", index, b);
    json_decref(doc);
}

/* The holds of a wallet (settle services, docs/module.md): held_micros
 * is the sum of the open holds, never below 0 nor above the balance (so
 * the available amount, balance − held, is never negative), and the
 * holds hash and the expiry zset name the same holds. hs is HGETALL of
 * the holds hash, hx ZRANGE 0 -1 of the expiry zset. */
static void check_holds(fsck *f, const char *wk, const char *xk, const char *held,
                        long long balance, const redisReply *hs, const redisReply *hx)
{
    long long h = 0, sum = 0, amt;
    size_t nh = 0;

    if (held != NULL && (parse_ll(held, &h) != 0 || h < 0)) {
        PROBLEM(f, wk, "held_micros is not an integer >= 0");
        return;
    }
    if (h > balance)
        PROBLEM(f, wk, "held_micros %lld is above balance_micros %lld (available below zero)", h,
                balance);
    if (hs->type != REDIS_REPLY_ARRAY || hx->type != REDIS_REPLY_ARRAY) {
        PROBLEM(f, xk, "the holds or their expiries have the wrong type");
        return;
    }
    for (size_t i = 0; i + 1 < hs->elements; i += 2) {
        const char *v = hs->element[i + 1]->str;
        int found = 0;
        if (v == NULL || sscanf(v, "%lld", &amt) != 1 || amt < 0) {
            PROBLEM(f, xk, "hold %s: no amount", hs->element[i]->str);
            continue;
        }
        sum += amt;
        nh++;
        for (size_t j = 0; j < hx->elements && !found; j++)
            found = hx->element[j]->str != NULL && strcmp(hx->element[j]->str, hs->element[i]->str) == 0;
        if (!found)
            PROBLEM(f, xk, "hold %s has no expiry: it would never be captured", hs->element[i]->str);
    }
    if (hx->elements != nh)
        PROBLEM(f, xk, "%zu expiries for %zu holds", hx->elements, nh);
    if (sum != h)
        PROBLEM(f, wk, "held_micros %lld, but its open holds sum to %lld (%zu holds)", h, sum, nh);
}

/* The archive's side of a wallet (with `archive` in the config): its rows
 * below the checkpoint are exactly archived_count, and sum to
 * archived_sum_micros. Rows at or above it are a batch inserted and not
 * yet trimmed (archive.h): allowed, up to the tail's end. */
static void check_archive(fsck *f, const char *wk, const char *W, long long ac, long long as,
                          long long len)
{
    long long cnt = 0, sum = 0, maxseq = -1;
    char err[200];

    if (f->arch == NULL)
        return;
    if (f->arch->sums(f->arch, W, ac, &cnt, &sum, &maxseq, err, sizeof err) != 0) {
        f->broken = 1;
        snprintf(f->broken_why, sizeof f->broken_why, "%s", err);
        return;
    }
    f->n.archived += cnt;
    if (cnt != ac)
        PROBLEM(f, wk, "the archive holds %lld entries below seq %lld, but archived_count is %lld",
                cnt, ac, ac);
    else if (sum != as)
        PROBLEM(f, wk, "the archive's %lld entries sum to %lld, but archived_sum_micros is %lld",
                cnt, sum, as);
    if (maxseq >= ac + len)
        PROBLEM(f, wk, "the archive holds seq %lld, past the newest entry (%lld)", maxseq,
                ac + len - 1);
}

/* The leases of a wallet (debit leased, docs/module.md): leased_micros is
 * the sum of the lease hash, each lease has an expiry (else keygated would
 * never reclaim it), and the balance is below zero only by the shortfall
 * late lease charges recorded. ls is HGETALL of the lease hash, lx ZRANGE
 * 0 -1 of its expiry zset. Returns leased_micros (0 when unreadable). */
static long long check_leases(fsck *f, const char *wk, const char *xk, const redisReply *w,
                              long long balance, const redisReply *ls, const redisReply *lx)
{
    const char *leased = fsck_hfield(w, "leased_micros"), *sf = fsck_hfield(w, "shortfall_micros");
    long long l = 0, s = 0, sum = 0, amt;
    size_t n = 0;

    if ((leased != NULL && (parse_ll(leased, &l) != 0 || l < 0)) ||
        (sf != NULL && (parse_ll(sf, &s) != 0 || s < 0))) {
        PROBLEM(f, wk, "leased_micros or shortfall_micros is not an integer >= 0");
        return 0;
    }
    if (balance < -s)
        PROBLEM(f, wk, "balance_micros %lld is below zero by more than the shortfall recorded (%lld)",
                balance, s);
    if (ls->type != REDIS_REPLY_ARRAY || lx->type != REDIS_REPLY_ARRAY) {
        PROBLEM(f, xk, "the leases or their expiries have the wrong type");
        return l;
    }
    for (size_t i = 0; i + 1 < ls->elements; i += 2) {
        const char *v = ls->element[i + 1]->str;
        int found = 0;
        if (v == NULL || parse_ll(v, &amt) != 0 || amt <= 0) {
            PROBLEM(f, xk, "lease %s: no amount", ls->element[i]->str);
            continue;
        }
        sum += amt;
        n++;
        for (size_t j = 0; j < lx->elements && !found; j++)
            found = lx->element[j]->str != NULL && strcmp(lx->element[j]->str, ls->element[i]->str) == 0;
        if (!found)
            PROBLEM(f, xk, "lease %s has no expiry: it would never be reclaimed", ls->element[i]->str);
    }
    if (lx->elements != n)
        PROBLEM(f, xk, "%zu expiries for %zu leases", lx->elements, n);
    if (sum != l)
        PROBLEM(f, wk, "leased_micros %lld, but its leases sum to %lld (%zu leases)", l, sum, n);
    return l;
}

/* One attempt; 0 when the archiver trimmed the ledger while it was read
 * (then nothing is published: the caller tries again), else 1. */
static int check_wallet_once(fsck *f, const char *T, const char *W, int last_try)
{
    char wk[KGC_RKEY_MAX], lk[KGC_RKEY_MAX], hk[KGC_RKEY_MAX], xk[KGC_RKEY_MAX], a[32], b[32];
    char sk[KGC_RKEY_MAX], sx[KGC_RKEY_MAX];
    const char *sh[2] = {"HGETALL", sk}, *sz[4] = {"ZRANGE", sx, "0", "-1"};
    long long leased = 0;
    const char *m[1] = {"MULTI"}, *e[1] = {"EXEC"};
    const char *h[2] = {"HGETALL", wk}, *l[2] = {"LLEN", lk};
    const char *hh[2] = {"HGETALL", hk}, *hx[4] = {"ZRANGE", xk, "0", "-1"};
    const char *hac[3] = {"HGET", wk, "archived_count"};
    redisReply *r, *ex;
    const char *bal, *wid, *tid, *acs, *ass;
    long long balance = 0, len = 0, ac = 0, as = 0, entries0 = f->n.entries;
    chain c = {0, 0, 0, 0, 0, 0};
    int moved = 0;

    json_array_clear(f->pending);
    fsck_rk(f, wk, KGC_RK_WALLET, T, W);
    fsck_rk(f, lk, KGC_RK_LEDGER, T, W);
    fsck_rk(f, hk, KGC_RK_HOLDS, T, W);
    fsck_rk(f, xk, KGC_RK_HOLDEXP, T, W);
    fsck_rk(f, sk, KGC_RK_LEASE, T, W);
    fsck_rk(f, sx, KGC_RK_LEASEEXP, T, W);
    /* Balance, checkpoint, holds, leases and ledger length at one instant
     * (one slot: one MULTI). */
    fsck_rpush(f, 1, m, NULL);
    fsck_rpush(f, 2, h, NULL);
    fsck_rpush(f, 2, l, NULL);
    fsck_rpush(f, 2, hh, NULL);
    fsck_rpush(f, 4, hx, NULL);
    fsck_rpush(f, 2, sh, NULL);
    fsck_rpush(f, 4, sz, NULL);
    fsck_rpush(f, 1, e, NULL);
    for (int i = 0; i < 7; i++)
        if ((r = fsck_rget(f)) != NULL)
            freeReplyObject(r);
    if ((ex = fsck_rget(f)) == NULL)
        return 1;
    if (ex->type != REDIS_REPLY_ARRAY || ex->elements != 6 ||
        ex->element[0]->type != REDIS_REPLY_ARRAY) {
        PROBLEM(f, wk, "could not read the wallet and its ledger (wrong types?)");
        freeReplyObject(ex);
        fsck_flush(f);
        return 1;
    }
    if (ex->element[0]->elements == 0) {   /* deleted? wallets never are */
        PROBLEM(f, lk, "a ledger without a wallet");
        freeReplyObject(ex);
        fsck_flush(f);
        return 1;
    }
    bal = fsck_hfield(ex->element[0], "balance_micros");
    wid = fsck_hfield(ex->element[0], "wallet_id");
    tid = fsck_hfield(ex->element[0], "team_id");
    acs = fsck_hfield(ex->element[0], "archived_count");
    ass = fsck_hfield(ex->element[0], "archived_sum_micros");
    if (wid == NULL || strcmp(wid, W) != 0 || tid == NULL || strcmp(tid, T) != 0)
        PROBLEM(f, wk, "wallet_id or team_id does not match the key name");
    if (fsck_hfield(ex->element[0], "name") == NULL)
        PROBLEM(f, wk, "has no name");
    if ((acs != NULL && (parse_ll(acs, &ac) != 0 || ac < 0)) ||
        (ass != NULL && parse_ll(ass, &as) != 0) || (acs == NULL) != (ass == NULL)) {
        PROBLEM(f, wk, "archived_count and archived_sum_micros are not a checkpoint");
        ac = as = 0;
    }
    if (parse_ll(bal, &balance) != 0)
        PROBLEM(f, wk, "balance_micros is not an integer");
    else if ((leased = check_leases(f, wk, sx, ex->element[0], balance, ex->element[4],
                                    ex->element[5])), balance < 0)
        ;                                /* a recorded shortfall, or reported above */
    else
        check_holds(f, wk, xk, fsck_hfield(ex->element[0], "held_micros"), balance,
                    ex->element[2], ex->element[3]);
    if (ex->element[1]->type == REDIS_REPLY_INTEGER)
        len = ex->element[1]->integer;
    freeReplyObject(ex);
    if (json_object_get(f->teams, T) == NULL)
        PROBLEM(f, wk, "a wallet of team %s, which has no team document", T);

    /* The `len` entries of that instant (the Redis tail: seq ac .. ac+len-1),
     * newest first, a page at a time. An entry is named by its position in
     * the tail counted from the oldest, i.e. by a negative index (position
     * p is index -(p+1)): debits LPUSHed meanwhile move nothing. The
     * archiver's trim would (it removes from the oldest end), so each page
     * is read with archived_count in one MULTI: if it moved, this attempt
     * ends and the wallet is read again. Memory: one page and the request
     * id window. */
    rid_init();
    rid_reset();
    for (long long next = len - 1; next >= 0 && !f->broken && !moved;) {
        long long n = next + 1 < FSCK_CHUNK ? next + 1 : FSCK_CHUNK;
        const char *argv[4] = {"LRANGE", lk, a, b};
        snprintf(a, sizeof a, "%lld", -(next + 1));
        snprintf(b, sizeof b, "%lld", -(next - n + 2));
        fsck_rpush(f, 1, m, NULL);
        fsck_rpush(f, 3, hac, NULL);
        fsck_rpush(f, 4, argv, NULL);
        fsck_rpush(f, 1, e, NULL);
        for (int i = 0; i < 3; i++)
            if ((r = fsck_rget(f)) != NULL)
                freeReplyObject(r);
        if ((ex = fsck_rget(f)) == NULL)
            break;
        if (ex->type != REDIS_REPLY_ARRAY || ex->elements != 2) {
            PROBLEM(f, lk, "could not read the ledger (wrong type?)");
            freeReplyObject(ex);
            break;
        }
        if (ex->element[0]->type == REDIS_REPLY_STRING ? strtoll(ex->element[0]->str, NULL, 10) != ac
                                                       : ac != 0) {
            moved = 1;                       /* trimmed by the archiver meanwhile */
            freeReplyObject(ex);
            break;
        }
        r = ex->element[1];
        if (r->type != REDIS_REPLY_ARRAY || (long long)r->elements != n) {
            PROBLEM(f, lk, "ledger shrank while being read (only the archiver trims it, and "
                           "archived_count did not move)");
            freeReplyObject(ex);
            break;
        }
        for (size_t i = 0; i < r->elements; i++)
            ledger_entry(f, lk, T, &c, r->element[i], ac + next - (long long)i + 1);
        freeReplyObject(ex);
        next -= n;
    }
    if (moved && !last_try) {
        json_array_clear(f->pending);
        f->n.entries = entries0;
        return 0;
    }
    if (moved)
        PROBLEM(f, lk, "could not be read whole: the archiver trimmed it during every try");
    chain_pair(f, lk, &c, as);               /* the oldest entry starts from the checkpoint */
    if (f->broken) {
        json_array_clear(f->pending);
        return 1;
    }
    if (c.breaks > FSCK_CHAIN_REPORTS)
        PROBLEM(f, lk, "%d more entries whose balance_micros breaks the chain",
                c.breaks - FSCK_CHAIN_REPORTS);
    if (bal != NULL && !moved && as + c.sum != balance + leased)
        PROBLEM(f, wk, "balance_micros %lld + leased_micros %lld, but archived_sum_micros %lld + "
                "credits - debits of its ledger tail = %lld (%lld entries)", balance, leased, as,
                as + c.sum, len);
    check_archive(f, wk, W, ac, as, len);
    if (f->broken) {
        json_array_clear(f->pending);
        return 1;
    }
    f->n.wallets++;
    fsck_flush(f);
    return 1;
}

void fsck_check_wallet(fsck *f, const char *T, const char *W)
{
    for (int i = 0; i < 5 && check_wallet_once(f, T, W, i == 4) == 0; i++)
        f->n.retries++;
}

/* --- pass 2: users ------------------------------------------------------------ */

int fsck_check_user(fsck *f, const char *uid, const char *unused)
{
    char uk[KGC_RKEY_MAX], ek[KGC_RKEY_MAX];
    redisReply *u, *em = NULL;
    json_t *doc;
    const char *email;
    int rc;

    (void)unused;
    fsck_rk(f, uk, KGC_RK_USER, uid);
    if ((u = fsck_wread1(f, uk, "GET", NULL)) == NULL)
        return -1;
    doc = fsck_reply_json(u);
    email = json_string_value(json_object_get(doc, "email"));
    if (u->type == REDIS_REPLY_NIL) {
        /* gone since pass 1 */
    } else if (doc == NULL || !json_is_string(json_object_get(doc, "user_id")) ||
               strcmp(json_string_value(json_object_get(doc, "user_id")), uid) != 0 ||
               email == NULL) {
        PROBLEM(f, uk, "not a user document (user_id %s, email)", uid);
    } else if ((em = fsck_wread1(f, fsck_rk(f, ek, KGC_RK_EMAIL, email), "GET", NULL)) != NULL &&
               (!fsck_is_str(em) || strcmp(em->str, uid) != 0)) {
        if (fsck_is_str(em) && strncmp(em->str, KGC_EMAIL_CLAIM, strlen(KGC_EMAIL_CLAIM)) == 0 &&
            strcmp(em->str + strlen(KGC_EMAIL_CLAIM), uid) == 0)
            PROBLEM(f, uk, "its email is only claimed (%s): a sign-up that stopped after writing "
                    "the user; set %s to the user id", ek, ek);
        else
            PROBLEM(f, uk, "its email's record %s does not name this user", ek);
    }
    json_decref(doc);
    freeReplyObject(u);
    if (em)
        freeReplyObject(em);
    if (f->broken)
        return -1;
    rc = fsck_watch_commit(f);
    if (rc == 1)
        f->n.users++;
    return rc;
}

/* 1 if an open commit across slots (pass 1's xc_intents) holds the claim
 * ek: its prepare took the claim's expiry away until it is settled
 * (docs/redis-schema.md, "Cross-slot commits"). */
static int claim_in_open_intent(fsck *f, const char *ek)
{
    const char *txid;
    json_t *v;

    json_object_foreach(f->xc_intents, txid, v) {
        char ik[KGC_RKEY_MAX];
        const char *argv[3] = {"HGET", ik, "plan"};
        redisReply *r;
        int hit;

        fsck_rk(f, ik, "{xtx}:%s", txid);
        if ((r = fsck_rcmd(f, 3, argv, NULL)) == NULL)
            return 0;
        hit = r->type == REDIS_REPLY_STRING && strstr(r->str, ek) != NULL;
        freeReplyObject(r);
        if (hit)
            return 1;
    }
    return 0;
}

int fsck_check_email(fsck *f, const char *email, const char *unused)
{
    char ek[KGC_RKEY_MAX], uk[KGC_RKEY_MAX];
    redisReply *e, *u = NULL;
    json_t *doc = NULL;

    (void)unused;
    fsck_rk(f, ek, KGC_RK_EMAIL, email);
    if ((e = fsck_wread1(f, ek, "GET", NULL)) == NULL)
        return -1;
    if (e->type == REDIS_REPLY_NIL) {
        /* gone since pass 1 */
    } else if (fsck_is_str(e) && strncmp(e->str, KGC_EMAIL_CLAIM, strlen(KGC_EMAIL_CLAIM)) == 0) {
        /* A sign-up's claim (docs/redis-schema.md, "Sign-up claims"): fine
         * while it runs out by itself and its user does not exist yet. */
        const char *cu = e->str + strlen(KGC_EMAIL_CLAIM);
        redisReply *ttl = fsck_wread1(f, ek, "PTTL", NULL);

        if (ttl != NULL && ttl->type == REDIS_REPLY_INTEGER && ttl->integer < 0 &&
            !claim_in_open_intent(f, ek))
            PROBLEM(f, ek, "a stale sign-up claim (no expiry) for user %.40s: delete it if that "
                    "user does not exist", cu);
        else if (!kgc_id_plausible(cu))
            PROBLEM(f, ek, "a sign-up claim that names no user id");
        else if ((u = fsck_wread1(f, fsck_rk(f, uk, KGC_RK_USER, cu), "GET", NULL)) != NULL &&
                 u->type != REDIS_REPLY_NIL)
            PROBLEM(f, ek, "a stale sign-up claim: user %s exists; set the record to the user id",
                    cu);
        if (ttl)
            freeReplyObject(ttl);
    } else if (!fsck_is_str(e) || !kgc_id_plausible(e->str)) {
        PROBLEM(f, ek, "does not name a user id");
    } else if ((u = fsck_wread1(f, fsck_rk(f, uk, KGC_RK_USER, e->str), "GET", NULL)) != NULL) {
        doc = fsck_reply_json(u);
        if (u->type == REDIS_REPLY_NIL)
            PROBLEM(f, ek, "names user %s, who does not exist", e->str);
        else if (!json_is_string(json_object_get(doc, "email")) ||
                 strcmp(json_string_value(json_object_get(doc, "email")), email) != 0)
            PROBLEM(f, ek, "names user %s, whose email differs", e->str);
    }
    json_decref(doc);
    freeReplyObject(e);
    if (u)
        freeReplyObject(u);
    return f->broken ? -1 : fsck_watch_commit(f);
}

/* --- pass 2: the catalog ------------------------------------------------------- */

void fsck_check_catalog(fsck *f)
{
    char ck[KGC_RKEY_MAX], err[256];
    redisReply *r = fsck_rcmd2(f, "GET", fsck_rk(f, ck, KGC_RK_CATALOG));
    kgc_catalog *cat;

    if (r == NULL)
        return;
    if (r->type == REDIS_REPLY_NIL) {
        if (json_object_size(f->teams) > 0)
            PROBLEM(f, ck, "no catalog published (gateways cannot price requests)");
    } else if (!fsck_is_str(r) || (cat = kgc_catalog_parse(r->str, r->len, ck, err, sizeof err)) == NULL) {
        PROBLEM(f, ck, "not a valid catalog");
    } else {
        kgc_catalog_free(cat);
    }
    freeReplyObject(r);
    fsck_flush(f);
}

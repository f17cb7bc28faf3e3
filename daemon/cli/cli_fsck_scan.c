/*
 * cli_fsck_scan.c - pass 1 of `keygate fsck`: every key of the database
 * with SCAN (never KEYS), every string, hash field and value, list element,
 * set and zset member and stream entry read and scanned for secrets
 * (cli_fsck_secrets.c), and an inventory taken of the model's keys under
 * key_prefix for pass 2.
 */
#include "cli_fsck.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kgc_keys.h"

#define FSCK_SCAN_COUNT     "1000"

static void set_add(json_t *set, const char *team, const char *id)
{
    json_t *sub = json_object_get(set, team);
    if (sub == NULL) {
        sub = json_object();
        json_object_set_new(set, team, sub);
    }
    json_object_set_new(sub, id, json_true());
}

/* Notes a model key in the inventory (name without the prefix). */
static void inventory(fsck *f, const char *name, const char *type)
{
    char team[KGC_ID_MAX], id[KGC_RKEY_MAX];
    const char *rest;
    size_t tl;

    if (strncmp(name, "tok:", 4) == 0) {
        /* The layout before tokens named their team: a problem (pass 2). */
        json_object_set_new(f->toks, name + 4, json_string(""));
        return;
    }
    if (strncmp(name, "user:", 5) == 0) {
        json_object_set_new(f->users, name + 5, json_true());
        return;
    }
    if (strncmp(name, "email:", 6) == 0) {
        json_object_set_new(f->emails, name + 6, json_true());
        return;
    }
    if (strcmp(name, KGC_RK_CATALOG) == 0) {
        f->catalog_seen = 1;
        return;
    }
    if (strncmp(name, "{t:", 3) != 0 || (rest = strstr(name, "}:")) == NULL)
        return;
    tl = (size_t)(rest - (name + 3));
    if (tl == 0 || tl >= sizeof team)
        return;
    memcpy(team, name + 3, tl);
    team[tl] = '\0';
    rest += 2;
    if (strcmp(rest, "team") == 0) {
        json_object_set_new(f->teams, team, json_true());
        return;
    }
    if (strncmp(rest, "tok:", 4) == 0) {
        json_object_set_new(f->toks, rest + 4, json_string(team));
        return;
    }
    if (strncmp(rest, "key:", 4) == 0) {
        snprintf(id, sizeof id, "%s", rest + 4);
        set_add(f->keydocs, team, id);
    } else if (strncmp(rest, "wallet:", 7) == 0) {
        snprintf(id, sizeof id, "%s", rest + 7);
        set_add(f->wallets, team, id);
    } else if (strncmp(rest, "ledger:", 7) == 0) {
        snprintf(id, sizeof id, "%s", rest + 7);
        set_add(f->ledgers, team, id);
    } else if (strcmp(rest, "keys") != 0 && strcmp(rest, "wallets") != 0) {
        return;   /* credit, req, quota, audit records: no team document needed for them here */
    }
    (void)type;
    if (json_object_get(f->tagged, team) == NULL)
        json_object_set_new(f->tagged, team, json_string(name));
}

/* Reads the whole content of one key (whatever its type) and scans it. */
static void scan_key(fsck *f, const char *key, size_t keylen, const char *type)
{
    const char *argv[5];
    size_t lens[5];
    redisReply *r;
    char a[32], b[32];

    argv[1] = key;
    lens[1] = keylen;
    if (strcmp(type, "string") == 0 || strcmp(type, "hash") == 0 || strcmp(type, "set") == 0) {
        argv[0] = type[0] == 's' && type[1] == 't' ? "GET" : type[0] == 'h' ? "HGETALL" : "SMEMBERS";
        lens[0] = strlen(argv[0]);
        r = fsck_rcmd(f, 2, argv, lens);
        fsck_scan_reply(f, key, keylen, r);
        fsck_xc_seen(f, key, keylen, type, r);     /* intents and locks of cross-slot commits */
        if (r)
            freeReplyObject(r);
        return;
    }
    if (strcmp(type, "list") == 0 || strcmp(type, "zset") == 0) {
        /* In chunks; a concurrent LPUSH shifts elements towards the end, so
         * an element may be seen twice but never skipped. */
        argv[0] = type[0] == 'l' ? "LRANGE" : "ZRANGE";
        for (long long off = 0;; off += FSCK_CHUNK) {
            snprintf(a, sizeof a, "%lld", off);
            snprintf(b, sizeof b, "%lld", off + FSCK_CHUNK - 1);
            argv[2] = a;
            argv[3] = b;
            for (int i = 0; i < 4; i++)
                if (i != 1)
                    lens[i] = strlen(argv[i]);
            r = fsck_rcmd(f, 4, argv, lens);
            if (r == NULL)
                return;
            fsck_scan_reply(f, key, keylen, r);
            if (r->type != REDIS_REPLY_ARRAY || r->elements < FSCK_CHUNK) {
                freeReplyObject(r);
                return;
            }
            freeReplyObject(r);
        }
    }
    if (strcmp(type, "stream") == 0) {
        argv[0] = "XRANGE";
        argv[2] = "-";
        argv[3] = "+";
        for (int i = 0; i < 4; i++)
            if (i != 1)
                lens[i] = strlen(argv[i]);
        r = fsck_rcmd(f, 4, argv, lens);
        fsck_scan_reply(f, key, keylen, r);
        if (r)
            freeReplyObject(r);
    }
}

static void scan_node(fsck *f)
{
    char cursor[64] = "0";

    do {
        const char *argv[6] = {"SCAN", cursor, "MATCH", "*", "COUNT", FSCK_SCAN_COUNT};
        redisReply *r = fsck_rcmd(f, 6, argv, NULL), *keys, **types;

        if (r == NULL)
            return;
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
            r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_ARRAY) {
            snprintf(f->broken_why, sizeof f->broken_why, "SCAN: unexpected reply%s%s",
                     r->type == REDIS_REPLY_ERROR ? ": " : "",
                     r->type == REDIS_REPLY_ERROR ? r->str : "");
            f->broken = 1;
            freeReplyObject(r);
            return;
        }
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        keys = r->element[1];
        types = calloc(keys->elements ? keys->elements : 1, sizeof *types);
        if (types == NULL)
            abort();
        for (size_t i = 0; i < keys->elements; i++) {
            const char *t[2] = {"TYPE", keys->element[i]->str};
            size_t tl[2] = {4, keys->element[i]->len};
            fsck_rpush(f, 2, t, tl);
        }
        for (size_t i = 0; i < keys->elements; i++)
            types[i] = fsck_rget(f);
        for (size_t i = 0; i < keys->elements && !f->broken; i++) {
            const redisReply *k = keys->element[i];
            const char *type = types[i] && types[i]->type == REDIS_REPLY_STATUS ? types[i]->str : "none";

            if (strcmp(type, "none") == 0)
                continue;           /* expired or deleted since SCAN saw it */
            f->n.keys++;
            fsck_scan_value(f, k->str, k->len, k->str, k->len);
            scan_key(f, k->str, k->len, type);
            if (k->len > f->plen && memcmp(k->str, f->prefix, f->plen) == 0 &&
                strlen(k->str) == k->len)
                inventory(f, k->str + f->plen, type);
        }
        fsck_free_replies(types, keys->elements);
        freeReplyObject(r);
        fsck_flush(f);
    } while (!f->broken && strcmp(cursor, "0") != 0);
}

/* Every master of a cluster in turn (a key lives on one master); one node
 * otherwise. */
void fsck_pass_scan(fsck *f)
{
    int n = fsck_scan_targets(f);

    for (int i = 0; i < n && !f->broken; i++) {
        fsck_scan_target(f, i);
        scan_node(f);
    }
}

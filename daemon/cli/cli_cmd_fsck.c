/*
 * cli_cmd_fsck.c - `keygate fsck [--config FILE]`: a read-only check of
 * every invariant docs/redis-schema.md promises, straight against Redis.
 *
 * Pass 1 walks every key of the database with SCAN (never KEYS), reads
 * every string, hash field and value, list element, set and zset member
 * and stream entry, and looks in each (and in every key name) for a plain
 * token (anything kgc_token_wellformed accepts) and for the pepper (raw,
 * lower- or upper-case hex). On the way it takes an inventory of the
 * model's keys under key_prefix.
 *
 * Pass 2 checks the model, one object at a time:
 *   team    one owner, roles known, free_key_id names an existing free key
 *           and the team has exactly one free key; the keys and wallets
 *           zsets agree with the documents; each key's users are members,
 *           its token entries name live records that point back, each
 *           payg binding names an existing wallet of the team;
 *   token   each P tok:<hash> record points to an existing key of its
 *           team_id that lists the user as assigned and whose tokens entry
 *           for that user has this hash as "hash" (no expiry) or
 *           "old_hash" (a grace-period token: expires_ms and a TTL);
 *   wallet  balance_micros = sum of credits - sum of debits of its ledger,
 *           never below zero, each entry's balance_micros the running
 *           balance, no request id charged twice within the 24 h replay
 *           window;
 *   user    user and email records agree.
 *
 * The daemon writes each admin command in one MULTI/EXEC and the gateway
 * moves money in scripts, so a consistent view of an object is enough to
 * judge it on a live system: the reads of one object check run after a
 * WATCH of each key read, and an empty MULTI/EXEC then tells whether any
 * of them changed meanwhile (the check is then run again). A wallet's
 * balance and ledger length are read in one MULTI; its ledger entries are
 * then read oldest first by negative index, which later debits (LPUSHed
 * at the head) do not move.
 *
 * Nothing is ever written. A plain token found is shown by its hint only.
 */
#include "cli.h"

#include <hiredis/hiredis.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "kgc_config.h"
#include "kgc_keys.h"
#include "kgc_price.h"
#include "kgc_token.h"

#define FSCK_DEFAULT_CONFIG "/etc/keygate/keygate.conf"
#define FSCK_SCAN_COUNT     "1000"
#define FSCK_CHUNK          1000     /* list elements per LRANGE */
#define FSCK_RETRIES        20       /* re-runs of an object's check on concurrent change */
#define FSCK_CHAIN_REPORTS  5        /* ledger chain breaks reported per wallet */
#define FSCK_REPLAY_MS      (24LL * 3600 * 1000)
#define FSCK_SAFE_MAX       600

typedef struct fsck_secrets {
    unsigned char *pepper;           /* KGC_PEPPER_LEN bytes, from kgc_pepper_load */
    char hex[KGC_PEPPER_LEN * 2 + 1];
    char HEX[KGC_PEPPER_LEN * 2 + 1];
} fsck_secrets;

typedef struct fsck {
    redisContext *rc;
    const char *prefix;              /* key_prefix, borrowed from cfg */
    size_t plen;
    fsck_secrets *sec;               /* sodium_malloc'ed */
    int broken;                      /* Redis went away: exit 3 */
    char broken_why[256];
    int json;                        /* --json output */
    json_t *pending;                 /* problems of the object being checked */
    json_t *problems;                /* every confirmed problem: [{"key","problem"}] */
    /* inventory of pass 1 (sets as JSON objects) */
    json_t *teams;                   /* team_id -> true: P {t:T}:team exists */
    json_t *tagged;                  /* team_id -> first model key of that team */
    json_t *keydocs;                 /* team_id -> {key_id: true} */
    json_t *wallets;                 /* team_id -> {wallet_id: true} */
    json_t *ledgers;                 /* team_id -> {wallet_id: true} */
    json_t *toks;                    /* hash -> true */
    json_t *users;                   /* user_id -> true */
    json_t *emails;                  /* email -> true */
    int catalog_seen;
    struct {
        long keys, values, teams, apikeys, tokens, wallets, entries, users, retries;
    } n;
} fsck;

/* --- output ----------------------------------------------------------------- */

/* The display hint of the token at tok, in ASCII ("kg_AbCd...wXyZ"), so that
 * report lines stay plain ASCII. out[KGC_HINT_MAX]. */
static const char *hint_ascii(const char *tok, char *out)
{
    const char *body = tok + KGC_TOKEN_PREFIX_LEN;
    const char *end = tok + KGC_TOKEN_LEN;
    snprintf(out, KGC_HINT_MAX, "%s%.4s...%.4s", KGC_TOKEN_PREFIX, body, end - 4);
    return out;
}

/* A printable copy of s[0..len) into out[cap]: bytes outside printable
 * ASCII as \xNN, every well-formed token replaced by its hint and the
 * pepper (hex) by <pepper>, so that no report line carries a secret. */
static const char *safe_text(const fsck *f, const char *s, size_t len, char *out, size_t cap)
{
    size_t o = 0;
    const size_t hexlen = KGC_PEPPER_LEN * 2;

    for (size_t i = 0; i < len && o + 16 < cap;) {
        if (len - i >= KGC_TOKEN_LEN && memcmp(s + i, KGC_TOKEN_PREFIX, KGC_TOKEN_PREFIX_LEN) == 0 &&
            kgc_token_wellformed(s + i, KGC_TOKEN_LEN)) {
            char hint[KGC_HINT_MAX];
            o += (size_t)snprintf(out + o, cap - o, "<token %s>", hint_ascii(s + i, hint));
            i += KGC_TOKEN_LEN;
            continue;
        }
        if (f->sec != NULL && len - i >= hexlen &&
            (memcmp(s + i, f->sec->hex, hexlen) == 0 || memcmp(s + i, f->sec->HEX, hexlen) == 0)) {
            o += (size_t)snprintf(out + o, cap - o, "<pepper>");
            i += hexlen;
            continue;
        }
        unsigned char c = (unsigned char)s[i++];
        if (c >= 0x20 && c < 0x7f && c != '\\')
            out[o++] = (char)c;
        else
            o += (size_t)snprintf(out + o, cap - o, "\\x%02x", c);
    }
    if (o >= cap)
        o = cap - 1;
    out[o] = '\0';
    return out;
}

/* Notes a problem of the object being checked: kept in f->pending until
 * the object's reads are known to be consistent (fsck_flush). */
static void problem(fsck *f, const char *key, size_t keylen, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void problem(fsck *f, const char *key, size_t keylen, const char *fmt, ...)
{
    char name[FSCK_SAFE_MAX], msg[1024], safe[1400];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    safe_text(f, key, keylen, name, sizeof name);
    safe_text(f, msg, strlen(msg), safe, sizeof safe);
    json_array_append_new(f->pending, json_pack("{s:s,s:s}", "key", name, "problem", safe));
}

#define PROBLEM(f, key, ...) problem((f), (key), strlen(key), __VA_ARGS__)

/* Publishes the pending problems (the object's view was consistent). */
static void fsck_flush(fsck *f)
{
    size_t i;
    json_t *p;

    json_array_foreach(f->pending, i, p) {
        if (!f->json)
            printf("problem: %s: %s\n", json_string_value(json_object_get(p, "key")),
                   json_string_value(json_object_get(p, "problem")));
        json_array_append(f->problems, p);
    }
    json_array_clear(f->pending);
}

/* --- Redis --------------------------------------------------------------------- */

static void fsck_broken(fsck *f)
{
    if (!f->broken)
        snprintf(f->broken_why, sizeof f->broken_why, "%s",
                 f->rc->errstr[0] ? f->rc->errstr : "connection lost");
    f->broken = 1;
}

/* One command; NULL (and f->broken set) when the connection failed. */
static redisReply *rcmd(fsck *f, int argc, const char **argv, const size_t *lens)
{
    redisReply *r;

    if (f->broken)
        return NULL;
    r = redisCommandArgv(f->rc, argc, argv, lens);
    if (r == NULL)
        fsck_broken(f);
    return r;
}

static redisReply *rcmd2(fsck *f, const char *verb, const char *key)
{
    const char *argv[2] = {verb, key};
    return rcmd(f, 2, argv, NULL);
}

/* Queues argc/argv (pipelined); the reply is read by rget. */
static void rpush(fsck *f, int argc, const char **argv, const size_t *lens)
{
    if (!f->broken && redisAppendCommandArgv(f->rc, argc, argv, lens) != REDIS_OK)
        fsck_broken(f);
}

static redisReply *rget(fsck *f)
{
    void *r = NULL;

    if (f->broken)
        return NULL;
    if (redisGetReply(f->rc, &r) != REDIS_OK || r == NULL) {
        fsck_broken(f);
        return NULL;
    }
    return r;
}

/* For each of keys[0..n): WATCH it, then `verb key [extra]`; returns the
 * n replies of the verbs (malloc'ed array, free with free_replies), or
 * NULL when the connection broke. */
static redisReply **wread(fsck *f, size_t n, char **keys, const char *verb, const char *extra)
{
    redisReply **out;

    if (f->broken)
        return NULL;
    out = calloc(n ? n : 1, sizeof *out);
    if (out == NULL) {
        fputs("error: internal: out of memory\n", stderr);
        abort();
    }
    for (size_t i = 0; i < n; i++) {
        const char *w[2] = {"WATCH", keys[i]};
        const char *c[3] = {verb, keys[i], extra};
        rpush(f, 2, w, NULL);
        rpush(f, extra ? 3 : 2, c, NULL);
    }
    for (size_t i = 0; i < n; i++) {
        redisReply *w = rget(f);
        if (w)
            freeReplyObject(w);
        out[i] = rget(f);
    }
    if (f->broken) {
        for (size_t i = 0; i < n; i++)
            if (out[i])
                freeReplyObject(out[i]);
        free(out);
        return NULL;
    }
    return out;
}

static void free_replies(redisReply **r, size_t n)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        if (r[i] != NULL)
            freeReplyObject(r[i]);
    free(r);
}

static redisReply *wread1(fsck *f, const char *key, const char *verb, const char *extra)
{
    char *k = (char *)key;        /* wread only reads it */
    redisReply **r = wread(f, 1, &k, verb, extra), *one;

    if (r == NULL)
        return NULL;
    one = r[0];
    free(r);
    return one;
}

/* After the reads of one object: 1 if no watched key changed since it was
 * watched (the view was consistent), 0 if one did (check again), -1 if the
 * connection broke. Writes nothing: the transaction holds only a PING. */
static int watch_commit(fsck *f)
{
    const char *m[1] = {"MULTI"}, *p[1] = {"PING"}, *e[1] = {"EXEC"};
    redisReply *r;
    int ok;

    rpush(f, 1, m, NULL);
    rpush(f, 1, p, NULL);
    rpush(f, 1, e, NULL);
    for (int i = 0; i < 2; i++)
        if ((r = rget(f)) != NULL)
            freeReplyObject(r);
    if ((r = rget(f)) == NULL)
        return -1;
    ok = r->type == REDIS_REPLY_ARRAY;
    freeReplyObject(r);
    return ok;
}

static void unwatch(fsck *f)
{
    const char *u[1] = {"UNWATCH"};
    redisReply *r = rcmd(f, 1, u, NULL);
    if (r)
        freeReplyObject(r);
}

/* Runs check(f, a, b) until its view is consistent; then its problems are
 * published. A check returns what watch_commit returned. */
typedef int (*fsck_check)(fsck *f, const char *a, const char *b);

static void run_check(fsck *f, fsck_check check, const char *a, const char *b)
{
    for (int i = 0; i < FSCK_RETRIES && !f->broken; i++) {
        int r;
        json_array_clear(f->pending);
        r = check(f, a, b);
        if (r != 0)
            break;
        f->n.retries++;
        unwatch(f);
    }
    if (f->broken) {
        json_array_clear(f->pending);
        return;
    }
    fsck_flush(f);
}

/* --- small helpers ------------------------------------------------------------- */

static const char *rk(const fsck *f, char *buf, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static const char *rk(const fsck *f, char *buf, const char *fmt, ...)
{
    va_list ap;
    int p = snprintf(buf, KGC_RKEY_MAX, "%s", f->prefix);

    va_start(ap, fmt);
    vsnprintf(buf + p, KGC_RKEY_MAX - (size_t)p, fmt, ap);
    va_end(ap);
    return buf;
}

static char *xstrdup(const char *s)
{
    char *d = strdup(s);
    if (d == NULL) {
        fputs("error: internal: out of memory\n", stderr);
        abort();
    }
    return d;
}

/* A JSON document from a string reply, or NULL. */
static json_t *reply_json(const redisReply *r)
{
    if (r == NULL || r->type != REDIS_REPLY_STRING)
        return NULL;
    return json_loadb(r->str, r->len, 0, NULL);
}

static int is_str(const redisReply *r)
{
    return r != NULL && r->type == REDIS_REPLY_STRING;
}

/* The field of an HGETALL reply, or NULL. */
static const char *hfield(const redisReply *r, const char *name)
{
    if (r == NULL || r->type != REDIS_REPLY_ARRAY)
        return NULL;
    for (size_t i = 0; i + 1 < r->elements; i += 2)
        if (r->element[i]->type == REDIS_REPLY_STRING && strcmp(r->element[i]->str, name) == 0 &&
            r->element[i + 1]->type == REDIS_REPLY_STRING)
            return r->element[i + 1]->str;
    return NULL;
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

static void set_add(json_t *set, const char *team, const char *id)
{
    json_t *sub = json_object_get(set, team);
    if (sub == NULL) {
        sub = json_object();
        json_object_set_new(set, team, sub);
    }
    json_object_set_new(sub, id, json_true());
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

/* --- pass 1: every key, every value: secrets and inventory ------------------ */

static void scan_value(fsck *f, const char *key, size_t keylen, const char *s, size_t len)
{
    const size_t hexlen = KGC_PEPPER_LEN * 2;

    f->n.values++;
    for (size_t i = 0; i + KGC_PEPPER_LEN <= len; i++) {
        if (memcmp(s + i, f->sec->pepper, KGC_PEPPER_LEN) == 0)
            problem(f, key, keylen, "holds the pepper (raw bytes)");
        if (len - i >= KGC_TOKEN_LEN && s[i] == 'k' &&
            memcmp(s + i, KGC_TOKEN_PREFIX, KGC_TOKEN_PREFIX_LEN) == 0 &&
            kgc_token_wellformed(s + i, KGC_TOKEN_LEN)) {
            char hint[KGC_HINT_MAX];
            problem(f, key, keylen, "holds a plain token (%s)", hint_ascii(s + i, hint));
        }
        if (len - i >= hexlen && (memcmp(s + i, f->sec->hex, hexlen) == 0 ||
                                  memcmp(s + i, f->sec->HEX, hexlen) == 0))
            problem(f, key, keylen, "holds the pepper (hex)");
    }
}

static void scan_reply(fsck *f, const char *key, size_t keylen, const redisReply *r)
{
    if (r == NULL)
        return;
    if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS)
        scan_value(f, key, keylen, r->str, r->len);
    else if (r->type == REDIS_REPLY_ARRAY)
        for (size_t i = 0; i < r->elements; i++)
            scan_reply(f, key, keylen, r->element[i]);
}

/* Notes a model key in the inventory (name without the prefix). */
static void inventory(fsck *f, const char *name, const char *type)
{
    char team[KGC_ID_MAX], id[KGC_RKEY_MAX];
    const char *rest;
    size_t tl;

    if (strncmp(name, "tok:", 4) == 0) {
        json_object_set_new(f->toks, name + 4, json_true());
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
        r = rcmd(f, 2, argv, lens);
        scan_reply(f, key, keylen, r);
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
            r = rcmd(f, 4, argv, lens);
            if (r == NULL)
                return;
            scan_reply(f, key, keylen, r);
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
        r = rcmd(f, 4, argv, lens);
        scan_reply(f, key, keylen, r);
        if (r)
            freeReplyObject(r);
    }
}

static void pass_scan(fsck *f)
{
    char cursor[64] = "0";

    do {
        const char *argv[6] = {"SCAN", cursor, "MATCH", "*", "COUNT", FSCK_SCAN_COUNT};
        redisReply *r = rcmd(f, 6, argv, NULL), *keys, **types;

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
            rpush(f, 2, t, tl);
        }
        for (size_t i = 0; i < keys->elements; i++)
            types[i] = rget(f);
        for (size_t i = 0; i < keys->elements && !f->broken; i++) {
            const redisReply *k = keys->element[i];
            const char *type = types[i] && types[i]->type == REDIS_REPLY_STATUS ? types[i]->str : "none";

            if (strcmp(type, "none") == 0)
                continue;           /* expired or deleted since SCAN saw it */
            f->n.keys++;
            scan_value(f, k->str, k->len, k->str, k->len);
            scan_key(f, k->str, k->len, type);
            if (k->len > f->plen && memcmp(k->str, f->prefix, f->plen) == 0 &&
                strlen(k->str) == k->len)
                inventory(f, k->str + f->plen, type);
        }
        free_replies(types, keys->elements);
        freeReplyObject(r);
        fsck_flush(f);
    } while (!f->broken && strcmp(cursor, "0") != 0);
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
            keys[k] = xstrdup(rk(f, name, KGC_RK_TOKEN, h));
            who[k++] = uid;
        }
        recs = wread(f, k, keys, "HGETALL", NULL);
        ttls = recs ? wread(f, k, keys, "PTTL", NULL) : NULL;
        for (size_t q = 0; recs && ttls && q < k; q++) {
            json_t *entry = json_object_get(tokens, who[q]);
            const char *rk_id = hfield(recs[q], "key_id"), *ru = hfield(recs[q], "user_id");
            const char *rt = hfield(recs[q], "team_id"), *rtid = hfield(recs[q], "token_id");
            const char *rexp = hfield(recs[q], "expires_ms");

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
        free_replies(recs, k);
        free_replies(ttls, k);
        for (size_t q = 0; q < k; q++)
            free(keys[q]);
        free(keys);
        free(who);
    }
}

static int check_team(fsck *f, const char *T, const char *unused)
{
    char kt[KGC_RKEY_MAX], kk[KGC_RKEY_MAX], kw[KGC_RKEY_MAX], name[KGC_RKEY_MAX];
    redisReply *rt, *rkeys, *rwal, **docs = NULL, **wex = NULL;
    json_t *team, *members, *kids, *wids, *team_wallets, *v;
    const char *fk, *uid, *id;
    char **dkeys = NULL, **wkeys = NULL;
    size_t nk = 0, nw = 0, i;
    int owners = 0, frees = 0, rc;

    (void)unused;
    rk(f, kt, KGC_RK_TEAM, T);
    rk(f, kk, KGC_RK_KEYS, T);
    rk(f, kw, KGC_RK_WALLETS, T);
    {
        const char *w[4] = {"WATCH", kt, kk, kw}, *g[2] = {"GET", kt};
        const char *z[4] = {"ZRANGE", kk, "0", "-1"}, *zw[4] = {"ZRANGE", kw, "0", "-1"};
        redisReply *wr = rcmd(f, 4, w, NULL);
        if (wr)
            freeReplyObject(wr);
        rt = rcmd(f, 2, g, NULL);
        rkeys = rcmd(f, 4, z, NULL);
        rwal = rcmd(f, 4, zw, NULL);
    }
    if (f->broken) {
        if (rt) freeReplyObject(rt);
        if (rkeys) freeReplyObject(rkeys);
        if (rwal) freeReplyObject(rwal);
        return -1;
    }
    team = reply_json(rt);
    members = json_object_get(team, "members");
    fk = json_string_value(json_object_get(team, "free_key_id"));
    if (team == NULL || !json_is_object(members)) {
        PROBLEM(f, kt, "not a team document (JSON with members)");
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
            if (is_str(rkeys->element[i]))
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
        dkeys[i++] = xstrdup(rk(f, name, KGC_RK_KEY, T, id));
    docs = wread(f, nk, dkeys, "GET", NULL);

    /* Wallets: the zset's and the ones SCAN found. */
    wids = json_object();
    if (rwal->type == REDIS_REPLY_ARRAY)
        for (i = 0; i < rwal->elements; i++)
            if (is_str(rwal->element[i]))
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
        wkeys[i++] = xstrdup(rk(f, name, KGC_RK_WALLET, T, id));
    wex = docs ? wread(f, nw, wkeys, "EXISTS", NULL) : NULL;
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
        if ((doc = reply_json(d)) == NULL || !json_is_object(doc)) {
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
        json_decref(doc);
    }
    if (team != NULL && frees != 1)
        PROBLEM(f, kt, "has %d keys of kind free, not exactly one", frees);

    free_replies(docs, nk);
    free_replies(wex, nw);
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
    freeReplyObject(rt);
    freeReplyObject(rkeys);
    freeReplyObject(rwal);
    if (f->broken)
        return -1;
    rc = watch_commit(f);
    if (rc == 1)
        f->n.teams++;
    return rc;
}

/* --- pass 2: token records --------------------------------------------------- */

static int check_token(fsck *f, const char *hash, const char *unused)
{
    char tk[KGC_RKEY_MAX], kk[KGC_RKEY_MAX], kt[KGC_ID_MAX];
    redisReply *rec, *ttl, *kd;
    const char *kid, *team, *user, *tid, *exp;
    json_t *doc, *entry;
    long long expires = -1;
    int rc;

    (void)unused;
    rk(f, tk, KGC_RK_TOKEN, hash);
    if (!is_hash_hex(hash, strlen(hash))) {
        PROBLEM(f, tk, "the name is not tok:<64 lowercase hex>");
        return 1;
    }
    rec = wread1(f, tk, "HGETALL", NULL);
    ttl = rec ? wread1(f, tk, "PTTL", NULL) : NULL;
    if (ttl == NULL) {
        if (rec)
            freeReplyObject(rec);
        return -1;
    }
    if (rec->type == REDIS_REPLY_ARRAY && rec->elements == 0) {
        freeReplyObject(rec);          /* gone since pass 1: rotated or expired */
        freeReplyObject(ttl);
        return watch_commit(f);
    }
    kid = hfield(rec, "key_id");
    team = hfield(rec, "team_id");
    user = hfield(rec, "user_id");
    tid = hfield(rec, "token_id");
    exp = hfield(rec, "expires_ms");
    if (rec->type != REDIS_REPLY_ARRAY || kid == NULL || team == NULL || user == NULL ||
        tid == NULL || exp == NULL || parse_ll(exp, &expires) != 0) {
        PROBLEM(f, tk, "not a token record (hash of key_id, team_id, user_id, token_id, expires_ms)");
        freeReplyObject(rec);
        freeReplyObject(ttl);
        return watch_commit(f);
    }
    if (kgc_id_team_of(kid, 'k', kt) != 0 || strcmp(kt, team) != 0) {
        PROBLEM(f, tk, "key %s is not a key of its team_id %s", kid, team);
        freeReplyObject(rec);
        freeReplyObject(ttl);
        return watch_commit(f);
    }
    rk(f, kk, KGC_RK_KEY, team, kid);
    kd = wread1(f, kk, "GET", NULL);
    if (kd == NULL) {
        freeReplyObject(rec);
        freeReplyObject(ttl);
        return -1;
    }
    doc = reply_json(kd);
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
    rc = watch_commit(f);
    if (rc == 1)
        f->n.tokens++;
    return rc;
}

/* --- pass 2: wallets and their ledgers ---------------------------------------- */

typedef struct chain {
    long long sum;                   /* credits - debits */
    long long running;               /* the chain, resynchronised after a break */
    long long index;                 /* entries seen, oldest first */
    int breaks;
    json_t *rids;                    /* "key_id request_id" -> at of the last debit */
} chain;

static void ledger_entry(fsck *f, const char *lk, const char *T, chain *c, const redisReply *e)
{
    json_t *doc = reply_json(e), *amt, *bal, *at;
    const char *type, *kid, *rid;
    long long a, b;
    char kt[KGC_ID_MAX];

    c->index++;
    f->n.entries++;
    type = json_string_value(json_object_get(doc, "type"));
    amt = json_object_get(doc, "amount_micros");
    bal = json_object_get(doc, "balance_micros");
    if (doc == NULL || type == NULL || !json_is_integer(amt) || !json_is_integer(bal) ||
        (strcmp(type, "credit") != 0 && strcmp(type, "debit") != 0)) {
        PROBLEM(f, lk, "entry %lld (from the oldest) is not a ledger entry", c->index);
        json_decref(doc);
        return;
    }
    a = json_integer_value(amt);
    b = json_integer_value(bal);
    if (a < 0 || (a == 0 && strcmp(type, "credit") == 0))
        PROBLEM(f, lk, "entry %lld: %s of %lld micros", c->index, type, a);
    if (type[0] == 'c') {
        c->sum += a;
        c->running += a;
    } else {
        c->sum -= a;
        c->running -= a;
        kid = json_string_value(json_object_get(doc, "key_id"));
        rid = json_string_value(json_object_get(doc, "request_id"));
        at = json_object_get(doc, "at");
        if (kid == NULL || kgc_id_team_of(kid, 'k', kt) != 0 || strcmp(kt, T) != 0)
            PROBLEM(f, lk, "entry %lld: debit by a key not of team %s", c->index, T);
        else if (rid != NULL) {
            char id[600];
            json_t *prev;
            snprintf(id, sizeof id, "%s %s", kid, rid);
            prev = json_object_get(c->rids, id);
            if (prev != NULL && json_integer_value(at) - json_integer_value(prev) < FSCK_REPLAY_MS)
                PROBLEM(f, lk, "entry %lld: request id %s of key %s charged twice", c->index, rid,
                        kid);
            json_object_set_new(c->rids, id, json_integer(json_integer_value(at)));
        }
    }
    if (b != c->running) {
        if (++c->breaks <= FSCK_CHAIN_REPORTS)
            PROBLEM(f, lk, "entry %lld: balance_micros %lld, but the entries before it give %lld",
                    c->index, b, c->running);
        c->running = b;
    }
    if (b < 0)
        PROBLEM(f, lk, "entry %lld: the balance went below zero (%lld)", c->index, b);
    json_decref(doc);
}

static void check_wallet(fsck *f, const char *T, const char *W)
{
    char wk[KGC_RKEY_MAX], lk[KGC_RKEY_MAX], a[32], b[32];
    const char *m[1] = {"MULTI"}, *e[1] = {"EXEC"};
    const char *h[2] = {"HGETALL", wk}, *l[2] = {"LLEN", lk};
    redisReply *r, *ex;
    const char *bal, *wid, *tid;
    long long balance = 0, len = 0;
    chain c = {0, 0, 0, 0, NULL};

    json_array_clear(f->pending);
    rk(f, wk, KGC_RK_WALLET, T, W);
    rk(f, lk, KGC_RK_LEDGER, T, W);
    /* Balance and ledger length at one instant (one slot: one MULTI). */
    rpush(f, 1, m, NULL);
    rpush(f, 2, h, NULL);
    rpush(f, 2, l, NULL);
    rpush(f, 1, e, NULL);
    for (int i = 0; i < 3; i++)
        if ((r = rget(f)) != NULL)
            freeReplyObject(r);
    if ((ex = rget(f)) == NULL)
        return;
    if (ex->type != REDIS_REPLY_ARRAY || ex->elements != 2 ||
        ex->element[0]->type != REDIS_REPLY_ARRAY) {
        PROBLEM(f, wk, "could not read the wallet and its ledger (wrong types?)");
        freeReplyObject(ex);
        fsck_flush(f);
        return;
    }
    if (ex->element[0]->elements == 0) {   /* deleted? wallets never are */
        PROBLEM(f, lk, "a ledger without a wallet");
        freeReplyObject(ex);
        fsck_flush(f);
        return;
    }
    bal = hfield(ex->element[0], "balance_micros");
    wid = hfield(ex->element[0], "wallet_id");
    tid = hfield(ex->element[0], "team_id");
    if (wid == NULL || strcmp(wid, W) != 0 || tid == NULL || strcmp(tid, T) != 0)
        PROBLEM(f, wk, "wallet_id or team_id does not match the key name");
    if (hfield(ex->element[0], "name") == NULL)
        PROBLEM(f, wk, "has no name");
    if (parse_ll(bal, &balance) != 0)
        PROBLEM(f, wk, "balance_micros is not an integer");
    else if (balance < 0)
        PROBLEM(f, wk, "balance_micros %lld is below zero", balance);
    if (ex->element[1]->type == REDIS_REPLY_INTEGER)
        len = ex->element[1]->integer;
    freeReplyObject(ex);
    if (json_object_get(f->teams, T) == NULL)
        PROBLEM(f, wk, "a wallet of team %s, which has no team document", T);

    /* The oldest `len` entries, oldest first, by negative index. */
    c.rids = json_object();
    for (long long done = 0; done < len && !f->broken;) {
        long long n = len - done < FSCK_CHUNK ? len - done : FSCK_CHUNK;
        const char *argv[4] = {"LRANGE", lk, a, b};
        snprintf(a, sizeof a, "%lld", -(done + n));
        snprintf(b, sizeof b, "%lld", -(done + 1));
        r = rcmd(f, 4, argv, NULL);
        if (r == NULL)
            break;
        if (r->type != REDIS_REPLY_ARRAY || (long long)r->elements != n) {
            PROBLEM(f, lk, "ledger shrank while being read (it is never trimmed)");
            freeReplyObject(r);
            break;
        }
        for (size_t i = r->elements; i-- > 0;)
            ledger_entry(f, lk, T, &c, r->element[i]);
        freeReplyObject(r);
        done += n;
    }
    json_decref(c.rids);
    if (f->broken) {
        json_array_clear(f->pending);
        return;
    }
    if (c.breaks > FSCK_CHAIN_REPORTS)
        PROBLEM(f, lk, "%d more entries whose balance_micros breaks the chain",
                c.breaks - FSCK_CHAIN_REPORTS);
    if (bal != NULL && c.sum != balance)
        PROBLEM(f, wk, "balance_micros %lld, but credits - debits of its ledger = %lld "
                "(%lld entries)", balance, c.sum, len);
    f->n.wallets++;
    fsck_flush(f);
}

/* --- pass 2: users ------------------------------------------------------------ */

static int check_user(fsck *f, const char *uid, const char *unused)
{
    char uk[KGC_RKEY_MAX], ek[KGC_RKEY_MAX];
    redisReply *u, *em = NULL;
    json_t *doc;
    const char *email;
    int rc;

    (void)unused;
    rk(f, uk, KGC_RK_USER, uid);
    if ((u = wread1(f, uk, "GET", NULL)) == NULL)
        return -1;
    doc = reply_json(u);
    email = json_string_value(json_object_get(doc, "email"));
    if (u->type == REDIS_REPLY_NIL) {
        /* gone since pass 1 */
    } else if (doc == NULL || !json_is_string(json_object_get(doc, "user_id")) ||
               strcmp(json_string_value(json_object_get(doc, "user_id")), uid) != 0 ||
               email == NULL) {
        PROBLEM(f, uk, "not a user document (user_id %s, email)", uid);
    } else if ((em = wread1(f, rk(f, ek, KGC_RK_EMAIL, email), "GET", NULL)) != NULL &&
               (!is_str(em) || strcmp(em->str, uid) != 0)) {
        PROBLEM(f, uk, "its email's record %s does not name this user", ek);
    }
    json_decref(doc);
    freeReplyObject(u);
    if (em)
        freeReplyObject(em);
    if (f->broken)
        return -1;
    rc = watch_commit(f);
    if (rc == 1)
        f->n.users++;
    return rc;
}

static int check_email(fsck *f, const char *email, const char *unused)
{
    char ek[KGC_RKEY_MAX], uk[KGC_RKEY_MAX];
    redisReply *e, *u = NULL;
    json_t *doc = NULL;

    (void)unused;
    rk(f, ek, KGC_RK_EMAIL, email);
    if ((e = wread1(f, ek, "GET", NULL)) == NULL)
        return -1;
    if (e->type == REDIS_REPLY_NIL) {
        /* gone since pass 1 */
    } else if (!is_str(e) || !kgc_id_plausible(e->str)) {
        PROBLEM(f, ek, "does not name a user id");
    } else if ((u = wread1(f, rk(f, uk, KGC_RK_USER, e->str), "GET", NULL)) != NULL) {
        doc = reply_json(u);
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
    return f->broken ? -1 : watch_commit(f);
}

/* --- the command ---------------------------------------------------------------- */

static void check_catalog(fsck *f)
{
    char ck[KGC_RKEY_MAX], err[256];
    redisReply *r = rcmd2(f, "GET", rk(f, ck, KGC_RK_CATALOG));
    kgc_catalog *cat;

    if (r == NULL)
        return;
    if (r->type == REDIS_REPLY_NIL) {
        if (json_object_size(f->teams) > 0)
            PROBLEM(f, ck, "no catalog published (gateways cannot price requests)");
    } else if (!is_str(r) || (cat = kgc_catalog_parse(r->str, r->len, ck, err, sizeof err)) == NULL) {
        PROBLEM(f, ck, "not a valid catalog");
    } else {
        kgc_catalog_free(cat);
    }
    freeReplyObject(r);
    fsck_flush(f);
}

static void pass_model(fsck *f)
{
    const char *id, *team;
    json_t *v, *set;

    /* Model keys of a team that has no team document. SCAN may have
     * returned a key of a team made during the scan without its team
     * document: look again before reporting, and check such a team too. */
    json_object_foreach(f->tagged, team, v)
        if (json_object_get(f->teams, team) == NULL) {
            char tk[KGC_RKEY_MAX];
            redisReply *r = rcmd2(f, "EXISTS", rk(f, tk, KGC_RK_TEAM, team));
            if (r != NULL && r->type == REDIS_REPLY_INTEGER && r->integer == 1)
                json_object_set_new(f->teams, team, json_true());
            else if (r != NULL)
                problem(f, json_string_value(v), json_string_length(v),
                        "belongs to team %s, which has no team document", team);
            if (r)
                freeReplyObject(r);
            fsck_flush(f);
        }
    json_object_foreach(f->teams, team, v)
        run_check(f, check_team, team, NULL);
    json_object_foreach(f->toks, id, v)
        run_check(f, check_token, id, NULL);
    json_object_foreach(f->wallets, team, set)
        json_object_foreach(set, id, v)
            check_wallet(f, team, id);
    json_object_foreach(f->ledgers, team, set)
        json_object_foreach(set, id, v)
            if (json_object_get(json_object_get(f->wallets, team), id) == NULL)
                check_wallet(f, team, id);   /* reports the ledger without a wallet */
    json_object_foreach(f->users, id, v)
        run_check(f, check_user, id, NULL);
    json_object_foreach(f->emails, id, v)
        run_check(f, check_email, id, NULL);
    check_catalog(f);
}

static redisContext *fsck_connect(const kgc_config *cfg, int timeout_ms)
{
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    redisContext *rc;

    if (cfg->redis_unix[0])
        rc = redisConnectUnixWithTimeout(cfg->redis_unix, tv);
    else
        rc = redisConnectWithTimeout(cfg->redis_host, cfg->redis_port, tv);
    if (rc != NULL && rc->err == 0)
        redisSetTimeout(rc, tv);
    return rc;
}

static void fsck_free(fsck *f)
{
    if (f->rc)
        redisFree(f->rc);
    if (f->sec) {
        if (f->sec->pepper)
            sodium_free(f->sec->pepper);
        sodium_free(f->sec);
    }
    json_decref(f->pending);
    json_decref(f->problems);
    json_decref(f->teams);
    json_decref(f->tagged);
    json_decref(f->keydocs);
    json_decref(f->wallets);
    json_decref(f->ledgers);
    json_decref(f->toks);
    json_decref(f->users);
    json_decref(f->emails);
}

int cli_cmd_fsck(cli_ctx *ctx, int argc, char **argv);

int cli_cmd_fsck(cli_ctx *ctx, int argc, char **argv)
{
    cli_strlist pos;
    kgc_config cfg;
    const char *path;
    char err[600];
    fsck f;
    long nprob;
    int rc;

    if (cli_args(ctx, argc, argv, NULL, &pos, 0, 0) < 0)
        return ctx->status;
    path = ctx->config_path ? ctx->config_path : FSCK_DEFAULT_CONFIG;
    if (kgc_config_load(path, &cfg, err, sizeof err) != 0) {
        fprintf(stderr, "error: usage: %s\n", err);
        return CLI_EXIT_USAGE;
    }
    memset(&f, 0, sizeof f);
    f.json = ctx->json;
    f.prefix = cfg.key_prefix;
    f.plen = strlen(cfg.key_prefix);
    f.sec = sodium_malloc(sizeof *f.sec);
    if (f.sec == NULL) {
        fputs("error: internal: out of memory\n", stderr);
        return CLI_EXIT_REFUSED;
    }
    memset(f.sec, 0, sizeof *f.sec);
    if (kgc_pepper_load(cfg.pepper_file, &f.sec->pepper, err, sizeof err) != 0) {
        fprintf(stderr, "error: usage: %s\n", err);
        fsck_free(&f);
        return CLI_EXIT_USAGE;
    }
    sodium_bin2hex(f.sec->hex, sizeof f.sec->hex, f.sec->pepper, KGC_PEPPER_LEN);
    for (size_t i = 0; i < sizeof f.sec->HEX; i++)
        f.sec->HEX[i] = (char)(f.sec->hex[i] >= 'a' && f.sec->hex[i] <= 'f' ? f.sec->hex[i] - 32
                                                                             : f.sec->hex[i]);
    f.pending = json_array();
    f.problems = json_array();
    f.teams = json_object();
    f.tagged = json_object();
    f.keydocs = json_object();
    f.wallets = json_object();
    f.ledgers = json_object();
    f.toks = json_object();
    f.users = json_object();
    f.emails = json_object();

    f.rc = fsck_connect(&cfg, ctx->timeout_ms);
    if (f.rc == NULL || f.rc->err) {
        fprintf(stderr, "error: unreachable: redis %s%s: %s\n",
                cfg.redis_unix[0] ? "unix:" : "", cfg.redis_unix[0] ? cfg.redis_unix : cfg.redis_host,
                f.rc ? f.rc->errstr : "out of memory");
        fsck_free(&f);
        return CLI_EXIT_UNREACHABLE;
    }
    pass_scan(&f);
    if (!f.broken)
        pass_model(&f);
    if (f.broken) {
        fprintf(stderr, "error: unreachable: redis: %s (the check is incomplete)\n", f.broken_why);
        fsck_free(&f);
        return CLI_EXIT_UNREACHABLE;
    }
    nprob = (long)json_array_size(f.problems);
    if (f.json) {
        json_t *out = json_pack("{s:b,s:O,s:{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}}",
                                "clean", nprob == 0, "problems", f.problems, "counts",
                                "redis_keys", (json_int_t)f.n.keys, "values", (json_int_t)f.n.values,
                                "teams", (json_int_t)f.n.teams, "keys", (json_int_t)f.n.apikeys,
                                "token_records", (json_int_t)f.n.tokens, "wallets",
                                (json_int_t)f.n.wallets, "ledger_entries", (json_int_t)f.n.entries,
                                "users", (json_int_t)f.n.users, "rechecks", (json_int_t)f.n.retries);
        char *text = json_dumps(out, JSON_COMPACT);
        puts(text ? text : "{}");
        free(text);
        json_decref(out);
    } else {
        printf("fsck: %ld Redis keys, %ld values scanned; %ld teams, %ld keys, %ld token records, "
               "%ld wallets (%ld ledger entries), %ld users checked\n",
               f.n.keys, f.n.values, f.n.teams, f.n.apikeys, f.n.tokens, f.n.wallets, f.n.entries,
               f.n.users);
        if (nprob == 0)
            printf("fsck: clean\n");
        else
            printf("fsck: %ld problem%s found\n", nprob, nprob == 1 ? "" : "s");
    }
    rc = nprob == 0 ? CLI_EXIT_OK : CLI_EXIT_REFUSED;
    fsck_free(&f);
    return rc;
}

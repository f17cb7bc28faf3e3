/*
 * kg_cache.c - the in-process token cache and the key document parser.
 *
 * The cache maps a token's keyed hash to what the token resolved to (ids,
 * key status, the key's parsed service policies). Entries live at most
 * cache_ttl_ms; "key <id>" invalidations drop them earlier. It holds no
 * money: every charge goes to Redis.
 */
#include "kg_internal.h"

#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static size_t bucket_of(const kg_cache *c, const char *hash)
{
    /* The hash is a keyed BLAKE2b: its first hex digits are uniform. */
    size_t h = 0;
    for (int i = 0; i < 8; i++) {
        char ch = hash[i];
        h = (h << 4) | (size_t)(ch <= '9' ? ch - '0' : (ch | 0x20) - 'a' + 10);
    }
    return h & (c->nbuckets - 1);
}

/* Direct-mapped: a slot per fingerprint's low bits. A fingerprint is a
 * keyed 128-bit PRF of the whole token, so an equal one means the same
 * token (a collision needs about 2^64 tokens, and the key is secret).
 * It keeps no token: only what the token's hash would tell anyway. */
#define KG_MEMO_SLOTS 256

struct kg_tokmemo {
    unsigned char key[crypto_shorthash_siphashx24_KEYBYTES];
    struct {
        unsigned char fp[crypto_shorthash_siphashx24_BYTES];
        char hash[KGC_HASH_HEX_LEN + 1];
    } slot[KG_MEMO_SLOTS];
};

static int memo_fp(const kg_tokmemo *m, const char *tok, size_t len, unsigned char *fp)
{
    if (tok == NULL || len != KGC_TOKEN_LEN)
        return -1;
    crypto_shorthash_siphashx24(fp, (const unsigned char *)tok, len, m->key);
    return 0;
}

int kg_tokmemo_get(kg_cache *c, const char *tok, size_t len, char *hash_out)
{
    unsigned char fp[crypto_shorthash_siphashx24_BYTES];
    size_t i;

    if (c->memo == NULL || memo_fp(c->memo, tok, len, fp) != 0)
        return 0;
    i = fp[0] % KG_MEMO_SLOTS;
    if (c->memo->slot[i].hash[0] == '\0' || sodium_memcmp(c->memo->slot[i].fp, fp, sizeof fp) != 0)
        return 0;
    memcpy(hash_out, c->memo->slot[i].hash, KGC_HASH_HEX_LEN + 1);
    return 1;
}

void kg_tokmemo_put(kg_cache *c, const char *tok, size_t len, const char *hash)
{
    unsigned char fp[crypto_shorthash_siphashx24_BYTES];
    size_t i;

    if (c->memo == NULL || memo_fp(c->memo, tok, len, fp) != 0)
        return;
    i = fp[0] % KG_MEMO_SLOTS;
    memcpy(c->memo->slot[i].fp, fp, sizeof fp);
    memcpy(c->memo->slot[i].hash, hash, KGC_HASH_HEX_LEN + 1);
}

int kg_cache_init(kg_cache *c, size_t max)
{
    size_t n = 64;
    while (n < max / 2)
        n <<= 1;
    c->buckets = calloc(n, sizeof *c->buckets);
    if (c->buckets == NULL)
        return -1;
    if ((c->memo = calloc(1, sizeof *c->memo)) == NULL) {
        free(c->buckets);
        c->buckets = NULL;
        return -1;
    }
    randombytes_buf(c->memo->key, sizeof c->memo->key);
    c->nbuckets = n;
    c->count = 0;
    c->max = max;
    return 0;
}

static void entry_free(kg_entry *e)
{
    for (size_t i = 0; i < e->nsvcs; i++) {
        for (size_t j = 0; j < e->svcs[i].nmodels; j++)
            free(e->svcs[i].models[j]);
        free(e->svcs[i].models);
        free(e->svcs[i].id);
    }
    free(e->svcs);
    free(e);
}

void kg_entry_unref(kg_entry *e)
{
    if (e != NULL && --e->refs == 0)
        entry_free(e);
}

void kg_cache_clear(kg_cache *c)
{
    for (size_t i = 0; i < c->nbuckets; i++) {
        kg_entry *e = c->buckets[i], *next;
        for (; e != NULL; e = next) {
            next = e->next;
            e->next = NULL;
            kg_entry_unref(e);
        }
        c->buckets[i] = NULL;
    }
    c->count = 0;
}

void kg_cache_free(kg_cache *c)
{
    if (c->buckets == NULL)
        return;
    kg_cache_clear(c);
    free(c->buckets);
    c->buckets = NULL;
    if (c->memo != NULL)
        sodium_memzero(c->memo, sizeof *c->memo);
    free(c->memo);
    c->memo = NULL;
}

/* Unlinks every entry for which drop(e, arg) says 1. */
static void sweep(kg_cache *c, int (*drop)(const kg_entry *, const void *), const void *arg)
{
    for (size_t i = 0; i < c->nbuckets; i++) {
        kg_entry **pp = &c->buckets[i];
        while (*pp != NULL) {
            kg_entry *e = *pp;
            if (drop(e, arg)) {
                *pp = e->next;
                e->next = NULL;
                c->count--;
                kg_entry_unref(e);
            } else {
                pp = &e->next;
            }
        }
    }
}

static int is_stale(const kg_entry *e, const void *arg)
{
    return e->stale_at <= *(const int64_t *)arg;
}

static int of_key(const kg_entry *e, const void *arg)
{
    return strcmp(e->key_id, (const char *)arg) == 0;
}

kg_entry *kg_cache_get(kg_cache *c, const char *hash, int64_t now_mono)
{
    kg_entry **pp = &c->buckets[bucket_of(c, hash)];

    for (; *pp != NULL; pp = &(*pp)->next) {
        kg_entry *e = *pp;
        if (memcmp(e->hash, hash, KGC_HASH_HEX_LEN) != 0)
            continue;
        if (e->stale_at <= now_mono) {
            *pp = e->next;
            e->next = NULL;
            c->count--;
            kg_entry_unref(e);
            return NULL;
        }
        e->refs++;
        return e;
    }
    return NULL;
}

void kg_cache_put(kg_cache *c, kg_entry *e, int64_t now_mono)
{
    kg_entry **pp;

    if (c->count >= c->max) {
        sweep(c, is_stale, &now_mono);
        if (c->count >= c->max)     /* all fresh: start over rather than track age */
            kg_cache_clear(c);
    }
    pp = &c->buckets[bucket_of(c, e->hash)];
    for (; *pp != NULL; pp = &(*pp)->next)
        if (memcmp((*pp)->hash, e->hash, KGC_HASH_HEX_LEN) == 0) {
            kg_entry *old = *pp;
            *pp = old->next;
            old->next = NULL;
            c->count--;
            kg_entry_unref(old);
            break;
        }
    e->refs++;
    e->next = c->buckets[bucket_of(c, e->hash)];
    c->buckets[bucket_of(c, e->hash)] = e;
    c->count++;
}

void kg_cache_drop_key(kg_cache *c, const char *key_id)
{
    sweep(c, of_key, key_id);
}

const kg_svcpol *kg_entry_policy(const kg_entry *e, const char *service)
{
    for (size_t i = 0; i < e->nsvcs; i++)
        if (strcmp(e->svcs[i].id, service) == 0)
            return &e->svcs[i];
    return NULL;
}

static int copy_id(char *dst, const char *src)
{
    size_t n = strlen(src);
    if (n == 0 || n >= KG_ID_LEN)
        return -1;
    memcpy(dst, src, n + 1);
    return 0;
}

/* Parses one entry of the key document's "services" object. */
static int parse_policy(const char *sid, json_t *jp, kg_svcpol *sp, char *err, size_t errlen)
{
    json_t *pol = json_object_get(jp, "policy");
    const char *p = json_is_string(pol) ? json_string_value(pol) : "";

    sp->id = strdup(sid);
    if (sp->id == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (strcmp(p, "free") == 0)
        return 0;
    if (strcmp(p, "payg") != 0) {
        snprintf(err, errlen, "service '%.64s': unknown policy", sid);
        return -1;
    }
    sp->payg = 1;
    json_t *w = json_object_get(jp, "wallet"), *models = json_object_get(jp, "models");
    if (!json_is_string(w) || copy_id(sp->wallet, json_string_value(w)) != 0) {
        snprintf(err, errlen, "service '%.64s': payg without a wallet", sid);
        return -1;
    }
    if (!json_is_array(models)) {
        snprintf(err, errlen, "service '%.64s': payg without models", sid);
        return -1;
    }
    sp->models = calloc(json_array_size(models) + 1, sizeof *sp->models);
    if (sp->models == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < json_array_size(models); i++) {
        json_t *m = json_array_get(models, i);
        if (!json_is_string(m)) {
            snprintf(err, errlen, "service '%.64s': a model is not a string", sid);
            return -1;
        }
        if ((sp->models[sp->nmodels] = strdup(json_string_value(m))) == NULL) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        sp->nmodels++;
    }
    return 0;
}

/* An optional non-negative integer member: 0 when absent or null, -1 when
 * present with another type or negative (a damaged document). */
static int opt_count(json_t *root, const char *name, int64_t *out)
{
    json_t *v = json_object_get(root, name);

    *out = 0;
    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return -1;
    *out = json_integer_value(v);
    return 0;
}

/* rate_limits.<sid> of the key document onto its policy. */
static int parse_rate(json_t *rates, kg_svcpol *sp, char *err, size_t errlen)
{
    json_t *r = json_object_get(rates, sp->id);

    if (r == NULL || json_is_null(r))
        return 0;
    if (!json_is_object(r) || opt_count(r, "per_second", &sp->per_second) != 0 ||
        opt_count(r, "per_minute", &sp->per_minute) != 0) {
        snprintf(err, errlen, "service '%.64s': bad rate_limits", sp->id);
        return -1;
    }
    return 0;
}

kg_entry *kg_entry_build(const char *hash, const char *key_id, const char *team_id,
                         const char *user_id, int64_t expires_ms,
                         const char *doc, size_t doclen, char *err, size_t errlen)
{
    json_error_t je;
    json_t *root = json_loadb(doc, doclen, 0, &je), *v, *svcs, *users, *rates;
    kg_entry *e = calloc(1, sizeof *e);
    const char *sid;
    json_t *jp;

    if (e == NULL || root == NULL || !json_is_object(root)) {
        snprintf(err, errlen, e == NULL ? "out of memory" : "key document is not a JSON object");
        goto err;
    }
    e->refs = 1;
    memcpy(e->hash, hash, KGC_HASH_HEX_LEN + 1);
    if (copy_id(e->key_id, key_id) != 0 || copy_id(e->team_id, team_id) != 0 ||
        copy_id(e->user_id, user_id) != 0) {
        snprintf(err, errlen, "token record has a bad id");
        goto err;
    }
    e->expires_ms = expires_ms;
    v = json_object_get(root, "key_id");
    if (!json_is_string(v) || strcmp(json_string_value(v), key_id) != 0) {
        snprintf(err, errlen, "key document does not match its token record");
        goto err;
    }
    v = json_object_get(root, "status");
    if (!json_is_string(v)) {
        snprintf(err, errlen, "key document has no status");
        goto err;
    }
    if (strcmp(json_string_value(v), "active") != 0)
        e->state = KG_ENT_REVOKED;   /* anything but "active" refuses, fail closed */
    users = json_object_get(root, "users");
    if (e->state == KG_ENT_ACTIVE) {
        size_t i, n = json_is_array(users) ? json_array_size(users) : 0;
        for (i = 0; i < n; i++) {
            json_t *u = json_array_get(users, i);
            if (json_is_string(u) && strcmp(json_string_value(u), user_id) == 0)
                break;
        }
        if (i == n)
            e->state = KG_ENT_UNASSIGNED;
    }
    if (e->state == KG_ENT_ACTIVE && expires_ms == 0) {
        /* Only the user's current token counts; a record whose hash the key
         * no longer names (one left behind by a lost race between two
         * writers) is not a token. A rotated token in its grace period
         * carries expires_ms and is let through until then. */
        json_t *cur = json_object_get(json_object_get(json_object_get(root, "tokens"), user_id),
                                      "hash");
        if (!json_is_string(cur) || strcmp(json_string_value(cur), hash) != 0)
            e->state = KG_ENT_UNASSIGNED;
    }
    /* Expiry, budgets and rate limits (issue 13): optional; a bad value
     * refuses every request of the key (fail closed). */
    if (opt_count(root, "expires_at", &e->key_expires_ms) != 0 ||
        opt_count(root, "budget_day_micros", &e->budget_day) != 0 ||
        opt_count(root, "budget_month_micros", &e->budget_month) != 0) {
        snprintf(err, errlen, "key document: bad expires_at or budget");
        goto err;
    }
    rates = json_object_get(root, "rate_limits");
    if (rates != NULL && !json_is_null(rates) && !json_is_object(rates)) {
        snprintf(err, errlen, "key document: 'rate_limits' is not an object");
        goto err;
    }
    svcs = json_object_get(root, "services");
    if (svcs != NULL && !json_is_object(svcs)) {
        snprintf(err, errlen, "key document: 'services' is not an object");
        goto err;
    }
    if (svcs != NULL && json_object_size(svcs) > 0) {
        e->svcs = calloc(json_object_size(svcs), sizeof *e->svcs);
        if (e->svcs == NULL) {
            snprintf(err, errlen, "out of memory");
            goto err;
        }
        json_object_foreach(svcs, sid, jp) {
            if (!json_is_object(jp)) {
                snprintf(err, errlen, "service '%.64s': policy is not an object", sid);
                goto err;
            }
            e->nsvcs++;
            if (parse_policy(sid, jp, &e->svcs[e->nsvcs - 1], err, errlen) != 0 ||
                parse_rate(rates, &e->svcs[e->nsvcs - 1], err, errlen) != 0)
                goto err;
        }
    }
    json_decref(root);
    return e;
err:
    json_decref(root);
    if (e != NULL)
        entry_free(e);
    return NULL;
}

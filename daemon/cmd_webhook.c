/*
 * cmd_webhook.c - webhook.set, webhook.get, webhook.delete,
 * webhook.deliveries: a team's webhook (one URL and its signing secret)
 * and the record of what keygated sent to it (webhook.h).
 *
 * The secret is generated here, returned once by the webhook.set that
 * made it (the row is marked secret: the answer is wiped after sending),
 * and kept in Redis because every attempt, after any restart, signs with
 * it. No other answer and no log line carries it: webhook.get shows a hint.
 */
#include "cmd.h"
#include "model.h"
#include "webhook.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DELIVERIES_DEFAULT 20
#define DELIVERIES_MAX 100

/* Value of field f in an HGETALL reply (flat array), or NULL. */
static const char *hget(json_t *flat, const char *f)
{
    for (size_t i = 0; i + 1 < json_array_size(flat); i += 2)
        if (json_is_string(json_array_get(flat, i)) &&
            strcmp(json_string_value(json_array_get(flat, i)), f) == 0)
            return json_string_value(json_array_get(flat, i + 1));
    return NULL;
}

static json_int_t hint(json_t *flat, const char *f)
{
    const char *v = hget(flat, f);
    return v ? (json_int_t)strtoll(v, NULL, 10) : 0;
}

/* "whsec_…" + the last 4 characters: enough to tell two secrets apart. */
static void secret_hint(const char *secret, char *out, size_t outlen)
{
    size_t n = secret ? strlen(secret) : 0;

    snprintf(out, outlen, "%s…%s", WEBHOOK_SECRET_PREFIX, n >= 4 ? secret + n - 4 : "");
}

/* The webhook as answered (never the secret). */
static json_t *hook_view(const char *team, const char *url, const char *secret, json_int_t created,
                         json_int_t updated)
{
    char h[32];

    secret_hint(secret, h, sizeof h);
    return json_pack("{s:s,s:s,s:s,s:I,s:I}", "team_id", team, "url", url, "secret_hint", h,
                     "created_at", created, "updated_at", updated);
}

static void wipe_reply_field(json_t *flat, const char *f)
{
    for (size_t i = 0; i + 1 < json_array_size(flat); i += 2)
        if (json_is_string(json_array_get(flat, i)) &&
            strcmp(json_string_value(json_array_get(flat, i)), f) == 0) {
            json_t *v = json_array_get(flat, i + 1);
            if (json_is_string(v))
                sodium_memzero((char *)json_string_value(v), json_string_length(v));
        }
}

job_step cmd_webhook_set(job *j)
{
    const char *url = arg_str(j, "url");
    int rotate = json_is_true(arg(j, "rotate_secret"));
    json_t *old, *res;
    char err[200], now[24], key[KGC_RKEY_MAX];
    char secret[WEBHOOK_SECRET_LEN + 1];
    unsigned char raw[WEBHOOK_SECRET_BYTES];
    const char *keep;
    json_int_t created;

    if (j->stage == 0) {
        job_read(j, "HGETALL", rk(j, WH_RK_HOOK, j->team_id), NULL);
        return J_READ;
    }
    if (webhook_url_check(url, err, sizeof err) != 0)
        return job_fail(j, "bad_request", "%s", err);
    if (arg(j, "rotate_secret") != NULL && !json_is_boolean(arg(j, "rotate_secret")))
        return job_fail(j, "bad_request", "'rotate_secret' must be a boolean");
    old = job_reply(j, 0);
    keep = hget(old, "secret");
    snprintf(now, sizeof now, "%lld", now_ms());
    snprintf(key, sizeof key, "%s", rk(j, WH_RK_HOOK, j->team_id));
    snprintf(j->target, sizeof j->target, "%s", j->team_id);
    created = keep ? hint(old, "created_at") : (json_int_t)strtoll(now, NULL, 10);
    if (keep != NULL && !rotate) {
        job_write(j, "HSET", key, "url", url, "updated_at", now, NULL);
        j->result = hook_view(j->team_id, url, keep, created, strtoll(now, NULL, 10));
        json_object_set_new(j->result, "secret_rotated", json_false());
        wipe_reply_field(old, "secret");
        return J_WRITE;
    }
    randombytes_buf(raw, sizeof raw);
    memcpy(secret, WEBHOOK_SECRET_PREFIX, sizeof WEBHOOK_SECRET_PREFIX - 1);
    sodium_bin2hex(secret + sizeof WEBHOOK_SECRET_PREFIX - 1,
                   sizeof secret - (sizeof WEBHOOK_SECRET_PREFIX - 1), raw, sizeof raw);
    job_write(j, "HSET", key, "url", url, "secret", secret, "created_at",
              keep ? hget(old, "created_at") : now, "updated_at", now, NULL);
    res = hook_view(j->team_id, url, secret, created, strtoll(now, NULL, 10));
    json_object_set_new(res, "secret", json_string(secret));
    json_object_set_new(res, "secret_rotated", json_boolean(keep != NULL));
    j->result = res;
    wipe_reply_field(old, "secret");
    sodium_memzero(raw, sizeof raw);
    sodium_memzero(secret, sizeof secret);
    return J_WRITE;
}

job_step cmd_webhook_get(job *j)
{
    json_t *h;

    if (j->stage == 0) {
        job_read(j, "HGETALL", rk(j, WH_RK_HOOK, j->team_id), NULL);
        return J_READ;
    }
    h = job_reply(j, 0);
    if (json_array_size(h) == 0)
        return job_fail(j, "not_found", "this team has no webhook");
    j->result = hook_view(j->team_id, hget(h, "url") ?: "", hget(h, "secret"),
                          hint(h, "created_at"), hint(h, "updated_at"));
    wipe_reply_field(h, "secret");
    return J_DONE;
}

job_step cmd_webhook_delete(job *j)
{
    if (j->stage == 0) {
        job_read(j, "EXISTS", rk(j, WH_RK_HOOK, j->team_id), NULL);
        return J_READ;
    }
    if (json_integer_value(job_reply(j, 0)) != 1)
        return job_fail(j, "not_found", "this team has no webhook");
    snprintf(j->target, sizeof j->target, "%s", j->team_id);
    /* Pending deliveries end as failed ("no webhook configured") at their
     * next attempt: their records stay listed. */
    job_write(j, "DEL", rk(j, WH_RK_HOOK, j->team_id), NULL);
    j->result = json_object();
    return J_WRITE;
}

/* One delivery record (HGETALL) as answered. */
static json_t *delivery_view(json_t *flat)
{
    const char *body = hget(flat, "body");
    json_t *d = json_pack("{s:s,s:s,s:s,s:s,s:I,s:I}", "id", hget(flat, "id") ?: "",
                          "type", hget(flat, "type") ?: "", "wallet_id", hget(flat, "wallet_id") ?: "",
                          "status", hget(flat, "status") ?: "", "attempts", hint(flat, "attempts"),
                          "created_at", hint(flat, "created_at"));
    json_t *ev = body ? json_loads(body, 0, NULL) : NULL;

    if (hget(flat, "next_at") != NULL)
        json_object_set_new(d, "next_attempt_at", json_integer(hint(flat, "next_at")));
    if (hget(flat, "last_at") != NULL)
        json_object_set_new(d, "last_attempt_at", json_integer(hint(flat, "last_at")));
    if (hget(flat, "last_result") != NULL)
        json_object_set_new(d, "last_result", json_string(hget(flat, "last_result")));
    if (ev != NULL)
        json_object_set_new(d, "event", ev);
    return d;
}

job_step cmd_webhook_deliveries(job *j)
{
    json_t *ids, *id, *out, *r, *lim = arg(j, "limit");
    long long limit = DELIVERIES_DEFAULT;
    char stop[24];
    size_t i;

    if (lim != NULL && !json_is_null(lim)) {
        limit = json_integer_value(lim);
        if (limit < 1 || limit > DELIVERIES_MAX)
            return job_fail(j, "bad_request", "'limit' must be 1-%d", DELIVERIES_MAX);
    }
    if (j->stage == 0) {
        snprintf(stop, sizeof stop, "%lld", limit - 1);
        job_read(j, "ZREVRANGE", rk(j, WH_RK_DELIVERIES, j->team_id), "0", stop, NULL);
        return J_READ;
    }
    if (j->stage == 1) {
        ids = job_reply(j, 0);
        if (json_array_size(ids) == 0) {
            j->result = json_pack("{s:[]}", "deliveries");
            return J_DONE;
        }
        json_array_foreach(ids, i, id)
            job_read(j, "HGETALL", rk(j, WH_RK_DELIVERY, j->team_id, json_string_value(id)), NULL);
        return J_READ;
    }
    out = json_array();
    json_array_foreach(j->rr, i, r)
        if (json_array_size(r) > 0)       /* expired records are skipped */
            json_array_append_new(out, delivery_view(r));
    j->result = json_pack("{s:o}", "deliveries", out);
    return J_DONE;
}

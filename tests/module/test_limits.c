/*
 * test_limits.c - issue 13's per-key limits against a real Redis, with the
 * key document written as key.update writes it (kgt_key_field):
 *   expiry      expires_at refuses with KG_KEY_EXPIRED from the moment it
 *               passes, from a warm cache too; nothing charged.
 */
#include "kgt.h"

#include <string.h>

static kgt_env env;

static void expiry(void)
{
    kgt_world w;
    kgt_req r;
    kg_result res;
    kg_stats before, after;
    kg_ctx *ctx;
    char err[256];
    int64_t exp, t0, t1;
    int ok = 0, expired = 0;

    kgt_world_make(&env, &w, 1000000);
    ctx = kg_open(env.conf, err, sizeof err);     /* cache_ttl_ms 1000 */
    KGT_CHECK(ctx != NULL, "kg_open: %s", err);
    kgt_request(&r, w.tok, "speech-to-text", NULL, NULL, KGT_P("audio_seconds", 1), NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);

    exp = kgt_wall_ms() + 1200;
    kgt_key_field(&env, w.team, w.key, "expires_at", json_integer(exp));
    kg_stats_get(ctx, &before, sizeof before);
    /* Until 300 ms past expires_at: a request that passed was decided
     * before it, one refused after it; none passes once it has started at
     * or after expires_at (no 1 s cache grace at all). */
    do {
        t0 = kgt_wall_ms();
        kg_status st = kg_authorize(ctx, &r.req, &res);
        t1 = kgt_wall_ms();
        if (st == KG_OK) {
            KGT_CHECK(t0 < exp, "served %lld ms after expires_at", (long long)(t0 - exp));
            KGT_CHECK(!expired, "served after a refusal");
            ok++;
        } else {
            KGT_EQ_STATUS(st, KG_KEY_EXPIRED);
            KGT_CHECK(t1 >= exp, "refused %lld ms before expires_at", (long long)(exp - t1));
            KGT_CHECK(strcmp(res.key_id, w.key) == 0, "key_id of the refusal");
            expired++;
        }
        kgt_sleep_ms(5);
    } while (t0 < exp + 300);
    kg_stats_get(ctx, &after, sizeof after);
    KGT_CHECK(ok > 10 && expired > 10, "%d served, %d refused", ok, expired);
    KGT_CHECK(after.cache_hits > before.cache_hits + 10, "the cache was not warm");
    KGT_CHECK(kg_http_status(KG_KEY_EXPIRED) == 401 &&
              strcmp(kg_status_code(KG_KEY_EXPIRED), "key_expired") == 0, "key_expired 401");

    /* payg on an expired key: nothing charged. */
    kgt_request(&r, w.tok, "text-generation", "small", "exp-1", KGT_P("input_tokens", 1000), NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_KEY_EXPIRED);
    KGT_CHECK(kgt_balance(&env, &w) == 1000000 && res.cost_micros == 0, "charged an expired key");

    /* Cleared (key.update expires_at null): served again, once told. */
    kgt_key_field(&env, w.team, w.key, "expires_at", NULL);
    kgt_sleep_ms(20);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);
    KGT_CHECK(res.cost_micros == 150, "cost %lld", (long long)res.cost_micros);

    /* A damaged value fails closed. */
    kgt_key_field(&env, w.team, w.key, "expires_at", json_string("tomorrow"));
    kgt_sleep_ms(20);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_BACKEND_ERROR);
    kgt_key_field(&env, w.team, w.key, "expires_at", NULL);
    kg_close(ctx);
    printf("ok: expiry: %d served before expires_at, %d refused from it on (warm cache)\n",
           ok, expired);
}

int main(void)
{
    kgt_setup(&env, NULL);
    kgt_catalog_quota(&env, "speech-to-text", 0);
    expiry();
    kgt_teardown(&env);
    return 0;
}

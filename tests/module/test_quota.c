/*
 * test_quota.c - the free tier: requests_per_day per team and service per
 * UTC day (SPEC §7: whichever key the request comes through), counted in
 * Redis (48 h expiry); refused requests are not counted; two keys of one
 * team share one allowance, another team has its own; a free service
 * without a quota is unlimited but still counted; a payg request is never
 * counted.
 */
#include "kgt.h"

#include <string.h>

static kgt_env env;

int main(void)
{
    kgt_world a, b;
    char key2[KGC_ID_MAX], tok2[KGC_TOKEN_LEN + 1], user2[KGC_ID_MAX];
    kgt_req r;
    kg_result res;
    kg_ctx *ctx;
    char err[256], day[16];
    const int N = 3;

    kgt_setup(&env, NULL);
    kgt_catalog_quota(&env, "speech-to-text", N);
    kgt_world_make(&env, &a, 1000000);
    kgt_world_make(&env, &b, 1000000);
    kgt_today(day);
    ctx = kg_open(env.conf, err, sizeof err);
    KGT_CHECK(ctx != NULL, "%s", err);

    /* A second key of team a (paid, carrying only the free service), its
     * own user: one allowance for the team, not one per key. */
    kgt_key(&env, a.team, "paid", "{\"speech-to-text\":{\"policy\":\"free\"}}", key2);
    kgc_id_user(user2);
    kgt_token(&env, a.team, key2, user2, 0, tok2);

    kgt_request(&r, a.tok, "speech-to-text", "fast", NULL, KGT_P("audio_seconds", 60), NULL);
    for (int i = 0; i < N - 1; i++) {
        KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);
        KGT_CHECK(res.cost_micros == 0 && res.balance_micros == -1, "free request %d", i);
    }
    kgt_request(&r, tok2, "speech-to-text", "fast", NULL, KGT_P("audio_seconds", 60), NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);      /* the N-th, via key 2 */
    KGT_CHECK(strcmp(res.key_id, key2) == 0, "second key");
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_QUOTA_EXCEEDED);
    KGT_CHECK(strcmp(res.key_id, key2) == 0, "second key refused");
    kgt_request(&r, a.tok, "speech-to-text", "fast", NULL, KGT_P("audio_seconds", 60), NULL);
    for (int i = 0; i < 5; i++) {
        KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_QUOTA_EXCEEDED);
        KGT_CHECK(strcmp(res.key_id, a.key) == 0 && kg_http_status(res.status) == 429, "quota result");
    }
    KGT_CHECK(kgt_int(&env, "GET " KGT_PREFIX "{t:%s}:quota:speech-to-text:%s", a.team, day) == N,
              "counter");
    long long ttl = kgt_int(&env, "TTL " KGT_PREFIX "{t:%s}:quota:speech-to-text:%s", a.team, day);
    KGT_CHECK(ttl > 47 * 3600 && ttl <= 48 * 3600, "counter ttl %lld", ttl);

    /* No per-key counter exists any more. */
    KGT_CHECK(kgt_int(&env, "EXISTS " KGT_PREFIX "{t:%s}:quota:%s:speech-to-text:%s",
                      a.team, a.key, day) == 0, "per-key counter written");

    /* Another team still has its own N. */
    kgt_request(&r, b.tok, "speech-to-text", "fast", NULL, NULL);
    for (int i = 0; i < N; i++)
        KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_QUOTA_EXCEEDED);

    /* Payg on the same key is neither counted nor refused by the quota. */
    kgt_request(&r, a.tok, "text-generation", "small", NULL, KGT_P("input_tokens", 1000), NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);
    KGT_CHECK(res.cost_micros == 150, "payg cost %lld", (long long)res.cost_micros);

    /* The operator raises the quota (daemon SIGHUP: SET catalog + PUBLISH catalog):
     * both keys of team a draw on the 2 new requests. */
    kgt_catalog_quota(&env, "speech-to-text", N + 2);
    kgt_sleep_ms(10);
    kgt_request(&r, a.tok, "speech-to-text", "fast", NULL, NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);
    kgt_request(&r, tok2, "speech-to-text", "fast", NULL, NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_QUOTA_EXCEEDED);
    kgt_request(&r, a.tok, "speech-to-text", "fast", NULL, NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_QUOTA_EXCEEDED);

    /* No quota in the catalog: unlimited, still counted. */
    kgt_catalog_quota(&env, "speech-to-text", 0);
    kgt_sleep_ms(10);
    for (int i = 0; i < 20; i++)
        KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);
    KGT_CHECK(kgt_int(&env, "GET " KGT_PREFIX "{t:%s}:quota:speech-to-text:%s", a.team, day) == N + 2 + 20,
              "unlimited not counted");
    kg_close(ctx);
    kgt_teardown(&env);
    printf("ok: free-tier quota enforced per team per day, shared by its keys\n");
    return 0;
}

/*
 * test_replay.c - a request id is charged once: a retry answers the first
 * outcome with replayed = 1 and charges nothing; a refused request records
 * nothing, so its retry after a top-up succeeds; free requests replay
 * without counting twice.
 */
#include "kgt.h"

#include <string.h>

static kgt_env env;

int main(void)
{
    kgt_world w;
    kgt_req r;
    kg_result res, first;
    kg_ctx *ctx;
    char err[256];
    long long llen;

    kgt_setup(&env, NULL);
    kgt_catalog_quota(&env, "speech-to-text", 5);
    kgt_world_make(&env, &w, 1000);
    ctx = kg_open(env.conf, err, sizeof err);
    KGT_CHECK(ctx != NULL, "%s", err);

    /* cost 600 (2000 in, 500 out) */
    kgt_request(&r, w.tok, "text-generation", "small", "req-1",
                KGT_P("input_tokens", 2000), KGT_P("output_tokens", 500), NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &first), KG_OK);
    KGT_CHECK(first.cost_micros == 600 && first.balance_micros == 400 && !first.replayed, "first");
    llen = kgt_ledger_len(&env, &w);
    for (int i = 0; i < 3; i++) {
        KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);
        KGT_CHECK(res.replayed == 1 && res.cost_micros == 0 && res.balance_micros == 400 &&
                  strcmp(res.wallet_id, w.wallet) == 0,
                  "replay %d: replayed %d cost %lld balance %lld", i, res.replayed,
                  (long long)res.cost_micros, (long long)res.balance_micros);
    }
    KGT_CHECK(kgt_balance(&env, &w) == 400 && kgt_ledger_len(&env, &w) == llen, "replay charged");
    /* The record: 24 h expiry, the first outcome. */
    KGT_CHECK(kgt_int(&env, "TTL " KGT_PREFIX "{t:%s}:req:%s:req-1", w.team, w.key) > 86000, "req ttl");
    KGT_CHECK(kgt_int(&env, "HGET " KGT_PREFIX "{t:%s}:req:%s:req-1 cost_micros", w.team, w.key) == 600,
              "req record cost");

    /* A replay from a fresh context (another gateway) is a replay too. */
    kg_ctx *c2 = kg_open(env.conf, err, sizeof err);
    KGT_EQ_STATUS(kg_authorize(c2, &r.req, &res), KG_OK);
    KGT_CHECK(res.replayed == 1 && res.cost_micros == 0, "replay via another ctx");
    kg_close(c2);

    /* Refused for funds: nothing recorded; after a top-up the same id pays. */
    kgt_request(&r, w.tok, "text-generation", "small", "req-2",
                KGT_P("input_tokens", 2000), KGT_P("output_tokens", 500), NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_INSUFFICIENT_FUNDS);
    KGT_CHECK(res.balance_micros == 400 && !res.replayed, "funds result");
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_INSUFFICIENT_FUNDS);
    kgt_credit(&env, w.team, w.wallet, 1000);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);
    KGT_CHECK(res.cost_micros == 600 && res.balance_micros == 800 && !res.replayed, "after top-up");
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);
    KGT_CHECK(res.replayed && res.cost_micros == 0 && res.balance_micros == 800, "replay after top-up");

    /* Request ids are per key: the same id on another key is new. */
    kgt_world w2;
    kgt_world_make(&env, &w2, 1000);
    kgt_request(&r, w2.tok, "text-generation", "small", "req-1",
                KGT_P("input_tokens", 2000), KGT_P("output_tokens", 500), NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);
    KGT_CHECK(!res.replayed && res.cost_micros == 600, "same id, other key");

    /* Free service: a replay does not count against the quota. */
    kgt_request(&r, w.tok, "speech-to-text", NULL, "free-1", KGT_P("audio_seconds", 3), NULL);
    for (int i = 0; i < 10; i++) {
        KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);
        KGT_CHECK(res.replayed == (i > 0) && res.cost_micros == 0 && res.balance_micros == -1,
                  "free replay %d", i);
    }
    char day[16];
    kgt_today(day);
    KGT_CHECK(kgt_int(&env, "GET " KGT_PREFIX "{t:%s}:quota:speech-to-text:%s", w.team, day) == 1,
              "free replays counted");
    kg_close(ctx);
    kgt_teardown(&env);
    printf("ok: replays charge nothing and answer the first outcome\n");
    return 0;
}

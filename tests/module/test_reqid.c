/*
 * test_reqid.c - a request id names one request (issue 10, item 2).
 *
 * The record P {t:T}:req:<kid>:<rid> remembers who asked for what (user,
 * service, model, a fingerprint of the params). The same id with the same
 * request is a replay (KG_OK, replayed, nothing charged); with anything
 * else it is KG_REQUEST_ID_CONFLICT: refused, nothing charged, nothing
 * counted, the record unchanged. Each case below was served free before.
 */
#include "kgt.h"

#include <string.h>

static kgt_env env;

/* A key with text-generation payg (small and large) on a wallet holding
 * `balance`, speech-to-text free, and two assigned users with tokens. */
typedef struct world2 {
    kgt_world w;                  /* w.user / w.tok: the first user */
    char user2[KGC_ID_MAX];
    char tok2[KGC_TOKEN_LEN + 1];
} world2;

static void world2_make(world2 *x, int64_t balance)
{
    char svcs[512];

    kgt_team(&env, x->w.team);
    kgt_wallet(&env, x->w.team, balance, x->w.wallet);
    snprintf(svcs, sizeof svcs,
             "{\"text-generation\":{\"policy\":\"payg\",\"models\":[\"small\",\"large\"],"
             "\"wallet\":\"%s\"},\"speech-to-text\":{\"policy\":\"free\"}}", x->w.wallet);
    kgt_key(&env, x->w.team, "paid", svcs, x->w.key);
    kgc_id_user(x->w.user);
    kgt_token(&env, x->w.team, x->w.key, x->w.user, 0, x->w.tok);
    kgc_id_user(x->user2);
    kgt_token(&env, x->w.team, x->w.key, x->user2, 0, x->tok2);
}

static void expect_conflict(kg_ctx *ctx, kgt_req *r, const kgt_world *w, long long bal,
                            long long llen, const char *what)
{
    kg_result res;

    KGT_EQ_STATUS(kg_authorize(ctx, &r->req, &res), KG_REQUEST_ID_CONFLICT);
    KGT_CHECK(res.cost_micros == 0 && !res.replayed, "%s: cost %lld replayed %d", what,
              (long long)res.cost_micros, res.replayed);
    KGT_CHECK(kgt_balance(&env, w) == bal, "%s: balance %lld, expected %lld", what,
              kgt_balance(&env, w), bal);
    KGT_CHECK(kgt_ledger_len(&env, w) == llen, "%s: ledger moved", what);
}

int main(void)
{
    world2 x;
    kgt_req r;
    kg_result res;
    kg_ctx *ctx;
    char err[256], day[16];

    kgt_setup(&env, NULL);
    kgt_catalog_quota(&env, "speech-to-text", 2);
    ctx = kg_open(env.conf, err, sizeof err);
    KGT_CHECK(ctx != NULL, "%s", err);
    KGT_CHECK(kg_http_status(KG_REQUEST_ID_CONFLICT) == 409 &&
              strcmp(kg_status_code(KG_REQUEST_ID_CONFLICT), "request_id_conflict") == 0 &&
              strstr(kg_strerror(KG_REQUEST_ID_CONFLICT), "request id") != NULL,
              "the new status' names");
    KGT_CHECK(KG_REQUEST_ID_CONFLICT == KG_BACKEND_ERROR + 1, "appended to the enum");

    /* The reproduction: a wallet of 10 micros, an id first used on
     * a 1-micro request, then the same id on model=large 10M/10M tokens
     * (39,000,500 micros). It was served 20 times for free. */
    world2_make(&x, 10);
    long long l0 = kgt_ledger_len(&env, &x.w);
    kgt_request(&r, x.w.tok, "text-generation", "small", "cheap-1", KGT_P("input_tokens", 1), NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);
    KGT_CHECK(res.cost_micros == 1 && res.balance_micros == 9, "first charge");
    KGT_CHECK(kgt_ledger_len(&env, &x.w) == l0 + 1, "one ledger entry");
    kgt_request(&r, x.w.tok, "text-generation", "large", "cheap-1",
                KGT_P("input_tokens", 10000000), KGT_P("output_tokens", 10000000), NULL);
    for (int i = 0; i < 20; i++)
        expect_conflict(ctx, &r, &x.w, 9, l0 + 1, "large under a cheap id");
    /* The same model, other params. */
    kgt_request(&r, x.w.tok, "text-generation", "small", "cheap-1", KGT_P("input_tokens", 2), NULL);
    expect_conflict(ctx, &r, &x.w, 9, l0 + 1, "other params");
    /* The record is untouched: still the first request's. */
    KGT_CHECK(kgt_int(&env, "HGET " KGT_PREFIX "{t:%s}:req:%s:cheap-1 cost_micros",
                      x.w.team, x.w.key) == 1, "record kept");
    {
        redisReply *rr = kgt_cmd(&env, "HMGET " KGT_PREFIX "{t:%s}:req:%s:cheap-1 user_id service model fp",
                                 x.w.team, x.w.key);
        KGT_CHECK(rr->type == REDIS_REPLY_ARRAY && rr->elements == 4 &&
                  rr->element[0]->type == REDIS_REPLY_STRING && strcmp(rr->element[0]->str, x.w.user) == 0 &&
                  strcmp(rr->element[1]->str, "text-generation") == 0 &&
                  strcmp(rr->element[2]->str, "small") == 0 &&
                  rr->element[3]->type == REDIS_REPLY_STRING && rr->element[3]->len == 32,
                  "record remembers user, service, model, fp");
        freeReplyObject(rr);
    }

    /* The true replay still answers as before. Params in another order,
     * or an explicit 0 for a param left out, are the same request. */
    kgt_request(&r, x.w.tok, "text-generation", "small", "cheap-1", KGT_P("input_tokens", 1), NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);
    KGT_CHECK(res.replayed && res.cost_micros == 0 && res.balance_micros == 9, "true replay");
    kgt_request(&r, x.w.tok, "text-generation", "small", "cheap-1",
                KGT_P("output_tokens", 0), KGT_P("input_tokens", 1), NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);
    KGT_CHECK(res.replayed && res.cost_micros == 0, "replay with an explicit 0 param");
    kgt_credit(&env, x.w.team, x.w.wallet, 10000);
    kgt_request(&r, x.w.tok, "text-generation", "small", "two-params",
                KGT_P("input_tokens", 5000), KGT_P("output_tokens", 7000), NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);
    KGT_CHECK(!res.replayed && res.cost_micros == 750 + 4200, "two params: %lld",
              (long long)res.cost_micros);
    long long bal = kgt_balance(&env, &x.w), llen = kgt_ledger_len(&env, &x.w);
    kgt_request(&r, x.w.tok, "text-generation", "small", "two-params",
                KGT_P("output_tokens", 7000), KGT_P("input_tokens", 5000), NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);
    KGT_CHECK(res.replayed && res.cost_micros == 0, "params in another order are a replay");
    /* Swapped values are not. */
    kgt_request(&r, x.w.tok, "text-generation", "small", "two-params",
                KGT_P("output_tokens", 5000), KGT_P("input_tokens", 7000), NULL);
    expect_conflict(ctx, &r, &x.w, bal, llen, "swapped values");

    /* Another user of the same key cannot reuse someone else's id. */
    kgt_request(&r, x.tok2, "text-generation", "small", "two-params",
                KGT_P("input_tokens", 5000), KGT_P("output_tokens", 7000), NULL);
    expect_conflict(ctx, &r, &x.w, bal, llen, "other user");

    /* A free-tier id reused on a pay-as-you-go request (and back). */
    kgt_today(day);
    kgt_request(&r, x.w.tok, "speech-to-text", NULL, "free-1", KGT_P("audio_seconds", 3), NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);
    KGT_CHECK(!res.replayed, "free first");
    kgt_request(&r, x.w.tok, "text-generation", "large", "free-1",
                KGT_P("input_tokens", 1000), NULL);
    expect_conflict(ctx, &r, &x.w, bal, llen, "free id on payg");
    kgt_request(&r, x.w.tok, "speech-to-text", NULL, "two-params", KGT_P("audio_seconds", 3), NULL);
    expect_conflict(ctx, &r, &x.w, bal, llen, "payg id on free");
    KGT_CHECK(kgt_int(&env, "GET " KGT_PREFIX "{t:%s}:quota:speech-to-text:%s",
                      x.w.team, day) == 1, "a conflict is not counted");

    /* A used-up daily quota is not bypassed by reusing an old id. */
    kgt_request(&r, x.w.tok, "speech-to-text", NULL, "free-2", KGT_P("audio_seconds", 3), NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);
    kgt_request(&r, x.w.tok, "speech-to-text", NULL, "free-3", KGT_P("audio_seconds", 3), NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_QUOTA_EXCEEDED);
    kgt_request(&r, x.w.tok, "speech-to-text", NULL, "free-1", KGT_P("audio_seconds", 99), NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_REQUEST_ID_CONFLICT);
    kgt_request(&r, x.tok2, "speech-to-text", NULL, "free-1", KGT_P("audio_seconds", 3), NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_REQUEST_ID_CONFLICT);
    /* ...while the true replay of a counted request still passes. */
    kgt_request(&r, x.w.tok, "speech-to-text", NULL, "free-1", KGT_P("audio_seconds", 3), NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);
    KGT_CHECK(res.replayed, "free true replay");
    KGT_CHECK(kgt_int(&env, "GET " KGT_PREFIX "{t:%s}:quota:speech-to-text:%s",
                      x.w.team, day) == 2, "quota count");

    /* A record without a fingerprint (written before it existed) cannot
     * prove the request is the same: refused, both scripts. */
    kgt_do(&env, "HSET " KGT_PREFIX "{t:%s}:req:%s:legacy cost_micros 600 balance_micros 5 wallet_id %s at 1",
           x.w.team, x.w.key, x.w.wallet);
    kgt_request(&r, x.w.tok, "text-generation", "small", "legacy", KGT_P("input_tokens", 1), NULL);
    expect_conflict(ctx, &r, &x.w, bal, llen, "legacy record, debit");
    kgt_request(&r, x.w.tok, "speech-to-text", NULL, "legacy", KGT_P("audio_seconds", 1), NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_REQUEST_ID_CONFLICT);

    /* Through another context (another gateway): the same answers. */
    kg_ctx *c2 = kg_open(env.conf, err, sizeof err);
    KGT_CHECK(c2 != NULL, "%s", err);
    kgt_request(&r, x.w.tok, "text-generation", "small", "cheap-1", KGT_P("input_tokens", 1), NULL);
    KGT_EQ_STATUS(kg_authorize(c2, &r.req, &res), KG_OK);
    KGT_CHECK(res.replayed, "replay via another ctx");
    kgt_request(&r, x.w.tok, "text-generation", "large", "cheap-1", KGT_P("input_tokens", 1), NULL);
    KGT_EQ_STATUS(kg_authorize(c2, &r.req, &res), KG_REQUEST_ID_CONFLICT);
    kg_close(c2);

    KGT_CHECK(kgt_balance(&env, &x.w) == bal && kgt_ledger_len(&env, &x.w) == llen, "end");
    kg_close(ctx);
    kgt_teardown(&env);
    printf("ok: a request id replays only the request it was first used for\n");
    return 0;
}

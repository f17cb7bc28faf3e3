/*
 * test_status.c - every kg_status reached by a real scenario against a real
 * Redis, with kg_result filled in each case; the status tables.
 */
#include "kgt.h"

#include <string.h>

static kgt_env env;

static kg_status run(kg_ctx *ctx, kgt_req *r, kg_result *res)
{
    memset(res, 0xAB, sizeof *res);     /* garbage: the library must fill it all */
    return kg_authorize(ctx, &r->req, res);
}

static void check_filled(const kg_result *res)
{
    KGT_CHECK(memchr(res->key_id, '\0', sizeof res->key_id) != NULL, "key_id not terminated");
    KGT_CHECK(memchr(res->team_id, '\0', sizeof res->team_id) != NULL, "team_id not terminated");
    KGT_CHECK(memchr(res->user_id, '\0', sizeof res->user_id) != NULL, "user_id not terminated");
    KGT_CHECK(memchr(res->wallet_id, '\0', sizeof res->wallet_id) != NULL, "wallet_id not terminated");
    KGT_CHECK(res->replayed == 0 || res->replayed == 1, "replayed %d", res->replayed);
}

static void tables(void)
{
    static const struct { kg_status s; int http; const char *code; } t[] = {
        {KG_OK, 200, "ok"}, {KG_TOKEN_MALFORMED, 401, "token_malformed"},
        {KG_TOKEN_UNKNOWN, 401, "token_unknown"}, {KG_KEY_REVOKED, 401, "key_revoked"},
        {KG_SERVICE_DISABLED, 403, "service_disabled"}, {KG_MODEL_DENIED, 403, "model_denied"},
        {KG_QUOTA_EXCEEDED, 429, "quota_exceeded"}, {KG_INSUFFICIENT_FUNDS, 402, "insufficient_funds"},
        {KG_BAD_REQUEST, 400, "bad_request"}, {KG_BACKEND_ERROR, 503, "backend_error"},
        {KG_REQUEST_ID_CONFLICT, 409, "request_id_conflict"}, {KG_KEY_EXPIRED, 401, "key_expired"},
        {KG_BUDGET_EXCEEDED, 402, "budget_exceeded"}, {KG_RATE_LIMITED, 429, "rate_limited"}};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        KGT_CHECK(kg_http_status(t[i].s) == t[i].http, "http of %d", t[i].s);
        KGT_CHECK(strcmp(kg_status_code(t[i].s), t[i].code) == 0, "code of %d", t[i].s);
        KGT_CHECK(kg_strerror(t[i].s) != NULL && kg_strerror(t[i].s)[0] != '\0', "strerror %d", t[i].s);
    }
    KGT_CHECK(kg_strerror((kg_status)99) != NULL, "strerror of an unknown status");
    /* Appended in order (issue 13): the values of the ABI never move. */
    KGT_CHECK(KG_KEY_EXPIRED == 11 && KG_BUDGET_EXCEEDED == 12 && KG_RATE_LIMITED == 13,
              "appended statuses moved");
    KGT_CHECK(kg_abi_version() == KG_ABI_VERSION, "abi %d", kg_abi_version());
}

int main(void)
{
    kgt_world w, poor, other, lim;
    kgt_req r2;
    kgt_req r;
    kg_result res;
    kg_ctx *ctx;
    char err[256], tok[KGC_TOKEN_LEN + 1], svcs[256], long_rid[200];
    long long bal, llen;

    tables();
    kgt_setup(&env, NULL);
    kgt_catalog_quota(&env, "speech-to-text", 2);
    kgt_world_make(&env, &w, 1000000);

    /* kg_open: a clear message for a bad file, no failure when Redis is down later. */
    KGT_CHECK(kg_open("/nonexistent/keygate.conf", err, sizeof err) == NULL, "opened a missing file");
    KGT_CHECK(strstr(err, "/nonexistent/keygate.conf") != NULL, "err: %s", err);
    KGT_CHECK(kg_open(kgt_write_conf(&env, "bad.conf", "frobnicate 1\n"), err, sizeof err) == NULL, "bad key");
    KGT_CHECK(strstr(err, "frobnicate") != NULL, "err: %s", err);
    ctx = kg_open(env.conf, err, sizeof err);
    KGT_CHECK(ctx != NULL, "kg_open: %s", err);

    /* Everything Redis receives is watched (MONITOR): the plain token must
     * never be among it. Checked after the requests below. */
    char teamkey[128];
    snprintf(teamkey, sizeof teamkey, KGT_PREFIX "{t:%s}:team", w.team);
    redisContext *mon = kgt_connect_for(&env, teamkey);   /* the team's node on a cluster */
    redisReply *mr = mon != NULL ? redisCommand(mon, "MONITOR") : NULL;
    KGT_CHECK(mr != NULL && mr->type == REDIS_REPLY_STATUS, "MONITOR");
    freeReplyObject(mr);

    /* KG_OK, pay-as-you-go: 2000 in at 150/1000 + 500 out at 600/1000 = 600. */
    kgt_request(&r, w.tok, "text-generation", "small", NULL,
                KGT_P("input_tokens", 2000), KGT_P("output_tokens", 500), NULL);
    KGT_EQ_STATUS(run(ctx, &r, &res), KG_OK);
    check_filled(&res);
    KGT_CHECK(res.cost_micros == 600 && res.balance_micros == 1000000 - 600,
              "cost %lld balance %lld", (long long)res.cost_micros, (long long)res.balance_micros);
    KGT_CHECK(strcmp(res.key_id, w.key) == 0 && strcmp(res.team_id, w.team) == 0 &&
              strcmp(res.user_id, w.user) == 0 && strcmp(res.wallet_id, w.wallet) == 0,
              "ids %s %s %s %s", res.key_id, res.team_id, res.user_id, res.wallet_id);
    KGT_CHECK(res.replayed == 0, "replayed");
    KGT_CHECK(kgt_balance(&env, &w) == 1000000 - 600, "stored balance %lld", kgt_balance(&env, &w));

    /* KG_OK, free service: no wallet, balance -1, cost 0. */
    kgt_request(&r, w.tok, "speech-to-text", NULL, NULL, KGT_P("audio_seconds", 30), NULL);
    KGT_EQ_STATUS(run(ctx, &r, &res), KG_OK);
    check_filled(&res);
    KGT_CHECK(res.cost_micros == 0 && res.balance_micros == -1 && res.wallet_id[0] == '\0',
              "free: cost %lld balance %lld wallet '%s'", (long long)res.cost_micros,
              (long long)res.balance_micros, res.wallet_id);

    /* No token in what Redis saw (the body, without its "kg_" prefix). */
    {
        struct timeval tv = {0, 300000};
        void *rp;
        int seen = 0;
        redisSetTimeout(mon, tv);
        while (redisGetReply(mon, &rp) == REDIS_OK) {
            redisReply *m = rp;
            if (m->type == REDIS_REPLY_STATUS) {
                seen++;
                KGT_CHECK(strstr(m->str, w.tok + 3) == NULL, "the plain token reached Redis: %s", m->str);
            }
            freeReplyObject(m);
        }
        KGT_CHECK(seen >= 3, "MONITOR saw %d commands", seen);
        redisFree(mon);
    }

    /* KG_QUOTA_EXCEEDED: the catalog allows 2 a day; one used above. */
    KGT_EQ_STATUS(run(ctx, &r, &res), KG_OK);
    KGT_EQ_STATUS(run(ctx, &r, &res), KG_QUOTA_EXCEEDED);
    check_filled(&res);
    KGT_CHECK(strcmp(res.key_id, w.key) == 0 && res.cost_micros == 0 && res.balance_micros == -1,
              "quota result");

    /* KG_TOKEN_MALFORMED: checksum, length, prefix, NULL. No store access. */
    snprintf(tok, sizeof tok, "%s", w.tok);
    tok[10] = tok[10] == 'a' ? 'b' : 'a';
    kgt_request(&r, tok, "text-generation", "small", NULL, NULL);
    KGT_EQ_STATUS(run(ctx, &r, &res), KG_TOKEN_MALFORMED);
    check_filled(&res);
    KGT_CHECK(res.key_id[0] == '\0' && res.balance_micros == -1 && res.cost_micros == 0, "malformed result");
    r.req.token_len = 10;
    KGT_EQ_STATUS(run(ctx, &r, &res), KG_TOKEN_MALFORMED);
    kgt_request(&r, NULL, "text-generation", "small", NULL, NULL);
    KGT_EQ_STATUS(run(ctx, &r, &res), KG_TOKEN_MALFORMED);
    kgt_request(&r, "Bearer nonsense", "text-generation", "small", NULL, NULL);
    KGT_EQ_STATUS(run(ctx, &r, &res), KG_TOKEN_MALFORMED);

    /* KG_TOKEN_UNKNOWN: well-formed, never issued. */
    kgc_token_generate(w.team, tok);
    kgt_request(&r, tok, "text-generation", "small", NULL, NULL);
    KGT_EQ_STATUS(run(ctx, &r, &res), KG_TOKEN_UNKNOWN);
    check_filled(&res);
    KGT_CHECK(res.key_id[0] == '\0', "unknown token has a key id");

    /* KG_SERVICE_DISABLED: a key with text-generation only. */
    kgt_team(&env, other.team);
    kgt_wallet(&env, other.team, 5000, other.wallet);
    snprintf(svcs, sizeof svcs,
             "{\"text-generation\":{\"policy\":\"payg\",\"models\":[\"small\",\"large\"],\"wallet\":\"%s\"}}",
             other.wallet);
    kgt_key(&env, other.team, "paid", svcs, other.key);
    kgc_id_user(other.user);
    kgt_token(&env, other.team, other.key, other.user, 0, other.tok);
    kgt_request(&r, other.tok, "speech-to-text", "fast", NULL, NULL);
    KGT_EQ_STATUS(run(ctx, &r, &res), KG_SERVICE_DISABLED);
    check_filled(&res);
    KGT_CHECK(strcmp(res.key_id, other.key) == 0 && strcmp(res.user_id, other.user) == 0, "disabled ids");

    /* KG_MODEL_DENIED: "large" is not in w's payg models. */
    kgt_request(&r, w.tok, "text-generation", "large", NULL, KGT_P("input_tokens", 1), NULL);
    KGT_EQ_STATUS(run(ctx, &r, &res), KG_MODEL_DENIED);
    check_filled(&res);
    KGT_CHECK(res.cost_micros == 0, "denied cost");

    /* KG_BAD_REQUEST: unknown service / model / param, negative,
     * no model on a multi-model service, bad request ids, no service. */
    kgt_request(&r, w.tok, "no-such-service", NULL, NULL, NULL);
    KGT_EQ_STATUS(run(ctx, &r, &res), KG_BAD_REQUEST);
    kgt_request(&r, w.tok, "text-generation", "huge", NULL, NULL);
    KGT_EQ_STATUS(run(ctx, &r, &res), KG_BAD_REQUEST);
    kgt_request(&r, w.tok, "text-generation", NULL, NULL, NULL);
    KGT_EQ_STATUS(run(ctx, &r, &res), KG_BAD_REQUEST);
    kgt_request(&r, w.tok, "text-generation", "small", NULL, KGT_P("images", 3), NULL);
    KGT_EQ_STATUS(run(ctx, &r, &res), KG_BAD_REQUEST);
    kgt_request(&r, w.tok, "text-generation", "small", NULL, KGT_P("input_tokens", -1), NULL);
    KGT_EQ_STATUS(run(ctx, &r, &res), KG_BAD_REQUEST);
    /* The largest quantities price fine (6.9e18 micros) and cannot be paid. */
    kgt_request(&r, w.tok, "text-generation", "small", NULL, KGT_P("input_tokens", INT64_MAX),
                KGT_P("output_tokens", INT64_MAX), NULL);
    KGT_EQ_STATUS(run(ctx, &r, &res), KG_INSUFFICIENT_FUNDS);
    kgt_request(&r, w.tok, "text-generation", "small", "has space", NULL);
    KGT_EQ_STATUS(run(ctx, &r, &res), KG_BAD_REQUEST);
    kgt_request(&r, w.tok, "text-generation", "small", "", NULL);
    KGT_EQ_STATUS(run(ctx, &r, &res), KG_BAD_REQUEST);
    memset(long_rid, 'x', 129);
    long_rid[129] = '\0';
    kgt_request(&r, w.tok, "text-generation", "small", long_rid, NULL);
    KGT_EQ_STATUS(run(ctx, &r, &res), KG_BAD_REQUEST);
    long_rid[128] = '\0';               /* 128 is allowed */
    kgt_request(&r, w.tok, "text-generation", "small", long_rid, NULL);
    KGT_EQ_STATUS(run(ctx, &r, &res), KG_OK);
    kgt_request(&r, w.tok, NULL, NULL, NULL, NULL);
    KGT_EQ_STATUS(run(ctx, &r, &res), KG_BAD_REQUEST);
    KGT_EQ_STATUS(kg_authorize(ctx, NULL, &res), KG_BAD_REQUEST);
    bal = kgt_balance(&env, &w);

    /* KG_INSUFFICIENT_FUNDS: 100 micros, a 600 micros request. Nothing
     * recorded; the current balance reported. */
    kgt_world_make(&env, &poor, 100);
    llen = kgt_ledger_len(&env, &poor);
    kgt_request(&r, poor.tok, "text-generation", "small", "funds-1",
                KGT_P("input_tokens", 2000), KGT_P("output_tokens", 500), NULL);
    KGT_EQ_STATUS(run(ctx, &r, &res), KG_INSUFFICIENT_FUNDS);
    check_filled(&res);
    KGT_CHECK(res.balance_micros == 100 && res.cost_micros == 0 && strcmp(res.wallet_id, poor.wallet) == 0,
              "funds: balance %lld cost %lld", (long long)res.balance_micros, (long long)res.cost_micros);
    KGT_CHECK(kgt_balance(&env, &poor) == 100 && kgt_ledger_len(&env, &poor) == llen, "funds wrote something");
    KGT_CHECK(kgt_int(&env, "EXISTS " KGT_PREFIX "{t:%s}:req:%s:funds-1", poor.team, poor.key) == 0,
              "a refused request left an idempotency record");

    /* KG_KEY_EXPIRED: expires_at passed (revoked wins over it, below). */
    kgt_key_field(&env, poor.team, poor.key, "expires_at", json_integer(kgt_wall_ms() - 1));
    kgt_sleep_ms(5);
    KGT_EQ_STATUS(run(ctx, &r, &res), KG_KEY_EXPIRED);
    check_filled(&res);
    KGT_CHECK(strcmp(res.key_id, poor.key) == 0 && res.cost_micros == 0, "expired key id");

    /* KG_KEY_REVOKED. */
    kgt_revoke(&env, poor.team, poor.key);
    kgt_sleep_ms(5);
    KGT_EQ_STATUS(run(ctx, &r, &res), KG_KEY_REVOKED);
    check_filled(&res);
    KGT_CHECK(strcmp(res.key_id, poor.key) == 0, "revoked key id");

    /* KG_BUDGET_EXCEEDED: a day cap of 599, a 600 micros request; checked
     * before funds, nothing charged. Then KG_RATE_LIMITED: 1 a minute. */
    kgt_world_make(&env, &lim, 1000000);
    kgt_key_field(&env, lim.team, lim.key, "budget_day_micros", json_integer(599));
    kgt_sleep_ms(5);
    kgt_request(&r2, lim.tok, "text-generation", "small", NULL,
                KGT_P("input_tokens", 2000), KGT_P("output_tokens", 500), NULL);
    KGT_EQ_STATUS(run(ctx, &r2, &res), KG_BUDGET_EXCEEDED);
    check_filled(&res);
    KGT_CHECK(res.cost_micros == 0 && kgt_balance(&env, &lim) == 1000000, "budget charged");
    kgt_key_field(&env, lim.team, lim.key, "budget_day_micros", NULL);
    kgt_key_field(&env, lim.team, lim.key, "rate_limits",
                  json_pack("{s:{s:i}}", "text-generation", "per_minute", 1));
    kgt_sleep_ms(5);
    KGT_EQ_STATUS(run(ctx, &r2, &res), KG_OK);
    KGT_EQ_STATUS(run(ctx, &r2, &res), KG_RATE_LIMITED);
    check_filled(&res);
    KGT_CHECK(res.cost_micros == 0 && kgt_balance(&env, &lim) == 1000000 - 600, "rate charged");

    /* KG_BACKEND_ERROR: a payg policy whose wallet is gone (a data error). */
    kgt_do(&env, "DEL " KGT_PREFIX "{t:%s}:wallet:%s", other.team, other.wallet);
    kgt_request(&r, other.tok, "text-generation", "small", NULL, KGT_P("input_tokens", 1000), NULL);
    KGT_EQ_STATUS(run(ctx, &r, &res), KG_BACKEND_ERROR);
    check_filled(&res);
    KGT_CHECK(res.balance_micros == -1 && res.cost_micros == 0, "no-wallet result");

    /* KG_BACKEND_ERROR: the store is down. Never KG_OK. */
    KGT_CHECK(kgt_balance(&env, &w) == bal, "a refused request charged");
    kgt_redis_stop(&env);
    kgt_request(&r, w.tok, "text-generation", "small", NULL, KGT_P("input_tokens", 1000), NULL);
    KGT_EQ_STATUS(run(ctx, &r, &res), KG_BACKEND_ERROR);
    check_filled(&res);
    KGT_CHECK(res.cost_micros == 0, "backend cost");
    /* Malformed is still answered without the store. */
    kgt_request(&r, "kg_short", "text-generation", "small", NULL, NULL);
    KGT_EQ_STATUS(run(ctx, &r, &res), KG_TOKEN_MALFORMED);

    /* kg_open does not need the store. */
    kg_ctx *c2 = kg_open(env.conf, err, sizeof err);
    KGT_CHECK(c2 != NULL, "kg_open with Redis down: %s", err);
    kg_close(c2);
    kg_close(ctx);
    kg_close(NULL);
    kgt_teardown(&env);
    printf("ok: every kg_status reached\n");
    return 0;
}

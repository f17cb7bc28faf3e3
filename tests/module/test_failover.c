/*
 * test_failover.c - fail closed and recover: a stalled Redis (SIGSTOP) gives
 * KG_BACKEND_ERROR within about timeout_ms; a stopped Redis gives
 * KG_BACKEND_ERROR; once Redis is back (restarted, its script cache empty)
 * the same context answers KG_OK again by itself, reloading its scripts.
 */
#include "kgt.h"

#include <string.h>

static kgt_env env;

static void seed(kgt_world *w, const kgt_world *same_ids)
{
    /* Redis runs without persistence: write the same world again. */
    char svcs[1024], hex[KGC_HASH_HEX_LEN + 1];

    kgt_catalog(&env, NULL);
    if (same_ids == NULL) {
        kgt_world_make(&env, w, 1000000);
        return;
    }
    *w = *same_ids;
    kgt_do(&env, "HSET " KGT_PREFIX "{t:%s}:wallet:%s wallet_id %s team_id %s balance_micros 1000000",
           w->team, w->wallet, w->wallet, w->team);
    kgt_hash(&env, w->tok, hex);
    snprintf(svcs, sizeof svcs,
             "{\"key_id\":\"%s\",\"team_id\":\"%s\",\"kind\":\"paid\",\"status\":\"active\","
             "\"users\":[\"%s\"],\"services\":{\"text-generation\":{\"policy\":\"payg\","
             "\"models\":[\"small\"],\"wallet\":\"%s\"}},"
             "\"tokens\":{\"%s\":{\"token_id\":\"tk_x\",\"hash\":\"%s\"}}}",
             w->key, w->team, w->user, w->wallet, w->user, hex);
    kgt_do(&env, "SET " KGT_PREFIX "{t:%s}:key:%s %s", w->team, w->key, svcs);
    kgt_do(&env, "HSET " KGT_PREFIX "{t:%s}:tok:%s key_id %s team_id %s user_id %s token_id tk_x expires_ms 0",
           w->team, hex, w->key, w->team, w->user);
}

int main(void)
{
    kgt_world w, again;
    kgt_req r;
    kg_result res;
    kg_ctx *ctx;
    char err[256];
    int64_t t0, took;
    int ok_after = -1;

    kgt_setup(&env, "timeout_ms 100\n");
    seed(&w, NULL);
    ctx = kg_open(env.conf, err, sizeof err);
    KGT_CHECK(ctx != NULL, "%s", err);
    kgt_request(&r, w.tok, "text-generation", "small", NULL, KGT_P("input_tokens", 1000), NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);

    /* Stalled: the answer comes after timeout_ms, and it is a refusal. */
    kgt_redis_pause(&env, 1);
    t0 = kgt_now_ms();
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_BACKEND_ERROR);
    took = kgt_now_ms() - t0;
    KGT_CHECK(took >= 95 && took < 400, "stalled store answered after %lld ms (timeout_ms 100)", (long long)took);
    KGT_CHECK(res.cost_micros == 0, "backend cost");
    printf("stalled Redis: KG_BACKEND_ERROR after %lld ms\n", (long long)took);
    kgt_redis_pause(&env, 0);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);
    KGT_CHECK(res.cost_micros == 150, "after stall: cost %lld", (long long)res.cost_micros);

    /* Stopped. */
    kgt_redis_stop(&env);
    for (int i = 0; i < 5; i++) {
        t0 = kgt_now_ms();
        KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_BACKEND_ERROR);
        KGT_CHECK(kgt_now_ms() - t0 < 400, "refusal took %lld ms", (long long)(kgt_now_ms() - t0));
        kgt_sleep_ms(20);
    }

    /* Restarted: empty, so reseed as the daemon would at its start; the
     * context reconnects and reloads its scripts (NOSCRIPT) by itself. */
    kgt_redis_start(&env);
    seed(&again, &w);
    for (int i = 0; i < 100; i++) {
        if (kg_authorize(ctx, &r.req, &res) == KG_OK) {
            ok_after = i;
            break;
        }
        KGT_CHECK(res.status == KG_BACKEND_ERROR, "during recovery: %s", kg_status_code(res.status));
        kgt_sleep_ms(10);
    }
    KGT_CHECK(ok_after >= 0, "the context did not recover");
    KGT_CHECK(ok_after <= 1, "recovery needed %d failed requests", ok_after);
    KGT_CHECK(res.cost_micros == 150 && res.balance_micros == 1000000 - 150, "after restart: %lld %lld",
              (long long)res.cost_micros, (long long)res.balance_micros);
    printf("restarted Redis: KG_OK again after %d refused request(s)\n", ok_after);

    /* SCRIPT FLUSH while connected: NOSCRIPT is handled transparently. */
    kgt_do(&env, "SCRIPT FLUSH");
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);
    KGT_CHECK(res.cost_micros == 150, "after SCRIPT FLUSH");

    /* The connection killed under us: the next requests recover. */
    kgt_do(&env, "CLIENT KILL TYPE normal SKIPME yes");
    ok_after = -1;
    for (int i = 0; i < 10 && ok_after < 0; i++)
        if (kg_authorize(ctx, &r.req, &res) == KG_OK)
            ok_after = i;
    KGT_CHECK(ok_after >= 0 && ok_after <= 1, "after CLIENT KILL: %d", ok_after);
    kg_close(ctx);
    kgt_teardown(&env);
    printf("ok: fails closed and recovers\n");
    return 0;
}

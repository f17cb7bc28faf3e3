/*
 * test_stats.c - kg_stats_get: each counter moves with what it counts
 * (cache hits and misses against Redis' own HGETALL count, invalidation
 * messages, store failures) and nothing else; the size argument keeps
 * older and newer hosts safe.
 */
#include "kgt.h"

#include <string.h>

static kgt_env env;

static kg_status ask(kg_ctx *ctx, const char *tok)
{
    kgt_req r;
    kg_result res;

    kgt_request(&r, tok, "text-generation", "small", NULL, KGT_P("input_tokens", 10), NULL);
    return kg_authorize(ctx, &r.req, &res);
}

int main(void)
{
    kgt_world w;
    kg_stats st, before;
    kg_ctx *ctx;
    char err[256], bad[KGC_TOKEN_LEN + 1];
    long long hg0;

    kgt_setup(&env, NULL);                /* cache_ttl_ms 1000 */
    kgt_catalog(&env, NULL);
    kgt_world_make(&env, &w, 1000000);
    ctx = kg_open(env.conf, err, sizeof err);
    KGT_CHECK(ctx != NULL, "%s", err);

    memset(&st, 0xff, sizeof st);
    kg_stats_get(ctx, &st, sizeof st);
    KGT_CHECK(st.cache_hits == 0 && st.cache_misses == 0 && st.invalidations == 0 &&
              st.backend_errors == 0, "fresh context");

    /* Misses are the cold scripts (each reads its token record with one
     * HGETALL: issue 11), hits the rest. */
    hg0 = kgt_calls(&env, "hgetall");
    for (int i = 0; i < 50; i++) {
        KGT_EQ_STATUS(ask(ctx, w.tok), KG_OK);
        kgt_sleep_ms(1);
    }
    kg_stats_get(ctx, &st, sizeof st);
    KGT_CHECK(st.cache_hits + st.cache_misses == 50, "hits %llu + misses %llu",
              (unsigned long long)st.cache_hits, (unsigned long long)st.cache_misses);
    KGT_CHECK((long long)st.cache_misses == kgt_calls(&env, "hgetall") - hg0,
              "misses %llu, HGETALL %lld", (unsigned long long)st.cache_misses,
              kgt_calls(&env, "hgetall") - hg0);
    KGT_CHECK(st.cache_hits > 0, "the cache was never used");

    /* A malformed token is neither: no lookup at all. */
    memcpy(bad, w.tok, sizeof bad);
    bad[5] = bad[5] == 'A' ? 'B' : 'A';
    before = st;
    KGT_EQ_STATUS(ask(ctx, bad), KG_TOKEN_MALFORMED);
    kg_stats_get(ctx, &st, sizeof st);
    KGT_CHECK(st.cache_hits == before.cache_hits && st.cache_misses == before.cache_misses,
              "a malformed token counted as a lookup");

    /* Invalidations: three messages, each counted once. */
    before = st;
    kgt_publish_key(&env, w.key);
    kgt_publish_key(&env, "k_other");
    kgt_do(&env, "PUBLISH " KGT_PREFIX "inval catalog");
    for (int i = 0; i < 200; i++) {
        KGT_EQ_STATUS(ask(ctx, w.tok), KG_OK);
        kg_stats_get(ctx, &st, sizeof st);
        if (st.invalidations >= before.invalidations + 3)
            break;
        kgt_sleep_ms(5);
    }
    KGT_CHECK(st.invalidations == before.invalidations + 3, "invalidations %llu",
              (unsigned long long)(st.invalidations - before.invalidations));
    KGT_CHECK(st.backend_errors == 0, "no store failure yet");

    /* Store failures: Redis down, every request counted once. */
    kgt_redis_stop(&env);
    before = st;
    for (int i = 0; i < 3; i++)
        KGT_EQ_STATUS(ask(ctx, w.tok), KG_BACKEND_ERROR);
    kg_stats_get(ctx, &st, sizeof st);
    KGT_CHECK(st.backend_errors == before.backend_errors + 3, "backend errors %llu",
              (unsigned long long)(st.backend_errors - before.backend_errors));
    kgt_redis_start(&env);

    /* An older host's smaller struct is filled only as far as it goes; a
     * newer host's larger one gets zeros past ours. */
    struct { kg_stats s; uint64_t later[4]; } big;
    memset(&big, 0xff, sizeof big);
    kg_stats_get(ctx, &big.s, sizeof big);
    KGT_CHECK(big.s.backend_errors == st.backend_errors && big.later[0] == 0 && big.later[3] == 0,
              "larger struct");
    uint64_t small[2] = {0, 0xabcdef};
    kg_stats_get(ctx, (kg_stats *)(void *)small, sizeof small[0]);
    KGT_CHECK(small[0] == st.cache_hits && small[1] == 0xabcdef, "smaller struct");
    kg_stats_get(NULL, &st, sizeof st);
    KGT_CHECK(st.cache_hits == 0 && st.backend_errors == 0, "NULL context");

    kg_close(ctx);
    kgt_teardown(&env);
    printf("ok: kg_stats_get counts cache hits/misses, invalidations, store failures\n");
    return 0;
}

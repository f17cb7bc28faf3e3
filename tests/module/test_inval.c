/*
 * test_inval.c - with a warm token cache, a revoked, rotated or unassigned
 * token (and a disabled service) is refused within 1 s of the daemon-style
 * change + PUBLISH, in fact within a few ms; a lost subscription drops the
 * cache; the TTL is the backstop when no message comes.
 */
#include "kgt.h"

#include <string.h>

static kgt_env env;
static kg_ctx *ctx;

static kg_status ask(const char *tok, const char *service)
{
    kgt_req r;
    kg_result res;
    kgt_request(&r, tok, service, service[0] == 't' ? "small" : NULL, NULL,
                KGT_P(service[0] == 't' ? "input_tokens" : "audio_seconds", 10), NULL);
    return kg_authorize(ctx, &r.req, &res);
}

/* Asks until a request is answered from the cache (no cold script: its
 * HGETALL of the token record is not called). */
static void warm(const char *tok)
{
    for (int i = 0; i < 200; i++) {
        long long before = kgt_calls(&env, "hgetall");
        KGT_EQ_STATUS(ask(tok, "text-generation"), KG_OK);
        if (kgt_calls(&env, "hgetall") == before)
            return;
        kgt_sleep_ms(5);
    }
    KGT_CHECK(0, "the token cache never became warm");
}

/* Asks every ms until the answer is `want`; returns the ms it took. */
static long long until(const char *tok, const char *service, kg_status want, int limit_ms)
{
    int64_t t0 = kgt_now_ms();
    kg_status s;
    while ((s = ask(tok, service)) != want) {
        KGT_CHECK(s == KG_OK, "unexpected %s while waiting for %s", kg_status_code(s), kg_status_code(want));
        KGT_CHECK(kgt_now_ms() - t0 < limit_ms, "still %s after %d ms, expected %s",
                  kg_status_code(s), limit_ms, kg_status_code(want));
        kgt_sleep_ms(1);
    }
    return kgt_now_ms() - t0;
}

int main(void)
{
    kgt_world w;
    char err[256], newtok[KGC_TOKEN_LEN + 1], hex[KGC_HASH_HEX_LEN + 1];
    long long ms;

    kgt_setup(&env, NULL);                /* cache_ttl_ms 1000 */
    kgt_catalog(&env, NULL);
    ctx = kg_open(env.conf, err, sizeof err);
    KGT_CHECK(ctx != NULL, "%s", err);

    /* Revocation. */
    kgt_world_make(&env, &w, 1000000000);
    warm(w.tok);
    kgt_revoke(&env, w.team, w.key);
    ms = until(w.tok, "text-generation", KG_KEY_REVOKED, 1000);
    KGT_CHECK(ms < 200, "revocation took %lld ms: push invalidation did not act", ms);
    printf("revoked: refused after %lld ms\n", ms);

    /* Rotation without grace: old refused at once, new accepted. */
    kgt_world_make(&env, &w, 1000000000);
    warm(w.tok);
    kgt_rotate(&env, w.team, w.key, w.user, w.tok, 0, newtok);
    ms = until(w.tok, "text-generation", KG_TOKEN_UNKNOWN, 1000);
    KGT_CHECK(ms < 200, "rotation took %lld ms", ms);
    KGT_EQ_STATUS(ask(newtok, "text-generation"), KG_OK);
    printf("rotated: old token refused after %lld ms\n", ms);

    /* A token record the key no longer names (left behind when two writers
     * raced on token.generate / token.rotate) is refused, even though its
     * key is active and its user assigned: only the current token counts. */
    {
        redisReply *rec;
        char oldhex[KGC_HASH_HEX_LEN + 1];

        kgt_world_make(&env, &w, 1000000000);
        kgt_hash(&env, w.tok, oldhex);
        rec = kgt_cmd(&env, "HGET " KGT_PREFIX "{t:%s}:tok:%s token_id", w.team, oldhex);
        KGT_CHECK(rec->type == REDIS_REPLY_STRING, "token record");
        char tid[64];
        snprintf(tid, sizeof tid, "%s", rec->str);
        freeReplyObject(rec);
        kgt_rotate(&env, w.team, w.key, w.user, w.tok, 0, newtok);
        kgt_do(&env, "HSET " KGT_PREFIX "{t:%s}:tok:%s key_id %s team_id %s user_id %s token_id %s expires_ms 0",
               w.team, oldhex, w.key, w.team, w.user, tid);
        kgt_publish_key(&env, w.key);
        ms = until(w.tok, "text-generation", KG_TOKEN_UNKNOWN, 1000);
        KGT_CHECK(ms < 200, "orphaned token still accepted after %lld ms", ms);
        KGT_EQ_STATUS(ask(newtok, "text-generation"), KG_OK);
        printf("orphaned token record: refused\n");
    }

    /* Rotation with a 1.5 s grace: the old token works until then (even
     * from the cache), and is refused within 1 s after. */
    kgt_world_make(&env, &w, 1000000000);
    warm(w.tok);
    int64_t t0 = kgt_now_ms();
    kgt_rotate(&env, w.team, w.key, w.user, w.tok, 1500, newtok);
    kgt_sleep_ms(20);
    KGT_EQ_STATUS(ask(w.tok, "text-generation"), KG_OK);
    KGT_EQ_STATUS(ask(newtok, "text-generation"), KG_OK);
    warm(w.tok);
    kgt_sleep_ms((int)(1400 - (kgt_now_ms() - t0)));
    ms = until(w.tok, "text-generation", KG_TOKEN_UNKNOWN, 1200);
    printf("grace rotation: old token refused %lld ms after the grace period\n",
           (long long)(kgt_now_ms() - t0 - 1500));
    KGT_CHECK(kgt_now_ms() - t0 >= 1490 && kgt_now_ms() - t0 < 2500, "grace end at %lld ms",
              (long long)(kgt_now_ms() - t0));

    /* Unassignment. */
    kgt_world_make(&env, &w, 1000000000);
    warm(w.tok);
    kgt_unassign(&env, w.team, w.key, w.user, w.tok);
    ms = until(w.tok, "text-generation", KG_TOKEN_UNKNOWN, 1000);
    KGT_CHECK(ms < 200, "unassignment took %lld ms", ms);
    printf("unassigned: refused after %lld ms\n", ms);

    /* Services change: text-generation disabled on the key. */
    kgt_world_make(&env, &w, 1000000000);
    warm(w.tok);
    json_t *doc = kgt_key_doc(&env, w.team, w.key);
    json_object_del(json_object_get(doc, "services"), "text-generation");
    kgt_key_save(&env, w.team, w.key, doc);
    json_decref(doc);
    kgt_publish_key(&env, w.key);
    ms = until(w.tok, "text-generation", KG_SERVICE_DISABLED, 1000);
    KGT_CHECK(ms < 200, "services change took %lld ms", ms);
    KGT_EQ_STATUS(ask(w.tok, "speech-to-text"), KG_OK);

    /* A lost subscription drops the whole cache: a silent revocation (no
     * message) is seen as soon as the subscriber connection dies. */
    kgt_world_make(&env, &w, 1000000000);
    warm(w.tok);
    doc = kgt_key_doc(&env, w.team, w.key);
    json_object_set_new(doc, "status", json_string("revoked"));
    kgt_key_save(&env, w.team, w.key, doc);
    json_decref(doc);
    KGT_EQ_STATUS(ask(w.tok, "text-generation"), KG_OK);   /* still cached: no message */
    kgt_do(&env, "CLIENT KILL TYPE pubsub");
    ms = until(w.tok, "text-generation", KG_KEY_REVOKED, 1000);
    KGT_CHECK(ms < 200, "subscription loss took %lld ms", ms);
    printf("subscription lost: cache dropped, refused after %lld ms\n", ms);

    /* No message at all: the TTL (1000 ms) is the backstop. */
    kgt_world_make(&env, &w, 1000000000);
    warm(w.tok);
    kgt_hash(&env, w.tok, hex);
    kgt_do(&env, "DEL " KGT_PREFIX "{t:%s}:tok:%s", w.team, hex);
    ms = until(w.tok, "text-generation", KG_TOKEN_UNKNOWN, 1100);
    printf("silent unassignment: refused after %lld ms (TTL backstop)\n", ms);

    /* cache_ttl_ms 0: every request resolves in Redis (the cold script:
     * one HGETALL of the token record each, and one EVALSHA). */
    kg_close(ctx);
    ctx = kg_open(kgt_write_conf(&env, "nocache.conf", "cache_ttl_ms 0\n"), err, sizeof err);
    KGT_CHECK(ctx != NULL, "%s", err);
    kgt_world_make(&env, &w, 1000000000);
    for (int i = 0; i < 5; i++) {
        long long before = kgt_calls(&env, "hgetall"), ev = kgt_calls(&env, "evalsha");
        KGT_EQ_STATUS(ask(w.tok, "text-generation"), KG_OK);
        KGT_CHECK(kgt_calls(&env, "hgetall") == before + 1, "cache_ttl_ms 0 used a cache");
        KGT_CHECK(kgt_calls(&env, "evalsha") == ev + 1, "a cold request took %lld scripts",
                  kgt_calls(&env, "evalsha") - ev);
        kgt_sleep_ms(3);
    }
    kg_close(ctx);
    kgt_teardown(&env);
    printf("ok: invalidation within 1 s on a warm cache\n");
    return 0;
}

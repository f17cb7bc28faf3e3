/*
 * test_limits.c - issue 13's per-key limits against a real Redis, with the
 * key document written as key.update writes it (kgt_key_field):
 *   expiry      expires_at refuses with KG_KEY_EXPIRED from the moment it
 *               passes, from a warm cache too; nothing charged.
 *   budgets     budget_day_micros / budget_month_micros: 8 processes racing
 *               admit exactly as many requests as fit (none over the cap,
 *               none refused below it); a hold counts at its amount, its
 *               settle brings the spend down to the actual cost.
 *   rate limits per_minute under 8 processes: exactly the limit admitted;
 *               per_second: exactly the limit inside one second (checked on
 *               Redis' clock), admitted again once the window slid;
 *               retry_after_ms within the window. The free (quota) script
 *               and the debit script both.
 */
#include "kgt.h"

#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define PROCS 8

static kgt_env env;

static const char catalog[] =
    "{\"currency\":\"USD\",\"services\":["
    "{\"id\":\"speech-to-text\",\"name\":\"STT\",\"free\":true,\"models\":["
    " {\"id\":\"fast\",\"price\":{\"base_micros\":100,\"per\":["
    "  {\"param\":\"audio_seconds\",\"micros\":40,\"units\":1}]}}]},"
    "{\"id\":\"llm\",\"name\":\"LLM\",\"free\":false,\"settle\":true,\"models\":["
    " {\"id\":\"m1\",\"price\":{\"per\":["
    "  {\"param\":\"output_tokens\",\"micros\":1000,\"units\":1,\"measured\":true,\"max\":50}]}}]},"
    "{\"id\":\"text-generation\",\"name\":\"Text\",\"free\":false,\"models\":["
    " {\"id\":\"small\",\"price\":{\"per\":["
    "  {\"param\":\"input_tokens\",\"micros\":150,\"units\":1000},"
    "  {\"param\":\"output_tokens\",\"micros\":600,\"units\":1000}]}}]}]}";

static void world_make(kgt_world *w, int64_t balance)
{
    char svcs[512];

    kgt_team(&env, w->team);
    kgt_wallet(&env, w->team, balance, w->wallet);
    snprintf(svcs, sizeof svcs,
             "{\"text-generation\":{\"policy\":\"payg\",\"models\":[\"small\"],\"wallet\":\"%s\"},"
             "\"llm\":{\"policy\":\"payg\",\"models\":[\"m1\"],\"wallet\":\"%s\"},"
             "\"speech-to-text\":{\"policy\":\"free\"}}", w->wallet, w->wallet);
    kgt_key(&env, w->team, "paid", svcs, w->key);
    kgc_id_user(w->user);
    kgt_token(&env, w->team, w->key, w->user, 0, w->tok);
}

/* What PROCS processes saw: one count per status. */
typedef struct tally {
    int n[KG_RATE_LIMITED + 1];
    int64_t max_retry, min_retry;     /* over the KG_RATE_LIMITED answers */
} tally;

/* PROCS processes, each with its own context, send `each` copies of the
 * request as fast as they can. */
static void race(const kgt_world *w, const char *svc, const char *model, int64_t in,
                 int each, tally *t)
{
    int fds[2];
    pid_t pids[PROCS];

    memset(t, 0, sizeof *t);
    t->min_retry = INT64_MAX;
    KGT_CHECK(pipe(fds) == 0, "pipe");
    for (int i = 0; i < PROCS; i++) {
        pids[i] = fork();
        KGT_CHECK(pids[i] >= 0, "fork");
        if (pids[i] == 0) {
            tally mine;
            char err[256];
            kg_ctx *ctx;
            kgt_req r;
            kg_result res;
            kg_hold h;

            close(fds[0]);
            memset(&mine, 0, sizeof mine);
            mine.min_retry = INT64_MAX;
            if ((ctx = kg_open(env.conf, err, sizeof err)) == NULL)
                _exit(2);
            if (model != NULL)
                kgt_request(&r, w->tok, svc, model, NULL, KGT_P("input_tokens", in), NULL);
            else
                kgt_request(&r, w->tok, svc, NULL, NULL, KGT_P("audio_seconds", in), NULL);
            for (int k = 0; k < each; k++) {
                kg_status st = kg_authorize_hold(ctx, &r.req, &res, &h, sizeof h);
                if ((unsigned)st > KG_RATE_LIMITED)
                    _exit(3);
                mine.n[st]++;
                if (st == KG_RATE_LIMITED) {
                    if (h.retry_after_ms > mine.max_retry)
                        mine.max_retry = h.retry_after_ms;
                    if (h.retry_after_ms < mine.min_retry)
                        mine.min_retry = h.retry_after_ms;
                }
            }
            kg_close(ctx);
            _exit(write(fds[1], &mine, sizeof mine) == sizeof mine ? 0 : 4);
        }
    }
    close(fds[1]);
    for (int i = 0; i < PROCS; i++) {
        tally one;
        int st;
        KGT_CHECK(waitpid(pids[i], &st, 0) == pids[i], "waitpid");
        KGT_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "process %d failed (%d)", i, st);
        KGT_CHECK(read(fds[0], &one, sizeof one) == sizeof one, "read");
        for (int s = 0; s <= KG_RATE_LIMITED; s++)
            t->n[s] += one.n[s];
        if (one.max_retry > t->max_retry)
            t->max_retry = one.max_retry;
        if (one.min_retry < t->min_retry)
            t->min_retry = one.min_retry;
    }
    close(fds[0]);
}

static long long redis_ms(void)
{
    redisReply *r = kgt_cmd(&env, "TIME");
    long long ms = strtoll(r->element[0]->str, NULL, 10) * 1000 +
                   strtoll(r->element[1]->str, NULL, 10) / 1000;
    freeReplyObject(r);
    return ms;
}

static long long spend(const kgt_world *w, const char *kind)
{
    char day[16], tag[16];

    kgt_today(day);
    snprintf(tag, sizeof tag, "%s", day);
    if (kind[0] == 'm')
        tag[6] = '\0';                 /* yyyymm */
    return kgt_int(&env, "GET " KGT_PREFIX "{t:%s}:spend:%s:%s:%s", w->team, w->key, kind, tag);
}

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

static void budgets(void)
{
    kgt_world w;
    tally t;
    kgt_req r;
    kg_result res;
    kg_hold h;
    kg_ctx *ctx;
    char err[256];
    const int fit = 37;                 /* requests of 150 that fit the day's cap */

    world_make(&w, 1000000000);
    /* 150 micros a request; the cap leaves 149 over: 37 fit, the 38th not. */
    kgt_key_field(&env, w.team, w.key, "budget_day_micros", json_integer(150 * fit + 149));
    race(&w, "text-generation", "small", 1000, 10, &t);
    KGT_CHECK(t.n[KG_OK] == fit && t.n[KG_BUDGET_EXCEEDED] == PROCS * 10 - fit,
              "day budget: %d admitted, %d refused (want %d, %d)", t.n[KG_OK],
              t.n[KG_BUDGET_EXCEEDED], fit, PROCS * 10 - fit);
    KGT_CHECK(spend(&w, "d") == 150 * fit, "day spend %lld", spend(&w, "d"));
    KGT_CHECK(kgt_balance(&env, &w) == 1000000000 - 150 * fit, "balance %lld", kgt_balance(&env, &w));
    KGT_CHECK(kgt_ledger_len(&env, &w) == fit + 1, "ledger %lld", kgt_ledger_len(&env, &w));
    KGT_CHECK(kgt_int(&env, "EXISTS " KGT_PREFIX "{t:%s}:spend:%s:m:000000", w.team, w.key) == 0 &&
              spend(&w, "m") == 0, "month counted without a month cap");

    ctx = kg_open(env.conf, err, sizeof err);
    KGT_CHECK(ctx != NULL, "kg_open: %s", err);
    /* Exactly 149 left today: a request of 149 passes, then nothing. */
    kgt_request(&r, w.tok, "text-generation", "small", NULL, KGT_P("input_tokens", 993), NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);
    KGT_CHECK(res.cost_micros == 149, "cost %lld", (long long)res.cost_micros);
    kgt_request(&r, w.tok, "text-generation", "small", NULL, KGT_P("input_tokens", 1), NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_BUDGET_EXCEEDED);
    KGT_CHECK(res.cost_micros == 0 && strcmp(res.wallet_id, w.wallet) == 0, "refusal result");
    /* A cap raised (key.update) applies at once. */
    kgt_key_field(&env, w.team, w.key, "budget_day_micros", json_integer(150 * fit + 149 + 1));
    kgt_sleep_ms(20);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);

    /* Month cap alone, day cap removed: counted from when it is set. */
    kgt_key_field(&env, w.team, w.key, "budget_day_micros", NULL);
    kgt_key_field(&env, w.team, w.key, "budget_month_micros", json_integer(450));
    kgt_sleep_ms(20);
    kgt_request(&r, w.tok, "text-generation", "small", NULL, KGT_P("input_tokens", 1000), NULL);
    for (int i = 0; i < 3; i++)
        KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_BUDGET_EXCEEDED);
    KGT_CHECK(spend(&w, "m") == 450, "month spend %lld", spend(&w, "m"));

    /* Holds: counted at the hold (50 tokens max = 50000), settled down to
     * the actual cost; a budget that cannot take the hold refuses it. */
    kgt_key_field(&env, w.team, w.key, "budget_month_micros", NULL);
    long long d0 = spend(&w, "d");
    kgt_key_field(&env, w.team, w.key, "budget_day_micros", json_integer(d0 + 90000));
    kgt_sleep_ms(20);
    kgt_request(&r, w.tok, "llm", "m1", "h-1", NULL);
    KGT_EQ_STATUS(kg_authorize_hold(ctx, &r.req, &res, &h, sizeof h), KG_OK);
    KGT_CHECK(h.hold_micros == 50000 && spend(&w, "d") == d0 + 50000, "hold counted: %lld",
              spend(&w, "d") - d0);
    kgt_request(&r, w.tok, "llm", "m1", "h-2", NULL);
    KGT_EQ_STATUS(kg_authorize_hold(ctx, &r.req, &res, &h, sizeof h), KG_BUDGET_EXCEEDED);
    KGT_CHECK(kgt_int(&env, "EXISTS " KGT_PREFIX "{t:%s}:req:%s:h-2", w.team, w.key) == 0,
              "refused hold left a record");
    kgt_request(&r, w.tok, "llm", "m1", "h-1", KGT_P("output_tokens", 7), NULL);
    KGT_EQ_STATUS(kg_settle(ctx, &r.req, &res, &h, sizeof h), KG_OK);
    KGT_CHECK(res.cost_micros == 7000 && spend(&w, "d") == d0 + 7000, "settled spend %lld",
              spend(&w, "d") - d0);
    KGT_EQ_STATUS(kg_settle(ctx, &r.req, &res, &h, sizeof h), KG_OK);   /* a retry */
    KGT_CHECK(res.replayed && spend(&w, "d") == d0 + 7000, "retried settle moved the spend");
    kgt_request(&r, w.tok, "llm", "m1", "h-2", NULL);
    KGT_EQ_STATUS(kg_authorize_hold(ctx, &r.req, &res, &h, sizeof h), KG_OK);
    kg_close(ctx);
    printf("ok: budgets: %d processes, exactly %d of %d admitted under the day cap; "
           "month cap; holds count, settles adjust\n", PROCS, fit, PROCS * 10);
}

static void rates(void)
{
    kgt_world w;
    tally t;
    kgt_req r;
    kg_result res;
    kg_hold h;
    kg_ctx *ctx;
    char err[256];
    long long t0, t1;
    int tries = 0;

    world_make(&w, 1000000000);
    /* per_minute, debit script: 80 attempts within far less than a minute. */
    kgt_key_field(&env, w.team, w.key, "rate_limits",
                  json_pack("{s:{s:i}}", "text-generation", "per_minute", 29));
    race(&w, "text-generation", "small", 1000, 10, &t);
    KGT_CHECK(t.n[KG_OK] == 29 && t.n[KG_RATE_LIMITED] == PROCS * 10 - 29,
              "per_minute: %d admitted, %d limited", t.n[KG_OK], t.n[KG_RATE_LIMITED]);
    KGT_CHECK(t.min_retry >= 1 && t.max_retry <= 60000, "retry_after_ms %lld..%lld",
              (long long)t.min_retry, (long long)t.max_retry);
    KGT_CHECK(kgt_balance(&env, &w) == 1000000000 - 29 * 150, "only the admitted were charged");
    KGT_CHECK(kgt_int(&env, "ZCARD " KGT_PREFIX "{t:%s}:rate:%s:text-generation", w.team, w.key)
              == 29, "window log");

    /* per_second, quota script: all attempts inside one second of Redis'
     * clock admit exactly the limit. A slow machine may stretch a round
     * over a second: then it proves nothing, and is run again. */
    kgt_key_field(&env, w.team, w.key, "rate_limits",
                  json_pack("{s:{s:i}}", "speech-to-text", "per_second", 7));
    do {
        kgt_sleep_ms(1100);
        t0 = redis_ms();
        race(&w, "speech-to-text", NULL, 1, 4, &t);
        t1 = redis_ms();
    } while (t1 - t0 >= 1000 && ++tries < 4);
    KGT_CHECK(t1 - t0 < 1000, "no round within a second (%lld ms)", t1 - t0);
    KGT_CHECK(t.n[KG_OK] == 7 && t.n[KG_RATE_LIMITED] == PROCS * 4 - 7,
              "per_second: %d admitted, %d limited in %lld ms", t.n[KG_OK], t.n[KG_RATE_LIMITED],
              t1 - t0);
    KGT_CHECK(t.min_retry >= 1 && t.max_retry <= 1000, "retry_after_ms %lld..%lld",
              (long long)t.min_retry, (long long)t.max_retry);

    /* Waiting retry_after_ms is enough; the other service is not limited. */
    ctx = kg_open(env.conf, err, sizeof err);
    KGT_CHECK(ctx != NULL, "kg_open: %s", err);
    kgt_request(&r, w.tok, "speech-to-text", NULL, NULL, KGT_P("audio_seconds", 1), NULL);
    for (int i = 0; i < 7; i++)
        (void)kg_authorize(ctx, &r.req, &res);
    KGT_EQ_STATUS(kg_authorize_hold(ctx, &r.req, &res, &h, sizeof h), KG_RATE_LIMITED);
    KGT_CHECK(h.retry_after_ms >= 1 && h.retry_after_ms <= 1000, "retry %lld",
              (long long)h.retry_after_ms);
    KGT_CHECK(kg_http_status(KG_RATE_LIMITED) == 429 &&
              strcmp(kg_status_code(KG_RATE_LIMITED), "rate_limited") == 0, "429 rate_limited");
    kgt_sleep_ms((int)h.retry_after_ms + 5);
    KGT_EQ_STATUS(kg_authorize_hold(ctx, &r.req, &res, &h, sizeof h), KG_OK);
    KGT_CHECK(h.retry_after_ms == 0, "retry_after_ms on an admitted request");
    kgt_request(&r, w.tok, "text-generation", "small", NULL, KGT_P("input_tokens", 1000), NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);

    /* Both limits on one key and service (one log, two windows): 3 a
     * second, 5 a minute. */
    world_make(&w, 1000000000);
    kgt_key_field(&env, w.team, w.key, "rate_limits",
                  json_pack("{s:{s:i,s:i}}", "text-generation", "per_second", 3, "per_minute", 5));
    kgt_sleep_ms(20);
    kgt_request(&r, w.tok, "text-generation", "small", NULL, KGT_P("input_tokens", 1000), NULL);
    int admitted = 0, waits = 0;
    int64_t b0 = kgt_wall_ms();
    while (admitted < 5 && waits < 6) {
        kg_status st = kg_authorize_hold(ctx, &r.req, &res, &h, sizeof h);
        if (st == KG_OK) {
            admitted++;
            continue;
        }
        KGT_EQ_STATUS(st, KG_RATE_LIMITED);
        KGT_CHECK(admitted == 3 && h.retry_after_ms >= 1 && h.retry_after_ms <= 1000,
                  "second window: %d admitted, wait %lld", admitted, (long long)h.retry_after_ms);
        waits++;
        kgt_sleep_ms((int)h.retry_after_ms + 5);
    }
    KGT_CHECK(admitted == 5 && waits == 1, "%d admitted, %d waits", admitted, waits);
    KGT_EQ_STATUS(kg_authorize_hold(ctx, &r.req, &res, &h, sizeof h), KG_RATE_LIMITED);
    KGT_CHECK(h.retry_after_ms > 1000 && h.retry_after_ms <= 60000 - (kgt_wall_ms() - b0) + 50,
              "minute window: wait %lld", (long long)h.retry_after_ms);
    kg_close(ctx);
    printf("ok: rate limits: per_minute exactly 29 of %d (%d processes); per_second exactly 7 "
           "of %d in %lld ms; admitted again after retry_after_ms; both windows on one key\n", PROCS * 10, PROCS,
           PROCS * 4, t1 - t0);
}

int main(void)
{
    kgt_setup(&env, "timeout_ms 2000\n");
    kgt_catalog(&env, catalog);
    expiry();
    budgets();
    rates();
    kgt_teardown(&env);
    return 0;
}

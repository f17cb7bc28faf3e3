/*
 * test_coldwarm.c - a cold request (no cache entry: ONE script on the
 * team's slot that resolves the token, checks the key and charges, issue
 * 11) and a warm one (the entry in the cache: the checks in C, then the
 * money script) give the same answer for the same request.
 *
 * Every case is played twice on two worlds made alike: once through a
 * context without a cache (cache_ttl_ms 0: every request cold), once
 * through a context whose cache holds the token's entry (warmed with a
 * request for a service the catalog does not know, which moves nothing).
 * Each step's status, cost, balance, replay flag and hold, and the
 * wallet's balance, held amount and ledger length afterwards, must be
 * equal. The cold run must take exactly one EVALSHA per request and the
 * warm run must be served from the cache on every step.
 */
#include "kgt.h"

#include <stdlib.h>
#include <string.h>

static kgt_env env;

static const char catalog[] =
    "{\"currency\":\"USD\",\"services\":["
    "{\"id\":\"speech-to-text\",\"name\":\"STT\",\"free\":true,\"free_quota\":{\"requests_per_day\":3},"
    " \"models\":[{\"id\":\"fast\",\"price\":{\"base_micros\":100,"
    "  \"per\":[{\"param\":\"audio_seconds\",\"micros\":40,\"units\":1}]}}]},"
    "{\"id\":\"image\",\"name\":\"Image\",\"free\":true,"
    " \"models\":[{\"id\":\"pix\",\"price\":{\"base_micros\":100}}]},"
    "{\"id\":\"text-generation\",\"name\":\"Text\",\"free\":false,\"models\":["
    " {\"id\":\"small\",\"price\":{\"base_micros\":0,\"per\":["
    "  {\"param\":\"input_tokens\",\"micros\":150,\"units\":1000},"
    "  {\"param\":\"output_tokens\",\"micros\":600,\"units\":1000}]}},"
    " {\"id\":\"large\",\"price\":{\"base_micros\":500,\"per\":["
    "  {\"param\":\"input_tokens\",\"micros\":900,\"units\":1000}]}}]},"
    "{\"id\":\"llm\",\"name\":\"LLM\",\"free\":false,\"settle\":true,\"models\":["
    " {\"id\":\"m1\",\"price\":{\"base_micros\":100,\"per\":["
    "  {\"param\":\"input_tokens\",\"micros\":150,\"units\":1000},"
    "  {\"param\":\"output_tokens\",\"micros\":600,\"units\":1000,\"measured\":true,\"max\":4096}]}},"
    " {\"id\":\"nomax\",\"price\":{\"per\":["
    "  {\"param\":\"output_tokens\",\"micros\":600,\"units\":1000,\"measured\":true}]}}]}]}";

typedef struct world {
    char team[KGC_ID_MAX], wallet[KGC_ID_MAX], key[KGC_ID_MAX], user[KGC_ID_MAX];
    char tok[KGC_TOKEN_LEN + 1];   /* the token the case's requests carry */
} world;

static void world_make(world *w, int64_t balance, const char *policy_extra)
{
    char svcs[1024];

    kgt_team(&env, w->team);
    kgt_wallet(&env, w->team, balance, w->wallet);
    snprintf(svcs, sizeof svcs,
             "{\"text-generation\":{\"policy\":\"payg\",\"models\":[\"small\"],\"wallet\":\"%s\"},"
             "\"llm\":{\"policy\":\"payg\",\"models\":[\"m1\",\"nomax\"],\"wallet\":\"%s\"},"
             "\"speech-to-text\":{\"policy\":\"free\"}%s}",
             w->wallet, w->wallet, policy_extra != NULL ? policy_extra : "");
    kgt_key(&env, w->team, "paid", svcs, w->key);
    kgc_id_user(w->user);
    kgt_token(&env, w->team, w->key, w->user, 0, w->tok);
}

/* ---- the cases' changes to a fresh world --------------------------------- */

static void put_record(world *w, const char *tok, int64_t expires_ms)
{
    char hex[KGC_HASH_HEX_LEN + 1];

    kgt_hash(&env, tok, hex);
    kgt_do(&env, "HSET " KGT_PREFIX "{t:%s}:tok:%s key_id %s team_id %s user_id %s "
                 "token_id tk_put expires_ms %lld",
           w->team, hex, w->key, w->team, w->user, (long long)expires_ms);
}

static void set_none(world *w) { (void)w; }
static void set_revoked(world *w) { kgt_revoke(&env, w->team, w->key); }
static void set_key_expired(world *w)
{
    kgt_key_field(&env, w->team, w->key, "expires_at", json_integer(kgt_wall_ms() - 1000));
}
static void set_key_expires_later(world *w)
{
    kgt_key_field(&env, w->team, w->key, "expires_at", json_integer(kgt_wall_ms() + 3600000));
}
static void set_unassigned_left(world *w)
{
    /* unassigned, but its record put back (a lost race): not a token */
    kgt_unassign(&env, w->team, w->key, w->user, w->tok);
    put_record(w, w->tok, 0);
}
static void set_rotated_left(world *w)
{
    char fresh[KGC_TOKEN_LEN + 1];
    /* rotated, the old record put back: only the current token counts */
    kgt_rotate(&env, w->team, w->key, w->user, w->tok, 0, fresh);
    put_record(w, w->tok, 0);
}
static void set_grace(world *w)
{
    char fresh[KGC_TOKEN_LEN + 1];
    kgt_rotate(&env, w->team, w->key, w->user, w->tok, 60000, fresh);
}
static void set_unknown(world *w)
{
    kgc_token_generate(w->team, w->tok);     /* well-formed, never issued */
}
static void set_grace_over(world *w)
{
    char fresh[KGC_TOKEN_LEN + 1];
    kgt_rotate(&env, w->team, w->key, w->user, w->tok, 60000, fresh);
    put_record(w, w->tok, kgt_wall_ms() - 10);
}
static void set_budget(world *w)
{
    kgt_key_field(&env, w->team, w->key, "budget_day_micros", json_integer(700));
}
static void set_rate(world *w)
{
    kgt_key_field(&env, w->team, w->key, "rate_limits",
                  json_pack("{s:{s:i}}", "text-generation", "per_second", 1));
}
static void set_foreign_wallet(world *w)
{
    json_t *doc = kgt_key_doc(&env, w->team, w->key);
    json_object_set_new(json_object_get(json_object_get(doc, "services"), "text-generation"),
                        "wallet", json_string("w_ZZZZZZZZZZZZabcdefgh"));
    kgt_key_save(&env, w->team, w->key, doc);
    json_decref(doc);
    kgt_publish_key(&env, w->key);
}
static void set_free_on_paid(world *w)
{
    json_t *doc = kgt_key_doc(&env, w->team, w->key);
    json_object_set_new(json_object_get(doc, "services"), "text-generation",
                        json_pack("{s:s}", "policy", "free"));
    kgt_key_save(&env, w->team, w->key, doc);
    json_decref(doc);
    kgt_publish_key(&env, w->key);
}
static void set_damaged(world *w)
{
    json_t *doc = kgt_key_doc(&env, w->team, w->key);
    json_object_set_new(json_object_get(doc, "services"), "image",
                        json_pack("{s:s}", "policy", "sometimes"));
    kgt_key_save(&env, w->team, w->key, doc);
    json_decref(doc);
    kgt_publish_key(&env, w->key);
}

/* ---- cases --------------------------------------------------------------- */

typedef struct step {
    int settle;
    const char *svc, *model, *rid;
    const char *p1;
    int64_t v1;
    const char *p2;
    int64_t v2;
} step;

typedef struct kcase {
    const char *name;
    void (*setup)(world *w);
    int64_t balance;
    int warmable;                 /* 0: the token resolves to no cache entry */
    step steps[6];
} kcase;

#define TG "text-generation"
#define STT "speech-to-text"
#define IN "input_tokens"
#define OUT "output_tokens"

static const kcase cases[] = {
    {"payg ok", set_none, 1000000, 1, {{0, TG, "small", NULL, IN, 2000, OUT, 500}}},
    {"payg default model", set_none, 1000000, 1, {{0, TG, NULL, NULL, IN, 10, NULL, 0}}},
    {"unknown model", set_none, 1000000, 1, {{0, TG, "huge", NULL, IN, 10, NULL, 0}}},
    {"model denied", set_none, 1000000, 1, {{0, TG, "large", NULL, IN, 10, NULL, 0}}},
    {"unknown param", set_none, 1000000, 1, {{0, TG, "small", NULL, "colour", 1, NULL, 0}}},
    {"negative param", set_none, 1000000, 1, {{0, TG, "small", NULL, IN, -5, NULL, 0}}},
    {"unknown service", set_none, 1000000, 1, {{0, "nosuch", NULL, NULL, NULL, 0, NULL, 0}}},
    {"service not on key", set_none, 1000000, 1, {{0, "image", NULL, NULL, NULL, 0, NULL, 0}}},
    {"free quota", set_none, 1000000, 1,
     {{0, STT, NULL, NULL, "audio_seconds", 3, NULL, 0}, {0, STT, NULL, "q1", "audio_seconds", 3, NULL, 0},
      {0, STT, NULL, "q1", "audio_seconds", 3, NULL, 0}, {0, STT, NULL, NULL, NULL, 0, NULL, 0},
      {0, STT, NULL, NULL, NULL, 0, NULL, 0}}},
    {"replay and conflict", set_none, 1000000, 1,
     {{0, TG, "small", "r1", IN, 2000, NULL, 0}, {0, TG, "small", "r1", IN, 2000, NULL, 0},
      {0, TG, "small", "r1", IN, 2001, NULL, 0}, {0, STT, NULL, "r1", NULL, 0, NULL, 0},
      {0, TG, "small", "r2", IN, 1, NULL, 0}}},
    {"funds", set_none, 100, 1,
     {{0, TG, "small", NULL, IN, 2000, OUT, 500}, {0, TG, "small", "f1", IN, 100, NULL, 0}}},
    {"hold and settle", set_none, 1000000, 1,
     {{0, "llm", "m1", "h1", IN, 1000, NULL, 0}, {0, "llm", "m1", "h1", IN, 1000, NULL, 0},
      {1, "llm", "m1", "h1", IN, 1000, OUT, 500}, {1, "llm", "m1", "h1", IN, 1000, OUT, 500},
      {1, "llm", "m1", "nohold", IN, 1, NULL, 0}, {0, "llm", "m1", NULL, IN, 1, NULL, 0}}},
    {"hold without max", set_none, 1000000, 1,
     {{0, "llm", "nomax", "h2", OUT, 10, NULL, 0}, {1, TG, "small", "h2", IN, 1, NULL, 0}}},
    {"hold funds", set_none, 1000, 1, {{0, "llm", "m1", "h3", IN, 1000, NULL, 0}}},
    {"revoked", set_revoked, 1000000, 1,
     {{0, TG, "small", NULL, IN, 10, NULL, 0}, {0, STT, NULL, NULL, NULL, 0, NULL, 0}}},
    {"key expired", set_key_expired, 1000000, 1, {{0, TG, "small", NULL, IN, 10, NULL, 0}}},
    {"key expires later", set_key_expires_later, 1000000, 1, {{0, TG, "small", NULL, IN, 10, NULL, 0}}},
    {"unassigned, record left", set_unassigned_left, 1000000, 1,
     {{0, TG, "small", NULL, IN, 10, NULL, 0}}},
    {"rotated, record left", set_rotated_left, 1000000, 1, {{0, TG, "small", NULL, IN, 10, NULL, 0}}},
    {"grace token", set_grace, 1000000, 1, {{0, TG, "small", NULL, IN, 10, NULL, 0}}},
    {"grace over", set_grace_over, 1000000, 0, {{0, TG, "small", NULL, IN, 10, NULL, 0}}},
    {"unknown token", set_unknown, 1000000, 0, {{0, TG, "small", NULL, IN, 10, NULL, 0}}},
    {"budget", set_budget, 1000000, 1,
     {{0, TG, "small", NULL, IN, 2000, OUT, 500}, {0, TG, "small", NULL, IN, 100, NULL, 0},
      {0, "llm", "m1", "b1", IN, 10, NULL, 0}}},
    {"rate", set_rate, 1000000, 1,
     {{0, TG, "small", NULL, IN, 10, NULL, 0}, {0, TG, "small", NULL, IN, 10, NULL, 0}}},
    {"wallet of another team", set_foreign_wallet, 1000000, 1,
     {{0, TG, "small", NULL, IN, 10, NULL, 0}}},
    {"free policy on a paid service", set_free_on_paid, 1000000, 1,
     {{0, TG, "small", NULL, IN, 10, NULL, 0}}},
    {"damaged document", set_damaged, 1000000, 0, {{0, TG, "small", NULL, IN, 10, NULL, 0}}},
};

typedef struct outcome {
    kg_status st[6];
    kg_result r[6];
    kg_hold h[6];
    long long balance, held, ledger;
    unsigned long long hits;
    long long evals;
} outcome;

static int nsteps(const kcase *c)
{
    int n = 0;
    while (n < 6 && c->steps[n].svc != NULL)
        n++;
    return n;
}

static kg_status do_step(kg_ctx *ctx, const world *w, const step *s, kg_result *res, kg_hold *h)
{
    kgt_req r;

    if (s->p2 != NULL)
        kgt_request(&r, w->tok, s->svc, s->model, s->rid, KGT_P(s->p1, s->v1), KGT_P(s->p2, s->v2), NULL);
    else if (s->p1 != NULL)
        kgt_request(&r, w->tok, s->svc, s->model, s->rid, KGT_P(s->p1, s->v1), NULL);
    else
        kgt_request(&r, w->tok, s->svc, s->model, s->rid, NULL);
    memset(h, 0, sizeof *h);
    if (s->settle)
        return kg_settle(ctx, &r.req, res, h, sizeof *h);
    return kg_authorize_hold(ctx, &r.req, res, h, sizeof *h);
}

/* A request that resolves the token and moves nothing (the catalog does
 * not know the service), asked until one is answered from the cache. */
static void warm(kg_ctx *ctx, const world *w)
{
    kg_stats a, b;
    kgt_req r;
    kg_result res;

    for (int i = 0; i < 200; i++) {
        kg_stats_get(ctx, &a, sizeof a);
        kgt_request(&r, w->tok, "warm-up", NULL, NULL, NULL);
        kg_authorize(ctx, &r.req, &res);
        kg_stats_get(ctx, &b, sizeof b);
        if (b.cache_hits > a.cache_hits)
            return;
        kgt_sleep_ms(5);
    }
    KGT_CHECK(0, "the token cache never became warm");
}

static long long wallet_field(const world *w, const char *f)
{
    return kgt_int(&env, "HGET " KGT_PREFIX "{t:%s}:wallet:%s %s", w->team, w->wallet, f);
}

static void play(kg_ctx *ctx, const kcase *c, int warm_it, outcome *o)
{
    world w;
    kg_stats a, b;
    long long ev;

    memset(o, 0, sizeof *o);
    world_make(&w, c->balance, NULL);
    c->setup(&w);
    if (warm_it && c->warmable)
        warm(ctx, &w);
    kg_stats_get(ctx, &a, sizeof a);
    ev = kgt_calls(&env, "evalsha");
    for (int i = 0; i < nsteps(c); i++)
        o->st[i] = do_step(ctx, &w, &c->steps[i], &o->r[i], &o->h[i]);
    o->evals = kgt_calls(&env, "evalsha") - ev;
    kg_stats_get(ctx, &b, sizeof b);
    o->hits = b.cache_hits - a.cache_hits;
    o->balance = wallet_field(&w, "balance_micros");
    o->held = kgt_int(&env, "HGET " KGT_PREFIX "{t:%s}:wallet:%s held_micros", w.team, w.wallet);
    o->ledger = kgt_int(&env, "LLEN " KGT_PREFIX "{t:%s}:ledger:%s", w.team, w.wallet);
}

int main(void)
{
    kg_ctx *cold, *hot;
    char err[256];
    int compared = 0;

    kgt_setup(&env, NULL);                /* cache_ttl_ms 1000 */
    kgt_catalog(&env, catalog);
    cold = kg_open(kgt_write_conf(&env, "cold.conf", "cache_ttl_ms 0\n"), err, sizeof err);
    KGT_CHECK(cold != NULL, "%s", err);
    hot = kg_open(env.conf, err, sizeof err);
    KGT_CHECK(hot != NULL, "%s", err);
    {
        /* Both contexts hold the catalog and the scripts before counting. */
        world w;
        step s = {0, TG, "small", NULL, IN, 1, NULL, 0};
        kg_result res;
        kg_hold h;
        world_make(&w, 1000, NULL);
        do_step(cold, &w, &s, &res, &h);
        do_step(hot, &w, &s, &res, &h);
        s.svc = "llm";
        s.model = "m1";
        s.rid = "pre";
        do_step(cold, &w, &s, &res, &h);
        s.settle = 1;
        do_step(cold, &w, &s, &res, &h);
        do_step(hot, &w, &s, &res, &h);
        s.settle = 0;
        s.svc = STT;
        s.model = NULL;
        s.p1 = NULL;
        do_step(hot, &w, &s, &res, &h);
    }

    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        const kcase *c = &cases[k];
        outcome oc, ow;
        int n = nsteps(c);

        play(cold, c, 0, &oc);
        play(hot, c, 1, &ow);
        KGT_CHECK(oc.hits == 0, "%s: the cold context used a cache", c->name);
        KGT_CHECK(oc.evals == n, "%s: %d cold requests took %lld scripts", c->name, n, oc.evals);
        KGT_CHECK(!c->warmable || ow.hits == (unsigned long long)n,
                  "%s: %llu of %d warm requests came from the cache", c->name, ow.hits, n);
        printf("%-30s", c->name);
        for (int i = 0; i < n; i++) {
            const kg_result *x = &oc.r[i], *y = &ow.r[i];
            KGT_CHECK(oc.st[i] == ow.st[i], "%s, step %d: cold %s, warm %s", c->name, i + 1,
                      kg_status_code(oc.st[i]), kg_status_code(ow.st[i]));
            KGT_CHECK(x->cost_micros == y->cost_micros && x->balance_micros == y->balance_micros &&
                          x->replayed == y->replayed,
                      "%s, step %d (%s): cold cost %lld balance %lld replayed %d, warm %lld %lld %d",
                      c->name, i + 1, kg_status_code(oc.st[i]), (long long)x->cost_micros,
                      (long long)x->balance_micros, x->replayed, (long long)y->cost_micros,
                      (long long)y->balance_micros, y->replayed);
            KGT_CHECK((x->key_id[0] == '\0') == (y->key_id[0] == '\0') &&
                          (x->wallet_id[0] == '\0') == (y->wallet_id[0] == '\0'),
                      "%s, step %d: cold ids '%s' '%s', warm '%s' '%s'", c->name, i + 1, x->key_id,
                      x->wallet_id, y->key_id, y->wallet_id);
            KGT_CHECK(oc.h[i].hold_micros == ow.h[i].hold_micros &&
                          oc.h[i].available_micros == ow.h[i].available_micros &&
                          oc.h[i].captured == ow.h[i].captured &&
                          (oc.h[i].retry_after_ms > 0) == (ow.h[i].retry_after_ms > 0),
                      "%s, step %d: holds differ (%lld/%lld, %lld/%lld)", c->name, i + 1,
                      (long long)oc.h[i].hold_micros, (long long)ow.h[i].hold_micros,
                      (long long)oc.h[i].available_micros, (long long)ow.h[i].available_micros);
            printf(" %s", kg_status_code(oc.st[i]));
            compared++;
        }
        KGT_CHECK(oc.balance == ow.balance && oc.held == ow.held && oc.ledger == ow.ledger,
                  "%s: wallet after: cold %lld held %lld ledger %lld, warm %lld %lld %lld", c->name,
                  oc.balance, oc.held, oc.ledger, ow.balance, ow.held, ow.ledger);
        printf("  (balance %lld, ledger %lld)\n", oc.balance, oc.ledger);
    }
    kg_close(cold);
    kg_close(hot);
    kgt_teardown(&env);
    printf("ok: %d requests answered alike cold and warm\n", compared);
    return 0;
}

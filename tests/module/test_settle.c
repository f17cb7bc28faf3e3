/*
 * test_settle.c - reserve then settle (docs/module.md "Reserve and
 * settle") against a real Redis:
 *   - a hold of the worst-case price (measured param at the catalog's max,
 *     or at the request's own maximum), not a debit; held money is not
 *     available to other requests, settle or not;
 *   - settle charges the exact price of the actual quantities, releases
 *     the rest, one ledger entry; above the hold it is capped at the hold;
 *     a retried settle changes nothing; refusals change nothing;
 *   - an expired hold is captured at its amount exactly once, with two
 *     processes racing to find it;
 *   - the money invariant: N processes x M random reserve/settle pairs on
 *     one wallet: balance = credits - sum settled, never negative, holds
 *     back to 0, each request id settled once.
 */
#include "kgt.h"

#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define BASE   100                    /* llm/m1: base_micros */
#define IN     150                    /* input_tokens: micros per 1000 */
#define OUT    600                    /* output_tokens: micros per 1000 */
#define OUTMAX 4096                   /* output_tokens: catalog max */
#define PROCS  4
#define PAIRS  150

static kgt_env env;

static const char catalog[] =
    "{\"currency\":\"USD\",\"services\":["
    "{\"id\":\"llm\",\"name\":\"LLM\",\"free\":false,\"settle\":true,\"models\":["
    " {\"id\":\"m1\",\"price\":{\"base_micros\":100,\"per\":["
    "  {\"param\":\"input_tokens\",\"micros\":150,\"units\":1000},"
    "  {\"param\":\"output_tokens\",\"micros\":600,\"units\":1000,\"measured\":true,\"max\":4096}]}},"
    " {\"id\":\"nomax\",\"price\":{\"per\":["
    "  {\"param\":\"output_tokens\",\"micros\":600,\"units\":1000,\"measured\":true}]}}]},"
    "{\"id\":\"text-generation\",\"name\":\"Text\",\"free\":false,\"models\":["
    " {\"id\":\"small\",\"price\":{\"per\":[{\"param\":\"input_tokens\",\"micros\":150,\"units\":1000}]}}]}]}";

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
static int64_t price(int64_t in, int64_t out)
{
    return BASE + ceil_div(in * IN, 1000) + ceil_div(out * OUT, 1000);
}

typedef struct world {
    char team[KGC_ID_MAX], wallet[KGC_ID_MAX], key[KGC_ID_MAX], user[KGC_ID_MAX];
    char tok[KGC_TOKEN_LEN + 1];
} world;

static void world_make(world *w, int64_t balance)
{
    char svcs[512];

    kgt_team(&env, w->team);
    kgt_wallet(&env, w->team, balance, w->wallet);
    snprintf(svcs, sizeof svcs,
             "{\"llm\":{\"policy\":\"payg\",\"models\":[\"m1\",\"nomax\"],\"wallet\":\"%s\"},"
             "\"text-generation\":{\"policy\":\"payg\",\"models\":[\"small\"],\"wallet\":\"%s\"}}",
             w->wallet, w->wallet);
    kgt_key(&env, w->team, "paid", svcs, w->key);
    kgc_id_user(w->user);
    kgt_token(&env, w->team, w->key, w->user, 0, w->tok);
}

static long long wfield(const world *w, const char *f)
{
    return kgt_int(&env, "HGET " KGT_PREFIX "{t:%s}:wallet:%s %s", w->team, w->wallet, f);
}

static long long ledger_len(const world *w)
{
    return kgt_int(&env, "LLEN " KGT_PREFIX "{t:%s}:ledger:%s", w->team, w->wallet);
}

static json_t *ledger_top(const world *w)
{
    redisReply *r = kgt_cmd(&env, "LINDEX " KGT_PREFIX "{t:%s}:ledger:%s 0", w->team, w->wallet);
    json_t *j = r->type == REDIS_REPLY_STRING ? json_loads(r->str, 0, NULL) : NULL;
    freeReplyObject(r);
    KGT_CHECK(j != NULL, "no ledger entry");
    return j;
}

static long long jint(json_t *j, const char *f)
{
    return json_integer_value(json_object_get(j, f));
}

static kg_status hold(kg_ctx *ctx, const world *w, const char *rid, int64_t in, int64_t out,
                      kg_result *res, kg_hold *h)
{
    kgt_req r;
    if (out >= 0)
        kgt_request(&r, w->tok, "llm", "m1", rid, KGT_P("input_tokens", in),
                    KGT_P("output_tokens", out), NULL);
    else
        kgt_request(&r, w->tok, "llm", "m1", rid, KGT_P("input_tokens", in), NULL);
    return kg_authorize_hold(ctx, &r.req, res, h, sizeof *h);
}

static kg_status settle(kg_ctx *ctx, const world *w, const char *rid, int64_t in, int64_t out,
                        kg_result *res, kg_hold *h)
{
    kgt_req r;
    kgt_request(&r, w->tok, "llm", "m1", rid, KGT_P("input_tokens", in),
                KGT_P("output_tokens", out), NULL);
    return kg_settle(ctx, &r.req, res, h, sizeof *h);
}

static void basics(kg_ctx *ctx)
{
    world w;
    kg_result res;
    kg_hold h;
    kgt_req r;
    const int64_t B = 1000000;
    int64_t H = price(1000, OUTMAX), A = price(1000, 500);
    long long len;
    json_t *e;

    world_make(&w, B);

    /* Hold at the catalog's max: no money moves, held_micros grows. */
    KGT_EQ_STATUS(hold(ctx, &w, "r1", 1000, -1, &res, &h), KG_OK);
    KGT_CHECK(res.cost_micros == 0 && res.balance_micros == B && !res.replayed,
              "hold result cost %lld balance %lld", (long long)res.cost_micros,
              (long long)res.balance_micros);
    KGT_CHECK(h.hold_micros == H && h.available_micros == B - H, "hold %lld avail %lld (want %lld)",
              (long long)h.hold_micros, (long long)h.available_micros, (long long)H);
    KGT_CHECK(h.expires_ms > kgt_wall_ms() + 500000 && h.expires_ms < kgt_wall_ms() + 700000,
              "expires in %lld ms", (long long)(h.expires_ms - kgt_wall_ms()));
    KGT_CHECK(wfield(&w, "balance_micros") == B && wfield(&w, "held_micros") == H, "wallet");
    KGT_CHECK(ledger_len(&w) == 1, "a hold writes no ledger entry");   /* 1: the credit */

    /* The same authorize again: a replay, nothing held twice. */
    KGT_EQ_STATUS(hold(ctx, &w, "r1", 1000, -1, &res, &h), KG_OK);
    KGT_CHECK(res.replayed && h.hold_micros == H && wfield(&w, "held_micros") == H, "hold replay");

    /* Settle with actual quantities: the exact price, the rest released. */
    KGT_EQ_STATUS(settle(ctx, &w, "r1", 1000, 500, &res, &h), KG_OK);
    KGT_CHECK(res.cost_micros == A && res.balance_micros == B - A && !res.replayed && !h.captured &&
              h.hold_micros == H, "settle cost %lld (want %lld)", (long long)res.cost_micros,
              (long long)A);
    KGT_CHECK(wfield(&w, "balance_micros") == B - A && wfield(&w, "held_micros") == 0, "after settle");
    KGT_CHECK(kgt_int(&env, "HLEN " KGT_PREFIX "{t:%s}:holds:%s", w.team, w.wallet) == 0 &&
              kgt_int(&env, "ZCARD " KGT_PREFIX "{t:%s}:holdexp:%s", w.team, w.wallet) == 0,
              "hold records left");
    len = ledger_len(&w);
    KGT_CHECK(len == 2, "one ledger entry for the settle, got %lld", len - 1);
    e = ledger_top(&w);
    KGT_CHECK(strcmp(json_string_value(json_object_get(e, "type")), "debit") == 0 &&
              jint(e, "amount_micros") == A && jint(e, "balance_micros") == B - A &&
              jint(e, "hold_micros") == H &&
              strcmp(json_string_value(json_object_get(e, "settle")), "settled") == 0 &&
              strcmp(json_string_value(json_object_get(e, "request_id")), "r1") == 0 &&
              strcmp(json_string_value(json_object_get(e, "key_id")), w.key) == 0 &&
              json_object_get(e, "actual_micros") == NULL, "settle entry");
    json_decref(e);

    /* A retried settle (same or other quantities) changes nothing. */
    for (int i = 0; i < 3; i++) {
        KGT_EQ_STATUS(settle(ctx, &w, "r1", 1000, 100 * i, &res, &h), KG_OK);
        KGT_CHECK(res.replayed && res.cost_micros == 0 && res.balance_micros == B - A, "settle replay");
    }
    KGT_CHECK(wfield(&w, "balance_micros") == B - A && ledger_len(&w) == len, "replay charged");

    /* The request's own maximum; a use above it is capped at the hold. */
    int64_t H2 = price(2000, 100), A2 = price(2000, 1000);
    KGT_EQ_STATUS(hold(ctx, &w, "r2", 2000, 100, &res, &h), KG_OK);
    KGT_CHECK(h.hold_micros == H2 && h.available_micros == B - A - H2, "own max hold %lld",
              (long long)h.hold_micros);
    KGT_EQ_STATUS(settle(ctx, &w, "r2", 2000, 1000, &res, &h), KG_OK);
    KGT_CHECK(res.cost_micros == H2, "capped at the hold: %lld", (long long)res.cost_micros);
    e = ledger_top(&w);
    KGT_CHECK(jint(e, "amount_micros") == H2 && jint(e, "actual_micros") == A2, "capped entry");
    json_decref(e);
    KGT_CHECK(wfield(&w, "balance_micros") == B - A - H2 && wfield(&w, "held_micros") == 0, "capped");

    /* Refusals, each changing nothing. */
    long long bal = wfield(&w, "balance_micros");
    len = ledger_len(&w);
    KGT_EQ_STATUS(hold(ctx, &w, NULL, 1000, -1, &res, &h), KG_BAD_REQUEST);   /* no request id */
    kgt_request(&r, w.tok, "llm", "nomax", "r3", NULL);                       /* no max anywhere */
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_BAD_REQUEST);
    kgt_request(&r, w.tok, "llm", "nomax", "r3", KGT_P("output_tokens", 10), NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);                    /* its own max */
    KGT_EQ_STATUS(settle(ctx, &w, "never-held", 1, 1, &res, &h), KG_BAD_REQUEST);
    KGT_EQ_STATUS(settle(ctx, &w, NULL, 1, 1, &res, &h), KG_BAD_REQUEST);
    kgt_request(&r, w.tok, "text-generation", "small", "t1", KGT_P("input_tokens", 1000), NULL);
    KGT_EQ_STATUS(kg_settle(ctx, &r.req, &res, NULL, 0), KG_BAD_REQUEST);   /* not a settle service */
    KGT_CHECK(wfield(&w, "balance_micros") == bal && ledger_len(&w) == len, "refusal changed money");
    kgt_request(&r, w.tok, "llm", "nomax", "r3", KGT_P("output_tokens", 5), NULL);
    KGT_EQ_STATUS(kg_settle(ctx, &r.req, &res, NULL, 0), KG_OK);
    KGT_CHECK(res.cost_micros == 3, "nomax settle %lld", (long long)res.cost_micros);

    /* No usage reported (the measured param left out of the settle): it
     * counts at the catalog's max, capped at the hold; without a max the
     * whole hold is charged. */
    kgt_request(&r, w.tok, "llm", "nomax", "r4", KGT_P("output_tokens", 10), NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);
    kgt_request(&r, w.tok, "llm", "nomax", "r4", NULL);
    KGT_EQ_STATUS(kg_settle(ctx, &r.req, &res, &h, sizeof h), KG_OK);
    KGT_CHECK(res.cost_micros == 6 && h.hold_micros == 6, "no usage, no max: %lld",
              (long long)res.cost_micros);
    KGT_EQ_STATUS(hold(ctx, &w, "r5", 0, 50, &res, &h), KG_OK);
    kgt_request(&r, w.tok, "llm", "m1", "r5", KGT_P("input_tokens", 0), NULL);
    KGT_EQ_STATUS(kg_settle(ctx, &r.req, &res, &h, sizeof h), KG_OK);
    KGT_CHECK(res.cost_micros == price(0, 50) && h.hold_micros == price(0, 50), "no usage: %lld",
              (long long)res.cost_micros);

    /* Held money is not available: to another hold, nor to a plain debit. */
    world f;
    int64_t Hf = price(0, OUTMAX);
    world_make(&f, Hf + 100);
    KGT_EQ_STATUS(hold(ctx, &f, "f1", 0, -1, &res, &h), KG_OK);
    KGT_CHECK(h.available_micros == 100, "available %lld", (long long)h.available_micros);
    KGT_EQ_STATUS(hold(ctx, &f, "f2", 0, -1, &res, &h), KG_INSUFFICIENT_FUNDS);
    kgt_request(&r, f.tok, "text-generation", "small", NULL, KGT_P("input_tokens", 1000), NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_INSUFFICIENT_FUNDS);   /* 150 > 100 */
    kgt_request(&r, f.tok, "text-generation", "small", NULL, KGT_P("input_tokens", 500), NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);                  /* 75 <= 100 */
    KGT_EQ_STATUS(settle(ctx, &f, "f1", 0, 0, &res, &h), KG_OK);
    KGT_CHECK(res.cost_micros == BASE && wfield(&f, "balance_micros") == Hf + 100 - 75 - BASE &&
              wfield(&f, "held_micros") == 0, "funds world");
    printf("ok: hold, exact settle, capped settle, retried settle, refusals, availability\n");
}

/* ---- the non-blocking forms, driven by a small poll() host ---------- */

static struct { int fd, events; } nbw[8];
static int nnbw;

static void nb_watch(void *host, int fd, int events)
{
    int i;
    (void)host;
    for (i = 0; i < nnbw && nbw[i].fd != fd; i++)
        ;
    if (events == 0) {
        if (i < nnbw)
            nbw[i] = nbw[--nnbw];
        return;
    }
    if (i == nnbw && nnbw < 8)
        nbw[nnbw++].fd = fd;
    if (i < nnbw)
        nbw[i].events = events;
}

static const kg_loop_hooks nb_hooks = {KG_ABI_VERSION, nb_watch};

static void nb_done(void *arg, kg_result *res)
{
    (void)res;
    *(int *)arg = 1;
}

static void nb_run(kg_ctx *ctx, const int *flag)
{
    int64_t end = kgt_now_ms() + 3000;
    while (!*flag) {
        struct pollfd pf[8];
        int n = nnbw, t = kg_loop_next_timeout_ms(ctx);
        KGT_CHECK(kgt_now_ms() < end, "non-blocking request never answered");
        for (int i = 0; i < n; i++)
            pf[i] = (struct pollfd){nbw[i].fd, (short)((nbw[i].events & KG_EV_READ ? POLLIN : 0) |
                                                       (nbw[i].events & KG_EV_WRITE ? POLLOUT : 0)), 0};
        poll(pf, (nfds_t)n, t < 0 || t > 50 ? 50 : t);
        for (int i = 0; i < n; i++)
            if (pf[i].revents != 0)
                kg_loop_ready(ctx, pf[i].fd, (pf[i].revents & (POLLIN | POLLHUP | POLLERR) ? KG_EV_READ : 0) |
                                             (pf[i].revents & POLLOUT ? KG_EV_WRITE : 0));
        kg_loop_timeout(ctx);
    }
}

static void nonblocking(void)
{
    world w;
    kg_ctx *ctx = kg_open(env.conf, NULL, 0);
    kgt_req r;
    kg_result res;
    kg_hold h;
    kg_pending *pend;
    int done = 0;
    const int64_t B = 100000, H = price(10, OUTMAX), A = price(10, 77);

    KGT_CHECK(ctx != NULL && kg_loop_attach(ctx, &nb_hooks, NULL) == 0, "attach");
    world_make(&w, B);
    kgt_request(&r, w.tok, "llm", "m1", "nb1", KGT_P("input_tokens", 10), NULL);
    KGT_CHECK(kg_authorize_hold_start(ctx, &r.req, &res, &h, sizeof h, nb_done, &done, &pend) == 1,
              "hold start");
    nb_run(ctx, &done);
    KGT_EQ_STATUS(res.status, KG_OK);
    KGT_CHECK(h.hold_micros == H && h.available_micros == B - H, "nb hold %lld", (long long)h.hold_micros);
    done = 0;
    kgt_request(&r, w.tok, "llm", "m1", "nb1", KGT_P("input_tokens", 10), KGT_P("output_tokens", 77), NULL);
    KGT_CHECK(kg_settle_start(ctx, &r.req, &res, &h, sizeof h, nb_done, &done, &pend) == 1, "settle start");
    nb_run(ctx, &done);
    KGT_EQ_STATUS(res.status, KG_OK);
    KGT_CHECK(res.cost_micros == A && res.balance_micros == B - A && h.hold_micros == H, "nb settle");
    /* A host that knows an older, shorter kg_hold gets only its part. */
    done = 0;
    kg_hold small;
    memset(&small, 0x5a, sizeof small);
    kgt_request(&r, w.tok, "llm", "m1", "nb2", KGT_P("input_tokens", 10), NULL);
    KGT_CHECK(kg_authorize_hold_start(ctx, &r.req, &res, &small, sizeof(int64_t), nb_done, &done, &pend) == 1,
              "short hold start");
    nb_run(ctx, &done);
    KGT_CHECK(small.hold_micros == H && small.available_micros == 0x5a5a5a5a5a5a5a5aLL, "short kg_hold");
    kg_close(ctx);
    printf("ok: kg_authorize_hold_start and kg_settle_start\n");
}

/* Waits on fd until the parent writes a byte: all racers start together. */
static void wait_go(int fd)
{
    char c;
    if (read(fd, &c, 1) != 1)
        _exit(9);
}

/* Expired holds are captured at their amount, exactly once, by whichever
 * of two processes' scripts finds them first. */
static void expiry(const char *conf)
{
    enum { NH = 20 };
    world w;
    kg_ctx *ctx;
    kg_result res;
    kg_hold h;
    char err[256], rid[32];
    int go[2], status;
    pid_t kids[2];
    const int64_t B = 1000000, H = price(1000, OUTMAX);

    world_make(&w, B);
    ctx = kg_open(conf, err, sizeof err);
    KGT_CHECK(ctx != NULL, "%s", err);
    for (int i = 0; i < NH; i++) {
        snprintf(rid, sizeof rid, "x%d", i);
        KGT_EQ_STATUS(hold(ctx, &w, rid, 1000, -1, &res, &h), KG_OK);
    }
    KGT_CHECK(wfield(&w, "held_micros") == NH * H, "held");
    kgt_sleep_ms(400);                  /* hold_ttl_ms 300 in conf */
    KGT_CHECK(pipe(go) == 0, "pipe");
    for (int k = 0; k < 2; k++) {
        if ((kids[k] = fork()) == 0) {
            kg_ctx *c = kg_open(conf, NULL, 0);
            kgt_req r;
            kg_result rr;
            kg_hold hh;
            if (c == NULL)
                _exit(2);
            wait_go(go[0]);
            /* Each racer settles one hold (x0: both) and places a debit:
             * every script sweeps the wallet first. */
            for (int i = 0; i < 3; i++) {
                if (settle(c, &w, i == 0 ? "x0" : k == 0 ? "x1" : "x2", 1000, 1, &rr, &hh) != KG_OK ||
                    !rr.replayed || !hh.captured || rr.cost_micros != 0 || hh.hold_micros != H)
                    _exit(3);
                kgt_request(&r, w.tok, "text-generation", "small", NULL, KGT_P("input_tokens", 1000), NULL);
                if (kg_authorize(c, &r.req, &rr) != KG_OK || rr.cost_micros != 150)
                    _exit(4);
            }
            kg_close(c);
            _exit(0);
        }
        KGT_CHECK(kids[k] > 0, "fork");
    }
    kgt_sleep_ms(100);
    KGT_CHECK(write(go[1], "gg", 2) == 2, "go");
    for (int k = 0; k < 2; k++) {
        KGT_CHECK(waitpid(kids[k], &status, 0) == kids[k] && WIFEXITED(status) &&
                  WEXITSTATUS(status) == 0, "racer %d exit %d", k, WEXITSTATUS(status));
    }
    close(go[0]);
    close(go[1]);
    /* Every hold captured once: NH "expired" debits of H, none twice. */
    redisReply *l = kgt_cmd(&env, "LRANGE " KGT_PREFIX "{t:%s}:ledger:%s 0 -1", w.team, w.wallet);
    int expired = 0, debits = 0;
    char seen[NH] = {0};
    for (size_t i = 0; i < l->elements; i++) {
        json_t *e = json_loads(l->element[i]->str, 0, NULL);
        const char *st = json_string_value(json_object_get(e, "settle"));
        if (st != NULL && strcmp(st, "expired") == 0) {
            int n = atoi(json_string_value(json_object_get(e, "request_id")) + 1);
            KGT_CHECK(jint(e, "amount_micros") == H && n >= 0 && n < NH && !seen[n],
                      "capture %s", l->element[i]->str);
            seen[n] = 1;
            expired++;
        } else if (strcmp(json_string_value(json_object_get(e, "type")), "debit") == 0) {
            debits++;
        }
        json_decref(e);
    }
    freeReplyObject(l);
    KGT_CHECK(expired == NH && debits == 6, "%d captures, %d debits", expired, debits);
    KGT_CHECK(wfield(&w, "held_micros") == 0 && wfield(&w, "balance_micros") == B - NH * H - 6 * 150,
              "after captures: held %lld balance %lld", wfield(&w, "held_micros"),
              wfield(&w, "balance_micros"));
    KGT_CHECK(kgt_int(&env, "HLEN " KGT_PREFIX "{t:%s}:holds:%s", w.team, w.wallet) == 0 &&
              kgt_int(&env, "ZCARD " KGT_PREFIX "{t:%s}:holdexp:%s", w.team, w.wallet) == 0, "left");
    /* A settle arriving now: captured, nothing changes. */
    long long len = ledger_len(&w);
    KGT_EQ_STATUS(settle(ctx, &w, "x7", 1000, 1, &res, &h), KG_OK);
    KGT_CHECK(res.replayed && h.captured && res.cost_micros == 0 && ledger_len(&w) == len, "late settle");
    kg_close(ctx);
    printf("ok: %d expired holds captured once each by 2 racing processes\n", NH);
}

/* One gateway: PAIRS reserve/settle pairs with random actual use; reports
 * what it settled through the pipe. A pair refused for funds is skipped;
 * every 7th settle is sent twice (the retry must charge nothing). */
static void gateway(int id, const world *w, int fd)
{
    kg_ctx *ctx = kg_open(env.conf, NULL, 0);
    kg_result res;
    kg_hold h;
    char rid[48];
    long long sum = 0, n = 0;
    unsigned seed = 7919u * (unsigned)(id + 1);

    if (ctx == NULL)
        _exit(2);
    for (int i = 0; i < PAIRS; i++) {
        int64_t in = rand_r(&seed) % 3000, max = rand_r(&seed) % 2 ? -1 : rand_r(&seed) % 3000;
        int64_t cap = max < 0 ? OUTMAX : max, out = rand_r(&seed) % (cap + 200);
        snprintf(rid, sizeof rid, "g%d-%d", id, i);
        kg_status st = hold(ctx, w, rid, in, max, &res, &h);
        if (st == KG_INSUFFICIENT_FUNDS)
            continue;
        if (st != KG_OK || h.hold_micros != price(in, cap) || h.available_micros < 0)
            _exit(3);
        if (settle(ctx, w, rid, in, out, &res, &h) != KG_OK || res.replayed)
            _exit(4);
        int64_t want = price(in, out) < price(in, cap) ? price(in, out) : price(in, cap);
        if (res.cost_micros != want || res.balance_micros < 0)
            _exit(5);
        sum += res.cost_micros;
        n++;
        if (i % 7 == 0 && (settle(ctx, w, rid, in, out, &res, &h) != KG_OK || !res.replayed ||
                           res.cost_micros != 0))
            _exit(6);
    }
    kg_close(ctx);
    long long msg[2] = {sum, n};
    if (write(fd, msg, sizeof msg) != sizeof msg)
        _exit(7);
    _exit(0);
}

static void invariant(void)
{
    world w;
    int fds[2], status;
    pid_t kids[PROCS];
    long long settled = 0, pairs = 0;
    /* Enough for roughly two thirds of the pairs: funds refusals happen. */
    const int64_t B = (int64_t)PROCS * PAIRS * 600;

    world_make(&w, B);
    KGT_CHECK(pipe(fds) == 0, "pipe");
    for (int k = 0; k < PROCS; k++) {
        if ((kids[k] = fork()) == 0)
            gateway(k, &w, fds[1]);
        KGT_CHECK(kids[k] > 0, "fork");
    }
    for (int k = 0; k < PROCS; k++)
        KGT_CHECK(waitpid(kids[k], &status, 0) == kids[k] && WIFEXITED(status) &&
                  WEXITSTATUS(status) == 0, "gateway %d exit %d", k, WEXITSTATUS(status));
    for (int k = 0; k < PROCS; k++) {
        long long msg[2];
        KGT_CHECK(read(fds[0], msg, sizeof msg) == sizeof msg, "pipe read");
        settled += msg[0];
        pairs += msg[1];
    }
    close(fds[0]);
    close(fds[1]);

    /* The ledger: one credit, one settle entry per pair, sums and chain. */
    redisReply *l = kgt_cmd(&env, "LRANGE " KGT_PREFIX "{t:%s}:ledger:%s 0 -1", w.team, w.wallet);
    long long credits = 0, debits = 0, running = 0, entries = 0;
    for (size_t i = l->elements; i-- > 0;) {
        json_t *e = json_loads(l->element[i]->str, 0, NULL);
        long long a = jint(e, "amount_micros");
        if (strcmp(json_string_value(json_object_get(e, "type")), "credit") == 0) {
            credits += a;
            running += a;
        } else {
            KGT_CHECK(strcmp(json_string_value(json_object_get(e, "settle")), "settled") == 0,
                      "entry %s", l->element[i]->str);
            debits += a;
            running -= a;
            entries++;
        }
        KGT_CHECK(jint(e, "balance_micros") == running && running >= 0, "chain at %zu", i);
        json_decref(e);
    }
    freeReplyObject(l);
    KGT_CHECK(entries == pairs && debits == settled, "%lld entries for %lld pairs; %lld vs %lld",
              entries, pairs, debits, settled);
    KGT_CHECK(wfield(&w, "balance_micros") == credits - settled && credits == B,
              "balance %lld, credits %lld - settled %lld", wfield(&w, "balance_micros"), credits, settled);
    KGT_CHECK(wfield(&w, "held_micros") == 0 &&
              kgt_int(&env, "HLEN " KGT_PREFIX "{t:%s}:holds:%s", w.team, w.wallet) == 0 &&
              kgt_int(&env, "ZCARD " KGT_PREFIX "{t:%s}:holdexp:%s", w.team, w.wallet) == 0,
              "holds not back to 0");
    KGT_CHECK(pairs > 0 && pairs < PROCS * PAIRS, "expected some funds refusals: %lld pairs", pairs);
    printf("ok: %d processes x %d pairs: %lld settled for %lld micros, balance %lld, holds 0\n",
           PROCS, PAIRS, pairs, settled, wfield(&w, "balance_micros"));
}

int main(void)
{
    kg_ctx *ctx;
    char err[256], conf[400];

    kgt_setup(&env, NULL);
    kgt_catalog(&env, catalog);
    snprintf(conf, sizeof conf, "%s", kgt_write_conf(&env, "short.conf", "hold_ttl_ms 300\n"));
    ctx = kg_open(env.conf, err, sizeof err);
    KGT_CHECK(ctx != NULL, "%s", err);
    basics(ctx);
    kg_close(ctx);
    nonblocking();
    expiry(conf);
    invariant();
    kgt_teardown(&env);
    return 0;
}

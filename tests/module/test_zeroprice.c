/*
 * test_zeroprice.c - paid models that cost nothing (issue 10, item 3).
 *
 * A missing param counted 0, so a paid model with base_micros 0 priced a
 * request at 0 and a wallet at 0 served it without end, pushing a 0-micro
 * ledger entry each time. Now: a param the catalog marks required must be
 * given (KG_BAD_REQUEST), a paid model's price has a floor (min_micros,
 * 1 by default), and a request priced at 0 on purpose (min_micros 0, or a
 * free service under payg) writes no ledger entry.
 */
#include "kgt.h"

#include <string.h>

static kgt_env env;

static const char catalog[] =
    "{\"currency\":\"USD\",\"services\":["
    "{\"id\":\"text-generation\",\"name\":\"Text generation\",\"free\":false,\"models\":["
    " {\"id\":\"small\",\"price\":{\"base_micros\":0,\"per\":["
    "   {\"param\":\"input_tokens\",\"micros\":150,\"units\":1000,\"required\":true},"
    "   {\"param\":\"output_tokens\",\"micros\":600,\"units\":1000}]}},"
    " {\"id\":\"open\",\"price\":{\"base_micros\":0,\"per\":["
    "   {\"param\":\"input_tokens\",\"micros\":150,\"units\":1000}]}},"
    " {\"id\":\"zero\",\"price\":{\"base_micros\":0,\"min_micros\":0,\"per\":["
    "   {\"param\":\"input_tokens\",\"micros\":150,\"units\":1000}]}},"
    " {\"id\":\"floor\",\"price\":{\"base_micros\":10,\"min_micros\":500,\"per\":["
    "   {\"param\":\"input_tokens\",\"micros\":1,\"units\":1}]}}]},"
    "{\"id\":\"speech-to-text\",\"name\":\"Speech to text\",\"free\":true,\"models\":["
    " {\"id\":\"fast\",\"price\":{\"base_micros\":0,\"per\":["
    "   {\"param\":\"audio_seconds\",\"micros\":40,\"units\":1}]}}]}]}";

int main(void)
{
    kgt_world w;
    kgt_req r;
    kg_result res;
    kg_ctx *ctx;
    char err[256], svcs[512];
    int64_t est;
    long long l0;

    kgt_setup(&env, NULL);
    kgt_catalog(&env, catalog);
    kgt_team(&env, w.team);
    kgt_wallet(&env, w.team, 0, w.wallet);
    snprintf(svcs, sizeof svcs,
             "{\"text-generation\":{\"policy\":\"payg\",\"models\":[\"small\",\"open\",\"zero\",\"floor\"],"
             "\"wallet\":\"%s\"},\"speech-to-text\":{\"policy\":\"payg\",\"models\":[\"fast\"],"
             "\"wallet\":\"%s\"}}", w.wallet, w.wallet);
    kgt_key(&env, w.team, "paid", svcs, w.key);
    kgc_id_user(w.user);
    kgt_token(&env, w.team, w.key, w.user, 0, w.tok);
    ctx = kg_open(env.conf, err, sizeof err);
    KGT_CHECK(ctx != NULL, "%s", err);
    l0 = kgt_ledger_len(&env, &w);

    /* The reproduction: a wallet at 0, a paid model, the token
     * count left out (nginx: no X-Input-Tokens). Was KG_OK, cost 0, and a
     * 0-micro ledger entry per request. */
    kgt_request(&r, w.tok, "text-generation", "open", NULL, NULL);
    for (int i = 0; i < 5; i++) {
        KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_INSUFFICIENT_FUNDS);
        KGT_CHECK(res.cost_micros == 0 && res.balance_micros == 0, "refused for 1 micro");
    }
    KGT_EQ_STATUS(kg_estimate(ctx, &r.req, &est), KG_OK);
    KGT_CHECK(est == 1, "a paid model's floor is 1 micro by default: %lld", (long long)est);
    KGT_CHECK(kgt_ledger_len(&env, &w) == l0 && kgt_balance(&env, &w) == 0, "nothing written");

    /* A required param left out is a bad request, whatever the balance. */
    kgt_credit(&env, w.team, w.wallet, 1000000);
    l0 = kgt_ledger_len(&env, &w);
    kgt_request(&r, w.tok, "text-generation", "small", "no-input", KGT_P("output_tokens", 1000), NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_BAD_REQUEST);
    KGT_EQ_STATUS(kg_estimate(ctx, &r.req, &est), KG_BAD_REQUEST);
    kgt_request(&r, w.tok, "text-generation", "small", NULL, NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_BAD_REQUEST);
    KGT_CHECK(kgt_ledger_len(&env, &w) == l0 && kgt_balance(&env, &w) == 1000000, "bad request charged");
    KGT_CHECK(kgt_int(&env, "EXISTS " KGT_PREFIX "{t:%s}:req:%s:no-input", w.team, w.key) == 0,
              "a bad request records no id");
    /* Given (even as 0) it is priced; the optional one may be left out. */
    kgt_request(&r, w.tok, "text-generation", "small", NULL, KGT_P("input_tokens", 2000), NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);
    KGT_CHECK(res.cost_micros == 300, "required given: %lld", (long long)res.cost_micros);
    kgt_request(&r, w.tok, "text-generation", "small", NULL, KGT_P("input_tokens", 0), NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);
    KGT_CHECK(res.cost_micros == 1, "required given as 0: floor %lld", (long long)res.cost_micros);

    /* A floor set by the catalog. */
    kgt_request(&r, w.tok, "text-generation", "floor", NULL, KGT_P("input_tokens", 3), NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);
    KGT_CHECK(res.cost_micros == 500, "floor 500: %lld", (long long)res.cost_micros);
    kgt_request(&r, w.tok, "text-generation", "floor", NULL, KGT_P("input_tokens", 600), NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);
    KGT_CHECK(res.cost_micros == 610, "above the floor: %lld", (long long)res.cost_micros);
    KGT_CHECK(kgt_ledger_len(&env, &w) == l0 + 4, "one entry per charge");

    /* Priced at 0 on purpose (min_micros 0; a free service under payg):
     * served, no money moves, and no 0-micro ledger entry. The request id
     * is still recorded, so its replays and conflicts work as for others. */
    long long bal = kgt_balance(&env, &w);
    l0 = kgt_ledger_len(&env, &w);
    kgt_request(&r, w.tok, "text-generation", "zero", "z-1", NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);
    KGT_CHECK(res.cost_micros == 0 && res.balance_micros == bal && !res.replayed, "zero served");
    kgt_request(&r, w.tok, "speech-to-text", "fast", NULL, KGT_P("audio_seconds", 0), NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);
    KGT_CHECK(res.cost_micros == 0, "free service under payg at 0");
    KGT_CHECK(kgt_ledger_len(&env, &w) == l0 && kgt_balance(&env, &w) == bal, "a 0 debit wrote a ledger entry");
    KGT_CHECK(kgt_int(&env, "HGET " KGT_PREFIX "{t:%s}:req:%s:z-1 cost_micros", w.team, w.key) == 0,
              "record of a 0 request");
    kgt_request(&r, w.tok, "text-generation", "zero", "z-1", NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);
    KGT_CHECK(res.replayed, "replay of a 0 request");
    kgt_request(&r, w.tok, "text-generation", "small", "z-1", KGT_P("input_tokens", 5000), NULL);
    KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_REQUEST_ID_CONFLICT);
    KGT_CHECK(kgt_ledger_len(&env, &w) == l0 && kgt_balance(&env, &w) == bal, "end");

    kg_close(ctx);
    kgt_teardown(&env);
    printf("ok: paid models never cost 0 by accident; 0 writes no ledger entry\n");
    return 0;
}

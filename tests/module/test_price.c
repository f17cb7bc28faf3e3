/*
 * test_price.c - the charge equals kgc_price() (the code behind the daemon's
 * price.estimate) for every catalog model over a grid of quantities, and
 * the ledger entry written by the debit script has the documented format.
 */
#include "kgt.h"

#include <stdlib.h>
#include <string.h>

#include "kgc_price.h"

static kgt_env env;

static void check_ledger_head(const kgt_world *w, int64_t cost, int64_t balance,
                              const char *service, const char *model, const char *rid)
{
    redisReply *r = kgt_cmd(&env, "LINDEX " KGT_PREFIX "{t:%s}:ledger:%s 0", w->team, w->wallet);
    json_error_t je;
    json_t *e;
    int64_t at;

    KGT_CHECK(r->type == REDIS_REPLY_STRING, "no ledger entry");
    e = json_loads(r->str, JSON_REJECT_DUPLICATES, &je);
    KGT_CHECK(e != NULL, "ledger entry is not JSON: %s (%s)", je.text, r->str);
    KGT_CHECK(strcmp(json_string_value(json_object_get(e, "type")), "debit") == 0, "type: %s", r->str);
    KGT_CHECK(json_is_integer(json_object_get(e, "amount_micros")) &&
              json_integer_value(json_object_get(e, "amount_micros")) == cost, "amount: %s", r->str);
    KGT_CHECK(json_is_integer(json_object_get(e, "balance_micros")) &&
              json_integer_value(json_object_get(e, "balance_micros")) == balance, "balance: %s", r->str);
    at = json_integer_value(json_object_get(e, "at"));
    KGT_CHECK(json_is_integer(json_object_get(e, "at")) && llabs(at - kgt_wall_ms()) < 10000,
              "at: %s", r->str);
    KGT_CHECK(strcmp(json_string_value(json_object_get(e, "key_id")), w->key) == 0, "key: %s", r->str);
    KGT_CHECK(strcmp(json_string_value(json_object_get(e, "user_id")), w->user) == 0, "user: %s", r->str);
    KGT_CHECK(strcmp(json_string_value(json_object_get(e, "service")), service) == 0, "service: %s", r->str);
    KGT_CHECK(strcmp(json_string_value(json_object_get(e, "model")), model) == 0, "model: %s", r->str);
    if (rid == NULL)
        KGT_CHECK(json_is_null(json_object_get(e, "request_id")), "request_id: %s", r->str);
    else
        KGT_CHECK(strcmp(json_string_value(json_object_get(e, "request_id")), rid) == 0, "rid: %s", r->str);
    json_decref(e);
    freeReplyObject(r);
}

int main(void)
{
    static const int64_t grid[] = {0, 1, 7, 999, 1000, 1001, 123457, 1000000000LL};
    const size_t ng = sizeof grid / sizeof grid[0];
    kgt_world w;
    kg_ctx *ctx;
    kg_result res;
    char err[256], svcs[512], rid[64];
    kgc_catalog *cat;
    long long bal, checked = 0, total = 0;

    kgt_setup(&env, NULL);
    kgt_catalog(&env, NULL);
    cat = kgc_catalog_load(KGT_DATA_DIR "/catalog.json", err, sizeof err);
    KGT_CHECK(cat != NULL, "%s", err);

    /* One key with every model of every service under payg. */
    kgt_team(&env, w.team);
    kgt_wallet(&env, w.team, 4000000000000000LL, w.wallet);   /* 4e15: exact in Lua doubles */
    snprintf(svcs, sizeof svcs,
             "{\"text-generation\":{\"policy\":\"payg\",\"models\":[\"small\",\"large\"],\"wallet\":\"%s\"},"
             "\"speech-to-text\":{\"policy\":\"payg\",\"models\":[\"fast\"],\"wallet\":\"%s\"}}",
             w.wallet, w.wallet);
    kgt_key(&env, w.team, "paid", svcs, w.key);
    kgc_id_user(w.user);
    kgt_token(&env, w.team, w.key, w.user, 0, w.tok);
    ctx = kg_open(env.conf, err, sizeof err);
    KGT_CHECK(ctx != NULL, "%s", err);
    bal = kgt_balance(&env, &w);

    for (size_t s = 0; s < cat->nservices; s++)
        for (size_t m = 0; m < cat->services[s].nmodels; m++) {
            const kgc_model *mod = &cat->services[s].models[m];
            /* every combination of grid values over the model's params
             * (up to 2 params), plus params left out (counting 0) */
            size_t combos = mod->nper == 0 ? 1 : mod->nper == 1 ? ng + 1 : (ng + 1) * (ng + 1);
            for (size_t c = 0; c < combos; c++) {
                kg_param params[2];
                size_t np = 0, idx[2] = {c % (ng + 1), c / (ng + 1)};
                int64_t want;
                kgt_req r;

                for (size_t k = 0; k < mod->nper && k < 2; k++)
                    if (idx[k] < ng) {      /* idx == ng: leave the param out */
                        params[np].name = mod->per[k].param;
                        params[np].value = grid[idx[k]];
                        np++;
                    }
                KGT_CHECK(kgc_price(mod, params, np, &want, NULL, err, sizeof err) == 0, "%s", err);
                snprintf(rid, sizeof rid, "price-%u-%u-%u", (unsigned)s, (unsigned)m, (unsigned)c);
                kgt_request(&r, w.tok, cat->services[s].id, mod->id, c % 2 ? rid : NULL, NULL);
                r.req.params = np ? params : NULL;
                r.req.nparams = np;
                KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);
                KGT_CHECK(res.cost_micros == want, "%s/%s combo %zu: charged %lld, kgc_price %lld",
                          cat->services[s].id, mod->id, c, (long long)res.cost_micros, (long long)want);
                bal -= want;
                total += want;
                KGT_CHECK(res.balance_micros == bal, "balance %lld, expected %lld",
                          (long long)res.balance_micros, bal);
                check_ledger_head(&w, want, bal, cat->services[s].id, mod->id, c % 2 ? rid : NULL);
                checked++;
            }
        }
    KGT_CHECK(kgt_balance(&env, &w) == bal, "stored balance %lld, expected %lld", kgt_balance(&env, &w), bal);
    kg_close(ctx);
    kgc_catalog_free(cat);
    kgt_teardown(&env);
    printf("ok: %lld charges equal kgc_price (total %lld micros)\n", checked, total);
    return 0;
}

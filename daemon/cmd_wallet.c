/*
 * cmd_wallet.c - wallet.create, wallet.list, wallet.get, wallet.credit,
 * wallet.ledger. Balances move only inside Lua scripts; a credit is
 * idempotent by its reference.
 */
#include "cmd.h"
#include "log.h"
#include "model.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


/* Largest credit, and largest balance a credit may reach: Lua numbers are
 * doubles, exact up to 2^53. */
#define CREDIT_MAX_MICROS 1000000000000000LL   /* 1e15 micros = 1e9 units */
#define BALANCE_MAX_MICROS 9007199254740991LL

/* KEYS: wallet, ledger, credit record. ARGV: amount, reference, actor, now,
 * balance max. Returns {0} no wallet, {1, balance} credited, {2, balance}
 * reference seen before (nothing credited), {3, balance} would overflow. */
static const char credit_lua[] =
    "if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end\n"
    "local bal = tonumber(redis.call('HGET', KEYS[1], 'balance_micros'))\n"
    "if redis.call('EXISTS', KEYS[3]) == 1 then return {2, bal} end\n"
    "local amount = tonumber(ARGV[1])\n"
    "if bal + amount > tonumber(ARGV[5]) then return {3, bal} end\n"
    "bal = redis.call('HINCRBY', KEYS[1], 'balance_micros', amount)\n"
    "local e = '{\"type\":\"credit\",\"amount_micros\":' .. ARGV[1] ..\n"
    "  ',\"balance_micros\":' .. string.format('%d', bal) ..\n"
    "  ',\"at\":' .. ARGV[4] .. ',\"reference\":' .. cjson.encode(ARGV[2]) ..\n"
    "  ',\"actor\":' .. cjson.encode(ARGV[3]) .. '}'\n"
    "redis.call('LPUSH', KEYS[2], e)\n"
    "redis.call('SET', KEYS[3], e)\n"
    "return {1, bal}\n";

/* A wallet hash (HGETALL reply: flat array) as the protocol's object. */
static json_t *wallet_view(json_t *flat)
{
    json_t *out = json_object();

    for (size_t i = 0; i + 1 < json_array_size(flat); i += 2) {
        const char *f = json_string_value(json_array_get(flat, i));
        const char *v = json_string_value(json_array_get(flat, i + 1));
        if (f == NULL || v == NULL)
            continue;
        if (strcmp(f, "balance_micros") == 0 || strcmp(f, "created_at") == 0 ||
            strcmp(f, "held_micros") == 0)
            json_object_set_new(out, f, json_integer(strtoll(v, NULL, 10)));
        else
            json_object_set_new(out, f, json_string(v));
    }
    /* Funds held by gateways for requests not yet settled (docs/module.md). */
    if (json_object_get(out, "held_micros") == NULL)
        json_object_set_new(out, "held_micros", json_integer(0));
    return out;
}

job_step cmd_wallet_create(job *j)
{
    char wid[KGC_ID_MAX], now[32];
    const char *name = arg_str(j, "name");

    if (j->stage == 0)
        return J_READ;
    if (!name_ok(name, 200))
        return job_fail(j, "bad_request", "'name' must be 1-200 printable characters");
    kgc_id_wallet(j->team_id, wid);
    snprintf(now, sizeof now, "%lld", now_ms());
    snprintf(j->target, sizeof j->target, "%s", wid);
    job_write(j, "HSET", rk(j, KGC_RK_WALLET, j->team_id, wid), "wallet_id", wid, "team_id",
              j->team_id, "name", name, "balance_micros", "0", "created_at", now, NULL);
    job_write(j, "ZADD", rk(j, KGC_RK_WALLETS, j->team_id), now, wid, NULL);
    j->result = json_pack("{s:s,s:s,s:s,s:i,s:i,s:I}", "wallet_id", wid, "team_id", j->team_id,
                          "name", name, "balance_micros", 0, "held_micros", 0, "created_at",
                          (json_int_t)strtoll(now, NULL, 10));
    return J_WRITE;
}

job_step cmd_wallet_list(job *j)
{
    json_t *ids, *id, *out;
    size_t i;

    if (j->stage == 0) {
        job_read(j, "ZRANGE", rk(j, KGC_RK_WALLETS, j->team_id), "0", "-1", NULL);
        return J_READ;
    }
    if (j->stage == 1) {
        json_array_foreach(job_reply(j, 0), i, id)
            job_read(j, "HGETALL", rk(j, KGC_RK_WALLET, j->team_id, json_string_value(id)), NULL);
        return J_READ;
    }
    out = json_array();
    json_array_foreach(j->rr, i, ids)
        if (json_array_size(ids) > 0)
            json_array_append_new(out, wallet_view(ids));
    j->result = json_pack("{s:o}", "wallets", out);
    return J_DONE;
}

job_step cmd_wallet_get(job *j)
{
    if (j->stage == 0) {
        job_read(j, "HGETALL", rk(j, KGC_RK_WALLET, j->team_id, arg_str(j, "wallet")), NULL);
        return J_READ;
    }
    if (json_array_size(job_reply(j, 0)) == 0)
        return job_fail(j, "not_found", "no such wallet");
    j->result = wallet_view(job_reply(j, 0));
    return J_DONE;
}

job_step cmd_wallet_credit(job *j)
{
    const char *wid = arg_str(j, "wallet"), *ref = arg_str(j, "reference");
    long long amount = json_integer_value(arg(j, "amount_micros"));
    unsigned char h[crypto_hash_sha256_BYTES];
    char refhex[crypto_hash_sha256_BYTES * 2 + 1], amt[32], now[32], max[32];
    char kw[KGC_RKEY_MAX], kl[KGC_RKEY_MAX], kc[KGC_RKEY_MAX];
    json_t *r;
    long long code;

    if (j->stage == 0) {
        job_read(j, "EXISTS", rk(j, KGC_RK_WALLET, j->team_id, wid), NULL);
        return J_READ;
    }
    if (j->stage == 1) {
        if (json_integer_value(job_reply(j, 0)) != 1)
            return job_fail(j, "not_found", "no such wallet");
        if (amount <= 0 || amount > CREDIT_MAX_MICROS)
            return job_fail(j, "bad_request", "'amount_micros' must be 1-%lld", CREDIT_MAX_MICROS);
        if (ref == NULL || !name_ok(ref, 200))
            return job_fail(j, "bad_request", "'reference' must be 1-200 printable characters");
        crypto_hash_sha256(h, (const unsigned char *)ref, strlen(ref));
        sodium_bin2hex(refhex, sizeof refhex, h, sizeof h);
        snprintf(kw, sizeof kw, "%s", rk(j, KGC_RK_WALLET, j->team_id, wid));
        snprintf(kl, sizeof kl, "%s", rk(j, KGC_RK_LEDGER, j->team_id, wid));
        snprintf(kc, sizeof kc, "%s", rk(j, KGC_RK_CREDIT, j->team_id, wid, refhex));
        snprintf(amt, sizeof amt, "%lld", amount);
        snprintf(now, sizeof now, "%lld", now_ms());
        snprintf(max, sizeof max, "%lld", BALANCE_MAX_MICROS);
        job_write(j, "EVAL", credit_lua, "3", kw, kl, kc, amt, ref, j->actor_id, now, max, NULL);
        job_write(j, "HGETALL", kw, NULL);
        j->after_write = 1;
        return J_WRITE;
    }
    /* After the transaction: rr = {script reply, HGETALL}. */
    r = job_reply(j, 0);
    code = json_integer_value(json_array_get(r, 0));
    if (code == 0)
        return job_fail(j, "not_found", "no such wallet");
    if (code == 3)
        return job_fail(j, "bad_request", "the balance would exceed %lld micros", BALANCE_MAX_MICROS);
    j->result = wallet_view(job_reply(j, 1));
    json_object_set_new(j->result, "credited", json_boolean(code == 1));
    return J_DONE;
}

job_step cmd_wallet_ledger(job *j)
{
    if (j->stage == 0) {
        job_read(j, "EXISTS", rk(j, KGC_RK_WALLET, j->team_id, arg_str(j, "wallet")), NULL);
        return read_recent(j, rk(j, KGC_RK_LEDGER, j->team_id, arg_str(j, "wallet"))) == 0
                   ? J_READ : J_FAIL;
    }
    if (json_integer_value(job_reply(j, 0)) != 1)
        return job_fail(j, "not_found", "no such wallet");
    j->result = json_pack("{s:o}", "entries", parse_list(job_reply(j, 1)));
    return J_DONE;
}

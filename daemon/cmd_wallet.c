/*
 * cmd_wallet.c - wallet.create, wallet.list, wallet.get, wallet.credit,
 * wallet.ledger. Balances move only inside Lua scripts; a credit is
 * idempotent by its reference.
 */
#include "archive.h"
#include "cmd.h"
#include "log.h"
#include "model.h"
#include "paging.h"
#include "webhook.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


/* Largest credit, and largest balance a credit may reach: Lua numbers are
 * doubles, exact up to 2^53. */
#define CREDIT_MAX_MICROS 1000000000000000LL   /* 1e15 micros = 1e9 units */
#define BALANCE_MAX_MICROS 9007199254740991LL

/* The entry's balance_micros is the wallet's funds: balance + leased
 * (debit leased, module/kg_scripts.c "Leased funds").
 * KEYS: wallet, ledger, credit record. ARGV: amount, reference, actor, now,
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
    "  ',\"balance_micros\":' .. string.format('%d', bal +\n"
    "    (tonumber(redis.call('HGET', KEYS[1], 'leased_micros') or '0') or 0)) ..\n"
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
            strcmp(f, "held_micros") == 0 || strcmp(f, "alert_threshold_micros") == 0 ||
            strcmp(f, "refused_at") == 0 || strcmp(f, "refusal_alerted_at") == 0 ||
            strcmp(f, "leased_micros") == 0 || strcmp(f, "shortfall_micros") == 0 ||
            strcmp(f, "archived_count") == 0 || strcmp(f, "archived_sum_micros") == 0)
            json_object_set_new(out, f, json_integer(strtoll(v, NULL, 10)));
        else if (strcmp(f, "alert_below") == 0)
            json_object_set_new(out, "alert_below", json_boolean(strcmp(v, "1") == 0));
        else if (strcmp(f, "alert_event") == 0)
            continue;               /* alert.c's outbox, not part of the wallet */
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
    job_write(j, "SADD", rk(j, ARCH_RK_WALLETS), wid, NULL);    /* what the archiver walks */
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

/* wallet.alert.set: the low-balance threshold (webhook.h). 0 removes it.
 * alert_below starts from the available balance now, so setting a
 * threshold above it raises no alert; the next crossing downwards does. */
job_step cmd_wallet_alert_set(job *j)
{
    const char *wid = arg_str(j, "wallet");
    long long th = json_integer_value(arg(j, "threshold_micros"));
    char kw[KGC_RKEY_MAX], ki[KGC_RKEY_MAX], v[32];
    json_t *w;
    long long avail;

    if (j->stage == 0) {
        job_read(j, "HGETALL", rk(j, KGC_RK_WALLET, j->team_id, wid), NULL);
        return J_READ;
    }
    w = job_reply(j, 0);
    if (json_array_size(w) == 0)
        return job_fail(j, "not_found", "no such wallet");
    if (th < 0 || th > BALANCE_MAX_MICROS)
        return job_fail(j, "bad_request", "'threshold_micros' must be 0 (no alert) to %lld",
                        BALANCE_MAX_MICROS);
    snprintf(kw, sizeof kw, "%s", rk(j, KGC_RK_WALLET, j->team_id, wid));
    snprintf(ki, sizeof ki, "%s", rk(j, WH_RK_ALERTWALLETS));
    snprintf(j->target, sizeof j->target, "%s", wid);
    j->result = wallet_view(w);
    json_object_del(j->result, "alert_threshold_micros");
    json_object_del(j->result, "alert_below");
    if (th == 0) {
        job_write(j, "HDEL", kw, "alert_threshold_micros", "alert_below", "refused_at",
                  "refusal_alerted_at", NULL);
        job_write(j, "SREM", ki, wid, NULL);
        json_object_del(j->result, "refused_at");
        json_object_del(j->result, "refusal_alerted_at");
        return J_WRITE;
    }
    avail = json_integer_value(json_object_get(j->result, "balance_micros")) -
            json_integer_value(json_object_get(j->result, "held_micros"));
    snprintf(v, sizeof v, "%lld", th);
    job_write(j, "HSET", kw, "alert_threshold_micros", v, "alert_below", avail < th ? "1" : "0",
              NULL);
    job_write(j, "SADD", ki, wid, NULL);
    json_object_set_new(j->result, "alert_threshold_micros", json_integer(th));
    json_object_set_new(j->result, "alert_below", json_boolean(avail < th));
    return J_WRITE;
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

/* wallet.ledger pages (docs/protocol.md, "Paging"): newest first; an
 * entry's position is its seq (archive.h): its place counted from the
 * oldest entry ever written (0), so it stays put while debits are pushed
 * at the head and while the archiver moves the oldest ones to the
 * database. A cursor names the seq of the next entry to look at. Seqs at
 * or above the wallet's archived_count are in the Redis tail, the others
 * in the archive: a page that crosses the boundary reads the tail, then
 * the archive (on the worker thread), and looks like any other page.
 * Filters are applied here over the tail, at most LEDGER_SCAN_MAX entries
 * per call read PAGE_BATCH_MAX at a time (a page may come back short, even
 * empty, with a next_cursor when the filters match few entries), and by
 * the database's indexes over the archive. */
#define LEDGER_SCAN_MAX 10000
/* Entries are in commit order; their "at" comes from the Redis clock
 * (debits) or the daemon's (credits). A scan with "from" stops at the first
 * entry older than from by this much: the clocks may disagree a little. */
#define LEDGER_SKEW_MS 60000

/* KEYS: wallet, ledger. ARGV: seq of the first entry wanted (-1: the
 * newest), how many. Returns {archived_count, LLEN, seq, [entries of the
 * tail from seq down, newest first]}: the checkpoint and the tail at one
 * instant (the archiver's trim may run between two calls, never inside). */
static const char ledger_read_lua[] =
    "local a = tonumber(redis.call('HGET', KEYS[1], 'archived_count') or '0') or 0\n"
    "local len = redis.call('LLEN', KEYS[2])\n"
    "local pos = tonumber(ARGV[1])\n"
    "if pos < 0 then pos = a + len - 1 end\n"
    "local out = {a, len, pos}\n"
    "local i = pos - a\n"
    "if i >= 0 and i < len then\n"
    "  local n = math.min(tonumber(ARGV[2]), i + 1)\n"
    "  out[4] = redis.call('LRANGE', KEYS[2], -(i + 1), -(i + 1) + n - 1)\n"
    "end\n"
    "return out\n";

typedef struct ledger_scan {
    long long next;               /* seq of the next entry to read, -1 the newest */
    long long scanned;
    int filtered;
    int archive;                  /* 1: the archive's read is in flight / done */
    /* The archive's read, on the worker thread: touches only these. */
    app *app;
    char wallet[KGC_ID_MAX], key[256], service[256];
    arch_filter f;
    long long max_seq;
    int want, rc;
    json_t *rows;
    char err[400];
} ledger_scan;

static void ledger_read(job *j, ledger_scan *sc, long long limit)
{
    char pos[24], n[24], kw[KGC_RKEY_MAX], kl[KGC_RKEY_MAX];
    long long want = sc->filtered ? PAGE_BATCH_MAX : limit;

    if (sc->filtered && want > LEDGER_SCAN_MAX - sc->scanned)
        want = LEDGER_SCAN_MAX - sc->scanned;
    snprintf(kw, sizeof kw, "%s", rk(j, KGC_RK_WALLET, j->team_id, arg_str(j, "wallet")));
    snprintf(kl, sizeof kl, "%s", rk(j, KGC_RK_LEDGER, j->team_id, arg_str(j, "wallet")));
    snprintf(pos, sizeof pos, "%lld", sc->next);
    snprintf(n, sizeof n, "%lld", want);
    job_read(j, "EVAL", ledger_read_lua, "2", kw, kl, pos, n, NULL);
}

static void ledger_archive_work(void *arg)
{
    ledger_scan *sc = arg;

    sc->rows = json_array();
    sc->rc = archive_page(sc->app, sc->wallet, sc->max_seq, &sc->f, sc->want, sc->rows, sc->err,
                          sizeof sc->err);
}

/* 1 if entry e passes the request's filters. */
static int ledger_match(job *j, json_t *e)
{
    const char *key = arg_str(j, "key"), *svc = arg_str(j, "service");
    json_t *from = arg(j, "from"), *to = arg(j, "to");
    long long at = json_integer_value(json_object_get(e, "at"));

    if (key != NULL && !json_equal(json_object_get(e, "key_id"), arg(j, "key")))
        return 0;
    if (svc != NULL && !json_equal(json_object_get(e, "service"), arg(j, "service")))
        return 0;
    if (json_is_integer(from) && at < json_integer_value(from))
        return 0;
    if (json_is_integer(to) && at > json_integer_value(to))
        return 0;
    return 1;
}

static int ledger_args(job *j, ledger_scan *sc)
{
    const char *cur = arg_str(j, "cursor");
    json_t *from = arg(j, "from"), *to = arg(j, "to"), *c = arg(j, "cursor");

    if (c != NULL && !json_is_null(c) && (cur == NULL || page_ledger_parse(cur, &sc->next) != 0)) {
        job_fail(j, "bad_request", "'cursor' is not a wallet.ledger cursor");
        return -1;
    }
    if ((json_is_integer(from) && json_integer_value(from) < 0) ||
        (json_is_integer(to) && json_integer_value(to) < 0) ||
        (json_is_integer(from) && json_is_integer(to) &&
         json_integer_value(from) > json_integer_value(to))) {
        job_fail(j, "bad_request", "'from' and 'to' are milliseconds since the epoch, from <= to");
        return -1;
    }
    sc->filtered = arg_str(j, "key") != NULL || arg_str(j, "service") != NULL ||
                   json_is_integer(from) || json_is_integer(to);
    sc->app = j->app;
    snprintf(sc->wallet, sizeof sc->wallet, "%s", arg_str(j, "wallet"));
    snprintf(sc->key, sizeof sc->key, "%s", arg_str(j, "key") ?: "");
    snprintf(sc->service, sizeof sc->service, "%s", arg_str(j, "service") ?: "");
    sc->f.key_id = arg_str(j, "key") ? sc->key : NULL;
    sc->f.service = arg_str(j, "service") ? sc->service : NULL;
    sc->f.from_ms = json_is_integer(from) ? json_integer_value(from) : -1;
    sc->f.to_ms = json_is_integer(to) ? json_integer_value(to) : -1;
    return 0;
}

static void ledger_cursor(job *j, long long seq)
{
    char cur[PAGE_CURSOR_MAX];

    page_ledger_cursor(cur, seq);
    json_object_set_new(j->result, "next_cursor", json_string(cur));
}

/* The archive's rows arrived: the page's last part. */
static job_step ledger_archived(job *j, ledger_scan *sc)
{
    json_t *list = json_object_get(j->result, "entries"), *row;
    long long last = -1;
    size_t i;

    if (sc->rc != 0) {
        json_decref(sc->rows);
        sc->rows = NULL;
        log_warn("wallet.ledger: %s", sc->err);
        return job_fail(j, "unavailable", "the ledger archive is unreachable; try again later");
    }
    json_array_foreach(sc->rows, i, row) {
        const char *t = json_string_value(json_array_get(row, 1));
        json_t *doc = t ? json_loads(t, 0, NULL) : NULL;
        last = json_integer_value(json_array_get(row, 0));
        if (doc != NULL)
            json_array_append_new(list, doc);
    }
    if ((int)json_array_size(sc->rows) == sc->want && last > 0)
        ledger_cursor(j, last - 1);
    json_decref(sc->rows);
    sc->rows = NULL;
    return J_DONE;
}

job_step cmd_wallet_ledger(job *j)
{
    ledger_scan *sc = job_scratch(j, sizeof *sc);
    long long limit = read_limit(j, 100), a0, len, first;
    json_t *r, *list, *e, *from = arg(j, "from");
    size_t i, base = j->stage == 1;     /* stage 1: reply 0 is EXISTS */

    if (limit < 0)
        return J_FAIL;
    if (sc->archive)
        return ledger_archived(j, sc);
    if (j->stage == 0) {
        sc->next = -1;                  /* the newest */
        if (ledger_args(j, sc) != 0)
            return J_FAIL;
        job_read(j, "EXISTS", rk(j, KGC_RK_WALLET, j->team_id, arg_str(j, "wallet")), NULL);
        ledger_read(j, sc, limit);
        j->result = json_pack("{s:[]}", "entries");
        return J_READ;
    }
    if (j->stage == 1 && json_integer_value(job_reply(j, 0)) != 1)
        return job_fail(j, "not_found", "no such wallet");
    r = job_reply(j, base);
    a0 = json_integer_value(json_array_get(r, 0));
    len = json_integer_value(json_array_get(r, 1));
    first = json_integer_value(json_array_get(r, 2));
    if (a0 + len == 0)
        return J_DONE;                  /* no entry yet */
    if (first >= a0 + len)
        return job_fail(j, "bad_request", "'cursor' is past the newest entry of this ledger");
    list = json_object_get(j->result, "entries");
    r = json_array_get(r, 3);
    json_array_foreach(r, i, e) {
        long long pos = first - (long long)i;
        json_t *doc = json_is_string(e) ? json_loadb(json_string_value(e), json_string_length(e),
                                                     0, NULL) : NULL;
        if (doc == NULL)
            continue;               /* fsck reports it */
        if (json_is_integer(from) &&
            json_integer_value(json_object_get(doc, "at")) < json_integer_value(from) - LEDGER_SKEW_MS) {
            json_decref(doc);
            return J_DONE;          /* older than the range: the end */
        }
        if (ledger_match(j, doc))
            json_array_append_new(list, doc);
        else
            json_decref(doc);
        if ((long long)json_array_size(list) == limit) {
            if (pos > 0)
                ledger_cursor(j, pos - 1);
            return J_DONE;
        }
    }
    sc->scanned += (long long)json_array_size(r);
    sc->next = first - (long long)json_array_size(r);
    if (sc->next < 0)
        return J_DONE;              /* read the oldest entry */
    if (sc->next < a0) {            /* the rest is in the archive */
        sc->archive = 1;
        sc->max_seq = sc->next;
        sc->want = (int)(limit - (long long)json_array_size(list));
        return job_offload(j, ledger_archive_work, sc);
    }
    if (sc->scanned >= LEDGER_SCAN_MAX || !sc->filtered) {
        ledger_cursor(j, sc->next);
        return J_DONE;
    }
    ledger_read(j, sc, limit);
    return J_READ;
}

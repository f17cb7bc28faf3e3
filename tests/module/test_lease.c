/*
 * test_lease.c - debit leased (issue 14): money stays exact when gateways
 * decide against leases in memory.
 *
 *   invariant  4 processes spend one wallet credited for exactly K
 *              requests until its funds are gone: exactly K served and
 *              charged, balance 0, no lease left, K ledger debits
 *   kill -9    the same while gateways are killed and restarted on the
 *              same journal prefix: still exactly K charged, none twice,
 *              and every served request charged
 *   sigstop    a gateway stopped past lease_ttl_ms: its lease is
 *              reclaimed by the others, its late entries charged when it
 *              resumes, the shortfall recorded in the ledger and wallet
 *   revoke     a revoked key stops being served locally within 1 s
 *
 * Each phase ends with the store's own invariant (what `keygate fsck`
 * checks): balance + Σ leases = credits − debits, leased_micros = Σ the
 * lease hash, the ledger chain of balance_micros, no (key, request id)
 * charged twice.
 */
#include "kgt.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define PROCS 4
#define K 3000
#define COST 150                      /* input_tokens 1000 on "small" */

static kgt_env env;
static long *served;                  /* per process, shared (MAP_SHARED) */

static long long hget(redisContext *rc, const kgt_world *w, const char *field)
{
    redisReply *r = redisCommand(rc, "HGET " KGT_PREFIX "{t:%s}:wallet:%s %s", w->team, w->wallet,
                                 field);
    long long v = 0;
    if (r != NULL && r->type == REDIS_REPLY_STRING)
        v = strtoll(r->str, NULL, 10);
    if (r != NULL)
        freeReplyObject(r);
    return v;
}

/* One gateway process: spends until the wallet's funds (balance + every
 * lease) are gone. */
static void gateway(int id, const kgt_world *w, const char *conf)
{
    kg_ctx *ctx;
    kgt_req r;
    kg_result res;
    char err[256], rid[64];
    redisContext *rc = kgt_connect(&env);
    int refusals = 0;

    ctx = kg_open(conf, err, sizeof err);
    if (ctx == NULL || rc == NULL || rc->err) {
        fprintf(stderr, "gateway %d: %s\n", id, ctx == NULL ? err : "redis");
        _exit(2);
    }
    for (long i = 0; i < 10000000; i++) {
        snprintf(rid, sizeof rid, "g%d-%d-%ld", id, (int)getpid(), i);
        kgt_request(&r, w->tok, "text-generation", "small", (i % 3) ? NULL : rid,
                    KGT_P("input_tokens", 1000), NULL);
        switch (kg_authorize(ctx, &r.req, &res)) {
        case KG_OK:
            if (res.replayed || res.cost_micros != COST)
                _exit(3);
            __atomic_add_fetch(&served[id], 1, __ATOMIC_SEQ_CST);
            refusals = 0;
            break;
        case KG_INSUFFICIENT_FUNDS:
        case KG_BACKEND_ERROR:          /* a store stopped under us (sigstop phase: no) */
            if (++refusals > 20000) {
                fprintf(stderr, "gateway %d: refused forever\n", id);
                _exit(4);
            }
            if (hget(rc, w, "balance_micros") + hget(rc, w, "leased_micros") <= 0)
                goto done;
            kgt_sleep_ms(1);
            break;
        default:
            fprintf(stderr, "gateway %d: request %ld: %s\n", id, i, kg_status_code(res.status));
            _exit(5);
        }
    }
done:
    kg_close(ctx);
    redisFree(rc);
    _exit(0);
}

static pid_t spawn(int id, const kgt_world *w, const char *conf)
{
    pid_t pid = fork();
    KGT_CHECK(pid >= 0, "fork");
    if (pid == 0)
        gateway(id, w, conf);
    return pid;
}

static void reap(pid_t pid, int id)
{
    int st;
    KGT_CHECK(waitpid(pid, &st, 0) == pid, "waitpid");
    KGT_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "gateway %d failed (status %d)", id, st);
}

/* The store's invariant (fsck's): returns the number of debits. */
/* A leased debit's ledger entry must be byte for byte what the exact
 * scripts' entry() makes of the same fields (the gateway formats most of
 * it, kg_lease.c send_flush): rebuilt here with the original formula. */
static const char old_entry_lua[] =
    "local function d(x) return string.format('%d', tonumber(x)) end\n"
    "local e = '{\"type\":\"debit\",\"amount_micros\":' .. d(ARGV[1]) ..\n"
    "  ',\"balance_micros\":' .. d(ARGV[2]) .. ',\"at\":' .. d(ARGV[3]) ..\n"
    "  ',\"key_id\":' .. cjson.encode(ARGV[4]) .. ',\"user_id\":' .. cjson.encode(ARGV[5]) ..\n"
    "  ',\"service\":' .. cjson.encode(ARGV[6]) .. ',\"model\":' .. cjson.encode(ARGV[7]) ..\n"
    "  ',\"request_id\":' .. (ARGV[8] ~= '' and cjson.encode(ARGV[8]) or 'null') ..\n"
    "  ',\"lease\":' .. cjson.encode(ARGV[9])\n"
    "if ARGV[10] ~= '' then e = e .. ',\"lease_late_micros\":' .. d(ARGV[10]) end\n"
    "if ARGV[11] ~= '' then e = e .. ',\"shortfall_micros\":' .. d(ARGV[11]) end\n"
    "return e .. '}'\n";

static int late_or_short(json_t *e)
{
    return json_object_get(e, "lease_late_micros") != NULL ||
           json_object_get(e, "shortfall_micros") != NULL;
}

static void check_entry_text(const char *text, json_t *e)
{
    const char *argv[14];
    char num[5][24];
    json_t *late = json_object_get(e, "lease_late_micros"), *sf = json_object_get(e, "shortfall_micros");
    const char *rid = json_string_value(json_object_get(e, "request_id"));
    redisReply *r;

    snprintf(num[0], 24, "%lld", (long long)json_integer_value(json_object_get(e, "amount_micros")));
    snprintf(num[1], 24, "%lld", (long long)json_integer_value(json_object_get(e, "balance_micros")));
    snprintf(num[2], 24, "%lld", (long long)json_integer_value(json_object_get(e, "at")));
    snprintf(num[3], 24, late ? "%lld" : "", (long long)json_integer_value(late));
    snprintf(num[4], 24, sf ? "%lld" : "", (long long)json_integer_value(sf));
    argv[0] = "EVAL";
    argv[1] = old_entry_lua;
    argv[2] = "0";
    argv[3] = num[0];
    argv[4] = num[1];
    argv[5] = num[2];
    argv[6] = json_string_value(json_object_get(e, "key_id"));
    argv[7] = json_string_value(json_object_get(e, "user_id"));
    argv[8] = json_string_value(json_object_get(e, "service"));
    argv[9] = json_string_value(json_object_get(e, "model"));
    argv[10] = rid != NULL ? rid : "";
    argv[11] = json_string_value(json_object_get(e, "lease"));
    argv[12] = num[3];
    argv[13] = num[4];
    for (int i = 6; i < 12; i++)
        KGT_CHECK(argv[i] != NULL, "ledger entry field %d missing: %s", i, text);
    r = redisCommandArgv(env.rc, 14, argv, NULL);
    KGT_CHECK(r != NULL && r->type == REDIS_REPLY_STRING, "old entry() formula failed");
    KGT_CHECK(strcmp(r->str, text) == 0, "leased ledger entry\n  %s\nis not entry()'s\n  %s", text,
              r->str);
    freeReplyObject(r);
}

/* Debits in the wallet's ledger that took the exact path (one script per
 * request): a leased entry names its lease. */
static long long exact_debits(const kgt_world *w)
{
    redisReply *ledger = kgt_cmd(&env, "LRANGE " KGT_PREFIX "{t:%s}:ledger:%s 0 -1", w->team, w->wallet);
    long long n = 0;

    for (size_t i = 0; i < ledger->elements; i++) {
        json_t *e = json_loads(ledger->element[i]->str, 0, NULL);
        KGT_CHECK(e != NULL, "ledger entry %zu is not JSON", i);
        if (strcmp(json_string_value(json_object_get(e, "type")), "debit") == 0 &&
            json_object_get(e, "lease") == NULL)
            n++;
        json_decref(e);
    }
    freeReplyObject(ledger);
    return n;
}

static long long check_store(const kgt_world *w, long long *debit_sum, long long *late,
                             long long *shortfall)
{
    redisReply *ledger, *leases;
    long long credits = 0, debits = 0, nd = 0, lsum = 0, prev = 0;
    long long bal = kgt_int(&env, "HGET " KGT_PREFIX "{t:%s}:wallet:%s balance_micros", w->team, w->wallet);
    long long leased = hget(env.rc, w, "leased_micros");

    *late = *shortfall = 0;
    leases = kgt_cmd(&env, "HVALS " KGT_PREFIX "{t:%s}:lease:%s", w->team, w->wallet);
    for (size_t i = 0; i < leases->elements; i++)
        lsum += strtoll(leases->element[i]->str, NULL, 10);
    freeReplyObject(leases);
    KGT_CHECK(lsum == leased, "leased_micros %lld, leases sum to %lld", leased, lsum);
    ledger = kgt_cmd(&env, "LRANGE " KGT_PREFIX "{t:%s}:ledger:%s 0 -1", w->team, w->wallet);
    kgt_do(&env, "DEL kgt:rids");
    for (size_t n = ledger->elements; n-- > 0;) {      /* oldest first */
        json_t *e = json_loads(ledger->element[n]->str, 0, NULL);
        long long a, b;
        const char *rid;
        KGT_CHECK(e != NULL, "ledger entry %zu is not JSON", n);
        a = json_integer_value(json_object_get(e, "amount_micros"));
        b = json_integer_value(json_object_get(e, "balance_micros"));
        if (strcmp(json_string_value(json_object_get(e, "type")), "debit") == 0) {
            debits += a;
            nd++;
            KGT_CHECK(b == prev - a, "ledger chain: %lld after %lld - %lld", b, prev, a);
            *late += json_integer_value(json_object_get(e, "lease_late_micros"));
            *shortfall += json_integer_value(json_object_get(e, "shortfall_micros"));
            /* Only a late charge takes the balance below zero, and it
             * records that part as its shortfall; a later entry may still
             * show the wallet below zero (until a reclaim gives a lease
             * back), never by more than the shortfall recorded so far. */
            KGT_CHECK(b >= -*shortfall, "balance below zero by more than the %lld shortfall "
                      "recorded so far: %s", *shortfall, ledger->element[n]->str);
            rid = json_string_value(json_object_get(e, "request_id"));
            if (json_object_get(e, "lease") != NULL && (n % 7 == 0 || late_or_short(e)))
                check_entry_text(ledger->element[n]->str, e);
            if (rid != NULL)
                KGT_CHECK(kgt_int(&env, "SADD kgt:rids %s", rid) == 1, "request id %s charged twice", rid);
        } else {
            credits += a;
            KGT_CHECK(b == prev + a, "ledger chain: credit");
        }
        prev = b;
        json_decref(e);
    }
    freeReplyObject(ledger);
    KGT_CHECK(bal + leased == credits - debits,
              "balance %lld + leased %lld != credits %lld - debits %lld", bal, leased, credits, debits);
    KGT_CHECK(prev == bal + leased, "the newest entry says %lld, the wallet %lld", prev, bal + leased);
    KGT_CHECK(hget(env.rc, w, "shortfall_micros") == *shortfall, "wallet shortfall %lld, ledger %lld",
              hget(env.rc, w, "shortfall_micros"), *shortfall);
    *debit_sum = debits;
    return nd;
}

static long total_served(void)
{
    long t = 0;
    for (int i = 0; i < PROCS + 2; i++)
        t += __atomic_load_n(&served[i], __ATOMIC_SEQ_CST);
    return t;
}

static void phase_invariant(const char *conf)
{
    kgt_world w;
    pid_t pids[PROCS];
    long long sum, late, sf, nd;

    memset(served, 0, sizeof(long) * (PROCS + 2));
    kgt_world_make(&env, &w, (int64_t)K * COST);
    for (int i = 0; i < PROCS; i++)
        pids[i] = spawn(i, &w, conf);
    for (int i = 0; i < PROCS; i++)
        reap(pids[i], i);
    nd = check_store(&w, &sum, &late, &sf);
    KGT_CHECK(total_served() == K, "%ld served, expected exactly %d", total_served(), K);
    KGT_CHECK(nd == K && sum == (long long)K * COST, "%lld debits (%lld micros)", nd, sum);
    KGT_CHECK(kgt_balance(&env, &w) == 0 && hget(env.rc, &w, "leased_micros") == 0, "funds left");
    KGT_CHECK(sf == 0, "shortfall %lld with no gateway stopped", sf);
    printf("ok: invariant: %d processes: exactly %d served and charged, balance 0, "
           "%lld served over late leases\n", PROCS, K, late / COST);
}

static void phase_kill(const char *conf)
{
    kgt_world w;
    pid_t pids[PROCS];
    long long sum, late, sf, nd;
    int kills = 0;

    memset(served, 0, sizeof(long) * (PROCS + 2));
    kgt_world_make(&env, &w, (int64_t)K * COST * 2);
    for (int i = 0; i < PROCS; i++)
        pids[i] = spawn(i, &w, conf);
    for (int round = 0; round < 6; round++) {
        int v = round % 2;             /* gateways 0 and 1 take turns */
        kgt_sleep_ms(15 + 7 * round);
        int st;
        if (waitpid(pids[v], &st, WNOHANG) == pids[v]) {
            KGT_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "gateway %d failed", v);
            pids[v] = 0;                /* it finished: the money is gone */
            break;
        }
        kill(pids[v], SIGKILL);
        KGT_CHECK(waitpid(pids[v], NULL, 0) == pids[v], "waitpid");
        kills++;
        pids[v] = spawn(v, &w, conf);   /* replays a journal file left unlocked */
    }
    for (int i = 0; i < PROCS; i++)
        if (pids[i] != 0)
            reap(pids[i], i);
    /* what the last killed gateways left unflushed: a last context on the
     * prefix replays and flushes the files (as a restart would) */
    {
        kg_ctx *c[PROCS + 2];           /* open at once: each claims another file */
        for (int i = 0; i < PROCS + 2; i++)
            KGT_CHECK((c[i] = kg_open(conf, NULL, 0)) != NULL, "kg_open");
        for (int i = 0; i < PROCS + 2; i++)
            kg_close(c[i]);
    }
    nd = check_store(&w, &sum, &late, &sf);
    KGT_CHECK(nd == 2 * K && sum == 2LL * K * COST, "%lld debits (%lld micros), expected %d", nd,
              sum, 2 * K);
    KGT_CHECK(total_served() <= 2 * K && total_served() >= 2 * K - kills,
              "%ld served for %d charged (%d kills)", total_served(), 2 * K, kills);
    KGT_CHECK(kgt_balance(&env, &w) == 0 && hget(env.rc, &w, "leased_micros") == 0, "funds left");
    printf("ok: kill -9: %d kills, exactly %d charged, none twice, %ld served "
           "(a kill may lose an answer, never a charge)\n", kills, 2 * K, total_served());
}

/* Valid-looking slots in every journal file (seq != 0; kg_journal.c). */
static long journal_entries(void)
{
    long n = 0;
    for (int f = 0; f < 16; f++) {
        char path[400];
        FILE *fp;
        uint64_t seq;
        snprintf(path, sizeof path, "%s/journal.%d", env.dir, f);
        if ((fp = fopen(path, "rb")) == NULL)
            continue;
        for (long off = 4096; fseek(fp, off, SEEK_SET) == 0 && fread(&seq, 8, 1, fp) == 1; off += 512)
            n += seq != 0;
        fclose(fp);
    }
    return n;
}

/* Returns the micros charged late: 0 when the stop fell where the
 * gateway had no entry unflushed (a flush of all of them on the wire),
 * which checks exactness but not the late path: main() plays it again. */
static long long phase_sigstop(const char *conf)
{
    kgt_world w;
    pid_t a, b[2];
    long long sum, late, sf, nd, bal;

    memset(served, 0, sizeof(long) * (PROCS + 2));
    kgt_world_make(&env, &w, (int64_t)K * COST);
    a = spawn(4, &w, conf);
    while (__atomic_load_n(&served[4], __ATOMIC_SEQ_CST) < 1500)
        kgt_sleep_ms(1);
    kill(a, SIGSTOP);                   /* holding a lease and unflushed entries */
    kgt_sleep_ms(5);
    fprintf(stderr, "stopped with %ld journal entries, lease %lld\n", journal_entries(),
            hget(env.rc, &w, "leased_micros"));
    for (int i = 0; i < 2; i++)
        b[i] = spawn(i, &w, conf);
    for (int i = 0; i < 2; i++)
        reap(b[i], i);                  /* they spent everything, A's lease too */
    KGT_CHECK(hget(env.rc, &w, "leased_micros") == 0, "the stopped gateway's lease was not reclaimed");
    kill(a, SIGCONT);
    reap(a, 4);
    nd = check_store(&w, &sum, &late, &sf);
    bal = kgt_balance(&env, &w);
    KGT_CHECK(nd == total_served() && sum == nd * COST, "%lld debits for %ld served", nd,
              total_served());
    KGT_CHECK(bal == (long long)K * COST - sum && sf == -bal && late >= sf,
              "balance %lld, shortfall %lld, late %lld", bal, sf, late);
    if (late == 0) {
        printf("sigstop: exact, but the stop left no entry to charge late: again\n");
        return 0;
    }
    printf("ok: sigstop: lease reclaimed under a stopped gateway; on resume %lld micros charged "
           "late, shortfall %lld recorded (balance %lld); %ld served = %lld charged\n",
           late, sf, bal, total_served(), nd);
    return late;
}

static void phase_revoke(const char *conf)
{
    kgt_world w;
    kgt_req r;
    kg_result res;
    kg_ctx *ctx = kg_open(conf, NULL, 0);
    int64_t t0;
    int after = 0;
    long long exact;

    KGT_CHECK(ctx != NULL, "kg_open");
    kgt_world_make(&env, &w, (int64_t)K * COST * 10);
    kgt_request(&r, w.tok, "text-generation", "small", NULL, KGT_P("input_tokens", 1000), NULL);
    for (int i = 0; i < 2000; i++)
        KGT_CHECK(kg_authorize(ctx, &r.req, &res) == KG_OK, "request %d: %s (balance %lld)", i,
                  kg_status_code(res.status), (long long)res.balance_micros);
    exact = exact_debits(&w);
    for (int i = 0; i < 2000; i++)
        KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);
    /* The lease doubles each time it runs out while the spend rate is
     * still unknown (windows of >= 10 ms, shorter than these loops): a
     * request or two may still find it empty and take the exact path.
     * Counted from the ledger (an exact debit is written at once, with no
     * "lease"), not from EVALSHA calls: the context's flushes and renewals
     * are EVALSHAs too, and their number follows the machine's speed.
     * On a loaded machine (another suite on the other core) a few more
     * than "one or two" did (4 of 2000): 1 % is the bound. */
    exact = exact_debits(&w) - exact;
    KGT_CHECK(exact <= 20, "warm leased requests went to the debit script (%lld of 2000)", exact);
    kgt_revoke(&env, w.team, w.key);
    t0 = kgt_now_ms();
    while (kg_authorize(ctx, &r.req, &res) == KG_OK) {
        after++;
        KGT_CHECK(kgt_now_ms() - t0 < 1000, "still served %d requests 1 s after the revocation", after);
    }
    KGT_EQ_STATUS(res.status, KG_KEY_REVOKED);
    printf("ok: revoke: refused %lld ms after the revocation (%d served meanwhile); "
           "%lld of 2000 warm requests took the exact path\n",
           (long long)(kgt_now_ms() - t0), after, exact);
    kg_close(ctx);
    {
        long long s1, l1, f1;
        long long nd = check_store(&w, &s1, &l1, &f1);
        KGT_CHECK(nd == 4000 + after, "%lld debits for %d served", nd, 4000 + after);
    }
}

/* Redis stopped 2 s under load: local decisions go on within the lease
 * (cache and catalog kept while a lease is valid), the rest fail closed
 * (KG_BACKEND_ERROR); nothing decided is lost once Redis is back. */
static void phase_outage(const char *conf)
{
    kgt_world w;
    kgt_req r;
    kg_result res;
    kg_ctx *ctx = kg_open(conf, NULL, 0);
    long ok = 0, out_ok = 0, out_err = 0, after = 0;
    int64_t t0, last_ok = 0;

    KGT_CHECK(ctx != NULL, "kg_open");
    kgt_world_make(&env, &w, (int64_t)K * COST * 100);
    kgt_request(&r, w.tok, "text-generation", "small", NULL, KGT_P("input_tokens", 1000), NULL);
    for (t0 = kgt_now_ms(); kgt_now_ms() - t0 < 300; ok++) {
        KGT_EQ_STATUS(kg_authorize(ctx, &r.req, &res), KG_OK);
        kgt_sleep_ms(ok % 20 == 0);     /* about 20 requests a ms */
    }
    kgt_do(&env, "SAVE");               /* the restarted Redis loads it */
    kgt_redis_stop(&env);
    for (t0 = kgt_now_ms(); kgt_now_ms() - t0 < 2000;) {
        kg_status st = kg_authorize(ctx, &r.req, &res);
        if (st == KG_OK) {
            out_ok++;
            last_ok = kgt_now_ms() - t0;
        } else {
            KGT_EQ_STATUS(st, KG_BACKEND_ERROR);
            out_err++;
        }
        kgt_sleep_ms((out_ok + out_err) % 20 == 0);
    }
    kgt_redis_start(&env);
    for (t0 = kgt_now_ms(); after < 2000; ) {
        kg_status st = kg_authorize(ctx, &r.req, &res);
        KGT_CHECK(st == KG_OK || st == KG_BACKEND_ERROR, "%s", kg_status_code(st));
        after += st == KG_OK;
        KGT_CHECK(kgt_now_ms() - t0 < 5000, "not served again 5 s after Redis came back");
    }
    kg_close(ctx);
    {
        long long s1, l1, f1;
        long long nd = check_store(&w, &s1, &l1, &f1);
        KGT_CHECK(nd == ok + out_ok + after, "%lld debits for %ld served", nd, ok + out_ok + after);
    }
    KGT_CHECK(out_ok > 0, "nothing served from the lease while Redis was down");
    printf("ok: outage: Redis down 2 s: %ld served from the lease (the last %lld ms in), "
           "%ld refused (503); all %ld served charged after\n",
           out_ok, (long long)last_ok, out_err, ok + out_ok + after);
}

/* The catalog chooses per service: "debit": "leased" leases a service in
 * any gateway with a lease_journal, "exact" keeps one script a request
 * under 'debit leased', no "debit" follows the config. A gateway without
 * a journal has nowhere to record local decisions: exact. */
static void phase_catalog(const char *journal_only, const char *leased, const char *exact)
{
    static const struct {
        const char *name, *debit;
        int conf;                       /* 0 journal only, 1 debit leased, 2 no journal */
        int leases;
    } cases[] = {
        {"catalog leased, config journal only", "leased", 0, 1},
        {"catalog silent, config journal only", NULL, 0, 0},
        {"catalog exact, config debit leased", "exact", 1, 0},
        {"catalog silent, config debit leased", NULL, 1, 1},
        {"catalog leased, config without journal", "leased", 2, 0},
    };
    const char *confs[3] = {journal_only, leased, exact};
    const int n = 400;

    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        kgt_world w;
        kgt_req r;
        kg_result res;
        kg_ctx *ctx;
        long long ex, sum, late, sf;

        kgt_catalog_field(&env, "text-generation", "debit",
                          cases[c].debit ? json_string(cases[c].debit) : NULL);
        ctx = kg_open(confs[cases[c].conf], NULL, 0);
        KGT_CHECK(ctx != NULL, "kg_open");
        kgt_world_make(&env, &w, (int64_t)n * COST * 10);
        kgt_request(&r, w.tok, "text-generation", "small", NULL, KGT_P("input_tokens", 1000), NULL);
        for (int i = 0; i < n; i++)
            KGT_CHECK(kg_authorize(ctx, &r.req, &res) == KG_OK, "%s: request %d: %s",
                      cases[c].name, i, kg_status_code(res.status));
        kg_close(ctx);                  /* flushes, returns the leases */
        KGT_CHECK(check_store(&w, &sum, &late, &sf) == n && sum == (long long)n * COST,
                  "%s: %lld micros charged for %d requests", cases[c].name, sum, n);
        ex = exact_debits(&w);
        if (cases[c].leases)
            KGT_CHECK(ex <= n / 8,       /* the cold request and the lease's ramp-up */
                      "%s: %lld of %d requests took the exact path", cases[c].name, ex, n);
        else
            KGT_CHECK(ex == n, "%s: %lld of %d requests leased", cases[c].name, n - ex, n);
        printf("ok: %s: %lld of %d exact, %d charged\n", cases[c].name, ex, n, n);
    }
    kgt_catalog(&env, NULL);
}

int main(void)
{
    const char *conf;
    char extra[700];

    served = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    KGT_CHECK(served != MAP_FAILED, "mmap");
    kgt_setup(&env, "timeout_ms 2000\n");
    kgt_catalog(&env, NULL);
    snprintf(extra, sizeof extra, "timeout_ms 2000\ndebit leased\nlease_ttl_ms 600\n"
             "lease_journal %s/journal\n", env.dir);
    conf = kgt_write_conf(&env, "leased.conf", extra);
    if (!getenv("KGT_ONLY")) phase_invariant(conf);
    if (!getenv("KGT_ONLY")) phase_kill(conf);
    if (!getenv("KGT_ONLY")) {
        int tries = 0;
        while (phase_sigstop(conf) == 0)
            KGT_CHECK(++tries < 8, "the stopped gateway had no entry left to charge late, 8 times");
    }
    phase_revoke(conf);
    snprintf(extra, sizeof extra, "timeout_ms 2000\nlease_ttl_ms 600\nlease_journal %s/journal-cat\n",
             env.dir);
    {
        char *leased = strdup(conf);    /* kgt_write_conf's buffer is reused */
        char *journal = strdup(kgt_write_conf(&env, "journal.conf", extra));
        char *exact = strdup(kgt_write_conf(&env, "exact.conf", "timeout_ms 2000\n"));
        phase_catalog(journal, leased, exact);
        free(leased);
        free(journal);
        free(exact);
    }
    snprintf(extra, sizeof extra, "timeout_ms 50\ndebit leased\nlease_ttl_ms 3000\n"
             "lease_journal %s/journal-outage\n", env.dir);
    phase_outage(kgt_write_conf(&env, "outage.conf", extra));
    kgt_teardown(&env);
    return 0;
}

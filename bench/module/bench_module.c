/*
 * bench_module.c - libkeygate's speed against the store's own round trip,
 * measured on one private redis-server in one run:
 *
 *   bare GET            hiredis, synchronous, a small string
 *   bare EVALSHA        hiredis, synchronous, "return 1"   (the baseline)
 *   (a) warm payg       kg_authorize, token cached, one debit script
 *   (b) cold payg       kg_authorize with cache_ttl_ms 0: ONE EVALSHA, the cold
 *                       script (resolves the token, checks the key, debits:
 *                       issue 11; it was HGETALL, GET, EVALSHA before)
 *   (c) free service    kg_authorize, token cached, one quota script
 *   (d) malformed       kg_authorize, bad checksum, no store
 *
 * For each: ops/s, p50 and p99 latency, and the p50 ratio to bare EVALSHA.
 * Goals (issue 4): (a) p50 <= 1.3x bare EVALSHA; (d) under 1 us.
 * Goal (issue 11): (b) cold p50 <= 1.3x bare EVALSHA (one round trip);
 * cold and warm p50 and p99 are printed against bare EVALSHA's.
 * Usage: bench_module [iterations]   (default 20000)
 */
#include "kgt.h"
#include "kg_internal.h"   /* the debit script text, for the bare EVALSHA of it */

#include <signal.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static kgt_env env;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

typedef struct stat_row {
    const char *name;
    double ops, p50_us, p99_us;
    double cpu_us;                /* this process' CPU (user + sys) per op */
    double redis_us;              /* Redis' time per op (INFO commandstats), -1 unknown */
} stat_row;

/* Redis' own time so far, in us, in the commands a client sends at top
 * level (INFO commandstats; the commands a script calls are inside its
 * EVALSHA's time, so they are not added again). */
static long long redis_usec(redisContext *c)
{
    static const char *const top[] = {"cmdstat_evalsha:", "cmdstat_get:", "cmdstat_hgetall:",
                                      "cmdstat_script|load:", "cmdstat_script:"};
    redisReply *r = redisCommand(c, "INFO commandstats");
    long long sum = 0;

    if (r == NULL || r->type != REDIS_REPLY_STRING) {
        if (r != NULL)
            freeReplyObject(r);
        return -1;
    }
    for (size_t i = 0; i < sizeof top / sizeof *top; i++) {
        const char *p = strstr(r->str, top[i]), *u;
        if (p != NULL && (u = strstr(p, "usec=")) != NULL)
            sum += strtoll(u + 5, NULL, 10);
    }
    freeReplyObject(r);
    return sum;
}

static int64_t cpu_ns(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ((int64_t)ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000LL +
           ((int64_t)ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000LL;
}

/* lat[] holds n per-op latencies in ns; total_ns the wall time of the run. */
static stat_row summarize(const char *name, int64_t *lat, size_t n, int64_t total_ns)
{
    stat_row s = {name, 0, 0, 0, 0, -1};
    qsort(lat, n, sizeof *lat, cmp64);
    s.ops = (double)n * 1e9 / (double)total_ns;
    s.p50_us = (double)lat[n / 2] / 1000.0;
    s.p99_us = (double)lat[n * 99 / 100] / 1000.0;
    return s;
}

static void print_row(const stat_row *s, double base_p50)
{
    printf("%-38s %10.0f %9.2f %9.2f %9.2fx %9.2f", s->name, s->ops, s->p50_us, s->p99_us,
           s->p50_us / base_p50, s->cpu_us);
    if (s->redis_us >= 0)
        printf(" %9.2f", s->redis_us);
    printf("\n");
}

static __attribute__((unused)) stat_row bench_cmd(const char *name, redisContext *c, int argc, const char **argv,
                          size_t n, int64_t *lat)
{
    int64_t t0 = now_ns();
    for (size_t i = 0; i < n; i++) {
        int64_t a = now_ns();
        redisReply *r = redisCommandArgv(c, argc, argv, NULL);
        lat[i] = now_ns() - a;
        if (r == NULL || r->type == REDIS_REPLY_ERROR) {
            fprintf(stderr, "bench: %s failed\n", name);
            exit(1);
        }
        freeReplyObject(r);
    }
    return summarize(name, lat, n, now_ns() - t0);
}

static stat_row bench_kg(const char *name, kg_ctx *ctx, const kg_request *req, kg_status want,
                         size_t n, int64_t *lat)
{
    kg_result res;
    int64_t t0 = now_ns(), c0 = cpu_ns();
    for (size_t i = 0; i < n; i++) {
        int64_t a = now_ns();
        kg_status s = kg_authorize(ctx, req, &res);
        lat[i] = now_ns() - a;
        if (s != want) {
            fprintf(stderr, "bench: %s: %s, expected %s\n", name, kg_status_code(s), kg_status_code(want));
            exit(1);
        }
    }
    stat_row row = summarize(name, lat, n, now_ns() - t0);
    row.cpu_us = (double)(cpu_ns() - c0) / 1000.0 / (double)n;
    return row;
}

/* For sub-microsecond calls: time batches of 100 and divide. */
static __attribute__((unused)) stat_row bench_kg_batched(const char *name, kg_ctx *ctx, const kg_request *req,
                                 kg_status want, size_t n, int64_t *lat)
{
    kg_result res;
    size_t batches = n / 100;
    int64_t t0 = now_ns();
    for (size_t b = 0; b < batches; b++) {
        int64_t a = now_ns();
        for (int i = 0; i < 100; i++)
            if (kg_authorize(ctx, req, &res) != want) {
                fprintf(stderr, "bench: %s: unexpected %s\n", name, kg_status_code(res.status));
                exit(1);
            }
        lat[b] = (now_ns() - a) / 100;
    }
    stat_row s = summarize(name, lat, batches, now_ns() - t0);
    s.ops *= 100;
    return s;
}

/* Reserve + settle: the catalog gains "llm-settle", text-generation's
 * "small" with output_tokens measured (max 4096), enabled on a second key
 * of the world's team paying from the same wallet. */
static char settle_tok[KGC_TOKEN_LEN + 1];

static void settle_setup(const kgt_world *w)
{
    FILE *f = fopen(KGT_DATA_DIR "/catalog.json", "r");
    json_t *cat = json_loadf(f, 0, NULL), *s, *copy = NULL, *r;
    char svcs[512], key[KGC_ID_MAX], user[KGC_ID_MAX], *text;
    size_t i, k;

    fclose(f);
    json_array_foreach(json_object_get(cat, "services"), i, s) {
        if (strcmp(json_string_value(json_object_get(s, "id")), "speech-to-text") == 0)
            json_object_set_new(s, "free_quota", json_pack("{s:I}", "requests_per_day", (json_int_t)1000000000));
        if (strcmp(json_string_value(json_object_get(s, "id")), "text-generation") == 0)
            copy = json_deep_copy(s);
    }
    json_object_set_new(copy, "id", json_string("llm-settle"));
    json_object_set_new(copy, "settle", json_true());
    json_array_foreach(json_object_get(json_object_get(json_array_get(json_object_get(copy, "models"), 0),
                                                       "price"), "per"), k, r)
        if (strcmp(json_string_value(json_object_get(r, "param")), "output_tokens") == 0) {
            json_object_set_new(r, "measured", json_true());
            json_object_set_new(r, "max", json_integer(4096));
        }
    json_array_append_new(json_object_get(cat, "services"), copy);
    text = json_dumps(cat, JSON_COMPACT);
    kgt_catalog(&env, text);
    free(text);
    json_decref(cat);
    snprintf(svcs, sizeof svcs, "{\"llm-settle\":{\"policy\":\"payg\",\"models\":[\"small\"],"
             "\"wallet\":\"%s\"}}", w->wallet);
    kgt_key(&env, w->team, "paid", svcs, key);
    kgc_id_user(user);
    kgt_token(&env, w->team, key, user, 0, settle_tok);
}

#define NROWS 12

/* ---- issue 14: debit leased next to exact ------------------------------ */

/* "cmdstat_<cmd>:calls=N,usec=U,..." of INFO commandstats: usec (or calls). */
static long long cmdstat(redisContext *c, const char *cmd, int want_calls)
{
    redisReply *r = redisCommand(c, "INFO commandstats");
    char needle[64];
    long long calls = 0, usec = 0;
    const char *p;

    snprintf(needle, sizeof needle, "cmdstat_%s:", cmd);
    if (r != NULL && r->type == REDIS_REPLY_STRING && (p = strstr(r->str, needle)) != NULL)
        sscanf(p + strlen(needle), "calls=%lld,usec=%lld", &calls, &usec);
    if (r != NULL)
        freeReplyObject(r);
    return want_calls ? calls : usec;
}

/* Redis' own CPU (user + sys), in us, from INFO cpu. */
static double redis_cpu_us(redisContext *c)
{
    redisReply *r = redisCommand(c, "INFO cpu");
    double u = 0, s = 0;
    const char *p;

    if (r != NULL && r->type == REDIS_REPLY_STRING) {
        if ((p = strstr(r->str, "used_cpu_sys:")) != NULL)
            s = atof(p + 13);
        if ((p = strstr(r->str, "used_cpu_user:")) != NULL)
            u = atof(p + 14);
    }
    if (r != NULL)
        freeReplyObject(r);
    return (u + s) * 1e6;
}

/* Exact and leased kg_authorize of the same request on the same wallet,
 * in alternating slices; then each alone for the store's cost per request
 * (script time from INFO commandstats, Redis' whole CPU from INFO cpu). */
static void bench_leased(redisContext *c, kg_ctx *exact, const kgt_world *w, size_t n)
{
    char conf[700], err[256];
    kg_ctx *leased;
    kgt_req req;
    int64_t *le = calloc(n, sizeof(int64_t)), *ll = calloc(n, sizeof(int64_t));
    int64_t te = 0, tl = 0;
    size_t ne = 0, nl = 0, slice = n / 20;
    stat_row re, rl;

    snprintf(conf, sizeof conf, "debit leased\nlease_journal %s/bench-journal\n",
             getenv("BENCH_JOURNAL_DIR") ? getenv("BENCH_JOURNAL_DIR") : env.dir);
    leased = kg_open(kgt_write_conf(&env, "leased.conf", conf), err, sizeof err);
    if (leased == NULL || le == NULL || ll == NULL) {
        fprintf(stderr, "bench: leased kg_open: %s\n", err);
        kgt_fail();
    }
    kgt_request(&req, w->tok, "text-generation", "small", NULL, KGT_P("input_tokens", 1000),
                KGT_P("output_tokens", 200), NULL);
    for (int i = 0; i < 20000; i++) {           /* warm: cache, lease sized to the rate */
        kg_result res;
        kg_authorize(leased, &req.req, &res);
    }
    for (int round = 0; round < 20; round++) {
        for (int leasedp = 0; leasedp < 2; leasedp++) {
            kg_ctx *ctx = leasedp ? leased : exact;
            int64_t *lat = leasedp ? ll : le;
            size_t *cnt = leasedp ? &nl : &ne;
            int64_t t0 = now_ns();
            for (size_t i = 0; i < slice; i++) {
                kg_result res;
                int64_t a = now_ns();
                if (kg_authorize(ctx, &req.req, &res) != KG_OK) {
                    fprintf(stderr, "bench: leased: %s\n", kg_status_code(res.status));
                    kgt_fail();
                }
                lat[(*cnt)++] = now_ns() - a;
            }
            *(leasedp ? &tl : &te) += now_ns() - t0;
        }
    }
    re = summarize("exact: kg_authorize warm payg", le, ne, te);
    rl = summarize("leased: kg_authorize warm payg", ll, nl, tl);
    printf("\ndebit leased next to exact (issue 14), %zu ops each, 20 alternating slices\n", ne);
    printf("%-38s %10s %9s %9s\n", "case", "ops/s", "p50 us", "p99 us");
    printf("%-38s %10.0f %9.3f %9.3f\n", re.name, re.ops, re.p50_us, re.p99_us);
    printf("%-38s %10.0f %9.3f %9.3f\n", rl.name, rl.ops, rl.p50_us, rl.p99_us);

    /* Leased alone, back to back (no exact slice between to let the lease
     * and the journal age): where the time of a request goes. */
    {
        const char *an = getenv("BENCH_LEASED_ALONE_N");   /* e.g. a long run to profile */
        size_t m = an != NULL ? (size_t)strtoul(an, NULL, 10) : 10 * n, slow = 0;
        int64_t *lat = calloc(m, sizeof(int64_t)), slow_ns = 0, t0;
        stat_row rb;
        struct rusage ru0, ru1;
        if (lat == NULL)
            kgt_fail();
        getrusage(RUSAGE_SELF, &ru0);
        t0 = now_ns();
        for (size_t i = 0; i < m; i++) {
            kg_result res;
            int64_t a = now_ns();
            kg_authorize(leased, &req.req, &res);
            lat[i] = now_ns() - a;
            if (lat[i] > 10000) {
                slow++;
                slow_ns += lat[i];
            }
        }
        rb = summarize("leased alone", lat, m, now_ns() - t0);
        getrusage(RUSAGE_SELF, &ru1);
        printf("leased alone, %zu back to back: %.0f/s, p50 %.3f us, p99 %.3f us, p99.9 %.3f us, "
               "max %.1f us; %zu requests over 10 us took %.0f %% of the time (%.1f us each)\n",
               m, rb.ops, rb.p50_us, rb.p99_us, (double)lat[m * 999 / 1000] / 1000.0,
               (double)lat[m - 1] / 1000.0, slow, 100.0 * (double)slow_ns * rb.ops / 1e9 / (double)m,
               slow ? (double)slow_ns / (double)slow / 1000.0 : 0.0);
        printf("  meanwhile the process was switched out %ld times involuntarily, %ld voluntarily "
               "(a request that waits for the store sleeps in poll())\n",
               ru1.ru_nivcsw - ru0.ru_nivcsw, ru1.ru_nvcsw - ru0.ru_nvcsw);
        free(lat);
    }

    /* The store's cost per request, each mode alone, 5 n requests. */
    for (int leasedp = 0; leasedp < 2; leasedp++) {
        kg_ctx *ctx = leasedp ? leased : exact;
        const char *cmd = leasedp ? "eval" : "evalsha";
        long long u0 = cmdstat(c, cmd, 0), k0 = cmdstat(c, cmd, 1);
        double cpu0 = redis_cpu_us(c);
        size_t m = 5 * n;
        int64_t t0 = now_ns();
        for (size_t i = 0; i < m; i++) {
            kg_result res;
            kg_authorize(ctx, &req.req, &res);
        }
        if (leasedp) {                  /* the last entries: flushed before counting */
            kgt_sleep_ms(60);
            for (int i = 0; i < 3; i++) {
                kg_result res;
                kg_authorize(ctx, &req.req, &res);
                kgt_sleep_ms(60);
            }
            m += 3;
        }
        double secs = (double)(now_ns() - t0) / 1e9;
        long long du = cmdstat(c, cmd, 0) - u0, dk = cmdstat(c, cmd, 1) - k0;
        printf("%-7s %zu requests in %.2f s (%.0f/s): %lld %s calls, script time %.3f us/request, "
               "Redis CPU %.3f us/request\n", leasedp ? "leased:" : "exact:", m, secs,
               (double)m / secs, dk, cmd, (double)du / (double)m,
               (redis_cpu_us(c) - cpu0) / (double)m);
        if (leasedp && du > 0)
            printf("  the store's ceiling: one Redis core runs the flush scripts of at most "
                   "%.0f leased requests/s (1 / script time per request); beyond it the "
                   "journal fills and requests take the exact path\n", 1e6 * (double)m / (double)du);
    }
    printf("goal leased p50 <= 1 us: %.3f us %s; >= 1,000,000/s: %.0f %s\n", rl.p50_us,
           rl.p50_us <= 1.0 ? "MET" : "MISSED", rl.ops, rl.ops >= 1e6 ? "MET" : "MISSED");
    kg_close(leased);
    free(le);
    free(ll);
}

int main(int argc, char **argv)
{
    size_t n = argc > 1 ? (size_t)strtoul(argv[1], NULL, 10) : 20000;
    int64_t *lat;
    kgt_world w;
    kgt_req payg, payg_rid, freereq, bad, hold_req, settle_req, limited;
    kgt_world lw;
    kg_ctx *warm, *cold;
    char err[256], badtok[KGC_TOKEN_LEN + 1], sha[64];
    stat_row rows[NROWS];
    redisContext *c;
    redisReply *r;

    if (n < 1000)
        n = 1000;
    lat = calloc(n, sizeof *lat);
    kgt_setup(&env, NULL);
    signal(SIGPIPE, SIG_IGN);          /* as nginx and most servers run */
    kgt_catalog_quota(&env, "speech-to-text", 1000000000LL);
    kgt_world_make(&env, &w, 4000000000000000LL);
    settle_setup(&w);
    /* Issue 13: the same payg request on a key with both budgets and both
     * rate limits set, none of them binding. The daemon caps limits at
     * 1000/s and 10000/min; these are set above that (as only a test
     * fixture can) so that nothing is refused at the bench's pace: the
     * window logs then hold every request of the last second and minute
     * (up to n entries), more than any real key can, which makes this an
     * upper bound of the cost. */
    kgt_world_make(&env, &lw, 4000000000000000LL);
    kgt_key_field(&env, lw.team, lw.key, "budget_day_micros", json_integer(4000000000000000LL));
    kgt_key_field(&env, lw.team, lw.key, "budget_month_micros", json_integer(4000000000000000LL));
    kgt_key_field(&env, lw.team, lw.key, "rate_limits",
                  json_pack("{s:{s:I,s:I}}", "text-generation", "per_second", (json_int_t)100000000,
                            "per_minute", (json_int_t)1000000000));
    c = redisConnectUnix(env.sock);
    kgt_do(&env, "SET bench:small hello");
    r = redisCommand(c, "SCRIPT LOAD %s", "return 1");
    snprintf(sha, sizeof sha, "%s", r->str);
    freeReplyObject(r);

    warm = kg_open(env.conf, err, sizeof err);
    cold = kg_open(kgt_write_conf(&env, "cold.conf", "cache_ttl_ms 0\n"), err, sizeof err);
    if (warm == NULL || cold == NULL) {
        fprintf(stderr, "bench: kg_open: %s\n", err);
        kgt_fail();
    }
    kgt_request(&payg, w.tok, "text-generation", "small", NULL, KGT_P("input_tokens", 1000),
                KGT_P("output_tokens", 200), NULL);
    kgt_request(&limited, lw.tok, "text-generation", "small", NULL, KGT_P("input_tokens", 1000),
                KGT_P("output_tokens", 200), NULL);
    kgt_request(&freereq, w.tok, "speech-to-text", NULL, NULL, KGT_P("audio_seconds", 30), NULL);
    snprintf(badtok, sizeof badtok, "%s", w.tok);
    badtok[20] = badtok[20] == 'x' ? 'y' : 'x';
    kgt_request(&bad, badtok, "text-generation", "small", NULL, NULL);

    /* warm up: connections, scripts, subscription, token cache */
    for (int i = 0; i < 2000; i++) {
        kg_result res;
        kg_authorize(warm, &payg.req, &res);
        kg_authorize(warm, &freereq.req, &res);
        kg_authorize(cold, &payg.req, &res);
        kg_authorize(warm, &limited.req, &res);
        if (i % 100 == 0)
            kgt_sleep_ms(1);
    }

    if (getenv("BENCH_LEASED_ONLY") != NULL) {     /* issue 14's table alone */
        bench_leased(c, warm, &w, n);
        kg_close(warm);
        kg_close(cold);
        redisFree(c);
        kgt_teardown(&env);
        return 0;
    }
    /* The cases run round-robin in ROUNDS slices, so that load from
     * elsewhere on the machine falls on all of them alike. */
    enum { C_GET, C_EVAL, C_A, C_B, C_C, C_D, C_ARID, C_DEBIT, C_PAIR, C_LIM, NCASES };
    static const char *names[NCASES] = {
        "bare GET", "bare EVALSHA (return 1)", "(a) kg_authorize warm payg",
        "(b) kg_authorize cold payg", "(c) kg_authorize free service",
        "(d) kg_authorize malformed token", "(a') warm payg + request_id",
        "bare EVALSHA of the debit script", "(e) hold + kg_settle pair, warm",
        "(f) (a) + budgets + rate limits on"};
    const size_t ROUNDS = 20, slice = n / ROUNDS;
    int64_t *lats[NCASES], total[NCASES] = {0}, cpu[NCASES] = {0}, rus[NCASES] = {0};
    size_t cnt[NCASES] = {0};
    char rid[48], dsha[64], kw[256], kl[256], kr[256], kh[256], kx[256], ksd[256], ksm[256];
    char krl[256], kud[256], kuh[256], day[16], hour[16];
    time_t tnow = time(NULL);
    struct tm tm;
    const char *get_argv[] = {"GET", "bench:small"};
    const char *eval_argv[] = {"EVALSHA", sha, "0"};

    /* the debit script as the library sends it, straight from hiredis */
    r = redisCommand(c, "SCRIPT LOAD %s", kg_script_text[KG_SCRIPT_DEBIT]);
    snprintf(dsha, sizeof dsha, "%s", r->str);
    freeReplyObject(r);
    snprintf(kw, sizeof kw, KGT_PREFIX "{t:%s}:wallet:%s", w.team, w.wallet);
    snprintf(kl, sizeof kl, KGT_PREFIX "{t:%s}:ledger:%s", w.team, w.wallet);
    snprintf(kr, sizeof kr, KGT_PREFIX "{t:%s}:req:%s:", w.team, w.key);
    snprintf(kh, sizeof kh, KGT_PREFIX "{t:%s}:holds:%s", w.team, w.wallet);
    snprintf(kx, sizeof kx, KGT_PREFIX "{t:%s}:holdexp:%s", w.team, w.wallet);
    kgt_today(day);
    snprintf(ksd, sizeof ksd, KGT_PREFIX "{t:%s}:spend:%s:d:%s", w.team, w.key, day);
    snprintf(ksm, sizeof ksm, KGT_PREFIX "{t:%s}:spend:%s:m:%.6s", w.team, w.key, day);
    snprintf(krl, sizeof krl, KGT_PREFIX "{t:%s}:rate:%s:text-generation", w.team, w.key);
    gmtime_r(&tnow, &tm);
    strftime(hour, sizeof hour, "%Y%m%d%H", &tm);
    snprintf(kud, sizeof kud, KGT_PREFIX "{t:%s}:usage:d:%s", w.team, day);
    snprintf(kuh, sizeof kuh, KGT_PREFIX "{t:%s}:usage:h:%s", w.team, hour);
    const char *debit_argv[] = {"EVALSHA", dsha, "10", kw, kl, kr, kh, kx, ksd, ksm, krl, kud, kuh,
                                "270", w.key, w.user, "text-generation", "small", "", w.wallet,
                                "", "600000", "0", "0", "0", "0", day, "000000",
                                "input_tokens", "1000", "output_tokens", "200"};

    kgt_request(&payg_rid, w.tok, "text-generation", "small", rid, KGT_P("input_tokens", 1000),
                KGT_P("output_tokens", 200), NULL);
    kgt_request(&hold_req, settle_tok, "llm-settle", "small", rid, KGT_P("input_tokens", 1000), NULL);
    kgt_request(&settle_req, settle_tok, "llm-settle", "small", rid, KGT_P("input_tokens", 1000),
                KGT_P("output_tokens", 200), NULL);
    for (int k = 0; k < NCASES; k++)
        lats[k] = calloc(n, sizeof(int64_t));
    for (size_t round = 0; round < ROUNDS; round++) {
        for (int k = 0; k < NCASES; k++) {
            long long r0 = redis_usec(c);
            int64_t t0 = now_ns(), c0 = cpu_ns();
            for (size_t i = 0; i < slice; i++) {
                kg_result res;
                kg_status st = KG_OK, want = KG_OK;
                redisReply *rr = NULL;
                int64_t a = now_ns();
                switch (k) {
                case C_GET:   rr = redisCommandArgv(c, 2, get_argv, NULL); break;
                case C_EVAL:  rr = redisCommandArgv(c, 3, eval_argv, NULL); break;
                case C_DEBIT: rr = redisCommandArgv(c, (int)(sizeof debit_argv / sizeof *debit_argv), debit_argv, NULL); break;
                case C_PAIR:
                    snprintf(rid, sizeof rid, "pair-%zu-%zu", round, i);
                    a = now_ns();
                    st = kg_authorize(warm, &hold_req.req, &res);
                    if (st == KG_OK)
                        st = kg_settle(warm, &settle_req.req, &res, NULL, 0);
                    if (st == KG_OK && res.cost_micros != 270)
                        st = KG_BACKEND_ERROR;
                    break;
                case C_A:     st = kg_authorize(warm, &payg.req, &res); break;
                case C_LIM:   st = kg_authorize(warm, &limited.req, &res); break;
                case C_B:     st = kg_authorize(cold, &payg.req, &res); break;
                case C_C:     st = kg_authorize(warm, &freereq.req, &res); break;
                case C_ARID:
                    snprintf(rid, sizeof rid, "bench-%zu-%zu", round, i);
                    a = now_ns();
                    st = kg_authorize(warm, &payg_rid.req, &res);
                    break;
                case C_D:
                    /* sub-microsecond: time 100 calls, count their mean */
                    for (int j = 0; j < 100; j++)
                        st = kg_authorize(warm, &bad.req, &res);
                    want = KG_TOKEN_MALFORMED;
                    break;
                }
                int64_t d = now_ns() - a;
                if (k == C_D)
                    d /= 100;
                lats[k][cnt[k]++] = d;
                if (rr != NULL) {
                    if (rr->type == REDIS_REPLY_ERROR) {
                        fprintf(stderr, "bench: %s: %s\n", names[k], rr->str);
                        kgt_fail();
                    }
                    freeReplyObject(rr);
                } else if (k != C_GET && k != C_EVAL && k != C_DEBIT && st != want) {
                    fprintf(stderr, "bench: %s: %s\n", names[k], kg_status_code(st));
                    kgt_fail();
                }
            }
            total[k] += now_ns() - t0;
            cpu[k] += cpu_ns() - c0;
            rus[k] += redis_usec(c) - r0;
        }
    }
    for (int k = 0; k < NCASES; k++) {
        rows[k] = summarize(names[k], lats[k], cnt[k], total[k]);
        rows[k].cpu_us = (double)cpu[k] / 1000.0 / (double)cnt[k];
        rows[k].redis_us = (double)rus[k] / (double)cnt[k];
        if (k == C_D) {
            rows[k].ops *= 100;
            rows[k].cpu_us /= 100;
            rows[k].redis_us /= 100;
        }
        free(lats[k]);
    }
    /* A host that does not ignore SIGPIPE: the library guards each write.
     * The library looks at the disposition once a second, so this pair is
     * measured back to back rather than interleaved. */
    rows[NCASES] = bench_kg("(a) again, SIGPIPE ignored", warm, &payg.req, KG_OK, n / 2, lat);
    signal(SIGPIPE, SIG_DFL);
    kgt_sleep_ms(1100);
    rows[NCASES + 1] = bench_kg("(a'') warm payg, SIGPIPE not ignored", warm, &payg.req, KG_OK, n / 2, lat);

    printf("libkeygate benchmark: %zu ops per case in 20 interleaved slices, one redis-server\n"
           "on a Unix socket, blocking kg_authorize, one context, one thread\n", n);
    printf("%-38s %10s %9s %9s %10s %9s %9s\n", "case", "ops/s", "p50 us", "p99 us", "p50/EVALSHA",
           "cpu us/op", "redis us");
    for (int i = 0; i < NROWS; i++)
        print_row(&rows[i], rows[1].p50_us);
    printf("reserve+settle pair p50 / one debit (a') p50: %.2fx  (goal <= 2.2x: %s)\n",
           rows[C_PAIR].p50_us / rows[C_ARID].p50_us,
           rows[C_PAIR].p50_us <= 2.2 * rows[C_ARID].p50_us ? "MET" : "MISSED");
    printf("budgets + rate limits on (f) p50 / off (a) p50: %.2fx  (goal <= 1.1x: %s)\n",
           rows[C_LIM].p50_us / rows[C_A].p50_us,
           rows[C_LIM].p50_us <= 1.1 * rows[C_A].p50_us ? "MET" : "MISSED");
    printf("goal (a) p50 <= 1.3x bare EVALSHA: %.2fx  %s\n", rows[2].p50_us / rows[1].p50_us,
           rows[2].p50_us <= 1.3 * rows[1].p50_us ? "MET" : "MISSED");
    printf("issue 11: bare EVALSHA p50 %.2f us p99 %.2f us | warm (a) p50 %.2f us (%.2fx) "
           "p99 %.2f us (%.2fx) | cold (b) p50 %.2f us (%.2fx) p99 %.2f us (%.2fx)\n",
           rows[1].p50_us, rows[1].p99_us, rows[2].p50_us, rows[2].p50_us / rows[1].p50_us,
           rows[2].p99_us, rows[2].p99_us / rows[1].p99_us, rows[3].p50_us,
           rows[3].p50_us / rows[1].p50_us, rows[3].p99_us, rows[3].p99_us / rows[1].p99_us);
    printf("goal (b) cold p50 <= 1.3x bare EVALSHA: %.2fx  %s; against the bare EVALSHA of the "
           "debit script (the same round trip and money work): cold %.2fx, warm %.2fx; "
           "cold / warm p50 %.2fx\n", rows[3].p50_us / rows[1].p50_us,
           rows[3].p50_us <= 1.3 * rows[1].p50_us ? "MET" : "MISSED",
           rows[3].p50_us / rows[C_DEBIT].p50_us, rows[2].p50_us / rows[C_DEBIT].p50_us,
           rows[3].p50_us / rows[2].p50_us);
    printf("goal (d) under 1 us:                %.3f us  %s\n", rows[5].p50_us,
           rows[5].p99_us < 1.0 ? "MET (p99 too)" : rows[5].p50_us < 1.0 ? "MET (p50)" : "MISSED");

    signal(SIGPIPE, SIG_IGN);
    bench_leased(c, warm, &w, n);

    kg_close(warm);
    kg_close(cold);
    redisFree(c);
    free(lat);
    kgt_teardown(&env);
    return 0;
}

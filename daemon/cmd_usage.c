/*
 * cmd_usage.c - usage.summary (issue 12): requests, money charged and
 * param totals per UTC day or hour, for a team, optionally narrowed to a
 * key, wallet, service or model.
 *
 * The counts are made by the gateway's money scripts (module/kg_scripts.c
 * "Usage"), in one hash per team and bucket:
 *   P {t:T}:usage:d:<yyyymmdd>     kept 400 days
 *   P {t:T}:usage:h:<yyyymmddhh>   kept 14 days
 * field "<key> <wallet> <service> <model or -> <metric>", metric n
 * (requests), c (micros charged) or p.<param>. A call reads one HGETALL
 * per bucket, at most USAGE_MAX_DAYS / USAGE_MAX_HOURS of them (the
 * retention of each), in one round; the filters are applied here.
 */
#include "cmd.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define USAGE_MAX_DAYS  400
#define USAGE_MAX_HOURS 336
#define DAY_MS  86400000LL
#define HOUR_MS 3600000LL

typedef struct usage_args {
    long long from, to, width;    /* ms, inclusive; bucket width in ms */
    long long first, n;           /* first bucket index (from / width), count */
} usage_args;

static long long sat_add(long long a, long long b)
{
    long long s;
    return __builtin_add_overflow(a, b, &s) ? LLONG_MAX : s;
}

static int usage_parse(job *j, usage_args *u)
{
    const char *g = arg_str(j, "granularity");
    json_t *from = arg(j, "from"), *to = arg(j, "to");
    long long max;

    if (g == NULL || strcmp(g, "day") == 0) {
        u->width = DAY_MS;
        max = USAGE_MAX_DAYS;
    } else if (strcmp(g, "hour") == 0) {
        u->width = HOUR_MS;
        max = USAGE_MAX_HOURS;
    } else {
        job_fail(j, "bad_request", "'granularity' must be \"day\" or \"hour\"");
        return -1;
    }
    /* Defaults: up to now, the last 30 days or 24 hours. */
    u->to = json_is_integer(to) ? json_integer_value(to) : now_ms();
    u->from = json_is_integer(from) ? json_integer_value(from)
                                    : (u->to / u->width - (u->width == DAY_MS ? 29 : 23)) * u->width;
    if (u->from < 0 || u->to < 0 || u->from > u->to) {
        job_fail(j, "bad_request", "'from' and 'to' are milliseconds since the epoch, from <= to");
        return -1;
    }
    u->first = u->from / u->width;
    u->n = u->to / u->width - u->first + 1;
    if (u->n > max) {
        job_fail(j, "bad_request", "the range spans %lld buckets; at most %lld %ss in one call",
                 u->n, max, u->width == DAY_MS ? "day" : "hour");
        return -1;
    }
    return 0;
}

/* The bucket's key suffix: yyyymmdd or yyyymmddhh (UTC). */
static void bucket_tag(const usage_args *u, long long i, char *out, size_t len)
{
    time_t t = (time_t)((u->first + i) * (u->width / 1000));
    struct tm tm;

    gmtime_r(&t, &tm);
    strftime(out, len, u->width == DAY_MS ? "%Y%m%d" : "%Y%m%d%H", &tm);
}

/* Adds value v under metric m into totals object o
 * ({requests, cost_micros, params {}}). */
static void add_metric(json_t *o, const char *m, long long v)
{
    const char *name = strcmp(m, "n") == 0 ? "requests" : strcmp(m, "c") == 0 ? "cost_micros" : NULL;
    json_t *tgt = o;

    if (name == NULL) {
        if (strncmp(m, "p.", 2) != 0 || m[2] == '\0')
            return;                 /* not ours: fsck's business */
        tgt = json_object_get(o, "params");
        name = m + 2;
    }
    json_object_set_new(tgt, name, json_integer(sat_add(json_integer_value(json_object_get(tgt, name)), v)));
}

static json_t *totals_new(void)
{
    return json_pack("{s:I,s:I,s:{}}", "requests", (json_int_t)0, "cost_micros", (json_int_t)0, "params");
}

/* 1 if field f ("<key> <wallet> <service> <model> <metric>") passes the
 * filters; *metric then points into f. */
static int usage_match(job *j, const char *f, const char **metric)
{
    static const char *const dims[4] = {"key", "wallet", "service", "model"};
    const char *p = f;

    for (int d = 0; d < 4; d++) {
        const char *sp = strchr(p, ' '), *want = arg_str(j, dims[d]);
        if (sp == NULL)
            return 0;
        if (want != NULL && (strlen(want) != (size_t)(sp - p) || strncmp(want, p, (size_t)(sp - p)) != 0))
            return 0;
        p = sp + 1;
    }
    *metric = p;
    return 1;
}

job_step cmd_usage_summary(job *j)
{
    usage_args *u = job_scratch(j, sizeof *u);
    json_t *buckets, *total;
    char tag[16];

    if (j->stage == 0) {
        if (usage_parse(j, u) != 0)
            return J_FAIL;
        for (long long i = 0; i < u->n; i++) {
            bucket_tag(u, i, tag, sizeof tag);
            job_read(j, "HGETALL", rk(j, u->width == DAY_MS ? KGC_RK_USAGE_DAY : KGC_RK_USAGE_HOUR,
                                      j->team_id, tag), NULL);
        }
        return J_READ;
    }
    buckets = json_array();
    total = totals_new();
    for (long long i = 0; i < u->n; i++) {
        json_t *r = job_reply(j, (size_t)i), *b = totals_new();
        const char *metric;

        json_object_set_new(b, "start", json_integer((u->first + i) * u->width));
        for (size_t k = 0; k + 1 < json_array_size(r); k += 2) {
            const char *f = json_string_value(json_array_get(r, k));
            const char *v = json_string_value(json_array_get(r, k + 1));
            char *end;
            long long x;

            if (f == NULL || v == NULL || !usage_match(j, f, &metric))
                continue;
            x = strtoll(v, &end, 10);
            if (*end != '\0' || x < 0)
                continue;
            add_metric(b, metric, x);
            add_metric(total, metric, x);
        }
        json_array_append_new(buckets, b);
    }
    j->result = json_pack("{s:s,s:s,s:I,s:I,s:o,s:o}", "team_id", j->team_id, "granularity",
                          u->width == DAY_MS ? "day" : "hour", "from", (json_int_t)u->from,
                          "to", (json_int_t)u->to, "buckets", buckets, "total", total);
    return J_DONE;
}

/*
 * cli_key_limits.c - a key's expiry, budgets and rate limits on the
 * command line (docs/protocol.md, "Expiry, budgets, rate limits"):
 * the options of `key update` turned into key.update's arguments, and
 * their lines in `key get`.
 *
 *   --expires-at 2027-01-31T12:00:00Z | 2027-01-31 | none
 *   --budget-day MICROS | none          (0 also removes the cap)
 *   --budget-month MICROS | none
 *   --rate-limit SERVICE=PER_SECOND/PER_MINUTE  (repeatable; either side
 *                 may be empty: text-generation=5/ or text-generation=/100)
 *   --rate-limit none                   (remove every limit)
 *
 * The daemon checks every range; the CLI checks only the syntax, so that
 * a typo is a usage error (exit 2) and nothing is sent.
 */
#include "cli.h"
#include "cli_print.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* n decimal digits at *p, advancing it. 0, or -1 when they are not there. */
static int digits(const char **p, int n, int *out)
{
    int v = 0;

    for (int i = 0; i < n; i++) {
        if ((*p)[i] < '0' || (*p)[i] > '9')
            return -1;
        v = v * 10 + ((*p)[i] - '0');
    }
    *p += n;
    *out = v;
    return 0;
}

/* ISO 8601, UTC unless an offset says otherwise: YYYY-MM-DD (midnight
 * UTC), or YYYY-MM-DDTHH:MM[:SS] followed by Z or +HH:MM / -HH:MM ("T"
 * may be a space). A time without a zone is refused: the daemon's clock
 * is UTC and a guess would be off by hours. */
int cli_parse_iso8601_ms(const char *s, int64_t *out_ms)
{
    const char *p = s;
    int y, mo, d, h = 0, mi = 0, sec = 0, oh = 0, om = 0, sign = 0;
    struct tm tm, back;
    time_t t;

    if (digits(&p, 4, &y) < 0 || *p++ != '-' || digits(&p, 2, &mo) < 0 || *p++ != '-' ||
        digits(&p, 2, &d) < 0)
        return -1;
    if (*p != '\0') {
        if (*p != 'T' && *p != 't' && *p != ' ')
            return -1;
        p++;
        if (digits(&p, 2, &h) < 0 || *p++ != ':' || digits(&p, 2, &mi) < 0)
            return -1;
        if (*p == ':') {
            p++;
            if (digits(&p, 2, &sec) < 0)
                return -1;
        }
        if (*p == 'Z' || *p == 'z') {
            p++;
        } else if (*p == '+' || *p == '-') {
            sign = *p++ == '+' ? 1 : -1;
            if (digits(&p, 2, &oh) < 0 || *p++ != ':' || digits(&p, 2, &om) < 0 ||
                oh > 23 || om > 59)
                return -1;
        } else {
            return -1;
        }
        if (*p != '\0')
            return -1;
    }
    if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 59)
        return -1;
    memset(&tm, 0, sizeof tm);
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = sec;
    t = timegm(&tm);
    /* timegm normalises 2027-02-30 to March 2nd: refuse what moved. */
    if (t == (time_t)-1 || gmtime_r(&t, &back) == NULL || back.tm_mday != d || back.tm_mon != mo - 1)
        return -1;
    t -= (time_t)sign * (oh * 3600 + om * 60);
    *out_ms = (int64_t)t * 1000;
    return 0;
}

static int is_none(const char *v)
{
    return strcmp(v, "none") == 0;
}

/* A budget option: micros, or null for "none". */
static json_t *budget_value(const char *opt, const char *v, char *err, size_t errlen)
{
    int64_t n;

    if (is_none(v))
        return json_null();
    if (cli_parse_i64(v, &n) < 0 || n < 0) {
        snprintf(err, errlen, "%s wants integer micros >= 0 or 'none', not '%s'", opt, v);
        return NULL;
    }
    return json_integer(n);
}

/* "SERVICE=PER_SECOND/PER_MINUTE" into limits; either number may be left
 * out (not sent: the daemon reads it as no limit of that kind). */
static int rate_spec(json_t *limits, const char *spec, char *err, size_t errlen)
{
    const char *eq = strchr(spec, '='), *slash;
    char sid[256], num[32];
    json_t *one;
    int64_t v;

    slash = eq ? strchr(eq + 1, '/') : NULL;
    if (eq == NULL || eq == spec || slash == NULL || (size_t)(eq - spec) >= sizeof sid) {
        snprintf(err, errlen, "bad rate limit '%s': want SERVICE=PER_SECOND/PER_MINUTE "
                 "(e.g. text-generation=5/100, text-generation=/100) or 'none'", spec);
        return -1;
    }
    memcpy(sid, spec, (size_t)(eq - spec));
    sid[eq - spec] = '\0';
    if (json_object_get(limits, sid) != NULL) {
        snprintf(err, errlen, "rate limit of '%s' given twice", sid);
        return -1;
    }
    one = json_object();
    for (int part = 0; part < 2; part++) {
        const char *b = part == 0 ? eq + 1 : slash + 1;
        size_t n = part == 0 ? (size_t)(slash - b) : strlen(b);

        if (n == 0)
            continue;
        if (n >= sizeof num)
            goto bad;
        memcpy(num, b, n);
        num[n] = '\0';
        if (cli_parse_i64(num, &v) < 0 || v < 0)
            goto bad;
        json_object_set_new(one, part == 0 ? "per_second" : "per_minute", json_integer(v));
    }
    if (json_object_size(one) == 0)
        goto bad;
    json_object_set_new(limits, sid, one);
    return 0;
bad:
    json_decref(one);
    snprintf(err, errlen, "bad rate limit '%s': PER_SECOND and PER_MINUTE are integers >= 0, "
             "at least one given", spec);
    return -1;
}

int cli_limit_args(json_t *args, const char *expires, const char *bday, const char *bmonth,
                   const cli_strlist *rates, char *err, size_t errlen)
{
    json_t *v;

    if (expires) {
        int64_t ms;
        if (is_none(expires)) {
            v = json_null();
        } else if (cli_parse_iso8601_ms(expires, &ms) == 0) {
            v = json_integer(ms);
        } else {
            snprintf(err, errlen, "--expires-at wants an ISO 8601 UTC time "
                     "(2027-01-31T12:00:00Z, 2027-01-31) or 'none', not '%s'", expires);
            return -1;
        }
        json_object_set_new(args, "expires_at", v);
    }
    if (bday) {
        if ((v = budget_value("--budget-day", bday, err, errlen)) == NULL)
            return -1;
        json_object_set_new(args, "budget_day_micros", v);
    }
    if (bmonth) {
        if ((v = budget_value("--budget-month", bmonth, err, errlen)) == NULL)
            return -1;
        json_object_set_new(args, "budget_month_micros", v);
    }
    if (rates->n == 1 && is_none(rates->v[0])) {
        json_object_set_new(args, "rate_limits", json_null());
    } else if (rates->n > 0) {
        v = json_object();
        for (int i = 0; i < rates->n; i++) {
            if (is_none(rates->v[i])) {
                snprintf(err, errlen, "--rate-limit none removes every limit: give it alone");
                json_decref(v);
                return -1;
            }
            if (rate_spec(v, rates->v[i], err, errlen) < 0) {
                json_decref(v);
                return -1;
            }
        }
        json_object_set_new(args, "rate_limits", v);
    }
    return 0;
}

void cli_print_limits(cli_ctx *ctx, json_t *k)
{
    json_t *exp = json_object_get(k, "expires_at"), *limits = json_object_get(k, "rate_limits"), *l;
    const char *names[2] = {"budget/day", "budget/month"};
    const char *fields[2] = {"budget_day_micros", "budget_month_micros"};
    char tb[CLI_TIME_MAX], mb[CLI_MONEY_MAX];
    const char *sid;

    if (json_is_integer(exp)) {
        int expired = json_integer_value(exp) <= (json_int_t)time(NULL) * 1000;
        cli_field("expires", "%s%s", cli_time(tb, sizeof tb, exp), expired ? " (expired)" : "");
    } else {
        cli_field("expires", "never");
    }
    for (int i = 0; i < 2; i++) {
        json_t *b = json_object_get(k, fields[i]);
        if (json_is_integer(b))
            cli_field(names[i], "%s", cli_money_json(mb, sizeof mb, b, cli_currency(ctx)));
        else
            cli_field(names[i], "none");
    }
    if (json_object_size(limits) == 0) {
        cli_field("rate limits", "none");
        return;
    }
    cli_table *t = cli_table_new(3, "SERVICE", "PER_SECOND", "PER_MINUTE");
    cli_field("rate limits", "%zu", json_object_size(limits));
    json_object_foreach(limits, sid, l)
        cli_table_row(t, sid, cli_jstr(l, "per_second", "-"), cli_jstr(l, "per_minute", "-"));
    cli_table_print(t, 2);
    cli_table_free(t);
}

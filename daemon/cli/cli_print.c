/*
 * cli_print.c - human output helpers of the keygate CLI.
 */
#include "cli_print.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *cli_money(char *buf, size_t len, int64_t micros, const char *currency)
{
    /* Unsigned magnitude: -INT64_MIN does not fit an int64_t. */
    uint64_t mag = micros < 0 ? (uint64_t)0 - (uint64_t)micros : (uint64_t)micros;

    snprintf(buf, len, "%s%" PRIu64 ".%06" PRIu64 "%s%s (%" PRId64 " micros)",
             micros < 0 ? "-" : "", mag / 1000000, mag % 1000000,
             currency ? " " : "", currency ? currency : "", micros);
    return buf;
}

const char *cli_money_json(char *buf, size_t len, json_t *v, const char *currency)
{
    if (!json_is_integer(v)) {
        snprintf(buf, len, "-");
        return buf;
    }
    return cli_money(buf, len, (int64_t)json_integer_value(v), currency);
}

const char *cli_time(char *buf, size_t len, json_t *v)
{
    json_int_t ms;
    time_t secs;
    struct tm tm;

    if (!json_is_integer(v) || (ms = json_integer_value(v)) <= 0) {
        snprintf(buf, len, "-");
        return buf;
    }
    secs = (time_t)(ms / 1000);
    if (gmtime_r(&secs, &tm) == NULL || strftime(buf, len, "%Y-%m-%d %H:%M:%SZ", &tm) == 0)
        snprintf(buf, len, "%lld ms", (long long)ms);
    return buf;
}

const char *cli_jstr(json_t *obj, const char *key, const char *dflt)
{
    static char ring[4][32];
    static int next;
    json_t *v = json_object_get(obj, key);

    if (json_is_string(v))
        return json_string_value(v);
    if (json_is_integer(v)) {
        char *b = ring[next++ % 4];
        snprintf(b, sizeof ring[0], "%lld", (long long)json_integer_value(v));
        return b;
    }
    if (json_is_boolean(v))
        return json_is_true(v) ? "true" : "false";
    return dflt;
}

const char *cli_join(char *buf, size_t len, json_t *array, const char *sep, const char *dflt)
{
    size_t used = 0, i;
    json_t *v;

    buf[0] = '\0';
    json_array_foreach(array, i, v) {
        const char *s = json_is_string(v) ? json_string_value(v) : "?";
        int n = snprintf(buf + used, len - used, "%s%s", i ? sep : "", s);
        if (n < 0 || (size_t)n >= len - used) {
            /* Mark the cut rather than print a silently shortened list. */
            if (len > 4)
                memcpy(buf + len - 4, "...", 4);
            return buf;
        }
        used += (size_t)n;
    }
    if (used == 0)
        snprintf(buf, len, "%s", dflt);
    return buf;
}

void cli_field(const char *label, const char *fmt, ...)
{
    va_list ap;

    printf("%-13s", label);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
}

struct cli_table {
    size_t ncols, nrows, cap;     /* rows include the header */
    char **cells;                 /* nrows * ncols, owned */
};

static char *dup_or_dash(const char *s)
{
    char *d = strdup(s ? s : "-");
    if (d == NULL) {
        fputs("error: internal: out of memory\n", stderr);
        abort();
    }
    return d;
}

static void table_add(cli_table *t, va_list ap)
{
    if (t->nrows == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 16;
        char **nc = realloc(t->cells, cap * t->ncols * sizeof *nc);
        if (nc == NULL) {
            fputs("error: internal: out of memory\n", stderr);
            abort();
        }
        t->cells = nc;
        t->cap = cap;
    }
    for (size_t c = 0; c < t->ncols; c++)
        t->cells[t->nrows * t->ncols + c] = dup_or_dash(va_arg(ap, const char *));
    t->nrows++;
}

cli_table *cli_table_new(size_t ncols, ...)
{
    cli_table *t = calloc(1, sizeof *t);
    va_list ap;

    if (t == NULL) {
        fputs("error: internal: out of memory\n", stderr);
        abort();
    }
    t->ncols = ncols;
    va_start(ap, ncols);
    table_add(t, ap);
    va_end(ap);
    return t;
}

void cli_table_row(cli_table *t, ...)
{
    va_list ap;

    va_start(ap, t);
    table_add(t, ap);
    va_end(ap);
}

/* Display width: UTF-8 continuation bytes take no column. */
static size_t width(const char *s)
{
    size_t w = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            w++;
    return w;
}

void cli_table_print(cli_table *t, int indent)
{
    size_t *wd = calloc(t->ncols, sizeof *wd);

    if (wd == NULL)
        abort();
    for (size_t r = 0; r < t->nrows; r++)
        for (size_t c = 0; c < t->ncols; c++) {
            size_t w = width(t->cells[r * t->ncols + c]);
            if (w > wd[c])
                wd[c] = w;
        }
    for (size_t r = 0; r < t->nrows; r++) {
        printf("%*s", indent, "");
        for (size_t c = 0; c < t->ncols; c++) {
            const char *cell = t->cells[r * t->ncols + c];
            if (c + 1 == t->ncols) {
                fputs(cell, stdout);
            } else {
                fputs(cell, stdout);
                printf("%*s", (int)(wd[c] - width(cell) + 2), "");
            }
        }
        putchar('\n');
    }
    free(wd);
}

void cli_table_free(cli_table *t)
{
    if (t == NULL)
        return;
    for (size_t i = 0; i < t->nrows * t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    free(t);
}

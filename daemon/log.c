/*
 * log.c - stderr logging and the daemon's allocation wrappers.
 */
#include "log.h"
#include "proto.h"

#include <jansson.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int log_level = LOG_INFO_;
static int log_json;

void log_set_level(int level) { log_level = level; }
void log_set_json(int json) { log_json = json; }

/* One JSON line; the message as valid UTF-8 (a bad byte becomes U+FFFD). */
static void log_json_line(const char *ts, const char *level, const char *func, const char *msg)
{
    char clean[4096];
    json_t *o;
    char *text;

    proto_utf8_clean(msg, clean, sizeof clean);
    o = json_pack("{s:s,s:s,s:s,s:s}", "ts", ts, "level", level, "func", func, "msg", clean);
    text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    if (text != NULL)
        fprintf(stderr, "%s\n", text);
    else
        fprintf(stderr, "{\"level\":\"error\",\"msg\":\"a log line could not be encoded\"}\n");
    free(text);
    json_decref(o);
}

void log_at(int level, const char *func, const char *fmt, ...)
{
    static const char *names[] = {"error", "warn", "info", "debug"};
    char ts[32];
    struct timespec now;
    struct tm tm;
    va_list ap;

    if (level > log_level)
        return;
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + strlen(ts), sizeof ts - strlen(ts), ".%03ldZ", now.tv_nsec / 1000000);
    if (log_json) {
        char msg[4096];

        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        log_json_line(ts, names[level], func, msg);
        return;
    }
    fprintf(stderr, "%s keygated %s %s: ", ts, names[level], func);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void oom(const char *what)
{
    fprintf(stderr, "keygated: out of memory (%s)\n", what);
    abort();
}

void *xmalloc(unsigned long n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL)
        oom("malloc");
    return p;
}

void *xcalloc(unsigned long n, unsigned long size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (p == NULL)
        oom("calloc");
    return p;
}

char *xstrdup(const char *s)
{
    char *p = strdup(s);
    if (p == NULL)
        oom("strdup");
    return p;
}

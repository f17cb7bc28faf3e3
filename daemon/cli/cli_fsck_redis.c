/*
 * cli_fsck_redis.c - how `keygate fsck` reads Redis: blocking hiredis
 * calls (one at a time, or pipelined), watched reads of an object's keys,
 * and the re-run of an object's check until nothing it read changed
 * meanwhile (WATCH, then an empty MULTI/EXEC: see cli_cmd_fsck.c).
 *
 * The first failure of the connection is kept in f->broken_why; from then
 * on every call returns at once.
 */
#include "cli_fsck.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "kgc_keys.h"

#define FSCK_RETRIES        20       /* re-runs of an object's check on concurrent change */

static void fsck_broken(fsck *f)
{
    if (!f->broken)
        snprintf(f->broken_why, sizeof f->broken_why, "%s",
                 f->rc->errstr[0] ? f->rc->errstr : "connection lost");
    f->broken = 1;
}

/* One command; NULL (and f->broken set) when the connection failed. */
redisReply *fsck_rcmd(fsck *f, int argc, const char **argv, const size_t *lens)
{
    redisReply *r;

    if (f->broken)
        return NULL;
    r = redisCommandArgv(f->rc, argc, argv, lens);
    if (r == NULL)
        fsck_broken(f);
    return r;
}

redisReply *fsck_rcmd2(fsck *f, const char *verb, const char *key)
{
    const char *argv[2] = {verb, key};
    return fsck_rcmd(f, 2, argv, NULL);
}

/* Queues argc/argv (pipelined); the reply is read by rget. */
void fsck_rpush(fsck *f, int argc, const char **argv, const size_t *lens)
{
    if (!f->broken && redisAppendCommandArgv(f->rc, argc, argv, lens) != REDIS_OK)
        fsck_broken(f);
}

redisReply *fsck_rget(fsck *f)
{
    void *r = NULL;

    if (f->broken)
        return NULL;
    if (redisGetReply(f->rc, &r) != REDIS_OK || r == NULL) {
        fsck_broken(f);
        return NULL;
    }
    return r;
}

/* For each of keys[0..n): WATCH it, then `verb key [extra]`; returns the
 * n replies of the verbs (malloc'ed array, free with free_replies), or
 * NULL when the connection broke. */
redisReply **fsck_wread(fsck *f, size_t n, char **keys, const char *verb, const char *extra)
{
    redisReply **out;

    if (f->broken)
        return NULL;
    out = calloc(n ? n : 1, sizeof *out);
    if (out == NULL) {
        fputs("error: internal: out of memory\n", stderr);
        abort();
    }
    for (size_t i = 0; i < n; i++) {
        const char *w[2] = {"WATCH", keys[i]};
        const char *c[3] = {verb, keys[i], extra};
        fsck_rpush(f, 2, w, NULL);
        fsck_rpush(f, extra ? 3 : 2, c, NULL);
    }
    for (size_t i = 0; i < n; i++) {
        redisReply *w = fsck_rget(f);
        if (w)
            freeReplyObject(w);
        out[i] = fsck_rget(f);
    }
    if (f->broken) {
        for (size_t i = 0; i < n; i++)
            if (out[i])
                freeReplyObject(out[i]);
        free(out);
        return NULL;
    }
    return out;
}

void fsck_free_replies(redisReply **r, size_t n)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        if (r[i] != NULL)
            freeReplyObject(r[i]);
    free(r);
}

redisReply *fsck_wread1(fsck *f, const char *key, const char *verb, const char *extra)
{
    char *k = (char *)key;        /* wread only reads it */
    redisReply **r = fsck_wread(f, 1, &k, verb, extra), *one;

    if (r == NULL)
        return NULL;
    one = r[0];
    free(r);
    return one;
}

/* After the reads of one object: 1 if no watched key changed since it was
 * watched (the view was consistent), 0 if one did (check again), -1 if the
 * connection broke. Writes nothing: the transaction holds only a PING. */
int fsck_watch_commit(fsck *f)
{
    const char *m[1] = {"MULTI"}, *p[1] = {"PING"}, *e[1] = {"EXEC"};
    redisReply *r;
    int ok;

    fsck_rpush(f, 1, m, NULL);
    fsck_rpush(f, 1, p, NULL);
    fsck_rpush(f, 1, e, NULL);
    for (int i = 0; i < 2; i++)
        if ((r = fsck_rget(f)) != NULL)
            freeReplyObject(r);
    if ((r = fsck_rget(f)) == NULL)
        return -1;
    ok = r->type == REDIS_REPLY_ARRAY;
    freeReplyObject(r);
    return ok;
}

static void unwatch(fsck *f)
{
    const char *u[1] = {"UNWATCH"};
    redisReply *r = fsck_rcmd(f, 1, u, NULL);
    if (r)
        freeReplyObject(r);
}

/* Runs check(f, a, b) until its view is consistent; then its problems are
 * published. A check returns what watch_commit returned. */
void fsck_run_check(fsck *f, fsck_check check, const char *a, const char *b)
{
    for (int i = 0; i < FSCK_RETRIES && !f->broken; i++) {
        int r;
        json_array_clear(f->pending);
        r = check(f, a, b);
        if (r != 0)
            break;
        f->n.retries++;
        unwatch(f);
    }
    if (f->broken) {
        json_array_clear(f->pending);
        return;
    }
    fsck_flush(f);
}

/* --- key names and replies --------------------------------------------------- */

const char *fsck_rk(const fsck *f, char *buf, const char *fmt, ...)
{
    va_list ap;
    int p = snprintf(buf, KGC_RKEY_MAX, "%s", f->prefix);

    va_start(ap, fmt);
    vsnprintf(buf + p, KGC_RKEY_MAX - (size_t)p, fmt, ap);
    va_end(ap);
    return buf;
}

/* A JSON document from a string reply, or NULL. */
json_t *fsck_reply_json(const redisReply *r)
{
    if (r == NULL || r->type != REDIS_REPLY_STRING)
        return NULL;
    return json_loadb(r->str, r->len, 0, NULL);
}

int fsck_is_str(const redisReply *r)
{
    return r != NULL && r->type == REDIS_REPLY_STRING;
}

/* The field of an HGETALL reply, or NULL. */
const char *fsck_hfield(const redisReply *r, const char *name)
{
    if (r == NULL || r->type != REDIS_REPLY_ARRAY)
        return NULL;
    for (size_t i = 0; i + 1 < r->elements; i += 2)
        if (r->element[i]->type == REDIS_REPLY_STRING && strcmp(r->element[i]->str, name) == 0 &&
            r->element[i + 1]->type == REDIS_REPLY_STRING)
            return r->element[i + 1]->str;
    return NULL;
}

redisContext *fsck_connect(const kgc_config *cfg, int timeout_ms)
{
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    redisContext *rc;

    if (cfg->redis_unix[0])
        rc = redisConnectUnixWithTimeout(cfg->redis_unix, tv);
    else
        rc = redisConnectWithTimeout(cfg->redis_host, cfg->redis_port, tv);
    if (rc != NULL && rc->err == 0)
        redisSetTimeout(rc, tv);
    return rc;
}

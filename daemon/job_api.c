/*
 * job_api.c - what a command's handler calls (cmd.h): reads and writes for
 * the next round, claims, scratch memory, work offloaded to a thread,
 * replies, arguments.
 */
#include "job_int.h"
#include "log.h"
#include "metrics.h"
#include "model.h"
#include "proto.h"
#include "kgc_cluster.h"
#include "kgc_token.h"
#include "xcommit.h"

#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- handler helpers --------------------------------------------------- */

static json_t *vcmd(const char *cmd, va_list ap)
{
    json_t *c = json_array();
    const char *s;

    json_array_append_new(c, json_string(cmd));
    while ((s = va_arg(ap, const char *)) != NULL)
        json_array_append_new(c, json_stringn_nocheck(s, strlen(s)));
    return c;
}

void job_read_cmd(job *j, json_t *cmd)
{
    job_note_read(j, cmd);
    json_array_append_new(j->rq, cmd);
}

void job_read(job *j, const char *cmd, ...)
{
    va_list ap;
    json_t *c;

    va_start(ap, cmd);
    c = vcmd(cmd, ap);
    va_end(ap);
    job_read_cmd(j, c);
}

void job_write(job *j, const char *cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    json_array_append_new(j->wq, vcmd(cmd, ap));
    va_end(ap);
}

void job_write_cmd(job *j, json_t *cmd)
{
    json_array_append_new(j->wq, cmd);
}

void job_write_json(job *j, const char *key, json_t *doc)
{
    char *text = json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS);
    if (text == NULL)
        oom("json_dumps");
    job_write(j, "SET", key, text, NULL);
    free(text);
}

void job_publish(job *j, const char *fmt, ...)
{
    char msg[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_array_append_new(j->pub, json_string(msg));
}

void job_claim(job *j, const char *key, const char *value)
{
    json_object_set_new(j->claims, key, json_string(value));
}

typedef struct scratch_hdr { size_t size; } scratch_hdr;

void *job_scratch(job *j, size_t size)
{
    if (j->scratch == NULL) {
        scratch_hdr *h = xcalloc(1, sizeof *h + size);
        h->size = size;
        j->scratch = h;
    }
    return (scratch_hdr *)j->scratch + 1;
}

void job_scratch_free(job *j)
{
    scratch_hdr *h = j->scratch;

    if (h != NULL) {
        sodium_memzero(h + 1, h->size);
        free(h);
        j->scratch = NULL;
    }
}

typedef struct offload { job *j; void (*work)(void *); void *arg; } offload;

static void offload_work(void *p)
{
    offload *o = p;
    o->work(o->arg);
}

static void offload_done(void *p)
{
    offload *o = p;
    job *j = o->j;

    free(o);
    j->stage++;
    json_array_clear(j->rr);
    job_advance(j, j->def->run(j));
}

job_step job_offload(job *j, void (*work)(void *arg), void *arg)
{
    offload *o = xmalloc(sizeof *o);

    o->j = j;
    o->work = work;
    o->arg = arg;
    if (worker_submit(j->app->wk, offload_work, offload_done, o) != 0) {
        free(o);
        return job_fail(j, "rate_limited", "too many password checks waiting: try again shortly");
    }
    return J_WAIT;
}

json_t *job_reply(job *j, size_t i)
{
    return json_array_get(j->rr, i);
}

json_t *job_reply_json(job *j, size_t i)
{
    json_t *r = job_reply(j, i);
    if (!json_is_string(r))
        return NULL;
    return json_loadb(json_string_value(r), json_string_length(r), 0, NULL);
}

const char *rk(job *j, const char *fmt, ...)
{
    static char buf[KGC_RKEY_MAX];
    va_list ap;
    int p = snprintf(buf, sizeof buf, "%s", j->app->cfg.key_prefix);

    va_start(ap, fmt);
    vsnprintf(buf + p, sizeof buf - (size_t)p, fmt, ap);
    va_end(ap);
    return buf;
}

json_t *arg(job *j, const char *name)
{
    return json_object_get(j->req, name);
}

const char *arg_str(job *j, const char *name)
{
    return json_string_value(json_object_get(j->req, name));
}

const char *job_type_name(arg_type t)
{
    switch (t) {
    case A_STR: return "a string";
    case A_INT: return "an integer";
    case A_BOOL: return "true or false";
    case A_STRS: return "an array of strings";
    case A_OBJ: return "an object";
    }
    return "?";
}

int job_type_ok(arg_type t, json_t *v)
{
    size_t i;
    json_t *e;

    switch (t) {
    case A_STR: return json_is_string(v);
    case A_INT: return json_is_integer(v);
    case A_BOOL: return json_is_boolean(v);
    case A_OBJ: return json_is_object(v);
    case A_STRS:
        if (!json_is_array(v))
            return 0;
        json_array_foreach(v, i, e)
            if (!json_is_string(e))
                return 0;
        return 1;
    }
    return 0;
}


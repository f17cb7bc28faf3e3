/*
 * job.c - runs one admin command: argument check, actor and team, the
 * role rule of the command's row, then the handler's stages against the
 * store, then the answer and the audit entry.
 */
#include "cmd.h"
#include "log.h"
#include "proto.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define AUDIT_KEEP "9999"

static void job_advance(job *j, job_step step);
static void job_finish(job *j);
static void job_start(job *j);

/* Lets the next mutating command run. Called once the job's writes are on
 * the connection (or it ends without writing). */
static void job_release(job *j)
{
    app *a = j->app;

    if (!j->def->mutates || j->released)
        return;
    j->released = 1;
    a->queue_head = j->next;
    if (a->queue_head == NULL)
        a->queue_tail = NULL;
    if (a->queue_head != NULL)
        job_start(a->queue_head);
}

long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int role_is_admin(const char *role)
{
    return role != NULL && (strcmp(role, "owner") == 0 || strcmp(role, "admin") == 0);
}

job_step job_fail(job *j, const char *code, const char *fmt, ...)
{
    va_list ap;
    j->code = code;
    va_start(ap, fmt);
    vsnprintf(j->msg, sizeof j->msg, fmt, ap);
    va_end(ap);
    return J_FAIL;
}

static json_t *vcmd(const char *cmd, va_list ap)
{
    json_t *c = json_array();
    const char *s;

    json_array_append_new(c, json_string(cmd));
    while ((s = va_arg(ap, const char *)) != NULL)
        json_array_append_new(c, json_stringn_nocheck(s, strlen(s)));
    return c;
}

void job_read(job *j, const char *cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    json_array_append_new(j->rq, vcmd(cmd, ap));
    va_end(ap);
}

void job_write(job *j, const char *cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    json_array_append_new(j->wq, vcmd(cmd, ap));
    va_end(ap);
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

static const char *type_name(arg_type t)
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

static int type_ok(arg_type t, json_t *v)
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

/* --- store plumbing ---------------------------------------------------- */

static void on_reads(void *arg, int ok, json_t *replies)
{
    job *j = arg;

    if (!ok) {
        job_fail(j, "unavailable", "the store is unreachable; nothing was changed");
        job_finish(j);
        return;
    }
    json_decref(j->rr);
    j->rr = replies;
    if (j->stage == 0) {
        /* The engine's reads lead round 1: actor, then team. */
        size_t k = 0;
        if (j->def->role != NEED_NOBODY) {
            json_t *u = json_array_get(replies, k++);
            if (json_is_string(u))
                j->actor = json_loadb(json_string_value(u), json_string_length(u), 0, NULL);
            if (j->actor == NULL) {
                job_fail(j, "unauthenticated", "unknown actor");
                job_finish(j);
                return;
            }
        }
        if (j->def->scope != SCOPE_NONE) {
            json_t *t = json_array_get(replies, k++);
            if (json_is_string(t))
                j->team = json_loadb(json_string_value(t), json_string_length(t), 0, NULL);
            if (j->team != NULL && j->actor_id != NULL)
                j->role = json_string_value(
                    json_object_get(json_object_get(j->team, "members"), j->actor_id));
            if (j->team == NULL || (j->def->role >= NEED_MEMBER && j->role == NULL)) {
                j->team_id[0] = '\0';   /* nothing to audit in a team we hide */
                job_fail(j, "not_found", "no such %s",
                         j->def->scope == SCOPE_TEAM ? "team"
                         : j->def->scope == SCOPE_KEY ? "key" : "wallet");
                job_finish(j);
                return;
            }
            if ((j->def->role == NEED_ADMIN && !role_is_admin(j->role)) ||
                (j->def->role == NEED_OWNER && strcmp(j->role, "owner") != 0)) {
                job_fail(j, "forbidden", "role '%s' may not %s", j->role, j->def->name);
                job_finish(j);
                return;
            }
        }
        /* Hand the handler only its own replies. */
        j->rr = json_array();
        for (size_t i = k; i < json_array_size(replies); i++)
            json_array_append(j->rr, json_array_get(replies, i));
        json_decref(replies);
    }
    j->stage++;
    job_advance(j, j->def->run(j));
}

static void on_writes(void *arg, int ok, json_t *replies)
{
    job *j = arg;

    if (!ok) {
        json_decref(j->result);
        j->result = NULL;
        job_fail(j, "unavailable", "the store is unreachable; the change may not have been made");
        job_finish(j);
        return;
    }
    for (size_t i = 0; i < json_array_size(replies); i++)
        if (store_is_error(json_array_get(replies, i))) {
            log_err("%s: redis refused a write: %s", j->def->name,
                    json_string_value(json_object_get(json_array_get(replies, i), "$err")));
            json_decref(replies);
            json_decref(j->result);
            j->result = NULL;
            job_fail(j, "internal", "the store refused a write");
            job_finish(j);
            return;
        }
    if (j->after_write) {
        j->after_write = 0;
        json_decref(j->rr);
        j->rr = replies;
        j->stage++;
        job_advance(j, j->def->run(j));
        return;
    }
    json_decref(replies);
    job_finish(j);
}

static json_t *audit_entry(job *j)
{
    return json_pack("{s:I,s:s?,s:I,s:I,s:s,s:s,s:s}", "at", (json_int_t)now_ms(),
                     "actor", j->actor_id, "peer_uid", (json_int_t)j->peer.uid,
                     "peer_pid", (json_int_t)j->peer.pid, "cmd", j->def->name,
                     "target", j->target, "outcome", j->code ? j->code : "ok");
}

static void append_audit(job *j, json_t *cmds)
{
    json_t *e = audit_entry(j);
    char *text = json_dumps(e, JSON_COMPACT);
    const char *key = rk(j, KGC_RK_AUDIT, j->team_id);

    json_array_append_new(cmds, json_pack("[s,s,s]", "LPUSH", key, text));
    json_array_append_new(cmds, json_pack("[s,s,s,s]", "LTRIM", key, "0", AUDIT_KEEP));
    free(text);
    json_decref(e);
}

static void job_advance(job *j, job_step step)
{
    switch (step) {
    case J_READ:
        if (json_array_size(j->rq) == 0) {     /* nothing to read: go on */
            j->stage++;
            json_decref(j->rr);
            j->rr = json_array();
            job_advance(j, j->def->run(j));
            return;
        }
        {
            json_t *q = j->rq;
            j->rq = json_array();
            if (store_exec(j->app->st, q, 0, on_reads, j) != 0) {
                json_decref(q);
                job_fail(j, "unavailable", "the store is unreachable; nothing was changed");
                job_finish(j);
                return;
            }
            json_decref(q);
        }
        return;
    case J_WRITE: {
        json_t *q = j->wq;
        size_t i;
        json_t *m;

        j->wq = json_array();
        json_array_foreach(j->pub, i, m)
            json_array_append_new(q, json_pack("[s,s,O]", "PUBLISH",
                                               rk(j, KGC_RK_CHANNEL), m));
        if (j->def->mutates && j->team_id[0])
            append_audit(j, q);
        if (store_exec(j->app->st, q, 1, on_writes, j) != 0) {
            json_decref(q);
            json_decref(j->result);
            j->result = NULL;
            job_fail(j, "unavailable", "the store is unreachable; nothing was changed");
            job_finish(j);
            return;
        }
        json_decref(q);
        job_release(j);
        return;
    }
    case J_DONE:
    case J_FAIL:
        job_finish(j);
        return;
    }
}

static void ignore_reply(void *arg, int ok, json_t *replies)
{
    (void)arg;
    (void)ok;
    json_decref(replies);
}

static void job_free(job *j)
{
    json_decref(j->req);
    json_decref(j->actor);
    json_decref(j->team);
    json_decref(j->rq);
    json_decref(j->rr);
    json_decref(j->wq);
    json_decref(j->pub);
    json_decref(j->result);
    free(j);
}

static void job_start(job *j)
{
    j->stage = 0;
    if (j->def->role != NEED_NOBODY)
        job_read(j, "GET", rk(j, KGC_RK_USER, j->actor_id), NULL);
    if (j->def->scope != SCOPE_NONE)
        job_read(j, "GET", rk(j, KGC_RK_TEAM, j->team_id), NULL);
    j->fw_reads = json_array_size(j->rq);
    if (j->fw_reads == 0) {
        /* No engine reads: the handler's stage 0 is its first stage. */
        j->stage = 1;
        json_decref(j->rr);
        j->rr = json_array();
    }
    job_advance(j, j->def->run(j));
}

/* Answers, audits a refused mutation, and starts the next queued one. */
static void job_finish(job *j)
{
    app *a = j->app;
    json_t *id = json_object_get(j->req, "id");

    if (j->code != NULL) {
        if (j->def->mutates && j->team_id[0] && store_connected(a->st) &&
            strcmp(j->code, "unavailable") != 0) {
            json_t *cmds = json_array();
            append_audit(j, cmds);
            store_exec(a->st, cmds, 1, ignore_reply, NULL);
            json_decref(cmds);
        }
        reqslot_respond(j->rs, proto_error(id, j->code, "%s", j->msg), 0);
    } else {
        reqslot_respond(j->rs, proto_ok(id, j->result), j->def->secret);
        j->result = NULL;
    }
    if (j->def->mutates && !j->released) {
        /* Free first: job_release may start (and finish) the next job. */
        j->released = 1;
        a->queue_head = j->next;
        if (a->queue_head == NULL)
            a->queue_tail = NULL;
        job_free(j);
        if (a->queue_head != NULL)
            job_start(a->queue_head);
        return;
    }
    job_free(j);
}

void job_abort_all(app *a)
{
    while (a->queue_head != NULL) {
        job *j = a->queue_head;
        a->queue_head = j->next;
        reqslot_respond(j->rs, proto_error(json_object_get(j->req, "id"), "unavailable",
                                           "the daemon is stopping"), 0);
        job_free(j);
    }
    a->queue_tail = NULL;
}

/* --- dispatch ---------------------------------------------------------- */

static int scope_team(job *j, char *err, size_t errlen)
{
    const char *name = j->def->scope == SCOPE_TEAM ? "team"
                     : j->def->scope == SCOPE_KEY ? "key" : "wallet";
    const char *v = arg_str(j, name);

    if (v == NULL) {
        snprintf(err, errlen, "'%s' is required", name);
        return -1;
    }
    snprintf(j->target, sizeof j->target, "%s", v);
    if (j->def->scope == SCOPE_TEAM) {
        if (!kgc_id_plausible(v) || strncmp(v, "t_", 2) != 0)
            return 1;
        snprintf(j->team_id, sizeof j->team_id, "%s", v);
        return 0;
    }
    return kgc_id_team_of(v, j->def->scope == SCOPE_KEY ? 'k' : 'w', j->team_id) == 0 ? 0 : 1;
}

void job_dispatch(void *appv, reqslot *rs, const char *line, size_t len, const peer_info *peer)
{
    app *a = appv;
    json_error_t je;
    json_t *req = json_loadb(line, len, JSON_REJECT_DUPLICATES, &je), *id;
    const cmd_def *def;
    const char *cmd;
    job *j;
    char err[200];
    int r;

    if (req == NULL) {
        reqslot_respond(rs, proto_error(NULL, "bad_request", "malformed JSON: %s", je.text), 0);
        return;
    }
    id = json_object_get(req, "id");
    if (!json_is_object(req)) {
        reqslot_respond(rs, proto_error(NULL, "bad_request", "a request is a JSON object"), 0);
        json_decref(req);
        return;
    }
    cmd = json_string_value(json_object_get(req, "cmd"));
    if (cmd == NULL) {
        reqslot_respond(rs, proto_error(id, "bad_request", "'cmd' must be a string"), 0);
        json_decref(req);
        return;
    }
    def = cmd_find(cmd);
    if (def == NULL) {
        reqslot_respond(rs, proto_error(id, "unknown_command", "no command '%.64s'", cmd), 0);
        json_decref(req);
        return;
    }
    for (const arg_rule *r2 = def->args; r2->name != NULL; r2++) {
        json_t *v = json_object_get(req, r2->name);
        if ((v == NULL || json_is_null(v)) && !r2->required)
            continue;
        if (v == NULL) {
            reqslot_respond(rs, proto_error(id, "bad_request", "'%s' is required", r2->name), 0);
            json_decref(req);
            return;
        }
        if (!type_ok(r2->type, v)) {
            reqslot_respond(rs, proto_error(id, "bad_request", "'%s' must be %s", r2->name,
                                            type_name(r2->type)), 0);
            json_decref(req);
            return;
        }
    }
    j = xcalloc(1, sizeof *j);
    j->app = a;
    j->def = def;
    j->rs = rs;
    j->req = req;
    j->peer = *peer;
    j->rq = json_array();
    j->rr = json_array();
    j->wq = json_array();
    j->pub = json_array();
    if (def->role != NEED_NOBODY) {
        j->actor_id = json_string_value(json_object_get(req, "actor"));
        if (j->actor_id == NULL || !kgc_id_plausible(j->actor_id)) {
            j->actor_id = NULL;
            reqslot_respond(rs, proto_error(id, "unauthenticated", "'actor' must name a user"), 0);
            job_free(j);
            return;
        }
    }
    if (def->scope != SCOPE_NONE && (r = scope_team(j, err, sizeof err)) != 0) {
        if (r < 0)
            reqslot_respond(rs, proto_error(id, "bad_request", "%s", err), 0);
        else
            reqslot_respond(rs, proto_error(id, "not_found", "no such %s",
                                            def->scope == SCOPE_TEAM ? "team"
                                            : def->scope == SCOPE_KEY ? "key" : "wallet"), 0);
        job_free(j);
        return;
    }
    if (!def->mutates) {
        job_start(j);
        return;
    }
    if (a->queue_tail)
        a->queue_tail->next = j;
    else
        a->queue_head = j;
    a->queue_tail = j;
    if (a->queue_head == j)
        job_start(j);
}

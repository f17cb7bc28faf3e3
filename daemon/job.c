/*
 * job.c - runs one admin command: argument check, actor and team, the
 * role rule of the command's row, then the handler's stages against the
 * store, then the answer and the audit entry.
 *
 * Mutating commands run optimistically, up to MUT_CONCURRENCY at once (see
 * cmd.h): each keeps the set of Redis keys it read, and before it decides it
 * is checked against the keys written by transactions sent after its reads.
 *
 * Other keygated processes may commit to the same store (docs/operations.md,
 * "Several keygated on one store"): their writes are not in this process's
 * view. So every key a mutating command reads has a version, read in the
 * same pipeline just before the key itself (P v:<key>: the id of the last
 * commit that wrote the key, or none), and its commit script checks the
 * versions it was given before writing anything, and bumps the versions of
 * the keys it writes. A commit that finds a version moved writes nothing
 * and answers 2: the command runs again, as on an in-process conflict.
 */
#include "cmd.h"
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
#include <time.h>

#define AUDIT_REFUSED_KEEP "1000"  /* refusals kept (approximately): they never touch the accepted stream */
#define MUT_CONCURRENCY 32
#define TX_FENCE_TTL "60"          /* seconds a commit's fence is kept: well past LIMBO_WAIT_S */
#define LIMBO_WAIT_S 5             /* how long a lost reply is looked into */
/* A version lives this long after its key's last write. Versions are commit
 * ids, never reused, so one that expired reads as "none" and can only make
 * a commit fail (moved), never pass wrongly, unless a command ran longer
 * than the TTL between its read and its commit: VERSION_MAX_AGE_S refuses
 * that (a command lives seconds: store timeouts). */
#define VERSION_TTL "86400"
#define VERSION_MAX_AGE_S 3600.0
#define COMMIT_MOVED 2             /* commit_lua: a version moved, nothing written */

/* A command's writes, all at once, behind a fence. KEYS[1] = P tx:<txid>,
 * KEYS[2..1+nc] = keys whose value is checked (versions of the keys the
 * command read, claims it holds), then the nb version keys of what it
 * writes, then every key its commands write (declared, never read from
 * KEYS: on a cluster a script whose keys are all declared is refused
 * whole while its slot migrates, instead of failing half-way at an
 * undeclared key already moved). ARGV[1] = fence TTL, ARGV[2] = the new
 * version (the commit id), ARGV[3] = its TTL, ARGV[4] = nc, ARGV[5] = nb,
 * ARGV[6..5+nc] = the values expected ("" for none), then each command as
 * <argc> <arg>....
 * Returns 2 (COMMIT_MOVED) when a checked value moved: nothing written, the
 * fence not taken; {3, lock} when a key it writes is locked by a commit
 * across slots in progress (xcommit.h; only on a cluster); 0 when the fence was taken first (job_limbo_resolve gave
 * up on this commit, which then must not happen); 1 when applied. Like
 * MULTI/EXEC it runs whole or not at all; unlike it, the daemon can find
 * out which after losing the reply, so `unavailable` always means "nothing
 * was changed". */
static const char commit_lua[] =
    "local nc, nb = tonumber(ARGV[4]), tonumber(ARGV[5])\n"
    "if nc > 0 then\n"
    "  local cur = redis.call('MGET', unpack(KEYS, 2, 1 + nc))\n"
    "  for k = 1, nc do\n"
    "    if (cur[k] or '') ~= ARGV[5 + k] then return 2 end\n"
    "  end\n"
    "end\n"
    "for k = 2 + nc, 1 + nc + nb do\n"
    "  local v = redis.call('GET', KEYS[k])\n"
    "  if v and string.sub(v, 1, 2) == 'L ' then return {3, v} end\n"
    "end\n"
    "if not redis.call('SET', KEYS[1], 'done', 'NX', 'EX', ARGV[1]) then return 0 end\n"
    "local i = 6 + nc\n"
    "while i <= #ARGV do\n"
    "  local n = tonumber(ARGV[i])\n"
    "  redis.call(unpack(ARGV, i + 1, i + n))\n"
    "  i = i + n + 1\n"
    "end\n"
    "for k = 2 + nc, 1 + nc + nb do\n"
    "  redis.call('SET', KEYS[k], ARGV[2], 'EX', ARGV[3])\n"
    "end\n"
    "return 1\n";

/* Deletes a claim (KEYS[1]) only if it still holds ARGV[1]. */
static const char release_lua[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end\n"
    "return 0\n";

static void job_advance(job *j, job_step step);
static void job_locked(job *j, const char *lock);
static void limbo_later(job *j);
static void job_finish(job *j);
static void job_start(job *j);
static void job_rerun(job *j);
static void mut_pump(app *a);

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

/* --- conflict detection for mutating commands -------------------------- */

/* Calls fn(arg, key) for each Redis key that cmd (an array of strings)
 * names: the key commands the handlers use take one key first, but for
 * these. PUBLISH names a channel, no key. */
static void cmd_keys(json_t *cmd, void (*fn)(void *arg, const char *key), void *arg)
{
    const char *name = json_string_value(json_array_get(cmd, 0));
    size_t n = json_array_size(cmd);

    if (name == NULL || n < 2 || strcmp(name, "PUBLISH") == 0)
        return;
    if (strcmp(name, "EVAL") == 0 || strcmp(name, "EVALSHA") == 0) {
        long nk = strtol(json_string_value(json_array_get(cmd, 2)) ?: "0", NULL, 10);
        for (long k = 0; k < nk && 3 + (size_t)k < n; k++)
            fn(arg, json_string_value(json_array_get(cmd, 3 + (size_t)k)));
        return;
    }
    if (strcmp(name, "MGET") == 0 || strcmp(name, "DEL") == 0 || strcmp(name, "EXISTS") == 0 ||
        strcmp(name, "UNLINK") == 0) {
        for (size_t i = 1; i < n; i++)
            fn(arg, json_string_value(json_array_get(cmd, i)));
        return;
    }
    fn(arg, json_string_value(json_array_get(cmd, 1)));
}

/* The version key of a key, in the key's slot: prefix + "v:" + the key's
 * name without the prefix when it has a hash tag of its own (which stays
 * the first), else prefix + "v:{~n}" + the name, ~n the tag of the key's
 * slot (kgc_cluster_tag). */
static void version_key(const app *a, const char *key, char out[KGC_RKEY_MAX])
{
    size_t pl = strlen(a->cfg.key_prefix), len = strlen(key);
    const char *name = strncmp(key, a->cfg.key_prefix, pl) == 0 ? key + pl : key;

    if (kgc_cluster_has_tag(name, strlen(name)))
        kgc_rkey(out, a->cfg.key_prefix, "v:%s", name);
    else
        kgc_rkey(out, a->cfg.key_prefix, "v:{%s}%s", kgc_cluster_tag(kgc_cluster_slot(key, len)),
                 name);
}

/* 1 if key is a user document: written once, by user.signup, and never
 * again (docs/redis-schema.md "Atomicity"), so a read of one needs no
 * version. On a cluster this keeps most commits in their team's slot: the
 * actor's document, read by every command, lives elsewhere. */
static int immutable_key(const app *a, const char *key)
{
    size_t pl = strlen(a->cfg.key_prefix);

    return strncmp(key, a->cfg.key_prefix, pl) == 0 && strncmp(key + pl, "user:", 5) == 0;
}

static void read_one(void *arg, const char *key)
{
    job *j = arg;

    if (key == NULL || json_object_get(j->readset, key) != NULL || immutable_key(j->app, key))
        return;
    json_object_set_new(j->readset, key, json_true());  /* version not read yet */
    json_array_append_new(j->vread, json_string(key));
}

/* Records the keys a read command touches; their versions are read with it. */
static void note_read(job *j, json_t *cmd)
{
    if (j->def->mutates)
        cmd_keys(cmd, read_one, j);
}

/* Forgets writes that every active command's reads already saw. */
static void prune_written(app *a)
{
    long long min = a->wseq;
    const char *key;
    json_t *v;
    void *tmp;

    for (job *j = a->active; j != NULL; j = j->anext)
        if (j->read_seq < min)
            min = j->read_seq;
    json_object_foreach_safe(a->written, tmp, key, v)
        if (json_integer_value(v) <= min)
            json_object_del(a->written, key);
}

static void written_one(void *arg, const char *key)
{
    app *a = arg;

    if (key != NULL)
        json_object_set_new(a->written, key, json_integer(a->wseq));
}

/* Marks the keys a transaction writes with a new sequence number. */
static void note_writes(app *a, json_t *cmds)
{
    size_t i;
    json_t *c;

    if (++a->wseq % 4096 == 0 && json_object_size(a->written) > 4096)
        prune_written(a);
    json_array_foreach(cmds, i, c)
        cmd_keys(c, written_one, a);
}

/* 1 if a transaction sent after j's first reads wrote a key j read. */
static int job_conflicts(job *j)
{
    const char *key;
    json_t *v;

    json_object_foreach(j->readset, key, v)
        if (json_integer_value(json_object_get(j->app->written, key)) > j->read_seq)
            return 1;
    return 0;
}

/* A mutating command has written or answered: it leaves the active set,
 * and another may start. */
static void job_decided(job *j)
{
    app *a = j->app;

    if (!j->def->mutates || j->decided)
        return;
    j->decided = 1;
    if (j->aprev)
        j->aprev->anext = j->anext;
    else
        a->active = j->anext;
    if (j->anext)
        j->anext->aprev = j->aprev;
    else
        a->active_tail = j->aprev;
    if (--a->mut_active == 0)
        json_object_clear(a->written);   /* nobody left to check against */
    /* The oldest one may have been waiting for its turn. */
    if (a->active != NULL && a->active->parked) {
        job *next = a->active;
        next->parked = 0;
        if (next->parked_rerun) {
            next->parked_rerun = 0;
            job_rerun(next);
            return;
        }
        job_advance(next, next->parked_step);
    }
    mut_pump(a);
}

/* Starts waiting mutations while there is room. */
static void mut_pump(app *a)
{
    while (a->mut_active < MUT_CONCURRENCY && a->queue_head != NULL) {
        job *j = a->queue_head;
        a->queue_head = j->next;
        if (a->queue_head == NULL)
            a->queue_tail = NULL;
        j->next = NULL;
        a->mut_active++;
        j->anext = NULL;
        j->aprev = a->active_tail;
        if (a->active_tail)
            a->active_tail->anext = j;
        else
            a->active = j;
        a->active_tail = j;
        job_start(j);
    }
}

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
    note_read(j, cmd);
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

static void scratch_free(job *j)
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

static const char *scope_noun(const job *j)
{
    return j->def->scope == SCOPE_TEAM ? "team" : j->def->scope == SCOPE_KEY ? "key" : "wallet";
}

/* The first error reply among a round's replies, at any depth (a script
 * or EXEC answers arrays that may hold one), or NULL. */
static const char *first_error(const json_t *replies)
{
    size_t i;
    json_t *r;
    const char *e;

    json_array_foreach(replies, i, r) {
        if (store_is_error(r))
            return json_string_value(json_object_get(r, "$err")) ?: "?";
        if (json_is_array(r) && (e = first_error(r)) != NULL)
            return e;
    }
    return NULL;
}

/* Errors a Redis answers while it cannot serve for a while (loading its
 * data, running a long script, failing over): the caller may retry. */
static int error_is_transient(const char *e)
{
    static const char *const kinds[] = {"LOADING", "BUSY", "MASTERDOWN", "CLUSTERDOWN",
                                        "TRYAGAIN", "READONLY", "NOREPLICAS"};

    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (strncmp(e, kinds[i], strlen(kinds[i])) == 0)
            return 1;
    return 0;
}

static void on_reads(void *arg, int ok, json_t *replies)
{
    job *j = arg;
    const char *e;

    if (!ok) {
        job_fail(j, "unavailable", "the store is unreachable; nothing was changed");
        job_finish(j);
        return;
    }
    if (!json_is_array(replies)) {
        json_decref(replies);
        job_fail(j, "internal", "the store answered something unexpected; nothing was changed");
        job_finish(j);
        return;
    }
    /* A read the store refused is not data: never decide on it. */
    if ((e = first_error(replies)) != NULL) {
        if (error_is_transient(e)) {
            job_fail(j, "unavailable", "the store cannot answer now; nothing was changed");
        } else {
            log_err("%s: redis refused a read: %.200s", j->def->name, e);
            job_fail(j, "internal", "the store refused a read; nothing was changed");
        }
        json_decref(replies);
        job_finish(j);
        return;
    }
    if (j->vsent != NULL) {
        /* Reply 0 is the versions of the keys first read in this round. */
        json_t *v = json_array_get(replies, 0);
        size_t i;
        json_t *k;

        json_array_foreach(j->vsent, i, k) {
            json_t *ver = json_array_get(v, i);
            if (json_is_string(ver) && strncmp(json_string_value(ver), "L ", 2) == 0) {
                /* Locked by a commit across slots: decide nothing on it.
                 * Not the oldest: it could not decide yet anyway, so it
                 * runs again once it is (the lock is likely gone then). */
                if (j != j->app->active && j->def->mutates && !j->decided) {
                    j->parked = 1;
                    j->parked_rerun = 1;
                } else {
                    job_locked(j, json_string_value(ver));
                }
                json_decref(replies);
                return;
            }
            json_object_set_new(j->readset, json_string_value(k),
                                json_is_string(ver) ? json_incref(ver) : json_null());
        }
        json_array_remove(replies, 0);
        json_decref(j->vsent);
        j->vsent = NULL;
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
                job_advance(j, job_fail(j, "unauthenticated", "unknown actor"));
                return;
            }
        }
        if (j->def->scope != SCOPE_NONE) {
            json_t *t = json_array_get(replies, k++);
            if (json_is_string(t))
                j->team = json_loadb(json_string_value(t), json_string_length(t), 0, NULL);
            if (j->def->role != NEED_NOBODY)
                members_loaded(j, json_array_get(replies, k++));
            if (j->team != NULL && j->actor_id != NULL)
                j->role = json_string_value(
                    json_object_get(json_object_get(j->team, "members"), j->actor_id));
            if (j->team == NULL || (j->def->role >= NEED_MEMBER && j->role == NULL)) {
                j->team_id[0] = '\0';   /* nothing to audit in a team we hide */
                job_advance(j, job_fail(j, "not_found", "no such %s", scope_noun(j)));
                return;
            }
            if ((j->def->role == NEED_ADMIN && !role_is_admin(j->role)) ||
                (j->def->role == NEED_OWNER && strcmp(j->role, "owner") != 0)) {
                job_advance(j, job_fail(j, "forbidden", "role '%s' may not %s", j->role,
                                        j->def->name));
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

static void limbo_add(job *j);
static void job_moved(job *j);

static void on_later(evutil_socket_t fd, short what, void *arg)
{
    job *j = arg;

    (void)fd;
    (void)what;
    if (j->decided)
        job_moved(j);
    else
        job_rerun(j);
}

static void on_local_done(void *arg)
{
    on_later(-1, 0, arg);
}

/* It met a key locked by a commit across slots (lock: the version's
 * value, may be NULL): nothing was decided on it. The commit is asked to
 * settle (a live one finishes by itself within milliseconds; one whose
 * daemon died is settled once XC_STALE_MS old), and the command runs again
 * shortly; when the commit is this daemon's own, the moment it ends. */
static void job_locked(job *j, const char *lock)
{
    char holder[48] = "";
    struct timeval tv = {0, 20 * 1000};

    if (lock != NULL && strncmp(lock, "L ", 2) != 0)
        snprintf(holder, sizeof holder, "%s", lock);     /* a txid already */
    else if (lock != NULL && !xc_lock_holder(lock, holder, sizeof holder))
        holder[0] = '\0';
    if (holder[0]) {
        if (xc_wait_local(j->app, holder, on_local_done, j))
            return;               /* ours: runs again the moment it ends */
        xc_settle(j->app, holder, 0, NULL, NULL);
    }
    if (j->later == NULL && (j->later = evtimer_new(j->app->base, on_later, j)) == NULL)
        oom("evtimer_new");
    /* The lock seen may be of a commit of ours that ended since the read
     * was answered: look again at once, then back off. */
    if (j->lock_tries++ < 2)
        tv.tv_usec = 1000;
    else if (j->reruns > 50)
        tv.tv_usec = 200 * 1000;
    evtimer_add(j->later, &tv);
}

static void on_writes(void *arg, int ok, json_t *replies);

/* The end of a commit across slots (xcommit.h), as on_writes sees one. */
static void on_xcommit(void *arg, int outcome, const char *holder)
{
    job *j = arg;

    if (j->app->written != NULL && j->xwrites != NULL) {
        /* Its writes landed at its apply, not when it was sent: commands
         * that read since then are checked against them again. */
        const char *key;
        json_t *v;
        ++j->app->wseq;
        json_object_foreach(j->xwrites, key, v)
            json_object_set_new(j->app->written, key, json_integer(j->app->wseq));
    }
    json_decref(j->xwrites);
    j->xwrites = NULL;

    switch (outcome) {
    case XC_APPLIED:
        on_writes(j, 1, json_pack("[i]", 1));
        return;
    case XC_MOVED:
        on_writes(j, 1, json_pack("[i]", COMMIT_MOVED));
        return;
    case XC_LOCKED:
        on_writes(j, 1, json_pack("[[i,s]]", 3, holder));
        return;
    case XC_LOST:
        on_writes(j, 0, NULL);      /* limbo: settled as its owner */
        return;
    default:
        /* Redis refused a step (a slot moving longer than the store's
         * retries): the commit was rolled back, nothing was changed. */
        on_writes(j, 1, json_pack("[i]", 0));
    }
}

static void on_writes(void *arg, int ok, json_t *replies)
{
    job *j = arg;
    int unacked = ok == STORE_UNACKED;

    if (!ok && j->txid[0]) {
        limbo_add(j);           /* did the commit happen? ask after reconnecting */
        return;
    }
    if (!ok) {
        json_decref(j->result);
        j->result = NULL;
        job_fail(j, "unavailable", "the store is unreachable; the change may not have been made");
        job_finish(j);
        return;
    }
    if (j->txid[0] && json_is_array(json_array_get(replies, 0))) {
        /* {3, lock}: a commit across slots holds a key it writes. */
        const char *v = json_string_value(json_array_get(json_array_get(replies, 0), 1));
        job_locked(j, v);
        json_decref(replies);
        return;
    }
    if (j->txid[0] && json_integer_value(json_array_get(replies, 0)) == COMMIT_MOVED) {
        /* Another keygated wrote something this command read. */
        json_decref(replies);
        job_moved(j);
        return;
    }
    if (j->txid[0] && json_integer_value(json_array_get(replies, 0)) != 1 &&
        !store_is_error(json_array_get(replies, 0))) {
        json_decref(replies);
        json_decref(j->result);
        j->result = NULL;
        job_fail(j, "unavailable", "the store was unreachable; nothing was changed");
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
    j->commits_done++;
    if (unacked) {
        /* Made on the primary, not confirmed by min_replicas_ack replicas
         * in time: a failover now could undo it. Not "nothing changed":
         * the caller is told to check or retry (docs/operations.md). */
        json_decref(replies);
        json_decref(j->result);
        j->result = NULL;
        j->not_durable = 1;
        job_fail(j, "unavailable", "the change was made but fewer than %d replicas confirmed it "
                 "within %d ms: it may not be durable (a failover could undo it); run the command "
                 "again to make sure", j->app->cfg.min_replicas_ack,
                 j->app->cfg.replica_ack_timeout_ms);
        job_finish(j);
        return;
    }
    if (j->after_write) {
        j->after_write = 0;
        j->more_commits = 0;      /* the handler says again if another follows */
        json_decref(j->rr);
        j->rr = replies;
        j->stage++;
        job_advance(j, j->def->run(j));
        return;
    }
    json_decref(replies);
    job_finish(j);
}

static json_t *audit_entry(job *j, long long at)
{
    char target[sizeof j->target];

    proto_utf8_clean(j->target, target, sizeof target);   /* cut from what the caller sent */
    return json_pack("{s:I,s:s?,s:I,s:I,s:s,s:s,s:s}", "at", (json_int_t)at,
                     "actor", j->actor_id, "peer_uid", (json_int_t)j->peer.uid,
                     "peer_pid", (json_int_t)j->peer.pid, "cmd", j->def->name,
                     "target", target, "outcome", j->code ? j->code : "ok");
}

/* Accepted changes go to the team's audit stream, trimmed by age only
 * (audit_retention_days): what other members send cannot evict them.
 * Refusals go to a second stream capped by count, so a flood of refused
 * commands only ever pushes out older refusals. */
static void append_audit(job *j, json_t *cmds)
{
    long long at = now_ms();
    json_t *e = audit_entry(j, at);
    char *text = e ? json_dumps(e, JSON_COMPACT) : NULL;
    char minid[32], seq[32];

    if (text == NULL)
        oom("json_dumps");
    /* Orders entries of the two streams that share a millisecond (model.c). */
    snprintf(seq, sizeof seq, "%lld", ++j->app->audit_seq);
    if (j->code == NULL) {
        long long keep = (long long)j->app->cfg.audit_retention_days * 86400000LL;
        snprintf(minid, sizeof minid, "%lld", at > keep ? at - keep : 0);
        json_array_append_new(cmds, json_pack("[s,s,s,s,s,s,s,s,s,s]", "XADD",
                                              rk(j, KGC_RK_AUDIT, j->team_id), "MINID", "~",
                                              minid, "*", "e", text, "n", seq));
    } else {
        json_array_append_new(cmds, json_pack("[s,s,s,s,s,s,s,s,s,s]", "XADD",
                                              rk(j, KGC_RK_AUDIT_REFUSED, j->team_id), "MAXLEN",
                                              "~", AUDIT_REFUSED_KEEP, "*", "e", text, "n", seq));
    }
    free(text);
    json_decref(e);
}

static void bump_one(void *arg, const char *key)
{
    json_t *set = arg;

    if (key != NULL)
        json_object_set_new(set, key, json_true());
}

/* The keys whose versions a commit bumps: every key its commands write but
 * streams appended to (audit: nobody decides on them). New object (set). */
static json_t *bumped_keys(json_t *q)
{
    json_t *set = json_object(), *c;
    size_t i;

    json_array_foreach(q, i, c)
        if (strcmp(json_string_value(json_array_get(c, 0)), "XADD") != 0)
            cmd_keys(c, bump_one, set);
    return set;
}

static void slot_of_key(void *arg, const char *key)
{
    long *slot = arg;
    long s;

    if (key == NULL || *slot == -2)
        return;
    s = (long)kgc_cluster_slot(key, strlen(key));
    *slot = *slot == -1 || *slot == s ? s : -2;
}

/* The one slot every key of a commit lies in (-2: several; -1: none). */
static long commit_slot(json_t *keys, json_t *q)
{
    long slot = -1;
    size_t i;
    json_t *c;

    json_array_foreach(keys, i, c)
        slot_of_key(&slot, json_string_value(json_array_get(c, 0)));
    json_array_foreach(q, i, c)
        cmd_keys(c, slot_of_key, &slot);
    return slot;
}

static void plan_writes_one(void *arg, const char *key)
{
    if (key != NULL)
        xc_plan_writes(arg, key);
}

/* On a cluster, a commit whose keys span slots: its plan (xcommit.h). */
static void commit_plan(job *j, json_t *keys, size_t nv, size_t ncl, json_t *q)
{
    xc_plan *p = xc_plan_new(j->app, j->txid);
    json_t *c, *bumpset = json_object();
    size_t i;

    /* keys: nv checked versions, ncl claims, then the bumped versions. */
    for (i = nv + ncl; i < json_array_size(keys); i++)
        json_object_set_new(bumpset, json_string_value(json_array_get(json_array_get(keys, i), 0)),
                            json_true());
    json_array_foreach(keys, i, c) {
        const char *k = json_string_value(json_array_get(c, 0));
        const char *want = json_string_value(json_array_get(c, 1));
        if (i < nv) {
            xc_plan_lock(p, k, json_object_get(bumpset, k) ? 'B' : 'c', want);
            json_object_del(bumpset, k);
        } else if (i < nv + ncl) {
            xc_plan_claim(p, k, want);
        } else if (json_object_get(bumpset, k) != NULL) {
            xc_plan_lock(p, k, 'b', "");
        }
    }
    json_array_foreach(q, i, c) {
        xc_plan_cmd(p, c);
        cmd_keys(c, plan_writes_one, p);
    }
    json_decref(bumpset);
    j->xplan = p;
}

/* Turns a command's writes into one fenced commit script (commit_lua) that
 * first checks the versions of what the command read (and the claims it
 * holds), and bumps the versions of what it writes; on a cluster, when
 * those keys span slots, into a plan of ordered steps instead (j->xplan,
 * returns NULL).
 * Writes that run a script of their own (EVAL cannot nest) stay a
 * MULTI/EXEC: those are idempotent by design and check their own
 * conditions in their script (wallet.credit's reference); the versions of
 * their keys are bumped in the same MULTI.
 * Steals q, returns the batch to send. */
static json_t *commit_wrap(job *j, json_t *q)
{
    json_t *eval, *c, *a, *bumps = bumped_keys(q), *v, *keys;
    size_t i, k, nv = 0, ncl;
    const char *key;
    void *tmp;
    long slot;
    char vk[KGC_RKEY_MAX], ver[24], n[24];

    j->txid[0] = '\0';
    j->xtx = 0;
    json_array_foreach(q, i, c)
        if (strcmp(json_string_value(json_array_get(c, 0)), "EVAL") == 0) {
            kgc_random_id("", 20, ver);
            json_object_foreach(bumps, key, v) {
                version_key(j->app, key, vk);
                json_array_append_new(q, json_pack("[s,s,s,s,s]", "SET", vk, ver, "EX",
                                                   VERSION_TTL));
            }
            json_decref(bumps);
            return q;
        }
    kgc_random_id("", 20, j->txid);
    /* [key, expected] checked: what it read since its last commit (all,
     * for the first), and what it writes now that an earlier commit of it
     * checked or wrote (team.member.remove writes the team read before its
     * first commit); then the claims; then [version key] it bumps. */
    keys = json_array();
    json_object_foreach(j->readset, key, v) {
        if (json_is_true(v))
            continue;             /* never read (a handler queued it, then wrote) */
        version_key(j->app, key, vk);
        json_array_append_new(keys, json_pack("[s,s]", vk, json_is_string(v) ?
                                              json_string_value(v) : ""));
        json_object_set(j->checked, key, v);
    }
    json_object_foreach(bumps, key, v) {
        json_t *cv = json_object_get(j->checked, key);
        if (cv == NULL || json_object_get(j->readset, key) != NULL)
            continue;
        version_key(j->app, key, vk);
        json_array_append_new(keys, json_pack("[s,s]", vk, json_is_string(cv) ?
                                              json_string_value(cv) : ""));
    }
    nv = json_array_size(keys);
    json_object_foreach(j->claims, key, v)
        json_array_append_new(keys, json_pack("[s,O]", key, v));
    ncl = json_array_size(keys) - nv;
    json_object_foreach(bumps, key, v) {
        version_key(j->app, key, vk);
        json_array_append_new(keys, json_pack("[s]", vk));
        /* A later commit of this command expects its own version there. */
        if (json_object_get(j->checked, key) != NULL)
            json_object_set_new(j->checked, key, json_string(j->txid));
    }
    /* Checked now: a later commit of it checks them again only if it
     * writes them, or reads them again (their versions are read again). */
    json_object_foreach_safe(j->readset, tmp, key, v)
        if (!json_is_true(v))
            json_object_del(j->readset, key);
    json_decref(bumps);
    slot = j->app->cfg.ncluster > 0 ? commit_slot(keys, q) : -1;
    if (slot == -2) {
        commit_plan(j, keys, nv, ncl, q);
        j->xtx = 1;
        json_decref(keys);
        json_decref(q);
        return NULL;
    }
    /* The fence, in the commit's slot on a cluster. */
    if (slot >= 0)
        kgc_rkey(j->fence, j->app->cfg.key_prefix, "{%s}tx:%s",
                 kgc_cluster_tag((unsigned)slot), j->txid);
    else
        kgc_rkey(j->fence, j->app->cfg.key_prefix, "tx:%s", j->txid);
    eval = json_pack("[s,s,s,s]", "EVAL", commit_lua, "", j->fence);
    json_array_foreach(keys, i, c)
        json_array_append(eval, json_array_get(c, 0));
    {
        json_t *data = json_object();
        const char *dk;
        json_t *dv;
        json_array_foreach(q, i, c)
            cmd_keys(c, bump_one, data);
        json_object_foreach(data, dk, dv)
            json_array_append_new(eval, json_string(dk));
        json_decref(data);
    }
    snprintf(n, sizeof n, "%zu", json_array_size(eval) - 4 + 1);
    json_array_set_new(eval, 2, json_string(n));
    json_array_append_new(eval, json_string(TX_FENCE_TTL));
    json_array_append_new(eval, json_string(j->txid));
    json_array_append_new(eval, json_string(VERSION_TTL));
    snprintf(n, sizeof n, "%zu", nv + ncl);
    json_array_append_new(eval, json_string(n));
    snprintf(n, sizeof n, "%zu", json_array_size(keys) - nv - ncl);
    json_array_append_new(eval, json_string(n));
    for (i = 0; i < nv + ncl; i++)
        json_array_append(eval, json_array_get(json_array_get(keys, i), 1));
    json_decref(keys);
    json_array_foreach(q, i, c) {
        json_array_append_new(eval, json_integer((json_int_t)json_array_size(c)));
        json_array_foreach(c, k, a)
            json_array_append(eval, a);
    }
    json_decref(q);
    return json_pack("[o]", eval);
}

static void job_advance(job *j, job_step step)
{
    if (step != J_READ && step != J_WAIT && j->def->mutates && !j->decided &&
        j->commits_sent == 0) {
        if (j != j->app->active) {
            /* An older command has not decided yet: wait for it. */
            j->parked = 1;
            j->parked_step = step;
            return;
        }
        if (job_conflicts(j)) {
            /* A transaction sent after our reads changed what we read. */
            job_rerun(j);
            return;
        }
        if (j->app->xc_runs != NULL) {
            /* A commit across slots of ours, still in flight, writes what
             * we read: its writes land at its apply, after our reads may
             * have been answered. Run again once it ended. */
            char tx[48];
            if (xc_local_writes(j->app, j->readset, tx, sizeof tx)) {
                job_locked(j, tx);
                return;
            }
        }
    }
    switch (step) {
    case J_READ: {
        json_t *q;

        if (json_array_size(j->rq) == 0) {     /* nothing to read: go on */
            j->stage++;
            json_array_clear(j->rr);
            job_advance(j, j->def->run(j));
            return;
        }
        q = j->rq;
        j->rq = json_array();
        if (json_array_size(j->vread) > 0) {
            /* The versions of the keys read for the first time, before
             * them: a commit between the two makes the version older than
             * the data, never newer, so it can only fail a check. */
            json_t *mget = json_pack("[s]", "MGET"), *k;
            char vk[KGC_RKEY_MAX];
            size_t i;

            json_array_foreach(j->vread, i, k) {
                version_key(j->app, json_string_value(k), vk);
                json_array_append_new(mget, json_string(vk));
            }
            json_array_insert_new(q, 0, mget);
            j->vsent = j->vread;
            j->vread = json_array();
        }
        if (store_exec(j->app->st, q, 0, on_reads, j) != 0) {
            json_decref(q);
            job_fail(j, "unavailable", "the store is unreachable; nothing was changed");
            job_finish(j);
            return;
        }
        json_decref(q);
        return;
    }
    case J_WRITE: {
        json_t *q = j->wq, *m;
        size_t i;

        if (j->def->mutates && metrics_now() - j->t_read > VERSION_MAX_AGE_S) {
            /* Its versions may have expired meanwhile (VERSION_TTL). */
            job_fail(j, "unavailable", "the command took too long; nothing was changed");
            json_decref(j->result);
            j->result = NULL;
            job_finish(j);
            return;
        }
        j->wq = json_array();
        json_array_foreach(j->pub, i, m)
            json_array_append_new(q, json_pack("[s,s,O]", "PUBLISH", rk(j, KGC_RK_CHANNEL), m));
        json_array_clear(j->pub);       /* sent: a next commit has its own */
        if (j->def->mutates && j->team_id[0] && !j->more_commits)
            append_audit(j, q);
        if (j->def->mutates)
            note_writes(j->app, q);
        q = commit_wrap(j, q);
        j->commits_sent++;
        if (q == NULL) {
            xc_plan *p = j->xplan;
            j->xplan = NULL;
            json_decref(j->xwrites);
            j->xwrites = json_incref(xc_plan_wkeys(p));
            if (xc_run(j->app, p, on_xcommit, j) != 0) {
                json_decref(j->result);
                j->result = NULL;
                job_fail(j, "unavailable", "the store is unreachable; nothing was changed");
                job_finish(j);
                return;
            }
        } else if (store_exec_acked(j->app->st, q, j->txid[0] == '\0', on_writes, j) != 0) {
            json_decref(q);
            json_decref(j->result);
            j->result = NULL;
            job_fail(j, "unavailable", "the store is unreachable; nothing was changed");
            job_finish(j);
            return;
        }
        json_decref(q);
        if (!j->more_commits)
            job_decided(j);
        return;
    }
    case J_WAIT:                /* offloaded: offload_done goes on */
        return;
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
    json_decref(j->readset);
    json_decref(j->checked);
    json_decref(j->vread);
    json_decref(j->vsent);
    json_decref(j->claims);
    xc_plan_free(j->xplan);
    json_decref(j->xwrites);
    if (j->later != NULL)
        event_free(j->later);
    scratch_free(j);
    free(j);
}

static void job_start(job *j)
{
    j->stage = 0;
    j->read_seq = j->app->wseq;
    j->t_read = metrics_now();
    if (j->def->role != NEED_NOBODY)
        job_read(j, "GET", rk(j, KGC_RK_USER, j->actor_id), NULL);
    if (j->def->scope != SCOPE_NONE) {
        job_read(j, "GET", rk(j, KGC_RK_TEAM, j->team_id), NULL);
        if (j->def->role != NEED_NOBODY)
            members_prefetch(j);
    }
    j->fw_reads = json_array_size(j->rq);
    if (j->fw_reads == 0) {
        /* No engine reads: the handler's stage 0 is its first stage. */
        j->stage = 1;
        json_array_clear(j->rr);
    }
    job_advance(j, j->def->run(j));
}

/* Runs a mutating command again from the start, as if it had just
 * arrived; it keeps its place among the active ones. */
static void job_rerun(job *j)
{
    json_decref(j->actor);
    json_decref(j->team);
    json_decref(j->result);
    j->actor = j->team = j->result = NULL;
    j->role = NULL;
    j->legacy_members = 0;
    json_array_clear(j->rq);
    json_array_clear(j->rr);
    json_array_clear(j->wq);
    json_array_clear(j->pub);
    json_object_clear(j->readset);
    json_object_clear(j->checked);
    json_array_clear(j->vread);
    json_decref(j->vsent);
    j->vsent = NULL;
    j->parked = 0;                /* scratch stays: prepare's results live there */
    j->parked_rerun = 0;
    j->code = NULL;
    j->msg[0] = '\0';
    j->after_write = 0;
    j->more_commits = 0;
    snprintf(j->team_id, sizeof j->team_id, "%s", j->scope_team);
    j->actor_id = json_string_value(json_object_get(j->req, "actor"));
    if (++j->reruns % 100 == 0)
        log_warn("%s re-run %d times on conflicts", j->def->name, j->reruns);
    job_start(j);
}

/* Its commit found that another keygated wrote a key it read (a version
 * moved): nothing was written. It runs again from the start, back among
 * the active commands ahead of those that have not sent a commit yet, so
 * that it decides next. (With one daemon this never happens; with several,
 * such a command may take effect after a later one of the same client.) */
static void job_moved(job *j)
{
    app *a = j->app;

    if (j->decided) {
        job *prev = NULL, *p = a->active;

        while (p != NULL && p->commits_sent > 0) {
            prev = p;
            p = p->anext;
        }
        j->aprev = prev;
        j->anext = p;
        if (prev)
            prev->anext = j;
        else
            a->active = j;
        if (p)
            p->aprev = j;
        else
            a->active_tail = j;
        j->decided = 0;
        a->mut_active++;
    }
    j->commits_sent = 0;
    metrics_count(MX_COMMIT_MOVED);
    job_rerun(j);
}

/* Answers, and audits a refused mutation. */
static void job_finish(job *j)
{
    app *a = j->app;
    json_t *id = json_object_get(j->req, "id");

    if (j->code != NULL && json_object_size(j->claims) > 0 && store_connected(a->st)) {
        /* Claims it took and did not turn into records (a commit replaces
         * them): released now, not left to their TTL. */
        json_t *cmds = json_array(), *v;
        const char *key;

        json_object_foreach(j->claims, key, v)
            json_array_append_new(cmds, json_pack("[s,s,s,s,O]", "EVAL", release_lua, "1", key, v));
        store_exec(a->st, cmds, 0, ignore_reply, NULL);
        json_decref(cmds);
    }

    metrics_command(j->def->name, j->code, metrics_now() - j->t_in);
    if (j->code != NULL && j->commits_done > 0 && !j->not_durable &&
        (strcmp(j->code, "unavailable") == 0 || strcmp(j->code, "internal") == 0))
        snprintf(j->msg, sizeof j->msg, "the store was lost after %d of this command's commits: "
                 "part of the change is made; run the command again to finish it",
                 j->commits_done);
    if (j->code != NULL) {
        if (j->def->mutates && j->team_id[0] && store_connected(a->st) &&
            strcmp(j->code, "unavailable") != 0) {
            json_t *cmds = json_array();
            append_audit(j, cmds);
            store_exec(a->st, cmds, 1, ignore_reply, NULL);
            json_decref(cmds);
        }
        j->reply(j->reply_ctx, proto_error(id, j->code, "%s", j->msg), 0);
    } else {
        j->reply(j->reply_ctx, proto_ok(id, j->result), j->def->secret);
        j->result = NULL;
    }
    job_decided(j);
    job_free(j);
}

/* --- lost replies ----------------------------------------------------- */

static void limbo_remove(job *j)
{
    for (job **pp = &j->app->limbo; *pp; pp = &(*pp)->lnext)
        if (*pp == j) {
            *pp = j->lnext;
            break;
        }
    if (j->limbo != NULL) {
        event_free(j->limbo);
        j->limbo = NULL;
    }
    if (j->limbo_retry != NULL) {
        event_free(j->limbo_retry);
        j->limbo_retry = NULL;
    }
}

/* Answers a command in limbo: applied (its prepared answer) or not. */
static void limbo_answer(job *j, int applied, const char *why)
{
    limbo_remove(j);
    if (j->xsettling) {
        xc_forget(j->app, j);   /* the daemon is stopping: nobody waits for it */
        j->xsettling = 0;
    }
    if (applied && j->more_commits) {
        /* One commit of several made: the rest were not. */
        j->commits_done++;
        applied = 0;
        why = "the store was lost";
    }
    if (!applied) {
        json_decref(j->result);
        j->result = NULL;
        job_fail(j, "unavailable", "%s", why);
    }
    job_finish(j);
}

static void limbo_timeout(evutil_socket_t fd, short what, void *arg)
{
    job *j = arg;

    (void)fd;
    (void)what;
    if (j->xsettling) {
        /* A settle holds the job: its end answers (on_xsettled). Each of
         * its steps is bounded by the store's own timeouts. */
        event_free(j->limbo);
        j->limbo = NULL;
        return;
    }
    limbo_answer(j, 0, "the store is unreachable and did not come back in time; "
                       "the change may have been made");
}

static void limbo_add(job *j)
{
    struct timeval tv = {LIMBO_WAIT_S, 0};

    j->lnext = j->app->limbo;
    j->app->limbo = j;
    j->limbo = evtimer_new(j->app->base, limbo_timeout, j);
    if (j->limbo == NULL)
        oom("evtimer_new");
    evtimer_add(j->limbo, &tv);
    log_warn("%s: reply lost; will find out whether it was applied", j->def->name);
    if (store_connected(j->app->st))
        job_limbo_resolve(j->app);
}

static void limbo_ask(job *j);

static void limbo_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    if (store_connected(((job *)arg)->app->st))
        limbo_ask(arg);
}

/* Replies of "SET fence aborted NX" + "GET fence": OK → the commit never
 * ran and now never will; else the fence says "done" → it ran. */
static void on_resolve(void *arg, int ok, json_t *replies)
{
    job *j = arg;
    const char *set = json_string_value(json_array_get(replies, 0));
    const char *got = json_string_value(json_array_get(replies, 1));

    if (!ok) {
        json_decref(replies);
        return;                 /* still in limbo: the next reconnect asks again */
    }
    if (first_error(replies) != NULL) {
        /* Refused, not answered (LOADING just after a restart): ask again
         * shortly, until LIMBO_WAIT_S gives up. */
        json_decref(replies);
        limbo_later(j);
        return;
    }
    if (set != NULL && strcmp(set, "OK") == 0)
        limbo_answer(j, 0, "the store was unreachable; nothing was changed");
    else if (got != NULL && strcmp(got, "done") == 0)
        limbo_answer(j, 1, NULL);
    else
        limbo_answer(j, 0, "the store lost track of the change; it may have been made");
    json_decref(replies);
}

static void limbo_later(job *j)
{
    struct timeval tv = {0, 100 * 1000};

    if (j->limbo_retry == NULL && (j->limbo_retry = evtimer_new(j->app->base, limbo_retry,
                                                                j)) == NULL)
        oom("evtimer_new");
    evtimer_add(j->limbo_retry, &tv);
}

/* A commit across slots whose reply was lost, settled by its owner. */
static void on_xsettled(void *arg, int outcome, const char *holder)
{
    job *j = arg;

    (void)holder;
    j->xsettling = 0;
    if (outcome == XC_APPLIED)
        limbo_answer(j, 1, NULL);
    else if (outcome == XC_NOT_APPLIED)
        limbo_answer(j, 0, "the store was unreachable; nothing was changed");
    else if (j->limbo == NULL)  /* LIMBO_WAIT_S passed while it settled */
        limbo_answer(j, 0, "the store is unreachable and did not come back in time; "
                           "the change may have been made");
    else
        limbo_later(j);         /* until LIMBO_WAIT_S gives up */
}

static void limbo_ask(job *j)
{
    const char *key = j->fence;
    json_t *cmds;

    if (j->xtx) {
        if (!j->xsettling) {
            j->xsettling = 1;   /* the job lives until it answers (limbo_timeout) */
            xc_settle(j->app, j->txid, 1, on_xsettled, j);
        }
        return;
    }
    cmds = json_pack("[[s,s,s,s,s,s],[s,s]]", "SET", key, "aborted", "NX", "EX",
                     TX_FENCE_TTL, "GET", key);
    store_exec(j->app->st, cmds, 0, on_resolve, j);
    json_decref(cmds);
}

void job_limbo_resolve(app *a)
{
    for (job *j = a->limbo; j != NULL; j = j->lnext)
        limbo_ask(j);
}

void job_abort_all(app *a)
{
    while (a->limbo != NULL)
        limbo_answer(a->limbo, 0, "the daemon is stopping; the change may have been made");
    while (a->queue_head != NULL) {
        job *j = a->queue_head;
        a->queue_head = j->next;
        metrics_command(j->def->name, "unavailable", metrics_now() - j->t_in);
        j->reply(j->reply_ctx, proto_error(json_object_get(j->req, "id"), "unavailable",
                                           "the daemon is stopping"), 0);
        job_free(j);
    }
    a->queue_tail = NULL;
}

/* --- dispatch ---------------------------------------------------------- */

/* Starts a command, or queues it behind the mutations in flight. */
static void job_enqueue(job *j)
{
    app *a = j->app;

    if (!j->def->mutates) {
        job_start(j);
        return;
    }
    if (a->written == NULL)
        a->written = json_object();
    if (a->queue_tail)
        a->queue_tail->next = j;
    else
        a->queue_head = j;
    a->queue_tail = j;
    mut_pump(a);
}

static void refuse(job_reply_fn reply, void *ctx, json_t *req, const char *code,
                   const char *fmt, const char *a1, const char *a2);

static void prepare_work(void *arg)
{
    job *j = arg;
    j->def->prepare(j);
}

static void prepare_done(void *arg)
{
    job_enqueue(arg);
}

/* Runs the prepare step on the worker, or refuses when its queue is full. */
static void prepare_start(job *j)
{
    if (worker_submit(j->app->wk, prepare_work, prepare_done, j) != 0) {
        refuse(j->reply, j->reply_ctx, j->req, "rate_limited",
               "the daemon is busy%s%s: try again shortly", "", "");
        job_free(j);
    }
}

/* The gate's replies: the prepare step runs only if the command needs it. */
static void gate_done(void *arg, int ok, json_t *replies)
{
    job *j = arg;
    const char *e = ok ? first_error(replies) : NULL;
    int need;

    if (e != NULL) {
        /* A refused read decides nothing: the handler reads again. */
        log_warn("%s: redis refused a gate read: %.200s", j->def->name, e);
        need = 0;
    } else {
        need = ok ? j->def->gate_needs(j, replies) : 1;
    }
    json_decref(replies);         /* ours (store.h) */
    if (need < 0) {
        refuse(j->reply, j->reply_ctx, j->req, j->code, "%s%s", j->msg, "");
        job_free(j);
    } else if (need == 0) {
        job_enqueue(j);         /* decided without it (its handler re-reads) */
    } else {
        prepare_start(j);
    }
}

/* Finds the team a scoped command acts on. 0, 1 (not found) or -1. */
static int scope_team(job *j, char *err, size_t errlen)
{
    const char *name = scope_noun(j);
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

static void refuse(job_reply_fn reply, void *ctx, json_t *req, const char *code,
                   const char *fmt, const char *a1, const char *a2)
{
    metrics_command(json_string_value(json_object_get(req, "cmd")), code, 0);
    reply(ctx, proto_error(req ? json_object_get(req, "id") : NULL, code, fmt, a1, a2), 0);
}

static void slot_reply(void *ctx, json_t *response, int secret)
{
    reqslot_respond(ctx, response, secret);
}

void job_dispatch(void *appv, reqslot *rs, const char *line, size_t len, const peer_info *peer)
{
    job_line(appv, line, len, peer, slot_reply, rs);
}

void job_line(app *a, const char *line, size_t len, const peer_info *peer, job_reply_fn reply,
              void *ctx)
{
    json_error_t je;
    json_t *req = json_loadb(line, len, JSON_REJECT_DUPLICATES, &je);

    if (req == NULL) {
        refuse(reply, ctx, NULL, "bad_request", "malformed JSON: %s%s", je.text, "");
        return;
    }
    job_submit(a, req, peer, reply, ctx);
}

void job_submit(app *a, json_t *req, const peer_info *peer, job_reply_fn reply, void *ctx)
{
    const cmd_def *def;
    const char *cmd;
    job *j;
    char err[200];
    int r;

    if (!json_is_object(req)) {
        refuse(reply, ctx, NULL, "bad_request", "a request is a JSON object%s%s", "", "");
        json_decref(req);
        return;
    }
    cmd = json_string_value(json_object_get(req, "cmd"));
    if (cmd == NULL) {
        refuse(reply, ctx, req, "bad_request", "'cmd' must be a string%s%s", "", "");
        json_decref(req);
        return;
    }
    def = cmd_find(cmd);
    if (def == NULL) {
        refuse(reply, ctx, req, "unknown_command", "no command '%.64s'%s", cmd, "");
        json_decref(req);
        return;
    }
    for (const arg_rule *ar = def->args; ar->name != NULL; ar++) {
        json_t *v = json_object_get(req, ar->name);
        if ((v == NULL || json_is_null(v)) && !ar->required)
            continue;
        if (v == NULL || !type_ok(ar->type, v)) {
            if (v == NULL)
                refuse(reply, ctx, req, "bad_request", "'%s' is required%s", ar->name, "");
            else
                refuse(reply, ctx, req, "bad_request", "'%s' must be %s", ar->name,
                       type_name(ar->type));
            json_decref(req);
            return;
        }
    }
    j = xcalloc(1, sizeof *j);
    j->t_in = metrics_now();
    j->app = a;
    j->def = def;
    j->reply = reply;
    j->reply_ctx = ctx;
    j->req = req;
    j->peer = *peer;
    j->rq = json_array();
    j->rr = json_array();
    j->wq = json_array();
    j->pub = json_array();
    j->readset = json_object();
    j->checked = json_object();
    j->vread = json_array();
    j->claims = json_object();
    if (def->role != NEED_NOBODY) {
        j->actor_id = json_string_value(json_object_get(req, "actor"));
        if (j->actor_id == NULL || !kgc_id_plausible(j->actor_id)) {
            refuse(reply, ctx, req, "unauthenticated", "'actor' must name a user%s%s", "", "");
            job_free(j);
            return;
        }
    }
    if (def->scope != SCOPE_NONE && (r = scope_team(j, err, sizeof err)) != 0) {
        if (r < 0)
            refuse(reply, ctx, req, "bad_request", "%s%s", err, "");
        else
            refuse(reply, ctx, req, "not_found", "no such %s%s", scope_noun(j), "");
        job_free(j);
        return;
    }
    snprintf(j->scope_team, sizeof j->scope_team, "%s", j->team_id);
    if (def->prepare != NULL && def->gate_reads != NULL) {
        json_t *cmds = json_array();

        def->gate_reads(j, cmds);
        r = store_exec(a->st, cmds, 0, gate_done, j);
        json_decref(cmds);
        if (r != 0)
            job_enqueue(j);     /* the store is away: the handler answers unavailable */
        return;
    }
    if (def->prepare != NULL) {
        prepare_start(j);
        return;
    }
    job_enqueue(j);
}

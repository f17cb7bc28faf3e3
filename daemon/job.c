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
 *
 * The engine's other parts (job_int.h): job_api.c, what handlers call;
 * job_occ.c, the conflict checks; job_commit.c, the fenced commit;
 * job_limbo.c, commits whose reply was lost.
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
#include <time.h>

/* Deletes a claim (KEYS[1]) only if it still holds ARGV[1]. */
static const char release_lua[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end\n"
    "return 0\n";

static void job_locked(job *j, const char *lock);

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

/* --- store plumbing ---------------------------------------------------- */

static const char *scope_noun(const job *j)
{
    return j->def->scope == SCOPE_TEAM ? "team" : j->def->scope == SCOPE_KEY ? "key" : "wallet";
}

/* The first error reply among a round's replies, at any depth (a script
 * or EXEC answers arrays that may hold one), or NULL. */
const char *job_first_error(const json_t *replies)
{
    size_t i;
    json_t *r;
    const char *e;

    json_array_foreach(replies, i, r) {
        if (store_is_error(r))
            return json_string_value(json_object_get(r, "$err")) ?: "?";
        if (json_is_array(r) && (e = job_first_error(r)) != NULL)
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
    if ((e = job_first_error(replies)) != NULL) {
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
        job_limbo_add(j);           /* did the commit happen? ask after reconnecting */
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

void job_advance(job *j, job_step step)
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
                job_version_key(j->app, json_string_value(k), vk);
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
            job_append_audit(j, q);
        if (j->def->mutates)
            job_note_writes(j->app, q);
        q = job_commit_wrap(j, q);
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

void job_free(job *j)
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
    job_scratch_free(j);
    free(j);
}

void job_start(job *j)
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
void job_rerun(job *j)
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
void job_finish(job *j)
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
            job_append_audit(j, cmds);
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
    job_mut_pump(a);
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
    const char *e = ok ? job_first_error(replies) : NULL;
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
        if (v == NULL || !job_type_ok(ar->type, v)) {
            if (v == NULL)
                refuse(reply, ctx, req, "bad_request", "'%s' is required%s", ar->name, "");
            else
                refuse(reply, ctx, req, "bad_request", "'%s' must be %s", ar->name,
                       job_type_name(ar->type));
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

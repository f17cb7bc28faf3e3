/*
 * job_limbo.c - a commit whose reply was lost: whether it was applied is
 * found out from its fence (or its cross-slot intent) within LIMBO_WAIT_S,
 * and the command answered accordingly.
 */
#include "job_int.h"
#include "log.h"
#include "metrics.h"
#include "model.h"
#include "proto.h"
#include "kgc_cluster.h"
#include "kgc_token.h"
#include "xcommit.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

void job_limbo_add(job *j)
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
    if (job_first_error(replies) != NULL) {
        /* Refused, not answered (LOADING just after a restart): ask again
         * shortly, until LIMBO_WAIT_S gives up. */
        json_decref(replies);
        job_limbo_later(j);
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

void job_limbo_later(job *j)
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
        job_limbo_later(j);         /* until LIMBO_WAIT_S gives up */
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


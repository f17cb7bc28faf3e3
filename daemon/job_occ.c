/*
 * job_occ.c - optimistic concurrency between the mutating commands of this
 * keygated (job.c runs them, up to MUT_CONCURRENCY at once): the keys each
 * read, the keys written by transactions sent after its reads, and the
 * version keys read next to each key for the commits of other keygated.
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

/* --- conflict detection for mutating commands -------------------------- */

/* Calls fn(arg, key) for each Redis key that cmd (an array of strings)
 * names: the key commands the handlers use take one key first, but for
 * these. PUBLISH names a channel, no key. */
void job_cmd_keys(json_t *cmd, void (*fn)(void *arg, const char *key), void *arg)
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
void job_version_key(const app *a, const char *key, char out[KGC_RKEY_MAX])
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
void job_note_read(job *j, json_t *cmd)
{
    if (j->def->mutates)
        job_cmd_keys(cmd, read_one, j);
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
void job_note_writes(app *a, json_t *cmds)
{
    size_t i;
    json_t *c;

    if (++a->wseq % 4096 == 0 && json_object_size(a->written) > 4096)
        prune_written(a);
    json_array_foreach(cmds, i, c)
        job_cmd_keys(c, written_one, a);
}

/* 1 if a transaction sent after j's first reads wrote a key j read. */
int job_conflicts(job *j)
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
void job_decided(job *j)
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
    job_mut_pump(a);
}

/* Starts waiting mutations while there is room. */
void job_mut_pump(app *a)
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


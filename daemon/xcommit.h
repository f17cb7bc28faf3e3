/*
 * xcommit.h - a command's commit whose keys span hash slots (Redis
 * Cluster, issue 11), made as ordered steps that any keygated can finish.
 *
 * On one node a commit is one script (job_commit.c, commit_lua). On a cluster a
 * script touches one slot, so a commit whose keys lie in several slots
 * (sign-up, member add and remove, notifications: user-level keys beside
 * team keys) goes in five steps, docs/redis-schema.md "Cross-slot commits":
 *
 *   1. intent   P {xtx}:<txid> = {state pending, plan, at} and its id in
 *               P {xtx}:open: the plan is every slot's part of the commit
 *   2. prepare  per slot it writes, one script: the versions it writes
 *               still hold what was read (if read), no other commit holds
 *               them, its claims hold (and keep no expiry); then each
 *               becomes a lock "L <txid> <old version>", and a marker
 *               P {~n}xu:<txid> is set
 *   2b validate per slot it only read, once every write is locked: those
 *               versions still hold and are not locked (no write skew)
 *   3. decide   pending -> commit, unless someone aborted it first
 *   4. apply    per slot it writes, one script, once (the marker): the
 *               writes (every key declared), the new versions
 *   5. finish   state done (kept TX_FENCE_TTL s, like a fence), off the set
 *
 * Until 3 the commit can be rolled back (locks put back, state aborted);
 * after it, only rolled forward. A reader (a command's version read) that
 * meets a lock does not decide on it: it asks for the commit to be settled
 * (xc_settle) and runs again shortly. keygated's writer settles every open
 * intent older than XC_STALE_MS (a daemon killed between the steps), and
 * `keygate fsck` reports them.
 */
#ifndef KG_XCOMMIT_H
#define KG_XCOMMIT_H

#include <jansson.h>

#include "app.h"
#include "xcommit_plan.h"

enum xc_outcome {
    XC_APPLIED = 1,               /* every part written */
    XC_MOVED,                     /* a version moved: nothing written, run again */
    XC_LOCKED,                    /* another commit holds a key: nothing written, run again soon */
    XC_LOST,                      /* a reply lost: settle it (owner) to know */
    XC_REFUSED,                   /* Redis refused a step (logged): nothing written */
    XC_NOT_APPLIED                /* xc_settle: rolled back, or never made */
};

/* holder: with XC_LOCKED, the txid of the commit that holds the key ("" if
 * unknown); else "". */
typedef void (*xc_done_fn)(void *arg, int outcome, const char *holder);

/* A plan under construction: parts by slot. */
typedef struct xc_plan xc_plan;

xc_plan *xc_plan_new(app *a, const char *txid);
void xc_plan_free(xc_plan *p);
/* flag: 'c' checked only, 'b' written only (bumped), 'B' both. expected:
 * the version read ("" none), unused for 'b'. */
void xc_plan_lock(xc_plan *p, const char *vkey, char flag, const char *expected);
void xc_plan_claim(xc_plan *p, const char *key, const char *expected);
void xc_plan_cmd(xc_plan *p, json_t *cmd);   /* borrowed; keyless ones run after apply */
/* Notes a data key the commit writes: a local command that read it waits
 * for the commit to end before deciding (xc_local_writes). */
void xc_plan_writes(xc_plan *p, const char *key);
int xc_plan_slots(const xc_plan *p);
json_t *xc_plan_wkeys(const xc_plan *p);      /* borrowed: key -> true */

/* Runs the plan (taken): 0, done(arg, outcome) called once later; -1 when
 * the store is away (nothing sent, done never called). */
int xc_run(app *a, xc_plan *p, xc_done_fn done, void *arg);

/* Finishes or rolls back the commit txid, from its intent. owner: the
 * daemon that made it (its reply was lost): a pending one is aborted at
 * once; others abort only a pending intent older than XC_STALE_MS. done
 * may be NULL; it gets XC_APPLIED, XC_NOT_APPLIED, or XC_LOST (ask again). */
void xc_settle(app *a, const char *txid, int owner, xc_done_fn done, void *arg);

/* When txid is a commit this daemon is running: fn(arg) is called once it
 * ends (after its done), and 1 is returned; else 0. */
int xc_wait_local(app *a, const char *txid, void (*fn)(void *), void *arg);

/* The runs in flight whose done would get arg no longer call it (arg is
 * about to be freed: a job answered at the daemon's stop). */
void xc_forget(app *a, void *arg);

/* When a commit this daemon is running writes one of the keys of readset
 * (an object keyed by Redis key), its txid into out; 1. Else 0. */
int xc_local_writes(app *a, json_t *readset, char *out, size_t n);

/* The writer's pass: settles open intents older than XC_STALE_MS. */
void xc_sweep(app *a);

#endif

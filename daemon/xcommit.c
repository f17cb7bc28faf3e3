/*
 * xcommit.c - commits across hash slots as ordered steps (xcommit.h).
 */
#include "xcommit.h"
#include "xcommit_lua.h"
#include "lease.h"
#include "log.h"
#include "kgc_cluster.h"
#include "kgc_keys.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define XC_SWEEP_MS 1000
#define XC_SWEEP_BATCH "50"
#define XC_SETTLE_ROUNDS 3

struct xc_plan {
    app *a;
    char txid[48];
    json_t *parts;                 /* slot (string) -> {marker, locks, claims, cmds} */
    json_t *after;                 /* keyless commands (PUBLISH): after apply */
    json_t *wkeys;                 /* data keys written (not stored in the intent) */
};

typedef struct xrun {
    app *a;
    char txid[48];
    char intent[KGC_RKEY_MAX], open[KGC_RKEY_MAX];
    json_t *plan;                  /* {"parts": [...], "after": [...]} */
    xc_done_fn done;
    void *arg;
    int owner;
    int outcome;                   /* what to report once the abort is done */
    int rounds;
    struct xwaiter *waiters;       /* local commands waiting for it to end */
    char holder[48];               /* XC_LOCKED: who holds the key */
    json_t *wkeys;                 /* data keys it writes (xc_run's) */
    json_t *lkeys;                 /* version keys it locks (xc_run's) */
    struct xrun *next, *prev;      /* in app->xc_runs, while xc_run's */
} xrun;

typedef struct xwaiter {
    void (*fn)(void *);
    void *arg;
    struct xwaiter *next;
} xwaiter;

static void intent_keys(app *a, const char *txid, char *intent, char *open)
{
    kgc_rkey(intent, a->cfg.key_prefix, "{xtx}:%s", txid);
    kgc_rkey(open, a->cfg.key_prefix, "{xtx}:open");
}

/* --- plans ------------------------------------------------------------- */

xc_plan *xc_plan_new(app *a, const char *txid)
{
    xc_plan *p = xcalloc(1, sizeof *p);

    p->a = a;
    snprintf(p->txid, sizeof p->txid, "%s", txid);
    p->parts = json_object();
    p->after = json_array();
    p->wkeys = json_object();
    return p;
}

void xc_plan_free(xc_plan *p)
{
    if (p == NULL)
        return;
    json_decref(p->parts);
    json_decref(p->after);
    json_decref(p->wkeys);
    free(p);
}

static json_t *part_of(xc_plan *p, const char *key)
{
    unsigned slot = kgc_cluster_slot(key, strlen(key));
    char s[8], marker[KGC_RKEY_MAX];
    json_t *part;

    snprintf(s, sizeof s, "%u", slot);
    if ((part = json_object_get(p->parts, s)) != NULL)
        return part;
    kgc_rkey(marker, p->a->cfg.key_prefix, "{%s}xu:%s", kgc_cluster_tag(slot), p->txid);
    part = json_pack("{s:s,s:[],s:[],s:[],s:[]}", "marker", marker, "locks", "claims", "cmds",
                     "keys");
    json_object_set_new(p->parts, s, part);
    return part;
}

void xc_plan_lock(xc_plan *p, const char *vkey, char flag, const char *expected)
{
    char f[2] = {flag, '\0'};

    json_array_append_new(json_object_get(part_of(p, vkey), "locks"),
                          json_pack("[s,s,s]", vkey, f, expected ? expected : ""));
}

void xc_plan_claim(xc_plan *p, const char *key, const char *expected)
{
    json_array_append_new(json_object_get(part_of(p, key), "claims"),
                          json_pack("[s,s]", key, expected));
}

static int multikey(const char *name)
{
    return strcmp(name, "DEL") == 0 || strcmp(name, "UNLINK") == 0;
}

void xc_plan_cmd(xc_plan *p, json_t *cmd)
{
    const char *name = json_string_value(json_array_get(cmd, 0));
    const char *key = NULL;

    if (strcmp(name, "PUBLISH") == 0) {
        json_array_append(p->after, cmd);
        return;
    }
    if (multikey(name)) {
        /* One DEL per key: its keys may lie in several slots. */
        for (size_t i = 1; i < json_array_size(cmd); i++) {
            const char *k = json_string_value(json_array_get(cmd, i));
            json_t *part = part_of(p, k);
            json_array_append_new(json_object_get(part, "cmds"), json_pack("[s,s]", name, k));
            json_array_append_new(json_object_get(part, "keys"), json_string(k));
        }
        return;
    }
    if (strcmp(name, "EVAL") == 0 || strcmp(name, "EVALSHA") == 0)
        key = json_string_value(json_array_get(cmd, 3));
    else
        key = json_string_value(json_array_get(cmd, 1));
    {
        json_t *part = part_of(p, key ? key : "");
        json_array_append(json_object_get(part, "cmds"), cmd);
        if (key != NULL)
            json_array_append_new(json_object_get(part, "keys"), json_string(key));
    }
}

void xc_plan_writes(xc_plan *p, const char *key)
{
    json_object_set_new(p->wkeys, key, json_true());
}

json_t *xc_plan_wkeys(const xc_plan *p)
{
    return p->wkeys;
}

int xc_plan_slots(const xc_plan *p)
{
    return (int)json_object_size(p->parts);
}

/* The plan as stored in the intent: parts in slot order. */
static json_t *plan_json(xc_plan *p)
{
    json_t *parts = json_array(), *part;
    const char *slot;

    json_object_foreach(p->parts, slot, part) {
        json_object_set_new(part, "slot", json_integer(atoi(slot)));
        json_array_append(parts, part);
    }
    return json_pack("{s:o,s:O}", "parts", parts, "after", p->after);
}

/* --- the steps' commands: xcommit_plan.c --------------------------------- */

static json_t *each_part(xrun *r, json_t *(*fn)(const char *, json_t *))
{
    json_t *cmds = json_array(), *part;
    size_t i;

    json_array_foreach(json_object_get(r->plan, "parts"), i, part) {
        json_t *c = fn(r->txid, part);
        if (c != NULL)
            json_array_append_new(cmds, c);
    }
    return cmds;
}

/* --- running ----------------------------------------------------------- */

/* Fault injection for the tests (tests/cluster/test_daemon.py): with
 * KEYGATED_FAULT_XC=<step> (intent, prepare, decide, apply) in its
 * environment, keygated dies (_exit 137, like kill -9: no cleanup) right
 * after that step of a commit across slots was answered, leaving the rest
 * to whoever settles it. */
static void fault_point(const char *step)
{
    const char *f = getenv("KEYGATED_FAULT_XC");

    if (f != NULL && strcmp(f, step) == 0) {
        log_warn("KEYGATED_FAULT_XC=%s: dying after that step, as if killed", step);
        _exit(137);
    }
}

static void report(xrun *r, int outcome)
{
    xwaiter *w = r->waiters;

    if (r->prev != NULL || r->a->xc_runs == r) {
        if (r->prev)
            r->prev->next = r->next;
        else if (r->a->xc_runs == r)
            r->a->xc_runs = r->next;
        if (r->next)
            r->next->prev = r->prev;
    }
    if (r->done != NULL)
        r->done(r->arg, outcome, outcome == XC_LOCKED ? r->holder : "");
    while (w != NULL) {
        xwaiter *n = w->next;
        w->fn(w->arg);
        free(w);
        w = n;
    }
    json_decref(r->plan);
    json_decref(r->wkeys);
    json_decref(r->lkeys);
    free(r);
}

int xc_local_writes(app *a, json_t *readset, char *out, size_t n)
{
    const char *key;
    json_t *v;

    for (xrun *r = a->xc_runs; r != NULL; r = r->next)
        json_object_foreach(readset, key, v)
            if (json_object_get(r->wkeys, key) != NULL) {
                snprintf(out, n, "%s", r->txid);
                return 1;
            }
    return 0;
}

int xc_wait_local(app *a, const char *txid, void (*fn)(void *), void *arg)
{
    for (xrun *r = a->xc_runs; r != NULL; r = r->next)
        if (strcmp(r->txid, txid) == 0) {
            xwaiter *w = xcalloc(1, sizeof *w);
            w->fn = fn;
            w->arg = arg;
            w->next = r->waiters;
            r->waiters = w;
            return 1;
        }
    return 0;
}

/* Sends cmds (taken); 0, or -1 when the store is away (cmds freed). */
static int xsend(xrun *r, json_t *cmds, int acked, store_done_fn fn)
{
    int rc = acked ? store_exec_acked(r->a->st, cmds, 0, fn, r)
                   : store_exec(r->a->st, cmds, 0, fn, r);
    json_decref(cmds);
    return rc;
}

static int any_error(json_t *replies)
{
    size_t i;
    json_t *v;

    json_array_foreach(replies, i, v)
        if (store_is_error(v)) {
            log_err("cross-slot commit: redis refused a step: %.200s",
                    json_string_value(json_object_get(v, "$err")));
            return 1;
        }
    return 0;
}

static void on_finished(void *arg, int ok, json_t *replies)
{
    xrun *r = arg;

    (void)ok;                      /* a lost finish leaves the intent to the sweep */
    json_decref(replies);
    report(r, r->outcome);
}

static void finish(xrun *r, const char *state)
{
    json_t *cmds = json_pack("[[s,s,s,s,s,s,s,s]]", "EVAL", finish_lua, "2", r->intent, r->open,
                             state, XC_FENCE_TTL, r->txid);

    if (strcmp(state, "done") == 0)
        json_array_extend(cmds, json_object_get(r->plan, "after"));
    if (xsend(r, cmds, 0, on_finished) != 0)
        report(r, r->outcome);
}

static void on_rolled_back(void *arg, int ok, json_t *replies)
{
    xrun *r = arg;
    int bad = !ok || any_error(replies);

    json_decref(replies);
    if (bad) {
        report(r, r->outcome == XC_NOT_APPLIED ? XC_LOST : r->outcome);
        return;
    }
    finish(r, "aborted");
}

static void rollback(xrun *r)
{
    if (xsend(r, each_part(r, xc_rollback_cmd), 0, on_rolled_back) != 0)
        report(r, r->outcome == XC_NOT_APPLIED ? XC_LOST : r->outcome);
}

static void settle_read(xrun *r);
static void on_decided(void *arg, int ok, json_t *replies);

static void on_aborted(void *arg, int ok, json_t *replies)
{
    xrun *r = arg;
    json_t *v = json_array_get(replies, 0);

    if (!ok || store_is_error(v)) {
        json_decref(replies);
        report(r, XC_LOST);
        return;
    }
    if (json_integer_value(v) == 1) {
        json_decref(replies);
        rollback(r);
        return;
    }
    json_decref(replies);
    /* Not pending any more (or not old enough): look again. */
    if (r->owner && ++r->rounds < XC_SETTLE_ROUNDS)
        settle_read(r);
    else
        report(r, XC_LOST);
}

static void abort_run(xrun *r, int stale_ms)
{
    char ms[16];

    snprintf(ms, sizeof ms, "%d", stale_ms);
    if (xsend(r, json_pack("[[s,s,s,s,s]]", "EVAL", abort_lua, "1", r->intent, ms), 0,
             on_aborted) != 0)
        report(r, XC_LOST);
}

static void on_applied(void *arg, int ok, json_t *replies)
{
    xrun *r = arg;

    if (!ok || any_error(replies)) {
        /* Decided: whoever settles it next finishes the parts left. */
        json_decref(replies);
        report(r, XC_LOST);
        return;
    }
    json_decref(replies);
    if (r->owner)
        fault_point("apply");
    r->outcome = ok == STORE_UNACKED ? XC_LOST : XC_APPLIED;
    finish(r, "done");
}

static void apply(xrun *r)
{
    if (xsend(r, each_part(r, xc_apply_cmd), 1, on_applied) != 0)
        report(r, XC_LOST);
}

static void on_decided(void *arg, int ok, json_t *replies)
{
    xrun *r = arg;
    json_t *v = json_array_get(replies, 0);

    if (!ok || store_is_error(v)) {
        json_decref(replies);
        report(r, XC_LOST);
        return;
    }
    if (json_integer_value(v) != 1) {
        /* Someone took it for dead and aborted it: put our locks back. */
        json_decref(replies);
        r->outcome = XC_MOVED;
        rollback(r);
        return;
    }
    json_decref(replies);
    if (r->owner)
        fault_point("decide");
    apply(r);
}

/* The replies of prepare or validate: 0 when every part said 1, else
 * what to report once the commit is rolled back. */
static int step_outcome(xrun *r, json_t *replies, const char *step)
{
    size_t i;
    json_t *v;
    int outcome = 0;

    json_array_foreach(replies, i, v) {
        if (store_is_error(v)) {
            log_err("cross-slot commit: redis refused a %s: %.200s", step,
                    json_string_value(json_object_get(v, "$err")));
            outcome = XC_REFUSED;
        } else if (json_is_array(v) && outcome == 0) {
            char holder[48];
            outcome = XC_LOCKED;
            if (xc_lock_holder(json_string_value(json_array_get(v, 1)), holder, sizeof holder) &&
                strcmp(holder, r->txid) != 0)
                snprintf(r->holder, sizeof r->holder, "%s", holder);
        } else if (json_integer_value(v) == 2 && outcome != XC_REFUSED) {
            outcome = XC_MOVED;
        }
    }
    return outcome;
}

static void decide(xrun *r)
{
    if (xsend(r, json_pack("[[s,s,s,s]]", "EVAL", decide_lua, "1", r->intent), 0,
              on_decided) != 0)
        report(r, XC_LOST);
}

/* The end of prepare or validate (takes replies): 1 when every part said
 * yes; else the commit is reported lost, or rolled back and reported. */
static int step_passed(xrun *r, int ok, json_t *replies, const char *step)
{
    int outcome;

    if (!ok) {
        json_decref(replies);
        report(r, XC_LOST);
        return 0;
    }
    outcome = step_outcome(r, replies, step);
    json_decref(replies);
    if (outcome != 0) {
        r->outcome = outcome;
        abort_run(r, 0);
        return 0;
    }
    return 1;
}

static void on_validated(void *arg, int ok, json_t *replies)
{
    xrun *r = arg;

    if (!step_passed(r, ok, replies, "validation"))
        return;
    fault_point("prepare");
    decide(r);
}

static void on_prepared(void *arg, int ok, json_t *replies)
{
    xrun *r = arg;
    json_t *cmds;

    if (!step_passed(r, ok, replies, "prepare"))
        return;
    /* Every write locked: now what was only read (Silo's order: a commit
     * that writes one of those keys and read one of ours meets our lock). */
    cmds = each_part(r, xc_validate_cmd);
    if (json_array_size(cmds) == 0) {
        json_decref(cmds);
        fault_point("prepare");
        decide(r);
        return;
    }
    if (xsend(r, cmds, 0, on_validated) != 0)
        report(r, XC_LOST);
}

static void on_intent(void *arg, int ok, json_t *replies)
{
    xrun *r = arg;
    json_t *v = json_array_get(replies, 0);

    if (!ok) {
        json_decref(replies);
        report(r, XC_LOST);
        return;
    }
    if (store_is_error(v) || json_integer_value(v) != 1) {
        any_error(replies);
        json_decref(replies);
        report(r, XC_REFUSED);
        return;
    }
    json_decref(replies);
    fault_point("intent");
    if (xsend(r, each_part(r, xc_prepare_cmd), 0, on_prepared) != 0)
        report(r, XC_LOST);
}

static xrun *run_new(app *a, const char *txid, xc_done_fn done, void *arg)
{
    xrun *r = xcalloc(1, sizeof *r);

    r->a = a;
    snprintf(r->txid, sizeof r->txid, "%s", txid);
    intent_keys(a, txid, r->intent, r->open);
    r->done = done;
    r->arg = arg;
    return r;
}

static void start_run(void *arg)
{
    xrun *r = arg;
    char *text = json_dumps(r->plan, JSON_COMPACT);

    if (text == NULL)
        oom("json_dumps");
    if (xsend(r, json_pack("[[s,s,s,s,s,s,s]]", "EVAL", intent_lua, "2", r->intent, r->open, text,
                          r->txid), 0, on_intent) != 0)
        report(r, XC_LOST);         /* nothing sent: its owner finds no intent */
    free(text);
}

/* The version keys a plan locks (flags b and B): key -> true. */
static json_t *locked_keys(json_t *plan)
{
    json_t *out = json_object(), *part, *l;
    size_t i, k;

    json_array_foreach(json_object_get(plan, "parts"), i, part)
        json_array_foreach(json_object_get(part, "locks"), k, l)
            if (strcmp(json_string_value(json_array_get(l, 1)) ?: "c", "c") != 0)
                json_object_set_new(out, json_string_value(json_array_get(l, 0)), json_true());
    return out;
}

/* The newest commit running here that locks one of lkeys, or NULL. */
static xrun *overlapping(app *a, json_t *lkeys)
{
    const char *key;
    json_t *v;

    for (xrun *r = a->xc_runs; r != NULL; r = r->next)
        json_object_foreach(lkeys, key, v)
            if (json_object_get(r->lkeys, key) != NULL)
                return r;
    return NULL;
}

int xc_run(app *a, xc_plan *p, xc_done_fn done, void *arg)
{
    xrun *r, *before;

    if (!store_connected(a->st)) {
        xc_plan_free(p);
        return -1;
    }
    r = run_new(a, p->txid, done, arg);
    r->owner = 1;
    r->plan = plan_json(p);
    r->wkeys = json_incref(p->wkeys);
    r->lkeys = locked_keys(r->plan);
    xc_plan_free(p);
    /* Two commits of this daemon that write the same key (blind writes
     * too: key.create's ZADD to the team's key set) would meet each
     * other's locks and both run again from the start: the later one
     * waits for the earlier instead, and starts when it ends. */
    before = overlapping(a, r->lkeys);
    r->next = a->xc_runs;           /* listed for xc_wait_local */
    if (a->xc_runs)
        a->xc_runs->prev = r;
    a->xc_runs = r;
    if (before == NULL || !xc_wait_local(a, before->txid, start_run, r))
        start_run(r);
    return 0;
}

/* --- settling ---------------------------------------------------------- */

static void on_intent_read(void *arg, int ok, json_t *replies)
{
    xrun *r = arg;
    json_t *h = json_array_get(replies, 0);
    const char *state = NULL, *plan = NULL;

    if (!ok || !json_is_array(h)) {
        json_decref(replies);
        report(r, XC_LOST);
        return;
    }
    for (size_t i = 0; i + 1 < json_array_size(h); i += 2) {
        const char *f = json_string_value(json_array_get(h, i));
        if (f != NULL && strcmp(f, "state") == 0)
            state = json_string_value(json_array_get(h, i + 1));
        else if (f != NULL && strcmp(f, "plan") == 0)
            plan = json_string_value(json_array_get(h, i + 1));
    }
    if (state == NULL) {
        /* No intent: never made, or settled long ago. */
        json_decref(replies);
        report(r, XC_NOT_APPLIED);
        return;
    }
    json_decref(r->plan);
    r->plan = plan ? json_loads(plan, 0, NULL) : NULL;
    if (r->plan == NULL) {
        log_err("cross-slot commit %s: its intent holds no readable plan", r->txid);
        json_decref(replies);
        report(r, XC_LOST);
        return;
    }
    if (strcmp(state, "commit") == 0 || strcmp(state, "done") == 0) {
        json_decref(replies);
        apply(r);
    } else if (strcmp(state, "aborted") == 0) {
        json_decref(replies);
        r->outcome = XC_NOT_APPLIED;
        rollback(r);
    } else {
        json_decref(replies);
        r->outcome = XC_NOT_APPLIED;
        abort_run(r, r->owner ? 0 : XC_STALE_MS);
    }
}

static void settle_read(xrun *r)
{
    if (xsend(r, json_pack("[[s,s]]", "HGETALL", r->intent), 0, on_intent_read) != 0)
        report(r, XC_LOST);
}

void xc_settle(app *a, const char *txid, int owner, xc_done_fn done, void *arg)
{
    xrun *r = run_new(a, txid, done, arg);

    r->owner = owner;
    r->next = a->xc_runs;           /* listed for xc_forget */
    if (a->xc_runs)
        a->xc_runs->prev = r;
    a->xc_runs = r;
    settle_read(r);
}

void xc_forget(app *a, void *arg)
{
    for (xrun *r = a->xc_runs; r != NULL; r = r->next)
        if (r->arg == arg)
            r->done = NULL;
}

/* --- the writer's sweep ------------------------------------------------ */

static void on_open(void *arg, int ok, json_t *replies)
{
    app *a = arg;
    json_t *ids = json_array_get(replies, 0), *id;
    size_t i;

    if (ok && json_is_array(ids))
        json_array_foreach(ids, i, id)
            if (json_is_string(id)) {
                log_warn("cross-slot commit %s left open; settling it", json_string_value(id));
                xc_settle(a, json_string_value(id), 0, NULL, NULL);
            }
    json_decref(replies);
}

void xc_sweep(app *a)
{
    char intent[KGC_RKEY_MAX], open[KGC_RKEY_MAX], stale[16];
    json_t *cmds;

    if (a->cfg.ncluster == 0 || !lease_held(a) || !store_connected(a->st))
        return;
    snprintf(stale, sizeof stale, "%d", XC_STALE_MS);
    intent_keys(a, "", intent, open);
    cmds = json_pack("[[s,s,s,s,s,s]]", "EVAL", stale_lua, "1", open, stale, XC_SWEEP_BATCH);
    store_exec(a->st, cmds, 0, on_open, a);
    json_decref(cmds);
}

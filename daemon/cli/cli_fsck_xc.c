/*
 * cli_fsck_xc.c - `keygate fsck` and commits across slots (Redis Cluster,
 * daemon/xcommit.h; docs/redis-schema.md "Cross-slot commits").
 *
 * A commit whose keys span slots leaves, while it runs, an intent
 * P {xtx}:<txid> (state pending|commit|aborted, its id in P {xtx}:open),
 * locks "L <txid> <old value>" in its version keys (P v:...) and a marker
 * P {~n}xu:<txid> per slot. A keygated killed between the steps leaves
 * them there until some keygated settles them. What fsck makes of them:
 *
 *   pass 1 (cli_fsck_scan.c) calls fsck_xc_seen for every string and hash
 *          it reads: intents not yet done, and values that are locks, are
 *          noted (only those: a few per commit in flight, not one per
 *          version key of the store);
 *   pass 2 (fsck_pass_xc), before the model's checks, on a consistent view
 *          of each (WATCH, as everywhere in fsck):
 *          - an intent not done (or done but still in the open set) older
 *            than XC_STALE_MS by Redis' clock (TIME on the intent's node):
 *            `xcommit_open`; a younger one is a commit in progress, only
 *            counted (counts.xcommits_in_progress);
 *          - a lock or marker whose intent is gone, done, or aborted and
 *            finished: `xcommit_lock_orphan` (nobody would ever put it
 *            back: a reader that meets it waits for a commit that is over);
 *   --repair (fsck_repair_xc), after pass 2: each of those settled exactly
 *          as keygated's xc_settle with owner 0 does it, with the same
 *          scripts (xcommit_lua.h) and the same per-slot commands
 *          (xcommit_plan.c), each EVAL to the master of its part's slot:
 *          commit|done: apply every part (idempotent: the marker), then
 *          finish(done) and the plan's PUBLISHes; pending: abort only if
 *          still pending and XC_STALE_MS old (Redis' clock, in the
 *          script), then roll back every part and finish(aborted);
 *          aborted: roll back and finish(aborted); an orphan lock: its old
 *          value put back (rollback_lua on that one key: only if it still
 *          is that commit's lock).
 *
 * The model's checks run after the repairs, so they judge the store as
 * the settled commits left it. A single node never holds these keys
 * (keygated commits in one script there); the pass then finds nothing.
 */
#include "cli_fsck.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kgc_keys.h"
#include "xcommit_lua.h"
#include "xcommit_plan.h"

#define XC_TXID_MAX 48
#define XC_SETTLE_ROUNDS 3      /* a pending intent read again after a refused abort */

/* --- pass 1 ----------------------------------------------------------------- */

/* name: the key without the prefix. A version key is v:..., a marker
 * {tag}xu:<txid>. */
static int lock_shaped(const char *name)
{
    const char *xu;

    if (strncmp(name, "v:", 2) == 0)
        return 1;
    return name[0] == '{' && (xu = strstr(name, "}xu:")) != NULL && strchr(name, '}') == xu;
}

void fsck_xc_seen(fsck *f, const char *key, size_t keylen, const char *type, const redisReply *r)
{
    const char *name;
    char txid[XC_TXID_MAX];

    if (r == NULL || keylen <= f->plen || strlen(key) != keylen ||
        memcmp(key, f->prefix, f->plen) != 0)
        return;
    name = key + f->plen;
    if (strcmp(type, "hash") == 0 && strncmp(name, "{xtx}:", 6) == 0 &&
        strcmp(name + 6, "open") != 0) {
        const char *st = fsck_hfield(r, "state");
        /* done ones are settled: they expire by themselves */
        if (st == NULL || strcmp(st, "done") != 0)
            json_object_set_new(f->xc_intents, name + 6, json_true());
    } else if (strcmp(type, "string") == 0 && fsck_is_str(r) && lock_shaped(name) &&
               xc_lock_holder(r->str, txid, sizeof txid)) {
        json_object_set_new(f->xc_locks, key, json_string(txid));
    }
}

/* --- pass 2 ----------------------------------------------------------------- */

static void intent_keys(fsck *f, const char *txid, char *intent, char *open)
{
    fsck_rk(f, intent, "{xtx}:%s", txid);
    fsck_rk(f, open, "{xtx}:open");
}

/* Redis' clock in ms on the node of key; -1 when it did not answer one. */
static long long redis_now_ms(fsck *f, const char *key)
{
    const char *argv[1] = {"TIME"};
    redisReply *t = fsck_rcmd_at(f, key, 1, argv, NULL);
    long long ms = -1;

    if (t != NULL && t->type == REDIS_REPLY_ARRAY && t->elements == 2 &&
        fsck_is_str(t->element[0]) && fsck_is_str(t->element[1]))
        ms = atoll(t->element[0]->str) * 1000 + atoll(t->element[1]->str) / 1000;
    if (t)
        freeReplyObject(t);
    return ms;
}

/* 1 if txid is a member of the open set (read, not watched: finish takes
 * it off in the script that also changes the watched intent). */
static int in_open_set(fsck *f, const char *open, const char *txid)
{
    const char *argv[3] = {"ZSCORE", open, txid};
    redisReply *r = fsck_rcmd(f, 3, argv, NULL);
    int in = r != NULL && r->type == REDIS_REPLY_STRING;

    if (r)
        freeReplyObject(r);
    return in;
}

static void want_repair(fsck *f, const char *kind, const char *key, const char *txid)
{
    json_array_append_new(f->xc_pending, json_pack("{s:s,s:s,s:s}", "kind", kind, "key", key,
                                                   "txid", txid));
}

/* fsck_check: the intent of commit txid. */
static int check_intent(fsck *f, const char *txid, const char *unused)
{
    char ik[KGC_RKEY_MAX], ok[KGC_RKEY_MAX];
    redisReply *h;
    const char *state, *at;
    long long now, age;
    int open;

    (void)unused;
    json_array_clear(f->xc_pending);
    f->xc_young_pending = 0;
    intent_keys(f, txid, ik, ok);
    if ((h = fsck_wread1(f, ik, "HGETALL", NULL)) == NULL)
        return -1;
    open = in_open_set(f, ok, txid);
    now = redis_now_ms(f, ik);
    state = fsck_hfield(h, "state");
    at = fsck_hfield(h, "at");
    age = now >= 0 && at != NULL ? now - atoll(at) : -1;
    if (f->broken) {
        freeReplyObject(h);
        return -1;
    }
    if (state == NULL) {
        if (open) {
            fsck_problem_kind(f, "xcommit_open", ik, strlen(ik),
                              "commit %s is in the open set %s, but its intent is gone", txid, ok);
            want_repair(f, "xcommit_open", ik, txid);
        }
        /* else: gone since pass 1 */
    } else if ((strcmp(state, "done") == 0 || strcmp(state, "aborted") == 0) && !open) {
        /* settled */
    } else if (strcmp(state, "pending") != 0 && strcmp(state, "commit") != 0 &&
               strcmp(state, "aborted") != 0 && strcmp(state, "done") != 0) {
        fsck_problem_kind(f, "xcommit_open", ik, strlen(ik),
                          "commit %s: unknown state '%.40s'; nothing settles it", txid, state);
    } else if (age < 0) {
        fsck_problem_kind(f, "xcommit_open", ik, strlen(ik),
                          "commit %s: state %s, no readable time 'at' (or no TIME from Redis)",
                          txid, state);
        want_repair(f, "xcommit_open", ik, txid);
    } else if (age >= XC_STALE_MS) {
        fsck_problem_kind(f, "xcommit_open", ik, strlen(ik),
                          "commit across slots left open: state %s, %lld ms old (over %d ms: "
                          "its keygated died between the steps?); %s", state, age, XC_STALE_MS,
                          strcmp(state, "pending") == 0   ? "settling rolls it back"
                          : strcmp(state, "aborted") == 0 ? "settling ends its roll back"
                                                          : "settling rolls it forward");
        want_repair(f, "xcommit_open", ik, txid);
    } else {
        f->xc_young_pending = 1;   /* a commit in progress: counted once the view holds */
    }
    freeReplyObject(h);
    return fsck_watch_commit(f);
}

/* fsck_check: a lock (or marker) key held by commit txid. */
static int check_lock(fsck *f, const char *key, const char *txid)
{
    char ik[KGC_RKEY_MAX], ok[KGC_RKEY_MAX], holder[XC_TXID_MAX];
    redisReply *v, *h;
    const char *state;
    int open, rc;

    json_array_clear(f->xc_pending);
    f->xc_young_pending = 0;
    if ((v = fsck_wread1(f, key, "GET", NULL)) == NULL)
        return -1;
    if (!fsck_is_str(v) || !xc_lock_holder(v->str, holder, sizeof holder) ||
        strcmp(holder, txid) != 0) {
        freeReplyObject(v);
        return fsck_watch_commit(f);           /* put back since pass 1 */
    }
    intent_keys(f, txid, ik, ok);
    if ((h = fsck_wread1(f, ik, "HGETALL", NULL)) == NULL) {
        freeReplyObject(v);
        return -1;
    }
    open = in_open_set(f, ok, txid);
    state = fsck_hfield(h, "state");
    if (f->broken) {
        rc = -1;
    } else {
        if (state == NULL || strcmp(state, "done") == 0 ||
            (strcmp(state, "aborted") == 0 && !open)) {
            fsck_problem_kind(f, "xcommit_lock_orphan", key, strlen(key),
                              "locked by commit %s, whose intent %s; nothing will put back its "
                              "old value", txid, state == NULL ? "is gone"
                              : strcmp(state, "done") == 0 ? "is done" : "was rolled back");
            want_repair(f, "xcommit_lock_orphan", key, txid);
        }
        /* else: its commit is open, judged with its intent */
        rc = fsck_watch_commit(f);
    }
    freeReplyObject(v);
    freeReplyObject(h);
    return rc;
}

/* Keeps what the check's last (consistent) run asked to repair. */
static void keep_repairs(fsck *f)
{
    if (!f->broken) {
        json_array_extend(f->xc_repairs, f->xc_pending);
        f->n.xc_young += f->xc_young_pending;
    }
    json_array_clear(f->xc_pending);
    f->xc_young_pending = 0;
}

void fsck_pass_xc(fsck *f)
{
    char ik[KGC_RKEY_MAX], ok[KGC_RKEY_MAX];
    const char *id;
    json_t *v;

    /* The open set's members too (an intent SCAN met before it was made
     * is there; one it met is read again). Bounded: commits in flight. */
    intent_keys(f, "", ik, ok);
    for (long long off = 0; !f->broken; off += FSCK_CHUNK) {
        char a[32], b[32];
        const char *argv[4] = {"ZRANGE", ok, a, b};
        redisReply *r;

        snprintf(a, sizeof a, "%lld", off);
        snprintf(b, sizeof b, "%lld", off + FSCK_CHUNK - 1);
        if ((r = fsck_rcmd(f, 4, argv, NULL)) == NULL)
            return;
        if (r->type == REDIS_REPLY_ARRAY)
            for (size_t i = 0; i < r->elements; i++)
                if (fsck_is_str(r->element[i]) && strlen(r->element[i]->str) < XC_TXID_MAX)
                    json_object_set_new(f->xc_intents, r->element[i]->str, json_true());
        if (r->type != REDIS_REPLY_ARRAY || r->elements < FSCK_CHUNK) {
            freeReplyObject(r);
            break;
        }
        freeReplyObject(r);
    }
    json_object_foreach(f->xc_intents, id, v) {
        fsck_run_check(f, check_intent, id, NULL);
        keep_repairs(f);
    }
    json_object_foreach(f->xc_locks, id, v) {
        fsck_run_check(f, check_lock, id, json_string_value(v));
        keep_repairs(f);
    }
}

/* --- --repair ----------------------------------------------------------------- */

/* Runs cmd (a JSON array of strings and integers) on the master of
 * route's slot. Returns the reply (caller frees), or NULL (broken, or a
 * bad argument: err says). */
static redisReply *run_json(fsck *f, const char *route, json_t *cmd, char *err, size_t errlen)
{
    size_t n = json_array_size(cmd);
    const char **argv = calloc(n ? n : 1, sizeof *argv);
    size_t *lens = calloc(n ? n : 1, sizeof *lens);
    char (*nums)[24] = calloc(n ? n : 1, sizeof *nums);
    redisReply *r = NULL;

    if (argv == NULL || lens == NULL || nums == NULL) {
        fputs("error: internal: out of memory\n", stderr);
        abort();
    }
    for (size_t i = 0; i < n; i++) {
        json_t *a = json_array_get(cmd, i);
        if (json_is_string(a)) {
            argv[i] = json_string_value(a);
            lens[i] = json_string_length(a);
        } else if (json_is_integer(a)) {
            lens[i] = (size_t)snprintf(nums[i], sizeof nums[i], "%" JSON_INTEGER_FORMAT,
                                       json_integer_value(a));
            argv[i] = nums[i];
        } else {
            snprintf(err, errlen, "the plan holds a command argument that is not a string");
            goto out;
        }
    }
    if (n == 0) {
        snprintf(err, errlen, "the plan holds an empty command");
        goto out;
    }
    r = fsck_rcmd_at(f, route, (int)n, argv, lens);
    if (r == NULL)
        snprintf(err, errlen, "redis: %s", f->broken_why);
out:
    free(argv);
    free(lens);
    free(nums);
    return r;
}

/* Runs cmd, taken; 0, or -1 with the reason in err (Redis refused it too). */
static int run_step(fsck *f, const char *route, json_t *cmd, char *err, size_t errlen)
{
    redisReply *r = run_json(f, route, cmd, err, errlen);
    int rc = 0;

    json_decref(cmd);
    if (r == NULL)
        return -1;
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "redis refused a step: %.200s", r->str);
        rc = -1;
    }
    freeReplyObject(r);
    return rc;
}

/* The build of every part's command (xcommit_plan.c), each run on the
 * master of its part's slot (its marker's), as xcommit.c's each_part
 * sends them. */
static int each_part(fsck *f, const char *txid, json_t *plan,
                     json_t *(*build)(const char *, json_t *), char *err, size_t errlen)
{
    json_t *part;
    size_t i;

    json_array_foreach(json_object_get(plan, "parts"), i, part) {
        const char *marker = json_string_value(json_object_get(part, "marker"));
        json_t *cmd;
        if (marker == NULL) {
            snprintf(err, errlen, "a part of the plan has no marker");
            return -1;
        }
        if ((cmd = build(txid, part)) == NULL)
            continue;                   /* nothing to do on that part (xcommit_plan.h) */
        if (run_step(f, marker, cmd, err, errlen) != 0)
            return -1;
    }
    return 0;
}

/* finish_lua with state, then (done) the plan's keyless commands. */
static int finish(fsck *f, const char *txid, json_t *plan, const char *state, char *err,
                  size_t errlen)
{
    char ik[KGC_RKEY_MAX], ok[KGC_RKEY_MAX];
    json_t *c;
    size_t i;

    intent_keys(f, txid, ik, ok);
    if (run_step(f, ik, json_pack("[s,s,s,s,s,s,s,s]", "EVAL", finish_lua, "2", ik, ok, state,
                                  XC_FENCE_TTL, txid), err, errlen) != 0)
        return -1;
    if (strcmp(state, "done") == 0 && plan != NULL)
        json_array_foreach(json_object_get(plan, "after"), i, c)
            if (run_step(f, ik, json_incref(c), err, errlen) != 0)
                return -1;
    return 0;
}

/* Settles commit txid as xc_settle(owner 0) does. 1 settled (how in
 * what), 0 left as it is (young, or changed: why in what), -1 failed. */
static int settle(fsck *f, const char *txid, char *what, size_t wn)
{
    char ik[KGC_RKEY_MAX], ok[KGC_RKEY_MAX], err[300];

    intent_keys(f, txid, ik, ok);
    for (int round = 0; round < XC_SETTLE_ROUNDS; round++) {
        const char *hg[2] = {"HGETALL", ik};
        redisReply *h = fsck_rcmd_at(f, ik, 2, hg, NULL);
        const char *state = fsck_hfield(h, "state"), *text = fsck_hfield(h, "plan");
        json_t *plan = text ? json_loads(text, 0, NULL) : NULL;
        char st[16];
        int rc = -1;

        if (h == NULL) {
            snprintf(what, wn, "redis: %s", f->broken_why);
            return -1;
        }
        snprintf(st, sizeof st, "%s", state ? state : "");
        freeReplyObject(h);
        if (st[0] == '\0') {
            /* No intent: only its id in the open set to take off. */
            json_decref(plan);
            if (finish(f, txid, NULL, "aborted", err, sizeof err) != 0)
                goto failed;
            snprintf(what, wn, "no intent: taken off the open set");
            return 1;
        }
        if (plan == NULL || !json_is_array(json_object_get(plan, "parts"))) {
            json_decref(plan);
            snprintf(what, wn, "its intent holds no readable plan: left as it is");
            return -1;
        }
        if (strcmp(st, "commit") == 0 || strcmp(st, "done") == 0) {
            if (each_part(f, txid, plan, xc_apply_cmd, err, sizeof err) == 0 &&
                finish(f, txid, plan, "done", err, sizeof err) == 0) {
                snprintf(what, wn, "state %s: every part applied, finished done", st);
                rc = 1;
            }
        } else if (strcmp(st, "aborted") == 0) {
            if (each_part(f, txid, plan, xc_rollback_cmd, err, sizeof err) == 0 &&
                finish(f, txid, plan, "aborted", err, sizeof err) == 0) {
                snprintf(what, wn, "state aborted: every part rolled back, finished aborted");
                rc = 1;
            }
        } else if (strcmp(st, "pending") == 0) {
            char ms[16];
            const char *argv[5] = {"EVAL", abort_lua, "1", ik, ms};
            redisReply *a;

            snprintf(ms, sizeof ms, "%d", XC_STALE_MS);
            if ((a = fsck_rcmd_at(f, ik, 5, argv, NULL)) == NULL) {
                json_decref(plan);
                snprintf(what, wn, "redis: %s", f->broken_why);
                return -1;
            }
            if (a->type == REDIS_REPLY_ERROR) {
                snprintf(err, sizeof err, "redis refused the abort: %.200s", a->str);
            } else if (a->type == REDIS_REPLY_INTEGER && a->integer == 1) {
                if (each_part(f, txid, plan, xc_rollback_cmd, err, sizeof err) == 0 &&
                    finish(f, txid, plan, "aborted", err, sizeof err) == 0) {
                    snprintf(what, wn, "state pending: aborted, every part rolled back, "
                             "finished aborted");
                    rc = 1;
                }
            } else {
                /* decided meanwhile, or not XC_STALE_MS old by Redis' clock: again */
                rc = 0;
            }
            freeReplyObject(a);
        } else {
            snprintf(err, sizeof err, "unknown state '%.40s'", st);
        }
        json_decref(plan);
        if (rc == 1)
            return 1;
        if (rc < 0)
            goto failed;
    }
    snprintf(what, wn, "still pending and not %d ms old by Redis' clock: left to its keygated",
             XC_STALE_MS);
    return 0;
failed:
    snprintf(what, wn, "%s", err);
    return -1;
}

/* An orphan lock (or marker) of txid: its old value put back, if it still
 * is that lock. */
static int unlock(fsck *f, const char *key, const char *txid, char *what, size_t wn)
{
    char err[300];

    if (run_step(f, key, json_pack("[s,s,s,s,s,s]", "EVAL", rollback_lua, "1", key, txid,
                                   XC_VERSION_TTL), err, sizeof err) != 0) {
        snprintf(what, wn, "%s", err);
        return -1;
    }
    snprintf(what, wn, "commit %s's lock replaced by the value from before it (none: deleted)",
             txid);
    return 1;
}

static void note_repair(fsck *f, const char *kind, const char *key, const char *what, int done)
{
    char safe[600], swhat[700];

    fsck_safe_text(f, key, strlen(key), safe, sizeof safe);
    fsck_safe_text(f, what, strlen(what), swhat, sizeof swhat);
    if (!f->json)
        printf("%s: %s: %s: %s\n", done ? "repaired" : "not repaired", safe, kind, swhat);
    json_array_append_new(done ? f->repaired : f->unrepaired,
                          json_pack("{s:s,s:s,s:s}", "key", safe, "kind", kind, "action", swhat));
}

void fsck_repair_xc(fsck *f)
{
    json_t *r;
    size_t i;

    /* Intents first: settling one puts back its own locks, which then
     * are no orphans (unlock would find them gone and do nothing). */
    for (int pass = 0; pass < 2; pass++)
        json_array_foreach(f->xc_repairs, i, r) {
            const char *kind = json_string_value(json_object_get(r, "kind"));
            const char *key = json_string_value(json_object_get(r, "key"));
            const char *txid = json_string_value(json_object_get(r, "txid"));
            int is_intent = strcmp(kind, "xcommit_open") == 0, rc;
            char what[400];

            if (is_intent != (pass == 0) || f->broken)
                continue;
            rc = is_intent ? settle(f, txid, what, sizeof what)
                           : unlock(f, key, txid, what, sizeof what);
            note_repair(f, kind, key, what, rc == 1);
            f->n.repaired += rc == 1;
        }
    json_array_clear(f->xc_repairs);
}

/*
 * job_commit.c - a mutating command's writes as one fenced commit: the
 * audit entry, the version bumps, the plan (one slot: one script; several
 * slots: xcommit.h's steps), and commit_lua itself.
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
void job_append_audit(job *j, json_t *cmds)
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
            job_cmd_keys(c, bump_one, set);
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
        job_cmd_keys(c, slot_of_key, &slot);
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
        job_cmd_keys(c, plan_writes_one, p);
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
json_t *job_commit_wrap(job *j, json_t *q)
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
                job_version_key(j->app, key, vk);
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
        job_version_key(j->app, key, vk);
        json_array_append_new(keys, json_pack("[s,s]", vk, json_is_string(v) ?
                                              json_string_value(v) : ""));
        json_object_set(j->checked, key, v);
    }
    json_object_foreach(bumps, key, v) {
        json_t *cv = json_object_get(j->checked, key);
        if (cv == NULL || json_object_get(j->readset, key) != NULL)
            continue;
        job_version_key(j->app, key, vk);
        json_array_append_new(keys, json_pack("[s,s]", vk, json_is_string(cv) ?
                                              json_string_value(cv) : ""));
    }
    nv = json_array_size(keys);
    json_object_foreach(j->claims, key, v)
        json_array_append_new(keys, json_pack("[s,O]", key, v));
    ncl = json_array_size(keys) - nv;
    json_object_foreach(bumps, key, v) {
        job_version_key(j->app, key, vk);
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
            job_cmd_keys(c, bump_one, data);
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


/*
 * cmd_team.c - team.get, team.member.*, team.transfer_ownership, audit.list.
 * The engine has already checked that the actor belongs to the team with
 * the row's role; the finer rules of SPEC §1 (what an admin may do to whom)
 * are here.
 */
#include "cmd.h"
#include "log.h"
#include "model.h"
#include "paging.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>


static json_t *members(job *j)
{
    return json_object_get(j->team, "members");
}

static json_t *member_view(const json_t *user, const char *role)
{
    return json_pack("{s:O,s:O,s:O,s:s}", "user_id", json_object_get(user, "user_id"),
                     "email", json_object_get(user, "email"), "name",
                     json_object_get(user, "name"), "role", role);
}

static json_t *team_view(job *j, json_t *user_docs)
{
    json_t *out = json_pack("{s:O,s:O,s:O,s:O,s:[]}", "team_id", json_object_get(j->team, "team_id"),
                            "name", json_object_get(j->team, "name"), "free_key_id",
                            json_object_get(j->team, "free_key_id"), "created_at",
                            json_object_get(j->team, "created_at"), "members");
    json_t *list = json_object_get(out, "members"), *u;
    size_t i;

    json_array_foreach(user_docs, i, u) {
        const char *uid = json_string_value(json_object_get(u, "user_id"));
        const char *role = json_string_value(json_object_get(members(j), uid ? uid : ""));
        if (role != NULL)
            json_array_append_new(list, member_view(u, role));
    }
    return out;
}

/* The user documents of every reply of the round (new array). */
static json_t *read_members_docs(job *j)
{
    json_t *out = json_array(), *r;
    size_t i;

    json_array_foreach(j->rr, i, r) {
        json_t *docs = parse_list(r);
        json_array_extend(out, docs);
        json_decref(docs);
    }
    return out;
}

/* Members by user id; with `limit` a page of them after `cursor`
 * ("M1.<user_id>", docs/protocol.md "Paging"), else all. The member ids
 * of the page, in order, are the scratch array; NULL after job_fail. */
static int by_uid(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static json_t *members_page(job *j, char *next)
{
    json_t *lim = arg(j, "limit"), *out = json_array(), *role;
    const char *cur = arg_str(j, "cursor"), *uid, **ids;
    long long limit = -1;
    size_t n = 0, i;

    next[0] = '\0';
    if (lim != NULL && (limit = read_limit(j, 1000)) < 0) {
        json_decref(out);
        return NULL;
    }
    if (cur != NULL && (strncmp(cur, "M1.", 3) != 0 || !kgc_id_plausible(cur + 3))) {
        json_decref(out);
        job_fail(j, "bad_request", "'cursor' is not a cursor of this list");
        return NULL;
    }
    ids = xcalloc(json_object_size(members(j)) + 1, sizeof *ids);
    json_object_foreach(members(j), uid, role)
        ids[n++] = uid;
    qsort(ids, n, sizeof *ids, by_uid);
    for (i = 0; i < n; i++) {
        if (cur != NULL && strcmp(ids[i], cur + 3) <= 0)
            continue;
        if (limit >= 0 && (long long)json_array_size(out) == limit) {
            snprintf(next, PAGE_CURSOR_MAX, "M1.%s", json_string_value(json_array_get(out, json_array_size(out) - 1)));
            break;
        }
        json_array_append_new(out, json_string(ids[i]));
    }
    free(ids);
    return out;
}

/* Reads the user documents of ids: MGETs of PAGE_BATCH_MAX keys at most. */
static void read_member_docs(job *j, json_t *ids)
{
    json_t *cmd = NULL, *id;
    size_t i;

    json_array_foreach(ids, i, id) {
        if (cmd == NULL)
            cmd = json_pack("[s]", "MGET");
        json_array_append_new(cmd, json_string(rk(j, KGC_RK_USER, json_string_value(id))));
        if (json_array_size(cmd) > PAGE_BATCH_MAX) {
            job_read_cmd(j, cmd);
            cmd = NULL;
        }
    }
    if (cmd != NULL)
        job_read_cmd(j, cmd);
}

typedef struct team_read {
    int docs;                     /* the user documents were asked for */
    char next[PAGE_CURSOR_MAX];   /* team.get's next_cursor, "" if none */
} team_read;

/* Stage after the members are all in j->team: asks for the documents of
 * the page (all members without `limit`). -1 after job_fail. */
static int team_read_docs(job *j, team_read *t)
{
    json_t *ids = members_page(j, t->next);

    if (ids == NULL)
        return -1;
    read_member_docs(j, ids);
    json_decref(ids);
    t->docs = 1;
    return 0;
}

/* First read of team.get's answer: all the members (their documents at
 * once for a legacy team, which holds them all already). */
static job_step team_read_start(job *j, team_read *t)
{
    if (!j->legacy_members) {
        members_read_all(j);
        return J_READ;
    }
    return team_read_docs(j, t) != 0 ? J_FAIL : J_READ;
}

job_step cmd_team_get(job *j)
{
    team_read *t = job_scratch(j, sizeof *t);
    json_t *docs;

    if (j->stage == 0)
        return J_READ;
    if (j->stage == 1) {
        memset(t, 0, sizeof *t);
        return team_read_start(j, t);
    }
    if (!t->docs) {
        members_all_loaded(j, job_reply(j, 0));
        if (team_read_docs(j, t) != 0)
            return J_FAIL;
        return J_READ;
    }
    docs = read_members_docs(j);
    j->result = team_view(j, docs);
    if (t->next[0] != '\0')
        json_object_set_new(j->result, "next_cursor", json_string(t->next));
    json_decref(docs);
    return J_DONE;
}

static int role_arg(job *j, const char **role)
{
    *role = arg_str(j, "role");
    if (*role == NULL || (strcmp(*role, "admin") != 0 && strcmp(*role, "user") != 0)) {
        job_fail(j, "bad_request", "'role' must be \"admin\" or \"user\" (ownership moves with team.transfer_ownership)");
        return -1;
    }
    return 0;
}

job_step cmd_team_member_add(job *j)
{
    const char *user = arg_str(j, "user"), *email = arg_str(j, "email"), *role, *uid;
    json_t *doc;
    char lower[256];

    if (j->stage == 0) {
        if (user != NULL && kgc_id_plausible(user))
            job_read(j, "GET", rk(j, KGC_RK_USER, user), NULL);
        else if (email != NULL && strlen(email) < sizeof lower) {
            for (size_t i = 0; i <= strlen(email); i++)
                lower[i] = (char)(email[i] >= 'A' && email[i] <= 'Z' ? email[i] + 32 : email[i]);
            job_read(j, "GET", rk(j, KGC_RK_EMAIL, lower), NULL);
        }
        return J_READ;
    }
    if (role_arg(j, &role) != 0)
        return J_FAIL;
    if (strcmp(j->role, "admin") == 0 && strcmp(role, "user") != 0)
        return job_fail(j, "forbidden", "an admin may add members with role \"user\" only");
    if (user == NULL && email == NULL)
        return job_fail(j, "bad_request", "'user' or 'email' is required");
    if (j->stage == 1 && user == NULL) {
        /* Email resolved to a user id: now read that user and its role
         * here (the engine read the roles of the actor and `user` only). */
        uid = json_string_value(job_reply(j, 0));
        if (uid == NULL)
            return job_fail(j, "not_found", "no user with that email");
        if (!kgc_id_plausible(uid))
            return job_fail(j, "internal", "the store holds a bad user id for that email");
        job_read(j, "GET", rk(j, KGC_RK_USER, uid), NULL);
        if (!j->legacy_members)
            job_read(j, "HGET", rk(j, KGC_RK_MEMBERS, j->team_id), uid, NULL);
        return J_READ;
    }
    doc = job_reply_json(j, 0);
    if (doc == NULL)
        return job_fail(j, "not_found", "no such user");
    uid = json_string_value(json_object_get(doc, "user_id"));
    if (uid == NULL || json_object_get(members(j), uid) != NULL ||
        (user == NULL && json_is_string(job_reply(j, 1)))) {
        json_decref(doc);
        return job_fail(j, "conflict", "already a member");
    }
    snprintf(j->target, sizeof j->target, "%s", uid);
    member_set(j, uid, role);
    job_write(j, "SADD", rk(j, KGC_RK_USERTEAMS, uid), j->team_id, NULL);
    j->result = member_view(doc, role);
    json_decref(doc);
    return J_WRITE;
}

/* The target member of set_role/remove/transfer, checked against the
 * actor's powers. Returns its role, or NULL after job_fail. */
static const char *target_member(job *j, const char *uid, int admin_limited)
{
    const char *trole = json_string_value(json_object_get(members(j), uid ? uid : ""));

    if (trole == NULL) {
        job_fail(j, "not_found", "no such member");
        return NULL;
    }
    snprintf(j->target, sizeof j->target, "%s", uid);
    if (strcmp(trole, "owner") == 0) {
        job_fail(j, "forbidden", "the owner's role changes only with team.transfer_ownership");
        return NULL;
    }
    if (admin_limited && strcmp(j->role, "admin") == 0 && strcmp(trole, "user") != 0) {
        job_fail(j, "forbidden", "an admin may act on members with role \"user\" only");
        return NULL;
    }
    return trole;
}

job_step cmd_team_member_set_role(job *j)
{
    const char *uid = arg_str(j, "user"), *role;
    json_t *doc;

    if (j->stage == 0) {
        if (kgc_id_plausible(uid))
            job_read(j, "GET", rk(j, KGC_RK_USER, uid), NULL);
        return J_READ;
    }
    if (role_arg(j, &role) != 0 || target_member(j, uid, 1) == NULL)
        return J_FAIL;
    if (strcmp(j->role, "admin") == 0 && strcmp(role, "user") != 0)
        return job_fail(j, "forbidden", "an admin may give role \"user\" only");
    doc = job_reply_json(j, 0);
    if (doc == NULL)
        return job_fail(j, "not_found", "no such user");
    member_set(j, uid, role);
    j->result = member_view(doc, role);
    json_decref(doc);
    return J_WRITE;
}

/* team.member.remove walks the team's keys MEMBER_BATCH at a time: list
 * (ZRANGE by rank), read (MGET), unassign the member and delete their
 * tokens. A batch that changed something is committed before the next one
 * is read (cmd.h, more_commits): one commit writes at most 3 keys per key
 * read (the document, the token and one in its grace period), so at most
 * PAGE_BATCH_MAX keys. The last commit drops the member from the team.
 * In between, the member is still a member, with fewer keys: a valid
 * state, and running the command again finishes it. The keys zset does
 * not change meanwhile in this daemon (key.create cannot commit before
 * this command); another daemon's key.create adds a key at its end (the
 * latest score), where a later batch reads it. */
#define MEMBER_BATCH (PAGE_BATCH_MAX / 3)

typedef struct member_walk {
    long long pos;                /* rank of the next key to list */
    int phase;                    /* MW_IDS, MW_DOCS, MW_COMMITTED */
    long long n;                  /* keys in the batch being read */
} member_walk;

enum { MW_IDS = 1, MW_DOCS, MW_COMMITTED };

static job_step member_list_keys(job *j, member_walk *w)
{
    char from[24], to[24];

    snprintf(from, sizeof from, "%lld", w->pos);
    snprintf(to, sizeof to, "%lld", w->pos + MEMBER_BATCH - 1);
    job_read(j, "ZRANGE", rk(j, KGC_RK_KEYS, j->team_id), from, to, NULL);
    w->phase = MW_IDS;
    return J_READ;
}

/* Queues the unassignment of uid from the key documents of reply 0;
 * returns how many changed. */
static int member_unassign(job *j, const char *uid)
{
    json_t *docs = parse_list(job_reply(j, 0)), *id;
    size_t i;
    int n = 0;

    json_array_foreach(docs, i, id) {
        json_t *users = json_object_get(id, "users"), *u;
        size_t k;
        int changed = key_drop_tokens(j, id, uid);

        json_array_foreach(users, k, u)
            if (strcmp(json_string_value(u), uid) == 0) {
                json_array_remove(users, k);
                ukeys_del(j, id, uid);
                changed = 1;
                break;
            }
        if (changed) {
            json_object_set_new(id, "updated_at", json_integer(now_ms()));
            job_write_json(j, rk(j, KGC_RK_KEY, j->team_id,
                                 json_string_value(json_object_get(id, "key_id"))), id);
            job_publish(j, "key %s", json_string_value(json_object_get(id, "key_id")));
            n++;
        }
    }
    json_decref(docs);
    return n;
}

job_step cmd_team_member_remove(job *j)
{
    const char *uid = arg_str(j, "user");
    member_walk *w = job_scratch(j, sizeof *w);
    json_t *ids;

    if (j->stage == 0)
        return J_READ;
    if (j->stage == 1) {
        memset(w, 0, sizeof *w);            /* a re-run starts over */
        if (target_member(j, uid, 1) == NULL)
            return J_FAIL;
        return member_list_keys(j, w);
    }
    if (w->phase == MW_COMMITTED) {
        w->pos += MEMBER_BATCH;
        return member_list_keys(j, w);
    }
    if (w->phase == MW_IDS) {
        ids = job_reply(j, 0);
        w->n = (long long)json_array_size(ids);
        if (w->n > 0) {
            read_keys(j, ids);
            w->phase = MW_DOCS;
            return J_READ;
        }
    } else if (member_unassign(j, uid) > 0 && w->n == MEMBER_BATCH) {
        j->more_commits = 1;
        j->after_write = 1;
        w->phase = MW_COMMITTED;
        return J_WRITE;
    } else if (w->n == MEMBER_BATCH) {
        w->pos += MEMBER_BATCH;             /* nothing to change here: next batch */
        return member_list_keys(j, w);
    }
    /* The last batch (its writes, if any, are queued): leave the team. */
    member_set(j, uid, NULL);
    job_write(j, "DEL", rk(j, KGC_RK_USERKEYS, j->team_id, uid), NULL);
    job_write(j, "SREM", rk(j, KGC_RK_USERTEAMS, uid), j->team_id, NULL);
    j->result = json_object();
    return J_WRITE;
}

job_step cmd_team_transfer_ownership(job *j)
{
    const char *uid = arg_str(j, "user");
    team_read *t = job_scratch(j, sizeof *t);
    json_t *docs;
    int moved;

    if (j->stage == 0)
        return J_READ;
    moved = uid != NULL && j->actor_id != NULL && strcmp(uid, j->actor_id) != 0;
    if (j->stage == 1) {
        memset(t, 0, sizeof *t);
        if (json_object_get(members(j), uid) == NULL)
            return job_fail(j, "not_found", "no such member");
        snprintf(j->target, sizeof j->target, "%s", uid);
        if (moved) {
            member_set(j, j->actor_id, "admin");
            member_set(j, uid, "owner");
        }
        /* The answer is the team with all its members (as team.get). */
        return team_read_start(j, t);
    }
    if (!t->docs) {
        /* Read before this commit: the two roles it changes go on top. */
        members_all_loaded(j, job_reply(j, 0));
        if (moved) {
            json_object_set_new(members(j), j->actor_id, json_string("admin"));
            json_object_set_new(members(j), uid, json_string("owner"));
        }
        if (team_read_docs(j, t) != 0)
            return J_FAIL;
        return J_READ;
    }
    docs = read_members_docs(j);
    j->result = team_view(j, docs);
    json_decref(docs);
    return J_WRITE;
}

/* Reads of one audit stream for a page: without a cursor, its newest
 * limit+1 entries; with one, every entry of the cursor's millisecond (a
 * handful: sorted out by page_audit_cmp) and then limit+1 entries older
 * than that millisecond. The +1 tells whether anything is left. */
static void audit_reads(job *j, const char *key, const page_audit_pos *c, long long limit)
{
    char count[24], ms[32], before[40];

    snprintf(count, sizeof count, "%lld", limit + 1);
    if (c == NULL) {
        job_read(j, "XREVRANGE", key, "+", "-", "COUNT", count, NULL);
        return;
    }
    snprintf(ms, sizeof ms, "%llu", c->ms);
    job_read(j, "XREVRANGE", key, ms, ms, NULL);
    if (c->ms > 0) {
        snprintf(before, sizeof before, "(%llu-0", c->ms);
        job_read(j, "XREVRANGE", key, before, "-", "COUNT", count, NULL);
    } else {
        job_read(j, "ECHO", "", NULL);   /* keeps the replies in place */
    }
}

/* The entries of one stream after the cursor, newest first (new array). */
static json_t *audit_after(json_t *same_ms, json_t *older, int stream, const page_audit_pos *c)
{
    json_t *out = json_array(), *e;
    size_t i;
    page_audit_pos p;

    json_array_foreach(same_ms, i, e)
        if (page_audit_of(e, stream, &p) == 0 && page_audit_cmp(&p, c) < 0)
            json_array_append(out, e);
    if (json_is_array(older))
        json_array_extend(out, older);
    return out;
}

/* The JSON document in field "e" of one XRANGE entry [id, [f, v, ...]]. */
static json_t *audit_doc(json_t *entry)
{
    json_t *fv = json_array_get(entry, 1);

    for (size_t i = 0; i + 1 < json_array_size(fv); i += 2) {
        json_t *f = json_array_get(fv, i), *v = json_array_get(fv, i + 1);
        if (json_is_string(f) && strcmp(json_string_value(f), "e") == 0 && json_is_string(v))
            return json_loadb(json_string_value(v), json_string_length(v), 0, NULL);
    }
    return NULL;
}

job_step cmd_audit_list(job *j)
{
    const char *only = arg_str(j, "only"), *cur = arg_str(j, "cursor");
    int accepted = only == NULL || strcmp(only, "accepted") == 0;
    int refused = only == NULL || strcmp(only, "refused") == 0;
    long long limit = read_limit(j, 100);
    page_audit_pos c, pa, pb, last = {0, 0, -1, 0};
    json_t *s[2], *out, *jc = arg(j, "cursor");
    size_t i[2] = {0, 0};
    char next[PAGE_CURSOR_MAX];

    if (limit < 0)
        return J_FAIL;
    if (jc != NULL && !json_is_null(jc) && (cur == NULL || page_audit_parse(cur, &c) != 0))
        return job_fail(j, "bad_request", "'cursor' is not an audit.list cursor");
    if (j->stage == 0) {
        if (!accepted && !refused)
            return job_fail(j, "bad_request", "'only' must be \"accepted\" or \"refused\"");
        /* Reads both streams either way: the replies stay in place. */
        audit_reads(j, rk(j, KGC_RK_AUDIT, j->team_id), cur ? &c : NULL, limit);
        audit_reads(j, rk(j, KGC_RK_AUDIT_REFUSED, j->team_id), cur ? &c : NULL, limit);
        return J_READ;
    }
    for (int k = 0; k < 2; k++) {
        if (!(k == 0 ? accepted : refused))
            s[k] = json_array();
        else if (cur == NULL)
            s[k] = json_incref(job_reply(j, (size_t)k));
        else
            s[k] = audit_after(job_reply(j, (size_t)k * 2), job_reply(j, (size_t)k * 2 + 1), k, &c);
    }
    out = json_array();
    j->result = json_pack("{s:o}", "entries", out);
    while ((long long)json_array_size(out) < limit) {
        json_t *x = json_array_get(s[0], i[0]), *y = json_array_get(s[1], i[1]), *doc;
        int pick;

        if (x == NULL && y == NULL)
            break;
        if (x != NULL && page_audit_of(x, 0, &pa) != 0) {
            i[0]++;
            continue;
        }
        if (y != NULL && page_audit_of(y, 1, &pb) != 0) {
            i[1]++;
            continue;
        }
        pick = y == NULL || (x != NULL && page_audit_cmp(&pa, &pb) > 0) ? 0 : 1;
        doc = audit_doc(pick == 0 ? x : y);
        last = pick == 0 ? pa : pb;
        i[pick]++;
        if (doc != NULL)
            json_array_append_new(out, doc);
    }
    if ((long long)json_array_size(out) == limit &&
        (i[0] < json_array_size(s[0]) || i[1] < json_array_size(s[1]))) {
        page_audit_cursor(next, &last);
        json_object_set_new(j->result, "next_cursor", json_string(next));
    }
    json_decref(s[0]);
    json_decref(s[1]);
    return J_DONE;
}

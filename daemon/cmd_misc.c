/*
 * cmd_misc.c - commands outside a team: ping, user.signup, service.list,
 * price.estimate, notification.list.
 */
#include "cmd.h"
#include "http.h"
#include "log.h"
#include "model.h"
#include "paging.h"

#include <ctype.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

job_step cmd_ping(job *j)
{
    j->result = json_object();
    return J_DONE;
}

/* 1 if the environment asks this daemon to stop at point `what`
 * (KEYGATED_FAULT=<what>): the fault tests' kill -9 at a known step. */
static int fault_is(const char *what)
{
    const char *f = getenv("KEYGATED_FAULT");
    return f != NULL && strcmp(f, what) == 0;
}

int email_normalize(const char *in, char *out, size_t cap)
{
    size_t n = in ? strlen(in) : 0;
    const char *at = in ? strchr(in, '@') : NULL;

    if (n < 3 || n >= cap || n > 254 || at == NULL || at == in || at[1] == '\0' ||
        strchr(at + 1, '@') != NULL)
        return -1;
    for (size_t i = 0; i <= n; i++) {
        unsigned char c = (unsigned char)in[i];
        if (i < n && (c <= 0x20 || c == 0x7f))
            return -1;
        out[i] = (char)tolower(c);
    }
    return 0;
}

/* A sign-up's scratch: the Argon2id hash of its password, and the ids it
 * claims the email for (kept across re-runs: the claim names the user). */
typedef struct pw_job {
    char hash[crypto_pwhash_STRBYTES];
    char err[100];
    const char *pw;               /* borrowed from the request */
    int done;                     /* hashing ran */
    int rc;                       /* 0: hash holds it */
    char uid[KGC_ID_MAX], tid[KGC_ID_MAX], kid[KGC_ID_MAX];
    char claim[KGC_ID_MAX + 16];  /* KGC_EMAIL_CLAIM + uid, "" before the ids */
} pw_job;

/* How long an email is claimed by a sign-up that has not committed yet: a
 * sign-up that crashed leaves it no longer (docs/redis-schema.md, "Sign-up
 * claims"). Well above a sign-up's life, hashing included. */
#define SIGNUP_CLAIM_MS "60000"

static void hash_work(void *arg)
{
    pw_job *w = arg;

    w->rc = password_hash(w->pw, w->hash, w->err, sizeof w->err);
    w->done = 1;
}

/* user.signup's prepare step, on the worker thread before the command is
 * queued: hashing (100-170 ms) holds up no other command. */
void signup_prepare(job *j)
{
    const char *pw = arg_str(j, "password");
    pw_job *w = job_scratch(j, sizeof *w);

    if (pw != NULL && password_rule_ok(pw)) {
        w->pw = pw;
        hash_work(w);
    }
}

/* The gate before hashing: the source's sign-up count (console clients,
 * by address: the admin socket is the trust boundary and is not counted),
 * then the email: one that is taken (or not an email) is answered without
 * spending 64 MiB and ~0.1 s of Argon2id on it. */
void signup_gate_reads(job *j, json_t *cmds)
{
    char email[256], ms[16];

    snprintf(ms, sizeof ms, "%d", 60000);
    if (j->peer.addr[0])
        json_array_append_new(cmds, json_pack("[s,s,s,s,s]", "EVAL", RATE_SCRIPT, "1",
                                              rk(j, KGC_RK_SIGNUPRATE, j->peer.addr), ms));
    else
        json_array_append_new(cmds, json_pack("[s]", "PING"));
    if (email_normalize(arg_str(j, "email"), email, sizeof email) == 0)
        json_array_append_new(cmds, json_pack("[s,s]", "GET", rk(j, KGC_RK_EMAIL, email)));
    else
        json_array_append_new(cmds, json_pack("[s]", "PING"));
}

int signup_gate_needs(job *j, json_t *replies)
{
    const char *pw = arg_str(j, "password");
    json_t *count = json_array_get(replies, 0);
    char email[256];

    if (j->peer.addr[0] && json_is_array(count) &&
        json_integer_value(json_array_get(count, 0)) > j->app->cfg.signup_per_minute) {
        long long left = json_integer_value(json_array_get(count, 1));
        job_fail(j, "rate_limited", "too many sign-ups from this address: try again in %lld s",
                 (left + 999) / 1000);
        return -1;
    }
    return pw != NULL && password_rule_ok(pw) &&
           email_normalize(arg_str(j, "email"), email, sizeof email) == 0 &&
           json_is_null(json_array_get(replies, 1));
}

/* Writes the user, the team with the user as owner, and its free key,
 * and turns the email's claim into the record (a plain SET: no TTL). */
static job_step signup_commit(job *j, const char *email, const char *pwhash, const pw_job *w)
{
    char tname[300], score[32];
    const char *uid = w->uid, *tid = w->tid, *kid = w->kid;
    const char *name = arg_str(j, "name"), *team_name = arg_str(j, "team_name");
    json_t *user, *team, *key, *services;
    long long now = now_ms();

    if (team_name == NULL) {
        snprintf(tname, sizeof tname, "%s's team", name);
        team_name = tname;
    }
    user = json_pack("{s:s,s:s,s:s,s:I}", "user_id", uid, "email", email, "name", name,
                     "created_at", (json_int_t)now);
    if (pwhash != NULL)
        json_object_set_new(user, "password_hash", json_string(pwhash));
    team = json_pack("{s:s,s:s,s:s,s:I,s:b}", "team_id", tid, "name", team_name,
                     "free_key_id", kid, "created_at", (json_int_t)now, "ukeys", 1);
    services = json_object();
    for (size_t i = 0; i < j->app->cat->nservices; i++)
        if (j->app->cat->services[i].free)
            json_object_set_new(services, j->app->cat->services[i].id,
                                json_pack("{s:s}", "policy", "free"));
    key = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:[s],s:o,s:{},s:I,s:I}", "key_id", kid,
                    "team_id", tid, "name", "Free service key", "description",
                    "Created at sign-up with every free service", "kind", "free",
                    "status", "active", "users", uid, "services", services, "tokens",
                    "created_at", (json_int_t)now, "updated_at", (json_int_t)now);
    job_write_json(j, rk(j, KGC_RK_USER, uid), user);
    job_write(j, "SET", rk(j, KGC_RK_EMAIL, email), uid, NULL);
    job_write_json(j, rk(j, KGC_RK_TEAM, tid), team);
    job_write(j, "HSET", rk(j, KGC_RK_MEMBERS, tid), uid, "owner", NULL);
    job_write(j, "SADD", rk(j, KGC_RK_USERTEAMS, uid), tid, NULL);
    job_write_json(j, rk(j, KGC_RK_KEY, tid, kid), key);
    snprintf(score, sizeof score, "%lld", now);
    job_write(j, "ZADD", rk(j, KGC_RK_KEYS, tid), score, kid, NULL);
    ukeys_add(j, key, uid);
    json_decref(user);
    json_decref(team);
    json_decref(key);
    j->result = json_pack("{s:s,s:s,s:s}", "user_id", uid, "team_id", tid, "free_key_id", kid);
    /* Audited in the new team, as its owner. */
    snprintf(j->team_id, sizeof j->team_id, "%s", tid);
    snprintf(j->target, sizeof j->target, "%s", tid);
    /* A copy: j->result is dropped when the commit fails, and the refusal
     * is still audited with this actor. */
    snprintf(j->own_actor, sizeof j->own_actor, "%s", uid);
    j->actor_id = j->own_actor;
    return J_WRITE;
}

/* Stage 1: claim the email (SET NX with a TTL, naming the new user; or
 * find it ours, on a re-run). 2: create user, team and free key, the claim
 * checked in the commit script (job_claim) and replaced by the record
 * (the password was hashed by signup_prepare, or, when its gate saw the
 * email taken and it has been freed since, is hashed now: 3). */
job_step cmd_user_signup(job *j)
{
    char email[256];
    const char *name = arg_str(j, "name"), *team_name = arg_str(j, "team_name");
    const char *password = arg_str(j, "password");
    pw_job *w = job_scratch(j, sizeof *w);
    json_t *now;

    if (email_normalize(arg_str(j, "email"), email, sizeof email) != 0)
        return job_fail(j, "bad_request", "'email' is not an email address");
    if (j->stage == 1) {
        if (!name_ok(name, 200))
            return job_fail(j, "bad_request", "'name' must be 1-200 printable characters");
        if (team_name != NULL && !name_ok(team_name, 200))
            return job_fail(j, "bad_request", "'team_name' must be 1-200 printable characters");
        if (password != NULL && !password_rule_ok(password))
            return job_fail(j, "bad_request", "%s", PASSWORD_RULE);
        if (w->claim[0] == '\0') {
            kgc_id_user(w->uid);
            kgc_id_team(w->tid);
            kgc_id_key(w->tid, w->kid);
            snprintf(w->claim, sizeof w->claim, "%s%s", KGC_EMAIL_CLAIM, w->uid);
        }
        job_read(j, "SET", rk(j, KGC_RK_EMAIL, email), w->claim, "NX", "PX", SIGNUP_CLAIM_MS,
                 NULL);
        job_read(j, "GET", rk(j, KGC_RK_EMAIL, email), NULL);
        return J_READ;
    }
    if (j->stage == 2) {
        now = job_reply(j, 1);
        if (!json_is_string(now) || strcmp(json_string_value(now), w->claim) != 0) {
            if (json_is_string(now) &&
                strncmp(json_string_value(now), KGC_EMAIL_CLAIM, strlen(KGC_EMAIL_CLAIM)) == 0)
                return job_fail(j, "conflict", "a sign-up with this email is in progress");
            if (json_is_null(now))     /* its claim ran out between the two: rare */
                return job_fail(j, "unavailable", "the email was freed meanwhile; nothing was "
                                "changed: try again");
            return job_fail(j, "conflict", "a user with this email exists");
        }
        job_claim(j, rk(j, KGC_RK_EMAIL, email), w->claim);
        if (fault_is("signup.claimed"))
            raise(SIGKILL);     /* a test's kill -9 between the two steps */
        if (password != NULL && !w->done) {
            w->pw = password;
            return job_offload(j, hash_work, w);
        }
    }
    if (password == NULL)
        return signup_commit(j, email, NULL, w);
    if (w->rc != 0)
        return job_fail(j, "internal", "%s", w->err);
    return signup_commit(j, email, w->hash, w);
}

job_step cmd_service_list(job *j)
{
    j->result = json_deep_copy(j->app->cat->json);
    return J_DONE;
}

job_step cmd_price_estimate(job *j)
{
    const kgc_service *svc = kgc_catalog_service(j->app->cat, arg_str(j, "service"));
    const kgc_model *m;
    json_t *params = arg(j, "params"), *v, *bd;
    kg_param *ps;
    kgc_line *lines;
    size_t n = 0;
    const char *name;
    int64_t cost;
    char err[200];

    if (svc == NULL)
        return job_fail(j, "bad_request", "unknown service '%.64s'", arg_str(j, "service"));
    m = kgc_service_model(svc, arg_str(j, "model"));
    if (m == NULL)
        return job_fail(j, "bad_request", "service '%s' has no model '%.64s'", svc->id,
                        arg_str(j, "model") ? arg_str(j, "model") : "(none given)");
    ps = xcalloc(json_object_size(params) + 1, sizeof *ps);
    lines = xcalloc(m->nper + 1, sizeof *lines);
    json_object_foreach(params, name, v) {
        if (!json_is_integer(v)) {
            free(ps);
            free(lines);
            return job_fail(j, "bad_request", "param '%.64s' must be an integer", name);
        }
        ps[n].name = name;
        ps[n++].value = json_integer_value(v);
    }
    if (kgc_price(m, ps, n, &cost, lines, err, sizeof err) != 0) {
        free(ps);
        free(lines);
        return job_fail(j, "bad_request", "%s", err);
    }
    bd = json_array();
    for (size_t k = 0; k < m->nper; k++)
        json_array_append_new(bd, json_pack("{s:s,s:I,s:I}", "param", lines[k].param,
                                            "quantity", (json_int_t)lines[k].quantity,
                                            "subtotal_micros", (json_int_t)lines[k].subtotal_micros));
    j->result = json_pack("{s:s,s:s,s:I,s:I,s:o,s:s}", "service", svc->id, "model", m->id,
                          "cost_micros", (json_int_t)cost, "base_micros",
                          (json_int_t)m->base_micros, "breakdown", bd,
                          "currency", j->app->cat->currency);
    free(ps);
    free(lines);
    return J_DONE;
}

/* notification.list pages (docs/protocol.md, "Paging"). The list is short
 * (trimmed to 1000: one LRANGE reads it whole) but moves at both ends: new
 * entries at the head, LTRIM at the tail. So the cursor names the last
 * entry returned by its content (time, hash, k-th identical one), found
 * again wherever it moved; gone (trimmed) means everything older is gone. */
job_step cmd_notification_list(job *j)
{
    long long limit = read_limit(j, 100), at = 0, k = 0, seen = 0;
    uint64_t hash = 0;
    const char *cur = arg_str(j, "cursor");
    json_t *c = arg(j, "cursor"), *list, *e, *out;
    size_t i, start = 0, last = 0;
    char next[PAGE_CURSOR_MAX];

    if (limit < 0)
        return J_FAIL;
    if (c != NULL && !json_is_null(c) && (cur == NULL || page_notif_parse(cur, &at, &hash, &k) != 0))
        return job_fail(j, "bad_request", "'cursor' is not a notification.list cursor");
    if (j->stage == 0) {
        job_read(j, "LRANGE", rk(j, KGC_RK_NOTIF, j->actor_id), "0", "999", NULL);
        return J_READ;
    }
    list = job_reply(j, 0);
    if (cur != NULL) {
        start = json_array_size(list);     /* not found: trimmed, nothing older is left */
        json_array_foreach(list, i, e) {
            if (!json_is_string(e) ||
                page_hash(json_string_value(e), json_string_length(e)) != hash)
                continue;
            if (seen++ == k) {
                start = i + 1;
                break;
            }
        }
    }
    (void)at;
    out = json_array();
    j->result = json_pack("{s:o}", "notifications", out);
    for (i = start; i < json_array_size(list); i++) {
        json_t *raw = json_array_get(list, i), *doc;
        long long kk = 0;

        if ((long long)json_array_size(out) == limit) {
            /* More remain: the cursor names the last one returned. */
            raw = json_array_get(list, last);
            for (size_t m = 0; m < last; m++) {
                json_t *x = json_array_get(list, m);
                kk += json_string_length(x) == json_string_length(raw) &&
                      memcmp(json_string_value(x), json_string_value(raw), json_string_length(raw)) == 0;
            }
            page_notif_cursor(next, json_integer_value(json_object_get(
                                        json_array_get(out, json_array_size(out) - 1), "at")),
                              page_hash(json_string_value(raw), json_string_length(raw)), kk);
            json_object_set_new(j->result, "next_cursor", json_string(next));
            break;
        }
        if (!json_is_string(raw))
            continue;
        doc = json_loadb(json_string_value(raw), json_string_length(raw), 0, NULL);
        if (doc != NULL) {
            json_array_append_new(out, doc);
            last = i;
        }
    }
    return J_DONE;
}

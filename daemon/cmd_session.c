/*
 * cmd_session.c - signing in to the console, as admin commands:
 * session.login, session.whoami, session.logout; and the password hashing
 * user.signup uses.
 *
 * A password is kept only as an Argon2id string (crypto_pwhash_str) in the
 * user document. A session is 32 random bytes (base64url) that the browser
 * holds in an HttpOnly cookie; Redis keeps, under a keyed BLAKE2b hash of
 * it, the session's user and CSRF token, with an expiry (SESSION_TTL_S).
 *
 * Sign-in attempts are counted per lower-cased email in one atomic script
 * before the password is checked, and a success clears the count: at most
 * LOGIN_FAIL_MAX failures per window, even when attempts run at once. The
 * count is kept for unknown emails too. An unknown email costs no Argon2
 * check: sign-up already tells whether an email is taken, so hiding it here
 * would buy nothing, and it keeps the daemon's loop free of work an
 * attacker can ask for without knowing a real email.
 *
 * The teams of a user: P uteams:<user>, kept by user.signup,
 * team.member.add and team.member.remove; session.whoami still keeps only
 * the teams whose document lists the user.
 */
#include "cmd.h"
#include "http.h"
#include "kgc_token.h"
#include "log.h"

#include <ctype.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

/* KEYS[1] the attempts counter, ARGV[1] the window in ms. Counts one
 * attempt; answers {count, ms left in the window}. */
const char RATE_SCRIPT[] =
    "local n = redis.call('INCR', KEYS[1]) "
    "local t = redis.call('PTTL', KEYS[1]) "
    "if t < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) t = tonumber(ARGV[1]) end "
    "return {n, t}";

int session_id_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;

    if (n != SESSION_ID_LEN)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return 0;
    }
    return 1;
}

int session_rkey(const app *a, const char *sid, char *out)
{
    static const char domain[] = "keygate console session v1";
    crypto_generichash_state st;
    unsigned char h[32];
    char hex[2 * sizeof h + 1];

    if (!session_id_ok(sid))
        return -1;
    crypto_generichash_init(&st, a->pepper, KGC_PEPPER_LEN, sizeof h);
    crypto_generichash_update(&st, (const unsigned char *)domain, sizeof domain);
    crypto_generichash_update(&st, (const unsigned char *)sid, SESSION_ID_LEN);
    crypto_generichash_final(&st, h, sizeof h);
    sodium_bin2hex(hex, sizeof hex, h, sizeof h);
    return kgc_rkey(out, a->cfg.key_prefix, KGC_RK_SESSION, hex) < 0 ? -1 : 0;
}

int password_rule_ok(const char *pw)
{
    size_t bytes = strlen(pw), chars = 0;
    int only_space = 1;

    if (bytes > PASSWORD_MAX)
        return 0;
    for (const unsigned char *p = (const unsigned char *)pw; *p; p++) {
        if ((*p & 0xC0) != 0x80)
            chars++;                      /* a character starts here (jansson checked UTF-8) */
        if (!isspace(*p))
            only_space = 0;
    }
    return chars >= PASSWORD_MIN && !only_space;
}

int password_hash(const char *pw, char *out, char *err, size_t errlen)
{
    size_t n = strlen(pw);

    if (!password_rule_ok(pw)) {
        snprintf(err, errlen, "%s", PASSWORD_RULE);
        return -1;
    }
    if (crypto_pwhash_str(out, pw, n, crypto_pwhash_OPSLIMIT_INTERACTIVE,
                          crypto_pwhash_MEMLIMIT_INTERACTIVE) != 0) {
        snprintf(err, errlen, "out of memory while hashing the password");
        return -1;
    }
    return 0;
}

/* 32 random bytes as base64url without padding (SESSION_ID_LEN chars). */
static void random_id(char *out)
{
    unsigned char b[32];

    randombytes_buf(b, sizeof b);
    sodium_bin2base64(out, SESSION_ID_LEN + 1, b, sizeof b, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    sodium_memzero(b, sizeof b);
}

static json_t *user_view(const json_t *user)
{
    return json_pack("{s:O,s:O,s:O}", "user_id", json_object_get(user, "user_id"), "email",
                     json_object_get(user, "email"), "name", json_object_get(user, "name"));
}

/* Last stage of a good sign-in: open the session, clear the failure
 * count. j->result holds the scratch state. */
static job_step login_finish(job *j)
{
    json_t *st = j->result;
    const char *uid = json_string_value(json_object_get(st, "_uid"));
    char sid[SESSION_ID_LEN + 1], csrf[SESSION_ID_LEN + 1], key[KGC_RKEY_MAX], ttl[24];
    char email[256];
    long long now = now_ms(), expires = now + SESSION_TTL_S * 1000LL;
    json_t *doc;
    char *text;

    random_id(sid);
    random_id(csrf);
    if (session_rkey(j->app, sid, key) != 0)
        return job_fail(j, "internal", "session key too long for the key prefix");
    doc = json_pack("{s:s,s:s,s:I,s:I}", "user_id", uid, "csrf", csrf, "created_at",
                    (json_int_t)now, "expires_at", (json_int_t)expires);
    text = json_dumps(doc, JSON_COMPACT);
    if (text == NULL)
        oom("json_dumps");
    snprintf(ttl, sizeof ttl, "%d", SESSION_TTL_S);
    job_write(j, "SET", key, text, "EX", ttl, NULL);
    free(text);
    json_decref(doc);
    email_normalize(arg_str(j, "email"), email, sizeof email);
    job_write(j, "DEL", rk(j, KGC_RK_LOGINFAIL, email), NULL);
    j->result = json_pack("{s:O,s:s,s:s,s:I}", "user", json_object_get(st, "_user"), "session", sid,
                          "csrf_token", csrf, "expires_at", (json_int_t)expires);
    json_decref(st);
    sodium_memzero(sid, sizeof sid);
    log_info("signed in: %s", uid);
    return J_WRITE;
}

/* A password check, run on the worker thread (Argon2id: ~65 ms). */
typedef struct pw_check {
    char hash[crypto_pwhash_STRBYTES];
    const char *pw;               /* borrowed from the request */
    size_t len;
    int good;
} pw_check;

static void check_password(void *arg)
{
    pw_check *c = arg;
    c->good = crypto_pwhash_str_verify(c->hash, c->pw, c->len) == 0;
}

/*
 * session.login {email, password}
 * Stage 1: count the attempt, find the email. 2: refuse over the limit,
 * read the user. 3: check the password on the worker thread. 4: open the
 * session.
 */
job_step cmd_session_login(job *j)
{
    char email[256], ms[24];
    json_t *pwj = arg(j, "password"), *r;
    const char *pw = json_string_value(pwj), *uid, *hash;
    json_t *doc;

    if (email_normalize(arg_str(j, "email"), email, sizeof email) != 0)
        return job_fail(j, "bad_request", "'email' is not an email address");
    if (j->stage == 1) {
        if (strlen(pw) > PASSWORD_MAX)
            return job_fail(j, "bad_request", "'password' is longer than %d bytes", PASSWORD_MAX);
        snprintf(ms, sizeof ms, "%d", LOGIN_FAIL_WINDOW_S * 1000);
        job_read(j, "EVAL", RATE_SCRIPT, "1", rk(j, KGC_RK_LOGINFAIL, email), ms, NULL);
        job_read(j, "GET", rk(j, KGC_RK_EMAIL, email), NULL);
        return J_READ;
    }
    if (j->stage == 2) {
        r = job_reply(j, 0);
        if (!json_is_array(r) || !json_is_integer(json_array_get(r, 0)))
            return job_fail(j, "internal", "the store refused the sign-in counter");
        if (json_integer_value(json_array_get(r, 0)) > LOGIN_FAIL_MAX) {
            long long left = json_integer_value(json_array_get(r, 1));
            log_warn("sign-in refused for %s: too many failures", email);
            return job_fail(j, "rate_limited",
                            "too many failed sign-ins for this email: try again in %lld minute%s",
                            (left + 59999) / 60000, (left + 59999) / 60000 == 1 ? "" : "s");
        }
        uid = json_string_value(job_reply(j, 1));
        if (uid == NULL || !kgc_id_plausible(uid))
            return job_fail(j, "unauthenticated", "wrong email or password");
        job_read(j, "GET", rk(j, KGC_RK_USER, uid), NULL);
        return J_READ;
    }
    if (j->stage == 3) {
        pw_check *c;

        doc = job_reply_json(j, 0);
        hash = json_string_value(json_object_get(doc, "password_hash"));
        if (hash == NULL || strlen(hash) >= sizeof c->hash) {
            log_info("failed sign-in for %s", email);
            json_decref(doc);
            return job_fail(j, "unauthenticated", "wrong email or password");
        }
        c = job_scratch(j, sizeof *c);
        memcpy(c->hash, hash, strlen(hash) + 1);
        c->pw = pw;
        c->len = json_string_length(pwj);
        j->result = json_pack("{s:o,s:O}", "_user", user_view(doc), "_uid",
                              json_object_get(doc, "user_id"));
        json_decref(doc);
        return job_offload(j, check_password, c);
    }
    if (j->stage == 4) {
        pw_check *c = job_scratch(j, sizeof *c);

        sodium_memzero((char *)pw, json_string_length(pwj));   /* not needed again */
        if (!c->good) {
            log_info("failed sign-in for %s", email);
            return job_fail(j, "unauthenticated", "wrong email or password");
        }
        return login_finish(j);
    }
    return J_DONE;     /* after the writes */
}

static int by_created(const void *a, const void *b)
{
    json_int_t x = json_integer_value(json_object_get(*(json_t *const *)a, "_created"));
    json_int_t y = json_integer_value(json_object_get(*(json_t *const *)b, "_created"));
    return x < y ? -1 : x > y;
}

/*
 * session.whoami {session?}
 * Stage 0: the team hint and, if given, the session. 1: read the teams.
 * 2: answer with those that list the actor, oldest first.
 */
job_step cmd_session_whoami(job *j)
{
    const char *sid = arg_str(j, "session");
    char key[KGC_RKEY_MAX];
    json_t *ids, *id, *sdoc, *docs, *t, *out;
    size_t i, n = 0;
    json_t **v;

    if (j->stage == 0) {
        job_read(j, "SMEMBERS", rk(j, KGC_RK_USERTEAMS, j->actor_id), NULL);
        if (sid != NULL) {
            if (session_rkey(j->app, sid, key) != 0)
                return job_fail(j, "bad_request", "'session' is not a session id");
            job_read(j, "GET", key, NULL);
        }
        return J_READ;
    }
    if (j->stage == 1) {
        j->result = json_pack("{s:o,s:[]}", "user", user_view(j->actor), "teams");
        if (sid != NULL) {
            sdoc = job_reply_json(j, 1);
            if (sdoc == NULL || !json_equal(json_object_get(sdoc, "user_id"),
                                            json_object_get(j->actor, "user_id"))) {
                json_decref(sdoc);
                return job_fail(j, "unauthenticated", "the session has ended: sign in again");
            }
            json_object_set(j->result, "csrf_token", json_object_get(sdoc, "csrf"));
            json_object_set(j->result, "expires_at", json_object_get(sdoc, "expires_at"));
            json_decref(sdoc);
        }
        ids = job_reply(j, 0);
        if (json_array_size(ids) == 0)
            return J_DONE;
        /* Each team's document, then the actor's role in each (members
         * are outside the document: model.h). */
        json_t *cmd = json_pack("[s]", "MGET");
        json_array_foreach(ids, i, id)
            if (kgc_id_plausible(json_string_value(id)))
                json_array_append_new(cmd, json_string(rk(j, KGC_RK_TEAM, json_string_value(id))));
        job_read_cmd(j, cmd);
        json_array_foreach(ids, i, id)
            if (kgc_id_plausible(json_string_value(id)))
                job_read(j, "HGET", rk(j, KGC_RK_MEMBERS, json_string_value(id)), j->actor_id, NULL);
        return J_READ;
    }
    /* One reply per team asked, in order (nil for a team gone): the
     * document and the role are joined by position. */
    docs = json_array();
    json_array_foreach(job_reply(j, 0), i, t) {
        json_t *d = json_is_string(t) ? json_loadb(json_string_value(t), json_string_length(t), 0, NULL)
                                      : NULL;
        json_array_append_new(docs, d != NULL ? d : json_null());
    }
    v = xcalloc(json_array_size(docs) + 1, sizeof *v);
    json_array_foreach(docs, i, t) {
        json_t *legacy = json_object_get(t, "members");
        const char *role = json_is_object(legacy)
                               ? json_string_value(json_object_get(legacy, j->actor_id))
                               : json_string_value(job_reply(j, 1 + i));
        if (!json_is_object(t) || role == NULL)
            continue;
        v[n++] = json_pack("{s:O,s:O,s:s,s:O,s:O}", "team_id", json_object_get(t, "team_id"),
                           "name", json_object_get(t, "name"), "role", role, "free_key_id",
                           json_object_get(t, "free_key_id"), "_created",
                           json_object_get(t, "created_at"));
    }
    qsort(v, n, sizeof *v, by_created);
    out = json_object_get(j->result, "teams");
    for (i = 0; i < n; i++) {
        json_object_del(v[i], "_created");
        json_array_append_new(out, v[i]);
    }
    free(v);
    json_decref(docs);
    return J_DONE;
}

/* session.logout {session}: ends one of the actor's sessions; ending one
 * that has already expired succeeds. */
job_step cmd_session_logout(job *j)
{
    char key[KGC_RKEY_MAX];
    json_t *doc;

    if (session_rkey(j->app, arg_str(j, "session"), key) != 0)
        return job_fail(j, "bad_request", "'session' is not a session id");
    if (j->stage == 0) {
        job_read(j, "GET", key, NULL);
        return J_READ;
    }
    if (j->stage > 1)
        return J_DONE;
    j->result = json_object();
    doc = job_reply_json(j, 0);
    if (doc == NULL)
        return J_DONE;
    if (!json_equal(json_object_get(doc, "user_id"), json_object_get(j->actor, "user_id"))) {
        json_decref(doc);
        return job_fail(j, "not_found", "no such session");
    }
    json_decref(doc);
    job_write(j, "DEL", key, NULL);
    return J_WRITE;
}

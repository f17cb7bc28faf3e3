/*
 * cmd_token.c - token.generate and token.rotate.
 *
 * The plain token exists only in sodium_malloc'ed memory here and in the
 * answer to the caller (wiped after sending, see server.c). Redis gets its
 * keyed hash (SPEC §3).
 */
#include "cmd.h"
#include "kgc_token.h"
#include "log.h"
#include "model.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GRACE_MAX_S (7 * 24 * 3600)

/* Makes a token for user on doc: writes its record and its tokens entry,
 * and sets the answer. The caller handles the user's previous token. */
static int issue_token(job *j, json_t *doc, const char *user_id, json_t *entry_extra)
{
    char *tok = sodium_malloc(KGC_TOKEN_LEN + 1);
    char hash[KGC_HASH_HEX_LEN + 1], hint[KGC_HINT_MAX], tid[KGC_ID_MAX];
    const char *kid = json_string_value(json_object_get(doc, "key_id"));
    json_t *entry;
    long long now = now_ms();

    if (tok == NULL)
        oom("sodium_malloc");
    if (kgc_token_generate(j->team_id, tok) != 0 ||
        kgc_token_hash_hex(j->app->pepper, tok, KGC_TOKEN_LEN, hash) != 0) {
        sodium_free(tok);
        job_fail(j, "internal", "token generation failed");
        return -1;
    }
    kgc_token_hint(tok, KGC_TOKEN_LEN, hint);
    kgc_id_token(tid);
    job_write(j, "HSET", rk(j, KGC_RK_TOKEN, j->team_id, hash), "key_id", kid, "team_id", j->team_id,
              "user_id", user_id, "token_id", tid, "expires_ms", "0", NULL);
    entry = json_pack("{s:s,s:s,s:s,s:I}", "token_id", tid, "hint", hint, "hash", hash,
                      "created_at", (json_int_t)now);
    if (entry_extra != NULL)
        json_object_update(entry, entry_extra);
    json_object_set_new(json_object_get(doc, "tokens"), user_id, entry);
    json_object_set_new(doc, "updated_at", json_integer(now));
    job_write_json(j, rk(j, KGC_RK_KEY, j->team_id, kid), doc);
    j->result = json_pack("{s:s,s:s,s:s,s:s,s:s}", "token", tok, "token_id", tid, "hint", hint,
                          "key_id", kid, "user_id", user_id);
    sodium_free(tok);         /* sodium_free wipes */
    return 0;
}

/* Key visible, active, and user assigned. Returns doc or NULL after fail. */
static json_t *token_key(job *j, const char *user_id)
{
    json_t *doc = job_reply_json(j, 0);

    if (doc == NULL || (!role_is_admin(j->role) && !key_has_user(doc, j->actor_id))) {
        json_decref(doc);
        job_fail(j, "not_found", "no such key");
        return NULL;
    }
    if (strcmp(json_string_value(json_object_get(doc, "status")), "active") != 0) {
        json_decref(doc);
        job_fail(j, "invalid_state", "the key is revoked");
        return NULL;
    }
    if (!key_has_user(doc, user_id)) {
        json_decref(doc);
        if (strcmp(user_id, j->actor_id) == 0)
            job_fail(j, "forbidden", "you are not assigned to this key");
        else
            job_fail(j, "not_found", "that user is not assigned to this key");
        return NULL;
    }
    return doc;
}

job_step cmd_token_generate(job *j)
{
    json_t *doc;

    if (j->stage == 0) {
        job_read(j, "GET", rk(j, KGC_RK_KEY, j->team_id, arg_str(j, "key")), NULL);
        return J_READ;
    }
    if ((doc = token_key(j, j->actor_id)) == NULL)
        return J_FAIL;
    if (json_object_get(json_object_get(doc, "tokens"), j->actor_id) != NULL) {
        json_decref(doc);
        return job_fail(j, "conflict", "you already have a token for this key: rotate it");
    }
    if (issue_token(j, doc, j->actor_id, NULL) != 0) {
        json_decref(doc);
        return J_FAIL;
    }
    json_decref(doc);
    return J_WRITE;
}

job_step cmd_token_rotate(job *j)
{
    const char *user = arg_str(j, "user") ? arg_str(j, "user") : j->actor_id;
    json_t *doc, *old, *g = arg(j, "grace_seconds"), *extra = NULL;
    long long grace = json_is_integer(g) ? json_integer_value(g) : 0;
    const char *old_hash, *prev_grace;

    if (j->stage == 0) {
        job_read(j, "GET", rk(j, KGC_RK_KEY, j->team_id, arg_str(j, "key")), NULL);
        return J_READ;
    }
    if (strcmp(user, j->actor_id) != 0 && !role_is_admin(j->role))
        return job_fail(j, "forbidden", "only an owner or admin rotates another user's token");
    if (grace < 0 || grace > GRACE_MAX_S)
        return job_fail(j, "bad_request", "'grace_seconds' must be 0-%d", GRACE_MAX_S);
    if ((doc = token_key(j, user)) == NULL)
        return J_FAIL;
    snprintf(j->target, sizeof j->target, "%s", arg_str(j, "key"));
    old = json_object_get(json_object_get(doc, "tokens"), user);
    if (old == NULL) {
        json_decref(doc);
        return job_fail(j, "not_found", "no token to rotate: generate one");
    }
    old_hash = json_string_value(json_object_get(old, "hash"));
    /* Only one token may be in its grace period: an older one dies now. */
    prev_grace = json_string_value(json_object_get(old, "old_hash"));
    if (prev_grace != NULL)
        job_write(j, "DEL", rk(j, KGC_RK_TOKEN, j->team_id, prev_grace), NULL);
    if (grace > 0) {
        char ms[32], exp[32];
        long long expires = now_ms() + grace * 1000;
        snprintf(ms, sizeof ms, "%lld", grace * 1000);
        snprintf(exp, sizeof exp, "%lld", expires);
        job_write(j, "HSET", rk(j, KGC_RK_TOKEN, j->team_id, old_hash), "expires_ms", exp, NULL);
        job_write(j, "PEXPIRE", rk(j, KGC_RK_TOKEN, j->team_id, old_hash), ms, NULL);
        extra = json_pack("{s:s,s:I}", "old_hash", old_hash, "old_expires_at", (json_int_t)expires);
    } else {
        job_write(j, "DEL", rk(j, KGC_RK_TOKEN, j->team_id, old_hash), NULL);
    }
    if (issue_token(j, doc, user, extra) != 0) {
        json_decref(extra);
        json_decref(doc);
        return J_FAIL;
    }
    json_object_set(j->result, "old_expires_at",
                    extra ? json_object_get(extra, "old_expires_at") : json_null());
    json_decref(extra);
    json_decref(doc);
    job_publish(j, "key %s", arg_str(j, "key"));
    return J_WRITE;
}

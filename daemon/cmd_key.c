/*
 * cmd_key.c - key.create, key.list, key.get, key.update, key.users.set,
 * key.services.set, key.revoke.
 */
#include "cmd.h"
#include "log.h"
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>


/* For key-scoped commands: stage 0 reads the key document (reply 0); at
 * stage 1 it is parsed and checked visible to the actor. Returns the doc
 * (new ref) or NULL after job_fail. */
static json_t *load_key(job *j)
{
    json_t *doc = job_reply_json(j, 0);

    if (doc == NULL) {
        job_fail(j, "not_found", "no such key");
        return NULL;
    }
    if (!role_is_admin(j->role) && !key_has_user(doc, j->actor_id)) {
        json_decref(doc);
        job_fail(j, "not_found", "no such key");
        return NULL;
    }
    return doc;
}

static void read_key(job *j)
{
    job_read(j, "GET", rk(j, KGC_RK_KEY, j->team_id, arg_str(j, "key")), NULL);
}

static void write_key(job *j, json_t *doc)
{
    json_object_set_new(doc, "updated_at", json_integer(now_ms()));
    job_write_json(j, rk(j, KGC_RK_KEY, j->team_id,
                         json_string_value(json_object_get(doc, "key_id"))), doc);
}

static int text_args(job *j, json_t *doc)
{
    const char *name = arg_str(j, "name"), *desc = arg_str(j, "description");

    if (name != NULL) {
        if (!name_ok(name, 200)) {
            job_fail(j, "bad_request", "'name' must be 1-200 printable characters");
            return -1;
        }
        json_object_set_new(doc, "name", json_string(name));
    }
    if (desc != NULL) {
        if (strlen(desc) > 2000) {
            job_fail(j, "bad_request", "'description' is longer than 2000 bytes");
            return -1;
        }
        json_object_set_new(doc, "description", json_string(desc));
    }
    return 0;
}

job_step cmd_key_create(job *j)
{
    json_t *users = arg(j, "users"), *services = arg(j, "services"), *doc, *u = NULL, *s = NULL;
    char kid[KGC_ID_MAX], score[32];
    long long now = now_ms();

    if (j->stage == 0) {
        if (json_is_object(services))
            services_prefetch(j, services);
        return J_READ;
    }
    if (!name_ok(arg_str(j, "name"), 200))
        return job_fail(j, "bad_request", "'name' must be 1-200 printable characters");
    if (users != NULL && !json_is_null(users) && (u = users_check(j, users)) == NULL)
        return J_FAIL;
    if (services != NULL && !json_is_null(services) && (s = services_check(j, services, 0)) == NULL) {
        json_decref(u);
        return J_FAIL;
    }
    kgc_id_key(j->team_id, kid);
    doc = json_pack("{s:s,s:s,s:s,s:s,s:s,s:o,s:o,s:{},s:I,s:I}", "key_id", kid, "team_id",
                    j->team_id, "description", "", "kind", "paid", "status", "active",
                    "users", u ? u : json_array(), "services", s ? s : json_object(),
                    "tokens", "created_at", (json_int_t)now, "updated_at", (json_int_t)now);
    if (text_args(j, doc) != 0) {
        json_decref(doc);
        return J_FAIL;
    }
    snprintf(j->target, sizeof j->target, "%s", kid);
    job_write_json(j, rk(j, KGC_RK_KEY, j->team_id, kid), doc);
    snprintf(score, sizeof score, "%lld", now);
    job_write(j, "ZADD", rk(j, KGC_RK_KEYS, j->team_id), score, kid, NULL);
    j->result = key_public(doc);
    json_decref(doc);
    return J_WRITE;
}

job_step cmd_key_list(job *j)
{
    json_t *ids, *docs, *out, *d;
    size_t i;

    if (j->stage == 0) {
        job_read(j, "ZRANGE", rk(j, KGC_RK_KEYS, j->team_id), "0", "-1", NULL);
        return J_READ;
    }
    if (j->stage == 1) {
        ids = job_reply(j, 0);
        if (json_array_size(ids) > 0)
            read_keys(j, ids);
        return J_READ;
    }
    if (j->stage == 3) {
        key_wallet_names_fill(j, json_object_get(j->result, "keys"));
        return J_DONE;
    }
    docs = parse_list(job_reply(j, 0));
    out = json_array();
    json_array_foreach(docs, i, d)
        if (role_is_admin(j->role) || key_has_user(d, j->actor_id))
            json_array_append_new(out, key_public(d));
    json_decref(docs);
    j->result = json_pack("{s:o}", "keys", out);
    /* The answer waits in j->result while the names are read (stage 3). */
    return key_wallet_names_read(j, out) > 0 ? J_READ : J_DONE;
}

/* Stage 1 checks the key and keeps the answer in j->result while the
 * names of its payg wallets are read; stage 2 adds them. */
job_step cmd_key_get(job *j)
{
    json_t *doc, *one;
    size_t n = 0;

    if (j->stage == 0) {
        read_key(j);
        return J_READ;
    }
    if (j->stage == 1) {
        if ((doc = load_key(j)) == NULL)
            return J_FAIL;
        j->result = key_public(doc);
        json_decref(doc);
    }
    one = json_pack("[O]", j->result);
    if (j->stage == 1)
        n = key_wallet_names_read(j, one);
    else
        key_wallet_names_fill(j, one);
    json_decref(one);
    return n > 0 ? J_READ : J_DONE;
}

static int is_free_key(const json_t *doc)
{
    return strcmp(json_string_value(json_object_get(doc, "kind")), "free") == 0;
}

static int is_active(const json_t *doc)
{
    return strcmp(json_string_value(json_object_get(doc, "status")), "active") == 0;
}

/* An edit of one key document: checks and changes doc, queues any extra
 * writes, may add members to `extra` for the answer. 0, or -1 after
 * job_fail. */
typedef int (*key_edit_fn)(job *j, json_t *doc, json_t *extra);

/* Every command that edits one key has this shape: stage 0 reads the key
 * (and whatever prefetch queues), stage 1 checks it is visible and active,
 * applies edit, writes the key back and answers with it. */
static job_step edit_key(job *j, key_edit_fn edit, void (*prefetch)(job *j))
{
    json_t *doc, *extra;

    if (j->stage == 0) {
        read_key(j);
        if (prefetch != NULL)
            prefetch(j);
        return J_READ;
    }
    if ((doc = load_key(j)) == NULL)
        return J_FAIL;
    if (!is_active(doc)) {
        json_decref(doc);
        return job_fail(j, "invalid_state", "the key is revoked");
    }
    extra = json_object();
    if (edit(j, doc, extra) != 0) {
        json_decref(extra);
        json_decref(doc);
        return J_FAIL;
    }
    write_key(j, doc);
    j->result = key_public(doc);
    json_object_update(j->result, extra);
    json_decref(extra);
    json_decref(doc);
    return J_WRITE;
}

static int edit_text(job *j, json_t *doc, json_t *extra)
{
    (void)extra;
    return text_args(j, doc);
}

job_step cmd_key_update(job *j)
{
    return edit_key(j, edit_text, NULL);
}

/* Replaces the assigned users. An unassigned user's token dies at once;
 * with notify, each user whose assignment changed gets a notification. */
static int edit_users(job *j, json_t *doc, json_t *extra)
{
    json_t *want, *u, *notified;
    size_t i;
    int notify = json_is_true(arg(j, "notify")), dropped = 0;

    if ((want = users_check(j, arg(j, "users"))) == NULL)
        return -1;
    notified = json_array();
    json_array_foreach(json_object_get(doc, "users"), i, u) {
        const char *uid = json_string_value(u);
        size_t k;
        json_t *w;
        int kept = 0;

        json_array_foreach(want, k, w)
            kept |= strcmp(json_string_value(w), uid) == 0;
        if (kept)
            continue;
        dropped |= key_drop_tokens(j, doc, uid);
        if (notify) {
            notify_user(j, uid, "key.unassigned", doc);
            json_array_append(notified, u);
        }
    }
    json_array_foreach(want, i, u)
        if (notify && !key_has_user(doc, json_string_value(u))) {
            notify_user(j, json_string_value(u), "key.assigned", doc);
            json_array_append(notified, u);
        }
    json_object_set_new(doc, "users", want);
    if (dropped)
        job_publish(j, "key %s", arg_str(j, "key"));
    json_object_set_new(extra, "notified", notified);
    return 0;
}

job_step cmd_key_users_set(job *j)
{
    return edit_key(j, edit_users, NULL);
}

static void prefetch_services(job *j)
{
    services_prefetch(j, arg(j, "services"));
}

static int edit_services(job *j, json_t *doc, json_t *extra)
{
    json_t *s;

    (void)extra;
    if (is_free_key(doc)) {
        job_fail(j, "free_key_immutable", "the free key's services cannot be edited");
        return -1;
    }
    if ((s = services_check(j, arg(j, "services"), 1)) == NULL)
        return -1;
    json_object_set_new(doc, "services", s);
    job_publish(j, "key %s", arg_str(j, "key"));
    return 0;
}

job_step cmd_key_services_set(job *j)
{
    return edit_key(j, edit_services, prefetch_services);
}

static int edit_revoke(job *j, json_t *doc, json_t *extra)
{
    (void)extra;
    if (is_free_key(doc)) {
        job_fail(j, "free_key_immutable", "the free key cannot be revoked");
        return -1;
    }
    json_object_set_new(doc, "status", json_string("revoked"));
    job_publish(j, "key %s", arg_str(j, "key"));
    return 0;
}

job_step cmd_key_revoke(job *j)
{
    return edit_key(j, edit_revoke, NULL);
}

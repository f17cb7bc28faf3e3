/*
 * model.h - rules on keys shared by several commands: the public view of a
 * key, assigned users, enabled services and their billing policies, and
 * deleting a user's tokens.
 */
#ifndef KG_MODEL_H
#define KG_MODEL_H

#include "cmd.h"

/* The key as the protocol returns it: tokens without their hashes. New ref. */
json_t *key_public(const json_t *doc);

/* 1 if user_id is in the key's users. */
int key_has_user(const json_t *doc, const char *user_id);

/* Checks that every id of users (array of strings) is a member of the
 * job's team; returns a new deduplicated array, or NULL after job_fail. */
json_t *users_check(job *j, json_t *users);

/* Team members (docs/redis-schema.md): P {t:T}:members, a hash user_id ->
 * role, outside the team document, so a command reads the roles it needs
 * (HMGET) instead of parsing every member. The engine reads, with the team
 * document, the roles of the actor, of the `user` argument and of each id
 * in the `users` argument, and puts those it found into
 * j->team["members"]: handlers see a members object holding just them.
 * A team document written before (with its own "members") is read as it
 * is (j->legacy_members) and moved to the hash by its next member change.
 */
#define MEMBERS_PREFETCH_MAX 1000
void members_prefetch(job *j);
void members_loaded(job *j, json_t *reply);
/* Queues the reading of every member (HGETALL; nothing for a legacy
 * document, whose members are all there), and then, with its reply (NULL
 * for a legacy document), puts them all into j->team["members"]. */
void members_read_all(job *j);
void members_all_loaded(job *j, json_t *reply);
/* Queues a member's new role (NULL: removed) in the job's commit and sets
 * it in j->team["members"]; a legacy document is rewritten without
 * "members" and all of them moved to the hash in the same commit. */
void member_set(job *j, const char *uid, const char *role);

/* The per-member key index P {t:T}:ukeys:<user_id> (a zset of the keys
 * the member is a user of, by the key's created_at): a user-role member's
 * key.list reads only their keys. Kept in the commit of every change to a
 * key's users; trusted by key.list only in teams whose document says
 * "ukeys": true (teams made since the index exists; docs/redis-schema.md). */
void ukeys_add(job *j, const json_t *keydoc, const char *user_id);
void ukeys_del(job *j, const json_t *keydoc, const char *user_id);
int ukeys_indexed(const job *j);

/* Stage 0 of a command taking "services": queue one EXISTS per payg wallet
 * of the job's team. Returns how many reads it queued. */
size_t services_prefetch(job *j, json_t *services);

/* Stage 1: validates services against the catalog and the replies of
 * services_prefetch (starting at reply `first`). Returns the normalized
 * services object (new ref), or NULL after job_fail. */
json_t *services_check(job *j, json_t *services, size_t first);

/* Queues the deletion of user_id's token records on key doc (current and
 * one still in its grace period) and drops its tokens entry. Returns 1 if
 * there was any. */
int key_drop_tokens(job *j, json_t *doc, const char *user_id);

/* A name: non-empty, at most max characters (code points), no control characters. */
int name_ok(const char *s, size_t max);

/* Appends LPUSH+LTRIM of a notification to the writes. */
void notify_user(job *j, const char *user_id, const char *type, const json_t *keydoc);

/* The 'limit' argument (1-1000, default dflt), or -1 after job_fail. */
long long read_limit(job *j, long long dflt);

/* The JSON documents of a list/MGET reply, skipping missing ones. New ref.
 * Never sees an error reply: the engine refuses a read round holding one,
 * at any depth, before a handler runs (job.c, on_reads). */
json_t *parse_list(json_t *reply);

/* Names of the wallets that pay for keys' payg services, for the key
 * replies of key.get and key.list (a user-role member may not list
 * wallets, yet should see which one pays). Two steps over the same array
 * of key_public objects, unchanged in between: _read queues one HGET of
 * the name per payg service (in the keys' order) and returns how many;
 * at the next stage _fill adds "wallet_names" {wallet_id: name} to each
 * key that has a payg service. The services objects stay as set. */
size_t key_wallet_names_read(job *j, json_t *keys);
void key_wallet_names_fill(job *j, json_t *keys);

/* Queues one MGET of the key documents named in ids (a ZRANGE reply). */
void read_keys(job *j, json_t *ids);
/* The same for ids given as [key_id, score] pairs (at most PAGE_BATCH_MAX). */
void read_keys_pairs(job *j, json_t *pairs);

#endif

/*
 * kgc_auth.h - Redis ACL credentials: the AUTH every connection to a Redis
 * data node sends first (config redis_user / redis_password_file,
 * kgc_config.h; docs/operations.md "Redis ACL credentials").
 *
 * Who sends it: every connection to a node that holds keygate's data (a
 * single node, a cluster node, the primary a sentinel names, and the ROLE
 * check of that primary), right after connecting and before any other
 * command. Not the connections to the sentinels themselves: sentinels
 * usually run without ACL users, and keygate gives no separate credentials
 * for them.
 *
 *   blocking (hiredis redisContext): kgc_auth_sync, after the connect
 *   async (redisAsyncContext): kgc_auth_argv gives AUTH's arguments; queue
 *     them with redisAsyncCommandArgv as the connection's first command and
 *     treat an error reply (or none) as a failed connection: log
 *     "redis: AUTH refused: <the server's text>" and drop it. Commands
 *     queued behind AUTH on the same connection are answered NOAUTH (or,
 *     with an enabled "default" user, run as that user): their replies
 *     must not be trusted once AUTH failed.
 *
 * The password is never written to a log or a message by these functions;
 * the server's error text (WRONGPASS ...) holds no secret and is passed on.
 */
#ifndef KGC_AUTH_H
#define KGC_AUTH_H

#include <stddef.h>

#include <hiredis/hiredis.h>

#include "kgc_config.h"

/* AUTH's arguments for cfg: "AUTH" [user] password, pointing into cfg (which
 * must outlive their use). Returns argc: 3 with a user, 2 without (the
 * "default" user), 0 when cfg has no credentials (send nothing). */
int kgc_auth_argv(const kgc_config *cfg, const char *argv[3], size_t argvlen[3]);

/* Sends AUTH on c (connected, no command pending) and reads its answer.
 * Returns 0 (accepted, or no credentials configured: nothing sent), or -1
 * with "redis: AUTH refused: <server's text>" or "redis: AUTH: <why the
 * connection failed>" in err; the caller then frees c. */
int kgc_auth_sync(redisContext *c, const kgc_config *cfg, char *err, size_t errlen);

#endif

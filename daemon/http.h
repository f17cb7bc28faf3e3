/*
 * http.h - the Key Management console: keygated's HTTP listener (libevent
 * evhttp), and the sign-in rules it shares with the commands.
 *
 * Off unless the config has `http HOST:PORT`. It serves the console's
 * static files (from `http_root`, else the installed or the source
 * console folder) and a JSON API, `POST /api/<cmd>`, that runs the admin
 * commands one-to-one through job_submit: the body is the command's
 * arguments, the answer the same envelope as on the socket, with the HTTP
 * status that fits its error code. The actor is always the user of the
 * session cookie; an `actor` in the body is ignored (docs/console.md).
 */
#ifndef KG_HTTP_H
#define KG_HTTP_H

#include <stddef.h>

#include "app.h"

typedef struct http_srv http_srv;

/* Binds cfg.http_listen and starts serving on a->base. Returns the
 * listener, or NULL with the reason in err. The caller frees it with
 * http_free after every job has answered (after store_free and
 * job_abort_all at shutdown), since answers go to its requests. */
http_srv *http_new(app *a, char *err, size_t errlen);
void http_free(http_srv *h);   /* accepts NULL */

/* The same for cfg.metrics_listen: a listener that serves GET /metrics
 * (Prometheus' text format, daemon/metrics.h) and nothing else. The
 * console listener serves /metrics too. */
http_srv *http_metrics_new(app *a, char *err, size_t errlen);

/* HTTP status of an answer: 200 for success, else by error code. */
int http_status_of(const char *code);

/* --- sign-in (cmd_session.c), also used by user.signup and http.c ------- */

#define SESSION_ID_LEN     43           /* base64url of 32 random bytes, no padding */
#define SESSION_TTL_S      (12 * 3600)
#define LOGIN_FAIL_MAX     5            /* attempts per email per window ... */
#define LOGIN_FAIL_WINDOW_S (15 * 60)   /* ... counted from the first failure */
#define PASSWORD_MIN       8
#define PASSWORD_MAX       1024         /* bytes: what is hashed */
#define PASSWORD_RULE      "'password' must be at least 8 characters and not only spaces (at most 1024 bytes)"

/* A counter with a window: INCR KEYS[1], PEXPIRE ARGV[1] ms when new.
 * Returns {count, ms left}. */
extern const char RATE_SCRIPT[];

/* The one password rule, for sign-up and console alike: at least
 * PASSWORD_MIN characters (code points, not bytes), not only white space,
 * at most PASSWORD_MAX bytes. */
int password_rule_ok(const char *pw);

/* 1 if s has the shape of a session id (never looked up otherwise). */
int session_id_ok(const char *s);

/* Writes the Redis key of session id sid into out[KGC_RKEY_MAX]: the id
 * itself never reaches Redis, only its BLAKE2b hash keyed with the pepper.
 * Returns 0, or -1 if sid is not a session id. */
int session_rkey(const app *a, const char *sid, char *out);

/* Checks a new password's length and hashes it with Argon2id
 * (crypto_pwhash_str, interactive limits) into out[128]. Returns 0, or -1
 * with a message for the caller in err. Blocks for ~0.1 s. */
int password_hash(const char *pw, char *out, char *err, size_t errlen);

/* Lower-cases and checks an email (cmd_misc.c). 0 or -1. */
int email_normalize(const char *in, char *out, size_t cap);

#endif

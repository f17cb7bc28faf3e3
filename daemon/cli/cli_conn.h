/*
 * cli_conn.h - one connection to keygated's admin socket (docs/protocol.md):
 * newline-delimited JSON, one answer per request, in order.
 *
 * Every wait is bounded by the connection's timeout; SIGPIPE is never
 * raised (MSG_NOSIGNAL). Buffers that held an answer are wiped before they
 * are reused or freed, since an answer may carry a freshly issued token.
 */
#ifndef KG_CLI_CONN_H
#define KG_CLI_CONN_H

#include <jansson.h>
#include <stddef.h>

typedef struct cli_conn cli_conn;

/* Connects to the Unix socket at path within timeout_ms. Returns a new
 * connection (free with cli_conn_close), or NULL with the reason in err. */
cli_conn *cli_conn_open(const char *path, int timeout_ms, char *err, size_t errlen);

/* Sends req (one JSON object; an "id" is added) and reads its answer line.
 * Returns the parsed answer object (new reference), or NULL with the
 * reason in err when the write failed, the daemon hung up or timed out, or
 * the answer is not a JSON object echoing our id. */
json_t *cli_conn_roundtrip(cli_conn *c, json_t *req, char *err, size_t errlen);

/* Closes and frees; accepts NULL. */
void cli_conn_close(cli_conn *c);

#endif

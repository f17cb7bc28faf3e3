/*
 * proto.h - the response envelope of the admin protocol.
 */
#ifndef KG_PROTO_H
#define KG_PROTO_H

#include <jansson.h>

/* {"id": id, "ok": false, "error": {"code", "message"}}; id borrowed, may be
 * NULL (then no "id" member). Returns a new reference. */
json_t *proto_error(json_t *id, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Copies in to out (cap bytes with the NUL) as valid UTF-8: every byte
 * that does not begin a well-formed sequence becomes U+FFFD, and the copy
 * stops before a character that would not fit whole. Returns its length. */
size_t proto_utf8_clean(const char *in, char *out, size_t cap);

/* Zeroes the secret strings of an envelope's result (token, session,
 * secret) in place, before the envelope is freed. */
void proto_wipe_secrets(json_t *envelope);

/* {"id": id, "ok": true, "result": result}; steals result. */
json_t *proto_ok(json_t *id, json_t *result);

#endif

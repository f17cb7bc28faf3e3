/*
 * proto.c - response envelopes.
 */
#include "proto.h"
#include "log.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>

/* Copies msg into out with every run of REDACT_RUN or more letters and
 * digits replaced by "[redacted]". Messages quote the caller's arguments;
 * a token (43-character base62 body), a session id or a pepper sent in the
 * wrong field must not come back (SPEC §3). Ids are shorter than this. */
#define REDACT_RUN 24
static void redact(const char *msg, char *out, size_t cap)
{
    size_t o = 0, i = 0;

    while (msg[i] && o + 1 < cap) {
        size_t run = 0;
        while (isalnum((unsigned char)msg[i + run]))
            run++;
        if (run >= REDACT_RUN) {
            int n = snprintf(out + o, cap - o, "[redacted]");
            o += (size_t)n < cap - o ? (size_t)n : cap - o - 1;
            i += run;
        } else if (run > 0) {
            for (size_t k = 0; k < run && o + 1 < cap; k++)
                out[o++] = msg[i++];
        } else {
            out[o++] = msg[i++];
        }
    }
    out[o] = '\0';
}

json_t *proto_error(json_t *id, const char *code, const char *fmt, ...)
{
    char raw[512], msg[512];
    va_list ap;
    json_t *r;

    va_start(ap, fmt);
    vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    redact(raw, msg, sizeof msg);
    r = json_pack("{s:b,s:{s:s,s:s}}", "ok", 0, "error", "code", code, "message", msg);
    if (r == NULL)
        oom("json_pack");
    if (id != NULL)
        json_object_set(r, "id", id);
    return r;
}

json_t *proto_ok(json_t *id, json_t *result)
{
    json_t *r = json_pack("{s:b,s:o}", "ok", 1, "result", result ? result : json_object());
    if (r == NULL)
        oom("json_pack");
    if (id != NULL)
        json_object_set(r, "id", id);
    return r;
}

/*
 * proto.c - response envelopes.
 */
#include "proto.h"
#include "log.h"

#include <ctype.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Copies msg into out with every run of REDACT_RUN or more letters and
 * digits replaced by "[redacted]". Messages quote the caller's arguments;
 * a token (61-character base62 body), a session id or a pepper sent in the
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

/* Length of the well-formed UTF-8 sequence at s (RFC 3629: no overlong
 * forms, no surrogates, nothing above U+10FFFF), or 0 if there is none. */
static size_t utf8_seq(const unsigned char *s)
{
    unsigned c = s[0];
    size_t n;
    unsigned lo = 0x80, hi = 0xBF;

    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else
        return 0;
    if (s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return n;
}

size_t proto_utf8_clean(const char *in, char *out, size_t cap)
{
    static const char repl[] = "\xEF\xBF\xBD";     /* U+FFFD */
    const unsigned char *s = (const unsigned char *)in;
    size_t o = 0;

    if (cap == 0)
        return 0;
    while (*s) {
        size_t n = utf8_seq(s);
        const char *from = n ? (const char *)s : repl;
        size_t len = n ? n : sizeof repl - 1;

        if (o + len >= cap)
            break;                  /* never a partial character at the end */
        memcpy(out + o, from, len);
        o += len;
        s += n ? n : 1;
    }
    out[o] = '\0';
    return o;
}

json_t *proto_error(json_t *id, const char *code, const char *fmt, ...)
{
    char raw[512], red[512], msg[512];
    va_list ap;
    json_t *r;

    va_start(ap, fmt);
    vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    redact(raw, red, sizeof red);
    /* The message quotes what the caller sent, cut with %.Ns and by
     * vsnprintf, or jansson's parse error, which can quote part of a
     * character: only valid UTF-8 can be encoded. */
    proto_utf8_clean(red, msg, sizeof msg);
    r = json_pack("{s:b,s:{s:s,s:s}}", "ok", 0, "error", "code", code, "message", msg);
    if (r == NULL)          /* not reached with a clean message: never a reason to stop */
        r = json_pack("{s:b,s:{s:s,s:s}}", "ok", 0, "error", "code", code, "message",
                      "(the error message could not be encoded)");
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

void proto_wipe_secrets(json_t *envelope)
{
    static const char *const fields[] = {"token", "session", "secret"};
    json_t *res = json_object_get(envelope, "result");

    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        json_t *v = json_object_get(res, fields[i]);
        if (json_is_string(v))
            sodium_memzero((char *)json_string_value(v), json_string_length(v));
    }
}

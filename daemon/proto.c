/*
 * proto.c - response envelopes.
 */
#include "proto.h"
#include "log.h"

#include <stdarg.h>
#include <stdio.h>

json_t *proto_error(json_t *id, const char *code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    json_t *r;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
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

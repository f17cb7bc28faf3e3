/*
 * xcommit_plan.c - the per-slot commands of a commit across slots
 * (xcommit_plan.h), moved out of xcommit.c so that `keygate fsck
 * --repair` builds them the same way.
 */
#include "xcommit_plan.h"
#include "xcommit_lua.h"

#include <stdio.h>
#include <string.h>

/* ["EVAL", lua, numkeys, marker, version keys... (, claim keys...)] */
static json_t *eval_head(const char *lua, json_t *part, int claims)
{
    json_t *c = json_pack("[s,s,s,O]", "EVAL", lua, "", json_object_get(part, "marker"));
    json_t *locks = json_object_get(part, "locks"), *l;
    size_t i, nk = 1;
    char n[16];

    json_array_foreach(locks, i, l) {
        json_array_append(c, json_array_get(l, 0));
        nk++;
    }
    if (claims)
        json_array_foreach(json_object_get(part, "claims"), i, l) {
            json_array_append(c, json_array_get(l, 0));
            nk++;
        }
    snprintf(n, sizeof n, "%zu", nk);
    json_array_set_new(c, 2, json_string(n));
    return c;
}

int xc_part_writes(json_t *part)
{
    json_t *l;
    size_t i;

    if (json_array_size(json_object_get(part, "cmds")) > 0 ||
        json_array_size(json_object_get(part, "claims")) > 0)
        return 1;
    json_array_foreach(json_object_get(part, "locks"), i, l)
        if (strcmp(json_string_value(json_array_get(l, 1)) ?: "c", "c") != 0)
            return 1;
    return 0;
}

json_t *xc_validate_cmd(const char *txid, json_t *part)
{
    json_t *c = json_pack("[s,s,s]", "EVAL", validate_lua, ""), *expect = json_array(), *l;
    size_t i;
    char n[16];

    (void)txid;
    json_array_foreach(json_object_get(part, "locks"), i, l)
        if (strcmp(json_string_value(json_array_get(l, 1)) ?: "", "c") == 0) {
            json_array_append(c, json_array_get(l, 0));
            json_array_append(expect, json_array_get(l, 2));
        }
    if (json_array_size(expect) == 0) {
        json_decref(c);
        json_decref(expect);
        return NULL;
    }
    snprintf(n, sizeof n, "%zu", json_array_size(expect));
    json_array_set_new(c, 2, json_string(n));
    json_array_extend(c, expect);
    json_decref(expect);
    return c;
}

json_t *xc_prepare_cmd(const char *txid, json_t *part)
{
    json_t *c, *l;
    size_t i;
    char n[16];

    if (!xc_part_writes(part))
        return NULL;
    c = eval_head(prepare_lua, part, 1);

    snprintf(n, sizeof n, "%zu", json_array_size(json_object_get(part, "locks")) + 1);
    json_array_append_new(c, json_string(txid));
    json_array_append_new(c, json_string(n));
    json_array_foreach(json_object_get(part, "locks"), i, l) {
        json_array_append(c, json_array_get(l, 1));
        json_array_append(c, json_array_get(l, 2));
    }
    json_array_foreach(json_object_get(part, "claims"), i, l)
        json_array_append(c, json_array_get(l, 1));
    return c;
}

json_t *xc_apply_cmd(const char *txid, json_t *part)
{
    json_t *c, *l, *a;
    size_t i, k;
    char n[16];

    if (!xc_part_writes(part))
        return NULL;
    c = eval_head(apply_lua, part, 0);
    /* Every key the writes touch, declared after the version keys (the
     * script reads only the first nl): refused whole during a migration
     * of the slot rather than failing half-way (job_commit.c, commit_lua). */
    json_array_foreach(json_object_get(part, "keys"), i, l)
        json_array_append(c, l);
    snprintf(n, sizeof n, "%zu", json_array_size(c) - 3);
    json_array_set_new(c, 2, json_string(n));
    snprintf(n, sizeof n, "%zu", json_array_size(json_object_get(part, "locks")) + 1);
    json_array_append_new(c, json_string(txid));
    json_array_append_new(c, json_string(XC_VERSION_TTL));
    json_array_append_new(c, json_string(n));
    json_array_foreach(json_object_get(part, "locks"), i, l)
        json_array_append(c, json_array_get(l, 1));
    json_array_foreach(json_object_get(part, "cmds"), i, l) {
        snprintf(n, sizeof n, "%zu", json_array_size(l));
        json_array_append_new(c, json_string(n));
        json_array_foreach(l, k, a)
            json_array_append(c, a);
    }
    return c;
}

json_t *xc_rollback_cmd(const char *txid, json_t *part)
{
    json_t *c, *l;
    size_t i;

    if (!xc_part_writes(part))
        return NULL;
    c = eval_head(rollback_lua, part, 1);
    json_array_append_new(c, json_string(txid));
    json_array_append_new(c, json_string(XC_VERSION_TTL));
    json_array_foreach(json_object_get(part, "claims"), i, l)
        json_array_append(c, json_array_get(l, 1));
    return c;
}

int xc_lock_holder(const char *v, char *out, size_t n)
{
    const char *sp;

    if (v == NULL || strncmp(v, "L ", 2) != 0 || (sp = strchr(v + 2, ' ')) == NULL ||
        (size_t)(sp - (v + 2)) >= n)
        return 0;
    memcpy(out, v + 2, (size_t)(sp - (v + 2)));
    out[sp - (v + 2)] = '\0';
    return 1;
}

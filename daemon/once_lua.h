/*
 * once_lua.h - writes made at most once by a guard key, for the daemon's
 * background fan-outs on a Redis Cluster (expiry.c, alert.c), where what
 * one MULTI does on a single node is spread over slots: each write is
 * repeated until its step is known done, and the guard (in the written
 * key's slot, named after the event) makes the repeats add nothing.
 */
#ifndef KG_ONCE_LUA_H
#define KG_ONCE_LUA_H

#include <string.h>

#include "kgc_cluster.h"
#include "kgc_keys.h"

/* The guard of write <what> of event <id> next to key: P {~n}once:<what>:<id>,
 * ~n the tag of key's slot. */
#define ONCE_RK "{%s}once:%s:%s"

static inline void once_key(const char *prefix, char out[KGC_RKEY_MAX], const char *key,
                            const char *what, const char *id)
{
    kgc_rkey(out, prefix, ONCE_RK, kgc_cluster_tag(kgc_cluster_slot(key, strlen(key))), what, id);
}
#define ONCE_TTL_S "2592000"      /* 30 days: longer than any retry of the event */

/* KEYS: a notification list, its guard. ARGV: the notification. */
static const char __attribute__((unused)) PUSH_ONCE_LUA[] =
    "if redis.call('SET', KEYS[2], '1', 'NX', 'EX', " ONCE_TTL_S ") then\n"
    "  redis.call('LPUSH', KEYS[1], ARGV[1])\n"
    "  redis.call('LTRIM', KEYS[1], 0, 999)\n"
    "end\n"
    "return 1\n";

/* KEYS: a zset, its guard. ARGV: score, member. */
static const char __attribute__((unused)) ZADD_ONCE_LUA[] =
    "if redis.call('SET', KEYS[2], '1', 'NX', 'EX', " ONCE_TTL_S ") then\n"
    "  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])\n"
    "end\n"
    "return 1\n";

#endif

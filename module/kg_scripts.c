/*
 * kg_scripts.c - the two Lua scripts through which libkeygate moves money
 * and counts free requests. Each runs atomically in Redis (EVALSHA, loaded
 * with SCRIPT LOAD and reloaded on NOSCRIPT) and touches keys of one team
 * only, all named in KEYS, so it runs on one Redis Cluster slot.
 *
 * Numbers: Redis' Lua has doubles only, exact up to 2^53 micros (9e9
 * currency units). Integers are written with string.format('%d'), not with
 * cjson.encode, whose 14 significant digits would turn a large balance
 * into "1e+14"; strings go through cjson.encode for proper JSON escaping.
 */
#include "kg_internal.h"

/* A request id's record (both scripts write and read the same one):
 *   cost_micros, balance_micros, wallet_id, at   the first outcome
 *   user_id, service, model, fp                  what was asked (fp: the
 *                                                request's fingerprint,
 *                                                kg_flow.c fingerprint())
 * A later request with that id is a replay only if its fp is the same;
 * otherwise, or when the record has no fp (written before fp existed), it
 * is a conflict: refused, nothing served, nothing changed (issue 10). */

/* Debit.
 *   KEYS[1] P {t:T}:wallet:<wid>      hash, field balance_micros
 *   KEYS[2] P {t:T}:ledger:<wid>      list of JSON entries, newest first
 *   KEYS[3] P {t:T}:req:<kid>:<rid>   first outcome of a request id
 *   ARGV    cost, key_id, user_id, service, model, request_id ('' = none),
 *           wallet_id, fp
 * Returns {'ok', balance} | {'replay', cost, balance, wallet_id} |
 *         {'conflict'} | {'funds', balance} | {'nowallet'}.
 * A refusal writes nothing, so a retry after a top-up can succeed. A cost
 * of 0 (a catalog that allows it: price.min_micros 0) moves no money and
 * writes no ledger entry; the request record is still written. */
static const char debit_lua[] =
    "local rid = ARGV[6]\n"
    "if rid ~= '' then\n"
    "  local r = redis.call('HMGET', KEYS[3], 'cost_micros', 'balance_micros', 'wallet_id', 'fp')\n"
    "  if r[1] then\n"
    "    if r[4] ~= ARGV[8] then return {'conflict'} end\n"
    "    return {'replay', tonumber(r[1]) or 0, tonumber(r[2]) or -1, r[3] or ''}\n"
    "  end\n"
    "end\n"
    "local bal = redis.call('HGET', KEYS[1], 'balance_micros')\n"
    "if not bal then return {'nowallet'} end\n"
    "bal = tonumber(bal)\n"
    "local cost = tonumber(ARGV[1])\n"
    "if bal == nil or cost == nil or cost < 0 then\n"
    "  return redis.error_reply('ERR keygate: wallet or cost is not an integer')\n"
    "end\n"
    "if bal < cost then return {'funds', bal} end\n"
    "local nb = bal\n"
    "local t = redis.call('TIME')\n"
    "local at = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))\n"
    "if cost > 0 then\n"
    "  nb = redis.call('HINCRBY', KEYS[1], 'balance_micros', '-' .. ARGV[1])\n"
    "  local e = '{\"type\":\"debit\",\"amount_micros\":' .. ARGV[1] ..\n"
    "    ',\"balance_micros\":' .. string.format('%d', nb) ..\n"
    "    ',\"at\":' .. at ..\n"
    "    ',\"key_id\":' .. cjson.encode(ARGV[2]) ..\n"
    "    ',\"user_id\":' .. cjson.encode(ARGV[3]) ..\n"
    "    ',\"service\":' .. cjson.encode(ARGV[4]) ..\n"
    "    ',\"model\":' .. cjson.encode(ARGV[5]) ..\n"
    "    ',\"request_id\":' .. (rid ~= '' and cjson.encode(rid) or 'null') .. '}'\n"
    "  redis.call('LPUSH', KEYS[2], e)\n"
    "end\n"
    "if rid ~= '' then\n"
    "  redis.call('HSET', KEYS[3], 'cost_micros', ARGV[1], 'balance_micros',\n"
    "             string.format('%d', nb), 'wallet_id', ARGV[7], 'at', at,\n"
    "             'user_id', ARGV[3], 'service', ARGV[4], 'model', ARGV[5], 'fp', ARGV[8])\n"
    "  redis.call('EXPIRE', KEYS[3], 86400)\n"
    "end\n"
    "return {'ok', nb}\n";

/* Free-tier count.
 *   KEYS[1] P {t:T}:quota:<svc>:<yyyymmdd>   the team's requests that UTC day,
 *                                            whichever key they came through
 *   KEYS[2] P {t:T}:req:<kid>:<rid>
 *   ARGV    limit (0 = unlimited, still counted), request_id ('' = none),
 *           user_id, service, model, fp
 * Returns {'ok', count} | {'quota', count} | {'replay'} | {'conflict'}.
 * A refused request is not counted. */
static const char quota_lua[] =
    "local rid = ARGV[2]\n"
    "if rid ~= '' then\n"
    "  local r = redis.call('HMGET', KEYS[2], 'cost_micros', 'fp')\n"
    "  if r[1] then\n"
    "    if r[2] ~= ARGV[6] then return {'conflict'} end\n"
    "    return {'replay'}\n"
    "  end\n"
    "end\n"
    "local lim = tonumber(ARGV[1]) or 0\n"
    "local n = tonumber(redis.call('GET', KEYS[1]) or '0') or 0\n"
    "if lim > 0 and n >= lim then return {'quota', n} end\n"
    "n = redis.call('INCR', KEYS[1])\n"
    "if n == 1 then redis.call('EXPIRE', KEYS[1], 172800) end\n"
    "if rid ~= '' then\n"
    "  local t = redis.call('TIME')\n"
    "  local at = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))\n"
    "  redis.call('HSET', KEYS[2], 'cost_micros', '0', 'balance_micros', '-1',\n"
    "             'wallet_id', '', 'at', at,\n"
    "             'user_id', ARGV[3], 'service', ARGV[4], 'model', ARGV[5], 'fp', ARGV[6])\n"
    "  redis.call('EXPIRE', KEYS[2], 86400)\n"
    "end\n"
    "return {'ok', n}\n";

const char *const kg_script_text[KG_NSCRIPTS] = {debit_lua, quota_lua};

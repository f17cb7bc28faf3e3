/*
 * kg_scripts.c - the Lua scripts through which libkeygate moves money
 * (debit; hold and settle) and counts free requests. Each runs atomically in Redis (EVALSHA, loaded
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
 * A later request with that id is a replay only if its fp and its user
 * are the same (the fp leaves the user out, so that a cold request can
 * compute it before the token is resolved: issue 11); otherwise, or when
 * the record has no fp (written before fp existed), it is a conflict:
 * refused, nothing served, nothing changed (issue 10). */

/* Holds (settle services, docs/module.md "Reserve and settle"). Every
 * money script of a wallet names its five keys:
 *   KEYS[1] P {t:T}:wallet:<wid>      hash: balance_micros (credits − debits),
 *                                     held_micros (Σ open holds, ≤ balance)
 *   KEYS[2] P {t:T}:ledger:<wid>      list of JSON entries, newest first
 *   KEYS[3] P {t:T}:req:<kid>:<rid>   the request id's record
 *   KEYS[4] P {t:T}:holds:<wid>       hash: "<kid> <rid>" -> "amount user service model"
 *   KEYS[5] P {t:T}:holdexp:<wid>     zset: "<kid> <rid>" by expiry (Redis ms)
 * and first captures up to 16 holds whose expiry has passed, each at its
 * reserved amount with one ledger debit marked "settle":"expired": the
 * first script to run after the expiry does it, in the same atomic step,
 * so a hold is captured exactly once whoever races for it. A capture
 * lowers balance and held_micros alike, so the available amount
 * (balance − held) it leaves is what it was.
 *
 * Usage (issue 12, docs/module.md "Usage counters"): every charge a money
 * script makes (a debit, a settle, a captured hold) is counted in the
 * team's usage hashes of the UTC day and hour (gateway clock, as the quota
 * and spend keys), passed as two more KEYS: field "<kid> <wid> <svc>
 * <model or -> <metric>", metric n (requests), c (micros charged) or
 * p.<param> (the param's total; a capture knows none). A hash expires 400
 * days (day) or 14 days (hour) after its first field was made. The
 * counters go through redis.pcall: a total that would overflow int64
 * stays where it was rather than abort a script that already moved money.
 * With `usage_counters off` the gateway passes '' for both hashes and
 * nothing is counted (the cost of counting is in docs/module.md).
 *
 * A refusal for funds (funds_refused) on a wallet with a low-balance
 * threshold stamps the wallet's refused_at (Redis ms): keygated's alert
 * pass turns it into at most one wallet.funds_refused alert an hour
 * (daemon/alert.c). It moves no money and writes nothing for the request. */
#define KG_LUA_COMMON                                                              \
    "local function now_ms()\n"                                                    \
    "  local t = redis.call('TIME')\n"                                             \
    "  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"         \
    "end\n"                                                                        \
    "local LEASED = nil\n"                                                         \
    "local function entry(amt, nb, at, kid, uid, svc, mdl, rid, extra)\n"          \
    "  local f = nb + (LEASED or tonumber(redis.call('HGET', KEYS[1], 'leased_micros') or '0') or 0)\n" \
    "  return '{\"type\":\"debit\",\"amount_micros\":' .. string.format('%d', amt) ..\n" \
    "    ',\"balance_micros\":' .. string.format('%d', f) ..\n"                    \
    "    ',\"at\":' .. string.format('%d', at) ..\n"                               \
    "    ',\"key_id\":' .. cjson.encode(kid) ..\n"                                 \
    "    ',\"user_id\":' .. cjson.encode(uid) ..\n"                                \
    "    ',\"service\":' .. cjson.encode(svc) ..\n"                                \
    "    ',\"model\":' .. cjson.encode(mdl) ..\n"                                  \
    "    ',\"request_id\":' .. (rid ~= '' and cjson.encode(rid) or 'null') .. extra .. '}'\n" \
    "end\n"                                                                        \
    "local function usage_add(ud, uh, kid, wid, svc, mdl, amt, pi)\n"             \
    "  if ud == '' then return end\n"                                              \
    "  local c = kid .. ' ' .. wid .. ' ' .. svc .. ' ' .. (mdl ~= '' and mdl or '-') .. ' '\n" \
    "  local a = string.format('%d', amt)\n"                                      \
    "  for i, k in ipairs({ud, uh}) do\n"                                          \
    "    local n = redis.pcall('HINCRBY', k, c .. 'n', 1)\n"                        \
    "    if n == 1 then redis.call('EXPIRE', k, i == 1 and 34560000 or 1209600) end\n" \
    "    if amt > 0 then redis.pcall('HINCRBY', k, c .. 'c', a) end\n"             \
    "    if pi then\n"                                                              \
    "      for j = pi, #ARGV - 1, 2 do\n"                                           \
    "        if (tonumber(ARGV[j + 1]) or 0) ~= 0 then\n"                           \
    "          redis.pcall('HINCRBY', k, c .. 'p.' .. ARGV[j], ARGV[j + 1])\n"      \
    "        end\n"                                                                 \
    "      end\n"                                                                   \
    "    end\n"                                                                     \
    "  end\n"                                                                       \
    "end\n"                                                                         \
    "local function sweep(now, ud, uh, wid)\n"                                    \
    "  local ids = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, 16)\n" \
    "  if #ids == 0 then return 0 end\n"                                           \
    "  for _, id in ipairs(ids) do\n"                                              \
    "    local v = redis.call('HGET', KEYS[4], id)\n"                              \
    "    redis.call('ZREM', KEYS[5], id)\n"                                        \
    "    if v then\n"                                                              \
    "      redis.call('HDEL', KEYS[4], id)\n"                                      \
    "      local amt, uid, svc, mdl = string.match(v, '^(%d+) (%S+) (%S+) (%S+)$')\n" \
    "      local kid, rid = string.match(id, '^(%S+) (.+)$')\n"                    \
    "      amt = tonumber(amt) or 0\n"                                             \
    "      redis.call('HINCRBY', KEYS[1], 'held_micros', string.format('%d', -amt))\n" \
    "      local nb = redis.call('HINCRBY', KEYS[1], 'balance_micros', string.format('%d', -amt))\n" \
    "      redis.call('LPUSH', KEYS[2], entry(amt, nb, now, kid or '', uid or '', svc or '',\n" \
    "        mdl or '', rid or '', ',\"settle\":\"expired\",\"hold_micros\":' .. string.format('%d', amt)))\n" \
    "      usage_add(ud, uh, kid or '', wid, svc or '', mdl or '', amt, nil)\n"    \
    "    end\n"                                                                    \
    "  end\n"                                                                      \
    "  return #ids\n"                                                              \
    "end\n"                                                                        \
    "local function wallet_state()\n"                                              \
    "  local w = redis.call('HMGET', KEYS[1], 'balance_micros', 'held_micros', 'leased_micros')\n" \
    "  if not w[1] then return nil end\n"                                          \
    "  local bal, held = tonumber(w[1]), tonumber(w[2] or '0')\n"                  \
    "  LEASED = tonumber(w[3] or '0')\n"                                           \
    "  if bal == nil or held == nil or LEASED == nil then\n"                       \
    "    return redis.error_reply('ERR keygate: wallet amounts are not integers')\n" \
    "  end\n"                                                                      \
    "  return bal, held\n"                                                         \
    "end\n"                                                                        \
    "local function open_wallet(ud, uh, wid)\n"                                    \
    "  local bal, held = wallet_state()\n"                                         \
    "  if bal == nil or type(bal) == 'table' then return bal end\n"                \
    "  local now = now_ms()\n"                                                     \
    "  if sweep(now, ud, uh, wid) > 0 then bal, held = wallet_state() end\n"       \
    "  return now, bal, held\n"                                                    \
    "end\n"                                                                        \
    "local function funds_refused(now, bal)\n"                                     \
    "  if redis.call('HEXISTS', KEYS[1], 'alert_threshold_micros') == 1 then\n"    \
    "    redis.call('HSET', KEYS[1], 'refused_at', string.format('%d', now))\n"   \
    "  end\n"                                                                      \
    "  return {'funds', bal}\n"                                                    \
    "end\n"

/* Budgets and rate limits (issue 13; docs/module.md "Budgets" and "Rate
 * limits"), shared by the debit, hold and quota scripts. Every check runs
 * before anything is written, and only an admitted request is counted, so
 * a refusal leaves the counters as they were.
 *
 * Budgets: the key's spend per UTC day and per calendar month, integer
 * micros in plain string keys, counted only while a cap is set (0: none).
 * A request is refused when spend + its cost (or hold) would pass a cap:
 * never one over the cap, never one refused below it.
 *
 * Rate limits: a sliding-window log per key and service (a zset of the
 * admitted requests scored by Redis ms, kept for 60 s when a per-minute
 * limit is set, else 1 s): admitted when fewer than per_minute were
 * admitted in the last 60000 ms (ZCARD) and fewer than per_second in the
 * last 1000 (ZCOUNT). Exact at millisecond resolution, for any number of
 * gateways: the log lives in the team's slot and is read and written in
 * the script that admits. Memory is one member per admitted request in the
 * window, which is why the daemon caps limits (1000 a second, 10000 a
 * minute). The wait returned is when enough members have left a full
 * window for one more to fit. */
#define KG_LUA_LIMITS                                                              \
    "local function fmt(x) return string.format('%d', x) end\n"                    \
    "local function nth_wait(k, min, i, win, now)\n"                               \
    "  local o = redis.call('ZRANGEBYSCORE', k, min, '+inf', 'WITHSCORES', 'LIMIT', i, 1)\n" \
    "  local w = (tonumber(o[2]) or now) + win - now\n"                            \
    "  if w < 1 then w = 1 end\n"                                                  \
    "  return w\n"                                                                 \
    "end\n"                                                                        \
    "local function rate_check(k, ps, pm, now)\n"                                  \
    "  if ps <= 0 and pm <= 0 then return 0 end\n"                                \
    "  local win = pm > 0 and 60000 or 1000\n"                                     \
    "  redis.call('ZREMRANGEBYSCORE', k, '-inf', fmt(now - win))\n"                \
    "  local n = redis.call('ZCARD', k)\n"                                         \
    "  local wait = 0\n"                                                           \
    "  if pm > 0 and n >= pm then wait = nth_wait(k, '-inf', n - pm, 60000, now) end\n" \
    "  if ps > 0 then\n"                                                           \
    "    local lo = '(' .. fmt(now - 1000)\n"                                      \
    "    local c = pm > 0 and redis.call('ZCOUNT', k, lo, '+inf') or n\n"          \
    "    if c >= ps then wait = math.max(wait, nth_wait(k, lo, c - ps, 1000, now)) end\n" \
    "  end\n"                                                                      \
    "  if wait > 0 then return wait end\n"                                         \
    "  redis.call('ZADD', k, fmt(now), fmt(now) .. '-' .. fmt(n))\n"               \
    "  redis.call('PEXPIRE', k, win)\n"                                            \
    "  return 0\n"                                                                 \
    "end\n"                                                                        \
    "local function budget_over(amt, kd, km, capd, capm)\n"                        \
    "  if amt <= 0 or (capd <= 0 and capm <= 0) then return false end\n"           \
    "  local v = redis.call('MGET', kd, km)\n"                                     \
    "  if capd > 0 and (tonumber(v[1]) or 0) + amt > capd then return true end\n"  \
    "  if capm > 0 and (tonumber(v[2]) or 0) + amt > capm then return true end\n"  \
    "  return false\n"                                                             \
    "end\n"                                                                        \
    "local function budget_add(amt, kd, km, capd, capm)\n"                         \
    "  if amt <= 0 then return end\n"                                              \
    "  if capd > 0 and redis.call('INCRBY', kd, fmt(amt)) == amt then\n"           \
    "    redis.call('EXPIRE', kd, 172800)\n"                                       \
    "  end\n"                                                                      \
    "  if capm > 0 and redis.call('INCRBY', km, fmt(amt)) == amt then\n"           \
    "    redis.call('EXPIRE', km, 5356800)\n"                                      \
    "  end\n"                                                                      \
    "end\n"

/* Debit (payg, services without settle).
 *   KEYS    as above, then 6 P {t:T}:spend:<kid>:d:<yyyymmdd>,
 *           7 P {t:T}:spend:<kid>:m:<yyyymm>, 8 P {t:T}:rate:<kid>:<svc>
 *           9 P {t:T}:usage:d:<yyyymmdd>, 10 P {t:T}:usage:h:<yyyymmddhh>
 *   ARGV    cost, key_id, user_id, service, model, request_id ('' = none),
 *           wallet_id, fp, hold_ttl_ms (unused here), budget_day,
 *           budget_month, per_second, per_minute (0 = none), yyyymmdd, yyyymm,
 *           then the request's params as name, value pairs (usage)
 * Returns {'ok', balance} | {'replay', cost, balance, wallet_id} |
 *         {'conflict'} | {'budget'} | {'funds', balance} | {'rate', wait_ms} |
 *         {'nowallet'}.
 * Checks in this order: budget, funds, rate (a request refused for good
 * is not told to retry).
 * Money held for other requests is not available: balance − held ≥ cost
 * is the check. A refusal writes nothing for the request (expired holds
 * are still captured), so a retry after a top-up can succeed. A cost of 0
 * (a catalog that allows it: price.min_micros 0) moves no money and
 * writes no ledger entry; the request record is still written. */
#define KG_LUA_DEBIT                                                               \
    "local rid = ARGV[6]\n"                                                        \
    "if rid ~= '' then\n"                                                          \
    "  local r = redis.call('HMGET', KEYS[3], 'cost_micros', 'balance_micros', 'wallet_id', 'fp', 'user_id')\n" \
    "  if r[1] then\n"                                                             \
    "    if r[4] ~= ARGV[8] or r[5] ~= ARGV[3] then return {'conflict'} end\n"    \
    "    return {'replay', tonumber(r[1]) or 0, tonumber(r[2]) or -1, r[3] or ''}\n" \
    "  end\n" \
    "end\n" \
    "local now, bal, held = open_wallet(KEYS[9], KEYS[10], ARGV[7])\n" \
    "if now == nil then return {'nowallet'} end\n" \
    "if type(now) == 'table' then return now end\n" \
    "local cost = tonumber(ARGV[1])\n" \
    "if cost == nil or cost < 0 then\n" \
    "  return redis.error_reply('ERR keygate: cost is not an integer')\n" \
    "end\n" \
    "local capd, capm = tonumber(ARGV[10]) or 0, tonumber(ARGV[11]) or 0\n" \
    "local ps, pm = tonumber(ARGV[12]) or 0, tonumber(ARGV[13]) or 0\n" \
    "if budget_over(cost, KEYS[6], KEYS[7], capd, capm) then return {'budget'} end\n" \
    "if bal - held < cost then return funds_refused(now, bal) end\n" \
    "local wait = rate_check(KEYS[8], ps, pm, now)\n" \
    "if wait > 0 then return {'rate', wait} end\n" \
    "budget_add(cost, KEYS[6], KEYS[7], capd, capm)\n" \
    "local nb = bal\n" \
    "if cost > 0 then\n" \
    "  nb = redis.call('HINCRBY', KEYS[1], 'balance_micros', '-' .. ARGV[1])\n" \
    "  redis.call('LPUSH', KEYS[2], entry(cost, nb, now, ARGV[2], ARGV[3], ARGV[4], ARGV[5], rid, ''))\n" \
    "end\n" \
    "if rid ~= '' then\n" \
    "  redis.call('HSET', KEYS[3], 'cost_micros', ARGV[1], 'balance_micros',\n" \
    "             string.format('%d', nb), 'wallet_id', ARGV[7], 'at', string.format('%d', now),\n" \
    "             'user_id', ARGV[3], 'service', ARGV[4], 'model', ARGV[5], 'fp', ARGV[8])\n" \
    "  redis.call('EXPIRE', KEYS[3], 86400)\n" \
    "end\n" \
    "usage_add(KEYS[9], KEYS[10], ARGV[2], ARGV[7], ARGV[4], ARGV[5], cost, 16)\n" \
    "return {'ok', nb}\n"

static const char debit_lua[] = KG_LUA_COMMON KG_LUA_LIMITS KG_LUA_DEBIT;

/* Hold (authorize on a settle service): reserves the worst-case price.
 *   KEYS    as above
 *   ARGV    hold, key_id, user_id, service, model, request_id (never ''),
 *           wallet_id, fp, hold_ttl_ms, then as the debit's
 *   KEYS    as the debit's
 * Returns {'held', balance, available, expires_ms} |
 *         {'replay', 0, balance, wallet_id, hold} | {'conflict'} |
 *         {'budget'} | {'funds', balance} | {'rate', wait_ms} | {'nowallet'}.
 * The hold counts against the budgets at its full amount; the record
 * keeps which day ("bd") and month ("bm") counted it, for the settle.
 * No ledger entry: no money moved yet (kg_settle writes the one entry).
 * The record (state "held") lives the hold's life plus a day, so a late
 * settle still finds it and answers that the hold was captured. */
#define KG_LUA_HOLD \
    "local rid = ARGV[6]\n" \
    "local r = redis.call('HMGET', KEYS[3], 'cost_micros', 'balance_micros', 'wallet_id', 'fp', 'hold_micros', 'user_id')\n" \
    "if r[1] then\n" \
    "  if r[4] ~= ARGV[8] or r[6] ~= ARGV[3] then return {'conflict'} end\n" \
    "  return {'replay', tonumber(r[1]) or 0, tonumber(r[2]) or -1, r[3] or '', tonumber(r[5]) or 0}\n" \
    "end\n" \
    "local now, bal, held = open_wallet(KEYS[9], KEYS[10], ARGV[7])\n" \
    "if now == nil then return {'nowallet'} end\n" \
    "if type(now) == 'table' then return now end\n" \
    "local h, ttl = tonumber(ARGV[1]), tonumber(ARGV[9])\n" \
    "if h == nil or h < 0 or ttl == nil or ttl < 1 then\n" \
    "  return redis.error_reply('ERR keygate: hold or ttl is not an integer')\n" \
    "end\n" \
    "local capd, capm = tonumber(ARGV[10]) or 0, tonumber(ARGV[11]) or 0\n" \
    "local ps, pm = tonumber(ARGV[12]) or 0, tonumber(ARGV[13]) or 0\n" \
    "if budget_over(h, KEYS[6], KEYS[7], capd, capm) then return {'budget'} end\n" \
    "if bal - held < h then return funds_refused(now, bal) end\n" \
    "local wait = rate_check(KEYS[8], ps, pm, now)\n" \
    "if wait > 0 then return {'rate', wait} end\n" \
    "budget_add(h, KEYS[6], KEYS[7], capd, capm)\n" \
    "local id = ARGV[2] .. ' ' .. rid\n" \
    "local exp = now + ttl\n" \
    "redis.call('HSET', KEYS[4], id, ARGV[1] .. ' ' .. ARGV[3] .. ' ' .. ARGV[4] .. ' ' .. ARGV[5])\n" \
    "redis.call('ZADD', KEYS[5], exp, id)\n" \
    "redis.call('HINCRBY', KEYS[1], 'held_micros', ARGV[1])\n" \
    "redis.call('HSET', KEYS[3], 'cost_micros', '0', 'hold_micros', ARGV[1],\n" \
    "           'balance_micros', string.format('%d', bal), 'wallet_id', ARGV[7],\n" \
    "           'at', string.format('%d', now), 'expires_ms', string.format('%d', exp),\n" \
    "           'state', 'held', 'user_id', ARGV[3], 'service', ARGV[4], 'model', ARGV[5],\n" \
    "           'fp', ARGV[8])\n" \
    "if h > 0 and capd > 0 then redis.call('HSET', KEYS[3], 'bd', ARGV[14]) end\n" \
    "if h > 0 and capm > 0 then redis.call('HSET', KEYS[3], 'bm', ARGV[15]) end\n" \
    "redis.call('EXPIRE', KEYS[3], math.floor(ttl / 1000) + 86400)\n" \
    "return {'held', bal, bal - held - h, exp}\n"

static const char hold_lua[] = KG_LUA_COMMON KG_LUA_LIMITS KG_LUA_HOLD;

/* Settle: charges the measured cost of a held request, releases the rest.
 *   KEYS    as above (KEYS[1], [2], [4], [5] of the wallet the caller
 *           believes holds it: the record says which one)
 *           6, 7 the key's spend keys of today and this month (as the debit's)
 *           8, 9 the team's usage hashes of this day and hour
 *   ARGV    actual cost (-1: the whole hold), key_id, request_id, wallet_id,
 *           yyyymmdd, yyyymm, then the settle's params as name, value pairs
 * Returns {'ok', charged, balance, hold} | {'replay', charged, balance, hold} |
 *         {'captured', hold, balance} | {'wallet', wallet_id} | {'nohold'}.
 * The charge is min(actual cost, hold): the hold is the most the request
 * was allowed to cost (a measured use above the declared maximum is
 * capped; the entry keeps the computed "actual_micros"). One ledger debit
 * (kept even at 0, to show the release); the record becomes "settled" and
 * a retry replays it. A hold that expired before its settle was or is
 * captured at its full amount; the settle then changes nothing.
 * Budgets: the part of the hold released leaves the spend of the day and
 * month that counted the hold, when they are still today and this month
 * (an earlier day's spend stays as held: that day is over). */
#define KG_LUA_SETTLE \
    "local r = redis.call('HMGET', KEYS[3], 'state', 'wallet_id', 'hold_micros', 'settled_micros', 'balance_micros', 'bd', 'bm')\n" \
    "if not r[1] then return {'nohold'} end\n" \
    "if r[2] ~= ARGV[4] then return {'wallet', r[2] or ''} end\n" \
    "if r[1] == 'settled' then\n" \
    "  return {'replay', tonumber(r[4]) or 0, tonumber(r[5]) or -1, tonumber(r[3]) or 0}\n" \
    "end\n" \
    "local now, bal = open_wallet(KEYS[8], KEYS[9], ARGV[4])\n" \
    "if now == nil then return {'nowallet'} end\n" \
    "if type(now) == 'table' then return now end\n" \
    "local id = ARGV[2] .. ' ' .. ARGV[3]\n" \
    "local v = redis.call('HGET', KEYS[4], id)\n" \
    "if not v then\n" \
    "  redis.call('HSET', KEYS[3], 'state', 'captured')\n" \
    "  return {'captured', tonumber(r[3]) or 0, bal}\n" \
    "end\n" \
    "local h, uid, svc, mdl = string.match(v, '^(%d+) (%S+) (%S+) (%S+)$')\n" \
    "h = tonumber(h)\n" \
    "local cost = tonumber(ARGV[1])\n" \
    "if h == nil or cost == nil or cost < -1 then\n" \
    "  return redis.error_reply('ERR keygate: hold or cost is not an integer')\n" \
    "end\n" \
    "local charge = (cost >= 0 and cost < h) and cost or h\n" \
    "redis.call('HDEL', KEYS[4], id)\n" \
    "redis.call('ZREM', KEYS[5], id)\n" \
    "redis.call('HINCRBY', KEYS[1], 'held_micros', string.format('%d', -h))\n" \
    "local nb = redis.call('HINCRBY', KEYS[1], 'balance_micros', string.format('%d', -charge))\n" \
    "local extra = ',\"settle\":\"settled\",\"hold_micros\":' .. string.format('%d', h)\n" \
    "if cost > h then extra = extra .. ',\"actual_micros\":' .. ARGV[1] end\n" \
    "redis.call('LPUSH', KEYS[2], entry(charge, nb, now, ARGV[2], uid, svc, mdl, ARGV[3], extra))\n" \
    "local back = h - charge\n" \
    "if back > 0 and r[6] == ARGV[5] then redis.call('DECRBY', KEYS[6], string.format('%d', back)) end\n" \
    "if back > 0 and r[7] == ARGV[6] then redis.call('DECRBY', KEYS[7], string.format('%d', back)) end\n" \
    "redis.call('HSET', KEYS[3], 'state', 'settled', 'settled_micros', string.format('%d', charge),\n" \
    "           'balance_micros', string.format('%d', nb), 'settled_at', string.format('%d', now))\n" \
    "usage_add(KEYS[8], KEYS[9], ARGV[2], ARGV[4], svc, mdl, charge, 7)\n" \
    "return {'ok', charge, nb, h}\n"

static const char settle_lua[] = KG_LUA_COMMON KG_LUA_SETTLE;

/* Free-tier count.
 *   KEYS[1] P {t:T}:quota:<svc>:<yyyymmdd>   the team's requests that UTC day,
 *                                            whichever key they came through
 *   KEYS[2] P {t:T}:req:<kid>:<rid>
 *   KEYS[3] P {t:T}:rate:<kid>:<svc> (rate limits)
 *   ARGV    limit (0 = unlimited, still counted), request_id ('' = none),
 *           user_id, service, model, fp, per_second, per_minute (0 = none)
 * Returns {'ok', count} | {'quota', count} | {'rate', wait_ms} | {'replay'} |
 *         {'conflict'}.
 * A refused request is not counted. */
#define KG_LUA_QUOTA \
    "local rid = ARGV[2]\n" \
    "if rid ~= '' then\n" \
    "  local r = redis.call('HMGET', KEYS[2], 'cost_micros', 'fp', 'user_id')\n" \
    "  if r[1] then\n" \
    "    if r[2] ~= ARGV[6] or r[3] ~= ARGV[3] then return {'conflict'} end\n" \
    "    return {'replay'}\n" \
    "  end\n" \
    "end\n" \
    "local lim = tonumber(ARGV[1]) or 0\n" \
    "local n = tonumber(redis.call('GET', KEYS[1]) or '0') or 0\n" \
    "if lim > 0 and n >= lim then return {'quota', n} end\n" \
    "local ps, pm = tonumber(ARGV[7]) or 0, tonumber(ARGV[8]) or 0\n" \
    "if ps > 0 or pm > 0 then\n" \
    "  local t = redis.call('TIME')\n" \
    "  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n" \
    "  local wait = rate_check(KEYS[3], ps, pm, now)\n" \
    "  if wait > 0 then return {'rate', wait} end\n" \
    "end\n" \
    "n = redis.call('INCR', KEYS[1])\n" \
    "if n == 1 then redis.call('EXPIRE', KEYS[1], 172800) end\n" \
    "if rid ~= '' then\n" \
    "  local t = redis.call('TIME')\n" \
    "  local at = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))\n" \
    "  redis.call('HSET', KEYS[2], 'cost_micros', '0', 'balance_micros', '-1',\n" \
    "             'wallet_id', '', 'at', at,\n" \
    "             'user_id', ARGV[3], 'service', ARGV[4], 'model', ARGV[5], 'fp', ARGV[6])\n" \
    "  redis.call('EXPIRE', KEYS[2], 86400)\n" \
    "end\n" \
    "return {'ok', n}\n"

static const char quota_lua[] = KG_LUA_LIMITS KG_LUA_QUOTA;

/* Cold authorize / settle (issue 11): a request whose token is not in the
 * warm cache is ONE script on the team's slot. It resolves the token
 * record, reads the key document and checks exactly what the warm path
 * checks in C (kg_cache.c kg_entry_build, kg_flow.c token_verdict and
 * decide, in the same order), then runs the very same money body as the
 * warm scripts: each body above is wrapped, unchanged, in a function whose
 * parameters are named KEYS and ARGV, so the text that moves money exists
 * once. Only the token record is declared; every other key carries the
 * same {t:T} tag (so the same slot) and is named here from prefix + team,
 * as kgc_keys.h names them.
 * While the slot is being moved key by key, Redis checks only the declared
 * key before the script runs, and a lone undeclared key that is missing
 * reads as nil on the importing node (ASKING) and is refused mid-script on
 * the migrating one: a replay's record still on the old node would read
 * as absent and the request would be charged again. So the key document
 * is read with the token record in one MGET, and the money body's keys are
 * first named together in one EXISTS, before anything is written: Redis
 * refuses a multi-key command while any of its keys is on the other node
 * (ASK on the source, TRYAGAIN on the target), and the script then answers
 * TRYAGAIN, which the gateway retries until the move ends or its
 * timeout_ms passes (KG_BACKEND_ERROR, nothing changed). The EXISTS is
 * one more call (about 3 us of Redis CPU on this project's 2-core VM, the
 * cold script's ~45), made on a cluster only: one server's slots never
 * move.
 *   KEYS[1] P {t:T}:tok:<hash>          (T: the team the token names)
 *   ARGV    1 prefix P, 2 team T, 3 token hash, 4 gateway wall clock (ms:
 *           token and key expiry, as the warm path), 5 mode ('a' authorize,
 *           's' settle), 6 service, 7 resolved model ('' if none),
 *           8 request id, 9 fp, 10 '1' if the catalog refuses the request
 *           (BAD_REQUEST: authorize: unknown service or model, bad params;
 *           settle: all of decide_settle's checks), 11 '1' if the service
 *           has a free tier, 12 '1' if it is a settle service, 13 '1' if a
 *           hold cannot be priced (no request id, a measured param without
 *           maximum), 14 the amount (debit price | hold | settle cost),
 *           15 quota limit, 16 hold_ttl_ms, 17 '1' = usage counters on,
 *           18 yyyymmdd, 19 yyyymm, 20 yyyymmddhh, 21 '1' = return the key
 *           document (the caller will cache it), 22 '1' = a cluster (the
 *           slot may be moving: the guard below), 23.. params (name, value)
 * Returns {'unknown'} | {'damaged'} (no usable record) or
 *   {'k', key_id, user_id, expires_ms, key document ('' unless asked for),
 *    wallet_id, verdict
 *    [, the money body's reply]}
 * verdict: 'revoked' | 'unknown' | 'expired' | 'bad' | 'disabled' |
 *   'denied' | 'damaged' | 'none' (a settle under the free policy) |
 *   'quota' | 'debit' | 'hold' | 'settle' (the body's reply follows).
 * The C side builds its warm cache entry from the document returned. */
#define KG_LUA_COLD                                                                \
    "local P, T, H, now, mode = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]\n" \
    "local svc, mdl, rid, fp = ARGV[6], ARGV[7], ARGV[8], ARGV[9]\n"              \
    "local function D(x) return string.format('%d', x) end\n"                     \
    "local function id_ok(s)\n"                                                   \
    "  return type(s) == 'string' and #s < 40 and string.match(s, '^[A-Za-z0-9_]+$') ~= nil\n" \
    "end\n"                                                                       \
    "local function get(t, k) if type(t) == 'table' then return t[k] end return nil end\n" \
    "local function count(v)\n"                                                   \
    "  if v == nil or v == cjson.null then return 0 end\n"                        \
    "  if type(v) ~= 'number' or v < 0 or v ~= math.floor(v) then return nil end\n" \
    "  return v\n"                                                                \
    "end\n"                                                                       \
    "local function of_team(w)\n"                                                 \
    "  return id_ok(w) and #w == 22 and string.sub(w, 1, 14) == 'w_' .. string.sub(T, 3)\n" \
    "end\n"                                                                       \
    "local flat = redis.call('HGETALL', KEYS[1])\n"                              \
    "if #flat == 0 then return {'unknown'} end\n"                                \
    "local rec = {}\n"                                                            \
    "for i = 1, #flat - 1, 2 do rec[flat[i]] = flat[i + 1] end\n"                \
    "local kid, uid, es = rec.key_id, rec.user_id, rec.expires_ms or '0'\n"      \
    "if not id_ok(kid) or not id_ok(rec.team_id) or not id_ok(uid) or rec.team_id ~= T or\n" \
    "   not string.match(es, '^%d*$') then return {'damaged'} end\n"              \
    "local exp = tonumber(es) or 0\n"                                             \
    "if exp ~= 0 and exp <= now then return {'unknown'} end\n"                    \
    "local tag = P .. '{t:' .. T .. '}:'\n"                                       \
    "local function retry_later()\n"                                             \
    "  return redis.error_reply('TRYAGAIN keygate: the team slot is being moved')\n" \
    "end\n"                                                                       \
    "local function half_moved(keys)\n"                                          \
    "  if ARGV[22] ~= '1' then return false end\n"                              \
    "  local k = {}\n"                                                           \
    "  for _, x in ipairs(keys) do if x ~= '' then k[#k + 1] = x end end\n"      \
    "  local r = redis.pcall('EXISTS', unpack(k))\n"                             \
    "  return type(r) == 'table' and r.err ~= nil\n"                             \
    "end\n"                                                                       \
    "local kv = redis.pcall('MGET', KEYS[1], tag .. 'key:' .. kid)\n"            \
    "if kv.err then return retry_later() end\n"                                       \
    "local raw = kv[2]\n"                                                         \
    "if not raw then return {'unknown'} end\n"                                    \
    "local okj, doc = pcall(cjson.decode, raw)\n"                                 \
    "if not okj or type(doc) ~= 'table' or doc.key_id ~= kid or type(doc.status) ~= 'string' then\n" \
    "  return {'damaged'}\n"                                                      \
    "end\n"                                                                       \
    "local state = doc.status == 'active' and 'active' or 'revoked'\n"            \
    "if state == 'active' then\n"                                                 \
    "  local found = false\n"                                                     \
    "  if type(doc.users) == 'table' then\n"                                      \
    "    for _, u in ipairs(doc.users) do if u == uid then found = true break end end\n" \
    "  end\n"                                                                     \
    "  if not found then state = 'unassigned' end\n"                              \
    "end\n"                                                                       \
    "if state == 'active' and exp == 0 and get(get(doc.tokens, uid), 'hash') ~= H then\n" \
    "  state = 'unassigned'\n"                                                    \
    "end\n"                                                                       \
    "local kexp, capd, capm = count(doc.expires_at), count(doc.budget_day_micros),\n" \
    "  count(doc.budget_month_micros)\n"                                          \
    "if not kexp or not capd or not capm then return {'damaged'} end\n"          \
    "local rates, svcs = doc.rate_limits, doc.services\n"                         \
    "if rates == cjson.null then rates = nil end\n"                               \
    "if (rates ~= nil and type(rates) ~= 'table') or (svcs ~= nil and type(svcs) ~= 'table') then\n" \
    "  return {'damaged'}\n"                                                      \
    "end\n"                                                                       \
    "local pol\n"                                                                 \
    "for sid, sp in pairs(svcs or {}) do\n"                                       \
    "  if type(sp) ~= 'table' then return {'damaged'} end\n"                      \
    "  local p = {payg = false, ps = 0, pm = 0}\n"                                \
    "  if sp.policy == 'payg' then\n"                                             \
    "    if type(sp.wallet) ~= 'string' or #sp.wallet == 0 or #sp.wallet >= 64 or\n" \
    "       type(sp.models) ~= 'table' then return {'damaged'} end\n"            \
    "    for _, m in pairs(sp.models) do if type(m) ~= 'string' then return {'damaged'} end end\n" \
    "    p.payg, p.wallet, p.models = true, sp.wallet, sp.models\n"               \
    "  elseif sp.policy ~= 'free' then\n"                                         \
    "    return {'damaged'}\n"                                                    \
    "  end\n"                                                                     \
    "  local rl = get(rates, sid)\n"                                              \
    "  if rl ~= nil and rl ~= cjson.null then\n"                                  \
    "    if type(rl) ~= 'table' then return {'damaged'} end\n"                    \
    "    p.ps, p.pm = count(rl.per_second), count(rl.per_minute)\n"               \
    "    if not p.ps or not p.pm then return {'damaged'} end\n"                   \
    "  end\n"                                                                     \
    "  if sid == svc then pol = p end\n"                                          \
    "end\n"                                                                       \
    "local doc_out = ARGV[21] == '1' and raw or ''\n"                              \
    "local function env(v, w, inner) return {'k', kid, uid, D(exp), doc_out, w, v, inner} end\n" \
    "local W = (pol ~= nil and pol.payg) and pol.wallet or ''\n"                  \
    "local day, month, hour = ARGV[18], ARGV[19], ARGV[20]\n"                     \
    "local ud, uh = '', ''\n"                                                     \
    "if ARGV[17] == '1' then ud, uh = tag .. 'usage:d:' .. day, tag .. 'usage:h:' .. hour end\n" \
    "local function params(a) if ud ~= '' then for i = 23, #ARGV do a[#a + 1] = ARGV[i] end end return a end\n" \
    "local function wkeys(w, more)\n"                                             \
    "  local k = {tag .. 'wallet:' .. w, tag .. 'ledger:' .. w, tag .. 'req:' .. kid .. ':' .. rid,\n" \
    "    tag .. 'holds:' .. w, tag .. 'holdexp:' .. w,\n"                         \
    "    tag .. 'spend:' .. kid .. ':d:' .. day, tag .. 'spend:' .. kid .. ':m:' .. month}\n" \
    "  for _, x in ipairs(more) do k[#k + 1] = x end\n"                           \
    "  return k\n"                                                                \
    "end\n"                                                                       \
    "if mode == 's' then\n"                                                       \
    "  if ARGV[10] == '1' then return env('bad', '') end\n"                       \
    "  if pol ~= nil and not pol.payg then return env('none', '') end\n"          \
    "  local a = params({ARGV[14], kid, rid, W, day, month})\n"                   \
    "  local keys = wkeys(W, {ud, uh})\n"                                        \
    "  if half_moved(keys) then return retry_later() end\n"                                \
    "  local r = settle(keys, a)\n"                                              \
    "  if type(r) == 'table' and r[1] == 'wallet' and r[2] ~= W and of_team(r[2]) then\n" \
    "    W, a[4] = r[2], r[2]\n"                                                  \
    "    keys = wkeys(W, {ud, uh})\n"                                            \
    "    if half_moved(keys) then return retry_later() end\n"                              \
    "    r = settle(keys, a)\n"                                                  \
    "  end\n"                                                                     \
    "  return env('settle', W, r)\n"                                              \
    "end\n"                                                                       \
    "if state == 'revoked' then return env('revoked', '') end\n"                  \
    "if state == 'unassigned' then return env('unknown', '') end\n"               \
    "if kexp ~= 0 and kexp <= now then return env('expired', '') end\n"          \
    "local payg = pol ~= nil and pol.payg\n"                                      \
    "if ARGV[10] == '1' or (ARGV[12] == '1' and payg and ARGV[13] == '1') then return env('bad', W) end\n" \
    "if pol == nil or (not payg and ARGV[11] ~= '1') then return env('disabled', W) end\n" \
    "local krate = tag .. 'rate:' .. kid .. ':' .. svc\n"                         \
    "if not payg then\n"                                                          \
    "  local qk = {tag .. 'quota:' .. svc .. ':' .. day, tag .. 'req:' .. kid .. ':' .. rid, krate}\n" \
    "  if half_moved(qk) then return retry_later() end\n"                                  \
    "  return env('quota', W, quota(qk, {ARGV[15], rid, uid, svc, mdl, fp, D(pol.ps), D(pol.pm)}))\n" \
    "end\n"                                                                       \
    "local allowed = false\n"                                                     \
    "for _, m in ipairs(pol.models) do if m == mdl then allowed = true break end end\n" \
    "if not allowed then return env('denied', W) end\n"                           \
    "if not of_team(W) then return env('damaged', W) end\n"                       \
    "local keys = wkeys(W, {krate, ud, uh})\n"                                    \
    "if half_moved(keys) then return retry_later() end\n"                                  \
    "local a = {ARGV[14], kid, uid, svc, mdl, rid, W, fp, ARGV[16], D(capd), D(capm),\n" \
    "  D(pol.ps), D(pol.pm), day, month}\n"                                       \
    "if ARGV[12] == '1' then return env('hold', W, hold(keys, a)) end\n"          \
    "return env('debit', W, debit(keys, params(a)))\n"

static const char cold_lua[] =
    "local function debit(KEYS, ARGV)\n" KG_LUA_COMMON KG_LUA_LIMITS KG_LUA_DEBIT "end\n"
    "local function hold(KEYS, ARGV)\n" KG_LUA_COMMON KG_LUA_LIMITS KG_LUA_HOLD "end\n"
    "local function settle(KEYS, ARGV)\n" KG_LUA_COMMON KG_LUA_SETTLE "end\n"
    "local function quota(KEYS, ARGV)\n" KG_LUA_LIMITS KG_LUA_QUOTA "end\n"
    KG_LUA_COLD;

const char *const kg_script_text[KG_NSCRIPTS] = {debit_lua, quota_lua, hold_lua, settle_lua,
                                                 cold_lua};

/* Capture (keygated's hold sweep, daemon/holds.c): what the first money
 * script on a wallet does before anything else, alone, for a wallet no
 * request touches any more, so that the holds of a crashed gateway are
 * charged and released within about hold_ttl_ms whatever the traffic.
 * The same sweep() as every money script: a hold is captured exactly once
 * whoever (gateway or daemon) runs first.
 *   KEYS    1-5 the wallet's (as above; 3, the request record, unused:
 *           the wallet hash again), 6 P {t:T}:usage:d:<yyyymmdd>,
 *           7 P {t:T}:usage:h:<yyyymmddhh> ('' both: no usage counters)
 *   ARGV    wallet_id
 * Returns the number of holds captured (at most 16 a call), -1 when the
 * wallet does not exist. */
const char kg_capture_lua[] =
    KG_LUA_COMMON
    "if not redis.call('HGET', KEYS[1], 'balance_micros') then return -1 end\n"
    "local before = redis.call('ZCARD', KEYS[5])\n"
    "sweep(now_ms(), KEYS[6], KEYS[7], ARGV[1])\n"
    "return before - redis.call('ZCARD', KEYS[5])\n";

/* ==== Leased funds (issue 14, module/kg_lease.c, docs/module.md) ========
 *
 * A lease moves funds out of the wallet's balance into a record owned by
 * one gateway context, which then decides requests against it in memory.
 *   P {t:T}:lease:<wid>     hash: lease id -> micros it holds
 *   P {t:T}:leaseexp:<wid>  zset: lease id by expiry (Redis ms)
 *   P {t:T}:leaseseq:<wid>  hash: lease id -> highest journal seq charged
 * and the wallet's leased_micros = Σ the hash. Invariant, after any
 * script: balance_micros + leased_micros = credits − debits of the ledger;
 * a ledger entry's balance_micros is that sum (the wallet's funds, leased
 * or not: entry() above adds LEASED, the leased_micros wallet_state()
 * read, or reads it itself in a script that did not call it).
 *
 * reclaim(): a lease whose expiry passed goes back to the balance, at
 * most 16 a call, skipping `keep` (the caller's own: it is renewing it).
 * No ledger entry: the funds of the wallet do not change. */
#define KG_LUA_RECLAIM                                                             \
    "local function fmt(x) return string.format('%d', x) end\n"                    \
    "local function reclaim(now, keep)\n"                                          \
    "  local ids = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now, 'LIMIT', 0, 16)\n" \
    "  local n = 0\n"                                                              \
    "  for _, id in ipairs(ids) do\n"                                              \
    "    if id ~= keep then\n"                                                     \
    "      redis.call('ZREM', KEYS[6], id)\n"                                      \
    "      local a = tonumber(redis.call('HGET', KEYS[3], id) or '0') or 0\n"      \
    "      redis.call('HDEL', KEYS[3], id)\n"                                      \
    "      if a > 0 then\n"                                                        \
    "        redis.call('HINCRBY', KEYS[1], 'leased_micros', fmt(-a))\n"          \
    "        redis.call('HINCRBY', KEYS[1], 'balance_micros', fmt(a))\n"          \
    "      end\n"                                                                  \
    "      n = n + 1\n"                                                            \
    "    end\n"                                                                    \
    "  end\n"                                                                      \
    "  return n\n"                                                                 \
    "end\n"

/* Flush and renew, in one script (kg_lease.c send_flush()).
 *   KEYS  1 wallet, 2 ledger, 3 lease hash, 4 holds, 5 holdexp,
 *         6 leaseexp, 7 leaseseq, 8 usage day, 9 usage hour ('' both: off),
 *         then one P {t:T}:req:<kid>:<rid> per entry that has a request id,
 *         in entry order
 *   ARGV  1 lease id, 2 wallet id, 3 want (micros the lease should hold
 *         after), 4 need (> 0: if the lease ends below it, return it all),
 *         5 lease_ttl_ms, 6 share (a grant takes at most available/share),
 *         7 n entries, 8 r of them with a request id, 9 g usage fields,
 *         10 lowest seq, 11 highest seq, 12 the n seqs ("s1 s2 ..."),
 *         13 m mids, 14 the entries as runs: "cost mid at count ..." (mid
 *         numbered from 1, at: gateway ms), in entry order;
 *         then m mids of 2: the ledger text from ',"key_id":' to
 *         ',"request_id":' (the gateway formats it as entry() would), its
 *         usage field's number (from 1; 0 none);
 *         then r records of 6: entry number (1..n), user_id, service,
 *         model, fp, the request id as JSON;
 *         then g usage fields of 3: "<kid> <wid> <svc> <model or -> ",
 *         requests, micros (the totals if every entry is charged)
 * Each entry with seq above the lease's leaseseq is charged once, with the
 * ledger entry a debit writes ("lease": id added), from the lease while it
 * holds enough, else from the balance ("lease_late_micros": a lease that
 * was reclaimed or ran short); a balance pushed below zero records
 * "shortfall_micros" in the entry and the wallet's shortfall_micros. An
 * entry whose request id has a record already is not charged (a
 * duplicate served by two gateways). Then the lease is sized to want:
 * the excess returned, or more taken up to (balance − held + the lease)
 * / share (several gateways share a small wallet). Never below want: the
 * gateway may have decided up to want since it sent the script.
 * Per entry the script only joins the head, the running balance, its
 * "at", its mid, the request id and the lease (no argument per entry:
 * at a high rate, the entries of one millisecond are one run);
 * request ids are looked up with one EXISTS per 1000 (one by one only
 * when one exists, or repeats in the batch), the seqs are read only when
 * the lease's leaseseq reaches the lowest, and an entry not charged is
 * taken back from its mid's usage field. Entries go to the ledger in one LPUSH per 1000 (oldest first, so
 * newest at the head as always); usage is counted once per field (the
 * counters of usage_add(), requests and micros; params are not journaled,
 * so leased requests add no p.<param> totals).
 * Returns {'ok', lease, balance, charged, duplicates, late, shortfall} |
 *         {'nowallet'}. */
const char kg_lease_lua[] =
    KG_LUA_COMMON
    KG_LUA_RECLAIM
    "local id, wid = ARGV[1], ARGV[2]\n"
    "local now, bal, held = open_wallet(KEYS[8], KEYS[9], wid)\n"
    "if now == nil then return {'nowallet'} end\n"
    "if type(now) == 'table' then return now end\n"
    "if reclaim(now, id) > 0 then bal, held = wallet_state() end\n"
    "local leased = LEASED\n"
    "local last = tonumber(redis.call('HGET', KEYS[7], id) or '0') or 0\n"
    "local amt = tonumber(redis.call('HGET', KEYS[3], id) or '0') or 0\n"
    "local n, nr, ng = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])\n"
    "local lo, hi, nm = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[13])\n"
    "if not (n and nr and ng and lo and hi and nm) or #ARGV ~= 14 + 2 * nm + 6 * nr + 3 * ng then\n"
    "  return redis.error_reply('ERR keygate: lease flush is malformed')\n"
    "end\n"
    "local M = 15\n"
    "local R = M + 2 * nm\n"
    "local G = R + 6 * nr\n"
    "local runs, nruns, total = {}, 0, 0\n"
    "for c, k, t, q in string.gmatch(ARGV[14], '(%d+) (%d+) (%d+) (%d+)') do\n"
    "  k, q = tonumber(k), tonumber(q)\n"
    "  if k < 1 or k > nm then return redis.error_reply('ERR keygate: lease flush is malformed') end\n"
    "  runs[nruns + 1], runs[nruns + 2], runs[nruns + 3], runs[nruns + 4] = c, k, t, q\n"
    "  nruns, total = nruns + 4, total + q\n"
    "end\n"
    "if total ~= n then return redis.error_reply('ERR keygate: lease flush is malformed') end\n"
    "local skip = nil\n"
    "if n > 0 and lo <= last then\n"
    "  skip = {}\n"
    "  local i = 0\n"
    "  for q in string.gmatch(ARGV[12], '%d+') do\n"
    "    i = i + 1\n"
    "    if tonumber(q) <= last then skip[i] = true end\n"
    "  end\n"
    "end\n"
    "local RJ = {}\n"
    "if nr > 0 then\n"
    "  for j = 1, nr do RJ[tonumber(ARGV[R + 6 * (j - 1)])] = ARGV[R + 6 * (j - 1) + 5] end\n"
    "  local dup = false\n"
    "  for i = 10, 9 + nr, 1000 do\n"
    "    if redis.call('EXISTS', unpack(KEYS, i, math.min(i + 999, 9 + nr))) > 0 then\n"
    "      dup = true\n"
    "      break\n"
    "    end\n"
    "  end\n"
    "  if not dup and nr > 1 then\n"
    "    local seen = {}\n"
    "    for i = 10, 9 + nr do\n"
    "      if seen[KEYS[i]] then dup = true break end\n"
    "      seen[KEYS[i]] = true\n"
    "    end\n"
    "  end\n"
    "  if dup then\n"
    "    skip = skip or {}\n"
    "    local written = {}\n"
    "    for j = 1, nr do\n"
    "      local k, e = KEYS[9 + j], tonumber(ARGV[R + 6 * (j - 1)])\n"
    "      if not skip[e] then\n"
    "        if written[k] or redis.call('EXISTS', k) == 1 then skip[e] = 'dup' else written[k] = true end\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "local gn, gc = {}, {}\n"
    "for j = 1, ng do\n"
    "  gn[j], gc[j] = tonumber(ARGV[G + 3 * j - 2]), tonumber(ARGV[G + 3 * j - 1])\n"
    "end\n"
    "local PH, PB, PA = '{\"type\":\"debit\",\"amount_micros\":', ',\"balance_micros\":', ',\"at\":'\n"
    "local LT = ',\"lease\":' .. cjson.encode(id)\n"
    "local LTE = LT .. '}'\n"
    "local f, out, m, fs, fc, fa = bal + leased, {}, 0, {}, {}, {}\n"
    "local amt0, charged, dups, late, short = amt, 0, 0, 0, 0\n"
    "local D3, lasth, hs = {}, -1, ''\n"
    /* The balance's decimal for 10^6 <= f < 2^53 without a string.format
     * per entry: the digits above the last six change rarely (formatted
     * again when they do), the last six are two 3-digit groups formatted
     * once per flush. f % 10^6 is exact there (Lua: f - floor(f / 10^6)
     * * 10^6; the quotient's rounding error, < 2^-20, is less than its
     * distance to the next integer, >= 10^-6). Joined in the entry's one
     * concatenation: one string made per entry. */
    "local function d3(x)\n"
    "  local s = string.format('%03d', x)\n"
    "  D3[x] = s\n"
    "  return s\n"
    "end\n"
    "local i = 0\n"
    "for ri = 1, nruns, 4 do\n"
    "  local c, k, at, q = runs[ri], runs[ri + 1], runs[ri + 2], runs[ri + 3]\n"
    "  local pat = PA .. at\n"
    "  local cost, mid, g = tonumber(c), ARGV[M + 2 * k - 2], tonumber(ARGV[M + 2 * k - 1]) or 0\n"
    "  if cost == nil or cost < 0 or cost ~= math.floor(cost) then\n"
    "    return redis.error_reply('ERR keygate: lease entry is not integers')\n"
    "  end\n"
    "  for _ = 1, q do\n"
    "    i = i + 1\n"
    "    local s = skip and skip[i]\n"
    "    if s then\n"
    "      if s == 'dup' then dups = dups + 1 end\n"
    "      if g > 0 then gn[g], gc[g] = gn[g] - 1, gc[g] - cost end\n"
    "    else\n"
    "      f = f - cost\n"
    "      m = m + 1\n"
    "      local rj = RJ[i] or 'null'\n"
    "      if cost <= amt and f >= 1000000 and f < 9007199254740992 then\n"
    "        amt = amt - cost\n"
    "        local lo = f % 1000000\n"
    "        local h, b3 = (f - lo) / 1000000, lo % 1000\n"
    "        local a3 = (lo - b3) / 1000\n"
    "        if h ~= lasth then lasth, hs = h, fmt(h) end\n"
    "        out[m] = PH .. c .. PB .. hs .. (D3[a3] or d3(a3)) .. (D3[b3] or d3(b3)) ..\n"
    "          pat .. mid .. rj .. LTE\n"
    "      elseif cost <= amt then\n"
    "        amt = amt - cost\n"
    "        out[m] = PH .. c .. PB .. fmt(f) .. pat .. mid .. rj .. LTE\n"
    "      else\n"
    "        local rest = cost - amt\n"
    "        amt, bal, late = 0, bal - rest, late + rest\n"
    "        local x = ',\"lease_late_micros\":' .. fmt(rest)\n"
    "        if bal < 0 then\n"
    "          local sh = math.min(rest, -bal)\n"
    "          short = short + sh\n"
    "          x = x .. ',\"shortfall_micros\":' .. fmt(sh)\n"
    "        end\n"
    "        out[m] = PH .. c .. PB .. fmt(f) .. pat .. mid .. rj .. LT .. x .. '}'\n"
    "      end\n"
    "      if nr > 0 then fs[i], fc[i], fa[i] = f, c, at end\n"
    "      charged = charged + 1\n"
    "    end\n"
    "  end\n"
    "end\n"
    "leased = leased - (amt0 - amt)\n"
    "for i = 1, m, 1000 do\n"
    "  redis.call('LPUSH', KEYS[2], unpack(out, i, math.min(i + 999, m)))\n"
    "end\n"
    "for j = 1, nr do\n"
    "  local r = R + 6 * (j - 1)\n"
    "  local e = tonumber(ARGV[r])\n"
    "  if fs[e] then\n"
    "    local k = KEYS[9 + j]\n"
    "    redis.call('HSET', k, 'cost_micros', fc[e], 'balance_micros', fmt(fs[e]),\n"
    "               'wallet_id', wid, 'at', fa[e], 'user_id', ARGV[r + 1], 'service', ARGV[r + 2],\n"
    "               'model', ARGV[r + 3], 'fp', ARGV[r + 4])\n"
    "    redis.call('EXPIRE', k, 86400)\n"
    "  end\n"
    "end\n"
    "if KEYS[8] ~= '' then\n"
    "  for j = 1, ng do\n"
    "    local u = ARGV[G + 3 * j - 3]\n"
    "    if gn[j] > 0 then\n"
    "      for i, k in ipairs({KEYS[8], KEYS[9]}) do\n"
    "        local c = redis.pcall('HINCRBY', k, u .. 'n', gn[j])\n"
    "        if c == gn[j] then redis.call('EXPIRE', k, i == 1 and 34560000 or 1209600) end\n"
    "        if gc[j] > 0 then redis.pcall('HINCRBY', k, u .. 'c', fmt(gc[j])) end\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "local top = math.max(last, hi)\n"
    "if top > last then redis.call('HSET', KEYS[7], id, fmt(top)) end\n"
    "redis.call('PEXPIRE', KEYS[7], 2592000000)\n"
    "local want, need = tonumber(ARGV[3]) or 0, tonumber(ARGV[4]) or 0\n"
    "local ttl, share = tonumber(ARGV[5]) or 3000, tonumber(ARGV[6]) or 4\n"
    "if amt > want then\n"
    "  local back = amt - want\n"
    "  amt, leased, bal = want, leased - back, bal + back\n"
    "elseif amt < want then\n"
    "  local cap = math.floor((bal - held + amt) / share)\n"
    "  local g = math.max(0, math.min(want, cap) - amt)\n"
    "  amt, leased, bal = amt + g, leased + g, bal - g\n"
    "end\n"
    "if need > 0 and amt < need then\n"
    "  amt, leased, bal = 0, leased - amt, bal + amt\n"
    "end\n"
    "redis.call('HSET', KEYS[1], 'balance_micros', fmt(bal), 'leased_micros', fmt(leased))\n"
    "if short > 0 then redis.call('HINCRBY', KEYS[1], 'shortfall_micros', fmt(short)) end\n"
    "if amt > 0 then\n"
    "  redis.call('HSET', KEYS[3], id, fmt(amt))\n"
    "  redis.call('ZADD', KEYS[6], now + ttl, id)\n"
    "else\n"
    "  redis.call('HDEL', KEYS[3], id)\n"
    "  redis.call('ZREM', KEYS[6], id)\n"
    "end\n"
    "return {'ok', amt, bal, charged, dups, late, short}\n";

/* Reclaim (keygated's lease sweep, daemon/reclaim.c): the same reclaim()
 * as the flush script, alone, for wallets no gateway flushes any more.
 *   KEYS  1 wallet, 2 unused, 3 lease hash, 4 unused, 5 unused, 6 leaseexp
 * Returns the number of leases reclaimed (16 at most), -1: no wallet. */
const char kg_reclaim_lua[] =
    KG_LUA_RECLAIM
    "if not redis.call('HGET', KEYS[1], 'balance_micros') then return -1 end\n"
    "local t = redis.call('TIME')\n"
    "return reclaim(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), '')\n";

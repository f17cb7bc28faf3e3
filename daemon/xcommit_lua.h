/*
 * xcommit_lua.h - the scripts of a commit across slots (xcommit.h), shared
 * by keygated (daemon/xcommit.c) and `keygate fsck --repair`, which
 * settles what a killed keygated left open the same way.
 */
#ifndef KG_XCOMMIT_LUA_H
#define KG_XCOMMIT_LUA_H

/* `now`: Redis' clock in ms, the one clock the steps go by. */
#define XC_LUA_NOW                                                                 \
    "local t = redis.call('TIME')\n"                                               \
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

/* KEYS[1] intent, KEYS[2] open set; ARGV[1] plan, ARGV[2] txid. */
static const char __attribute__((unused)) intent_lua[] =
    "if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end\n"
    XC_LUA_NOW
    "redis.call('HSET', KEYS[1], 'state', 'pending', 'plan', ARGV[1], 'at', now)\n"
    "redis.call('ZADD', KEYS[2], now, ARGV[2])\n"
    "return 1\n";

/* KEYS: marker, the nl - 1 version keys, then claim keys. ARGV[1] txid,
 * ARGV[2] nl, then per version key its flag and expected value, then the
 * claims' expected values. Locks what the part writes (flags b and B; a
 * B must still hold what was read); keys only read (c) are left to
 * validate_lua. A claim it checks loses its expiry (a decided sign-up must
 * not see its email claim expire before it is settled; a rollback gives
 * it back). 1 locked (or already), 2 a value moved, {3, lock} another
 * commit holds one. */
static const char prepare_lua[] =
    "local tx, nl = ARGV[1], tonumber(ARGV[2])\n"
    "local mine = 'L ' .. tx .. ' '\n"
    "if redis.call('GET', KEYS[1]) == mine then return 1 end\n"
    "local cur, a = {}, 3\n"
    "for i = 2, nl do\n"
    "  if ARGV[a] ~= 'c' then\n"
    "    local v = redis.call('GET', KEYS[i])\n"
    "    if v and string.sub(v, 1, 2) == 'L ' then return {3, v} end\n"
    "    cur[i] = v or ''\n"
    "    if ARGV[a] == 'B' and cur[i] ~= ARGV[a + 1] then return 2 end\n"
    "  end\n"
    "  a = a + 2\n"
    "end\n"
    "for i = nl + 1, #KEYS do\n"
    "  if (redis.call('GET', KEYS[i]) or '') ~= ARGV[a] then return 2 end\n"
    "  a = a + 1\n"
    "end\n"
    "redis.call('SET', KEYS[1], mine)\n"
    "for i = 2, nl do\n"
    "  if cur[i] then redis.call('SET', KEYS[i], mine .. cur[i]) end\n"
    "end\n"
    "for i = nl + 1, #KEYS do redis.call('PERSIST', KEYS[i]) end\n"
    "return 1\n";

/* KEYS: the version keys a part only read; ARGV: their expected values.
 * Run once every part's writes are locked (so a commit that later writes
 * one of these keys finds our locks if it read what we write: no write
 * skew). 1 all hold, 2 one moved, {3, lock} one is locked by another. */
static const char validate_lua[] =
    "for i = 1, #KEYS do\n"
    "  local v = redis.call('GET', KEYS[i])\n"
    "  if v and string.sub(v, 1, 2) == 'L ' then return {3, v} end\n"
    "  if (v or '') ~= ARGV[i] then return 2 end\n"
    "end\n"
    "return 1\n";

/* KEYS: marker, version keys. ARGV[1] txid, ARGV[2] version TTL, ARGV[3]
 * nl, ARGV[4..2+nl] the flags, then the commands as <argc> <arg>...
 * 1 applied now, 0 applied before (or rolled back: never both). */
static const char __attribute__((unused)) apply_lua[] =
    "local tx, nl = ARGV[1], tonumber(ARGV[3])\n"
    "local mine = 'L ' .. tx .. ' '\n"
    "if redis.call('GET', KEYS[1]) ~= mine then return 0 end\n"
    "local i = 3 + nl\n"
    "while i <= #ARGV do\n"
    "  local n = tonumber(ARGV[i])\n"
    "  redis.call(unpack(ARGV, i + 1, i + n))\n"
    "  i = i + n + 1\n"
    "end\n"
    "for k = 2, nl do\n"
    "  local v = redis.call('GET', KEYS[k])\n"
    "  if ARGV[2 + k] ~= 'c' then\n"
    "    redis.call('SET', KEYS[k], tx, 'EX', ARGV[2])\n"
    "  elseif v and string.sub(v, 1, #mine) == mine then\n"
    "    local old = string.sub(v, #mine + 1)\n"
    "    if old == '' then redis.call('DEL', KEYS[k]) else redis.call('SET', KEYS[k], old, 'EX', ARGV[2]) end\n"
    "  end\n"
    "end\n"
    "redis.call('DEL', KEYS[1])\n"
    "return 1\n";

/* KEYS: marker, version keys, then claim keys. ARGV[1] txid, ARGV[2]
 * version TTL, then the claims' values. Puts back every lock of txid, and
 * a claim still holding its value gets the expiry prepare took away
 * (SIGNUP_CLAIM_MS, daemon/cmd_misc.c). */
static const char __attribute__((unused)) rollback_lua[] =
    "local mine = 'L ' .. ARGV[1] .. ' '\n"
    "local ncl = #ARGV - 2\n"
    "for k = 1, #KEYS - ncl do\n"
    "  local v = redis.call('GET', KEYS[k])\n"
    "  if v and string.sub(v, 1, #mine) == mine then\n"
    "    local old = string.sub(v, #mine + 1)\n"
    "    if old == '' then redis.call('DEL', KEYS[k]) else redis.call('SET', KEYS[k], old, 'EX', ARGV[2]) end\n"
    "  end\n"
    "end\n"
    "for i = 1, ncl do\n"
    "  local k = KEYS[#KEYS - ncl + i]\n"
    "  if redis.call('GET', k) == ARGV[2 + i] and redis.call('PTTL', k) == -1 then\n"
    "    redis.call('PEXPIRE', k, 60000)\n"
    "  end\n"
    "end\n"
    "return 1\n";

/* KEYS[1] intent. 1 when it is now commit. */
static const char __attribute__((unused)) decide_lua[] =
    "if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then return 0 end\n"
    "redis.call('HSET', KEYS[1], 'state', 'commit')\n"
    "return 1\n";

/* KEYS[1] intent; ARGV[1] ms it must have been pending (0: at once). 1
 * when it is now aborted. */
static const char __attribute__((unused)) abort_lua[] =
    "local st = redis.call('HGET', KEYS[1], 'state')\n"
    "if st == 'aborted' then return 1 end\n"
    "if st ~= 'pending' then return 0 end\n"
    XC_LUA_NOW
    "if tonumber(ARGV[1]) > 0 and\n"
    "   now - tonumber(redis.call('HGET', KEYS[1], 'at')) < tonumber(ARGV[1]) then return 0 end\n"
    "redis.call('HSET', KEYS[1], 'state', 'aborted')\n"
    "return 1\n";

/* KEYS[1] open set; ARGV[1] ms, ARGV[2] how many at most: the txids whose
 * intents have been open at least ARGV[1] ms by Redis' clock (the clock
 * their 'at' and abort_lua's check use: a keygated whose own clock runs
 * ahead or behind picks neither fresh intents nor too few). */
static const char __attribute__((unused)) stale_lua[] =
    XC_LUA_NOW
    "return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now - tonumber(ARGV[1])),\n"
    "                  'LIMIT', 0, tonumber(ARGV[2]))\n";

/* KEYS[1] intent, KEYS[2] open set; ARGV[1] final state, ARGV[2] TTL,
 * ARGV[3] txid. */
static const char __attribute__((unused)) finish_lua[] =
    "if redis.call('EXISTS', KEYS[1]) == 1 then\n"
    "  redis.call('HSET', KEYS[1], 'state', ARGV[1])\n"
    "  redis.call('EXPIRE', KEYS[1], ARGV[2])\n"
    "end\n"
    "redis.call('ZREM', KEYS[2], ARGV[3])\n"
    "return 1\n";

#endif

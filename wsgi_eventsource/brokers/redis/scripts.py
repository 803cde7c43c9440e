"""The broker's Lua scripts: each runs atomically in Redis, on Redis's clock.

Ids, trimming by age and replay by age all use ``redis.call('TIME')``, never
the application's clock: the ids are made by Redis, so "older than max_age"
must be measured against the same clock.
"""

from __future__ import annotations

__all__ = ["CURRENT", "KEEP_ALIVE", "PUBLISH", "SNAPSHOT"]

# Lua helpers shared by the scripts: the stream's last-generated-id (the id
# of the last entry ever added, trimmed or deleted ones included), Redis's
# clock in milliseconds, and "a key that expires lives at least ttl ms more"
# (never shortening a longer TTL, never adding one to a key without).
_HELPERS = """
local function last_id(key)
  if redis.call('EXISTS', key) == 0 then return '0-0' end
  local info = redis.call('XINFO', 'STREAM', key)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then return info[i + 1] end
  end
  return '0-0'
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function extend(key, ttl)
  local left = redis.call('PTTL', key)
  if left >= 0 and left < ttl then redis.call('PEXPIRE', key, ttl) end
end
"""

#: KEYS[1]: the stream. ARGV: maxlen, body, max_age in ms ('' for none), the
#: key's TTL in ms, and on a cluster the partition's doorbell and the channel
#: (rung with ``SPUBLISH``, see .masters). Returns the new id. Field "p" is the id this entry follows
#: (the stream's last-generated-id), "b" the encoded body. With max_age,
#: entries older than it are trimmed and the key expires a TTL after the last
#: publish (unless a reader keeps it alive), so a channel nobody uses costs
#: nothing.
PUBLISH = (
    _HELPERS
    + """
local prev = last_id(KEYS[1])
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'p', prev, 'b', ARGV[2])
if ARGV[3] ~= '' then
  local age = tonumber(ARGV[3])
  redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%d-0', now_ms() - age))
  -- PTTL is -1 for a key XADD just made; PEXPIRE GT would treat that as
  -- infinite, so compare here. A longer TTL (a reader's) is kept.
  local ttl = tonumber(ARGV[4])
  if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
end
if ARGV[5] then redis.call('SPUBLISH', ARGV[5], ARGV[6]) end
return id
"""
)

#: KEYS[1]: the stream. ARGV[1]: a TTL in ms to keep the key alive for ('' for
#: none). Returns the stream's last-generated-id, or '0-0'.
CURRENT = (
    _HELPERS
    + """
if ARGV[1] ~= '' then extend(KEYS[1], tonumber(ARGV[1])) end
return last_id(KEYS[1])
"""
)

#: KEYS[1]: the stream. ARGV: history, the client's last id ('' for none).
#: Returns {last-generated-id, Redis's time in ms, entries}: the entries from
#: the client's id on when it is at most `history` entries back, else the
#: last `history` entries. So a replay never reaches further back than
#: `history`, although MAXLEN ~ keeps a few more.
SNAPSHOT = (
    _HELPERS
    + """
local now = now_ms()
local last = last_id(KEYS[1])
if last == '0-0' then return {last, now, {}} end
local n = tonumber(ARGV[1])
if ARGV[2] ~= '' then
  local after = redis.call('XRANGE', KEYS[1], ARGV[2], '+', 'COUNT', n + 2)
  if #after > 0 and after[1][1] == ARGV[2] and #after <= n + 1 then return {last, now, after} end
end
local tail = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', n)
local entries = {}
for i = #tail, 1, -1 do entries[#entries + 1] = tail[i] end
return {last, now, entries}
"""
)

#: KEYS: the streams this process reads. ARGV[1]: a TTL in ms. Keeps each key
#: (and with it its last-generated-id) alive while it has subscribers here;
#: never shortens a longer TTL, never adds one to a key without.
KEEP_ALIVE = (
    _HELPERS
    + """
local ttl = tonumber(ARGV[1])
for _, key in ipairs(KEYS) do extend(key, ttl) end
return 0
"""
)

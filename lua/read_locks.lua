-- read_locks.lua: one atomic read of a record's locks, for GetLock, ListLocks
-- and the lock statistics. Writes nothing. A script rather than a MULTI
-- pipeline so that the cluster client follows MOVED and ASK for it.
--
-- KEYS[1..4]  the record: stock, locks, exp, ended
--
-- Returns {'OK', unit_scale or '', now_ms, then per lock that has an expiry
--   entry: token, packed lock (see pack_lock), expires_at_ms}
--
-- lib.lua: now_ms, fmt, record_at

local rec = record_at(1, '')
local reply = { 'OK', redis.call('HGET', rec.stock, 'unit_scale') or '', fmt(now_ms()) }
local expiries = redis.call('ZRANGE', rec.exp, 0, -1, 'WITHSCORES')
for i = 1, #expiries, 2 do
  local packed = redis.call('HGET', rec.locks, expiries[i])
  if packed then
    reply[#reply + 1] = expiries[i]
    reply[#reply + 1] = packed
    reply[#reply + 1] = expiries[i + 1]
  end
end
return reply

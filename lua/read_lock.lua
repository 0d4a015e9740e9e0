-- read_lock.lua: one lock, for GetLock: O(1) whatever the record holds.
-- Writes nothing.
--
-- KEYS[1..5]  the lock's record in its shard: stock, locks, exp, ended, idx (unused)
-- ARGV[1]     fencing token
-- ARGV[2]     nonce
--
-- Returns
--   {'OK', unit_scale, packed lock (see pack_lock), expires_at_ms}   a live lock
--   {'LOCK_NOT_FOUND', ended} / {'LOCK_EXPIRED', ''} / {'LOCK_FORCE_RELEASED', ''}
--       (see find_lock; a lock without an expiry entry, which the auditor
--       reports, reads as live until its maximum hold)
--
-- lib.lua: now_ms, fmt, record_at, unpack_lock, ended_mark

local rec = record_at(1, '')
local token, nonce = ARGV[1], ARGV[2]
local now = now_ms()
local packed = redis.call('HGET', rec.locks, token)
if packed then
  local l = unpack_lock(packed)
  if l.nonce ~= nonce then
    return { 'LOCK_NOT_FOUND', '' }
  end
  local expires = tonumber(redis.call('ZSCORE', rec.exp, token)) or l.max_expires
  if expires <= now then
    return { 'LOCK_EXPIRED', '' }
  end
  return { 'OK', redis.call('HGET', rec.stock, 'unit_scale') or '0', packed, fmt(expires) }
end
local mark, detail = ended_mark(rec, token)
if mark == 'E' then
  return { 'LOCK_EXPIRED', '' }
elseif mark == 'R' then
  return { 'LOCK_NOT_FOUND', 'RELEASED' }
elseif mark == 'C' then
  return { 'LOCK_NOT_FOUND', 'COMMITTED' }
elseif mark == 'F' then
  return { 'LOCK_FORCE_RELEASED', '' }
elseif mark == 'M' then
  return { 'LOCK_NOT_FOUND', 'MOVED', detail }
end
return { 'LOCK_NOT_FOUND', '' }

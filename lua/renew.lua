-- renew.lua: the heartbeat. Extends each named lock to now + ttl, capped at
-- the lock's maximum total hold time. Each lock gets its own result.
--
-- KEYS[1..4]       partition keys: idempotency record (unused), due index, event stream, audit (unused)
-- KEYS[5 + 5k ..]  lock k's record in its shard: stock, locks, exp, ended, idx
-- ARGV[1]  unused (''): Renew is idempotent by the lock's own state (a retry renews again, from now),
--          so no record of the call is kept
-- ARGV[2]  holder
-- ARGV[3]  ttl ms, or 0 for each lock's own ttl
-- ARGV[4]  unused (the idempotency retention, when these calls kept records)
-- ARGV[5]  tombstone retention ms
-- ARGV[6 + 3k ..]  lock k: record id "sku|warehouse", fencing token, nonce
--
-- Returns
--   {'OK', then per lock: status, expires_at, capped}   status 'OK', or a
--       refusal: LOCK_NOT_FOUND, LOCK_EXPIRED, LOCK_FORCE_RELEASED,
--       LOCK_HOLDER_MISMATCH or LOCK_IN_SESSION, with how the lock ended (see find_lock) in
--       place of expires_at and '0' for capped
-- An expired lock is never resurrected: it is dropped (its quantity returns)
-- and reported LOCK_EXPIRED. The reply is kept for retries only when at
-- least one lock was renewed; a call that renewed nothing leaves no trace.
--
-- lib.lua: partition_keys, now_ms, fmt, record_at, find_lock, lower_due, lock_event,
-- read_stock, available_of, emit, find_expired, drop_expired, session_of

local pk = partition_keys()
local holder = ARGV[2]
local ttl_override = tonumber(ARGV[3])
local tomb_retention = tonumber(ARGV[5])
local count = (#ARGV - 5) / 3

local now = now_ms()
local reply = { 'OK' }
local renewed = 0
for k = 0, count - 1 do
  local rec = record_at(5 + 5 * k, ARGV[6 + 3 * k])
  local token, nonce = ARGV[7 + 3 * k], ARGV[8 + 3 * k]
  local lock, why, ended = find_lock(rec, token, nonce, now)
  if lock and lock.holder ~= holder then
    lock, why, ended = nil, 'LOCK_HOLDER_MISMATCH', ''
  elseif lock and session_of(nonce) then
    -- It lives with its session: keeping the session alive renews it.
    lock, why, ended = nil, 'LOCK_IN_SESSION', ''
  end
  if lock then
    local ttl = ttl_override
    if ttl == 0 then
      ttl = lock.ttl
    end
    local expires = now + ttl
    local capped = '0'
    if expires >= lock.max_expires then
      expires, capped = lock.max_expires, '1'
    end
    redis.call('ZADD', rec.exp, expires, token)
    -- A shorter TTL than before brings the expiry forward.
    local s = read_stock(rec)
    lower_due(pk.due, rec, s, expires)
    emit(pk.events, 'renew', rec, math.max(available_of(s, s.locked), 0), lock_event(token, lock), fmt(expires), s)
    renewed = renewed + 1
    for _, v in ipairs({ 'OK', fmt(expires), capped }) do
      reply[#reply + 1] = v
    end
  else
    if why == 'LOCK_EXPIRED' then
      -- Expired but not swept yet: return its quantity now.
      drop_expired(pk, rec, now, tomb_retention)
    end
    for _, v in ipairs({ why, ended, '0' }) do
      reply[#reply + 1] = v
    end
  end
end

if renewed == 0 then
  return reply
end
return reply

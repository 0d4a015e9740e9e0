-- commit.lua: turns a live lock into a deduction: physical and locked both
-- drop by the committed quantity; a smaller quantity releases the rest.
--
-- KEYS[1..4]  partition keys: idempotency record (unused), due index, event stream, audit (unused)
-- KEYS[5..9]  the lock's record in its shard: stock, locks, exp, ended, idx
-- ARGV[1]  unused (''): Commit is idempotent by the lock's own state (a retry finds the lock committed: ALREADY_COMMITTED),
--          so no record of the call is kept
-- ARGV[2]  holder, or "" to skip the holder check
-- ARGV[3]  quantity mantissa, or "" to commit the whole lock
-- ARGV[4]  quantity scale
-- ARGV[5]  unused (the idempotency retention, when these calls kept records)
-- ARGV[6]  tombstone retention ms
-- ARGV[7]  record id "sku|warehouse"
-- ARGV[8]  fencing token
-- ARGV[9]  nonce
-- ARGV[10] for a lock in a session: the session's lease (ms), '0' when it ended; else ''
-- ARGV[11] for a lock in a session that ended: 'expired' or 'closed'
--
-- Returns
--   {'OK', committed, released, then the record (see record_reply)}
--   {'ALREADY_COMMITTED', committed, released, then the record}   committed by an earlier call,
--                                         with what it did ('' '' from a tombstone written before
--                                         tombstones kept it); nothing changed
--   {'LOCK_NOT_FOUND', ended} / {'LOCK_EXPIRED', ''} / {'LOCK_FORCE_RELEASED', ''} (see find_lock)
--   {'LOCK_HOLDER_MISMATCH'}
--   {'SESSION_ENDED', 'expired' | 'closed'}   the lock's session ended (its end is on its way here)
--   {'LEASE'}   the lease given has passed: read it again and call again
--   {'INVALID_QUANTITY_SCALE', unit_scale} / {'QUANTITY_OUT_OF_RANGE'}
--   {'QUANTITY_EXCEEDS_LOCK', locked quantity, unit_scale}
--
-- lib.lua: partition_keys, now_ms, fmt, decimal, record_at, find_lock, record_reply, find_expired,
-- drop_expired, scale_qty, settle, stored_available, end_lock, lock_event, emit, session_of

local pk = partition_keys()
local holder = ARGV[2]
local tomb_retention = tonumber(ARGV[6])
local rec = record_at(5, ARGV[7])
local token, nonce = ARGV[8], ARGV[9]

local now = now_ms()
local lock, why, ended, detail = find_lock(rec, token, nonce, now)
if not lock then
  if ended == 'COMMITTED' then
    local committed, released = string.match(detail, '^(%d+)|(%d+)$')
    return record_reply(rec, now, { 'ALREADY_COMMITTED', committed or '', released or '' })
  end
  if why == 'LOCK_EXPIRED' then
    drop_expired(pk, rec, now, tomb_retention)
  end
  return { why, ended }
end
if holder ~= '' and lock.holder ~= holder then
  return { 'LOCK_HOLDER_MISMATCH' }
end
if session_of(nonce) then
  local lease = tonumber(ARGV[10]) or 0
  if lease == 0 then
    return { 'SESSION_ENDED', ARGV[11] }
  elseif lease <= now then
    -- Passed since it was read (or this node's clock is ahead): read it again.
    return { 'LEASE' }
  end
end

local unit_scale = tonumber(redis.call('HGET', rec.stock, 'unit_scale'))
local qty = lock.qty
if ARGV[3] ~= '' then
  local err
  qty, err = scale_qty(tonumber(ARGV[3]), tonumber(ARGV[4]), unit_scale)
  if not qty then
    return { err, fmt(unit_scale) }
  end
  if qty > lock.qty then
    return { 'QUANTITY_EXCEEDS_LOCK', fmt(lock.qty), fmt(unit_scale) }
  end
end

settle(pk, rec, now, tomb_retention)
local before = stored_available(rec)
end_lock(pk, rec, token, lock, 'C' .. fmt(qty) .. '|' .. fmt(lock.qty - qty), now, tomb_retention)
redis.call('HINCRBY', rec.stock, 'physical', -qty)
redis.call('HINCRBY', rec.stock, 'locked', -lock.qty)
redis.call('HINCRBY', rec.stock, 'version', 1)
emit(pk.events, 'commit', rec, before, lock_event(token, lock), fmt(qty))

local reply = record_reply(rec, now, { 'OK', fmt(qty), fmt(lock.qty - qty) })
return reply

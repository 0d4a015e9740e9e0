-- commit.lua: turns a live lock into a deduction: physical and locked both
-- drop by the committed quantity; a smaller quantity releases the rest.
--
-- KEYS[1..4]  partition keys: idempotency record (unused), due index, event stream, audit (unused)
-- KEYS[5..9]  the lock's record in its shard: stock, locks, exp, ended, idx
-- KEYS[10]    the partition's fencing epoch (a late commit issues a token)
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
-- ARGV[12] '1' to allow a late commit, else ''
--
-- A late commit (ARGV[12]) of a lock that expired moments ago, still stored
-- (not yet swept: about a second), returns its stock and takes its quantity
-- (or the request's, not more) again, if that much is available, and
-- deducts it, in this one step: a new fencing token (above every token of
-- the record and the partition's epoch floor) stands for it. A swept lock
-- is refused: nothing is left to check a lock id against. Its tombstone
-- ('C' with the new token) makes a retry answer ALREADY_COMMITTED, so it
-- never deducts twice.
--
-- Returns
--   {'OK', committed, released, token, then the record (see record_reply)}   token: '', or a
--                                         late commit's new fencing token
--   {'ALREADY_COMMITTED', committed, released, token, then the record}   committed by an earlier
--                                         call, with what it did ('' '' '' from a tombstone written
--                                         before tombstones kept it); nothing changed
--   {'LOCK_EXPIRED', '', available, unit_scale}   a late commit that found too little available
--   {'EPOCH'}                             a late commit in a partition without a fencing epoch:
--                                         raise it and call again
--   {'LOCK_NOT_FOUND', ended} / {'LOCK_EXPIRED', ''} / {'LOCK_FORCE_RELEASED', ''} (see find_lock)
--   {'LOCK_HOLDER_MISMATCH'}
--   {'SESSION_ENDED', 'expired' | 'closed'}   the lock's session ended (its end is on its way here)
--   {'LEASE'}   the lease given has passed: read it again and call again
--   {'INVALID_QUANTITY_SCALE', unit_scale} / {'QUANTITY_OUT_OF_RANGE'}
--   {'QUANTITY_EXCEEDS_LOCK', locked quantity, unit_scale}
--
-- lib.lua: partition_keys, now_ms, fmt, decimal, record_at, find_lock, record_reply, find_expired,
-- drop_expired, part_of_lock, settle, stored_available, end_lock, lock_event, emit, session_of,
-- unpack_lock, drop_expired_all, read_stock, available_of, tombstone_field, EPOCH_FACTOR

local pk = partition_keys()
local holder = ARGV[2]
local tomb_retention = tonumber(ARGV[6])
local rec = record_at(5, ARGV[7])
local token, nonce = ARGV[8], ARGV[9]

local now = now_ms()

-- How much of the lock `l` to commit: the request's quantity (ARGV[3],
-- ARGV[4]), not more than the lock's, or all of it; nil and the refusal.
local function committed_qty(l)
  return part_of_lock(l, ARGV[3], ARGV[4], tonumber(redis.call('HGET', rec.stock, 'unit_scale')))
end

local function already_committed(detail)
  local committed, released, late = string.match(detail, '^(%d+)|(%d+)|?(%d*)$')
  return record_reply(rec, now, { 'ALREADY_COMMITTED', committed or '', released or '', late or '' })
end

-- A late commit of the expired lock (see the header).
local function late_commit()
  local mark = redis.call('HGET', rec.ended, tombstone_field(token))
  if mark and string.sub(mark, 1, 1) == 'C' then
    return already_committed(string.sub(mark, 2))
  end
  -- Only a lock still stored proves what it was (its nonce, holder and
  -- quantity): once swept, an expired lock leaves nothing to check a lock
  -- id against, and a forged or replayed one must not deduct stock.
  local packed = redis.call('HGET', rec.locks, token)
  local l = packed and unpack_lock(packed)
  if not l or l.nonce ~= nonce then
    return { 'LOCK_EXPIRED', '' }
  end
  if holder ~= '' and l.holder ~= holder then
    return { 'LOCK_HOLDER_MISMATCH' }
  end
  local qty, refusal = committed_qty(l)
  if not qty then
    return refusal
  end
  local epoch = redis.call('GET', KEYS[10])
  if not epoch then
    return { 'EPOCH' }
  end
  -- The expired lock's stock comes back first (with its expire event).
  drop_expired_all(pk, { { view = rec, tokens = { token }, packed = { packed } } }, now, tomb_retention)
  local s = read_stock(rec)
  local available = available_of(s, s.locked)
  if qty > available then
    return { 'LOCK_EXPIRED', '', fmt(math.max(available, 0)), fmt(s.unit_scale) }
  end
  local late = math.max(s.fence + 1, tonumber(epoch) * EPOCH_FACTOR)
  s.physical, s.fence, s.version = s.physical - qty, late, s.version + 1
  redis.call('HSET', rec.stock, 'physical', s.physical, 'fence', fmt(late), 'version', s.version)
  redis.call('HSET', rec.ended, tombstone_field(token), 'C' .. fmt(qty) .. '|0|' .. fmt(late))
  redis.call('PEXPIRE', rec.ended, tomb_retention)
  local taken = { token = fmt(late), nonce = nonce, qty = qty, holder = l.holder, order_id = l.order_id, batch_id = l.batch_id }
  emit(pk.events, 'commit', rec, math.max(available, 0), taken, fmt(qty), s)
  return record_reply(rec, now, { 'OK', fmt(qty), '0', fmt(late) })
end

local lock, why, ended, detail = find_lock(rec, token, nonce, now)
if not lock then
  if ended == 'COMMITTED' then
    return already_committed(detail)
  end
  if why == 'LOCK_EXPIRED' and ARGV[12] == '1' then
    return late_commit()
  end
  if why == 'LOCK_EXPIRED' then
    drop_expired(pk, rec, now, tomb_retention)
  end
  -- A lock moved whole: where to (see transfer_lock.lua).
  return { why, ended, ended == 'MOVED' and detail or nil }
end
if holder ~= '' and lock.holder ~= holder then
  return { 'LOCK_HOLDER_MISMATCH' }
end
if session_of(nonce) then
  local lease = tonumber(ARGV[10]) or 0
  if lease == 0 and ARGV[11] == 'expired' and ARGV[12] == '1' then
    -- Its session expired: the lock did, whether or not its end is here yet.
    return late_commit()
  elseif lease == 0 then
    return { 'SESSION_ENDED', ARGV[11] }
  elseif lease <= now then
    -- Passed since it was read (or this node's clock is ahead): read it again.
    return { 'LEASE' }
  end
end

local qty, refusal = committed_qty(lock)
if not qty then
  return refusal
end

settle(pk, rec, now, tomb_retention)
local before = stored_available(rec)
end_lock(pk, rec, token, lock, 'C' .. fmt(qty) .. '|' .. fmt(lock.qty - qty), now, tomb_retention)
redis.call('HINCRBY', rec.stock, 'physical', -qty)
redis.call('HINCRBY', rec.stock, 'locked', -lock.qty)
redis.call('HINCRBY', rec.stock, 'version', 1)
emit(pk.events, 'commit', rec, before, lock_event(token, lock), fmt(qty))

local reply = record_reply(rec, now, { 'OK', fmt(qty), fmt(lock.qty - qty), '' })
return reply

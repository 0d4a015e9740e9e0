-- transfer_lock.lua: moves a live lock's quantity (all or part) to another
-- warehouse of the same SKU, in one step: the destination is checked and
-- locked, the lock is reduced or ended. The moved lock keeps the lock's
-- nonce (so its shard), holder, order, batch, session, creation and expiry,
-- under a new fencing token of the destination. A lock moved whole leaves
-- an 'M' tombstone naming where it went, so a late Renew, Release or Commit
-- of the old id says MOVED instead of acting on nothing.
--
-- KEYS[1..4]   partition keys: idempotency record, due index, event stream, audit stream
-- KEYS[5..9]   the lock's record in its shard: stock, locks, exp, ended, idx
-- KEYS[10]     the partition's fencing epoch
-- KEYS[11]     the lock's batch record when ARGV[11] names its batch, else unused
-- KEYS[12]     in a session: the session's locks in this partition, else unused
-- KEYS[13 ..]  the destination: the five keys of the lock's shard, or (ARGV[17] = '1')
--              the whole record (see whole_record_at)
-- ARGV[1]  request fingerprint
-- ARGV[2]  idempotency retention ms
-- ARGV[3]  holder, or '' to skip the holder check
-- ARGV[4]  the lock's record id "sku|warehouse"
-- ARGV[5]  the lock's token
-- ARGV[6]  the lock's nonce
-- ARGV[7]  the destination record id
-- ARGV[8]  quantity mantissa, or '' to move the whole lock
-- ARGV[9]  quantity scale
-- ARGV[10] tombstone retention ms
-- ARGV[11] the lock's batch id as the caller believes it ('' for none)
-- ARGV[12] actor, for the audit trail
-- ARGV[13] most audit events kept
-- ARGV[14] request_id
-- ARGV[15] for a lock in a session: its lease (ms), '0' when it ended; else ''
-- ARGV[16] for a lock in a session that ended: 'expired' or 'closed'
-- ARGV[17] '1' when KEYS[13 ..] name the destination whole
--
-- Returns
--   {'OK', token, moved, unit_scale, remaining, source unit_scale, expires_at,
--    max_expires_at, created_at, ttl, holder, order_id, batch_id, source available,
--    destination available}   moved in the destination's scale; remaining 0 when
--                             the whole lock moved
--   {'REPLAY', ...} / {'IDEMPOTENCY_KEY_REUSED'}
--   {'BATCH', batch_id}   the lock is in this batch: call again naming it
--   {'SETTLE'}            short while the destination's other shards may hold expired
--                         locks: call again with it whole
--   {'EPOCH'}             the partition has no fencing epoch: raise it, call again
--   {'LEASE'} / {'SESSION_ENDED', cause}   as for Commit
--   {'LOCK_NOT_FOUND', ended} / {'LOCK_EXPIRED', ''} / {'LOCK_FORCE_RELEASED', ''} (see find_lock)
--   {'LOCK_HOLDER_MISMATCH'}
--   {'SKU_NOT_AVAILABLE_IN_WAREHOUSE'}    no destination record
--   {'INVALID_QUANTITY_SCALE', unit_scale} / {'QUANTITY_OUT_OF_RANGE'}
--   {'QUANTITY_EXCEEDS_LOCK', locked quantity, unit_scale}
--   {'INSUFFICIENT_STOCK', available, unit_scale}   at the destination
-- Nothing is written unless the answer is OK.
--
-- lib.lua: partition_keys, MAX_EXACT, now_ms, fmt, decimal, record_at, whole_record_at,
-- find_lock, drop_expired, part_of_lock, read_stock, available_of, find_expired_all,
-- drop_expired_all, end_lock, pack_lock, lock_member, lower_due, emit, lock_event,
-- audit, session_of, split, idem_lookup, idem_store, LOCK_SHARDS, EPOCH_FACTOR

local pk = partition_keys()
local fingerprint, idem_retention = ARGV[1], tonumber(ARGV[2])
local holder = ARGV[3]
local src = record_at(5, ARGV[4])
local token, nonce = ARGV[5], ARGV[6]
local tomb_retention = tonumber(ARGV[10])
local batch_key, session_locks = KEYS[11], KEYS[12]
local dest
if ARGV[17] == '1' then
  dest = whole_record_at(13, ARGV[7])
else
  dest = record_at(13, ARGV[7])
end
local shard = tonumber(token) % LOCK_SHARDS
-- The shard of the lock's nonce, where the moved lock goes.
local dest_view = dest.views and dest.views[shard + 1] or dest

local replay = idem_lookup(pk.idem, fingerprint)
if replay then
  return replay
end

local now = now_ms()
local lock, why, ended, detail = find_lock(src, token, nonce, now)
if not lock then
  if why == 'LOCK_EXPIRED' then
    drop_expired(pk, src, now, tomb_retention)
  end
  return { why, ended or '', ended == 'MOVED' and detail or nil }
end
if holder ~= '' and lock.holder ~= holder then
  return { 'LOCK_HOLDER_MISMATCH' }
end
if lock.batch_id ~= ARGV[11] then
  return { 'BATCH', lock.batch_id }
end
if session_of(nonce) then
  local lease = tonumber(ARGV[15]) or 0
  if lease == 0 then
    return { 'SESSION_ENDED', ARGV[16] }
  elseif lease <= now then
    return { 'LEASE' }
  end
end

local ss = read_stock(src)
local ds = read_stock(dest_view)
if not ds then
  return { 'SKU_NOT_AVAILABLE_IN_WAREHOUSE' }
end
-- How much moves, in the lock's scale and in the destination's.
local qty, refusal = part_of_lock(lock, ARGV[8], ARGV[9], ss.unit_scale)
if not qty then
  return refusal
end
local moved
if ds.unit_scale >= ss.unit_scale then
  moved = qty * 10 ^ (ds.unit_scale - ss.unit_scale)
else
  local factor = 10 ^ (ss.unit_scale - ds.unit_scale)
  if qty % factor ~= 0 then
    return { 'INVALID_QUANTITY_SCALE', fmt(ds.unit_scale) }
  end
  moved = qty / factor
end
if ds.locked + moved > MAX_EXACT then
  return { 'QUANTITY_OUT_OF_RANGE' }
end
local expired, expired_sum = find_expired_all(dest, now, ds.due)
local available = available_of(ds, ds.locked - expired_sum)
if moved > available then
  if not dest.views and ds.due and ds.due <= now then
    return { 'SETTLE' }
  end
  return { 'INSUFFICIENT_STOCK', fmt(math.max(available, 0)), fmt(ds.unit_scale) }
end
local epoch = redis.call('GET', KEYS[10])
if not epoch then
  return { 'EPOCH' }
end

-- The destination: a lock like the old one, under a new token of its shard.
ds = drop_expired_all(pk, expired, now, tomb_retention) or ds
local next_token = math.max(ds.fence + 1, tonumber(epoch) * EPOCH_FACTOR)
local new_token = fmt(next_token + (shard - next_token % LOCK_SHARDS) % LOCK_SHARDS)
local deadline = lock.expires
ds.fence, ds.locked, ds.version, ds.live = tonumber(new_token), ds.locked + moved, ds.version + 1, ds.live + 1
redis.call('HSET', dest_view.stock, 'fence', new_token, 'locked', ds.locked, 'version', ds.version, 'live', ds.live)
lower_due(pk.due, dest_view, ds, deadline)
local moved_lock = {
  qty = moved, created = lock.created, max_expires = lock.max_expires, ttl = lock.ttl,
  holder = lock.holder, order_id = lock.order_id, nonce = nonce, batch_id = lock.batch_id,
}
redis.call('HSET', dest_view.locks, new_token, pack_lock(moved_lock))
redis.call('ZADD', dest_view.exp, deadline, new_token)
redis.call('ZADD', dest_view.idx, 0, lock_member(dest_view, new_token, lock.created))
local new_ref = dest.id .. '|' .. new_token
local new_id = new_ref .. '-' .. nonce

-- The source: the lock reduced, or ended as moved.
local old_ref = src.id .. '|' .. token
local src_before = math.max(available_of(ss, ss.locked), 0)
local remaining = lock.qty - qty
if remaining == 0 then
  end_lock(pk, src, token, lock, 'M' .. new_ref, now, tomb_retention)
else
  local kept = {}
  for k, v in pairs(lock) do
    kept[k] = v
  end
  kept.qty = remaining
  redis.call('HSET', src.locks, token, pack_lock(kept))
end
ss.locked, ss.version = ss.locked - qty, ss.version + 1
redis.call('HSET', src.stock, 'locked', ss.locked, 'version', ss.version)

if session_of(nonce) then
  redis.call('ZADD', session_locks, lock.max_expires, new_ref)
  if remaining == 0 then
    redis.call('ZREM', session_locks, old_ref)
  end
end
if lock.batch_id ~= '' then
  -- The batch lists its locks: the moved one joins, a lock moved whole leaves.
  local listed = redis.call('GET', batch_key)
  if listed then
    local lines = split(listed, '\n')
    local out = { lines[1], lines[2] }
    for i = 3, #lines do
      if remaining > 0 or lines[i] ~= old_ref then
        out[#out + 1] = lines[i]
      end
    end
    out[#out + 1] = new_ref
    redis.call('SET', batch_key, table.concat(out, '\n'), 'KEEPTTL')
  end
end

-- Events: the lock's quantity left its record (detail: what it kept, and the
-- new lock's id) and came to the destination (detail: its expiry, as a lock's).
local out_event = lock_event(token, lock)
out_event.qty = qty
emit(pk.events, 'transfer.out', src, src_before, out_event, fmt(remaining) .. '|' .. new_id, ss)
local in_event = lock_event(new_token, moved_lock)
emit(pk.events, 'transfer.in', dest_view, math.max(available, 0), in_event, fmt(deadline), ds)
audit(pk.audit, ARGV[13], {
  'action', 'lock.transfer', 'actor', ARGV[12], 'sku', string.match(src.id, '^(.*)|'),
  'warehouse_id', string.match(src.id, '|([^|]*)$'), 'lock_ids', old_ref .. '-' .. nonce .. ',' .. new_id,
  'request_id', ARGV[14], 'd.to_warehouse_id', string.match(dest.id, '|([^|]*)$'),
  'd.quantity', decimal(qty, ss.unit_scale), 'd.remaining', decimal(remaining, ss.unit_scale),
})

local reply = {
  'OK', new_token, fmt(moved), fmt(ds.unit_scale), fmt(remaining), fmt(ss.unit_scale), fmt(deadline),
  fmt(lock.max_expires), fmt(lock.created), fmt(lock.ttl), lock.holder, lock.order_id, lock.batch_id,
  fmt(math.max(available_of(ss, ss.locked), 0)), fmt(math.max(available - moved, 0)),
}
return idem_store(pk.idem, fingerprint, reply, idem_retention)

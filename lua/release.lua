-- release.lua: gives locked quantities back to availability (Release by
-- lock_id, or every lock of a batch). Checks every lock before the first write:
-- one lock that may not be released fails the whole call and changes nothing.
--
-- KEYS[1..4]       partition keys: idempotency record (unused), due index, event stream, audit (unused)
-- KEYS[5..8]       with ARGV[1] only: the Lock idempotency hashes of the generations before, of and
--                  after the caller's, and the batch record
-- KEYS[r + 5k ..]  lock k's record in its shard: stock, locks, exp, ended, idx (r = 9 with ARGV[1], else 5)
-- ARGV[1]  '', or the request digest of a BatchLock being undone: its idempotency record and batch record
--          go in the same step as its locks, so a retry either replays the whole batch or locks
--          afresh, whenever the undo is cut short. (Release itself is idempotent by the lock's own
--          state, a retry finds the locks released: ALREADY_RELEASED, so no record of it is kept.)
-- ARGV[2]  holder, or "" to skip the holder check
-- ARGV[3]  unused (the idempotency retention, when these calls kept records)
-- ARGV[4]  tombstone retention ms
-- ARGV[5 + 3k ..]  lock k: record id "sku|warehouse", fencing token, nonce
--
-- Returns
--   {'OK', then per lock: outcome, quantity, unit_scale}
--       outcome RELEASED, ALREADY_RELEASED, ALREADY_EXPIRED or FORCE_RELEASED
--       (quantity "0" unless RELEASED)
--   {reason, k}  reason LOCK_NOT_FOUND, LOCK_ALREADY_COMMITTED or LOCK_HOLDER_MISMATCH for lock k
--
-- lib.lua: partition_keys, now_ms, fmt, record_at, find_lock, settle, stored_available, end_lock,
-- emit, lock_event, find_expired, drop_expired

local pk = partition_keys()
local undone = ARGV[1]
local first_record = undone == '' and 5 or 9
local holder = ARGV[2]
local tomb_retention = tonumber(ARGV[4])
local count = (#ARGV - 4) / 3

local now = now_ms()
local items = {}
for k = 0, count - 1 do
  local rec = record_at(first_record + 5 * k, ARGV[5 + 3 * k])
  local token = ARGV[6 + 3 * k]
  local lock, why, ended, detail = find_lock(rec, token, ARGV[7 + 3 * k], now)
  if lock and holder ~= '' and lock.holder ~= holder then
    return { 'LOCK_HOLDER_MISMATCH', fmt(k) }
  end
  if ended == 'COMMITTED' then
    return { 'LOCK_ALREADY_COMMITTED', fmt(k) }
  end
  if ended == 'MOVED' then
    -- Its hold lives on under the id TransferLock returned: releasing this
    -- one must not read as done.
    return { 'LOCK_NOT_FOUND', fmt(k), 'MOVED', detail }
  end
  if why == 'LOCK_NOT_FOUND' and ended == '' then
    return { why, fmt(k) }
  end
  items[#items + 1] = { rec = rec, token = token, lock = lock, why = why }
end

local reply = { 'OK' }
for _, item in ipairs(items) do
  local rec = item.rec
  local unit_scale = redis.call('HGET', rec.stock, 'unit_scale') or '0'
  local outcome, qty = 'ALREADY_RELEASED', 0
  if item.lock then
    outcome, qty = 'RELEASED', item.lock.qty
    settle(pk, rec, now, tomb_retention)
    local before = stored_available(rec)
    end_lock(pk, rec, item.token, item.lock, 'R', now, tomb_retention)
    redis.call('HINCRBY', rec.stock, 'locked', -qty)
    redis.call('HINCRBY', rec.stock, 'version', 1)
    emit(pk.events, 'release', rec, before, lock_event(item.token, item.lock))
  elseif item.why == 'LOCK_FORCE_RELEASED' then
    outcome = 'FORCE_RELEASED'
  elseif item.why == 'LOCK_EXPIRED' then
    outcome = 'ALREADY_EXPIRED'
    drop_expired(pk, rec, now, tomb_retention)
  end
  for _, v in ipairs({ outcome, fmt(qty), unit_scale }) do
    reply[#reply + 1] = v
  end
end

if undone ~= '' then
  for i = 5, 7 do
    redis.call('HDEL', KEYS[i], undone)
  end
  redis.call('DEL', KEYS[8])
end
return reply

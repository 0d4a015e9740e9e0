-- repair_record.lua: an operator's repair of a drifted record from its lock
-- set, in one atomic step with its audit entry. Expired locks are swept
-- first; a lock without an expiry entry gets one at now + its ttl (it would
-- otherwise hold stock forever); an expiry without a lock is dropped; then
-- `locked` is set to the sum of the live locks.
--
-- KEYS[1..5]  partition keys: idempotency record, due index, event stream, audit stream, lock index
-- KEYS[6..9]  the record: stock, locks, exp, ended
-- ARGV[1]     record id "sku|warehouse"
-- ARGV[2]     request fingerprint
-- ARGV[3]     idempotency (and tombstone) retention ms
-- ARGV[4]     actor
-- ARGV[5]     reason
-- ARGV[6]     request_id
-- ARGV[7]     most audit events kept
--
-- Returns {'OK', locked_before, locked_after, fixed_expiries, dropped_expiries,
--          then the record (see record_reply)}, {'REPLAY', ...},
--          {'IDEMPOTENCY_KEY_REUSED'} or {'SKU_NOT_AVAILABLE_IN_WAREHOUSE'}.
--
-- lib.lua: partition_keys, now_ms, fmt, decimal, record_at, read_stock, available_of, sum_locks, lock_member,
-- find_expired, drop_expired, refresh_due, audit, emit, record_reply, idem_lookup, idem_store

local pk = partition_keys()
local rec = record_at(6, ARGV[1])
local fingerprint, retention = ARGV[2], tonumber(ARGV[3])

local replay = idem_lookup(pk.idem, fingerprint)
if replay then
  return replay
end
local s = read_stock(rec)
if not s then
  return { 'SKU_NOT_AVAILABLE_IN_WAREHOUSE' }
end
local now = now_ms()
local locked_before = s.locked
local available_before = math.max(available_of(s, s.locked), 0)

-- Structure first: every lock has an expiry, every expiry a lock. The same
-- pass sums the locks for the figure.
local sum, fixed = sum_locks(rec, function(token, l)
  redis.call('ZADD', rec.exp, now + l.ttl, token)
end)
-- Every lock is in its partition's lock index.
local all = redis.call('HGETALL', rec.locks)
for i = 1, #all, 2 do
  redis.call('ZADD', pk.locks, 0, lock_member(rec, all[i], unpack_lock(all[i + 1]).created))
end
local dropped = 0
for _, token in ipairs(redis.call('ZRANGE', rec.exp, 0, -1)) do
  if redis.call('HEXISTS', rec.locks, token) == 0 then
    redis.call('ZREM', rec.exp, token)
    dropped = dropped + 1
  end
end

-- Then the figure: locked is the sum of the live locks, after the sweep.
redis.call('HSET', rec.stock, 'locked', fmt(sum))
drop_expired(pk, rec, find_expired(rec, now), now, retention)
refresh_due(pk.due, rec)
redis.call('HINCRBY', rec.stock, 'version', 1)
local locked_after = read_stock(rec).locked

local at = string.find(ARGV[1], '|', 1, true)
audit(pk.audit, ARGV[7], {
  'action', 'record.repair', 'actor', ARGV[4], 'sku', string.sub(ARGV[1], 1, at - 1),
  'warehouse_id', string.sub(ARGV[1], at + 1), 'request_id', ARGV[6], 'reason', ARGV[5],
  'd.locked', decimal(locked_before, s.unit_scale) .. ' -> ' .. decimal(locked_after, s.unit_scale),
  'd.fixed_expiries', fmt(fixed), 'd.dropped_expiries', fmt(dropped),
})
emit(pk.events, 'record.repair', rec, available_before, { 'reason', ARGV[5] })

local reply = { 'OK', fmt(locked_before), fmt(locked_after), fmt(fixed), fmt(dropped) }
return idem_store(pk.idem, fingerprint, record_reply(rec, now, reply), retention)

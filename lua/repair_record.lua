-- repair_record.lua: the last step of an operator's repair of a drifted
-- record, in one atomic step with its audit entry: `locked` becomes the sum
-- of the record's locks, which the caller summed slice by slice with
-- repair_slice.lua (that also mended the expiry index) while the record's
-- version stayed ARGV[8]. If the record changed since, nothing is written.
-- Then expired locks are settled (at most SETTLE_LIMIT; the sweeper takes the
-- rest) and the due index points at the earliest expiry.
--
-- KEYS[1..4]  partition keys: idempotency record, due index, event stream, audit stream
-- KEYS[5..]   the whole record (see whole_record_at)
-- ARGV[1]     record id "sku|warehouse"
-- ARGV[2]     request fingerprint
-- ARGV[3]     idempotency (and tombstone) retention ms
-- ARGV[4]     actor
-- ARGV[5]     reason
-- ARGV[6]     request_id
-- ARGV[7]     most audit events kept
-- ARGV[8]     the version the sum was read at
-- ARGV[9]     the sum of the record's locks
-- ARGV[10]    expiries the slices gave to locks that lacked one
-- ARGV[11]    expiries without a lock the slices dropped
-- ARGV[12]    the number of the record's locks
--
-- Returns {'OK', locked_before, locked_after, fixed_expiries, dropped_expiries,
--          then the record (see record_reply)}, {'REPLAY', ...},
--          {'STALE'} when the record changed since it was summed,
--          {'IDEMPOTENCY_KEY_REUSED'} or {'SKU_NOT_AVAILABLE_IN_WAREHOUSE'}.
--
-- lib.lua: partition_keys, now_ms, fmt, decimal, whole_record_at, read_stock, available_of,
-- settle, refresh_due, audit, emit, record_reply, idem_lookup, idem_store

local pk = partition_keys()
local rec = whole_record_at(5, ARGV[1])
local fingerprint, retention = ARGV[2], tonumber(ARGV[3])

local replay = idem_lookup(pk.idem, fingerprint)
if replay then
  return replay
end
local s = read_stock(rec)
if not s then
  return { 'SKU_NOT_AVAILABLE_IN_WAREHOUSE' }
end
if s.version ~= tonumber(ARGV[8]) then
  return { 'STALE' }
end
local now = now_ms()
local locked_before, sum = s.locked, tonumber(ARGV[9])
local available_before = math.max(available_of(s, s.locked), 0)

redis.call('HSET', rec.stock, 'locked', fmt(sum), 'live', ARGV[12])
settle(pk, rec, now, retention)
refresh_due(pk.due, rec)
redis.call('HINCRBY', rec.stock, 'version', 1)
local locked_after = read_stock(rec).locked

local at = string.find(ARGV[1], '|', 1, true)
audit(pk.audit, ARGV[7], {
  'action', 'record.repair', 'actor', ARGV[4], 'sku', string.sub(ARGV[1], 1, at - 1),
  'warehouse_id', string.sub(ARGV[1], at + 1), 'request_id', ARGV[6], 'reason', ARGV[5],
  'd.locked', decimal(locked_before, s.unit_scale) .. ' -> ' .. decimal(locked_after, s.unit_scale),
  'd.fixed_expiries', ARGV[10], 'd.dropped_expiries', ARGV[11],
})
emit(pk.events, 'record.repair', rec, available_before, nil, ARGV[5])

local reply = { 'OK', fmt(locked_before), fmt(locked_after), ARGV[10], ARGV[11] }
return idem_store(pk.idem, fingerprint, record_reply(rec, now, reply), retention)

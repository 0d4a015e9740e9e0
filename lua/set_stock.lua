-- set_stock.lua: writes an absolute snapshot from the warehouse system.
-- A snapshot not newer than the stored source_version is ignored (stale):
-- events arrive out of order, and the newest one must win.
--
-- KEYS[1..4]  partition keys: idempotency record (unused without a request_id),
--             due index, event stream, audit stream
-- KEYS[5]     the SKU's set of warehouses
-- KEYS[6]     the partition's set of record ids, for the auditor
-- KEYS[7..]   the whole record (see whole_record_at)
-- ARGV[1..3]  physical, reserved, in_transit, scaled by ARGV[4]
-- ARGV[4]     unit_scale
-- ARGV[5]     source_version
-- ARGV[6]     warehouse id
-- ARGV[7]     request fingerprint, or "" without a request_id
-- ARGV[8]     idempotency retention ms
-- ARGV[9]     tombstone retention ms
-- ARGV[10]    record id "sku|warehouse"
-- ARGV[11]    actor (the authenticated principal, or "anonymous")
-- ARGV[12]    most audit events kept
-- ARGV[13]    request_id, or ""
-- ARGV[14]    sku
--
-- Returns
--   {'OK', then the record (see record_reply)}
--   {'STALE', then the stored record}
--   {'UNIT_SCALE_IN_USE', stored unit_scale}   live locks are counted in the old scale
--   {'REPLAY', ...}  /  {'IDEMPOTENCY_KEY_REUSED'}
-- Lowering physical below what is locked keeps every lock: the record then
-- reports available 0 and the shortfall as oversold.
--
-- lib.lua: partition_keys, now_ms, fmt, decimal, whole_record_at, read_stock, available_of, record_reply,
-- find_expired_all, drop_expired_all, refresh_due, emit, audit, idem_lookup, idem_store

local pk = partition_keys()
local whs_key, records_key = KEYS[5], KEYS[6]
local rec = whole_record_at(7, ARGV[10])
local physical, reserved, in_transit = ARGV[1], ARGV[2], ARGV[3]
local unit_scale, source_version = tonumber(ARGV[4]), tonumber(ARGV[5])
local fingerprint = ARGV[7]
local idem_retention, tomb_retention = tonumber(ARGV[8]), tonumber(ARGV[9])

local replay = idem_lookup(pk.idem, fingerprint)
if replay then
  return replay
end

local now = now_ms()
local s = read_stock(rec)
local available_before = 0
if s then
  available_before = math.max(available_of(s, s.locked), 0)
end
local before = { physical = 'none', reserved = 'none', in_transit = 'none', unit_scale = 'none' }
if s then
  for _, f in ipairs({ 'physical', 'reserved', 'in_transit' }) do
    before[f] = decimal(s[f], s.unit_scale)
  end
  before.unit_scale = fmt(s.unit_scale)
  if source_version <= s.source_version then
    return record_reply(rec, now, { 'STALE' })
  end
  -- The scale may change only when no lock is left in the old one: every
  -- lock has expired and this call settles them all.
  local expired, expired_sum = find_expired_all(rec, now, s.due)
  if unit_scale ~= s.unit_scale and s.locked - expired_sum > 0 then
    return { 'UNIT_SCALE_IN_USE', fmt(s.unit_scale) }
  end
  drop_expired_all(pk, expired, now, tomb_retention)
  refresh_due(pk.due, rec)
  redis.call('HSET', rec.stock, 'physical', physical, 'reserved', reserved, 'in_transit', in_transit,
    'unit_scale', unit_scale, 'source_version', source_version)
  redis.call('HINCRBY', rec.stock, 'version', 1)
else
  redis.call('HSET', rec.stock, 'physical', physical, 'reserved', reserved, 'in_transit', in_transit,
    'unit_scale', unit_scale, 'source_version', source_version, 'locked', 0, 'fence', 0, 'version', 1)
  redis.call('SADD', whs_key, ARGV[6])
  redis.call('SADD', records_key, ARGV[10])
end

emit(pk.events, 'stock.set', rec, available_before, nil, fmt(source_version))
audit(pk.audit, ARGV[12], {
  'action', 'stock.set', 'actor', ARGV[11], 'sku', ARGV[14], 'warehouse_id', ARGV[6], 'request_id', ARGV[13],
  'd.physical', before.physical .. ' -> ' .. decimal(tonumber(physical), unit_scale),
  'd.reserved', before.reserved .. ' -> ' .. decimal(tonumber(reserved), unit_scale),
  'd.in_transit', before.in_transit .. ' -> ' .. decimal(tonumber(in_transit), unit_scale),
  'd.unit_scale', before.unit_scale .. ' -> ' .. fmt(unit_scale),
  'd.source_version', fmt(source_version),
})

return idem_store(pk.idem, fingerprint, record_reply(rec, now, { 'OK' }), idem_retention)

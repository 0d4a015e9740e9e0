-- adjust_stock.lua: applies signed deltas to physical, reserved and in_transit.
--
-- KEYS[1..4]  partition keys: idempotency record, due index (unused), event stream, audit stream
-- KEYS[5..]   the whole record (see whole_record_at)
-- ARGV[1]     request fingerprint
-- ARGV[2]     idempotency retention ms
-- ARGV[3..8]  (mantissa, scale) of the physical, reserved and in_transit deltas
-- ARGV[9]     actor
-- ARGV[10]    most audit events kept
-- ARGV[11]    request_id
-- ARGV[12]    sku
-- ARGV[13]    warehouse id
-- ARGV[14]    reason
--
-- Returns
--   {'OK', then the record (see record_reply)}
--   {'SKU_NOT_AVAILABLE_IN_WAREHOUSE'}
--   {'INVALID_QUANTITY_SCALE', field, unit_scale} / {'QUANTITY_OUT_OF_RANGE', field}
--       (a figure, or physical + in_transit, past 2^53)
--   {'NEGATIVE_STOCK', field}   a decrease would take the field below zero
--   {'REPLAY', ...}  /  {'IDEMPOTENCY_KEY_REUSED'}
--
-- lib.lua: partition_keys, MAX_EXACT, now_ms, fmt, decimal, whole_record_at, read_stock, scale_qty,
-- available_of, record_reply, emit, audit, idem_lookup, idem_store

local pk = partition_keys()
local rec = whole_record_at(5, ARGV[12] .. '|' .. ARGV[13])
local fingerprint, idem_retention = ARGV[1], tonumber(ARGV[2])
local fields = { 'physical', 'reserved', 'in_transit' }

local replay = idem_lookup(pk.idem, fingerprint)
if replay then
  return replay
end

local s = read_stock(rec)
if not s then
  return { 'SKU_NOT_AVAILABLE_IN_WAREHOUSE' }
end

local deltas = {}
for i, field in ipairs(fields) do
  local delta, err = scale_qty(tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i]), s.unit_scale)
  if not delta then
    return { err, field, fmt(s.unit_scale) }
  end
  local after = s[field] + delta
  if after > MAX_EXACT or after < -MAX_EXACT then
    return { 'QUANTITY_OUT_OF_RANGE', field }
  end
  if delta < 0 and after < 0 then
    return { 'NEGATIVE_STOCK', field }
  end
  deltas[field] = delta
end
-- What a Lock can take stays exact too.
if s.physical + deltas.physical + s.in_transit + deltas.in_transit > MAX_EXACT then
  return { 'QUANTITY_OUT_OF_RANGE', deltas.in_transit > 0 and 'in_transit' or 'physical' }
end

local available_before = math.max(available_of(s, s.locked), 0)
local event = {
  'action', 'stock.adjust', 'actor', ARGV[9], 'sku', ARGV[12], 'warehouse_id', ARGV[13],
  'request_id', ARGV[11], 'reason', ARGV[14],
}
for _, field in ipairs(fields) do
  if deltas[field] ~= 0 then
    redis.call('HINCRBY', rec.stock, field, deltas[field])
    local change = decimal(s[field], s.unit_scale) .. ' -> ' .. decimal(s[field] + deltas[field], s.unit_scale)
    event[#event + 1] = 'd.' .. field
    event[#event + 1] = change
  end
end
redis.call('HINCRBY', rec.stock, 'version', 1)
audit(pk.audit, ARGV[10], event)
emit(pk.events, 'stock.adjust', rec, available_before, nil, ARGV[14])

return idem_store(pk.idem, fingerprint, record_reply(rec, now_ms(), { 'OK' }), idem_retention)

-- lock.lua: locks one line (Lock) or every line of a batch (BatchLock), all or nothing.
--
-- KEYS[1..5]       partition keys: idempotency record, due index, event stream, audit (unused), lock index
-- KEYS[6]          the batch record when ARGV[6] (batch_id) is set, else unused; it holds
--                  "holder\nnonce\nsku|warehouse|token\n..."
-- KEYS[7 + 4k ..]  line k's record: stock, locks, exp, ended
-- ARGV[1]  request fingerprint
-- ARGV[2]  ttl ms
-- ARGV[3]  maximum total hold ms
-- ARGV[4]  holder
-- ARGV[5]  order_id
-- ARGV[6]  batch_id, or "" for a single Lock
-- ARGV[7]  idempotency retention ms
-- ARGV[8]  tombstone retention ms
-- ARGV[9]  nonce (random, makes lock ids unguessable and unique across data loss)
-- ARGV[10] token floor: the fencing epoch << 32; tokens are never below it, so
--          tokens issued after a failover are above every one issued before
-- ARGV[11 + 3k ..]  line k: record id "sku|warehouse", quantity mantissa, quantity scale
--
-- Returns
--   {'OK', now, expires_at, max_expires_at, batch_id, nonce,
--    then per line: token, qty, available, unit_scale}
--   {'REPLAY', ...the same...}               a retry of an earlier success
--   {'IDEMPOTENCY_KEY_REUSED'}
--   {'SKU_NOT_AVAILABLE_IN_WAREHOUSE', line}
--   {'INVALID_QUANTITY_SCALE', line, unit_scale} / {'QUANTITY_OUT_OF_RANGE', line}
--   {'INSUFFICIENT_STOCK', then per short line: line, requested, available, unit_scale}
-- Lines are numbered from 0. Nothing is written unless the answer is OK.
--
-- lib.lua: partition_keys, now_ms, fmt, record_at, read_stock, scale_qty, find_expired,
-- available_of, drop_expired, pack_lock, lock_member, lock_fields, emit, refresh_due, idem_lookup, idem_store

local pk = partition_keys()
local batch_key = KEYS[6]
local fingerprint = ARGV[1]
local ttl, max_hold = tonumber(ARGV[2]), tonumber(ARGV[3])
local holder, order_id, batch_id = ARGV[4], ARGV[5], ARGV[6]
local idem_retention, tomb_retention = tonumber(ARGV[7]), tonumber(ARGV[8])
local nonce = ARGV[9]
local token_floor = tonumber(ARGV[10])
local line_count = (#ARGV - 10) / 3

local replay = idem_lookup(pk.idem, fingerprint)
if replay then
  return replay
end

local now = now_ms()

-- Check every line before the first write.
local lines = {}
local short = {}
for k = 0, line_count - 1 do
  local rec = record_at(7 + 4 * k, ARGV[11 + 3 * k])
  local s = read_stock(rec)
  if not s then
    return { 'SKU_NOT_AVAILABLE_IN_WAREHOUSE', fmt(k) }
  end
  local qty, err = scale_qty(tonumber(ARGV[12 + 3 * k]), tonumber(ARGV[13 + 3 * k]), s.unit_scale)
  if not qty then
    return { err, fmt(k), fmt(s.unit_scale) }
  end
  local expired, expired_sum = find_expired(rec, now)
  local available = available_of(s, s.locked - expired_sum)
  if qty > available then
    for _, v in ipairs({ k, qty, math.max(available, 0), s.unit_scale }) do
      short[#short + 1] = fmt(v)
    end
  end
  lines[#lines + 1] = { rec = rec, stock = s, qty = qty, expired = expired, expired_sum = expired_sum, available = available }
end
if #short > 0 then
  table.insert(short, 1, 'INSUFFICIENT_STOCK')
  return short
end

local expires = now + ttl
local max_expires = now + max_hold
local reply = { 'OK', fmt(now), fmt(expires), fmt(max_expires), batch_id, nonce }
local lock_refs = {}
for _, line in ipairs(lines) do
  local rec = line.rec
  local s = line.stock
  if #line.expired > 0 then
    drop_expired(pk, rec, line.expired, now, tomb_retention)
    s = read_stock(rec)
  end
  -- One write for the three counters; the figures are known, so the event
  -- needs no read either (the profile of this script is its Redis calls).
  -- Tokens pass through fmt: Lua would print large numbers as 9.0071992547409e+15.
  local token = fmt(math.max(s.fence + 1, token_floor))
  s.fence, s.locked, s.version = tonumber(token), s.locked + line.qty, s.version + 1
  redis.call('HSET', rec.stock, 'fence', token, 'locked', fmt(s.locked), 'version', fmt(s.version))
  redis.call('HSET', rec.locks, token, pack_lock({
    qty = line.qty, created = now, max_expires = max_expires, ttl = ttl,
    holder = holder, order_id = order_id, nonce = nonce, batch_id = batch_id,
  }))
  redis.call('ZADD', rec.exp, expires, token)
  redis.call('ZADD', pk.locks, 0, lock_member(rec, token, now))
  if #line.expired > 0 then
    refresh_due(pk.due, rec)
  else
    -- A new lock can only bring the record's earliest expiry forward.
    redis.call('ZADD', pk.due, 'LT', expires, rec.id)
  end
  local fields = lock_fields(rec, token, { qty = line.qty, nonce = nonce, holder = holder, order_id = order_id }, s.unit_scale)
  for _, v in ipairs({ 'expires_at', fmt(expires), 'batch_id', batch_id }) do
    fields[#fields + 1] = v
  end
  emit(pk.events, 'lock', rec, math.max(line.available, 0), fields, s)
  -- A batch may name the same record only once, so `available` is exact per line.
  for _, v in ipairs({ s.fence, line.qty, math.max(line.available - line.qty, 0), line.stock.unit_scale }) do
    reply[#reply + 1] = fmt(v)
  end
  lock_refs[#lock_refs + 1] = rec.id .. '|' .. token
end

if batch_id ~= '' then
  -- The batch lists its locks so Renew and Release can address them by batch_id.
  redis.call('SET', batch_key, holder .. '\n' .. nonce .. '\n' .. table.concat(lock_refs, '\n'), 'PX', max_hold + tomb_retention)
end

return idem_store(pk.idem, fingerprint, reply, idem_retention)

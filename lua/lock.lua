-- lock.lua: locks one line (Lock) or every line of a batch (BatchLock), all or nothing.
--
-- KEYS[1..5]       partition keys: this generation's idempotency hash, due index, event stream,
--                  audit (unused), lock index
-- KEYS[6]          the previous generation's idempotency hash
-- KEYS[7]          the batch record when ARGV[6] (batch_id) is set, else unused; it holds
--                  "holder\nnonce\nsku|warehouse|token\n..."
-- KEYS[8 + 4k ..]  line k's record: stock, locks, exp, ended
-- ARGV[1]  the content's digest (16 hex digits), or "" to keep no idempotency record
-- ARGV[2]  ttl ms
-- ARGV[3]  maximum total hold ms
-- ARGV[4]  holder
-- ARGV[5]  order_id
-- ARGV[6]  batch_id, or "" for a single Lock
-- ARGV[7]  idempotency retention ms (unused: ARGV[13] is the generation length)
-- ARGV[8]  tombstone retention ms
-- ARGV[9]  nonce (random, makes lock ids unguessable and unique across data loss)
-- ARGV[10] token floor: the fencing epoch << 32; tokens are never below it, so
--          tokens issued after a failover are above every one issued before
-- ARGV[11] the request's digest (16 hex digits of method and request_id)
-- ARGV[12] the idempotency generation KEYS[1] belongs to: unix ms / ARGV[13]
-- ARGV[13] the generation's length: the idempotency retention ms
-- ARGV[14 + 3k ..]  line k: record id "sku|warehouse", quantity mantissa, quantity scale
--
-- Idempotency: a granted call leaves one field in its generation's hash,
-- request digest -> content digest .. "now|max_expires|batch_id|nonce|" and
-- per line "token|qty|available|unit_scale". A retry looks in this generation
-- and the one before, so it finds the record for at least one retention; a
-- generation's hash expires when the one after it ends. The caller names the
-- generation by its own clock; Redis's decides, and a mismatch (near a
-- boundary) answers {'GENERATION', generation} for the caller to call again.
--
-- Returns
--   {'GENERATION', generation}                see Idempotency
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
-- available_of, drop_expired, pack_lock, lock_member, emit, refresh_due, split

local pk = partition_keys()
local previous_idem, batch_key = KEYS[6], KEYS[7]
local fingerprint = ARGV[1]
local ttl, max_hold = tonumber(ARGV[2]), tonumber(ARGV[3])
local holder, order_id, batch_id = ARGV[4], ARGV[5], ARGV[6]
local tomb_retention = tonumber(ARGV[8])
local nonce = ARGV[9]
local token_floor = tonumber(ARGV[10])
local request, generation, generation_ms = ARGV[11], tonumber(ARGV[12]), tonumber(ARGV[13])
local line_count = (#ARGV - 13) / 3

local now = now_ms()
if fingerprint ~= '' then
  local actual = math.floor(now / generation_ms)
  if actual ~= generation then
    return { 'GENERATION', fmt(actual) }
  end
  local stored = redis.call('HGET', pk.idem, request) or redis.call('HGET', previous_idem, request)
  if stored then
    if string.sub(stored, 1, 16) ~= fingerprint then
      return { 'IDEMPOTENCY_KEY_REUSED' }
    end
    -- now|max_expires|batch_id|nonce, then per line token|qty|available|unit_scale
    local f = split(string.sub(stored, 17), '|')
    local reply = { 'REPLAY', 'OK', f[1], fmt(tonumber(f[1]) + ttl), f[2], f[3], f[4] }
    for i = 5, #f do
      reply[#reply + 1] = f[i]
    end
    return reply
  end
end

-- Check every line before the first write.
local lines = {}
local short = {}
for k = 0, line_count - 1 do
  local rec = record_at(8 + 4 * k, ARGV[14 + 3 * k])
  local s = read_stock(rec)
  if not s then
    return { 'SKU_NOT_AVAILABLE_IN_WAREHOUSE', fmt(k) }
  end
  local qty, err = scale_qty(tonumber(ARGV[15 + 3 * k]), tonumber(ARGV[16 + 3 * k]), s.unit_scale)
  if not qty then
    return { err, fmt(k), fmt(s.unit_scale) }
  end
  -- Only a record whose earliest expiry has come can have expired locks.
  local expired, expired_sum = {}, 0
  if s.due and s.due <= now then
    expired, expired_sum = find_expired(rec, now)
  end
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
  -- A new lock can only bring the record's earliest expiry forward.
  local earlier = not s.due or expires < s.due
  if earlier then
    redis.call('HSET', rec.stock, 'fence', token, 'locked', fmt(s.locked), 'version', fmt(s.version), 'due', fmt(expires))
    redis.call('ZADD', pk.due, 'LT', expires, rec.id)
  else
    redis.call('HSET', rec.stock, 'fence', token, 'locked', fmt(s.locked), 'version', fmt(s.version))
  end
  redis.call('HSET', rec.locks, token, pack_lock({
    qty = line.qty, created = now, max_expires = max_expires, ttl = ttl,
    holder = holder, order_id = order_id, nonce = nonce, batch_id = batch_id,
  }))
  redis.call('ZADD', rec.exp, expires, token)
  redis.call('ZADD', pk.locks, 0, lock_member(rec, token, now))
  if #line.expired > 0 then
    refresh_due(pk.due, rec)
  end
  local lock = { token = token, nonce = nonce, qty = line.qty, holder = holder, order_id = order_id, batch_id = batch_id }
  emit(pk.events, 'lock', rec, math.max(line.available, 0), lock, fmt(expires), s)
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

if fingerprint ~= '' then
  -- The answer without the figures a retry knows (expires_at = now + ttl).
  local kept = { reply[2], reply[4], reply[5], reply[6] }
  for i = 7, #reply do
    kept[#kept + 1] = reply[i]
  end
  redis.call('HSET', pk.idem, request, fingerprint .. table.concat(kept, '|'))
  redis.call('PEXPIREAT', pk.idem, (generation + 2) * generation_ms + 60000)
end
return reply

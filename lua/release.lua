-- release.lua: gives locked quantities back to availability (Release by
-- lock_id, or every lock of a batch). Checks every lock before the first write:
-- one lock that may not be released fails the whole call and changes nothing.
--
-- KEYS[1]          idempotency record of this request
-- KEYS[2]          the sweeper's due index
-- KEYS[3 + 4k ..]  lock k's record: stock, locks, exp, ended
-- KEYS[last]       the lifecycle event stream
-- ARGV[1]  request fingerprint
-- ARGV[2]  holder, or "" to skip the holder check
-- ARGV[3]  idempotency retention ms
-- ARGV[4]  tombstone retention ms
-- ARGV[5 + 3k ..]  lock k: record id "sku|warehouse", fencing token, nonce
--
-- Returns
--   {'OK', then per lock: outcome, quantity, unit_scale}
--       outcome RELEASED, ALREADY_RELEASED, ALREADY_EXPIRED or FORCE_RELEASED
--       (quantity "0" unless RELEASED)
--   {'REPLAY', ...}  /  {'IDEMPOTENCY_KEY_REUSED'}
--   {reason, k}  reason LOCK_NOT_FOUND, LOCK_COMMITTED or LOCK_HOLDER_MISMATCH for lock k

local idem_key, due_key = KEYS[1], KEYS[2]
local fingerprint, holder = ARGV[1], ARGV[2]
local idem_retention, tomb_retention = tonumber(ARGV[3]), tonumber(ARGV[4])
local count = (#ARGV - 4) / 3
EVENTS_KEY = KEYS[#KEYS]

local replay = idem_lookup(idem_key, fingerprint)
if replay then
  return replay
end

local now = now_ms()
local items = {}
for k = 0, count - 1 do
  local rec = record_at(3 + 4 * k, ARGV[5 + 3 * k])
  local token = ARGV[6 + 3 * k]
  local lock, why = find_lock(rec, token, ARGV[7 + 3 * k], now)
  if lock and holder ~= '' and lock.holder ~= holder then
    return { 'LOCK_HOLDER_MISMATCH', fmt(k) }
  end
  if why == 'LOCK_NOT_FOUND' or why == 'LOCK_COMMITTED' then
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
    settle(rec, now, tomb_retention)
    local before = stored_available(rec)
    end_lock(rec, item.token, 'R', now, tomb_retention)
    redis.call('HINCRBY', rec.stock, 'locked', -qty)
    redis.call('HINCRBY', rec.stock, 'version', 1)
    emit('release', rec, before, lock_fields(rec, item.token, item.lock, tonumber(unit_scale)))
  elseif item.why == 'LOCK_FORCE_RELEASED' then
    outcome = 'FORCE_RELEASED'
  elseif item.why == 'LOCK_EXPIRED' then
    outcome = 'ALREADY_EXPIRED'
    local expired, expired_sum = find_expired(rec, now)
    drop_expired(rec, expired, expired_sum, now, tomb_retention)
  end
  refresh_due(due_key, rec)
  for _, v in ipairs({ outcome, fmt(qty), unit_scale }) do
    reply[#reply + 1] = v
  end
end

return idem_store(idem_key, fingerprint, reply, idem_retention)

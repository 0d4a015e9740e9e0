-- force_release.lua: executes a pending forced-unlock request: releases every
-- lock of it that is still live, fences them (a later Renew or Commit by the
-- old holder fails with LOCK_FORCE_RELEASED), and audits it.
--
-- KEYS[1..4]       partition keys: idempotency record, due index, event stream, audit stream
-- KEYS[5]          the request's hash
-- KEYS[6 + 5k ..]  lock k's record in its shard: stock, locks, exp, ended, idx
-- ARGV[1]  fingerprint
-- ARGV[2]  approver
-- ARGV[3]  mode: 'approve' (two-person rule) or 'policy' (stale locks, single step)
-- ARGV[4]  comment
-- ARGV[5]  idempotency retention ms
-- ARGV[6]  tombstone retention ms
-- ARGV[7]  most audit events kept
-- ARGV[8]  request_id
-- ARGV[9]  force-unlock request id
-- ARGV[10 + 3k ..]  lock k: record id "sku|warehouse", fencing token, nonce
--
-- Returns
--   {'OK', decided_at, then per lock '1' released or '0' skipped (had ended)}
--   {'FORCE_UNLOCK_NOT_FOUND'} / {'FORCE_UNLOCK_NOT_PENDING', state} / {'FORCE_UNLOCK_EXPIRED'}
--   {'TWO_PERSON_RULE'}   the approver is the requester
--   {'REPLAY', ...} / {'IDEMPOTENCY_KEY_REUSED'}
--
-- lib.lua: partition_keys, now_ms, fmt, record_at, pending_request, find_lock, stored_available,
-- end_lock, lock_event, read_stock, emit, audit, idem_lookup, idem_store

local pk = partition_keys()
local request_key = KEYS[5]
local fingerprint, approver, mode, comment = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local idem_retention, tomb_retention = tonumber(ARGV[5]), tonumber(ARGV[6])
local count = (#ARGV - 9) / 3

local replay = idem_lookup(pk.idem, fingerprint)
if replay then
  return replay
end

local now = now_ms()
local request, refusal = pending_request(request_key, now)
if not request then
  return refusal
end
if mode == 'approve' and approver == request[2] then
  return { 'TWO_PERSON_RULE' }
end

local reply = { 'OK', fmt(now) }
local released, skipped = {}, {}
-- Each event says who released the lock and why, for its holder.
local detail = approver .. '\n' .. (redis.call('HGET', request_key, 'reason') or '')
for k = 0, count - 1 do
  local rec = record_at(6 + 5 * k, ARGV[10 + 3 * k])
  local token, nonce = ARGV[11 + 3 * k], ARGV[12 + 3 * k]
  local lock_id = rec.id .. '|' .. token .. '-' .. nonce
  local lock = find_lock(rec, token, nonce, now)
  if lock then
    local before = stored_available(rec)
    end_lock(pk, rec, token, lock, 'F', now, tomb_retention)
    redis.call('HINCRBY', rec.stock, 'locked', -lock.qty)
    redis.call('HINCRBY', rec.stock, 'version', 1)
    emit(pk.events, 'force_release', rec, before, lock_event(token, lock), detail)
    released[#released + 1] = lock_id
    reply[#reply + 1] = '1'
  else
    skipped[#skipped + 1] = lock_id
    reply[#reply + 1] = '0'
  end
end

redis.call('HSET', request_key, 'state', 'EXECUTED', 'decided_at', now, 'decided_by', approver,
  'decision_reason', comment, 'released', table.concat(released, ','), 'skipped', table.concat(skipped, ','),
  'single_step', mode == 'policy' and '1' or '0')
local action = 'force_unlock.approved'
if mode == 'policy' then
  action = 'force_unlock.policy_executed'
end
audit(pk.audit, ARGV[7], {
  'action', action, 'actor', approver, 'reason', comment, 'request_id', ARGV[8],
  'lock_ids', table.concat(released, ','), 'd.force_unlock_id', ARGV[9], 'd.requester', request[2],
  'd.skipped', table.concat(skipped, ','),
})
return idem_store(pk.idem, fingerprint, reply, idem_retention)

-- reject_force_unlock.lua: rejects (or, by its requester, withdraws) a pending
-- forced-unlock request, and audits it.
--
-- KEYS[1..4]  partition keys: idempotency record, due index (unused), event stream (unused),
--             audit stream
-- KEYS[5]     the request's hash
-- ARGV[1]  fingerprint
-- ARGV[2]  actor
-- ARGV[3]  reason
-- ARGV[4]  idempotency retention ms
-- ARGV[5]  most audit events kept
-- ARGV[6]  request_id
-- ARGV[7]  force-unlock request id
--
-- Returns {'OK', decided_at}, {'FORCE_UNLOCK_NOT_FOUND'}, {'FORCE_UNLOCK_NOT_PENDING', state},
-- {'FORCE_UNLOCK_EXPIRED'}, {'REPLAY', ...} or {'IDEMPOTENCY_KEY_REUSED'}.
--
-- lib.lua: partition_keys, now_ms, fmt, pending_request, audit, idem_lookup, idem_store

local pk = partition_keys()
local request_key = KEYS[5]
local fingerprint, actor, reason = ARGV[1], ARGV[2], ARGV[3]

local replay = idem_lookup(pk.idem, fingerprint)
if replay then
  return replay
end

local now = now_ms()
local request, refusal = pending_request(request_key, now)
if not request then
  return refusal
end

redis.call('HSET', request_key, 'state', 'REJECTED', 'decided_at', now, 'decided_by', actor, 'decision_reason', reason)
audit(pk.audit, ARGV[5], {
  'action', 'force_unlock.rejected', 'actor', actor, 'reason', reason, 'request_id', ARGV[6],
  'd.force_unlock_id', ARGV[7], 'd.requester', request[2],
})
return idem_store(pk.idem, fingerprint, { 'OK', fmt(now) }, tonumber(ARGV[4]))

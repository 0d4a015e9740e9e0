-- reject_force_unlock.lua: rejects (or, by its requester, withdraws) a pending
-- forced-unlock request, and audits it.
--
-- KEYS[1]  idempotency record of this call
-- KEYS[2]  the request's hash
-- KEYS[3]  the audit stream
-- ARGV[1]  fingerprint
-- ARGV[2]  actor
-- ARGV[3]  reason
-- ARGV[4]  idempotency retention ms
-- ARGV[5]  most audit events kept
-- ARGV[6]  request_id
-- ARGV[7]  force-unlock request id
--
-- Returns {'OK', decided_at}, {'FORCE_UNLOCK_NOT_FOUND'}, {'NOT_PENDING', state},
-- {'REQUEST_EXPIRED'}, {'REPLAY', ...} or {'IDEMPOTENCY_KEY_REUSED'}.

local idem_key, request_key, audit_key = KEYS[1], KEYS[2], KEYS[3]
local fingerprint, actor, reason = ARGV[1], ARGV[2], ARGV[3]

local replay = idem_lookup(idem_key, fingerprint)
if replay then
  return replay
end

local now = now_ms()
local request, refusal = pending_request(request_key, now)
if not request then
  return refusal
end

redis.call('HSET', request_key, 'state', 'REJECTED', 'decided_at', now, 'decided_by', actor, 'decision_reason', reason)
audit(audit_key, ARGV[5], {
  'action', 'force_unlock.rejected', 'actor', actor, 'reason', reason, 'request_id', ARGV[6],
  'd.force_unlock_id', ARGV[7], 'd.requester', request[2],
})
return idem_store(idem_key, fingerprint, { 'OK', fmt(now) }, tonumber(ARGV[4]))

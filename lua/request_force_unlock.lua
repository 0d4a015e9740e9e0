-- request_force_unlock.lua: records a pending request to force-release locks,
-- with the locks it would release as seen now, and audits it.
--
-- KEYS[1..4]  partition keys: idempotency record, due index (unused), event stream (unused),
--             audit stream
-- KEYS[5]     the request's hash
-- KEYS[6]     the index of requests (zset, created_ms -> id)
-- ARGV[1]  request fingerprint
-- ARGV[2]  force-unlock request id
-- ARGV[3]  requester
-- ARGV[4]  reason
-- ARGV[5]  ms a pending request waits for a decision
-- ARGV[6]  items, one line per lock: lock_id \t quantity \t holder \t order_id \t created_ms
-- ARGV[7]  idempotency retention ms
-- ARGV[8]  most audit events kept
-- ARGV[9]  request_id
-- ARGV[10] lock ids, comma-separated (for the audit event)
-- ARGV[11] ms decided requests are kept
-- ARGV[12] '1' to list the request in the index, '0' for a part of a request
--          that spans partitions and is listed in its first partition
--
-- Returns {'OK', created_ms, id}, {'REPLAY', ...} (with the first call's id) or
-- {'IDEMPOTENCY_KEY_REUSED'} (other content, or a request_id whose request
-- outlived its idempotency record).
--
-- lib.lua: partition_keys, now_ms, fmt, audit, idem_lookup, idem_store

local pk = partition_keys()
local request_key, index_key = KEYS[5], KEYS[6]
local fingerprint = ARGV[1]

local replay = idem_lookup(pk.idem, fingerprint)
if replay then
  return replay
end

-- The id follows from the request_id: a request kept past its idempotency
-- record is never overwritten by a reuse of that request_id.
if redis.call('EXISTS', request_key) == 1 then
  return { 'IDEMPOTENCY_KEY_REUSED' }
end

local now = now_ms()
redis.call('HSET', request_key, 'state', 'PENDING', 'requester', ARGV[3], 'reason', ARGV[4],
  'created', now, 'expires', now + tonumber(ARGV[5]), 'items', ARGV[6], 'single_step', '0')
redis.call('PEXPIRE', request_key, tonumber(ARGV[5]) + tonumber(ARGV[11]))
if ARGV[12] == '1' then
  redis.call('ZADD', index_key, now, ARGV[2])
end
redis.call('ZREMRANGEBYSCORE', index_key, '-inf', now - tonumber(ARGV[5]) - tonumber(ARGV[11]))
audit(pk.audit, ARGV[8], {
  'action', 'force_unlock.requested', 'actor', ARGV[3], 'reason', ARGV[4], 'request_id', ARGV[9],
  'lock_ids', ARGV[10], 'd.force_unlock_id', ARGV[2],
})
return idem_store(pk.idem, fingerprint, { 'OK', fmt(now), ARGV[2] }, tonumber(ARGV[7]))

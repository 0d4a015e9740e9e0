-- expire_locks.lua: the sweeper's step for one record. Returns the quantity
-- of every lock that expired to availability. Idempotent, so any number of
-- replicas may sweep the same record at once.
--
-- KEYS[1..4]  partition keys: idempotency record (unused), due index, event stream,
--             audit stream (unused)
-- KEYS[5..]   the whole record (see whole_record_at)
-- ARGV[1]     record id "sku|warehouse"
-- ARGV[2]     tombstone retention ms
--
-- Returns {'OK', the number of locks that expired, '1' if more have expired
-- (the step settles at most SETTLE_LIMIT) else '0'}.
--
-- lib.lua: SETTLE_LIMIT, partition_keys, now_ms, fmt, whole_record_at, settle, refresh_due

local pk = partition_keys()
local rec = whole_record_at(5, ARGV[1])
local now = now_ms()
local count = settle(pk, rec, now, tonumber(ARGV[2]))
if count == SETTLE_LIMIT then
  -- A full step: more have likely expired, and due (a lower bound) stays
  -- due; the step that finds fewer points it at the earliest expiry.
  return { 'OK', fmt(count), '1' }
end
local due = refresh_due(pk.due, rec)
return { 'OK', fmt(count), (due and due <= now) and '1' or '0' }

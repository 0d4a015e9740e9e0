-- expire_locks.lua: the sweeper's step for one record. Returns the quantity
-- of every lock that expired to availability. Idempotent, so any number of
-- replicas may sweep the same record at once.
--
-- KEYS[1..5]  partition keys: idempotency record (unused), due index, event stream,
--             audit stream (unused), lock index
-- KEYS[6..9]  the record: stock, locks, exp, ended
-- ARGV[1]     record id "sku|warehouse"
-- ARGV[2]     tombstone retention ms
--
-- Returns {'OK', the number of locks that expired, '1' if more have expired
-- (the step settles at most SETTLE_LIMIT) else '0'}.
--
-- lib.lua: partition_keys, now_ms, fmt, record_at, find_expired, drop_expired, refresh_due

local pk = partition_keys()
local rec = record_at(6, ARGV[1])
local now = now_ms()
local expired = find_expired(rec, now)
drop_expired(pk, rec, expired, now, tonumber(ARGV[2]))
local due = refresh_due(pk.due, rec)
return { 'OK', fmt(#expired), (due and due <= now) and '1' or '0' }

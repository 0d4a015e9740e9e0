-- expire_locks.lua: the sweeper's step for one record. Returns the quantity
-- of every lock that expired to availability. Idempotent, so any number of
-- replicas may sweep the same record at once.
--
-- KEYS[1]     the sweeper's due index
-- KEYS[2..5]  the record: stock, locks, exp, ended
-- KEYS[6]     the lifecycle event stream
-- ARGV[1]     record id "sku|warehouse"
-- ARGV[2]     tombstone retention ms
--
-- Returns the number of locks that expired.

local due_key = KEYS[1]
EVENTS_KEY = KEYS[6]
local rec = record_at(2, ARGV[1])
local now = now_ms()
local expired, expired_sum = find_expired(rec, now)
drop_expired(rec, expired, expired_sum, now, tonumber(ARGV[2]))
refresh_due(due_key, rec)
return #expired

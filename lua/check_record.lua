-- check_record.lua: the invariant auditor's look at one record. Writes nothing.
--
-- KEYS[1..4]  the record: stock, locks, exp, ended
--
-- Returns {'MISSING'} when the record does not exist, else
--   {'OK', locked, sum_of_locks, locks_without_expiry, expiries_without_lock,
--    overdue_ms, available, unit_scale}
-- where locked is the stored figure, sum_of_locks the quantity of every lock
-- in the record (expired but unswept ones included: the sweep takes them out
-- of both), overdue_ms how long ago the oldest unswept lock expired (0 if
-- none), and available the stored figures' available (negative = oversold).
--
-- lib.lua: now_ms, fmt, record_at, read_stock, sum_locks, available_of

local rec = record_at(1, '')
local s = read_stock(rec)
if not s then
  return { 'MISSING' }
end
local now = now_ms()
local sum, without_expiry, count = sum_locks(rec)
local expiries_without_lock = redis.call('ZCARD', rec.exp) - (count - without_expiry)
local overdue = 0
local first = redis.call('ZRANGE', rec.exp, 0, 0, 'WITHSCORES')
if first[1] and tonumber(first[2]) < now then
  overdue = now - tonumber(first[2])
end
return {
  'OK', fmt(s.locked), fmt(sum), fmt(without_expiry), fmt(expiries_without_lock), fmt(overdue),
  fmt(available_of(s, s.locked)), fmt(s.unit_scale),
}

-- check_record.lua: one slice of the invariant auditor's look at a record.
-- Writes nothing, and reads at most about ARGV[2] locks: the auditor walks a
-- record of any size in slices (src/store/redis/check_record.rs) and trusts
-- the sum only when the record's version stayed the same from the first
-- slice to the last.
--
-- KEYS[1..5]  one shard of the record: stock, locks, exp, ended, idx (the
--             caller walks the shards one after the other)
-- ARGV[1]     HSCAN cursor over the shard's lock set ('0' starts)
-- ARGV[2]     locks per slice (an HSCAN COUNT, so a hint Redis may exceed a little)
--
-- Returns {'MISSING'} when the record does not exist, else
--   {'OK', version, next_cursor, locked, lock_count, expiry_count, overdue_ms,
--    available, unit_scale, live, then per lock of the slice: token, quantity,
--    '1' if it has an expiry entry else '0'}
-- where locked and live are the stored figures, lock_count and expiry_count
-- the sizes of the shard's lock set and expiry index (equal on a healthy record), overdue_ms
-- how long ago the oldest unswept lock expired (0 if none), and available the
-- stored figures' available (negative = oversold). HSCAN may return a lock
-- twice across slices; the caller counts each token once.
--
-- lib.lua: now_ms, fmt, record_at, read_stock, unpack_lock, available_of

local rec = record_at(1, '')
local s = read_stock(rec)
if not s then
  return { 'MISSING' }
end
local now = now_ms()
local overdue = 0
local first = redis.call('ZRANGE', rec.exp, 0, 0, 'WITHSCORES')
if first[1] and tonumber(first[2]) < now then
  overdue = now - tonumber(first[2])
end
local scan = redis.call('HSCAN', rec.locks, ARGV[1], 'COUNT', ARGV[2])
local out = {
  'OK', fmt(s.version), scan[1], fmt(s.locked), fmt(redis.call('HLEN', rec.locks)),
  fmt(redis.call('ZCARD', rec.exp)), fmt(overdue), fmt(available_of(s, s.locked)), fmt(s.unit_scale), fmt(s.live),
}
local pairs_ = scan[2]
if #pairs_ > 0 then
  local tokens = {}
  for i = 1, #pairs_, 2 do
    tokens[#tokens + 1] = pairs_[i]
  end
  local scores = redis.call('ZMSCORE', rec.exp, unpack(tokens))
  for i, token in ipairs(tokens) do
    out[#out + 1] = token
    out[#out + 1] = fmt(unpack_lock(pairs_[2 * i]).qty)
    out[#out + 1] = scores[i] and '1' or '0'
  end
end
return out

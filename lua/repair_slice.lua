-- repair_slice.lua: one slice of an operator's repair of a record's
-- structure (src/store/redis/repair_record.rs walks the record with it, then
-- sets the figure with repair_record.lua). Each slice does bounded work and
-- is safe to run again: it only adds what a lock lacks or drops what belongs
-- to no lock, so it changes neither the figures nor the version.
--
-- KEYS[1..4]  partition keys: idempotency record (unused), due index, event stream (unused),
--             audit stream (unused)
-- KEYS[5..9]  one shard of the record: stock, locks, exp, ended, idx (the
--             caller walks the shards one after the other)
-- ARGV[1]     'locks': give every lock of the slice an expiry (now + its ttl; it would
--             otherwise hold stock forever) and its lock-index entry.
--             'expiries': drop the slice's expiry entries that belong to no lock.
-- ARGV[2]     HSCAN (locks) or ZSCAN (expiries) cursor, '0' starts
-- ARGV[3]     entries per slice (a SCAN COUNT)
-- ARGV[4]     record id "sku|warehouse"
--
-- Returns {'MISSING'} when the record does not exist, else
--   locks:    {'OK', version, next_cursor, fixed, then per lock: token, quantity, '1'}
--   expiries: {'OK', version, next_cursor, dropped}
--
-- lib.lua: partition_keys, now_ms, fmt, record_at, read_stock, unpack_lock, lock_member, lower_due

local pk = partition_keys()
local rec = record_at(5, ARGV[4])
local s = read_stock(rec)
if not s then
  return { 'MISSING' }
end

if ARGV[1] == 'locks' then
  local scan = redis.call('HSCAN', rec.locks, ARGV[2], 'COUNT', ARGV[3])
  local found = scan[2]
  local out = { 'OK', fmt(s.version), scan[1], '0' }
  if #found == 0 then
    return out
  end
  local tokens = {}
  for i = 1, #found, 2 do
    tokens[#tokens + 1] = found[i]
  end
  local now = now_ms()
  local scores = redis.call('ZMSCORE', rec.exp, unpack(tokens))
  local fixed, members = 0, {}
  for i, token in ipairs(tokens) do
    local l = unpack_lock(found[2 * i])
    if not scores[i] then
      redis.call('ZADD', rec.exp, now + l.ttl, token)
      lower_due(pk.due, rec, s, now + l.ttl)
      fixed = fixed + 1
    end
    members[#members + 1] = 0
    members[#members + 1] = lock_member(rec, token, l.created)
    out[#out + 1] = token
    out[#out + 1] = fmt(l.qty)
    out[#out + 1] = '1'
  end
  redis.call('ZADD', rec.idx, unpack(members))
  out[4] = fmt(fixed)
  return out
end

local scan = redis.call('ZSCAN', rec.exp, ARGV[2], 'COUNT', ARGV[3])
local found = scan[2]
local dropped = 0
if #found > 0 then
  local tokens = {}
  for i = 1, #found, 2 do
    tokens[#tokens + 1] = found[i]
  end
  local orphans = {}
  for i, packed in ipairs(redis.call('HMGET', rec.locks, unpack(tokens))) do
    if not packed then
      orphans[#orphans + 1] = tokens[i]
    end
  end
  if #orphans > 0 then
    dropped = redis.call('ZREM', rec.exp, unpack(orphans))
  end
end
return { 'OK', fmt(s.version), scan[1], fmt(dropped) }

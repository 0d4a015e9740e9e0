-- raise_epoch.lua: raises a partition's fencing epoch, so that every token
-- issued from now on is above every token issued before, including tokens
-- of records this Redis has lost (restarted from an older AOF or snapshot,
-- restarted empty, flushed, or a replica promoted without the primary's
-- last writes).
--
-- The service raises it before its first lock on a Redis it has just
-- connected to (at start, after a failover), before it loads a script
-- after NOSCRIPT (a Redis that lost its script cache was restarted or
-- replaced, and may have lost data too), and when lock.lua finds no epoch.
--
-- The epoch is a time: ms since 2025-01-01 (Redis's clock), or one more
-- than the old epoch if that is later. No token is below epoch *
-- EPOCH_FACTOR (2^12), and a record's token grows by at most LOCK_SHARDS a
-- lock, slower than the floor's 4,096 a ms unless the record takes over
-- 256 locks every ms. So every token issued before now is below
-- now * EPOCH_FACTOR, and a floor taken from the clock is above it even
-- when the old epoch was lost with the rest of the data (as long as
-- Redis's clock does not step back past the old epoch).
--
-- KEYS[1]  the partition's epoch
-- ARGV[1]  'raise', or 'if-missing': leave an existing epoch as it is (lock.lua
--          found none, and many callers may ask at once: one raise serves them)
--
-- Returns {'OK', epoch} or {'EPOCH_EXHAUSTED', epoch}: past LAST_EPOCH
-- tokens would no longer be exact in Lua (2^53), in 2094.
--
-- lib.lua: fmt, now_ms

local ORIGIN_MS = 1735689600000
local LAST_EPOCH = 2199023255550 -- 2^53 / EPOCH_FACTOR - 2
local current = redis.call('GET', KEYS[1])
if current and ARGV[1] == 'if-missing' then
  return { 'OK', current }
end
local old = tonumber(current or '0')
local epoch = math.max(old + 1, now_ms() - ORIGIN_MS + 1)
if epoch > LAST_EPOCH then
  return { 'EPOCH_EXHAUSTED', fmt(epoch) }
end
redis.call('SET', KEYS[1], fmt(epoch))
return { 'OK', fmt(epoch) }

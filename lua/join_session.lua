-- join_session.lua: before a Lock or BatchLock in a session. Checks that the
-- session is live and is the caller's, and writes down the partitions the
-- call will lock in, so that its end finds every lock (see end_session.lua:
-- an ended session takes no new partition, so none is missed).
--
-- KEYS[1]  the session hash (see open_session.lua)
-- ARGV[1]  holder, or '' to skip the check
-- ARGV[2..] the partitions the call locks in
--
-- Returns {'OK', holder, ttl, expires}, {'SESSION_NOT_FOUND'} or
-- {'SESSION_ENDED', 'expired' | 'closed'}. The lease it returns bounds the
-- locks: lock.lua refuses to lock in the session after it.
--
-- lib.lua: now_ms, fmt, read_session, live_session

local now = now_ms()
local s, refusal = live_session(KEYS[1], ARGV[1], now)
if not s then
  return refusal
end
local parts = s.parts
for i = 2, #ARGV do
  if not string.find(parts, ',' .. ARGV[i] .. ',', 1, true) then
    parts = parts .. ARGV[i] .. ','
  end
end
if parts ~= s.parts then
  redis.call('HSET', KEYS[1], 'parts', parts)
end
return { 'OK', s.holder, fmt(s.ttl), fmt(s.expires) }

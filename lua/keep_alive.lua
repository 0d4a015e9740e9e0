-- keep_alive.lua: KeepAlive. Extends a live session to now + its ttl: one
-- hash field and one index entry, whatever the number of its locks. A
-- session whose ttl passed is never revived.
--
-- KEYS[1]  the session hash (see open_session.lua)
-- KEYS[2]  the home partition's session index
-- ARGV[1]  holder, or '' to skip the check
-- ARGV[2]  session id
--
-- Returns {'OK', holder, ttl, expires}, {'SESSION_NOT_FOUND'} or
-- {'SESSION_ENDED', 'expired' | 'closed'}.
--
-- lib.lua: now_ms, fmt, read_session, live_session

local now = now_ms()
local s, refusal = live_session(KEYS[1], ARGV[1], now)
if not s then
  return refusal
end
local expires = now + s.ttl
redis.call('HSET', KEYS[1], 'expires', expires)
redis.call('ZADD', KEYS[2], expires, ARGV[2])
return { 'OK', s.holder, fmt(s.ttl), fmt(expires) }

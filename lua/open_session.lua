-- open_session.lua: OpenSession. A session is a lease: every lock taken in
-- it lives while the session does (within the maximum hold), and keeping
-- it alive is one write whatever it holds (see keep_alive.lua). Its id is
-- derived from the request_id, so a retry finds the session it opened.
--
-- KEYS[1]  the session hash: fp (the request's content digest), holder, ttl (ms),
--          expires (ms), state (open, expired, closed), parts (",p,q," the partitions
--          it has locks in, see join_session.lua)
-- KEYS[2]  the home partition's session index: session id -> expires (the sweeper's)
-- ARGV[1]  the request's content digest (16 hex digits)
-- ARGV[2]  holder
-- ARGV[3]  ttl ms
-- ARGV[4]  session id
--
-- Returns
--   {'OK', holder, ttl, expires, state}
--   {'REPLAY', 'OK', ...the same, as the session stands now...}   a retry
--   {'IDEMPOTENCY_KEY_REUSED'}   the request_id opened a session with other content
--
-- lib.lua: now_ms, fmt

local key, index = KEYS[1], KEYS[2]
local fingerprint, holder, ttl, id = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]

local s = redis.call('HMGET', key, 'fp', 'holder', 'ttl', 'expires', 'state')
if s[1] then
  if s[1] ~= fingerprint then
    return { 'IDEMPOTENCY_KEY_REUSED' }
  end
  return { 'REPLAY', 'OK', s[2], s[3], s[4], s[5] }
end
local expires = now_ms() + ttl
redis.call('HSET', key, 'fp', fingerprint, 'holder', holder, 'ttl', ttl, 'expires', expires, 'state', 'open', 'parts', ',')
redis.call('ZADD', index, expires, id)
return { 'OK', holder, fmt(ttl), fmt(expires), 'open' }

-- end_session.lua: the first step of a session's end, by CloseSession or by
-- the sweeper when its ttl passed. Marks the session ended, so it takes no
-- keep-alive and no new partition, and returns the partitions its locks
-- are in; end_session_part.lua then ends them there in bounded steps, and
-- the session leaves the index when all are done (see the store's
-- `sessions` module). Idempotent: a call for an ended session returns its
-- partitions again, so an end cut short is finished by the next call.
--
-- KEYS[1]  the session hash (see open_session.lua)
-- KEYS[2]  the home partition's session index
-- KEYS[3]  the home partition's event stream
-- ARGV[1]  'closed' (CloseSession) or 'expired' (the sweeper)
-- ARGV[2]  holder, or '' to skip the check
-- ARGV[3]  session id
-- ARGV[4]  ms until the sweeper may take the end over: 0 for the sweeper's
--          own call; a grace for CloseSession, which ends the locks itself
--          (a sweeper beside it would end some of them and the close would
--          answer only its share); a close cut short is finished after it
--
-- Returns
--   {'OK', state, ended_now ('1' or '0'), parts, holder, ttl}   state 'closed' or 'expired'
--   {'ALIVE'}               (the sweeper) a keep-alive came first, or a close is
--                           ending the session in its grace: nothing changed
--   {'SESSION_NOT_FOUND'}
-- One session event ('session.close' or 'session.expire') marks the end.
--
-- lib.lua: now_ms, fmt, read_session, emit_session

local key, index, events = KEYS[1], KEYS[2], KEYS[3]
local how, id = ARGV[1], ARGV[3]

local s, refusal = read_session(key, ARGV[2])
if not s then
  return refusal
end
local now = now_ms()
local ended_now = '0'
-- The sweeper keeps off an end another caller runs (a close in its grace).
if how == 'expired' and s.state ~= 'open' then
  local due = tonumber(redis.call('ZSCORE', index, id))
  if due and due > now then
    return { 'ALIVE' }
  end
end
if s.state == 'open' then
  if how == 'expired' and s.expires > now then
    redis.call('ZADD', index, s.expires, id)
    return { 'ALIVE' }
  end
  -- A session closed after its ttl passed had expired first.
  s.state = s.expires <= now and 'expired' or how
  ended_now = '1'
  redis.call('HSET', key, 'state', s.state)
  emit_session(events, s.state == 'closed' and 'session.close' or 'session.expire', s.holder, id)
end
-- Due (at once, or after the closer's grace), until every partition is done.
local grace = tonumber(ARGV[4]) or 0
redis.call('ZADD', index, grace > 0 and now + grace or 0, id)
return { 'OK', s.state, ended_now, s.parts, s.holder, fmt(s.ttl) }

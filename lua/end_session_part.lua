-- end_session_part.lua: ends up to a bounded number of a session's locks in
-- one partition, after end_session.lua marked the session ended. Each lock
-- of a closed session is released (its tombstone says so); each of an
-- expired session expires. One event per lock ('release' or 'expire', with
-- the detail 'session_closed' or 'session_expired'). The end marker it
-- writes first keeps a Lock that was on its way from landing in the ended
-- session (lock.lua checks it).
--
-- KEYS[1..4]       partition keys: idempotency record (unused), due index, event stream, audit (unused)
-- KEYS[5]          the session's locks in this partition: a sorted set of "sku|warehouse|token"
--                  by the lock's maximum hold (ms)
-- KEYS[6]          the session's end marker in this partition
-- KEYS[7 + 5k ..]  lock k's record in its shard: stock, locks, exp, ended, idx
-- ARGV[1]  'closed' or 'expired'
-- ARGV[2]  session id
-- ARGV[3]  tombstone retention ms
-- ARGV[4]  how long the end marker lives (ms): longer than any Lock of the session can take to land
-- ARGV[5 + 2k ..]  lock k: record id "sku|warehouse", fencing token (members of KEYS[5])
--
-- Returns {'OK', locks ended now, members left in KEYS[5]}.
--
-- lib.lua: partition_keys, now_ms, fmt, record_at, read_stock, unpack_lock, available_of,
-- lock_member, end_lock, emit, lock_event, session_of

local pk = partition_keys()
local locks, marker = KEYS[5], KEYS[6]
local how, id, tomb_retention = ARGV[1], ARGV[2], tonumber(ARGV[3])
local count = (#ARGV - 4) / 2

redis.call('SET', marker, how, 'PX', ARGV[4])
local now = now_ms()
local ended = 0
for k = 0, count - 1 do
  local rec = record_at(7 + 5 * k, ARGV[5 + 2 * k])
  local token = ARGV[6 + 2 * k]
  local packed = redis.call('HGET', rec.locks, token)
  local l = packed and unpack_lock(packed)
  if l and session_of(l.nonce) == id then
    local s = read_stock(rec)
    local before = math.max(available_of(s, s.locked), 0)
    s.locked, s.version = s.locked - l.qty, s.version + 1
    if how == 'closed' then
      end_lock(pk, rec, token, l, 'R', now, tomb_retention)
      s.live = s.live - 1
      redis.call('HSET', rec.stock, 'locked', s.locked, 'version', s.version)
      emit(pk.events, 'release', rec, before, lock_event(token, l), 'session_closed', s)
    else
      -- As an expiry: no tombstone (see ended_mark).
      redis.call('HDEL', rec.locks, token)
      redis.call('ZREM', rec.exp, token)
      redis.call('ZREM', rec.idx, lock_member(rec, token, l.created))
      s.live = s.live - 1
      redis.call('HSET', rec.stock, 'locked', s.locked, 'version', s.version, 'live', s.live)
      emit(pk.events, 'expire', rec, before, lock_event(token, l), 'session_expired', s)
    end
    ended = ended + 1
  end
  redis.call('ZREM', locks, rec.id .. '|' .. token)
end
return { 'OK', fmt(ended), fmt(redis.call('ZCARD', locks)) }

-- lock.lua: locks one line (Lock) or every line of a batch (BatchLock), all or nothing.
--
-- KEYS[1..4]       partition keys: this generation's idempotency hash, due index, event stream,
--                  audit (unused)
-- KEYS[5]          the previous generation's idempotency hash
-- KEYS[6]          the batch record when ARGV[6] (batch_id) is set, else unused; it holds
--                  "holder\nnonce\nsku|warehouse|token\n..."
-- KEYS[7]          the partition's fencing epoch (see raise_epoch.lua): no token is
--                  below epoch * EPOCH_FACTOR, and a partition without one issues none
-- KEYS[8]          in a session: the session's locks in this partition (a sorted set of
--                  "sku|warehouse|token" by maximum hold, see end_session_part.lua), else unused
-- KEYS[9]          in a session: its end marker in this partition, else unused
-- KEYS[10 ..]      per line, its record: narrow, the shard's five keys (stock, locks, exp,
--                  ended, idx); wide (see ARGV[14]), the whole record (see whole_record_at)
-- ARGV[1]  the content's digest (16 hex digits), or "" to keep no idempotency record
-- ARGV[2]  ttl ms
-- ARGV[3]  maximum total hold ms
-- ARGV[4]  holder
-- ARGV[5]  order_id
-- ARGV[6]  batch_id, or "" for a single Lock
-- ARGV[7]  idempotency retention ms (unused: ARGV[12] is the generation length)
-- ARGV[8]  tombstone retention ms
-- ARGV[9]  nonce (random, makes lock ids unguessable and unique across data loss)
-- ARGV[10] the request's digest (16 hex digits of method and request_id)
-- ARGV[11] the idempotency generation KEYS[1] belongs to: unix ms / ARGV[12]
-- ARGV[12] the generation's length: the idempotency retention ms
-- ARGV[13] the lock shard of this call's locks (0..LOCK_SHARDS-1): each lock's token is the
--          smallest above the record's last one with token % LOCK_SHARDS = the shard, so
--          a lock id names its shard (src/store/redis/keys.rs)
-- ARGV[14] per line, '1' if it names its record wide, else '0' (one character a line)
-- ARGV[15] in a session: its lease, the expiry (ms) join_session.lua read; else ''
-- ARGV[16 + 3k ..]  line k: record id "sku|warehouse", quantity mantissa, quantity scale
--
-- A lock in a session (its nonce names the session, see session_of) needs
-- no Renew: its expiry entry is its maximum hold, and it ends earlier when
-- its session ends (end_session_part.lua). The session must be live: its
-- lease not passed and no end marker in this partition.
--
-- Expired locks never count: a narrow line settles those of its shard; when
-- it is short and other shards may hold expired locks too (the record's due
-- has come), the call answers {'SETTLE', line...} without writing, and the
-- caller calls again with those lines wide, which settles their records'
-- expired locks (SETTLE_LIMIT each) before it locks. So a Lock names 5 keys
-- a line, and 50 only for a short line of a record with expired locks.
--
-- Idempotency: a granted call leaves one field in its generation's hash,
-- request digest -> content digest .. ":" .. "since|hold|batch_id|nonce|" and
-- per line "token|qty|available|unit_scale", where `since` is the call's time
-- after its generation began, `hold` its max_expires_at after that time, and
-- tokens are in hex: every order leaves one, so it is kept small. (A record
-- without the ':' was written before and holds "now|max_expires|" and
-- decimal tokens.) A retry looks in this generation
-- and the one before, so it finds the record for at least one retention; a
-- generation's hash expires when the one after it ends. The caller names the
-- generation by its own clock; Redis's decides, and a mismatch (near a
-- boundary) answers {'GENERATION', generation} for the caller to call again.
--
-- Returns
--   {'GENERATION', generation}                see Idempotency
--   {'SETTLE', line...}                      call again with these lines wide
--   {'EPOCH'}                                the partition has no fencing epoch (its
--                                            data is gone): raise it and call again
--   {'SESSION_ENDED', 'expired' | 'closed'}  the session ended
--   {'LEASE'}                                the lease given has passed: read it again
--                                            (join_session.lua) and call again
--   {'OK', now, expires_at, max_expires_at, batch_id, nonce,
--    then per line: token, qty, available, unit_scale}
--   {'REPLAY', ...the same...}               a retry of an earlier success
--   {'IDEMPOTENCY_KEY_REUSED'}
--   {'SKU_NOT_AVAILABLE_IN_WAREHOUSE', line}
--   {'INVALID_QUANTITY_SCALE', line, unit_scale} / {'QUANTITY_OUT_OF_RANGE', line}
--   {'INSUFFICIENT_STOCK', then per short line: line, requested, available, unit_scale}
-- Lines are numbered from 0. Nothing is written unless the answer is OK.
--
-- lib.lua: partition_keys, MAX_EXACT, now_ms, fmt, record_at, read_stock, scale_qty, find_expired,
-- whole_record_at, WHOLE_RECORD_KEYS, find_expired_all, drop_expired_all,
-- available_of, pack_lock, lock_member, emit, lower_due, split, EPOCH_FACTOR

local pk = partition_keys()
local previous_idem, batch_key = KEYS[5], KEYS[6]
local fingerprint = ARGV[1]
local ttl, max_hold = tonumber(ARGV[2]), tonumber(ARGV[3])
local holder, order_id, batch_id = ARGV[4], ARGV[5], ARGV[6]
local tomb_retention = tonumber(ARGV[8])
local nonce = ARGV[9]
local request, generation, generation_ms = ARGV[10], tonumber(ARGV[11]), tonumber(ARGV[12])
local shard = tonumber(ARGV[13])
local wide_lines = ARGV[14]
local lease = tonumber(ARGV[15])
local session_locks, session_end = KEYS[8], KEYS[9]
local line_count = (#ARGV - 15) / 3

-- The answer a retry gets from its stored record (see Idempotency), written
-- in the generation that began at `began`.
local function replay(stored, began, ttl)
  local compact = string.sub(stored, 17, 17) == ':'
  local f = split(string.sub(stored, compact and 18 or 17), '|')
  local now, max_expires = tonumber(f[1]), tonumber(f[2])
  if compact then
    now = began + now
    max_expires = now + max_expires
  end
  local expires = now + ttl
  if lease then
    expires = math.min(lease, max_expires)
  end
  local reply = { 'REPLAY', 'OK', fmt(now), fmt(expires), fmt(max_expires), f[3], f[4] }
  for i = 5, #f, 4 do
    reply[#reply + 1] = compact and fmt(tonumber(f[i], 16)) or f[i]
    reply[#reply + 1], reply[#reply + 2], reply[#reply + 3] = f[i + 1], f[i + 2], f[i + 3]
  end
  return reply
end

local now = now_ms()
if fingerprint ~= '' then
  local actual = math.floor(now / generation_ms)
  if actual ~= generation then
    return { 'GENERATION', fmt(actual) }
  end
  local stored, began = redis.call('HGET', pk.idem, request), generation * generation_ms
  if not stored then
    stored, began = redis.call('HGET', previous_idem, request), began - generation_ms
  end
  if stored then
    if string.sub(stored, 1, 16) ~= fingerprint then
      return { 'IDEMPOTENCY_KEY_REUSED' }
    end
    return replay(stored, began, ttl)
  end
end

if lease then
  local ended = redis.call('GET', session_end)
  if ended then
    return { 'SESSION_ENDED', ended }
  end
  if lease <= now then
    return { 'LEASE' }
  end
end

-- Check every line before the first write.
local lines = {}
local short = {}
local unsettled = {}
local key = 10
for k = 0, line_count - 1 do
  -- `rec` is the record as the call names it, `view` the shard the lock goes to.
  local rec, view
  local wide = string.sub(wide_lines, k + 1, k + 1) == '1'
  if wide then
    rec = whole_record_at(key, ARGV[16 + 3 * k])
    view = rec.views[shard + 1]
    key = key + WHOLE_RECORD_KEYS
  else
    rec = record_at(key, ARGV[16 + 3 * k])
    view = rec
    key = key + 5
  end
  local s = read_stock(view)
  if not s then
    return { 'SKU_NOT_AVAILABLE_IN_WAREHOUSE', fmt(k) }
  end
  local qty, err = scale_qty(tonumber(ARGV[17 + 3 * k]), tonumber(ARGV[18 + 3 * k]), s.unit_scale)
  if qty and s.locked + qty > MAX_EXACT then
    -- Only data written before physical + in_transit was bounded gets here.
    qty, err = nil, 'QUANTITY_OUT_OF_RANGE'
  end
  if not qty then
    return { err, fmt(k), fmt(s.unit_scale) }
  end
  -- Only a record whose earliest expiry has come can have expired locks.
  local expired, expired_sum = find_expired_all(rec, now, s.due)
  local available = available_of(s, s.locked - expired_sum)
  if qty > available then
    if not wide and s.due and s.due <= now then
      unsettled[#unsettled + 1] = fmt(k)
    end
    for _, v in ipairs({ k, qty, math.max(available, 0), s.unit_scale }) do
      short[#short + 1] = fmt(v)
    end
  end
  lines[#lines + 1] = { rec = rec, view = view, stock = s, qty = qty, expired = expired, available = available }
end
if #unsettled > 0 then
  table.insert(unsettled, 1, 'SETTLE')
  return unsettled
end
if #short > 0 then
  table.insert(short, 1, 'INSUFFICIENT_STOCK')
  return short
end

-- Tokens start at the partition's epoch floor: raised whenever its data may
-- have lost writes, so they never go back (see raise_epoch.lua).
local epoch = redis.call('GET', KEYS[7])
if not epoch then
  return { 'EPOCH' }
end
local token_floor = tonumber(epoch) * EPOCH_FACTOR

local expires = now + ttl
local max_expires = now + max_hold
-- A lock in a session expires by itself only at its maximum hold; it ends
-- with its session before that.
local deadline = expires
if lease then
  deadline, expires = max_expires, math.min(lease, max_expires)
end
local reply = { 'OK', fmt(now), fmt(expires), fmt(max_expires), batch_id, nonce }
local lock_refs = {}
for _, line in ipairs(lines) do
  local rec = line.view
  local s = line.stock
  s = drop_expired_all(pk, line.expired, now, tomb_retention) or s
  -- One write for the three counters; the figures are known, so the event
  -- needs no read either (the profile of this script is its Redis calls).
  -- Tokens pass through fmt: Lua would print large numbers as 9.0071992547409e+15.
  local next_token = math.max(s.fence + 1, token_floor)
  local token = fmt(next_token + (shard - next_token % LOCK_SHARDS) % LOCK_SHARDS)
  s.fence, s.locked, s.version, s.live = tonumber(token), s.locked + line.qty, s.version + 1, s.live + 1
  redis.call('HSET', rec.stock, 'fence', token, 'locked', s.locked, 'version', s.version, 'live', s.live)
  -- A new lock can only bring the record's earliest expiry forward.
  lower_due(pk.due, rec, s, deadline)
  redis.call('HSET', rec.locks, token, pack_lock({
    qty = line.qty, created = now, max_expires = max_expires, ttl = ttl,
    holder = holder, order_id = order_id, nonce = nonce, batch_id = batch_id,
  }))
  redis.call('ZADD', rec.exp, deadline, token)
  if lease then
    redis.call('ZADD', session_locks, max_expires, rec.id .. '|' .. token)
  end
  redis.call('ZADD', rec.idx, 0, lock_member(rec, token, now))
  local lock = { token = token, nonce = nonce, qty = line.qty, holder = holder, order_id = order_id, batch_id = batch_id }
  emit(pk.events, 'lock', rec, math.max(line.available, 0), lock, expires, s)
  -- A batch may name the same record only once, so `available` is exact per line.
  for _, v in ipairs({ s.fence, line.qty, math.max(line.available - line.qty, 0), line.stock.unit_scale }) do
    reply[#reply + 1] = fmt(v)
  end
  lock_refs[#lock_refs + 1] = rec.id .. '|' .. token
end

if lease then
  -- Entries of locks that ended by themselves (at their maximum hold) go
  -- by and by; the set lives no longer than its newest lock could.
  local gone = redis.call('ZRANGEBYSCORE', session_locks, '-inf', now, 'LIMIT', 0, 4)
  if #gone > 0 then
    redis.call('ZREM', session_locks, unpack(gone))
  end
  redis.call('PEXPIRE', session_locks, max_hold + 60000)
end

if batch_id ~= '' then
  -- The batch lists its locks so Renew and Release can address them by batch_id.
  redis.call('SET', batch_key, holder .. '\n' .. nonce .. '\n' .. table.concat(lock_refs, '\n'), 'PX', max_hold + tomb_retention)
end

if fingerprint ~= '' then
  -- The answer without the figures a retry knows (expires_at = now + ttl).
  local kept = { fmt(now - generation * generation_ms), fmt(max_hold), batch_id, nonce }
  for i = 7, #reply, 4 do
    kept[#kept + 1] = string.format('%x', tonumber(reply[i]))
    kept[#kept + 1], kept[#kept + 2], kept[#kept + 3] = reply[i + 1], reply[i + 2], reply[i + 3]
  end
  redis.call('HSET', pk.idem, request, fingerprint .. ':' .. table.concat(kept, '|'))
  redis.call('PEXPIREAT', pk.idem, (generation + 2) * generation_ms + 60000)
end
return reply

-- lib.lua: helpers prepended to every stocklock script (scripts cannot
-- `require` in Redis, so the Rust side concatenates this file in front of
-- each one at compile time).
--
-- Every key a script touches carries its partition's hash tag ({p0.0} and
-- the like, see src/store/redis/keys.rs), so a script runs on one shard of a
-- Redis Cluster. One KEYS order for every script: first the partition keys
-- (those a writing script always takes, in this order, see partition_keys),
-- then the script's own keys, then the records. Read-only scripts take
-- records only.
--
-- A record's live locks are spread over LOCK_SHARDS shards (a Lock picks
-- its shard by its nonce, and each of its locks gets a token in that shard:
-- token % LOCK_SHARDS, see src/store/redis/keys.rs), so that no structure
-- grows with the number of live locks on one record beyond 1/16 of it: a
-- hash or sorted set that doubles allocates its new table within one call. A call
-- about one lock, or a Lock (every lock of one call shares its nonce), takes
-- the record as five keys, its shard's view (record_at); a call about every
-- lock of a record takes it whole (whole_record_at).
--
--   stock  hash  physical reserved in_transit locked unit_scale version
--                source_version fence, live (locks neither ended nor settled),
--                and due: never later than the record's earliest expiry
--                (absent without locks), as in the due index, so a Lock looks
--                for expired locks only when some may be. A call that sees one
--                shard only moves due earlier (lower_due); the sweeper, which
--                sees them all, sets it exactly (refresh_due)
--   locks  hash  (per shard) fencing token -> "qty|created_ms|max_expires_ms|ttl_ms|holder|order_id|nonce|batch_id"
--   exp    zset  (per shard) fencing token -> expires_at_ms
--   idx    zset  (per shard, of the partition) the lock index, see lock_member
--   ended  hash  tombstones of one bucket of 512 tokens: token % 512 -> R(eleased),
--                C(ommitted) followed by "committed|released" (scaled), or
--                F(orce-released). A call about one lock names its token's bucket;
--                other calls name a bucket no script touches. An expired lock leaves
--                no tombstone: a token up to the record's fence that is neither live
--                nor in its bucket expired (see ended_mark).
-- Quantities are integers scaled by 10^unit_scale. Lua numbers are doubles,
-- exact below 2^53, and every figure is checked to stay below that bound.
-- Replies are arrays of strings, so they survive a cjson round trip in the
-- idempotency record without losing digits. The first string is a tag: 'OK',
-- an outcome that is not an error (ALREADY_COMMITTED, STALE, MISSING), or a
-- refusal spelled exactly as the error reason the caller sees
-- (src/store/redis/reply.rs is the table). A refused lock is LOCK_NOT_FOUND
-- with how it ended ('RELEASED', 'COMMITTED' or ''), LOCK_EXPIRED or
-- LOCK_FORCE_RELEASED; see find_lock.

local MAX_EXACT = 9007199254740991

-- Every call does bounded work, whatever a record holds: one call settles
-- at most SETTLE_LIMIT expired locks (the sweeper calls again while a record
-- has more); tombstones expire with their bucket. Until they are settled,
-- expired locks past the first SETTLE_LIMIT still count as locked:
-- availability is then understated for a moment, never overstated.
local SETTLE_LIMIT = 25

-- Lock shards per record (LOCK_SHARDS in src/store/redis/keys.rs).
local LOCK_SHARDS = 16

-- Fencing tokens of a partition start at its epoch * EPOCH_FACTOR
-- (2^12); the epoch is the time it was raised at, in ms (see
-- raise_epoch.lua).
local EPOCH_FACTOR = 4096

-- Tokens per tombstone bucket (TOMBSTONE_BUCKET in src/store/redis/keys.rs):
-- the bucket's key names token / TOMBSTONE_BUCKET, and a tombstone's field
-- is the token's place in it, a small integer a listpack stores in 3 bytes.
local TOMBSTONE_BUCKET = 512

local function tombstone_field(token)
  return tonumber(token) % TOMBSTONE_BUCKET
end

local function fmt(n)
  return string.format('%d', n)
end

-- A scaled integer as a decimal string without trailing zeros: 2500, 3 -> "2.5".
local function decimal(v, scale)
  if scale == 0 then
    return fmt(v)
  end
  local sign = ''
  if v < 0 then
    sign, v = '-', -v
  end
  local digits = string.format('%0' .. (scale + 1) .. 'd', v)
  local int, frac = string.sub(digits, 1, #digits - scale), string.sub(digits, #digits - scale + 1)
  frac = string.gsub(frac, '0+$', '')
  if frac == '' then
    return sign .. int
  end
  return sign .. int .. '.' .. frac
end

-- The partition keys of a writing script: KEYS[1] the request's idempotency
-- record, KEYS[2] the sweeper's due index, KEYS[3] the lifecycle event
-- stream, KEYS[4] the audit stream. Its own keys follow from KEYS[5].
local function partition_keys()
  return { idem = KEYS[1], due = KEYS[2], events = KEYS[3], audit = KEYS[4] }
end

-- A live lock's member in its shard of the partition's lock index, a sorted
-- set read by lexical range: creation time (ms, 15 digits), record id,
-- token. Ordered by age, stable while the lock lives, so ListLocks pages
-- through the shards with one cursor and the statistics count stale locks
-- by range, in O(log n).
local function lock_member(rec, token, created)
  return string.format('%015d', created) .. '|' .. rec.id .. '|' .. token
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- One shard's view of a record: five keys starting at KEYS[i] (stock,
-- locks, exp, ended, idx), and its id "sku|warehouse".
local function record_at(i, id)
  return { stock = KEYS[i], locks = KEYS[i + 1], exp = KEYS[i + 2], ended = KEYS[i + 3], idx = KEYS[i + 4], id = id }
end

-- A whole record: stock and ended at KEYS[i], KEYS[i + 1], then each
-- shard's locks, exp and idx; `views` are the shards' views (as record_at).
local function whole_record_at(i, id)
  local rec = { stock = KEYS[i], ended = KEYS[i + 1], id = id, views = {} }
  for j = 0, LOCK_SHARDS - 1 do
    local k = i + 2 + 3 * j
    rec.views[j + 1] = { stock = rec.stock, ended = rec.ended, id = id, locks = KEYS[k], exp = KEYS[k + 1], idx = KEYS[k + 2] }
  end
  return rec
end

-- Keys a whole record takes.
local WHOLE_RECORD_KEYS = 2 + 3 * LOCK_SHARDS

-- Scales a decimal (mantissa, scale) to the record's unit scale.
-- Returns the scaled integer, or nil and the reason it does not fit.
local function scale_qty(mantissa, qscale, unit_scale)
  if qscale > unit_scale then
    return nil, 'INVALID_QUANTITY_SCALE'
  end
  local v = mantissa * (10 ^ (unit_scale - qscale))
  if v > MAX_EXACT or v < -MAX_EXACT then
    return nil, 'QUANTITY_OUT_OF_RANGE'
  end
  return v
end

local function split(s, sep)
  local out = {}
  local from = 1
  while true do
    local at = string.find(s, sep, from, true)
    if not at then
      out[#out + 1] = string.sub(s, from)
      return out
    end
    out[#out + 1] = string.sub(s, from, at - 1)
    from = at + 1
  end
end

local function pack_lock(l)
  return string.format('%d|%d|%d|%d|%s|%s|%s|%s', l.qty, l.created, l.max_expires, l.ttl, l.holder, l.order_id, l.nonce, l.batch_id)
end

-- One pattern match, not a split: a lock is read once per expired lock.
local function unpack_lock(s)
  local qty, created, max_expires, ttl, holder, order_id, nonce, batch_id =
    string.match(s, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$')
  return {
    qty = tonumber(qty), created = tonumber(created), max_expires = tonumber(max_expires), ttl = tonumber(ttl),
    holder = holder, order_id = order_id, nonce = nonce, batch_id = batch_id,
  }
end

-- Reads a record's stock hash; nil when the record does not exist.
local function read_stock(rec)
  local v = redis.call('HMGET', rec.stock, 'physical', 'reserved', 'in_transit', 'locked', 'unit_scale', 'version', 'source_version', 'fence', 'due', 'live')
  if not v[5] then
    return nil
  end
  return {
    physical = tonumber(v[1]), reserved = tonumber(v[2]), in_transit = tonumber(v[3]), locked = tonumber(v[4]),
    unit_scale = tonumber(v[5]), version = tonumber(v[6]), source_version = tonumber(v[7]), fence = tonumber(v[8] or '0'),
    due = v[9] and tonumber(v[9]), live = tonumber(v[10] or '0'),
  }
end

-- Expired locks of a record's shard (expires_at <= now), the earliest
-- `limit` (SETTLE_LIMIT by default) of them: their tokens, the summed
-- quantity, the number of those that are locks (an expiry entry without a
-- lock is drift the auditor reports) and the packed locks (nil where
-- none). Reads only, so a script can decide before it writes.
local function find_expired(rec, now, limit)
  local tokens = redis.call('ZRANGEBYSCORE', rec.exp, '-inf', now, 'LIMIT', 0, limit or SETTLE_LIMIT)
  local sum, locks, packed = 0, 0, {}
  if #tokens > 0 then
    packed = redis.call('HMGET', rec.locks, unpack(tokens))
    for i = 1, #tokens do
      if packed[i] then
        sum, locks = sum + tonumber(string.match(packed[i], '^[^|]*')), locks + 1
      end
    end
  end
  return tokens, sum, locks, packed
end

local function available_of(s, locked)
  return s.physical - locked - s.reserved + s.in_transit
end

-- Available by the stored figures (floored at zero), for events.
local function stored_available(rec)
  local s = read_stock(rec)
  return math.max(available_of(s, s.locked), 0)
end

-- Appends an event about `rec` to the lifecycle event stream `events` (an
-- outbox). A change appends its event in the same atomic step, so an event
-- exists if and only if its change happened.
--
-- Every event has the same fields in the same order, so a stream stores
-- their names once per node, not per event, and every figure is a scaled
-- integer (listpacks store those in a few bytes): action, record
-- ("sku|warehouse"), unit_scale, then the record after the change
-- (physical, reserved, in_transit, locked, version), available_before, the
-- lock (token, nonce, quantity, holder, order_id, batch_id; '' when the event
-- is about no lock), and detail: expires_at ms (lock, renew), the committed
-- quantity (commit; the rest was released), the approver and the request's
-- reason, joined by a newline (force_release), the cause ('session_expired',
-- 'session_closed') of an expire or release that a session's end made,
-- source_version (stock.set) or the reason (stock.adjust, record.repair).
-- What follows from these is left out: available (physical - locked -
-- reserved + in_transit, floored at 0), the lock id (record|token-nonce) and
-- decimals. `after` is the record after the change, or nil to read it.
local function emit(events, action, rec, available_before, lock, detail, after)
  local s = after or read_stock(rec)
  local l = lock or {}
  -- Numbers go to redis.call as they are: it prints them with %.17g, exact
  -- for every integer below 2^53, and cheaper than formatting them in Lua.
  redis.call('XADD', events, '*', 'action', action, 'record', rec.id, 'unit_scale', s.unit_scale,
    'physical', s.physical, 'reserved', s.reserved, 'in_transit', s.in_transit,
    'locked', s.locked, 'version', s.version, 'available_before', available_before,
    'token', l.token or '', 'nonce', l.nonce or '', 'quantity', l.qty or '',
    'holder', l.holder or '', 'order_id', l.order_id or '', 'batch_id', l.batch_id or '', 'detail', detail or '')
end

-- A lock as emit takes it: the packed lock `l` and its token.
local function lock_event(token, l)
  return { token = token, nonce = l.nonce, qty = l.qty, holder = l.holder, order_id = l.order_id, batch_id = l.batch_id }
end

-- Ends a live lock `l` by `mark` (R, C or F): out of the lock set, the
-- expiry index and the lock index, with a tombstone kept `retention` ms
-- after the last one of its bucket, so a late Renew or Release learns what
-- happened instead of a bare "not found".
local function end_lock(pk, rec, token, l, mark, now, retention)
  redis.call('ZREM', rec.idx, lock_member(rec, token, l.created))
  redis.call('HDEL', rec.locks, token)
  redis.call('ZREM', rec.exp, token)
  redis.call('HINCRBY', rec.stock, 'live', -1)
  redis.call('HSET', rec.ended, tombstone_field(token), mark)
  redis.call('PEXPIRE', rec.ended, retention)
end

-- Returns expired locks' quantity to the record (the write half of
-- find_expired_all): `found` lists {view, tokens, packed} of one record's
-- shards. One `expire` event per lock goes to the event stream; each
-- shard's lock set and index are written once for all of its locks, and the
-- record's figures once for all shards; an expired lock leaves no
-- tombstone. `pk` are the partition keys. Returns the record's stock after
-- (as read_stock), or nil if nothing was found.
local function drop_expired_all(pk, found, now, retention)
  if #found == 0 then
    return nil
  end
  local s = read_stock(found[1].view)
  local changed = false
  for _, f in ipairs(found) do
    local view, tokens, packed = f.view, f.tokens, f.packed
    redis.call('HDEL', view.locks, unpack(tokens))
    redis.call('ZREM', view.exp, unpack(tokens))
    local members = {}
    for i, token in ipairs(tokens) do
      if packed[i] then
        local l = unpack_lock(packed[i])
        local before = math.max(available_of(s, s.locked), 0)
        s.locked, s.version, s.live = s.locked - l.qty, s.version + 1, s.live - 1
        emit(pk.events, 'expire', view, before, lock_event(token, l), nil, s)
        members[#members + 1] = lock_member(view, token, l.created)
      end
    end
    if #members > 0 then
      redis.call('ZREM', view.idx, unpack(members))
      changed = true
    end
  end
  if changed then
    redis.call('HSET', found[1].view.stock, 'locked', s.locked, 'version', s.version, 'live', s.live)
  end
  return s
end

-- Drops the expired locks of one shard's view `rec` (at most SETTLE_LIMIT)
-- before a write about one of its locks.
local function drop_expired(pk, rec, now, retention)
  local tokens, _, _, packed = find_expired(rec, now)
  if #tokens > 0 then
    drop_expired_all(pk, { { view = rec, tokens = tokens, packed = packed } }, now, retention)
  end
end

-- The shard views of `rec`: all of a whole record's, or the one view.
local function views_of(rec)
  return rec.views or { rec }
end

-- Expired locks of the record's shards, SETTLE_LIMIT in all, shard by
-- shard: a list of {view, tokens, packed}, their summed quantity, the number of
-- tokens and how many of them are locks. Only a record whose `due` (ms, or
-- nil) has come can have any. Reads only.
local function find_expired_all(rec, now, due)
  local found, sum, locks, budget = {}, 0, 0, SETTLE_LIMIT
  if not due or due > now then
    return found, 0, 0, 0
  end
  for _, view in ipairs(views_of(rec)) do
    if budget == 0 then
      break
    end
    local tokens, qty, n, packed = find_expired(view, now, budget)
    if #tokens > 0 then
      found[#found + 1] = { view = view, tokens = tokens, packed = packed }
      sum, locks, budget = sum + qty, locks + n, budget - #tokens
    end
  end
  return found, sum, SETTLE_LIMIT - budget, locks
end

-- Drops expired locks of the record's shards now (SETTLE_LIMIT in all), so
-- a write starts from live figures; returns how many it dropped.
local function settle(pk, rec, now, retention)
  local due = redis.call('HGET', rec.stock, 'due')
  local found, _, count = find_expired_all(rec, now, due and tonumber(due))
  drop_expired_all(pk, found, now, retention)
  return count
end

-- Moves the record's `due`, and its entry in the sweeper's due index,
-- earlier to `expires` if it is later (or absent): what a call that sees
-- one shard can do when it gives a lock an expiry.
local function lower_due(due_key, rec, s, expires)
  if not s.due or expires < s.due then
    redis.call('HSET', rec.stock, 'due', expires)
    redis.call('ZADD', due_key, 'LT', expires, rec.id)
    s.due = expires
  end
end

-- Points the sweeper's due index, and the record's own `due`, at the
-- earliest expiry of a whole record's shards; returns it (ms), or nil
-- without locks.
local function refresh_due(due_key, rec)
  local earliest
  for _, view in ipairs(rec.views) do
    local first = redis.call('ZRANGE', view.exp, 0, 0, 'WITHSCORES')
    if first[1] and (not earliest or tonumber(first[2]) < earliest) then
      earliest = tonumber(first[2])
    end
  end
  if earliest then
    redis.call('ZADD', due_key, earliest, rec.id)
    redis.call('HSET', rec.stock, 'due', fmt(earliest))
    return earliest
  end
  redis.call('ZREM', due_key, rec.id)
  redis.call('HDEL', rec.stock, 'due')
  return nil
end

-- How much of the lock `l` a call names: `mantissa` at `scale` (strings;
-- '' for the whole lock) in its record's `unit_scale`, not more than the
-- lock holds. Returns the scaled quantity, or nil and the refusal.
local function part_of_lock(l, mantissa, scale, unit_scale)
  if mantissa == '' then
    return l.qty
  end
  local qty, err = scale_qty(tonumber(mantissa), tonumber(scale), unit_scale)
  if not qty then
    return nil, { err, fmt(unit_scale) }
  end
  if qty > l.qty then
    return nil, { 'QUANTITY_EXCEEDS_LOCK', fmt(l.qty), fmt(unit_scale) }
  end
  return qty
end

-- Which way a lock that is no longer live ended: 'R', 'C', 'F', 'M' by its
-- tombstone, and what the tombstone says besides (a commit's
-- "committed|released"); else 'E' if its token is not above the record's
-- fence (an expired lock leaves no tombstone, and neither does one whose
-- tombstone outlived the retention; a token the record skipped, as each
-- lock takes the next token of its shard, reads the same); else nil: no such
-- lock was ever taken.
local function ended_mark(rec, token)
  local mark = redis.call('HGET', rec.ended, tombstone_field(token))
  if not mark and tonumber(token) >= TOMBSTONE_BUCKET then
    -- Written before tombstones were keyed by their place in the bucket.
    mark = redis.call('HGET', rec.ended, token)
  end
  if mark then
    return string.sub(mark, 1, 1), string.sub(mark, 2)
  end
  if tonumber(token) <= tonumber(redis.call('HGET', rec.stock, 'fence') or '0') then
    return 'E'
  end
  return nil
end

-- The record's figures as reply strings, counting only live locks:
-- physical reserved in_transit locked unit_scale version source_version live_locks.
-- Expired locks not settled yet are looked for in the shards the call holds
-- (all of a whole record), SETTLE_LIMIT in all; any beyond still count, so
-- availability is understated for a moment, never overstated.
local function record_reply(rec, now, out)
  local s = read_stock(rec)
  local _, expired_sum, _, expired_locks = find_expired_all(rec, now, s.due)
  local live = math.max(s.live - expired_locks, 0)
  for _, v in ipairs({ s.physical, s.reserved, s.in_transit, s.locked - expired_sum, s.unit_scale, s.version, s.source_version, live }) do
    out[#out + 1] = fmt(v)
  end
  return out
end

-- Idempotency: the record is "fingerprint\n" .. cjson(reply). Returns the
-- stored reply marked as a replay, a reuse error, or nil for a new request.
-- An empty fingerprint is a request without a request_id: nothing is kept.
local function idem_lookup(key, fingerprint)
  if fingerprint == '' then
    return nil
  end
  local stored = redis.call('GET', key)
  if not stored then
    return nil
  end
  local sep = string.find(stored, '\n', 1, true)
  if string.sub(stored, 1, sep - 1) ~= fingerprint then
    return { 'IDEMPOTENCY_KEY_REUSED' }
  end
  local reply = cjson.decode(string.sub(stored, sep + 1))
  table.insert(reply, 1, 'REPLAY')
  return reply
end

local function idem_store(key, fingerprint, reply, retention)
  if fingerprint ~= '' then
    redis.call('SET', key, fingerprint .. '\n' .. cjson.encode(reply), 'PX', retention)
  end
  return reply
end

-- A live lock by token and nonce: the lock, or nil, the refusal and how the
-- lock ended: LOCK_EXPIRED, LOCK_FORCE_RELEASED, or LOCK_NOT_FOUND with
-- 'RELEASED', 'COMMITTED' (and the commit's "committed|released"), 'MOVED'
-- (and "sku|warehouse|token" of the lock it moved to, see transfer_lock.lua) or ''
-- (never existed, or its tombstone is gone).
local function find_lock(rec, token, nonce, now)
  local packed = redis.call('HGET', rec.locks, token)
  if packed then
    local l = unpack_lock(packed)
    if l.nonce ~= nonce then
      return nil, 'LOCK_NOT_FOUND', ''
    end
    -- A lock that lost its expiry entry (drift the auditor reports) lasts at
    -- most to its maximum hold.
    l.expires = tonumber(redis.call('ZSCORE', rec.exp, token) or l.max_expires)
    if l.expires <= now then
      return nil, 'LOCK_EXPIRED', ''
    end
    return l
  end
  local mark, detail = ended_mark(rec, token)
  if mark == 'E' then
    return nil, 'LOCK_EXPIRED', ''
  elseif mark == 'R' then
    return nil, 'LOCK_NOT_FOUND', 'RELEASED'
  elseif mark == 'C' then
    return nil, 'LOCK_NOT_FOUND', 'COMMITTED', detail
  elseif mark == 'F' then
    return nil, 'LOCK_FORCE_RELEASED', ''
  elseif mark == 'M' then
    return nil, 'LOCK_NOT_FOUND', 'MOVED', detail
  end
  return nil, 'LOCK_NOT_FOUND', ''
end

-- A forced-unlock request that can still be decided: its fields
-- {state, requester, expires}, or nil and the refusal to return.
local function pending_request(request_key, now)
  local request = redis.call('HMGET', request_key, 'state', 'requester', 'expires')
  if not request[1] then
    return nil, { 'FORCE_UNLOCK_NOT_FOUND' }
  end
  if request[1] ~= 'PENDING' then
    return nil, { 'FORCE_UNLOCK_NOT_PENDING', request[1] }
  end
  if now >= tonumber(request[3]) then
    return nil, { 'FORCE_UNLOCK_EXPIRED' }
  end
  return request
end

-- Appends an event to the audit stream, in the same script as the change it
-- records. `fields` is a flat list of name, value; the entry id is Redis time.
local function audit(key, max_events, fields)
  redis.call('XADD', key, 'MAXLEN', '~', max_events, '*', unpack(fields))
end

-- The session a lock lives in: its nonce is "<random hex>s<session id>"
-- (see session_nonce in src/domain/ids.rs); nil for a lock without one.
local function session_of(nonce)
  return string.match(nonce, 's(%x+)$')
end

-- Appends an event about a session (no record, no lock) to `events`, with
-- the fields every event has: `holder` and the session id as `detail`.
local function emit_session(events, action, holder, session)
  redis.call('XADD', events, '*', 'action', action, 'record', '', 'unit_scale', '',
    'physical', '', 'reserved', '', 'in_transit', '', 'locked', '', 'version', '', 'available_before', '',
    'token', '', 'nonce', '', 'quantity', '', 'holder', holder, 'order_id', '', 'batch_id', '', 'detail', session)
end

-- A session's figures {holder, ttl, expires, state, parts}, or nil and the
-- refusal: SESSION_NOT_FOUND when it does not exist or `holder` (unless '')
-- is not its holder, so one holder cannot probe another's sessions.
local function read_session(key, holder)
  local s = redis.call('HMGET', key, 'holder', 'ttl', 'expires', 'state', 'parts')
  if not s[4] or (holder ~= '' and s[1] ~= holder) then
    return nil, { 'SESSION_NOT_FOUND' }
  end
  return { holder = s[1], ttl = tonumber(s[2]), expires = tonumber(s[3]), state = s[4], parts = s[5] or ',' }
end

-- A session that may still take locks and be kept alive: its figures, or
-- nil and the refusal (SESSION_NOT_FOUND, or SESSION_ENDED with 'expired'
-- or 'closed'). A session whose ttl passed is ended, whether or not the
-- sweeper has marked it yet.
local function live_session(key, holder, now)
  local s, refusal = read_session(key, holder)
  if not s then
    return nil, refusal
  end
  if s.state ~= 'open' then
    return nil, { 'SESSION_ENDED', s.state }
  end
  if s.expires <= now then
    return nil, { 'SESSION_ENDED', 'expired' }
  end
  return s
end

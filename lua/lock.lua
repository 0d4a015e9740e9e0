-- lock.lua: locks one line (Lock) or the lines of a batch (BatchLock), choosing
-- among a line's candidate warehouses, all or nothing or by the batch's policy.
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
-- KEYS[10 ..]      per line, each of its candidate records (a slot each, numbered from 0
--                  across lines): narrow, the shard's five keys (stock, locks, exp, ended,
--                  idx); wide (see ARGV[14]), the whole record (see whole_record_at)
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
-- ARGV[14] per record slot, '1' if it names its record wide, else '0' (one character a slot)
-- ARGV[15] in a session: its lease, the expiry (ms) join_session.lua read; else ''
-- ARGV[16] the policy for short lines: 'A' all or nothing, 'L' each line in full or not at
--          all, 'P' each line as much as is available; 'l', 'p' for one partition of a batch
--          across partitions, which answers OK (and keeps its record) even with nothing locked
-- ARGV[17 ..] per line: its spec, quantity mantissa, quantity scale, then its n record ids
--          "sku|warehouse". The spec is n, then 'm' to try the most available candidate
--          first (else the order given) and 's' if the line may be split: "1" for a line
--          of one record, e.g. "3ms"
--
-- Choosing: without a split, the first candidate (in the strategy's order)
-- that has the whole quantity; with one, each in that order takes what it
-- has until the line is filled. A line not filled gets nothing unless the
-- policy is 'P', which keeps what was found (without a split, the candidate
-- that gives the most). A candidate without a record counts as having
-- nothing, and one whose unit scale cannot hold the quantity gives whole
-- units of its own scale; a line of one record is refused for either.
-- Candidates of different unit scales are compared at the largest. A line
-- with candidates settles the expired locks of every candidate before it
-- chooses (see SETTLE), so the ranking is by live locks.
--
-- A lock in a session (its nonce names the session, see session_of) needs
-- no Renew: its expiry entry is its maximum hold, and it ends earlier when
-- its session ends (end_session_part.lua). The session must be live: its
-- lease not passed and no end marker in this partition.
--
-- Expired locks never count: a narrow line settles those of its shard; when
-- it is short and other shards may hold expired locks too (the record's due
-- has come), the call answers {'SETTLE', slot...} without writing, and the
-- caller calls again with those slots wide, which settles their records'
-- expired locks (SETTLE_LIMIT each) before it locks. So a Lock names 5 keys
-- a record, and 50 only for a record with expired locks of a short line or
-- of a line with candidates (at most 16 candidates a line, and a batch's
-- records in all at most --max-batch-lines).
--
-- Idempotency: a granted call leaves one field in its generation's hash,
-- request digest -> content digest .. ":" .. "since|hold|batch_id|nonce|" and
-- per line "token|qty|available|unit_scale" (';' and the OK reply's lines
-- after its nonce, for a call with candidates or a policy), where `since` is the call's time
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
--   {'SETTLE', slot...}                      call again with these record slots wide
--   {'EPOCH'}                                the partition has no fencing epoch (its
--                                            data is gone): raise it and call again
--   {'SESSION_ENDED', 'expired' | 'closed'}  the session ended
--   {'LEASE'}                                the lease given has passed: read it again
--                                            (join_session.lua) and call again
--   {'OK', now, expires_at, max_expires_at, batch_id, nonce, then per line:
--    n, then n locks: candidate, token, qty, available after, unit_scale;
--    m, then m candidates when the line was not filled (else m = 0):
--    candidate, available, unit_scale, exists (1/0)}
--   {'REPLAY', ...the same...}               a retry of an earlier success
--   {'IDEMPOTENCY_KEY_REUSED'}
--   {'SKU_NOT_AVAILABLE_IN_WAREHOUSE', line}
--   {'INVALID_QUANTITY_SCALE', line, unit_scale} / {'QUANTITY_OUT_OF_RANGE', line}
--   {'INSUFFICIENT_STOCK', then per candidate of each short line:
--    line, candidate, available, unit_scale, exists}   (any short line under 'A';
--                                            every line, when none got anything)
-- Lines and candidates are numbered from 0. Nothing is written unless the answer is OK.
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
local wide_slots = ARGV[14]
local lease = tonumber(ARGV[15])
-- Lower case: one partition of a batch across partitions, which answers OK
-- (and keeps its record) even when it locks nothing, so a retry replays it.
local policy, one_part = string.upper(ARGV[16]), ARGV[16] == 'l' or ARGV[16] == 'p'
local session_locks, session_end = KEYS[8], KEYS[9]
-- Every line one record ("1") and all or nothing: the compact idempotency record.
-- (cleared below by a line with candidates).
local plain = policy == 'A'

-- The answer a retry gets from its stored record (see Idempotency), written
-- in the generation that began at `began`.
local function replay(stored, began, ttl)
  local marker = string.sub(stored, 17, 17)
  local relative = marker == ':' or marker == ';'
  local f = split(string.sub(stored, relative and 18 or 17), '|')
  local now, max_expires = tonumber(f[1]), tonumber(f[2])
  if relative then
    now = began + now
    max_expires = now + max_expires
  end
  local expires = now + ttl
  if lease then
    expires = math.min(lease, max_expires)
  end
  local reply = { 'REPLAY', 'OK', fmt(now), fmt(expires), fmt(max_expires), f[3], f[4] }
  if marker == ';' then
    for i = 5, #f do
      reply[#reply + 1] = f[i]
    end
    return reply
  end
  for i = 5, #f, 4 do
    local token = marker == ':' and fmt(tonumber(f[i], 16)) or f[i]
    for _, v in ipairs({ '1', '0', token, f[i + 1], f[i + 2], f[i + 3], '0' }) do
      reply[#reply + 1] = v
    end
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

-- The requested quantity of a line: mantissa `m` at scale `qs`, and its
-- candidates `cands`. Each candidate is {index, slot, view, rec, stock, qty,
-- expired, available, scale} or, without a record, {index, slot, missing,
-- available = 0, scale = 0}. Returns the allocation, a list of {cand, qty}
-- (qty in the candidate's unit scale), and whether it fills the line.
local function allocate(cands, m, qs, most, split_ok, partial)
  local present = {}
  local top = 0
  for _, c in ipairs(cands) do
    if not c.missing then
      present[#present + 1] = c
      top = math.max(top, c.scale)
    end
  end
  if #present == 0 then
    return {}, false
  end
  -- Figures of candidates of different unit scales compare at the largest.
  for _, c in ipairs(present) do
    c.factor = 10 ^ (top - c.scale)
    c.weight = math.max(c.available, 0) * c.factor
  end
  if most then
    table.sort(present, function(a, b)
      return a.weight > b.weight or (a.weight == b.weight and a.index < b.index)
    end)
  end
  if not split_ok then
    for _, c in ipairs(present) do
      if c.qty and c.available >= c.qty then
        return { { c, c.qty } }, true
      end
    end
    if partial then
      -- The candidate that gives the most, up to what its scale can hold.
      local best, most = nil, 0
      for _, c in ipairs(present) do
        local gives = math.min(math.max(c.available, 0), c.cap)
        if gives * c.factor > most then
          best, most = c, gives * c.factor
        end
      end
      if best then
        return { { best, most / best.factor } }, false
      end
    end
    return {}, false
  end
  local remaining = m * 10 ^ (top - qs)
  local taken = {}
  for _, c in ipairs(present) do
    if remaining <= 0 then
      break
    end
    local t = math.min(math.max(c.available, 0), math.floor(remaining / c.factor))
    if t > 0 then
      taken[#taken + 1] = { c, t }
      remaining = remaining - t * c.factor
    end
  end
  if remaining > 0 and not partial then
    return {}, false
  end
  return taken, remaining <= 0
end

-- Check every line, and choose where each locks, before the first write.
local lines = {}
local short = false
local unsettled = {}
local any = false
local key, slot, arg, k = 10, 0, 17, 0
while arg <= #ARGV do
  local spec, m, qs = ARGV[arg], tonumber(ARGV[arg + 1]), tonumber(ARGV[arg + 2])
  local n = tonumber(string.match(spec, '^%d+'))
  local single = spec == '1'
  plain = plain and single
  local cands = {}
  for c = 1, n do
    -- `rec` is the record as the call names it, `view` the shard the lock goes to.
    local rec, view
    local wide = string.sub(wide_slots, slot + 1, slot + 1) == '1'
    if wide then
      rec = whole_record_at(key, ARGV[arg + 2 + c])
      view = rec.views[shard + 1]
      key = key + WHOLE_RECORD_KEYS
    else
      rec = record_at(key, ARGV[arg + 2 + c])
      view = rec
      key = key + 5
    end
    local s = read_stock(view)
    if not s then
      if single then
        return { 'SKU_NOT_AVAILABLE_IN_WAREHOUSE', fmt(k) }
      end
      cands[c] = { index = c - 1, slot = slot, missing = true, available = 0, scale = 0 }
    else
      local qty, err = scale_qty(m, qs, s.unit_scale)
      if qty and s.locked + qty > MAX_EXACT then
        -- Only data written before physical + in_transit was bounded gets here.
        qty, err = nil, 'QUANTITY_OUT_OF_RANGE'
      end
      -- A candidate whose scale cannot hold the quantity can give whole
      -- units of its own (a split, or a partial line); one warehouse named
      -- alone is a wrong request.
      if not qty and (single or err ~= 'INVALID_QUANTITY_SCALE') then
        return { err, fmt(k), fmt(s.unit_scale) }
      end
      -- Only a record whose earliest expiry has come can have expired locks.
      local expired, expired_sum = find_expired_all(rec, now, s.due)
      cands[c] = {
        index = c - 1, slot = slot, rec = rec, view = view, stock = s, qty = qty, expired = expired,
        cap = qty or math.floor(m / 10 ^ (qs - s.unit_scale)),
        available = available_of(s, s.locked - expired_sum), scale = s.unit_scale,
        unsettled = not wide and s.due and s.due <= now,
      }
    end
    slot = slot + 1
  end
  local taken, filled = allocate(cands, m, qs, string.find(spec, 'm', 1, true), string.find(spec, 's', 1, true), policy == 'P')
  -- Expired locks in other shards may be what keeps the line short, and
  -- for a choice among candidates they change the ranking.
  if not filled or not single then
    for _, c in ipairs(cands) do
      if c.unsettled then
        unsettled[#unsettled + 1] = fmt(c.slot)
      end
    end
  end
  if not filled and policy == 'L' then
    taken = {}
  end
  -- What each candidate had, when the line was not filled.
  local missed = {}
  if not filled then
    for _, c in ipairs(cands) do
      missed[#missed + 1] = { c.index, math.max(c.available, 0), c.scale, c.missing and 0 or 1 }
    end
  end
  any = any or #taken > 0
  short = short or not filled
  lines[#lines + 1] = { taken = taken, missed = missed }
  arg, k = arg + 3 + n, k + 1
end
if #unsettled > 0 then
  table.insert(unsettled, 1, 'SETTLE')
  return unsettled
end
if short and (policy == 'A' or (not any and not one_part)) then
  local refusal = { 'INSUFFICIENT_STOCK' }
  for line, l in ipairs(lines) do
    for _, figures in ipairs(l.missed) do
      refusal[#refusal + 1] = fmt(line - 1)
      for _, v in ipairs(figures) do
        refusal[#refusal + 1] = fmt(v)
      end
    end
  end
  return refusal
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
  reply[#reply + 1] = fmt(#line.taken)
  for _, pick in ipairs(line.taken) do
    local c, qty = pick[1], pick[2]
    local rec = c.view
    local s = drop_expired_all(pk, c.expired, now, tomb_retention) or c.stock
    -- One write for the three counters; the figures are known, so the event
    -- needs no read either (the profile of this script is its Redis calls).
    -- Tokens pass through fmt: Lua would print large numbers as 9.0071992547409e+15.
    local next_token = math.max(s.fence + 1, token_floor)
    local token = fmt(next_token + (shard - next_token % LOCK_SHARDS) % LOCK_SHARDS)
    s.fence, s.locked, s.version, s.live = tonumber(token), s.locked + qty, s.version + 1, s.live + 1
    redis.call('HSET', rec.stock, 'fence', token, 'locked', s.locked, 'version', s.version, 'live', s.live)
    -- A new lock can only bring the record's earliest expiry forward.
    lower_due(pk.due, rec, s, deadline)
    redis.call('HSET', rec.locks, token, pack_lock({
      qty = qty, created = now, max_expires = max_expires, ttl = ttl,
      holder = holder, order_id = order_id, nonce = nonce, batch_id = batch_id,
    }))
    redis.call('ZADD', rec.exp, deadline, token)
    if lease then
      redis.call('ZADD', session_locks, max_expires, rec.id .. '|' .. token)
    end
    redis.call('ZADD', rec.idx, 0, lock_member(rec, token, now))
    local lock = { token = token, nonce = nonce, qty = qty, holder = holder, order_id = order_id, batch_id = batch_id }
    emit(pk.events, 'lock', rec, math.max(c.available, 0), lock, expires, s)
    -- No record is named twice in a call, so `available` is exact per lock.
    for _, v in ipairs({ c.index, s.fence, qty, math.max(c.available - qty, 0), c.stock.unit_scale }) do
      reply[#reply + 1] = fmt(v)
    end
    lock_refs[#lock_refs + 1] = rec.id .. '|' .. token
  end
  reply[#reply + 1] = fmt(#line.missed)
  for _, missed in ipairs(line.missed) do
    for _, v in ipairs(missed) do
      reply[#reply + 1] = fmt(v)
    end
  end
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

if batch_id ~= '' and #lock_refs > 0 then
  -- The batch lists its locks so Renew and Release can address them by batch_id.
  redis.call('SET', batch_key, holder .. '\n' .. nonce .. '\n' .. table.concat(lock_refs, '\n'), 'PX', max_hold + tomb_retention)
end

if fingerprint ~= '' then
  -- The answer without the figures a retry knows (expires_at = now + ttl).
  local kept = { fmt(now - generation * generation_ms), fmt(max_hold), batch_id, nonce }
  local marker = ';'
  if plain then
    -- One lock a line: token (hex), qty, available, unit_scale.
    marker = ':'
    for i = 7, #reply, 7 do
      kept[#kept + 1] = string.format('%x', tonumber(reply[i + 2]))
      kept[#kept + 1], kept[#kept + 2], kept[#kept + 3] = reply[i + 3], reply[i + 4], reply[i + 5]
    end
  else
    for i = 7, #reply do
      kept[#kept + 1] = reply[i]
    end
  end
  redis.call('HSET', pk.idem, request, fingerprint .. marker .. table.concat(kept, '|'))
  redis.call('PEXPIREAT', pk.idem, (generation + 2) * generation_ms + 60000)
end
return reply

-- get_stock.lua: reads records, counting only live locks (a lock that has
-- expired but is not swept yet no longer holds stock). Writes nothing.
--
-- KEYS[1 + 50k ..]  record k, whole (see whole_record_at)
--
-- Returns {'OK', then per record: '0' when it does not exist, or '1' and the
-- record (see record_reply)}.
--
-- lib.lua: now_ms, whole_record_at, WHOLE_RECORD_KEYS, record_reply

local now = now_ms()
local reply = { 'OK' }
for k = 0, #KEYS / WHOLE_RECORD_KEYS - 1 do
  local rec = whole_record_at(1 + WHOLE_RECORD_KEYS * k, '')
  if redis.call('EXISTS', rec.stock) == 1 then
    reply[#reply + 1] = '1'
    record_reply(rec, now, reply)
  else
    reply[#reply + 1] = '0'
  end
end
return reply

-- lead_ingest.lua: takes or keeps the lease of the one replica that reads a
-- consumer group of the ingestion stream. One reader applies the entries in
-- stream order (snapshots count the deltas before them, a release follows
-- its reservation); the lease makes another replica the reader when this one
-- stops renewing it. The binlog follower's leader holds the same kind of
-- lease (see save_checkpoint.lua).
--
-- KEYS[1]  the group's lease, in the stream's slot
-- ARGV[1]  this consumer's name
-- ARGV[2]  the lease, ms; 0 to give it up (a replica that stops), so the
--          next reader need not wait for it to lapse
--
-- Returns {'OK', holder}: this consumer when it holds the lease now ('' if
-- nobody does).

local holder = redis.call('GET', KEYS[1])
local lease = tonumber(ARGV[2])
if lease == 0 then
  if holder == ARGV[1] then
    redis.call('DEL', KEYS[1])
    holder = false
  end
elseif not holder or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', lease)
  holder = ARGV[1]
end
return { 'OK', holder or '' }

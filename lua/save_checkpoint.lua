-- save_checkpoint.lua: records where the binlog follower applied up to, if
-- the caller still holds the follower's lease. A replica that lost the lease
-- while paused must not move the checkpoint: the new leader's is the one
-- that counts (moving it back would only replay idempotent changes, but
-- moving it past what the new leader applied would skip them).
--
-- KEYS[1]  the follower's lease (see lead_ingest.lua)
-- KEYS[2]  the checkpoint, in the lease's slot
-- ARGV[1]  the caller's name
-- ARGV[2]  the checkpoint
--
-- Returns {'OK', '1'} when saved, {'OK', '0'} when the caller does not hold
-- the lease.

if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return { 'OK', '0' }
end
redis.call('SET', KEYS[2], ARGV[2])
return { 'OK', '1' }

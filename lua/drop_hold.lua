-- drop_hold.lua: deletes a hold (a key whose value names its holder) if
-- this holder still has it, so an attempt that outlived its hold does not
-- delete the next attempt's.
--
-- KEYS[1]  the hold
-- ARGV[1]  the holder
--
-- Returns {'OK', '1'} if it was deleted, {'OK', '0'} if another holds it or none.

if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return { 'OK', '1' }
end
return { 'OK', '0' }

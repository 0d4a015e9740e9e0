-- due_records.lua: the records that have locks expired by now (Redis time),
-- for the sweeper; or, from a session index, the sessions due to end.
--
-- KEYS[1]  the sweeper's due index, or a partition's session index
-- ARGV[1]  the most records to return
--
-- Returns {'OK', then record ids "sku|warehouse"}.
--
-- lib.lua: now_ms

local reply = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[1]))
table.insert(reply, 1, 'OK')
return reply

-- due_records.lua: the records that have locks expired by now (Redis time),
-- for the sweeper.
--
-- KEYS[1]  the sweeper's due index
-- ARGV[1]  the most records to return
--
-- Returns record ids "sku|warehouse".

return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[1]))

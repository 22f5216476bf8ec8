-- The head of every queue in one round trip: the first ARGV[1] entries of each sorted set,
-- lowest score (earliest due) first, with their scores.
-- KEYS: the queues. ARGV: how many entries to read per queue.
local result = {}
for i, key in ipairs(KEYS) do
  result[i] = redis.call('ZRANGE', key, 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
end
return result

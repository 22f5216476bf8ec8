-- Per queue: jobs due now, jobs due later, and how many of the oldest due jobs are running.
-- arq keeps a running job in its queue, marked by an in-progress key. Workers take jobs oldest
-- first, so running jobs are among the oldest due; looking at ARGV[3] of them bounds the cost
-- however long the backlog is.
-- KEYS: the queues. ARGV: now (ms), the in-progress key prefix, how many due jobs to look at.
local now, prefix, look = ARGV[1], ARGV[2], tonumber(ARGV[3])
local result = {}
for i, key in ipairs(KEYS) do
  local running = 0
  for _, job_id in ipairs(redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, look)) do
    running = running + redis.call('EXISTS', prefix .. job_id)
  end
  local due = redis.call('ZCOUNT', key, '-inf', now)
  result[i] = {due, redis.call('ZCARD', key) - due, running}
end
return result

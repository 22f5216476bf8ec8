-- Enqueue one job as arq's `ArqRedis.enqueue_job` does (arq 0.28), in one atomic call instead
-- of WATCH, EXISTS, MULTI/PSETEX/ZADD/EXEC; then wake idle workers (decision 008).
--
-- A job id that has a job key (queued, deferred, retrying or running) or a result key (finished
-- within arq's result retention) adds nothing: the script returns 0. Otherwise the encoded job
-- is stored under its job key for its expiry, the id goes on the queue with its score (the time
-- it is due, in ms), the queue's name is published on the wake-up channel, and it returns 1.
--
-- KEYS: the job key, the result key, the queue. ARGV: the job id, the score (ms), the expiry
-- (ms), the encoded job, the wake-up channel, the message published on it.
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then
  return 0
end
redis.call('PSETEX', KEYS[1], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1

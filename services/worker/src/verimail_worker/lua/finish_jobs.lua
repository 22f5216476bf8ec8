-- Record a batch of finished attempts: arq's `Worker.finish_job` and `finish_failed_job`
-- (arq 0.28) for every job of the batch in one atomic call.
--
-- ARGV: the in-progress, retry, job and result key prefixes and the abort sorted set, then
-- seven entries per job:
--   queue, job id,
--   finish      '1': the job is done (result kept, job removed); '0': it runs again,
--   result      the encoded result to keep, '' for none,
--   result_ms   how long to keep it, '0' for ever,
--   incr_score  '0', or ms to add to the job's score (a retry's defer),
--   keep_ms     '-1' to release the lease, else ms to keep it (arq's cron jobs).
local in_progress, retry_prefix, job_prefix, result_prefix, aborts =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
for i = 6, #ARGV, 7 do
  local queue, job_id, finish, result, result_ms, incr_score, keep_ms =
    ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
  if keep_ms == '-1' then
    redis.call('DEL', in_progress .. job_id)
  else
    redis.call('PEXPIRE', in_progress .. job_id, keep_ms)
  end
  if finish == '1' then
    if result ~= '' then
      if result_ms == '0' then
        redis.call('SET', result_prefix .. job_id, result)
      else
        redis.call('SET', result_prefix .. job_id, result, 'PX', result_ms)
      end
    end
    redis.call('DEL', retry_prefix .. job_id, job_prefix .. job_id)
    redis.call('ZREM', aborts, job_id)
    redis.call('ZREM', queue, job_id)
  elseif incr_score ~= '0' then
    redis.call('ZINCRBY', queue, incr_score, job_id)
  end
end
return (#ARGV - 5) / 7

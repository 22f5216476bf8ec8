-- Claim a batch of jobs and load them: arq's rule from `Worker.start_jobs` and the first
-- pipeline of `Worker.run_job` (arq 0.28), for every job of the batch in one atomic call.
--
-- A job is taken when it is still in its queue, due, and no worker has it in progress; it is
-- then marked in progress for the lease, its try counter is incremented (kept 88400 s, as
-- arq does), and its abort request, if any, is taken off the abort set.
--
-- KEYS: the queue of each job. ARGV: now (ms), lease (ms), the in-progress, job and retry key
-- prefixes, the abort sorted set ('' when aborts are off), then the job ids, one per key.
-- Returns four entries per job: its score (or -1 if it was not taken), its encoded job (false
-- when the job key has expired), its try, and 1 if an abort was requested, else 0.
local now, lease = tonumber(ARGV[1]), ARGV[2]
local in_progress, job_prefix, retry_prefix, aborts = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local result = {}
for i, queue in ipairs(KEYS) do
  local job_id = ARGV[6 + i]
  local score = redis.call('ZSCORE', queue, job_id)
  if score and tonumber(score) <= now and redis.call('EXISTS', in_progress .. job_id) == 0 then
    redis.call('PSETEX', in_progress .. job_id, lease, '1')
    local retry_key = retry_prefix .. job_id
    local try = redis.call('INCR', retry_key)
    redis.call('EXPIRE', retry_key, 88400)
    local aborted = 0
    if aborts ~= '' then
      aborted = redis.call('ZREM', aborts, job_id)
    end
    result[#result + 1] = score
    result[#result + 1] = redis.call('GET', job_prefix .. job_id)
    result[#result + 1] = try
    result[#result + 1] = aborted
  else
    result[#result + 1] = -1
    result[#result + 1] = false
    result[#result + 1] = 0
    result[#result + 1] = 0
  end
end
return result

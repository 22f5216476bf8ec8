-- wrk script for bench/signup.py: POST /v1/create_user with a new user on every request, and a
-- one-line JSON summary at the end. Usage: wrk ... -s signup.lua URL -- PREFIX
local threads = {}
local counter = 0
local prefix = "w"

function setup(thread)
  thread:set("thread_id", #threads)
  table.insert(threads, thread)
end

function init(args)
  prefix = (args[1] or "w") .. "t" .. thread_id .. "n"
end

function request()
  counter = counter + 1
  local name = prefix .. counter
  local body = '{"username":"' .. name .. '","full_name":"Bench User","email":"' .. name
    .. '@example.com","password":"correct horse battery staple"}'
  return wrk.format("POST", "/v1/create_user", { ["Content-Type"] = "application/json" }, body)
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,'
      .. '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, errors.connect, errors.read, errors.write, errors.status,
    errors.timeout, latency:percentile(50), latency:percentile(99), latency.max
  ))
end

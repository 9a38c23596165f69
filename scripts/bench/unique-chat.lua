-- wrk: POST /v1/chat/completions with a prompt no other request has (no cache hit),
-- temperature 0; prints one JSON line with the run's numbers when done.
-- Environment: BENCH_KEY (a bearer key; none for the upstream called directly).
local counter = 0
local key = os.getenv("BENCH_KEY") or ""
local headers = { ["Content-Type"] = "application/json" }
if key ~= "" then headers["Authorization"] = "Bearer " .. key end

function setup(thread)
  thread:set("id", math.random(1, 1000000000))
end

request = function()
  counter = counter + 1
  local body = '{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"question '
    .. id .. "-" .. counter .. ' about the refund window"}]}'
  return wrk.format("POST", "/v1/chat/completions", headers, body)
end

done = function(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local bad = summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout
  io.write(string.format(
    '{"requests": %d, "seconds": %.3f, "rps": %.1f, "p50_ms": %.3f, "p99_ms": %.3f, "errors": %d}\n',
    summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, bad))
end

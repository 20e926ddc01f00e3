-- wrk script: POST /v1/search with JSON bodies taken in turn from $WRK_BODIES (one per line),
-- and count the answers by status (wrk itself only counts non-2xx as a total).
local bodies = {}
local path = os.getenv("WRK_BODIES") or "runs/wrk/bodies.jsonl"
for line in io.lines(path) do bodies[#bodies + 1] = line end
local counter = 0
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  counter = id * 7919
  ok, refused, large, other = 0, 0, 0, 0
end

request = function()
  counter = counter + 1
  return wrk.format("POST", "/v1/search", {["Content-Type"] = "application/json"}, bodies[(counter % #bodies) + 1])
end

response = function(status, headers, body)
  if status == 200 then ok = ok + 1
  elseif status == 429 then refused = refused + 1
  elseif status == 413 then large = large + 1
  else other = other + 1 end
end

done = function(summary, latency, requests)
  local t = {ok = 0, refused = 0, large = 0, other = 0}
  for _, thread in ipairs(threads) do
    for k, _ in pairs(t) do t[k] = t[k] + (thread:get(k) or 0) end
  end
  local secs = summary.duration / 1e6
  io.write(string.format("RESULT ok=%d refused=%d large=%d other=%d secs=%.2f served_rps=%.1f sent_rps=%.1f p50_ms=%.2f p99_ms=%.2f errors=%d\n",
    t.ok, t.refused, t.large, t.other, secs, t.ok / secs, summary.requests / secs,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end

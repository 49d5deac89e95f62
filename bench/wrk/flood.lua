-- wrk script: POST a name never sent before on every request, as a flood of distinct names
-- would: three in four `flood.<thread>.<n>` (matched by the flood map's pattern reflex, each its
-- own cooldown key and pending verification), one in four `stray.<thread>.<n>` (no reflex).
-- Usage: wrk -s flood.lua URL
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "summary.lua")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local threads = 0

function setup(thread)
   thread:set("thread_id", threads)
   threads = threads + 1
end

local sent = 0

function request()
   sent = sent + 1
   local kind = (sent % 4 == 0) and "stray" or "flood"
   local body = string.format('{"name":"%s.%d.%d"}', kind, thread_id, sent)
   return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, _)
   bench_summary(summary, latency)
end

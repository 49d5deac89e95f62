-- wrk script: POST the same JSON body on every request (static, so wrk formats it once).
-- Usage: wrk -s post.lua URL -- BODY
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "summary.lua")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function init(args)
   wrk.body = args[1] or '{"name":"bench.hit"}'
end

function done(summary, latency, _)
   bench_summary(summary, latency)
end

-- wrk script: POST a cycle of JSON bodies, one per line of a file, each request formatted once
-- at start-up so the cycle costs the client as little as a static body.
-- Usage: wrk -s cycle.lua URL -- BODIES_FILE
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "summary.lua")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local requests = {}
local next_request = 1

function init(args)
   local file = assert(io.open(args[1], "r"), "cannot open the bodies file " .. tostring(args[1]))
   for body in file:lines() do
      if #body > 0 then
         requests[#requests + 1] = wrk.format(nil, nil, nil, body)
      end
   end
   file:close()
   assert(#requests > 0, "the bodies file is empty")
   -- Threads start at different places in the cycle.
   math.randomseed(os.time() + tonumber(tostring(requests):match("0x(%x+)") or "0", 16))
   next_request = math.random(#requests)
end

function request()
   local r = requests[next_request]
   next_request = next_request % #requests + 1
   return r
end

function done(summary, latency, _)
   bench_summary(summary, latency)
end

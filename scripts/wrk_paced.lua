-- Paces each wrk connection: wait this many milliseconds before every request, so that
-- connections / delay bounds the requests per second wrk offers (96 / 80 ms = 1200/s; with the
-- time the answers take, about 3x the example server's 200/s). Set WRK_DELAY_MS to change it.
-- Each request names one of 32 clients in `x-client-id`, as the tokio generator does, so the
-- server's per-client quotas and whole-client shedding have clients to tell apart.
--
-- Every wrk thread runs its own Lua state, and an unseeded math.random draws the same sequence
-- in each: the threads then name the same client at the same moment, and a client's requests
-- arrive in bursts that its quota refuses (679 false 429s in one 10 s run). Each thread gets a
-- seed of its own from setup(), which runs once per thread in the main state.
local delay_ms = tonumber(os.getenv("WRK_DELAY_MS") or "80")
local clients = 32
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end

function init(args)
  math.randomseed(os.time() * 1000 + (id or 0) * 7919)
  -- The first draws after seeding with nearby seeds are alike in some Lua versions.
  for _ = 1, 10 do math.random() end
end

function delay()
  return delay_ms
end

function request()
  wrk.headers["x-client-id"] = "client-" .. math.random(0, clients - 1)
  return wrk.format()
end
